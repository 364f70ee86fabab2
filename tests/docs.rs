//! The docs cannot drift from the code: the configuration reference is the generator's output, every
//! command the module registers is documented, and every module config the docs name exists.
//!
//! `WB_WRITE_DOCS=1 cargo test --test docs` rewrites `docs/configuration.md` from the settings table.

use std::path::{Path, PathBuf};

use redis_writebehind::docs::configuration_markdown;
use redis_writebehind::settings::{Key, SECRET_ENV, TABLE};

fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(repo_path(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const REGENERATE: &str = "WB_WRITE_DOCS=1 cargo test --test docs";

#[test]
fn configuration_reference_matches_the_settings_table() {
    let generated = configuration_markdown();
    let path = repo_path("docs/configuration.md");
    if std::env::var("WB_WRITE_DOCS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk != generated {
        let first_difference = on_disk
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "one file is a prefix of the other".to_string(),
                |n| format!("first difference at line {}", n + 1),
            );
        panic!(
            "docs/configuration.md is out of date with src/settings.rs ({first_difference}).\n\
             Regenerate it with: {REGENERATE}"
        );
    }
}

/// The commands registered in `src/lib.rs`, upper-cased (`WB.STATUS`, ...).
fn registered_commands() -> Vec<String> {
    let lib = repo_file("src/lib.rs");
    let commands: Vec<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[\""))
        .filter_map(|rest| rest.split('"').next())
        .filter(|name| name.to_ascii_lowercase().starts_with("wb."))
        .map(str::to_ascii_uppercase)
        .collect();
    assert!(
        commands.len() >= 8,
        "found only {commands:?} in src/lib.rs; has the registration format changed?"
    );
    commands
}

#[test]
fn every_registered_command_is_in_the_readme_and_the_runbook() {
    for doc in ["README.md", "docs/operations.md"] {
        let text = repo_file(doc);
        for command in registered_commands() {
            assert!(
                text.contains(&command),
                "{doc} does not mention {command}, which src/lib.rs registers"
            );
        }
    }
}

#[test]
fn every_setting_and_secret_is_in_the_configuration_reference() {
    let text = repo_file("docs/configuration.md");
    for spec in TABLE {
        for name in std::iter::once(&spec.name).chain(spec.aliases) {
            assert!(
                text.contains(&format!("`{name}`")),
                "docs/configuration.md lacks {name}; regenerate it with: {REGENERATE}"
            );
        }
    }
    for name in SECRET_ENV {
        assert!(text.contains(&format!("`{name}`")), "lacks {name}");
    }
}

/// Every `writebehind.<name>` the hand-written docs mention is a real module config.
#[test]
fn module_configs_named_in_the_docs_exist() {
    for doc in [
        "README.md",
        "docs/operations.md",
        "docs/migration.md",
        "redis.conf",
    ] {
        let text = repo_file(doc);
        for (at, _) in text.match_indices("writebehind.") {
            // `libredis_writebehind.so`, `redis-writebehind.` are file and product names.
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                continue;
            }
            let name: String = text[at + "writebehind.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                .collect();
            let name = name.trim_end_matches('-');
            if name.is_empty() {
                continue; // `writebehind.<name>`, `writebehind.*`
            }
            assert!(
                Key::by_name(name).is_some(),
                "{doc} names writebehind.{name}, which is not a setting"
            );
        }
    }
}

/// Every kind of DDL statement `wb-migrate` runs (`CREATE ... TABLE`, `DROP TABLE`, ...) is named in the
/// migration guide's grants, with the grant that allows it.
#[test]
fn the_migration_guide_grants_cover_every_ddl_statement_wb_migrate_runs() {
    let guide = repo_file("docs/migration.md");
    let grants = &guide[guide
        .find("**Grants for `wb-migrate`.**")
        .expect("the migration guide has a grants paragraph for wb-migrate")..];
    let mut kinds = Vec::new();
    // wb-migrate's own files, and its staging table's statements (with the other SQL texts).
    let files = std::fs::read_dir(repo_path("src/migrate"))
        .expect("src/migrate")
        .map(|entry| entry.expect("entry").path())
        .chain([repo_path("src/sql/stage.rs")]);
    for path in files {
        let source = std::fs::read_to_string(path).expect("source");
        for verb in ["\"CREATE ", "\"DROP ", "\"ALTER ", "\"TRUNCATE "] {
            for (at, _) in source.match_indices(verb) {
                let text = &source[at + 1..];
                let Some(end) = text.find(" TABLE") else {
                    continue;
                };
                let kind = text[..end + " TABLE".len()].to_string();
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
        }
    }
    assert!(
        kinds.iter().any(|k| k.starts_with("CREATE"))
            && kinds.iter().any(|k| k.starts_with("DROP")),
        "wb-migrate's staging table statements were not found: {kinds:?}"
    );
    for kind in &kinds {
        assert!(
            grants.contains(kind.as_str()),
            "docs/migration.md's grants for wb-migrate do not mention {kind}"
        );
    }
    if kinds.iter().any(|k| k.starts_with("CREATE")) {
        assert!(grants.contains("GRANT CREATE TABLE ON SCHEMA"));
        assert!(grants.contains("GRANT USAGE ON SCHEMA"));
    }
}
