//! The write-behind pipeline end to end: real Redis 8 with the module, the emulator's SQL engine.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::emulator::Emulator;
use common::redis_server::{q, q_err, status, Options, RedisServer};
use common::wired;
use serde_json::json;

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

fn visited(user: &str, track: &str, lastplus: &str) -> String {
    json!({"key": format!("userdata-events:{user}/visited"), "records": [{
        "id": user, "page_name": "search", "query_row_count": "5", "track_id": track,
        "track_title": format!("Title {track}"), "track_type": "query", "track_url": format!("/search?q={track}"),
        "lastplus": lastplus, "action": "v"}]})
    .to_string()
}

fn saved(user: &str, track: &str, action: &str, lastplus: &str) -> String {
    json!({"key": format!("userdata-events:{user}/saved"), "records": [{
        "id": user, "page_name": "search", "query_row_count": "1", "track_id": track,
        "track_title": "t", "track_type": "REPORT", "track_url": "/r", "lastplus": lastplus, "action": action}]})
    .to_string()
}

fn xadd(con: &mut redis::Connection, value: &str) -> String {
    q(con, &["XADD", "userdata-stream", "*", "value", value])
}

fn flush(con: &mut redis::Connection, timeout_ms: u64) {
    con.set_read_timeout(Some(Duration::from_millis(timeout_ms + 5_000)))
        .expect("read timeout");
    let reply: String = q(con, &["WB.FLUSH", &timeout_ms.to_string()]);
    assert_eq!(reply, "OK");
}

fn count(emu: &Emulator, sql: &str) -> i64 {
    emu.scalar(sql)
        .and_then(|v| v.parse::<f64>().ok())
        .map(|f| f as i64)
        .unwrap_or(-1)
}

