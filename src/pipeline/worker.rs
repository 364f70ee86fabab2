//! The worker pool: batch, commit, settle.
//!
//! Each worker owns the partitions routed to it, so the entries of one user reach Snowflake in stream
//! order. It waits for a first entry, then up to `BATCH_LINGER_MS` for more, up to `BATCH_MAX_ENTRIES`
//! and `BATCH_MAX_BYTES`, and commits the batch through the sink. A transient failure retries the same
//! batch with capped exponential backoff and jitter — for as long as it takes, with the backlog growing
//! in the stream, never skipping. Only then are the entries acknowledged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError};

use super::ack;
use super::control::{Pipeline, State};
use super::retry::{self, Decision};
use super::sink::{self, SinkError};
pub use super::state::{Inbox, Settle, Work};
use crate::entry::Decoded;
use crate::host::gil::Gil;
use crate::host::logging;
use crate::host::stream::RawEntry;
use crate::settings::{self, Key};

/// The workers' inboxes and threads.
pub type Pool = (Vec<Inbox>, Vec<JoinHandle<()>>);

/// Starts `n` workers of `pipeline`.
pub fn spawn(pipeline: &'static Pipeline, n: usize) -> Result<Pool, String> {
    let mut senders = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    for index in 0..n {
        let (tx, rx) = unbounded();
        let gil = Gil::new().ok_or("could not create a worker context")?;
        let h = pipeline.spawn_supervised(&format!("wb-worker-{index}"), move || {
            run(pipeline, &rx, &gil)
        })?;
        senders.push(tx);
        handles.push(h);
    }
    *pipeline.inboxes.lock() = senders.clone();
    Ok((senders, handles))
}

/// Closes `pipeline`'s channels so its idle workers exit.
pub fn close(pipeline: &Pipeline) {
    pipeline.inboxes.lock().clear();
}

/// Entries a worker has taken from its inbox and not yet settled; if the worker dies, they are given
/// back (see [`super::settle_lost`]).
struct Holding(&'static Pipeline, u64);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.settle_lost(self.1);
    }
}

/// Bytes of entries a worker holds, counted in `in_flight_bytes` until the batch is done with.
struct HeldBytes(&'static Pipeline, u64);

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.0.release_bytes(self.1);
    }
}

