//! Decoded entries to parameterised SQL: the statements a batch sends to Snowflake.
//!
//! A batch of entries becomes at most one TRACKED `MERGE` and one USER `MERGE` (more only when the
//! bound data would pass the byte cap), each fed by a single JSON bind. The events are folded in
//! Rust first, so each statement gets one source row per row and unapplied suffix of its entries.
//! The reasoning behind the statements — effectively-once from `last_entry_id` inside one atomic
//! statement, one source row per target row, exactly the sequential result — is in [`tracked`] and
//! [`fold`]. Values only ever travel as binds; the only configured text in the SQL is the table
//! names, validated and quoted by [`ident`].
//!
//! # Layout
//! - [`plan`]: the entry point; splits a batch by bytes at entry boundaries.
//! - [`fold`]: events folded per row and per suffix of its entries (pure Rust).
//! - [`tracked`]: the TRACKED `MERGE` and its link JSON.
//! - [`user`]: the USER `MERGE`.
//! - [`ident`]: table names.
//! - [`links`]: where link objects are written (the bound array, in the request body's form).
//! - [`mapping`]: the MERGE of a hash mapping; [`mapping_plan`]: a batch of a mapping's captured
//!   changes converted and coalesced per row into it.
//! - [`direct`]: the one-entry statements of a `WB.WRITE` failover.
//! - [`stage`]: the migration's staging table and its MERGEs.
//! - [`restore`]: the restore's query; [`queries`]: the checks the pipeline runs beside its writes.

pub mod direct;
pub mod fold;
pub mod ident;
pub mod links;
pub mod mapping;
pub mod mapping_plan;
pub mod queries;
pub mod restore;
pub mod stage;
pub mod tracked;
pub mod user;

use crate::entry::{CreateUser, Decoded, EntryId, Event};
use crate::settings::{Key, Snapshot};
use crate::statement::{Bind, Statement};

pub use tracked::LINKS_SOURCE;

pub use links::{LinkArray, Links, Objects, CHUNK_LINKS};

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
/// skipped or rejected) contribute no SQL. Each statement's entries are folded into links
/// ([`fold`]). Statements stay within `max_bytes` (SQL text plus bound data, as [`Statement::size`]
/// counts it) by splitting at entry boundaries: splitting inside an entry would let the first
/// statement's `last_entry_id` hide the rest of that entry from the second. The split is decided
/// on an upper bound of the links' size, kept per row as entries join. An entry that alone exceeds
/// the cap gets a statement of its own, flagged `oversize`.
pub fn plan(entries: &[Decoded], tables: &Tables, max_bytes: usize) -> Vec<Planned> {
    let mut tracked = Builder::new(
        Target::Tracked,
        TrackedChunk::default(),
        &tables.tracked_merge,
        max_bytes,
    );
    let mut users = Builder::new(
        Target::User,
        UserChunk::default(),
        &tables.user_merge,
        max_bytes,
    );
    for decoded in entries {
        match decoded {
            Decoded::Tracked(b) if !b.events.is_empty() => tracked.push((b.id, &b.events)),
            Decoded::CreateUser(u) => users.push(u),
            _ => {}
        }
    }
    let mut out = tracked.finish();
    out.extend(users.finish());
    out
}

/// The links of a whole set of entries, in any order, as separate JSON objects (TRACKED, then
/// USER), for a caller that sends them to one MERGE in pieces of its own (the migration tool's
/// staging table).
pub fn links_json(entries: &[Decoded]) -> (Vec<String>, Vec<String>) {
    let mut tracked = TrackedChunk::default();
    let mut users = UserChunk::default();
    for decoded in entries {
        match decoded {
            Decoded::Tracked(b) if !b.events.is_empty() => tracked.add((b.id, &b.events)),
            Decoded::CreateUser(u) => users.add(u),
            _ => {}
        }
    }
    (tracked.objects(), users.objects())
}

/// Escaped JSON length of a string, quotes included, as an upper bound: a quote or a backslash
/// takes two bytes, a control character six (written without branches, so it runs wide).
fn json_len(s: &str) -> usize {
    let extra: usize = s
        .bytes()
        .map(|b| usize::from(b == b'"' || b == b'\\') + 5 * usize::from(b < 0x20))
        .sum();
    2 + s.len() + extra
}

