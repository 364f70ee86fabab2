//! A batch of captured changes of one mapping to MERGE statements.
//!
//! Each change is converted first — its row id to the key column's type, each mapped value to its
//! column's ([`crate::mapping::column`]). A change that cannot be converted is set aside with the reason, to
//! be dead-lettered alone; the batch goes on without it, exactly as if the change had been applied
//! in order and refused. Then the changes are coalesced: per row, only the newest convertible change
//! is sent (it is the hash's state after all the others), so each statement has one source row per
//! target row and splitting a batch into several statements by bytes changes nothing.

use std::collections::HashMap;

use super::mapping::{merge_sql, push_row, ROW_FIXED_BYTES};
use super::LinkArray;
use crate::mapping::change::{Change, Kind};
use crate::mapping::column::Resolved;
use crate::statement::Statement;

/// What to do with a batch: the statements, and the changes (by index) refused with a reason.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub statements: Vec<Statement>,
    pub refused: Vec<(usize, String)>,
}

/// A change converted: the row id and each value as canonical text.
struct Row {
    delete: bool,
    values: Vec<Option<String>>,
}

/// Plans `changes` (in stream order) into MERGEs of `table` (quoted) of at most about `max_bytes`.
pub fn plan(table: &str, resolved: &Resolved, changes: &[Change<'_>], max_bytes: usize) -> Plan {
    let mut refused = Vec::new();
    // Row id -> (index of its newest change, the row); ids in first-seen order.
    let mut rows: HashMap<String, (usize, Row)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        match convert(resolved, change) {
            Ok((id, row)) => {
                if rows.insert(id.clone(), (i, row)).is_none() {
                    order.push(id);
                }
            }
            Err(why) => refused.push((i, why)),
        }
    }
    let sql = merge_sql(table, &resolved.key, &resolved.columns);
    let mut statements = Vec::new();
    let mut links = LinkArray::with_capacity(max_bytes.min(1 << 20));
    let mut bytes = 0;
    for id in &order {
        let (_, row) = &rows[id];
        let size = ROW_FIXED_BYTES
            + id.len()
            + row
                .values
                .iter()
                .flatten()
                .map(|v| v.len() + 8)
                .sum::<usize>();
        if bytes > 0 && bytes + size > max_bytes {
            let full =
                std::mem::replace(&mut links, LinkArray::with_capacity(max_bytes.min(1 << 20)));
            statements.push(Statement::new(sql.clone(), vec![full.into_bind()]));
            bytes = 0;
        }
        push_row(&mut links, id, row.delete, &row.values);
        bytes += size;
    }
    if bytes > 0 {
        statements.push(Statement::new(sql, vec![links.into_bind()]));
    }
    Plan {
        statements,
        refused,
    }
}

