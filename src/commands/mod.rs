//! The `WB.*` commands, one file each, as mini-redis's `cmd/` does:
//!
//! - an `Args` value with a pure `Args::parse` over the arguments as bytes — unit-tested without a
//!   server: a missing, extra or mistyped argument is an error reply, quoted safely;
//! - a `run` that does the work, inside [`crate::host::ffi::command`], so a bug is an
//!   error reply, never a crashed server;
//! - the handler `command` that `lib.rs` registers.
//!
//! Work that waits (a Snowflake round trip, a flush, a restore) runs on the one bounded executor,
//! [`crate::pipeline::background`], while the caller is blocked with Redis's
//! blocking-client API; Redis keeps serving everyone else.
//!
//! - [`status`]: `WB.STATUS`; [`pause`]: `WB.PAUSE` and `WB.RESUME`; [`flush`]: `WB.FLUSH`;
//!   [`ping`]: `WB.PING`; [`dlq`]: `WB.DLQ LIST | REPLAY | PURGE`; [`restore`]: `WB.RESTORE`;
//!   [`import`]: `WB.IMPORT`; [`write`](mod@write): `WB.WRITE`.

pub mod dlq;
pub mod flush;
pub mod import;
pub mod pause;
pub mod ping;
pub mod restore;
pub mod status;
pub mod write;

use std::collections::BTreeMap;

use redis_module::redisvalue::RedisValueKey;
use redis_module::{raw, Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::host::{ffi, stream};

/// Runs a command behind the panic guard: its arguments as bytes, and the reply from inside the
/// guard (see [`ffi::command`]).
fn handle(
    ctx: &Context,
    name: &str,
    args: &[RedisString],
    body: impl FnOnce(&[&[u8]]) -> RedisResult,
) -> RedisResult {
    ffi::command(ctx, name, || {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        body(&args)
    })
}

fn err(msg: impl Into<String>) -> RedisError {
    RedisError::String(msg.into())
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

fn text(a: &[u8]) -> Result<&str, RedisError> {
    std::str::from_utf8(a).map_err(|_| err("ERR argument is not valid UTF-8"))
}

fn whole(a: &[u8], what: &str) -> Result<u64, RedisError> {
    text(a)?
        .parse::<u64>()
        .map_err(|_| err(format!("ERR {what} must be a non-negative whole number")))
}

/// Refuses any argument after the command name.
fn no_arguments(args: &[&[u8]]) -> Result<(), RedisError> {
    if args.len() != 1 {
        return Err(RedisError::WrongArity);
    }
    Ok(())
}

/// The arguments after an option's name, for the options that take a value.
struct Options<'a, 'b> {
    rest: std::slice::Iter<'b, &'a [u8]>,
}

impl<'a> Options<'a, '_> {
    /// The option's value: the next argument.
    fn value(&mut self) -> Result<&'a [u8], RedisError> {
        self.rest.next().copied().ok_or(RedisError::WrongArity)
    }

    /// The option's value as text.
    fn text(&mut self) -> Result<&'a str, RedisError> {
        text(self.value()?)
    }
}

/// Walks the options after the command name: `on` gets each option's name, upper-cased, takes its
/// value from the [`Options`] when it has one, and says whether it knows the option; an unknown
/// one is refused with `usage`.
fn each_option<'a>(
    args: &[&'a [u8]],
    command: &str,
    usage: &str,
    mut on: impl FnMut(&str, &mut Options<'a, '_>) -> Result<bool, RedisError>,
) -> Result<(), RedisError> {
    let mut options = Options {
        rest: args.get(1..).unwrap_or_default().iter(),
    };
    while let Some(arg) = options.rest.next() {
        let name = text(arg)?.to_ascii_uppercase();
        if !on(&name, &mut options)? {
            return Err(err(format!(
                "ERR unknown {command} option {}: use {usage}",
                shown(&name)
            )));
        }
    }
    Ok(())
}

/// Commands that wait say so first inside MULTI and scripts, before any other check.
fn refuse_inside_multi(ctx: &Context, name: &str) -> Result<(), RedisError> {
    if ffi::can_block(ctx) {
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

#[cfg(test)]
mod tests {
    use redis_module::RedisError;

    /// A command line's arguments as the handler hands them to `Args::parse`.
    pub fn words<'a>(line: &[&'a str]) -> Vec<&'a [u8]> {
        line.iter().map(|w| w.as_bytes()).collect()
    }

    /// The error reply of a refused parse, as the client reads it.
    pub fn refusal<T: std::fmt::Debug>(parsed: Result<T, RedisError>) -> String {
        parsed.expect_err("the arguments are refused").to_string()
    }
}
