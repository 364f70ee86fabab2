//! The module loads into Redis 8 and exposes its settings, status and INFO section.

mod common;

use std::time::Duration;

use common::redis_server::{module_path, q, q_err, redis_server_bin, status, Options, RedisServer};
use redis_writebehind::settings::{cpu_list, Change, Key, Kind, Spec, TABLE};

fn config_get(con: &mut redis::Connection, name: &str) -> Option<String> {
    let pairs: Vec<String> = q(con, &["CONFIG", "GET", name]);
    pairs.get(1).cloned()
}

fn seed_variables() -> Vec<(String, String)> {
    include_str!("fixtures/seed_variables.tsv")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (n, d) = l.split_once('\t').unwrap_or((l, ""));
            (n.to_string(), d.to_string())
        })
        .collect()
}

#[test]
fn module_loads_from_redis_conf_and_is_listed() {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    let modules: Vec<Vec<redis::Value>> = q(&mut con, &["MODULE", "LIST"]);
    let listed = modules.iter().any(|m| {
        m.windows(2).any(|w| {
            matches!((&w[0], &w[1]), (redis::Value::BulkString(k), redis::Value::BulkString(v))
                if k == b"name" && v == b"writebehind")
        })
    });
    assert!(listed, "writebehind missing from MODULE LIST: {modules:?}");
}

#[test]
fn module_loads_with_module_load_and_loadex_config() {
    let server = RedisServer::start(Options::default().without_module());
    let mut con = server.connection();
    let so = module_path().display().to_string();
    let ok: String = q(
        &mut con,
        &[
            "MODULE",
            "LOADEX",
            &so,
            "CONFIG",
            "writebehind.restore-days",
            "9",
        ],
    );
    assert_eq!(ok, "OK");
    assert_eq!(
        config_get(&mut con, "writebehind.restore-days").as_deref(),
        Some("9")
    );
    assert_eq!(status(&mut con)["version"], env!("CARGO_PKG_VERSION"));

    let server2 = RedisServer::start(Options::default().without_module());
    let mut con2 = server2.connection();
    let ok: String = q(&mut con2, &["MODULE", "LOAD", &so]);
    assert_eq!(ok, "OK");
    assert_eq!(
        config_get(&mut con2, "writebehind.restore-days").as_deref(),
        Some("7")
    );
}

#[test]
fn every_seed_variable_is_listed_with_the_seed_default() {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    let all: Vec<String> = q(&mut con, &["CONFIG", "GET", "writebehind.*"]);
    let listed: std::collections::HashMap<&str, &str> = all
        .chunks(2)
        .map(|p| (p[0].as_str(), p.get(1).map(String::as_str).unwrap_or("")))
        .collect();
    let seed = seed_variables();
    assert!(seed.len() >= 50, "the seed table has {} rows", seed.len());
    for (name, default) in seed {
        let config = format!("writebehind.{}", Spec::config_name(&name));
        assert_eq!(
            listed.get(config.as_str()).copied(),
            Some(default.as_str()),
            "{config}"
        );
    }
    // The Snowflake connection settings of SPEC §2 are listed as well.
    for name in [
        "snowflake-account",
        "snowflake-user",
        "snowflake-private-key-path",
        "snowflake-token-file",
        "snowflake-token-type",
        "snowflake-database",
        "snowflake-schema",
        "snowflake-warehouse",
        "snowflake-role",
        "snowflake-url",
        "snowflake-tracked-table",
        "snowflake-user-table",
    ] {
        assert!(
            listed.contains_key(format!("writebehind.{name}").as_str()),
            "{name}"
        );
    }
    assert_eq!(listed["writebehind.snowflake-tracked-table"], "TRACKED");
    assert_eq!(listed["writebehind.snowflake-user-table"], "USER");
}

