//! The migration from start to end: dumps in, staging table filled, one MERGE per table, summary out.
//!
//! Each dump is read in steps of `batch_size` keys or entries; every entry is decoded with the
//! module's rules and kept. When every dump has been read, the entries are folded into the module's
//! links ([`crate::sql::links_json`]: one row per TRACKED row and suffix of its entries, in stream
//! order whatever order the dumps gave them), staged in arrays under `BATCH_MAX_BYTES`, so the
//! number of INSERTs depends on the bytes to load, not on the step size, and the MERGEs run.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::dump::{self, Header};
use super::ids::legacy_id;
use super::source::{DumpServer, Fields};
use super::summary::{DumpSummary, Summary};
use super::MigrateError;
use crate::entry::{self, legacy, Decoded, EntryId, Rules};
use crate::host::logging;
use crate::settings::{self, Key, Snapshot};
use crate::snowflake::{Client, ClientConfig};
use crate::sql::stage::{self, Stage};
use crate::sql::{self, Tables, Target};
use crate::statement::Statement;

/// How many undecodable entries the summary names.
const UNDECODABLE_SAMPLES: usize = 10;

/// What to migrate and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub dumps: Vec<PathBuf>,
    /// Patterns of legacy string keys (`EXTRA_BRIDGE_KEYS` unless given).
    pub patterns: Vec<String>,
    /// The stream (`REDIS_STREAM` unless given).
    pub stream: String,
    /// The database of keys and stream (`REDIS_DB`).
    pub db: i64,
    /// Keys or entries read per step.
    pub batch_size: usize,
    /// Decode and plan, log the SQL, execute nothing.
    pub dry_run: bool,
    pub redis_server: PathBuf,
}

impl Options {
    /// The options the settings imply, for `dumps`, with the server binary at `redis_server`.
    pub fn from_settings(snap: &Snapshot, dumps: Vec<PathBuf>, redis_server: PathBuf) -> Options {
        Options {
            dumps,
            patterns: snap.list(Key::ExtraBridgeKeys).to_vec(),
            stream: snap.str(Key::RedisStream).to_string(),
            db: snap.int(Key::RedisDb),
            batch_size: 1000,
            dry_run: snap.bool(Key::DryRun),
            redis_server,
        }
    }
}

/// Progress reports, for a progress bar. Every method has a no-op default.
pub trait Progress {
    /// Reading `path` starts; it holds `total` keys and entries to read.
    fn dump_started(&self, _path: &Path, _total: u64) {}
    /// `n` more keys or entries read.
    fn advanced(&self, _n: u64) {}
    /// What is happening now (`"merging TRACKED"`, ...).
    fn phase(&self, _what: &str) {}
    /// The current dump is read.
    fn dump_finished(&self) {}
}

/// No progress display.
pub struct Quiet;
impl Progress for Quiet {}

/// The settings from the process environment, with the module's names and defaults (see
/// [`settings::initial`]); invalid values are reported and replaced by the default. The values are
/// also made current, so [`logging`] honours `LOG_LEVEL`.
pub fn settings_from_env() -> Snapshot {
    let env = |name: &str| std::env::var(name).ok();
    let mut snap = Snapshot::defaults();
    for &key in Key::ALL {
        let (text, _, invalid) = settings::initial(key, &env);
        if let Some(e) = invalid {
            logging::warning(&format!("{key}: {e}; using the default"));
        }
        if let Ok(value) = settings::parse(key, &text) {
            settings::store(key, value.clone());
            snap = snap.with(key, value);
        }
    }
    snap
}

