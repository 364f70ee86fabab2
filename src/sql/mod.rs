//! Decoded entries to parameterised SQL: the statements a batch sends to Snowflake.
//!
//! A batch of entries becomes at most one TRACKED `MERGE` and one USER `MERGE` (more only when the
//! bound data would pass the byte cap), each fed by a single JSON bind. The reasoning behind the
//! statements — effectively-once from `last_entry_id` inside one atomic statement, one source row per
//! target row — is in [`tracked`]. Values only ever travel as binds; the only configured text in the
//! SQL is the table names, validated and quoted by [`ident`].
//!
//! # Layout
//! - [`plan`]: the entry point; splits a batch by bytes at entry boundaries.
//! - [`tracked`]: the TRACKED `MERGE` and its event JSON.
//! - [`user`]: the USER `MERGE`.
//! - [`ident`]: table names.

pub mod direct;
pub mod ident;
pub mod tracked;
pub mod user;

use crate::entry::{Decoded, EntryId};
use crate::settings::{Key, Snapshot};
use crate::statement::{Bind, Statement};

/// The quoted table names, with their statements' SQL text built once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    pub tracked: String,
    pub user: String,
    tracked_merge: String,
    user_merge: String,
}

impl Tables {
    /// Validates and quotes both names (`SNOWFLAKE_TRACKED_TABLE`, `SNOWFLAKE_USER_TABLE`).
    pub fn new(tracked: &str, user: &str) -> Result<Tables, String> {
        let tracked = ident::quote_table(tracked)?;
        let user = ident::quote_table(user)?;
        Ok(Tables {
            tracked_merge: tracked::merge_sql(&tracked),
            user_merge: user::merge_sql(&user),
            tracked,
            user,
        })
    }

    pub fn from_settings(s: &Snapshot) -> Result<Tables, String> {
        Tables::new(
            s.str(Key::SnowflakeTrackedTable),
            s.str(Key::SnowflakeUserTable),
        )
    }
}

impl Default for Tables {
    fn default() -> Tables {
        Tables {
            tracked: "\"TRACKED\"".into(),
            user: "\"USER\"".into(),
            tracked_merge: tracked::merge_sql("\"TRACKED\""),
            user_merge: user::merge_sql("\"USER\""),
        }
    }
}

/// Which table a statement writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Tracked,
    User,
}

impl Target {
    /// The log marker of the statement (`SQL (TRACKED)` is what the seed's runbook greps for).
    pub fn marker(self) -> &'static str {
        match self {
            Target::Tracked => "SQL (TRACKED)",
            Target::User => "SQL (USER)",
        }
    }
}

/// One statement of a batch and what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub target: Target,
    pub statement: Statement,
    /// The entries whose records are in this statement, in stream order. An entry may appear in
    /// one TRACKED and one USER statement, never in two of the same target.
    pub entries: Vec<EntryId>,
    /// Records (events) or users in the statement.
    pub rows: usize,
    /// A single entry larger than the cap: sent alone, since an entry is never split.
    pub oversize: bool,
}

/// Turns a batch of decoded entries (in stream order) into statements.
///
/// Entries that write nothing (diagnostics, restored, undecodable, batches whose records were all
/// skipped or rejected) contribute no SQL. Statements stay within `max_bytes` (SQL text plus bound
/// data, as [`Statement::size`] counts it) by splitting at entry boundaries: splitting inside an entry
/// would let the first statement's `last_entry_id` hide the rest of that entry from the second. An
/// entry that alone exceeds the cap gets a statement of its own, flagged `oversize`.
pub fn plan(entries: &[Decoded], tables: &Tables, max_bytes: usize) -> Vec<Planned> {
    let mut tracked = Builder::new(Target::Tracked, &tables.tracked_merge, max_bytes);
    let mut users = Builder::new(Target::User, &tables.user_merge, max_bytes);
    for decoded in entries {
        match decoded {
            Decoded::Tracked(b) if !b.events.is_empty() => {
                tracked.push(b.id, tracked::events_json(b.id, &b.events), b.events.len());
            }
            Decoded::CreateUser(u) => users.push(u.id, user::user_json(u.id, u), 1),
            _ => {}
        }
    }
    let mut out = tracked.finish();
    out.extend(users.finish());
    out
}

/// Accumulates one target's JSON array, cutting a statement when the next entry would not fit.
struct Builder<'a> {
    target: Target,
    sql: &'a str,
    max_bytes: usize,
    json: String,
    entries: Vec<EntryId>,
    rows: usize,
    done: Vec<Planned>,
}

