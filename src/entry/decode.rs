//! The payload shapes of a stream entry, and the records of a batch turned into events.
//!
//! Shapes, tried in this order on the selected JSON document:
//! - `{"key": "<prefix>:<id>/visited|saved", "records": [...]}`: a batch; the key path decides the logic;
//! - `{"user_email": ...}`: create a user;
//! - `{"diag": ...}`: a diagnostic, acknowledged and counted, never written;
//! - `{"id": ...}` alone: one record (`ENABLE_FALLBACK_SINGLE_RECORD`);
//! - `[{...}, ...]`: a list of records (`ENABLE_FALLBACK_RECORD_LIST`).
//!
//! Without a key (the fallback shapes) each record's `action` decides, and the username comes from
//! the record id. Anything else is undecodable, with a reason a person can act on.
//!
//! Within a batch, a bad record never sinks the others: it is *rejected* with its reason (bad or
//! missing `lastplus`, no `id`, an action that contradicts the key), a stale one is *skipped* with its
//! reason, and the rest become [`Event`]s. Every record ends up in exactly one of the three lists.

use chrono::NaiveDateTime;
use serde_json::{Map, Value};

use std::borrow::Cow;

use super::fields::{self, Field, FieldError, Payload};
use super::json::{Item, Leaf, Name, Obj, Records, Top};
use super::repair::Repair;
use super::rules::{
    self, Action, ActionError, BatchKey, EmailError, Freshness, FreshnessGate, KeyError, KeyKind,
    RowCount, StaleOverride,
};
use super::{Decoded, EntryId, Rules, RESTORED_FIELD};

/// Which shape a tracked batch arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Batch,
    RecordList,
    SingleRecord,
}

/// A create-user entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateUser {
    pub id: EntryId,
    pub email: String,
    /// The e-mail's local part.
    pub username: String,
    pub repair: Option<Repair>,
}

/// A tracked batch: the key, and each record as an event, a rejection or a skip.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedBatch {
    pub id: EntryId,
    pub shape: Shape,
    /// The batch key (absent for the fallback shapes).
    pub key: Option<BatchKey>,
    /// The first record's id, for the fallback shapes (which have no key): the batch's username
    /// and partition come from it instead of the key's id.
    fallback_id: Option<String>,
    /// `USERNAME_SPLIT_HYPHEN` as it was when the batch was decoded.
    username_split_hyphen: bool,
    pub events: Vec<Event>,
    pub rejected: Vec<Rejected>,
    pub skipped: Vec<Skipped>,
    pub notes: Vec<Note>,
    pub repair: Option<Repair>,
}

impl TrackedBatch {
    /// The key's id, or the first record's id for the fallback shapes. The batch's username and
    /// partition are cut from it (no copy of their own per entry).
    fn name_source(&self) -> &str {
        self.key
            .as_ref()
            .map(|k| k.id())
            .or(self.fallback_id.as_deref())
            .unwrap_or_default()
    }

    /// The username of the batch: from the key's id (the first record's id for fallback shapes).
    pub fn username(&self) -> &str {
        rules::username(self.name_source(), self.username_split_hyphen)
    }

    /// Who the entry is about, for logs; see [`Decoded::partition_key`].
    pub fn partition(&self) -> &str {
        rules::partition_of(self.name_source())
    }

    /// The key's kind, when the batch has a key.
    pub fn kind(&self) -> Option<KeyKind> {
        self.key.as_ref().map(|k| k.kind)
    }
}

/// One record that will be applied to its TRACKED row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position of the record in the entry (0-based); with the entry ID it orders events.
    pub index: usize,
    pub action: Action,
    /// `track_id` was blank and `HASH_NULL_TRACK_ID` generated it (for `LOG_TRACKED_HASH_GEN`).
    pub track_id_generated: bool,
    pub lastplus: NaiveDateTime,
    pub query_row_count: Option<i64>,
    /// Set when the record is stale and was written anyway.
    pub stale_override: Option<StaleOverride>,
    /// The row key, the username and the row's text columns ([`Strings`]).
    pub texts: Texts,
}

/// An event's strings, borrowed: what [`Texts`] holds, and how one is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Strings<'a> {
    /// The row key: `tracked_id` (record `id`) and `track_id`.
    pub tracked_id: &'a str,
    pub track_id: &'a str,
    pub username: &'a str,
    pub page_name: Option<&'a str>,
    pub title: Option<&'a str>,
    pub track_type: Option<&'a str>,
    pub url: Option<&'a str>,
}

