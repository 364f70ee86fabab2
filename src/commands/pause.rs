//! `WB.PAUSE` / `WB.RESUME`: stop claiming new entries (batches in flight finish) / claim again.

use std::sync::atomic::Ordering;

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use super::handle;
use crate::pipeline::control::REGISTRY;

/// `WB.PAUSE` and `WB.RESUME` take no argument; the command name says which.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub paused: bool,
}

impl Args {
    pub fn parse(args: &[&[u8]], paused: bool) -> Result<Args, RedisError> {
        super::no_arguments(args)?;
        Ok(Args { paused })
    }
}

pub fn pause(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    handle(ctx, "WB.PAUSE", &args, |args| run(Args::parse(args, true)?))
}

pub fn resume(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    handle(ctx, "WB.RESUME", &args, |args| {
        run(Args::parse(args, false)?)
    })
}

/// Pauses or resumes every stream's writer (and the mappings' writers, which follow the first).
pub fn run(args: Args) -> RedisResult {
    for p in REGISTRY.all() {
        p.control.paused.store(args.paused, Ordering::Relaxed);
        p.control.wake();
    }
    Ok(RedisValue::SimpleStringStatic("OK"))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{refusal, words};
    use super::*;

    #[test]
    fn pause_and_resume_take_no_argument() {
        assert_eq!(
            Args::parse(&words(&["WB.PAUSE"]), true).ok(),
            Some(Args { paused: true })
        );
        assert_eq!(
            Args::parse(&words(&["WB.RESUME"]), false).ok(),
            Some(Args { paused: false })
        );
        assert_eq!(
            refusal(Args::parse(&words(&["WB.PAUSE", "now"]), true)),
            "Wrong Arity"
        );
    }
}
