//! Settling entries in Redis once their outcome is known: `XACK`, or a dead-letter copy then `XACK`.
//!
//! Workers queue what they settled and then take the Redis lock once to write the whole queue, so one
//! lock hold covers a batch. The queue also lets `SHUTDOWN`, which runs on the main thread holding the
//! lock, write the acknowledgements of batches that committed during the grace period.

use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use redis_module::Context;

use crate::logging;
use crate::status::METRICS;
use crate::stream::{self, RawEntry};

/// What to do with one settled entry.
#[derive(Debug, Clone)]
pub enum Settle {
    /// Written (or nothing to write): acknowledge.
    Ack { id: String },
    /// Undecodable or rejected by Snowflake: copy to `<stream>:dlq` with the reason, acknowledge.
    DeadLetter { entry: RawEntry, reason: String },
}

#[derive(Debug, Clone)]
struct Item {
    stream: String,
    group: String,
    settle: Settle,
}

static QUEUE: Mutex<Vec<Item>> = Mutex::new(Vec::new());

/// Queues settled entries of `stream`/`group`.
pub fn queue(stream: &str, group: &str, settled: Vec<Settle>) {
    let mut q = QUEUE.lock();
    q.extend(settled.into_iter().map(|settle| Item {
        stream: stream.to_string(),
        group: group.to_string(),
        settle,
    }));
}

/// Writes everything queued. Must run with the Redis lock held (or on the main thread).
pub fn drain(ctx: &Context) {
    let items: Vec<Item> = std::mem::take(&mut *QUEUE.lock());
    if items.is_empty() {
        return;
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
                    super::waiters::settled(stream_name, id, Ok(()));
                }
                Settle::DeadLetter { entry, reason } => {
                    let entry = with_fields(ctx, stream_name, entry);
                    match stream::dead_letter(ctx, stream_name, group, &entry, reason) {
                        Ok(dlq_id) => {
                            METRICS.dead_lettered.fetch_add(1, Ordering::Relaxed);
                            logging::warning(&format!(
                                "DEAD_LETTER {} -> {}:{} reason: {reason}",
                                entry.id,
                                stream::dlq_name(stream_name),
                                dlq_id
                            ));
                        }
                        Err(e) => {
                            logging::warning(&format!("could not dead-letter {}: {e}", entry.id))
                        }
                    }
                    super::waiters::settled(stream_name, &entry.id, Err(reason));
                }
            }
            settled += 1;
            i += 1;
        }
        for chunk in ids.chunks(1000) {
            if let Err(e) = stream::ack(ctx, stream_name, group, chunk) {
                logging::warning(&format!("XACK of {} entries failed: {e}", chunk.len()));
            }
        }
    }
    METRICS.entries_acked.fetch_add(settled, Ordering::Relaxed);
    let _ = METRICS
        .in_flight
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(settled))
        });
    crate::pipeline::control().notify_settled();
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
