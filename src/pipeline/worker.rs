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

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use rand::Rng;

use super::ack::{self, Settle};
use super::gil::Gil;
use super::sink::{self, SinkError};
use super::{control, State};
use crate::entry::Decoded;
use crate::logging;
use crate::settings::{self, Key};
use crate::status::METRICS;
use crate::stream::RawEntry;

/// One claimed entry on its way to Snowflake.
#[derive(Debug)]
pub struct Work {
    /// The entry's ID, and its fields only when it is undecodable (see the claimer).
    pub raw: RawEntry,
    /// The entry's size in the stream, for the batch byte cap.
    pub bytes: usize,
    pub decoded: Decoded,
    /// The stream and group it was claimed from (settles go back there); shared, not copied per entry.
    pub stream: Arc<str>,
    pub group: Arc<str>,
}

/// The senders, kept so `MODULE UNLOAD` can close the channels.
static SENDERS: Mutex<Vec<Sender<Work>>> = Mutex::new(Vec::new());

/// The workers' inboxes and threads.
pub type Pool = (Vec<Sender<Work>>, Vec<JoinHandle<()>>);

pub fn spawn(n: usize) -> Result<Pool, String> {
    let mut senders = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    for index in 0..n {
        let (tx, rx) = unbounded();
        let gil = Gil::new().ok_or("could not create a worker context")?;
        let h = super::spawn_supervised(&format!("wb-worker-{index}"), move || run(&rx, &gil))?;
        senders.push(tx);
        handles.push(h);
    }
    *SENDERS.lock() = senders.clone();
    Ok((senders, handles))
}

/// Closes the channels so idle workers exit.
pub fn close() {
    SENDERS.lock().clear();
}

/// Entries a worker has taken from its inbox and not yet settled; if the worker dies, they are given
/// back (see [`super::settle_lost`]).
struct Holding(u64);

impl Drop for Holding {
    fn drop(&mut self) {
        super::settle_lost(self.0);
    }
}

/// Bytes of entries a worker holds, counted in `in_flight_bytes` until the batch is done with.
struct HeldBytes(u64);

impl Drop for HeldBytes {
    fn drop(&mut self) {
        super::release_bytes(self.0);
    }
}

