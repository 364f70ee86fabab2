//! Table names from configuration, made safe to put into SQL text.
//!
//! Values always travel as binds, but a table name cannot be bound, so it is the one piece of
//! configuration that enters the SQL text. It is validated by [`crate::settings::validate_identifier`]
//! (letters, digits, `_`, `$`; at most `DB.SCHEMA.NAME`) and each part is emitted quoted and upper-case:
//! `"TRACKED"`, `"DB"."SCHEMA"."USER"`. Upper-case quoted is exactly what Snowflake makes of the
//! unquoted name, and quoting keeps names such as `USER` (a keyword in some engines) unambiguous.

use crate::settings::validate_identifier;

/// A validated, quoted, upper-case table name, e.g. `"DB"."SCHEMA"."TRACKED"`.
pub fn quote_table(name: &str) -> Result<String, String> {
    let parts = validate_identifier(name.trim())?;
    Ok(parts
        .iter()
        .map(|p| format!("\"{}\"", p.to_ascii_uppercase().replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_quoted_upper_case_per_part() {
        assert_eq!(quote_table("TRACKED").unwrap(), "\"TRACKED\"");
        assert_eq!(quote_table("user").unwrap(), "\"USER\"");
        assert_eq!(
            quote_table("db.sch.t_1$").unwrap(),
            "\"DB\".\"SCH\".\"T_1$\""
        );
    }

    #[test]
    fn names_that_could_change_a_statement_are_refused() {
        for bad in ["", "T; DROP TABLE X", "\"T\"", "a.b.c.d", "t--", "t'"] {
            assert!(quote_table(bad).is_err(), "{bad}");
        }
    }
}
