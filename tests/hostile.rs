//! Hostile input: a corpus of malformed and malicious entries (`tests/hostile/corpus.json`), each
//! followed by a well-formed canary entry.
//!
//! Every corpus entry must end exactly as its case says — rows written with the values as sent, a
//! record skipped or rejected with its reason (counted in `WB.STATUS` and logged with the entry ID),
//! an acknowledged entry with nothing to write, or a dead-letter entry holding the original fields
//! and an actionable reason — and every canary after it must be written: bad input never blocks
//! the stream and is never silently lost. Hostile strings reach Snowflake only as bind values: the
//! logged SQL text never contains them, and the values come back from Snowflake byte for byte.
//!
//! A case (`corpus.json`): `name`; the entry as `value` (text, `{NOW}`/`{OLD}` replaced by a fresh
//! and a stale time), `value_hex` (raw bytes), `fields` (field/value pairs) or `generate` (large
//! inputs built here); optional `extra_fields`; `expect` one of `dead_letter` (+ `reason`, a part of
//! it), `written` (+ `rows` or `rows_summary`, optional `rejected`), `user` (+ `email`), `nothing`,
//! `skipped` (+ `skipped` counts by reason code), `rejected` (+ `rejected` counts by reason code).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::emulator::Emulator;
use common::redis_server::{q, q_err, status, Options, RedisServer};
use serde_json::{json, Value};

const CORPUS: &str = include_str!("hostile/corpus.json");

