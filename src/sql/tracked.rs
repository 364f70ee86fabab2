//! The TRACKED upsert: one `MERGE` for all tracked events of a batch of entries.
//!
//! # Why one MERGE, fed by one JSON bind
//! Effectively-once cannot come from a transaction: the SQL API does not allow bind variables in
//! multi-statement requests, so `BEGIN; MERGE ...; UPDATE checkpoint ...; COMMIT` with binds is not
//! possible. It comes from the data instead. Every TRACKED row remembers in `last_entry_id` the newest
//! stream entry applied to it, and this single statement — atomic on its own — both filters and
//! applies:
//!
//! 1. The events of the whole batch arrive as one JSON array in one `TEXT` bind, expanded with
//!    `FROM (SELECT PARSE_JSON(?) AS j) b, LATERAL FLATTEN(input => b.j) f` (one round trip, no value
//!    ever in the SQL text, and the fast path in Snowflake's compiler).
//! 2. An event is kept only if no row with its key has `last_entry_id` at or above the event's entry
//!    (`NOT EXISTS`): an entry already applied — replayed after a crash, a retry, a failover — drops
//!    out, alone or mixed with new entries.
//! 3. The surviving events are aggregated to exactly one source row per row key (Snowflake rejects a
//!    MERGE in which several source rows update one target row, error 100090): the number of visits,
//!    the latest visit/save/delete time, the current save state (the last save or delete by stream
//!    order, so save→delete and delete→save within one batch end right), the latest value of each
//!    attribute, and the newest entry.
//! 4. `WHEN MATCHED` adds the visits and moves each time forward; `WHEN NOT MATCHED` inserts only if
//!    there is a visit or a save (a delete of an item that has no row creates none).
//!
//! Since filter and update happen in one statement, replaying any subset of applied entries changes
//! each row exactly by the events it has not seen. This relies on the pipeline applying the entries
//! that touch one row in stream order (it routes by [`crate::entry::Decoded::row_keys`]) and never
//! splitting one entry's events across statements ([`super::plan`] keeps entries whole).
//!
//! Event order is `ord` = the entry's sort key + the record index (fixed width, so text order is
//! stream order). "Latest value" is taken as `MAX(ord || value)`, which picks the value of the latest
//! event that carries one: an event without, say, a `page_name` leaves the stored one as it was.
//! Timestamps travel as `YYYY-MM-DD HH:MM:SS` text, which sorts as time does, and are converted with
//! `TO_TIMESTAMP_NTZ(x, 'YYYY-MM-DD HH24:MI:SS')` once aggregated — always with that explicit format, so
//! an account's or session's `TIMESTAMP_INPUT_FORMAT` cannot change how they are read. Every bind is inside the `USING` subquery and every source column
//! is selected plainly, which is what portable engines (and the local emulator) need.

use serde::Serialize;

use crate::entry::rules::ts_text;
use crate::entry::{EntryId, Event};

/// Width of `ord`: the 41-character entry sort key, `-`, and a 10-digit record index.
pub const ORD_WIDTH: usize = 52;

/// One event as it travels in the batch JSON.
#[derive(Debug, Serialize)]
struct EventJson<'a> {
    tracked_id: &'a str,
    track_id: &'a str,
    username: &'a str,
    entry: &'a str,
    ord: String,
    act: &'static str,
    ts: String,
    at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    page_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_row_count: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    track_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
}

/// The JSON objects of one entry's events, comma-separated (no brackets), ready to join a batch.
pub fn events_json(entry: EntryId, events: &[Event]) -> String {
    let sort_key = entry.sort_key();
    let at = entry.utc_text();
    let mut out = String::new();
    for e in events {
        let j = EventJson {
            tracked_id: &e.tracked_id,
            track_id: &e.track_id,
            username: &e.username,
            entry: &sort_key,
            ord: format!("{sort_key}-{:010}", e.index),
            act: e.action.code(),
            ts: ts_text(&e.lastplus),
            at: &at,
            page_name: e.page_name.as_deref(),
            query_row_count: e.query_row_count.map(|n| n.to_string()),
            title: e.title.as_deref(),
            track_type: e.track_type.as_deref(),
            url: e.url.as_deref(),
        };
        // Serialising plain strings and numbers cannot fail; an empty object keeps this panic-free.
        let text = serde_json::to_string(&j).unwrap_or_else(|_| "{}".to_string());
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&text);
    }
    out
}

