//! The pipeline's counters: atomics bumped by the pipeline threads without a lock (the per-reason
//! tallies sit behind a short mutex), read by the report ([`super::status`]) on the main thread.
//! Each [`Pipeline`](super::control::Pipeline) has its own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::entry::Tally;

/// How many recent batch latencies the percentiles are computed over.
const LATENCY_WINDOW: usize = 1024;

/// Counters of the data path.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Entries claimed from the stream (a re-delivery counts again).
    pub entries_read: AtomicU64,
    /// Entries acknowledged after their outcome was settled.
    pub entries_acked: AtomicU64,
    /// Entries whose SQL Snowflake committed.
    pub entries_committed: AtomicU64,
    /// Undecodable or permanently rejected entries copied to the dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// Undecodable entries acknowledged without a copy (`ACK_INVALID_JSON=1`).
    pub dropped_invalid: AtomicU64,
    /// Statements Snowflake rejected permanently.
    pub failed: AtomicU64,
    /// Retries: round trips the Snowflake client repeats itself (throttling, outages, timeouts,
    /// renewed credentials) plus batches the pipeline sends again after the client gave up.
    pub retries: AtomicU64,
    /// Committed batches (round trips that wrote data).
    pub batches: AtomicU64,
    /// SQL statements sent.
    pub statements: AtomicU64,
    /// Claimed entries not yet acknowledged.
    pub in_flight: AtomicU64,
    /// Bytes of the claimed entries workers hold (their size in the stream).
    pub in_flight_bytes: AtomicU64,
    /// Wall-clock ms of the last successful commit (0 = never).
    pub last_success_ms: AtomicU64,
    /// Entries found trimmed away from the stream before they were written.
    pub lost_trimmed: AtomicU64,
    /// Entries never written because the stream itself was deleted, flushed, evicted or replaced.
    pub lost_deleted: AtomicU64,
    /// Dead-letter copies that could not be written (and are retried; the entry stays pending).
    pub dead_letter_errors: AtomicU64,
    /// Entries `WB.WRITE` wrote directly to Snowflake because Redis was out of memory.
    pub failovers: AtomicU64,
    pub tally: Mutex<Tally>,
    pub last_error: Mutex<String>,
    /// Snowflake's code while every statement fails alike (`-` when it gave none); empty otherwise.
    pub blocked_code: Mutex<String>,
    /// Set when the stream's IDs are below ones already applied in Snowflake (see housekeeping).
    pub id_regression: Mutex<String>,
    latencies: Mutex<VecDeque<u64>>,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn record_latency(&self, ms: u64) {
        let mut l = self.latencies.lock();
        if l.len() == LATENCY_WINDOW {
            l.pop_front();
        }
        l.push_back(ms);
    }

    /// The p-th percentile (0..=100) of recent batch latencies, in ms.
    pub fn latency_percentile(&self, p: usize) -> u64 {
        let mut v: Vec<u64> = self.latencies.lock().iter().copied().collect();
        if v.is_empty() {
            return 0;
        }
        v.sort_unstable();
        let rank = (p * v.len()).div_ceil(100).clamp(1, v.len());
        v[rank - 1]
    }

    /// Enters (`Some(code)`) or leaves (`None`) the blocked state shown by `WB.STATUS`.
    pub fn set_blocked(&self, code: Option<&str>) {
        let mut b = self.blocked_code.lock();
        match code {
            Some(c) => c.clone_into(&mut b),
            None if !b.is_empty() => b.clear(),
            None => {}
        }
    }

    pub fn is_blocked(&self) -> bool {
        !self.blocked_code.lock().is_empty()
    }

    pub fn set_error(&self, message: &str) {
        *self.last_error.lock() = format!(
            "{} {message}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        );
    }

    /// Counts and reports entries removed from the stream before they were written: the application
    /// trimmed (`MAXLEN`/`MINID`) or deleted them faster than Snowflake drained. Never silent.
    pub fn report_trimmed(&self, n: u64, stream_name: &str, what: &str) {
        if n == 0 {
            return;
        }
        self.lost_trimmed.fetch_add(n, Ordering::Relaxed);
        crate::host::logging::warning(&format!(
            "TRIMMED {n} entries were removed from {stream_name} before they were written to Snowflake ({what}); \
             the application trims the stream faster than it drains: raise MAXLEN or fix the Snowflake backlog"
        ));
    }
}

/// How [`Metrics::report_trimmed`] describes entries trimmed away before `first` was read.
pub fn never_read(first: &str) -> String {
    format!("entries before {first} never read")
}
