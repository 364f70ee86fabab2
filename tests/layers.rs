//! The layers of `src/`, kept true: a file imports only from its own layer or the ones below, and
//! no two source files import each other, directly or around a circle.
//!
//! Bottom to top (see `docs/architecture.md`):
//! - **core**: pure or network-only — decoding, rules, SQL, the Snowflake client, the settings table;
//!   never the server's module API;
//! - **host**: every call into the server's module API (`src/host/`); it may read core's settings;
//! - **pipeline**: the write-behind pipeline and the work it does (`src/pipeline/`), and the offline
//!   migration (`src/migrate/`), which shares core with it;
//! - **commands**: one file per `WB.*` command (`src/commands/`).
//!
//! `src/lib.rs` (registration) and `src/bin/` sit above everything. Imports are read from the text:
//! every `crate::` and `super::` path, and paths through a file's own child modules, test modules
//! included.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and its layer, bottom (0) to top.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "core",
        &[
            "account",
            "docs",
            "entry",
            "mapping",
            "settings",
            "shard",
            "snowflake",
            "sql",
            "statement",
            "text",
        ],
    ),
    ("host", &["host"]),
    ("pipeline", &["pipeline", "migrate"]),
    ("commands", &["commands"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every source file of the library, as its module path (`["pipeline", "claim"]`; `mod.rs` is its
/// directory's module), with its text.
fn modules() -> BTreeMap<Vec<String>, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("src is readable")
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_stem()
                .and_then(|n| n.to_str())
                .expect("a UTF-8 file name")
                .to_string();
            if path.is_dir() {
                if prefix.is_empty() && name == "bin" {
                    continue;
                }
                let mut inner = prefix.to_vec();
                inner.push(name);
                walk(&path, &inner, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut module = prefix.to_vec();
                if name != "mod" && !(prefix.is_empty() && name == "lib") {
                    module.push(name);
                }
                let text = std::fs::read_to_string(&path).expect("a readable source file");
                out.insert(module, text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src(), &[], &mut out);
    out
}

/// The code of a file without its comments (a doc comment may name any module).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths `text` refers to: `crate::a::b`, `super::x`, `child::y`, and the names inside
/// `use` braces (`crate::a::{b, c::d}`).
fn referred(module: &[String], text: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let code = code(text);
    let mut out = Vec::new();
    for (i, _) in code.match_indices("::") {
        // The path ending just before this `::`, read backwards.
        let start = code[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |s| s + 1);
        // Only the first `::` of a path starts it.
        if code[..start].ends_with("::") || code[start..i].contains("::") {
            continue;
        }
        let head = &code[start..i];
        let base: Vec<String> = match head {
            "crate" => Vec::new(),
            "super" => module[..module.len().saturating_sub(1)].to_vec(),
            "self" => module.to_vec(),
            child if children.contains(child) => {
                let mut m = module.to_vec();
                m.push(child.to_string());
                m
            }
            _ => continue,
        };
        let mut rest = &code[i + 2..];
        let mut path = base;
        loop {
            while let Some(r) = rest.strip_prefix("super::") {
                path.pop();
                rest = r;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let item = item.trim();
                    let mut p = path.clone();
                    p.extend(
                        item.split("::")
                            .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
                            .filter(|s| !s.is_empty() && s != "self" && s != "*"),
                    );
                    out.push(p);
                }
                break;
            }
            let seg_end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let seg = &rest[..seg_end];
            if seg.is_empty() {
                break;
            }
            path.push(seg.to_string());
            rest = &rest[seg_end..];
            match rest.strip_prefix("::") {
                Some(r) => rest = r,
                None => break,
            }
        }
        out.push(path);
    }
    out
}

/// Whether `line` is a `pub use` of one of the file's own child modules.
fn reexports_a_child(line: &str, children: &BTreeSet<String>) -> bool {
    let Some(rest) = line.trim().strip_prefix("pub use ") else {
        return false;
    };
    let rest = rest.strip_prefix("self::").unwrap_or(rest);
    let head = rest.split("::").next().unwrap_or("");
    children.contains(head)
}

/// The longest prefix of `path` that is a source file's module.
fn file_of(path: &[String], files: &BTreeMap<Vec<String>, String>) -> Option<Vec<String>> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| files.contains_key(p))
}

/// Which file imports which, between distinct files.
fn imports() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = modules();
    let mut graph = BTreeMap::new();
    for (module, text) in &files {
        let children: BTreeSet<String> = files
            .keys()
            .filter(|k| k.len() == module.len() + 1 && k.starts_with(module))
            .map(|k| k[module.len()].clone())
            .collect();
        // An inline test module's `super` is the file itself.
        let (outer, tests) = match text.find("\nmod tests {") {
            Some(at) => text.split_at(at),
            None => (text.as_str(), ""),
        };
        // A parent's `pub use child::Item` only re-exports: the child's items are used through
        // the parent's name, so it is not an import of the child.
        let outer: String = outer
            .lines()
            .filter(|l| !reexports_a_child(l, &children))
            .collect::<Vec<_>>()
            .join("\n");
        let mut in_tests = module.clone();
        in_tests.push("tests".into());
        let mut to: BTreeSet<Vec<String>> = BTreeSet::new();
        let paths = referred(module, &outer, &children)
            .into_iter()
            .chain(referred(&in_tests, tests, &BTreeSet::new()));
        for path in paths {
            if let Some(file) = file_of(&path, &files) {
                // A file's own submodules, and the crate root (every path starts there), are not
                // imports of the file.
                if &file != module && !file.is_empty() {
                    to.insert(file);
                }
            }
        }
        graph.insert(module.clone(), to);
    }
    graph
}

