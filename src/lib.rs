//! redis-writebehind: a Redis 8 / Valkey 9 module that makes a Redis stream a write-behind cache for
//! Snowflake.
//!
//! # Layout
//! The data path, from the application's `XADD` to the `XACK`, one line per module:
//!
//! - [`pipeline::claim`]: claims entries through the consumer group, bounded, pending ones first;
//!   nothing of the module runs on the application's XADD (an idle claimer looks again shortly).
//! - [`entry`]: decodes an entry's fields and applies the seed's rules (pure, no Redis, no network).
//! - [`sql`]: turns a batch of decoded entries into bound, idempotent MERGE statements (pure).
//! - [`pipeline::worker`] and [`pipeline::sink`]: batch, commit, retry; [`snowflake`]: the SQL API v2
//!   client that sends them.
//! - [`pipeline::ack`]: `XACK` (or dead-letter) only after Snowflake committed.
//!
//! Four layers, bottom to top; a file imports only from its own layer or below (`tests/layers.rs`
//! checks it, and that no files import each other in a circle; `docs/architecture.md` draws it):
//!
//! - **core** — pure or network-only, never the server's API: [`entry`], [`sql`] (every statement
//!   text), [`snowflake`], [`settings`] (the one table of settings), [`mapping`] (hash mappings),
//!   [`statement`], [`account`], [`text`], [`docs`].
//! - **host** — [`host`]: every call into the server's module API (lock, stream commands,
//!   notifications, server events, module configs, INFO, panic guard, log, allocator). It calls up
//!   only through the one [`host::Listener`] the pipeline registers.
//! - **pipeline** — [`pipeline`]: the threads from claim to acknowledgement, their control and
//!   counters, the report, restore and import, the bounded executor for waiting commands; and
//!   [`migrate`], the offline migration tool's library.
//! - **commands** — [`commands`]: one file per `WB.*` command, each a pure `Args::parse` and a `run`.
//!
//! This file is registration only.
pub mod account;
pub mod commands;
pub mod docs;
pub mod entry;
pub mod host;
pub mod mapping;
pub mod migrate;
pub mod pipeline;
pub mod settings;
pub mod shard;
pub mod snowflake;
pub mod sql;
pub mod statement;
pub mod text;

use host::{config, events, ffi, info, logging, server, stream};
use redis_module::{redis_module, Context, RedisString, Status};

fn init(ctx: &Context, _args: &[RedisString]) -> Status {
    type Step = fn(&Context) -> Result<(), String>;
    let steps: [(&str, Step); 10] = [
        ("server detection", server::detect),
        ("module options", host::cluster::declare_options),
        ("settings", config::register),
        ("stream context", stream::init),
        ("streams", |ctx| {
            pipeline::control::open(host::cluster::enabled(ctx))
        }),
        ("listener", |_| host::listen(&pipeline::events::Events)),
        ("INFO section", info::register),
        ("mappings", |ctx| {
            let path = settings::current()
                .str(settings::Key::MappingsFile)
                .to_string();
            pipeline::capture::load(ctx, &path)
        }),
        ("server events", events::register),
        ("pipeline", |ctx| {
            pipeline::start(host::cluster::enabled(ctx))
        }),
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

fn deinit(_ctx: &Context) -> Status {
    match ffi::guard("module unload", pipeline::unload) {
        Some(Ok(())) => Status::Ok,
        Some(Err(e)) => {
            logging::warning(&format!("MODULE UNLOAD refused: {e}"));
            Status::Err
        }
        None => Status::Err,
    }
}

redis_module! {
    name: "writebehind",
    version: 1,
    allocator: (crate::host::alloc::ModuleAlloc, crate::host::alloc::ModuleAlloc),
    data_types: [],
    init: init,
    deinit: deinit,
    // ACL categories: the operator's commands are in @admin and @dangerous, so `-@admin` keeps an
    // application user (XADD, WB.WRITE, WB.STATUS) away from WB.DLQ PURGE, WB.PAUSE and the like.
    commands: [
        ["wb.status", commands::status::command, "readonly allow-loading", 0, 0, 0, ""],
        ["wb.pause", commands::pause::pause, "admin", 0, 0, 0, "admin dangerous"],
        ["wb.resume", commands::pause::resume, "admin", 0, 0, 0, "admin dangerous"],
        ["wb.flush", commands::flush::command, "readonly", 0, 0, 0, ""],
        ["wb.ping", commands::ping::command, "readonly", 0, 0, 0, ""],
        ["wb.dlq", commands::dlq::command, "write", 0, 0, 0, "admin dangerous"],
        ["wb.restore", commands::restore::command, "write", 0, 0, 0, "admin dangerous"],
        ["wb.import", commands::import::command, "write", 0, 0, 0, "admin dangerous"],
        // `getkeys-api`: the stream, when named first, is the key a cluster routes by.
        ["wb.write", commands::write::command, "write getkeys-api", 0, 0, 0, "write stream"],
    ],
}