/// The shared wiring, with every statement logged (the test checks no value ever reaches the SQL text).
fn wired(emu: &Emulator) -> Options {
    common::wired(emu).env("LOG_SQL", "1")
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The large inputs, built here rather than stored.
fn generated(spec: &Value, now: &str, old: &str) -> Vec<u8> {
    let n = |k: &str| spec[k].as_u64().expect("a number") as usize;
    match spec["kind"].as_str().expect("kind") {
        "nested_lists" => {
            format!("{}{}", "[".repeat(n("depth")), "]".repeat(n("depth"))).into_bytes()
        }
        "nested_objects" => format!(
            "{}1{}",
            "{\"a\":".repeat(n("depth")),
            "}".repeat(n("depth"))
        )
        .into_bytes(),
        "garbage" => "x{[\"".repeat(n("bytes") / 4).into_bytes(),
        "records" => {
            let id = spec["id"].as_str().expect("id");
            let distinct = spec["distinct"].as_bool().unwrap_or(false);
            // `lastplus`: absent = fresh; "old" = every record stale; "bad_but_first" = only the
            // first record has a usable time.
            let lastplus = |i: usize| match spec["lastplus"].as_str() {
                Some("old") => old.to_string(),
                Some("bad_but_first") if i > 0 => "not a time".to_string(),
                _ => now.to_string(),
            };
            let records: Vec<Value> = (0..n("count"))
                .map(|i| {
                    let track = if distinct {
                        format!("t{i}")
                    } else {
                        "a".into()
                    };
                    json!({"id": id, "track_id": track, "lastplus": lastplus(i), "action": "v"})
                })
                .collect();
            json!({"key": format!("userdata-events:{id}/visited"), "records": records})
                .to_string()
                .into_bytes()
        }
        "long_title" => {
            let id = spec["id"].as_str().expect("id");
            json!({"key": format!("userdata-events:{id}/visited"), "records": [{"id": id,
                "track_id": "a", "track_title": "T".repeat(n("bytes")), "lastplus": now, "action": "v"}]})
            .to_string()
            .into_bytes()
        }
        other => panic!("unknown generator {other}"),
    }
}

/// The entry's field/value pairs for a case.
fn entry_fields(case: &Value, now: &str, old: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let subst = |s: &str| s.replace("{NOW}", now).replace("{OLD}", old);
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = if let Some(v) = case["value"].as_str() {
        vec![(b"value".to_vec(), subst(v).into_bytes())]
    } else if let Some(h) = case["value_hex"].as_str() {
        vec![(b"value".to_vec(), hex(h))]
    } else if let Some(g) = case.get("generate") {
        vec![(b"value".to_vec(), generated(g, now, old))]
    } else {
        case["fields"]
            .as_array()
            .expect("value, value_hex, generate or fields")
            .iter()
            .map(|p| {
                (
                    p[0].as_str().expect("name").as_bytes().to_vec(),
                    subst(p[1].as_str().expect("value")).into_bytes(),
                )
            })
            .collect()
    };
    for p in case["extra_fields"].as_array().into_iter().flatten() {
        fields.push((
            p[0].as_str().expect("name").as_bytes().to_vec(),
            p[1].as_str().expect("value").as_bytes().to_vec(),
        ));
    }
    fields
}

fn xadd(con: &mut redis::Connection, fields: &[(Vec<u8>, Vec<u8>)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg("userdata-stream").arg("*");
    for (k, v) in fields {
        cmd.arg(k.as_slice()).arg(v.as_slice());
    }
    cmd.query(con).expect("XADD")
}

fn canary(i: usize, now: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let user = format!("canary{i}-x");
    let v = json!({"key": format!("userdata-events:{user}/visited"), "records": [{"id": user,
        "track_id": "c", "lastplus": now, "action": "v"}]});
    vec![(b"value".to_vec(), v.to_string().into_bytes())]
}

fn bytes(v: &redis::Value) -> Vec<u8> {
    match v {
        redis::Value::BulkString(b) => b.clone(),
        redis::Value::SimpleString(s) => s.clone().into_bytes(),
        other => panic!("not a string: {other:?}"),
    }
}

/// An entry's field/value pairs, byte for byte.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The dead-letter stream: source ID -> its fields.
fn dead_letters(con: &mut redis::Connection) -> BTreeMap<String, Fields> {
    let v: redis::Value = q(con, &["XRANGE", "userdata-stream:dlq", "-", "+"]);
    let redis::Value::Array(entries) = v else {
        panic!("XRANGE reply {v:?}");
    };
    entries
        .iter()
        .map(|e| {
            let redis::Value::Array(parts) = e else {
                panic!("entry {e:?}")
            };
            let redis::Value::Array(kv) = &parts[1] else {
                panic!("fields {parts:?}")
            };
            let fields: Vec<(Vec<u8>, Vec<u8>)> =
                kv.chunks(2).map(|p| (bytes(&p[0]), bytes(&p[1]))).collect();
            let source = fields
                .iter()
                .find(|(k, _)| k == b"source_id")
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .expect("source_id");
            (source, fields)
        })
        .collect()
}

fn field<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

fn num(v: &Option<String>) -> i64 {
    v.as_deref()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(-1, |f| f as i64)
}

#[test]
fn every_hostile_entry_ends_as_its_case_says_and_the_entries_after_it_are_written() {
    let mut corpus: Vec<Value> = serde_json::from_str(CORPUS).expect("corpus.json is JSON");
    assert!(corpus.len() >= 50, "the corpus has {} cases", corpus.len());
    // `WB_HOSTILE_ONLY=<part of a name>` runs only the matching cases (for investigating one).
    if let Ok(only) = std::env::var("WB_HOSTILE_ONLY") {
        corpus.retain(|c| c["name"].as_str().is_some_and(|n| n.contains(&only)));
    }
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu));
    let mut con = server.connection();
    let now = ts(chrono::Utc::now());
    let old = ts(chrono::Utc::now() - chrono::Duration::hours(1));
    let mut ids = Vec::new();
    for (i, case) in corpus.iter().enumerate() {
        ids.push(xadd(&mut con, &entry_fields(case, &now, &old)));
        xadd(&mut con, &canary(i, &now));
    }
    con.set_read_timeout(Some(Duration::from_secs(330)))
        .expect("timeout");
    let ok: String = q(&mut con, &["WB.FLUSH", "300000"]);
    assert_eq!(ok, "OK");

    // Every canary is written once: nothing before it blocked the stream.
    let canaries = emu.scalar(
        "SELECT COUNT(*) FROM TRACKED WHERE tracked_id LIKE 'canary%' AND visited_count = 1",
    );
    assert_eq!(num(&canaries), corpus.len() as i64, "canaries written");

    let dlq = dead_letters(&mut con);
    let rows: Vec<Vec<Option<String>>> = emu.sql(
        "SELECT tracked_id, track_id, visited_count, saved, track_title, track_url FROM TRACKED WHERE tracked_id NOT LIKE 'canary%'",
    );
    let by_id = |tid: &str| -> Vec<&Vec<Option<String>>> {
        rows.iter()
            .filter(|r| r[0].as_deref() == Some(tid))
            .collect()
    };
    let log = server.log();
    let mut want_skipped: BTreeMap<String, i64> = BTreeMap::new();
    let mut want_rejected: BTreeMap<String, i64> = BTreeMap::new();
    let mut failures = Vec::new();
    for (case, id) in corpus.iter().zip(&ids) {
        let name = case["name"].as_str().expect("name");
        let expect = case["expect"].as_str().expect("expect");
        let mut fail = |what: String| failures.push(format!("{name} ({id}): {what}"));
        for (code, n) in case["skipped"].as_object().into_iter().flatten() {
            *want_skipped.entry(code.clone()).or_default() += n.as_i64().unwrap_or(0);
        }
        for (code, n) in case["rejected"].as_object().into_iter().flatten() {
            *want_rejected.entry(code.clone()).or_default() += n.as_i64().unwrap_or(0);
            if !log
                .lines()
                .any(|l| l.contains(id.as_str()) && l.contains("REJECTED"))
            {
                fail(format!("no REJECTED log line for {code}"));
            }
        }
        if case.get("skipped").is_some()
            && !log
                .lines()
                .any(|l| l.contains(id.as_str()) && l.contains("SKIPPED"))
        {
            fail("no SKIPPED log line".into());
        }
        if expect == "dead_letter" {
            let Some(fields) = dlq.get(id) else {
                fail("not in the dead-letter stream".into());
                continue;
            };
            let reason = String::from_utf8_lossy(field(fields, "reason").unwrap_or_default());
            let want = case["reason"].as_str().expect("reason");
            if !reason.contains(want) {
                fail(format!("reason {reason:?} does not say {want:?}"));
            }
            if reason.contains('\n') || reason.len() > 2_000 {
                fail(format!(
                    "reason is not one short line: {} bytes",
                    reason.len()
                ));
            }
            // The original fields, unchanged.
            for (k, v) in entry_fields(case, &now, &old) {
                if field(fields, &String::from_utf8_lossy(&k)) != Some(v.as_slice()) {
                    fail(format!(
                        "field {} not kept as sent",
                        String::from_utf8_lossy(&k)
                    ));
                }
            }
            continue;
        }
        if dlq.contains_key(id) {
            fail(format!("dead-lettered: {:?}", dlq[id]));
        }
        match expect {
            "written" => {
                for want in case["rows"].as_array().into_iter().flatten() {
                    let tid = want["tracked_id"].as_str().expect("tracked_id");
                    let track = want["track_id"].as_str().expect("track_id");
                    let Some(r) = by_id(tid)
                        .into_iter()
                        .find(|r| r[1].as_deref() == Some(track))
                    else {
                        fail(format!("no row {tid:?}/{track:?}"));
                        continue;
                    };
                    for (col, i) in [("visited_count", 2), ("saved", 3)] {
                        if let Some(n) = want.get(col).and_then(Value::as_i64) {
                            if num(&r[i]) != n {
                                fail(format!("{col} {:?}, expected {n}", r[i]));
                            }
                        }
                    }
                    for (col, i) in [("track_title", 4), ("track_url", 5)] {
                        if let Some(s) = want.get(col).and_then(Value::as_str) {
                            if r[i].as_deref() != Some(s) {
                                fail(format!("{col} {:?}, expected {s:?}", r[i]));
                            }
                        }
                    }
                }
                if let Some(sum) = case.get("rows_summary") {
                    let got = by_id(sum["tracked_id"].as_str().expect("tracked_id"));
                    let visits: i64 = got.iter().map(|r| num(&r[2])).sum();
                    if got.len() as u64 != sum["rows"].as_u64().unwrap_or(0)
                        || visits != sum["visits"].as_i64().unwrap_or(0)
                    {
                        fail(format!("{} rows, {visits} visits: {sum}", got.len()));
                    }
                    if let Some(len) = sum.get("title_len").and_then(Value::as_u64) {
                        let title_len = got.first().and_then(|r| r[4].as_ref()).map(String::len);
                        if title_len != Some(len as usize) {
                            fail(format!("title length {title_len:?}"));
                        }
                    }
                }
            }
            "user" => {
                let email = case["email"].as_str().expect("email");
                let users = emu.sql(r#"SELECT user_email FROM "USER""#);
                if !users.iter().any(|r| r[0].as_deref() == Some(email)) {
                    fail(format!("no USER row {email:?}"));
                }
            }
            "nothing" | "skipped" | "rejected" => {
                let doc: Value = serde_json::from_str(case["value"].as_str().unwrap_or("null"))
                    .unwrap_or_default();
                let ids: Vec<&str> = doc["records"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["id"].as_str())
                    .chain(case["generate"]["id"].as_str())
                    .collect();
                let own: Vec<_> = rows
                    .iter()
                    .filter(|r| r[0].as_deref().is_some_and(|t| ids.contains(&t)))
                    .collect();
                if !own.is_empty() {
                    fail(format!("rows written: {own:?}"));
                }
            }
            other => panic!("{name}: unknown expectation {other}"),
        }
    }
    let st = status(&mut con);
    for (code, n) in &want_skipped {
        if st
            .get(&format!("skipped_{code}"))
            .and_then(|v| v.parse::<i64>().ok())
            != Some(*n)
        {
            failures.push(format!(
                "skipped_{code}: {:?}, expected {n}",
                st.get(&format!("skipped_{code}"))
            ));
        }
    }
    for (code, n) in &want_rejected {
        if st
            .get(&format!("rejected_{code}"))
            .and_then(|v| v.parse::<i64>().ok())
            != Some(*n)
        {
            failures.push(format!(
                "rejected_{code}: {:?}, expected {n}",
                st.get(&format!("rejected_{code}"))
            ));
        }
    }
    let dead = corpus
        .iter()
        .filter(|c| c["expect"] == "dead_letter")
        .count();
    assert_eq!(st["dead_lettered"], dead.to_string(), "{st:?}");
    assert_eq!(st["pending"], "0", "{st:?}");
    // Values travel as binds only: no hostile string is ever part of the SQL text.
    for line in log.lines().filter(|l| l.contains("SQL (")) {
        for bad in ["DROP TABLE", "o'brien", "$1", "\u{202e}"] {
            if line.contains(bad) {
                failures.push(format!("SQL text holds {bad:?}: {line}"));
            }
        }
    }
    assert!(
        emu.scalar("SELECT COUNT(*) FROM TRACKED").is_some(),
        "TRACKED is gone"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------------------------------------------------
// Hostile servers and hostile callers: bytes that data may hold, storms of waiting commands, threads
// that die, demotion, a stream that disappears, a dead-letter stream that cannot be written, an
// entry too large for any statement.

/// `WB.FLUSH` (up to a minute), then waits until nothing is in flight; gives the status then.
fn flush_and_settle(server: &RedisServer, con: &mut redis::Connection) -> BTreeMap<String, String> {
    con.set_read_timeout(Some(Duration::from_secs(90)))
        .expect("timeout");
    let ok: String = q(con, &["WB.FLUSH", "60000"]);
    assert_eq!(ok, "OK");
    wait_status(server, "nothing in flight", Duration::from_secs(30), |st| {
        st_int(st, "in_flight") == 0
    })
}

fn st_int(st: &BTreeMap<String, String>, k: &str) -> i64 {
    st.get(k).and_then(|v| v.parse().ok()).unwrap_or(-1)
}

fn wait_status(
    server: &RedisServer,
    what: &str,
    within: Duration,
    pred: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let mut con = server.connection();
    server.wait_for(what, within, || {
        let st = status(&mut con);
        pred(&st).then_some(st)
    })
}

fn raw_cmd(con: &mut redis::Connection, args: &[&[u8]]) -> redis::RedisResult<redis::Value> {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).expect("command name"));
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(con)
}

fn visit(user: &str, track: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let now = ts(chrono::Utc::now());
    let v = json!({"key": format!("userdata-events:{user}/visited"), "records": [{"id": user,
        "track_id": track, "lastplus": now, "action": "v"}]});
    vec![(b"value".to_vec(), v.to_string().into_bytes())]
}

/// Values that a simple-string reply cannot carry: a NUL, a CR LF, invalid UTF-8, a character whose
/// low byte is 0, and 2 MB.
fn byte_corpus() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("nul", b"a\0b".to_vec()),
        ("crlf", b"c\r\n-ERR injected\r\n".to_vec()),
        ("invalid utf-8", vec![0xff, 0xfe, 0x00, 0xc3]),
        ("u+0100", "\u{100}\u{4e00}".as_bytes().to_vec()),
        ("2 MB", {
            let mut v = vec![b'x'; 2 << 20];
            v[1000] = 0;
            v[2000] = b'\r';
            v[2001] = b'\n';
            v
        }),
    ]
}

