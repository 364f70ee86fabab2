//! Restore: seeds an empty stream from Snowflake, at start-up or on demand (`WB.RESTORE`).
//!
//! After a pod restart with an empty volume the stream is blank while Snowflake holds the history. The
//! restore queries TRACKED (joined to USER for the e-mail) for rows whose latest visit or save falls in
//! the last `RESTORE_DAYS`, capped at `RESTORE_LIMIT_TOTAL`, groups them by user and kind, and adds them
//! as ordinary batch entries of at most `RESTORE_BATCH_SIZE` records, with the keys the application
//! wrote (`<prefix>:<tracked_id>/visited[/<page>]`, `<prefix>:<tracked_id>/saved`). Each entry carries
//! the `wb_restored` field, so the writer acknowledges it without writing it back.
//!
//! The query runs on a background thread; the `XADD`s happen under the Redis lock in chunks, so Redis
//! keeps serving. Progress is kept in the marker key in the same lock hold as each chunk
//! (`in-progress <entries added>`), so a restart in the middle resumes where it stopped instead of
//! adding the first part twice; the marker becomes `done <time> <entries>` at the end. The order of the
//! query is fixed (user, item), so the resumed run skips exactly what the first run added, as long as
//! Snowflake did not change in between.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::control::dry_run;
use super::sink;
use crate::entry::RESTORED_FIELD;
use crate::host::gil::Gil;
use crate::host::logging;
use crate::host::stream;
use crate::settings::{Key, Snapshot};
use crate::sql::Tables;
use crate::statement::Statement;

/// What a restore run should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Ignore the empty-stream and marker conditions (and the minimum-rows trigger).
    pub force: bool,
    pub days: u64,
    /// Restore only this user's history (never touches the marker).
    pub user: Option<String>,
}

impl Request {
    pub fn from_settings(s: &Snapshot) -> Request {
        Request {
            force: s.bool(Key::RestoreForce),
            days: s.uint(Key::RestoreDays),
            user: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub rows: usize,
    pub entries: usize,
    pub records: usize,
    /// Why nothing was restored, when nothing was.
    pub skipped: Option<String>,
}

/// One TRACKED row as the query returns it.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    tracked_id: String,
    track_id: String,
    page_name: Option<String>,
    query_row_count: Option<String>,
    title: Option<String>,
    track_type: Option<String>,
    url: Option<String>,
    visited_count: i64,
    visited_at: Option<String>,
    saved: bool,
    saved_at: Option<String>,
    user_email: Option<String>,
}

pub use crate::sql::restore::MAX_DAYS;

/// The restore query for a request (see [`crate::sql::restore::query`]).
pub fn query(tables: &Tables, req: &Request, limit: u64) -> Statement {
    crate::sql::restore::query(tables, req.days, req.user.as_deref(), limit)
}

/// Reads one partition's rows, by the column names of the first partition.
fn rows_of(columns: &[String], rows: Vec<Vec<Option<String>>>) -> impl Iterator<Item = Row> + '_ {
    let col = |name: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(name));
    let at = [
        "TRACKED_ID",
        "TRACK_ID",
        "PAGE_NAME",
        "QUERY_ROW_COUNT",
        "TRACK_TITLE",
        "TRACK_TYPE",
        "TRACK_URL",
        "VISITED_COUNT",
        "VISITED_AT",
        "SAVED",
        "SAVED_AT",
        "USER_EMAIL",
    ]
    .map(col);
    let num = |v: Option<String>| v.and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    rows.into_iter().map(move |mut row| {
        let mut get = |i: usize| at[i].and_then(|c| row.get_mut(c)).and_then(Option::take);
        Row {
            tracked_id: get(0).unwrap_or_default(),
            track_id: get(1).unwrap_or_default(),
            page_name: get(2),
            query_row_count: get(3),
            title: get(4),
            track_type: get(5),
            url: get(6),
            visited_count: num(get(7)) as i64,
            visited_at: get(8),
            saved: num(get(9)) >= 1.0,
            saved_at: get(10),
            user_email: get(11),
        }
    })
}

