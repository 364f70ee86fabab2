//! The `WB.*` commands. Each handler parses its arguments strictly (a missing, extra or mistyped
//! argument is an error reply) and runs inside [`crate::ffi::guard`], so a bug is an error reply, never
//! a crashed server.

use std::collections::BTreeMap;

use redis_module::redisvalue::RedisValueKey;
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::ffi;
use crate::status::{self, Figure};

/// Runs a command body behind the panic guard.
fn guarded(name: &str, body: impl FnOnce() -> RedisResult) -> RedisResult {
    ffi::guard(name, body).unwrap_or_else(|| {
        Err(RedisError::String(format!(
            "ERR internal error in {name}; see the server log"
        )))
    })
}

fn figure_value(f: Figure) -> RedisValue {
    match f {
        Figure::Int(n) => RedisValue::Integer(n),
        Figure::Text(s) => RedisValue::BulkString(s),
    }
}

/// `WB.STATUS`: the state and figures as a map.
pub fn wb_status(_ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded("WB.STATUS", || {
        if args.len() != 1 {
            return Err(RedisError::WrongArity);
        }
        let map: BTreeMap<RedisValueKey, RedisValue> = status::report(true)
            .into_iter()
            .map(|(k, v)| (RedisValueKey::String(k.to_string()), figure_value(v)))
            .collect();
        Ok(RedisValue::OrderedMap(map))
    })
}
