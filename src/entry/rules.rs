//! The seed's rules, one small function each: batch keys, usernames, track-id hashing, track types,
//! timestamps, row counts, actions and freshness.
//!
//! They are the behaviour users of the Python sidecar depend on, so each is kept separate, named after
//! the setting that governs it and pinned by its own tests. [`super::decode`] composes them.

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use md5::{Digest, Md5};
use serde_json::Value;

use super::json::Leaf;
use super::{EntryId, Rules};

/// Which logic a batch key selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `<prefix>:<id>/visited[/<page>]`: every record is a visit.
    Visited,
    /// `<prefix>:<id>/saved`: records are saves or deletes.
    Saved,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Visited => "visited",
            KeyKind::Saved => "saved",
        }
    }
}

/// A parsed batch key: `<KEY_PREFIX>:<id>/visited`, `.../visited/<page>` or `.../saved`. Its
/// segments are read from the key's own text (one copy of it per entry, not one per segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchKey {
    raw: String,
    /// Where the id segment lies in `raw`.
    id: std::ops::Range<usize>,
    pub kind: KeyKind,
    /// Where the page segment starts in `raw`, when there is one (it runs to the end).
    page: Option<usize>,
}

impl BatchKey {
    /// The key as written.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The id segment (by convention the rows' `tracked_id`).
    pub fn id(&self) -> &str {
        self.raw.get(self.id.clone()).unwrap_or_default()
    }

    /// The page segment of restored visited keys (`/visited/<page>`).
    pub fn page(&self) -> Option<&str> {
        self.page.and_then(|start| self.raw.get(start..))
    }
}

/// Why a batch key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("does not start with '{0}:' (KEY_PREFIX)")]
    Prefix(String),
    #[error("has an empty id segment")]
    EmptyId,
    #[error("has no /visited or /saved segment")]
    NoKind,
    #[error("ends in '/{0}', expected /visited, /visited/<page> or /saved")]
    UnknownKind(String),
    #[error("has an empty page segment after /visited/")]
    EmptyPage,
}

/// Parses a batch key. The id is everything up to the first `/` after the prefix; the kind segment
/// is matched case-insensitively; a page may itself contain `/`.
pub fn parse_key(raw: &str, prefix: &str) -> Result<BatchKey, KeyError> {
    let rest = raw
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(':'))
        .ok_or_else(|| KeyError::Prefix(prefix.to_string()))?;
    let (id, path) = rest.split_once('/').ok_or(KeyError::NoKind)?;
    if id.trim().is_empty() {
        return Err(KeyError::EmptyId);
    }
    let (segment, page) = match path.split_once('/') {
        Some((s, p)) => (s, Some(p)),
        None => (path, None),
    };
    let kind = if segment.eq_ignore_ascii_case("visited") {
        KeyKind::Visited
    } else if segment.eq_ignore_ascii_case("saved") && page.is_none() {
        KeyKind::Saved
    } else {
        return Err(KeyError::UnknownKind(path.chars().take(40).collect()));
    };
    if page.is_some_and(str::is_empty) {
        return Err(KeyError::EmptyPage);
    }
    // `rest` and the page are tails of `raw`: their lengths say where they start in it.
    let id_start = raw.len() - rest.len();
    Ok(BatchKey {
        raw: raw.to_string(),
        id: id_start..id_start + id.len(),
        kind,
        page: page.map(|p| raw.len() - p.len()),
    })
}

/// `USERNAME_SPLIT_HYPHEN`: the id cut at its first hyphen (`user.name-abc123` → `user.name`).
/// An id that starts with a hyphen keeps its whole text rather than becoming an empty username.
/// Borrowed from `id`: it is always a prefix of it.
pub fn username(id: &str, split_hyphen: bool) -> &str {
    if split_hyphen {
        if let Some((head, _)) = id.split_once('-') {
            if !head.is_empty() {
                return head;
            }
        }
    }
    id
}

/// The routing key of rows derived from `id`: the id cut at its first hyphen, whatever the live
/// settings say, so a `CONFIG SET` never sends entries of one row to two workers. Under the default
/// rules it equals the username.
pub fn partition_of(id: &str) -> &str {
    username(id, true)
}