/// Where each string of [`Strings`] sits in [`Texts`], in order.
const TRACKED_ID: usize = 0;
const TRACK_ID: usize = 1;
const USERNAME: usize = 2;
const PAGE_NAME: usize = 3;
const TITLE: usize = 4;
const TRACK_TYPE: usize = 5;
const URL: usize = 6;

/// An event's seven strings in one allocation, back to back: decoding makes (and the worker frees)
/// one block per record instead of one per string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Texts {
    text: String,
    /// Where each string ends in `text`, in [`Strings`]' order.
    ends: [usize; 7],
    /// Bit `i` set: the `i`-th string is absent (only the optional four can be).
    absent: u8,
}

impl Texts {
    pub fn new(s: &Strings<'_>) -> Texts {
        Texts::upper_casing_track_type(s, false)
    }

    /// With `upper`, the track type is upper-cased on its way in
    /// ([`rules::track_type_upper_cased`]), without a copy of its own.
    pub fn upper_casing_track_type(s: &Strings<'_>, upper: bool) -> Texts {
        let parts = [
            Some(s.tracked_id),
            Some(s.track_id),
            Some(s.username),
            s.page_name,
            s.title,
            s.track_type,
            s.url,
        ];
        let mut texts = Texts {
            text: String::with_capacity(parts.iter().flatten().map(|p| p.len()).sum()),
            ends: [0; 7],
            absent: 0,
        };
        for (i, part) in parts.into_iter().enumerate() {
            match part {
                Some(p) if upper && i == TRACK_TYPE => {
                    texts.text.extend(p.chars().flat_map(char::to_uppercase))
                }
                Some(p) => texts.text.push_str(p),
                None => texts.absent |= 1 << i,
            }
            if let Some(end) = texts.ends.get_mut(i) {
                *end = texts.text.len();
            }
        }
        texts
    }

    fn part(&self, i: usize) -> Option<&str> {
        if self.absent & (1 << i) != 0 {
            return None;
        }
        let start = match i.checked_sub(1) {
            Some(before) => self.ends.get(before).copied().unwrap_or_default(),
            None => 0,
        };
        let end = self.ends.get(i).copied().unwrap_or_default();
        self.text.get(start..end)
    }

    fn given(&self, i: usize) -> &str {
        self.part(i).unwrap_or_default()
    }

    pub fn strings(&self) -> Strings<'_> {
        Strings {
            tracked_id: self.given(TRACKED_ID),
            track_id: self.given(TRACK_ID),
            username: self.given(USERNAME),
            page_name: self.part(PAGE_NAME),
            title: self.part(TITLE),
            track_type: self.part(TRACK_TYPE),
            url: self.part(URL),
        }
    }
}

/// The strings of [`Strings::default`]: the optional ones absent.
impl Default for Texts {
    fn default() -> Texts {
        Texts::new(&Strings::default())
    }
}

impl Event {
    pub fn tracked_id(&self) -> &str {
        self.texts.given(TRACKED_ID)
    }
    pub fn track_id(&self) -> &str {
        self.texts.given(TRACK_ID)
    }
    pub fn username(&self) -> &str {
        self.texts.given(USERNAME)
    }
    pub fn page_name(&self) -> Option<&str> {
        self.texts.part(PAGE_NAME)
    }
    pub fn title(&self) -> Option<&str> {
        self.texts.part(TITLE)
    }
    pub fn track_type(&self) -> Option<&str> {
        self.texts.part(TRACK_TYPE)
    }
    pub fn url(&self) -> Option<&str> {
        self.texts.part(URL)
    }
    pub fn strings(&self) -> Strings<'_> {
        self.texts.strings()
    }

    /// The data of a `RECORD_EXEC` log line (identifiers and times only, never titles or URLs).
    pub fn record_exec(&self, entry: EntryId) -> String {
        let mut line = format!(
            "RECORD_EXEC entry={entry} index={} action={} tracked_id={} track_id={} username={} lastplus={}",
            self.index,
            self.action.as_str(),
            rules::shown(self.tracked_id()),
            rules::shown(self.track_id()),
            rules::shown(self.username()),
            rules::ts_text(&self.lastplus),
        );
        if self.track_id_generated {
            line.push_str(" track_id_hashed=1");
        }
        if let Some(by) = self.stale_override {
            line.push_str(&format!(" stale_written_by={}", by.as_str()));
        }
        line
    }
}

