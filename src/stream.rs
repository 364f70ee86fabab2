//! Reading the stream's state through Redis commands: the one place that asks Redis about the stream.
//!
//! Calls run on a detached context whose database is `REDIS_DB`, created once at load, so a command
//! such as `WB.STATUS` never changes the database its own client has selected. On the main thread the
//! context is used directly (the main thread holds the lock); background threads lock it first.

use std::sync::atomic::{AtomicPtr, Ordering};

use redis_module::{raw, Context, RedisValue};

use crate::settings::{self, Key};

static HOME: AtomicPtr<raw::RedisModuleCtx> = AtomicPtr::new(std::ptr::null_mut());

/// Creates the detached context (at load, on the main thread).
pub fn init(ctx: &Context) -> Result<(), String> {
    let Some(get_detached) = (unsafe { raw::RedisModule_GetDetachedThreadSafeContext }) else {
        return Err("this Redis has no detached thread-safe contexts".into());
    };
    let home = unsafe { get_detached(ctx.ctx) };
    if home.is_null() {
        return Err("could not create a detached context".into());
    }
    let db = settings::current().int(Key::RedisDb) as i32;
    if let Some(select) = unsafe { raw::RedisModule_SelectDb } {
        unsafe { select(home, db) };
    }
    HOME.store(home, Ordering::Release);
    Ok(())
}

/// The module's own context, on the configured database. Only valid on the main thread, or on a
/// background thread while it holds the Redis lock.
pub fn home() -> Option<Context> {
    let p = HOME.load(Ordering::Acquire);
    (!p.is_null()).then(|| Context::new(p))
}

/// What `XINFO GROUPS` says about one consumer group.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub consumers: i64,
    pub pending: i64,
    pub last_delivered_id: String,
    /// Entries not yet delivered to the group; `None` when Redis cannot tell (after deletions).
    pub lag: Option<i64>,
}

pub fn length(ctx: &Context, stream: &str) -> i64 {
    match ctx.call("XLEN", &[stream]) {
        Ok(RedisValue::Integer(n)) => n,
        _ => 0,
    }
}

fn text(v: &RedisValue) -> Option<String> {
    match v {
        RedisValue::SimpleString(s) | RedisValue::BulkString(s) => Some(s.clone()),
        RedisValue::SimpleStringStatic(s) => Some(s.to_string()),
        RedisValue::BulkRedisString(s) => Some(s.to_string_lossy()),
        RedisValue::StringBuffer(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// The group's figures, or `None` when the stream or the group does not exist.
pub fn group_info(ctx: &Context, stream: &str, group: &str) -> Option<GroupInfo> {
    let Ok(RedisValue::Array(groups)) = ctx.call("XINFO", &["GROUPS", stream]) else {
        return None;
    };
    groups.iter().find_map(|g| {
        let RedisValue::Array(fields) = g else {
            return None;
        };
        let mut info = GroupInfo::default();
        let mut name = None;
        for pair in fields.chunks(2) {
            let [k, v] = pair else { continue };
            match text(k).as_deref() {
                Some("name") => name = text(v),
                Some("consumers") => info.consumers = int(v).unwrap_or(0),
                Some("pending") => info.pending = int(v).unwrap_or(0),
                Some("last-delivered-id") => info.last_delivered_id = text(v).unwrap_or_default(),
                Some("lag") => info.lag = int(v),
                _ => {}
            }
        }
        (name.as_deref() == Some(group)).then_some(info)
    })
}

fn int(v: &RedisValue) -> Option<i64> {
    match v {
        RedisValue::Integer(n) => Some(*n),
        _ => None,
    }
}
