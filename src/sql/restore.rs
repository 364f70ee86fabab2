//! The restore's query: Snowflake's recent rows, read back to seed an empty stream
//! ([`crate::pipeline::restore`]).

use super::Tables;
use crate::statement::{Bind, Statement};

const TS: &str = "'YYYY-MM-DD HH24:MI:SS'";

/// Longest window the query accepts, in days (about 270 years): `RESTORE_DAYS` beyond it is clamped,
/// so the literal can never overflow Snowflake's date arithmetic.
pub const MAX_DAYS: u64 = 100_000;

/// The restore query: the TRACKED rows visited or saved in the last `days` (of one `user` when
/// given), with each row's user email, at most `limit` of them, in row order. The window and the cap are literal integers, not binds: Snowflake needs
/// constants in `LIMIT` (a bound row count is refused on some paths: "Invalid row count '?'"), and
/// both are integers the settings have already validated, so no input reaches the text. The window
/// is measured in UTC (`CONVERT_TIMEZONE('UTC', CURRENT_TIMESTAMP())::TIMESTAMP_NTZ`): the `*_dts`
/// columns are UTC wall-clock times without a zone, and comparing them with the session zone's
/// `CURRENT_TIMESTAMP()` would shift the window by the zone's offset.
pub fn query(tables: &Tables, days: u64, user: Option<&str>, limit: u64) -> Statement {
    let user_filter = if user.is_some() {
        " AND t.username = ?"
    } else {
        ""
    };
    let days = days.min(MAX_DAYS);
    let limit = limit.min(i64::MAX as u64);
    let since = format!(
        "DATEADD(day, -{days}, CONVERT_TIMEZONE('UTC', CURRENT_TIMESTAMP())::TIMESTAMP_NTZ)"
    );
    let sql = format!(
        "SELECT t.tracked_id, t.track_id, t.page_name, t.query_row_count, t.track_title, t.track_type, t.track_url, \
         t.visited_count, TO_VARCHAR(t.visited_dts, {TS}) AS visited_at, t.saved, TO_VARCHAR(t.saved_dts, {TS}) AS saved_at, \
         u.user_email \
         FROM {tracked} t \
         LEFT JOIN (SELECT username, MIN(user_email) AS user_email FROM {user} GROUP BY username) u ON u.username = t.username \
         WHERE (t.visited_dts >= {since} OR t.saved_dts >= {since}){user_filter} \
         ORDER BY t.tracked_id, t.track_id \
         LIMIT {limit}",
        tracked = tables.tracked,
        user = tables.user,
    );
    let binds = user.iter().map(|u| Bind::Text(u.to_string())).collect();
    Statement::new(sql, binds)
}