/// Entries added per lock hold, at most.
const CHUNK: usize = 50;
/// Bytes of entries added per lock hold, at most (one entry larger than this goes alone).
const CHUNK_BYTES: usize = 1024 * 1024;
/// Bytes of records held while they are grouped into entries, at most: beyond it, the partial
/// groups become (smaller) entries at once.
pub const MAX_GROUPED_BYTES: usize = 4 * 1024 * 1024;

/// The bounds of what a restore holds between reading rows and adding entries.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    chunk: usize,
    chunk_bytes: usize,
    grouped_bytes: usize,
}

const BOUNDS: Bounds = Bounds {
    chunk: CHUNK,
    chunk_bytes: CHUNK_BYTES,
    grouped_bytes: MAX_GROUPED_BYTES,
};

/// Turns rows, streamed in the query's order (user, item), into stream entries (the `value` JSON of
/// each) and hands them over in chunks, holding a bounded amount whatever the number of rows: a
/// user's records are grouped by kind (and page) only until the user changes, a group becomes an
/// entry as soon as it has `RESTORE_BATCH_SIZE` records, all groups become entries when they hold
/// more than `grouped_bytes`, and the entries are handed to `write` in chunks of at most `chunk`
/// entries or `chunk_bytes` bytes. The order is fixed for given rows, so a resumed run can skip what
/// an interrupted one added. A user's `user_email` entry comes before that user's records.
struct Builder<W: FnMut(&[String]) -> Result<(), String>> {
    prefix: String,
    batch: usize,
    append_page: bool,
    visited: bool,
    saved: bool,
    bounds: Bounds,
    /// With `STREAM_SHARDS` > 1: the shard restored; rows of other shards are passed over.
    shard: Option<crate::shard::Shard>,
    /// The user whose records are being grouped.
    user: Option<String>,
    /// Records by entry key, with their size.
    groups: BTreeMap<String, (Vec<Value>, usize)>,
    grouped_bytes: usize,
    /// Entries to skip (added by an interrupted run).
    skip: usize,
    chunk: Vec<String>,
    chunk_bytes: usize,
    /// The most bytes held at once (grouped records + the chunk being filled).
    peak_bytes: usize,
    entries: usize,
    records: usize,
    write: W,
}

impl<W: FnMut(&[String]) -> Result<(), String>> Builder<W> {
    fn new(s: &Snapshot, bounds: Bounds, skip: usize, write: W) -> Self {
        Builder {
            prefix: s.str(Key::KeyPrefix).to_string(),
            batch: s.uint(Key::RestoreBatchSize).max(1) as usize,
            append_page: s.bool(Key::KeyAppendPage),
            visited: s.bool(Key::RestoreIncludeVisited),
            saved: s.bool(Key::RestoreIncludeSaved),
            bounds,
            shard: None,
            user: None,
            groups: BTreeMap::new(),
            grouped_bytes: 0,
            skip,
            chunk: Vec::new(),
            chunk_bytes: 0,
            peak_bytes: 0,
            entries: 0,
            records: 0,
            write,
        }
    }

    fn note_peak(&mut self) {
        self.peak_bytes = self.peak_bytes.max(self.grouped_bytes + self.chunk_bytes);
    }

    /// Whether the row keyed by `id` is written from the shard restored.
    fn mine(&self, id: &str) -> bool {
        self.shard
            .is_none_or(|s| crate::shard::shard_of(id.as_bytes(), s.count) == s.index)
    }

