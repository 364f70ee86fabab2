//! Legacy string keys as stream entries: what `WB.IMPORT` (and the start-up import of
//! `EXTRA_BRIDGE_KEYS`) adds to the stream for each key.
//!
//! The design before streams kept each batch as a JSON string under its own key. Such a value is
//! usually a whole batch (`{"key":...,"records":[...]}`) and is copied as it is. When it is only the
//! records (a list, or one record) and the Redis key's name is itself a batch key
//! (`userdata-events:<id>/visited`), the name supplies the missing `key`, so the imported entry gets the
//! visited/saved logic its key always implied rather than the keyless fallback. The key's name also
//! travels in [`IMPORT_KEY_FIELD`], so a dead-lettered import says where it came from. The entry is
//! then decoded like any other, by [`super::decode()`].

use serde_json::{json, Value};

use super::rules::parse_key;
use super::Rules;

/// The field naming the legacy key an imported entry came from.
pub const IMPORT_KEY_FIELD: &str = "wb_import_key";

/// The fields to `XADD` for one legacy string key.
pub fn import_fields(key_name: &[u8], value: &[u8], rules: &Rules) -> Vec<(Vec<u8>, Vec<u8>)> {
    let payload = wrapped(key_name, value, rules).unwrap_or_else(|| value.to_vec());
    vec![
        (b"value".to_vec(), payload),
        (IMPORT_KEY_FIELD.as_bytes().to_vec(), key_name.to_vec()),
    ]
}

/// `{"key": <key name>, "records": <value>}` when the value is only records and the name is a batch key.
fn wrapped(key_name: &[u8], value: &[u8], rules: &Rules) -> Option<Vec<u8>> {
    let name = std::str::from_utf8(key_name).ok()?;
    parse_key(name, &rules.key_prefix).ok()?;
    let doc: Value = serde_json::from_slice(value).ok()?;
    let records = match doc {
        Value::Array(items) => Value::Array(items),
        Value::Object(obj) if obj.contains_key("id") && !obj.contains_key("key") => {
            Value::Array(vec![Value::Object(obj)])
        }
        _ => return None,
    };
    serde_json::to_vec(&json!({ "key": name, "records": records })).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{decode, Decoded, EntryId, KeyKind, Shape};

    const ID: EntryId = EntryId::new(1_762_172_400_000, 0);
    const REC: &str =
        r#"{"id":"alice-1","track_id":"t1","lastplus":"2025-11-03 12:19:55","action":"s"}"#;

    fn skip_freshness() -> Rules {
        Rules {
            skip_freshness: true,
            ..Rules::default()
        }
    }

    #[test]
    fn a_legacy_batch_value_is_copied_unchanged() {
        let value = format!(r#"{{"key":"userdata-events:alice-1/saved","records":[{REC}]}}"#);
        let fields = import_fields(b"legacy:1", value.as_bytes(), &skip_freshness());
        assert_eq!(fields[0], (b"value".to_vec(), value.as_bytes().to_vec()));
        assert_eq!(fields[1], (b"wb_import_key".to_vec(), b"legacy:1".to_vec()));
        let Decoded::Tracked(b) = decode(ID, &fields, &skip_freshness()) else {
            panic!("not a batch")
        };
        assert_eq!(
            (b.shape, b.kind(), b.events.len()),
            (Shape::Batch, Some(KeyKind::Saved), 1)
        );
    }

    #[test]
    fn a_legacy_record_list_takes_its_key_from_the_key_name() {
        let rules = skip_freshness();
        let fields = import_fields(
            b"userdata-events:alice-1/saved",
            format!("[{REC}]").as_bytes(),
            &rules,
        );
        let Decoded::Tracked(b) = decode(ID, &fields, &rules) else {
            panic!("not a batch")
        };
        assert_eq!(b.shape, Shape::Batch);
        assert_eq!(
            b.key.as_ref().map(|k| k.raw()),
            Some("userdata-events:alice-1/saved")
        );
        assert_eq!(b.events[0].action, crate::entry::Action::Save);
    }

    #[test]
    fn a_legacy_lone_record_under_a_batch_key_is_wrapped() {
        let rules = skip_freshness();
        let fields = import_fields(b"userdata-events:alice-1/saved", REC.as_bytes(), &rules);
        let Decoded::Tracked(b) = decode(ID, &fields, &rules) else {
            panic!("not a batch")
        };
        assert_eq!((b.shape, b.events.len()), (Shape::Batch, 1));
    }

    #[test]
    fn an_unusable_legacy_value_is_imported_as_is_and_dead_lettered_with_its_reason() {
        let rules = Rules::default();
        let fields = import_fields(b"other:key", b"{not json", &rules);
        assert_eq!(fields[0].1, b"{not json");
        let Decoded::Undecodable { reason, .. } = decode(ID, &fields, &rules) else {
            panic!("decoded")
        };
        assert_eq!(reason.code(), "invalid_json");
    }
}