#[test]
fn environment_overrides_defaults_under_seed_names_and_aliases() {
    let server = RedisServer::start(
        Options::default()
            .env("NEWER_RECORD_TIME_LIMIT_SECONDS", "45")
            .env("REDIS_GROUP", "group-from-alias")
            .env("STREAM", "alias-stream")
            .env("HASH_NULL_TRACK_ID", "1"),
    );
    let mut con = server.connection();
    assert_eq!(
        config_get(&mut con, "writebehind.newer-record-time-limit-seconds").as_deref(),
        Some("45")
    );
    assert_eq!(
        config_get(&mut con, "writebehind.group").as_deref(),
        Some("group-from-alias")
    );
    assert_eq!(
        config_get(&mut con, "writebehind.redis-group").as_deref(),
        Some("group-from-alias")
    );
    assert_eq!(
        config_get(&mut con, "writebehind.redis-stream").as_deref(),
        Some("alias-stream")
    );
    assert_eq!(
        config_get(&mut con, "writebehind.hash-null-track-id").as_deref(),
        Some("1")
    );
    let st = status(&mut con);
    assert_eq!(st["stream"], "alias-stream");
    assert_eq!(st["group"], "group-from-alias");
}

#[test]
fn redis_conf_beats_environment() {
    let server = RedisServer::start(
        Options::default()
            .env("RESTORE_DAYS", "3")
            .config("restore-days", "5"),
    );
    let mut con = server.connection();
    assert_eq!(
        config_get(&mut con, "writebehind.restore-days").as_deref(),
        Some("5")
    );
}

#[test]
fn a_value_given_under_either_name_of_a_setting_wins_over_the_defaults() {
    // On Valkey every alias is a config of its own: whichever name redis.conf uses, the value given
    // must survive the default the other name is loaded with, and both names must read it.
    for (given, other) in [("redis-stream", "stream"), ("stream", "redis-stream")] {
        let server = RedisServer::start(Options::default().config(given, "from-conf"));
        let mut con = server.connection();
        for name in [given, other] {
            assert_eq!(
                config_get(&mut con, &format!("writebehind.{name}")).as_deref(),
                Some("from-conf"),
                "given as {given}, read as {name}"
            );
        }
        assert_eq!(status(&mut con)["stream"], "from-conf", "given as {given}");
    }
}

#[test]
fn wb_status_names_the_server_the_module_runs_in() {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    let version = std::process::Command::new(redis_server_bin())
        .arg("--version")
        .output()
        .expect("server --version");
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    let family = if version.starts_with("Valkey") {
        "valkey"
    } else {
        "redis"
    };
    let number = version
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .expect("the version names v=")
        .to_string();
    assert_eq!(status(&mut con)["server"], format!("{family} {number}"));
}

#[test]
fn an_invalid_environment_value_is_reported_and_the_default_used() {
    let server = RedisServer::start(Options::default().env("RESTORE_DAYS", "-3"));
    let mut con = server.connection();
    assert_eq!(
        config_get(&mut con, "writebehind.restore-days").as_deref(),
        Some("7")
    );
    let log = server.log();
    assert!(
        log.contains("invalid value '-3' for writebehind.restore-days"),
        "no warning in log:\n{log}"
    );
}

/// A valid value of the setting's kind that differs from its default.
fn other_value(key: Key) -> String {
    let spec = key.spec();
    match spec.kind {
        Kind::Bool => if spec.default == "1" { "0" } else { "1" }.into(),
        Kind::Int { min, max } => {
            let d: i64 = spec.default.parse().unwrap_or(min);
            if d < max {
                (d + 1).to_string()
            } else {
                (d - 1).to_string()
            }
        }
        Kind::Choice(words) => words
            .iter()
            .find(|w| **w != spec.default)
            .unwrap_or(&words[0])
            .to_string(),
        Kind::Name => format!("{}-x", spec.default),
        Kind::Identifier => "OTHER_TABLE".into(),
        Kind::Url => "http://127.0.0.1:1".into(),
        Kind::Account => "otherorg-otheraccount".into(),
        Kind::List => "a,b".into(),
        Kind::Cpus => "0".into(),
        Kind::Text => "some text".into(),
    }
}