    fn push(&mut self, r: Row) -> Result<(), String> {
        if self.user.as_deref() != Some(r.tracked_id.as_str()) {
            self.flush_groups()?;
            self.user = Some(r.tracked_id.clone());
            if let Some(e) = r.user_email.as_deref().filter(|e| self.mine(e)) {
                self.emit(json!({"user_email": e}).to_string(), 0)?;
            }
        }
        if !self.mine(&r.tracked_id) {
            return Ok(());
        }
        let record = |action: &str, at: &Option<String>| {
            json!({"id": r.tracked_id, "page_name": r.page_name, "query_row_count": r.query_row_count,
                "track_id": r.track_id, "track_title": r.title, "track_type": r.track_type,
                "track_url": r.url, "lastplus": at, "action": action})
        };
        if self.visited && r.visited_count > 0 && r.visited_at.is_some() {
            let mut key = format!("{}:{}/visited", self.prefix, r.tracked_id);
            if self.append_page {
                if let Some(p) = r.page_name.as_deref().filter(|p| !p.is_empty()) {
                    key.push('/');
                    key.push_str(p);
                }
            }
            self.group(key, record("v", &r.visited_at))?;
        }
        if self.saved && r.saved && r.saved_at.is_some() {
            let key = format!("{}:{}/saved", self.prefix, r.tracked_id);
            self.group(key, record("s", &r.saved_at))?;
        }
        if self.grouped_bytes > self.bounds.grouped_bytes {
            self.flush_groups()?;
        }
        Ok(())
    }

    fn group(&mut self, key: String, record: Value) -> Result<(), String> {
        let size = record.to_string().len();
        self.grouped_bytes += size;
        let (records, bytes) = self.groups.entry(key.clone()).or_default();
        records.push(record);
        *bytes += size;
        let full = records.len() >= self.batch;
        self.note_peak();
        if full {
            if let Some(group) = self.groups.remove(&key) {
                self.emit_group(&key, group)?;
            }
        }
        Ok(())
    }

    fn emit_group(
        &mut self,
        key: &str,
        (records, bytes): (Vec<Value>, usize),
    ) -> Result<(), String> {
        let n = records.len();
        let entry = json!({"key": key, "records": records}).to_string();
        // The records are now held by the entry instead.
        self.grouped_bytes = self.grouped_bytes.saturating_sub(bytes);
        self.emit(entry, n)
    }

    /// Every group becomes entries, in key order.
    fn flush_groups(&mut self) -> Result<(), String> {
        for (key, group) in std::mem::take(&mut self.groups) {
            self.emit_group(&key, group)?;
        }
        self.grouped_bytes = 0;
        Ok(())
    }

    fn emit(&mut self, entry: String, records: usize) -> Result<(), String> {
        self.entries += 1;
        self.records += records;
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(());
        }
        if !self.chunk.is_empty() && self.chunk_bytes + entry.len() > self.bounds.chunk_bytes {
            self.write_chunk()?;
        }
        self.chunk_bytes += entry.len();
        self.chunk.push(entry);
        self.note_peak();
        if self.chunk.len() >= self.bounds.chunk {
            self.write_chunk()?;
        }
        Ok(())
    }

    fn write_chunk(&mut self) -> Result<(), String> {
        if !self.chunk.is_empty() {
            (self.write)(&self.chunk)?;
            self.chunk.clear();
            self.chunk_bytes = 0;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        self.flush_groups()?;
        self.write_chunk()
    }
}

/// Turns rows into stream entries (the `value` JSON of each), grouped by user and kind, in the fixed
/// order of the query.
#[cfg(test)]
fn entries_of(rows: &[Row], s: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let mut b = Builder::new(s, BOUNDS, 0, |chunk: &[String]| {
        out.extend_from_slice(chunk);
        Ok(())
    });
    for r in rows {
        b.push(r.clone()).expect("no write fails");
    }
    b.finish().expect("no write fails");
    drop(b);
    out
}

