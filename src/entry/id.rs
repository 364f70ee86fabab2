//! Stream entry IDs, and the fixed-width text that makes them comparable inside Snowflake.
//!
//! Redis prints an entry ID as `<ms>-<seq>`; comparing those as text gets `9-0` > `10-0` wrong.
//! Every TRACKED and USER row remembers the newest entry applied to it in `last_entry_id`, and the
//! batch MERGE compares entries with it as text, so the stored form pads both parts to 20 digits
//! ([`EntryId::sort_key`]): text order is then exactly stream order.

use std::fmt;
use std::str::FromStr;

use super::rules::TsText;

/// A stream entry ID: milliseconds of Redis's clock when the entry was added, and a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

/// Why a text is not an entry ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a stream entry ID (expected <ms>-<seq>)")]
pub struct BadEntryId(pub String);

impl EntryId {
    pub const fn new(ms: u64, seq: u64) -> EntryId {
        EntryId { ms, seq }
    }

    /// Parses Redis's `<ms>-<seq>` (a bare `<ms>` means sequence 0, as Redis itself accepts).
    pub fn parse(text: &str) -> Result<EntryId, BadEntryId> {
        let bad = || BadEntryId(text.chars().take(64).collect());
        let (ms, seq) = match text.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (text, "0"),
        };
        // Decimal digits only, at least one, within 64 bits: what `u64`'s own parsing takes, less
        // the leading `+` it also accepts. One pass, as this runs for every claimed entry.
        let number = |s: &str| match s.as_bytes().first() {
            Some(b'+') => None,
            _ => s.parse::<u64>().ok(),
        };
        match (number(ms), number(seq)) {
            (Some(ms), Some(seq)) => Ok(EntryId { ms, seq }),
            _ => Err(bad()),
        }
    }

    /// Parses an ID given as raw bytes (as Redis replies carry it).
    pub fn parse_bytes(bytes: &[u8]) -> Result<EntryId, BadEntryId> {
        match std::str::from_utf8(bytes) {
            Ok(text) => EntryId::parse(text),
            Err(_) => Err(BadEntryId(
                String::from_utf8_lossy(bytes).chars().take(64).collect(),
            )),
        }
    }

    /// Fixed-width text whose order is stream order: `"<ms:020>-<seq:020>"` (41 characters).
    /// This is the form stored in `last_entry_id`.
    pub fn sort_key(&self) -> String {
        self.sort_text().as_str().to_string()
    }

    /// [`sort_key`](Self::sort_key) without a heap allocation, for the batch JSON.
    pub fn sort_text(&self) -> SortText {
        let mut out = [b'0'; 41];
        out[20] = b'-';
        for (end, mut n) in [(20, self.ms), (41, self.seq)] {
            for d in out[end - 20..end].iter_mut().rev() {
                *d = b'0' + (n % 10) as u8;
                n /= 10;
            }
        }
        SortText(out)
    }

    /// Reads back a [`sort_key`](Self::sort_key).
    pub fn from_sort_key(text: &str) -> Result<EntryId, BadEntryId> {
        let bad = || BadEntryId(text.chars().take(64).collect());
        match text.split_once('-') {
            Some((ms, seq)) if ms.len() == 20 && seq.len() == 20 => EntryId::parse(text),
            _ => Err(bad()),
        }
    }

    /// Seconds since the Unix epoch at which Redis received the entry (its ID's clock part).
    pub fn unix_seconds(&self) -> i64 {
        i64::try_from(self.ms / 1000).unwrap_or(i64::MAX)
    }

    /// The entry's time as UTC `YYYY-MM-DD HH:MM:SS` (what the tables' `*_dts` columns hold).
    pub fn utc_text(&self) -> String {
        self.utc_ts().as_str().to_string()
    }

    /// [`utc_text`](Self::utc_text) without a heap allocation, for the batch JSON.
    pub fn utc_ts(&self) -> TsText {
        let ms = i64::try_from(self.ms).unwrap_or(i64::MAX);
        match chrono::DateTime::from_timestamp_millis(ms) {
            Some(t) => TsText::new(&t.naive_utc()),
            None => TsText::Digits(*b"9999-12-31 23:59:59"),
        }
    }
}

/// An entry's [`sort_key`](EntryId::sort_key) on the stack: 41 ASCII digits and a hyphen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortText([u8; 41]);

impl SortText {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl serde::Serialize for SortText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EntryId {
    type Err = BadEntryId;
    fn from_str(s: &str) -> Result<EntryId, BadEntryId> {
        EntryId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_redis_form() {
        let id = EntryId::parse("1700000000123-7").unwrap();
        assert_eq!(id, EntryId::new(1_700_000_000_123, 7));
        assert_eq!(id.to_string(), "1700000000123-7");
        assert_eq!(EntryId::parse("5").unwrap(), EntryId::new(5, 0));
        assert_eq!(EntryId::parse_bytes(b"0-1").unwrap(), EntryId::new(0, 1));
        assert_eq!(
            EntryId::parse("18446744073709551615-018446744073709551615").unwrap(),
            EntryId::new(u64::MAX, u64::MAX)
        );
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "1-2-3",
            "+1-2",
            " 1-2",
            "99999999999999999999999-0",
            "18446744073709551616-0",
            "0-18446744073709551616",
            "1-2/",
        ] {
            assert!(EntryId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(EntryId::parse_bytes(&[0xff, b'-', b'1']).is_err());
    }

    #[test]
    fn sort_key_text_order_is_stream_order() {
        let ids = [
            EntryId::new(9, 0),
            EntryId::new(9, 10),
            EntryId::new(10, 0),
            EntryId::new(u64::MAX, u64::MAX),
        ];
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].sort_key() < pair[1].sort_key(), "{pair:?}");
        }
        assert_eq!(
            EntryId::new(9, 10).sort_key(),
            "00000000000000000009-00000000000000000010"
        );
        assert_eq!(EntryId::new(u64::MAX, 0).sort_key().len(), 41);
    }

    #[test]
    fn sort_key_round_trips() {
        let id = EntryId::new(1_700_000_000_123, 42);
        assert_eq!(EntryId::from_sort_key(&id.sort_key()).unwrap(), id);
        assert!(EntryId::from_sort_key("1-2").is_err());
    }

    #[test]
    fn entry_time_is_the_ids_clock() {
        let id = EntryId::new(1_762_172_400_999, 0);
        assert_eq!(id.unix_seconds(), 1_762_172_400);
        assert_eq!(id.utc_text(), "2025-11-03 12:20:00");
    }

    #[test]
    fn sort_text_is_the_padded_form() {
        for id in [
            EntryId::new(0, 0),
            EntryId::new(1_762_172_400_000, 7),
            EntryId::new(u64::MAX, u64::MAX),
        ] {
            assert_eq!(
                id.sort_text().as_str(),
                format!("{:020}-{:020}", id.ms, id.seq)
            );
        }
        assert_eq!(EntryId::new(u64::MAX, 0).utc_text(), "9999-12-31 23:59:59");
    }
}