/// A record that was refused; the rest of its batch is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub index: usize,
    pub record_id: Option<String>,
    pub reason: RejectReason,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("record is {0}, not a JSON object")]
    NotAnObject(&'static str),
    #[error("record has no id")]
    MissingId,
    #[error("record has no lastplus")]
    MissingLastplus,
    #[error("lastplus {0} is not UTC YYYY-MM-DD HH:MM:SS")]
    BadLastplus(String),
    #[error("action {0} is not v, s or d")]
    UnknownAction(String),
    #[error("action '{action}' does not belong under a /{} key", kind.as_str())]
    WrongKindAction { action: &'static str, kind: KeyKind },
    #[error("record was cut off by truncation (LENIENT_JSON_REPAIR dropped it)")]
    CutOff,
}

impl RejectReason {
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::NotAnObject(_) => "not_an_object",
            RejectReason::MissingId => "missing_id",
            RejectReason::MissingLastplus => "missing_lastplus",
            RejectReason::BadLastplus(_) => "bad_lastplus",
            RejectReason::UnknownAction(_) => "unknown_action",
            RejectReason::WrongKindAction { .. } => "wrong_kind_action",
            RejectReason::CutOff => "cut_off",
        }
    }
}

/// A record that was skipped on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub index: usize,
    pub record_id: String,
    pub reason: SkipReason,
}

/// Why a record was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error(
        "stale {}: lastplus is {age_secs} s older than the entry (NEWER_RECORD_TIME_LIMIT_SECONDS={limit_secs}){}",
        action.as_str(),
        if action.is_saved_kind() { "; PROCESS_STALE_SAVED=1 writes stale saves and deletes" } else { "" }
    )]
    Stale {
        action: Action,
        age_secs: i64,
        limit_secs: u64,
    },
}

impl SkipReason {
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::Stale {
                action: Action::Visit,
                ..
            } => "stale_visit",
            SkipReason::Stale {
                action: Action::Save,
                ..
            } => "stale_save",
            SkipReason::Stale {
                action: Action::Delete,
                ..
            } => "stale_delete",
        }
    }
}

/// Something about a written record worth a log line and a counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Note {
    #[error("record {index}: query_row_count {value} is not a whole number; stored as NULL")]
    QueryRowCountNotNumeric { index: usize, value: String },
}

impl Note {
    pub fn code(&self) -> &'static str {
        match self {
            Note::QueryRowCountNotNumeric { .. } => "query_row_count_not_numeric",
        }
    }
}

