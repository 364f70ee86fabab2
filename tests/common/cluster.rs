//! A real Redis Cluster (or Valkey cluster) on loopback addresses (127.0.0.1 unless told) for tests: `--cluster-enabled` servers with
//! the module, joined by the server's own `redis-cli --cluster create`.
//!
//! Each node also listens on its port + 10000 (the cluster bus); ports are picked so both stay out
//! of the ephemeral range (see [`cluster_ports`]). Readiness is polled with deadlines: every node says `cluster_state:ok` and knows every other.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::redis_server::{q, redis_server_bin, Options, RedisServer};

pub struct Cluster {
    pub nodes: Vec<RedisServer>,
}

/// The command-line client next to the server binary (`redis-cli` or `valkey-cli`).
pub fn cli_bin() -> PathBuf {
    let server = redis_server_bin();
    let name = server
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("redis-server")
        .replace("-server", "-cli");
    server.with_file_name(name)
}

/// `n` ports, each free together with its cluster bus port (+10000). All are taken from 20000–22767,
/// so the bus ports stay below 32768, where Linux hands out ephemeral ports: no client connection
/// made while the nodes start can take a node's port first.
fn cluster_ports(n: usize) -> Vec<u16> {
    const FIRST: u16 = 20_000;
    const LAST: u16 = 22_767;
    // Clusters of one test process take turns from one cursor, so two tests starting clusters at
    // once never pick the same free port before either binds it.
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let bindable = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let mut cursor = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let mut next = cursor.unwrap_or_else(|| {
        let seed = u64::from(std::process::id()).wrapping_mul(2_654_435_761);
        FIRST + (seed % u64::from(LAST - FIRST)) as u16
    });
    let mut ports = Vec::new();
    while ports.len() < n {
        next = if next >= LAST { FIRST } else { next + 1 };
        if bindable(next) && bindable(next + 10_000) {
            ports.push(next);
        }
    }
    *cursor = Some(next);
    ports
}

impl Cluster {
    /// Starts `primaries` primaries with `replicas` replicas each and forms the cluster.
    pub fn start(primaries: usize, replicas: usize, opts: Options) -> Cluster {
        let hosts = vec!["127.0.0.1".to_string(); primaries * (1 + replicas)];
        Cluster::start_at(&hosts, replicas, opts)
    }

