//! From a stream entry's fields to what should happen in Snowflake: the pure core of the writer.
//!
//! Nothing here touches Redis or the network, so every rule of the seed (the Python sidecar users
//! depend on) is pinned by unit tests and the decoder is fuzzed. The pipeline calls [`decode`] for
//! each claimed entry, routes it by [`Decoded::row_keys`], and hands the decoded entries of a
//! batch to [`crate::sql`] to become statements.
//!
//! # Layout
//! - [`id`]: entry IDs and their sortable text, the basis of effectively-once writes.
//! - [`fields`]: which field holds the payload (`value`, then `FALLBACK_JSON_FIELDS`).
//! - [`repair`]: `AUTO_QUOTE_LASTPLUS` and `LENIENT_JSON_REPAIR`.
//! - [`json`]: the payload read into only the members the decoder needs, its strings borrowed.
//! - [`decode`](mod@decode): the payload shapes (create-user, batch, diagnostic, fallbacks) and records.
//! - [`rules`]: keys, usernames, track-id hashing, track types, timestamps, actions, freshness.
//! - [`legacy`]: the stream fields for a legacy string key being imported.

pub mod decode;
pub mod fields;
pub mod id;
pub mod json;
pub mod legacy;
pub mod repair;
pub mod rules;

use std::collections::BTreeMap;
use std::fmt;

use crate::settings::{Key, Snapshot};

pub use decode::{
    decode, CreateUser, DecodeError, Event, Note, RejectReason, Rejected, Shape, SkipReason,
    Skipped, Strings, Texts, TrackedBatch,
};
pub use fields::Field;
pub use id::EntryId;
pub use repair::Repair;
pub use rules::{Action, BatchKey, KeyKind, StaleOverride};

/// The field our own restore adds to the entries it writes; such entries are never written back.
pub const RESTORED_FIELD: &str = "wb_restored";

/// The settings the decoder reads, as a plain struct so tests build it directly.
/// [`Rules::default`] is the seed's defaults; [`Rules::from_settings`] reads the live settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// `FALLBACK_JSON_FIELDS`: fields inspected after `value`.
    pub fallback_json_fields: Vec<String>,
    /// `KEY_PREFIX`.
    pub key_prefix: String,
    /// `AUTO_QUOTE_LASTPLUS`.
    pub auto_quote_lastplus: bool,
    /// `LENIENT_JSON_REPAIR`.
    pub lenient_json_repair: bool,
    /// `MAX_JSON_REPAIR_APPEND`.
    pub max_json_repair_append: usize,
    /// `ENABLE_FALLBACK_RECORD_LIST`.
    pub enable_fallback_record_list: bool,
    /// `ENABLE_FALLBACK_SINGLE_RECORD`.
    pub enable_fallback_single_record: bool,
    /// `HASH_NULL_TRACK_ID`.
    pub hash_null_track_id: bool,
    /// `PRESERVE_TRACK_TYPE_CASE`.
    pub preserve_track_type_case: bool,
    /// `USERNAME_SPLIT_HYPHEN`.
    pub username_split_hyphen: bool,
    /// `USERNAME_USE_RECORD_ID`.
    pub username_use_record_id: bool,
    /// `NEWER_RECORD_TIME_LIMIT_SECONDS`.
    pub newer_record_time_limit_seconds: u64,
    /// `PROCESS_STALE_SAVED`.
    pub process_stale_saved: bool,
    /// `ALWAYS_PROCESS_STALE_FIRST`.
    pub always_process_stale_first: bool,
    /// `SKIP_FRESHNESS`.
    pub skip_freshness: bool,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            fallback_json_fields: vec!["value".into(), "payload".into(), "data".into()],
            key_prefix: "userdata-events".into(),
            auto_quote_lastplus: false,
            lenient_json_repair: false,
            max_json_repair_append: 10,
            enable_fallback_record_list: true,
            enable_fallback_single_record: true,
            hash_null_track_id: false,
            preserve_track_type_case: false,
            username_split_hyphen: true,
            username_use_record_id: false,
            newer_record_time_limit_seconds: 30,
            process_stale_saved: true,
            always_process_stale_first: false,
            skip_freshness: false,
        }
    }
}

