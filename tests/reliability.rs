//! The reliability proof: the product's promises held under faults.
//!
//! Each test injects one kind of fault — `kill -9` of redis-server, Snowflake refusing, failing,
//! hanging or throttling, expired or rotated credentials, a primary dying under a replica, the
//! application trimming the stream, a crash in the middle of a restore or an import, a `SHUTDOWN`
//! with batches in flight — and then checks the outcome against the stream itself: every entry
//! present in the stream is reflected in Snowflake exactly once (`visited_count` sums exact per
//! row), Redis kept answering, nothing was skipped because of the fault.
//!
//! The default suite runs short versions; `WB_SOAK=1` (`scripts/test --soak`) runs the long ones.
//! Measured figures (PING latency during an outage, SHUTDOWN time, ...) are printed as `MEASURED`
//! lines (`cargo test -- --nocapture` shows them).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::emulator::Emulator;
use common::redis_server::{q, status, Options, RedisServer};
use common::visits::{assert_in_snowflake, stream_visits, visited};
use common::wired;
use rand::Rng;
use serde_json::json;

fn soak() -> bool {
    std::env::var("WB_SOAK").is_ok_and(|v| v == "1")
}

/// The same, persisted with `appendfsync always`, so a `kill -9` loses no acknowledged write.
fn durable(emu: &Emulator) -> Options {
    wired(emu).conf("appendonly yes").conf("appendfsync always")
}

/// The `seq`-th generated entry: 1 to 3 visits of one of 40 users.
fn generated(seq: u64) -> String {
    let user = format!("u{}-x", seq % 40);
    visited(&user, 1 + (seq % 3) as usize, seq)
}

fn flush(con: &mut redis::Connection, timeout_ms: u64) {
    con.set_read_timeout(Some(Duration::from_millis(timeout_ms + 10_000)))
        .expect("read timeout");
    let reply: String = q(con, &["WB.FLUSH", &timeout_ms.to_string()]);
    assert_eq!(reply, "OK");
    con.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
}

/// Every entry in the stream is in Snowflake exactly once: per-row visit counts equal the stream's.
fn assert_exactly_once(con: &mut redis::Connection, emu: &Emulator) -> i64 {
    let total = assert_in_snowflake(&stream_visits(con, "userdata-stream"), emu);
    let st = status(con);
    assert_eq!(st["pending"], "0", "{st:?}");
    assert_eq!(st["dlq_length"], "0", "{st:?}");
    total
}

