//! Repairs for payloads that are almost JSON: bare `lastplus` timestamps and truncated documents.
//!
//! Both repairs only ever run on text that failed to parse, and both are opt-in (`AUTO_QUOTE_LASTPLUS`,
//! `LENIENT_JSON_REPAIR`), because a repair is a guess. The rule that keeps the guess honest: a repair
//! may make a document *parseable*, never make it *say something else*.
//!
//! - [`quote_bare_lastplus`] wraps a bare token after a `"lastplus":` key in quotes
//!   (`"lastplus": 2025-11-01 10:20:30` becomes `"lastplus": "2025-11-01 10:20:30"`). It only touches
//!   tokens that are not JSON already, and it finds keys with a real string scanner, so text inside a
//!   title that merely looks like `"lastplus":` is never changed.
//! - [`close_truncated`] completes a document that was cut off: the text must be a valid *prefix* of
//!   JSON (a syntax error anywhere is not a truncation, and is refused). It appends the missing `]`
//!   and `}` — at most `MAX_JSON_REPAIR_APPEND` of them. A cut that falls inside a record of the
//!   batch's `records` list (or of a top-level list of records) drops that partial record: cutting a
//!   string, number or record short would change its meaning (`"id":"alice-12"` cut to `"alice-1"`
//!   is another row, a record cut before `"action":"d"` would turn a delete into a save), so the
//!   partial record is removed and reported, and every complete record before it is kept. A cut
//!   anywhere else (inside the batch's `key`, an e-mail, after a dangling `:`) cannot be completed
//!   without inventing text, so the repair refuses and the entry is dead-lettered with the reason.
//!   Strings are therefore never "closed" by guessing where they ended.

use std::fmt;

/// What a repair did to an entry's text; kept on the decoded entry so it is logged and counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repair {
    /// How many bare `lastplus` values were quoted.
    pub quoted_lastplus: usize,
    /// Characters appended to close a truncated document (only `]` and `}`).
    pub appended: String,
    /// Bytes dropped from the end: a partial record, a dangling comma, trailing blanks.
    pub removed_bytes: usize,
    /// Whether a partial record was dropped (it is reported as a rejected record).
    pub dropped_partial_record: bool,
    /// Whether the top-level object itself was closed by the repair, i.e. members after the cut are
    /// missing. Only a batch (`key` + `records`) can be used then; see [`close_truncated`].
    pub closed_root_object: bool,
}

impl Repair {
    pub fn is_empty(&self) -> bool {
        self.quoted_lastplus == 0 && self.appended.is_empty() && self.removed_bytes == 0
    }
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.quoted_lastplus > 0 {
            parts.push(format!(
                "quoted {} bare lastplus value(s)",
                self.quoted_lastplus
            ));
        }
        if self.dropped_partial_record {
            parts.push("dropped a record cut off by truncation".to_string());
        } else if self.removed_bytes > 0 {
            parts.push(format!("dropped {} trailing byte(s)", self.removed_bytes));
        }
        if !self.appended.is_empty() {
            parts.push(format!("appended '{}'", self.appended));
        }
        f.write_str(&parts.join(", "))
    }
}

/// Quotes bare values of `"lastplus"` keys. Returns the new text and how many values were quoted,
/// or `None` when nothing needed quoting.
pub fn quote_bare_lastplus(text: &str) -> Option<(String, usize)> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 8);
    let mut copied = 0; // bytes of `text` already copied to `out`
    let mut quoted = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes.get(i) != Some(&b'"') {
            i += 1;
            continue;
        }
        // A string token: find its end, honouring escapes.
        let start = i + 1;
        let mut j = start;
        let mut escaped = false;
        while let Some(&b) = bytes.get(j) {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                break;
            }
            j += 1;
        }
        if j >= bytes.len() {
            break; // unterminated string: nothing more to scan
        }
        let is_lastplus = text.get(start..j) == Some("lastplus");
        i = j + 1;
        if !is_lastplus {
            continue;
        }
        // A key is followed by `:`; then the value.
        let mut k = skip_ws(bytes, i);
        if bytes.get(k) != Some(&b':') {
            continue;
        }
        k = skip_ws(bytes, k + 1);
        let value_start = k;
        match bytes.get(value_start) {
            None | Some(b'"' | b'{' | b'[') => continue,
            _ => {}
        }
        let mut end = value_start;
        while let Some(&b) = bytes.get(end) {
            if matches!(b, b',' | b'}' | b']' | b'\n' | b'\r' | b'"' | b'\\') {
                break;
            }
            end += 1;
        }
        if matches!(bytes.get(end), Some(b'"' | b'\\')) {
            continue; // something stranger than a bare token: leave it to the parser's error
        }
        let Some(token) = text.get(value_start..end) else {
            continue;
        };
        let token = token.trim_end();
        if token.is_empty() || is_json_scalar(token) {
            continue;
        }
        let token_end = value_start + token.len();
        out.push_str(text.get(copied..value_start).unwrap_or_default());
        out.push('"');
        out.push_str(token);
        out.push('"');
        copied = token_end;
        quoted += 1;
        i = token_end;
    }
    if quoted == 0 {
        return None;
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    Some((out, quoted))
}