#[test]
fn seed_quick_dry_run_entries_become_user_and_tracked_rows() {
    let emu = Emulator::start();
    let server = RedisServer::start(
        wired(&emu)
            .env("HASH_NULL_TRACK_ID", "1")
            .env("SKIP_FRESHNESS", "1"),
    );
    let mut con = server.connection();
    xadd(&mut con, r#"{"user_email":"alice@example.com"}"#);
    xadd(
        &mut con,
        r#"{"key":"userdata-events:alice-1/visited","records":[{"id":"alice-1","page_name":"search","query_row_count":"5","track_id":"","track_title":"Sample","track_type":"QUERY","track_url":"/search?q=Sample","lastplus":"2025-11-03 12:00:00","action":"v"}]}"#,
    );
    // The runbook's safe manual test: acknowledged and counted, never written.
    xadd(&mut con, r#"{"diag":"ping","ts":"2025-11-01 10:22:00"}"#);
    flush(&mut con, 60_000);
    let users = emu.sql(r#"SELECT user_email, username FROM "USER""#);
    assert_eq!(
        users,
        vec![vec![Some("alice@example.com".into()), Some("alice".into())]]
    );
    // The seed's verification query, unchanged.
    let rows = emu.sql(
        "SELECT tracked_id, track_id, saved, visited_count, deleted_dts FROM TRACKED WHERE tracked_id = 'alice-1' ORDER BY visited_dts DESC LIMIT 5;",
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row[0].as_deref(), Some("alice-1"));
    let track_id = row[1].clone().unwrap_or_default();
    assert!(
        track_id.starts_with("auto_") && track_id.len() == 17,
        "{track_id}"
    );
    assert_eq!(
        row[2]
            .as_deref()
            .map(|s| s.parse::<f64>().unwrap_or(-1.0) as i64),
        Some(0)
    );
    assert_eq!(
        row[3]
            .as_deref()
            .map(|s| s.parse::<f64>().unwrap_or(-1.0) as i64),
        Some(1)
    );
    assert_eq!(row[4], None);
    let st = status(&mut con);
    assert_eq!(st["state"], "running");
    assert_eq!(st["pending"], "0");
    assert_eq!(st["records_written"], "1");
    assert_eq!(st["users_written"], "1");
    assert_eq!(st["diagnostics"], "1");
    assert!(server.log().contains("SQL (TRACKED)") || st["statements"] != "0");
}

#[test]
fn many_entries_from_many_users_arrive_with_exact_visit_counts() {
    let emu = Emulator::start();
    let server = RedisServer::start(
        wired(&emu)
            .env("WORKERS", "4")
            .env("BATCH_MAX_ENTRIES", "2000"),
    );
    let mut con = server.connection();
    let ts = now();
    let mut pipe = redis::pipe();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..20_000 {
        let user = format!("user{}-{}", i % 200, i % 200);
        let track = format!("t{}", i % 7);
        *expected.entry(format!("{user}|{track}")).or_default() += 1;
        pipe.cmd("XADD")
            .arg("userdata-stream")
            .arg("*")
            .arg("value")
            .arg(visited(&user, &track, &ts))
            .ignore();
    }
    pipe.query::<()>(&mut con).expect("pipelined XADDs");
    flush(&mut con, 300_000);
    assert_eq!(
        count(&emu, "SELECT SUM(visited_count) FROM TRACKED"),
        20_000
    );
    let rows = emu.sql("SELECT tracked_id, track_id, visited_count FROM TRACKED");
    assert_eq!(rows.len(), expected.len());
    for r in rows {
        let key = format!(
            "{}|{}",
            r[0].clone().unwrap_or_default(),
            r[1].clone().unwrap_or_default()
        );
        let got = r[2]
            .as_deref()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(-1.0) as i64;
        assert_eq!(Some(&got), expected.get(&key), "{key}");
    }
    let st = status(&mut con);
    assert_eq!(st["records_written"], "20000");
    assert_eq!(st["pending"], "0");
}

#[test]
fn one_users_saves_and_deletes_apply_in_stream_order_across_workers() {
    let emu = Emulator::start();
    let server = RedisServer::start(
        wired(&emu)
            .env("WORKERS", "4")
            .env("BATCH_MAX_ENTRIES", "7"),
    );
    let mut con = server.connection();
    // The first statements commit slowly: a later batch of the same row committed beside them on
    // another worker would move the row's last_entry_id past them, and the MERGE would drop their
    // events. The final `saved` alone cannot see that (the last action wins either way); the exact
    // visit counts can.
    emu.fault(json!({"next": 4, "delay_ms": 1500}));
    let ts = now();
    // Each user toggles one item many times and visits it each round; the last action decides
    // `saved`, every visit counts.
    let mut last: BTreeMap<String, &str> = BTreeMap::new();
    let rounds = 15;
    for round in 0..rounds {
        for u in 0..20 {
            let user = format!("order{u}-x");
            let action = if (round + u) % 3 == 0 { "d" } else { "s" };
            xadd(&mut con, &saved(&user, "item", action, &ts));
            xadd(&mut con, &visited(&user, "item", &ts));
            last.insert(user, action);
        }
    }
    flush(&mut con, 120_000);
    for (user, action) in last {
        let v = count(
            &emu,
            &format!("SELECT saved FROM TRACKED WHERE tracked_id = '{user}' AND track_id = 'item'"),
        );
        assert_eq!(v, i64::from(action == "s"), "{user}: saved");
        let n = count(
            &emu,
            &format!(
                "SELECT visited_count FROM TRACKED WHERE tracked_id = '{user}' AND track_id = 'item'"
            ),
        );
        assert_eq!(n, rounds, "{user}: every visit counted once, in order");
    }
    assert_eq!(count(&emu, "SELECT COUNT(*) FROM TRACKED"), 20);
    let st = status(&mut con);
    assert_eq!(st["dead_lettered"], "0", "{st:?}");
}

#[test]
fn an_undecodable_entry_is_dead_lettered_and_the_entries_after_it_are_written() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu));
    let mut con = server.connection();
    let ts = now();
    xadd(&mut con, &visited("dl-1", "a", &ts));
    let bad: String = q(
        &mut con,
        &[
            "XADD",
            "userdata-stream",
            "*",
            "value",
            "{not json",
            "extra",
            "kept",
        ],
    );
    xadd(&mut con, &visited("dl-2", "b", &ts));
    flush(&mut con, 60_000);
    assert_eq!(count(&emu, "SELECT COUNT(*) FROM TRACKED"), 2);
    let dlq: Vec<(String, BTreeMap<String, String>)> =
        q(&mut con, &["XRANGE", "userdata-stream:dlq", "-", "+"]);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let fields = &dlq[0].1;
    assert_eq!(fields["value"], "{not json");
    assert_eq!(fields["extra"], "kept");
    assert_eq!(fields["source_stream"], "userdata-stream");
    assert_eq!(fields["source_id"], bad);
    assert!(!fields["reason"].is_empty() && !fields["reason"].contains('\n'));
    let st = status(&mut con);
    assert_eq!(st["dead_lettered"], "1");
    assert_eq!(st["pending"], "0");
    // WB.DLQ lists it, replays it (to the dead-letter stream again, being still invalid) and purges.
    let listed: Vec<redis::Value> = q(&mut con, &["WB.DLQ", "LIST"]);
    assert_eq!(listed.len(), 1);
    let replayed: i64 = q(&mut con, &["WB.DLQ", "REPLAY", "ALL"]);
    assert_eq!(replayed, 1);
    flush(&mut con, 60_000);
    let purged: i64 = q(&mut con, &["WB.DLQ", "PURGE"]);
    assert_eq!(purged, 1);
    let err = q_err(&mut con, &["WB.DLQ", "BOGUS"]);
    assert!(err.contains("LIST, REPLAY or PURGE"), "{err}");
}

