//! redis-writebehind: a Redis 8 module that makes a Redis stream a write-behind cache for Snowflake.
//!
//! # Layout
//! The data path, from the application's `XADD` to the `XACK`, one line per module:
//!
//! - [`settings`]: the one table of settings and the typed snapshot every part reads.
//! - [`config`]: registers that table as the module configs `writebehind.*`.
//! - [`statement`]: a SQL statement with bind variables, the unit sent to Snowflake.
//! - [`commands`]: the `WB.*` commands.
//! - [`status`]: state and counters behind `WB.STATUS` and `INFO writebehind`.
//!
//! This file is registration only.

pub mod alloc;
pub mod commands;
pub mod config;
pub mod ffi;
pub mod logging;
pub mod settings;
pub mod statement;
pub mod status;
