//! The TRACKED upsert: one `MERGE` for all tracked events of a batch of entries.
//!
//! # Why one MERGE, fed by one JSON bind
//! Effectively-once cannot come from a transaction: the SQL API does not allow bind variables in
//! multi-statement requests, so `BEGIN; MERGE ...; UPDATE checkpoint ...; COMMIT` with binds is not
//! possible. It comes from the data instead. Every TRACKED row remembers in `last_entry_id` the newest
//! stream entry applied to it, and this single statement — atomic on its own — both selects what is
//! new to each row and applies it.
//!
//! # The statement
//! The batch's events are folded in Rust ([`super::fold`]): for each row, one source row ("link") per
//! suffix of the row's entries in the batch, carrying the suffix's whole effect — visits to add, the
//! latest time of each kind, the final save state, the last value of each attribute — and the
//! entries around it (`prev`, `entry`, `last`). They travel in one `TEXT` bind, a JSON array of
//! chunks of links expanded by two `LATERAL FLATTEN`s ([`LINKS_SOURCE`]). Then:
//!
//! 1. The links are joined to the current rows (`LEFT JOIN`, the first of two passes over TRACKED)
//!    and a link is kept only where `prev <= last_entry_id < entry` — the one suffix the row has not
//!    seen; a row that exists takes links marked for existing rows, a missing row the one marked for
//!    missing rows. So there is at most one source row per target row (Snowflake rejects a MERGE in
//!    which several source rows update one target row, error 100090), and no aggregate is needed.
//! 2. The kept link and the current row give every final value in the `USING` subquery: the count
//!    plus the visits, the later of each stored and new time, the new save state or the stored one,
//!    each new attribute or the stored one.
//! 3. The MERGE itself (the second pass) copies them: `WHEN MATCHED` updates, `WHEN NOT MATCHED`
//!    inserts (a missing row only ever keeps a link that creates it).
//!
//! # Why the result is exact
//! Sequential application of the events in stream order is the reference. Within a suffix, the fold
//! is that sequential application, written as a composition of effects ([`super::fold::Effect`]);
//! on a missing row, events before the first visit or save are dropped, as a delete of a missing item
//! does nothing. Which suffix applies is decided inside the same atomic statement from the row's own
//! `last_entry_id`, so any batch boundaries, any replay of any subset and any interleaving of workers
//! that keeps each row's entries in order (the pipeline routes by
//! [`crate::entry::Decoded::row_keys`], and serialises an entry whose rows span workers; [`super::plan`]
//! never splits an entry) give the same row.
//!
//! Timestamps travel as `YYYY-MM-DD HH:MM:SS` text (no fractional seconds) and are converted with an
//! explicit format, never the session's input format. Every bind is inside the `USING` subquery and
//! the `WHEN` clauses copy plain source columns, which is what portable engines (and the local
//! emulator) need.

use super::fold::{Effect, Kind, Link, RowKey};
use super::links::Links;
use crate::entry::rules::TsText;
use crate::statement::JsonSink;

/// Where both MERGEs read their source rows: the bind, a JSON array of chunks of links
/// ([`LinkArray`](super::LinkArray)), expanded twice with `LATERAL FLATTEN`.
///
/// Why chunks: an engine may materialise the flattened input beside every element it yields (the
/// `THIS` column of `FLATTEN`); fakesnow's DuckDB does, which makes one flat array cost
/// elements × bytes — 600 ms for 2,000 links where chunks of 32 take 50 ms. Nested, each level
/// yields few rows of a small input. Snowflake runs both forms alike.
pub const LINKS_SOURCE: &str = "FROM (SELECT PARSE_JSON(?) AS j) b, \
LATERAL FLATTEN(input => b.j) c, LATERAL FLATTEN(input => c.value) f";

/// Where a MERGE reads its rows from: the batch's bound JSON, or a staging table the migration
/// filled with the same objects. Either way each row is one link object, `f.value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// The one bind of the statement ([`LINKS_SOURCE`]).
    Bound,
    /// The rows of a staging table whose `target` column is `target` (a constant, never input).
    Staged {
        stage: &'a str,
        target: &'static str,
    },
}

impl Source<'_> {
    /// The `FROM` clause that yields the link objects as `f.value`.
    pub fn from_clause(&self) -> String {
        match self {
            Source::Bound => LINKS_SOURCE.to_string(),
            Source::Staged { stage, target } => {
                format!("FROM (SELECT v AS value FROM {stage} WHERE target = '{target}') f")
            }
        }
    }
}