#[test]
fn dead_letter_entries_with_nul_crlf_invalid_utf8_and_2mb_values_are_listed_and_replayed_byte_for_byte(
) {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    let corpus = byte_corpus();
    let mut ids = Vec::new();
    for (name, value) in &corpus {
        let id: String = raw_cmd(
            &mut con,
            &[
                b"XADD",
                b"userdata-stream:dlq",
                b"*",
                b"value",
                value,
                b"field\0with\r\nbytes",
                value,
                b"reason",
                name.as_bytes(),
                b"source_stream",
                b"userdata-stream",
                b"source_id",
                b"1-1",
            ],
        )
        .and_then(|v| redis::from_redis_value(&v))
        .expect("XADD");
        ids.push(id);
    }
    let listed = raw_cmd(&mut con, &[b"WB.DLQ", b"LIST", b"100"]).expect("WB.DLQ LIST");
    let redis::Value::Array(entries) = listed else {
        panic!("WB.DLQ LIST gave {listed:?}")
    };
    assert_eq!(entries.len(), corpus.len());
    for ((name, value), e) in corpus.iter().zip(&entries) {
        let redis::Value::Array(parts) = e else {
            panic!("{name}: {e:?}")
        };
        let redis::Value::Array(kv) = &parts[1] else {
            panic!("{name}: {parts:?}")
        };
        let fields: Fields = kv.chunks(2).map(|p| (bytes(&p[0]), bytes(&p[1]))).collect();
        assert_eq!(field(&fields, "value"), Some(value.as_slice()), "{name}");
        assert_eq!(
            fields
                .iter()
                .find(|(k, _)| k == b"field\0with\r\nbytes")
                .map(|(_, v)| v.as_slice()),
            Some(value.as_slice()),
            "{name}: field name"
        );
    }
    // A count beyond the cap is capped, not refused.
    let capped = raw_cmd(&mut con, &[b"WB.DLQ", b"LIST", b"99999999"]).expect("capped");
    assert!(matches!(capped, redis::Value::Array(ref a) if a.len() == corpus.len()));

    // Arguments echoed in error replies: every one is refused with a one-line error.
    for (_, value) in &corpus {
        for args in [
            vec![b"WB.DLQ".as_slice(), value.as_slice()],
            vec![b"WB.DLQ", b"REPLAY", value.as_slice()],
            vec![b"WB.DLQ", b"PURGE", value.as_slice()],
            vec![b"WB.RESTORE", value.as_slice()],
            vec![b"WB.IMPORT", value.as_slice()],
            vec![b"WB.WRITE", value.as_slice()],
            vec![b"WB.WRITE", b"{}", value.as_slice()],
            vec![b"WB.FLUSH", value.as_slice()],
        ] {
            let e = raw_cmd(&mut con, &args).expect_err("an error reply");
            let text = e.to_string();
            assert!(!text.contains('\n') && text.len() < 1_000, "{text:?}");
        }
    }
    let pong: String = q(&mut con, &["PING"]);
    assert_eq!(pong, "PONG");

    // REPLAY moves them back byte for byte and says where each came from.
    con.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let replayed: i64 = q(&mut con, &["WB.DLQ", "REPLAY", "ALL"]);
    assert_eq!(replayed, corpus.len() as i64);
    let back = raw_cmd(&mut con, &[b"XRANGE", b"userdata-stream", b"-", b"+"]).expect("XRANGE");
    let redis::Value::Array(back) = back else {
        panic!("{back:?}")
    };
    assert_eq!(back.len(), corpus.len());
    for ((name, value), e) in corpus.iter().zip(&back) {
        let redis::Value::Array(parts) = e else {
            panic!("{e:?}")
        };
        let redis::Value::Array(kv) = &parts[1] else {
            panic!("{parts:?}")
        };
        let fields: Fields = kv.chunks(2).map(|p| (bytes(&p[0]), bytes(&p[1]))).collect();
        assert_eq!(field(&fields, "value"), Some(value.as_slice()), "{name}");
        assert_eq!(field(&fields, "replayed_from"), Some(b"1-1".as_slice()));
        assert_eq!(field(&fields, "reason"), None);
    }
    let n: i64 = q(&mut con, &["XLEN", "userdata-stream:dlq"]);
    assert_eq!(n, 0);
    // Every executor place is given back (a one-at-a-time command included).
    let again: i64 = q(&mut con, &["WB.DLQ", "REPLAY", "ALL"]);
    assert_eq!(again, 0);
    wait_status(&server, "executor idle", Duration::from_secs(10), |st| {
        st_int(st, "background_commands") == 0
    });
}

