//! `WB.DLQ LIST [count] | REPLAY <id ...|ALL> | PURGE [id ...]`: the dead-letter stream
//! (`<stream>:dlq`), listed, moved back into the stream, or deleted. With `STREAM_SHARDS` > 1 it
//! covers the dead-letter stream of every shard stream this node serves (each entry names its
//! `source_stream`), and a replayed entry goes back to its own shard stream.

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use super::{err, handle, refuse_on_replica, shown, text, whole};
use crate::entry::EntryId;
use crate::host::gil::Gil;
use crate::host::stream;
use crate::pipeline::control::REGISTRY;
use crate::pipeline::{self, background};

/// `WB.DLQ LIST` lists at most this many entries ...
const LIST_MAX: usize = 1000;
/// ... and stops adding entries to its reply past this many bytes (at least one is listed).
const LIST_MAX_BYTES: usize = 16 << 20;
/// `WB.DLQ LIST` without a count lists this many.
const LIST_DEFAULT: u64 = 10;
/// `WB.DLQ REPLAY` moves this many entries per lock hold.
const REPLAY_CHUNK: usize = 100;

#[derive(Debug, PartialEq, Eq)]
pub enum Args {
    /// The oldest `count` dead-letter entries.
    List { count: u64 },
    /// Moves the whole dead-letter stream back.
    ReplayAll,
    /// Moves the given entries back (unknown IDs are skipped).
    Replay { ids: Vec<String> },
    /// Deletes the given entries, or with none the whole dead-letter stream.
    Purge { ids: Vec<String> },
}

impl Args {
    pub fn parse(args: &[&[u8]]) -> Result<Args, RedisError> {
        let sub = args.get(1).ok_or(RedisError::WrongArity)?;
        match text(sub)?.to_ascii_uppercase().as_str() {
            "LIST" => {
                if args.len() > 3 {
                    return Err(RedisError::WrongArity);
                }
                let count = match args.get(2) {
                    Some(a) => whole(a, "count")?.clamp(1, LIST_MAX as u64),
                    None => LIST_DEFAULT,
                };
                Ok(Args::List { count })
            }
            "REPLAY" => {
                if args.len() < 3 {
                    return Err(RedisError::WrongArity);
                }
                let ids = ids(&args[2..])?;
                if ids.len() == 1 && ids[0].eq_ignore_ascii_case("ALL") {
                    return Ok(Args::ReplayAll);
                }
                check_ids(&ids)?;
                Ok(Args::Replay { ids })
            }
            "PURGE" => {
                let ids = ids(&args[2..])?;
                check_ids(&ids)?;
                Ok(Args::Purge { ids })
            }
            other => Err(err(format!(
                "ERR unknown WB.DLQ subcommand {}: use LIST, REPLAY or PURGE",
                shown(other)
            ))),
        }
    }
}

fn ids(args: &[&[u8]]) -> Result<Vec<String>, RedisError> {
    args.iter().map(|a| text(a).map(String::from)).collect()
}

fn check_ids(ids: &[String]) -> Result<(), RedisError> {
    for id in ids {
        EntryId::parse(id)
            .map_err(|_| err(format!("ERR {} is not a stream entry ID", shown(id))))?;
    }
    Ok(())
}

pub fn command(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    handle(ctx, "WB.DLQ", &args, |args| run(ctx, Args::parse(args)?))
}

