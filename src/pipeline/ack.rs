//! Settling entries in Redis once their outcome is known: `XACK`, or a dead-letter copy then `XACK`.
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
    let mut settled = 0u64;
    let mut i = 0;
    while i < items.len() {
        let (stream_name, group) = (&items[i].stream, &items[i].group);
        // A run of plain acknowledgements of one stream and group becomes one XACK.
        let mut ids: Vec<&str> = Vec::new();
        while i < items.len() && &items[i].stream == stream_name && &items[i].group == group {
            match &items[i].settle {
                Settle::Ack { id } => {
                    ids.push(id);
                    super::waiters::settled(p, stream_name, id, Ok(()));
                }
                Settle::DeadLetter { entry, reason } => {
                    let entry = with_fields(ctx, stream_name, entry);
                    match stream::dead_letter(
                        ctx,
                        stream_name,
                        &p.names.dlq(),
                        group,
                        &entry,
                        reason,
                    ) {
                        Err(e) if e != stream::DEMOTED => {
                            // Not done: keep it in flight and pending, and try again later.
                            let attempts: u32 = {
                                let mut a = p.acks.attempts.lock();
                                let before = match a.iter().position(|(id, _)| *id == entry.id) {
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
                                "could not write the dead-letter copy of {} (attempt {attempts}, retried in {} ms): {e}",
                                entry.id,
                                wait.as_millis()
                            );
                            p.metrics.set_error(&what);
                            if attempts == 1 || attempts.is_power_of_two() {
                                logging::warning(&what);
                            }
                            p.acks.retries.lock().push(Retry {
                                item: items[i].clone(),
                                attempts,
                                due: Instant::now() + wait,
                            });
                            i += 1;
                            continue;
                        }
                        Err(_) => {
                            // Demoted to a replica: the new primary settles it.
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
                    super::waiters::settled(p, stream_name, &entry.id, Err(reason));
                }
            }
            settled += 1;
            i += 1;
        }
        for chunk in ids.chunks(1000) {
            // On a replica (demoted meanwhile) the acknowledgement is dropped: the new primary
            // writes the entries again, and Snowflake applies them once.
            if let Err(e) = stream::ack(ctx, stream_name, group, chunk) {
                logging::warning(&format!("XACK of {} entries failed: {e}", chunk.len()));
            }
        }
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
