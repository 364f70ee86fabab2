//! `WB.STATUS`: the state and figures as a map — the same figures as `INFO writebehind`, from
//! [`pipeline::status::report`](crate::pipeline::status::report).

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use super::{handle, map};
use crate::pipeline::status::{self, Figure};

/// `WB.STATUS` takes no argument.
#[derive(Debug, PartialEq, Eq)]
pub struct Args;

impl Args {
    pub fn parse(args: &[&[u8]]) -> Result<Args, RedisError> {
        super::no_arguments(args)?;
        Ok(Args)
    }
}

pub fn command(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    handle(ctx, "WB.STATUS", &args, |args| run(Args::parse(args)?))
}

pub fn run(_: Args) -> RedisResult {
    Ok(map(status::report(true)
        .into_iter()
        .map(|(k, v)| (k, figure_value(v)))
        .collect()))
}

fn figure_value(f: Figure) -> RedisValue {
    match f {
        Figure::Int(n) => RedisValue::Integer(n),
        Figure::Text(s) => RedisValue::BulkString(s),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{refusal, words};
    use super::*;

    #[test]
    fn status_takes_no_argument() {
        assert_eq!(Args::parse(&words(&["WB.STATUS"])).ok(), Some(Args));
        assert_eq!(
            refusal(Args::parse(&words(&["WB.STATUS", "x"]))),
            "Wrong Arity"
        );
    }
}
