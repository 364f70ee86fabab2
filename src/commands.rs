//! The `WB.*` commands. Each handler parses its arguments strictly (a missing, extra or mistyped
//! argument is an error reply) and runs inside [`crate::host::ffi::guard`], so a bug is an error reply, never
//! a crashed server. Work that waits (a Snowflake round trip, a flush) runs on a thread while the
//! caller is blocked with Redis's blocking-client API; Redis keeps serving everyone else.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis_module::redisvalue::RedisValueKey;
use redis_module::{raw, Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::background;
use crate::entry::EntryId;
use crate::host::ffi;
use crate::host::ffi::can_block;
use crate::host::gil::Gil;
use crate::host::stream;
use crate::pipeline::{self, sink};
use crate::settings::{self, Key};
use crate::status::{self, Figure};

/// Runs a command body behind the panic guard and replies from inside it (see [`ffi::command`]).
fn guarded(ctx: &Context, name: &str, body: impl FnOnce() -> RedisResult) -> RedisResult {
    ffi::command(ctx, name, body)
}

fn err(msg: impl Into<String>) -> RedisError {
    RedisError::String(msg.into())
}

fn figure_value(f: Figure) -> RedisValue {
    match f {
        Figure::Int(n) => RedisValue::Integer(n),
        Figure::Text(s) => RedisValue::BulkString(s),
    }
}

fn map(pairs: Vec<(String, RedisValue)>) -> RedisValue {
    let m: BTreeMap<RedisValueKey, RedisValue> = pairs
        .into_iter()
        .map(|(k, v)| (RedisValueKey::String(k), v))
        .collect();
    RedisValue::OrderedMap(m)
}

/// An argument as quoted in an error reply: escaped and cut short, never echoed whole.
fn shown(arg: &str) -> String {
    crate::entry::rules::shown(arg)
}

fn arg_str(a: &RedisString) -> Result<&str, RedisError> {
    a.try_as_str()
        .map_err(|_| err("ERR argument is not valid UTF-8"))
}

fn arg_u64(a: &RedisString, what: &str) -> Result<u64, RedisError> {
    arg_str(a)?
        .parse::<u64>()
        .map_err(|_| err(format!("ERR {what} must be a non-negative whole number")))
}

/// `WB.STATUS`: the state and figures as a map.
pub fn wb_status(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, "WB.STATUS", || {
        if args.len() != 1 {
            return Err(RedisError::WrongArity);
        }
        Ok(map(status::report(true)
            .into_iter()
            .map(|(k, v)| (k, figure_value(v)))
            .collect()))
    })
}

