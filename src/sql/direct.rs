//! Statements for a failover write: an entry Redis could not take, written straight to Snowflake.
//!
//! Such an entry has no stream ID, and it may overtake older entries of the same rows still queued in
//! the stream. Giving it a time-based ID would move the rows' `last_entry_id` past those queued entries
//! and make the MERGE drop them later as already applied — a silent loss. So the direct form of the
//! TRACKED MERGE neither filters on `last_entry_id` nor moves it: it applies the events once (the SQL
//! API's `requestId` keeps a resubmission from running twice) and leaves the rows' position in the
//! stream untouched, so the queued entries still apply when their turn comes. A USER upsert carries no
//! counter and is the same as on the normal path.

use super::{tracked, user, Tables};
use crate::entry::{Decoded, EntryId};
use crate::statement::{Bind, Statement};

/// The replay filter of the TRACKED MERGE, removed in the direct form.
fn filter(table: &str) -> String {
    format!(
        "WHERE NOT EXISTS (SELECT 1 FROM {table} done \
WHERE done.tracked_id = e.tracked_id AND done.track_id = e.track_id AND done.last_entry_id >= e.entry) "
    )
}

/// The TRACKED MERGE without the replay filter, keeping each row's `last_entry_id`. `None` if the
/// normal MERGE no longer has the expected shape (a unit test pins it).
pub fn tracked_merge_sql(table: &str) -> Option<String> {
    let normal = tracked::merge_sql(table);
    let f = filter(table);
    let keep_position = "MAX(e.entry) AS last_entry_id";
    if !normal.contains(&f) || !normal.contains(keep_position) {
        return None;
    }
    Some(
        normal
            .replace(&f, "")
            .replace(keep_position, "MAX(cur.last_entry_id) AS last_entry_id"),
    )
}

/// The statements writing one decoded entry directly; empty when it writes nothing.
pub fn plan(decoded: &Decoded, tables: &Tables) -> Option<Vec<Statement>> {
    // The ID only orders the entry's own events and stamps `updated_dts`; it is never stored.
    let id: EntryId = decoded.id();
    match decoded {
        Decoded::Tracked(b) if !b.events.is_empty() => {
            let sql = tracked_merge_sql(&tables.tracked)?;
            let json = format!("[{}]", tracked::events_json(id, &b.events));
            Some(vec![Statement::new(sql, vec![Bind::Text(json)])])
        }
        Decoded::CreateUser(u) => {
            let json = format!("[{}]", user::user_json(decoded.id(), u));
            Some(vec![Statement::new(
                user::merge_sql(&tables.user),
                vec![Bind::Text(json)],
            )])
        }
        _ => Some(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_merge_drops_the_replay_filter_and_keeps_the_position() {
        let sql = tracked_merge_sql("\"TRACKED\"").expect("the normal MERGE has its filter");
        assert!(!sql.contains("done.last_entry_id >= e.entry"));
        assert!(sql.contains("MAX(cur.last_entry_id) AS last_entry_id"));
        assert!(!sql.contains("MAX(e.entry) AS last_entry_id"));
        assert_eq!(sql.matches('?').count(), 1);
    }
}
