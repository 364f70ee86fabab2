//! The mappings file (`MAPPINGS_FILE`): which hashes are written to which Snowflake table.
//!
//! ```yaml
//! mappings:
//!   - name: persons            # shows in WB.STATUS
//!     key_prefix: "person:"    # hashes whose key starts with it; the rest of the key is the row id
//!     table: PERSONS           # an existing Snowflake table
//!     key_column: PERSON_ID    # receives the row id
//!     columns: {first_name: FIRST_NAME, last_name: LAST_NAME, age: AGE}   # hash field -> column
//! ```
//!
//! Everything a file can get wrong is refused here, at load, as one line with the file, the line and
//! the reason (`mappings.yaml:7: key_column 'AGE' is also a mapped column`), so a typo never becomes a
//! mapping that silently writes nothing. The checks run inside deserialisation, which is what gives
//! each error the position of the node it is about. What only Snowflake knows (that the table and
//! its columns exist, their types) is checked when the pipeline first connects
//! ([`super::column`]).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::settings::validate_identifier;

/// One mapping: hashes under `key_prefix` to rows of `table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub name: String,
    pub key_prefix: String,
    /// As written in the file; validated (`NAME`, `SCHEMA.NAME` or `DB.SCHEMA.NAME`).
    pub table: String,
    /// Upper-case, as Snowflake stores an unquoted name.
    pub key_column: String,
    /// Hash field to column, in file order; columns upper-case.
    pub columns: Vec<FieldColumn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldColumn {
    pub field: String,
    pub column: String,
}

impl Mapping {
    /// The row id of `key` when this mapping covers it.
    pub fn row_id<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        key.strip_prefix(self.key_prefix.as_bytes())
            .filter(|id| !id.is_empty())
    }

    /// The stream the mapping's changes are captured into: `writebehind:<name>`.
    pub fn capture_stream(&self) -> String {
        format!("writebehind:{}", self.name)
    }

    /// Where changes that cannot be written go, with the reason: `writebehind:<name>:dlq`.
    pub fn dead_letter_stream(&self) -> String {
        format!("writebehind:{}:dlq", self.name)
    }

    /// The column a hash field goes to, if mapped.
    pub fn column_of(&self, field: &[u8]) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.field.as_bytes() == field)
    }
}

/// The whole file: at most one mapping covers a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mappings {
    pub mappings: Vec<Mapping>,
}

impl Mappings {
    /// Reads and validates `path`.
    pub fn load(path: &str) -> Result<Mappings, FileError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError {
            path: path.to_string(),
            line: None,
            reason: format!("cannot be read: {e}"),
        })?;
        Mappings::parse(&text, path)
    }

    /// Validates the text of a mappings file; `path` only names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Mappings, FileError> {
        serde_norway::from_str::<File>(text)
            .map(|f| Mappings {
                mappings: f.mappings.0,
            })
            .map_err(|e| FileError {
                path: path.to_string(),
                line: e.location().map(|l| l.line()),
                reason: reason_of(&e),
            })
    }

    /// The mapping covering `key` (prefixes never overlap, so there is at most one).
    pub fn of_key(&self, key: &[u8]) -> Option<&Mapping> {
        self.mappings.iter().find(|m| m.row_id(key).is_some())
    }

    pub fn by_name(&self, name: &str) -> Option<&Mapping> {
        self.mappings.iter().find(|m| m.name == name)
    }
}

/// Why a mappings file was refused: `file:line: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FileError {
    pub path: String,
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path, self.reason),
            None => write!(f, "{}: {}", self.path, self.reason),
        }
    }
}

/// The parser's message without its own " at line N column M" (the line is reported once, in front).
fn reason_of(e: &serde_norway::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    mappings: MappingList,
}

/// The list, checked as it is read so an error points at the mapping that caused it.
struct MappingList(Vec<Mapping>);

impl<'de> Deserialize<'de> for MappingList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = MappingList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of mappings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MappingList, A::Error> {
                let mut list: Vec<Mapping> = Vec::new();
                while let Some(m) = seq.next_element::<Mapping>()? {
                    if let Some(clash) = clash(&list, &m) {
                        return Err(de::Error::custom(clash));
                    }
                    list.push(m);
                }
                Ok(MappingList(list))
            }
        }
        d.deserialize_seq(ListVisitor)
    }
}