/// The row id and row of one change, or why it cannot be written.
fn convert(resolved: &Resolved, change: &Change<'_>) -> Result<(String, Row), String> {
    let key = &resolved.key;
    let id = change.row_id;
    let id = key
        .ty
        .convert(id)
        .map_err(|e| format!("row id '{}' for {} {e}", id.escape_ascii(), key.name))?;
    if change.kind == Kind::Delete {
        return Ok((
            id,
            Row {
                delete: true,
                values: vec![None; resolved.columns.len()],
            },
        ));
    }
    let values = resolved
        .columns
        .iter()
        .zip(&change.values)
        .map(|(c, v)| match v {
            Some(v) => c.ty.convert(v).map(Some).map_err(|e| {
                let shown = &v[..v.len().min(40)];
                format!("value '{}' for {} {e}", shown.escape_ascii(), c.name)
            }),
            None if !c.nullable => Err(format!(
                "{} is NOT NULL and the hash has no field for it",
                c.name
            )),
            None => Ok(None),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        id,
        Row {
            delete: false,
            values,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::change::{decode, encode};
    use crate::mapping::column::resolve;
    use crate::mapping::Mappings;

    fn setup(age_type: &str) -> (crate::mapping::Mapping, Resolved) {
        let m = Mappings::parse(
            "mappings: [{name: persons, key_prefix: 'person:', table: PERSONS, key_column: ID, \
             columns: {name: NAME, age: AGE}}]",
            "m.yaml",
        )
        .unwrap()
        .mappings
        .remove(0);
        let described = [
            ("ID".to_string(), "NUMBER(38,0)".to_string(), false),
            ("NAME".to_string(), "VARCHAR(20)".to_string(), false),
            ("AGE".to_string(), age_type.to_string(), true),
        ];
        let r = resolve(&m, &described).unwrap();
        (m, r)
    }

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn upsert(m: &crate::mapping::Mapping, key: &str, hash: &[(&str, &str)]) -> Fields {
        let hash: Vec<(&[u8], &[u8])> = hash
            .iter()
            .map(|(f, v)| (f.as_bytes(), v.as_bytes()))
            .collect();
        encode(m, key.as_bytes(), Kind::Upsert, None, false, &hash)
    }

    fn rows_of(plan: &Plan) -> Vec<serde_json::Value> {
        plan.statements
            .iter()
            .flat_map(|s| match &s.binds[0] {
                crate::statement::Bind::Escaped(t) => {
                    serde_json::from_str::<Vec<Vec<serde_json::Value>>>(&t.text()).unwrap()
                }
                other => panic!("{other:?}"),
            })
            .flatten()
            .collect()
    }

    #[test]
    fn the_newest_convertible_change_of_each_row_is_sent_once() {
        let (m, r) = setup("NUMBER(3,0)");
        let entries: Vec<Fields> = vec![
            upsert(&m, "person:1", &[("name", "Ann"), ("age", "30")]),
            upsert(&m, "person:2", &[("name", "Bob")]),
            upsert(&m, "person:1", &[("name", "Ann"), ("age", "31")]),
            // Refused: age does not fit; person:1 stays at the change before.
            upsert(&m, "person:1", &[("name", "Ann"), ("age", "1000")]),
            encode(&m, b"person:2", Kind::Delete, None, false, &[]),
            // Refused: NAME is NOT NULL.
            upsert(&m, "person:3", &[("age", "5")]),
            // Refused: the row id is not a number.
            upsert(&m, "person:x", &[("name", "X")]),
            // Same row as person:1 once converted.
            upsert(&m, "person:01", &[("name", "Ann"), ("age", "32.4")]),
        ];
        let changes: Vec<Change> = entries.iter().map(|e| decode(&m, e).unwrap()).collect();
        let plan = plan("\"PERSONS\"", &r, &changes, 1 << 20);
        let refused: Vec<usize> = plan.refused.iter().map(|(i, _)| *i).collect();
        assert_eq!(refused, [3, 5, 6], "{:?}", plan.refused);
        assert!(
            plan.refused[0]
                .1
                .contains("value '1000' for AGE has 4 integer digits"),
            "{:?}",
            plan.refused
        );
        assert!(plan.refused[1].1.contains("NAME is NOT NULL"));
        assert!(plan.refused[2].1.contains("row id 'x' for ID"));
        assert_eq!(plan.statements.len(), 1);
        assert_eq!(
            rows_of(&plan),
            [
                serde_json::json!({"k": "1", "d": false, "v": ["Ann", "32"]}),
                serde_json::json!({"k": "2", "d": true, "v": [null, null]}),
            ]
        );
    }

    #[test]
    fn a_batch_over_the_byte_cap_is_split_between_rows_and_keeps_every_row() {
        let (m, r) = setup("NUMBER(38,0)");
        let entries: Vec<Fields> = (0..100)
            .map(|i| {
                upsert(
                    &m,
                    &format!("person:{}", i % 40),
                    &[("name", "N"), ("age", &i.to_string())],
                )
            })
            .collect();
        let changes: Vec<Change> = entries.iter().map(|e| decode(&m, e).unwrap()).collect();
        let whole = plan("\"PERSONS\"", &r, &changes, 1 << 20);
        let split = plan("\"PERSONS\"", &r, &changes, 400);
        assert_eq!(whole.statements.len(), 1);
        assert!(split.statements.len() > 3, "{}", split.statements.len());
        let mut a = rows_of(&whole);
        let mut b = rows_of(&split);
        assert_eq!(a.len(), 40);
        a.sort_by_key(|v| v.to_string());
        b.sort_by_key(|v| v.to_string());
        assert_eq!(a, b);
        // Each row carries the last of its changes.
        assert!(a.contains(&serde_json::json!({"k": "0", "d": false, "v": ["N", "80"]})));
    }
}