/// Runs a restore (on a background thread: it waits for Snowflake). The result is read one
/// partition at a time and the entries are added as they are made, so what the restore holds is
/// bounded (see [`Builder`]) however many rows qualify.
///
/// With `STREAM_SHARDS` > 1 it restores the shard stream `names` into its own stream, keeping the
/// rows whose row id falls in that shard, and its own marker (`RESTORE_MARK_KEY:{i}`).
pub fn run(
    names: &crate::shard::Names,
    req: &Request,
    gil: &Gil,
    s: &Snapshot,
) -> Result<Summary, String> {
    let stream_name = names.stream.clone();
    let marker = names.marker(s.str(Key::RestoreMarkKey));
    // On a cluster, only the node serving the stream's slot restores it (the marker shares it).
    gil.with(|ctx| crate::host::cluster::serves(ctx, &stream_name))?;
    let whole = req.user.is_none();
    // Conditions, and where an interrupted run stopped.
    let (len, mark) = gil.with(|ctx| {
        let mark = stream::call_read(ctx, "GET", &[marker.as_bytes()])
            .ok()
            .as_ref()
            .and_then(stream::text);
        (stream::length(ctx, &stream_name), mark)
    });
    let resume_from = mark
        .as_deref()
        .and_then(|m| m.strip_prefix("in-progress "))
        .and_then(|n| n.trim().parse::<usize>().ok());
    if whole && !req.force && resume_from.is_none() {
        if mark.is_some() {
            return Ok(Summary {
                skipped: Some(format!("marker key {marker} exists")),
                ..Summary::default()
            });
        }
        if len > 0 {
            return Ok(Summary {
                skipped: Some(format!("stream {stream_name} is not empty ({len} entries)")),
                ..Summary::default()
            });
        }
    }
    let tables = Tables::from_settings(s)?;
    let client = sink::client().map_err(|e| e.to_string())?;
    let min_rows = s.uint(Key::RestoreMinRowsTrigger) as usize;
    let dry = dry_run(s);
    let sample = s.uint(Key::RestoreLogSample) as usize;
    let start = if whole { resume_from.unwrap_or(0) } else { 0 };
    let mut added = start;
    let mut sampled = 0;
    let write = |chunk: &[String]| -> Result<(), String> {
        for e in chunk.iter().take(sample.saturating_sub(sampled)) {
            sampled += 1;
            logging::info(&format!("RESTORE sample {sampled}: {} bytes", e.len()));
        }
        if dry {
            return Ok(());
        }
        gil.with(|ctx| -> Result<(), String> {
            crate::host::cluster::serves(ctx, &stream_name)?;
            for e in chunk {
                stream::add(
                    ctx,
                    &stream_name,
                    &[(b"value", e.as_bytes()), (RESTORED_FIELD.as_bytes(), b"1")],
                )?;
            }
            added += chunk.len();
            if whole {
                let progress = format!("in-progress {added}");
                stream::call_write(ctx, "SET", &[marker.as_bytes(), progress.as_bytes()])?;
            }
            Ok(())
        })
    };
    let mut builder = Builder::new(s, BOUNDS, start, write);
    builder.shard = names.shard;
    let mut rows = 0usize;
    let mut partitions = 0usize;
    let mut too_few: Option<usize> = None;
    let mut each = |part: crate::snowflake::Partition<'_>| -> Result<(), String> {
        if partitions == 0 {
            let total = part.total_rows.map_or(part.rows.len(), |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            });
            if whole && !req.force && min_rows > 0 && total < min_rows {
                too_few = Some(total);
                return Err("too few rows".into());
            }
        }
        partitions += 1;
        for row in rows_of(part.columns, part.rows) {
            rows += 1;
            builder.push(row)?;
        }
        Ok(())
    };
    let read = client.execute_each(
        &query(&tables, req, s.uint(Key::RestoreLimitTotal)),
        &mut each,
    );
    if let Some(total) = too_few {
        return Ok(Summary {
            rows: total,
            skipped: Some(format!(
                "{total} rows qualify, fewer than RESTORE_MIN_ROWS_TRIGGER={min_rows}"
            )),
            ..Summary::default()
        });
    }
    read.map_err(|e| e.to_string())?;
    builder.finish()?;
    let (entries, records, peak) = (builder.entries, builder.records, builder.peak_bytes);
    drop(builder);
    if dry {
        logging::info(&format!(
            "RESTORE DRY_RUN: {rows} rows would become {entries} entries (not added)"
        ));
        return Ok(Summary {
            rows,
            entries,
            records,
            skipped: None,
        });
    }
    if whole {
        let done = format!(
            "done {} {}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
            entries
        );
        gil.with(|ctx| {
            crate::host::cluster::serves(ctx, &stream_name)?;
            stream::call_write(ctx, "SET", &[marker.as_bytes(), done.as_bytes()])
        })?;
    }
    logging::info(&format!(
        "RESTORE done: {rows} rows, {entries} entries ({records} records){}; read in {partitions} partitions, \
         at most {peak} bytes of entries held at once",
        if start > 0 {
            format!(", resumed after {start}")
        } else {
            String::new()
        }
    ));
    Ok(Summary {
        rows,
        entries: entries.saturating_sub(start),
        records,
        skipped: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Value as V;
    use crate::statement::Bind;

    fn row(id: &str, track: &str, visits: i64, saved: bool, page: &str) -> Row {
        Row {
            tracked_id: id.into(),
            track_id: track.into(),
            page_name: Some(page.into()),
            query_row_count: Some("3".into()),
            title: Some("T".into()),
            track_type: Some("QUERY".into()),
            url: Some("/u".into()),
            visited_count: visits,
            visited_at: (visits > 0).then(|| "2026-11-20 10:00:00".into()),
            saved,
            saved_at: saved.then(|| "2026-11-21 10:00:00".into()),
            user_email: Some(format!("{id}@example.com")),
        }
    }

    #[test]
    fn rows_are_grouped_by_user_and_kind_with_the_page_in_visited_keys() {
        let s = Snapshot::defaults();
        let e = entries_of(
            &[
                row("alice-1", "a", 2, true, "search"),
                row("alice-1", "b", 1, false, "home"),
            ],
            &s,
        );
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].contains("alice-1@example.com"));
        assert!(e
            .iter()
            .any(|x| x.contains("userdata-events:alice-1/visited/search")));
        assert!(e
            .iter()
            .any(|x| x.contains("userdata-events:alice-1/visited/home")));
        assert!(
            e.iter()
                .any(|x| x.contains("userdata-events:alice-1/saved")
                    && x.contains("\"action\":\"s\""))
        );
    }

    #[test]
    fn include_flags_and_key_append_page_are_honoured() {
        let s = Snapshot::defaults()
            .with(Key::KeyAppendPage, V::Bool(false))
            .with(Key::RestoreIncludeSaved, V::Bool(false));
        let e = entries_of(&[row("bob-2", "a", 1, true, "search")], &s);
        assert_eq!(e.len(), 2);
        assert!(e[1].contains("\"key\":\"userdata-events:bob-2/visited\""));
    }

    #[test]
    fn entries_hold_at_most_restore_batch_size_records() {
        let s = Snapshot::defaults().with(Key::RestoreBatchSize, V::Int(2));
        let rows: Vec<Row> = (0..5)
            .map(|i| row("c-1", &format!("t{i}"), 1, false, "p"))
            .collect();
        let e = entries_of(&rows, &s);
        assert_eq!(e.len(), 1 + 3);
    }

    #[test]
    fn the_query_binds_every_value_and_writes_only_validated_integers() {
        let req = Request {
            force: false,
            days: 7,
            user: Some("x'; DROP TABLE y".into()),
        };
        let st = query(&Tables::default(), &req, 2000);
        assert!(!st.sql.contains("DROP"));
        assert_eq!(st.binds, [Bind::Text("x'; DROP TABLE y".into())]);
        assert_eq!(st.sql.matches('?').count(), 1);
        assert!(st.sql.ends_with(" LIMIT 2000"), "{}", st.sql);
        assert_eq!(
            st.sql
                .matches(
                    "DATEADD(day, -7, CONVERT_TIMEZONE('UTC', CURRENT_TIMESTAMP())::TIMESTAMP_NTZ)"
                )
                .count(),
            2
        );
        let huge = Request {
            days: u64::MAX,
            user: None,
            ..req
        };
        let st = query(&Tables::default(), &huge, u64::MAX);
        assert!(st.binds.is_empty());
        assert!(st.sql.contains(&format!("DATEADD(day, -{MAX_DAYS}, ")));
        assert!(st.sql.ends_with(&format!(" LIMIT {}", i64::MAX)));
    }

    /// Records per key, in order, whatever the entries they were split into.
    fn records_by_key(entries: &[String]) -> BTreeMap<String, Vec<Value>> {
        let mut by_key: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for e in entries {
            let v: Value = serde_json::from_str(e).expect("json");
            if let Some(k) = v["key"].as_str() {
                let records = v["records"].as_array().expect("records").clone();
                by_key.entry(k.to_string()).or_default().extend(records);
            }
        }
        by_key
    }

    #[test]
    fn a_restore_of_many_rows_holds_a_bounded_amount_and_writes_in_bounded_chunks() {
        let s = Snapshot::defaults().with(Key::RestoreBatchSize, V::Int(100));
        // 20,000 rows: 40 users with 500 items each, on many pages (many groups per user).
        let rows: Vec<Row> = (0..20_000)
            .map(|i| {
                let page = format!("page{}", i % 37);
                row(
                    &format!("u{:03}-x", i / 500),
                    &format!("t{i:05}"),
                    1,
                    i % 3 == 0,
                    &page,
                )
            })
            .collect();
        let unbounded = entries_of(&rows, &s);
        let total: usize = unbounded.iter().map(String::len).sum();
        let bounds = Bounds {
            chunk: 7,
            chunk_bytes: 16 * 1024,
            grouped_bytes: 32 * 1024,
        };
        let mut written: Vec<String> = Vec::new();
        let mut biggest_chunk = (0, 0);
        let mut b = Builder::new(&s, bounds, 0, |chunk: &[String]| {
            let bytes: usize = chunk.iter().map(String::len).sum();
            biggest_chunk = (biggest_chunk.0.max(chunk.len()), biggest_chunk.1.max(bytes));
            written.extend_from_slice(chunk);
            Ok(())
        });
        for r in rows {
            b.push(r).expect("push");
        }
        b.finish().expect("finish");
        let (peak, entries, records) = (b.peak_bytes, b.entries, b.records);
        drop(b);
        let largest_entry = written.iter().map(String::len).max().unwrap_or(0);
        let bound = bounds.grouped_bytes + bounds.chunk_bytes + 2 * largest_entry;
        eprintln!(
            "MEASURED restore of 20000 rows: {total} bytes of entries, at most {peak} held (bound {bound}); {} entries",
            written.len()
        );
        assert!(
            peak > 0 && peak <= bound,
            "held {peak} bytes, bound {bound}"
        );
        assert!(
            peak * 20 < total,
            "held {peak} of {total} bytes: not streamed"
        );
        assert!(biggest_chunk.0 <= 7, "{biggest_chunk:?}");
        assert!(
            biggest_chunk.1 <= bounds.chunk_bytes + largest_entry,
            "{biggest_chunk:?}"
        );
        // Nothing lost or reordered: every key has the same records in the same order, each entry
        // holds at most RESTORE_BATCH_SIZE records, and each user's e-mail comes first.
        assert_eq!(records_by_key(&written), records_by_key(&unbounded));
        assert_eq!(entries, written.len());
        assert_eq!(records, 20_000 + 20_000usize.div_ceil(3));
        for e in &written {
            let v: Value = serde_json::from_str(e).expect("json");
            assert!(v["records"].as_array().map_or(0, Vec::len) <= 100);
        }
        assert!(written[0].contains("u000-x@example.com"));
    }

    #[test]
    fn a_resumed_restore_skips_exactly_the_entries_an_interrupted_one_added() {
        let s = Snapshot::defaults().with(Key::RestoreBatchSize, V::Int(3));
        let rows: Vec<Row> = (0..50)
            .map(|i| row(&format!("u{}-x", i / 10), &format!("t{i:02}"), 1, true, "p"))
            .collect();
        let all = entries_of(&rows, &s);
        let mut rest = Vec::new();
        let mut b = Builder::new(&s, BOUNDS, 9, |chunk: &[String]| {
            rest.extend_from_slice(chunk);
            Ok(())
        });
        for r in rows {
            b.push(r).expect("push");
        }
        b.finish().expect("finish");
        assert_eq!(b.entries, all.len());
        drop(b);
        assert_eq!(rest, all[9..]);
    }
}