/// The entries of one statement of one target, and an upper bound of their links' JSON size.
trait Chunk<'a>: Default {
    type Item: Copy;
    /// What joining `item` changes, worked out once for both the size check and the join.
    type Joined;
    /// What `item` would change, and the bound if it joined (`&mut`: a chunk may keep what it
    /// worked out in room of its own, reused for every item).
    fn join(&mut self, item: Self::Item) -> (Self::Joined, usize);
    /// Joins `item` with what [`Chunk::join`] worked out for it against this very chunk.
    fn push(&mut self, item: Self::Item, joined: (Self::Joined, usize));
    fn add(&mut self, item: Self::Item) {
        let joined = self.join(item);
        self.push(item, joined);
    }
    fn id(item: Self::Item) -> EntryId;
    /// Records (events or users) of an item.
    fn rows(item: Self::Item) -> usize;
    /// The links as the statement's bind ([`LinkArray`]).
    fn json(&mut self) -> Bind;
}

/// TRACKED entries, with a size bound per row: each of its links holds at most the longest value of
/// each attribute any of its entries carries ([`RowBound`]).
#[derive(Default)]
struct TrackedChunk<'a> {
    entries: Vec<(EntryId, &'a [Event])>,
    rows: fold::FastMap<fold::RowKey<'a>, RowBound>,
    bound: usize,
    /// The rows the last joined item touches, each with its bound's bytes before and its bound
    /// after (see [`TrackedChunk::touched`]); kept for the next item, so joining allocates nothing.
    touched: Vec<(fold::RowKey<'a>, usize, RowBound)>,
}

/// What bounds one row's links: how many entries touch it (one link each, plus one when the row's
/// first event is a delete: its first link then has a form for a missing row), and the longest
/// escaped value of its key and of each string attribute (username, page, title, type, URL).
#[derive(Debug, Clone, Copy, Default)]
struct RowBound {
    entries: usize,
    leading_delete: bool,
    last: Option<EntryId>,
    key: usize,
    attrs: [usize; 5],
}

impl RowBound {
    fn bytes(&self) -> usize {
        (self.entries + usize::from(self.leading_delete))
            * (tracked::LINK_FIXED_BYTES + self.key + self.attrs.iter().sum::<usize>())
    }

    /// Adds an event; a row's events come in stream order (entries in order, records in order).
    fn add(&mut self, id: EntryId, e: &Event) {
        if self.last.is_none() {
            self.leading_delete = e.action == crate::entry::Action::Delete;
        }
        if self.last != Some(id) {
            self.entries += 1;
            self.last = Some(id);
        }
        self.key = json_len(e.tracked_id()) + json_len(e.track_id());
        let opt = |v: Option<&str>| v.map_or(0, json_len);
        let lens = [
            json_len(e.username()),
            opt(e.page_name()),
            opt(e.title()),
            opt(e.track_type()),
            opt(e.url()),
        ];
        for (a, l) in self.attrs.iter_mut().zip(lens) {
            *a = (*a).max(l);
        }
    }
}

impl<'a> TrackedChunk<'a> {
    /// The rows' bounds after `item` joined (only the rows it touches, into `self.touched`), and
    /// the new total.
    fn touched(&mut self, (id, events): (EntryId, &'a [Event])) -> usize {
        // Each touched row with its bound's bytes before and the bound after; a row is looked up once.
        let touched = &mut self.touched;
        touched.clear();
        for e in events {
            let key = (e.tracked_id(), e.track_id());
            let i = match touched.iter().position(|(k, ..)| *k == key) {
                Some(i) => i,
                None => {
                    let before = self.rows.get(&key).copied();
                    let bytes = before.as_ref().map_or(0, RowBound::bytes);
                    touched.push((key, bytes, before.unwrap_or_default()));
                    touched.len() - 1
                }
            };
            if let Some((.., b)) = touched.get_mut(i) {
                b.add(id, e);
            }
        }
        let mut total = self.bound;
        for (_, before, b) in touched.iter() {
            total = total - before + b.bytes();
        }
        total
    }

    fn objects(&mut self) -> Vec<String> {
        let mut rows = fold::Rows::new();
        for (id, events) in &self.entries {
            rows.add(*id, events);
        }
        let mut out = Objects::default();
        rows.each_links(|key, links| tracked::push_links(key, links, &mut out));
        out.0
    }
}

impl<'a> Chunk<'a> for TrackedChunk<'a> {
    type Item = (EntryId, &'a [Event]);
    /// Held in `self.touched`.
    type Joined = ();

    fn join(&mut self, item: Self::Item) -> (Self::Joined, usize) {
        ((), self.touched(item))
    }

    fn push(&mut self, item: Self::Item, ((), total): (Self::Joined, usize)) {
        self.rows
            .extend(self.touched.drain(..).map(|(k, _, b)| (k, b)));
        self.bound = total;
        self.entries.push(item);
    }

    fn id(item: Self::Item) -> EntryId {
        item.0
    }

    fn rows(item: Self::Item) -> usize {
        item.1.len()
    }

    fn json(&mut self) -> Bind {
        let mut rows = fold::Rows::new();
        for (id, events) in &self.entries {
            rows.add(*id, events);
        }
        let mut out = LinkArray::with_capacity(self.bound);
        rows.each_links(|key, links| tracked::push_links(key, links, &mut out));
        out.into_bind()
    }
}

/// USER entries, bounded per user like TRACKED rows.
#[derive(Default)]
struct UserChunk<'a> {
    entries: Vec<&'a CreateUser>,
    users: fold::FastMap<&'a str, (usize, usize)>,
    bound: usize,
}

impl<'a> UserChunk<'a> {
    fn bound_of((entries, longest): (usize, usize)) -> usize {
        entries * (user::LINK_FIXED_BYTES + longest)
    }

    fn touched(&self, u: &'a CreateUser) -> ((usize, usize), usize) {
        let old = self
            .users
            .get(u.email.as_str())
            .copied()
            .unwrap_or_default();
        let new = (
            old.0 + 1,
            old.1.max(json_len(&u.email) + json_len(&u.username)),
        );
        (new, self.bound - Self::bound_of(old) + Self::bound_of(new))
    }

    fn objects(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        user::push_links(&fold::user_links(&self.entries), |o| {
            out.push(o.to_string())
        });
        out
    }
}

impl<'a> Chunk<'a> for UserChunk<'a> {
    type Item = &'a CreateUser;
    type Joined = (usize, usize);

    fn join(&mut self, item: Self::Item) -> (Self::Joined, usize) {
        self.touched(item)
    }

    fn push(&mut self, item: Self::Item, (user, total): (Self::Joined, usize)) {
        self.users.insert(item.email.as_str(), user);
        self.bound = total;
        self.entries.push(item);
    }

    fn id(item: Self::Item) -> EntryId {
        item.id
    }

    fn rows(_: Self::Item) -> usize {
        1
    }

    fn json(&mut self) -> Bind {
        let mut out = LinkArray::with_capacity(self.bound);
        user::push_links(&fold::user_links(&self.entries), |o| out.push(o));
        out.into_bind()
    }
}

