//! What the pipeline does when the host speaks: a server event wakes the claimer, stops it, or
//! counts what a deleted stream took with it; `INFO` asks for the report.
//! Registered with the host at load as its [`Listener`].
//!
//! The stream's end: when the stream key is deleted (`DEL`, `UNLINK`, an expiry, an eviction under an
//! `allkeys-*` policy, an overwrite) or its database is flushed (`FLUSHDB`, `FLUSHALL`), Redis tells
//! the module just before the data goes. The entries that were added but never written — not yet
//! delivered to the group, or pending and not held by the module — are counted in `lost_deleted` and
//! logged as a `LOST` warning. The writer then carries on with the stream the application creates
//! next (the claimer re-creates its group at ID 0). Entries the module holds are still written.
//!
//! On a cluster, a stream deleted because it leaves with its slot (`MIGRATE` in a resharding, or a
//! slot this node no longer serves) is not a loss: its entries live on at the node serving the
//! slot, which drains them.
//!
//! A stream moved away is the same loss: `RENAME` or `MOVE` of the stream key deletes it under its
//! name (the key event above), and `SWAPDB` of the stream's database puts another database's content
//! under the name — the old stream, now in the other database, is judged there just after the swap,
//! and the writer carries on with whatever stream the swap brought in.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis_module::Context;

use crate::host::{logging, stream, Figure, Listener, ServerEvent};
use crate::pipeline::control::{Pipeline, REGISTRY};
use crate::settings::{self, Key};

/// The pipeline as the host's listener.
pub struct Events;

impl Listener for Events {
    fn key_event(&self, event: &[u8], key: &[u8], after: &crate::host::After<'_>) {
        super::capture::on_key_event(event, key, after);
    }

    fn server_event(&self, event: ServerEvent<'_>) {
        match event {
            ServerEvent::Shutdown => {
                let grace = Duration::from_millis(settings::current().uint(Key::ShutdownGraceMs));
                super::shutdown(grace);
            }
            ServerEvent::KeyGone { key, db, how } => {
                // Every key deleted anywhere passes here: a key that names none of the module's
                // streams costs one map lookup, not a settings snapshot.
                let Some((name, p)) = std::str::from_utf8(key)
                    .ok()
                    .and_then(|name| Some((name, REGISTRY.find(name)?)))
                else {
                    return;
                };
                if db != settings::current().int(Key::RedisDb) {
                    return;
                }
                let leaving = how == "deleted"
                    && stream::home().is_some_and(|ctx| crate::host::cluster::leaving(&ctx, name));
                if leaving {
                    // Its entries, pending ones included, go with it: the node serving the slot
                    // takes them over, and Snowflake applies each entry once.
                    logging::info(&format!(
                        "stream {name} left this node with its slot; the node serving the slot now drains it"
                    ));
                    p.control.wake();
                } else {
                    stream_ends(p, how, None);
                }
            }
            ServerEvent::Flushed { db } => {
                if db == -1 || db == settings::current().int(Key::RedisDb) {
                    for p in REGISTRY.all() {
                        stream_ends(p, "flushed (FLUSHDB/FLUSHALL)", None);
                    }
                }
            }
            ServerEvent::Swapped { first, second } => on_swapdb(first, second),
            ServerEvent::Changed => {
                for p in REGISTRY.all() {
                    p.control.wake();
                }
            }
        }
    }

    fn report(&self, live: bool) -> Vec<(String, Figure)> {
        crate::pipeline::status::report(live)
    }

    fn stopping(&self) -> bool {
        REGISTRY.all().iter().any(|p| p.control.stopping())
    }
}

/// After `SWAPDB a b`: when one of them is the stream's database, the stream that was under the
/// name now lives in the other one.
fn on_swapdb(first: i64, second: i64) {
    let ours = settings::current().int(Key::RedisDb);
    let old_home = if first == ours {
        second
    } else if second == ours {
        first
    } else {
        return;
    };
    if old_home == ours {
        return;
    }
    for p in REGISTRY.all() {
        stream_ends(
            p,
            &format!("swapped away (SWAPDB: it is now in database {old_home})"),
            Some(old_home as i32),
        );
    }
}

/// The stream of `p` is about to go (main thread, data still there), or has just moved to database
/// `moved_to`: count and report what was never written.
fn stream_ends(p: &Pipeline, how: &str, moved_to: Option<i32>) {
    // The loss is judged on a replica by its primary: a replica writes nothing anyway.
    let Some(ctx) = stream::home() else { return };
    if stream::is_replica(&ctx) {
        return;
    }
    let stream_name = p.source();
    // On a cluster, a shard stream this node does not serve is another node's to report.
    if crate::host::cluster::serves(&ctx, stream_name).is_err() {
        return;
    }
    let s = settings::current();
    let group = super::control::group_name(&s);
    // Delivered since the group was last set back to its written group: held, or written already
    // (the written group moves past a run of them only once the oldest is written).
    let held = (p.metrics.in_flight.load(Ordering::Relaxed) as i64).max(p.progress.behind() as i64);
    let lost = match moved_to {
        None => never_written(&ctx, stream_name, &group, held),
        Some(db) => stream::in_db(&ctx, db, s.int(Key::RedisDb) as i32, |ctx| {
            never_written(ctx, stream_name, &group, held)
        })
        .unwrap_or(0),
    };
    p.control.wake();
    if lost == 0 {
        logging::info(&format!(
            "stream {stream_name} was {how}; every entry in it had been written"
        ));
        return;
    }
    p.metrics.lost_deleted.fetch_add(lost, Ordering::Relaxed);
    logging::warning(&format!(
        "LOST {lost} entries of {stream_name} were never written to Snowflake: the stream was {how} \
         before they were (counted in lost_deleted); the writer carries on with the stream the \
         application creates next"
    ));
}

/// Entries of the stream that the group has not delivered yet, plus delivered ones not yet written
/// that the module does not hold (`held` = entries in flight in the module).
pub fn never_written(ctx: &Context, stream_name: &str, group: &str, held: i64) -> u64 {
    let Some(info) = stream::group_info(ctx, stream_name, group) else {
        // No group yet: nothing was ever read.
        return stream::length(ctx, stream_name).max(0) as u64;
    };
    let undelivered = info.lag.unwrap_or_else(|| {
        // Redis cannot tell the lag after deletions inside the stream: entries ever added minus
        // those read, or at worst the whole length.
        match (stream::entries_added(ctx, stream_name), info.entries_read) {
            (Some(added), Some(read)) => added - read,
            _ => stream::length(ctx, stream_name),
        }
    });
    let unwritten = info.unwritten().unwrap_or(info.pending);
    (undelivered.max(0) + (unwritten - held).max(0)) as u64
}