/// Adds generated entries to the server on `port` until stopped, reconnecting across restarts.
struct Load {
    stop: Arc<AtomicBool>,
    added: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Load {
    /// `per_round` entries pipelined every `pause`.
    fn start(port: u16, per_round: u64, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let added = Arc::new(AtomicU64::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&added));
        let handle = std::thread::spawn(move || {
            let mut seq = 0u64;
            let mut con: Option<redis::Connection> = None;
            while !s.load(Ordering::Relaxed) {
                if con.is_none() {
                    con = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                        .ok();
                    if con.is_none() {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
                let mut pipe = redis::pipe();
                for i in 0..per_round {
                    pipe.cmd("XADD")
                        .arg("userdata-stream")
                        .arg("*")
                        .arg("value")
                        .arg(generated(seq + i))
                        .ignore();
                }
                match pipe.query::<()>(con.as_mut().expect("connected")) {
                    Ok(()) => {
                        seq += per_round;
                        a.fetch_add(per_round, Ordering::Relaxed);
                    }
                    Err(_) => con = None,
                }
                std::thread::sleep(pause);
            }
        });
        Load {
            stop,
            added,
            handle: Some(handle),
        }
    }

    fn added(&self) -> u64 {
        self.added.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("load thread");
        }
        self.added()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// PINGs the server on `port` every 10 ms until stopped; reports the slowest answer.
struct Pinger {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(Duration, u64)>>,
}

impl Pinger {
    fn start(port: u16) -> Pinger {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("url");
            let mut con = client
                .get_connection_with_timeout(Duration::from_secs(2))
                .expect("connect");
            con.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let (mut worst, mut n) = (Duration::ZERO, 0u64);
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let pong: String = redis::cmd("PING").query(&mut con).expect("PING answered");
                assert_eq!(pong, "PONG");
                worst = worst.max(t.elapsed());
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (worst, n)
        });
        Pinger {
            stop,
            handle: Some(handle),
        }
    }

    /// The slowest PING and how many were sent.
    fn finish(mut self) -> (Duration, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("pinger")
            .join()
            .expect("the server answered every PING")
    }
}

fn wait_status(
    server: &RedisServer,
    what: &str,
    within: Duration,
    pred: impl Fn(&BTreeMap<String, String>) -> bool,
) {
    let mut con = server.connection();
    server.wait_for(what, within, || pred(&status(&mut con)).then_some(()));
}

fn int(st: &BTreeMap<String, String>, k: &str) -> i64 {
    st.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
}

// ------------------------------------------------------------------------------------------------
// crashes

#[test]
fn kill_9_at_random_moments_under_load_loses_and_double_counts_nothing() {
    let emu = Emulator::start();
    let kills = if soak() { 12 } else { 3 };
    let mut server = RedisServer::start(
        durable(&emu)
            .env("WORKERS", "3")
            .env("BATCH_MAX_ENTRIES", "50"),
    );
    // Some answers are lost after the statement ran: those batches are applied but not
    // acknowledged when the kill comes — the worst case for double counting.
    let mut faults = Vec::new();
    for _ in 0..400 {
        faults.push(json!({"next": 6}));
        faults.push(json!({"after_execute": true, "status": 503}));
    }
    emu.fault(json!({ "faults": faults }));
    let load = Load::start(server.port, 10, Duration::from_millis(5));
    let mut rng = rand::thread_rng();
    for round in 0..kills {
        let before = int(&status(&mut server.connection()), "statements");
        wait_status(
            &server,
            "batches in flight",
            Duration::from_secs(30),
            |st| int(st, "statements") > before && int(st, "in_flight") > 0,
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..400)));
        server.kill9();
        eprintln!(
            "kill {} of {kills} after {} entries added",
            round + 1,
            load.added()
        );
        server.launch();
    }
    std::thread::sleep(Duration::from_millis(300));
    let added = load.finish();
    let mut con = server.connection();
    flush(&mut con, 180_000);
    let total = assert_exactly_once(&mut con, &emu);
    let stats = emu.stats();
    eprintln!(
        "MEASURED kill -9 x{kills}: {added} entries added, {total} visits in the stream, all in Snowflake once; {} answers lost after execution",
        stats["answers_lost"]
    );
    assert!(
        stats["answers_lost"].as_u64().unwrap_or(0) > 0,
        "no answer was lost after execution: the run did not test replays of applied batches"
    );
}

#[test]
fn shutdown_with_batches_in_flight_exits_within_the_grace_and_writes_once_after_restart() {
    let emu = Emulator::start();
    let grace_ms = 1_000u64;
    let mut server = RedisServer::start(
        durable(&emu)
            .env("SHUTDOWN_GRACE_MS", &grace_ms.to_string())
            .env("BATCH_MAX_ENTRIES", "20"),
    );
    // Every statement takes 8 s: far longer than the grace period.
    let took = shutdown_with_slow_statements(&emu, &mut server, 8_000, 200);
    eprintln!(
        "MEASURED SHUTDOWN with batches in flight: exited in {} ms (grace {grace_ms} ms)",
        took.as_millis()
    );
    assert!(
        took < Duration::from_millis(grace_ms + 4_000),
        "SHUTDOWN took {took:?} with SHUTDOWN_GRACE_MS={grace_ms}"
    );
    emu.clear_faults();
    server.launch();
    let mut con = server.connection();
    flush(&mut con, 120_000);
    assert_exactly_once(&mut con, &emu);
}

// ------------------------------------------------------------------------------------------------
// Snowflake unavailable, throttling, credentials