    /// [`Cluster::start`] with one node on each of `hosts` (loopback addresses), `replicas` per
    /// primary.
    pub fn start_at(hosts: &[String], replicas: usize, opts: Options) -> Cluster {
        let nodes: Vec<RedisServer> = cluster_ports(hosts.len())
            .into_iter()
            .zip(hosts)
            .map(|(port, host)| {
                RedisServer::start(
                    opts.clone()
                        .port(port)
                        .host(host)
                        .conf("cluster-enabled yes")
                        .conf("cluster-config-file nodes.conf")
                        .conf("cluster-node-timeout 2000")
                        .conf("cluster-replica-validity-factor 0"),
                )
            })
            .collect();
        let cluster = Cluster { nodes };
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("{}:{}", n.host(), n.port)),
        );
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new(cli_bin())
            .args(&args)
            .output()
            .expect("cli runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("[OK] All 16384 slots covered"),
            "cluster create failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_formed(Duration::from_secs(30));
        cluster.wait_replicas_in_sync(Duration::from_secs(60));
        cluster
    }

    /// Waits until every running replica's link to its primary is up (its first sync done), so a
    /// write can be replicated (`WAIT`) before a primary is killed.
    pub fn wait_replicas_in_sync(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let lagging: Vec<u16> = self
                .running()
                .filter(|n| {
                    let info: String = q(&mut n.connection(), &["INFO", "replication"]);
                    info.contains("master_link_status:") && !info.contains("master_link_status:up")
                })
                .map(|n| n.port)
                .collect();
            if lagging.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replicas on ports {lagging:?} did not finish their first sync in time"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running node reports `cluster_state:ok` and the same number of known nodes.
    pub fn wait_formed(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let states: Vec<String> = self
                .running()
                .map(|n| {
                    let mut c = n.connection();
                    q::<String>(&mut c, &["CLUSTER", "INFO"])
                })
                .collect();
            let ok = states.iter().all(|s| s.contains("cluster_state:ok"));
            let known: Vec<&str> = states
                .iter()
                .filter_map(|s| s.lines().find(|l| l.starts_with("cluster_known_nodes:")))
                .collect();
            if ok && known.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not form in time:\n{}",
                states.join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills node `i` with SIGKILL and waits until a replica serves its slots and the cluster is ok.
    pub fn kill_primary(&mut self, i: usize, within: Duration) {
        let port = self.nodes[i].port as i64;
        self.nodes[i].kill9();
        let deadline = Instant::now() + within;
        while self.serves_any(port) {
            assert!(
                Instant::now() < deadline,
                "no replica took over from port {port} in time"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_formed(deadline.saturating_duration_since(Instant::now()));
    }

    /// Whether a running node still sees the node on `port` serving slots.
    fn serves_any(&self, port: i64) -> bool {
        self.running().any(|n| {
            let slots: redis::Value = q(&mut n.connection(), &["CLUSTER", "SLOTS"]);
            let redis::Value::Array(ranges) = slots else {
                return false;
            };
            ranges.iter().any(|r| match r {
                redis::Value::Array(parts) => matches!(
                    parts.get(2),
                    Some(redis::Value::Array(p)) if p.get(1) == Some(&redis::Value::Int(port))
                ),
                _ => false,
            })
        })
    }

    /// The nodes still running.
    pub fn running(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.pid().is_some())
    }

    /// The slot of `key` (asked of a node, so it is the server's own hashing).
    pub fn slot_of(&self, key: &str) -> u16 {
        let node = self.running().next().expect("a running node");
        q(&mut node.connection(), &["CLUSTER", "KEYSLOT", key])
    }

    /// Index of the node serving `slot` as a primary, as the running nodes see it.
    pub fn owner_of(&self, slot: u16) -> usize {
        let node = self.running().next().expect("a running node");
        let slots: redis::Value = q(&mut node.connection(), &["CLUSTER", "SLOTS"]);
        let redis::Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS: {slots:?}")
        };
        for range in ranges {
            let redis::Value::Array(parts) = range else {
                continue;
            };
            let int = |v: &redis::Value| match v {
                redis::Value::Int(n) => *n,
                _ => -1,
            };
            if parts.len() < 3 || !(int(&parts[0])..=int(&parts[1])).contains(&(slot as i64)) {
                continue;
            }
            let redis::Value::Array(primary) = &parts[2] else {
                continue;
            };
            let port = primary.get(1).map(int).unwrap_or(-1);
            return self
                .nodes
                .iter()
                .position(|n| n.port as i64 == port)
                .unwrap_or_else(|| panic!("slot {slot} served by unknown port {port}"));
        }
        panic!("slot {slot} is not served")
    }

    /// A connection to the node serving `key`.
    pub fn connection_for(&self, key: &str) -> redis::Connection {
        self.nodes[self.owner_of(self.slot_of(key))].connection()
    }

    /// Indexes of the running nodes that are primaries.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].pid().is_some() && {
                    let info: String = q(&mut self.nodes[i].connection(), &["INFO", "replication"]);
                    info.contains("role:master")
                }
            })
            .collect()
    }

    /// The cluster node ID of node `i`.
    pub fn node_id(&self, i: usize) -> String {
        q(&mut self.nodes[i].connection(), &["CLUSTER", "MYID"])
    }

    /// Moves `slot` from node `from` to node `to` the way a resharding does: the slot is marked
    /// importing and migrating, its keys are moved with `MIGRATE` (a few per call), then every
    /// node is told the new owner. `between` runs after each `MIGRATE` call.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize, mut between: impl FnMut()) {
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let slot = slot.to_string();
        let mut src = self.nodes[from].connection();
        let mut dst = self.nodes[to].connection();
        let _: String = q(
            &mut dst,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id],
        );
        let _: String = q(
            &mut src,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id],
        );
        let port = self.nodes[to].port.to_string();
        loop {
            let keys: Vec<String> = q(&mut src, &["CLUSTER", "GETKEYSINSLOT", &slot, "2"]);
            if keys.is_empty() {
                break;
            }
            let mut args = vec![
                "MIGRATE",
                self.nodes[to].host(),
                &port,
                "",
                "0",
                "10000",
                "KEYS",
            ];
            args.extend(keys.iter().map(String::as_str));
            let _: String = q(&mut src, &args);
            between();
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].pid().is_some() {
                let _: String = q(
                    &mut self.nodes[i].connection(),
                    &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id],
                );
            }
        }
        self.wait_formed(Duration::from_secs(30));
    }

    /// Moves `slot` from node `from` to node `to` with Valkey's atomic slot migration (`CLUSTER
    /// MIGRATESLOTS`): the source copies the slot to the target and hands it over; waits until
    /// every node sees the new owner.
    pub fn migrate_slot_atomically(&self, slot: u16, from: usize, to: usize) {
        let (range, to_id) = (slot.to_string(), self.node_id(to));
        let _: String = q(
            &mut self.nodes[from].connection(),
            &[
                "CLUSTER",
                "MIGRATESLOTS",
                "SLOTSRANGE",
                &range,
                &range,
                "NODE",
                &to_id,
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.owner_of(slot) != to {
            assert!(
                Instant::now() < deadline,
                "slot {slot} did not reach port {} in time",
                self.nodes[to].port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_formed(Duration::from_secs(30));
    }

    /// Every key on every running node lies in a slot that node serves, as a primary or as a
    /// replica of the primary serving it. Returns how many keys were looked at.
    pub fn assert_keys_where_served(&self) -> usize {
        let mut seen = 0;
        for i in 0..self.nodes.len() {
            if self.nodes[i].pid().is_none() {
                continue;
            }
            let mut c = self.nodes[i].connection();
            let info: String = q(&mut c, &["INFO", "replication"]);
            let primary_port = info
                .lines()
                .find_map(|l| l.strip_prefix("master_port:"))
                .and_then(|p| p.trim().parse::<u16>().ok());
            let serving = match primary_port {
                Some(port) => self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .expect("a known primary"),
                None => i,
            };
            let keys: Vec<String> = q(&mut c, &["KEYS", "*"]);
            for key in keys {
                seen += 1;
                let owner = self.owner_of(self.slot_of(&key));
                assert_eq!(
                    owner,
                    serving,
                    "node on port {} holds {key} (slot {}) served by the node on port {}",
                    self.nodes[i].port,
                    self.slot_of(&key),
                    self.nodes[owner].port
                );
            }
        }
        seen
    }

    /// `redis-cli --cluster check` against a running node: its output, and whether it found no problem.
    pub fn check(&self) -> (String, bool) {
        let node = self.running().next().expect("a running node");
        let out = Command::new(cli_bin())
            .args([
                "--cluster",
                "check",
                &format!("{}:{}", node.host(), node.port),
            ])
            .output()
            .expect("cli runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let clean = out.status.success()
            && text.contains("[OK] All 16384 slots covered")
            && !text.contains("[ERR]")
            && !text.contains("[WARNING]");
        (text, clean)
    }
}