#[test]
fn snowflake_down_then_back_writes_everything_and_marks_nothing_stale() {
    let emu = Emulator::start();
    // A short freshness window and a small in-flight cap: most entries are claimed only after the
    // outage, seconds past the window after their XADD, so they would be marked stale if freshness
    // were measured at processing time instead of at the entry's ID time.
    let cap = 5;
    let server = RedisServer::start(
        wired(&emu)
            .env("NEWER_RECORD_TIME_LIMIT_SECONDS", "2")
            .env("MAX_IN_FLIGHT", &cap.to_string()),
    );
    let mut con = server.connection();
    emu.fault(json!({"next": 100000, "status": 503}));
    let ts = now();
    let n = 200;
    for i in 0..n {
        xadd(&mut con, &visited(&format!("outage{i}-u"), "t", &ts));
    }
    server.wait_for(
        "the writer to report retrying",
        Duration::from_secs(30),
        || (status(&mut con)["state"] == "retrying").then_some(()),
    );
    std::thread::sleep(Duration::from_secs(4)); // the outage outlasts the freshness window
    let st = status(&mut con);
    assert_eq!(count(&emu, "SELECT COUNT(*) FROM TRACKED"), 0);
    assert!(st["last_error"].contains("503"), "{st:?}");
    let read: i64 = st["entries_read"].parse().expect("entries_read");
    assert!(
        read <= cap,
        "only the in-flight cap may be claimed during the outage: {st:?}"
    );
    let pong: String = q(&mut con, &["PING"]);
    assert_eq!(pong, "PONG");
    emu.clear_faults();
    flush(&mut con, 60_000);
    assert_eq!(count(&emu, "SELECT SUM(visited_count) FROM TRACKED"), n);
    let st = status(&mut con);
    assert_eq!(st.get("skipped").map(String::as_str), Some("0"), "{st:?}");
    assert_eq!(st["entries_read"], n.to_string(), "{st:?}");
    assert_eq!(st["state"], "running");
}

#[test]
fn a_restart_with_pending_entries_loses_and_duplicates_nothing() {
    let emu = Emulator::start();
    let mut server = RedisServer::start(
        wired(&emu)
            .conf("appendonly yes")
            .conf("appendfsync always")
            .env("BATCH_MAX_ENTRIES", "10"),
    );
    let mut con = server.connection();
    let ts = now();
    // Statements execute in Snowflake but their answers never arrive: entries stay pending although
    // their data is already applied — the worst case for double counting.
    emu.fault(json!({"next": 100000, "after_execute": true, "status": 503}));
    for i in 0..40 {
        xadd(&mut con, &visited(&format!("rs{}-u", i % 8), "t", &ts));
    }
    server.wait_for(
        "entries to be claimed and pending",
        Duration::from_secs(30),
        || {
            let st = status(&mut con);
            (st["pending"] != "0" && st["retries"] != "0").then_some(())
        },
    );
    server.kill9();
    emu.clear_faults();
    server.launch();
    let mut con = server.connection();
    for i in 40..60 {
        xadd(&mut con, &visited(&format!("rs{}-u", i % 8), "t", &ts));
    }
    flush(&mut con, 60_000);
    assert_eq!(count(&emu, "SELECT SUM(visited_count) FROM TRACKED"), 60);
    assert_eq!(count(&emu, "SELECT COUNT(*) FROM TRACKED"), 8);
}