#[test]
fn snowflake_refusing_then_failing_then_hanging_leaves_redis_responsive_and_loses_nothing() {
    let emu = Emulator::start();
    let phase = Duration::from_secs(if soak() { 20 } else { 3 });
    // A freshness window shorter than the outage, and an in-flight cap far below the backlog: most
    // entries are claimed only after the outage, seconds past the window after their XADD. Had
    // freshness been measured at processing time, the backlog would come out stale.
    let cap: i64 = 200;
    let server = RedisServer::start(
        wired(&emu)
            .env("NEWER_RECORD_TIME_LIMIT_SECONDS", "2")
            .env("MAX_IN_FLIGHT", &cap.to_string()),
    );
    // The outage starts once the writer runs (a loaded machine may take a while to get there).
    wait_status(
        &server,
        "the writer to run",
        Duration::from_secs(30),
        |st| st["state"] == "running",
    );
    let load = Load::start(server.port, 5, Duration::from_millis(20));
    let pinger = Pinger::start(server.port);
    for (name, fault) in [
        ("refused", json!({"next": 1_000_000, "refuse": true})),
        ("503", json!({"next": 1_000_000, "status": 503})),
        (
            "hanging",
            json!({"next": 1_000_000, "hang": true, "hang_ms": 2_000}),
        ),
    ] {
        emu.replace_faults(fault);
        let until = Instant::now() + phase;
        let mut con = server.connection();
        while Instant::now() < until {
            let st = status(&mut con);
            assert!(
                ["running", "retrying"].contains(&st["state"].as_str()),
                "{name}: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let st = status(&mut con);
        assert_eq!(st["state"], "retrying", "{name}: {st:?}");
        assert_eq!(int(&st, "skipped"), 0, "{name}: {st:?}");
    }
    emu.clear_faults();
    let added = load.finish();
    let mut con = server.connection();
    let backlog = int(&status(&mut con), "pending") + int(&status(&mut con), "lag");
    let unclaimed = int(&status(&mut con), "lag");
    assert!(
        unclaimed > 2 * cap,
        "the backlog must outgrow the in-flight cap ({cap}), leaving entries unclaimed through the outage: {unclaimed} unclaimed"
    );
    let drain = Instant::now();
    flush(&mut con, 120_000);
    let drained_in = drain.elapsed();
    let (worst, pings) = pinger.finish();
    let total = assert_exactly_once(&mut con, &emu);
    let st = status(&mut con);
    assert_eq!(int(&st, "skipped"), 0, "{st:?}");
    assert_eq!(st["state"], "running");
    eprintln!(
        "MEASURED outage {}s x3 phases: {added} entries ({total} visits), backlog {backlog} ({unclaimed} never claimed during the outage, MAX_IN_FLIGHT={cap}) drained in {} ms, slowest of {pings} PINGs {} ms",
        phase.as_secs(),
        drained_in.as_millis(),
        worst.as_millis()
    );
    assert!(
        worst < Duration::from_millis(500),
        "a PING took {worst:?} during the outage"
    );
}

#[test]
fn throttling_of_one_request_in_five_loses_and_double_counts_nothing() {
    let emu = Emulator::start();
    let entries: u64 = if soak() { 20_000 } else { 2_000 };
    let server = RedisServer::start(
        wired(&emu)
            .env("WORKERS", "3")
            .env("BATCH_MAX_ENTRIES", "25"),
    );
    // One submission in five fails: 429, 503, or a 503 after the statement ran.
    let mut faults = Vec::new();
    for i in 0..(entries / 5 + 200) {
        faults.push(json!({"next": 4}));
        faults.push(match i % 3 {
            0 => json!({"status": 429}),
            1 => json!({"status": 503}),
            _ => json!({"status": 503, "after_execute": true}),
        });
    }
    emu.fault(json!({ "faults": faults }));
    let mut con = server.connection();
    let mut pipe = redis::pipe();
    for seq in 0..entries {
        pipe.cmd("XADD")
            .arg("userdata-stream")
            .arg("*")
            .arg("value")
            .arg(generated(seq))
            .ignore();
    }
    pipe.query::<()>(&mut con).expect("XADDs");
    flush(&mut con, 300_000);
    assert_exactly_once(&mut con, &emu);
    let stats = emu.stats();
    let by_id = stats["executions_by_request_id"]
        .as_object()
        .expect("executions_by_request_id");
    let twice: Vec<_> = by_id
        .iter()
        .filter(|(_, n)| n.as_u64() != Some(1))
        .collect();
    assert!(
        twice.is_empty(),
        "requests executed more than once: {twice:?}"
    );
    // The failures happened: resubmissions, some of statements that had already run.
    let n = |k: &str| stats[k].as_u64().unwrap_or(0);
    assert!(n("submissions") > n("executions"), "{stats}");
    assert!(n("deduplicated") > 0, "{stats}");
    eprintln!(
        "MEASURED throttling 20%: {entries} entries, {} submissions, {} executions, {} resubmissions of executed statements answered from the stored result, 0 lost, 0 double",
        n("submissions"), n("executions"), n("deduplicated")
    );
}

#[test]
fn expired_jwts_mid_run_are_renewed_and_nothing_is_lost() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu));
    let load = Load::start(server.port, 5, Duration::from_millis(10));
    for _ in 0..3 {
        let before = int(&status(&mut server.connection()), "statements");
        wait_status(&server, "statements", Duration::from_secs(30), |st| {
            int(st, "statements") > before + 2
        });
        emu.expire_credentials();
    }
    load.finish();
    let mut con = server.connection();
    flush(&mut con, 120_000);
    assert_exactly_once(&mut con, &emu);
    assert!(emu.stats()["auth_failures"].as_u64() > Some(0));
    // The key and the JWTs never reach the log.
    let log = server.log();
    assert!(!log.contains("eyJ"), "a JWT is in the log");
    assert!(!log.contains("PRIVATE KEY"));
}

