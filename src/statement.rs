//! A SQL statement with its bind variables: what the SQL builders produce and the Snowflake client sends.
//!
//! Values never enter the SQL text; each travels as a positional bind (`?`) in the SQL API's
//! `bindings` object (`{"1": {"type": "TEXT", "value": "..."}}`), so no input can change a statement's
//! meaning.

/// One positional bind variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    /// `TEXT`; also used for JSON documents expanded with `PARSE_JSON(?)`.
    Text(String),
    /// `TEXT` held as it is written inside the request body: a batch's JSON, escaped once as it
    /// is written instead of again when the body is ([`EscapedText`]).
    Escaped(EscapedText),
    /// `FIXED` (an integer).
    Fixed(i64),
    /// A SQL NULL of type `TEXT`.
    Null,
}

impl Bind {
    /// The SQL API type name.
    pub fn sql_type(&self) -> &'static str {
        match self {
            Bind::Text(_) | Bind::Escaped(_) | Bind::Null => "TEXT",
            Bind::Fixed(_) => "FIXED",
        }
    }

    /// The SQL API value (always sent as a string, or null).
    pub fn sql_value(&self) -> Option<String> {
        match self {
            Bind::Text(s) => Some(s.clone()),
            Bind::Escaped(e) => Some(e.text()),
            Bind::Fixed(n) => Some(n.to_string()),
            Bind::Null => None,
        }
    }

    /// Bytes this bind adds to a request, for batch size caps.
    pub fn size(&self) -> usize {
        match self {
            Bind::Text(s) => s.len(),
            Bind::Escaped(e) => e.text_len(),
            Bind::Fixed(_) => 20,
            Bind::Null => 4,
        }
    }
}

/// Text held as it is written between the quotes of a JSON string — `"` and `\\` preceded by a
/// backslash, control characters as `\\u00XX` — so it goes into a request body as it is.
///
/// A batch's bind is a JSON document of thousands of small strings: a quote every few bytes. Written
/// as plain JSON and then escaped into the body, every byte of it passes a second escaping loop; a
/// document written in this form from the start is escaped once, value by value, and the constant
/// parts (names, punctuation) cost nothing. [`JsonSink`] writes documents in either form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EscapedText {
    escaped: String,
    /// Length of the text itself (what the warehouse receives), for size caps.
    text_len: usize,
}

impl EscapedText {
    pub fn with_capacity(bytes: usize) -> EscapedText {
        EscapedText {
            escaped: String::with_capacity(bytes),
            text_len: 0,
        }
    }

    /// Appends `text` (any text).
    pub fn push_str(&mut self, text: &str) {
        self.text_len += text.len();
        escape_into(&mut self.escaped, text);
    }

    /// The text as it goes between the quotes of a JSON string.
    pub fn as_escaped(&self) -> &str {
        &self.escaped
    }

    /// Length of the text itself.
    pub fn text_len(&self) -> usize {
        self.text_len
    }

    /// The text itself (unescaped): for checks and reads, never on the hot path.
    pub fn text(&self) -> String {
        serde_json::from_str(&format!("\"{}\"", self.escaped)).unwrap_or_default()
    }
}

/// Writes a JSON document piece by piece, into plain text or into an [`EscapedText`].
pub trait JsonSink {
    /// Appends `s`, which holds no quote, backslash or control character (punctuation, digits,
    /// names written as constants).
    fn plain(&mut self, s: &str);
    /// Appends `s` as a JSON string, quotes included.
    fn string(&mut self, s: &str);
    /// Appends `s`, which holds nothing to escape, as a JSON string without looking at its bytes:
    /// what the module writes itself (entry IDs, times, codes).
    fn plain_string(&mut self, s: &str);
    /// Appends `"name":`.
    fn name(&mut self, name: &str) {
        self.string(name);
        self.plain(":");
    }
    /// Appends an integer.
    fn integer(&mut self, n: impl itoa::Integer) {
        self.plain(itoa::Buffer::new().format(n));
    }
}

impl JsonSink for String {
    fn plain(&mut self, s: &str) {
        debug_assert!(!s.bytes().any(needs_escape), "{s:?}");
        self.push_str(s);
    }

    fn string(&mut self, s: &str) {
        self.push('"');
        escape_into(self, s);
        self.push('"');
    }

    fn plain_string(&mut self, s: &str) {
        debug_assert!(!s.bytes().any(needs_escape), "{s:?}");
        self.push('"');
        self.push_str(s);
        self.push('"');
    }
}

impl JsonSink for EscapedText {
    fn plain(&mut self, s: &str) {
        debug_assert!(!s.bytes().any(needs_escape), "{s:?}");
        self.text_len += s.len();
        self.escaped.push_str(s);
    }

