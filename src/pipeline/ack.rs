//! Settling entries in Redis once their outcome is known. With `ACK_MODE=XACK` (the default): `XACK`,
//! or a dead-letter copy then `XACK`. With `ACK_MODE=WRITTEN_GROUP`: a dead-letter copy where there is
//! one, then the written group moved past the run of settled entries ([`super::progress`]), one
//! `XGROUP SETID` per hold.
//!
//! Workers queue what they settled and then write the queue under the Redis lock, in holds as short
//! as the claimer's ([`super::governor::published_hold_target`]): each `XACK` removes every entry
//! from two pending lists, ~1 µs of the main thread's time per entry, so a batch of thousands
//! acknowledged in one hold would keep Redis's clients waiting for milliseconds. The queue also lets
//! `SHUTDOWN`, which runs on the main thread holding the lock, write the acknowledgements of batches
//! that committed during the grace period.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_module::Context;

use super::control::Pipeline;
use super::governor;
pub use super::state::Settle;
use super::state::{Item, Retry};
use crate::entry::EntryId;
use crate::host::gil::Gil;
use crate::host::logging;
use crate::host::stream::{self, RawEntry};

/// Moves the failed dead-letter copies that are due back to the queue; true when there are any
/// (the caller then drains under the lock).
pub fn retries_due(p: &Pipeline) -> bool {
    let now = Instant::now();
    let mut r = p.acks.retries.lock();
    if r.is_empty() {
        return false;
    }
    let (due, wait): (Vec<Retry>, Vec<Retry>) = r.drain(..).partition(|x| x.due <= now);
    *r = wait;
    drop(r);
    if due.is_empty() {
        return false;
    }
    let mut q = p.acks.queue.lock();
    for x in due {
        p.acks
            .attempts
            .lock()
            .push((x.item.settle_id().to_string(), x.attempts));
        q.push(x.item);
    }
    true
}

/// Entries waiting for their dead-letter copy to be written again.
pub fn retrying(p: &Pipeline) -> usize {
    p.acks.retries.lock().len()
}

/// Queues settled entries of `stream`/`group`.
pub fn queue(p: &Pipeline, stream: &Arc<str>, group: &Arc<str>, settled: Vec<Settle>) {
    let mut q = p.acks.queue.lock();
    q.extend(settled.into_iter().map(|settle| Item {
        stream: Arc::clone(stream),
        group: Arc::clone(group),
        settle,
    }));
}

/// Most settled entries one hold writes, whatever the hold target allows.
const MOST_PER_HOLD: usize = 2000;

/// Writes everything queued from a thread of the module's own: one hold of the Redis lock after
/// another, each sized to the hold target from what the last holds took per entry, until the queue
/// is empty.
pub fn drain_in_holds(p: &Pipeline, gil: &Gil) {
    loop {
        // Another thread may have written them meanwhile: no hold for nothing.
        if p.acks.queue.lock().is_empty() {
            return;
        }
        let n = p
            .acks
            .sizer
            .lock()
            .count(MOST_PER_HOLD, governor::published_hold_target(p));
        let (written, more, held) = gil.with(|ctx| {
            let start = Instant::now();
            let (written, more) = drain_up_to(p, ctx, n);
            (written, more, start.elapsed())
        });
        if written == 0 {
            return;
        }
        p.acks.sizer.lock().record(held, written);
        p.drain.ack_chunk.store(written as u64, Ordering::Relaxed);
        p.drain.ack_holds.fetch_add(1, Ordering::Relaxed);
        p.drain
            .last_ack_hold_us
            .store(held.as_micros() as u64, Ordering::Relaxed);
        if !more {
            return;
        }
    }
}

/// Writes everything queued. Must run with the Redis lock held (or on the main thread).
pub fn drain(p: &Pipeline, ctx: &Context) {
    drain_up_to(p, ctx, usize::MAX);
}

/// Records `done` as settled and moves the written group of `item`'s stream past the run of settled
/// entries at the front of the progress, if it grew.
fn move_written_group(p: &Pipeline, ctx: &Context, item: &Item, done: Vec<EntryId>) {
    p.progress.settled(done);
    let Some(mark) = p.progress.advance() else {
        return;
    };
    let written = stream::written_group(&item.group);
    let id = mark.id.to_string();
    // On a replica (demoted meanwhile) the move is dropped: the new primary reads the entries
    // again from its own written group, and Snowflake applies them once.
    let moved = stream::set_group_id(ctx, &item.stream, &written, &id, mark.read);
    if let Err(e) = &moved {
        if e == stream::DEMOTED {
            // The new primary reads them again, and finds and reports the trimmed ones itself.
            return;
        }
        logging::warning(&format!("moving {written} to {id} failed: {e}"));
    }
    // Entries found trimmed away among those it moved past: reported in the hold that records the
    // move, so after a crash they are reported once, by one process.
    for (n, first) in mark.trimmed {
        let first = first.to_string();
        p.metrics
            .report_trimmed(n, &item.stream, &super::metrics::never_read(&first));
    }
}

