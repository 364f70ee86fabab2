//! The stream notification: tells the [`Listener`](super::Listener) that the application added to a
//! stream, so the pipeline reading it wakes its claimer.
//!
//! This runs inside the application's `XADD`, on Redis's main thread. While no listener waits for
//! new entries it returns at once (one flag read); otherwise it hands over the key's name, and the
//! listener compares it with its streams and signals a channel that holds at most one wake-up. No
//! Redis call, no allocation, nothing that could slow the write.

use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicUsize, Ordering};

use redis_module::{raw, Context};

/// How many claimers wait for new entries: each counts itself in, under the Redis lock, when a
/// read found nothing new and it is about to wait, and out when it wakes. While every claimer is
/// busy (draining or yielding), an XADD's notification returns at once: nothing to compare, no
/// shared state touched.
static WANTED: AtomicUsize = AtomicUsize::new(0);

/// Counts a waiting claimer in (`true`) or out (`false`); each call out matches one call in.
pub fn want(wanted: bool) {
    if wanted {
        WANTED.fetch_add(1, Ordering::Relaxed);
    } else {
        let _ = WANTED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(1))
        });
    }
}

extern "C" fn on_stream_event(
    _ctx: *mut raw::RedisModuleCtx,
    _type: c_int,
    event: *const c_char,
    key: *mut raw::RedisModuleString,
) -> c_int {
    crate::host::ffi::guard("stream notification", || {
        if WANTED.load(Ordering::Relaxed) == 0 || event.is_null() || key.is_null() {
            return;
        }
        let event = unsafe { std::ffi::CStr::from_ptr(event) };
        if event.to_bytes() != b"xadd" {
            return;
        }
        let Some(name) = (unsafe { crate::host::ffi::string_bytes(key) }) else {
            return;
        };
        if let Some(listener) = super::listener() {
            listener.xadd(name);
        }
    });
    raw::REDISMODULE_OK as c_int
}

/// Subscribes to stream events (at load).
pub fn register(ctx: &Context) -> Result<(), String> {
    match unsafe { raw::RedisModule_SubscribeToKeyspaceEvents } {
        Some(sub)
            if unsafe {
                sub(
                    ctx.ctx,
                    raw::REDISMODULE_NOTIFY_STREAM,
                    Some(on_stream_event),
                )
            } == raw::REDISMODULE_OK as c_int =>
        {
            Ok(())
        }
        _ => Err("could not subscribe to stream notifications".into()),
    }
}
