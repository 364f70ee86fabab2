//! The one retry policy of the pipeline, decided from typed error classes (as vector's
//! `RetryLogic`): what a failed commit means, and what the worker does next.
//!
//! Two levels, each deciding once:
//! - one round trip: the Snowflake client itself repeats a request Snowflake answered with a
//!   transient error ([`crate::snowflake::ErrorClass::Retryable`]: throttling, an outage, a lost
//!   answer) with jittered backoff within the request's deadline, and renews rejected credentials
//!   once ([`crate::snowflake::retry`]). Only what it gives up on reaches this file.
//! - one batch: [`SinkError`] sorts the client's classes by what the pipeline can do about them, and
//!   [`decide`] turns a class, the batch's size and its attempts into a [`Decision`]:
//!   - [`SinkError::Retry`]: transient (throttling, outage, lock waits, expired credentials): the same
//!     batch again after a backoff. Nothing is lost and nothing is skipped; the backlog grows.
//!   - [`SinkError::TimedOut`]: a statement ran past its time; retried (the same `requestId` finds it
//!     still running), and a batch that keeps timing out is split.
//!   - [`SinkError::Blocked`]: Snowflake refuses every statement for a reason no entry can fix (a
//!     missing table, a privilege, a bad key): retried slowly and shown loudly, never dead-lettered —
//!     moving good data aside because of a configuration problem would be a silent loss.
//!   - [`SinkError::Data`]: Snowflake rejected the data (SQL state class 22), or refused a statement
//!     for good for another reason than the setup (e.g. HTTP 400; not SQL states 42, 28, 0A): the
//!     batch is split until the entry at fault is alone, and [`super::triage`] decides whether the
//!     error is that entry's own (dead-letter it) or every statement's (blocked).
//!
//! A `WB.WRITE` failover has no batch to split and no stream to wait in: [`execute_direct`] tries its
//! statement a bounded number of times, on the same classes.

use std::time::Duration;

use rand::Rng;

use super::triage::Verdict;
use crate::settings::{Key, Snapshot};
use crate::snowflake::{Client, ErrorClass, QueryResult, SnowflakeError};
use crate::statement::Statement;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkError {
    Retry(String),
    TimedOut(String),
    /// `code`: Snowflake's error code when it gave one, shown in `WB.STATUS`.
    Blocked {
        code: Option<String>,
        message: String,
    },
    /// `code`: Snowflake's error code (or SQL state), the key of the triage; `table`: the target
    /// of the statement refused.
    Data {
        code: String,
        message: String,
        table: &'static str,
    },
}

impl SinkError {
    pub fn message(&self) -> &str {
        match self {
            SinkError::Retry(m)
            | SinkError::TimedOut(m)
            | SinkError::Blocked { message: m, .. }
            | SinkError::Data { message: m, .. } => m,
        }
    }

    pub fn blocked(message: impl Into<String>) -> SinkError {
        SinkError::Blocked {
            code: None,
            message: message.into(),
        }
    }
}

impl From<SnowflakeError> for SinkError {
    fn from(e: SnowflakeError) -> SinkError {
        let line = e.to_string();
        match e.class {
            ErrorClass::Retryable if e.timed_out => SinkError::TimedOut(line),
            ErrorClass::Retryable | ErrorClass::Reauth => SinkError::Retry(line),
            ErrorClass::Data => SinkError::Data {
                code: e.code.or(e.sql_state).unwrap_or_else(|| "data".to_string()),
                message: line,
                table: "",
            },
            // Any other permanent refusal (a request too large, an unexpected status) may be about
            // one entry: it is split and judged like a data error, so one entry cannot hold up the
            // rest. Compilation and access errors (SQL states 42, 28, 0A: a missing table, a
            // privilege) cannot come from a bound value: they block.
            ErrorClass::Permanent
                if !e
                    .sql_state
                    .as_deref()
                    .is_some_and(|s| ["42", "28", "0A"].iter().any(|c| s.starts_with(c))) =>
            {
                SinkError::Data {
                    code: e
                        .code
                        .clone()
                        .or(e.sql_state.clone())
                        .unwrap_or_else(|| "permanent".to_string()),
                    message: line,
                    table: "",
                }
            }
            ErrorClass::Config | ErrorClass::Permanent => SinkError::Blocked {
                code: e.code,
                message: line,
            },
        }
    }
}

/// What the worker does with a batch whose commit failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The same batch again after a backoff.
    Retry,
    /// The same batch again after a long backoff, the pipeline shown blocked on `code` (`-` when
    /// Snowflake gave none): nothing an entry can fix.
    RetrySlowly { code: String },
    /// Each half of the batch on its own (entries are never split, so replays stay exact).
    Split,
    /// The batch's one entry is at fault: dead-letter it.
    DeadLetter,
}

/// Attempts of a batch that keeps timing out before it is split.
const SPLIT_TIMED_OUT_AFTER: u32 = 2;