#[test]
fn a_token_file_rotated_mid_run_is_picked_up_and_no_token_is_ever_shown() {
    let emu = Emulator::start();
    let mut opts = Options::default();
    for (k, v) in emu.snowflake_env() {
        if k != "SNOWFLAKE_PRIVATE_KEY_PATH" {
            opts = opts.env(k, &v);
        }
    }
    let server = RedisServer::start(
        opts.env(
            "SNOWFLAKE_TOKEN_FILE",
            &emu.token_path.display().to_string(),
        )
        .env("SNOWFLAKE_TOKEN_TYPE", "PROGRAMMATIC_ACCESS_TOKEN")
        .env("BATCH_LINGER_MS", "5")
        .env("RETRY_MAX_BACKOFF_MS", "300")
        .env("RESTORE_ON_EMPTY", "0"),
    );
    let load = Load::start(server.port, 5, Duration::from_millis(10));
    let tokens = ["token-one", "pat-rotated-2", "pat-rotated-3"];
    for next in &tokens[1..] {
        let before = int(&status(&mut server.connection()), "statements");
        wait_status(&server, "statements", Duration::from_secs(30), |st| {
            int(st, "statements") > before + 2
        });
        // The old token stops working at once; the file holds the new one.
        emu.expire_credentials();
        emu.write_token(next);
    }
    // Writes go on with the last token (every earlier one is expired).
    let before = int(&status(&mut server.connection()), "statements");
    wait_status(&server, "statements", Duration::from_secs(30), |st| {
        int(st, "statements") > before + 2
    });
    load.finish();
    let mut con = server.connection();
    flush(&mut con, 120_000);
    assert_exactly_once(&mut con, &emu);
    // No token in WB.STATUS, INFO, CONFIG GET or the log.
    let shown = format!(
        "{:?}{}{:?}{}",
        status(&mut con),
        q::<String>(&mut con, &["INFO", "writebehind"]),
        q::<Vec<String>>(&mut con, &["CONFIG", "GET", "writebehind.*"]),
        server.log()
    );
    for t in tokens {
        assert!(!shown.contains(t), "token {t} is shown");
    }
}

// ------------------------------------------------------------------------------------------------
// replication

#[test]
fn a_primary_killed_with_batches_in_flight_is_finished_by_the_promoted_replica_exactly_once() {
    let emu = Emulator::start();
    let mut primary = RedisServer::start(wired(&emu).env("BATCH_MAX_ENTRIES", "20"));
    let replica =
        RedisServer::start(wired(&emu).conf(&format!("replicaof 127.0.0.1 {}", primary.port)));
    let mut pcon = primary.connection();
    let mut rcon = replica.connection();
    replica.wait_for("replication link", Duration::from_secs(20), || {
        let info: String = q(&mut rcon, &["INFO", "replication"]);
        info.contains("master_link_status:up").then_some(())
    });
    // Statements are slow, and some run without their answer arriving: when the primary dies,
    // batches are in flight and some are applied but not acknowledged.
    let mut faults = Vec::new();
    for _ in 0..50 {
        faults.push(json!({"slow_ms": 300}));
        faults.push(json!({"slow_ms": 300, "after_execute": true, "status": 503}));
    }
    emu.fault(json!({ "faults": faults }));
    let load = Load::start(primary.port, 10, Duration::from_millis(10));
    wait_status(
        &primary,
        "batches in flight on the primary",
        Duration::from_secs(30),
        |st| int(st, "statements") > 5 && int(st, "in_flight") > 0,
    );
    let added = load.finish();
    // Everything the application added has reached the replica (its XADD was acknowledged).
    let _: i64 = q(&mut pcon, &["WAIT", "1", "5000"]);
    let st = status(&mut rcon);
    assert_eq!(st["state"], "replica");
    assert_eq!(
        (
            int(&st, "entries_read"),
            int(&st, "statements"),
            int(&st, "batches")
        ),
        (0, 0, 0),
        "the replica wrote: {st:?}"
    );
    let in_flight = int(&status(&mut pcon), "in_flight");
    primary.kill9();
    let _: String = q(&mut rcon, &["REPLICAOF", "NO", "ONE"]);
    flush(&mut rcon, 120_000);
    let total = assert_exactly_once(&mut rcon, &emu);
    eprintln!(
        "MEASURED failover: {added} entries ({total} visits), {in_flight} in flight on the primary at the kill, all written once by the promoted replica"
    );
}

