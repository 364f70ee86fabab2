//! What a change to a mapped hash sets in motion, decided from the key and the hash as the command
//! left it.
//!
//! The capture runs in the command's own execution (a post-notification job, so its writes are part
//! of the command in the AOF and on replicas). Whatever the event — `HSET`, `HDEL`, `HINCRBY`, a field
//! expiring, `DEL`, `UNLINK`, `EXPIRE`, eviction, `RENAME`, `RESTORE`, a `SET` that replaces the hash —
//! it reads the key once and decides from what it finds, so no event kind can be missed or
//! misread: a hash is written as it now is, a key that is gone (or is no longer a hash) deletes its
//! row. The `#` field ([`super::op`]) changes that decision and is removed.
//!
//! Write-through keys (`__{<key>}`) are captured as write-through changes of `<key>`: written to
//! the table first, then renamed to `<key>` on success or deleted on failure. The rename is itself
//! captured as an ordinary change of `<key>`, behind any older change of it, so the row can never
//! end on an older state than the hash.

use super::change::{self, Kind};
use super::op::{self, Op};
use super::{Mapping, Mappings};

/// The field rgsync reserved for control.
pub const CONTROL_FIELD: &[u8] = b"#";

/// The mapped key a notification is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'m> {
    pub mapping: &'m Mapping,
    /// The key the row belongs to (for a write-through key, the key inside `__{…}`).
    pub key: Vec<u8>,
    /// The write-through key `__{<key>}` was written.
    pub through: bool,
}

/// The mapping a key belongs to, directly or as a write-through key.
pub fn target<'m>(mappings: &'m Mappings, key: &[u8]) -> Option<Target<'m>> {
    let (key, through) = match key.strip_prefix(b"__{").and_then(|k| k.strip_suffix(b"}")) {
        Some(inner) => (inner, true),
        None => (key, false),
    };
    mappings.of_key(key).map(|mapping| Target {
        mapping,
        key: key.to_vec(),
        through,
    })
}

/// The write-through key of `key`.
pub fn through_key(key: &[u8]) -> Vec<u8> {
    [b"__{".as_slice(), key, b"}"].concat()
}

/// What the key held when the capture ran.
#[derive(Debug, Clone, Copy)]
pub enum Found<'a> {
    /// No key, or a key of another type (a `SET` replaced the hash).
    Gone,
    Hash(&'a [(Vec<u8>, Vec<u8>)]),
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// What the capture does, in this order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Actions {
    /// `HDEL <key> #`.
    pub remove_control: bool,
    /// `DEL <key>` (`-` and `~`); the deletion is not captured again.
    pub delete_key: bool,
    /// The capture entry to add to the mapping's stream.
    pub capture: Option<Fields>,
    /// An acknowledgement to write now (stream key, fields): nothing is written to the table.
    pub ack_now: Option<(Vec<u8>, Fields)>,
    /// A change that cannot be carried out: dead-lettered with the hash and this reason.
    pub refused: Option<String>,
}

/// Decides what a change to `t` does, from what the key holds now.
pub fn decide(t: &Target<'_>, found: Found<'_>) -> Actions {
    let hash = match found {
        // A write-through key that is gone was renamed or dropped: nothing left to write.
        Found::Gone if t.through => return Actions::default(),
        Found::Gone => return capture(t, Kind::Delete, None, &[]),
        Found::Hash(h) => h,
    };
    let control = hash.iter().find(|(f, _)| f.as_slice() == CONTROL_FIELD);
    let rest: Vec<(&[u8], &[u8])> = hash
        .iter()
        .filter(|(f, _)| f.as_slice() != CONTROL_FIELD)
        .map(|(f, v)| (f.as_slice(), v.as_slice()))
        .collect();
    let Some((_, value)) = control else {
        return capture(t, Kind::Upsert, None, &rest);
    };
    let c = match op::parse(value) {
        Ok(c) => c,
        Err(why) => {
            return Actions {
                remove_control: true,
                refused: Some(why),
                ..Actions::default()
            }
        }
    };
    let ack = c.ack.as_deref();
    let mut actions = match (c.op, t.through) {
        // The hash without '#' may be empty, which Redis drops: then the row goes too.
        (Op::Replicate, _) if rest.is_empty() => capture(t, Kind::Delete, ack, &[]),
        (Op::Replicate, _) => capture(t, Kind::Upsert, ack, &rest),
        (Op::Delete, false) => Actions {
            delete_key: true,
            ..capture(t, Kind::Delete, ack, &[])
        },
        (Op::RedisOnly | Op::DeleteRedisOnly, false) => Actions {
            delete_key: c.op.deletes(),
            ack_now: ack.map(|id| (op::ack_stream(&t.key, id), done())),
            ..Actions::default()
        },
        (_, true) => Actions {
            refused: Some(format!(
                "a write-through key takes '#' with '=' only (got '{}')",
                value.escape_ascii()
            )),
            ..Actions::default()
        },
    };
    actions.remove_control = true;
    actions
}

fn capture(t: &Target<'_>, kind: Kind, ack: Option<&str>, hash: &[(&[u8], &[u8])]) -> Actions {
    Actions {
        capture: Some(change::encode(
            t.mapping, &t.key, kind, ack, t.through, hash,
        )),
        ..Actions::default()
    }
}

/// The fields of a `status done` acknowledgement.
pub fn done() -> Fields {
    vec![(b"status".to_vec(), b"done".to_vec())]
}