/// Runs the migration.
pub fn run(
    opts: &Options,
    snap: &Snapshot,
    progress: &dyn Progress,
) -> Result<Summary, MigrateError> {
    let started = Instant::now();
    let headers = opts
        .dumps
        .iter()
        .map(|p| {
            dump::read_header(p).map_err(|reason| MigrateError::Dump {
                path: p.display().to_string(),
                reason,
            })
        })
        .collect::<Result<Vec<Header>, _>>()?;
    let tables = Tables::from_settings(snap).map_err(MigrateError::Settings)?;
    let max_bytes = usize::try_from(snap.uint(Key::BatchMaxBytes)).unwrap_or(usize::MAX);
    let mut m = Migration {
        rules: Rules::from_settings(snap),
        writer: Writer::new(opts.dry_run, snap, &tables)?,
        seen: HashSet::new(),
        summary: Summary {
            dry_run: opts.dry_run,
            ..Summary::default()
        },
        writes: Vec::new(),
        tracked: Pending::new(Target::Tracked, max_bytes),
        users: Pending::new(Target::User, max_bytes),
        tables,
    };
    let outcome = m.read_all(opts, &headers, progress).and_then(|()| {
        m.flush_all()?;
        m.writer.merge(&m.tables, &mut m.summary, progress)
    });
    m.writer.cleanup(&mut m.summary);
    outcome?;
    m.summary.round_trips = m.writer.round_trips();
    m.summary.elapsed = started.elapsed();
    Ok(m.summary)
}

struct Migration {
    rules: Rules,
    tables: Tables,
    writer: Writer,
    /// IDs of the entries read so far: the same entry in two dumps is loaded once.
    seen: HashSet<EntryId>,
    summary: Summary,
    /// The entries that write something, kept until every dump is read: a row's entries may come
    /// from several dumps, in any order, and are folded together in stream order.
    writes: Vec<Decoded>,
    tracked: Pending,
    users: Pending,
}

impl Migration {
    fn read_all(
        &mut self,
        opts: &Options,
        headers: &[Header],
        progress: &dyn Progress,
    ) -> Result<(), MigrateError> {
        for (path, header) in opts.dumps.iter().zip(headers) {
            let newest = if header.valkey {
                dump::NEWEST_KNOWN_VALKEY_VERSION
            } else {
                dump::NEWEST_KNOWN_VERSION
            };
            if header.version > newest {
                logging::warning(&format!(
                    "{}: RDB version {} is newer than this tool knows ({newest}); the server decides",
                    path.display(),
                    header.version,
                ));
            }
            let mut server = DumpServer::start(&opts.redis_server, path)
                .map_err(|reason| MigrateError::Server(format!("{}: {reason}", path.display())))?;
            let d = self.read_dump(&mut server, opts, path, header, progress)?;
            self.summary.dumps.push(d);
            progress.dump_finished();
        }
        Ok(())
    }

    fn read_dump(
        &mut self,
        server: &mut DumpServer,
        opts: &Options,
        path: &Path,
        header: &Header,
        progress: &dyn Progress,
    ) -> Result<DumpSummary, MigrateError> {
        let read_err = |what: String| {
            let p = path.display().to_string();
            move |reason: String| MigrateError::Read {
                what: format!("{p} {what}"),
                reason,
            }
        };
        let step = opts.batch_size.max(1);
        server
            .select(opts.db)
            .map_err(read_err("database".into()))?;
        let mut keys = BTreeSet::new();
        for pattern in &opts.patterns {
            keys.extend(
                server
                    .string_keys(pattern, step)
                    .map_err(read_err(format!("keys {pattern}")))?,
            );
        }
        let stream_len = server
            .stream_len(&opts.stream)
            .map_err(read_err(opts.stream.clone()))?;
        progress.dump_started(path, keys.len() as u64 + stream_len);
        let mut d = DumpSummary {
            path: path.display().to_string(),
            rdb_version: header.version,
            redis_version: header.redis_version.clone(),
            ..DumpSummary::default()
        };

        let fallback_ms = header
            .ctime
            .and_then(|s| u64::try_from(s).ok())
            .map_or(0, |s| s.saturating_mul(1000));
        let keys: Vec<Vec<u8>> = keys.into_iter().collect();
        for names in keys.chunks(step) {
            let values = server
                .values(names)
                .map_err(read_err("legacy keys".into()))?;
            let mut batch = Vec::with_capacity(names.len());
            for (name, value) in names.iter().zip(values) {
                let Some(value) = value else { continue };
                d.legacy_keys += 1;
                let fields = legacy::import_fields(name, &value, &self.rules);
                let id = legacy_id(name, &value, &fields, &self.rules, fallback_ms);
                let label = format!("key {}", String::from_utf8_lossy(name));
                batch.push((label, id, fields));
            }
            self.take(batch)?;
            progress.advanced(names.len() as u64);
        }

        let mut after = None;
        loop {
            let entries = server
                .entries_after(&opts.stream, after, step)
                .map_err(read_err(opts.stream.clone()))?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            after = Some(*last);
            let n = entries.len() as u64;
            d.stream_entries += n;
            let batch = entries
                .into_iter()
                .map(|(id, fields)| (format!("{} {id}", opts.stream), id, fields))
                .collect();
            self.take(batch)?;
            progress.advanced(n);
        }
        Ok(d)
    }