// ------------------------------------------------------------------------------------------------
// the application trims the stream

#[test]
fn an_application_trimming_with_maxlen_faster_than_snowflake_drains_is_counted_and_logged() {
    let emu = Emulator::start();
    let server = RedisServer::start(
        wired(&emu)
            .env("MAX_IN_FLIGHT", "10")
            .env("CLAIM_CHUNK", "10"),
    );
    let mut con = server.connection();
    emu.fault(json!({"next": 1_000_000, "status": 503}));
    let n = 500u64;
    for seq in 0..n {
        let _: String = q(
            &mut con,
            &[
                "XADD",
                "userdata-stream",
                "MAXLEN",
                "50",
                "*",
                "value",
                &generated(seq),
            ],
        );
    }
    emu.clear_faults();
    flush(&mut con, 60_000);
    let st = status(&mut con);
    let lost = int(&st, "lost_trimmed");
    assert!(lost > 0, "trimmed entries went unreported: {st:?}");
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains(" # ") && l.contains("TRIMMED")),
        "no TRIMMED warning in the log"
    );
    // Every entry is either written or counted as lost.
    assert_eq!(
        int(&st, "entries_committed") + lost,
        n as i64,
        "written + lost_trimmed != added: {st:?}"
    );
}

#[test]
fn entries_trimmed_while_pending_and_lost_in_a_crash_are_counted_after_the_restart() {
    let emu = Emulator::start();
    let mut server = RedisServer::start(
        durable(&emu)
            .env("MAX_IN_FLIGHT", "10")
            .env("CLAIM_CHUNK", "10"),
    );
    let mut con = server.connection();
    emu.fault(json!({"next": 1_000_000, "status": 503}));
    wait_status(
        &server,
        "the writer to run",
        Duration::from_secs(20),
        |st| st["state"] == "running" || st["state"] == "retrying",
    );
    let n = 500u64;
    let add = |con: &mut redis::Connection, seq: u64| {
        let _: String = q(
            con,
            &[
                "XADD",
                "userdata-stream",
                "MAXLEN",
                "50",
                "*",
                "value",
                &generated(seq),
            ],
        );
    };
    // The first entries are claimed (pending) before the rest trim them away; the crash loses the
    // copies the module held, so after the restart they exist nowhere but in the pending list.
    for seq in 0..10 {
        add(&mut con, seq);
    }
    wait_status(&server, "claimed entries", Duration::from_secs(20), |st| {
        int(st, "pending") > 0
    });
    for seq in 10..n {
        add(&mut con, seq);
    }
    server.kill9();
    emu.clear_faults();
    server.launch();
    let mut con = server.connection();
    flush(&mut con, 60_000);
    assert_exactly_once(&mut con, &emu);
    // Every entry trimmed before it was written is reported once, by the process that found it: the
    // one that crashed (its counter died with it, its log line did not) or the restarted one.
    let st = status(&mut con);
    let logged: i64 = server
        .log()
        .lines()
        .filter_map(|l| l.split("TRIMMED ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<i64>().ok())
        .sum();
    assert!(
        int(&st, "lost_trimmed") > 0,
        "the restart found none: {st:?}"
    );
    assert_eq!(
        logged,
        n as i64 - 50,
        "TRIMMED lines of both processes: {st:?}"
    );
}

// ------------------------------------------------------------------------------------------------
// restore and import interrupted

#[test]
fn a_restore_interrupted_by_kill_9_resumes_and_adds_no_entry_twice() {
    let emu = Emulator::start();
    let rows = 6_000usize;
    let recent = (chrono::Utc::now() - chrono::Duration::hours(1))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1_000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "('r{i}-x', 't{i}', 'r{i}', 'p', 1, 'T', 'QUERY', '/t', 1, '{recent}', 0, '00000000000000000001-00000000000000000000')"
                )
            })
            .collect();
        emu.sql(&format!(
            "INSERT INTO TRACKED (tracked_id, track_id, username, page_name, query_row_count, track_title, track_type, track_url, visited_count, visited_dts, saved, last_entry_id) VALUES {}",
            values.join(", ")
        ));
    }
    let mut server = RedisServer::start(
        durable(&emu)
            .env("RESTORE_ON_EMPTY", "1")
            .env("RESTORE_BATCH_SIZE", "1")
            .env("RESTORE_LIMIT_TOTAL", &rows.to_string()),
    );
    let mut con = server.connection();
    // Polled without pause: the restore adds its entries quickly.
    let deadline = Instant::now() + Duration::from_secs(60);
    let progress: usize = loop {
        let m: Option<String> = q(&mut con, &["GET", "_userdata_stream_restored"]);
        if let Some(n) = m
            .as_deref()
            .and_then(|m| m.strip_prefix("in-progress "))
            .and_then(|n| n.parse().ok())
        {
            break n;
        }
        assert!(m.is_none(), "the restore ended before the kill: {m:?}");
        assert!(Instant::now() < deadline, "the restore did not start");
    };
    server.kill9();
    server.launch();
    let mut con = server.connection();
    let marker: String = server.wait_for("the restore to finish", Duration::from_secs(60), || {
        let m: Option<String> = q(&mut con, &["GET", "_userdata_stream_restored"]);
        m.filter(|m| m.starts_with("done"))
    });
    assert!(marker.ends_with(&format!(" {rows}")), "{marker}");
    let all: Vec<(String, BTreeMap<String, String>)> =
        q(&mut con, &["XRANGE", "userdata-stream", "-", "+"]);
    let mut seen = std::collections::BTreeSet::new();
    for (id, f) in &all {
        assert!(seen.insert(f["value"].clone()), "entry {id} restored twice");
    }
    assert_eq!(all.len(), rows, "restored entries");
    let resumed = server.log().contains("resumed after");
    eprintln!(
        "MEASURED restore of {rows} entries killed at marker 'in-progress {progress}', resumed: {resumed}"
    );
    assert!(
        resumed || progress >= rows,
        "the restart did not resume the restore"
    );
    // Restored entries are never written back.
    flush(&mut con, 60_000);
    assert_eq!(
        emu.scalar("SELECT SUM(visited_count) FROM TRACKED")
            .and_then(|v| v.parse::<f64>().ok()),
        Some(rows as f64)
    );
}

