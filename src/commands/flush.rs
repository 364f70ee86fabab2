//! `WB.FLUSH [timeout-ms]`: replies OK once every entry present at call time — in the userdata
//! stream (each shard stream this node serves, with `STREAM_SHARDS` > 1) and in each mapping's
//! stream — is committed, or `-TIMEOUT <n> entries still pending`. On a cluster, run it on every
//! primary.

use std::time::{Duration, Instant};

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use super::{err, handle, whole};
use crate::entry::EntryId;
use crate::host::{ffi, stream};
use crate::pipeline::control::REGISTRY;
use crate::pipeline::{self, background};
use crate::settings;

/// How long `WB.FLUSH` waits without a timeout argument.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub timeout: Duration,
}

impl Args {
    pub fn parse(args: &[&[u8]]) -> Result<Args, RedisError> {
        if args.len() > 2 {
            return Err(RedisError::WrongArity);
        }
        let timeout = match args.get(1) {
            Some(a) => Duration::from_millis(whole(a, "timeout-ms")?),
            None => DEFAULT_TIMEOUT,
        };
        Ok(Args { timeout })
    }
}

pub fn command(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    handle(ctx, "WB.FLUSH", &args, |args| run(ctx, Args::parse(args)?))
}

pub fn run(ctx: &Context, args: Args) -> RedisResult {
    if !ffi::can_block(ctx) {
        return Err(err(
            "ERR WB.FLUSH waits for Snowflake and cannot run inside MULTI or a script",
        ));
    }
    let s = settings::current();
    let group = pipeline::group_name(&s);
    let home = stream::home().ok_or_else(|| err("ERR module not initialised"))?;
    // The userdata stream, and each mapping's stream: what each holds now is what must be written.
    // On a cluster, the streams whose slots this node serves (another node flushes the others).
    let pipelines = REGISTRY.served(&home);
    let mut streams: Vec<String> = pipelines.iter().map(|p| p.source().to_string()).collect();
    if let Some(m) = pipeline::control::mapped() {
        streams.extend(m.mappings.mappings.iter().map(|m| m.capture_stream()));
    }
    let targets: Vec<(String, EntryId)> = streams
        .into_iter()
        .filter_map(|name| {
            let target =
                EntryId::parse(&stream::last_generated_id(&home, &name)).unwrap_or_default();
            (target != EntryId::default()).then_some((name, target))
        })
        .collect();
    if targets.is_empty() {
        return Ok(RedisValue::SimpleStringStatic("OK"));
    }
    let timeout = args.timeout;
    background::run(ctx, "WB.FLUSH", false, move |gil| {
        let deadline = Instant::now() + timeout;
        loop {
            let left: Result<(), i64> = gil.with(|c| {
                let left: i64 = targets
                    .iter()
                    .map(|(name, target)| match flushed(c, name, &group, *target) {
                        Ok(true) => 0,
                        Ok(false) => 1,
                        Err(n) => n.max(1),
                    })
                    .sum();
                if left == 0 {
                    Ok(())
                } else {
                    Err(left)
                }
            });
            match left {
                Ok(()) => return Ok(RedisValue::SimpleStringStatic("OK")),
                _ if pipeline::control().stopping() => {
                    return Err(err("ERR WB.FLUSH ended: the writer is stopping"));
                }
                Err(left) if Instant::now() >= deadline => {
                    return Err(err(format!("TIMEOUT {left} entries still pending")));
                }
                _ => {}
            }
            for p in &pipelines {
                p.control.wake();
            }
            let waiting_on = pipelines
                .first()
                .copied()
                .unwrap_or(pipeline::control::main());
            waiting_on.control.wait_settled(Duration::from_millis(20));
        }
    })
}

/// Whether every entry up to `target` has been delivered to the group and settled; if not, how many
/// entries are still to go.
fn flushed(ctx: &Context, stream_name: &str, group: &str, target: EntryId) -> Result<bool, i64> {
    let Some(info) = stream::group_info(ctx, stream_name, group) else {
        return Err(stream::length(ctx, stream_name));
    };
    let delivered = EntryId::parse(&info.last_delivered_id).unwrap_or_default();
    let done = delivered >= target
        && match &info.written {
            // Written up to the target, or everything delivered is written (the target itself
            // may have been deleted before it was delivered).
            Some(w) => {
                let written = EntryId::parse(&w.id).unwrap_or_default();
                written >= target || written == delivered
            }
            // A group with a pending list (before its written group exists).
            None => stream::lowest_pending(ctx, stream_name, group)
                .and_then(|id| EntryId::parse(&id).ok())
                .is_none_or(|p| p > target),
        };
    if done {
        Ok(true)
    } else {
        Err(info.unwritten().unwrap_or(info.pending) + info.lag.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{refusal, words};
    use super::*;

    #[test]
    fn flush_waits_thirty_seconds_unless_told() {
        assert_eq!(
            Args::parse(&words(&["WB.FLUSH"])).ok(),
            Some(Args {
                timeout: DEFAULT_TIMEOUT
            })
        );
        assert_eq!(
            Args::parse(&words(&["WB.FLUSH", "250"])).ok(),
            Some(Args {
                timeout: Duration::from_millis(250)
            })
        );
    }

    #[test]
    fn flush_refuses_a_bad_timeout_and_extra_arguments() {
        assert_eq!(
            refusal(Args::parse(&words(&["WB.FLUSH", "-1"]))),
            "ERR timeout-ms must be a non-negative whole number"
        );
        assert_eq!(
            refusal(Args::parse(&words(&["WB.FLUSH", "1", "2"]))),
            "Wrong Arity"
        );
    }
}
