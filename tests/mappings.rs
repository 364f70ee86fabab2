//! Hash mappings: changes to mapped hashes captured inside the command, rgsync's `#` field,
//! acknowledgements and write-through keys — against a real server.

mod common;

use std::time::Duration;

use common::redis_server::{q, Options, RedisServer};

const PERSONS_AND_CARS: &str = "\
mappings:
  - name: persons
    key_prefix: \"person:\"
    table: PERSONS
    key_column: PERSON_ID
    columns: {first_name: FIRST_NAME, last_name: LAST_NAME, age: AGE}
  - name: cars
    key_prefix: \"car:\"
    table: CARS
    key_column: CAR_ID
    columns: {license: LICENSE, color: COLOR}
";

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A server with `PERSONS_AND_CARS` (Snowflake not configured: only the capture runs).
fn server_with(opts: Options) -> (RedisServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mappings.yaml");
    std::fs::write(&path, PERSONS_AND_CARS).expect("write mappings");
    let server = RedisServer::start(opts.config("mappings-file", path.to_str().unwrap()));
    (server, dir)
}

fn bytes(v: &redis::Value) -> Vec<u8> {
    match v {
        redis::Value::BulkString(b) => b.clone(),
        redis::Value::SimpleString(s) => s.clone().into_bytes(),
        other => panic!("not a string: {other:?}"),
    }
}

/// Every entry of a stream, as (id, fields).
fn entries(con: &mut redis::Connection, stream: &[u8]) -> Vec<(String, Fields)> {
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap();
    let redis::Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .map(|e| {
            let redis::Value::Array(parts) = e else {
                panic!("{e:?}")
            };
            let id = String::from_utf8(bytes(&parts[0])).unwrap();
            let redis::Value::Array(fv) = &parts[1] else {
                panic!("{e:?}")
            };
            let fields = fv.chunks(2).map(|p| (bytes(&p[0]), bytes(&p[1]))).collect();
            (id, fields)
        })
        .collect()
}

