//! Where a statement's link objects are written: the bound JSON array of a MERGE ([`LinkArray`]),
//! already in the form it takes inside the request body, or separate plain objects ([`Objects`]).

use crate::statement::{Bind, EscapedText, JsonSink};

/// Links per chunk of a [`LinkArray`].
pub const CHUNK_LINKS: usize = 32;

/// The bound JSON of a statement: an array of arrays of at most [`CHUNK_LINKS`] link objects,
/// written as it goes into the request body ([`EscapedText`]).
#[derive(Debug, Default)]
pub struct LinkArray {
    json: EscapedText,
    /// Objects in the open chunk (none open before the first object).
    in_chunk: usize,
}

impl LinkArray {
    /// Room for `bytes` of JSON (and the escapes its quotes take).
    pub fn with_capacity(bytes: usize) -> LinkArray {
        LinkArray {
            json: EscapedText::with_capacity(bytes + bytes / 4 + 2),
            in_chunk: 0,
        }
    }

    /// Appends one link object written as plain JSON text.
    pub fn push(&mut self, object: &str) {
        self.next_object().push_str(object);
    }

    /// The array as the statement's bind (`[]` when empty).
    pub fn into_bind(mut self) -> Bind {
        // An array that holds anything has a chunk open.
        self.json.plain(if self.json.text_len() == 0 {
            "[]"
        } else {
            "]]"
        });
        Bind::Escaped(self.json)
    }
}

/// Where link objects are written: one after another into a statement's bind ([`LinkArray`]), or
/// each into a string of its own ([`Objects`]).
pub trait Links {
    type Sink: JsonSink;
    /// Starts the next object and returns where to write it.
    fn next_object(&mut self) -> &mut Self::Sink;
}

/// Link objects each in a string of its own, as plain JSON (the migration's staging rows).
#[derive(Debug, Default)]
pub struct Objects(pub Vec<String>);

impl Links for Objects {
    type Sink = String;

    fn next_object(&mut self) -> &mut String {
        self.0.push(String::new());
        let last = self.0.len() - 1;
        &mut self.0[last]
    }
}

impl Links for LinkArray {
    type Sink = EscapedText;

    fn next_object(&mut self) -> &mut EscapedText {
        if self.in_chunk == CHUNK_LINKS {
            self.json.plain("]");
            self.in_chunk = 0;
        }
        if self.in_chunk == 0 {
            self.json.plain(if self.json.text_len() == 0 {
                "[["
            } else {
                ",["
            });
        } else {
            self.json.plain(",");
        }
        self.in_chunk += 1;
        &mut self.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_travel_in_chunks() {
        let mut a = LinkArray::default();
        for i in 0..(CHUNK_LINKS + 1) {
            a.push(&format!("{{\"i\":{i}}}"));
        }
        let text = |a: LinkArray| a.into_bind().sql_value().unwrap_or_default();
        let v: Vec<Vec<serde_json::Value>> = serde_json::from_str(&text(a)).unwrap();
        assert_eq!(v.iter().map(Vec::len).collect::<Vec<_>>(), [CHUNK_LINKS, 1]);
        let mut full = LinkArray::default();
        for i in 0..CHUNK_LINKS {
            full.push(&format!("{{\"i\":{i}}}"));
        }
        let v: Vec<Vec<serde_json::Value>> = serde_json::from_str(&text(full)).unwrap();
        assert_eq!(v.iter().map(Vec::len).collect::<Vec<_>>(), [CHUNK_LINKS]);
        assert_eq!(text(LinkArray::default()), "[]");
    }
}