/// `WB.PAUSE` / `WB.RESUME`: stop claiming new entries (in-flight batches finish) / claim again.
fn set_paused(ctx: &Context, name: &str, args: &[RedisString], paused: bool) -> RedisResult {
    guarded(ctx, name, || {
        if args.len() != 1 {
            return Err(RedisError::WrongArity);
        }
        pipeline::control().paused.store(paused, Ordering::Relaxed);
        pipeline::control().wake();
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}

pub fn wb_pause(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    set_paused(ctx, "WB.PAUSE", &args, true)
}

pub fn wb_resume(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    set_paused(ctx, "WB.RESUME", &args, false)
}

/// Whether every entry up to `target` has been delivered to the group and settled.
fn flushed(ctx: &Context, stream_name: &str, group: &str, target: EntryId) -> Result<bool, i64> {
    let Some(info) = stream::group_info(ctx, stream_name, group) else {
        return Err(stream::length(ctx, stream_name));
    };
    let delivered = EntryId::parse(&info.last_delivered_id).unwrap_or_default();
    let lowest_pending =
        stream::lowest_pending(ctx, stream_name, group).and_then(|id| EntryId::parse(&id).ok());
    let done = delivered >= target && lowest_pending.is_none_or(|p| p > target);
    if done {
        Ok(true)
    } else {
        Err(info.pending + info.lag.unwrap_or(0))
    }
}

/// `WB.FLUSH [timeout-ms]`: replies OK once every entry present at call time is committed, or
/// `-TIMEOUT <n> entries still pending`.
pub fn wb_flush(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, "WB.FLUSH", || {
        if args.len() > 2 {
            return Err(RedisError::WrongArity);
        }
        let timeout = match args.get(1) {
            Some(a) => Duration::from_millis(arg_u64(a, "timeout-ms")?),
            None => Duration::from_secs(30),
        };
        if !can_block(ctx) {
            return Err(err(
                "ERR WB.FLUSH waits for Snowflake and cannot run inside MULTI or a script",
            ));
        }
        let s = settings::current();
        let stream_name = s.str(Key::RedisStream).to_string();
        let group = pipeline::group_name(&s);
        let home = stream::home().ok_or_else(|| err("ERR module not initialised"))?;
        let target =
            EntryId::parse(&stream::last_generated_id(&home, &stream_name)).unwrap_or_default();
        if target == EntryId::default() {
            return Ok(RedisValue::SimpleStringStatic("OK"));
        }
        background::run(ctx, "WB.FLUSH", false, move |gil| {
            let deadline = Instant::now() + timeout;
            loop {
                match gil.with(|c| flushed(c, &stream_name, &group, target)) {
                    Ok(true) => return Ok(RedisValue::SimpleStringStatic("OK")),
                    _ if pipeline::control().stopping() => {
                        return Err(err("ERR WB.FLUSH ended: the writer is stopping"));
                    }
                    Err(left) if Instant::now() >= deadline => {
                        return Err(err(format!("TIMEOUT {left} entries still pending")));
                    }
                    _ => {}
                }
                pipeline::control().wake();
                pipeline::control().wait_settled(Duration::from_millis(20));
            }
        })
    })
}

/// `WB.PING`: a Snowflake round trip now; replies with the session context or the classified error.
pub fn wb_ping(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, "WB.PING", || {
        if args.len() != 1 {
            return Err(RedisError::WrongArity);
        }
        if !settings::current().snowflake_configured() {
            return Err(err(
                "ERR Snowflake is not configured: set SNOWFLAKE_ACCOUNT (or SNOWFLAKE_URL), SNOWFLAKE_USER and a key or token",
            ));
        }
        if !can_block(ctx) {
            return Err(err(
                "ERR WB.PING waits for Snowflake and cannot run inside MULTI or a script",
            ));
        }
        background::run(ctx, "WB.PING", false, |_| {
            match sink::client().and_then(|c| c.ping()) {
                Ok(s) => Ok(map(vec![
                    ("user".into(), opt(s.user)),
                    ("role".into(), opt(s.role)),
                    ("warehouse".into(), opt(s.warehouse)),
                    ("database".into(), opt(s.database)),
                    ("schema".into(), opt(s.schema)),
                    (
                        "latency_ms".into(),
                        RedisValue::Integer(s.latency_ms as i64),
                    ),
                ])),
                Err(e) => Err(err(format!("ERR Snowflake {e}"))),
            }
        })
    })
}

/// A session value, or nil when Snowflake has none (e.g. no warehouse in use).
fn opt(v: Option<String>) -> RedisValue {
    v.map_or(RedisValue::Null, RedisValue::BulkString)
}

/// `WB.DLQ LIST [count] | REPLAY <id ...|ALL> | PURGE [id ...]`: the dead-letter stream.
pub fn wb_dlq(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, "WB.DLQ", || {
        let sub = args.get(1).ok_or(RedisError::WrongArity)?;
        let sub = arg_str(sub)?.to_ascii_uppercase();
        let s = settings::current();
        let stream_name = s.str(Key::RedisStream).to_string();
        let dlq = stream::dlq_name(&stream_name);
        let home = stream::home().ok_or_else(|| err("ERR module not initialised"))?;
        match sub.as_str() {
            "LIST" => {
                if args.len() > 3 {
                    return Err(RedisError::WrongArity);
                }
                let count = match args.get(2) {
                    Some(a) => arg_u64(a, "count")?.clamp(1, DLQ_LIST_MAX as u64),
                    None => 10,
                };
                let count = count.to_string();
                let listed = stream::call_read(
                    &home,
                    "XRANGE",
                    &[dlq.as_bytes(), b"-", b"+", b"COUNT", count.as_bytes()],
                )
                .map_err(err)?;
                Ok(within_bytes(listed, DLQ_LIST_MAX_BYTES))
            }
            "REPLAY" => {
                if args.len() < 3 {
                    return Err(RedisError::WrongArity);
                }
                let ids: Vec<String> = args[2..]
                    .iter()
                    .map(|a| arg_str(a).map(String::from))
                    .collect::<Result<_, _>>()?;
                let all = ids.len() == 1 && ids[0].eq_ignore_ascii_case("ALL");
                if !all {
                    for id in &ids {
                        EntryId::parse(id).map_err(|_| {
                            err(format!("ERR {} is not a stream entry ID", shown(id)))
                        })?;
                    }
                }
                refuse_on_replica(ctx, "WB.DLQ REPLAY")?;
                background::run(ctx, "WB.DLQ REPLAY", true, move |gil| {
                    let replayed = if all {
                        replay_all(gil, &stream_name, &dlq)
                    } else {
                        replay_ids(gil, &stream_name, &dlq, &ids)
                    }
                    .map_err(err)?;
                    Ok(RedisValue::Integer(replayed))
                })
            }
            "PURGE" => {
                if args.len() == 2 {
                    let n = stream::length(&home, &dlq);
                    // UNLINK: a long dead-letter stream is freed off the main thread.
                    stream::call_write(&home, "UNLINK", &[dlq.as_bytes()]).map_err(err)?;
                    return Ok(RedisValue::Integer(n));
                }
                let mut del: Vec<&[u8]> = vec![dlq.as_bytes()];
                for a in &args[2..] {
                    let id = arg_str(a)?;
                    EntryId::parse(id)
                        .map_err(|_| err(format!("ERR {} is not a stream entry ID", shown(id))))?;
                    del.push(a.as_slice());
                }
                stream::call_write(&home, "XDEL", &del).map_err(err)
            }
            other => Err(err(format!(
                "ERR unknown WB.DLQ subcommand {}: use LIST, REPLAY or PURGE",
                shown(other)
            ))),
        }
    })
}