#[test]
fn dry_run_logs_sql_and_then_live_loses_nothing() {
    let emu = Emulator::start();
    let mut server = RedisServer::start(wired(&emu).conf("appendonly yes").env("DRY_RUN", "1"));
    let mut con = server.connection();
    let ts = now();
    for i in 0..5 {
        xadd(&mut con, &visited(&format!("dry{i}-u"), "t", &ts));
    }
    flush(&mut con, 30_000);
    let st = status(&mut con);
    assert_eq!(st["state"], "dry-run");
    assert_eq!(st["group"], "snowflake-writer:dry-run");
    assert_eq!(count(&emu, "SELECT COUNT(*) FROM TRACKED"), 0);
    assert!(
        server.log().contains("SQL (TRACKED) DRY_RUN"),
        "no dry-run SQL logged"
    );
    // Live: the same server directory, DRY_RUN off.
    server.stop();
    server.opts.env.insert("DRY_RUN".into(), "0".into());
    server.launch();
    let mut con = server.connection();
    flush(&mut con, 60_000);
    assert_eq!(count(&emu, "SELECT SUM(visited_count) FROM TRACKED"), 5);
}

#[test]
fn a_replica_writes_nothing_and_a_promoted_replica_finishes_the_work() {
    let emu = Emulator::start();
    let mut primary = RedisServer::start(wired(&emu));
    let mut pcon = primary.connection();
    let _: String = q(&mut pcon, &["WB.PAUSE"]);
    let replica =
        RedisServer::start(wired(&emu).conf(&format!("replicaof 127.0.0.1 {}", primary.port)));
    let mut rcon = replica.connection();
    let ts = now();
    for i in 0..30 {
        xadd(&mut pcon, &visited(&format!("rep{}-u", i % 5), "t", &ts));
    }
    replica.wait_for(
        "the replica to receive every entry",
        Duration::from_secs(20),
        || {
            let n: i64 = q(&mut rcon, &["XLEN", "userdata-stream"]);
            (n == 30).then_some(())
        },
    );
    assert_eq!(status(&mut rcon)["state"], "replica");
    assert_eq!(count(&emu, "SELECT COUNT(*) FROM TRACKED"), 0);
    primary.kill9();
    let _: String = q(&mut rcon, &["REPLICAOF", "NO", "ONE"]);
    flush(&mut rcon, 60_000);
    assert_eq!(count(&emu, "SELECT SUM(visited_count) FROM TRACKED"), 30);
}

#[test]
fn flush_and_pause_commands_check_their_arguments() {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    assert!(q_err(&mut con, &["WB.FLUSH", "abc"]).contains("timeout-ms"));
    assert!(q_err(&mut con, &["WB.FLUSH", "1", "2"])
        .to_lowercase()
        .contains("wrong number"));
    assert!(q_err(&mut con, &["WB.PAUSE", "x"])
        .to_lowercase()
        .contains("wrong number"));
    assert!(q_err(&mut con, &["WB.PING"]).contains("not configured"));
    // Unconfigured: nothing is consumed, so a flush of an existing entry times out with the count.
    xadd(&mut con, &visited("u-1", "t", &now()));
    let err = q_err(&mut con, &["WB.FLUSH", "200"]);
    assert!(
        err.contains("TIMEOUT") && err.contains("1 entries still pending"),
        "{err}"
    );
}

#[test]
fn the_seeds_logging_flags_write_their_markers() {
    let emu = Emulator::start();
    let server = RedisServer::start(
        wired(&emu)
            .env("LOG_TRACKED_EACH", "1")
            .env("LOG_SQL", "1")
            .env("LOG_RAW", "1")
            .env("TRACE_SQL", "1")
            .env("METRICS_INTERVAL_SECONDS", "1")
            .env("VERIFY_TRACKED_AFTER_WRITE", "1")
            .env("VERBOSE_SNOWFLAKE_TEST", "1"),
    );
    let mut con = server.connection();
    xadd(&mut con, &visited("logs-1", "t1", &now()));
    flush(&mut con, 30_000);
    for marker in [
        "RECORD_EXEC",
        "SQL (TRACKED)",
        "RAW ",
        "VERIFY logs-1 t1",
        "METRICS state=",
        "Snowflake session: user=",
    ] {
        server.wait_for(marker, Duration::from_secs(10), || {
            server.log().contains(marker).then_some(())
        });
    }
}