/// Accumulates one target's entries, cutting a statement when the next entry might not fit.
struct Builder<'a, C: Chunk<'a>> {
    target: Target,
    sql: &'a str,
    max_bytes: usize,
    chunk: C,
    entries: Vec<EntryId>,
    rows: usize,
    done: Vec<Planned>,
}

impl<'a, C: Chunk<'a>> Builder<'a, C> {
    fn new(target: Target, chunk: C, sql: &'a str, max_bytes: usize) -> Builder<'a, C> {
        Builder {
            target,
            sql,
            max_bytes,
            chunk,
            entries: Vec::new(),
            rows: 0,
            done: Vec::new(),
        }
    }

    fn push(&mut self, item: C::Item) {
        let mut joined = self.chunk.join(item);
        // `[`, `]` and the links' bound.
        if !self.entries.is_empty() && self.sql.len() + 2 + joined.1 > self.max_bytes {
            self.flush();
            joined = self.chunk.join(item);
        }
        self.chunk.push(item, joined);
        self.entries.push(C::id(item));
        self.rows += C::rows(item);
    }

    fn flush(&mut self) {
        if self.entries.is_empty() {
            return;
        }
        let mut chunk = std::mem::take(&mut self.chunk);
        let statement = Statement::new(self.sql, vec![chunk.json()]);
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

    /// The links of a statement, its chunks flattened.
    fn json_of(p: &Planned) -> serde_json::Value {
        match p.statement.binds.as_slice() {
            [Bind::Escaped(t)] => {
                let chunks: Vec<Vec<serde_json::Value>> = serde_json::from_str(&t.text()).unwrap();
                assert!(chunks
                    .iter()
                    .all(|c| !c.is_empty() && c.len() <= CHUNK_LINKS));
                serde_json::Value::Array(chunks.into_iter().flatten().collect())
            }
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
    fn json_len_is_the_escaped_length() {
        for text in ["", "plain", "a\"b\\c", "\u{1}\n\u{1f}", "ünï €"] {
            let escaped = serde_json::to_string(text).unwrap_or_default();
            if text.bytes().any(|b| b < 0x20) {
                // A bound: `\n` takes two bytes, `\u001f` six; both count six.
                assert!(json_len(text) >= escaped.len(), "{text:?}");
            } else {
                assert_eq!(json_len(text), escaped.len(), "{text:?}");
            }
        }
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
        assert_eq!(json_of(&planned[0])[0]["h"], title);
    }
}
