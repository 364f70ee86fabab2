//! The module on a real cluster: 3 primaries (and 3 replicas) on loopback addresses, with sharded
//! streams.
//!
//! Each primary drains the shard streams whose slots it serves and writes no key anywhere else:
//! through writes spread over every shard, a primary killed mid-drain, a slot moved while its
//! shard stream drains, and every node coming back at once under a new address (the Kubernetes
//! example's `rejoin.sh`). Snowflake ends with every entry applied exactly once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{cli_bin, Cluster};
use common::emulator::Emulator;
use common::redis_server::{q, q_err, status, Options, RedisServer};
use common::visits::{add_stream_visits, assert_in_snowflake, visited};
use common::wired;
use serde_json::json;

const SHARDS: u32 = 4;

fn stream_of(shard: u32) -> String {
    format!("userdata-stream:{{{shard}}}")
}

/// The shard of a user, as an application computes it: zlib's CRC-32 of the id, modulo N.
fn shard_of(user: &str) -> u32 {
    crc32fast::hash(user.as_bytes()) % SHARDS
}

/// Adds `per_user` entries for each of `users` users (numbered from `first`) to their shard
/// streams, through the node serving each; waits until a replica has each write.
fn spread(cluster: &Cluster, first: usize, users: usize, per_user: usize) -> usize {
    let mut by_stream: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for u in first..first + users {
        let user = format!("u{u}-x");
        for seq in 0..per_user {
            by_stream
                .entry(stream_of(shard_of(&user)))
                .or_default()
                .push(visited(&user, 1 + seq % 3, seq as u64));
        }
    }
    let mut added = 0;
    for (stream, payloads) in by_stream {
        let mut c = cluster.connection_for(&stream);
        let mut pipe = redis::pipe();
        for p in &payloads {
            pipe.cmd("XADD").arg(&stream).arg("*").arg("value").arg(p);
        }
        let ids: Vec<String> = pipe.query(&mut c).expect("XADDs");
        added += ids.len();
    }
    added
}

