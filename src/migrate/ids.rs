//! Deterministic entry IDs for legacy string keys (the reasoning is in [`super`], "Entry IDs").
//!
//! A legacy batch never had a stream entry ID, yet effectively-once needs one that is the same every
//! time the same batch is loaded. The ID is `<newest record time in ms>-<64 bits of MD5(key, value)>`:
//! - the clock part dates the batch by its newest record (the batch cannot have been written before
//!   it) — the time freshness is judged against, and the `updated_dts` the rows get;
//! - the sequence part tells apart batches written in the same second and makes the ID a function of
//!   the key's name and content only, not of the dump, the run or the order keys come out of a scan.

use md5::{Digest, Md5};

use crate::entry::{decode, Decoded, EntryId, Rules};

/// The ID of the legacy key `key_name` holding `value`, whose stream fields are `fields`
/// (from [`crate::entry::legacy::import_fields`]). `fallback_ms` dates a batch with no record time
/// (e.g. a create-user): the dump's creation time.
pub fn legacy_id(
    key_name: &[u8],
    value: &[u8],
    fields: &[(Vec<u8>, Vec<u8>)],
    rules: &Rules,
    fallback_ms: u64,
) -> EntryId {
    let ms = newest_record_ms(fields, rules).unwrap_or(fallback_ms);
    EntryId::new(ms, content_hash(key_name, value))
}

/// The newest `lastplus` of the batch's records, in Unix milliseconds. Decoded with freshness off,
/// since the clock it would be judged against is what is being computed.
fn newest_record_ms(fields: &[(Vec<u8>, Vec<u8>)], rules: &Rules) -> Option<u64> {
    let probe = Rules {
        skip_freshness: true,
        ..rules.clone()
    };
    let Decoded::Tracked(batch) = decode(EntryId::default(), fields, &probe) else {
        return None;
    };
    let newest = batch.events.iter().map(|e| e.lastplus).max()?;
    u64::try_from(newest.and_utc().timestamp_millis()).ok()
}

/// The first 64 bits of MD5 over the key name, a NUL, and the value.
fn content_hash(key_name: &[u8], value: &[u8]) -> u64 {
    let mut h = Md5::new();
    h.update(key_name);
    h.update([0u8]);
    h.update(value);
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::legacy::import_fields;

    const KEY: &[u8] = b"userdata-events:alice-1/visited";

    fn records(times: &[&str]) -> Vec<u8> {
        let recs: Vec<String> = times
            .iter()
            .map(|t| format!(r#"{{"id":"alice-1","track_id":"t","lastplus":"{t}","action":"v"}}"#))
            .collect();
        format!("[{}]", recs.join(",")).into_bytes()
    }

    fn id_of(key: &[u8], value: &[u8]) -> EntryId {
        let rules = Rules::default();
        legacy_id(
            key,
            value,
            &import_fields(key, value, &rules),
            &rules,
            1_000,
        )
    }

    #[test]
    fn the_clock_part_is_the_newest_record_time() {
        let id = id_of(
            KEY,
            &records(&["2025-11-03 12:00:00", "2025-11-03 12:19:55"]),
        );
        assert_eq!(id.ms, 1_762_172_395_000);
        assert_eq!(id.utc_text(), "2025-11-03 12:19:55");
    }

    #[test]
    fn the_same_key_and_value_always_get_the_same_id() {
        let v = records(&["2025-11-03 12:00:00"]);
        assert_eq!(id_of(KEY, &v), id_of(KEY, &v));
        assert_ne!(id_of(KEY, &v), id_of(b"userdata-events:alice-1/saved", &v));
        let changed = records(&["2025-11-03 12:00:00", "2025-11-03 12:00:00"]);
        assert_ne!(id_of(KEY, &v), id_of(KEY, &changed));
    }

    #[test]
    fn a_batch_without_record_times_takes_the_fallback() {
        assert_eq!(
            id_of(b"legacy:u1", br#"{"user_email":"a@example.com"}"#).ms,
            1_000
        );
        assert_eq!(id_of(b"legacy:bad", b"{not json").ms, 1_000);
    }
}