#[test]
fn stream_ids_below_the_applied_ones_are_reported_as_a_regression() {
    let emu = Emulator::start();
    emu.sql(
        "INSERT INTO TRACKED (tracked_id, track_id, visited_count, last_entry_id) VALUES ('x', 'y', 1, '00000099999999999999-00000000000000000000')",
    );
    let server = RedisServer::start(wired(&emu));
    let mut con = server.connection();
    xadd(&mut con, &visited("reg-1", "t", &now()));
    server.wait_for("the regression report", Duration::from_secs(30), || {
        let st = status(&mut con);
        st["id_regression"]
            .contains("99999999999999-0")
            .then_some(())
    });
    assert!(server.log().contains("ID REGRESSION"));
}

#[test]
fn entries_trimmed_away_before_they_were_written_are_counted_and_logged() {
    let emu = Emulator::start();
    let server = RedisServer::start(
        wired(&emu)
            .env("MAX_IN_FLIGHT", "10")
            .env("CLAIM_CHUNK", "10"),
    );
    let mut con = server.connection();
    emu.fault(json!({"next": 100000, "status": 503}));
    let ts = now();
    for i in 0..100 {
        xadd(&mut con, &visited(&format!("trim{i}-u"), "t", &ts));
    }
    server.wait_for(
        "the first chunk to be claimed",
        Duration::from_secs(20),
        || (status(&mut con)["pending"] == "10").then_some(()),
    );
    let _: i64 = q(&mut con, &["XTRIM", "userdata-stream", "MAXLEN", "5"]);
    emu.clear_faults();
    flush(&mut con, 30_000);
    let st = status(&mut con);
    assert_eq!(st["lost_trimmed"], "85", "{st:?}");
    assert!(
        server.log().contains("TRIMMED 85 entries"),
        "no TRIMMED warning"
    );
    assert_eq!(count(&emu, "SELECT SUM(visited_count) FROM TRACKED"), 15);
}

#[test]
fn the_seeds_quick_dry_run_logs_record_exec_and_auto_hashes_and_writes_nothing() {
    let emu = Emulator::start();
    let server = RedisServer::start(
        wired(&emu)
            .env("DRY_RUN", "1")
            .env("HASH_NULL_TRACK_ID", "1"),
    );
    let mut con = server.connection();
    xadd(&mut con, r#"{"user_email":"alice@example.com"}"#);
    // The seed's entry, with a current lastplus (its fixed 2025 date is outside the freshness window).
    let v = format!(
        r#"{{"key":"userdata-events:alice-1/visited","records":[{{"id":"alice-1","page_name":"search","query_row_count":"5","track_id":"","track_title":"Sample","track_type":"QUERY","track_url":"/search?q=Sample","lastplus":"{}","action":"v"}}]}}"#,
        now()
    );
    xadd(&mut con, &v);
    // And the seed's fixed date: skipped as stale, with a skip line.
    xadd(
        &mut con,
        r#"{"key":"userdata-events:alice-1/visited","records":[{"id":"alice-1","page_name":"search","query_row_count":"5","track_id":"","track_title":"Sample","track_type":"QUERY","track_url":"/search?q=Sample","lastplus":"2025-11-03 12:00:00","action":"v"}]}"#,
    );
    flush(&mut con, 30_000);
    let log = server.log();
    for marker in [
        "RECORD_EXEC",
        "track_id=auto_",
        "HASH_GEN",
        "SQL (TRACKED) DRY_RUN",
        "SQL (USER) DRY_RUN",
        "SKIPPED",
    ] {
        assert!(log.contains(marker), "{marker} missing from the log");
    }
    assert_eq!(count(&emu, "SELECT COUNT(*) FROM TRACKED"), 0);
    assert_eq!(count(&emu, "SELECT COUNT(*) FROM \"USER\""), 0);
}

#[test]
fn redis_db_selects_the_database_the_stream_lives_in() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu).env("REDIS_DB", "3"));
    let mut con = server.connection();
    let _: () = redis::cmd("SELECT")
        .arg(3)
        .query(&mut con)
        .expect("SELECT 3");
    xadd(&mut con, &visited("db3-u", "t", &now()));
    let _: () = redis::cmd("SELECT")
        .arg(0)
        .query(&mut con)
        .expect("SELECT 0");
    // WB.FLUSH and WB.STATUS look at database 3 whatever the caller selected.
    flush(&mut con, 30_000);
    assert_eq!(count(&emu, "SELECT SUM(visited_count) FROM TRACKED"), 1);
    let st = status(&mut con);
    assert_eq!(
        (st["db"].as_str(), st["stream_length"].as_str()),
        ("3", "1")
    );
    let len0: i64 = q(&mut con, &["XLEN", "userdata-stream"]);
    assert_eq!(len0, 0, "nothing may land in database 0");
    // WB.WRITE adds to database 3 too, and leaves the caller in its own database.
    let _: String = q(&mut con, &["WB.WRITE", &visited("db3-v", "t", &now())]);
    let len0: i64 = q(&mut con, &["XLEN", "userdata-stream"]);
    assert_eq!(len0, 0);
    assert_eq!(status(&mut con)["stream_length"], "2");
}

