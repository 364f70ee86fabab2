//! Sharded streams on one server (`STREAM_SHARDS` > 1, no cluster): every shard stream is drained
//! into Snowflake, an entry put in the wrong shard is dead-lettered with the stream it belongs to,
//! and an empty server is restored shard by shard, each row into the shard stream it belongs to.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::emulator::Emulator;
use common::redis_server::{q, q_err, status, RedisServer};
use common::visits::visited;
use common::wired;
use serde_json::{json, Value};

const SHARDS: u32 = 4;

fn stream_of(shard: u32) -> String {
    format!("userdata-stream:{{{shard}}}")
}

fn shard_of(id: &str) -> u32 {
    crc32fast::hash(id.as_bytes()) % SHARDS
}

fn flush(con: &mut redis::Connection) {
    con.set_read_timeout(Some(Duration::from_secs(100)))
        .expect("read timeout");
    let reply: String = q(con, &["WB.FLUSH", "90000"]);
    assert_eq!(reply, "OK");
}

/// `tracked_id` -> total visits in TRACKED.
fn visits_by_user(emu: &Emulator) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for r in emu.sql("SELECT tracked_id, visited_count FROM TRACKED") {
        let n = r[1]
            .as_deref()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(-1.0) as i64;
        *out.entry(r[0].clone().unwrap_or_default()).or_default() += n;
    }
    out
}

#[test]
fn every_shard_stream_is_written_and_a_stray_entry_is_dead_lettered_with_its_home() {
    let emu = Emulator::start();
    let server = RedisServer::start(wired(&emu).env("STREAM_SHARDS", &SHARDS.to_string()));
    let mut con = server.connection();
    let users: Vec<String> = (0..24).map(|i| format!("user-{i}")).collect();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (i, user) in users.iter().enumerate() {
        let stream = stream_of(shard_of(user));
        for track in 0..(1 + i % 3) {
            let _: String = q(
                &mut con,
                &[
                    "XADD",
                    &stream,
                    "*",
                    "value",
                    &visited(user, 1, track as u64),
                ],
            );
            *expected.entry(user.clone()).or_default() += 1;
        }
        let email = format!("{user}@example.com");
        let _: String = q(
            &mut con,
            &[
                "XADD",
                &stream_of(shard_of(&email)),
                "*",
                "value",
                &json!({ "user_email": email }).to_string(),
            ],
        );
    }
    let used: BTreeSet<u32> = users.iter().map(|u| shard_of(u)).collect();
    assert_eq!(used.len(), SHARDS as usize, "24 users reach every shard");
    // One entry in a shard its user does not belong to.
    let stray = "stray-user";
    let wrong = (shard_of(stray) + 1) % SHARDS;
    let stray_id: String = q(
        &mut con,
        &[
            "XADD",
            &stream_of(wrong),
            "*",
            "value",
            &visited(stray, 1, 0),
        ],
    );
    flush(&mut con);

    assert_eq!(visits_by_user(&emu), expected);
    let emails = emu.sql("SELECT user_email FROM USER");
    assert_eq!(emails.len(), users.len(), "{emails:?}");
    let dlq: Vec<(String, BTreeMap<String, String>)> = q(
        &mut con,
        &["XRANGE", &format!("{}:dlq", stream_of(wrong)), "-", "+"],
    );
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let fields = &dlq[0].1;
    assert_eq!(fields["source_id"], stray_id);
    assert!(
        fields["reason"].contains(&format!(
            "belongs to shard stream {}",
            stream_of(shard_of(stray))
        )),
        "{fields:?}"
    );
    let st = status(&mut con);
    assert_eq!(st["stream_shards"], "4");
    assert_eq!(st["streams_served"], "4");
    assert_eq!(st["state"], "running", "{st:?}");
    assert_eq!(st["dead_lettered"], "1", "{st:?}");
    assert_eq!(st["undecodable_wrong_shard"], "1", "{st:?}");
    assert_eq!(st["dlq_length"], "1", "{st:?}");
    assert_eq!(st["pending"], "0", "{st:?}");
    for s in 0..SHARDS {
        assert_eq!(st[&format!("shard.{s}.stream")], stream_of(s));
        assert_eq!(st[&format!("shard.{s}.served")], "1");
        assert!(
            st[&format!("shard.{s}.entries_committed")]
                .parse::<i64>()
                .unwrap_or(0)
                > 0
        );
    }
    // WB.WRITE names the shard stream; without it, with shards, it says how.
    let e = q_err(&mut con, &["WB.WRITE", &visited("user-1", 1, 9)]);
    assert!(e.contains("name the shard stream first"), "{e}");
    let e = q_err(
        &mut con,
        &["WB.WRITE", &stream_of(wrong), &visited(stray, 1, 1)],
    );
    assert!(e.contains("nothing was added"), "{e}");
    let id: String = q(
        &mut con,
        &[
            "WB.WRITE",
            &stream_of(shard_of("user-1")),
            &visited("user-1", 1, 9),
            "SYNC",
            "20000",
        ],
    );
    assert!(id.contains('-'), "{id}");
}