/// The format of every timestamp the statements convert (the text [`crate::entry::rules::ts_text`] writes).
pub const TS_FORMAT: &str = "YYYY-MM-DD HH24:MI:SS";

/// Bytes of a link's JSON besides its strings (names, entry IDs, times, numbers, punctuation),
/// as an upper bound; a unit test pins it.
pub const LINK_FIXED_BYTES: usize = 320;

/// How a statement treats `last_entry_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A stream batch: apply the suffix after each row's `last_entry_id`, then move it.
    Stream,
    /// A failover write of one entry that has no stream ID: apply it, keep each row's position.
    Keep,
}

/// The links of one row, one JSON object each, written by hand into `out`: a batch holds
/// thousands of links, and this is the worker's busiest loop. What is usual is left out: `p` for a
/// row's first entry, `l` when it is `e`, `k` when the link is for any row. Times and entry IDs are
/// formatted on the stack: a link costs no heap allocation of its own.
///
/// Names are one letter: each is written, sent and parsed again by the warehouse for every link.
/// [`merge_sql_from`] reads them as `f.value:<name>`:
///
/// | name | value | | name | value |
/// |---|---|---|---|---|
/// | `i` | `tracked_id` | | `v` | last visit time |
/// | `t` | `track_id` | | `s` | last save time |
/// | `e` | entry (sort text) | | `d` | last delete time |
/// | `p` | previous entry | | `f` | saved flag (0/1) |
/// | `l` | last entry of the suffix | | `u` | username |
/// | `a` | time of the change | | `g` | page name |
/// | `k` | kind (`m` missing row, `n` existing row) | | `q` | query row count |
/// | `n` | visits to add | | `h` | track title |
/// | | | | `y` | track type |
/// | | | | `w` | track URL |
pub fn push_links<L: Links>(key: RowKey<'_>, links: &[Link<'_>], out: &mut L) {
    let Some(first) = links.first() else {
        return;
    };
    let at = first.last.utc_ts();
    for l in links {
        let e: &Effect = &l.effect;
        let o = out.next_object();
        o.plain("{");
        o.name("i");
        o.string(key.0);
        o.plain(",");
        o.name("t");
        o.string(key.1);
        o.plain(",");
        o.name("e");
        o.plain_string(l.entry.sort_text().as_str());
        if let Some(p) = l.prev {
            o.plain(",");
            o.name("p");
            o.plain_string(p.sort_text().as_str());
        }
        if l.last != l.entry {
            o.plain(",");
            o.name("l");
            o.plain_string(l.last.sort_text().as_str());
        }
        o.plain(",");
        o.name("a");
        o.plain_string(at.as_str());
        if l.kind != Kind::Both {
            o.plain(",");
            o.name("k");
            o.plain_string(l.kind.code());
        }
        o.plain(",");
        o.name("n");
        o.integer(e.visits);
        let times = [("v", &e.visited), ("s", &e.saved_at), ("d", &e.deleted_at)];
        for (name, t) in times {
            if let Some(t) = t {
                o.plain(",");
                o.name(name);
                o.plain_string(TsText::new(t).as_str());
            }
        }
        if let Some(saved) = e.saved {
            o.plain(",");
            o.name("f");
            o.integer(u8::from(saved));
        }
        let texts = [("u", e.username), ("g", e.page_name)];
        for (name, v) in texts {
            if let Some(v) = v {
                o.plain(",");
                o.name(name);
                o.string(v);
            }
        }
        if let Some(q) = e.query_row_count {
            o.plain(",");
            o.name("q");
            o.integer(q);
        }
        let texts = [("h", e.title), ("y", e.track_type), ("w", e.url)];
        for (name, v) in texts {
            if let Some(v) = v {
                o.plain(",");
                o.name(name);
                o.string(v);
            }
        }
        o.plain("}");
    }
}

/// The MERGE of a stream batch for a quoted table name (see [`super::ident::quote_table`]).
/// One `?`: the JSON array of links.
pub fn merge_sql(table: &str) -> String {
    merge_sql_with(table, Position::Stream)
}

/// The MERGE for a quoted table name and a treatment of `last_entry_id`, reading the bound JSON.
pub fn merge_sql_with(table: &str, position: Position) -> String {
    merge_sql_from(table, position, Source::Bound)
}