#[test]
fn a_legacy_import_interrupted_by_kill_9_imports_no_key_twice_when_run_again() {
    // No Snowflake needed: the import only moves keys into the stream.
    let mut server = RedisServer::start(
        Options::default()
            .conf("appendonly yes")
            .conf("appendfsync always"),
    );
    let mut con = server.connection();
    let keys = 20_000usize;
    for chunk in (0..keys).collect::<Vec<_>>().chunks(2_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET")
                .arg(format!("bridge:{i}"))
                .arg(visited(&format!("leg{i}-x"), 1, 0))
                .ignore();
        }
        pipe.query::<()>(&mut con).expect("SETs");
    }
    let port = server.port;
    let importer = std::thread::spawn(move || {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .and_then(|c| c.get_connection())
            .expect("connect");
        // Killed mid-way: the reply never comes.
        let _ = redis::cmd("WB.IMPORT")
            .arg("MATCH")
            .arg("bridge:*")
            .query::<redis::Value>(&mut c);
    });
    // Polled without pause: the import moves keys quickly.
    let deadline = Instant::now() + Duration::from_secs(60);
    let done_before: i64 = loop {
        let n: i64 = q(&mut con, &["SCARD", "_wb_imported"]);
        if n > 0 {
            break n;
        }
        assert!(Instant::now() < deadline, "the import did not start");
    };
    server.kill9();
    let _ = importer.join();
    server.launch();
    let mut con = server.connection();
    let at_restart: i64 = q(&mut con, &["SCARD", "_wb_imported"]);
    con.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let again: BTreeMap<String, i64> = q(&mut con, &["WB.IMPORT", "MATCH", "bridge:*"]);
    assert_eq!(
        again["imported"] + again["already_imported"],
        keys as i64,
        "{again:?}"
    );
    assert_eq!(again["already_imported"], at_restart, "{again:?}");
    let len: i64 = q(&mut con, &["XLEN", "userdata-stream"]);
    assert_eq!(len, keys as i64, "entries in the stream");
    let all: Vec<(String, BTreeMap<String, String>)> =
        q(&mut con, &["XRANGE", "userdata-stream", "-", "+"]);
    let mut seen = std::collections::BTreeSet::new();
    for (id, f) in &all {
        assert!(
            seen.insert(f["wb_import_key"].clone()),
            "entry {id}: key imported twice"
        );
    }
    eprintln!(
        "MEASURED import of {keys} keys killed after {done_before}+ (set held {at_restart} after restart), re-run imported {}",
        again["imported"]
    );
    assert!(
        at_restart < keys as i64,
        "the kill came after the import finished"
    );
}