#[test]
fn a_storm_of_waiting_commands_from_one_application_user_keeps_threads_bounded_and_ping_fast() {
    let mut server = RedisServer::start(Options::default());
    let mut con = server.connection();
    let _: String = q(
        &mut con,
        &[
            "ACL",
            "SETUSER",
            "app",
            "on",
            ">app-pass",
            "~*",
            "-@all",
            "+ping",
            "+xadd",
            "+wb.flush",
            "+wb.status",
            "+wb.write",
        ],
    );
    // Without Snowflake nothing is ever written: every WB.FLUSH and WB.WRITE ... SYNC that is let
    // wait waits for its whole timeout.
    let _: String = q(&mut con, &["XADD", "userdata-stream", "*", "value", "x"]);
    let before_names = {
        server.settled_threads();
        server.thread_names()
    };
    let before = before_names.len();
    // The count, and the names at the highest count seen (to say which threads grew).
    let mut peak: Vec<String> = Vec::new();
    let mut threads = || {
        let names = server.thread_names();
        if names.len() > peak.len() {
            peak = names.clone();
        }
        names.len()
    };
    let bulk = |parts: &[&str]| {
        let mut out = format!("*{}\r\n", parts.len());
        for p in parts {
            out.push_str(&format!("${}\r\n{p}\r\n", p.len()));
        }
        out
    };
    let auth = bulk(&["AUTH", "app", "app-pass"]);
    let flush = bulk(&["WB.FLUSH", "5000"]);
    // 1,000 WB.FLUSH callers (16 may wait) and 1,050 WB.WRITE ... SYNC callers (1,000 may wait),
    // interleaved, each on its own connection.
    let (flushers, writers) = (1000, 1050);
    let mut socks = Vec::new();
    let sending = std::time::Instant::now();
    // Connections go in waves the server has accepted before the next is sent: more at once
    // than its listen backlog (511) and the kernel drops SYNs, whose retries take 1 s, 3 s, 7 s.
    let connected = |con: &mut redis::Connection| -> usize {
        let info: String = q(con, &["INFO", "clients"]);
        info.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("connected_clients in INFO")
    };
    for i in 0..flushers.max(writers) {
        use std::io::Write;
        if i % 128 == 0 && i > 0 {
            let want = socks.len() + 1;
            server.wait_for(
                "the server to accept a wave",
                Duration::from_secs(3),
                || (connected(&mut con) >= want).then_some(()),
            );
        }
        for (kind, n) in [("flush", flushers), ("write", writers)] {
            if i >= n {
                continue;
            }
            let cmd = if kind == "flush" {
                flush.clone()
            } else {
                let now = ts(chrono::Utc::now());
                let v = json!({"key": format!("userdata-events:storm{i}-x/visited"), "records": [{"id": format!("storm{i}-x"),
                    "track_id": "t", "lastplus": now, "action": "v"}]});
                bulk(&["WB.WRITE", &v.to_string(), "SYNC", "5000"])
            };
            let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
            s.write_all(format!("{auth}{cmd}").as_bytes())
                .expect("send");
            socks.push((kind, s));
        }
    }
    // Every caller is in before the first wait ends (5 s), so exactly the capacity waits.
    let sent_in = sending.elapsed();
    assert!(sent_in < Duration::from_secs(4), "sending took {sent_in:?}");
    let mut most = before;
    let mut slowest = Duration::ZERO;
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        most = most.max(threads());
        let t = std::time::Instant::now();
        let _: String = q(&mut con, &["PING"]);
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut tally: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (kind, mut s) in socks {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.ends_with(b"\r\n") || got.iter().filter(|&&b| b == b'\n').count() < 2 {
            let n = s.read(&mut buf).expect("a reply");
            assert!(n > 0, "connection closed");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        let outcome = if text.contains("-BUSY ") && text.contains("retry") {
            "busy"
        } else if text.contains("-TIMEOUT ") {
            "waited"
        } else {
            panic!("unexpected reply to {kind}: {text:?}");
        };
        *tally.entry((kind, outcome)).or_default() += 1;
        most = most.max(threads());
    }
    let count = |k: (&str, &str)| tally.get(&k).copied().unwrap_or(0);
    eprintln!(
        "MEASURED {flushers} concurrent WB.FLUSH + {writers} concurrent WB.WRITE SYNC, sent in {} ms: {tally:?}; threads {before} -> at most {most}; slowest PING {} ms",
        sent_in.as_millis(),
        slowest.as_millis()
    );
    assert!(count(("flush", "busy")) >= flushers - 16, "{tally:?}");
    assert_eq!(count(("write", "waited")), 1000, "{tally:?}");
    assert_eq!(count(("write", "busy")), writers - 1000, "{tally:?}");
    let mut grown = peak.clone();
    for name in &before_names {
        if let Some(i) = grown.iter().position(|n| n == name) {
            grown.remove(i);
        }
    }
    assert!(
        most <= before + 16,
        "threads grew from {before} to {most}: {grown:?}"
    );
    assert!(
        slowest < Duration::from_millis(200),
        "PING took {slowest:?}"
    );
    let st = status(&mut con);
    assert_eq!(st_int(&st, "background_commands"), 0, "{st:?}");
    // Only the writes that were let wait added an entry.
    assert_eq!(q::<i64>(&mut con, &["XLEN", "userdata-stream"]), 1001);
    assert!(server.is_running());
}

#[test]
fn a_background_command_whose_thread_cannot_start_gets_a_clear_error_and_the_server_stays_responsive(
) {
    let mut server = RedisServer::start(
        Options::default()
            .env("WB_TEST_FAULTS", "1")
            .env("WB_TEST_SPAWN_REFUSED", "WB.FLUSH,WB.IMPORT"),
    );
    let mut con = server.connection();
    con.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let threads = || server.thread_names().len();
    let _: String = q(&mut con, &["XADD", "userdata-stream", "*", "value", "x"]);
    server.settled_threads();
    // The baseline: the server's threads and the module's, once both have held still for half a
    // second (on a loaded machine a start-up thread may end late, and would count in it).
    let mut still: Option<((usize, i64), std::time::Instant)> = None;
    let (before, before_alive) = server.wait_for(
        "the thread counts to hold still",
        Duration::from_secs(30),
        || {
            let counts = (
                threads(),
                st_int(&status(&mut server.connection()), "threads_alive"),
            );
            match still {
                Some((c, since)) if c == counts => {
                    (since.elapsed() >= Duration::from_millis(500)).then_some(counts)
                }
                _ => {
                    still = Some((counts, std::time::Instant::now()));
                    None
                }
            }
        },
    );
    let mut slowest = Duration::ZERO;
    // More refused starts than the executor has places: a place leaked by a refusal would turn
    // the later ones into "already waiting" refusals.
    for i in 0..40 {
        let (cmd, args): (&str, &[&str]) = if i % 2 == 0 {
            ("WB.FLUSH", &["WB.FLUSH", "100"])
        } else {
            ("WB.IMPORT", &["WB.IMPORT", "MATCH", "legacy:*"])
        };
        let e = q_err(&mut con, args);
        assert!(
            e.starts_with(&format!("BUSY: could not start the {cmd} thread:"))
                && e.ends_with(&format!("{cmd} refused, retry later")),
            "{cmd}: {e}"
        );
        let t = std::time::Instant::now();
        let pong: String = q(&mut con, &["PING"]);
        assert_eq!(pong, "PONG");
        slowest = slowest.max(t.elapsed());
    }
    // Another background command still starts its thread and answers.
    let ping = raw_cmd(&mut con, &[b"WB.PING"]);
    assert!(ping.is_err(), "WB.PING without Snowflake: {ping:?}");
    let what = format!("threads back to their baseline ({before} threads, {before_alive} alive)");
    let st = server.wait_for(&what, Duration::from_secs(10), || {
        let st = status(&mut server.connection());
        (threads() == before
            && st_int(&st, "threads_alive") == before_alive
            && st_int(&st, "background_commands") == 0)
            .then_some(st)
    });
    eprintln!(
        "MEASURED 40 refused thread starts: threads {before} -> {}, threads_alive {}, slowest PING {} ms",
        threads(),
        st_int(&st, "threads_alive"),
        slowest.as_millis()
    );
    assert!(
        slowest < Duration::from_millis(200),
        "PING took {slowest:?}"
    );
    assert!(server.is_running());
}

#[test]
fn pipeline_threads_that_die_are_restarted_and_lose_nothing_and_a_decoder_panic_is_dead_lettered() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu).env("WB_TEST_FAULTS", "1"));
    let mut con = server.connection();
    let healthy = wait_status(&server, "running", Duration::from_secs(20), |st| {
        st["state"] == "running"
    });
    let threads = st_int(&healthy, "threads_alive");
    let mut ids = BTreeMap::new();
    for (i, fault) in ["decoder", "claimer", "worker"].iter().enumerate() {
        let mut fields = visit(&format!("fault{i}-x"), "t");
        fields.push((b"wb-test-panic".to_vec(), fault.as_bytes().to_vec()));
        ids.insert(*fault, xadd(&mut con, &fields));
        for j in 0..5 {
            xadd(&mut con, &visit(&format!("after{i}-{j}-x"), "t"));
        }
    }
    con.set_read_timeout(Some(Duration::from_secs(90)))
        .expect("timeout");
    let ok: String = q(&mut con, &["WB.FLUSH", "60000"]);
    assert_eq!(ok, "OK");
    let written = emu.scalar("SELECT COUNT(*) FROM TRACKED WHERE tracked_id LIKE 'after%'");
    assert_eq!(num(&written), 15, "every entry after a fault is written");
    for who in ["fault1-x", "fault2-x"] {
        let n = emu.scalar(&format!(
            "SELECT visited_count FROM TRACKED WHERE tracked_id = '{who}'"
        ));
        assert_eq!(num(&n), 1, "{who}: written once after the restart");
    }
    let dlq = dead_letters(&mut con);
    let reason = dlq
        .get(&ids["decoder"])
        .and_then(|f| field(f, "reason").map(|r| String::from_utf8_lossy(r).into_owned()))
        .expect("the decoder's entry is dead-lettered");
    assert!(reason.contains("decoder failed"), "{reason}");
    let st = status(&mut con);
    assert_eq!(st["pending"], "0", "{st:?}");
    assert_eq!(st["in_flight"], "0", "{st:?}");
    assert!(st_int(&st, "thread_restarts") >= 2, "{st:?}");
    // Every restarted thread runs again, and none is left over: the workers, the claimer, the
    // housekeeping and the deadline threads (a finished WB.FLUSH thread may take a moment to go).
    let workers: Vec<String> = q(&mut con, &["CONFIG", "GET", "writebehind.workers"]);
    let expected = workers[1].parse::<i64>().expect("workers") + 3;
    assert!(threads >= expected, "{healthy:?}");
    wait_status(&server, "threads back", Duration::from_secs(10), |st| {
        st_int(st, "threads_alive") == expected
    });
    assert_eq!(st["state"], "running");
    let log = server.log();
    assert!(log.contains("THREAD wb-claimer died"), "no restart logged");
    assert!(log.contains("THREAD wb-worker-"), "no restart logged");

    // A claimer that dies on every attempt is reported as failed, and Redis keeps serving.
    let mut fields = visit("always-x", "t");
    fields.push((b"wb-test-panic".to_vec(), b"claimer-always".to_vec()));
    xadd(&mut con, &fields);
    wait_status(&server, "state failed", Duration::from_secs(30), |st| {
        st["state"] == "failed"
    });
    let pong: String = q(&mut con, &["PING"]);
    assert_eq!(pong, "PONG");
}

