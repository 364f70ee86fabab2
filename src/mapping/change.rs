//! One captured change of a mapped hash, as it is kept in the mapping's capture stream.
//!
//! The capture runs in the command's own execution and copies the hash's mapped fields as they are
//! right after the command (rgsync did the same): the stream entry is the snapshot to write, so a
//! replay writes the same row again, and a later change of the key always follows it in the stream.
//!
//! | field | value |
//! |---|---|
//! | `key` | the hash's key |
//! | `op` | `upsert` or `delete` |
//! | `ack` | the acknowledgement id of a `#` field, if any |
//! | `through` | `1` for a write-through change (key `__{<key>}`), else absent |
//! | `f:<field>` | each mapped field the hash has, with its value |
//!
//! Fields of the hash that no column maps are not copied.

use super::Mapping;

/// What a change does to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Upsert,
    Delete,
}

/// A decoded capture entry, borrowing the entry's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<'a> {
    pub key: &'a [u8],
    /// The key without the mapping's prefix.
    pub row_id: &'a [u8],
    pub kind: Kind,
    pub ack: Option<&'a str>,
    pub through: bool,
    /// The value of each mapped field, in the mapping's column order; `None` where the hash has none.
    pub values: Vec<Option<&'a [u8]>>,
}

const FIELD_PREFIX: &[u8] = b"f:";

/// The fields of the capture entry of a change to `key` (`hash`: the hash's fields, any order).
pub fn encode(
    mapping: &Mapping,
    key: &[u8],
    kind: Kind,
    ack: Option<&str>,
    through: bool,
    hash: &[(&[u8], &[u8])],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"key".to_vec(), key.to_vec()),
        (
            b"op".to_vec(),
            match kind {
                Kind::Upsert => b"upsert".to_vec(),
                Kind::Delete => b"delete".to_vec(),
            },
        ),
    ];
    if let Some(ack) = ack {
        fields.push((b"ack".to_vec(), ack.as_bytes().to_vec()));
    }
    if through {
        fields.push((b"through".to_vec(), b"1".to_vec()));
    }
    if kind == Kind::Upsert {
        for (field, value) in hash {
            if mapping.column_of(field).is_some() {
                let mut name = FIELD_PREFIX.to_vec();
                name.extend_from_slice(field);
                fields.push((name, value.to_vec()));
            }
        }
    }
    fields
}

/// Reads a capture entry back; `Err` names what is wrong with an entry nobody but the module should
/// have written.
pub fn decode<'a>(
    mapping: &Mapping,
    fields: &'a [(Vec<u8>, Vec<u8>)],
) -> Result<Change<'a>, String> {
    let mut key = None;
    let mut kind = None;
    let mut ack = None;
    let mut through = false;
    let mut values = vec![None; mapping.columns.len()];
    for (name, value) in fields {
        match name.as_slice() {
            b"key" => key = Some(value.as_slice()),
            b"op" => {
                kind = Some(match value.as_slice() {
                    b"upsert" => Kind::Upsert,
                    b"delete" => Kind::Delete,
                    _ => return Err(format!("unknown op '{}'", value.escape_ascii())),
                })
            }
            b"ack" => {
                ack = Some(
                    std::str::from_utf8(value).map_err(|_| "the ack id is not text".to_string())?,
                )
            }
            b"through" => through = value.as_slice() == b"1",
            other => {
                if let Some(field) = other.strip_prefix(FIELD_PREFIX) {
                    // A field no longer mapped (the file changed since) is left out.
                    if let Some(i) = mapping.column_of(field) {
                        values[i] = Some(value.as_slice());
                    }
                } else {
                    return Err(format!("unknown field '{}'", other.escape_ascii()));
                }
            }
        }
    }
    let key = key.ok_or("no 'key' field")?;
    let row_id = mapping.row_id(key).ok_or_else(|| {
        format!(
            "key '{}' is not under the mapping's prefix '{}'",
            key.escape_ascii(),
            mapping.key_prefix
        )
    })?;
    Ok(Change {
        key,
        row_id,
        kind: kind.ok_or("no 'op' field")?,
        ack,
        through,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persons() -> Mapping {
        crate::mapping::Mappings::parse(
            "mappings: [{name: persons, key_prefix: 'person:', table: PERSONS, key_column: ID, \
             columns: {first_name: FIRST_NAME, age: AGE}}]",
            "m.yaml",
        )
        .unwrap()
        .mappings
        .remove(0)
    }

    #[test]
    fn a_captured_change_reads_back_as_it_was_written() {
        let m = persons();
        let hash: [(&[u8], &[u8]); 3] =
            [(b"age", b"42"), (b"nick", b"jb"), (b"first_name", b"James")];
        let fields = encode(&m, b"person:007", Kind::Upsert, Some("u-1"), false, &hash);
        // Unmapped fields are not copied.
        assert!(!fields.iter().any(|(n, _)| n == b"f:nick"));
        let c = decode(&m, &fields).unwrap();
        assert_eq!(c.key, b"person:007");
        assert_eq!(c.kind, Kind::Upsert);
        assert_eq!(c.ack, Some("u-1"));
        assert_eq!(c.values, vec![Some(&b"James"[..]), Some(&b"42"[..])]);

        let fields = encode(&m, b"person:007", Kind::Delete, None, true, &hash);
        let c = decode(&m, &fields).unwrap();
        assert_eq!(
            (c.kind, c.through, c.values),
            (Kind::Delete, true, vec![None, None])
        );
    }

    #[test]
    fn entries_the_module_did_not_write_are_refused() {
        let m = persons();
        let f = |pairs: &[(&str, &str)]| -> Vec<(Vec<u8>, Vec<u8>)> {
            pairs
                .iter()
                .map(|(a, b)| (a.as_bytes().to_vec(), b.as_bytes().to_vec()))
                .collect()
        };
        assert!(decode(&m, &f(&[("op", "upsert")])).is_err());
        assert!(decode(&m, &f(&[("key", "person:1")])).is_err());
        assert!(decode(&m, &f(&[("key", "car:1"), ("op", "upsert")])).is_err());
        assert!(decode(&m, &f(&[("key", "person:1"), ("op", "merge")])).is_err());
        assert!(decode(
            &m,
            &f(&[("key", "person:1"), ("op", "upsert"), ("age", "1")])
        )
        .is_err());
        assert!(decode(
            &m,
            &f(&[("key", "person:1"), ("op", "upsert"), ("f:gone", "1")])
        )
        .is_ok());
    }
}