impl Rules {
    pub fn from_settings(s: &Snapshot) -> Rules {
        Rules {
            fallback_json_fields: s.list(Key::FallbackJsonFields).to_vec(),
            key_prefix: s.str(Key::KeyPrefix).to_string(),
            auto_quote_lastplus: s.bool(Key::AutoQuoteLastplus),
            lenient_json_repair: s.bool(Key::LenientJsonRepair),
            max_json_repair_append: usize::try_from(s.uint(Key::MaxJsonRepairAppend))
                .unwrap_or(usize::MAX),
            enable_fallback_record_list: s.bool(Key::EnableFallbackRecordList),
            enable_fallback_single_record: s.bool(Key::EnableFallbackSingleRecord),
            hash_null_track_id: s.bool(Key::HashNullTrackId),
            preserve_track_type_case: s.bool(Key::PreserveTrackTypeCase),
            username_split_hyphen: s.bool(Key::UsernameSplitHyphen),
            username_use_record_id: s.bool(Key::UsernameUseRecordId),
            newer_record_time_limit_seconds: s.uint(Key::NewerRecordTimeLimitSeconds),
            process_stale_saved: s.bool(Key::ProcessStaleSaved),
            always_process_stale_first: s.bool(Key::AlwaysProcessStaleFirst),
            skip_freshness: s.bool(Key::SkipFreshness),
        }
    }
}

/// What one stream entry is.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// `{"user_email": ...}`: upsert a USER row.
    CreateUser(CreateUser),
    /// A batch of tracked records (or a fallback shape of one): upserts of TRACKED rows.
    Tracked(TrackedBatch),
    /// `{"diag": ...}`: acknowledged and counted, never written.
    Diagnostic { id: EntryId, diag: String },
    /// An entry our own restore wrote (it carries [`RESTORED_FIELD`]): acknowledged, never written back.
    Restored { id: EntryId },
    /// Not usable: dead-lettered (or acknowledged with `ACK_INVALID_JSON=1`) with this reason.
    Undecodable { id: EntryId, reason: DecodeError },
}

impl Decoded {
    pub fn id(&self) -> EntryId {
        match self {
            Decoded::CreateUser(u) => u.id,
            Decoded::Tracked(b) => b.id,
            Decoded::Diagnostic { id, .. }
            | Decoded::Restored { id }
            | Decoded::Undecodable { id, .. } => *id,
        }
    }

    /// Who the entry is about, for log lines: for tracked batches the key's id segment (or the first
    /// record's id, for fallback shapes) cut at the first hyphen; for a create-user the e-mail's
    /// local part; `""` for entries that write nothing. Routing does not use it — an entry's key may
    /// name another user than its records — but [`Decoded::row_keys`].
    pub fn partition_key(&self) -> &str {
        match self {
            Decoded::CreateUser(u) => &u.username,
            Decoded::Tracked(b) => b.partition(),
            _ => "",
        }
    }

    /// The row keys the entry writes, for routing: the distinct record `id`s of its events (a
    /// TRACKED row is identified by its record's `id` and `track_id`, whatever the entry's key
    /// says), or a create-user's e-mail. Empty for entries that write nothing. The pipeline sends
    /// every entry touching one row key to one worker, so the rows are updated in stream order.
    pub fn row_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::with_capacity(1);
        for k in self.row_keys_each() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys
    }

    /// [`Decoded::row_keys`] one by one, repeats included, without collecting them (the claimer
    /// routes every entry by them).
    pub fn row_keys_each(&self) -> impl Iterator<Item = &str> {
        let (user, events) = match self {
            Decoded::CreateUser(u) => (Some(u.email.as_str()), &[][..]),
            Decoded::Tracked(b) => (None, b.events.as_slice()),
            _ => (None, &[][..]),
        };
        user.into_iter()
            .chain(events.iter().map(|e| e.tracked_id()))
    }

    /// Whether the entry goes to the dead-letter stream.
    pub fn is_undecodable(&self) -> bool {
        matches!(self, Decoded::Undecodable { .. })
    }

    /// A short word for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Decoded::CreateUser(_) => "create_user",
            Decoded::Tracked(_) => "tracked",
            Decoded::Diagnostic { .. } => "diagnostic",
            Decoded::Restored { .. } => "restored",
            Decoded::Undecodable { .. } => "undecodable",
        }
    }

    /// What became of the entry's records, for the pipeline's per-entry log line and counters.
    pub fn outcome(&self) -> Outcome {
        let mut o = Outcome {
            kind: self.kind(),
            ..Outcome::default()
        };
        match self {
            Decoded::CreateUser(u) => {
                o.written = 1;
                o.repaired = u.repair.is_some();
            }
            Decoded::Tracked(b) => {
                o.written = b.events.len();
                o.skipped = b.skipped.len();
                o.rejected = b.rejected.len();
                o.repaired = b.repair.is_some();
            }
            _ => {}
        }
        o
    }

    /// Adds this entry to running counters.
    pub fn tally(&self, t: &mut Tally) {
        t.entries += 1;
        *t.by_kind.entry(self.kind()).or_default() += 1;
        match self {
            Decoded::CreateUser(u) => {
                t.users += 1;
                t.repaired += u64::from(u.repair.is_some());
            }
            Decoded::Tracked(b) => {
                t.repaired += u64::from(b.repair.is_some());
                t.records_written += b.events.len() as u64;
                for e in &b.events {
                    if let Some(by) = e.stale_override {
                        *t.stale_written.entry(by.as_str()).or_default() += 1;
                    }
                    t.track_ids_hashed += u64::from(e.track_id_generated);
                }
                for s in &b.skipped {
                    *t.skipped.entry(s.reason.code()).or_default() += 1;
                }
                for r in &b.rejected {
                    *t.rejected.entry(r.reason.code()).or_default() += 1;
                }
                for n in &b.notes {
                    *t.notes.entry(n.code()).or_default() += 1;
                }
            }
            Decoded::Undecodable { reason, .. } => {
                *t.undecodable.entry(reason.code()).or_default() += 1;
            }
            Decoded::Diagnostic { .. } | Decoded::Restored { .. } => {}
        }
    }
}

