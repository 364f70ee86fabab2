//! `WB.IMPORT [MATCH pattern] [DELETE]`: copies legacy string keys into the stream (the work is
//! [`pipeline::import`](crate::pipeline::import)).

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use super::{each_option, err, handle, map, refuse_inside_multi, refuse_on_replica};
use crate::pipeline::control::REGISTRY;
use crate::pipeline::{background, import};
use crate::settings::{self, Key};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// The one pattern to import; the `EXTRA_BRIDGE_KEYS` patterns when not given.
    pub pattern: Option<String>,
    /// Delete each key once imported instead of recording it.
    pub delete: bool,
}

impl Args {
    pub fn parse(args: &[&[u8]]) -> Result<Args, RedisError> {
        let mut parsed = Args::default();
        each_option(
            args,
            "WB.IMPORT",
            "MATCH pattern or DELETE",
            |name, options| {
                match name {
                    "MATCH" => parsed.pattern = Some(options.text()?.to_string()),
                    "DELETE" => parsed.delete = true,
                    _ => return Ok(false),
                }
                Ok(true)
            },
        )?;
        Ok(parsed)
    }
}

pub fn command(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    handle(ctx, "WB.IMPORT", &args, |args| run(ctx, Args::parse(args)?))
}

pub fn run(ctx: &Context, args: Args) -> RedisResult {
    let s = settings::current();
    let patterns: Vec<String> = match args.pattern {
        Some(p) => vec![p],
        None => s.list(Key::ExtraBridgeKeys).to_vec(),
    };
    let delete = args.delete;
    refuse_inside_multi(ctx, "WB.IMPORT")?;
    if patterns.is_empty() {
        return Err(err(
            "ERR no key patterns: set EXTRA_BRIDGE_KEYS or give MATCH pattern",
        ));
    }
    refuse_on_replica(ctx, "WB.IMPORT")?;
    background::run(ctx, "WB.IMPORT", true, move |gil| {
        let streams = REGISTRY.served_names(gil);
        match import::run(&streams, &patterns, delete, gil, &s) {
            Ok(sum) => Ok(map(vec![
                ("imported".into(), RedisValue::Integer(sum.imported as i64)),
                (
                    "elsewhere".into(),
                    RedisValue::Integer(sum.elsewhere as i64),
                ),
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
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{refusal, words};
    use super::*;

    #[test]
    fn import_takes_one_pattern_and_delete() {
        assert_eq!(
            Args::parse(&words(&["WB.IMPORT"])).ok(),
            Some(Args::default())
        );
        assert_eq!(
            Args::parse(&words(&["WB.IMPORT", "delete", "MATCH", "batch:*"])).ok(),
            Some(Args {
                pattern: Some("batch:*".into()),
                delete: true
            })
        );
    }

    #[test]
    fn import_refuses_unknown_options_and_a_missing_pattern() {
        assert_eq!(
            refusal(Args::parse(&words(&["WB.IMPORT", "MATCH"]))),
            "Wrong Arity"
        );
        assert_eq!(
            refusal(Args::parse(&words(&["WB.IMPORT", "ALL"]))),
            "ERR unknown WB.IMPORT option 'ALL': use MATCH pattern or DELETE"
        );
    }
}
