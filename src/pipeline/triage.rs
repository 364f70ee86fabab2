//! Whether a data error belongs to one entry or to every statement.
//!
//! Snowflake answers SQL state class 22 (a data exception) both when one entry carries a value it
//! cannot take and when something outside the data makes every statement fail alike — an account
//! that sets `TIMESTAMP_INPUT_FORMAT`, a column whose type was changed. Dead-lettering in the
//! second case would move every good entry aside, so an entry is dead-lettered only when its error
//! is shown to be its own:
//!
//! - **isolated** — Snowflake accepted another statement after this failure began (a sibling of
//!   the split batch, another worker's batch): it takes data, just not this entry's. Dead-letter.
//! - **systemic** — another entry, alone, failed with the same code since Snowflake last accepted
//!   anything: single entries keep failing alike. Nothing is dead-lettered; the pipeline shows
//!   `blocked` with the code in `WB.STATUS`, retries slowly, and resumes by itself when it clears.
//! - **undecided** — no evidence either way yet: treated as systemic (retried slowly) until either
//!   appears, or until the entry has failed alone [`QUARANTINE_ATTEMPTS`] times with nothing else
//!   failing alike (a lone bad entry in a quiet pipeline), when it is dead-lettered.
//!
//! Evidence is kept per target table (a cause may break only the USER statements while the
//! TRACKED ones go through), and counts only from statements *submitted* after the batch first
//! failed, so a statement already in flight when a systemic error began cannot pass for proof that
//! Snowflake takes data. The state is process-wide (workers share one Snowflake) and tiny: per
//! table, when the latest accepted statement was submitted, and the entries that failed alone
//! since, per code.

use std::collections::BTreeMap;
use std::time::Instant;

use parking_lot::Mutex;

use crate::entry::EntryId;

/// Lone failures of one entry, with nothing else failing alike and nothing accepted, after which it
/// is taken to be the entry's own fault.
pub const QUARANTINE_ATTEMPTS: u32 = 4;

/// What to do with an entry that Snowflake refused alone with a data error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The error is the entry's own: dead-letter it.
    DeadLetter,
    /// Not (yet) shown to be the entry's own: keep it, report `blocked`, retry slowly.
    Blocked,
}

#[derive(Default)]
struct Evidence {
    /// When the latest statement Snowflake accepted was submitted.
    accepted_submitted: Option<Instant>,
    /// Entries that failed alone (and when), by Snowflake code, not superseded by an acceptance.
    lone: BTreeMap<String, BTreeMap<EntryId, Instant>>,
}

/// What the triage keeps apart: the statements of one target table.
pub type Table = &'static str;

/// The shared evidence.
pub struct Triage {
    state: Mutex<BTreeMap<Table, Evidence>>,
}

impl Default for Triage {
    fn default() -> Triage {
        Triage::new()
    }
}

impl Triage {
    pub const fn new() -> Triage {
        Triage {
            state: Mutex::new(BTreeMap::new()),
        }
    }

    /// Snowflake accepted a statement submitted at `submitted`: lone failures from before it are
    /// no longer evidence of a systemic error.
    pub fn accepted(&self, table: Table, submitted: Instant) {
        let mut guard = self.state.lock();
        let e = guard.entry(table).or_default();
        if e.accepted_submitted.is_none_or(|t| t < submitted) {
            e.accepted_submitted = Some(submitted);
        }
        for failures in e.lone.values_mut() {
            failures.retain(|_, failed| *failed >= submitted);
        }
        e.lone.retain(|_, failures| !failures.is_empty());
    }