fn shown(module: &[String]) -> String {
    if module.is_empty() {
        "lib".into()
    } else {
        module.join("::")
    }
}

fn layer_of(module: &[String]) -> Option<(usize, &'static str)> {
    let top = module.first()?;
    LAYERS
        .iter()
        .enumerate()
        .find(|(_, (_, members))| members.contains(&top.as_str()))
        .map(|(rank, (name, _))| (rank, *name))
}

#[test]
fn every_top_level_module_has_a_layer() {
    let files = modules();
    let tops: BTreeSet<&String> = files.keys().filter_map(|m| m.first()).collect();
    let missing: Vec<&&String> = tops
        .iter()
        .filter(|t| layer_of(&[t.to_string()]).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "src/{missing:?} is in no layer: add it to LAYERS in tests/layers.rs (and to docs/architecture.md)"
    );
}

#[test]
fn no_file_imports_from_a_layer_above_it() {
    let mut upward = Vec::new();
    for (from, to) in imports() {
        let Some((rank, layer)) = layer_of(&from) else {
            continue;
        };
        for target in to {
            if let Some((target_rank, target_layer)) = layer_of(&target) {
                if target_rank > rank {
                    upward.push(format!(
                        "{} ({layer}) imports {} ({target_layer})",
                        shown(&from),
                        shown(&target)
                    ));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports from a layer above:\n{}",
        upward.join("\n")
    );
}

/// A circle of imports in `graph`, if there is one.
fn circle<N: Ord + Clone>(graph: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<N: Ord + Clone>(
        n: &N,
        graph: &BTreeMap<N, BTreeSet<N>>,
        marks: &mut BTreeMap<N, Mark>,
        trail: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        match marks.get(n) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = trail.iter().position(|t| t == n).unwrap_or(0);
                let mut c = trail[from..].to_vec();
                c.push(n.clone());
                return Some(c);
            }
            None => {}
        }
        marks.insert(n.clone(), Mark::Open);
        trail.push(n.clone());
        for next in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, graph, marks, trail) {
                return Some(c);
            }
        }
        trail.pop();
        marks.insert(n.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_circle_between_top_level_modules() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in imports() {
        let Some(top) = from.first() else { continue };
        let entry = graph.entry(top.clone()).or_default();
        entry.extend(
            to.iter()
                .filter_map(|t| t.first())
                .filter(|t| *t != top)
                .cloned(),
        );
    }
    if let Some(c) = circle(&graph) {
        panic!(
            "the top-level modules import each other: {}",
            c.join(" -> ")
        );
    }
}

#[test]
fn no_circle_between_source_files() {
    let graph = imports();
    if let Some(c) = circle(&graph) {
        let names: Vec<String> = c.iter().map(|m| shown(m)).collect();
        panic!("source files import each other: {}", names.join(" -> "));
    }
}

#[test]
fn the_check_reads_imports_as_written() {
    let children: BTreeSet<String> = ["worker".to_string()].into();
    let module = vec!["pipeline".to_string()];
    let found = referred(
        &module,
        "use crate::host::{gil::Gil, stream};\nuse super::x;\nlet w = worker::spawn(); // crate::commands\n",
        &children,
    );
    let as_text: BTreeSet<String> = found.iter().map(|p| p.join("::")).collect();
    assert!(as_text.contains("host::gil::Gil"), "{as_text:?}");
    assert!(as_text.contains("host::stream"), "{as_text:?}");
    assert!(as_text.contains("x"), "{as_text:?}");
    assert!(as_text.contains("pipeline::worker::spawn"), "{as_text:?}");
    assert!(
        !as_text.iter().any(|p| p.starts_with("commands")),
        "{as_text:?}"
    );
}