/// Why a `user_email` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("user_email is empty")]
    Empty,
    #[error("user_email {0} has no '@'")]
    NoAt(String),
    #[error("user_email {0} has an empty local part")]
    EmptyLocal(String),
}

/// A create-user's username: the e-mail's local part (before the last `@`).
pub fn email_username(email: &str) -> Result<String, EmailError> {
    if email.is_empty() {
        return Err(EmailError::Empty);
    }
    let (local, _domain) = email
        .rsplit_once('@')
        .ok_or_else(|| EmailError::NoAt(shown(email)))?;
    if local.is_empty() {
        return Err(EmailError::EmptyLocal(shown(email)));
    }
    Ok(local.to_string())
}

/// `HASH_NULL_TRACK_ID`: `auto_` + the first 12 hex digits of MD5(`title|url|id`). Stable across
/// runs and machines, so repeated events of one untitled item land on one row.
pub fn hash_track_id(title: &str, url: &str, id: &str) -> String {
    let digest = Md5::digest(format!("{title}|{url}|{id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("auto_{}", hex.get(..12).unwrap_or_default())
}

/// `PRESERVE_TRACK_TYPE_CASE`: track types are upper-cased unless the setting keeps them as sent;
/// whether `raw` is. A type already in upper case is kept as it is. The decoder upper-cases it
/// straight into the event's text ([`super::decode::Texts::upper_casing_track_type`]).
pub fn track_type_upper_cased(raw: &str, preserve_case: bool) -> bool {
    !preserve_case && !raw.bytes().all(|b| b.is_ascii() && !b.is_ascii_lowercase())
}

/// The track type as the rule makes it: what tests compare the decoder's events with.
#[cfg(test)]
pub fn track_type(raw: &str, preserve_case: bool) -> std::borrow::Cow<'_, str> {
    if track_type_upper_cased(raw, preserve_case) {
        std::borrow::Cow::Owned(raw.to_uppercase())
    } else {
        std::borrow::Cow::Borrowed(raw)
    }
}

/// Parses `lastplus`: UTC `YYYY-MM-DD HH:MM:SS` (a `T` separator and a trailing `Z` are accepted).
/// Returns the time, or `None` when it is not such a time. The shape is checked byte by byte and
/// the numbers are read from its digits, without a format parser: this runs once per record. A
/// second of `60` is a leap second, as the general `%S` parser reads it.
pub fn parse_lastplus(raw: &str) -> Option<NaiveDateTime> {
    let text = raw.trim();
    let text = text.strip_suffix('Z').unwrap_or(text);
    let b = text.as_bytes();
    let shape_ok = b.len() == 19
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b' ' || c == b'T',
            13 | 16 => c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    let num = |from: usize, to: usize| -> u32 {
        b.get(from..to)
            .unwrap_or_default()
            .iter()
            .fold(0, |n, d| n * 10 + u32::from(d - b'0'))
    };
    let year = i32::try_from(num(0, 4)).ok()?;
    let date = NaiveDate::from_ymd_opt(year, num(5, 7), num(8, 10))?;
    let (hour, minute, second) = (num(11, 13), num(14, 16), num(17, 19));
    let time = match second {
        60 => NaiveTime::from_hms_nano_opt(hour, minute, 59, 1_000_000_000)?,
        _ => NaiveTime::from_hms_opt(hour, minute, second)?,
    };
    Some(date.and_time(time))
}

/// The text form of a timestamp written to Snowflake.
pub fn ts_text(t: &NaiveDateTime) -> String {
    TsText::new(t).as_str().to_string()
}

/// A timestamp as `YYYY-MM-DD HH:MM:SS` ([`ts_text`]) without a heap allocation or the general
/// formatter: the batch JSON carries up to four per link. Years outside 0–9999 (never a parsed
/// `lastplus`, only an entry ID far in the future) take the general formatter, which signs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TsText {
    Digits([u8; 19]),
    Other(String),
}

