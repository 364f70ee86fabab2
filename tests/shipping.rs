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
        "a runtime stage is the official Redis 8 image"
    );
    assert!(
        dockerfile.contains("FROM valkey/valkey:9"),
        "a runtime stage is the official Valkey 9 image"
    );
    assert!(
        dockerfile.contains("USER redis") && dockerfile.contains("USER valkey"),
        "the images must not run as root"
    );
    assert!(
        dockerfile.contains("ARG SERVER=redis") && dockerfile.contains("FROM runtime-${SERVER}"),
        "the server is picked with --build-arg SERVER, Redis by default"
    );
    let last_user = dockerfile
        .lines()
        .rfind(|l| l.trim_start().starts_with("USER "));
    assert_ne!(
        last_user.map(str::trim),
        Some("USER root"),
        "the image ends as root"
    );
    assert!(
        dockerfile.contains("WB.STATUS"),
        "healthcheck uses WB.STATUS"
    );
    assert!(dockerfile.contains("/usr/local/etc/redis/redis.conf"));
}

/// The server build scripts fetch a pinned tarball and refuse one whose checksum differs, saying what
/// was fetched from where and what to do, and leave nothing half-built in the cache.
#[test]
fn server_builds_refuse_a_tarball_whose_checksum_differs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mirror = tempfile::tempdir().expect("mirror dir");
    let cache = tempfile::tempdir().expect("cache dir");
    for (_, pool) in [
        (
            "scripts/redis8",
            "pool/main/r/redis/redis_8.0.6.orig.tar.gz",
        ),
        (
            "scripts/valkey9",
            "pool/main/v/valkey/valkey_9.1.2.orig.tar.gz",
        ),
    ] {
        let file = mirror.path().join(pool);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"not the release").unwrap();
    }
    // The server binds port 0 itself and says which port it got, so no other process can take the
    // port between choosing it and listening on it.
    let mut http = std::process::Command::new("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
        .current_dir(mirror.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let stdout = http.stdout.take().expect("http.server stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let banner = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap_or_default();
    // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
    let port: u16 = banner
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            let _ = http.kill();
            panic!("http.server did not start: {banner:?}")
        });
    for (script, name) in [("scripts/redis8", "redis"), ("scripts/valkey9", "valkey")] {
        let out = std::process::Command::new("bash")
            .arg(root.join(script))
            .env("DEBIAN_MIRROR", format!("http://127.0.0.1:{port}"))
            .env("REDIS_WRITEBEHIND_CACHE", cache.path())
            .env_remove("REDIS8_BIN_DIR")
            .env_remove("VALKEY9_BIN_DIR")
            .output()
            .expect("the script runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{script} accepted a bad tarball");
        assert!(
            err.contains("checksum mismatch") && err.contains(&format!("127.0.0.1:{port}/pool/")),
            "{script} must say what was fetched from where: {err}"
        );
        assert!(
            err.contains("_BIN_DIR"),
            "{script} must say what to do: {err}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(cache.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(name))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{script} left {leftovers:?} in the cache"
        );
    }
    let _ = http.kill();
    let _ = http.wait();
}
