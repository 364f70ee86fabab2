//! The MERGE of a hash mapping: one statement per batch of changes to one table.
//!
//! The batch is coalesced first ([`super::mapping_plan`]): one source row per row id, the newest
//! change of the key, so the statement never has two source rows for one target row (Snowflake's
//! error 100090) and any split of a batch into statements gives the same table. Each source row
//! carries the row id, whether the key is gone, and the canonical text of each mapped value; the
//! `USING` subquery turns them into the columns' types with explicit formats
//! ([`crate::mapping::column::Type::format`]); then
//!
//! - a key that is gone deletes its row (`WHEN MATCHED AND s.d THEN DELETE`; a missing row stays missing),
//! - a hash updates every mapped column of its row — a field the hash lacks becomes `NULL`, so the
//!   row equals the hash — or inserts the row.
//!
//! As in every statement of the module, values only travel in the one JSON bind, and the only
//! configured text is the table and column names, validated and quoted.

use serde::Serialize;

use super::{LinkArray, LINKS_SOURCE};
use crate::mapping::column::{Column, Type};

/// A column name, quoted (names are validated identifiers, upper-case).
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `x`, a `VARCHAR` of canonical text, converted to `ty`.
fn cast(x: &str, ty: &Type) -> String {
    match (ty, ty.format()) {
        (Type::Number { precision, scale }, _) => {
            format!("CAST({x} AS NUMBER({precision},{scale}))")
        }
        (Type::Float, _) => format!("CAST({x} AS DOUBLE)"),
        (Type::Text { .. }, _) => x.to_string(),
        (Type::Boolean, _) => format!("TO_BOOLEAN({x})"),
        (Type::Date, Some(f)) => format!("TO_DATE({x}, '{f}')"),
        (Type::Time, Some(f)) => format!("TO_TIME({x}, '{f}')"),
        (Type::TimestampNtz, Some(f)) => format!("TO_TIMESTAMP_NTZ({x}, '{f}')"),
        (Type::TimestampLtz, Some(f)) => format!("TO_TIMESTAMP_LTZ({x}, '{f}')"),
        (Type::TimestampTz, Some(f)) => format!("TO_TIMESTAMP_TZ({x}, '{f}')"),
        (Type::Variant, _) => format!("PARSE_JSON({x})"),
        (Type::Object, _) => format!("TO_OBJECT(PARSE_JSON({x}))"),
        (Type::Array, _) => format!("TO_ARRAY(PARSE_JSON({x}))"),
        (Type::Binary { .. }, _) => format!("TO_BINARY({x}, 'HEX')"),
        (_, None) => unreachable!("date and time types have formats"),
    }
}

/// The MERGE into `table` (quoted) for a mapping's key column and columns. One `?`: the JSON array of
/// chunks of source rows ([`push_row`]).
pub fn merge_sql(table: &str, key: &Column, columns: &[Column]) -> String {
    let mut select = vec![
        format!("{} AS k", cast("f.value:k::VARCHAR", &key.ty)),
        "f.value:d::BOOLEAN AS d".to_string(),
    ];
    for (i, c) in columns.iter().enumerate() {
        select.push(format!(
            "{} AS c{i}",
            cast(&format!("f.value:v[{i}]::VARCHAR"), &c.ty)
        ));
    }
    let set: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = s.c{i}", quoted(&c.name)))
        .collect();
    let mut names = vec![quoted(&key.name)];
    names.extend(columns.iter().map(|c| quoted(&c.name)));
    let mut values = vec!["s.k".to_string()];
    values.extend((0..columns.len()).map(|i| format!("s.c{i}")));
    format!(
        "MERGE INTO {table} t USING (SELECT {select} {LINKS_SOURCE}) s ON t.{key} = s.k \
WHEN MATCHED AND s.d THEN DELETE \
WHEN MATCHED THEN UPDATE SET {set} \
WHEN NOT MATCHED AND NOT s.d THEN INSERT ({names}) VALUES ({values})",
        select = select.join(", "),
        key = quoted(&key.name),
        set = set.join(", "),
        names = names.join(", "),
        values = values.join(", "),
    )
}

#[derive(Serialize)]
struct RowJson<'a> {
    k: &'a str,
    d: bool,
    v: &'a [Option<String>],
}

/// Bytes of a source row's JSON besides its values, as an upper bound.
pub const ROW_FIXED_BYTES: usize = 32;

/// Appends one source row: the row id's canonical text, whether the key is gone, and the canonical
/// text of each mapped value (`None`: `NULL`).
pub fn push_row(links: &mut LinkArray, key: &str, delete: bool, values: &[Option<String>]) {
    let row = RowJson {
        k: key,
        d: delete,
        v: values,
    };
    if let Ok(text) = serde_json::to_string(&row) {
        links.push(&text);
    }
}

/// The statement that reads a mapping's table's columns (name, type, nullability).
pub fn describe_sql(table: &str) -> String {
    format!("DESCRIBE TABLE {table}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            ty: Type::parse(ty).unwrap(),
            nullable: true,
        }
    }

    #[test]
    fn the_merge_converts_every_value_with_an_explicit_format_and_binds_only_the_json() {
        let sql = merge_sql(
            "\"PERSONS\"",
            &col("PERSON_ID", "NUMBER(38,0)"),
            &[
                col("FIRST_NAME", "VARCHAR(100)"),
                col("BORN", "DATE"),
                col("SEEN", "TIMESTAMP_TZ(9)"),
            ],
        );
        assert_eq!(sql.matches('?').count(), 1, "{sql}");
        assert!(sql.starts_with("MERGE INTO \"PERSONS\" t USING (SELECT CAST(f.value:k::VARCHAR AS NUMBER(38,0)) AS k"), "{sql}");
        assert!(
            sql.contains("TO_DATE(f.value:v[1]::VARCHAR, 'YYYY-MM-DD') AS c1"),
            "{sql}"
        );
        assert!(
            sql.contains(
                "TO_TIMESTAMP_TZ(f.value:v[2]::VARCHAR, 'YYYY-MM-DD HH24:MI:SS.FF9 TZH:TZM') AS c2"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("ON t.\"PERSON_ID\" = s.k WHEN MATCHED AND s.d THEN DELETE"),
            "{sql}"
        );
        assert!(
            sql.contains("UPDATE SET \"FIRST_NAME\" = s.c0, \"BORN\" = s.c1, \"SEEN\" = s.c2"),
            "{sql}"
        );
        assert!(sql.ends_with("WHEN NOT MATCHED AND NOT s.d THEN INSERT (\"PERSON_ID\", \"FIRST_NAME\", \"BORN\", \"SEEN\") VALUES (s.k, s.c0, s.c1, s.c2)"), "{sql}");
    }

    #[test]
    fn a_source_row_is_small_json_with_nulls_for_missing_fields() {
        let mut links = LinkArray::with_capacity(64);
        push_row(&mut links, "7", false, &[Some("a\"b".into()), None]);
        push_row(&mut links, "8", true, &[None, None]);
        let json = links.into_bind().sql_value().unwrap_or_default();
        assert_eq!(
            json,
            r#"[[{"k":"7","d":false,"v":["a\"b",null]},{"k":"8","d":true,"v":[null,null]}]]"#
        );
        assert!(r#"{"k":"","d":false,"v":[]}"#.len() <= ROW_FIXED_BYTES);
    }
}
