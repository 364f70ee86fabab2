//! `WB.RESTORE [FORCE] [DAYS n] [USER name]`: seeds the stream from Snowflake now (the work is
//! [`pipeline::restore`](crate::pipeline::restore)).

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use super::{each_option, err, handle, map, refuse_inside_multi, refuse_on_replica, whole};
use crate::pipeline::control::REGISTRY;
use crate::pipeline::{background, restore};
use crate::settings::{self, Key};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// Restore even into a stream that is not empty.
    pub force: bool,
    /// How many days back; `RESTORE_DAYS` when not given.
    pub days: Option<u64>,
    /// One user's rows only.
    pub user: Option<String>,
}

impl Args {
    pub fn parse(args: &[&[u8]]) -> Result<Args, RedisError> {
        let mut parsed = Args::default();
        each_option(
            args,
            "WB.RESTORE",
            "FORCE, DAYS n or USER name",
            |name, options| {
                match name {
                    "FORCE" => parsed.force = true,
                    "DAYS" => {
                        let n = whole(options.value()?, "DAYS")?;
                        if !(1..=3650).contains(&n) {
                            return Err(err("ERR DAYS must be from 1 to 3650"));
                        }
                        parsed.days = Some(n);
                    }
                    "USER" => parsed.user = Some(options.text()?.to_string()),
                    _ => return Ok(false),
                }
                Ok(true)
            },
        )?;
        Ok(parsed)
    }
}

pub fn command(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    handle(ctx, "WB.RESTORE", &args, |args| {
        run(ctx, Args::parse(args)?)
    })
}

pub fn run(ctx: &Context, args: Args) -> RedisResult {
    let s = settings::current();
    let req = restore::Request {
        force: args.force,
        days: args.days.unwrap_or_else(|| s.uint(Key::RestoreDays)),
        user: args.user,
    };
    refuse_inside_multi(ctx, "WB.RESTORE")?;
    refuse_on_replica(ctx, "WB.RESTORE")?;
    if !s.snowflake_configured() {
        return Err(err(
            "ERR Snowflake is not configured: nothing to restore from",
        ));
    }
    background::run(ctx, "WB.RESTORE", true, move |gil| {
        // Each stream this node serves (one, unless STREAM_SHARDS > 1) is restored with its rows.
        let streams = REGISTRY.served_names(gil);
        let mut total = restore::Summary::default();
        let mut skipped: Vec<String> = Vec::new();
        for names in &streams {
            match restore::run(names, &req, gil, &s) {
                Ok(sum) => match sum.skipped {
                    Some(why) => skipped.push(why),
                    None => {
                        total.rows = total.rows.max(sum.rows);
                        total.entries += sum.entries;
                        total.records += sum.records;
                    }
                },
                Err(e) => return Err(err(format!("ERR restore failed: {e}"))),
            }
        }
        if skipped.len() == streams.len() {
            return Err(err(format!(
                "ERR restore skipped: {} (WB.RESTORE FORCE restores anyway)",
                if skipped.is_empty() {
                    "this node serves none of the streams".to_string()
                } else {
                    skipped.join("; ")
                }
            )));
        }
        Ok(map(vec![
            ("rows".into(), RedisValue::Integer(total.rows as i64)),
            ("entries".into(), RedisValue::Integer(total.entries as i64)),
            ("records".into(), RedisValue::Integer(total.records as i64)),
        ]))
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{refusal, words};
    use super::*;

    #[test]
    fn restore_options_in_any_order_and_case() {
        assert_eq!(
            Args::parse(&words(&["WB.RESTORE"])).ok(),
            Some(Args::default())
        );
        assert_eq!(
            Args::parse(&words(&["WB.RESTORE", "user", "ann", "force", "DAYS", "7"])).ok(),
            Some(Args {
                force: true,
                days: Some(7),
                user: Some("ann".into())
            })
        );
    }

    #[test]
    fn restore_refuses_days_out_of_range_and_unknown_options() {
        assert_eq!(
            refusal(Args::parse(&words(&["WB.RESTORE", "DAYS", "0"]))),
            "ERR DAYS must be from 1 to 3650"
        );
        assert_eq!(
            refusal(Args::parse(&words(&["WB.RESTORE", "DAYS"]))),
            "Wrong Arity"
        );
        assert_eq!(
            refusal(Args::parse(&words(&["WB.RESTORE", "ALL"]))),
            "ERR unknown WB.RESTORE option 'ALL': use FORCE, DAYS n or USER name"
        );
    }
}