#[test]
fn a_primary_demoted_to_replica_with_batches_in_flight_writes_nothing_to_its_data() {
    let emu = Emulator::start();
    let old = RedisServer::start(wired(&emu).env("BATCH_MAX_ENTRIES", "5"));
    // The server that takes over has no Snowflake: it writes nothing, so any move of a group the old
    // primary makes after its demotion shows as a difference between the two.
    let new =
        RedisServer::start(Options::default().conf(&format!("replicaof 127.0.0.1 {}", old.port)));
    let mut ocon = old.connection();
    let mut ncon = new.connection();
    new.wait_for("replication link", Duration::from_secs(20), || {
        let info: String = q(&mut ncon, &["INFO", "replication"]);
        info.contains("master_link_status:up").then_some(())
    });
    wait_status(&old, "running", Duration::from_secs(20), |st| {
        st["state"] == "running"
    });
    emu.fault(json!({"next": 100, "slow_ms": 4000}));
    for i in 0..40 {
        xadd(&mut ocon, &visit(&format!("demoted{i}-x"), "t"));
    }
    let _: i64 = q(&mut ocon, &["WAIT", "1", "5000"]);
    wait_status(&old, "batches in flight", Duration::from_secs(10), |st| {
        st_int(st, "in_flight") > 0
    });
    // The claims themselves have reached the server that takes over.
    let _: i64 = q(&mut ocon, &["WAIT", "1", "5000"]);
    let _: String = q(&mut ncon, &["REPLICAOF", "NO", "ONE"]);
    let _: String = q(
        &mut ocon,
        &["REPLICAOF", "127.0.0.1", &new.port.to_string()],
    );
    old.wait_for(
        "the demoted server follows",
        Duration::from_secs(20),
        || {
            let info: String = q(&mut ocon, &["INFO", "replication"]);
            info.contains("master_link_status:up").then_some(())
        },
    );
    // The slow statements finish on the demoted server.
    wait_status(
        &old,
        "in-flight batches settled",
        Duration::from_secs(30),
        |st| st_int(st, "in_flight") == 0,
    );
    // Where the reading group (and with ACK_MODE=WRITTEN_GROUP its written group) stands, and what
    // is in its pending list, on each server.
    let groups = |con: &mut redis::Connection| -> Vec<(String, String, String)> {
        let v: redis::Value = q(con, &["XINFO", "GROUPS", "userdata-stream"]);
        let redis::Value::Array(groups) = v else {
            return Vec::new();
        };
        let text = |v: &redis::Value| match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Value::SimpleString(s) => s.clone(),
            other => format!("{other:?}"),
        };
        let mut out: Vec<(String, String, String)> = groups
            .iter()
            .filter_map(|g| {
                let redis::Value::Array(kv) = g else {
                    return None;
                };
                let field = |name: &str| {
                    kv.chunks(2)
                        .find(|p| text(&p[0]) == name)
                        .map(|p| text(&p[1]))
                };
                Some((
                    field("name")?,
                    field("last-delivered-id")?,
                    field("pending")?,
                ))
            })
            .collect();
        out.sort();
        out
    };
    let (on_old, on_new) = (groups(&mut ocon), groups(&mut ncon));
    assert_eq!(on_old, on_new, "the demoted server moved a group itself");
    // The entries in flight at the demotion are delivered but not written on the server that took
    // over: pending in the group, or after its written group.
    let group = |name: &str| on_new.iter().find(|(n, _, _)| n == name);
    let id = |v: &str| -> (u64, u64) {
        let (ms, seq) = v.split_once('-').expect("an entry ID");
        (ms.parse().unwrap(), seq.parse().unwrap())
    };
    let reading = group("snowflake-writer").expect("the group");
    let unwritten = match group("snowflake-writer-written") {
        Some(written) => id(&written.1) < id(&reading.1),
        None => reading.2 != "0",
    };
    assert!(unwritten, "{on_new:?}");
    let xlen = |con: &mut redis::Connection, k: &str| -> i64 { q(con, &["XLEN", k]) };
    assert_eq!(
        xlen(&mut ocon, "userdata-stream:dlq"),
        xlen(&mut ncon, "userdata-stream:dlq")
    );
}

