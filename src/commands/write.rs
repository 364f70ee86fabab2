//! `WB.WRITE [<stream>] <json> [SYNC [timeout-ms]]`: one native command for validated writes,
//! write-through with acknowledgement, and failover to Snowflake.
//!
//! - The stream named first is the command's key, so a cluster routes the command to the node
//!   serving it. It must be named with `STREAM_SHARDS` > 1 (`<stream>:{i}`, i = CRC-32 of the row id
//!   modulo N; an entry whose rows belong to another shard is refused); with one stream it may be
//!   left out, and then, on a cluster, the command must be sent to the node serving the stream.
//! - The payload is checked by the same decoder the pipeline uses; an invalid one is refused with the
//!   reason and nothing is added.
//! - It is added to the stream (`XADD`, replicated) and the reply is its entry ID.
//! - With `SYNC` the caller is blocked (Redis keeps serving everyone else) until that entry is
//!   committed to Snowflake; on timeout it gets an error saying the entry stays queued and will still
//!   be written; if Snowflake rejects the entry, Snowflake's reason.
//! - When Redis cannot take the entry (`maxmemory` under `noeviction`) and
//!   `STREAM_FAILOVER_TO_SNOWFLAKE=1`, the entry is written straight to Snowflake from a background
//!   thread while the caller waits, a `FAILOVER` line is logged and the reply is `DIRECT`; with the
//!   switch off the caller gets Redis's own OOM error.
//!
//! The non-blocking form works inside MULTI/EXEC and scripts; `SYNC` and failover need a client that
//! may block and are refused there with a clear error.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::entry::{self, Decoded, EntryId, Rules};
use crate::host::ffi::{self, can_block};
use crate::host::logging;
use crate::pipeline::control::{Pipeline, REGISTRY};
use crate::pipeline::{self, sink, waiters};
use crate::settings::{self, Key};
use crate::sql::{direct, Tables};

fn err(msg: impl Into<String>) -> RedisError {
    RedisError::String(msg.into())
}

/// Why a payload is refused, or `None` when it is acceptable.
fn refusal(decoded: &Decoded) -> Option<String> {
    match decoded {
        Decoded::Undecodable { reason, .. } => Some(reason.to_string()),
        Decoded::Restored { .. } => Some("restored entries are written by WB.RESTORE only".into()),
        Decoded::Tracked(b) => b
            .rejected
            .first()
            .map(|r| format!("record {}: {}", r.index, r.reason)),
        _ => None,
    }
}

/// Waits for a `SYNC` write this long unless told.
const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_millis(5_000);

#[derive(Debug, PartialEq, Eq)]
pub struct Args<'a> {
    /// The stream named first (`WB.WRITE <stream> <json> ...`), when it is.
    pub stream: Option<&'a [u8]>,
    /// The JSON payload, as given.
    pub payload: &'a [u8],
    /// With `SYNC`: how long the caller waits for the commit.
    pub sync: Option<Duration>,
}

impl<'a> Args<'a> {
    /// `is_stream` tells a configured stream's name (a payload is JSON, never such a name).
    pub fn parse(
        args: &[&'a [u8]],
        is_stream: impl Fn(&[u8]) -> bool,
    ) -> Result<Args<'a>, RedisError> {
        let first = *args.get(1).ok_or(RedisError::WrongArity)?;
        let (stream, rest) = if is_stream(first) {
            (Some(first), &args[2..])
        } else {
            (None, &args[1..])
        };
        let payload = *rest.first().ok_or(RedisError::WrongArity)?;
        let sync = match rest.len() {
            1 => None,
            2 | 3 => {
                let option = String::from_utf8_lossy(rest[1]);
                if !option.eq_ignore_ascii_case("SYNC") {
                    return Err(err(format!(
                        "ERR unknown WB.WRITE option '{}': use SYNC [timeout-ms]",
                        crate::entry::rules::shown(&option)
                    )));
                }
                let timeout = match rest.get(2) {
                    Some(a) => {
                        Duration::from_millis(String::from_utf8_lossy(a).parse::<u64>().map_err(
                            |_| err("ERR timeout-ms must be a non-negative whole number"),
                        )?)
                    }
                    None => DEFAULT_SYNC_TIMEOUT,
                };
                Some(timeout)
            }
            _ => return Err(RedisError::WrongArity),
        };
        Ok(Args {
            stream,
            payload,
            sync,
        })
    }
}