    /// Decodes one step's entries, counts them, and stages what they write.
    fn take(&mut self, batch: Vec<(String, EntryId, Fields)>) -> Result<(), MigrateError> {
        let mut decoded = Vec::with_capacity(batch.len());
        for (label, id, fields) in batch {
            if !self.seen.insert(id) {
                self.summary.duplicates += 1;
                continue;
            }
            let d = entry::decode(id, &fields, &self.rules);
            d.tally(&mut self.summary.tally);
            if let Decoded::Undecodable { reason, .. } = &d {
                if self.summary.undecodable_samples.len() < UNDECODABLE_SAMPLES {
                    self.summary
                        .undecodable_samples
                        .push(format!("{label}: {reason}"));
                }
            }
            decoded.push(d);
        }
        self.writes.extend(
            decoded
                .into_iter()
                .filter(|d| matches!(d, Decoded::CreateUser(_) | Decoded::Tracked(_))),
        );
        Ok(())
    }

    /// Folds every entry read into links and stages them, in arrays under the byte cap.
    fn flush_all(&mut self) -> Result<(), MigrateError> {
        let (tracked, users) = sql::links_json(&self.writes);
        for (pending, links) in [(&mut self.tracked, tracked), (&mut self.users, users)] {
            for link in links {
                if let Some((json, rows)) = pending.add(&format!("[{link}]"), 1) {
                    self.writer
                        .stage(pending.target, &json, rows, &mut self.summary)?;
                }
            }
        }
        for pending in [&mut self.tracked, &mut self.users] {
            if let Some((json, rows)) = pending.take() {
                self.writer
                    .stage(pending.target, &json, rows, &mut self.summary)?;
            }
        }
        Ok(())
    }
}

/// One target's planned JSON not yet staged: arrays joined until the byte cap.
struct Pending {
    target: Target,
    max_bytes: usize,
    /// The elements of the joined arrays, without the brackets.
    body: String,
    rows: usize,
}

impl Pending {
    fn new(target: Target, max_bytes: usize) -> Pending {
        Pending {
            target,
            max_bytes,
            body: String::new(),
            rows: 0,
        }
    }

    /// Joins a JSON array; returns the previous content (as an array) when the two would not fit.
    fn add(&mut self, array: &str, rows: usize) -> Option<(String, usize)> {
        let inner = array
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(array);
        let full = !self.body.is_empty() && self.body.len() + inner.len() + 3 > self.max_bytes;
        let out = if full { self.take() } else { None };
        if !self.body.is_empty() {
            self.body.push(',');
        }
        self.body.push_str(inner);
        self.rows += rows;
        out
    }

    fn take(&mut self) -> Option<(String, usize)> {
        if self.body.is_empty() {
            return None;
        }
        let json = format!("[{}]", std::mem::take(&mut self.body));
        Some((json, std::mem::take(&mut self.rows)))
    }
}

/// Where statements go: Snowflake, or the log in a dry run.
enum Writer {
    DryRun {
        stage: Stage,
    },
    Live {
        client: Box<Client>,
        stage: Stage,
        created: bool,
    },
}

impl Writer {
    fn new(dry_run: bool, snap: &Snapshot, tables: &Tables) -> Result<Writer, MigrateError> {
        let now = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
        let stage = Stage::new(tables, &now, rand::random());
        if dry_run {
            return Ok(Writer::DryRun { stage });
        }
        let cfg =
            ClientConfig::from_settings(snap).map_err(|e| MigrateError::Settings(e.to_string()))?;
        let client = Client::new(cfg).map_err(|e| MigrateError::Snowflake(e.to_string()))?;
        Ok(Writer::Live {
            client: Box::new(client),
            stage,
            created: false,
        })
    }

