//! The USER upsert: one `MERGE` for all create-user entries of a batch.
//!
//! Built like the TRACKED upsert (see [`super::tracked`] for the reasoning): one JSON bind expanded
//! with `LATERAL FLATTEN`, entries at or below the row's `last_entry_id` dropped inside the statement,
//! one source row per `user_email` (the latest entry's username), so a replayed entry changes nothing.
//! `created_dts` and `updated_dts` are the time Redis received the entry (its ID's clock): the same on
//! every replay, and independent of how long the entry waited for Snowflake.

use serde::Serialize;

use crate::entry::{CreateUser, EntryId};

#[derive(Debug, Serialize)]
struct UserJson<'a> {
    user_email: &'a str,
    username: &'a str,
    entry: &'a str,
    at: &'a str,
}

/// One create-user as a JSON object, ready to join a batch array.
pub fn user_json(entry: EntryId, user: &CreateUser) -> String {
    let sort_key = entry.sort_key();
    let at = entry.utc_text();
    let j = UserJson {
        user_email: &user.email,
        username: &user.username,
        entry: &sort_key,
        at: &at,
    };
    serde_json::to_string(&j).unwrap_or_else(|_| "{}".to_string())
}

/// The MERGE for a quoted table name. One `?`: the JSON array.
pub fn merge_sql(table: &str) -> String {
    let o = crate::entry::EntryId::default().sort_key().len() + 1;
    format!(
        "MERGE INTO {table} t USING (\
SELECT g.user_email, SUBSTR(g.username_o, {o}) AS username, g.last_entry_id, \
TO_TIMESTAMP_NTZ(g.at_ts, 'YYYY-MM-DD HH24:MI:SS') AS at_dts \
FROM (\
SELECT e.user_email, MAX(e.entry || e.username) AS username_o, MAX(e.entry) AS last_entry_id, \
MAX(e.at_ts) AS at_ts \
FROM (\
SELECT f.value:user_email::VARCHAR AS user_email, \
f.value:username::VARCHAR AS username, \
f.value:entry::VARCHAR AS entry, \
f.value:at::VARCHAR AS at_ts \
FROM (SELECT PARSE_JSON(?) AS j) b, LATERAL FLATTEN(input => b.j) f\
) e \
WHERE NOT EXISTS (SELECT 1 FROM {table} cur \
WHERE cur.user_email = e.user_email AND cur.last_entry_id >= e.entry) \
GROUP BY e.user_email\
) g\
) s \
ON t.user_email = s.user_email \
WHEN MATCHED THEN UPDATE SET username = s.username, updated_dts = s.at_dts, \
last_entry_id = s.last_entry_id \
WHEN NOT MATCHED THEN INSERT (user_email, username, created_dts, updated_dts, last_entry_id) \
VALUES (s.user_email, s.username, s.at_dts, s.at_dts, s.last_entry_id)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_json_carries_email_username_and_entry() {
        let entry = EntryId::new(1_762_172_400_000, 0);
        let u = CreateUser {
            id: entry,
            email: "o'brien@example.com".into(),
            username: "o'brien".into(),
            repair: None,
        };
        let v: serde_json::Value = serde_json::from_str(&user_json(entry, &u)).unwrap();
        assert_eq!(v["user_email"], "o'brien@example.com");
        assert_eq!(v["username"], "o'brien");
        assert_eq!(v["entry"], entry.sort_key());
        assert_eq!(v["at"], "2025-11-03 12:20:00");
    }

    #[test]
    fn user_merge_has_one_bind_and_filters_applied_entries() {
        let sql = merge_sql("\"USER\"");
        assert_eq!(sql.matches('?').count(), 1);
        assert!(sql.contains("SUBSTR(g.username_o, 42)"));
        assert!(sql.contains("cur.last_entry_id >= e.entry"));
    }
}
