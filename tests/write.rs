//! `WB.WRITE`: validated writes, write-through with acknowledgement, failover to Snowflake.

mod common;

use std::time::{Duration, Instant};

use common::emulator::Emulator;
use common::redis_server::{q, q_err, status, Options, RedisServer};
use common::wired;
use serde_json::json;

fn visit(user: &str, track: &str) -> String {
    let ts = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
    json!({"key": format!("userdata-events:{user}/visited"), "records": [{"id": user, "track_id": track,
        "track_title": "T", "track_url": "/t", "page_name": "p", "lastplus": ts, "action": "v"}]})
    .to_string()
}

fn visits(emu: &Emulator, user: &str) -> i64 {
    emu.scalar(&format!(
        "SELECT SUM(visited_count) FROM TRACKED WHERE tracked_id = '{user}'"
    ))
    .and_then(|v| v.parse::<f64>().ok())
    .unwrap_or(0.0) as i64
}

#[test]
fn invalid_payloads_are_refused_and_nothing_is_added() {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    for (payload, says) in [
        ("{not json", "invalid payload"),
        (r#"{"hello":"world"}"#, "invalid payload"),
        (
            r#"{"key":"userdata-events:a-1/visited","records":[{"id":"a-1","track_id":"t","lastplus":"yesterday","action":"v"}]}"#,
            "record 0",
        ),
    ] {
        let e = q_err(&mut con, &["WB.WRITE", payload]);
        assert!(e.contains(says), "{payload}: {e}");
    }
    assert!(q_err(&mut con, &["WB.WRITE"])
        .to_lowercase()
        .contains("wrong number"));
    assert!(q_err(&mut con, &["WB.WRITE", "{}", "NOW"]).contains("SYNC"));
    assert!(
        q_err(&mut con, &["WB.WRITE", &visit("a-1", "t"), "SYNC", "soon"]).contains("timeout-ms")
    );
    let len: i64 = q(&mut con, &["XLEN", "userdata-stream"]);
    assert_eq!(len, 0);
    // A valid one is added and its ID returned.
    let id: String = q(&mut con, &["WB.WRITE", &visit("a-1", "t")]);
    let last: Vec<(String, Vec<(String, String)>)> = q(
        &mut con,
        &["XREVRANGE", "userdata-stream", "+", "-", "COUNT", "1"],
    );
    assert_eq!(last[0].0, id);
}

#[test]
fn sync_returns_only_after_the_row_is_visible() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu));
    let mut con = server.connection();
    let id: String = q(
        &mut con,
        &["WB.WRITE", &visit("sync-1", "t"), "SYNC", "20000"],
    );
    assert!(id.contains('-'));
    assert_eq!(visits(&emu, "sync-1"), 1);
}

#[test]
fn sync_times_out_while_snowflake_is_down_and_the_row_appears_after_recovery() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu));
    let mut con = server.connection();
    emu.fault(json!({"next": 100000, "status": 503}));
    let e = q_err(
        &mut con,
        &["WB.WRITE", &visit("down-1", "t"), "SYNC", "500"],
    );
    assert!(
        e.contains("TIMEOUT") && e.contains("will still be written"),
        "{e}"
    );
    emu.clear_faults();
    let ok: String = q(&mut con, &["WB.FLUSH", "8000"]);
    assert_eq!(ok, "OK");
    assert_eq!(visits(&emu, "down-1"), 1);
}

#[test]
fn fifty_concurrent_sync_writers_complete_while_ping_stays_fast() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu).env("WORKERS", "4"));
    let port = server.port;
    let writers: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let client =
                    redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
                let mut con = client.get_connection().expect("connection");
                con.set_read_timeout(Some(Duration::from_secs(60)))
                    .expect("timeout");
                let id: String = redis::cmd("WB.WRITE")
                    .arg(visit(&format!("many{i}-u"), "t"))
                    .arg("SYNC")
                    .arg(30_000)
                    .query(&mut con)
                    .expect("SYNC write");
                id
            })
        })
        .collect();
    let mut con = server.connection();
    let mut slowest = Duration::ZERO;
    while writers.iter().any(|w| !w.is_finished()) {
        let t = Instant::now();
        let pong: String = q(&mut con, &["PING"]);
        assert_eq!(pong, "PONG");
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    for w in writers {
        assert!(w.join().expect("writer").contains('-'));
    }
    assert!(
        slowest < Duration::from_millis(250),
        "PING took {slowest:?} while writers waited"
    );
    let total = emu
        .scalar("SELECT SUM(visited_count) FROM TRACKED")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert_eq!(total as i64, 50);
}

#[test]
fn out_of_memory_fails_over_to_snowflake_or_gives_the_oom_error() {
    let emu = Emulator::start();
    let server = RedisServer::start(
        wired(&emu)
            .conf("maxmemory 1")
            .conf("maxmemory-policy noeviction")
            .env("STREAM_FAILOVER_TO_SNOWFLAKE", "1"),
    );
    let mut con = server.connection();
    let reply: String = q(&mut con, &["WB.WRITE", &visit("oom-1", "t")]);
    assert_eq!(reply, "DIRECT");
    assert_eq!(visits(&emu, "oom-1"), 1);
    assert!(server.log().contains("FAILOVER"), "no FAILOVER line logged");
    assert_eq!(status(&mut con)["failovers"], "1");
    let len: i64 = q(&mut con, &["XLEN", "userdata-stream"]);
    assert_eq!(len, 0);
    let _: String = q(
        &mut con,
        &[
            "CONFIG",
            "SET",
            "writebehind.stream-failover-to-snowflake",
            "0",
        ],
    );
    let e = q_err(&mut con, &["WB.WRITE", &visit("oom-2", "t")]);
    assert!(e.contains("OOM"), "{e}");
    assert_eq!(visits(&emu, "oom-2"), 0);
}

#[test]
fn the_non_blocking_form_works_in_multi_and_scripts_and_sync_is_refused_there() {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    let (a, b): (String, String) = redis::pipe()
        .atomic()
        .cmd("WB.WRITE")
        .arg(visit("m-1", "t"))
        .cmd("WB.WRITE")
        .arg(visit("m-2", "t"))
        .query(&mut con)
        .expect("MULTI/EXEC");
    assert!(a < b);
    let from_lua: String = redis::cmd("EVAL")
        .arg("return redis.call('WB.WRITE', ARGV[1])")
        .arg(0)
        .arg(visit("lua-1", "t"))
        .query(&mut con)
        .expect("EVAL");
    assert!(from_lua.contains('-'));
    let e: redis::RedisResult<String> = redis::cmd("EVAL")
        .arg("return redis.call('WB.WRITE', ARGV[1], 'SYNC')")
        .arg(0)
        .arg(visit("lua-2", "t"))
        .query(&mut con);
    let e = e.expect_err("SYNC in a script is refused").to_string();
    assert!(e.contains("cannot be used inside MULTI or a script"), "{e}");
    let len: i64 = q(&mut con, &["XLEN", "userdata-stream"]);
    assert_eq!(len, 3);
}
