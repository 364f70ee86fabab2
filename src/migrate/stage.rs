//! The staging table: its name, and the statements that create, fill, merge and drop it.
//!
//! Why a transient staging table and one MERGE per target table is in [`super`] ("Writing"). The
//! table holds one row per link (TRACKED or USER, see [`crate::sql::fold`]): `target` says which,
//! `v` is the object the module's MERGE reads ([`crate::sql::links_json`]). The MERGEs are the module's own
//! ([`crate::sql::tracked::merge_sql`], [`crate::sql::user::merge_sql`]) with their JSON source
//! swapped for the staging rows, so the two can never drift apart in their rules.

use crate::sql::{self, Tables, Target};
use crate::statement::{Bind, Statement};

/// The row source of the module's MERGEs: the batch's links (see [`sql::LINKS_SOURCE`]).
pub const MERGE_SOURCE: &str = sql::LINKS_SOURCE;

/// The rows of a staging INSERT: a flat JSON array of links, one row per element.
pub const INSERT_SOURCE: &str =
    "FROM (SELECT PARSE_JSON(?) AS j) b, LATERAL FLATTEN(input => b.j) f";

/// What the module's MERGEs become for a staging table: the same rows, same column (`f.value`).
fn staged_source(stage: &str, target: Target) -> String {
    format!(
        "FROM (SELECT v AS value FROM {stage} WHERE target = '{}') f",
        target_code(target)
    )
}

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

    /// The module's MERGE for `target`, reading the staging table.
    pub fn merge(&self, tables: &Tables, target: Target) -> Result<Statement, String> {
        let module_sql = match target {
            Target::Tracked => sql::tracked::merge_sql(&tables.tracked),
            Target::User => sql::user::merge_sql(&tables.user),
        };
        merge_from_stage(&module_sql, self, target).map(|sql| Statement::new(sql, vec![]))
    }

    pub fn drop(&self) -> Statement {
        Statement::new(format!("DROP TABLE IF EXISTS {}", self.name), vec![])
    }
}

/// Swaps the JSON source of a module MERGE for the staging rows. Fails (rather than sending a
/// statement with a dangling `?`) if the MERGE no longer reads its rows the way this expects.
pub fn merge_from_stage(module_sql: &str, stage: &Stage, target: Target) -> Result<String, String> {
    if module_sql.matches(MERGE_SOURCE).count() != 1 {
        return Err(format!(
            "the {} MERGE no longer reads its rows with `{MERGE_SOURCE}`; the staging MERGE must follow it",
            target_code(target)
        ));
    }
    let sql = module_sql.replace(MERGE_SOURCE, &staged_source(&stage.name, target));
    if sql.contains('?') {
        return Err(format!(
            "the {} MERGE has bind variables besides its JSON source",
            target_code(target)
        ));
    }
    Ok(sql)
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
    fn a_merge_that_changed_its_source_is_refused() {
        assert!(
            merge_from_stage("MERGE INTO t USING (SELECT 1) s", &stage(), Target::User).is_err()
        );
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
        let (tracked, users) = sql::links_json(&[d]);
        assert_eq!((tracked.len(), users.len()), (1, 0));
        let json = format!("[{}]", tracked.join(","));
        let ins = stage().insert(Target::Tracked, &json);
        assert_eq!(ins.sql.matches('?').count(), 2);
        assert_eq!(ins.binds[0], Bind::Text("TRACKED".into()));
        assert_eq!(ins.binds[1], Bind::Text(json));
    }
}