#[test]
fn config_set_round_trips_live_settings_and_refuses_restart_ones() {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    for (i, spec) in TABLE.iter().enumerate() {
        let key = Key::ALL[i];
        let config = format!("writebehind.{}", Spec::config_name(spec.name));
        let value = other_value(key);
        match spec.change {
            Change::Live => {
                let ok: String = q(&mut con, &["CONFIG", "SET", &config, &value]);
                assert_eq!(ok, "OK", "{config}");
                assert_eq!(
                    config_get(&mut con, &config).as_deref(),
                    Some(value.as_str()),
                    "{config}"
                );
                for alias in spec.aliases {
                    let alias = format!("writebehind.{}", Spec::config_name(alias));
                    assert_eq!(
                        config_get(&mut con, &alias).as_deref(),
                        Some(value.as_str()),
                        "{alias}"
                    );
                }
            }
            Change::Restart => {
                let err = q_err(&mut con, &["CONFIG", "SET", &config, &value]);
                assert!(err.contains("immutable"), "{config}: {err}");
            }
        }
    }
}

#[test]
fn bad_values_are_refused_with_the_setting_and_range_and_the_server_keeps_running() {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    let err = q_err(
        &mut con,
        &["CONFIG", "SET", "writebehind.restore-days", "-3"],
    );
    assert!(
        err.contains("writebehind.restore-days") && err.contains("from 1 to 3650"),
        "{err}"
    );
    let err = q_err(
        &mut con,
        &[
            "CONFIG",
            "SET",
            "writebehind.newer-record-time-limit-seconds",
            "abc",
        ],
    );
    assert!(
        err.contains("writebehind.newer-record-time-limit-seconds") && err.contains("whole number"),
        "{err}"
    );
    let err = q_err(
        &mut con,
        &["CONFIG", "SET", "writebehind.skip-freshness", "maybe"],
    );
    assert!(err.contains("0 or 1"), "{err}");
    let err = q_err(
        &mut con,
        &["CONFIG", "SET", "writebehind.log-level", "LOUD"],
    );
    assert!(err.contains("DEBUG, INFO, WARNING, ERROR"), "{err}");
    for key in TABLE
        .iter()
        .filter(|s| matches!(s.kind, Kind::Int { .. }) && s.change == Change::Live)
    {
        let config = format!("writebehind.{}", Spec::config_name(key.name));
        q_err(&mut con, &["CONFIG", "SET", &config, "not-a-number"]);
        q_err(
            &mut con,
            &["CONFIG", "SET", &config, "99999999999999999999"],
        );
    }
    assert_eq!(
        config_get(&mut con, "writebehind.restore-days").as_deref(),
        Some("7")
    );
    let pong: String = q(&mut con, &["PING"]);
    assert_eq!(pong, "PONG");
}

#[test]
fn secrets_never_appear_in_config_status_info_or_log() {
    let token = "tok-secret-9f8e7d6c5b4a";
    let passphrase = "pass-secret-1a2b3c4d";
    let server = RedisServer::start(
        Options::default()
            .env("SNOWFLAKE_TOKEN", token)
            .env("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE", passphrase)
            .env("SNOWFLAKE_ACCOUNT", "myorg-myaccount")
            .env("SNOWFLAKE_USER", "writer")
            .env("LOG_LEVEL", "DEBUG"),
    );
    let mut con = server.connection();
    let everything: Vec<String> = q(&mut con, &["CONFIG", "GET", "*"]);
    let status = format!("{:?}", status(&mut con));
    let info: String = q(&mut con, &["INFO", "everything"]);
    for place in [everything.join("\n"), status.clone(), info, server.log()] {
        assert!(
            !place.contains(token) && !place.contains(passphrase),
            "a secret leaked"
        );
    }
    // The token is taken into account without being shown.
    assert!(status.contains("\"snowflake\": \"configured\""), "{status}");
}

