//! Which field of a stream entry holds the payload, and turning its bytes into a JSON document.
//!
//! Applications put the JSON in `value`; older producers used `payload` or `data`. The fields are
//! inspected in order — `value`, then each of `FALLBACK_JSON_FIELDS` — and the first that holds a
//! JSON document (an object or a list, after the opt-in repairs of [`super::repair`]) wins. Field
//! values are raw bytes: invalid UTF-8 is a reason, never a panic.

use serde_json::Value;

use super::json::{type_name, Skipped, Top};
use super::repair::{close_truncated, quote_bare_lastplus, Repair, RepairRefused};
use super::Rules;

/// One field of a stream entry, name and value as bytes: owned (`(Vec<u8>, Vec<u8>)`, as tests and
/// the migration tool build them) or borrowed from a claim's buffer (`(&[u8], &[u8])`, as the
/// claimer reads them), so the decoder needs no copy of either.
pub trait Field {
    fn name(&self) -> &[u8];
    fn value(&self) -> &[u8];
}

impl Field for (Vec<u8>, Vec<u8>) {
    fn name(&self) -> &[u8] {
        &self.0
    }
    fn value(&self) -> &[u8] {
        &self.1
    }
}

impl Field for (&[u8], &[u8]) {
    fn name(&self) -> &[u8] {
        self.0
    }
    fn value(&self) -> &[u8] {
        self.1
    }
}

/// The field that held the payload, its document, and what was repaired to read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    pub field: String,
    pub doc: Value,
    pub repair: Option<Repair>,
}

/// Why no field yielded a document. Each variant names the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("no JSON field: looked for {looked}, the entry has fields {present}")]
    NoField { looked: String, present: String },
    #[error("field '{field}' is not valid UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { field: String, offset: usize },
    #[error("field '{field}' holds {found}, not a JSON object or list")]
    NotADocument { field: String, found: &'static str },
    #[error("field '{field}' is not valid JSON ({detail}){hint}")]
    InvalidJson {
        field: String,
        detail: String,
        hint: String,
    },
    #[error("field '{field}' is truncated JSON and was not repaired: {why}")]
    RepairRefused { field: String, why: RepairRefused },
}

impl FieldError {
    /// A short stable code for counters.
    pub fn code(&self) -> &'static str {
        match self {
            FieldError::NoField { .. } => "no_json_field",
            FieldError::NotUtf8 { .. } => "not_utf8",
            FieldError::NotADocument { .. } => "not_a_document",
            FieldError::InvalidJson { .. } => "invalid_json",
            FieldError::RepairRefused { .. } => "repair_refused",
        }
    }
}

/// The field names to inspect, in order: `value`, then `FALLBACK_JSON_FIELDS` (duplicates dropped).
pub fn candidates(rules: &Rules) -> Vec<&str> {
    candidate_names(rules).collect()
}

/// [`candidates`] without collecting them (the decoder looks at them for every entry).
fn candidate_names(rules: &Rules) -> impl Iterator<Item = &str> {
    let fallbacks = &rules.fallback_json_fields;
    std::iter::once("value").chain(
        fallbacks
            .iter()
            .enumerate()
            .filter(|&(i, f)| f != "value" && !fallbacks[..i].contains(f))
            .map(|(_, f)| f.as_str()),
    )
}

/// Picks the payload: the first candidate field (in order) that yields a JSON object or list.
/// When none does, the error is the first candidate's (the field the producer most likely meant).
pub fn select<F: Field>(fields: &[F], rules: &Rules) -> Result<Selected, FieldError> {
    first_candidate(fields, rules, |name, raw| read_document(name, raw, rules))
}

/// A payload as the decoder reads it: straight from the entry's bytes, or, when a repair was
/// needed, the repaired text to read it from (valid JSON, an object or a list).
// Held on the stack for one entry; boxing the document would allocate for every entry.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Payload<'a> {
    Read { text: &'a str, doc: Top<'a> },
    Repaired(String),
}

