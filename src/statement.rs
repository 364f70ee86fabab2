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
    /// `FIXED` (an integer).
    Fixed(i64),
    /// A SQL NULL of type `TEXT`.
    Null,
}

impl Bind {
    /// The SQL API type name.
    pub fn sql_type(&self) -> &'static str {
        match self {
            Bind::Text(_) | Bind::Null => "TEXT",
            Bind::Fixed(_) => "FIXED",
        }
    }

    /// The SQL API value (always sent as a string, or null).
    pub fn sql_value(&self) -> Option<String> {
        match self {
            Bind::Text(s) => Some(s.clone()),
            Bind::Fixed(n) => Some(n.to_string()),
            Bind::Null => None,
        }
    }

    /// Bytes this bind adds to a request, for batch size caps.
    pub fn size(&self) -> usize {
        match self {
            Bind::Text(s) => s.len(),
            Bind::Fixed(_) => 20,
            Bind::Null => 4,
        }
    }
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