/// What became of one entry's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub kind: &'static str,
    /// Records sent to Snowflake (a record already applied by an earlier delivery changes nothing).
    pub written: usize,
    pub skipped: usize,
    pub rejected: usize,
    pub repaired: bool,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} written={} skipped={} rejected={}{}",
            self.kind,
            self.written,
            self.skipped,
            self.rejected,
            if self.repaired { " repaired" } else { "" }
        )
    }
}

/// Running counters over decoded entries, keyed by stable reason codes (for `WB.STATUS`/`INFO`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub entries: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
    pub users: u64,
    pub records_written: u64,
    pub repaired: u64,
    pub track_ids_hashed: u64,
    /// Stale records written anyway, by the setting that let them through.
    pub stale_written: BTreeMap<&'static str, u64>,
    pub skipped: BTreeMap<&'static str, u64>,
    pub rejected: BTreeMap<&'static str, u64>,
    pub notes: BTreeMap<&'static str, u64>,
    pub undecodable: BTreeMap<&'static str, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_routed_by_its_records_ids_or_its_users_email() {
        let rules = Rules {
            skip_freshness: true,
            ..Rules::default()
        };
        let decode = |json: &str| {
            decode(
                EntryId::new(1, 0),
                &[(b"value".to_vec(), json.as_bytes().to_vec())],
                &rules,
            )
        };
        let batch = decode(
            r#"{"key":"userdata-events:bob-1/visited","records":[
                {"id":"bob-1","track_id":"a","lastplus":"2025-11-03 12:00:00"},
                {"id":"amy-2","track_id":"b","lastplus":"2025-11-03 12:00:00"},
                {"id":"bob-1","track_id":"c","lastplus":"2025-11-03 12:00:00"}]}"#,
        );
        assert_eq!(batch.row_keys(), ["bob-1", "amy-2"]);
        assert_eq!(
            batch.row_keys_each().collect::<Vec<_>>(),
            ["bob-1", "amy-2", "bob-1"]
        );
        let user = decode(r#"{"user_email":"amy@example.com"}"#);
        assert_eq!(
            user.row_keys_each().collect::<Vec<_>>(),
            ["amy@example.com"]
        );
        assert_eq!(decode(r#"{"diag":"ping"}"#).row_keys_each().count(), 0);
    }

    #[test]
    fn rules_default_is_the_seed_defaults_and_matches_the_settings_table() {
        assert_eq!(
            Rules::from_settings(&Snapshot::defaults()),
            Rules::default()
        );
    }

    #[test]
    fn rules_follow_the_settings() {
        let s = Snapshot::defaults()
            .with(Key::SkipFreshness, crate::settings::Value::Bool(true))
            .with(
                Key::NewerRecordTimeLimitSeconds,
                crate::settings::Value::Int(90),
            );
        let r = Rules::from_settings(&s);
        assert!(r.skip_freshness);
        assert_eq!(r.newer_record_time_limit_seconds, 90);
    }
}