/// The MERGE for a quoted table name (see [`super::ident::quote_table`]). One `?`: the JSON array.
///
/// The `USING` subquery computes every final value (it reads the current row through a `LEFT JOIN`),
/// so the `WHEN` clauses only copy plain source columns. Counts use `COUNT(DISTINCT ord)` and the
/// current values `MAX(cur.…)`, so a key that (against the design) has duplicate rows still yields one
/// source row with the right counts, and the MERGE updates every duplicate alike instead of failing.
pub fn merge_sql(table: &str) -> String {
    let o = ORD_WIDTH + 1;
    format!(
        "MERGE INTO {table} t USING (\
SELECT g.tracked_id, g.track_id, g.visits, g.saves, \
COALESCE(g.cur_visited_count, 0) + g.visits AS visited_count, \
{visited} AS visited_dts, \
CASE WHEN g.save_events > 0 THEN CASE WHEN RIGHT(g.save_state, 1) = 's' THEN 1 ELSE 0 END \
ELSE COALESCE(g.cur_saved, 0) END AS saved, \
{saved} AS saved_dts, \
{deleted} AS deleted_dts, \
COALESCE(SUBSTR(g.username_o, {o}), g.cur_username) AS username, \
COALESCE(SUBSTR(g.page_name_o, {o}), g.cur_page_name) AS page_name, \
COALESCE(CAST(SUBSTR(g.query_row_count_o, {o}) AS NUMBER(38,0)), g.cur_query_row_count) AS query_row_count, \
COALESCE(SUBSTR(g.track_title_o, {o}), g.cur_track_title) AS track_title, \
COALESCE(SUBSTR(g.track_type_o, {o}), g.cur_track_type) AS track_type, \
COALESCE(SUBSTR(g.track_url_o, {o}), g.cur_track_url) AS track_url, \
g.last_entry_id, \
TO_TIMESTAMP_NTZ(g.at_ts, 'YYYY-MM-DD HH24:MI:SS') AS updated_dts \
FROM (\
SELECT e.tracked_id, e.track_id, \
COUNT(DISTINCT CASE WHEN e.act = 'v' THEN e.ord END) AS visits, \
COUNT(DISTINCT CASE WHEN e.act = 's' THEN e.ord END) AS saves, \
COUNT(DISTINCT CASE WHEN e.act IN ('s', 'd') THEN e.ord END) AS save_events, \
MAX(CASE WHEN e.act = 'v' THEN e.ts END) AS visited_ts, \
MAX(CASE WHEN e.act = 's' THEN e.ts END) AS saved_ts, \
MAX(CASE WHEN e.act = 'd' THEN e.ts END) AS deleted_ts, \
MAX(CASE WHEN e.act IN ('s', 'd') THEN e.ord || e.act END) AS save_state, \
MAX(e.ord || e.username) AS username_o, \
MAX(e.ord || e.page_name) AS page_name_o, \
MAX(e.ord || e.query_row_count) AS query_row_count_o, \
MAX(e.ord || e.track_title) AS track_title_o, \
MAX(e.ord || e.track_type) AS track_type_o, \
MAX(e.ord || e.track_url) AS track_url_o, \
MAX(e.entry) AS last_entry_id, \
MAX(e.at_ts) AS at_ts, \
MAX(cur.visited_count) AS cur_visited_count, \
MAX(cur.visited_dts) AS cur_visited_dts, \
MAX(cur.saved) AS cur_saved, \
MAX(cur.saved_dts) AS cur_saved_dts, \
MAX(cur.deleted_dts) AS cur_deleted_dts, \
MAX(cur.username) AS cur_username, \
MAX(cur.page_name) AS cur_page_name, \
MAX(cur.query_row_count) AS cur_query_row_count, \
MAX(cur.track_title) AS cur_track_title, \
MAX(cur.track_type) AS cur_track_type, \
MAX(cur.track_url) AS cur_track_url \
FROM (\
SELECT f.value:tracked_id::VARCHAR AS tracked_id, \
f.value:track_id::VARCHAR AS track_id, \
f.value:username::VARCHAR AS username, \
f.value:entry::VARCHAR AS entry, \
f.value:ord::VARCHAR AS ord, \
f.value:act::VARCHAR AS act, \
f.value:ts::VARCHAR AS ts, \
f.value:at::VARCHAR AS at_ts, \
f.value:page_name::VARCHAR AS page_name, \
f.value:query_row_count::VARCHAR AS query_row_count, \
f.value:title::VARCHAR AS track_title, \
f.value:type::VARCHAR AS track_type, \
f.value:url::VARCHAR AS track_url \
FROM (SELECT PARSE_JSON(?) AS j) b, LATERAL FLATTEN(input => b.j) f\
) e \
LEFT JOIN {table} cur ON cur.tracked_id = e.tracked_id AND cur.track_id = e.track_id \
WHERE NOT EXISTS (SELECT 1 FROM {table} done \
WHERE done.tracked_id = e.tracked_id AND done.track_id = e.track_id AND done.last_entry_id >= e.entry) \
GROUP BY e.tracked_id, e.track_id\
) g\
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
WHEN NOT MATCHED AND (s.visits > 0 OR s.saves > 0) THEN INSERT \
(tracked_id, track_id, username, page_name, query_row_count, track_title, track_type, track_url, \
visited_count, visited_dts, saved, saved_dts, deleted_dts, last_entry_id, updated_dts) \
VALUES (s.tracked_id, s.track_id, s.username, s.page_name, s.query_row_count, s.track_title, \
s.track_type, s.track_url, s.visited_count, s.visited_dts, s.saved, s.saved_dts, s.deleted_dts, \
s.last_entry_id, s.updated_dts)",
        visited = latest("visited"),
        saved = latest("saved"),
        deleted = latest("deleted"),
    )
}