/// Sum of `visited_count` of the users whose id starts with `prefix`.
fn visits(emu: &Emulator, prefix: &str) -> i64 {
    num(&emu.scalar(&format!(
        "SELECT COALESCE(SUM(visited_count), 0) FROM TRACKED WHERE tracked_id LIKE '{prefix}%'"
    )))
}

#[test]
fn a_stream_deleted_or_flushed_under_load_counts_every_entry_it_never_wrote() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu).env("BATCH_MAX_ENTRIES", "10"));
    let mut con = server.connection();
    wait_status(&server, "running", Duration::from_secs(20), |st| {
        st["state"] == "running"
    });
    // Paused: nothing is written, then the stream is deleted.
    let _: String = q(&mut con, &["WB.PAUSE"]);
    for i in 0..30 {
        xadd(&mut con, &visit(&format!("paused{i}-x"), "t"));
    }
    let _: i64 = q(&mut con, &["DEL", "userdata-stream"]);
    let st = status(&mut con);
    assert_eq!(st_int(&st, "lost_deleted"), 30, "{st:?}");
    assert!(server.log().contains("LOST 30 entries"));
    let _: String = q(&mut con, &["WB.RESUME"]);

    // Under load, with slow statements (entries in flight when it goes), the stream is deleted
    // and then flushed; the application keeps adding. Written + lost accounts for every entry.
    emu.fault(json!({"next": 20, "slow_ms": 300}));
    let mut added = 0;
    for round in 0..3 {
        for i in 0..100 {
            xadd(&mut con, &visit(&format!("load{round}-{i}-x"), "t"));
            added += 1;
        }
        match round {
            0 => {
                let _: i64 = q(&mut con, &["DEL", "userdata-stream"]);
            }
            1 => {
                let _: String = q(&mut con, &["FLUSHDB"]);
            }
            _ => {}
        }
    }
    let st = flush_and_settle(&server, &mut con);
    let written = visits(&emu, "load");
    let lost = st_int(&st, "lost_deleted") - 30;
    eprintln!(
        "MEASURED deleted stream under load: {added} added, {written} written, {lost} counted lost"
    );
    assert_eq!(written + lost, added, "{st:?}");
    assert!(
        lost > 0,
        "nothing was lost: the test did not delete under load"
    );
    assert!(
        visits(&emu, "load2") == 100,
        "the writer carried on with the new stream"
    );
}

#[test]
fn a_stream_swapped_moved_or_renamed_away_counts_every_entry_it_never_wrote_and_the_writer_carries_on(
) {
    let emu = Emulator::start();
    // At most 30 entries in flight: with slow statements, some entries are held and some not yet
    // delivered when the stream goes.
    let mut server = RedisServer::start(
        wired(&emu)
            .env("BATCH_MAX_ENTRIES", "10")
            .env("MAX_IN_FLIGHT", "30"),
    );
    let mut con = server.connection();
    wait_status(&server, "running", Duration::from_secs(20), |st| {
        st["state"] == "running"
    });
    // Paused: nothing is written, so every entry added before the stream goes away is lost.
    let mut lost = 0;
    for (n, away) in [
        (20, vec!["SWAPDB", "0", "1"]),
        (7, vec!["MOVE", "userdata-stream", "2"]),
        (5, vec!["RENAME", "userdata-stream", "renamed-away"]),
    ] {
        let _: String = q(&mut con, &["WB.PAUSE"]);
        for i in 0..n {
            xadd(&mut con, &visit(&format!("{}{i}-x", away[0]), "t"));
        }
        let _: redis::Value = q(&mut con, &away);
        lost += n;
        let st = status(&mut con);
        assert_eq!(st_int(&st, "lost_deleted"), lost, "after {away:?}: {st:?}");
        assert!(
            server.log().contains(&format!("LOST {n} entries")),
            "no LOST warning after {away:?}"
        );
        assert_eq!(q::<i64>(&mut con, &["EXISTS", "userdata-stream"]), 0);
        let _: String = q(&mut con, &["WB.RESUME"]);
    }
    assert!(server.log().contains("swapped away (SWAPDB"));

    // Under load, with slow statements (entries in flight when it goes), the database is swapped
    // with one that holds another stream under the name: the writer carries on with that one.
    // Written + counted lost accounts for every entry added to the stream that went away.
    let mut other = server.connection();
    let _: String = q(&mut other, &["SELECT", "3"]);
    for i in 0..40 {
        xadd(&mut other, &visit(&format!("other{i}-x"), "t"));
    }
    emu.fault(json!({"next": 20, "slow_ms": 300}));
    for i in 0..100 {
        xadd(&mut con, &visit(&format!("load{i}-x"), "t"));
    }
    wait_status(
        &server,
        "entries in flight",
        Duration::from_secs(20),
        |st| st_int(st, "in_flight") > 0,
    );
    let _: String = q(&mut con, &["SWAPDB", "0", "3"]);
    for i in 0..50 {
        xadd(&mut con, &visit(&format!("after{i}-x"), "t"));
    }
    let st = flush_and_settle(&server, &mut con);
    let written = visits(&emu, "load");
    let lost_under_load = st_int(&st, "lost_deleted") - lost;
    eprintln!(
        "MEASURED swapped database under load: 100 added, {written} written, {lost_under_load} counted lost"
    );
    assert_eq!(written + lost_under_load, 100, "{st:?}");
    assert!(
        lost_under_load > 0,
        "nothing was lost: the test did not swap under load"
    );
    assert_eq!(
        visits(&emu, "other"),
        40,
        "the swapped-in stream is written"
    );
    assert_eq!(visits(&emu, "after"), 50, "entries added after the swap");
    assert!(server.is_running());
}

#[test]
fn a_stream_evicted_under_an_allkeys_policy_counts_every_entry_it_never_wrote() {
    let mut server = RedisServer::start(Options::default());
    let mut con = server.connection();
    // Without Snowflake nothing is written: every entry of the stream is unwritten when it goes.
    for i in 0..25 {
        xadd(&mut con, &visit(&format!("evicted{i}-x"), "t"));
    }
    let info: String = q(&mut con, &["INFO", "memory"]);
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    let _: String = q(
        &mut con,
        &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
    );
    let limit = (used + 4 * 1024 * 1024).to_string();
    let _: String = q(&mut con, &["CONFIG", "SET", "maxmemory", &limit]);
    // Newer keys fill the memory until the least recently used one, the stream, is evicted.
    let filler = "f".repeat(64 * 1024);
    let mut written = 0;
    while q::<i64>(&mut con, &["EXISTS", "userdata-stream"]) == 1 {
        assert!(written < 5_000, "the stream was never evicted");
        let _: String = q(&mut con, &["SET", &format!("filler:{written}"), &filler]);
        written += 1;
    }
    let st = status(&mut con);
    assert_eq!(st_int(&st, "lost_deleted"), 25, "{st:?}");
    assert!(
        server
            .log()
            .contains("LOST 25 entries of userdata-stream were never written to Snowflake: the stream was evicted"),
        "no LOST warning for the eviction"
    );
    assert!(server.is_running());
}

#[test]
fn an_evicting_maxmemory_policy_is_warned_about_at_start_and_in_status() {
    let server = RedisServer::start(Options::default().conf("maxmemory-policy allkeys-lru"));
    let mut con = server.connection();
    server.wait_for("EVICTION warning", Duration::from_secs(10), || {
        server
            .log()
            .contains("EVICTION maxmemory-policy allkeys-lru")
            .then_some(())
    });
    let st = status(&mut con);
    assert_eq!(st["maxmemory_policy"], "allkeys-lru");
    assert!(
        st["eviction_warning"].contains("can evict the stream"),
        "{st:?}"
    );
    let _: String = q(
        &mut con,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    );
    assert_eq!(status(&mut con)["eviction_warning"], "");
}