/// Entries received and not yet taken into a batch (the rest of a claim's share past a full
/// batch); if the worker dies, they are given back like those it holds. The share is taken from as
/// it came, not copied into a queue first: an entry is a few hundred bytes.
struct Received(&'static Pipeline, std::vec::IntoIter<Work>);

impl Drop for Received {
    fn drop(&mut self) {
        let left = self.1.as_slice();
        let bytes: usize = left.iter().map(|w| w.bytes).sum();
        self.0.release_bytes(bytes as u64);
        self.0.settle_lost(left.len() as u64);
    }
}

impl Received {
    /// The next entry: one received already, or the next share from the inbox (by `deadline`).
    fn next(
        &mut self,
        rx: &Receiver<Vec<Work>>,
        deadline: Instant,
    ) -> Result<Work, RecvTimeoutError> {
        loop {
            if let Some(w) = self.1.next() {
                return Ok(w);
            }
            self.1 = rx.recv_deadline(deadline)?.into_iter();
        }
    }
}

fn run(p: &'static Pipeline, rx: &Receiver<Vec<Work>>, gil: &Gil) {
    let c = &p.control;
    let mut received = Received(p, Vec::new().into_iter());
    loop {
        let first = match received.next(rx, Instant::now() + Duration::from_millis(500)) {
            Ok(w) => w,
            Err(RecvTimeoutError::Timeout) if c.stopping() => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let snap = settings::current();
        let max_entries = snap.uint(Key::BatchMaxEntries).max(1) as usize;
        let max_bytes = snap.uint(Key::BatchMaxBytes) as usize;
        let deadline = Instant::now() + Duration::from_millis(snap.uint(Key::BatchLingerMs));
        let (stream_name, group) = (Arc::clone(&first.stream), Arc::clone(&first.group));
        let mut bytes = 0;
        let mut raws = Vec::new();
        let mut decoded = Vec::new();
        let mut holding = Holding(p, 0);
        let mut held_bytes = HeldBytes(p, 0);
        let mut next = Some(first);
        while let Some(w) = next.take() {
            holding.1 += 1;
            held_bytes.1 += w.bytes as u64;
            crate::pipeline::faults::in_worker(&w.raw.id);
            bytes += w.bytes;
            raws.push(w.raw);
            decoded.push(w.decoded);
            if raws.len() >= max_entries || bytes >= max_bytes {
                break;
            }
            next = received.next(rx, deadline).ok();
        }
        // Demoted to a replica since these were claimed: send nothing; the new primary writes them.
        if c.state() == State::Replica {
            drop(holding);
            continue;
        }
        c.committing.fetch_add(1, Ordering::Relaxed);
        let settled = crate::host::ffi::guard("batch", || process(p, raws, &decoded)).flatten();
        match settled {
            Some(settles) => {
                // From here the acknowledgement queue holds them. Their bytes are released first,
                // so whoever sees them settled (WB.FLUSH) never sees them still held.
                holding.1 = 0;
                drop(held_bytes);
                ack::queue(p, &stream_name, &group, settles);
                c.committing.fetch_sub(1, Ordering::Relaxed);
                c.notify_settled();
                ack::drain_in_holds(p, gil);
            }
            None => {
                // Stopping (or a bug, already logged): the batch stays pending, and is taken over
                // again (by this process, or by the next start).
                c.committing.fetch_sub(1, Ordering::Relaxed);
                drop(holding);
                if c.stopping() {
                    return;
                }
            }
        }
    }
}

/// Commits a batch and says how to settle each entry; `None` when stopping before it committed.
/// Takes the entries, so each settle moves its entry's ID instead of copying it.
fn process(p: &'static Pipeline, raws: Vec<RawEntry>, decoded: &[Decoded]) -> Option<Vec<Settle>> {
    let started = Instant::now();
    let outcome = commit_all(p, decoded)?;
    let snap = settings::current();
    let dry = super::control::dry_run(&snap);
    let mut settles = Vec::with_capacity(raws.len());
    let mut tally = p.metrics.tally.lock();
    let mut committed = 0u64;
    for ((raw, d), result) in raws.into_iter().zip(decoded).zip(outcome) {
        match (d, result) {
            (Decoded::Undecodable { reason, .. }, _) => {
                d.tally(&mut tally);
                if snap.bool(Key::AckInvalidJson) {
                    p.metrics.dropped_invalid.fetch_add(1, Ordering::Relaxed);
                    logging::warning(&format!(
                        "INVALID {} acknowledged without a copy (ACK_INVALID_JSON=1): {reason}",
                        raw.id
                    ));
                    settles.push(Settle::Ack { id: raw.id });
                } else {
                    settles.push(Settle::DeadLetter {
                        entry: raw,
                        reason: reason.to_string(),
                    });
                }
            }
            (_, Err(reason)) => {
                p.metrics.failed.fetch_add(1, Ordering::Relaxed);
                settles.push(Settle::DeadLetter {
                    entry: raw,
                    reason: format!("Snowflake rejected the entry: {reason}"),
                });
            }
            (d, Ok(())) => {
                d.tally(&mut tally);
                log_left_out(d);
                // Counted only when its SQL went to Snowflake: not in dry run, not for diagnostic
                // or restored entries (acknowledged, never written).
                if !dry && matches!(d, Decoded::Tracked(_) | Decoded::CreateUser(_)) {
                    committed += 1;
                }
                settles.push(Settle::Ack { id: raw.id });
            }
        }
    }
    drop(tally);
    p.metrics
        .entries_committed
        .fetch_add(committed, Ordering::Relaxed);
    p.metrics.batches.fetch_add(1, Ordering::Relaxed);
    p.metrics
        .record_latency(started.elapsed().as_millis() as u64);
    p.metrics.last_success_ms.store(
        chrono::Utc::now().timestamp_millis().max(0) as u64,
        Ordering::Relaxed,
    );
    Some(settles)
}

/// Logs each record of a written entry that was skipped (stale) or rejected (unusable), with its
/// reason: they are counted in `WB.STATUS`, and the log says which entry and record they were.
fn log_left_out(d: &Decoded) {
    let Decoded::Tracked(b) = d else { return };
    for s in &b.skipped {
        logging::info(&format!(
            "SKIPPED entry={} index={} id={}: {}",
            b.id,
            s.index,
            crate::entry::rules::shown(&s.record_id),
            s.reason
        ));
    }
    for r in &b.rejected {
        logging::warning(&format!(
            "REJECTED entry={} index={} id={}: {}",
            b.id,
            r.index,
            r.record_id
                .as_deref()
                .map_or_else(|| "-".to_string(), crate::entry::rules::shown),
            r.reason
        ));
    }
}

/// Commits `entries`, retrying transient failures; on a data error, splits the batch until the
/// entries Snowflake rejects are alone and lets the triage judge them. Returns each entry's result,
/// or `None` when stopping.
fn commit_all(p: &'static Pipeline, entries: &[Decoded]) -> Option<Vec<Result<(), String>>> {
    commit_from(p, entries, None)
}

/// [`commit_all`] for part of a batch that first failed at `first_failure` (the evidence of the
/// triage counts from there).
fn commit_from(
    p: &'static Pipeline,
    entries: &[Decoded],
    first_failure: Option<Instant>,
) -> Option<Vec<Result<(), String>>> {
    let c = &p.control;
    let mut attempt: u32 = 0;
    let mut lone_failures: u32 = 0;
    let mut first_failure = first_failure;
    loop {
        // One snapshot of the settings for the whole attempt: which sink, which tables, how long
        // to wait; the next attempt takes a fresh one, so a setting fixed meanwhile is seen.
        let snap = settings::current();
        let result = sink::current(p, &snap).and_then(|s| s.commit(entries, &snap));
        let e = match result {
            Ok(()) => {
                c.degraded.store(false, Ordering::Relaxed);
                p.metrics.set_blocked(None);
                return Some(vec![Ok(()); entries.len()]);
            }
            Err(e) => e,
        };
        let since = *first_failure.get_or_insert_with(Instant::now);
        let decision = retry::decide(&e, entries.len(), attempt, |table, code| {
            lone_failures = lone_failures.saturating_add(1);
            let id = entries[0].id();
            p.triage
                .judge(table, id, code, since, lone_failures, Instant::now())
        });
        let blocked = match decision {
            Decision::Split => {
                if let SinkError::TimedOut(msg) = &e {
                    logging::warning(&format!(
                        "a batch of {} entries keeps timing out; splitting it: {msg}",
                        entries.len()
                    ));
                }
                let (left, right) = entries.split_at(entries.len() / 2);
                let mut out = commit_from(p, left, Some(since))?;
                out.extend(commit_from(p, right, Some(since))?);
                return Some(out);
            }
            Decision::DeadLetter => {
                let id = entries[0].id();
                logging::warning(&format!(
                    "entry {id} rejected by Snowflake: {}",
                    e.message()
                ));
                return Some(vec![Err(e.message().to_string())]);
            }
            Decision::RetrySlowly { code } => Some(code),
            Decision::Retry => None,
        };
        attempt = attempt.saturating_add(1);
        c.degraded.store(true, Ordering::Relaxed);
        p.metrics.retries.fetch_add(1, Ordering::Relaxed);
        p.metrics.set_error(e.message());
        if let Some(code) = &blocked {
            p.metrics.set_blocked(Some(code));
        }
        let blocked = blocked.is_some();
        let wait = retry::backoff(attempt, blocked, &snap);
        if attempt == 1 || attempt.is_power_of_two() {
            logging::warning(&format!(
                "commit of {} entries failed (attempt {attempt}{}), retrying in {} ms: {}",
                entries.len(),
                if blocked { ", blocked" } else { "" },
                wait.as_millis(),
                e.message()
            ));
        }
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if c.stopping() {
                return None;
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        if c.stopping() {
            return None;
        }
        if c.state() == State::Replica {
            return None;
        }
    }
}