/// `WB.DLQ LIST` lists at most this many entries ...
const DLQ_LIST_MAX: usize = 1000;
/// ... and stops adding entries to its reply past this many bytes (at least one is listed).
const DLQ_LIST_MAX_BYTES: usize = 16 << 20;
/// `WB.DLQ REPLAY` moves this many entries per lock hold.
const REPLAY_CHUNK: usize = 100;

/// Keeps the leading entries of an `XRANGE` reply whose sizes add up to at most `max` bytes.
fn within_bytes(listed: RedisValue, max: usize) -> RedisValue {
    let RedisValue::Array(entries) = listed else {
        return listed;
    };
    let mut total = 0;
    let mut kept = Vec::new();
    for e in entries {
        total += value_bytes(&e);
        if total > max && !kept.is_empty() {
            break;
        }
        kept.push(e);
    }
    RedisValue::Array(kept)
}

fn value_bytes(v: &RedisValue) -> usize {
    match v {
        RedisValue::Array(items) => items.iter().map(value_bytes).sum(),
        other => stream::bytes(other).map_or(8, |b| b.len()),
    }
}

/// Moves one dead-letter entry back to the stream: its original fields, plus `replayed_from` (the
/// ID it had in the stream), then deletes it from the dead-letter stream.
fn replay_one(
    ctx: &Context,
    stream_name: &str,
    dlq: &str,
    e: &stream::RawEntry,
) -> Result<(), String> {
    let mut original: Vec<(&[u8], &[u8])> = e
        .fields
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_slice(),
                b"reason" | b"source_stream" | b"source_id" | b"replayed_from"
            )
        })
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let source = e
        .fields
        .iter()
        .find(|(k, _)| k == b"source_id")
        .map(|(_, v)| v.as_slice());
    if let Some(source) = source {
        original.push((b"replayed_from", source));
    }
    stream::add(ctx, stream_name, &original)?;
    stream::call_write(ctx, "XDEL", &[dlq.as_bytes(), e.id.as_bytes()])?;
    Ok(())
}

/// Replays the whole dead-letter stream, [`REPLAY_CHUNK`] entries per lock hold; entries added to it
/// meanwhile are left for the next replay.
fn replay_all(gil: &Gil, stream_name: &str, dlq: &str) -> Result<i64, String> {
    let end = gil.with(|ctx| stream::last_generated_id(ctx, dlq));
    let mut replayed = 0;
    loop {
        if pipeline::control().stopping() {
            return Err(format!(
                "ERR WB.DLQ REPLAY stopped after {replayed} entries: the writer is stopping"
            ));
        }
        let count = REPLAY_CHUNK.to_string();
        let done = gil.with(|ctx| -> Result<usize, String> {
            let chunk = stream::call_read(
                ctx,
                "XRANGE",
                &[
                    dlq.as_bytes(),
                    b"-",
                    end.as_bytes(),
                    b"COUNT",
                    count.as_bytes(),
                ],
            )?;
            let entries = stream::parse_entries(&chunk);
            for e in &entries {
                replay_one(ctx, stream_name, dlq, e)?;
            }
            Ok(entries.len())
        })?;
        replayed += done as i64;
        if done < REPLAY_CHUNK {
            return Ok(replayed);
        }
    }
}

/// Replays the given dead-letter entries (unknown IDs are skipped), [`REPLAY_CHUNK`] per lock hold.
fn replay_ids(gil: &Gil, stream_name: &str, dlq: &str, ids: &[String]) -> Result<i64, String> {
    let mut replayed = 0;
    for chunk in ids.chunks(REPLAY_CHUNK) {
        replayed += gil.with(|ctx| -> Result<i64, String> {
            let mut n = 0;
            for id in chunk {
                let found = stream::call_read(
                    ctx,
                    "XRANGE",
                    &[dlq.as_bytes(), id.as_bytes(), id.as_bytes()],
                )?;
                for e in stream::parse_entries(&found) {
                    replay_one(ctx, stream_name, dlq, &e)?;
                    n += 1;
                }
            }
            Ok(n)
        })?;
    }
    Ok(replayed)
}