/// [`select`] for the decoder: the same choice, the same reasons, the payload read into the
/// members it needs ([`Top`]) with its strings borrowed from `fields`.
pub fn select_payload<'a, F: Field>(
    fields: &'a [F],
    rules: &Rules,
) -> Result<(Payload<'a>, Option<Repair>), FieldError> {
    first_candidate(fields, rules, |name, raw| {
        read_as::<Top>(name, raw, rules, Top::scalar).map(|(read, repair)| {
            let payload = match read {
                Read::Parsed { text, doc } => Payload::Read { text, doc },
                Read::Repaired(text) => Payload::Repaired(text),
            };
            (payload, repair)
        })
    })
}

fn first_candidate<'a, T, F: Field>(
    fields: &'a [F],
    rules: &Rules,
    mut read: impl FnMut(&str, &'a [u8]) -> Result<T, FieldError>,
) -> Result<T, FieldError> {
    let mut first_error: Option<FieldError> = None;
    for name in candidate_names(rules) {
        let Some(field) = fields.iter().find(|f| f.name() == name.as_bytes()) else {
            continue;
        };
        match read(name, field.value()) {
            Ok(sel) => return Ok(sel),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| FieldError::NoField {
        looked: candidates(rules).join(", "),
        present: present_fields(fields),
    }))
}

fn present_fields<F: Field>(fields: &[F]) -> String {
    if fields.is_empty() {
        return "(none)".to_string();
    }
    let mut names: Vec<String> = fields
        .iter()
        .take(10)
        .map(|f| super::rules::shown(&String::from_utf8_lossy(f.name())))
        .collect();
    if fields.len() > 10 {
        names.push(format!("and {} more", fields.len() - 10));
    }
    names.join(", ")
}

/// Parses one field's bytes, applying the enabled repairs when the text is not JSON as it stands.
pub fn read_document(field: &str, raw: &[u8], rules: &Rules) -> Result<Selected, FieldError> {
    let scalar = |doc: &Value| match doc {
        Value::Object(_) | Value::Array(_) => None,
        other => Some(type_name(other)),
    };
    let (doc, repair) = match read_as::<Value>(field, raw, rules, scalar)? {
        (Read::Parsed { doc, .. }, repair) => (doc, repair),
        (Read::Repaired(text), repair) => {
            let doc =
                serde_json::from_str::<Value>(&text).map_err(|e| FieldError::InvalidJson {
                    field: field.to_string(),
                    detail: e.to_string(),
                    hint: String::new(),
                })?;
            (doc, repair)
        }
    };
    Ok(Selected {
        field: field.to_string(),
        doc,
        repair,
    })
}

/// A field's document as `T`, or the repaired text it is read from.
enum Read<'a, T> {
    Parsed { text: &'a str, doc: T },
    Repaired(String),
}

/// Reads one field's bytes as `T`, applying the enabled repairs when the text is not JSON as it
/// stands. `scalar` names the type of a document that is neither an object nor a list. A repaired
/// text is checked here (read and dropped, [`Skipped`]: the same checks as any `T`), and returned
/// for the caller to read, since `T` may borrow from it.
fn read_as<'a, T: serde::Deserialize<'a>>(
    field: &str,
    raw: &'a [u8],
    rules: &Rules,
    scalar: impl Fn(&T) -> Option<&'static str>,
) -> Result<(Read<'a, T>, Option<Repair>), FieldError> {
    let text = std::str::from_utf8(raw).map_err(|e| FieldError::NotUtf8 {
        field: field.to_string(),
        offset: e.valid_up_to(),
    })?;
    let first_error = match serde_json::from_str::<T>(text) {
        Ok(doc) => {
            return match scalar(&doc) {
                None => Ok((Read::Parsed { text, doc }, None)),
                Some(found) => Err(not_a_document(field, found)),
            }
        }
        Err(e) => e,
    };
    let repaired = |text: String, repair: Repair, found: &'static str| match found {
        "an object" | "a list" => Ok((Read::Repaired(text), Some(repair))),
        found => Err(not_a_document(field, found)),
    };

    let mut repair = Repair::default();
    let mut current = std::borrow::Cow::Borrowed(text);
    if rules.auto_quote_lastplus {
        if let Some((quoted, n)) = quote_bare_lastplus(&current) {
            repair.quoted_lastplus = n;
            if let Ok(Skipped(found)) = serde_json::from_str::<Skipped>(&quoted) {
                return repaired(quoted, repair, found);
            }
            current = std::borrow::Cow::Owned(quoted);
        }
    }
    let eof = first_error.is_eof();
    if !rules.lenient_json_repair {
        let hint = if eof {
            "; it looks truncated, LENIENT_JSON_REPAIR=1 would try to close it"
        } else if !rules.auto_quote_lastplus && text.contains("\"lastplus\"") {
            "; AUTO_QUOTE_LASTPLUS=1 quotes bare lastplus values"
        } else {
            ""
        };
        return Err(FieldError::InvalidJson {
            field: field.to_string(),
            detail: first_error.to_string(),
            hint: hint.to_string(),
        });
    }
    let (closed, truncation) =
        close_truncated(&current, rules.max_json_repair_append).map_err(|why| match why {
            RepairRefused::NotAPrefix(_) | RepairRefused::NotTruncated => FieldError::InvalidJson {
                field: field.to_string(),
                detail: first_error.to_string(),
                hint: String::new(),
            },
            why => FieldError::RepairRefused {
                field: field.to_string(),
                why,
            },
        })?;
    repair.appended = truncation.appended;
    repair.removed_bytes = truncation.removed_bytes;
    repair.dropped_partial_record = truncation.dropped_partial_record;
    repair.closed_root_object = truncation.closed_root_object;
    match serde_json::from_str::<Skipped>(&closed) {
        Ok(Skipped(found)) => repaired(closed, repair, found),
        Err(_) => Err(FieldError::InvalidJson {
            field: field.to_string(),
            detail: first_error.to_string(),
            hint: String::new(),
        }),
    }
}