impl TsText {
    pub fn new(t: &NaiveDateTime) -> TsText {
        let year = t.year();
        if !(0..=9999).contains(&year) {
            return TsText::Other(t.format("%Y-%m-%d %H:%M:%S").to_string());
        }
        // A leap second is held as second 59 plus a second of nanoseconds; it reads `60`.
        let second = t.second() + t.nanosecond() / 1_000_000_000;
        let mut out = *b"0000-00-00 00:00:00";
        let mut put = |at: usize, width: usize, mut n: u32| {
            for i in (at..at + width).rev() {
                if let Some(d) = out.get_mut(i) {
                    *d = b'0' + (n % 10) as u8;
                }
                n /= 10;
            }
        };
        put(0, 4, year.unsigned_abs());
        put(5, 2, t.month());
        put(8, 2, t.day());
        put(11, 2, t.hour());
        put(14, 2, t.minute());
        put(17, 2, second);
        TsText::Digits(out)
    }

    pub fn as_str(&self) -> &str {
        match self {
            TsText::Digits(d) => std::str::from_utf8(d).unwrap_or_default(),
            TsText::Other(s) => s,
        }
    }
}

impl serde::Serialize for TsText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What a `query_row_count` value turned into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowCount {
    Absent,
    Count(i64),
    /// Not a whole number: stored as NULL, the record is kept, and a note says why.
    Invalid(String),
}

/// `query_row_count` is numeric: a JSON integer, an integral float (`25.0`) or a string holding one
/// (`"25"`). Missing, null or blank is NULL. Anything else (`"abc"`, `2.5`, `true`) is stored as NULL
/// with a note rather than rejecting the record: the count is descriptive, and losing the visit or
/// save it belongs to for it would be worse.
pub fn query_row_count(value: Option<&Value>) -> RowCount {
    let from_f64 = |f: f64| {
        if f.fract() == 0.0 && f.abs() < 9.0e18 {
            Some(f as i64)
        } else {
            None
        }
    };
    let parsed = match value {
        None | Some(Value::Null) => return RowCount::Absent,
        Some(Value::String(s)) => return row_count_text(s),
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().and_then(from_f64)),
        Some(_) => None,
    };
    match (parsed, value) {
        (Some(n), _) => RowCount::Count(n),
        (None, Some(v)) => RowCount::Invalid(shown(&v.to_string())),
        (None, None) => RowCount::Absent,
    }
}

/// [`query_row_count`] of a member as the decoder reads it.
pub fn query_row_count_of(value: Option<&Leaf<'_>>) -> RowCount {
    match value {
        None | Some(Leaf::Null) => RowCount::Absent,
        Some(Leaf::Text(s)) => row_count_text(s),
        Some(Leaf::Other(v)) => query_row_count(Some(v)),
    }
}

/// A `query_row_count` sent as a string.
fn row_count_text(s: &str) -> RowCount {
    let t = s.trim();
    if t.is_empty() {
        return RowCount::Absent;
    }
    let parsed = t.parse::<i64>().ok().or_else(|| {
        t.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(|f| (f.fract() == 0.0 && f.abs() < 9.0e18).then_some(f as i64))
    });
    match parsed {
        Some(n) => RowCount::Count(n),
        None => RowCount::Invalid(shown(s)),
    }
}

/// What a record does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Visit,
    Save,
    Delete,
}

impl Action {
    /// The one-letter code used in the seed's payloads and in the batch JSON.
    pub fn code(self) -> &'static str {
        match self {
            Action::Visit => "v",
            Action::Save => "s",
            Action::Delete => "d",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Visit => "visit",
            Action::Save => "save",
            Action::Delete => "delete",
        }
    }

    /// Saves and deletes both count as "saved" for `PROCESS_STALE_SAVED`.
    pub fn is_saved_kind(self) -> bool {
        matches!(self, Action::Save | Action::Delete)
    }
}

/// Why a record's action was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionError {
    Unknown(String),
    /// A save/delete under `/visited`, or a visit under `/saved`: the key path decides the logic, and
    /// a record that contradicts it is refused rather than silently applied as something else.
    WrongKind {
        action: &'static str,
        kind: KeyKind,
    },
}

