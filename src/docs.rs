//! The configuration reference, generated from the settings table.
//!
//! `docs/configuration.md` is the output of [`configuration_markdown`], byte for byte; `tests/docs.rs`
//! fails when the two differ and rewrites the file with `WB_WRITE_DOCS=1`. So the reference cannot drift
//! from [`crate::settings::TABLE`]: a new setting, a changed default or range shows up in the docs the
//! moment the test suite runs.

use std::fmt::Write;

use crate::settings::{Change, Group, Spec, SECRET_ENV, TABLE};

/// The groups in the order the reference shows them.
const ORDER: [Group; 8] = [
    Group::Stream,
    Group::Rules,
    Group::Pipeline,
    Group::Snowflake,
    Group::Restore,
    Group::Mappings,
    Group::Logging,
    Group::Ignored,
];

/// A group's heading and the paragraph under it.
fn describe(group: Group) -> (&'static str, &'static str) {
    match group {
        Group::Stream => (
            "Stream and consumer group",
            "Where the application's entries are and how the module reads them. The consumer group is the \
             queue's position: keep the sidecar's names and the module carries on where it stopped.",
        ),
        Group::Rules => (
            "Decoding and rules",
            "How an entry's JSON is found, repaired and turned into rows: the sidecar's rules, with its defaults.",
        ),
        Group::Pipeline => (
            "Pipeline",
            "Batching, retries and memory bounds of the background writer, and the dry-run switch.",
        ),
        Group::Snowflake => (
            "Snowflake connection",
            "Where to write and how to authenticate. Enough is configured when there is an account (or a URL), \
             a user, and a key file, a token file or `SNOWFLAKE_TOKEN`; until then `WB.STATUS` shows \
             `state: unconfigured` and nothing is consumed.",
        ),
        Group::Restore => (
            "Restore and legacy import",
            "Seeding an empty stream from Snowflake (at start-up and by `WB.RESTORE`), and copying legacy \
             string keys into the stream (at start-up and by `WB.IMPORT`).",
        ),
        Group::Mappings => (
            "Hash mappings",
            "Hashes under a key prefix written to a Snowflake table, the RedisGears rgsync role: see \
             [mappings.md](mappings.md).",
        ),
        Group::Logging => (
            "Logging and diagnostics",
            "What goes to the Redis log (`logfile` in redis.conf, or standard output in a container).",
        ),
        Group::Ignored => (
            "Accepted and ignored",
            "Settings of the sidecar that make no sense inside Redis. They are accepted, so the sidecar's env \
             list works unchanged, and each one that is set is logged once as ignored.",
        ),
    }
}

/// What each environment-only secret is.
fn secret_doc(name: &str) -> &'static str {
    match name {
        "SNOWFLAKE_TOKEN" => {
            "Bearer token (programmatic access token or OAuth, see `SNOWFLAKE_TOKEN_TYPE`) used instead of a key. \
             `SNOWFLAKE_TOKEN_FILE` is the alternative that can be rotated without a restart."
        }
        "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE" => {
            "Passphrase of an encrypted `SNOWFLAKE_PRIVATE_KEY_PATH` key; leave unset for an unencrypted key."
        }
        _ => "Secret read from the environment only.",
    }
}

/// A table cell: pipes escaped, never empty.
fn cell(text: &str) -> String {
    if text.is_empty() {
        return "(empty)".into();
    }
    text.replace('|', "\\|")
}

fn code(text: &str) -> String {
    if text.is_empty() {
        "(empty)".into()
    } else {
        format!("`{}`", text.replace('|', "\\|"))
    }
}

fn config(name: &str) -> String {
    format!("writebehind.{}", Spec::config_name(name))
}

fn row(out: &mut String, spec: &Spec) {
    let names = std::iter::once(spec.name)
        .chain(spec.aliases.iter().copied())
        .map(code)
        .collect::<Vec<_>>()
        .join("<br>");
    let configs = std::iter::once(spec.name)
        .chain(spec.aliases.iter().copied())
        .map(|n| code(&config(n)))
        .collect::<Vec<_>>()
        .join("<br>");
    let change = match spec.change {
        Change::Live => "live",
        Change::Restart => "restart",
    };
    let _ = writeln!(
        out,
        "| {names} | {configs} | {} | {} | {change} | {} |",
        code(spec.default),
        cell(&spec.accepted()),
        cell(spec.doc)
    );
}

