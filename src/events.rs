//! Server events the module follows: loading finished, role changes (wake the claimer, which re-reads
//! the role itself), shutdown (stop claiming, give in-flight batches a bounded time to commit), and
//! the stream's own end.
//!
//! The stream's end: when the stream key is deleted (`DEL`, `UNLINK`, an expiry, an eviction under an
//! `allkeys-*` policy, an overwrite) or its database is flushed (`FLUSHDB`, `FLUSHALL`), Redis tells
//! the module just before the data goes. The entries that were added but never written — not yet
//! delivered to the group, or pending and not held by the module — are counted in `lost_deleted` and
//! logged as a `LOST` warning. The writer then carries on with the stream the application creates
//! next (the claimer re-creates its group at ID 0). Entries the module holds are still written.
//!
//! A stream moved away is the same loss: `RENAME` or `MOVE` of the stream key deletes it under its
//! name (the key event above), and `SWAPDB` of the stream's database puts another database's content
//! under the name — the old stream, now in the other database, is judged there just after the swap,
//! and the writer carries on with whatever stream the swap brought in.

use std::ffi::c_void;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis_module::{raw, Context};

use crate::logging;
use crate::settings::{self, Key};
use crate::status::METRICS;
use crate::stream;

const EVENT_FLUSHDB: u64 = 2;
const EVENT_SWAPDB: u64 = 11;
const EVENT_KEY: u64 = 17;
const SUBEVENT_FLUSHDB_START: u64 = 0;

/// `RedisModuleFlushInfoV1`.
#[repr(C)]
struct FlushInfo {
    version: u64,
    sync: i32,
    dbnum: i32,
}

/// `RedisModuleSwapDbInfoV1`.
#[repr(C)]
struct SwapDbInfo {
    version: u64,
    dbnum_first: i32,
    dbnum_second: i32,
}

/// `RedisModuleKeyInfoV1`.
#[repr(C)]
struct KeyInfo {
    version: u64,
    key: *mut raw::RedisModuleKey,
}

extern "C" fn on_event(
    _ctx: *mut raw::RedisModuleCtx,
    eid: raw::RedisModuleEvent,
    sub: u64,
    data: *mut c_void,
) {
    crate::ffi::guard("server event", || {
        if eid.id == raw::REDISMODULE_EVENT_SHUTDOWN {
            let grace = Duration::from_millis(settings::current().uint(Key::ShutdownGraceMs));
            crate::pipeline::shutdown(grace);
        } else if eid.id == EVENT_KEY {
            on_key_gone(data.cast::<KeyInfo>(), sub);
        } else if eid.id == EVENT_FLUSHDB {
            if sub == SUBEVENT_FLUSHDB_START && !data.is_null() {
                let db = unsafe { (*data.cast::<FlushInfo>()).dbnum };
                let ours = settings::current().int(Key::RedisDb);
                if db == -1 || i64::from(db) == ours {
                    stream_ends("flushed (FLUSHDB/FLUSHALL)", None);
                }
            }
        } else if eid.id == EVENT_SWAPDB {
            if !data.is_null() {
                let info = unsafe { &*data.cast::<SwapDbInfo>() };
                on_swapdb(info.dbnum_first, info.dbnum_second);
            }
        } else {
            crate::pipeline::control().wake();
        }
    });
}

fn on_key_gone(info: *mut KeyInfo, sub: u64) {
    if info.is_null() {
        return;
    }
    let key = unsafe { (*info).key };
    let (Some(name_of), Some(db_of), Some(ptr_len)) = (unsafe {
        (
            raw::RedisModule_GetKeyNameFromModuleKey,
            raw::RedisModule_GetDbIdFromModuleKey,
            raw::RedisModule_StringPtrLen,
        )
    }) else {
        return;
    };
    if key.is_null() {
        return;
    }
    let name = unsafe { name_of(key) };
    if name.is_null() {
        return;
    }
    let mut len = 0usize;
    let p = unsafe { ptr_len(name, &mut len) };
    if p.is_null() {
        return;
    }
    let name = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
    let s = settings::current();
    if name != s.str(Key::RedisStream).as_bytes()
        || i64::from(unsafe { db_of(key) }) != s.int(Key::RedisDb)
    {
        return;
    }
    let how = match sub {
        1 => "expired",
        2 => "evicted (maxmemory-policy)",
        3 => "overwritten",
        _ => "deleted",
    };
    stream_ends(how, None);
}