/// Commands that wait say so first inside MULTI and scripts, before any other check.
fn refuse_inside_multi(ctx: &Context, name: &str) -> Result<(), RedisError> {
    if can_block(ctx) {
        return Ok(());
    }
    Err(err(format!(
        "ERR {name} waits for background work and cannot run inside MULTI or a script"
    )))
}

fn refuse_on_replica(ctx: &Context, name: &str) -> Result<(), RedisError> {
    if stream::flags(ctx) & raw::REDISMODULE_CTX_FLAGS_SLAVE != 0 {
        return Err(err(format!("READONLY {name} runs on the primary only")));
    }
    Ok(())
}

/// `WB.RESTORE [FORCE] [DAYS n] [USER name]`: seeds the stream from Snowflake now.
pub fn wb_restore(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, "WB.RESTORE", || {
        let s = settings::current();
        let mut req = crate::restore::Request {
            force: false,
            days: s.uint(Key::RestoreDays),
            user: None,
        };
        let mut i = 1;
        while i < args.len() {
            match arg_str(&args[i])?.to_ascii_uppercase().as_str() {
                "FORCE" => req.force = true,
                "DAYS" => {
                    i += 1;
                    let n = arg_u64(args.get(i).ok_or(RedisError::WrongArity)?, "DAYS")?;
                    if !(1..=3650).contains(&n) {
                        return Err(err("ERR DAYS must be from 1 to 3650"));
                    }
                    req.days = n;
                }
                "USER" => {
                    i += 1;
                    req.user =
                        Some(arg_str(args.get(i).ok_or(RedisError::WrongArity)?)?.to_string());
                }
                other => {
                    return Err(err(format!(
                        "ERR unknown WB.RESTORE option {}: use FORCE, DAYS n or USER name",
                        shown(other)
                    )))
                }
            }
            i += 1;
        }
        refuse_inside_multi(ctx, "WB.RESTORE")?;
        refuse_on_replica(ctx, "WB.RESTORE")?;
        if !s.snowflake_configured() {
            return Err(err(
                "ERR Snowflake is not configured: nothing to restore from",
            ));
        }
        background::run(
            ctx,
            "WB.RESTORE",
            true,
            move |gil| match crate::restore::run(&req, gil, &s) {
                Ok(sum) => match sum.skipped {
                    Some(why) => Err(err(format!(
                        "ERR restore skipped: {why} (WB.RESTORE FORCE restores anyway)"
                    ))),
                    None => Ok(map(vec![
                        ("rows".into(), RedisValue::Integer(sum.rows as i64)),
                        ("entries".into(), RedisValue::Integer(sum.entries as i64)),
                        ("records".into(), RedisValue::Integer(sum.records as i64)),
                    ])),
                },
                Err(e) => Err(err(format!("ERR restore failed: {e}"))),
            },
        )
    })
}

/// `WB.IMPORT [MATCH pattern] [DELETE]`: copies legacy string keys into the stream.
pub fn wb_import(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, "WB.IMPORT", || {
        let s = settings::current();
        let mut patterns: Vec<String> = s.list(Key::ExtraBridgeKeys).to_vec();
        let mut delete = false;
        let mut i = 1;
        while i < args.len() {
            match arg_str(&args[i])?.to_ascii_uppercase().as_str() {
                "MATCH" => {
                    i += 1;
                    patterns =
                        vec![arg_str(args.get(i).ok_or(RedisError::WrongArity)?)?.to_string()];
                }
                "DELETE" => delete = true,
                other => {
                    return Err(err(format!(
                        "ERR unknown WB.IMPORT option {}: use MATCH pattern or DELETE",
                        shown(other)
                    )))
                }
            }
            i += 1;
        }
        refuse_inside_multi(ctx, "WB.IMPORT")?;
        if patterns.is_empty() {
            return Err(err(
                "ERR no key patterns: set EXTRA_BRIDGE_KEYS or give MATCH pattern",
            ));
        }
        refuse_on_replica(ctx, "WB.IMPORT")?;
        background::run(ctx, "WB.IMPORT", true, move |gil| match crate::import::run(
            &patterns, delete, gil, &s,
        ) {
            Ok(sum) => Ok(map(vec![
                ("imported".into(), RedisValue::Integer(sum.imported as i64)),
                (
                    "already_imported".into(),
                    RedisValue::Integer(sum.already as i64),
                ),
                (
                    "not_strings".into(),
                    RedisValue::Integer(sum.not_strings as i64),
                ),
            ])),
            Err(e) => Err(err(format!("ERR import failed: {e}"))),
        })
    })
}