/// Why an entry cannot be used at all; its `Display` is the dead-letter `reason` (one line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error("batch has 'records' but no 'key' (a batch is {{\"key\":\"<prefix>:<id>/visited\",\"records\":[...]}})")]
    MissingKey,
    #[error("batch 'key' must be a string, found {0}")]
    KeyNotText(&'static str),
    #[error("batch key {key} {why}")]
    BadKey { key: String, why: KeyError },
    #[error("batch has a 'key' but no 'records' list")]
    MissingRecords,
    #[error("batch 'records' must be a list, found {0}")]
    RecordsNotAList(&'static str),
    #[error("user_email must be a string, found {0}")]
    EmailNotText(&'static str),
    #[error("{0}")]
    BadEmail(EmailError),
    #[error("not a tracked record: a lone JSON object needs an 'id' (or is a batch with key and records, a user_email or a diag); it has {keys}")]
    NotARecord { keys: String },
    #[error("a lone record was cut off by truncation; its missing fields cannot be guessed")]
    TruncatedRecord,
    #[error("{what} is turned off ({setting}=0)")]
    FallbackDisabled {
        what: &'static str,
        setting: &'static str,
    },
    #[error("an empty JSON list holds no records")]
    EmptyList,
    #[error("a list of records must hold only objects; element {index} is {found}")]
    ListNotRecords { index: usize, found: &'static str },
    #[error("a JSON list with no tracked record: no element has an 'id'")]
    NoRecordInList,
    #[error("the decoder failed on this entry (an internal error, logged with the entry ID); kept here instead of being retried forever")]
    DecoderFailed,
    #[error("entry too large: its records bind {bytes} bytes, more than one statement may carry ({max} bytes: BATCH_MAX_BYTES or 1 MiB); split it into smaller entries and replay them")]
    TooLarge { bytes: usize, max: usize },
    #[error("row id '{row}' belongs to shard stream {home}, not this one: with STREAM_SHARDS the shard of an entry is CRC-32 of its row id (the key's id, or the user_email) modulo the number of shards; replay it there")]
    WrongShard { row: String, home: String },
}

impl DecodeError {
    /// A short stable code for counters.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Field(e) => e.code(),
            DecodeError::MissingKey => "missing_key",
            DecodeError::KeyNotText(_) | DecodeError::BadKey { .. } => "bad_key",
            DecodeError::MissingRecords | DecodeError::RecordsNotAList(_) => "bad_records",
            DecodeError::EmailNotText(_) | DecodeError::BadEmail(_) => "bad_email",
            DecodeError::NotARecord { .. } => "not_a_record",
            DecodeError::TruncatedRecord => "truncated_record",
            DecodeError::FallbackDisabled { .. } => "fallback_disabled",
            DecodeError::EmptyList | DecodeError::ListNotRecords { .. } => "bad_list",
            DecodeError::NoRecordInList => "no_record_in_list",
            DecodeError::DecoderFailed => "decoder_failed",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::WrongShard { .. } => "wrong_shard",
        }
    }
}

/// Decodes one stream entry. Never panics, whatever the bytes.
///
/// The payload is read straight into the members the rules need ([`super::json`]), its strings
/// borrowed from `fields`; a payload that needed a repair is read from its repaired text.
pub fn decode<F: Field>(id: EntryId, fields: &[F], rules: &Rules) -> Decoded {
    if fields.iter().any(|f| f.name() == RESTORED_FIELD.as_bytes()) {
        return Decoded::Restored { id };
    }
    let result = match fields::select_payload(fields, rules) {
        Ok((Payload::Read { text, doc }, repair)) => {
            decode_top(id, doc, repair, rules, &|| keys_of(text))
        }
        Ok((Payload::Repaired(text), repair)) => match serde_json::from_str::<Top>(&text) {
            Ok(doc) => decode_top(id, doc, repair, rules, &|| keys_of(&text)),
            // `select_payload` read this very text already.
            Err(e) => Err(DecodeError::Field(FieldError::InvalidJson {
                field: "value".into(),
                detail: e.to_string(),
                hint: String::new(),
            })),
        },
        Err(e) => Err(e.into()),
    };
    result.unwrap_or_else(|reason| Decoded::Undecodable { id, reason })
}

/// Decodes an already-parsed payload (the same rules as [`decode`], read from a `Value`).
pub fn decode_document(
    id: EntryId,
    doc: Value,
    repair: Option<Repair>,
    rules: &Rules,
) -> Result<Decoded, DecodeError> {
    let keys = || match &doc {
        Value::Object(obj) => key_list(obj),
        _ => String::new(),
    };
    decode_top(id, Top::from_value(&doc), repair, rules, &keys)
}

/// The member names of an object payload, for the reason of one that is no known shape. Only that
/// reason needs them, so they are read again from the text then.
fn keys_of(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => key_list(&obj),
        _ => String::new(),
    }
}

