//! What a migration read, wrote and left out, for the final report.
//!
//! The decode counters are the module's own [`Tally`] (the same reason codes `WB.STATUS` shows), so an
//! operator compares a migration with the module's figures word for word.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::entry::Tally;

/// One dump file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpSummary {
    pub path: String,
    pub rdb_version: u32,
    pub redis_version: Option<String>,
    pub legacy_keys: u64,
    pub stream_entries: u64,
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub dry_run: bool,
    pub dumps: Vec<DumpSummary>,
    /// Decode counters over every entry read (legacy keys and stream entries).
    pub tally: Tally,
    /// Entries seen before (same stream entry ID, or same legacy key and value) in an earlier dump
    /// or under another pattern: left out, since they are the same data.
    pub duplicates: u64,
    /// A few undecodable entries: where they came from and why.
    pub undecodable_samples: Vec<String>,
    /// Rows put in the staging table, by target (`TRACKED` events, `USER` create-users).
    pub staged: BTreeMap<&'static str, u64>,
    /// Rows the MERGEs inserted or updated, by target (0 on a re-run of the same dumps).
    pub merged: BTreeMap<&'static str, u64>,
    /// SQL statements sent (or, in a dry run, that would have been).
    pub statements: u64,
    /// HTTP requests to Snowflake (submissions, polls, partitions).
    pub round_trips: u64,
    pub elapsed: Duration,
}

impl Summary {
    /// Records read: each tracked record once, whatever became of it, plus create-users.
    pub fn records_read(&self) -> u64 {
        let t = &self.tally;
        t.records_written + t.skipped.values().sum::<u64>() + t.rejected.values().sum::<u64>()
    }
}

fn reasons(map: &BTreeMap<&'static str, u64>) -> String {
    if map.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" ({})", parts.join(", "))
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.tally;
        let head = if self.dry_run { "dry run: " } else { "" };
        writeln!(f, "{head}wb-migrate summary")?;
        for d in &self.dumps {
            writeln!(
                f,
                "  dump {}: RDB {} (redis {}), {} legacy keys, {} stream entries",
                d.path,
                d.rdb_version,
                d.redis_version.as_deref().unwrap_or("?"),
                d.legacy_keys,
                d.stream_entries
            )?;
        }
        writeln!(
            f,
            "  entries: {} read{}, {} duplicates left out",
            t.entries,
            reasons(&t.by_kind),
            self.duplicates
        )?;
        writeln!(
            f,
            "  records: {} read, {} written, {} skipped{}, {} rejected{}",
            self.records_read(),
            t.records_written,
            t.skipped.values().sum::<u64>(),
            reasons(&t.skipped),
            t.rejected.values().sum::<u64>(),
            reasons(&t.rejected)
        )?;
        writeln!(f, "  users: {}", t.users)?;
        writeln!(
            f,
            "  undecodable entries: {}{}",
            t.undecodable.values().sum::<u64>(),
            reasons(&t.undecodable)
        )?;
        for s in &self.undecodable_samples {
            writeln!(f, "    {s}")?;
        }
        if !t.stale_written.is_empty() {
            writeln!(
                f,
                "  stale records written anyway{}",
                reasons(&t.stale_written)
            )?;
        }
        writeln!(f, "  staged rows{}", reasons(&self.staged))?;
        if !self.dry_run {
            writeln!(
                f,
                "  rows inserted or updated{}",
                if self.merged.is_empty() {
                    " (none)".to_string()
                } else {
                    reasons(&self.merged)
                }
            )?;
        }
        write!(
            f,
            "  {} statements, {} round trips, {:.1} s",
            self.statements,
            self.round_trips,
            self.elapsed.as_secs_f64()
        )
    }
}