#[test]
fn redis_starts_without_snowflake_settings_and_consumes_nothing() {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    let st = status(&mut con);
    assert_eq!(st["state"], "unconfigured");
    assert_eq!(st["snowflake"], "unconfigured");
    assert_eq!(st["role"], "primary");
    let _: String = q(
        &mut con,
        &[
            "XADD",
            "userdata-stream",
            "*",
            "value",
            r#"{"diag":"ping"}"#,
        ],
    );
    assert_eq!(status(&mut con)["stream_length"], "1");
    // Nothing reads the stream: no consumer group exists and the entry stays unread.
    std::thread::sleep(Duration::from_millis(300));
    let groups: Vec<redis::Value> = q(&mut con, &["XINFO", "GROUPS", "userdata-stream"]);
    let st = status(&mut con);
    assert!(groups.is_empty() || st["pending"] == "0", "{groups:?}");
    assert_eq!(st["entries_read"], "0");
}

#[test]
fn info_section_shows_the_status_figures() {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    let info: String = q(&mut con, &["INFO", "writebehind"]);
    for field in [
        "writebehind_state:unconfigured",
        "writebehind_role:primary",
        "writebehind_stream:userdata-stream",
        "writebehind_stream_length:0",
    ] {
        assert!(info.contains(field), "{field} missing from:\n{info}");
    }
}

#[test]
fn wb_status_refuses_extra_arguments() {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    let err = q_err(&mut con, &["WB.STATUS", "extra"]);
    assert!(
        err.to_lowercase().contains("wrong number of arguments"),
        "{err}"
    );
}

#[test]
fn module_unload_is_refused_while_the_writer_runs_and_stops_it_cleanly_when_paused() {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    let err = q_err(&mut con, &["MODULE", "UNLOAD", "writebehind"]);
    assert!(
        err.contains("Error unloading module") || err.contains("unload"),
        "{err}"
    );
    assert!(
        server.log().contains("run WB.PAUSE"),
        "the refusal's reason is not logged"
    );
    let _: String = q(&mut con, &["WB.PAUSE"]);
    // The operator's procedure (docs/operations.md): a thread that was already waiting for the
    // Redis lock when the unload took it cannot end until the unload returns, so that refusal is
    // answered by repeating the command; no other refusal is.
    server.wait_for("the paused writer", Duration::from_secs(10), || {
        (status(&mut con)["state"] == "paused").then_some(())
    });
    let refusals = |log: &str| log.matches("MODULE UNLOAD refused").count();
    let mut seen = refusals(&server.log());
    let unloaded = server.wait_for("the unload", Duration::from_secs(20), || match redis::cmd(
        "MODULE",
    )
    .arg("UNLOAD")
    .arg("writebehind")
    .query::<redis::Value>(&mut con)
    {
        Ok(v) => Some(v),
        Err(e) => {
            let log = server.log();
            let why = log
                .lines()
                .rev()
                .find(|l| l.contains("MODULE UNLOAD refused"));
            assert!(
                refusals(&log) > seen,
                "refused without a reason logged: {e}"
            );
            seen = refusals(&log);
            assert!(why.is_some_and(|l| l.contains("still stopping")), "{why:?}");
            None
        }
    });
    assert_eq!(unloaded, redis::Value::Okay);
    let modules: Vec<redis::Value> = q(&mut con, &["MODULE", "LIST"]);
    assert!(!format!("{modules:?}").contains("writebehind"));
    // The server runs on, and the module loads again.
    let so = module_path().display().to_string();
    let ok: String = q(&mut con, &["MODULE", "LOAD", &so]);
    assert_eq!(ok, "OK");
    server.wait_for(
        "the reloaded writer to report its state",
        Duration::from_secs(10),
        || (status(&mut con)["state"] == "unconfigured").then_some(()),
    );
}