fn not_a_document(field: &str, found: &'static str) -> FieldError {
    FieldError::NotADocument {
        field: field.to_string(),
        found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn value_is_read_first() {
        let fields = f(&[("payload", br#"{"a":2}"#), ("value", br#"{"a":1}"#)]);
        let sel = select(&fields, &Rules::default()).unwrap();
        assert_eq!(
            (sel.field.as_str(), sel.doc["a"].as_i64()),
            ("value", Some(1))
        );
    }

    #[test]
    fn fallback_fields_are_tried_in_order_and_first_json_wins() {
        let fields = f(&[
            ("data", br#"{"a":3}"#),
            ("payload", br#"{"a":2}"#),
            ("other", b"{}"),
        ]);
        let sel = select(&fields, &Rules::default()).unwrap();
        assert_eq!(sel.field, "payload");
        let fields = f(&[("value", b"not json"), ("data", br#"[1]"#)]);
        assert_eq!(select(&fields, &Rules::default()).unwrap().field, "data");
    }

    #[test]
    fn fallback_json_fields_setting_changes_the_list() {
        let rules = Rules {
            fallback_json_fields: vec!["body".into()],
            ..Rules::default()
        };
        let fields = f(&[("payload", br#"{"a":2}"#), ("body", br#"{"a":4}"#)]);
        assert_eq!(select(&fields, &rules).unwrap().field, "body");
        assert_eq!(candidates(&rules), ["value", "body"]);
        let repeated = Rules {
            fallback_json_fields: vec!["payload".into(), "value".into(), "payload".into()],
            ..Rules::default()
        };
        assert_eq!(candidates(&repeated), ["value", "payload"]);
    }

    #[test]
    fn borrowed_fields_select_like_owned_ones() {
        let owned = f(&[("payload", br#"{"a":2}"#), ("value", b"not json")]);
        let borrowed: Vec<(&[u8], &[u8])> = owned
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let rules = Rules::default();
        assert_eq!(select(&borrowed, &rules), select(&owned, &rules));
        assert_eq!(select(&borrowed, &rules).unwrap().field, "payload");
    }

    #[test]
    fn a_scalar_is_not_a_payload() {
        let fields = f(&[("value", b"\"hello\"")]);
        assert_eq!(
            select(&fields, &Rules::default()),
            Err(FieldError::NotADocument {
                field: "value".into(),
                found: "a string"
            })
        );
    }

    #[test]
    fn no_candidate_field_lists_what_is_there() {
        let fields = f(&[("foo", b"{}"), ("bar\n", b"1")]);
        let e = select(&fields, &Rules::default()).unwrap_err();
        assert_eq!(e.code(), "no_json_field");
        assert_eq!(
            e.to_string(),
            "no JSON field: looked for value, payload, data, the entry has fields 'foo', 'bar\\n'"
        );
        let e = select::<(Vec<u8>, Vec<u8>)>(&[], &Rules::default()).unwrap_err();
        assert!(e.to_string().ends_with("(none)"), "{e}");
    }

    #[test]
    fn invalid_utf8_is_a_reason_with_the_offset() {
        let fields = f(&[("value", b"{\"a\":\"\xff\"}")]);
        assert_eq!(
            select(&fields, &Rules::default()),
            Err(FieldError::NotUtf8 {
                field: "value".into(),
                offset: 6
            })
        );
    }

    #[test]
    fn truncated_json_without_repair_hints_at_the_setting() {
        let fields = f(&[("value", br#"{"key":"k","records":[{"id":"a"}"#)]);
        let e = select(&fields, &Rules::default()).unwrap_err();
        assert_eq!(e.code(), "invalid_json");
        assert!(e.to_string().contains("LENIENT_JSON_REPAIR=1"), "{e}");
    }

    #[test]
    fn lenient_repair_closes_truncated_json_and_says_so() {
        let rules = Rules {
            lenient_json_repair: true,
            ..Rules::default()
        };
        let fields = f(&[("value", br#"{"key":"k","records":[{"id":"a"}"#)]);
        let sel = select(&fields, &rules).unwrap();
        assert_eq!(sel.doc["records"][0]["id"], "a");
        assert_eq!(sel.repair.unwrap().appended, "]}");
    }

    #[test]
    fn repair_refusal_is_the_reason() {
        let rules = Rules {
            lenient_json_repair: true,
            ..Rules::default()
        };
        let fields = f(&[("value", br#"{"user_email":"alice@exa"#)]);
        let e = select(&fields, &rules).unwrap_err();
        assert_eq!(e.code(), "repair_refused");
        assert_eq!(
            e.to_string(),
            "field 'value' is truncated JSON and was not repaired: it was cut inside a string, which cannot be completed without guessing"
        );
        let long = Rules {
            max_json_repair_append: 1,
            ..rules
        };
        let fields = f(&[("value", br#"{"key":"k","records":[{"id":"a"}"#)]);
        assert!(select(&fields, &long)
            .unwrap_err()
            .to_string()
            .contains("MAX_JSON_REPAIR_APPEND=1"));
    }

    #[test]
    fn auto_quote_lastplus_reads_bare_timestamps() {
        let text = br#"{"id":"a","lastplus":2025-11-01 10:20:30}"#;
        let fields = f(&[("value", text)]);
        let e = select(&fields, &Rules::default()).unwrap_err();
        assert!(e.to_string().contains("AUTO_QUOTE_LASTPLUS=1"), "{e}");
        let rules = Rules {
            auto_quote_lastplus: true,
            ..Rules::default()
        };
        let sel = select(&fields, &rules).unwrap();
        assert_eq!(sel.doc["lastplus"], "2025-11-01 10:20:30");
        assert_eq!(sel.repair.unwrap().quoted_lastplus, 1);
    }

    #[test]
    fn auto_quote_and_repair_combine() {
        let rules = Rules {
            auto_quote_lastplus: true,
            lenient_json_repair: true,
            ..Rules::default()
        };
        let fields = f(&[(
            "value",
            br#"{"key":"k","records":[{"id":"a","lastplus":2025-11-01 10:20:30}"#,
        )]);
        let sel = select(&fields, &rules).unwrap();
        assert_eq!(sel.doc["records"][0]["lastplus"], "2025-11-01 10:20:30");
        let r = sel.repair.unwrap();
        assert_eq!((r.quoted_lastplus, r.appended.as_str()), (1, "]}"));
    }

    #[test]
    fn valid_json_is_never_touched_by_repairs() {
        let rules = Rules {
            auto_quote_lastplus: true,
            lenient_json_repair: true,
            ..Rules::default()
        };
        let fields = f(&[("value", br#"{"lastplus":"x"}"#)]);
        assert_eq!(select(&fields, &rules).unwrap().repair, None);
    }
}