impl<'a> Builder<'a> {
    fn new(target: Target, sql: &'a str, max_bytes: usize) -> Builder<'a> {
        Builder {
            target,
            sql,
            max_bytes,
            json: String::new(),
            entries: Vec::new(),
            rows: 0,
            done: Vec::new(),
        }
    }

    /// Size of the statement if `extra` bytes of JSON joined it (`[`, `,` and `]` included).
    fn size_with(&self, extra: usize) -> usize {
        self.sql.len() + self.json.len() + extra + 2
    }

    fn push(&mut self, id: EntryId, fragment: String, rows: usize) {
        if fragment.is_empty() {
            return;
        }
        if !self.entries.is_empty() && self.size_with(fragment.len() + 1) > self.max_bytes {
            self.flush();
        }
        if !self.json.is_empty() {
            self.json.push(',');
        }
        self.json.push_str(&fragment);
        self.entries.push(id);
        self.rows += rows;
    }

    fn flush(&mut self) {
        if self.entries.is_empty() {
            return;
        }
        let json = format!("[{}]", std::mem::take(&mut self.json));
        let statement = Statement::new(self.sql, vec![Bind::Text(json)]);
        let oversize = statement.size() > self.max_bytes;
        self.done.push(Planned {
            target: self.target,
            statement,
            entries: std::mem::take(&mut self.entries),
            rows: std::mem::take(&mut self.rows),
            oversize,
        });
    }

    fn finish(mut self) -> Vec<Planned> {
        self.flush();
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{decode, Rules};

    fn entry(ms: u64, json: &str) -> Decoded {
        let rules = Rules {
            skip_freshness: true,
            ..Rules::default()
        };
        decode(
            EntryId::new(ms, 0),
            &[(b"value".to_vec(), json.as_bytes().to_vec())],
            &rules,
        )
    }

    fn visit(ms: u64, title: &str) -> Decoded {
        entry(
            ms,
            &format!(
                r#"{{"key":"userdata-events:alice-1/visited","records":[{{"id":"alice-1","track_id":"t","track_title":"{title}","lastplus":"2025-11-03 12:00:00"}}]}}"#
            ),
        )
    }

    fn json_of(p: &Planned) -> serde_json::Value {
        match p.statement.binds.as_slice() {
            [Bind::Text(t)] => serde_json::from_str(t).unwrap(),
            other => panic!("unexpected binds {other:?}"),
        }
    }

    #[test]
    fn a_batch_becomes_one_tracked_and_one_user_statement() {
        let batch = [
            visit(1, "a"),
            entry(2, r#"{"user_email":"alice@example.com"}"#),
            entry(3, r#"{"diag":"ping"}"#),
            entry(4, r#"{"hello":"world"}"#),
            visit(5, "b"),
        ];
        let planned = plan(&batch, &Tables::default(), 1_000_000);
        assert_eq!(planned.len(), 2);
        assert_eq!(planned[0].target, Target::Tracked);
        assert_eq!(planned[0].entries, [EntryId::new(1, 0), EntryId::new(5, 0)]);
        assert_eq!(planned[0].rows, 2);
        assert_eq!(json_of(&planned[0]).as_array().map(Vec::len), Some(2));
        assert_eq!(planned[1].target, Target::User);
        assert_eq!(planned[1].entries, [EntryId::new(2, 0)]);
        assert!(planned[1].statement.sql.starts_with("MERGE INTO \"USER\""));
    }

    #[test]
    fn nothing_to_write_means_no_statement() {
        let batch = [entry(3, r#"{"diag":"ping"}"#)];
        assert!(plan(&batch, &Tables::default(), 1_000_000).is_empty());
    }

    #[test]
    fn statements_are_split_by_bytes_at_entry_boundaries() {
        let batch: Vec<Decoded> = (1..=10).map(|i| visit(i, &"x".repeat(1000))).collect();
        let sql_len = Tables::default().tracked_merge.len();
        let planned = plan(&batch, &Tables::default(), sql_len + 3500);
        assert!(planned.len() > 1, "{}", planned.len());
        let mut seen = Vec::new();
        for p in &planned {
            assert!(
                p.statement.size() <= sql_len + 3500,
                "{}",
                p.statement.size()
            );
            assert!(!p.oversize);
            assert_eq!(json_of(p).as_array().map(Vec::len), Some(p.entries.len()));
            seen.extend(p.entries.iter().copied());
        }
        let all: Vec<EntryId> = (1..=10).map(|i| EntryId::new(i, 0)).collect();
        assert_eq!(seen, all);
    }

    #[test]
    fn an_entry_larger_than_the_cap_goes_alone_and_is_flagged() {
        let batch = [visit(1, "a"), visit(2, &"x".repeat(5000)), visit(3, "b")];
        let planned = plan(
            &batch,
            &Tables::default(),
            Tables::default().tracked_merge.len() + 1000,
        );
        let sizes: Vec<(usize, bool)> = planned
            .iter()
            .map(|p| (p.entries.len(), p.oversize))
            .collect();
        assert_eq!(sizes, [(1, false), (1, true), (1, false)]);
    }

    #[test]
    fn configured_table_names_are_quoted_into_the_statements() {
        let t = Tables::new("analytics.public.tracked", "users").unwrap();
        let planned = plan(&[visit(1, "a")], &t, 1_000_000);
        assert!(planned[0]
            .statement
            .sql
            .starts_with("MERGE INTO \"ANALYTICS\".\"PUBLIC\".\"TRACKED\" t"));
        assert!(Tables::new("t; DROP TABLE x", "USER").is_err());
        assert_eq!(
            Tables::from_settings(&Snapshot::defaults()).unwrap(),
            Tables::default()
        );
    }

    #[test]
    fn hostile_values_never_reach_the_sql_text() {
        let title = "'; DROP TABLE TRACKED; -- \\\" \u{0} ünï";
        let json = serde_json::json!({"key":"userdata-events:alice-1/visited","records":[{"id":"x'y","track_title":title,"lastplus":"2025-11-03 12:00:00"}]});
        let planned = plan(
            &[entry(1, &json.to_string())],
            &Tables::default(),
            1_000_000,
        );
        let sql = &planned[0].statement.sql;
        assert!(!sql.contains("DROP") && !sql.contains("x'y"));
        assert_eq!(json_of(&planned[0])[0]["title"], title);
    }
}
