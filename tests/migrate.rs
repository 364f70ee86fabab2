//! `wb-migrate` end to end: dump files made by a real redis-server 8 (`SAVE`), loaded into the
//! emulator by the built binary, checked row by row; re-runs change nothing; a dry run writes nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::emulator::Emulator;
use common::redis_server::{q, redis_server_bin, Options, RedisServer};
use serde_json::json;

/// A dump file made by a fresh redis-server 8 (no module) after `fill` wrote its data.
fn make_dump(dir: &Path, name: &str, fill: impl FnOnce(&mut redis::Connection)) -> PathBuf {
    let server = RedisServer::start(Options::default().without_module());
    let mut con = server.connection();
    fill(&mut con);
    let _: String = q(&mut con, &["SAVE"]);
    let path = dir.join(name);
    std::fs::copy(server.dir.path().join("dump.rdb"), &path).expect("dump.rdb copied");
    path
}

/// Runs the built binary against `emu` with a clean environment plus `env`.
fn migrate(emu: &Emulator, args: &[&str], dumps: &[&Path], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wb-migrate"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SNOWFLAKE_URL", &emu.url)
        .env("SNOWFLAKE_ACCOUNT", &emu.opts.account)
        .env("SNOWFLAKE_USER", &emu.opts.user)
        .env("SNOWFLAKE_PRIVATE_KEY_PATH", &emu.key_path)
        .env("SNOWFLAKE_DATABASE", &emu.opts.database)
        .env("SNOWFLAKE_SCHEMA", &emu.opts.schema)
        .env("SNOWFLAKE_WAREHOUSE", "TEST_WH")
        .env("SNOWFLAKE_REQUEST_TIMEOUT_SECONDS", "60")
        .arg("--redis-server")
        .arg(redis_server_bin())
        .args(args)
        .args(dumps);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("wb-migrate runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn succeeded(o: &Output) -> String {
    let text = stderr(o);
    assert!(o.status.success(), "wb-migrate failed:\n{text}");
    text
}

fn num(emu: &Emulator, sql: &str) -> i64 {
    emu.scalar(sql)
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(-1, |f| f as i64)
}

