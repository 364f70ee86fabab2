//! Restore from Snowflake into an empty stream, and the legacy string-key import.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::emulator::Emulator;
use common::redis_server::{q, q_err, RedisServer};
use common::wired;

fn days_ago(d: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(d))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Seeds TRACKED/USER: alice with two visited pages and one saved item, bob visited, and an old row.
fn seed_snowflake(emu: &Emulator) {
    let recent = days_ago(1);
    let old = days_ago(30);
    emu.sql("INSERT INTO \"USER\" (user_email, username) VALUES ('alice@example.com', 'alice'), ('bob@example.com', 'bob')");
    emu.sql(&format!(
        "INSERT INTO TRACKED (tracked_id, track_id, username, page_name, query_row_count, track_title, track_type, track_url, visited_count, visited_dts, saved, saved_dts, last_entry_id) VALUES \
         ('alice-1', 'a1', 'alice', 'search', 5, 'A1', 'QUERY', '/a1', 3, '{recent}', 0, NULL, '00000000000000000001-00000000000000000000'), \
         ('alice-1', 'a2', 'alice', 'home', 1, 'A2', 'QUERY', '/a2', 1, '{recent}', 1, '{recent}', '00000000000000000001-00000000000000000000'), \
         ('bob-7', 'b1', 'bob', 'search', 2, 'B1', 'REPORT', '/b1', 2, '{recent}', 0, NULL, '00000000000000000001-00000000000000000000'), \
         ('carol-3', 'c1', 'carol', 'search', 2, 'C1', 'REPORT', '/c1', 9, '{old}', 0, NULL, '00000000000000000001-00000000000000000000')"
    ));
}

fn entries(con: &mut redis::Connection) -> Vec<(String, BTreeMap<String, String>)> {
    q(con, &["XRANGE", "userdata-stream", "-", "+"])
}

fn flush(con: &mut redis::Connection) {
    con.set_read_timeout(Some(Duration::from_secs(70)))
        .expect("timeout");
    let ok: String = q(con, &["WB.FLUSH", "60000"]);
    assert_eq!(ok, "OK");
}

fn sum_visits(emu: &Emulator) -> i64 {
    emu.scalar("SELECT SUM(visited_count) FROM TRACKED")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(-1.0) as i64
}

#[test]
fn an_empty_stream_is_restored_at_start_up_and_nothing_is_written_back() {
    let emu = Emulator::start();
    seed_snowflake(&emu);
    let server = RedisServer::start(wired(&emu).env("RESTORE_ON_EMPTY", "1"));
    let mut con = server.connection();
    let marker: String = server.wait_for("the restore marker", Duration::from_secs(30), || {
        let v: Option<String> = q(&mut con, &["GET", "_userdata_stream_restored"]);
        v.filter(|m| m.starts_with("done"))
    });
    assert!(marker.ends_with(" 6"), "{marker}");
    let all = entries(&mut con);
    let values: Vec<&str> = all.iter().map(|(_, f)| f["value"].as_str()).collect();
    assert_eq!(all.len(), 6, "{values:?}"); // two users, four groups
    assert!(all
        .iter()
        .all(|(_, f)| f.get("wb_restored").map(String::as_str) == Some("1")));
    for key in [
        "userdata-events:alice-1/visited/search",
        "userdata-events:alice-1/visited/home",
        "userdata-events:alice-1/saved",
        "userdata-events:bob-7/visited/search",
    ] {
        assert!(
            values
                .iter()
                .any(|v| v.contains(&format!("\"key\":\"{key}\""))),
            "{key} missing: {values:?}"
        );
    }
    assert!(values.iter().any(|v| v.contains("alice@example.com")));
    assert!(
        !values.iter().any(|v| v.contains("carol")),
        "an old row was restored"
    );
    flush(&mut con);
    assert_eq!(sum_visits(&emu), 15, "restored entries were written back");
    // The marker keeps a second run from happening; FORCE runs anyway; USER restores one user.
    let e = q_err(&mut con, &["WB.RESTORE"]);
    assert!(
        e.contains("marker key _userdata_stream_restored exists"),
        "{e}"
    );
    let forced: BTreeMap<String, i64> = q(&mut con, &["WB.RESTORE", "FORCE", "DAYS", "60"]);
    assert_eq!(forced["rows"], 4);
    let bob: BTreeMap<String, i64> = q(&mut con, &["WB.RESTORE", "USER", "bob"]);
    assert_eq!((bob["rows"], bob["entries"]), (1, 2));
    flush(&mut con);
    assert_eq!(sum_visits(&emu), 15);
}

#[test]
fn restore_honours_its_switches() {
    let emu = Emulator::start();
    seed_snowflake(&emu);
    // Off: nothing restored.
    let server = RedisServer::start(wired(&emu).env("RESTORE_ON_EMPTY", "0"));
    let mut con = server.connection();
    assert!(q_err(&mut con, &["WB.RESTORE", "BOGUS"]).contains("FORCE, DAYS n or USER name"));
    assert!(q_err(&mut con, &["WB.RESTORE", "DAYS", "-1"]).contains("DAYS"));
    // Below the minimum-rows trigger: skipped with the reason.
    let _: String = q(
        &mut con,
        &[
            "CONFIG",
            "SET",
            "writebehind.restore-min-rows-trigger",
            "10",
        ],
    );
    assert!(q_err(&mut con, &["WB.RESTORE"]).contains("fewer than RESTORE_MIN_ROWS_TRIGGER=10"));
    let _: String = q(
        &mut con,
        &["CONFIG", "SET", "writebehind.restore-min-rows-trigger", "0"],
    );
    // Visited only, no page segment, a limit of two rows, two records per entry.
    for (k, v) in [
        ("restore-include-saved", "0"),
        ("key-append-page", "0"),
        ("restore-limit-total", "2"),
        ("restore-batch-size", "2"),
    ] {
        let _: String = q(&mut con, &["CONFIG", "SET", &format!("writebehind.{k}"), v]);
    }
    let got: BTreeMap<String, i64> = q(&mut con, &["WB.RESTORE"]);
    assert_eq!((got["rows"], got["records"]), (2, 2));
    let values: Vec<String> = entries(&mut con)
        .into_iter()
        .map(|(_, f)| f["value"].clone())
        .collect();
    assert!(
        values
            .iter()
            .any(|v| v.contains("\"key\":\"userdata-events:alice-1/visited\"")),
        "{values:?}"
    );
    assert!(!values.iter().any(|v| v.contains("/saved")));
}