/// The shapes, tried in order on a payload; `keys` lists an object's members for a reason.
fn decode_top(
    id: EntryId,
    doc: Top<'_>,
    repair: Option<Repair>,
    rules: &Rules,
    keys: &dyn Fn() -> String,
) -> Result<Decoded, DecodeError> {
    let root_closed = repair.as_ref().is_some_and(|r| r.closed_root_object);
    match doc {
        Top::Object(obj) => {
            if obj.has(Name::Key) || obj.records.is_some() {
                return batch(id, obj, repair, rules).map(Decoded::Tracked);
            }
            if let Some(email) = obj.get(Name::UserEmail) {
                let email = match email {
                    Leaf::Text(s) => s.trim().to_string(),
                    other => return Err(DecodeError::EmailNotText(other.type_name())),
                };
                let username = rules::email_username(&email).map_err(DecodeError::BadEmail)?;
                return Ok(Decoded::CreateUser(CreateUser {
                    id,
                    email,
                    username,
                    repair,
                }));
            }
            if let Some(diag) = obj.get(Name::Diag) {
                let diag = diag.text().unwrap_or_else(|| "null".to_string());
                return Ok(Decoded::Diagnostic { id, diag });
            }
            if !obj.has(Name::Id) {
                return Err(DecodeError::NotARecord { keys: keys() });
            }
            if !rules.enable_fallback_single_record {
                return Err(DecodeError::FallbackDisabled {
                    what: "a lone record without a batch key",
                    setting: "ENABLE_FALLBACK_SINGLE_RECORD",
                });
            }
            if root_closed {
                return Err(DecodeError::TruncatedRecord);
            }
            Ok(Decoded::Tracked(records_batch(
                id,
                Shape::SingleRecord,
                None,
                vec![Item::Object(obj)],
                repair,
                rules,
            )))
        }
        Top::List(items) => {
            if !rules.enable_fallback_record_list {
                return Err(DecodeError::FallbackDisabled {
                    what: "a list of records without a batch key",
                    setting: "ENABLE_FALLBACK_RECORD_LIST",
                });
            }
            let cut_off = repair.as_ref().is_some_and(|r| r.dropped_partial_record);
            if items.is_empty() && !cut_off {
                return Err(DecodeError::EmptyList);
            }
            let not_object = items.iter().enumerate().find_map(|(index, v)| match v {
                Item::NotObject(found) => Some((index, *found)),
                Item::Object(_) => None,
            });
            if let Some((index, found)) = not_object {
                return Err(DecodeError::ListNotRecords { index, found });
            }
            if !cut_off && !items.iter().any(|v| v.id().is_some()) {
                return Err(DecodeError::NoRecordInList);
            }
            Ok(Decoded::Tracked(records_batch(
                id,
                Shape::RecordList,
                None,
                items,
                repair,
                rules,
            )))
        }
        // `fields::select_payload` only returns objects and lists.
        Top::Scalar(found) => Err(DecodeError::Field(FieldError::NotADocument {
            field: "value".into(),
            found,
        })),
    }
}

fn batch(
    id: EntryId,
    mut obj: Obj<'_>,
    repair: Option<Repair>,
    rules: &Rules,
) -> Result<TrackedBatch, DecodeError> {
    let raw_key = match obj.get(Name::Key) {
        None => return Err(DecodeError::MissingKey),
        Some(Leaf::Text(s)) => s,
        Some(other) => return Err(DecodeError::KeyNotText(other.type_name())),
    };
    let key = rules::parse_key(raw_key, &rules.key_prefix).map_err(|why| DecodeError::BadKey {
        key: rules::shown(raw_key),
        why,
    })?;
    let records = match obj.records.take() {
        None => return Err(DecodeError::MissingRecords),
        Some(Records::List(items)) => items,
        Some(Records::NotList(found)) => return Err(DecodeError::RecordsNotAList(found)),
    };
    Ok(records_batch(
        id,
        Shape::Batch,
        Some(key),
        records,
        repair,
        rules,
    ))
}

fn records_batch(
    id: EntryId,
    shape: Shape,
    key: Option<BatchKey>,
    records: Vec<Item<'_>>,
    repair: Option<Repair>,
    rules: &Rules,
) -> TrackedBatch {
    let fallback_id = match key {
        Some(_) => None,
        None => records.iter().find_map(Item::id).and_then(Leaf::text),
    };
    let count = records.len();
    let mut batch = TrackedBatch {
        id,
        shape,
        fallback_id,
        username_split_hyphen: rules.username_split_hyphen,
        key,
        events: Vec::with_capacity(records.len()),
        rejected: Vec::new(),
        skipped: Vec::new(),
        notes: Vec::new(),
        repair,
    };
    let mut gate = FreshnessGate::new(rules, id);
    for (index, record) in records.into_iter().enumerate() {
        record_into(&mut batch, &mut gate, index, record, rules);
    }
    if batch
        .repair
        .as_ref()
        .is_some_and(|r| r.dropped_partial_record)
    {
        batch.rejected.push(Rejected {
            index: count,
            record_id: None,
            reason: RejectReason::CutOff,
        });
    }
    batch
}

