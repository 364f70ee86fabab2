//! Periodic work off the data path: the metrics log line, the Snowflake keep-alive, the start-up
//! connection check, and the entry-ID regression check.
//!
//! ID regression: each TRACKED row remembers the newest entry applied to it, and the MERGE ignores
//! entries at or below that. If the stream is recreated (or the clock went back) so that new entries
//! get IDs below ones already applied, those entries would be ignored silently. After connecting, the
//! newest applied ID in Snowflake is compared with the stream's newest ID, then again on every metrics
//! interval (every minute when the metrics line is off); a regression is logged as a WARNING on every
//! metrics interval and shown in `WB.STATUS` (`id_regression`) until resolved.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::control::{dry_run, State};
use super::sink;
use crate::entry::EntryId;
use crate::host::gil::Gil;
use crate::host::logging;
use crate::host::stream;
use crate::pipeline::control::Pipeline;
use crate::pipeline::status;
use crate::settings::{self, Key};
use crate::sql::Tables;

/// Starts the housekeeping thread of `pipeline`.
pub fn spawn(pipeline: &'static Pipeline) -> Result<JoinHandle<()>, String> {
    let gil = Gil::new().ok_or("could not create the housekeeping context")?;
    pipeline.spawn_supervised("wb-housekeeping", move || run(pipeline, &gil))
}

fn run(p: &'static Pipeline, gil: &Gil) {
    let c = &p.control;
    let mut last_metrics = Instant::now();
    let mut last_ping = Instant::now();
    let mut connected = false;
    let mut last_regression_check = Instant::now();
    let mut last_policy_check = Instant::now() - Duration::from_secs(60);
    let mut warned_policy = String::new();
    while !c.stopping() {
        std::thread::sleep(Duration::from_millis(200));
        let snap = settings::current();
        let every = snap.uint(Key::MetricsIntervalSeconds);
        // One metrics line and one eviction check for the process: the main pipeline's
        // housekeeper does them (the report covers every stream).
        let first = std::ptr::eq(p, super::control::main());
        if first && every > 0 && last_metrics.elapsed() >= Duration::from_secs(every) {
            last_metrics = Instant::now();
            log_metrics(p);
        }
        if super::ack::retries_due(p) {
            super::ack::drain_in_holds(p, gil);
        }
        // Paused, the writer keeps off the Redis lock (MODULE UNLOAD waits for its threads).
        if first
            && !c.paused.load(std::sync::atomic::Ordering::Relaxed)
            && last_policy_check.elapsed() >= Duration::from_secs(10)
        {
            last_policy_check = Instant::now();
            warn_eviction(gil, &mut warned_policy);
        }
        let live = matches!(c.state(), State::Running) && !dry_run(&snap);
        if !live {
            continue;
        }
        if !connected {
            connected = true;
            last_ping = Instant::now();
            last_regression_check = Instant::now();
            connect_check(p, gil);
            continue;
        }
        let check_every = Duration::from_secs(if every > 0 { every } else { 60 });
        if last_regression_check.elapsed() >= check_every {
            last_regression_check = Instant::now();
            if let Ok(client) = sink::client_of(p) {
                regression_check(p, gil, &client);
            }
        }
        let ping_every = snap.uint(Key::SnowflakePingIntervalSeconds);
        if ping_every > 0 && last_ping.elapsed() >= Duration::from_secs(ping_every) {
            last_ping = Instant::now();
            if let Err(e) = sink::client_of(p).and_then(|cl| cl.ping()) {
                logging::warning(&format!("Snowflake keep-alive failed: {e}"));
                p.metrics.set_error(&e.to_string());
            }
        }
    }
}

/// Logs a warning (once per policy) when `maxmemory-policy` can evict the stream.
fn warn_eviction(gil: &Gil, warned: &mut String) {
    let policy = gil.with(|ctx| {
        if stream::is_replica(ctx) {
            None
        } else {
            Some(status::maxmemory_policy(ctx))
        }
    });
    let Some(policy) = policy else { return };
    if policy == *warned {
        return;
    }
    if let Some(w) = status::eviction_warning(&policy) {
        logging::warning(&format!("EVICTION {w}"));
    }
    *warned = policy;
}

