//! The shipped files fit together: redis.conf loads the module in a real Redis 8 with the seed's
//! persistence settings, and the Dockerfile copies files that exist to the path redis.conf loads.

mod common;

use std::path::Path;

use common::redis_server::{module_path, q, status, Options, RedisServer};

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn loadmodule_path(conf: &str) -> String {
    conf.lines()
        .find_map(|l| l.trim().strip_prefix("loadmodule "))
        .map(|p| p.trim().to_string())
        .expect("redis.conf has a loadmodule line")
}

#[test]
fn shipped_redis_conf_loads_the_module_with_the_seed_persistence() {
    let conf = repo_file("redis.conf");
    for line in [
        "appendonly yes",
        "appendfilename appendonly.aof",
        "appendfsync everysec",
        "dbfilename dump.rdb",
        "dir /data",
        "save 900 1",
        "save 300 10",
        "save 60 10000",
    ] {
        assert!(
            conf.lines().any(|l| l.trim() == line),
            "redis.conf lacks `{line}`"
        );
    }
    // Run it for real: the same file with the test's port, directory and module path.
    let mut server = RedisServer::start(Options::default().without_module());
    let local: Vec<String> = conf
        .lines()
        .filter(|l| !l.starts_with("dir ") && !l.starts_with("port ") && !l.starts_with("bind "))
        .map(|l| match l.strip_prefix("loadmodule ") {
            Some(_) => format!("loadmodule {}", module_path().display()),
            None => l.to_string(),
        })
        .collect();
    server.opts.conf = local;
    server.stop();
    server.launch();
    let mut con = server.connection();
    let aof: Vec<String> = q(&mut con, &["CONFIG", "GET", "appendonly"]);
    assert_eq!(aof[1], "yes");
    let save: Vec<String> = q(&mut con, &["CONFIG", "GET", "save"]);
    assert_eq!(save[1], "900 1 300 10 60 10000");
    assert_eq!(status(&mut con)["stream"], "userdata-stream");
}

#[test]
fn dockerfile_copies_existing_files_to_the_module_path_redis_conf_loads() {
    let dockerfile = repo_file("Dockerfile");
    let conf_module = loadmodule_path(&repo_file("redis.conf"));
    let mut module_copied_to = None;
    for line in dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("COPY "))
    {
        let parts: Vec<&str> = line.split_whitespace().skip(1).collect();
        let (from_stage, rest): (bool, Vec<&str>) = match parts.first() {
            Some(p) if p.starts_with("--from=") => (true, parts[1..].to_vec()),
            _ => (false, parts),
        };
        let (dest, sources) = rest.split_last().expect("COPY has a destination");
        if from_stage {
            if sources
                .iter()
                .any(|s| s.ends_with("libredis_writebehind.so"))
            {
                module_copied_to = Some(dest.to_string());
            }
            continue;
        }
        for src in sources {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
            assert!(p.exists(), "Dockerfile copies {src}, which does not exist");
        }
    }
    assert_eq!(module_copied_to.as_deref(), Some(conf_module.as_str()));
    assert!(
        dockerfile.contains("FROM redis:8"),
        "runtime stage is not the official Redis 8 image"
    );
    assert!(
        dockerfile.contains("USER redis"),
        "the image must not run as root"
    );
    assert!(
        dockerfile.contains("WB.STATUS"),
        "healthcheck uses WB.STATUS"
    );
    assert!(dockerfile.contains("/usr/local/etc/redis/redis.conf"));
}
