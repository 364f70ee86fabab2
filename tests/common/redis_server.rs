//! Starts and stops the server (Redis 8, or Valkey 9 with `WB_SERVER=valkey`) for tests.
//!
//! The binary comes from `REDIS_SERVER`, else from `scripts/redis8` or, with `WB_SERVER=valkey`,
//! `scripts/valkey9` (each built once and cached); the module from
//! `WB_MODULE` or the target directory the test binary was built in. Readiness is a `PING` polled
//! against a deadline; shutdown is by PID (SIGTERM, then SIGKILL after a deadline). When the test
//! thread panics, the server log is printed so the failure can be read.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path of the server binary: a Redis 8 `redis-server`, or Valkey 9's `valkey-server`.
pub fn redis_server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("REDIS_SERVER") {
            return PathBuf::from(p);
        }
        let name = match std::env::var("WB_SERVER").as_deref() {
            Ok("valkey") => "scripts/valkey9",
            _ => "scripts/redis8",
        };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("{name} runs: {e}"));
        assert!(out.status.success(), "{name} failed");
        let text = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            text.lines()
                .last()
                .unwrap_or_else(|| panic!("{name} prints a path"))
                .trim(),
        )
    })
    .clone()
}

/// Path of the built module (`libredis_writebehind.so`).
pub fn module_path() -> PathBuf {
    if let Ok(p) = std::env::var("WB_MODULE") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test binary> -> target/<profile>/libredis_writebehind.so
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let so = profile_dir.join("libredis_writebehind.so");
    assert!(
        so.exists(),
        "{} is missing: run `cargo build` for this profile first",
        so.display()
    );
    so
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Load the module from the config file (`loadmodule`); otherwise load it later by command.
    pub load_module: bool,
    /// `writebehind.*` settings given on the `loadmodule` line's config section (as redis.conf lines).
    pub module_config: Vec<(String, String)>,
    /// Extra redis.conf lines.
    pub conf: Vec<String>,
    /// Environment of the server process (on top of a cleaned environment).
    pub env: BTreeMap<String, String>,
    /// The port to listen on; a free one when `None`.
    pub port: Option<u16>,
    /// The loopback address to listen on and connect from (`127.0.0.1` when `None`): a cluster
    /// node given another address comes back as a node whose IP changed.
    pub host: Option<String>,
}

impl Default for Options {
    /// With `WB_TEST_ACK_MODE` set (scripts/test runs some suites again with `WRITTEN_GROUP`), every
    /// server gets it as its `ACK_MODE`.
    fn default() -> Self {
        let mut env = BTreeMap::new();
        if let Ok(mode) = std::env::var("WB_TEST_ACK_MODE") {
            env.insert("ACK_MODE".to_string(), mode);
        }
        Options {
            load_module: true,
            module_config: Vec::new(),
            conf: Vec::new(),
            env,
            port: None,
            host: None,
        }
    }
}

impl Options {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }
    pub fn config(mut self, name: &str, value: &str) -> Self {
        self.module_config.push((name.into(), value.into()));
        self
    }
    pub fn conf(mut self, line: &str) -> Self {
        self.conf.push(line.into());
        self
    }
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.into());
        self
    }
    pub fn without_module(mut self) -> Self {
        self.load_module = false;
        self
    }
}

pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub opts: Options,
    child: Option<Child>,
}

/// Environment variables of this process that the module reads; a server never inherits them, so a
/// developer's shell cannot change a test's outcome.
fn scrubbed(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("SNOWFLAKE_")
            || redis_writebehind::settings::TABLE
                .iter()
                .any(|s| s.name == k || s.aliases.contains(&k.as_str()))
        {
            cmd.env_remove(k);
        }
    }
}

