//! Where a batch goes: Snowflake, or the log in dry run.
//!
//! A sink turns a batch of decoded entries into statements ([`crate::sql::plan`]) and commits them.
//! Its error ([`SinkError`]) is one of the typed classes of [`super::retry`], where the one policy
//! decides what the worker does next: retry, retry slowly, split, or dead-letter.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::entry::Decoded;
use crate::host::logging;
use crate::pipeline::control::Pipeline;
use crate::settings::{self, Key, Snapshot};
use crate::snowflake::{Client, ClientConfig, SnowflakeError};
use crate::sql::{self, Planned, Tables};

pub use super::retry::SinkError;

/// The most bytes of bound data one entry may carry: `BATCH_MAX_BYTES`, or 1 MiB if that is lower.
/// An entry is never split (that keeps replays exact), so a larger one could never be sent.
pub fn max_entry_bytes(snap: &Snapshot) -> usize {
    (snap.uint(Key::BatchMaxBytes) as usize).max(1 << 20)
}

/// The bytes of bound data `decoded` would carry, when more than one statement may carry: checked
/// at claim time, so such an entry is dead-lettered with the reason instead of holding up its
/// partition. Only entries whose stream size is large are planned (`raw_bytes`).
pub fn too_large(decoded: &Decoded, raw_bytes: usize, snap: &Snapshot) -> Option<(usize, usize)> {
    let max = max_entry_bytes(snap);
    if raw_bytes < max / 4 {
        return None;
    }
    let tables = Tables::from_settings(snap).ok()?;
    let bound: usize = sql::plan(std::slice::from_ref(decoded), &tables, usize::MAX)
        .iter()
        .map(|p| p.statement.size() - p.statement.sql.len())
        .max()
        .unwrap_or(0);
    (bound > max).then_some((bound, max))
}

/// Commits batches.
pub trait Sink: Send + Sync {
    /// Commits `entries` under the settings `snap` (one snapshot for the whole attempt).
    fn commit(&self, entries: &[Decoded], snap: &Snapshot) -> Result<(), SinkError>;
}

fn log_planned(p: &Planned, snap: &Snapshot, dry: bool) {
    let verb = if dry { "DRY_RUN" } else { "executing" };
    if snap.bool(Key::LogSql) || dry {
        logging::info(&format!(
            "{} {verb}: {} rows from {} entries, {} bytes bound: {}",
            p.target.marker(),
            p.rows,
            p.entries.len(),
            p.statement.size() - p.statement.sql.len(),
            p.statement
                .sql
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ));
    } else {
        logging::debug(&format!(
            "{} {verb}: {} rows from {} entries",
            p.target.marker(),
            p.rows,
            p.entries.len()
        ));
    }
}

/// `RECORD_EXEC` lines (every record with `LOG_TRACKED_EACH=1`, in dry run, or for `TARGET_LOG_IDS`)
/// and `HASH_GEN` lines for generated track ids (`LOG_TRACKED_HASH_GEN=1`).
fn log_records(entries: &[Decoded], snap: &Snapshot, dry: bool) {
    let each = dry || snap.bool(Key::LogTrackedEach);
    let hash_gen = dry || snap.bool(Key::LogTrackedHashGen);
    let targets = snap.list(Key::TargetLogIds);
    for d in entries {
        let Decoded::Tracked(b) = d else { continue };
        for e in &b.events {
            let targeted = targets
                .iter()
                .any(|t| t == e.tracked_id() || t == e.username());
            if each || targeted {
                logging::info(&e.record_exec(b.id));
            }
            if hash_gen && e.track_id_generated {
                logging::info(&format!(
                    "HASH_GEN entry={} id={} track_id={} (from title|url|id)",
                    b.id,
                    e.tracked_id(),
                    e.track_id()
                ));
            }
        }
    }
}

/// Logs the statements instead of executing them.
pub struct DryRunSink;

