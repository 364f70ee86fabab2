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
use common::redis_server::{q, status, Options, RedisServer};
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
