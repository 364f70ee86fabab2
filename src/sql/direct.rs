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
use crate::statement::Statement;

/// The TRACKED MERGE that neither selects by `last_entry_id` nor moves it. Always `Some` (the
/// `Option` is kept for callers written when this form was derived from the normal one's text).
pub fn tracked_merge_sql(table: &str) -> Option<String> {
    Some(tracked::merge_sql_with(table, tracked::Position::Keep))
}

/// The statements writing one decoded entry directly; empty when it writes nothing.
pub fn plan(decoded: &Decoded, tables: &Tables) -> Option<Vec<Statement>> {
    // The ID only orders the entry's own events and stamps `updated_dts`; it is never stored.
    let id: EntryId = decoded.id();
    match decoded {
        Decoded::Tracked(b) if !b.events.is_empty() => {
            let sql = tracked_merge_sql(&tables.tracked)?;
            let mut rows = super::fold::Rows::new();
            rows.add(id, &b.events);
            let mut json = super::LinkArray::default();
            rows.each_links(|key, links| tracked::push_links(key, links, &mut json));
            Some(vec![Statement::new(sql, vec![json.into_bind()])])
        }
        Decoded::CreateUser(u) => {
            let mut json = super::LinkArray::default();
            user::push_links(&super::fold::user_links(&[u]), |o| json.push(o));
            Some(vec![Statement::new(
                user::merge_sql(&tables.user),
                vec![json.into_bind()],
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
        let sql = tracked_merge_sql("\"TRACKED\"").expect("always built");
        assert!(!sql.contains("e.prev <= COALESCE(cur.last_entry_id"));
        assert!(sql.contains("cur.last_entry_id AS last_entry_id"));
        assert!(!sql.contains("e.last_entry_id AS last_entry_id"));
        assert_eq!(sql.matches('?').count(), 1);
    }
}