#[test]
fn an_empty_sharded_server_is_restored_each_row_into_its_own_shard_stream() {
    let emu = Emulator::start();
    let users: Vec<String> = (0..16).map(|i| format!("r-{i}")).collect();
    {
        let first = RedisServer::start(wired(&emu).env("STREAM_SHARDS", &SHARDS.to_string()));
        let mut con = first.connection();
        for user in &users {
            for track in 0..2 {
                let _: String = q(
                    &mut con,
                    &[
                        "WB.WRITE",
                        &stream_of(shard_of(user)),
                        &visited(user, 1, track as u64),
                    ],
                );
            }
        }
        flush(&mut con);
    }
    let server = RedisServer::start(
        wired(&emu)
            .env("STREAM_SHARDS", &SHARDS.to_string())
            .env("RESTORE_ON_EMPTY", "1"),
    );
    let mut con = server.connection();
    let mut restored: BTreeSet<String> = BTreeSet::new();
    for s in 0..SHARDS {
        let marker = format!("_userdata_stream_restored:{{{s}}}");
        server.wait_for(&format!("marker {marker}"), Duration::from_secs(30), || {
            let v: Option<String> = q(&mut con, &["GET", &marker]);
            v.filter(|m| m.starts_with("done"))
        });
        let entries: Vec<(String, BTreeMap<String, String>)> =
            q(&mut con, &["XRANGE", &stream_of(s), "-", "+"]);
        for (_, fields) in &entries {
            let v: Value = serde_json::from_str(&fields["value"]).expect("restored JSON");
            for r in v["records"].as_array().into_iter().flatten() {
                let id = r["id"].as_str().unwrap_or_default().to_string();
                assert_eq!(shard_of(&id), s, "{id} restored into {}", stream_of(s));
                restored.insert(id);
            }
        }
    }
    assert_eq!(restored, users.iter().cloned().collect::<BTreeSet<_>>());
    // Restored entries are not written back.
    let before = visits_by_user(&emu);
    flush(&mut con);
    assert_eq!(visits_by_user(&emu), before);
    assert!(before.values().all(|n| *n == 2), "{before:?}");
}

/// `MODULE LOADEX <module> CONFIG <name> <value> ...` on `con`.
fn loadex(con: &mut redis::Connection, configs: &[(&str, &str)]) -> redis::RedisResult<String> {
    let mut cmd = redis::cmd("MODULE");
    cmd.arg("LOADEX")
        .arg(common::redis_server::module_path().display().to_string());
    for (name, value) in configs {
        cmd.arg("CONFIG")
            .arg(format!("writebehind.{name}"))
            .arg(*value);
    }
    cmd.query(con)
}

#[test]
fn a_stream_name_with_braces_cannot_head_a_family_and_the_module_says_why() {
    let server = RedisServer::start(common::redis_server::Options::default().without_module());
    let mut con = server.connection();
    let e = loadex(
        &mut con,
        &[("redis-stream", "{user}data"), ("stream-shards", "4")],
    )
    .expect_err("the load is refused")
    .to_string();
    assert!(e.contains("Error loading the extension"), "{e}");
    assert!(
        server
            .log()
            .contains("REDIS_STREAM '{user}data' has braces: with STREAM_SHARDS=4"),
        "{}",
        server.log()
    );
    // The same name with one stream is fine.
    let ok = loadex(&mut con, &[("redis-stream", "{user}data")]).expect("loaded");
    assert_eq!(ok, "OK");
}