/// JSON's whitespace: space, tab, line feed, carriage return (not form feed).
fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).copied().is_some_and(is_json_ws) {
        i += 1;
    }
    i
}

/// Whether a bare token is already a JSON value (a number or a literal): those are left alone.
fn is_json_scalar(token: &str) -> bool {
    matches!(token, "true" | "false" | "null")
        || serde_json::from_str::<serde_json::Number>(token).is_ok()
}

/// Why a truncated document was not repaired; shown as part of the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepairRefused {
    #[error("the JSON has a syntax error at byte {0}, it is not merely cut off")]
    NotAPrefix(usize),
    #[error("the JSON is complete; its error is not a truncation")]
    NotTruncated,
    #[error("the text is empty")]
    Empty,
    #[error("it was cut inside {0}, which cannot be completed without guessing")]
    CutInside(&'static str),
    #[error("closing it needs {needed} characters, more than MAX_JSON_REPAIR_APPEND={max}")]
    TooLong { needed: usize, max: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjState {
    KeyOrEnd,
    Key,
    Colon,
    Value,
    CommaOrEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrState {
    ValueOrEnd,
    Value,
    CommaOrEnd,
}

#[derive(Debug, Clone, Copy)]
enum Frame {
    Object {
        state: ObjState,
        /// The member being read is `records`.
        member_is_records: bool,
    },
    Array {
        state: ArrState,
        /// Byte offset just after the last complete element (or after `[`).
        last_complete: usize,
        /// This list holds the batch's records (the top-level list, or the top-level `records`).
        holds_records: bool,
    },
}

/// A token being read when the text ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    None,
    String { key: bool },
    Number,
    Literal,
}

/// Completes a truncated JSON document; see the module documentation for what is and is not done.
pub fn close_truncated(text: &str, max_append: usize) -> Result<(String, Repair), RepairRefused> {
    let bytes = text.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    let mut root_done = false;
    let mut token = Token::None;
    let mut key_start = 0;
    let mut token_start = 0;
    let mut i = 0;

    while i < bytes.len() {
        let b = bytes.get(i).copied().unwrap_or(b' ');
        match token {
            Token::String { key } => {
                if b == b'\\' {
                    i += 2;
                    continue;
                }
                if b == b'"' {
                    token = Token::None;
                    if key {
                        let is_records =
                            stack.len() == 1 && text.get(key_start..i) == Some("records");
                        if let Some(Frame::Object {
                            state,
                            member_is_records,
                        }) = stack.last_mut()
                        {
                            *state = ObjState::Colon;
                            *member_is_records = is_records;
                        }
                    } else {
                        value_done(&mut stack, &mut root_done, i + 1);
                    }
                } else if b < 0x20 {
                    return Err(RepairRefused::NotAPrefix(i));
                }
                i += 1;
                continue;
            }
            Token::Number => {
                if b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-') {
                    i += 1;
                    continue;
                }
                let number = text.get(token_start..i).unwrap_or_default();
                if serde_json::from_str::<serde_json::Number>(number).is_err() {
                    return Err(RepairRefused::NotAPrefix(token_start));
                }
                token = Token::None;
                value_done(&mut stack, &mut root_done, i);
                // fall through: this byte is a delimiter
            }
            Token::Literal => {
                if b.is_ascii_alphabetic() {
                    i += 1;
                    continue;
                }
                if !matches!(text.get(token_start..i), Some("true" | "false" | "null")) {
                    return Err(RepairRefused::NotAPrefix(token_start));
                }
                token = Token::None;
                value_done(&mut stack, &mut root_done, i);
            }
            Token::None => {}
        }

        if is_json_ws(b) {
            i += 1;
            continue;
        }
        if root_done {
            return Err(RepairRefused::NotAPrefix(i));
        }
        let at_value = match stack.last() {
            None => true,
            Some(Frame::Object { state, .. }) => *state == ObjState::Value,
            Some(Frame::Array { state, .. }) => *state != ArrState::CommaOrEnd,
        };
        match b {
            b'{' if at_value => stack.push(Frame::Object {
                state: ObjState::KeyOrEnd,
                member_is_records: false,
            }),
            b'[' if at_value => {
                let holds_records = match stack.last() {
                    None => true,
                    Some(Frame::Object {
                        member_is_records, ..
                    }) => *member_is_records && stack.len() == 1,
                    Some(Frame::Array { .. }) => false,
                };
                stack.push(Frame::Array {
                    state: ArrState::ValueOrEnd,
                    last_complete: i + 1,
                    holds_records,
                });
            }
            b'"' if at_value => token = Token::String { key: false },
            b'"' => match stack.last() {
                Some(Frame::Object {
                    state: ObjState::KeyOrEnd | ObjState::Key,
                    ..
                }) => {
                    token = Token::String { key: true };
                    key_start = i + 1;
                }
                _ => return Err(RepairRefused::NotAPrefix(i)),
            },
            b'-' | b'0'..=b'9' if at_value => {
                token = Token::Number;
                token_start = i;
            }
            b't' | b'f' | b'n' if at_value => {
                token = Token::Literal;
                token_start = i;
            }
            b':' => match stack.last_mut() {
                Some(Frame::Object { state, .. }) if *state == ObjState::Colon => {
                    *state = ObjState::Value
                }
                _ => return Err(RepairRefused::NotAPrefix(i)),
            },
            b',' => match stack.last_mut() {
                Some(Frame::Object { state, .. }) if *state == ObjState::CommaOrEnd => {
                    *state = ObjState::Key
                }
                Some(Frame::Array { state, .. }) if *state == ArrState::CommaOrEnd => {
                    *state = ArrState::Value
                }
                _ => return Err(RepairRefused::NotAPrefix(i)),
            },
            b'}' => match stack.last() {
                Some(Frame::Object {
                    state: ObjState::KeyOrEnd | ObjState::CommaOrEnd,
                    ..
                }) => {
                    stack.pop();
                    value_done(&mut stack, &mut root_done, i + 1);
                }
                _ => return Err(RepairRefused::NotAPrefix(i)),
            },
            b']' => match stack.last() {
                Some(Frame::Array {
                    state: ArrState::ValueOrEnd | ArrState::CommaOrEnd,
                    ..
                }) => {
                    stack.pop();
                    value_done(&mut stack, &mut root_done, i + 1);
                }
                _ => return Err(RepairRefused::NotAPrefix(i)),
            },
            _ => return Err(RepairRefused::NotAPrefix(i)),
        }
        i += 1;
    }

    if token == Token::Literal {
        let partial = text.get(token_start..).unwrap_or_default();
        if !["true", "false", "null"]
            .iter()
            .any(|l| l.starts_with(partial))
        {
            return Err(RepairRefused::NotAPrefix(token_start));
        }
    }
    if root_done || (stack.is_empty() && matches!(token, Token::Number | Token::Literal)) {
        return Err(RepairRefused::NotTruncated);
    }
    if stack.is_empty() {
        return match token {
            Token::String { .. } => Err(RepairRefused::CutInside("a string")),
            _ => Err(RepairRefused::Empty),
        };
    }

    let mut repair = Repair::default();
    // Where the kept text ends, and how deep the stack is once cut there.
    let records_level = stack.iter().position(|f| {
        matches!(
            f,
            Frame::Array {
                holds_records: true,
                ..
            }
        )
    });
    let (keep, depth) = match (records_level, stack.get(records_level.unwrap_or(0))) {
        (
            Some(level),
            Some(Frame::Array {
                last_complete,
                state,
                ..
            }),
        ) => {
            let after = text.get(*last_complete..).unwrap_or_default();
            let after = after.trim_start_matches(|c: char| c.is_ascii() && is_json_ws(c as u8));
            let after = after.strip_prefix(',').unwrap_or(after);
            let after = after.trim_matches(|c: char| c.is_ascii() && is_json_ws(c as u8));
            let partial = stack.len() > level + 1 || token != Token::None || !after.is_empty();
            // A comma right after `[` is a syntax error caught above, so `state` only tells us
            // whether there was an element at all.
            let _ = state;
            repair.dropped_partial_record = partial;
            (*last_complete, level + 1)
        }
        _ => {
            // Outside any records list: only a cut between members of the top-level object can be
            // closed without guessing.
            let what = match token {
                Token::String { key: true } => Some("an object key"),
                Token::String { key: false } => Some("a string"),
                Token::Number => Some("a number"),
                Token::Literal => Some("a literal (true/false/null)"),
                Token::None => None,
            };
            if let Some(what) = what {
                return Err(RepairRefused::CutInside(what));
            }
            if stack.len() > 1 {
                return Err(RepairRefused::CutInside("a nested value"));
            }
            match stack.first() {
                Some(Frame::Object {
                    state: ObjState::KeyOrEnd | ObjState::CommaOrEnd | ObjState::Key,
                    ..
                }) => {}
                Some(Frame::Object { .. }) => {
                    return Err(RepairRefused::CutInside("a member without its value"))
                }
                _ => return Err(RepairRefused::CutInside("a list")),
            }
            let json_ws = |c: char| c.is_ascii() && is_json_ws(c as u8);
            let trimmed = text.trim_end_matches(json_ws);
            let trimmed = trimmed.strip_suffix(',').unwrap_or(trimmed);
            let trimmed = trimmed.trim_end_matches(json_ws);
            (trimmed.len(), 1)
        }
    };

    let mut appended = String::new();
    for frame in stack.iter().take(depth).rev() {
        appended.push(match frame {
            Frame::Object { .. } => '}',
            Frame::Array { .. } => ']',
        });
    }
    if appended.len() > max_append {
        return Err(RepairRefused::TooLong {
            needed: appended.len(),
            max: max_append,
        });
    }
    repair.removed_bytes = text.len().saturating_sub(keep);
    repair.closed_root_object = matches!(stack.first(), Some(Frame::Object { .. }));
    let mut out = String::with_capacity(keep + appended.len());
    out.push_str(text.get(..keep).unwrap_or_default());
    out.push_str(&appended);
    repair.appended = appended;
    Ok((out, repair))
}

/// A value ended at byte `end`: advance the enclosing container.
fn value_done(stack: &mut [Frame], root_done: &mut bool, end: usize) {
    match stack.last_mut() {
        None => *root_done = true,
        Some(Frame::Object { state, .. }) => *state = ObjState::CommaOrEnd,
        Some(Frame::Array {
            state,
            last_complete,
            ..
        }) => {
            *state = ArrState::CommaOrEnd;
            *last_complete = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(text: &str) -> Result<(String, Repair), RepairRefused> {
        close_truncated(text, 10)
    }

    #[test]
    fn bare_lastplus_datetime_is_quoted() {
        let (out, n) =
            quote_bare_lastplus(r#"{"id":"a","lastplus": 2025-11-01 10:20:30 ,"action":"v"}"#)
                .unwrap();
        assert_eq!(
            out,
            r#"{"id":"a","lastplus": "2025-11-01 10:20:30" ,"action":"v"}"#
        );
        assert_eq!(n, 1);
        let (out, n) =
            quote_bare_lastplus(r#"[{"lastplus":now},{"lastplus":2025-11-01T10:20:30}]"#).unwrap();
        assert_eq!(
            out,
            r#"[{"lastplus":"now"},{"lastplus":"2025-11-01T10:20:30"}]"#
        );
        assert_eq!(n, 2);
    }

    #[test]
    fn quoting_leaves_json_values_and_look_alikes_alone() {
        for text in [
            r#"{"lastplus":"2025-11-01 10:20:30"}"#,
            r#"{"lastplus":null}"#,
            r#"{"lastplus":20251101}"#,
            r#"{"track_title":"\"lastplus\": 2025-11-01 10:20:30"}"#,
            r#"{"lastplusx": 2025-11-01}"#,
        ] {
            assert_eq!(quote_bare_lastplus(text), None, "{text}");
        }
    }

    #[test]
    fn closes_a_batch_cut_after_a_complete_record() {
        let text = r#"{"key":"userdata-events:a/visited","records":[{"id":"a"},"#;
        let (out, r) = close(text).unwrap();
        assert_eq!(
            out,
            r#"{"key":"userdata-events:a/visited","records":[{"id":"a"}]}"#
        );
        assert_eq!(r.appended, "]}");
        assert!(!r.dropped_partial_record);
        assert!(r.closed_root_object);
    }

    #[test]
    fn a_record_cut_mid_string_is_dropped_not_closed() {
        let text = r#"{"key":"k","records":[{"id":"a"},{"id":"alice-1"#;
        let (out, r) = close(text).unwrap();
        assert_eq!(out, r#"{"key":"k","records":[{"id":"a"}]}"#);
        assert!(r.dropped_partial_record);
        let text = r#"{"key":"k","records":[{"id":"a","action":"#;
        let (out, r) = close(text).unwrap();
        assert_eq!(out, r#"{"key":"k","records":[]}"#);
        assert!(r.dropped_partial_record);
    }

    #[test]
    fn a_list_of_records_cut_in_a_number_keeps_the_complete_ones() {
        let (out, r) = close(r#"[{"id":"a"},{"id":"b","query_row_count":2"#).unwrap();
        assert_eq!(out, r#"[{"id":"a"}]"#);
        assert!(r.dropped_partial_record);
        assert!(!r.closed_root_object);
    }

    #[test]
    fn a_cut_between_top_level_members_is_closed() {
        let (out, r) = close(r#"{"user_email":"a@b.c", "#).unwrap();
        assert_eq!(out, r#"{"user_email":"a@b.c"}"#);
        assert_eq!(r.appended, "}");
        assert!(r.closed_root_object);
    }

    #[test]
    fn a_cut_inside_a_top_level_string_is_refused() {
        assert_eq!(
            close(r#"{"user_email":"alice@exa"#),
            Err(RepairRefused::CutInside("a string"))
        );
        assert_eq!(
            close(r#"{"records":[],"key":"userdata-events:a/vis"#),
            Err(RepairRefused::CutInside("a string"))
        );
        assert_eq!(
            close(r#"{"key":"#),
            Err(RepairRefused::CutInside("a member without its value"))
        );
        assert_eq!(
            close(r#"{"ke"#),
            Err(RepairRefused::CutInside("an object key"))
        );
    }

    #[test]
    fn syntax_errors_are_not_truncations() {
        assert!(matches!(
            close(r#"{"a":1}}"#),
            Err(RepairRefused::NotAPrefix(_))
        ));
        assert!(matches!(
            close(r#"{"a" 1"#),
            Err(RepairRefused::NotAPrefix(_))
        ));
        assert!(matches!(
            close(r#"{'a':1"#),
            Err(RepairRefused::NotAPrefix(_))
        ));
        assert!(matches!(close("[not "), Err(RepairRefused::NotAPrefix(1))));
        assert!(matches!(
            close("\u{c}{\"a\":1"),
            Err(RepairRefused::NotAPrefix(0))
        ));
        assert!(close("[nul").is_ok());
        assert!(matches!(close("[nux"), Err(RepairRefused::NotAPrefix(1))));
        assert!(matches!(
            close(r#"{"k":"x","records":[1-2,"#),
            Err(RepairRefused::NotAPrefix(_))
        ));
        assert_eq!(close(r#"{"a":1}"#), Err(RepairRefused::NotTruncated));
        assert_eq!(close("   "), Err(RepairRefused::Empty));
    }

    #[test]
    fn appending_more_than_the_limit_is_refused() {
        let text = r#"{"key":"k","records":[{"id":"a"}"#;
        assert!(close_truncated(text, 2).is_ok());
        assert_eq!(
            close_truncated(text, 1),
            Err(RepairRefused::TooLong { needed: 2, max: 1 })
        );
    }

    #[test]
    fn escaped_quotes_do_not_end_strings() {
        let text = r#"{"key":"k","records":[{"id":"a\"},{"}"#;
        let (out, r) = close(text).unwrap();
        assert_eq!(out, r#"{"key":"k","records":[{"id":"a\"},{"}]}"#);
        assert!(!r.dropped_partial_record);
        let text = r#"{"key":"k","records":[{"id":"a\"},{"#;
        let (out, r) = close(text).unwrap();
        assert_eq!(out, r#"{"key":"k","records":[]}"#);
        assert!(r.dropped_partial_record);
    }

    #[test]
    fn every_prefix_of_a_batch_is_repaired_or_refused_never_panics() {
        let full = r#"{"key":"userdata-events:a-1/visited","records":[{"id":"a-1","lastplus":"2025-11-01 10:20:30","n":[1,{"x":null}],"t":true},{"id":"a-1","track_title":"é\"q"}]}"#;
        for end in 0..full.len() {
            let Some(prefix) = full.get(..end) else {
                continue;
            };
            if let Ok((out, _)) = close_truncated(prefix, 100) {
                let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                // Whatever survives is an unchanged prefix of the real records.
                if let Some(records) = v.get("records").and_then(|r| r.as_array()) {
                    let real: serde_json::Value = serde_json::from_str(full).unwrap();
                    for (i, rec) in records.iter().enumerate() {
                        assert_eq!(Some(rec), real["records"].get(i), "prefix {prefix}");
                    }
                }
            }
        }
    }
}