/// The decision for a commit of `entries` entries that failed with `error` after `attempt` earlier
/// failed attempts. `judge` is asked, for a data error of one entry alone, whether the error is
/// that entry's own (see [`super::triage`]).
pub fn decide(
    error: &SinkError,
    entries: usize,
    attempt: u32,
    judge: impl FnOnce(&'static str, &str) -> Verdict,
) -> Decision {
    match error {
        SinkError::Data { .. } if entries > 1 => Decision::Split,
        SinkError::Data { code, table, .. } => match judge(table, code) {
            Verdict::DeadLetter => Decision::DeadLetter,
            Verdict::Blocked => Decision::RetrySlowly { code: code.clone() },
        },
        // A statement that keeps running past the request timeout may simply be too big for the
        // warehouse: after three tries, split the batch; one entry alone keeps being retried.
        SinkError::TimedOut(_) if entries > 1 && attempt >= SPLIT_TIMED_OUT_AFTER => {
            Decision::Split
        }
        SinkError::Blocked { code, .. } => Decision::RetrySlowly {
            code: code.clone().unwrap_or_else(|| "-".to_string()),
        },
        SinkError::Retry(_) | SinkError::TimedOut(_) => Decision::Retry,
    }
}

/// Exponential backoff with full jitter, capped by `RETRY_MAX_BACKOFF_MS`; a blocked sink (a
/// configuration problem) starts at the cap's quarter.
pub fn backoff(attempt: u32, blocked: bool, snap: &Snapshot) -> Duration {
    let cap = snap.uint(Key::RetryMaxBackoffMs).max(10);
    let base: u64 = if blocked { cap / 4 } else { 100 };
    let exp = base
        .saturating_mul(1u64 << attempt.min(20).saturating_sub(1))
        .min(cap);
    let jittered = rand::thread_rng().gen_range(exp / 2..=exp.max(1));
    Duration::from_millis(jittered)
}

/// Tries of one direct statement before the caller gets the error.
const DIRECT_TRIES: u32 = 3;

/// Runs one direct statement as one request for all its tries. The direct MERGE has no replay
/// filter, so a second execution would count twice: a try after a timeout or a lost answer
/// resubmits the same request (`retry=true`), which finds the first execution — finished or still
/// running — instead of starting another; only a statement that ran and failed is sent anew.
pub fn execute_direct(client: &Client, st: &Statement) -> Result<QueryResult, SnowflakeError> {
    let mut request = crate::snowflake::client::Request::default();
    let mut tries = 0;
    loop {
        tries += 1;
        match client.execute_with(st, &mut request) {
            Err(e) if e.is_retryable() && tries < DIRECT_TRIES => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> SinkError {
        SinkError::Data {
            code: "100035".into(),
            message: "Timestamp 'x' is not recognized".into(),
            table: "TRACKED",
        }
    }

    fn never_asked(_: &'static str, _: &str) -> Verdict {
        panic!("the triage is asked about one entry alone only")
    }

    #[test]
    fn a_data_error_splits_the_batch_until_one_entry_is_judged() {
        assert_eq!(decide(&data(), 8, 0, never_asked), Decision::Split);
        assert_eq!(
            decide(&data(), 1, 0, |_, _| Verdict::DeadLetter),
            Decision::DeadLetter
        );
        assert_eq!(
            decide(&data(), 1, 0, |table, code| {
                assert_eq!((table, code), ("TRACKED", "100035"));
                Verdict::Blocked
            }),
            Decision::RetrySlowly {
                code: "100035".into()
            }
        );
    }

    #[test]
    fn a_batch_that_keeps_timing_out_is_split_after_three_tries() {
        let e = SinkError::TimedOut("statement did not finish".into());
        assert_eq!(decide(&e, 8, 0, never_asked), Decision::Retry);
        assert_eq!(decide(&e, 8, 1, never_asked), Decision::Retry);
        assert_eq!(decide(&e, 8, 2, never_asked), Decision::Split);
        assert_eq!(decide(&e, 1, 9, never_asked), Decision::Retry);
    }

    #[test]
    fn a_setup_error_is_retried_slowly_and_never_dead_lettered() {
        let e = SinkError::blocked("table TRACKED does not exist");
        assert_eq!(
            decide(&e, 1, 0, never_asked),
            Decision::RetrySlowly { code: "-".into() }
        );
        let e = SinkError::Retry("503".into());
        assert_eq!(decide(&e, 1, 0, never_asked), Decision::Retry);
    }

    #[test]
    fn snowflake_classes_become_sink_errors_by_what_the_pipeline_can_do() {
        let mut timed_out = SnowflakeError::retryable("still running");
        timed_out.timed_out = true;
        assert!(matches!(SinkError::from(timed_out), SinkError::TimedOut(_)));
        assert!(matches!(
            SinkError::from(SnowflakeError::retryable("503")),
            SinkError::Retry(_)
        ));
        assert!(matches!(
            SinkError::from(SnowflakeError::config("no key")),
            SinkError::Blocked { .. }
        ));
    }
}