#[test]
fn a_dead_letter_copy_that_cannot_be_written_is_retried_and_not_counted_until_it_is() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu));
    let mut con = server.connection();
    let _: String = q(&mut con, &["SET", "userdata-stream:dlq", "not a stream"]);
    let bad = xadd(&mut con, &[(b"value".to_vec(), b"{not json".to_vec())]);
    xadd(&mut con, &visit("dlqfail-x", "t"));
    let st = wait_status(
        &server,
        "a failed dead-letter copy, the good entry settled",
        Duration::from_secs(20),
        |st| st_int(st, "dead_letter_errors") >= 1 && st_int(st, "entries_acked") >= 1,
    );
    assert_eq!(st_int(&st, "dead_lettered"), 0, "{st:?}");
    // The entry stays in flight, and unwritten: pending in the group (with ACK_MODE=WRITTEN_GROUP the
    // written group stays before it, so the good entry after it counts as well).
    assert_eq!(st_int(&st, "in_flight"), 1, "{st:?}");
    let unwritten = if std::env::var("WB_TEST_ACK_MODE").is_ok_and(|m| m == "WRITTEN_GROUP") {
        2
    } else {
        1
    };
    assert_eq!(
        st_int(&st, "pending"),
        unwritten,
        "the entry must stay pending: {st:?}"
    );
    let _: i64 = q(&mut con, &["DEL", "userdata-stream:dlq"]);
    let st = wait_status(&server, "the copy written", Duration::from_secs(30), |st| {
        st_int(st, "dead_lettered") == 1
    });
    assert_eq!(st_int(&st, "pending"), 0, "{st:?}");
    assert_eq!(st_int(&st, "in_flight"), 0, "{st:?}");
    assert!(dead_letters(&mut con).contains_key(&bad));
    assert_eq!(visits(&emu, "dlqfail"), 1);
}

#[test]
fn an_entry_too_large_for_one_statement_is_dead_lettered_at_claim_time_and_the_rest_flows() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu));
    let mut con = server.connection();
    let now = ts(chrono::Utc::now());
    // 3 MB of titles across records of one user.
    let records: Vec<Value> = (0..30)
        .map(|i| {
            json!({"id": "huge-x", "track_id": format!("t{i}"), "track_title": "T".repeat(100_000),
            "lastplus": now, "action": "v"})
        })
        .collect();
    let huge = json!({"key": "userdata-events:huge-x/visited", "records": records}).to_string();
    let id = xadd(&mut con, &[(b"value".to_vec(), huge.into_bytes())]);
    for i in 0..20 {
        xadd(&mut con, &visit("huge-x", &format!("after{i}")));
    }
    con.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let ok: String = q(&mut con, &["WB.FLUSH", "30000"]);
    assert_eq!(ok, "OK");
    let after = num(&emu.scalar(
        "SELECT COUNT(*) FROM TRACKED WHERE tracked_id = 'huge-x' AND track_id LIKE 'after%'",
    ));
    assert_eq!(after, 20, "the entries after it are written");
    let dlq = dead_letters(&mut con);
    let reason = dlq
        .get(&id)
        .and_then(|f| field(f, "reason").map(|r| String::from_utf8_lossy(r).into_owned()))
        .expect("the large entry is dead-lettered");
    assert!(reason.contains("entry too large"), "{reason}");
    let st = status(&mut con);
    assert_eq!(st_int(&st, "undecodable_too_large"), 1, "{st:?}");
}

#[test]
fn a_backlog_of_large_entries_is_held_in_module_memory_only_up_to_the_byte_bound() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu));
    let mut con = server.connection();
    wait_status(&server, "running", Duration::from_secs(20), |st| {
        st["state"] == "running"
    });
    // Snowflake is slow, so the backlog stays in the stream: 300 entries of 400 KB (120 MB).
    emu.fault(json!({"next": 100000, "slow_ms": 3000}));
    let now = ts(chrono::Utc::now());
    for i in 0..300 {
        let user = format!("big{i}-x");
        let v = json!({"key": format!("userdata-events:{user}/visited"), "records": [{"id": user,
            "track_id": "t", "track_title": "T".repeat(400_000), "lastplus": now, "action": "v"}]});
        xadd(&mut con, &[(b"value".to_vec(), v.to_string().into_bytes())]);
    }
    let mut most_bytes = 0;
    let mut most_entries = 0;
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        let st = status(&mut con);
        most_bytes = most_bytes.max(st_int(&st, "in_flight_bytes"));
        most_entries = most_entries.max(st_int(&st, "in_flight"));
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "MEASURED 300 x 400 KB backlog: at most {most_entries} entries, {} MB held by the module",
        most_bytes >> 20
    );
    assert!(most_bytes > 0);
    assert!(most_bytes <= 76 << 20, "{most_bytes} bytes held");
    assert!(most_entries < 200, "{most_entries} entries held");
    emu.clear_faults();
    con.set_read_timeout(Some(Duration::from_secs(200)))
        .expect("timeout");
    let ok: String = q(&mut con, &["WB.FLUSH", "180000"]);
    assert_eq!(ok, "OK");
    assert_eq!(visits(&emu, "big"), 300);
    assert_eq!(st_int(&status(&mut con), "in_flight_bytes"), 0);
}

#[test]
fn data_in_a_log_line_can_neither_cut_it_nor_forge_another() {
    let server = RedisServer::start(Options::default().env("DRY_RUN", "1").env("LOG_RAW", "1"));
    let mut con = server.connection();
    let id = xadd(
        &mut con,
        &[(
            b"value".to_vec(),
            b"{\"a\":1}\r\n12345:M 01 Jan 2026 00:00:00.000 # FORGED\0tail".to_vec(),
        )],
    );
    server.wait_for("the RAW line", Duration::from_secs(10), || {
        server
            .log()
            .lines()
            .any(|l| l.contains("RAW") && l.contains(id.as_str()))
            .then_some(())
    });
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("RAW") && l.contains(id.as_str()))
        .expect("RAW line");
    assert!(line.contains("FORGED") && line.contains("tail"), "{line}");
    assert!(!log
        .lines()
        .any(|l| l.contains("# FORGED") && !l.contains("RAW")));
}