/// The one builder of the TRACKED MERGE: the stream batch's, the failover's ([`Position::Keep`]) and
/// the migration's (a staged [`Source`]) differ only in these two arguments, so their rules cannot
/// drift apart.
pub fn merge_sql_from(table: &str, position: Position, source: Source<'_>) -> String {
    let (select_suffix, last_entry_id) = match position {
        Position::Stream => (
            "e.entry > COALESCE(cur.last_entry_id, '') AND e.prev <= COALESCE(cur.last_entry_id, '') AND ",
            "e.last_entry_id",
        ),
        Position::Keep => ("", "cur.last_entry_id"),
    };
    let ts = |field: &str, name: &str| {
        format!("TO_TIMESTAMP_NTZ(f.value:{field}::VARCHAR, '{TS_FORMAT}') AS {name}")
    };
    let later = |col: &str, new: &str| {
        format!("COALESCE(GREATEST(cur.{col}, e.{new}), cur.{col}, e.{new}) AS {col}")
    };
    format!(
        "MERGE INTO {table} t USING (\
SELECT e.tracked_id, e.track_id, \
COALESCE(cur.visited_count, 0) + e.visits AS visited_count, \
{visited}, \
COALESCE(e.saved, cur.saved, 0) AS saved, \
{saved}, \
{deleted}, \
COALESCE(e.username, cur.username) AS username, \
COALESCE(e.page_name, cur.page_name) AS page_name, \
COALESCE(e.query_row_count, cur.query_row_count) AS query_row_count, \
COALESCE(e.track_title, cur.track_title) AS track_title, \
COALESCE(e.track_type, cur.track_type) AS track_type, \
COALESCE(e.track_url, cur.track_url) AS track_url, \
{last_entry_id} AS last_entry_id, \
e.updated_dts \
FROM (\
SELECT f.value:i::VARCHAR AS tracked_id, \
f.value:t::VARCHAR AS track_id, \
f.value:e::VARCHAR AS entry, \
COALESCE(f.value:p::VARCHAR, '') AS prev, \
COALESCE(f.value:l::VARCHAR, f.value:e::VARCHAR) AS last_entry_id, \
{at}, \
COALESCE(f.value:k::VARCHAR, 'b') AS k, \
f.value:n::NUMBER(38,0) AS visits, \
{v}, {s}, {d}, \
f.value:f::NUMBER(1,0) AS saved, \
f.value:u::VARCHAR AS username, \
f.value:g::VARCHAR AS page_name, \
f.value:q::NUMBER(38,0) AS query_row_count, \
f.value:h::VARCHAR AS track_title, \
f.value:y::VARCHAR AS track_type, \
f.value:w::VARCHAR AS track_url \
{from}\
) e \
LEFT JOIN {table} cur ON cur.tracked_id = e.tracked_id AND cur.track_id = e.track_id \
WHERE {select_suffix}e.k <> CASE WHEN cur.tracked_id IS NULL THEN 'm' ELSE 'n' END\
) s \
ON t.tracked_id = s.tracked_id AND t.track_id = s.track_id \
WHEN MATCHED THEN UPDATE SET \
username = s.username, \
page_name = s.page_name, \
query_row_count = s.query_row_count, \
track_title = s.track_title, \
track_type = s.track_type, \
track_url = s.track_url, \
visited_count = s.visited_count, \
visited_dts = s.visited_dts, \
saved = s.saved, \
saved_dts = s.saved_dts, \
deleted_dts = s.deleted_dts, \
last_entry_id = s.last_entry_id, \
updated_dts = s.updated_dts \
WHEN NOT MATCHED THEN INSERT \
(tracked_id, track_id, username, page_name, query_row_count, track_title, track_type, track_url, \
visited_count, visited_dts, saved, saved_dts, deleted_dts, last_entry_id, updated_dts) \
VALUES (s.tracked_id, s.track_id, s.username, s.page_name, s.query_row_count, s.track_title, \
s.track_type, s.track_url, s.visited_count, s.visited_dts, s.saved, s.saved_dts, s.deleted_dts, \
s.last_entry_id, s.updated_dts)",
        from = source.from_clause(),
        visited = later("visited_dts", "v_ts"),
        saved = later("saved_dts", "s_ts"),
        deleted = later("deleted_dts", "d_ts"),
        at = ts("a", "updated_dts"),
        v = ts("v", "v_ts"),
        s = ts("s", "s_ts"),
        d = ts("d", "d_ts"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::rules::parse_lastplus;
    use crate::entry::{Action, EntryId, Event, Strings, Texts};
    use crate::sql::fold::Rows;
    use crate::sql::links::Objects;

    fn event(index: usize, action: Action) -> Event {
        Event {
            index,
            action,
            track_id_generated: false,
            lastplus: parse_lastplus("2025-11-03 12:19:55").unwrap_or_default(),
            query_row_count: Some(25),
            stale_override: None,
            texts: Texts::new(&Strings {
                tracked_id: "alice-1",
                track_id: "it's \"x\"",
                username: "alice",
                title: Some("'; DROP TABLE TRACKED; --\u{0}"),
                track_type: Some("QUERY"),
                ..Strings::default()
            }),
        }
    }

    fn json_of(entries: &[(EntryId, Vec<Event>)]) -> serde_json::Value {
        let mut rows = Rows::new();
        for (id, events) in entries {
            rows.add(*id, events);
        }
        let mut out = Objects::default();
        rows.each_links(|key, links| push_links(key, links, &mut out));
        let links = out.0.iter().map(|o| serde_json::from_str(o).unwrap());
        serde_json::Value::Array(links.collect())
    }

    #[test]
    fn links_carry_every_value_the_entries_and_their_folded_effect() {
        let entry = EntryId::new(1_762_172_400_000, 3);
        let v = json_of(&[(
            entry,
            vec![event(0, Action::Visit), event(1, Action::Delete)],
        )]);
        assert_eq!(v.as_array().map(Vec::len), Some(1));
        let l = &v[0];
        assert_eq!(l["e"], entry.sort_key());
        // A first entry that is also the last, for any row: left out.
        assert!(l.get("p").is_none() && l.get("l").is_none() && l.get("k").is_none());
        assert_eq!(l["n"], 1);
        assert_eq!(l["f"], 0);
        assert_eq!(l["v"], "2025-11-03 12:19:55");
        assert_eq!(l["d"], "2025-11-03 12:19:55");
        assert!(l.get("s").is_none());
        assert_eq!(l["a"], "2025-11-03 12:20:00");
        assert_eq!(l["t"], "it's \"x\"");
        assert_eq!(l["h"], "'; DROP TABLE TRACKED; --\u{0}");
        assert_eq!(l["q"], 25);
        assert_eq!(l["y"], "QUERY");
        assert!(l.get("g").is_none() && l.get("w").is_none());
    }

    #[test]
    fn a_links_fixed_part_stays_within_its_bound() {
        let mut e = event(0, Action::Visit);
        e.query_row_count = Some(i64::MIN);
        e.texts = Texts::new(&Strings {
            title: Some(""),
            page_name: Some(""),
            track_type: Some(""),
            url: Some(""),
            ..Strings::default()
        });
        let mut d = e.clone();
        d.action = Action::Delete;
        let mut s = e.clone();
        s.action = Action::Save;
        let id = EntryId::new(u64::MAX, u64::MAX);
        let v = json_of(&[(EntryId::new(u64::MAX - 1, 0), vec![d, e]), (id, vec![s])]);
        for link in v.as_array().unwrap() {
            // A link, its comma and its share of the chunks' brackets.
            assert!(link.to_string().len() + 4 <= LINK_FIXED_BYTES, "{link}");
        }
    }

    #[test]
    fn merge_has_one_bind_two_reads_of_the_table_and_no_aggregate() {
        let sql = merge_sql("\"TRACKED\"");
        assert_eq!(sql.matches('?').count(), 1);
        assert!(sql.starts_with("MERGE INTO \"TRACKED\" t USING (SELECT"));
        assert_eq!(sql.matches(LINKS_SOURCE).count(), 1);
        assert_eq!(sql.matches("\"TRACKED\"").count(), 2);
        for aggregate in ["GROUP BY", "COUNT(", "MAX(", "EXISTS"] {
            assert!(!sql.contains(aggregate), "{aggregate}");
        }
        // Every conversion names its format.
        assert_eq!(
            sql.matches("TO_TIMESTAMP_NTZ(").count(),
            sql.matches(&format!(", '{TS_FORMAT}')")).count()
        );
        assert!(sql.contains("e.prev <= COALESCE(cur.last_entry_id, '')"));
    }

    #[test]
    fn the_keep_form_selects_by_kind_only_and_keeps_the_position() {
        let sql = merge_sql_with("\"TRACKED\"", Position::Keep);
        assert!(!sql.contains("e.prev <="));
        assert!(sql.contains("cur.last_entry_id AS last_entry_id"));
        assert!(sql.contains("e.k <> CASE WHEN cur.tracked_id IS NULL"));
        assert_eq!(sql.matches('?').count(), 1);
    }
}
