//! The stream notification: tells the [`Listener`](super::Listener) that the application added to a
//! stream, so the pipeline reading it wakes its claimer.
//!
//! This runs inside the application's `XADD`, on Redis's main thread: it hands over the key's name,
//! and the listener compares it with its streams and signals a channel that holds at most one
//! wake-up. No Redis call, no allocation, nothing that could slow the write.

use redis_module::{raw, Context};
use std::ffi::{c_char, c_int};

extern "C" fn on_stream_event(
    _ctx: *mut raw::RedisModuleCtx,
    _type: c_int,
    event: *const c_char,
    key: *mut raw::RedisModuleString,
) -> c_int {
    crate::host::ffi::guard("stream notification", || {
        if event.is_null() || key.is_null() {
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