fn rows(emu: &Emulator, sql: &str) -> Vec<Vec<Option<String>>> {
    emu.sql(sql)
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// A record as the application wrote them.
fn record(id: &str, track: &str, action: &str, lastplus: &str) -> serde_json::Value {
    json!({"id": id, "page_name": "search", "query_row_count": "5", "track_id": track,
        "track_title": format!("Title {track}"), "track_type": "query",
        "track_url": format!("/search?q={track}"), "lastplus": lastplus, "action": action})
}

fn batch(user: &str, kind: &str, records: &[serde_json::Value]) -> String {
    json!({"key": format!("userdata-events:{user}/{kind}"), "records": records}).to_string()
}

/// 2025-11-03 12:00:00 UTC, and a stream entry ID at `secs` after it.
const T0_MS: u64 = 1_762_171_200_000;
fn id_at(secs: u64) -> String {
    format!("{}-0", T0_MS + secs * 1000)
}

/// The old deployment's data: legacy string keys (Redis 6 design) and stream entries (Redis 8).
fn fill_old_deployment(con: &mut redis::Connection) {
    // Legacy batches: a whole batch under a bridge key, and records under their batch key's name.
    let legacy_visits = batch(
        "alice-1",
        "visited",
        &[
            record("alice-1", "t1", "v", "2025-11-03 11:00:00"),
            record("alice-1", "t1", "v", "2025-11-03 11:00:10"),
        ],
    );
    let _: () = q(con, &["SET", "legacy:batch:1", &legacy_visits]);
    let bob_saves = json!([record("bob-1", "t9", "s", "2025-11-03 11:30:00")]).to_string();
    let _: () = q(con, &["SET", "userdata-events:bob-1/saved", &bob_saves]);
    let _: () = q(con, &["SET", "legacy:batch:bad", "{not json"]);
    // Matches no pattern: never loaded.
    let other = batch(
        "carol-1",
        "visited",
        &[record("carol-1", "t5", "v", "2025-11-03 11:00:00")],
    );
    let _: () = q(con, &["SET", "other:batch", &other]);

    // Stream entries, with IDs at the records' times (the time Redis received them).
    let entries: Vec<(u64, Vec<(&str, String)>)> = vec![
        (
            0,
            vec![("value", r#"{"user_email":"alice@example.com"}"#.into())],
        ),
        (
            1,
            vec![(
                "value",
                batch(
                    "alice-1",
                    "visited",
                    &[record("alice-1", "t1", "v", "2025-11-03 12:00:01")],
                ),
            )],
        ),
        (
            2,
            vec![(
                "value",
                batch(
                    "bob-1",
                    "saved",
                    &[record("bob-1", "t9", "d", "2025-11-03 12:00:02")],
                ),
            )],
        ),
        (
            3,
            vec![(
                "value",
                r#"{"diag":"ping","ts":"2025-11-03 12:00:03"}"#.into(),
            )],
        ),
        (
            4,
            vec![
                (
                    "value",
                    batch(
                        "alice-1",
                        "visited",
                        &[record("alice-1", "t1", "v", "2025-11-03 12:00:04")],
                    ),
                ),
                ("wb_restored", "1".into()),
            ],
        ),
        (
            5,
            vec![(
                "value",
                batch(
                    "alice-1",
                    "visited",
                    &[record("alice-1", "t2", "v", "2025-11-03 11:00:00")],
                ),
            )],
        ),
    ];
    for (secs, fields) in entries {
        let id = id_at(secs);
        let mut args = vec!["XADD", "userdata-stream", id.as_str()];
        for (k, v) in &fields {
            args.push(k);
            args.push(v);
        }
        let _: String = q(con, &args);
    }
}

const TRACKED_ROWS: &str = "SELECT tracked_id, track_id, saved, visited_count, \
    TO_VARCHAR(visited_dts), TO_VARCHAR(saved_dts), TO_VARCHAR(deleted_dts), username \
    FROM TRACKED ORDER BY tracked_id, track_id";

fn staging_tables_left(emu: &Emulator) -> i64 {
    num(
        emu,
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name LIKE 'WB_MIGRATE%'",
    )
}

#[test]
fn dump_of_legacy_keys_and_stream_loads_exact_rows_and_a_rerun_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dump = make_dump(dir.path(), "old.rdb", fill_old_deployment);
    let emu = Emulator::start();
    let args = ["--match", "legacy:*", "--match", "userdata-events:*"];

    let out = migrate(&emu, &args, &[&dump], &[]);
    let report = succeeded(&out);
    eprintln!("{report}");

    let expected = vec![
        // Two legacy visits and one stream visit; the restored entry is not written back, and the
        // visit of t2 is stale by its entry's own time (an hour older than the entry): no row.
        vec![
            s("alice-1"),
            s("t1"),
            s("0"),
            s("3"),
            s("2025-11-03 12:00:01"),
            None,
            None,
            s("alice"),
        ],
        // Saved from the legacy key, deleted by the stream.
        vec![
            s("bob-1"),
            s("t9"),
            s("0"),
            s("0"),
            None,
            s("2025-11-03 11:30:00"),
            s("2025-11-03 12:00:02"),
            s("bob"),
        ],
    ];
    let got = rows(&emu, TRACKED_ROWS);
    assert_eq!(got, expected, "{report}");
    assert_eq!(
        rows(&emu, "SELECT user_email, username FROM \"USER\""),
        vec![vec![s("alice@example.com"), s("alice")]]
    );
    assert!(
        report.contains("undecodable entries: 1 (invalid_json=1)"),
        "{report}"
    );
    assert!(report.contains("key legacy:batch:bad"), "{report}");
    assert!(
        report.contains("records: 6 read, 5 written, 1 skipped (stale_visit=1)"),
        "{report}"
    );
    assert!(report.contains("restored=1"), "{report}");
    assert_eq!(staging_tables_left(&emu), 0);

    // The same dump again, and twice on one command line: nothing changes.
    let again = migrate(&emu, &args, &[&dump, &dump], &[]);
    let report = succeeded(&again);
    eprintln!("{report}");
    assert_eq!(rows(&emu, TRACKED_ROWS), expected, "{report}");
    assert_eq!(num(&emu, "SELECT COUNT(*) FROM \"USER\""), 1);
    assert!(
        report.contains("rows inserted or updated (TRACKED=0, USER=0)"),
        "{report}"
    );
    assert!(report.contains("duplicates left out"), "{report}");
    assert_eq!(staging_tables_left(&emu), 0);
}

#[test]
fn dry_run_plans_and_logs_the_sql_but_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dump = make_dump(dir.path(), "old.rdb", fill_old_deployment);
    let emu = Emulator::start();
    emu.reset();
    let out = migrate(&emu, &["--dry-run", "--match", "legacy:*"], &[&dump], &[]);
    let report = succeeded(&out);
    assert!(report.contains("DRY_RUN stage TRACKED"), "{report}");
    assert!(
        report.contains("DRY_RUN SQL (TRACKED): MERGE INTO"),
        "{report}"
    );
    assert!(report.contains("dry run: wb-migrate summary"), "{report}");
    assert_eq!(num(&emu, "SELECT COUNT(*) FROM TRACKED"), 0);
    assert_eq!(num(&emu, "SELECT COUNT(*) FROM \"USER\""), 0);
    assert_eq!(emu.stats()["round_trips"], 0);
}

#[test]
fn a_file_that_is_not_a_dump_fails_with_one_clear_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bogus = dir.path().join("not-a-dump.rdb");
    std::fs::write(&bogus, "hello").expect("file written");
    let emu = Emulator::start();
    let out = migrate(&emu, &[], &[&bogus], &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("wb-migrate: error: ") && last.contains("not a Redis dump file"),
        "{text}"
    );
}

