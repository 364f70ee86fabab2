//! The pipeline against what a real Snowflake does and the emulator's defaults hide: errors that
//! hit every statement alike, lock-wait and statement-timeout errors (SQL state 57014), and entries
//! whose key names another user than their records, over several workers with slow commits.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::emulator::Emulator;
use common::redis_server::{q, status, Options, RedisServer};
use common::wired;
use serde_json::json;

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A visit under `key_user`'s key whose records are row `record_id`'s.
fn visit(key_user: &str, record_ids: &[&str], title: &str, lastplus: &str) -> String {
    let records: Vec<serde_json::Value> = record_ids
        .iter()
        .map(|id| {
            json!({"id": id, "track_id": "t", "track_title": title, "lastplus": lastplus, "action": "v"})
        })
        .collect();
    json!({"key": format!("userdata-events:{key_user}/visited"), "records": records}).to_string()
}

fn xadd(con: &mut redis::Connection, value: &str) -> String {
    q(con, &["XADD", "userdata-stream", "*", "value", value])
}

fn flush(con: &mut redis::Connection, timeout_ms: u64) -> Result<(), String> {
    con.set_read_timeout(Some(Duration::from_millis(timeout_ms + 5_000)))
        .expect("read timeout");
    let reply: redis::RedisResult<String> = redis::cmd("WB.FLUSH")
        .arg(timeout_ms.to_string())
        .query(con);
    match reply {
        Ok(r) if r == "OK" => Ok(()),
        Ok(other) => Err(other),
        Err(e) => Err(e.to_string()),
    }
}

fn visits(emu: &Emulator) -> BTreeMap<String, i64> {
    emu.sql("SELECT tracked_id, visited_count FROM TRACKED")
        .into_iter()
        .map(|r| {
            let id = r[0].clone().unwrap_or_default();
            let n = r[1]
                .as_deref()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(-1.0) as i64;
            (id, n)
        })
        .collect()
}

fn dlq_len(con: &mut redis::Connection) -> i64 {
    q(con, &["XLEN", "userdata-stream:dlq"])
}

/// Four workers, short batches, no freshness rule: entries of one row can meet on several workers.
fn four_workers(emu: &Emulator) -> Options {
    wired(emu)
        .env("WORKERS", "4")
        .env("BATCH_LINGER_MS", "20")
        .env("SKIP_FRESHNESS", "1")
}

#[test]
fn entries_whose_key_names_another_user_keep_exact_counts_over_four_workers() {
    let emu = Emulator::start();
    let server = RedisServer::start(four_workers(&emu));
    let mut con = server.connection();
    // A statement carrying the first visit of each row commits slowly: whatever overtakes it on
    // another worker would make its row's last_entry_id pass it, and the MERGE would drop it.
    emu.fault(json!({"next": 100000, "match": "first-visit", "delay_ms": 1500}));
    let ts = now();
    let rows: Vec<String> = (0..8).map(|i| format!("row{i}-x")).collect();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        xadd(
            &mut con,
            &visit(&format!("keyuser{i}-a"), &[row], "first-visit", &ts),
        );
        *expected.entry(row.clone()).or_default() += 1;
    }
    // Later visits of the same rows under other users' keys, and entries spanning two rows.
    for round in 0..5 {
        for (i, row) in rows.iter().enumerate() {
            xadd(
                &mut con,
                &visit(&format!("other{round}{i}-b"), &[row], "later", &ts),
            );
            *expected.entry(row.clone()).or_default() += 1;
        }
        let (a, b) = (&rows[round], &rows[(round + 3) % rows.len()]);
        xadd(
            &mut con,
            &visit(&format!("span{round}-c"), &[a, b], "later", &ts),
        );
        *expected.entry(a.clone()).or_default() += 1;
        *expected.entry(b.clone()).or_default() += 1;
    }
    flush(&mut con, 120_000).expect("everything written");
    assert_eq!(visits(&emu), expected);
    let st = status(&mut con);
    assert_eq!(st["dead_lettered"], "0", "{st:?}");
    assert_eq!(st["pending"], "0", "{st:?}");
}