#[test]
fn an_entry_snowflake_refuses_for_good_is_dead_lettered_without_holding_up_the_rest_and_a_refusal_of_everything_is_not(
) {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu).env("WORKERS", "1"));
    let mut con = server.connection();
    // One user's entries are refused for good (HTTP 400, not a data error), every time.
    emu.fault(
        json!({"next": 1_000_000, "match": "poison-x", "status": 400,
        "message": "request refused"}),
    );
    for i in 0..5 {
        xadd(&mut con, &visit(&format!("before{i}-x"), "t"));
    }
    let poison = xadd(&mut con, &visit("poison-x", "t"));
    for i in 0..10 {
        xadd(&mut con, &visit(&format!("behind{i}-x"), "t"));
    }
    con.set_read_timeout(Some(Duration::from_secs(90)))
        .expect("timeout");
    let ok: String = q(&mut con, &["WB.FLUSH", "60000"]);
    assert_eq!(ok, "OK");
    assert_eq!(
        visits(&emu, "behind"),
        10,
        "the entries behind it are written"
    );
    assert_eq!(visits(&emu, "before"), 5);
    let dlq = dead_letters(&mut con);
    assert!(dlq.contains_key(&poison), "{dlq:?}");
    assert_eq!(dlq.len(), 1);

    // Snowflake now refuses every statement: the entries wait (the triage sees several entries
    // failing alike and blocks; at most the quarantine of a lone entry moves one aside), and once
    // it accepts again every other entry is written.
    emu.replace_faults(json!({"next": 1_000_000, "status": 400, "message": "refused"}));
    let retries = st_int(&status(&mut con), "retries");
    for i in 0..5 {
        xadd(&mut con, &visit(&format!("outage{i}-x"), "t"));
    }
    wait_status(&server, "refusals retried", Duration::from_secs(20), |st| {
        st_int(st, "retries") >= retries + 10
    });
    let st = status(&mut con);
    assert!(st_int(&st, "dead_lettered") <= 2, "{st:?}");
    emu.clear_faults();
    let ok: String = q(&mut con, &["WB.FLUSH", "60000"]);
    assert_eq!(ok, "OK");
    let moved = st_int(&status(&mut con), "dead_lettered") - 1;
    assert!(
        moved <= 1,
        "{moved} entries dead-lettered by a refusal of everything"
    );
    assert_eq!(visits(&emu, "outage") + moved, 5);
}

#[test]
fn module_unload_is_refused_while_entries_are_in_flight_even_when_paused() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu));
    let mut con = server.connection();
    wait_status(&server, "running", Duration::from_secs(20), |st| {
        st["state"] == "running"
    });
    emu.fault(json!({"next": 100, "slow_ms": 4000}));
    for i in 0..10 {
        xadd(&mut con, &visit(&format!("unload{i}-x"), "t"));
    }
    wait_status(
        &server,
        "every entry claimed, some in flight",
        Duration::from_secs(10),
        |st| st_int(st, "in_flight") > 0 && st_int(st, "lag") == 0,
    );
    let _: String = q(&mut con, &["WB.PAUSE"]);
    let e = common::redis_server::q_err(&mut con, &["MODULE", "UNLOAD", "writebehind"]);
    assert!(e.contains("unloading"), "{e}");
    assert!(
        server.log().contains("entries in flight"),
        "the refusal's reason is not logged"
    );
    let pong: String = q(&mut con, &["PING"]);
    assert_eq!(pong, "PONG");
    // Once everything in flight is settled, it unloads.
    emu.clear_faults();
    wait_status(
        &server,
        "nothing in flight",
        Duration::from_secs(30),
        |st| st_int(st, "in_flight") == 0,
    );
    let ok: String = q(&mut con, &["MODULE", "UNLOAD", "writebehind"]);
    assert_eq!(ok, "OK");
    assert_eq!(visits(&emu, "unload"), 10);
}

#[test]
fn entries_committed_counts_only_entries_whose_sql_went_to_snowflake() {
    let server = RedisServer::start(Options::default().env("DRY_RUN", "1"));
    let mut con = server.connection();
    xadd(&mut con, &visit("dry-x", "t"));
    xadd(
        &mut con,
        &[(b"value".to_vec(), b"{\"diag\":\"ping\"}".to_vec())],
    );
    let st = wait_status(&server, "both settled", Duration::from_secs(10), |st| {
        st_int(st, "entries_acked") == 2
    });
    assert_eq!(st_int(&st, "entries_committed"), 0, "{st:?}");
    assert_eq!(st_int(&st, "diagnostics"), 1, "{st:?}");
}

#[test]
fn an_id_regression_arising_at_run_time_is_reported_on_the_next_interval_until_resolved() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu).env("METRICS_INTERVAL_SECONDS", "1"));
    let mut con = server.connection();
    xadd(&mut con, &visit("regress-x", "t"));
    con.set_read_timeout(Some(Duration::from_secs(40)))
        .expect("timeout");
    let ok: String = q(&mut con, &["WB.FLUSH", "30000"]);
    assert_eq!(ok, "OK");
    assert_eq!(status(&mut con)["id_regression"], "");
    // Snowflake now holds an entry far above the stream's newest (as after the stream was
    // recreated, or the clock set back).
    emu.sql(
        "INSERT INTO TRACKED (tracked_id, track_id, visited_count, last_entry_id) VALUES ('later', 'y', 1, '00000099999999999999-00000000000000000000')",
    );
    wait_status(&server, "the regression", Duration::from_secs(15), |st| {
        st["id_regression"].contains("99999999999999-0")
    });
    emu.sql("DELETE FROM TRACKED WHERE tracked_id = 'later'");
    wait_status(
        &server,
        "the regression resolved",
        Duration::from_secs(15),
        |st| st["id_regression"].is_empty(),
    );
}

#[test]
fn wb_status_says_loading_while_the_server_loads_a_large_aof() {
    let emu = Emulator::start();
    let mut server = RedisServer::start(
        wired(&emu)
            .conf("appendonly yes")
            .conf("aof-use-rdb-preamble no"),
    );
    let mut con = server.connection();
    con.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let _: String = q(&mut con, &["DEBUG", "POPULATE", "2000000", "pad", "32"]);
    let _: String = q(&mut con, &["BGREWRITEAOF"]);
    server.wait_for("the AOF rewrite", Duration::from_secs(120), || {
        let info: String = q(&mut con, &["INFO", "persistence"]);
        (info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0"))
            .then_some(())
    });
    drop(con);
    server.stop();

    server.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut seen_loading = false;
    let mut states = Vec::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not finish loading; states seen {states:?}"
        );
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port)) else {
            continue;
        };
        let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        if let Ok(st) = redis::cmd("WB.STATUS").query::<BTreeMap<String, redis::Value>>(&mut c) {
            if let Some(redis::Value::BulkString(s)) = st.get("state") {
                let s = String::from_utf8_lossy(s).to_string();
                seen_loading |= s == "loading";
                if states.last() != Some(&s) {
                    states.push(s);
                }
            }
        }
        if let Ok(reply) = redis::cmd("PING").query::<String>(&mut c) {
            if reply == "PONG" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        seen_loading,
        "WB.STATUS never said loading while the AOF loaded; states seen {states:?}"
    );
    wait_status(
        &server,
        "the writer running after loading",
        Duration::from_secs(30),
        |st| st["state"] == "running",
    );
}

#[test]
fn retries_counts_the_round_trips_the_snowflake_client_repeats_itself() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu));
    let mut con = server.connection();
    con.set_read_timeout(Some(Duration::from_secs(40)))
        .expect("timeout");
    xadd(&mut con, &visit("retried0-x", "t"));
    let ok: String = q(&mut con, &["WB.FLUSH", "30000"]);
    assert_eq!(ok, "OK");
    let before = st_int(&status(&mut con), "retries");
    // Two 503s the client rides out by itself: the batch commits on its first send. Only the batch's
    // requests meet them (a keep-alive in between would take one and count nothing).
    emu.fault(json!({"next": 2, "status": 503, "match": "retried1-x"}));
    xadd(&mut con, &visit("retried1-x", "t"));
    let ok: String = q(&mut con, &["WB.FLUSH", "30000"]);
    assert_eq!(ok, "OK");
    let st = status(&mut con);
    assert_eq!(st_int(&st, "retries") - before, 2, "{st:?}");
    assert_eq!(
        emu.scalar("SELECT visited_count FROM TRACKED WHERE tracked_id = 'retried1-x'")
            .as_deref(),
        Some("1")
    );
}