/// 10,000 records: 1,000 legacy keys and 1,000 stream entries of 5 records each, over 200 users.
#[test]
fn ten_thousand_records_load_exactly_in_a_few_round_trips() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dump = make_dump(dir.path(), "big.rdb", |con| {
        let mut pipe = redis::pipe();
        for i in 0..2000u64 {
            let user = format!("user{}-1", i % 200);
            let recs: Vec<serde_json::Value> = (0..5)
                .map(|r| {
                    record(
                        &user,
                        &format!("t{}", (i + r) % 7),
                        "v",
                        "2025-11-03 12:00:00",
                    )
                })
                .collect();
            let value = batch(&user, "visited", &recs);
            if i < 1000 {
                pipe.cmd("SET")
                    .arg(format!("legacy:{i}"))
                    .arg(value)
                    .ignore();
            } else {
                pipe.cmd("XADD")
                    .arg("userdata-stream")
                    .arg(format!("{T0_MS}-{i}"))
                    .arg("value")
                    .arg(value)
                    .ignore();
            }
        }
        pipe.query::<()>(con).expect("data written");
    });
    let emu = Emulator::start();
    emu.reset();
    let started = Instant::now();
    // DEBUG: each statement's size and time, for the figures.
    let out = migrate(
        &emu,
        &["--match", "legacy:*"],
        &[&dump],
        &[("LOG_LEVEL", "DEBUG")],
    );
    let wall = started.elapsed();
    let report = succeeded(&out);
    let trips = emu.stats()["round_trips"].clone();
    eprintln!("{report}");
    eprintln!(
        "10,000 records: wall time {:.2} s, {trips} round trips (emulator)",
        wall.as_secs_f64()
    );
    assert_eq!(num(&emu, "SELECT SUM(visited_count) FROM TRACKED"), 10_000);
    assert_eq!(num(&emu, "SELECT COUNT(*) FROM TRACKED"), 200 * 7);
    assert!(
        report.contains("records: 10000 read, 10000 written"),
        "{report}"
    );
    // Create the staging table, a few ~900 kB INSERTs, one MERGE, drop: not one per entry or step.
    // (Round trips also count status polls of statements that ran long, which depends on machine load.)
    let statements = emu.stats()["statements"].clone();
    assert!(
        statements.as_u64().is_some_and(|n| n <= 10),
        "{statements} statements"
    );

    emu.reset();
    let started = Instant::now();
    let again = migrate(&emu, &["--match", "legacy:*"], &[&dump], &[]);
    let report = succeeded(&again);
    eprintln!(
        "10,000 records again: wall time {:.2} s, {} round trips (emulator)",
        started.elapsed().as_secs_f64(),
        emu.stats()["round_trips"]
    );
    assert_eq!(
        num(&emu, "SELECT SUM(visited_count) FROM TRACKED"),
        10_000,
        "{report}"
    );
}