/// One metrics line with the figures operators watch.
fn log_metrics(p: &Pipeline) {
    let figures = status::report(false);
    let pick = |name: &str| {
        figures
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| match v {
                status::Figure::Int(n) => n.to_string(),
                status::Figure::Text(t) => t.clone(),
            })
            .unwrap_or_default()
    };
    logging::info(&format!(
        "METRICS state={} read={} committed={} records={} skipped={} dead_lettered={} retries={} in_flight={} p50_ms={} p99_ms={}",
        pick("state"),
        pick("entries_read"),
        pick("entries_committed"),
        pick("records_written"),
        pick("skipped"),
        pick("dead_lettered"),
        pick("retries"),
        pick("in_flight"),
        pick("batch_latency_p50_ms"),
        pick("batch_latency_p99_ms"),
    ));
    let regression = p.metrics.id_regression.lock().clone();
    if !regression.is_empty() {
        logging::warning(&format!("ID REGRESSION {regression}"));
    }
}

/// At start (and after a promotion): connect with the start-up attempts, log the session when asked,
/// and compare the newest applied entry ID with the stream's.
fn connect_check(p: &'static Pipeline, gil: &Gil) {
    let snap = settings::current();
    let c = &p.control;
    let client = match sink::client_of(p) {
        Ok(cl) => cl,
        Err(e) => {
            logging::warning(&format!("Snowflake client not usable: {e}"));
            p.metrics.set_error(&e.to_string());
            return;
        }
    };
    match client.connect(&|| c.stopping()) {
        Ok(s) => {
            if snap.bool(Key::VerboseSnowflakeTest) {
                logging::info(&format!(
                    "Snowflake session: user={} role={} warehouse={} database={} schema={} latency_ms={}",
                    s.user.as_deref().unwrap_or("-"),
                    s.role.as_deref().unwrap_or("-"),
                    s.warehouse.as_deref().unwrap_or("-"),
                    s.database.as_deref().unwrap_or("-"),
                    s.schema.as_deref().unwrap_or("-"),
                    s.latency_ms
                ));
            }
        }
        Err(e) => {
            logging::warning(&format!(
                "Snowflake not reachable at start-up: {e} (the writer keeps retrying)"
            ));
            p.metrics.set_error(&e.to_string());
            return;
        }
    }
    regression_check(p, gil, &client);
}

/// Compares the newest entry ID applied in Snowflake with the stream's newest: at start, then on
/// every metrics interval (a stream recreated at run time, a clock set back), until resolved.
///
/// With `STREAM_SHARDS` > 1 there is no such check: the newest ID applied in Snowflake may come
/// from any shard stream, each with its own node's clock, so a quiet shard's newest entry is older
/// without anything being wrong. Redis itself keeps each stream's IDs rising; a stream deleted and
/// made again is reported as `LOST` when it goes.
fn regression_check(p: &Pipeline, gil: &Gil, client: &crate::snowflake::Client) {
    if p.names.shard.is_some() {
        return;
    }
    let snap = settings::current();
    let Ok(tables) = Tables::from_settings(&snap) else {
        return;
    };
    let newest_applied = client
        .execute(&crate::sql::queries::newest_applied(&tables))
        .ok()
        .and_then(|r| {
            r.rows
                .first()
                .and_then(|row| row.first().cloned().flatten())
        })
        .and_then(|text| EntryId::from_sort_key(&text).ok());
    let stream_name = p.source().to_string();
    let newest_in_stream = gil.with(|ctx| stream::last_generated_id(ctx, &stream_name));
    let newest_in_stream = EntryId::parse(&newest_in_stream).unwrap_or_default();
    if let Some(applied) = newest_applied {
        if newest_in_stream < applied {
            let what = format!(
                "Snowflake has applied entry {applied} but the stream's newest entry is {newest_in_stream}: new entries with lower IDs would be taken as already applied. Was the stream recreated or the clock set back?"
            );
            logging::warning(&format!("ID REGRESSION {what}"));
            *p.metrics.id_regression.lock() = what;
        } else {
            p.metrics.id_regression.lock().clear();
        }
    }
}