/// The later of the stored time and the batch's newest one, where either may be NULL
/// (`GREATEST` would give NULL).
fn latest(kind: &str) -> String {
    format!(
        "CASE WHEN g.cur_{kind}_dts IS NULL OR TO_TIMESTAMP_NTZ(g.{kind}_ts, 'YYYY-MM-DD HH24:MI:SS') > g.cur_{kind}_dts \
THEN COALESCE(TO_TIMESTAMP_NTZ(g.{kind}_ts, 'YYYY-MM-DD HH24:MI:SS'), g.cur_{kind}_dts) ELSE g.cur_{kind}_dts END"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::rules::parse_lastplus;
    use crate::entry::Action;

    fn event(index: usize, action: Action) -> Event {
        Event {
            index,
            action,
            tracked_id: "alice-1".into(),
            track_id: "it's \"x\"".into(),
            track_id_generated: false,
            username: "alice".into(),
            lastplus: parse_lastplus("2025-11-03 12:19:55").unwrap_or_default(),
            page_name: None,
            query_row_count: Some(25),
            title: Some("'; DROP TABLE TRACKED; --\u{0}".into()),
            track_type: Some("QUERY".into()),
            url: None,
            stale_override: None,
        }
    }

    #[test]
    fn events_json_carries_every_value_and_orders_by_entry_and_index() {
        let entry = EntryId::new(1_762_172_400_000, 3);
        let json = format!(
            "[{}]",
            events_json(entry, &[event(0, Action::Visit), event(1, Action::Delete)])
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[0]["entry"], entry.sort_key());
        assert_eq!(v[0]["ord"], format!("{}-0000000000", entry.sort_key()));
        assert_eq!(v[1]["ord"].as_str().map(str::len), Some(ORD_WIDTH));
        assert_eq!(v[1]["act"], "d");
        assert_eq!(v[0]["ts"], "2025-11-03 12:19:55");
        assert_eq!(v[0]["at"], "2025-11-03 12:20:00");
        assert_eq!(v[0]["track_id"], "it's \"x\"");
        assert_eq!(v[0]["title"], "'; DROP TABLE TRACKED; --\u{0}");
        assert_eq!(v[0]["query_row_count"], "25");
        assert_eq!(v[0]["type"], "QUERY");
        assert!(v[0].get("page_name").is_none() && v[0].get("url").is_none());
    }

    #[test]
    fn merge_has_one_bind_and_no_values_in_its_text() {
        let sql = merge_sql("\"TRACKED\"");
        assert_eq!(sql.matches('?').count(), 1);
        assert!(sql.starts_with("MERGE INTO \"TRACKED\" t USING (SELECT"));
        assert!(sql.contains("LATERAL FLATTEN(input => b.j) f"));
        assert!(sql.contains("LEFT JOIN \"TRACKED\" cur ON"));
        assert!(!sql.contains("TABLE(FLATTEN"));
        // Exactly one source row per key.
        assert!(sql.contains("GROUP BY e.tracked_id, e.track_id"));
        // A delete alone never inserts.
        assert!(sql.contains("WHEN NOT MATCHED AND (s.visits > 0 OR s.saves > 0)"));
    }
}
