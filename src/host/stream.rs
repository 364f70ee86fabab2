//! The one place that touches the stream: reading its state, claiming entries through the consumer
//! group, acknowledging them, dead-lettering them.
//!
//! Every write goes through `RM_Call` with the `!` flag, so it reaches the AOF and the replicas like a
//! client's command would: an `XACK` that only lived in memory would be undone by a restart. Calls never
//! use the deny-OOM flag: acknowledging must work even when Redis is at `maxmemory`.
//!
//! Calls run on a detached context whose database is `REDIS_DB`, created once at load, so a command
//! such as `WB.STATUS` never changes the database its own client has selected. On the main thread the
//! context is used directly (the main thread holds the lock); background threads lock it first.

use std::sync::atomic::{AtomicPtr, Ordering};

use redis_module::{raw, CallOptionsBuilder, CallReply, CallResult, Context, RedisValue};

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
    /// The logical position (1-based count of entries ever added) of the last entry delivered to the
    /// group; `None` when Redis cannot tell.
    pub entries_read: Option<i64>,
}

pub fn length(ctx: &Context, stream: &str) -> i64 {
    match ctx.call("XLEN", &[stream]) {
        Ok(RedisValue::Integer(n)) => n,
        _ => 0,
    }
}

/// A string reply as text (lossy for binary data).
pub fn text(v: &RedisValue) -> Option<String> {
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
                Some("entries-read") => info.entries_read = int(v),
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

/// One stream entry as read: its ID and its field/value pairs, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub id: String,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawEntry {
    /// Bytes held for this entry (for memory bounds).
    pub fn size(&self) -> usize {
        self.id.len()
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// A call's reply as a value, byte for byte: every string stays bytes (never a simple string, which
/// could not carry a NUL or a CR LF back to a client), and no reply shape can panic (the crate's own
/// conversion panics on some RESP3 map keys).
pub fn value(reply: &CallReply) -> RedisValue {
    let item = |r: &CallResult| match r {
        Ok(r) => value(r),
        Err(e) => RedisValue::StringBuffer(e.as_bytes().to_vec()),
    };
    match reply {
        CallReply::String(s) => RedisValue::StringBuffer(s.as_bytes().to_vec()),
        CallReply::VerbatimString(s) => {
            RedisValue::StringBuffer(s.to_parts().map(|(_, data)| data).unwrap_or_default())
        }
        CallReply::I64(n) => RedisValue::Integer(n.to_i64()),
        CallReply::Bool(b) => RedisValue::Integer(i64::from(b.to_bool())),
        CallReply::Double(d) => RedisValue::Float(d.to_double()),
        CallReply::BigNumber(n) => {
            RedisValue::StringBuffer(n.to_string().unwrap_or_default().into_bytes())
        }
        CallReply::Array(a) => RedisValue::Array(a.iter().map(|r| item(&r)).collect()),
        CallReply::Set(a) => RedisValue::Array(a.iter().map(|r| item(&r)).collect()),
        CallReply::Map(m) => {
            RedisValue::Array(m.iter().flat_map(|(k, v)| [item(&k), item(&v)]).collect())
        }
        CallReply::Null(_) | CallReply::Unknown => RedisValue::Null,
    }
}

/// Whether this server is a replica now. Checked inside every lock hold that writes: after a
/// demotion (`REPLICAOF`, a Sentinel failover) the module must not write to the replica's data.
pub fn is_replica(ctx: &Context) -> bool {
    flags(ctx) & raw::REDISMODULE_CTX_FLAGS_SLAVE != 0
}

/// The error of a write refused because this server became a replica.
pub const DEMOTED: &str = "READONLY this server is a replica now; the module's write was dropped";

/// Runs a command that changes data, replicated and written to the AOF. Refused on a replica (see
/// [`is_replica`]): the caller drops its work, the new primary does it.
pub fn call_write(ctx: &Context, command: &str, args: &[&[u8]]) -> Result<RedisValue, String> {
    if is_replica(ctx) {
        return Err(DEMOTED.into());
    }
    let opts = CallOptionsBuilder::new()
        .replicate()
        .errors_as_replies()
        .build();
    let res: CallResult = ctx.call_ext(command, &opts, args);
    match res {
        Ok(reply) => Ok(value(&reply)),
        Err(e) => Err(e.to_utf8_string().unwrap_or_else(|| "error".into())),
    }
}

/// Runs a read-only command.
pub fn call_read(ctx: &Context, command: &str, args: &[&[u8]]) -> Result<RedisValue, String> {
    let opts = CallOptionsBuilder::new().errors_as_replies().build();
    let res: CallResult = ctx.call_ext(command, &opts, args);
    match res {
        Ok(reply) => Ok(value(&reply)),
        Err(e) => Err(e.to_utf8_string().unwrap_or_else(|| "error".into())),
    }
}

/// A string reply as bytes, exactly.
pub fn bytes(v: &RedisValue) -> Option<Vec<u8>> {
    match v {
        RedisValue::StringBuffer(b) => Some(b.clone()),
        other => text(other).map(String::into_bytes),
    }
}

/// Creates the consumer group at ID 0 (so entries added before the module was loaded are written too),
/// creating the stream if needed. An existing group is left as it is.
pub fn ensure_group(ctx: &Context, stream: &str, group: &str) -> Result<(), String> {
    match call_write(
        ctx,
        "XGROUP",
        &[
            b"CREATE",
            stream.as_bytes(),
            group.as_bytes(),
            b"0",
            b"MKSTREAM",
        ],
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Parses an `XREADGROUP`/`XRANGE`-style array of `[id, [field, value, ...]]`; entries deleted from
/// the stream but still pending come back with a nil field list and are returned with no fields.
pub fn parse_entries(list: &RedisValue) -> Vec<RawEntry> {
    let RedisValue::Array(items) = list else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let RedisValue::Array(parts) = item else {
                return None;
            };
            let id = text(parts.first()?)?;
            let fields = match parts.get(1) {
                Some(RedisValue::Array(kv)) => kv
                    .chunks(2)
                    .filter_map(|p| match p {
                        [k, v] => Some((bytes(k)?, bytes(v)?)),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            Some(RawEntry { id, fields })
        })
        .collect()
}

/// Reads up to `count` entries for `consumer`: `from` is `0` (or an ID) for its pending entries, `>`
/// for new ones.
pub fn read_group(
    ctx: &Context,
    stream: &str,
    group: &str,
    consumer: &str,
    from: &str,
    count: usize,
) -> Result<Vec<RawEntry>, String> {
    let count = count.to_string();
    let args: [&[u8]; 8] = [
        b"GROUP",
        group.as_bytes(),
        consumer.as_bytes(),
        b"COUNT",
        count.as_bytes(),
        b"STREAMS",
        stream.as_bytes(),
        from.as_bytes(),
    ];
    if is_replica(ctx) {
        return Err(DEMOTED.into());
    }
    let opts = CallOptionsBuilder::new()
        .replicate()
        .errors_as_replies()
        .build();
    // This runs under the Redis lock for every chunk: the reply is copied once, straight into the
    // entries, without an intermediate value tree.
    let res: CallResult = ctx.call_ext("XREADGROUP", &opts, &args[..]);
    let streams = match res {
        Ok(CallReply::Array(streams)) => streams,
        Ok(_) => return Ok(Vec::new()), // nil: nothing new
        Err(e) => {
            return Err(e
                .to_utf8_string()
                .unwrap_or_else(|| "XREADGROUP failed".into()))
        }
    };
    // [[stream, [[id, [field, value, ...]], ...]]]
    let Some(Ok(CallReply::Array(pair))) = streams.get(0) else {
        return Ok(Vec::new());
    };
    let Some(Ok(CallReply::Array(list))) = pair.get(1) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(list.len());
    for item in list.iter() {
        let Ok(CallReply::Array(entry)) = item else {
            continue;
        };
        let Some(id) = entry.get(0).as_ref().and_then(reply_bytes) else {
            continue;
        };
        let mut fields = Vec::new();
        if let Some(Ok(CallReply::Array(kv))) = entry.get(1) {
            fields.reserve(kv.len() / 2);
            let mut i = 0;
            while i + 1 < kv.len() {
                if let (Some(k), Some(v)) = (
                    kv.get(i).as_ref().and_then(reply_bytes),
                    kv.get(i + 1).as_ref().and_then(reply_bytes),
                ) {
                    fields.push((k, v));
                }
                i += 2;
            }
        }
        out.push(RawEntry {
            id: String::from_utf8_lossy(&id).into_owned(),
            fields,
        });
    }
    Ok(out)
}

fn reply_bytes(r: &CallResult) -> Option<Vec<u8>> {
    match r {
        Ok(CallReply::String(s)) => Some(s.as_bytes().to_vec()),
        Ok(CallReply::VerbatimString(s)) => s.to_parts().map(|(_, data)| data),
        _ => None,
    }
}

/// What one `XAUTOCLAIM` step returned.
#[derive(Debug, Default)]
pub struct Autoclaimed {
    pub entries: Vec<RawEntry>,
    /// Where to continue (`0-0` when done).
    pub next: String,
    /// Pending entries that no longer exist in the stream (trimmed or deleted before they were
    /// written); Redis drops them from the pending list.
    pub deleted: Vec<String>,
}

/// Moves every pending entry of the group, whoever holds it, to `consumer`, from `start` on.
pub fn autoclaim(
    ctx: &Context,
    stream: &str,
    group: &str,
    consumer: &str,
    start: &str,
    count: usize,
) -> Result<Autoclaimed, String> {
    let count = count.to_string();
    let reply = call_write(
        ctx,
        "XAUTOCLAIM",
        &[
            stream.as_bytes(),
            group.as_bytes(),
            consumer.as_bytes(),
            b"0",
            start.as_bytes(),
            b"COUNT",
            count.as_bytes(),
        ],
    )?;
    let RedisValue::Array(parts) = reply else {
        return Ok(Autoclaimed {
            next: "0-0".into(),
            ..Autoclaimed::default()
        });
    };
    let deleted = match parts.get(2) {
        Some(RedisValue::Array(ids)) => ids.iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    Ok(Autoclaimed {
        next: parts.first().and_then(text).unwrap_or_else(|| "0-0".into()),
        entries: parts.get(1).map(parse_entries).unwrap_or_default(),
        deleted,
    })
}

/// Acknowledges entries; returns how many were pending.
pub fn ack(ctx: &Context, stream: &str, group: &str, ids: &[&str]) -> Result<i64, String> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut args: Vec<&[u8]> = vec![stream.as_bytes(), group.as_bytes()];
    args.extend(ids.iter().map(|id| id.as_bytes()));
    match call_write(ctx, "XACK", &args)? {
        RedisValue::Integer(n) => Ok(n),
        _ => Ok(0),
    }
}

/// Appends an entry; returns its ID.
pub fn add(ctx: &Context, stream: &str, fields: &[(&[u8], &[u8])]) -> Result<String, String> {
    let mut args: Vec<&[u8]> = vec![stream.as_bytes(), b"*"];
    for (k, v) in fields {
        args.push(k);
        args.push(v);
    }
    let reply = call_write(ctx, "XADD", &args)?;
    text(&reply).ok_or_else(|| "XADD gave no ID".into())
}

/// Copies an entry to the dead-letter stream `dlq`, unchanged, plus `reason`, `source_stream` and
/// `source_id`; then acknowledges it. Both happen under the caller's one lock hold.
pub fn dead_letter(
    ctx: &Context,
    stream: &str,
    dlq: &str,
    group: &str,
    entry: &RawEntry,
    reason: &str,
) -> Result<String, String> {
    let mut fields: Vec<(&[u8], &[u8])> = entry
        .fields
        .iter()
        .filter(|(k, _)| !matches!(k.as_slice(), b"reason" | b"source_stream" | b"source_id"))
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let one_line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    fields.push((b"reason", one_line.as_bytes()));
    fields.push((b"source_stream", stream.as_bytes()));
    fields.push((b"source_id", entry.id.as_bytes()));
    let id = add(ctx, dlq, &fields)?;
    // The copy is written: a failed acknowledgement must not make the caller write it again.
    if let Err(e) = ack(ctx, stream, group, &[entry.id.as_str()]) {
        crate::host::logging::warning(&format!("XACK of dead-lettered {} failed: {e}", entry.id));
    }
    Ok(id)
}

/// The stream's last generated ID (`0-0` when it does not exist).
pub fn last_generated_id(ctx: &Context, stream: &str) -> String {
    let Ok(RedisValue::Array(fields)) = call_read(ctx, "XINFO", &[b"STREAM", stream.as_bytes()])
    else {
        return "0-0".into();
    };
    fields
        .chunks(2)
        .find_map(|p| match p {
            [k, v] if text(k).as_deref() == Some("last-generated-id") => text(v),
            _ => None,
        })
        .unwrap_or_else(|| "0-0".into())
}

/// How many entries were ever added to the stream (`None` when it does not exist).
pub fn entries_added(ctx: &Context, stream: &str) -> Option<i64> {
    let Ok(RedisValue::Array(fields)) = call_read(ctx, "XINFO", &[b"STREAM", stream.as_bytes()])
    else {
        return None;
    };
    fields.chunks(2).find_map(|p| match p {
        [k, RedisValue::Integer(n)] if text(k).as_deref() == Some("entries-added") => Some(*n),
        _ => None,
    })
}

/// The lowest pending ID of the group, if any entry is pending.
pub fn lowest_pending(ctx: &Context, stream: &str, group: &str) -> Option<String> {
    let Ok(RedisValue::Array(summary)) =
        call_read(ctx, "XPENDING", &[stream.as_bytes(), group.as_bytes()])
    else {
        return None;
    };
    match summary.first() {
        Some(RedisValue::Integer(n)) if *n > 0 => summary.get(1).and_then(text),
        _ => None,
    }
}

/// Context flags (role, loading, OOM, ...).
pub fn flags(ctx: &Context) -> u32 {
    match unsafe { raw::RedisModule_GetContextFlags } {
        Some(f) => (unsafe { f(ctx.ctx) }) as u32,
        None => 0,
    }
}

/// Adds the entry on the caller's context (so it is part of the caller's MULTI or script), in
/// `REDIS_DB`, refusing when Redis is out of memory.
pub fn add_as_caller(ctx: &Context, stream_name: &str, payload: &[u8]) -> Result<String, String> {
    let db = settings::current().int(Key::RedisDb) as i32;
    let previous = unsafe { raw::RedisModule_GetSelectedDb.map(|f| f(ctx.ctx)) };
    if let Some(select) = unsafe { raw::RedisModule_SelectDb } {
        unsafe { select(ctx.ctx, db) };
    }
    let opts = CallOptionsBuilder::new()
        .replicate()
        .verify_oom()
        .errors_as_replies()
        .build();
    let args: [&[u8]; 4] = [stream_name.as_bytes(), b"*", b"value", payload];
    let res: CallResult = ctx.call_ext("XADD", &opts, &args[..]);
    if let (Some(select), Some(prev)) = (unsafe { raw::RedisModule_SelectDb }, previous) {
        unsafe { select(ctx.ctx, prev) };
    }
    match res {
        Ok(reply) => text(&value(&reply)).ok_or_else(|| "XADD gave no entry ID".to_string()),
        Err(e) => Err(e.to_utf8_string().unwrap_or_else(|| "XADD failed".into())),
    }
}
/// Runs `body` with database `db` selected on `ctx`, then selects `back`; `None` when the server
/// cannot select a database.
pub fn in_db<T>(ctx: &Context, db: i32, back: i32, body: impl FnOnce(&Context) -> T) -> Option<T> {
    let select = unsafe { raw::RedisModule_SelectDb }?;
    unsafe { select(ctx.ctx, db) };
    let out = body(ctx);
    unsafe { select(ctx.ctx, back) };
    Some(out)
}