#[test]
fn an_entry_snowflake_rejects_is_dead_lettered_alone_and_the_rest_are_written() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu).env("BATCH_LINGER_MS", "300"));
    let mut con = server.connection();
    // Snowflake refuses any statement carrying this entry's data (a data exception, SQL state 22018).
    emu.fault(
        json!({"next": 1000, "status": 422, "match": "poison-9", "code": "100038",
        "sql_state": "22018", "message": "Numeric value 'poison' is not recognized"}),
    );
    let ts = now();
    for i in 0..8 {
        xadd(&mut con, &visited(&format!("good{i}-u"), "t", &ts));
    }
    let bad = xadd(&mut con, &visited("poison-9", "t", &ts));
    xadd(&mut con, &visited("after-1", "t", &ts));
    flush(&mut con, 60_000);
    assert_eq!(count(&emu, "SELECT SUM(visited_count) FROM TRACKED"), 9);
    let dlq: Vec<(String, BTreeMap<String, String>)> =
        q(&mut con, &["XRANGE", "userdata-stream:dlq", "-", "+"]);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let f = &dlq[0].1;
    assert_eq!(f["source_id"], bad);
    assert!(
        f["value"].contains("poison-9"),
        "the original fields are kept: {f:?}"
    );
    assert!(
        f["reason"].contains("100038") && f["reason"].contains("22018"),
        "{}",
        f["reason"]
    );
    assert_eq!(status(&mut con)["failed"], "1");
}

#[test]
fn a_missing_table_blocks_and_retries_instead_of_dead_lettering() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu).env("SNOWFLAKE_TRACKED_TABLE", "NO_SUCH_TABLE"));
    let mut con = server.connection();
    xadd(&mut con, &visited("blocked-1", "t", &now()));
    server.wait_for(
        "the writer to report the failure",
        Duration::from_secs(30),
        || {
            let st = status(&mut con);
            (st["state"] == "blocked" && st["last_error"].contains("NO_SUCH_TABLE")).then_some(())
        },
    );
    let st = status(&mut con);
    assert_eq!(st["blocked_code"], "002003");
    assert_eq!(st["dead_lettered"], "0");
    assert_eq!(st["pending"], "1");
}

#[test]
fn wb_ping_replies_with_the_session_context_or_the_classified_error() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu));
    let mut con = server.connection();
    let ctx: BTreeMap<String, redis::Value> = q(&mut con, &["WB.PING"]);
    let text = |k: &str| match ctx.get(k) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    };
    assert_eq!(text("user"), emu.opts.user);
    assert_eq!(text("database"), emu.opts.database);
    assert_eq!(text("schema"), emu.opts.schema);
    assert!(
        matches!(ctx.get("latency_ms"), Some(redis::Value::Int(_))),
        "{ctx:?}"
    );
    emu.fault(
        json!({"next": 1000, "status": 422, "code": "002003", "sql_state": "42S02",
        "message": "Object does not exist"}),
    );
    let e = q_err(&mut con, &["WB.PING"]);
    assert!(e.contains("002003") && e.contains("permanent"), "{e}");
}