/// The record's action. Missing or blank means what the key path says (visit under `/visited`,
/// save under `/saved`); without a key (fallback shapes) it means visit.
pub fn action(raw: Option<&str>, kind: Option<KeyKind>) -> Result<Action, ActionError> {
    let text = raw.map(str::trim).unwrap_or_default();
    let parsed = match text.as_bytes() {
        [] => match kind {
            Some(KeyKind::Saved) => Action::Save,
            _ => Action::Visit,
        },
        [b'v' | b'V'] => Action::Visit,
        [b's' | b'S'] => Action::Save,
        [b'd' | b'D'] => Action::Delete,
        _ => return Err(ActionError::Unknown(shown(text))),
    };
    match (kind, parsed) {
        (Some(KeyKind::Visited), Action::Save | Action::Delete)
        | (Some(KeyKind::Saved), Action::Visit) => Err(ActionError::WrongKind {
            action: parsed.code(),
            kind: kind.unwrap_or(KeyKind::Visited),
        }),
        _ => Ok(parsed),
    }
}

/// Why a record was written although it is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaleOverride {
    /// `PROCESS_STALE_SAVED=1` and the record is a save or a delete.
    Saved,
    /// `ALWAYS_PROCESS_STALE_FIRST=1` and it is the entry's first stale record.
    First,
}

impl StaleOverride {
    pub fn as_str(self) -> &'static str {
        match self {
            StaleOverride::Saved => "PROCESS_STALE_SAVED",
            StaleOverride::First => "ALWAYS_PROCESS_STALE_FIRST",
        }
    }
}

/// The freshness decision for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Stale, written anyway.
    StaleWritten {
        age_secs: i64,
        by: StaleOverride,
    },
    /// Stale and skipped.
    Skip {
        age_secs: i64,
    },
}

/// Applies the freshness window to the records of one entry, in record order.
///
/// A record is stale when its `lastplus` is more than `NEWER_RECORD_TIME_LIMIT_SECONDS` older than
/// the moment Redis received the entry — the entry ID's millisecond clock, not the time it is
/// processed, so a Snowflake outage or a backlog never turns good records stale. `SKIP_FRESHNESS`
/// turns the window off; a stale save or delete is written with `PROCESS_STALE_SAVED`; the first stale
/// record of the entry (whatever its action) is written with `ALWAYS_PROCESS_STALE_FIRST`.
#[derive(Debug)]
pub struct FreshnessGate<'a> {
    rules: &'a Rules,
    received_ms: i128,
    seen_stale: bool,
}