#[test]
fn shutdown_waits_at_most_five_seconds_whatever_the_grace_setting_says() {
    let emu = Emulator::start();
    let mut server = RedisServer::start(
        wired(&emu)
            .env("SHUTDOWN_GRACE_MS", "600000")
            .env("BATCH_MAX_ENTRIES", "20"),
    );
    // Statements take 20 s: a grace of 10 minutes would hold Redis until they finish.
    let took = shutdown_with_slow_statements(&emu, &mut server, 20_000, 100);
    eprintln!(
        "MEASURED SHUTDOWN with 20 s statements and SHUTDOWN_GRACE_MS=600000: exited in {} ms",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(9), "SHUTDOWN took {took:?}");
}

/// Makes every statement take `slow_ms`, adds `entries` entries, waits until batches are in flight,
/// sends `SHUTDOWN` and returns how long the server took to exit.
fn shutdown_with_slow_statements(
    emu: &Emulator,
    server: &mut RedisServer,
    slow_ms: u64,
    entries: u64,
) -> Duration {
    let mut con = server.connection();
    emu.fault(json!({"next": 100000, "slow_ms": slow_ms}));
    for seq in 0..entries {
        let _: String = q(
            &mut con,
            &["XADD", "userdata-stream", "*", "value", &generated(seq)],
        );
    }
    wait_status(server, "batches in flight", Duration::from_secs(30), |st| {
        int(st, "statements") > 0 && int(st, "in_flight") > 0
    });
    let started = Instant::now();
    let _ = redis::cmd("SHUTDOWN").query::<redis::Value>(&mut con);
    let deadline = started + Duration::from_secs(30);
    while server.is_running() {
        assert!(
            Instant::now() < deadline,
            "redis-server did not exit after SHUTDOWN"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

/// Written-group status fields of `userdata-stream`: (group names present, `XPENDING` count).
fn groups_and_pending(con: &mut redis::Connection) -> (Vec<String>, i64) {
    let groups: Vec<BTreeMap<String, redis::Value>> =
        q(con, &["XINFO", "GROUPS", "userdata-stream"]);
    let mut names: Vec<String> = groups
        .iter()
        .filter_map(|g| match g.get("name") {
            Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect();
    names.sort();
    let summary: Vec<redis::Value> = q(con, &["XPENDING", "userdata-stream", "snowflake-writer"]);
    let pending = match summary.first() {
        Some(redis::Value::Int(n)) => *n,
        _ => -1,
    };
    (names, pending)
}

#[test]
fn switching_ack_mode_both_ways_with_entries_claimed_loses_and_double_counts_nothing() {
    let emu = Emulator::start();
    let mut server = RedisServer::start(durable(&emu).env("ACK_MODE", "XACK"));
    let mut con = server.connection();
    let mut seq = 0u64;
    for (mode, then) in [("XACK", "WRITTEN_GROUP"), ("WRITTEN_GROUP", "XACK")] {
        // Claimed and not written when the server dies: Snowflake refuses every statement.
        emu.fault(json!({"next": 1_000_000, "status": 503}));
        for _ in 0..200 {
            let _: String = q(
                &mut con,
                &["XADD", "userdata-stream", "*", "value", &generated(seq)],
            );
            seq += 1;
        }
        wait_status(&server, "claimed entries", Duration::from_secs(20), |st| {
            int(st, "pending") > 0 && int(st, "in_flight") > 0
        });
        let (groups, pending) = groups_and_pending(&mut con);
        match mode {
            "XACK" => assert!(pending > 0 && groups.len() == 1, "{groups:?} {pending}"),
            _ => assert!(pending == 0 && groups.len() == 2, "{groups:?} {pending}"),
        }
        server.kill9();
        emu.clear_faults();
        server.opts.env.insert("ACK_MODE".into(), then.into());
        server.launch();
        con = server.connection();
        flush(&mut con, 60_000);
        assert_exactly_once(&mut con, &emu);
        let (groups, pending) = groups_and_pending(&mut con);
        assert_eq!(pending, 0, "{then}: {groups:?}");
        let expected: Vec<String> = match then {
            "XACK" => vec!["snowflake-writer".into()],
            _ => vec!["snowflake-writer".into(), "snowflake-writer-written".into()],
        };
        assert_eq!(groups, expected, "{then}");
        // The written group stands at the last entry: everything is written.
        let last: Vec<(String, BTreeMap<String, String>)> = q(
            &mut con,
            &["XREVRANGE", "userdata-stream", "+", "-", "COUNT", "1"],
        );
        let written = if then == "XACK" { "" } else { &last[0].0 };
        assert_eq!(status(&mut con)["written_id"], written, "{then}");
    }
}

#[test]
fn an_entry_dead_lettered_before_a_crash_and_read_again_gets_no_second_copy() {
    let emu = Emulator::start();
    let mut server = RedisServer::start(
        durable(&emu)
            .env("ACK_MODE", "WRITTEN_GROUP")
            .env("SNOWFLAKE_REQUEST_TIMEOUT_SECONDS", "60"),
    );
    let mut con = server.connection();
    wait_status(
        &server,
        "the writer to run",
        Duration::from_secs(20),
        |st| st["state"] == "running",
    );
    // The first statement hangs: the written group stays before the first entry, while undecodable
    // entries after it, on the other worker, are dead-lettered.
    emu.fault(json!({"next": 1, "slow_ms": 30_000}));
    let _: String = q(
        &mut con,
        &["XADD", "userdata-stream", "*", "value", &generated(0)],
    );
    let expected = stream_visits(&mut con, "userdata-stream");
    let bad = 20;
    for i in 0..bad {
        let _: String = q(
            &mut con,
            &[
                "XADD",
                "userdata-stream",
                "*",
                "value",
                &format!("{{oops {i}"),
            ],
        );
    }
    wait_status(&server, "dead letters", Duration::from_secs(20), |st| {
        int(st, "dlq_length") > 0 && int(st, "in_flight") > 0
    });
    server.kill9();
    emu.clear_faults();
    server.launch();
    let mut con = server.connection();
    flush(&mut con, 60_000);
    assert_in_snowflake(&expected, &emu);
    let st = status(&mut con);
    assert_eq!(int(&st, "dlq_length"), bad, "{st:?}");
    assert_eq!(st["pending"], "0", "{st:?}");
    assert!(
        server.log().contains("its dead-letter copy exists already"),
        "no entry was read again after its dead-letter copy"
    );
}

#[test]
fn a_read_failing_while_a_dead_letter_is_in_flight_gives_it_no_second_copy() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu).env("ACK_MODE", "WRITTEN_GROUP"));
    let mut con = server.connection();
    // The dead-letter copy cannot be written yet: the entry stays in flight.
    let _: String = q(&mut con, &["SET", "userdata-stream:dlq", "not a stream"]);
    let bad: String = q(
        &mut con,
        &["XADD", "userdata-stream", "*", "value", "{not json"],
    );
    let good = generated(1);
    let _: String = q(&mut con, &["XADD", "userdata-stream", "*", "value", &good]);
    let _: String = q(&mut con, &["XADD", "expected", "*", "value", &good]);
    let expected = stream_visits(&mut con, "expected");
    wait_status(
        &server,
        "a failed dead-letter copy, the good entry settled",
        Duration::from_secs(20),
        |st| int(st, "dead_letter_errors") >= 1 && int(st, "entries_acked") >= 1,
    );
    // The next read fails: the reading group is gone.
    let _: i64 = q(
        &mut con,
        &["XGROUP", "DESTROY", "userdata-stream", "snowflake-writer"],
    );
    server.wait_for("the failed read", Duration::from_secs(20), || {
        server
            .log()
            .contains("reading userdata-stream through snowflake-writer failed")
            .then_some(())
    });
    // While the entry is in flight, nothing is read again: it is not delivered a second time.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let st = status(&mut con);
        assert_eq!(int(&st, "in_flight"), 1, "{st:?}");
    }
    let _: i64 = q(&mut con, &["DEL", "userdata-stream:dlq"]);
    flush(&mut con, 30_000);
    assert_in_snowflake(&expected, &emu);
    let st = status(&mut con);
    assert_eq!(int(&st, "dead_lettered"), 1, "{st:?}");
    assert_eq!(int(&st, "in_flight"), 0, "{st:?}");
    let copies: Vec<(String, BTreeMap<String, String>)> =
        q(&mut con, &["XRANGE", "userdata-stream:dlq", "-", "+"]);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(
        copies[0].1.values().any(|v| v == &bad),
        "the copy names {bad}: {copies:?}"
    );
}