impl RedisServer {
    pub fn start(opts: Options) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("wb-redis-")
            .tempdir()
            .expect("temp dir");
        let mut server = RedisServer {
            port: opts.port.unwrap_or_else(free_port),
            dir,
            opts,
            child: None,
        };
        server.launch();
        server
    }

    /// The address the server listens on.
    pub fn host(&self) -> &str {
        self.opts.host.as_deref().unwrap_or("127.0.0.1")
    }

    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("redis.conf")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn write_conf(&self) {
        let host = self.host();
        let mut conf = format!(
            "port {}\nbind {host}\nbind-source-addr {host}\ndir {}\nlogfile {}\nsave \"\"\nappendonly no\nloglevel verbose\nenable-module-command yes\nenable-debug-command yes\n",
            self.port,
            self.dir.path().display(),
            self.log_path().display()
        );
        if self.opts.load_module {
            conf.push_str(&format!("loadmodule {}\n", module_path().display()));
            for (k, v) in &self.opts.module_config {
                conf.push_str(&format!("writebehind.{k} \"{v}\"\n"));
            }
        }
        for line in &self.opts.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let mut f = std::fs::File::create(self.conf_path()).expect("write redis.conf");
        f.write_all(conf.as_bytes()).expect("write redis.conf");
    }

    /// Starts the process on this server's port and directory and waits until it answers PING.
    pub fn launch(&mut self) {
        self.spawn();
        self.wait_ready(Duration::from_secs(20));
    }

    /// Starts the process without waiting for it (it may still be loading its AOF/RDB); polling
    /// `PING` until it answers `PONG` is the caller's.
    pub fn spawn(&mut self) {
        self.write_conf();
        let mut cmd = Command::new(redis_server_bin());
        cmd.arg(self.conf_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        scrubbed(&mut cmd);
        cmd.envs(&self.opts.env);
        let child = cmd.spawn().expect("redis-server starts");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The names of the server's threads now (`/proc/<pid>/task/*/comm`); empty when it is not
    /// running.
    pub fn thread_names(&self) -> Vec<String> {
        let Some(pid) = self.pid() else {
            return Vec::new();
        };
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks
                    .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                    .map(|name| name.trim_end().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The server's thread count once the module's start-up work has finished (its `wb-startup`
    /// thread is gone): a baseline later counts can be held to. Counted before that, a start-up
    /// thread still exiting would be in the baseline and never in a later count.
    pub fn settled_threads(&self) -> usize {
        // The workers are started first, then the start-up thread: a count taken before the
        // workers exist would be a baseline below the settled one. The same names twice, 100 ms
        // apart, with workers and no start-up thread, is settled.
        let mut last: Vec<String> = Vec::new();
        self.wait_for(
            "the start-up thread to finish",
            Duration::from_secs(30),
            || {
                let mut names = self.thread_names();
                names.sort();
                let settled = names.iter().any(|n| n.starts_with("wb-worker"))
                    && !names.iter().any(|n| n == "wb-startup")
                    && names == last;
                last = names;
                if !settled {
                    std::thread::sleep(Duration::from_millis(100));
                }
                settled.then_some(last.len())
            },
        )
    }

    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("redis-server exited early ({status}); log:\n{}", self.log());
                }
            }
            if let Ok(mut c) = self.try_connection() {
                if let Ok(reply) = redis::cmd("PING").query::<String>(&mut c) {
                    if reply == "PONG" {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING in time; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(format!("redis://{}:{}/", self.host(), self.port))?;
        client.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// A new connection (10 s read timeout, so a stalled server fails the test instead of hanging it).
    pub fn connection(&self) -> redis::Connection {
        let c = self.try_connection().expect("connect to redis-server");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Polls `check` until it returns `Some`, or fails the test after `within`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process: SIGTERM and wait (redis-server runs its shutdown), SIGKILL after `within`.
    pub fn stop_within(&mut self, within: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn stop(&mut self) {
        self.stop_within(Duration::from_secs(15));
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- redis-server log ({}) ----\n{}",
                self.log_path().display(),
                self.log()
            );
        }
        self.stop_within(Duration::from_secs(5));
    }
}

/// Runs a command and returns its reply converted to `T`, failing the test on an error reply.
pub fn q<T: redis::FromRedisValue>(con: &mut redis::Connection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(con)
        .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

/// Runs a command expected to fail and returns the error text.
pub fn q_err(con: &mut redis::Connection, args: &[&str]) -> String {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<redis::Value>(con) {
        Ok(v) => panic!("{args:?} succeeded with {v:?}, an error was expected"),
        Err(e) => e.to_string(),
    }
}

/// `WB.STATUS` as a name -> text map.
pub fn status(con: &mut redis::Connection) -> BTreeMap<String, String> {
    let v: BTreeMap<String, redis::Value> = q(con, &["WB.STATUS"]);
    v.into_iter()
        .map(|(k, v)| {
            let text = match v {
                redis::Value::Int(n) => n.to_string(),
                redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                redis::Value::SimpleString(s) => s,
                other => format!("{other:?}"),
            };
            (k, text)
        })
        .collect()
}