    fn string(&mut self, s: &str) {
        // Checked without stopping at the first hit, so the check runs many bytes at a time: nearly
        // every value has nothing to escape.
        if !s.bytes().fold(false, |any, b| any | needs_escape(b)) {
            self.plain_string(s);
            return;
        }
        let mut json = String::with_capacity(s.len() + 8);
        json.string(s);
        self.push_str(&json);
    }

    fn plain_string(&mut self, s: &str) {
        debug_assert!(!s.bytes().any(needs_escape), "{s:?}");
        self.text_len += s.len() + 2;
        self.escaped.push_str("\\\"");
        self.escaped.push_str(s);
        self.escaped.push_str("\\\"");
    }
}

fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// Appends `text` escaped as the inside of a JSON string: serde_json's escaping, its quotes left
/// out. Link values with nothing to escape never come here (they are copied as they are).
fn escape_into(out: &mut String, text: &str) {
    let quoted = serde_json::to_string(text).unwrap_or_default();
    out.push_str(
        quoted
            .get(1..quoted.len().saturating_sub(1))
            .unwrap_or_default(),
    );
}

/// A single SQL statement and its binds, in `?` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub binds: Vec<Bind>,
}

impl Statement {
    pub fn new(sql: impl Into<String>, binds: Vec<Bind>) -> Statement {
        Statement {
            sql: sql.into(),
            binds,
        }
    }

    /// Approximate request size: SQL text plus bound values.
    pub fn size(&self) -> usize {
        self.sql.len() + self.binds.iter().map(Bind::size).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: [&str; 7] = [
        "",
        "plain",
        "a\"b\\c",
        "\u{0}\u{1}\n\r\t\u{8}\u{c}\u{1f}\u{7f}",
        "ünï € 😀",
        "\\\"\\u0041\"",
        "'; DROP TABLE TRACKED; --",
    ];

    /// What a request body holding `e` as a string value gives the warehouse.
    fn received(e: &EscapedText) -> String {
        serde_json::from_str(&format!("\"{}\"", e.as_escaped())).expect("a valid JSON string")
    }

    #[test]
    fn escaped_text_is_received_as_the_text_itself() {
        for text in HOSTILE {
            let mut e = EscapedText::default();
            e.push_str(text);
            e.push_str(text);
            let twice = format!("{text}{text}");
            assert_eq!(received(&e), twice);
            assert_eq!(e.text(), twice);
            assert_eq!(e.text_len(), twice.len());
        }
    }

    #[test]
    fn both_sinks_write_the_json_serde_writes() {
        for text in HOSTILE {
            let write = |sink: &mut dyn FnMut(&str, &str)| {
                sink("plain", "{");
                sink("name", "k");
                sink("string", text);
                sink("plain", ",");
                sink("name", text);
                sink("plain", "-12}");
            };
            let mut plain = String::new();
            let mut escaped = EscapedText::default();
            write(&mut |how, s| match how {
                "plain" => plain.plain(s),
                "name" => plain.name(s),
                _ => plain.string(s),
            });
            write(&mut |how, s| match how {
                "plain" => escaped.plain(s),
                "name" => escaped.name(s),
                _ => escaped.string(s),
            });
            let expected = format!(
                "{{\"k\":{},{}:-12}}",
                serde_json::to_string(text).unwrap_or_default(),
                serde_json::to_string(text).unwrap_or_default()
            );
            assert_eq!(plain, expected);
            assert_eq!(received(&escaped), expected);
            assert_eq!(escaped.text_len(), expected.len());
            let value: serde_json::Value = serde_json::from_str(&escaped.text()).expect("JSON");
            assert_eq!(value["k"], text);
        }
    }

    #[test]
    fn a_plain_string_is_written_as_string_writes_it() {
        for text in [
            "",
            "00000000001762172400000-00000000000000000003",
            "2025-11-03 12:00:00",
            "m",
        ] {
            let (mut a, mut b) = (EscapedText::default(), EscapedText::default());
            a.plain_string(text);
            b.string(text);
            assert_eq!(a, b);
            let (mut a, mut b) = (String::new(), String::new());
            a.plain_string(text);
            b.string(text);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn integers_are_written_as_json_numbers() {
        let mut e = EscapedText::default();
        e.integer(i64::MIN);
        e.plain(",");
        e.integer(u64::MAX);
        assert_eq!(e.text(), format!("{},{}", i64::MIN, u64::MAX));
    }

    #[test]
    fn an_escaped_bind_sizes_as_its_text() {
        let mut e = EscapedText::default();
        e.string("a\"b");
        let b = Bind::Escaped(e);
        assert_eq!(b.sql_type(), "TEXT");
        assert_eq!(b.sql_value().as_deref(), Some("\"a\\\"b\""));
        assert_eq!(b.size(), 6);
    }
}