    /// Judges `entry`, refused alone by a `table` statement with `code` at `now` (its
    /// `attempts`-th lone failure), in a batch that first failed at `first_failure`.
    pub fn judge(
        &self,
        table: Table,
        entry: EntryId,
        code: &str,
        first_failure: Instant,
        attempts: u32,
        now: Instant,
    ) -> Verdict {
        let mut guard = self.state.lock();
        let e = guard.entry(table).or_default();
        let same = e.lone.entry(code.to_string()).or_default();
        same.insert(entry, now);
        if same.len() > 1 {
            return Verdict::Blocked;
        }
        let accepted_since = e.accepted_submitted.is_some_and(|t| t > first_failure);
        if accepted_since || attempts >= QUARANTINE_ATTEMPTS {
            return Verdict::DeadLetter;
        }
        Verdict::Blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T: Table = "TRACKED";

    fn id(n: u64) -> EntryId {
        EntryId::new(n, 0)
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn an_entry_refused_while_others_are_accepted_is_dead_lettered() {
        let t = Triage::new();
        let t0 = Instant::now();
        // The batch fails at 0; a sibling submitted at 10 goes through; the entry fails alone at 20.
        t.accepted(T, at(t0, 10));
        assert_eq!(
            t.judge(T, id(1), "100035", t0, 1, at(t0, 20)),
            Verdict::DeadLetter
        );
    }

    #[test]
    fn a_statement_in_flight_before_the_failure_is_no_evidence() {
        let t = Triage::new();
        let t0 = at(Instant::now(), 100);
        t.accepted(T, at(t0, 0) - Duration::from_millis(50));
        assert_eq!(
            t.judge(T, id(1), "100035", t0, 1, at(t0, 20)),
            Verdict::Blocked
        );
    }

    #[test]
    fn single_entries_failing_alike_are_systemic_and_nothing_is_dead_lettered() {
        let t = Triage::new();
        let t0 = Instant::now();
        assert_eq!(
            t.judge(T, id(1), "100035", t0, 1, at(t0, 1)),
            Verdict::Blocked
        );
        assert_eq!(
            t.judge(T, id(2), "100035", t0, 1, at(t0, 2)),
            Verdict::Blocked
        );
        // However long it lasts, while others keep failing alike.
        for attempt in 2..20 {
            let now = at(t0, 10 * u64::from(attempt));
            assert_eq!(
                t.judge(T, id(1), "100035", t0, attempt, now),
                Verdict::Blocked
            );
        }
        // Once Snowflake accepts statements again, a refusal is the entry's own.
        t.accepted(T, at(t0, 500));
        assert_eq!(
            t.judge(T, id(1), "100035", t0, 20, at(t0, 600)),
            Verdict::DeadLetter
        );
    }

    #[test]
    fn another_code_is_other_evidence() {
        let t = Triage::new();
        let t0 = Instant::now();
        assert_eq!(
            t.judge(T, id(1), "100035", t0, 1, at(t0, 1)),
            Verdict::Blocked
        );
        assert_eq!(
            t.judge(T, id(2), "100038", t0, QUARANTINE_ATTEMPTS, at(t0, 2)),
            Verdict::DeadLetter
        );
    }

    #[test]
    fn statements_of_another_table_are_no_evidence() {
        let t = Triage::new();
        let t0 = Instant::now();
        // TRACKED statements go through while every USER statement fails alike.
        t.accepted("TRACKED", at(t0, 10));
        assert_eq!(
            t.judge("USER", id(1), "100035", t0, 1, at(t0, 20)),
            Verdict::Blocked
        );
        assert_eq!(
            t.judge("USER", id(2), "100035", t0, 1, at(t0, 21)),
            Verdict::Blocked
        );
        t.accepted("USER", at(t0, 30));
        assert_eq!(
            t.judge("USER", id(1), "100035", t0, 2, at(t0, 40)),
            Verdict::DeadLetter
        );
    }

    #[test]
    fn a_lone_bad_entry_in_a_quiet_pipeline_is_dead_lettered_after_the_quarantine() {
        let t = Triage::new();
        let t0 = Instant::now();
        for attempt in 1..QUARANTINE_ATTEMPTS {
            let now = at(t0, u64::from(attempt));
            assert_eq!(
                t.judge(T, id(7), "100035", t0, attempt, now),
                Verdict::Blocked
            );
        }
        assert_eq!(
            t.judge(T, id(7), "100035", t0, QUARANTINE_ATTEMPTS, at(t0, 9)),
            Verdict::DeadLetter
        );
    }
}