/// Why `m` cannot stand beside the mappings read before it.
fn clash(before: &[Mapping], m: &Mapping) -> Option<String> {
    let at = before.len();
    before.iter().find_map(|o| {
        if o.name.eq_ignore_ascii_case(&m.name) {
            Some(format!("mappings[{at}]: mapping name '{}' is used twice", m.name))
        } else if o.key_prefix.starts_with(&m.key_prefix) || m.key_prefix.starts_with(&o.key_prefix)
        {
            Some(format!(
                "mappings[{at}]: key_prefix '{}' of mapping '{}' overlaps key_prefix '{}' of mapping '{}': a key would belong to both",
                m.key_prefix, m.name, o.key_prefix, o.name
            ))
        } else {
            None
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    name: Name,
    key_prefix: KeyPrefix,
    table: Table,
    key_column: ColumnName,
    columns: ColumnList,
}

impl<'de> Deserialize<'de> for Mapping {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawMapping::deserialize(d)?;
        let m = Mapping {
            name: raw.name.0,
            key_prefix: raw.key_prefix.0,
            table: raw.table.0,
            key_column: raw.key_column.0,
            columns: raw.columns.0,
        };
        if m.columns.iter().any(|c| c.column == m.key_column) {
            return Err(de::Error::custom(format!(
                "key_column '{}' of mapping '{}' is also a mapped column",
                m.key_column, m.name
            )));
        }
        Ok(m)
    }
}

/// Deserialises a string and checks it; the error carries the string's position.
macro_rules! checked_string {
    ($name:ident, $check:expr) => {
        struct $name(String);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                let check: fn(String) -> Result<String, String> = $check;
                check(s).map($name).map_err(de::Error::custom)
            }
        }
    };
}

checked_string!(Name, |s| {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(s)
    } else {
        Err(format!(
            "mapping name '{}' must be 1-64 letters, digits, '_' or '-'",
            s.escape_debug()
        ))
    }
});

checked_string!(KeyPrefix, |s| {
    if s.is_empty() {
        Err("key_prefix must not be empty: it would map every hash".to_string())
    } else if s.starts_with("__{") {
        Err(format!(
            "key_prefix '{}' starts with '__{{', which names write-through keys",
            s.escape_debug()
        ))
    } else if s.len() > 256 {
        Err("key_prefix is longer than 256 bytes".to_string())
    } else {
        Ok(s)
    }
});

checked_string!(Table, |s| {
    validate_identifier(&s).map_err(|e| format!("table {e}"))?;
    Ok(s)
});

checked_string!(ColumnName, |s| {
    match validate_identifier(&s) {
        Ok(parts) if parts.len() == 1 => Ok(s.to_ascii_uppercase()),
        Ok(_) => Err(format!("column '{s}' must be a plain column name")),
        Err(e) => Err(format!("column {e}")),
    }
});

/// `field: COLUMN` pairs in file order; a field or a column named twice is refused.
struct ColumnList(Vec<FieldColumn>);