/// The whole of `docs/configuration.md`.
pub fn configuration_markdown() -> String {
    let mut out = String::new();
    out.push_str(
        "<!-- Generated from src/settings.rs by src/docs.rs; do not edit by hand.\n     \
         Regenerate with: WB_WRITE_DOCS=1 cargo test --test docs -->\n\n",
    );
    out.push_str("# Configuration reference\n\n");
    out.push_str(
        "Every setting has one name in the environment (the Python sidecar's name, so its Kubernetes env \
         list works unchanged) and one module config, `writebehind.<name>`: the name lower-cased with `_` \
         turned into `-`. Sources, strongest first:\n\n\
         1. the module config, from `CONFIG SET`, a `writebehind.<name> <value>` line in redis.conf, or \
         `MODULE LOADEX <path> CONFIG writebehind.<name> <value>`;\n\
         2. the process environment under the setting's name, then under its aliases;\n\
         3. the default below.\n\n\
         `CONFIG GET writebehind.*` lists every value in force. A value outside the accepted range is \
         refused by `CONFIG SET` with the setting's name and the range; an invalid environment value is \
         logged as a warning and the default is used, so a typo never keeps Redis from starting.\n\n\
         **Changes:** `live` settings take effect at once on `CONFIG SET`, until the next restart \
         (keep them in redis.conf or the environment). `restart` settings are refused by `CONFIG SET` as immutable: set them \
         in redis.conf or the environment and restart Redis.\n\n\
         Booleans accept `1`/`0`, `yes`/`no`, `true`/`false`, `on`/`off`; `CONFIG GET` shows `1` or `0`.\n\n",
    );
    out.push_str("## Contents\n\n");
    for group in ORDER {
        let (title, _) = describe(group);
        let anchor = title.to_ascii_lowercase().replace(' ', "-");
        let _ = writeln!(out, "- [{title}](#{anchor})");
    }
    out.push_str("- [Secrets (environment only)](#secrets-environment-only)\n\n");
    for group in ORDER {
        let (title, intro) = describe(group);
        let _ = writeln!(out, "## {title}\n\n{intro}\n");
        out.push_str("| environment | module config | default | accepted | changes | meaning |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for spec in TABLE.iter().filter(|s| s.group == group) {
            row(&mut out, spec);
        }
        out.push('\n');
    }
    out.push_str("## Secrets (environment only)\n\n");
    out.push_str(
        "These are read from the process environment only. They are never module configs, so they never \
         show in `CONFIG GET`, `WB.STATUS`, `INFO` or the log (a module config marked sensitive is only \
         hidden from the log; `CONFIG GET` would still return it). In Kubernetes, take them from a Secret; \
         the private key itself is a file, named by `SNOWFLAKE_PRIVATE_KEY_PATH`.\n\n",
    );
    out.push_str("| environment | meaning |\n|---|---|\n");
    for name in SECRET_ENV {
        let _ = writeln!(out, "| `{name}` | {} |", cell(secret_doc(name)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_belongs_to_a_shown_group() {
        for s in TABLE {
            assert!(ORDER.contains(&s.group), "{} is in no shown group", s.name);
        }
    }

    #[test]
    fn every_secret_has_its_own_description() {
        for name in SECRET_ENV {
            assert_ne!(secret_doc(name), secret_doc("?"), "{name}");
        }
    }

    #[test]
    fn pipes_in_doc_lines_do_not_break_the_table() {
        let md = configuration_markdown();
        let line = md
            .lines()
            .find(|l| l.starts_with("| `HASH_NULL_TRACK_ID`"))
            .expect("HASH_NULL_TRACK_ID row");
        assert_eq!(line.matches(" | ").count(), 5, "{line}");
        assert!(line.contains("title\\|url\\|id"), "{line}");
    }

    #[test]
    fn aliases_are_listed_with_their_module_configs() {
        let md = configuration_markdown();
        let line = md
            .lines()
            .find(|l| l.starts_with("| `REDIS_STREAM`"))
            .expect("REDIS_STREAM row");
        assert!(line.contains("`STREAM`"), "{line}");
        assert!(line.contains("`writebehind.stream`"), "{line}");
        assert!(line.contains("restart"), "{line}");
    }
}
