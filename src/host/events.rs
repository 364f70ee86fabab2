//! Server events the module follows, decoded into [`ServerEvent`] values for the
//! [`Listener`](super::Listener): loading finished and role changes (the pipeline wakes its claimer,
//! which re-reads the role itself), shutdown (stop claiming, give in-flight batches a bounded time to
//! commit), and a key's or a database's end.
//!
//! A key's end: when a key is deleted (`DEL`, `UNLINK`, an expiry, an eviction under an `allkeys-*`
//! policy, an overwrite) or its database is flushed (`FLUSHDB`, `FLUSHALL`), Redis tells the module
//! just before the data goes, so the pipeline whose stream it is can still count what was never
//! written (see `pipeline::events`). A database swapped (`SWAPDB`) is told just after the swap.

use std::ffi::c_void;

use redis_module::{raw, Context};

use crate::host::logging;

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

/// A server event, as the host decodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent<'a> {
    /// `SHUTDOWN`: the final save is done.
    Shutdown,
    /// Loading started or finished, or the role changed: the pipeline looks again.
    Changed,
    /// A key is about to go: deleted, expired, evicted or overwritten (`how`).
    KeyGone {
        key: &'a [u8],
        db: i64,
        how: &'static str,
    },
    /// On a cluster, a key is about to leave this node with its slot: moved by `MIGRATE` (a
    /// resharding), or dropped because another node now serves its slot. Its data lives on there.
    KeyMoved { key: &'a [u8], db: i64 },
    /// A database is about to be flushed (`db` is -1 for `FLUSHALL`).
    Flushed { db: i64 },
    /// Two databases were just swapped (`SWAPDB first second`).
    Swapped { first: i64, second: i64 },
}

extern "C" fn on_event(
    ctx: *mut raw::RedisModuleCtx,
    eid: raw::RedisModuleEvent,
    sub: u64,
    data: *mut c_void,
) {
    crate::host::ffi::guard("server event", || {
        let Some(listener) = super::listener() else {
            return;
        };
        if eid.id == raw::REDISMODULE_EVENT_SHUTDOWN {
            listener.server_event(ServerEvent::Shutdown);
        } else if eid.id == EVENT_KEY {
            if let Some((key, db)) = key_gone(data.cast::<KeyInfo>()) {
                let how = match sub {
                    1 => "expired",
                    2 => "evicted (maxmemory-policy)",
                    3 => "overwritten",
                    _ => "deleted",
                };
                if sub == 0 && moving_away(ctx, key) {
                    listener.server_event(ServerEvent::KeyMoved { key, db });
                } else {
                    listener.server_event(ServerEvent::KeyGone { key, db, how });
                }
            }
        } else if eid.id == EVENT_FLUSHDB {
            if sub == SUBEVENT_FLUSHDB_START && !data.is_null() {
                let db = unsafe { (*data.cast::<FlushInfo>()).dbnum };
                listener.server_event(ServerEvent::Flushed { db: i64::from(db) });
            }
        } else if eid.id == EVENT_SWAPDB {
            if !data.is_null() {
                let info = unsafe { &*data.cast::<SwapDbInfo>() };
                listener.server_event(ServerEvent::Swapped {
                    first: i64::from(info.dbnum_first),
                    second: i64::from(info.dbnum_second),
                });
            }
        } else {
            listener.server_event(ServerEvent::Changed);
        }
    });
}

/// Whether a key deleted on a cluster node leaves with its slot rather than for good: deleted by
/// `MIGRATE`, or while this node no longer serves the key's slot (the cluster drops a lost slot's keys).
fn moving_away(ctx: *mut raw::RedisModuleCtx, key: &[u8]) -> bool {
    if ctx.is_null() {
        return false;
    }
    let ctx = redis_module::Context::new(ctx);
    if !super::cluster::enabled(&ctx) {
        return false;
    }
    let command = unsafe { raw::RedisModule_GetCurrentCommandName }
        .map(|name| unsafe { name(ctx.ctx) })
        .filter(|p| !p.is_null())
        .map(|p| {
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_bytes()
                .to_ascii_lowercase()
        });
    if command.as_deref() == Some(b"migrate".as_slice()) {
        return true;
    }
    std::str::from_utf8(key).is_ok_and(|k| super::cluster::serves(&ctx, k).is_err())
}

/// The name and database of the key about to go.
fn key_gone<'a>(info: *mut KeyInfo) -> Option<(&'a [u8], i64)> {
    if info.is_null() {
        return None;
    }
    let key = unsafe { (*info).key };
    let (Some(name_of), Some(db_of)) = (unsafe {
        (
            raw::RedisModule_GetKeyNameFromModuleKey,
            raw::RedisModule_GetDbIdFromModuleKey,
        )
    }) else {
        return None;
    };
    if key.is_null() {
        return None;
    }
    let name = unsafe { super::ffi::string_bytes(name_of(key)) }?;
    Some((name, i64::from(unsafe { db_of(key) })))
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
