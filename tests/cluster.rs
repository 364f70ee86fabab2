//! The module on a real cluster: 3 primaries and 3 replicas on 127.0.0.1.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::redis_server::{q, Options};

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