/// The capture entries of a mapping, as readable text: `key op [ack] field=value...`.
fn captured(con: &mut redis::Connection, mapping: &str) -> Vec<String> {
    entries(con, format!("writebehind:{mapping}").as_bytes())
        .into_iter()
        .map(|(_, fields)| {
            fields
                .iter()
                .map(|(f, v)| match f.as_slice() {
                    b"key" | b"op" => String::from_utf8_lossy(v).into_owned(),
                    _ => format!("{}={}", String::from_utf8_lossy(f), v.escape_ascii()),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn hgetall(con: &mut redis::Connection, key: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = q(con, &["HGETALL", key]);
    v.sort();
    v
}

#[test]
fn every_command_that_changes_a_mapped_hash_is_captured_as_the_hash_it_left() {
    let (server, _dir) = server_with(Options::default());
    let mut con = server.connection();
    let _: i64 = q(
        &mut con,
        &[
            "HSET",
            "person:1",
            "first_name",
            "James",
            "age",
            "42",
            "nick",
            "jb",
        ],
    );
    let _: i64 = q(&mut con, &["HDEL", "person:1", "age"]);
    let _: i64 = q(&mut con, &["HINCRBY", "person:1", "age", "7"]);
    let _: i64 = q(&mut con, &["HSET", "person:2", "first_name", "Ann"]);
    let _: String = q(&mut con, &["RENAME", "person:2", "person:3"]);
    let _: String = q(&mut con, &["SET", "person:3", "now a string"]);
    let _: i64 = q(&mut con, &["DEL", "person:1"]);
    // Not mapped: nothing captured.
    let _: i64 = q(&mut con, &["HSET", "boat:1", "name", "x"]);
    let _: i64 = q(
        &mut con,
        &["HSET", "car:9", "license", "AB-1", "color", "red"],
    );
    // A transaction is one change per key: its final state.
    let _: redis::Value = redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg("car:9")
        .arg("color")
        .arg("blue")
        .cmd("HSET")
        .arg("car:9")
        .arg("color")
        .arg("green")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        captured(&mut con, "persons"),
        [
            "person:1 upsert f:first_name=James f:age=42",
            "person:1 upsert f:first_name=James",
            "person:1 upsert f:first_name=James f:age=7",
            "person:2 upsert f:first_name=Ann",
            "person:2 delete",
            "person:3 upsert f:first_name=Ann",
            "person:3 delete",
            "person:1 delete",
        ]
    );
    assert_eq!(
        captured(&mut con, "cars"),
        [
            "car:9 upsert f:license=AB-1 f:color=red",
            "car:9 upsert f:license=AB-1 f:color=green"
        ]
    );

    // An expiring hash is captured when it goes.
    let _: i64 = q(&mut con, &["HSET", "car:10", "license", "X"]);
    let _: i64 = q(&mut con, &["PEXPIRE", "car:10", "50"]);
    server.wait_for("the expiry captured", Duration::from_secs(10), || {
        captured(&mut con, "cars")
            .last()
            .filter(|c| *c == "car:10 delete")
            .cloned()
    });
}

#[test]
fn the_control_field_works_as_rgsync_documents_it() {
    let (server, _dir) = server_with(Options::default());
    let mut con = server.connection();
    // '+': written to Redis only; acknowledged at once; '#' removed.
    let _: i64 = q(
        &mut con,
        &[
            "HSET",
            "person:007",
            "first_name",
            "James",
            "last_name",
            "Bond",
            "age",
            "42",
            "#",
            "+6ce0c902",
        ],
    );
    assert_eq!(
        hgetall(&mut con, "person:007"),
        [
            ("age".into(), "42".into()),
            ("first_name".into(), "James".into()),
            ("last_name".into(), "Bond".into())
        ]
    );
    let ack = entries(&mut con, b"{person:007}6ce0c902");
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0].1, vec![(b"status".to_vec(), b"done".to_vec())]);
    let ttl: i64 = q(&mut con, &["TTL", "{person:007}6ce0c902"]);
    assert!((3500..=3600).contains(&ttl), "{ttl}");
    // '=' with an id: replicated, the id travels with the change.
    let _: i64 = q(&mut con, &["HSET", "person:007", "age", "43", "#", "=u-2"]);
    // '-': deleted in Redis only.
    let _: i64 = q(&mut con, &["HSET", "person:008", "first_name", "X"]);
    let _: i64 = q(&mut con, &["HSET", "person:008", "#", "-"]);
    let exists: i64 = q(&mut con, &["EXISTS", "person:008"]);
    assert_eq!(exists, 0);
    // '~': deleted in Redis and in the table.
    let _: i64 = q(&mut con, &["HSET", "person:007", "#", "~u-3"]);
    let exists: i64 = q(&mut con, &["EXISTS", "person:007"]);
    assert_eq!(exists, 0);
    assert_eq!(
        captured(&mut con, "persons"),
        [
            "person:007 upsert ack=u-2 f:first_name=James f:last_name=Bond f:age=43",
            "person:008 upsert f:first_name=X",
            "person:007 delete ack=u-3",
        ]
    );
    // An unreadable '#' is removed and the change dead-lettered with the reason and the hash.
    let _: i64 = q(&mut con, &["HSET", "person:9", "age", "1", "#", "?\r\n"]);
    assert_eq!(hgetall(&mut con, "person:9"), [("age".into(), "1".into())]);
    let dead = entries(&mut con, b"writebehind:persons:dlq");
    assert_eq!(dead.len(), 1);
    let reason = dead[0]
        .1
        .iter()
        .find(|(f, _)| f == b"reason")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    assert!(reason.unwrap().contains("must start with"));
    assert_eq!(captured(&mut con, "persons").len(), 3);
    let st = common::redis_server::status(&mut con);
    assert_eq!(
        st.get("mapping.persons.captured").map(String::as_str),
        Some("3"),
        "{st:?}"
    );
    assert_eq!(
        st.get("mapping.persons.refused").map(String::as_str),
        Some("1"),
        "{st:?}"
    );
}

#[test]
fn keys_and_values_are_captured_byte_for_byte() {
    let (server, _dir) = server_with(Options::default());
    let mut con = server.connection();
    let key: &[u8] = b"person:\x00\r\n\xff";
    let value: &[u8] = b"a\x00b\r\nc\xfe";
    let _: i64 = redis::cmd("HSET")
        .arg(key)
        .arg("first_name")
        .arg(value)
        .query(&mut con)
        .unwrap();
    let e = entries(&mut con, b"writebehind:persons");
    assert_eq!(
        e[0].1,
        vec![
            (b"key".to_vec(), key.to_vec()),
            (b"op".to_vec(), b"upsert".to_vec()),
            (b"f:first_name".to_vec(), value.to_vec()),
        ]
    );
}

#[test]
fn a_replica_gets_the_primarys_captures_and_adds_none_of_its_own() {
    let (primary, _d1) = server_with(Options::default());
    let (replica, _d2) = server_with(Options::default());
    let mut pcon = primary.connection();
    let mut rcon = replica.connection();
    let _: String = q(
        &mut rcon,
        &["REPLICAOF", "127.0.0.1", &primary.port.to_string()],
    );
    replica.wait_for("the replica in sync", Duration::from_secs(20), || {
        let info: String = q(&mut rcon, &["INFO", "replication"]);
        info.contains("master_link_status:up").then_some(())
    });
    for i in 0..20 {
        let _: i64 = q(
            &mut pcon,
            &["HSET", &format!("person:{i}"), "age", &i.to_string()],
        );
    }
    let _: i64 = q(&mut pcon, &["HSET", "person:1", "#", "~"]);
    let acked: i64 = q(&mut pcon, &["WAIT", "1", "5000"]);
    assert_eq!(acked, 1);
    assert_eq!(captured(&mut pcon, "persons").len(), 21);
    assert_eq!(
        captured(&mut rcon, "persons"),
        captured(&mut pcon, "persons")
    );
    let exists: i64 = q(&mut rcon, &["EXISTS", "person:1"]);
    assert_eq!(exists, 0);
}

/// Loads the module into `server` with `text` as its mappings file, expects the load refused, and
/// waits for `reason` in the server's log (`{path}` in it stands for the file's path).
fn load_refused(server: &RedisServer, text: &str, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yaml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap();
    let mut con = server.connection();
    let err = redis::cmd("MODULE")
        .arg("LOADEX")
        .arg(common::redis_server::module_path().to_str().unwrap())
        .arg("CONFIG")
        .arg("writebehind.mappings-file")
        .arg(path)
        .query::<redis::Value>(&mut con)
        .expect_err("refused");
    assert!(
        err.to_string().to_lowercase().contains("error loading"),
        "{err}"
    );
    let needle = reason.replace("{path}", path);
    server.wait_for("the reason in the log", Duration::from_secs(5), || {
        server.log().contains(&needle).then_some(())
    });
}

#[test]
fn a_bad_mappings_file_stops_the_module_with_the_file_line_and_reason() {
    let server = RedisServer::start(Options::default().without_module());
    load_refused(
        &server,
        &PERSONS_AND_CARS.replace("table: CARS", "table: CARS; DROP"),
        "{path}:7: mappings[1]: table 'CARS; DROP' is not a valid Snowflake identifier",
    );
}

/// The tables of `PERSONS_AND_CARS`, in the emulator.
fn tables(emu: &common::emulator::Emulator) {
    emu.sql(
        "CREATE TABLE IF NOT EXISTS PERSONS (PERSON_ID NUMBER(38,0) NOT NULL, FIRST_NAME VARCHAR(100), \
         LAST_NAME VARCHAR(100), AGE NUMBER(3,0))",
    );
    emu.sql("CREATE TABLE IF NOT EXISTS CARS (CAR_ID VARCHAR(20) NOT NULL, LICENSE VARCHAR(20), COLOR VARCHAR(20))");
}

fn rows(emu: &common::emulator::Emulator, sql: &str) -> Vec<String> {
    emu.sql(sql)
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| v.unwrap_or_else(|| "NULL".into()))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

fn wait_written(server: &RedisServer, con: &mut redis::Connection, mapping: &str, n: i64) {
    server.wait_for(
        &format!("{n} changes of {mapping} written"),
        Duration::from_secs(30),
        || {
            let st = common::redis_server::status(con);
            let written: i64 = st
                .get(&format!("mapping.{mapping}.written"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let dead: i64 = st
                .get(&format!("mapping.{mapping}.dead_lettered"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            (written + dead >= n).then_some(())
        },
    );
}

#[test]
fn the_rgsync_examples_reach_the_tables_with_acknowledgements_and_write_through() {
    let emu = common::emulator::Emulator::start();
    tables(&emu);
    let (server, _dir) = server_with(common::wired(&emu));
    let mut con = server.connection();
    // Write-behind, as in rgsync's README.
    let _: i64 = q(
        &mut con,
        &[
            "HSET",
            "person:1",
            "first_name",
            "foo",
            "last_name",
            "bar",
            "age",
            "20",
        ],
    );
    let _: i64 = q(
        &mut con,
        &[
            "HSET",
            "person:007",
            "first_name",
            "James",
            "last_name",
            "Bond",
            "age",
            "42",
            "#",
            "=6ce0c902-30c2-4ac9-8342-2f04fb359a94",
        ],
    );
    let ack: redis::Value = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(20_000)
        .arg("STREAMS")
        .arg("{person:007}6ce0c902-30c2-4ac9-8342-2f04fb359a94")
        .arg("0-0")
        .query(&mut con)
        .unwrap();
    assert!(format!("{ack:?}").contains("done"), "{ack:?}");
    wait_written(&server, &mut con, "persons", 2);
    assert_eq!(
        rows(
            &emu,
            "SELECT PERSON_ID, FIRST_NAME, LAST_NAME, AGE FROM PERSONS ORDER BY PERSON_ID"
        ),
        ["1|foo|bar|20", "7|James|Bond|42"]
    );
    // Not replicated; deleted without replicating; deleted everywhere.
    let _: i64 = q(&mut con, &["HSET", "person:1", "age", "99", "#", "+"]);
    let _: i64 = q(&mut con, &["HSET", "person:007", "#", "-"]);
    let _: i64 = q(
        &mut con,
        &["HSET", "car:1", "license", "AB", "color", "red"],
    );
    let _: i64 = q(&mut con, &["DEL", "car:1"]);
    let _: i64 = q(
        &mut con,
        &["HSET", "car:2", "license", "CD", "color", "blue"],
    );
    wait_written(&server, &mut con, "cars", 3);
    assert_eq!(
        rows(
            &emu,
            "SELECT PERSON_ID, FIRST_NAME, LAST_NAME, AGE FROM PERSONS ORDER BY PERSON_ID"
        ),
        ["1|foo|bar|20", "7|James|Bond|42"]
    );
    assert_eq!(
        rows(
            &emu,
            "SELECT CAR_ID, LICENSE, COLOR FROM CARS ORDER BY CAR_ID"
        ),
        ["2|CD|blue"]
    );

    // Write-through: written, then renamed; the acknowledgement says so.
    let _: i64 = q(
        &mut con,
        &[
            "HSET",
            "__{person:1}",
            "first_name",
            "foo",
            "last_name",
            "bar",
            "age",
            "21",
            "#",
            "=wt-1",
        ],
    );
    let ack: redis::Value = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(20_000)
        .arg("STREAMS")
        .arg("{person:1}wt-1")
        .arg("0-0")
        .query(&mut con)
        .unwrap();
    assert!(format!("{ack:?}").contains("done"), "{ack:?}");
    assert_eq!(
        hgetall(&mut con, "person:1"),
        [
            ("age".into(), "21".into()),
            ("first_name".into(), "foo".into()),
            ("last_name".into(), "bar".into())
        ]
    );
    let temp: i64 = q(&mut con, &["EXISTS", "__{person:1}"]);
    assert_eq!(temp, 0);
    assert_eq!(
        rows(&emu, "SELECT AGE FROM PERSONS WHERE PERSON_ID = 1"),
        ["21"]
    );

    // A value the column cannot take fails that change alone: the key is acknowledged 'failed',
    // the write-through key deleted, and the row keeps its last good state.
    let _: i64 = q(
        &mut con,
        &["HSET", "__{person:1}", "age", "1000", "#", "=wt-2"],
    );
    let ack: redis::Value = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(20_000)
        .arg("STREAMS")
        .arg("{person:1}wt-2")
        .arg("0-0")
        .query(&mut con)
        .unwrap();
    let text = format!("{ack:?}");
    assert!(text.contains("failed") && text.contains("AGE"), "{text}");
    let temp: i64 = q(&mut con, &["EXISTS", "__{person:1}"]);
    assert_eq!(temp, 0);
    assert_eq!(
        rows(&emu, "SELECT AGE FROM PERSONS WHERE PERSON_ID = 1"),
        ["21"]
    );
    let dead = entries(&mut con, b"writebehind:persons:dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
}

/// Each `person:<i>` as the table should hold it: `id|first|last|age`, NULL for a missing field.
fn expected_persons(con: &mut redis::Connection, keys: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..keys {
        let h: std::collections::HashMap<String, String> =
            q(con, &["HGETALL", &format!("person:{i}")]);
        if h.is_empty() {
            continue;
        }
        let f = |n: &str| h.get(n).cloned().unwrap_or_else(|| "NULL".into());
        out.push(format!(
            "{i}|{}|{}|{}",
            f("first_name"),
            f("last_name"),
            f("age")
        ));
    }
    out.sort();
    out
}

#[test]
fn after_kill_9_mid_flight_every_row_equals_its_hash() {
    use rand::{Rng, SeedableRng};
    let emu = common::emulator::Emulator::start();
    tables(&emu);
    let (mut server, _dir) = server_with(
        common::wired(&emu)
            .conf("appendonly yes")
            .conf("appendfsync always"),
    );
    const KEYS: usize = 40;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Every MERGE is slow, and some commit while their answer is lost: the writer is always behind,
    // and replays statements that did apply.
    emu.fault(serde_json::json!({"next": 100000, "delay_ms": 40, "match": "PERSONS"}));
    emu.fault(
        serde_json::json!({"next": 3, "status": 503, "after_execute": true, "match": "PERSONS"}),
    );
    let mut behind = 0;
    for round in 0..3 {
        let mut con = server.connection();
        for op in 0..400 {
            let key = format!("person:{}", rng.gen_range(0..KEYS));
            match rng.gen_range(0..10) {
                0 => {
                    let _: i64 = q(&mut con, &["DEL", &key]);
                }
                1 => {
                    let _: i64 = q(&mut con, &["HDEL", &key, "last_name"]);
                }
                2 => {
                    let _: i64 = q(&mut con, &["HSET", &key, "#", "~"]);
                }
                _ => {
                    let age = rng.gen_range(0..120).to_string();
                    let name = format!("n{round}-{op}");
                    let _: i64 = q(
                        &mut con,
                        &[
                            "HSET",
                            &key,
                            "first_name",
                            &name,
                            "last_name",
                            "x",
                            "age",
                            &age,
                        ],
                    );
                }
            }
        }
        // Killed while the writer is busy with the backlog.
        let st = common::redis_server::status(&mut con);
        let n = |k: &str| st.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        behind += n("mapping.persons.captured") - n("mapping.persons.written");
        server.kill9();
        server.launch();
    }
    assert!(behind > 0, "the kills never caught the writer behind");
    emu.clear_faults();
    let mut con = server.connection();
    let flushed: String = q(&mut con, &["WB.FLUSH", "60000"]);
    assert_eq!(flushed, "OK");
    let table = rows(
        &emu,
        "SELECT PERSON_ID, FIRST_NAME, LAST_NAME, AGE FROM PERSONS",
    );
    let mut table = table;
    table.sort();
    assert_eq!(table, expected_persons(&mut con, KEYS));
    let st = common::redis_server::status(&mut con);
    assert_eq!(
        st.get("mapping.persons.capture_failed").map(String::as_str),
        Some("0")
    );
}

#[test]
fn mappings_are_refused_on_a_cluster_enabled_server_rather_than_writing_into_foreign_slots() {
    let server = RedisServer::start(
        Options::default()
            .without_module()
            .conf("cluster-enabled yes")
            .conf("cluster-config-file nodes.conf"),
    );
    load_refused(
        &server,
        PERSONS_AND_CARS,
        "hash mappings do not run on a cluster-enabled server yet",
    );
}

/// A mapping writer that has written as a primary stops when its server becomes a replica (it
/// checks the role inside each read's own lock hold), and writes again once promoted.
#[test]
fn a_mapping_writer_stops_when_its_primary_becomes_a_replica_and_resumes_when_promoted() {
    let emu = common::emulator::Emulator::start();
    tables(&emu);
    let (server, _dir) = server_with(common::wired(&emu));
    let (other, _d2) = server_with(Options::default());
    let mut con = server.connection();
    let state = |con: &mut redis::Connection| {
        common::redis_server::status(con)
            .get("mapping.persons.state")
            .cloned()
            .unwrap_or_default()
    };
    let _: i64 = q(&mut con, &["HSET", "person:1", "age", "20"]);
    wait_written(&server, &mut con, "persons", 1);
    let _: String = q(
        &mut con,
        &["REPLICAOF", "127.0.0.1", &other.port.to_string()],
    );
    server.wait_for(
        "the writer to see the replica",
        Duration::from_secs(20),
        || (state(&mut con) == "replica").then_some(()),
    );
    let _: String = q(&mut con, &["REPLICAOF", "NO", "ONE"]);
    server.wait_for("the writer to run again", Duration::from_secs(20), || {
        let s = state(&mut con);
        (s == "idle" || s == "running").then_some(())
    });
    let before: i64 = common::redis_server::status(&mut con)
        .get("mapping.persons.written")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _: i64 = q(&mut con, &["HSET", "person:2", "age", "30"]);
    wait_written(&server, &mut con, "persons", before + 1);
}
