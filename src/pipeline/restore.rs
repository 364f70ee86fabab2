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
use crate::statement::{Bind, Statement};

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

const TS: &str = "'YYYY-MM-DD HH24:MI:SS'";

/// Longest window the query accepts, in days (about 270 years): `RESTORE_DAYS` beyond it is clamped,
/// so the literal can never overflow Snowflake's date arithmetic.
pub const MAX_DAYS: u64 = 100_000;

/// The restore query. The window and the cap are literal integers, not binds: Snowflake needs
/// constants in `LIMIT` (a bound row count is refused on some paths: "Invalid row count '?'"), and
/// both are integers the settings have already validated, so no input reaches the text. The window
/// is measured in UTC (`CONVERT_TIMEZONE('UTC', CURRENT_TIMESTAMP())::TIMESTAMP_NTZ`): the `*_dts`
/// columns are UTC wall-clock times without a zone, and comparing them with the session zone's
/// `CURRENT_TIMESTAMP()` would shift the window by the zone's offset.
pub fn query(tables: &Tables, req: &Request, limit: u64) -> Statement {
    let user_filter = if req.user.is_some() {
        " AND t.username = ?"
    } else {
        ""
    };
    let days = req.days.min(MAX_DAYS);
    let limit = limit.min(i64::MAX as u64);
    let since = format!(
        "DATEADD(day, -{days}, CONVERT_TIMEZONE('UTC', CURRENT_TIMESTAMP())::TIMESTAMP_NTZ)"
    );
    let sql = format!(
        "SELECT t.tracked_id, t.track_id, t.page_name, t.query_row_count, t.track_title, t.track_type, t.track_url, \
         t.visited_count, TO_VARCHAR(t.visited_dts, {TS}) AS visited_at, t.saved, TO_VARCHAR(t.saved_dts, {TS}) AS saved_at, \
         u.user_email \
         FROM {tracked} t \
         LEFT JOIN (SELECT username, MIN(user_email) AS user_email FROM {user} GROUP BY username) u ON u.username = t.username \
         WHERE (t.visited_dts >= {since} OR t.saved_dts >= {since}){user_filter} \
         ORDER BY t.tracked_id, t.track_id \
         LIMIT {limit}",
        tracked = tables.tracked,
        user = tables.user,
    );
    let binds = req.user.iter().map(|u| Bind::Text(u.clone())).collect();
    Statement::new(sql, binds)
}

fn rows_of(result: &crate::snowflake::QueryResult) -> Vec<Row> {
    let num = |v: Option<&str>| v.and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (0..result.rows.len())
        .map(|i| {
            let get = |name: &str| result.get(i, name).map(String::from);
            Row {
                tracked_id: get("TRACKED_ID").unwrap_or_default(),
                track_id: get("TRACK_ID").unwrap_or_default(),
                page_name: get("PAGE_NAME"),
                query_row_count: get("QUERY_ROW_COUNT"),
                title: get("TRACK_TITLE"),
                track_type: get("TRACK_TYPE"),
                url: get("TRACK_URL"),
                visited_count: num(result.get(i, "VISITED_COUNT")) as i64,
                visited_at: get("VISITED_AT"),
                saved: num(result.get(i, "SAVED")) >= 1.0,
                saved_at: get("SAVED_AT"),
                user_email: get("USER_EMAIL"),
            }
        })
        .collect()
}