/// The CPUs a thread may run on (`Cpus_allowed_list` of `/proc/<pid>/task/<tid>/status`).
fn cpus_of(task: &std::path::Path) -> Vec<usize> {
    let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_default();
    cpu_list(list.trim()).unwrap_or_default()
}

/// The first and the last CPU this test may run on: one for Redis's main thread, one for the
/// module's (the same on a machine of one CPU).
fn first_and_last_cpu() -> (usize, usize) {
    let mine = cpus_of(std::path::Path::new("/proc/thread-self"));
    (mine[0], mine[mine.len() - 1])
}

/// The threads of process `pid`: each one's name and its `/proc/<pid>/task/<tid>` directory.
fn tasks(pid: u32) -> Vec<(String, std::path::PathBuf)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|t| t.path())
                .map(|t| {
                    let name = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
                    (name.trim_end().to_string(), t)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_module_threads_run_on_background_cpus_and_the_main_thread_on_server_cpulist() {
    let (first, last) = first_and_last_cpu();
    let server = RedisServer::start(
        Options::default()
            .conf(&format!("server-cpulist {first}"))
            .env("BACKGROUND_CPUS", &last.to_string()),
    );
    server.settled_threads();
    let pid = server.pid().expect("running");
    let mut module_threads = 0;
    for (name, task) in tasks(pid) {
        if name.starts_with("wb-") {
            module_threads += 1;
            assert_eq!(cpus_of(&task), vec![last], "{name}");
        }
    }
    assert!(module_threads >= 2, "claimer and a worker at least");
    let main = cpus_of(&std::path::Path::new("/proc").join(pid.to_string()));
    assert_eq!(
        main,
        vec![first],
        "the main thread keeps server-cpulist's CPU"
    );
    let mut con = server.connection();
    assert_eq!(
        config_get(&mut con, "writebehind.background-cpus").as_deref(),
        Some(last.to_string().as_str())
    );
}

#[test]
fn background_cpus_not_online_stop_the_module_and_others_than_the_main_threads_load_at_runtime() {
    let (first, last) = first_and_last_cpu();
    let online = redis_writebehind::pipeline::affinity::online();
    let outside = (0..=redis_writebehind::settings::MAX_CPU)
        .rev()
        .find(|c| !online.contains(c))
        .expect("a CPU this machine does not have");
    let server = RedisServer::start(
        Options::default()
            .without_module()
            .conf(&format!("server-cpulist {first}")),
    );
    let loadex = |cpus: String| {
        redis::cmd("MODULE")
            .arg("LOADEX")
            .arg(module_path().to_str().unwrap())
            .arg("CONFIG")
            .arg("writebehind.background-cpus")
            .arg(cpus)
            .query::<redis::Value>(&mut server.connection())
    };
    let err = loadex(outside.to_string()).expect_err("refused");
    assert!(
        err.to_string().to_lowercase().contains("error loading"),
        "{err}"
    );
    server.wait_for("the reason in the log", Duration::from_secs(5), || {
        server
            .log()
            .contains(&format!(
                "BACKGROUND_CPUS names CPUs [{outside}] that are not online"
            ))
            .then_some(())
    });
    // Loaded at runtime, after server-cpulist kept the main thread to its CPU: another CPU is
    // accepted, and the module's threads run there.
    assert_eq!(loadex(last.to_string()).ok(), Some(redis::Value::Okay));
    let pid = server.pid().expect("running");
    let claimer = server.wait_for("the claimer", Duration::from_secs(10), || {
        tasks(pid)
            .into_iter()
            .find_map(|(name, task)| (name == "wb-claimer").then_some(task))
    });
    assert_eq!(cpus_of(&claimer), vec![last]);
    assert_eq!(
        cpus_of(&std::path::Path::new("/proc").join(pid.to_string())),
        vec![first]
    );
}
