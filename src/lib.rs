//! redis-writebehind: a Redis 8 module that makes a Redis stream a write-behind cache for Snowflake.
//!
//! # Layout
//! The data path, from the application's `XADD` to the `XACK`, one line per module:
//!
//! - [`settings`]: the one table of settings and the typed snapshot every part reads.
//! - [`config`]: registers that table as the module configs `writebehind.*`.
//! - [`stream`]: asks Redis about the stream and its consumer group.
//! - [`statement`]: a SQL statement with bind variables, the unit sent to Snowflake.
//! - [`commands`]: the `WB.*` commands; [`status`] and [`info`]: the figures they and INFO show.
//! - [`ffi`], [`logging`], [`alloc`]: the boundary with Redis (no panic crosses it), the Redis log,
//!   and Redis's allocator.
//!
//! This file is registration only.

pub mod alloc;
pub mod commands;
pub mod config;
pub mod ffi;
pub mod info;
pub mod logging;
pub mod settings;
pub mod statement;
pub mod status;
pub mod stream;

use redis_module::{redis_module, Context, RedisString, Status};

fn init(ctx: &Context, _args: &[RedisString]) -> Status {
    type Step = fn(&Context) -> Result<(), String>;
    let steps: [(&str, Step); 3] = [
        ("settings", config::register),
        ("stream context", stream::init),
        ("INFO section", info::register),
    ];
    let outcome = ffi::guard("module load", || {
        for (what, step) in steps {
            step(ctx).map_err(|e| format!("{what}: {e}"))?;
        }
        Ok::<(), String>(())
    });
    match outcome {
        Some(Ok(())) => {
            logging::info(&format!("loaded, version {}", env!("CARGO_PKG_VERSION")));
            Status::Ok
        }
        Some(Err(e)) => {
            logging::error(&format!("not loaded: {e}"));
            Status::Err
        }
        None => Status::Err,
    }
}

redis_module! {
    name: "writebehind",
    version: 1,
    allocator: (crate::alloc::ModuleAlloc, crate::alloc::ModuleAlloc),
    data_types: [],
    init: init,
    commands: [
        ["wb.status", commands::wb_status, "readonly", 0, 0, 0, ""],
    ],
}
