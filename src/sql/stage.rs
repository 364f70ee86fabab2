//! The migration's staging table: its name, and the statements that create, fill, merge and drop it.
//!
//! Why a transient staging table and one MERGE per target table is in [`crate::migrate`]
//! ("Writing"). The table holds one row per link (TRACKED or USER, see [`super::fold`]): `target`
//! says which, `v` is the object the module's MERGE reads ([`super::links_json`]). The MERGEs are
//! built by the module's own builders ([`tracked::merge_sql_from`], [`user::merge_sql_from`]) with
//! a staged [`Source`], so the two can never drift apart in their rules.

use super::tracked::{self, Position, Source};
use super::{user, Tables, Target};
use crate::statement::{Bind, Statement};

/// The rows of a staging INSERT: a flat JSON array of links, one row per element.
pub const INSERT_SOURCE: &str =
    "FROM (SELECT PARSE_JSON(?) AS j) b, LATERAL FLATTEN(input => b.j) f";

/// The `target` column's value for a statement target (a constant, never input).
pub fn target_code(target: Target) -> &'static str {
    match target {
        Target::Tracked => "TRACKED",
        Target::User => "USER",
    }
}

/// A staging table: its quoted name, in the schema of the TRACKED table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: String,
}

impl Stage {
    /// `WB_MIGRATE_<utc yyyymmddhhmmss>_<8 hex>` beside `tables.tracked` (same database and schema
    /// when the TRACKED name is qualified). The time makes a leftover table easy to date.
    pub fn new(tables: &Tables, utc_stamp: &str, random: u32) -> Stage {
        let leaf = format!("\"WB_MIGRATE_{utc_stamp}_{random:08X}\"");
        let name = match tables.tracked.rfind("\".\"") {
            Some(dot) => format!("{}.{leaf}", &tables.tracked[..=dot]),
            None => leaf,
        };
        Stage { name }
    }

    pub fn create(&self) -> Statement {
        Statement::new(
            format!(
                "CREATE TRANSIENT TABLE IF NOT EXISTS {} (target VARCHAR, v VARIANT)",
                self.name
            ),
            vec![],
        )
    }

    /// The bound INSERT of a flat JSON array of `target` links ([`sql::links_json`] objects).
    pub fn insert(&self, target: Target, json: &str) -> Statement {
        Statement::new(
            format!(
                "INSERT INTO {} (target, v) SELECT ?, f.value {INSERT_SOURCE}",
                self.name
            ),
            vec![
                Bind::Text(target_code(target).into()),
                Bind::Text(json.to_string()),
            ],
        )
    }

    /// The module's MERGE for `target`, reading the staging table. Fails (rather than sending a
    /// statement with a dangling `?`) should the MERGE ever bind anything besides its source.
    pub fn merge(&self, tables: &Tables, target: Target) -> Result<Statement, String> {
        let source = Source::Staged {
            stage: &self.name,
            target: target_code(target),
        };
        let sql = match target {
            Target::Tracked => tracked::merge_sql_from(&tables.tracked, Position::Stream, source),
            Target::User => user::merge_sql_from(&tables.user, source),
        };
        if sql.contains('?') {
            return Err(format!(
                "the {} MERGE has bind variables besides its JSON source",
                target_code(target)
            ));
        }
        Ok(Statement::new(sql, vec![]))
    }

    pub fn drop(&self) -> Statement {
        Statement::new(format!("DROP TABLE IF EXISTS {}", self.name), vec![])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{decode, EntryId, Rules};

    fn stage() -> Stage {
        Stage::new(&Tables::default(), "20251103121955", 0xAB)
    }

    #[test]
    fn the_stage_is_named_uniquely_beside_tracked() {
        assert_eq!(stage().name, "\"WB_MIGRATE_20251103121955_000000AB\"");
        let t = Tables::new("db.sch.tracked", "db.sch.user").unwrap();
        assert_eq!(
            Stage::new(&t, "20251103121955", 1).name,
            "\"DB\".\"SCH\".\"WB_MIGRATE_20251103121955_00000001\""
        );
    }

    #[test]
    fn both_module_merges_read_the_stage_and_bind_nothing() {
        let s = stage();
        for target in [Target::Tracked, Target::User] {
            let m = s.merge(&Tables::default(), target).unwrap();
            assert!(m.binds.is_empty());
            assert!(!m.sql.contains('?'), "{}", m.sql);
            assert!(m.sql.contains(&format!(
                "FROM (SELECT v AS value FROM {} WHERE target = '{}') f",
                s.name,
                target_code(target)
            )));
        }
    }

    #[test]
    fn a_staged_merge_is_the_module_merge_with_the_stage_as_its_source() {
        let s = stage();
        let t = Tables::default();
        for (target, module) in [
            (Target::Tracked, tracked::merge_sql(&t.tracked)),
            (Target::User, user::merge_sql(&t.user)),
        ] {
            let staged = s.merge(&t, target).unwrap().sql;
            let source = Source::Staged {
                stage: &s.name,
                target: target_code(target),
            };
            assert_eq!(
                staged.replace(&source.from_clause(), tracked::LINKS_SOURCE),
                module
            );
        }
    }

    #[test]
    fn inserts_carry_the_target_and_the_links_as_binds() {
        let rules = Rules {
            skip_freshness: true,
            ..Rules::default()
        };
        let d = decode(
            EntryId::new(1, 0),
            &[(
                b"value".to_vec(),
                br#"{"key":"userdata-events:a-1/visited","records":[{"id":"a-1","lastplus":"2025-11-03 12:00:00"}]}"#.to_vec(),
            )],
            &rules,
        );
        let (tracked, users) = super::super::links_json(&[d]);
        assert_eq!((tracked.len(), users.len()), (1, 0));
        let json = format!("[{}]", tracked.join(","));
        let ins = stage().insert(Target::Tracked, &json);
        assert_eq!(ins.sql.matches('?').count(), 2);
        assert_eq!(ins.binds[0], Bind::Text("TRACKED".into()));
        assert_eq!(ins.binds[1], Bind::Text(json));
    }
}