/// Turns rows into stream entries (the `value` JSON of each), grouped by user and kind, in the fixed
/// order of the query.
fn entries_of(rows: &[Row], s: &Snapshot) -> Vec<String> {
    let prefix = s.str(Key::KeyPrefix);
    let batch = s.uint(Key::RestoreBatchSize).max(1) as usize;
    let append_page = s.bool(Key::KeyAppendPage);
    let mut groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut emails: BTreeMap<String, String> = BTreeMap::new();
    for r in rows {
        if let Some(e) = &r.user_email {
            emails.insert(r.tracked_id.clone(), e.clone());
        }
        let record = |action: &str, at: &Option<String>| {
            json!({"id": r.tracked_id, "page_name": r.page_name, "query_row_count": r.query_row_count,
                "track_id": r.track_id, "track_title": r.title, "track_type": r.track_type,
                "track_url": r.url, "lastplus": at, "action": action})
        };
        if s.bool(Key::RestoreIncludeVisited) && r.visited_count > 0 && r.visited_at.is_some() {
            let mut key = format!("{prefix}:{}/visited", r.tracked_id);
            if append_page {
                if let Some(p) = r.page_name.as_deref().filter(|p| !p.is_empty()) {
                    key.push('/');
                    key.push_str(p);
                }
            }
            groups
                .entry(key)
                .or_default()
                .push(record("v", &r.visited_at));
        }
        if s.bool(Key::RestoreIncludeSaved) && r.saved && r.saved_at.is_some() {
            let key = format!("{prefix}:{}/saved", r.tracked_id);
            groups
                .entry(key)
                .or_default()
                .push(record("s", &r.saved_at));
        }
    }
    let mut out: Vec<String> = emails
        .values()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|e| json!({"user_email": e}).to_string())
        .collect();
    for (key, records) in groups {
        for chunk in records.chunks(batch) {
            out.push(json!({"key": key, "records": chunk}).to_string());
        }
    }
    out
}

/// Entries added per lock hold.
const CHUNK: usize = 50;

/// Runs a restore (on a background thread: it waits for Snowflake).
pub fn run(req: &Request, gil: &Gil, s: &Snapshot) -> Result<Summary, String> {
    let stream_name = s.str(Key::RedisStream).to_string();
    let marker = s.str(Key::RestoreMarkKey).to_string();
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
    let result = client
        .execute(&query(&tables, req, s.uint(Key::RestoreLimitTotal)))
        .map_err(|e| e.to_string())?;
    let rows = rows_of(&result);
    let min_rows = s.uint(Key::RestoreMinRowsTrigger) as usize;
    if whole && !req.force && min_rows > 0 && rows.len() < min_rows {
        return Ok(Summary {
            rows: rows.len(),
            skipped: Some(format!(
                "{} rows qualify, fewer than RESTORE_MIN_ROWS_TRIGGER={min_rows}",
                rows.len()
            )),
            ..Summary::default()
        });
    }
    let entries = entries_of(&rows, s);
    let records = entries
        .iter()
        .map(|e| e.matches("\"action\"").count())
        .sum();
    let dry = dry_run(s);
    let sample = s.uint(Key::RestoreLogSample) as usize;
    for (i, e) in entries.iter().enumerate().take(sample) {
        logging::info(&format!("RESTORE sample {}: {} bytes", i + 1, e.len()));
    }
    let start = if whole {
        resume_from.unwrap_or(0).min(entries.len())
    } else {
        0
    };
    if dry {
        logging::info(&format!(
            "RESTORE DRY_RUN: {} rows would become {} entries (not added)",
            rows.len(),
            entries.len()
        ));
        return Ok(Summary {
            rows: rows.len(),
            entries: entries.len(),
            records,
            skipped: None,
        });
    }
    let mut added = start;
    for chunk in entries[start..].chunks(CHUNK) {
        gil.with(|ctx| -> Result<(), String> {
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
        })?;
    }
    if whole {
        let done = format!(
            "done {} {}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
            entries.len()
        );
        gil.with(|ctx| stream::call_write(ctx, "SET", &[marker.as_bytes(), done.as_bytes()]))?;
    }
    logging::info(&format!(
        "RESTORE done: {} rows, {} entries ({} records){}",
        rows.len(),
        entries.len(),
        records,
        if start > 0 {
            format!(", resumed after {start}")
        } else {
            String::new()
        }
    ));
    Ok(Summary {
        rows: rows.len(),
        entries: entries.len() - start,
        records,
        skipped: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Value as V;

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
}