/// The fields of a `status failed` acknowledgement.
pub fn failed(error: &str) -> Fields {
    vec![
        (b"status".to_vec(), b"failed".to_vec()),
        (b"error".to_vec(), error.as_bytes().to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::change::decode;

    fn mappings() -> Mappings {
        Mappings::parse(
            "mappings: [{name: persons, key_prefix: 'person:', table: PERSONS, key_column: ID, \
             columns: {first_name: FIRST_NAME, age: AGE}}]",
            "m.yaml",
        )
        .unwrap()
    }

    fn hash(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn captured(m: &Mappings, a: &Actions) -> (Kind, Option<String>, bool, Vec<Option<String>>) {
        let fields = a.capture.as_ref().expect("a capture");
        let c = decode(&m.mappings[0], fields).unwrap();
        let text = |v: &[u8]| String::from_utf8(v.to_vec()).unwrap();
        (
            c.kind,
            c.ack.map(str::to_string),
            c.through,
            c.values.iter().map(|v| v.map(text)).collect(),
        )
    }

    #[test]
    fn keys_are_matched_directly_or_as_write_through_keys() {
        let m = mappings();
        let t = target(&m, b"person:1").unwrap();
        assert_eq!((t.key.as_slice(), t.through), (&b"person:1"[..], false));
        let t = target(&m, b"__{person:1}").unwrap();
        assert_eq!((t.key.as_slice(), t.through), (&b"person:1"[..], true));
        assert_eq!(through_key(b"person:1"), b"__{person:1}");
        assert!(target(&m, b"car:1").is_none());
        assert!(target(&m, b"__{car:1}").is_none());
        assert!(target(&m, b"person:").is_none());
    }

    #[test]
    fn a_hash_is_captured_as_it_is_and_a_gone_key_deletes_its_row() {
        let m = mappings();
        let t = target(&m, b"person:1").unwrap();
        let h = hash(&[("first_name", "James"), ("age", "42"), ("other", "x")]);
        let a = decide(&t, Found::Hash(&h));
        assert!(!a.remove_control && !a.delete_key && a.refused.is_none());
        assert_eq!(
            captured(&m, &a),
            (
                Kind::Upsert,
                None,
                false,
                vec![Some("James".into()), Some("42".into())]
            )
        );
        let a = decide(&t, Found::Gone);
        assert_eq!(captured(&m, &a).0, Kind::Delete);
    }

    #[test]
    fn the_control_field_does_what_rgsync_documents_and_is_removed() {
        let m = mappings();
        let t = target(&m, b"person:007").unwrap();
        let with = |op: &str| hash(&[("first_name", "James"), ("age", "42"), ("#", op)]);

        let a = decide(&t, Found::Hash(&with("=6ce0")));
        assert!(a.remove_control && !a.delete_key);
        let (kind, ack, _, values) = captured(&m, &a);
        assert_eq!((kind, ack.as_deref()), (Kind::Upsert, Some("6ce0")));
        assert_eq!(values, vec![Some("James".into()), Some("42".into())]);

        // '+': Redis only; the acknowledgement is written at once.
        let a = decide(&t, Found::Hash(&with("+u1")));
        assert!(a.remove_control && !a.delete_key && a.capture.is_none());
        assert_eq!(a.ack_now, Some((b"{person:007}u1".to_vec(), done())));

        // '-': deleted in Redis only.
        let a = decide(&t, Found::Hash(&with("-")));
        assert!(a.delete_key && a.capture.is_none() && a.ack_now.is_none());

        // '~': deleted in Redis and in the table.
        let a = decide(&t, Found::Hash(&with("~u2")));
        assert!(a.delete_key);
        assert_eq!(captured(&m, &a).0, Kind::Delete);
        assert_eq!(captured(&m, &a).1.as_deref(), Some("u2"));

        // '=' on a hash holding only '#': Redis drops the empty hash, so the row goes too.
        let a = decide(&t, Found::Hash(&hash(&[("#", "=")])));
        assert_eq!(captured(&m, &a).0, Kind::Delete);
    }

    #[test]
    fn a_bad_control_field_is_removed_and_the_change_refused_with_the_reason() {
        let m = mappings();
        let t = target(&m, b"person:1").unwrap();
        let a = decide(&t, Found::Hash(&hash(&[("age", "1"), ("#", "?x")])));
        assert!(a.remove_control && a.capture.is_none() && !a.delete_key);
        assert!(a.refused.unwrap().contains("must start with"));
    }

    #[test]
    fn write_through_keys_are_captured_for_their_real_key() {
        let m = mappings();
        let t = target(&m, b"__{person:1}").unwrap();
        let h = hash(&[("first_name", "foo"), ("age", "20"), ("#", "=6ce0")]);
        let a = decide(&t, Found::Hash(&h));
        let fields = a.capture.as_ref().unwrap();
        let c = decode(&m.mappings[0], fields).unwrap();
        assert_eq!(
            (c.key, c.through, c.ack),
            (&b"person:1"[..], true, Some("6ce0"))
        );
        // Renamed or deleted afterwards: nothing more to write.
        assert_eq!(decide(&t, Found::Gone), Actions::default());
        assert!(decide(&t, Found::Hash(&hash(&[("age", "1"), ("#", "~")])))
            .refused
            .is_some());
    }
}