/// Whether `name` is one of the configured streams.
fn is_stream(name: &[u8]) -> bool {
    std::str::from_utf8(name).is_ok_and(|n| REGISTRY.find(n).is_some())
}

pub fn command(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    // Registered with `getkeys-api`: the stream, when named first, is the command's key, so a
    // cluster routes the command to the node serving it.
    if ffi::keys_request(ctx) {
        if args.get(1).is_some_and(|a| is_stream(a.as_slice())) {
            ffi::declare_key(ctx, 1);
        }
        return Ok(RedisValue::NoReply);
    }
    super::handle(ctx, "WB.WRITE", &args, |args| {
        run(ctx, Args::parse(args, is_stream)?)
    })
}

/// The pipeline a write goes to: the stream named, or the one stream when there is one.
fn target(stream: Option<&[u8]>) -> Result<&'static Pipeline, RedisError> {
    let shards = settings::current().uint(Key::StreamShards);
    match stream {
        Some(name) => std::str::from_utf8(name)
            .ok()
            .and_then(|n| REGISTRY.find(n))
            .ok_or_else(|| err("ERR not a configured stream")),
        None if shards > 1 => Err(err(format!(
            "ERR STREAM_SHARDS={shards}: name the shard stream first, WB.WRITE <stream>:{{i}} <json> [SYNC [timeout-ms]], i = CRC-32 of the row id modulo {shards}"
        ))),
        None => Ok(pipeline::control::main()),
    }
}

pub fn run(ctx: &Context, args: Args<'_>) -> RedisResult {
    let Args {
        stream,
        payload,
        sync,
    } = args;
    let p = target(stream)?;
    let timeout = sync.unwrap_or_default();
    let sync = sync.is_some();
    let s = settings::current();
    let now = EntryId::new(chrono::Utc::now().timestamp_millis().max(0) as u64, 0);
    let fields = vec![(b"value".to_vec(), payload.to_vec())];
    let decoded = entry::decode(now, &fields, &Rules::from_settings(&s));
    if let Some(why) = refusal(&decoded) {
        return Err(err(format!("ERR invalid payload: {why}")));
    }
    if let Some((row, home)) = p
        .names
        .shard
        .and_then(|sh| sh.stray(decoded.row_keys_each()))
    {
        return Err(err(format!(
            "ERR row id '{}' belongs to {}, not {}: nothing was added",
            crate::entry::rules::shown(row),
            p.names.sibling(home),
            p.source()
        )));
    }
    if sync && !can_block(ctx) {
        return Err(err(
            "ERR WB.WRITE SYNC cannot be used inside MULTI or a script; use WB.WRITE without SYNC",
        ));
    }
    if sync && waiters::count(p) >= waiters::MAX_WAITERS {
        return Err(err(format!(
            "BUSY {} WB.WRITE SYNC callers are already waiting; nothing was added: retry, or write without SYNC",
            waiters::MAX_WAITERS
        )));
    }
    let stream_name = p.source();
    match crate::host::stream::add_as_caller(ctx, stream_name, payload) {
        Ok(id) if sync => {
            let blocked = crate::host::ffi::block(ctx);
            waiters::register(p, stream_name, &id, Instant::now() + timeout, blocked);
            p.control.wake();
            Ok(RedisValue::NoReply)
        }
        Ok(id) => Ok(RedisValue::BulkString(id)),
        Err(e) if e.starts_with("OOM") && s.bool(Key::StreamFailoverToSnowflake) => {
            if !can_block(ctx) {
                return Err(err(format!("{e} (failover to Snowflake needs a client that may block: not inside MULTI or a script)")));
            }
            if pipeline::dry_run(&s) || !s.snowflake_configured() {
                return Err(err(format!(
                    "{e} (failover to Snowflake is on, but Snowflake is not configured)"
                )));
            }
            crate::pipeline::background::run(ctx, "WB.WRITE failover", false, move |_| {
                failover(&decoded)
            })
        }
        Err(e) => Err(err(e)),
    }
}