/// Counts a failed dead-letter copy and queues it again after a backoff.
fn retry_later(p: &Pipeline, item: &Item, id: &str, e: &str) {
    let attempts: u32 = {
        let mut a = p.acks.attempts.lock();
        let before = match a.iter().position(|(x, _)| x == id) {
            Some(i) => a.swap_remove(i).1,
            None => 0,
        };
        before + 1
    };
    p.metrics.dead_letter_errors.fetch_add(1, Ordering::Relaxed);
    let wait = Duration::from_millis(500)
        .saturating_mul(1 << attempts.min(7))
        .min(Duration::from_secs(60));
    let what = format!(
        "could not write the dead-letter copy of {id} (attempt {attempts}, retried in {} ms): {e}",
        wait.as_millis()
    );
    p.metrics.set_error(&what);
    if attempts == 1 || attempts.is_power_of_two() {
        logging::warning(&what);
    }
    p.acks.retries.lock().push(Retry {
        item: item.clone(),
        attempts,
        due: Instant::now() + wait,
    });
}

/// Writes the first `n` queued entries (with the Redis lock held); returns how many it took and
/// whether any are left.
fn drain_up_to(p: &Pipeline, ctx: &Context, n: usize) -> (usize, bool) {
    let (items, more): (Vec<Item>, bool) = {
        let mut q = p.acks.queue.lock();
        if n >= q.len() {
            (std::mem::take(&mut *q), false)
        } else {
            (q.drain(..n).collect(), true)
        }
    };
    if items.is_empty() {
        return (0, more);
    }
    let taken = items.len();
    // On a cluster, the stream's slot may have moved away since the entries were claimed: they
    // are pending on the node serving it now, which writes them again (Snowflake applies each
    // entry once). Nothing is written here.
    if let Err(why) = crate::host::cluster::serves(ctx, p.source()) {
        for item in &items {
            super::waiters::settled(
                p,
                &item.stream,
                item.settle_id(),
                Err("the stream's slot moved to another node, which writes the entry"),
            );
        }
        logging::info(&format!(
            "{why}: {} settled entries left pending for the node serving it now",
            items.len()
        ));
        p.settle_lost(items.len() as u64);
        return (taken, more);
    }
    let written_mode = super::control::written_mode(&crate::settings::current());
    let mut settled = 0u64;
    // With a written group: the entries settled, for the progress. Otherwise: those to `XACK`.
    let mut done: Vec<EntryId> = Vec::new();
    let mut acks: Vec<&Item> = Vec::new();
    for item in &items {
        let stream_name = &item.stream;
        match &item.settle {
            Settle::Ack { id } => {
                super::waiters::settled(p, stream_name, id, Ok(()));
                if written_mode {
                    done.push(EntryId::parse(id).unwrap_or_default());
                } else {
                    acks.push(item);
                }
            }
            Settle::DeadLetter { entry, reason } => {
                let id = EntryId::parse(&entry.id).unwrap_or_default();
                if written_mode && p.progress.dead_lettered_before(id) {
                    logging::info(&format!(
                        "{} delivered again after a restart or failover: its dead-letter copy exists already",
                        entry.id
                    ));
                } else {
                    let entry = with_fields(ctx, stream_name, entry);
                    // With a pending list, the copy and its `XACK` in this one hold.
                    let group = (!written_mode).then_some(&*item.group);
                    match stream::dead_letter(
                        ctx,
                        stream_name,
                        &p.names.dlq(),
                        group,
                        &entry,
                        reason,
                    ) {
                        Err(e) if e != stream::DEMOTED => {
                            // Not done: keep it in flight, the written group before it, and try again later.
                            retry_later(p, item, &entry.id, &e);
                            continue;
                        }
                        Err(_) => {
                            // Demoted to a replica: the new primary writes it.
                        }
                        Ok(dlq_id) => {
                            p.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                            logging::warning(&format!(
                                "DEAD_LETTER {} -> {}:{} reason: {reason}",
                                entry.id,
                                p.names.dlq(),
                                dlq_id
                            ));
                        }
                    }
                }
                super::waiters::settled(p, stream_name, &entry.id, Err(reason));
                done.push(id);
            }
        }
        settled += 1;
    }
    // A run of plain acknowledgements of one stream and group becomes one XACK.
    for run in acks.chunk_by(|a, b| a.stream == b.stream && a.group == b.group) {
        let ids: Vec<&str> = run.iter().map(|item| item.settle_id()).collect();
        for chunk in ids.chunks(1000) {
            // On a replica (demoted meanwhile) the acknowledgement is dropped: the new primary
            // writes the entries again, and Snowflake applies them once.
            if let Err(e) = stream::ack(ctx, &run[0].stream, &run[0].group, chunk) {
                logging::warning(&format!("XACK of {} entries failed: {e}", chunk.len()));
            }
        }
    }
    if let (true, Some(last)) = (written_mode, items.last()) {
        move_written_group(p, ctx, last, done);
    }
    p.metrics
        .entries_acked
        .fetch_add(settled, Ordering::Relaxed);
    let _ = p
        .metrics
        .in_flight
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(settled))
        });
    p.control.notify_settled();
    (taken, more)
}

/// The entry with its original fields: as held, or read back from the stream (the pipeline keeps only
/// the IDs of decodable entries). An entry trimmed away meanwhile keeps no fields; its dead-letter copy
/// still carries the reason and the source ID.
fn with_fields(ctx: &Context, stream_name: &str, entry: &RawEntry) -> RawEntry {
    if !entry.fields.is_empty() {
        return entry.clone();
    }
    let id = entry.id.as_bytes();
    stream::call_read(ctx, "XRANGE", &[stream_name.as_bytes(), id, id])
        .ok()
        .and_then(|v| stream::parse_entries(&v).into_iter().next())
        .unwrap_or_else(|| entry.clone())
}