fn record_into(
    batch: &mut TrackedBatch,
    gate: &mut FreshnessGate<'_>,
    index: usize,
    record: Item<'_>,
    rules: &Rules,
) {
    let reject = |batch: &mut TrackedBatch, record_id: Option<&str>, reason| {
        batch.rejected.push(Rejected {
            index,
            record_id: record_id.map(String::from),
            reason,
        })
    };
    let obj = match record {
        Item::Object(obj) => obj,
        Item::NotObject(found) => {
            reject(batch, None, RejectReason::NotAnObject(found));
            return;
        }
    };
    // Strings stay borrowed from the payload until the event copies them into its one buffer.
    let field = |name: Name| obj.get(name).and_then(Leaf::as_text);
    let Some(tracked_id) = field(Name::Id).filter(|s| !s.trim().is_empty()) else {
        reject(batch, None, RejectReason::MissingId);
        return;
    };
    let kind = batch.key.as_ref().map(|k| k.kind);
    let action = match rules::action(field(Name::Action).as_deref(), kind) {
        Ok(a) => a,
        Err(ActionError::Unknown(a)) => {
            reject(batch, Some(&tracked_id), RejectReason::UnknownAction(a));
            return;
        }
        Err(ActionError::WrongKind { action, kind }) => {
            reject(
                batch,
                Some(&tracked_id),
                RejectReason::WrongKindAction { action, kind },
            );
            return;
        }
    };
    let lastplus = match obj.get(Name::Lastplus) {
        None | Some(Leaf::Null) => {
            reject(batch, Some(&tracked_id), RejectReason::MissingLastplus);
            return;
        }
        Some(Leaf::Text(s)) => match rules::parse_lastplus(s) {
            Some(t) => t,
            None => {
                reject(
                    batch,
                    Some(&tracked_id),
                    RejectReason::BadLastplus(rules::shown(s)),
                );
                return;
            }
        },
        Some(Leaf::Other(other)) => {
            let shown = rules::shown(&other.to_string());
            reject(batch, Some(&tracked_id), RejectReason::BadLastplus(shown));
            return;
        }
    };
    let stale_override = match gate.decide(&lastplus, action) {
        Freshness::Fresh => None,
        Freshness::StaleWritten { by, .. } => Some(by),
        Freshness::Skip { age_secs } => {
            batch.skipped.push(Skipped {
                index,
                record_id: tracked_id.into_owned(),
                reason: SkipReason::Stale {
                    action,
                    age_secs,
                    limit_secs: rules.newer_record_time_limit_seconds,
                },
            });
            return;
        }
    };

    let title = field(Name::TrackTitle);
    let url = field(Name::TrackUrl);
    let given_track_id = field(Name::TrackId).filter(|s| !s.trim().is_empty());
    let (track_id, track_id_generated) = match given_track_id {
        Some(t) => (t, false),
        None if rules.hash_null_track_id => (
            Cow::Owned(rules::hash_track_id(
                title.as_deref().unwrap_or_default(),
                url.as_deref().unwrap_or_default(),
                &tracked_id,
            )),
            true,
        ),
        None => (Cow::Borrowed(""), false),
    };
    let query_row_count = match rules::query_row_count_of(obj.get(Name::QueryRowCount)) {
        RowCount::Absent => None,
        RowCount::Count(n) => Some(n),
        RowCount::Invalid(value) => {
            batch
                .notes
                .push(Note::QueryRowCountNotNumeric { index, value });
            None
        }
    };
    let username = match &batch.key {
        Some(_) if !rules.username_use_record_id => batch.username(),
        _ => rules::username(&tracked_id, rules.username_split_hyphen),
    };
    let page_name = field(Name::PageName)
        .or_else(|| batch.key.as_ref().and_then(|k| k.page()).map(Cow::Borrowed));
    let track_type = field(Name::TrackType);
    let upper = track_type
        .as_deref()
        .is_some_and(|t| rules::track_type_upper_cased(t, rules.preserve_track_type_case));
    let strings = Strings {
        tracked_id: &tracked_id,
        track_id: &track_id,
        username,
        page_name: page_name.as_deref(),
        title: title.as_deref(),
        track_type: track_type.as_deref(),
        url: url.as_deref(),
    };
    let texts = Texts::upper_casing_track_type(&strings, upper);
    batch.events.push(Event {
        index,
        action,
        track_id_generated,
        lastplus,
        query_row_count,
        stale_override,
        texts,
    });
}

fn key_list(obj: &Map<String, Value>) -> String {
    if obj.is_empty() {
        return "no keys".to_string();
    }
    let mut keys: Vec<String> = obj.keys().take(8).map(|k| rules::shown(k)).collect();
    if obj.len() > 8 {
        keys.push(format!("and {} more", obj.len() - 8));
    }
    format!("keys {}", keys.join(", "))
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