#[test]
fn an_error_hitting_every_statement_alike_blocks_dead_letters_nothing_and_clears_by_itself() {
    let emu = Emulator::start();
    let server = RedisServer::start(four_workers(&emu));
    let mut con = server.connection();
    // What an account-wide TIMESTAMP_INPUT_FORMAT does to statements relying on it: every one is
    // refused with a data exception, whatever its data.
    emu.fault(
        json!({"next": 1_000_000, "status": 422, "code": "100035", "sql_state": "22007",
                     "message": "Timestamp '2025-11-03 12:19:55' is not recognized"}),
    );
    let ts = now();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..60 {
        let row = format!("sys{}-u", i % 20);
        xadd(&mut con, &visit(&row, &[&row], "v", &ts));
        *expected.entry(row).or_default() += 1;
    }
    server.wait_for(
        "the writer to report blocked",
        Duration::from_secs(30),
        || {
            let st = status(&mut con);
            (st["state"] == "blocked" && st["blocked_code"] == "100035").then_some(())
        },
    );
    // It stays so for a while, retrying, with nothing moved aside.
    let retries_at_block: u64 = status(&mut con)["retries"].parse().unwrap_or(0);
    server.wait_for("several slow retries", Duration::from_secs(30), || {
        let r: u64 = status(&mut con)["retries"].parse().unwrap_or(0);
        (r >= retries_at_block + 20).then_some(())
    });
    let st = status(&mut con);
    assert_eq!(st["state"], "blocked", "{st:?}");
    assert_eq!(st["dead_lettered"], "0", "{st:?}");
    assert_eq!(dlq_len(&mut con), 0);
    assert!(st["last_error"].contains("100035"), "{st:?}");
    // It clears: everything is written, by itself.
    emu.clear_faults();
    flush(&mut con, 60_000).expect("everything written once it clears");
    assert_eq!(visits(&emu), expected);
    let st = status(&mut con);
    assert_eq!(st["dead_lettered"], "0", "{st:?}");
    assert_eq!(st["state"], "running", "{st:?}");
    assert_eq!(st["blocked_code"], "", "{st:?}");
    assert_eq!(dlq_len(&mut con), 0);
}

#[test]
fn lock_waits_and_statement_timeouts_are_ridden_out_promptly() {
    let emu = Emulator::start();
    // A long backoff cap: anything treated as "blocked" would wait a quarter of it (15 s) first.
    let server = RedisServer::start(
        wired(&emu)
            .env("RETRY_MAX_BACKOFF_MS", "60000")
            .env("SKIP_FRESHNESS", "1"),
    );
    let mut con = server.connection();
    emu.fault(json!({"faults": [
        {"next": 2, "statement_error": true, "code": "000625", "sql_state": "57014",
         "message": "Statement 'x' has locked table 'TRACKED' and 20 waiters are already queued."},
        {"next": 1, "statement_error": true, "code": "000630", "sql_state": "57014",
         "message": "Statement reached its statement or warehouse timeout of 60 second(s) and was canceled."},
    ]}));
    let ts = now();
    xadd(&mut con, &visit("lock1-u", &["lock1-u"], "v", &ts));
    let started = Instant::now();
    flush(&mut con, 8_000).expect("ridden out within seconds");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(visits(&emu).get("lock1-u"), Some(&1));
    let st = status(&mut con);
    assert_eq!(st["dead_lettered"], "0", "{st:?}");
    assert_eq!(emu.stats()["pending_faults"], 0);
}

#[test]
fn a_failover_write_past_the_request_timeout_is_written_once() {
    // The direct MERGE has no replay filter: a retry that ran it a second time would count twice,
    // and a caller told it failed would write it again.
    let emu = Emulator::start_with(common::emulator::Options {
        async_after_ms: 50,
        ..common::emulator::Options::default()
    });
    let server = RedisServer::start(
        wired(&emu)
            .conf("maxmemory 1")
            .conf("maxmemory-policy noeviction")
            .env("STREAM_FAILOVER_TO_SNOWFLAKE", "1")
            .env("SNOWFLAKE_REQUEST_TIMEOUT_SECONDS", "1"),
    );
    let mut con = server.connection();
    // The statement outlasts the request timeout and cannot be cancelled any more (past its commit
    // point): the write must wait for it, not give up and not run it again.
    emu.fault(json!({"next": 1, "match": "failover-1", "slow_ms": 1200, "uncancellable": true}));
    let reply: String = q(
        &mut con,
        &[
            "WB.WRITE",
            &visit("failover-1", &["failover-1"], "v", &now()),
        ],
    );
    assert_eq!(reply, "DIRECT");
    assert_eq!(visits(&emu).get("failover-1"), Some(&1));
    assert_eq!(status(&mut con)["failovers"], "1");
}