impl Sink for DryRunSink {
    fn commit(&self, entries: &[Decoded], snap: &Snapshot) -> Result<(), SinkError> {
        let tables = Tables::from_settings(snap).map_err(SinkError::blocked)?;
        for p in sql::plan(entries, &tables, snap.uint(Key::BatchMaxBytes) as usize) {
            log_planned(&p, snap, true);
        }
        log_records(entries, snap, true);
        Ok(())
    }
}

/// Commits to Snowflake through the SQL API.
pub struct SnowflakeSink {
    pub client: Arc<Client>,
    /// Whose counters and triage evidence its commits feed.
    pub pipeline: &'static Pipeline,
}

impl Sink for SnowflakeSink {
    fn commit(&self, entries: &[Decoded], snap: &Snapshot) -> Result<(), SinkError> {
        let tables = Tables::from_settings(snap).map_err(SinkError::blocked)?;
        for p in sql::plan(entries, &tables, snap.uint(Key::BatchMaxBytes) as usize) {
            log_planned(&p, snap, false);
            self.pipeline
                .metrics
                .statements
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let submitted = Instant::now();
            let table = p.target.marker();
            let result =
                self.client.execute_idempotent(&p.statement).map_err(
                    |e| match SinkError::from(e) {
                        SinkError::Data { code, message, .. } => SinkError::Data {
                            code,
                            message,
                            table,
                        },
                        other => other,
                    },
                )?;
            self.pipeline.triage.accepted(table, submitted);
            if snap.bool(Key::TraceSql) {
                logging::info(&format!(
                    "{} done: handle {} rows affected {:?}",
                    p.target.marker(),
                    result.statement_handle,
                    result.rows_affected
                ));
            }
        }
        log_records(entries, snap, false);
        if snap.bool(Key::VerifyTrackedAfterWrite) {
            self.verify(entries, &tables, snap.uint(Key::VerifyTrackedLimit));
        }
        Ok(())
    }
}

impl SnowflakeSink {
    /// Reads back the rows of the batch's first events and logs them (identifiers and counts only).
    fn verify(&self, entries: &[Decoded], tables: &Tables, limit: u64) {
        let events = entries.iter().filter_map(|d| match d {
            Decoded::Tracked(b) => b.events.first(),
            _ => None,
        });
        for e in events {
            if self.pipeline.verified.fetch_add(1, Ordering::Relaxed) >= limit {
                return;
            }
            let stmt = sql::queries::written_row(tables, e.tracked_id(), e.track_id());
            match self.client.execute(&stmt) {
                Ok(r) => logging::info(&format!(
                    "VERIFY {} {}: {:?}",
                    e.tracked_id(),
                    e.track_id(),
                    r.rows.first()
                )),
                Err(err) => logging::warning(&format!(
                    "VERIFY {} {} failed: {err}",
                    e.tracked_id(),
                    e.track_id()
                )),
            }
        }
    }
}

/// The Snowflake client all workers of the main pipeline share (built once from the settings).
pub fn client() -> Result<Arc<Client>, SnowflakeError> {
    client_of(super::control::main())
}

/// The Snowflake client of `pipeline` (built once from the settings); the round trips it repeats
/// count in that pipeline's `retries`.
pub fn client_of(pipeline: &'static Pipeline) -> Result<Arc<Client>, SnowflakeError> {
    let mut slot = pipeline.client.lock();
    if let Some(c) = slot.as_ref() {
        return Ok(Arc::clone(c));
    }
    let cfg = ClientConfig::from_settings(&settings::current())
        .map_err(|e| SnowflakeError::config(e.to_string()))?;
    let c = Arc::new(Client::new(cfg)?.counting_retries(move || {
        pipeline.metrics.retries.fetch_add(1, Ordering::Relaxed);
    }));
    *slot = Some(Arc::clone(&c));
    Ok(c)
}

/// The sink the settings `snap` ask for, for `pipeline`.
pub fn current(pipeline: &'static Pipeline, snap: &Snapshot) -> Result<Box<dyn Sink>, SinkError> {
    if crate::pipeline::control::dry_run(snap) {
        return Ok(Box::new(DryRunSink));
    }
    Ok(Box::new(SnowflakeSink {
        client: client_of(pipeline).map_err(SinkError::from)?,
        pipeline,
    }))
}