fn wait_replicated(cluster: &Cluster) {
    for i in cluster.primaries() {
        let mut c = cluster.nodes[i].connection();
        let replicas: i64 = {
            let info: String = q(&mut c, &["INFO", "replication"]);
            info.lines()
                .find_map(|l| l.strip_prefix("connected_slaves:"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        if replicas > 0 {
            let acked: i64 = q(&mut c, &["WAIT", "1", "20000"]);
            assert_eq!(
                acked, 1,
                "a replica of port {} has the writes",
                cluster.nodes[i].port
            );
        }
    }
}

/// `WB.FLUSH` on every primary: each flushes the shard streams it serves.
fn flush_all(cluster: &Cluster) {
    for i in cluster.primaries() {
        let mut c = cluster.nodes[i].connection();
        c.set_read_timeout(Some(Duration::from_secs(200)))
            .expect("read timeout");
        let reply: String = q(&mut c, &["WB.FLUSH", "180000"]);
        assert_eq!(reply, "OK", "WB.FLUSH on port {}", cluster.nodes[i].port);
    }
}

/// `tracked_id|track_id` -> visits, from every entry of every shard stream now.
fn expected_visits(cluster: &Cluster) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for shard in 0..SHARDS {
        let stream = stream_of(shard);
        add_stream_visits(&mut cluster.connection_for(&stream), &stream, &mut out);
    }
    out
}

/// Every entry of every shard stream is in Snowflake exactly once, nothing is pending anywhere.
fn assert_exactly_once(cluster: &Cluster, emu: &Emulator) -> i64 {
    let total = assert_in_snowflake(&expected_visits(cluster), emu);
    for i in cluster.primaries() {
        let st = status(&mut cluster.nodes[i].connection());
        assert_eq!(st["pending"], "0", "port {}: {st:?}", cluster.nodes[i].port);
        assert_eq!(
            st["dlq_length"], "0",
            "port {}: {st:?}",
            cluster.nodes[i].port
        );
        assert_eq!(
            st["lost_deleted"], "0",
            "port {}: {st:?}",
            cluster.nodes[i].port
        );
    }
    total
}

fn int(st: &BTreeMap<String, String>, k: &str) -> i64 {
    st.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Polls node `i`'s `WB.STATUS` until `pred` holds.
fn wait_status(
    cluster: &Cluster,
    i: usize,
    what: &str,
    within: Duration,
    pred: impl Fn(&BTreeMap<String, String>) -> bool,
) {
    let deadline = Instant::now() + within;
    let mut c = cluster.nodes[i].connection();
    loop {
        let st = status(&mut c);
        if pred(&st) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not in time: {st:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Slow statements, some applied without their answer arriving: batches are in flight, and some
/// are in Snowflake but not acknowledged, when a node dies or a slot moves.
fn slow_and_lossy(emu: &Emulator) {
    let mut faults = Vec::new();
    for _ in 0..40 {
        faults.push(json!({"slow_ms": 250}));
        faults.push(json!({"slow_ms": 250, "after_execute": true, "status": 503}));
    }
    emu.fault(json!({ "faults": faults }));
}

fn sharded(emu: &Emulator) -> Options {
    wired(emu)
        .env("STREAM_SHARDS", &SHARDS.to_string())
        .env("BATCH_MAX_ENTRIES", "20")
}

#[test]
fn sharded_streams_are_drained_by_their_primaries_exactly_once_through_a_killed_primary() {
    let emu = Emulator::start();
    // The nodes start with the module and its shard streams configured before the cluster is
    // formed: `--cluster create` refuses a node holding any key, so forming it at all shows the
    // module created nothing while the node served no slot.
    let mut cluster = Cluster::start(3, 1, sharded(&emu));
    let (report, clean) = cluster.check();
    assert!(clean, "{report}");

    // Each primary drains exactly the shard streams whose slots it serves.
    let owners: Vec<usize> = (0..SHARDS)
        .map(|s| cluster.owner_of(cluster.slot_of(&stream_of(s))))
        .collect();
    let distinct: std::collections::BTreeSet<usize> = owners.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        3,
        "4 shard streams over 3 primaries: {owners:?}"
    );
    for i in cluster.primaries() {
        let st = status(&mut cluster.nodes[i].connection());
        let mine = owners.iter().filter(|o| **o == i).count();
        assert_eq!(int(&st, "streams_served"), mine as i64, "{st:?}");
        assert_eq!(int(&st, "stream_shards"), SHARDS as i64);
        for (s, owner) in owners.iter().enumerate() {
            assert_eq!(st[&format!("shard.{s}.stream")], stream_of(s as u32));
            assert_eq!(
                st[&format!("shard.{s}.served")],
                if *owner == i { "1" } else { "0" },
                "{st:?}"
            );
            let state = &st[&format!("shard.{s}.state")];
            assert_eq!(state == "not-served", *owner != i, "shard {s}: {state}");
        }
    }

    // WB.WRITE names its shard stream as its key: the cluster routes it, and the module refuses
    // an entry whose user belongs to another shard.
    let user = "writer-1";
    let home = stream_of(shard_of(user));
    let owner = cluster.owner_of(cluster.slot_of(&home));
    let elsewhere = *cluster
        .primaries()
        .iter()
        .find(|&&i| i != owner)
        .expect("another primary");
    let moved = q_err(
        &mut cluster.nodes[elsewhere].connection(),
        &["WB.WRITE", &home, &visited(user, 1, 0)],
    );
    assert!(moved.to_lowercase().contains("moved"), "{moved}");
    let id: String = q(
        &mut cluster.connection_for(&home),
        &["WB.WRITE", &home, &visited(user, 2, 0)],
    );
    assert!(id.contains('-'), "{id}");
    let other = stream_of((shard_of(user) + 1) % SHARDS);
    let refused = q_err(
        &mut cluster.connection_for(&other),
        &["WB.WRITE", &other, &visited(user, 1, 0)],
    );
    assert!(refused.contains(&format!("belongs to {home}")), "{refused}");
    let keyless = q_err(
        &mut cluster.connection_for(&home),
        &["WB.WRITE", &visited(user, 1, 0)],
    );
    assert!(keyless.contains("name the shard stream first"), "{keyless}");

    let mut added = spread(&cluster, 0, 40, 5);
    flush_all(&cluster);
    // Then the writer is slowed down and a primary dies with batches in flight.
    slow_and_lossy(&emu);
    added += spread(&cluster, 40, 40, 5);
    let victim = owners[0];
    wait_status(
        &cluster,
        victim,
        "batches in flight on the primary to kill",
        Duration::from_secs(60),
        |st| int(st, "in_flight") > 0 && int(st, "statements") > 0,
    );
    wait_replicated(&cluster);
    cluster.kill_primary(victim, Duration::from_secs(60));
    let new_owner = cluster.owner_of(cluster.slot_of(&stream_of(0)));
    assert_ne!(new_owner, victim);
    flush_all(&cluster);
    emu.clear_faults();
    let total = assert_exactly_once(&cluster, &emu);
    let st = status(&mut cluster.nodes[new_owner].connection());
    assert_eq!(st["shard.0.served"], "1", "{st:?}");

    let keys = cluster.assert_keys_where_served();
    let (report, clean) = cluster.check();
    assert!(clean, "{report}");
    eprintln!(
        "MEASURED cluster: {added} entries ({total} visits) over {SHARDS} shard streams on 3 primaries, \
         the primary of shard 0 killed mid-drain; every visit applied once; {keys} keys, each on a node serving its slot"
    );
}

/// How a slot is moved between primaries.
#[derive(Debug, Clone, Copy)]
enum Move {
    /// `CLUSTER SETSLOT` + `MIGRATE`, as `redis-cli --cluster reshard` does.
    Migrate,
    /// Valkey 9's atomic slot migration (`CLUSTER MIGRATESLOTS`).
    Atomic,
}

#[test]
fn a_slot_moved_while_its_shard_stream_drains_is_finished_by_its_new_owner_exactly_once() {
    a_slot_moved_mid_drain(Move::Migrate);
}

#[test]
fn a_slot_moved_by_atomic_slot_migration_mid_drain_is_finished_by_its_new_owner_exactly_once() {
    let info: redis::Value = q(
        &mut RedisServer::start(Options::default()).connection(),
        &["COMMAND", "INFO", "cluster|migrateslots"],
    );
    if matches!(&info, redis::Value::Array(a) if a.iter().all(|c| *c == redis::Value::Nil)) {
        // Redis has no atomic slot migration; Valkey has had it since 9.0.
        let server = common::redis_server::redis_server_bin();
        assert!(
            !server.to_string_lossy().contains("valkey"),
            "{}: no CLUSTER MIGRATESLOTS",
            server.display()
        );
        return;
    }
    a_slot_moved_mid_drain(Move::Atomic);
}

/// Shard stream 3's slot moves from its primary to another while batches of it are in flight
/// (statements slowed, some answers lost); the new owner finishes it, each entry applied once.
fn a_slot_moved_mid_drain(how: Move) {
    let emu = Emulator::start();
    let cluster = Cluster::start(3, 0, sharded(&emu));
    let mut added = spread(&cluster, 0, 40, 3);
    flush_all(&cluster);
    slow_and_lossy(&emu);
    added += spread(&cluster, 40, 40, 4);

    let moving = stream_of(3);
    let slot = cluster.slot_of(&moving);
    let from = cluster.owner_of(slot);
    let to = *cluster
        .primaries()
        .iter()
        .find(|&&i| i != from)
        .expect("another primary");
    wait_status(
        &cluster,
        from,
        "batches of the moving stream in flight",
        Duration::from_secs(60),
        |st| int(st, "shard.3.in_flight") > 0,
    );
    match how {
        Move::Migrate => cluster.move_slot(slot, from, to, || {}),
        Move::Atomic => cluster.migrate_slot_atomically(slot, from, to),
    }
    assert_eq!(cluster.owner_of(slot), to);
    // The old owner stops draining it; the new owner takes over its pending entries.
    wait_status(
        &cluster,
        from,
        "the old owner lets the stream go",
        Duration::from_secs(30),
        |st| st["shard.3.served"] == "0" && st["shard.3.state"] == "not-served",
    );
    // A stream leaving with its slot is not a loss.
    let log = cluster.nodes[from].log();
    assert!(
        log.contains(&format!("stream {moving} left this node with its slot")),
        "{log}"
    );
    assert!(!log.contains("LOST"), "{log}");
    // New entries go to the new owner.
    added += spread(&cluster, 80, 20, 2);
    flush_all(&cluster);
    emu.clear_faults();
    let total = assert_exactly_once(&cluster, &emu);
    let st = status(&mut cluster.nodes[to].connection());
    assert_eq!(st["shard.3.served"], "1", "{st:?}");
    assert!(int(&st, "shard.3.entries_committed") > 0, "{st:?}");

    let keys = cluster.assert_keys_where_served();
    let (report, clean) = cluster.check();
    assert!(clean, "{report}");
    eprintln!(
        "MEASURED slot move ({how:?}): {added} entries ({total} visits); {moving} moved from port {} to port {} mid-drain; \
         every visit applied once; {keys} keys, each on a node serving its slot",
        cluster.nodes[from].port, cluster.nodes[to].port
    );
}

#[test]
fn the_module_loads_on_every_node_of_a_cluster_that_survives_a_killed_primary() {
    let mut cluster = Cluster::start(3, 1, Options::default());
    let (report, clean) = cluster.check();
    assert!(clean, "{report}");
    for node in cluster.running() {
        let modules: redis::Value = q(&mut node.connection(), &["MODULE", "LIST"]);
        assert!(
            format!("{modules:?}").contains("writebehind"),
            "{modules:?}"
        );
    }
    // Keys spread over the three primaries.
    let owners: std::collections::BTreeSet<usize> = (0..30)
        .map(|i| {
            let key = format!("k{i}");
            let mut c = cluster.connection_for(&key);
            let _: String = q(&mut c, &["SET", &key, "v"]);
            // Replicated before the primary is killed below.
            let acked: i64 = q(&mut c, &["WAIT", "1", "20000"]);
            assert_eq!(acked, 1);
            cluster.owner_of(cluster.slot_of(&key))
        })
        .collect();
    assert_eq!(owners.len(), 3, "{owners:?}");

    let victim = cluster.owner_of(cluster.slot_of("k0"));
    // Its replica takes over: every slot is served again and the key is still there.
    cluster.kill_primary(victim, Duration::from_secs(30));
    let new_owner = cluster.owner_of(cluster.slot_of("k0"));
    assert_ne!(new_owner, victim);
    let v: String = q(&mut cluster.connection_for("k0"), &["GET", "k0"]);
    assert_eq!(v, "v");
    assert_eq!(cluster.primaries().len(), 3);
}

/// Starts the Kubernetes example's `rejoin.sh` beside a node, as each pod of the example does as it
/// starts: every node of `cluster` is a peer, at its address now (itself included: the script
/// skips it).
fn rejoin_beside(node: &RedisServer, cluster: &Cluster) -> Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/cluster/rejoin.sh");
    Command::new("sh")
        .arg(script)
        .arg(node.host())
        .arg(node.port.to_string())
        .arg(node.dir.path().join("nodes.conf"))
        .args(
            cluster
                .nodes
                .iter()
                .map(|n| format!("{}:{}", n.host(), n.port)),
        )
        .env("REDIS_CLI", cli_bin())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh runs")
}

/// Waits for a `rejoin.sh` to end, and holds it to ending well.
fn wait_helper(mut helper: Child, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(exit) = helper.try_wait().expect("the helper's status") {
            assert!(exit.success(), "rejoin.sh: {exit}");
            return;
        }
        if Instant::now() >= deadline {
            let _ = helper.kill();
            panic!("rejoin.sh did not end in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_cluster_whose_every_node_comes_back_under_a_new_address_forms_again_and_writes_each_entry_once(
) {
    let emu = Emulator::start();
    let addresses =
        |net: u8| -> Vec<String> { (1..=6).map(|i| format!("127.77.{net}.{i}")).collect() };
    let mut cluster = Cluster::start_at(&addresses(0), 1, sharded(&emu).conf("appendonly yes"));
    // A fresh node is left alone: it must stay empty for `redis-cli --cluster create`.
    let fresh = RedisServer::start(
        Options::default()
            .host("127.77.2.1")
            .conf("cluster-enabled yes")
            .conf("cluster-config-file nodes.conf"),
    );
    wait_helper(rejoin_beside(&fresh, &cluster), Duration::from_secs(30));
    let info: String = q(&mut fresh.connection(), &["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_known_nodes:1"), "{info}");
    drop(fresh);

    let first = spread(&cluster, 0, 40, 3);
    wait_replicated(&cluster);
    flush_all(&cluster);
    // More entries, still in their streams (the writers paused) when every node stops.
    for i in cluster.primaries() {
        let _: String = q(&mut cluster.nodes[i].connection(), &["WB.PAUSE"]);
    }
    let second = spread(&cluster, 40, 40, 3);
    wait_replicated(&cluster);
    for node in &mut cluster.nodes {
        node.stop();
    }

    // Every node comes back at once, each under a new address, with its nodes.conf and data.
    let new = addresses(1);
    let mut helpers = Vec::new();
    for (i, host) in new.iter().enumerate() {
        cluster.nodes[i].opts.host = Some(host.clone());
    }
    for i in 0..cluster.nodes.len() {
        helpers.push(rejoin_beside(&cluster.nodes[i], &cluster));
        cluster.nodes[i].launch();
    }
    for helper in helpers {
        wait_helper(helper, Duration::from_secs(60));
    }
    cluster.wait_formed(Duration::from_secs(60));
    cluster.wait_replicas_in_sync(Duration::from_secs(60));
    for node in cluster.running() {
        let nodes: String = q(&mut node.connection(), &["CLUSTER", "NODES"]);
        assert!(
            !nodes.contains("127.77.0.") && nodes.lines().count() == 6,
            "{}: {nodes}",
            node.host()
        );
    }
    assert_eq!(cluster.primaries().len(), 3);
    let (report, clean) = cluster.check();
    assert!(clean, "{report}");

    flush_all(&cluster);
    let visits = assert_exactly_once(&cluster, &emu);
    let keys = cluster.assert_keys_where_served();
    eprintln!(
        "MEASURED every node back under a new address: {first} + {second} entries, {visits} visits applied once, {keys} keys where served"
    );
}