pub fn run(ctx: &Context, args: Args) -> RedisResult {
    let home = stream::home().ok_or_else(|| err("ERR module not initialised"))?;
    // The dead-letter streams of the streams this node serves (one, unless STREAM_SHARDS > 1),
    // each entry naming its `source_stream`.
    let streams: Vec<(String, String)> = REGISTRY
        .served(&home)
        .into_iter()
        .map(|p| (p.source().to_string(), p.names.dlq()))
        .collect();
    match args {
        Args::List { count } => {
            let mut listed = Vec::new();
            for (_, dlq) in &streams {
                let left = (count as usize).saturating_sub(listed.len());
                if left == 0 {
                    break;
                }
                let left = left.to_string();
                let part = stream::call_read(
                    &home,
                    "XRANGE",
                    &[dlq.as_bytes(), b"-", b"+", b"COUNT", left.as_bytes()],
                )
                .map_err(err)?;
                if let RedisValue::Array(entries) = part {
                    listed.extend(entries);
                }
            }
            Ok(within_bytes(RedisValue::Array(listed), LIST_MAX_BYTES))
        }
        Args::ReplayAll | Args::Replay { .. } => {
            refuse_on_replica(ctx, "WB.DLQ REPLAY")?;
            background::run(ctx, "WB.DLQ REPLAY", true, move |gil| {
                let mut replayed = 0;
                for (stream_name, dlq) in &streams {
                    replayed += match &args {
                        Args::Replay { ids } => replay_ids(gil, stream_name, dlq, ids),
                        _ => replay_all(gil, stream_name, dlq),
                    }
                    .map_err(err)?;
                }
                Ok(RedisValue::Integer(replayed))
            })
        }
        Args::Purge { ids } if ids.is_empty() => {
            let mut n = 0;
            for (_, dlq) in &streams {
                n += stream::length(&home, dlq);
                // UNLINK: a long dead-letter stream is freed off the main thread.
                stream::call_write(&home, "UNLINK", &[dlq.as_bytes()]).map_err(err)?;
            }
            Ok(RedisValue::Integer(n))
        }
        Args::Purge { ids } => {
            let mut n = 0;
            for (_, dlq) in &streams {
                let mut del: Vec<&[u8]> = vec![dlq.as_bytes()];
                del.extend(ids.iter().map(|id| id.as_bytes()));
                if let RedisValue::Integer(k) =
                    stream::call_write(&home, "XDEL", &del).map_err(err)?
                {
                    n += k;
                }
            }
            Ok(RedisValue::Integer(n))
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::super::tests::{refusal, words};
    use super::*;

    #[test]
    fn dlq_list_counts_ten_unless_told_and_at_most_a_thousand() {
        assert_eq!(
            Args::parse(&words(&["WB.DLQ", "list"])).ok(),
            Some(Args::List { count: 10 })
        );
        assert_eq!(
            Args::parse(&words(&["WB.DLQ", "LIST", "0"])).ok(),
            Some(Args::List { count: 1 })
        );
        assert_eq!(
            Args::parse(&words(&["WB.DLQ", "LIST", "5000"])).ok(),
            Some(Args::List { count: 1000 })
        );
        assert_eq!(
            refusal(Args::parse(&words(&["WB.DLQ", "LIST", "1", "2"]))),
            "Wrong Arity"
        );
    }

    #[test]
    fn dlq_replay_takes_all_or_entry_ids() {
        assert_eq!(
            Args::parse(&words(&["WB.DLQ", "REPLAY", "all"])).ok(),
            Some(Args::ReplayAll)
        );
        assert_eq!(
            Args::parse(&words(&["WB.DLQ", "REPLAY", "1-0", "2-1"])).ok(),
            Some(Args::Replay {
                ids: vec!["1-0".into(), "2-1".into()]
            })
        );
        assert_eq!(
            refusal(Args::parse(&words(&["WB.DLQ", "REPLAY", "1-0", "nope"]))),
            "ERR 'nope' is not a stream entry ID"
        );
        assert_eq!(
            refusal(Args::parse(&words(&["WB.DLQ", "REPLAY"]))),
            "Wrong Arity"
        );
    }

    #[test]
    fn dlq_purge_without_ids_is_the_whole_stream() {
        assert_eq!(
            Args::parse(&words(&["WB.DLQ", "PURGE"])).ok(),
            Some(Args::Purge { ids: vec![] })
        );
        assert_eq!(
            Args::parse(&words(&["WB.DLQ", "PURGE", "3-0"])).ok(),
            Some(Args::Purge {
                ids: vec!["3-0".into()]
            })
        );
    }

    #[test]
    fn dlq_refuses_an_unknown_subcommand() {
        assert_eq!(
            refusal(Args::parse(&words(&["WB.DLQ", "DROP"]))),
            "ERR unknown WB.DLQ subcommand 'DROP': use LIST, REPLAY or PURGE"
        );
        assert_eq!(refusal(Args::parse(&words(&["WB.DLQ"]))), "Wrong Arity");
    }
}