    fn stage_table(&self) -> &Stage {
        match self {
            Writer::DryRun { stage } | Writer::Live { stage, .. } => stage,
        }
    }

    /// Runs (or logs) one statement.
    fn send(
        &mut self,
        what: &str,
        st: &Statement,
        summary: &mut Summary,
    ) -> Result<Option<u64>, MigrateError> {
        summary.statements += 1;
        match self {
            Writer::DryRun { .. } => {
                let bound: usize = st.binds.iter().map(|b| b.size()).sum();
                logging::info(&format!(
                    "DRY_RUN {what}: {} [{} binds, {bound} bytes]",
                    st.sql,
                    st.binds.len()
                ));
                Ok(None)
            }
            Writer::Live { client, .. } => {
                let sent = Instant::now();
                let r = client
                    .execute(st)
                    .map_err(|e| MigrateError::Snowflake(format!("{what}: {e}")))?;
                logging::debug(&format!(
                    "{what}: {} bytes, {} ms",
                    st.size(),
                    sent.elapsed().as_millis()
                ));
                Ok(r.rows_affected)
            }
        }
    }

    /// Stages one JSON array of `target` rows, creating the table first if needed.
    fn stage(
        &mut self,
        target: Target,
        json: &str,
        rows: usize,
        summary: &mut Summary,
    ) -> Result<(), MigrateError> {
        let stage = self.stage_table().clone();
        let first = match self {
            Writer::Live { created, .. } => !std::mem::replace(created, true),
            Writer::DryRun { .. } => summary.statements == 0,
        };
        if first {
            self.send("create staging table", &stage.create(), summary)?;
        }
        let what = format!("stage {} ({rows} rows)", stage::target_code(target));
        self.send(&what, &stage.insert(target, json), summary)?;
        *summary
            .staged
            .entry(stage::target_code(target))
            .or_default() += rows as u64;
        Ok(())
    }

    /// One MERGE per target table that has staged rows.
    fn merge(
        &mut self,
        tables: &Tables,
        summary: &mut Summary,
        progress: &dyn Progress,
    ) -> Result<(), MigrateError> {
        let stage = self.stage_table().clone();
        for target in [Target::Tracked, Target::User] {
            let code = stage::target_code(target);
            if summary.staged.get(code).copied().unwrap_or(0) == 0 {
                continue;
            }
            progress.phase(&format!("merging {code}"));
            let st = stage
                .merge(tables, target)
                .map_err(MigrateError::Settings)?;
            let changed = self.send(target.marker(), &st, summary)?;
            if let Some(n) = changed {
                summary.merged.insert(code, n);
            }
        }
        Ok(())
    }

    /// Drops the staging table if one was made (after success and failure alike).
    fn cleanup(&mut self, summary: &mut Summary) {
        let stage = self.stage_table().clone();
        let made = match self {
            Writer::Live { created, .. } => std::mem::replace(created, false),
            Writer::DryRun { .. } => summary.statements > 0,
        };
        if !made {
            return;
        }
        if let Err(e) = self.send("drop staging table", &stage.drop(), summary) {
            logging::warning(&format!("{e}; drop {} by hand", stage.name));
        }
    }

    fn round_trips(&self) -> u64 {
        match self {
            Writer::Live { client, .. } => client.round_trips(),
            Writer::DryRun { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_arrays_are_joined_until_the_byte_cap() {
        let mut p = Pending::new(Target::Tracked, 20);
        assert_eq!(p.add("[{\"a\":1}]", 1), None);
        assert_eq!(p.add("[{\"b\":2}]", 1), None);
        // The third would pass 20 bytes: the first two leave as one array.
        assert_eq!(
            p.add("[{\"c\":3}]", 1),
            Some(("[{\"a\":1},{\"b\":2}]".to_string(), 2))
        );
        assert_eq!(p.take(), Some(("[{\"c\":3}]".to_string(), 1)));
        assert_eq!(p.take(), None);
    }

    #[test]
    fn an_array_larger_than_the_cap_still_goes_alone() {
        let mut p = Pending::new(Target::User, 4);
        assert_eq!(p.add("[{\"long\":1}]", 1), None);
        assert_eq!(
            p.add("[{\"x\":1}]", 1),
            Some(("[{\"long\":1}]".to_string(), 1))
        );
    }
}