/// Writes one entry straight to Snowflake.
fn failover(decoded: &Decoded) -> RedisResult {
    let s = settings::current();
    let tables = Tables::from_settings(&s).map_err(err)?;
    let statements = direct::plan(decoded, &tables)
        .ok_or_else(|| err("ERR the direct statement could not be built"))?;
    let client = sink::client().map_err(|e| err(format!("ERR Snowflake {e}")))?;
    for st in &statements {
        crate::pipeline::retry::execute_direct(&client, st).map_err(|e| {
            logging::warning(&format!("FAILOVER write failed: {e}"));
            err(format!(
                "ERR Redis is out of memory and the direct write to Snowflake failed: {e}"
            ))
        })?;
    }
    pipeline::control::main()
        .metrics
        .failovers
        .fetch_add(1, Ordering::Relaxed);
    logging::warning(&format!(
        "FAILOVER Redis is out of memory: entry for '{}' written directly to Snowflake ({} statements)",
        decoded.partition_key(),
        statements.len()
    ));
    Ok(RedisValue::SimpleStringStatic("DIRECT"))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{refusal, words};
    use super::*;

    fn none(_: &[u8]) -> bool {
        false
    }

    fn shard(name: &[u8]) -> bool {
        name.starts_with(b"s:{")
    }

    #[test]
    fn write_is_asynchronous_unless_sync() {
        assert_eq!(
            Args::parse(&words(&["WB.WRITE", "{}"]), none).ok(),
            Some(Args {
                stream: None,
                payload: b"{}",
                sync: None
            })
        );
        assert_eq!(
            Args::parse(&words(&["WB.WRITE", "{}", "sync"]), none).ok(),
            Some(Args {
                stream: None,
                payload: b"{}",
                sync: Some(DEFAULT_SYNC_TIMEOUT)
            })
        );
        assert_eq!(
            Args::parse(&words(&["WB.WRITE", "{}", "SYNC", "20"]), none).ok(),
            Some(Args {
                stream: None,
                payload: b"{}",
                sync: Some(Duration::from_millis(20))
            })
        );
    }

    #[test]
    fn write_takes_a_stream_named_first_as_its_key() {
        assert_eq!(
            Args::parse(&words(&["WB.WRITE", "s:{1}", "{}", "SYNC", "20"]), shard).ok(),
            Some(Args {
                stream: Some(b"s:{1}"),
                payload: b"{}",
                sync: Some(Duration::from_millis(20))
            })
        );
        assert_eq!(
            refusal(Args::parse(&words(&["WB.WRITE", "s:{1}"]), shard)),
            "Wrong Arity"
        );
        assert_eq!(
            refusal(Args::parse(
                &words(&["WB.WRITE", "s:{1}", "{}", "SYNC", "1", "2"]),
                shard
            )),
            "Wrong Arity"
        );
    }

    #[test]
    fn write_refuses_unknown_options_and_bad_timeouts() {
        assert_eq!(
            refusal(Args::parse(&words(&["WB.WRITE"]), none)),
            "Wrong Arity"
        );
        assert_eq!(
            refusal(Args::parse(
                &words(&["WB.WRITE", "{}", "SYNC", "1", "2"]),
                none
            )),
            "Wrong Arity"
        );
        assert_eq!(
            refusal(Args::parse(&words(&["WB.WRITE", "{}", "ASYNC"]), none)),
            "ERR unknown WB.WRITE option ''ASYNC'': use SYNC [timeout-ms]"
        );
        assert_eq!(
            refusal(Args::parse(
                &words(&["WB.WRITE", "{}", "SYNC", "soon"]),
                none
            )),
            "ERR timeout-ms must be a non-negative whole number"
        );
    }
}