#[test]
fn a_restore_of_many_rows_reads_them_partition_by_partition_and_holds_a_bounded_amount() {
    let emu = Emulator::start_with(common::emulator::Options {
        partition_rows: 250,
        ..Default::default()
    });
    let recent = days_ago(1);
    let rows: Vec<String> = (0..3000)
        .map(|i| {
            format!(
                "('u{:03}-x', 't{i:05}', 'u{:03}', 'page{}', 1, 'title {i} with some words in it', 'QUERY', '/tracks/{i}', 1, '{recent}', 0, NULL, '00000000000000000001-00000000000000000000')",
                i / 100,
                i / 100,
                i % 7
            )
        })
        .collect();
    emu.sql(&format!(
        "INSERT INTO TRACKED (tracked_id, track_id, username, page_name, query_row_count, track_title, track_type, track_url, visited_count, visited_dts, saved, saved_dts, last_entry_id) VALUES {}",
        rows.join(", ")
    ));
    let server = RedisServer::start(
        wired(&emu)
            .env("RESTORE_ON_EMPTY", "0")
            .env("RESTORE_LIMIT_TOTAL", "100000")
            .env("RESTORE_BATCH_SIZE", "5"),
    );
    let mut con = server.connection();
    con.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let got: BTreeMap<String, i64> = q(&mut con, &["WB.RESTORE", "FORCE"]);
    assert_eq!((got["rows"], got["records"]), (3000, 3000), "{got:?}");
    let added = entries(&mut con);
    assert_eq!(added.len() as i64, got["entries"]);
    let total: usize = added.iter().map(|(_, f)| f["value"].len()).sum();
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("RESTORE done: 3000 rows"))
        .unwrap_or_else(|| panic!("no RESTORE done line in {log}"));
    let figure = |after: &str, before: &str| -> usize {
        let rest = &line[line.find(after).expect(after) + after.len()..];
        rest[..rest.find(before).expect(before)]
            .trim()
            .parse()
            .expect("a number")
    };
    let partitions = figure("read in ", " partitions");
    let held = figure("at most ", " bytes");
    eprintln!("MEASURED restore of 3000 rows: {total} bytes added, {partitions} partitions, at most {held} bytes held");
    assert_eq!(partitions, 12, "{line}");
    assert!(
        held > 0 && held * 5 < total,
        "held {held} of {total} bytes at once: the restore is not streamed ({line})"
    );
}

#[test]
fn legacy_string_keys_are_imported_once_and_written() {
    let emu = Emulator::start();
    let mut server = RedisServer::start(
        wired(&emu)
            .conf("appendonly yes")
            .env("RESTORE_ON_EMPTY", "0"),
    );
    let mut con = server.connection();
    let ts = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
    for i in 0..5 {
        let v = format!(
            r#"{{"key":"userdata-events:leg{i}-x/visited","records":[{{"id":"leg{i}-x","track_id":"t","track_title":"T","track_url":"/t","page_name":"p","lastplus":"{ts}","action":"v"}}]}}"#
        );
        let _: String = q(&mut con, &["SET", &format!("bridge:{i}"), &v]);
    }
    let _: i64 = q(&mut con, &["LPUSH", "bridge:not-a-string", "x"]);
    assert!(q_err(&mut con, &["WB.IMPORT"]).contains("EXTRA_BRIDGE_KEYS"));
    let first: BTreeMap<String, i64> = q(&mut con, &["WB.IMPORT", "MATCH", "bridge:*"]);
    assert_eq!((first["imported"], first["not_strings"]), (5, 1));
    let again: BTreeMap<String, i64> = q(&mut con, &["WB.IMPORT", "MATCH", "bridge:*"]);
    assert_eq!((again["imported"], again["already_imported"]), (0, 5));
    flush(&mut con);
    assert_eq!(sum_visits(&emu), 5);
    // At start-up, EXTRA_BRIDGE_KEYS imports only what is new.
    let _: String = q(
        &mut con,
        &[
            "SET",
            "bridge:new",
            &format!(
                r#"{{"key":"userdata-events:leg9-x/visited","records":[{{"id":"leg9-x","track_id":"t","lastplus":"{ts}","action":"v"}}]}}"#
            ),
        ],
    );
    server.stop();
    server
        .opts
        .env
        .insert("EXTRA_BRIDGE_KEYS".into(), "bridge:*".into());
    server.launch();
    let mut con = server.connection();
    server.wait_for("the start-up import", Duration::from_secs(30), || {
        let n: i64 = q(&mut con, &["SCARD", "_wb_imported"]);
        (n == 6).then_some(())
    });
    flush(&mut con);
    assert_eq!(sum_visits(&emu), 6);
    let len: i64 = q(&mut con, &["XLEN", "userdata-stream"]);
    assert_eq!(len, 6);
}
