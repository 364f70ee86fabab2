//! `WB.PING`: a Snowflake round trip now; replies with the session context or the classified error.

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use super::{err, handle, map};
use crate::host::ffi;
use crate::pipeline::{background, sink};
use crate::settings;

/// `WB.PING` takes no argument.
#[derive(Debug, PartialEq, Eq)]
pub struct Args;

impl Args {
    pub fn parse(args: &[&[u8]]) -> Result<Args, RedisError> {
        super::no_arguments(args)?;
        Ok(Args)
    }
}

pub fn command(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    handle(ctx, "WB.PING", &args, |args| run(ctx, Args::parse(args)?))
}

pub fn run(ctx: &Context, _: Args) -> RedisResult {
    if !settings::current().snowflake_configured() {
        return Err(err(
            "ERR Snowflake is not configured: set SNOWFLAKE_ACCOUNT (or SNOWFLAKE_URL), SNOWFLAKE_USER and a key or token",
        ));
    }
    if !ffi::can_block(ctx) {
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
}

/// A session value, or nil when Snowflake has none (e.g. no warehouse in use).
fn opt(v: Option<String>) -> RedisValue {
    v.map_or(RedisValue::Null, RedisValue::BulkString)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{refusal, words};
    use super::*;

    #[test]
    fn ping_takes_no_argument() {
        assert_eq!(Args::parse(&words(&["WB.PING"])).ok(), Some(Args));
        assert_eq!(
            refusal(Args::parse(&words(&["WB.PING", "now"]))),
            "Wrong Arity"
        );
    }
}
