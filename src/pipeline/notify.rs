//! The stream notification: wakes the claimer when the application adds to the stream.
//!
//! This runs inside the application's `XADD`, on Redis's main thread. While the claimer is busy it
//! returns at once (one flag read); only while the claimer waits for new entries does it compare the
//! key with the configured stream and signal a channel that holds at most one wake-up. No Redis
//! call, no allocation, nothing that could slow the write.

use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicBool, Ordering};

use redis_module::{raw, Context};

use crate::settings::{self, Key};

/// Set by the claimer, under the Redis lock, when a read found nothing new and it is about to wait;
/// cleared by the first notification that wakes it. While the claimer is busy (draining or yielding),
/// an XADD's notification returns at once: nothing to compare, no shared state touched.
pub static CLAIMER_IDLE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stream_event(
    _ctx: *mut raw::RedisModuleCtx,
    _type: c_int,
    event: *const c_char,
    key: *mut raw::RedisModuleString,
) -> c_int {
    crate::ffi::guard("stream notification", || {
        if !CLAIMER_IDLE.load(Ordering::Relaxed) || event.is_null() || key.is_null() {
            return;
        }
        let event = unsafe { std::ffi::CStr::from_ptr(event) };
        if event.to_bytes() != b"xadd" {
            return;
        }
        let Some(ptr_len) = (unsafe { raw::RedisModule_StringPtrLen }) else {
            return;
        };
        let mut len = 0usize;
        let p = unsafe { ptr_len(key, &mut len) };
        if p.is_null() {
            return;
        }
        let name = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
        if name == settings::current().str(Key::RedisStream).as_bytes() {
            CLAIMER_IDLE.store(false, Ordering::Relaxed);
            crate::pipeline::control().wake();
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