impl<'a> FreshnessGate<'a> {
    pub fn new(rules: &'a Rules, entry: EntryId) -> FreshnessGate<'a> {
        FreshnessGate {
            rules,
            received_ms: i128::from(entry.ms),
            seen_stale: false,
        }
    }

    pub fn decide(&mut self, lastplus: &NaiveDateTime, action: Action) -> Freshness {
        if self.rules.skip_freshness {
            return Freshness::Fresh;
        }
        let event_ms = i128::from(lastplus.and_utc().timestamp_millis());
        let age_ms = self.received_ms - event_ms;
        let limit_ms = i128::from(self.rules.newer_record_time_limit_seconds) * 1000;
        if age_ms <= limit_ms {
            return Freshness::Fresh;
        }
        let age_secs = i64::try_from(age_ms / 1000).unwrap_or(i64::MAX);
        let first = !self.seen_stale;
        self.seen_stale = true;
        if first && self.rules.always_process_stale_first {
            Freshness::StaleWritten {
                age_secs,
                by: StaleOverride::First,
            }
        } else if action.is_saved_kind() && self.rules.process_stale_saved {
            Freshness::StaleWritten {
                age_secs,
                by: StaleOverride::Saved,
            }
        } else {
            Freshness::Skip { age_secs }
        }
    }
}

/// A value shown in a reason: at most 80 characters, control characters escaped, quoted.
pub fn shown(text: &str) -> String {
    let mut s: String = text
        .chars()
        .take(80)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if text.chars().nth(80).is_some() {
        s.push('…');
    }
    format!("'{s}'")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn visited_saved_and_page_keys_parse() {
        let k = parse_key(
            "userdata-events:user.name-abc123/visited",
            "userdata-events",
        )
        .unwrap();
        assert_eq!(
            (k.id(), k.kind, k.page()),
            ("user.name-abc123", KeyKind::Visited, None)
        );
        let k = parse_key("userdata-events:a-1/saved", "userdata-events").unwrap();
        assert_eq!(k.kind, KeyKind::Saved);
        let k = parse_key(
            "userdata-events:a-1/visited/search/advanced",
            "userdata-events",
        )
        .unwrap();
        assert_eq!(k.page(), Some("search/advanced"));
        assert_eq!(k.id(), "a-1");
        assert_eq!(k.raw(), "userdata-events:a-1/visited/search/advanced");
        let k = parse_key("p:a/Visited", "p").unwrap();
        assert_eq!(k.kind, KeyKind::Visited);
    }

    #[test]
    fn malformed_keys_say_what_is_wrong() {
        let p = "userdata-events";
        assert_eq!(
            parse_key("other:a/visited", p),
            Err(KeyError::Prefix(p.into()))
        );
        assert_eq!(parse_key("userdata-events:a", p), Err(KeyError::NoKind));
        assert_eq!(
            parse_key("userdata-events:/visited", p),
            Err(KeyError::EmptyId)
        );
        assert!(matches!(
            parse_key("userdata-events:a/seen", p),
            Err(KeyError::UnknownKind(_))
        ));
        assert!(matches!(
            parse_key("userdata-events:a/saved/x", p),
            Err(KeyError::UnknownKind(_))
        ));
        assert_eq!(
            parse_key("userdata-events:a/visited/", p),
            Err(KeyError::EmptyPage)
        );
        assert!(parse_key("userdata-eventsX:a/visited", p).is_err());
    }

    #[test]
    fn username_is_cut_at_first_hyphen_when_split_hyphen() {
        assert_eq!(username("user.name-abc123-x", true), "user.name");
        assert_eq!(username("user.name-abc123", false), "user.name-abc123");
        assert_eq!(username("alice", true), "alice");
        assert_eq!(username("-abc", true), "-abc");
        assert_eq!(partition_of("alice-1"), "alice");
    }

    #[test]
    fn create_user_username_is_the_local_part() {
        assert_eq!(
            email_username("user.name@example.com").unwrap(),
            "user.name"
        );
        assert_eq!(email_username("\"a@b\"@example.com").unwrap(), "\"a@b\"");
        assert_eq!(email_username(""), Err(EmailError::Empty));
        assert!(matches!(email_username("nobody"), Err(EmailError::NoAt(_))));
        assert!(matches!(
            email_username("@example.com"),
            Err(EmailError::EmptyLocal(_))
        ));
    }

    #[test]
    fn null_track_id_hash_is_stable() {
        // MD5("Sample|/search?q=Sample|alice-1") starts d053f3e2642f (checked with Python hashlib).
        let h = hash_track_id("Sample", "/search?q=Sample", "alice-1");
        assert_eq!(h, hash_track_id("Sample", "/search?q=Sample", "alice-1"));
        assert_eq!(h.len(), "auto_".len() + 12);
        assert_eq!(h, PINNED_SAMPLE_HASH);
        assert_ne!(h, hash_track_id("Sample", "/search?q=Sample", "alice-2"));
        assert_eq!(hash_track_id("", "", ""), "auto_7d010443693e");
    }

    const PINNED_SAMPLE_HASH: &str = "auto_d053f3e2642f";

    #[test]
    fn track_type_is_upper_cased_unless_preserved() {
        assert_eq!(track_type("report", false), "REPORT");
        assert_eq!(track_type("réport", false), "RÉPORT");
        assert_eq!(track_type("report", true), "report");
        assert_eq!(track_type("RÉPORT", false), "RÉPORT");
        assert!(matches!(
            track_type("REPORT_2", false),
            Cow::Borrowed("REPORT_2")
        ));
        // A non-ASCII type always goes through the full mapping (`ß` has no single upper case).
        assert_eq!(track_type("STRAßE", false), "STRASSE");
    }

    #[test]
    fn actions_read_in_either_case() {
        for (text, kind, action) in [
            (" V ", None, Action::Visit),
            ("S", Some(KeyKind::Saved), Action::Save),
            ("D", Some(KeyKind::Saved), Action::Delete),
        ] {
            assert_eq!(super::action(Some(text), kind), Ok(action));
        }
        assert!(matches!(
            super::action(Some("vv"), None),
            Err(ActionError::Unknown(_))
        ));
    }

    #[test]
    fn lastplus_is_utc_seconds() {
        let t = parse_lastplus("2025-11-01 10:20:30").unwrap();
        assert_eq!(ts_text(&t), "2025-11-01 10:20:30");
        assert_eq!(parse_lastplus("2025-11-01T10:20:30Z"), Some(t));
        for bad in [
            "2025-11-01",
            "2025-13-01 10:20:30",
            "2025-02-30 10:20:30",
            "2025-11-01 24:00:00",
            "+2025-11-01 10:20:3",
            "2025-11-01 10:20:30.5",
            "yesterday",
            "２025-11-01 10:20:30",
        ] {
            assert_eq!(parse_lastplus(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_row_count_string_25_is_25_and_text_is_null_with_note() {
        use serde_json::json;
        assert_eq!(query_row_count(Some(&json!("25"))), RowCount::Count(25));
        assert_eq!(query_row_count(Some(&json!(" 25 "))), RowCount::Count(25));
        assert_eq!(query_row_count(Some(&json!(25))), RowCount::Count(25));
        assert_eq!(query_row_count(Some(&json!(25.0))), RowCount::Count(25));
        assert_eq!(query_row_count(Some(&json!("-3"))), RowCount::Count(-3));
        assert_eq!(query_row_count(None), RowCount::Absent);
        assert_eq!(query_row_count(Some(&json!(null))), RowCount::Absent);
        assert_eq!(query_row_count(Some(&json!(""))), RowCount::Absent);
        for bad in [
            json!("abc"),
            json!(2.5),
            json!(true),
            json!("1e400"),
            json!([1]),
        ] {
            assert!(
                matches!(query_row_count(Some(&bad)), RowCount::Invalid(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn action_defaults_from_the_key_and_must_agree_with_it() {
        use KeyKind::*;
        assert_eq!(action(None, Some(Visited)), Ok(Action::Visit));
        assert_eq!(action(Some(""), Some(Saved)), Ok(Action::Save));
        assert_eq!(action(Some("D"), Some(Saved)), Ok(Action::Delete));
        assert_eq!(action(Some("d"), None), Ok(Action::Delete));
        assert_eq!(action(None, None), Ok(Action::Visit));
        assert!(matches!(
            action(Some("s"), Some(Visited)),
            Err(ActionError::WrongKind { .. })
        ));
        assert!(matches!(
            action(Some("v"), Some(Saved)),
            Err(ActionError::WrongKind { .. })
        ));
        assert!(matches!(
            action(Some("x"), None),
            Err(ActionError::Unknown(_))
        ));
    }

    fn t(s: &str) -> NaiveDateTime {
        parse_lastplus(s).unwrap()
    }

    /// The entry was received at 2025-11-01 10:21:00 UTC.
    const RECEIVED: EntryId = EntryId::new(1_761_992_460_000, 0);

    #[test]
    fn freshness_is_measured_from_the_entry_id_time() {
        let rules = Rules::default();
        let mut gate = FreshnessGate::new(&rules, RECEIVED);
        assert_eq!(
            gate.decide(&t("2025-11-01 10:20:30"), Action::Visit),
            Freshness::Fresh
        );
        assert_eq!(
            gate.decide(&t("2025-11-01 10:20:30"), Action::Visit),
            Freshness::Fresh
        );
        assert_eq!(
            gate.decide(&t("2025-11-01 10:22:00"), Action::Visit),
            Freshness::Fresh
        );
        assert_eq!(
            gate.decide(&t("2025-11-01 10:20:29"), Action::Visit),
            Freshness::Skip { age_secs: 31 }
        );
    }

    #[test]
    fn stale_saved_record_is_written_when_process_stale_saved() {
        let rules = Rules::default();
        let mut gate = FreshnessGate::new(&rules, RECEIVED);
        let old = t("2025-10-01 00:00:00");
        assert!(matches!(
            gate.decide(&old, Action::Save),
            Freshness::StaleWritten {
                by: StaleOverride::Saved,
                ..
            }
        ));
        assert!(matches!(
            gate.decide(&old, Action::Delete),
            Freshness::StaleWritten {
                by: StaleOverride::Saved,
                ..
            }
        ));
        assert!(matches!(
            gate.decide(&old, Action::Visit),
            Freshness::Skip { .. }
        ));
        let rules = Rules {
            process_stale_saved: false,
            ..Rules::default()
        };
        let mut gate = FreshnessGate::new(&rules, RECEIVED);
        assert!(matches!(
            gate.decide(&old, Action::Save),
            Freshness::Skip { .. }
        ));
    }

    #[test]
    fn only_the_first_stale_record_is_written_with_always_process_stale_first() {
        let rules = Rules {
            always_process_stale_first: true,
            ..Rules::default()
        };
        let mut gate = FreshnessGate::new(&rules, RECEIVED);
        let old = t("2025-10-01 00:00:00");
        assert_eq!(
            gate.decide(&t("2025-11-01 10:20:59"), Action::Visit),
            Freshness::Fresh
        );
        assert!(matches!(
            gate.decide(&old, Action::Visit),
            Freshness::StaleWritten {
                by: StaleOverride::First,
                ..
            }
        ));
        assert!(matches!(
            gate.decide(&old, Action::Visit),
            Freshness::Skip { .. }
        ));
    }

    #[test]
    fn skip_freshness_writes_everything() {
        let rules = Rules {
            skip_freshness: true,
            ..Rules::default()
        };
        let mut gate = FreshnessGate::new(&rules, RECEIVED);
        assert_eq!(
            gate.decide(&t("2000-01-01 00:00:00"), Action::Visit),
            Freshness::Fresh
        );
    }

    #[test]
    fn shown_values_are_one_short_line() {
        assert_eq!(shown("a\nb"), "'a\\nb'");
        assert_eq!(shown(&"x".repeat(100)).chars().count(), 83);
    }

    /// The general parser the digit reader replaces, kept as its reference.
    fn parse_lastplus_with_chrono(raw: &str) -> Option<NaiveDateTime> {
        let text = raw.trim();
        let text = text.strip_suffix('Z').unwrap_or(text);
        let b = text.as_bytes();
        let shape_ok = b.len() == 19
            && b.iter().enumerate().all(|(i, &c)| match i {
                4 | 7 => c == b'-',
                10 => c == b' ' || c == b'T',
                13 | 16 => c == b':',
                _ => c.is_ascii_digit(),
            });
        if !shape_ok {
            return None;
        }
        let normal = format!("{} {}", text.get(..10)?, text.get(11..)?);
        NaiveDateTime::parse_from_str(&normal, "%Y-%m-%d %H:%M:%S").ok()
    }

    #[test]
    fn lastplus_digits_read_as_the_general_parser_reads_them() {
        let mut checked = 0;
        for date in [
            "2025-11-01",
            "2024-02-29",
            "2025-02-29",
            "1900-02-29",
            "2000-02-29",
            "0000-01-01",
            "9999-12-31",
            "2025-00-10",
            "2025-04-31",
            "2025-12-00",
        ] {
            for time in [
                "00:00:00", "23:59:59", "23:59:60", "10:20:60", "24:00:00", "10:60:00", "10:20:61",
                "99:99:99",
            ] {
                for sep in [" ", "T"] {
                    let text = format!("{date}{sep}{time}");
                    let ours = parse_lastplus(&text);
                    if text.bytes().all(|c| c.is_ascii()) {
                        assert_eq!(ours, parse_lastplus_with_chrono(&text), "{text}");
                    }
                    if let Some(t) = ours {
                        assert_eq!(ts_text(&t), t.format("%Y-%m-%d %H:%M:%S").to_string());
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(
            checked,
            5 * 4 * 2,
            "five valid dates, four valid times, two separators"
        );
        assert_eq!(ts_text(&t("2025-11-01 10:20:60")), "2025-11-01 10:20:60");
    }

    #[test]
    fn timestamps_outside_four_digit_years_keep_the_general_form() {
        for ms in [
            0_i64,
            253_402_300_799_000,
            253_402_300_800_000,
            -62_167_219_201_000,
        ] {
            let t = chrono::DateTime::from_timestamp_millis(ms)
                .map(|t| t.naive_utc())
                .unwrap_or_default();
            assert_eq!(
                TsText::new(&t).as_str(),
                t.format("%Y-%m-%d %H:%M:%S").to_string()
            );
        }
    }
}
