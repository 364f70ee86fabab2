//! The USER upsert: one `MERGE` for all create-user entries of a batch.
//!
//! Built like the TRACKED upsert (see [`super::tracked`] for the reasoning): the entries of each
//! user are folded in Rust into one link per suffix ([`super::fold::user_links`]), sent as one JSON
//! bind expanded with `LATERAL FLATTEN`; a `LEFT JOIN` to the current rows keeps the one link with
//! `prev <= last_entry_id < entry`, so a replayed entry changes nothing and each user has one source
//! row. The username is the newest entry's. `created_dts` is the time Redis received the entry that
//! created the row and `updated_dts` that of the newest entry (their IDs' clock): the same on every
//! replay, and independent of how long the entries waited for Snowflake.

use serde::Serialize;

use super::fold::UserLink;
use super::tracked::{Source, TS_FORMAT};
use crate::entry::id::SortText;
use crate::entry::rules::TsText;

/// One user link in the batch JSON, with the one-letter names of TRACKED links
/// ([`super::tracked`]): `m` the user's email, `u` username, `e`/`p`/`l` the entries, `c` the
/// creation time, `a` the time of the change.
#[derive(Debug, Serialize)]
struct UserJson<'a> {
    #[serde(rename = "m")]
    user_email: &'a str,
    #[serde(rename = "u")]
    username: &'a str,
    #[serde(rename = "e")]
    entry: SortText,
    #[serde(rename = "p", skip_serializing_if = "Option::is_none")]
    prev: Option<SortText>,
    #[serde(rename = "l", skip_serializing_if = "Option::is_none")]
    last: Option<SortText>,
    #[serde(rename = "c")]
    created: TsText,
    #[serde(rename = "a")]
    at: TsText,
}

/// Bytes of a user link's JSON besides its two strings, as an upper bound; a unit test pins it.
pub const LINK_FIXED_BYTES: usize = 260;

/// Hands each user link, as a JSON object, to `emit` (`prev` and `last` left out as in TRACKED).
pub fn push_links(links: &[UserLink<'_>], mut emit: impl FnMut(&str)) {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    for l in links {
        let j = UserJson {
            user_email: l.email,
            username: l.username,
            entry: l.entry.sort_text(),
            prev: l.prev.map(|p| p.sort_text()),
            last: (l.last != l.entry).then(|| l.last.sort_text()),
            created: l.entry.utc_ts(),
            at: l.last.utc_ts(),
        };
        buf.clear();
        if serde_json::to_writer(&mut buf, &j).is_ok() {
            if let Ok(text) = std::str::from_utf8(&buf) {
                emit(text);
            }
        }
    }
}

/// The MERGE for a quoted table name. One `?`: the JSON array of links.
pub fn merge_sql(table: &str) -> String {
    merge_sql_from(table, Source::Bound)
}

/// The one builder of the USER MERGE, reading the bound JSON or a staging table.
pub fn merge_sql_from(table: &str, source: Source<'_>) -> String {
    let from = source.from_clause();
    format!(
        "MERGE INTO {table} t USING (\
SELECT e.user_email, e.username, e.last_entry_id, e.created_dts, e.updated_dts \
FROM (\
SELECT f.value:m::VARCHAR AS user_email, \
f.value:u::VARCHAR AS username, \
f.value:e::VARCHAR AS entry, \
COALESCE(f.value:p::VARCHAR, '') AS prev, \
COALESCE(f.value:l::VARCHAR, f.value:e::VARCHAR) AS last_entry_id, \
TO_TIMESTAMP_NTZ(f.value:c::VARCHAR, '{TS_FORMAT}') AS created_dts, \
TO_TIMESTAMP_NTZ(f.value:a::VARCHAR, '{TS_FORMAT}') AS updated_dts \
{from}\
) e \
LEFT JOIN {table} cur ON cur.user_email = e.user_email \
WHERE e.entry > COALESCE(cur.last_entry_id, '') AND e.prev <= COALESCE(cur.last_entry_id, '')\
) s \
ON t.user_email = s.user_email \
WHEN MATCHED THEN UPDATE SET username = s.username, updated_dts = s.updated_dts, \
last_entry_id = s.last_entry_id \
WHEN NOT MATCHED THEN INSERT (user_email, username, created_dts, updated_dts, last_entry_id) \
VALUES (s.user_email, s.username, s.created_dts, s.updated_dts, s.last_entry_id)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{CreateUser, EntryId};
    use crate::sql::fold::user_links;

    fn user(ms: u64, email: &str) -> CreateUser {
        CreateUser {
            id: EntryId::new(ms, 0),
            email: email.into(),
            username: email.split('@').next().unwrap_or_default().into(),
            repair: None,
        }
    }

    #[test]
    fn user_links_carry_email_username_entries_and_times() {
        let a = user(1_762_172_400_000, "o'brien@example.com");
        let b = user(1_762_172_401_000, "o'brien@example.com");
        let mut out = Vec::new();
        push_links(&user_links(&[&b, &a]), |o| {
            out.push(serde_json::from_str::<serde_json::Value>(o).unwrap())
        });
        let v = serde_json::Value::Array(out);
        assert_eq!(v.as_array().map(Vec::len), Some(2));
        assert_eq!(v[0]["m"], "o'brien@example.com");
        assert_eq!(v[0]["u"], "o'brien");
        assert_eq!(v[0]["e"], a.id.sort_key());
        assert!(v[0].get("p").is_none());
        assert_eq!(v[1]["p"], a.id.sort_key());
        assert_eq!(v[0]["l"], b.id.sort_key());
        assert!(v[1].get("l").is_none());
        assert_eq!(v[0]["c"], "2025-11-03 12:20:00");
        assert_eq!(v[0]["a"], "2025-11-03 12:20:01");
        for link in v.as_array().unwrap() {
            let strings = 2 * "o'brien@example.com".len();
            assert!(link.to_string().len() + 4 <= LINK_FIXED_BYTES + strings);
        }
    }

    #[test]
    fn user_merge_has_one_bind_and_selects_the_unapplied_suffix() {
        let sql = merge_sql("\"USER\"");
        assert_eq!(sql.matches('?').count(), 1);
        assert!(sql.contains("e.entry > COALESCE(cur.last_entry_id, '')"));
        assert!(!sql.contains("GROUP BY") && !sql.contains("MAX("));
        assert!(sql.contains(&format!("f.value:a::VARCHAR, '{TS_FORMAT}')")));
    }
}
