//! Keyspace notifications of every key class, for hash mappings: the host tells the
//! [`Listener`](super::Listener) which key a command touched, and lets it schedule work that runs
//! right after the notification, still inside the command.
//!
//! Subscribed only when mappings are configured ([`register`]). The callback runs inside the
//! application's command on the main thread: it hands the key over and does nothing else. Writing
//! from a notification is unsafe, so the listener's work goes through a post-notification job
//! ([`super::After::run`]), which the server runs once the notification is done, atomically with the
//! command: its writes reach the AOF and the replicas inside the command's own `MULTI`/`EXEC`.
//!
//! Only keys under the watched prefixes ([`register`]) reach the listener: for any other key the
//! callback costs a few byte comparisons.
//!
//! The module's own writes to mapped keys (removing the `#` field, deleting a key for `-`/`~`, a
//! write-through rename) are made inside [`quiet`], where notifications are not passed on, so they
//! are never captured a second time.

use std::cell::Cell;
use std::ffi::{c_char, c_int};

use redis_module::{raw, Context};

thread_local! {
    /// Set while the module writes mapped keys itself (main thread only).
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// The key prefixes whose keys are passed on (set at load).
static WATCHED: parking_lot::RwLock<Vec<Vec<u8>>> = parking_lot::RwLock::new(Vec::new());

/// The prefix of a write-through key (`__{<key>}`), watched besides the prefixes given.
const WRITE_THROUGH: &[u8] = b"__{";

fn watched(key: &[u8]) -> bool {
    key.starts_with(WRITE_THROUGH) || WATCHED.read().iter().any(|p| key.starts_with(p))
}

/// Runs `body` without passing on the notifications its writes cause.
pub fn quiet<T>(body: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            QUIET.with(|q| q.set(self.0));
        }
    }
    let _reset = Reset(QUIET.with(|q| q.replace(true)));
    body()
}

extern "C" fn on_key_event(
    ctx: *mut raw::RedisModuleCtx,
    _type: c_int,
    event: *const c_char,
    key: *mut raw::RedisModuleString,
) -> c_int {
    super::ffi::guard("key notification", || {
        if event.is_null() || key.is_null() || ctx.is_null() || QUIET.with(Cell::get) {
            return;
        }
        let Some(listener) = super::listener() else {
            return;
        };
        let Some(name) = (unsafe { super::ffi::string_bytes(key) }) else {
            return;
        };
        if !watched(name) {
            return;
        }
        let event = unsafe { std::ffi::CStr::from_ptr(event) }.to_bytes();
        let ctx = Context::new(ctx);
        listener.key_event(event, name, &super::After { ctx: &ctx });
    });
    raw::REDISMODULE_OK as c_int
}

/// Subscribes to the events of every key class except streams (the drain looks for new stream
/// entries itself, so nothing of the module runs on an `XADD`):
/// any command that can change, replace or remove a hash, of a key under one of `prefixes` (or a
/// write-through key).
pub fn register(ctx: &Context, prefixes: Vec<Vec<u8>>) -> Result<(), String> {
    *WATCHED.write() = prefixes;
    let classes = raw::REDISMODULE_NOTIFY_GENERIC
        | raw::REDISMODULE_NOTIFY_STRING
        | raw::REDISMODULE_NOTIFY_LIST
        | raw::REDISMODULE_NOTIFY_SET
        | raw::REDISMODULE_NOTIFY_HASH
        | raw::REDISMODULE_NOTIFY_ZSET
        | raw::REDISMODULE_NOTIFY_EXPIRED
        | raw::REDISMODULE_NOTIFY_EVICTED;
    match unsafe { raw::RedisModule_SubscribeToKeyspaceEvents } {
        Some(sub)
            if unsafe { sub(ctx.ctx, classes, Some(on_key_event)) }
                == raw::REDISMODULE_OK as c_int =>
        {
            Ok(())
        }
        _ => Err("could not subscribe to key notifications".into()),
    }
}
