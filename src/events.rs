//! Server events the module follows: loading finished, role changes (wake the claimer, which re-reads
//! the role itself) and shutdown (stop claiming, give in-flight batches a bounded time to commit).

use std::ffi::c_void;
use std::time::Duration;

use redis_module::{raw, Context};

use crate::settings::{self, Key};

extern "C" fn on_event(
    _ctx: *mut raw::RedisModuleCtx,
    eid: raw::RedisModuleEvent,
    _sub: u64,
    _data: *mut c_void,
) {
    crate::ffi::guard("server event", || {
        if eid.id == raw::REDISMODULE_EVENT_SHUTDOWN {
            let grace = Duration::from_millis(settings::current().uint(Key::ShutdownGraceMs));
            crate::pipeline::shutdown(grace);
        } else {
            crate::pipeline::control().wake();
        }
    });
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
    Ok(())
}
