//! The reads the module runs beside its writes: the session check of `WB.PING`, the newest entry
//! applied (the housekeeping's ID-regression check) and the read-back of a written row
//! (`VERIFY_WRITES`).

use super::Tables;
use crate::statement::{Bind, Statement};

/// The session context `WB.PING` reports: user, role, warehouse, database, schema, in that order.
pub const SESSION_CONTEXT: &str =
    "SELECT CURRENT_USER(), CURRENT_ROLE(), CURRENT_WAREHOUSE(), CURRENT_DATABASE(), CURRENT_SCHEMA()";

/// The newest entry ID any TRACKED row has applied (one row, one column; NULL on an empty table).
pub fn newest_applied(tables: &Tables) -> Statement {
    Statement::new(
        format!("SELECT MAX(last_entry_id) FROM {}", tables.tracked),
        vec![],
    )
}

/// One TRACKED row as written, for the log (identifiers and counts only).
pub fn written_row(tables: &Tables, tracked_id: &str, track_id: &str) -> Statement {
    Statement::new(
        format!(
            "SELECT tracked_id, track_id, saved, visited_count, visited_dts, deleted_dts FROM {} WHERE tracked_id = ? AND track_id = ?",
            tables.tracked
        ),
        vec![
            Bind::Text(tracked_id.to_string()),
            Bind::Text(track_id.to_string()),
        ],
    )
}
