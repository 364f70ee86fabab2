//! The module's state and counters, and the one report `WB.STATUS` and `INFO writebehind` both show.
//!
//! Counters are atomics bumped by the pipeline threads without any lock; the report reads them on the
//! main thread. Both outputs derive from [`report`], so an exporter scraping INFO and an operator
//! typing `WB.STATUS` always see the same figures.

use std::sync::atomic::{AtomicU64, Ordering};

use redis_module::{raw, Context};

use crate::settings::{self, Key};
use crate::stream;

/// Lock-free counters of the data path.
#[derive(Debug, Default)]
pub struct Counters {
    pub entries_read: AtomicU64,
}

pub static COUNTERS: Counters = Counters {
    entries_read: AtomicU64::new(0),
};

/// One figure of the report.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    Int(i64),
    Text(String),
}

impl From<i64> for Figure {
    fn from(n: i64) -> Figure {
        Figure::Int(n)
    }
}
impl From<u64> for Figure {
    fn from(n: u64) -> Figure {
        Figure::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}
impl From<&str> for Figure {
    fn from(s: &str) -> Figure {
        Figure::Text(s.to_string())
    }
}
impl From<String> for Figure {
    fn from(s: String) -> Figure {
        Figure::Text(s)
    }
}

/// Whether this server is a primary or a replica, from the context flags.
pub fn role(ctx: &Context) -> &'static str {
    let flags = match unsafe { raw::RedisModule_GetContextFlags } {
        Some(f) => (unsafe { f(ctx.ctx) }) as u32,
        None => 0,
    };
    if flags & raw::REDISMODULE_CTX_FLAGS_SLAVE != 0 {
        "replica"
    } else {
        "primary"
    }
}

/// The state in one word, most important condition first.
pub fn state(ctx: &Context) -> &'static str {
    let s = settings::current();
    if role(ctx) == "replica" {
        "replica"
    } else if s.bool(Key::DryRun) {
        "dry-run"
    } else if !s.snowflake_configured() {
        if s.bool(Key::AllowNoSnowflake) {
            "dry-run"
        } else {
            "unconfigured"
        }
    } else {
        "configured"
    }
}

/// Every figure, in display order. Runs on the main thread; `live` is false while Redis writes a crash
/// report, when no command may run, and only counters are given.
pub fn report(live: bool) -> Vec<(&'static str, Figure)> {
    let home = stream::home().filter(|_| live);
    let Some(ctx) = home.as_ref() else {
        return counters();
    };
    let s = settings::current();
    let stream_name = s.str(Key::RedisStream).to_string();
    let group = s.str(Key::Group).to_string();
    let mut out: Vec<(&'static str, Figure)> = vec![
        ("state", state(ctx).into()),
        ("role", role(ctx).into()),
        ("version", env!("CARGO_PKG_VERSION").into()),
        ("stream", stream_name.clone().into()),
        ("group", group.clone().into()),
        ("consumer", s.str(Key::Consumer).into()),
        ("db", s.int(Key::RedisDb).into()),
        (
            "snowflake",
            if s.snowflake_configured() {
                "configured"
            } else {
                "unconfigured"
            }
            .into(),
        ),
    ];
    out.push(("stream_length", stream::length(ctx, &stream_name).into()));
    let info = stream::group_info(ctx, &stream_name, &group).unwrap_or_default();
    out.push(("pending", info.pending.into()));
    out.push(("lag", info.lag.unwrap_or(-1).into()));
    out.push(("last_delivered_id", info.last_delivered_id.into()));
    out.extend(counters());
    out
}

fn counters() -> Vec<(&'static str, Figure)> {
    vec![(
        "entries_read",
        COUNTERS.entries_read.load(Ordering::Relaxed).into(),
    )]
}