impl<'de> Deserialize<'de> for ColumnList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = ColumnList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of hash field to column")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ColumnList, A::Error> {
                let mut pairs: Vec<FieldColumn> = Vec::new();
                while let Some((field, column)) = map.next_entry::<String, ColumnName>()? {
                    let column = column.0;
                    if field.is_empty() || field == "#" {
                        return Err(de::Error::custom(format!(
                            "'{}' cannot be a mapped field",
                            field.escape_debug()
                        )));
                    }
                    if pairs.iter().any(|p| p.field == field) {
                        return Err(de::Error::custom(format!(
                            "field '{}' is mapped twice",
                            field.escape_debug()
                        )));
                    }
                    if pairs.iter().any(|p| p.column == column) {
                        return Err(de::Error::custom(format!(
                            "column '{column}' receives two fields"
                        )));
                    }
                    pairs.push(FieldColumn { field, column });
                }
                if pairs.is_empty() {
                    return Err(de::Error::custom("columns must map at least one field"));
                }
                Ok(ColumnList(pairs))
            }
        }
        d.deserialize_map(PairsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERSONS_AND_CARS: &str = "\
mappings:
  - name: persons
    key_prefix: \"person:\"
    table: PERSONS
    key_column: person_id
    columns: {first_name: FIRST_NAME, last_name: LAST_NAME, age: AGE}
  - name: cars
    key_prefix: \"car:\"
    table: DEMO.PUBLIC.CARS
    key_column: CAR_ID
    columns:
      license: LICENSE
      color: COLOR
";

    fn refused(text: &str) -> FileError {
        Mappings::parse(text, "m.yaml").expect_err("refused")
    }

    #[test]
    fn the_recipe_mappings_load_in_file_order() {
        let m = Mappings::parse(PERSONS_AND_CARS, "m.yaml").unwrap();
        assert_eq!(m.mappings.len(), 2);
        let persons = &m.mappings[0];
        assert_eq!(persons.key_column, "PERSON_ID");
        let fields: Vec<&str> = persons.columns.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["first_name", "last_name", "age"]);
        assert_eq!(m.mappings[1].table, "DEMO.PUBLIC.CARS");
        assert_eq!(m.of_key(b"car:7").map(|m| m.name.as_str()), Some("cars"));
        assert_eq!(m.of_key(b"person:").map(|m| m.name.as_str()), None);
        assert_eq!(m.of_key(b"boat:1"), None);
        assert_eq!(persons.row_id(b"person:007"), Some(&b"007"[..]));
        assert_eq!(persons.column_of(b"age"), Some(2));
    }

    #[test]
    fn json_is_a_mappings_file_too() {
        let json = r#"{"mappings": [{"name": "p", "key_prefix": "p:", "table": "P",
            "key_column": "ID", "columns": {"a": "A"}}]}"#;
        assert_eq!(Mappings::parse(json, "m.json").unwrap().mappings.len(), 1);
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_reason() {
        let bad_table = PERSONS_AND_CARS.replace("DEMO.PUBLIC.CARS", "CARS; DROP TABLE X");
        let e = refused(&bad_table);
        // The line of the mapping, and the path to the value.
        assert_eq!(e.line, Some(7), "{e}");
        assert!(
            e.to_string()
                .starts_with("m.yaml:7: mappings[1]: table 'CARS; DROP TABLE X' is not"),
            "{e}"
        );

        let e = refused(&PERSONS_AND_CARS.replace("color: COLOR", "color: LICENSE"));
        assert_eq!(e.line, Some(12), "{e}");
        assert!(
            e.reason.contains("column 'LICENSE' receives two fields"),
            "{e}"
        );

        let e = refused(&PERSONS_AND_CARS.replace("    table: PERSONS", "    tabel: PERSONS"));
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.reason.contains("unknown field `tabel`"), "{e}");
    }

    #[test]
    fn mappings_that_would_fight_over_a_key_are_refused() {
        let e = refused(&PERSONS_AND_CARS.replace("\"car:\"", "\"person:1\""));
        assert!(
            e.reason
                .contains("mappings[1]: key_prefix 'person:1' of mapping 'cars' overlaps"),
            "{e}"
        );
        assert!(e.line.is_some(), "{e}");
        let e = refused(&PERSONS_AND_CARS.replace("name: cars", "name: PERSONS"));
        assert!(e.reason.contains("used twice"), "{e}");
    }

    #[test]
    fn each_field_is_checked() {
        for (from, to, why) in [
            ("person_id", "AGE", "also a mapped column"),
            ("person_id", "a.b", "plain column name"),
            (
                "first_name: FIRST_NAME",
                "'#': FIRST_NAME",
                "cannot be a mapped field",
            ),
            ("name: persons", "name: \"per sons\"", "mapping name"),
            ("\"person:\"", "\"\"", "must not be empty"),
            ("\"person:\"", "\"__{person:\"", "write-through"),
            (
                "{first_name: FIRST_NAME, last_name: LAST_NAME, age: AGE}",
                "{}",
                "at least one",
            ),
            ("    table: PERSONS\n", "", "missing field `table`"),
        ] {
            let e = refused(&PERSONS_AND_CARS.replacen(from, to, 1));
            assert!(e.reason.contains(why), "{from} -> {to}: {e}");
        }
    }

    #[test]
    fn a_missing_file_says_so() {
        let e = Mappings::load("/nonexistent/mappings.yaml").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("/nonexistent/mappings.yaml: cannot be read"));
    }
}