/// After `SWAPDB a b`: when one of them is the stream's database, the stream that was under the
/// name now lives in the other one.
fn on_swapdb(first: i32, second: i32) {
    let ours = settings::current().int(Key::RedisDb);
    let old_home = if i64::from(first) == ours {
        second
    } else if i64::from(second) == ours {
        first
    } else {
        return;
    };
    if i64::from(old_home) == ours {
        return;
    }
    stream_ends(
        &format!("swapped away (SWAPDB: it is now in database {old_home})"),
        Some(old_home),
    );
}

/// The stream is about to go (main thread, data still there), or has just moved to database `moved_to`:
/// count and report what was never written.
fn stream_ends(how: &str, moved_to: Option<i32>) {
    // The loss is judged on a replica by its primary: a replica writes nothing anyway.
    let Some(ctx) = stream::home() else { return };
    if stream::is_replica(&ctx) {
        return;
    }
    let s = settings::current();
    let stream_name = s.str(Key::RedisStream).to_string();
    let group = crate::pipeline::group_name(&s);
    let held = METRICS.in_flight.load(Ordering::Relaxed) as i64;
    let lost = match moved_to {
        None => never_written(&ctx, &stream_name, &group, held),
        Some(db) => match unsafe { raw::RedisModule_SelectDb } {
            Some(select) => unsafe {
                select(ctx.ctx, db);
                let lost = never_written(&ctx, &stream_name, &group, held);
                select(ctx.ctx, s.int(Key::RedisDb) as i32);
                lost
            },
            None => 0,
        },
    };
    crate::pipeline::control().wake();
    if lost == 0 {
        logging::info(&format!(
            "stream {stream_name} was {how}; every entry in it had been written"
        ));
        return;
    }
    METRICS.lost_deleted.fetch_add(lost, Ordering::Relaxed);
    logging::warning(&format!(
        "LOST {lost} entries of {stream_name} were never written to Snowflake: the stream was {how} \
         before they were (counted in lost_deleted); the writer carries on with the stream the \
         application creates next"
    ));
}

/// Entries of the stream that the group has not delivered yet, plus pending ones the module does not
/// hold (`held` = entries in flight in the module).
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
    (undelivered.max(0) + (info.pending - held).max(0)) as u64
}

/// Subscribes to the events (at load).
pub fn register(ctx: &Context) -> Result<(), String> {
    let Some(subscribe) = (unsafe { raw::RedisModule_SubscribeToServerEvent }) else {
        return Err("this Redis has no server events".into());
    };
    for id in [
        raw::REDISMODULE_EVENT_LOADING,
        raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
        raw::REDISMODULE_EVENT_SHUTDOWN,
    ] {
        let event = raw::RedisModuleEvent { id, dataver: 1 };
        if unsafe { subscribe(ctx.ctx, event, Some(on_event)) } != raw::REDISMODULE_OK as i32 {
            return Err(format!("could not subscribe to server event {id}"));
        }
    }
    // The stream's end: optional (a server without these events still runs the writer).
    for id in [EVENT_KEY, EVENT_FLUSHDB, EVENT_SWAPDB] {
        let event = raw::RedisModuleEvent { id, dataver: 1 };
        if unsafe { subscribe(ctx.ctx, event, Some(on_event)) } != raw::REDISMODULE_OK as i32 {
            logging::warning(&format!(
                "server event {id} is not available: a deleted stream's unwritten entries are not counted"
            ));
        }
    }
    Ok(())
}