fn run(rx: &Receiver<Work>, gil: &Gil) {
    let c = control();
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
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
        let mut holding = Holding(0);
        let mut held_bytes = HeldBytes(0);
        let mut next = Some(first);
        while let Some(w) = next.take() {
            holding.0 += 1;
            held_bytes.0 += w.bytes as u64;
            crate::faults::in_worker(&w.raw.id);
            bytes += w.bytes;
            raws.push(w.raw);
            decoded.push(w.decoded);
            if raws.len() >= max_entries || bytes >= max_bytes {
                break;
            }
            next = rx.recv_deadline(deadline).ok();
        }
        // Demoted to a replica since these were claimed: send nothing; the new primary writes them.
        if c.state() == State::Replica {
            drop(holding);
            continue;
        }
        c.committing.fetch_add(1, Ordering::Relaxed);
        let settled = crate::ffi::guard("batch", || process(&raws, &decoded)).flatten();
        match settled {
            Some(settles) => {
                // From here the acknowledgement queue holds them.
                holding.0 = 0;
                ack::queue(&stream_name, &group, settles);
                c.committing.fetch_sub(1, Ordering::Relaxed);
                c.notify_settled();
                gil.with(ack::drain);
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
fn process(raws: &[RawEntry], decoded: &[Decoded]) -> Option<Vec<Settle>> {
    let started = Instant::now();
    let outcome = commit_batch(decoded)?;
    let snap = settings::current();
    let dry = super::dry_run(&snap);
    let mut settles = Vec::with_capacity(raws.len());
    let mut tally = METRICS.tally.lock();
    let mut committed = 0u64;
    for ((raw, d), result) in raws.iter().zip(decoded).zip(outcome) {
        match (d, result) {
            (Decoded::Undecodable { reason, .. }, _) => {
                d.tally(&mut tally);
                if snap.bool(Key::AckInvalidJson) {
                    METRICS.dropped_invalid.fetch_add(1, Ordering::Relaxed);
                    logging::warning(&format!(
                        "INVALID {} acknowledged without a copy (ACK_INVALID_JSON=1): {reason}",
                        raw.id
                    ));
                    settles.push(Settle::Ack { id: raw.id.clone() });
                } else {
                    settles.push(Settle::DeadLetter {
                        entry: raw.clone(),
                        reason: reason.to_string(),
                    });
                }
            }
            (_, Err(reason)) => {
                METRICS.failed.fetch_add(1, Ordering::Relaxed);
                settles.push(Settle::DeadLetter {
                    entry: raw.clone(),
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
                settles.push(Settle::Ack { id: raw.id.clone() });
            }
        }
    }
    drop(tally);
    METRICS
        .entries_committed
        .fetch_add(committed, Ordering::Relaxed);
    METRICS.batches.fetch_add(1, Ordering::Relaxed);
    METRICS.record_latency(started.elapsed().as_millis() as u64);
    METRICS.last_success_ms.store(
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

/// What became of one entry of a batch.
#[derive(Debug, Clone)]
enum Outcome {
    Committed,
    /// Rejected for good: dead-lettered with this reason.
    Rejected(String),
    /// Refused alone (not a data error) before any other statement committed: maybe about this
    /// entry, maybe about every statement; decided by [`commit_batch`].
    Deferred(String),
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// Commits a batch; each entry's result (`Err` = rejected, dead-letter it), or `None` when stopping.
///
/// Entries refused alone wait until some statement commits — one of this batch, or any worker's —
/// which shows the refusal is about them, and are then rejected. Until then they are retried (with
/// the slow backoff of a blocked sink): a refusal of every statement is a problem of Snowflake or
/// the setup, and moving good data aside because of it would be a silent loss.
fn commit_batch(entries: &[Decoded]) -> Option<Vec<Result<(), String>>> {
    let since = now_ms();
    let mut out = commit_all(entries)?;
    // Remember an entry Snowflake accepted, to probe with later (see `probe_accepted`).
    if let Some(i) = (0..out.len()).rev().find(|&i| {
        matches!(out[i], Outcome::Committed)
            && matches!(entries[i], Decoded::Tracked(_) | Decoded::CreateUser(_))
    }) {
        LAST_GOOD.with(|g| *g.borrow_mut() = Some(entries[i].clone()));
    }
    let mut attempt = 0u32;
    loop {
        let deferred: Vec<usize> = (0..out.len())
            .filter(|&i| matches!(out[i], Outcome::Deferred(_)))
            .collect();
        if deferred.is_empty() {
            break;
        }
        let evidence = out.iter().any(|o| matches!(o, Outcome::Committed))
            || METRICS.last_success_ms.load(Ordering::Relaxed) > since
            || probe_accepted();
        if evidence {
            // Statements commit: each deferred entry gets one more round (the refusal may have
            // ended meanwhile); refused again, it is rejected.
            for i in deferred {
                out[i] = match commit_all(&entries[i..=i])?.remove(0) {
                    Outcome::Deferred(msg) => {
                        logging::warning(&format!(
                            "entry {} refused by Snowflake while other statements commit: {msg}",
                            entries[i].id()
                        ));
                        Outcome::Rejected(msg)
                    }
                    other => other,
                };
            }
            break;
        }
        attempt = attempt.saturating_add(1);
        if !pause(backoff(attempt, true)) {
            return None;
        }
        for i in deferred {
            out[i] = commit_all(&entries[i..=i])?.remove(0);
        }
    }
    Some(
        out.into_iter()
            .map(|o| match o {
                Outcome::Committed => Ok(()),
                Outcome::Rejected(m) | Outcome::Deferred(m) => Err(m),
            })
            .collect(),
    )
}

thread_local! {
    /// The last entry this worker committed.
    static LAST_GOOD: std::cell::RefCell<Option<Decoded>> = const { std::cell::RefCell::new(None) };
}

/// Whether Snowflake still accepts statements: the last entry this worker committed is committed
/// again. Replaying an entry never changes Snowflake (each row remembers the last entry applied),
/// so this proves a refusal of another entry is about that entry.
fn probe_accepted() -> bool {
    let Some(good) = LAST_GOOD.with(|g| g.borrow().clone()) else {
        return false;
    };
    sink::current()
        .and_then(|s| s.commit(std::slice::from_ref(&good)))
        .is_ok()
}

/// Waits `wait`; false when the pipeline is stopping (or this server became a replica).
fn pause(wait: Duration) -> bool {
    let c = control();
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if c.stopping() {
            return false;
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    !c.stopping() && c.state() != State::Replica
}

/// Splits `entries` in two and commits each half.
fn bisect(entries: &[Decoded]) -> Option<Vec<Outcome>> {
    let (left, right) = entries.split_at(entries.len() / 2);
    let mut out = commit_all(left)?;
    out.extend(commit_all(right)?);
    Some(out)
}

/// Commits `entries`, retrying transient failures; on a data error, splits the batch until the
/// entries Snowflake rejects are alone; on another permanent refusal, the same after three tries.
/// Returns each entry's outcome, or `None` when stopping.
fn commit_all(entries: &[Decoded]) -> Option<Vec<Outcome>> {
    let c = control();
    let mut attempt: u32 = 0;
    loop {
        let result = sink::current().and_then(|s| s.commit(entries));
        match result {
            Ok(()) => {
                c.degraded.store(false, Ordering::Relaxed);
                return Some(vec![Outcome::Committed; entries.len()]);
            }
            Err(SinkError::Data(msg)) if entries.len() == 1 => {
                logging::warning(&format!(
                    "entry {} rejected by Snowflake: {msg}",
                    entries[0].id()
                ));
                return Some(vec![Outcome::Rejected(msg)]);
            }
            Err(SinkError::Data(_)) => return bisect(entries),
            // Refused for a reason that is not a data error: after three tries, find the entry.
            Err(SinkError::Refused(msg)) if attempt >= 2 => {
                if entries.len() == 1 {
                    return Some(vec![Outcome::Deferred(msg)]);
                }
                logging::warning(&format!(
                    "a batch of {} entries keeps being refused; splitting it: {msg}",
                    entries.len()
                ));
                return bisect(entries);
            }
            // A statement that keeps running past the request timeout may simply be too big for the
            // warehouse: after three tries, split the batch (entries are never split, so replays stay
            // exact); one entry alone keeps being retried.
            Err(SinkError::Retry(msg))
                if entries.len() > 1 && attempt >= 2 && msg.contains("did not finish within") =>
            {
                logging::warning(&format!(
                    "a batch of {} entries keeps timing out; splitting it: {msg}",
                    entries.len()
                ));
                return bisect(entries);
            }
            Err(e) => {
                attempt = attempt.saturating_add(1);
                c.degraded.store(true, Ordering::Relaxed);
                METRICS.retries.fetch_add(1, Ordering::Relaxed);
                METRICS.set_error(e.message());
                let blocked = matches!(e, SinkError::Blocked(_));
                let wait = backoff(attempt, blocked);
                if attempt == 1 || attempt.is_power_of_two() {
                    logging::warning(&format!(
                        "commit of {} entries failed (attempt {attempt}), retrying in {} ms: {}",
                        entries.len(),
                        wait.as_millis(),
                        e.message()
                    ));
                }
                if !pause(wait) {
                    return None;
                }
            }
        }
    }
}

/// Exponential backoff with full jitter, capped by `RETRY_MAX_BACKOFF_MS`; a blocked sink (a
/// configuration problem) starts at the cap's quarter.
fn backoff(attempt: u32, blocked: bool) -> Duration {
    let cap = settings::current().uint(Key::RetryMaxBackoffMs).max(10);
    let base: u64 = if blocked { cap / 4 } else { 100 };
    let exp = base
        .saturating_mul(1u64 << attempt.min(20).saturating_sub(1))
        .min(cap);
    let jittered = rand::thread_rng().gen_range(exp / 2..=exp.max(1));
    Duration::from_millis(jittered)
}
