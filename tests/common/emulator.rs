//! Starts the local Snowflake SQL API emulator (`scripts/emulator/server.py`) for a test.
//!
//! Each [`Emulator`] gets its own temporary directory (DuckDB files, a fresh RSA key pair, a token
//! file, the log), a free 127.0.0.1 port chosen by the emulator itself (`--port 0 --port-file`),
//! and the control API for fault injection and assertions. Readiness is polled against a deadline;
//! `Drop` stops the process by PID (SIGTERM, then SIGKILL). When the test thread is panicking, the
//! emulator's log is printed and its directory kept, so a failure can be read.
//!
//! The Python venv is created once (and cached across runs) by `scripts/emulator-up --prepare`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis_writebehind::snowflake::{AuthConfig, ClientConfig, TokenSource, TokenType};
use serde_json::{json, Value};

const START_DEADLINE: Duration = Duration::from_secs(90);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, prepared once per test process.
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = Command::new("bash")
                .arg(repo().join("scripts/emulator-up"))
                .arg("--prepare")
                .stderr(Stdio::inherit())
                .output()
                .expect("scripts/emulator-up runs");
            assert!(out.status.success(), "scripts/emulator-up --prepare failed");
            let text = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(text.lines().last().expect("a python path").trim())
        })
        .clone()
}

/// Generates a key pair in `dir` with `scripts/keygen`; returns (private key, public key).
pub fn keygen(dir: &Path, passphrase: Option<&str>) -> (PathBuf, PathBuf) {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/keygen"));
    if let Some(p) = passphrase {
        cmd.arg("--encrypt").env("PASSPHRASE", p);
    }
    let out = cmd.arg(dir).output().expect("scripts/keygen runs");
    assert!(
        out.status.success(),
        "scripts/keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir.join("rsa_key.p8"), dir.join("rsa_key.pub"))
}

/// How to start the emulator.
#[derive(Debug, Clone)]
pub struct Options {
    pub account: String,
    pub user: String,
    pub database: String,
    pub schema: String,
    /// Run `scripts/snowflake/schema.sql` at start.
    pub schema_sql: bool,
    pub partition_rows: usize,
    pub async_after_ms: u64,
    pub sink: bool,
    /// Initial content of the accepted-token file.
    pub token: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            account: "ACME-TEST".into(),
            user: "WRITER".into(),
            database: "WRITEBEHIND".into(),
            schema: "PUBLIC".into(),
            schema_sql: true,
            partition_rows: 10_000,
            async_after_ms: 5_000,
            sink: false,
            token: "token-one".into(),
        }
    }
}

/// A running emulator.
pub struct Emulator {
    child: Child,
    pub url: String,
    pub opts: Options,
    dir: Option<tempfile::TempDir>,
    pub key_path: PathBuf,
    pub public_key_path: PathBuf,
    /// The token file the emulator accepts (one token a line); clients may read the same file.
    pub token_path: PathBuf,
    log_path: PathBuf,
    agent: ureq::Agent,
}

impl Emulator {
    pub fn start() -> Emulator {
        Emulator::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Emulator {
        let python = python();
        let dir = tempfile::Builder::new()
            .prefix("sf-emulator-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        let (key_path, public_key_path) = keygen(&root.join("keys"), None);
        let token_path = root.join("token");
        fs::write(&token_path, format!("{}\n", opts.token)).expect("token file");
        let port_file = root.join("port");
        let log_path = root.join("emulator.log");
        let log = fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(python);
        cmd.arg(repo().join("scripts/emulator/server.py"))
            .args(["--host", "127.0.0.1", "--port", "0", "--control"])
            .arg("--port-file")
            .arg(&port_file)
            .arg("--db-path")
            .arg(root.join("db"))
            .args(["--account", &opts.account, "--user", &opts.user])
            .args(["--database", &opts.database, "--schema", &opts.schema])
            .arg("--public-key")
            .arg(&public_key_path)
            .arg("--token-file")
            .arg(&token_path)
            .args(["--partition-rows", &opts.partition_rows.to_string()])
            .args(["--async-after-ms", &opts.async_after_ms.to_string()])
            // The engine's scratch files go in the test's directory, removed with it.
            .env("TMPDIR", &root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        if opts.schema_sql {
            cmd.arg("--schema-sql")
                .arg(repo().join("scripts/snowflake/schema.sql"));
        }
        if opts.sink {
            cmd.arg("--sink");
        }
        let child = cmd.spawn().expect("the emulator starts");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into();
        let mut emulator = Emulator {
            child,
            url: String::new(),
            opts,
            dir: Some(dir),
            key_path,
            public_key_path,
            token_path,
            log_path,
            agent,
        };
        emulator.wait_ready(&port_file);
        emulator
    }

    fn wait_ready(&mut self, port_file: &Path) {
        let deadline = Instant::now() + START_DEADLINE;
        let mut pause = Duration::from_millis(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the emulator exited ({status}) during start:\n{}",
                    self.log()
                );
            }
            if let Ok(port) = fs::read_to_string(port_file) {
                let url = format!("http://127.0.0.1:{}", port.trim());
                if self
                    .agent
                    .get(&format!("{url}/_emulator/health"))
                    .call()
                    .is_ok()
                {
                    self.url = url;
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the emulator did not answer within {START_DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).expect("emulator dir")
    }

    /// The emulator's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A client configuration with key-pair auth against this emulator, and test-sized timings.
    pub fn client_config(&self) -> ClientConfig {
        self.config_with(AuthConfig::KeyPair {
            private_key_path: self.key_path.clone(),
            passphrase: None,
        })
    }

    /// A client configuration reading its bearer token from the emulator's token file.
    pub fn token_config(&self) -> ClientConfig {
        self.config_with(AuthConfig::Token {
            source: TokenSource::File(self.token_path.clone()),
            token_type: TokenType::ProgrammaticAccessToken,
        })
    }

    pub fn config_with(&self, auth: AuthConfig) -> ClientConfig {
        let mut cfg = ClientConfig::new(&self.url, &self.opts.account, &self.opts.user, auth);
        cfg.database = Some(self.opts.database.clone());
        cfg.schema = Some(self.opts.schema.clone());
        cfg.warehouse = Some("TEST_WH".into());
        cfg.role = Some("WRITER_ROLE".into());
        cfg.request_timeout = Duration::from_secs(20);
        cfg.http_timeout = Duration::from_secs(10);
        cfg.retry_base_backoff = Duration::from_millis(10);
        cfg.retry_max_backoff = Duration::from_millis(100);
        cfg.poll_max_interval = Duration::from_millis(50);
        cfg
    }

    /// The module's Snowflake settings for this emulator (key-pair auth), as environment variables
    /// for `redis-server` or module configs.
    pub fn snowflake_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SNOWFLAKE_URL", self.url.clone()),
            ("SNOWFLAKE_ACCOUNT", self.opts.account.clone()),
            ("SNOWFLAKE_USER", self.opts.user.clone()),
            (
                "SNOWFLAKE_PRIVATE_KEY_PATH",
                self.key_path.display().to_string(),
            ),
            ("SNOWFLAKE_DATABASE", self.opts.database.clone()),
            ("SNOWFLAKE_SCHEMA", self.opts.schema.clone()),
        ]
    }

    /// Replaces the accepted token (and so, for clients reading the same file, the one they send).
    pub fn write_token(&self, token: &str) {
        let tmp = self.token_path.with_extension("tmp");
        fs::write(&tmp, format!("{token}\n")).expect("token written");
        fs::rename(&tmp, &self.token_path).expect("token replaced");
    }

    fn control(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/_emulator/{path}", self.url);
        let resp = match (method, body) {
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(b.to_string()),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("Content-Type", "application/json")
                .send(b.to_string()),
            ("POST", None) => self.agent.post(&url).send_empty(),
            ("GET", None) => self.agent.get(&url).call(),
            ("DELETE", None) => self.agent.delete(&url).call(),
            (m, _) => panic!("control {path}: method {m} not used by the tests"),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("control {path}: {e}"));
        let code = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("control {path}: HTTP {code}: {e}"));
        if code >= 400 {
            panic!("control {path}: HTTP {code}: {text}");
        }
        serde_json::from_str(&text).expect("control API answers JSON")
    }

    /// Queues a fault, e.g. `json!({"next": 2, "status": 503})`; see scripts/emulator/README.md.
    pub fn fault(&self, spec: Value) {
        self.control("POST", "faults", Some(spec));
    }

    /// Replaces every pending fault with `spec` in one step: no request is served fault-free
    /// between the old fault and the new one, as it could be between [`Self::clear_faults`] and
    /// [`Self::fault`].
    pub fn replace_faults(&self, spec: Value) {
        self.control("PUT", "faults", Some(spec));
    }

    pub fn clear_faults(&self) {
        self.control("DELETE", "faults", None);
    }

    /// Sets account-level parameters the emulator honours (`TIMESTAMP_INPUT_FORMAT`, `TIMEZONE`), e.g.
    /// `json!({"TIMESTAMP_INPUT_FORMAT": "DD/MM/YYYY HH24:MI:SS"})`; `"AUTO"` or null resets one.
    pub fn set_parameters(&self, params: Value) {
        self.control("POST", "parameters", Some(params));
    }

    /// Every JWT presented so far and the current token stop working.
    pub fn expire_credentials(&self) {
        self.control("POST", "expire", Some(json!({})));
    }

    pub fn stats(&self) -> Value {
        self.control("GET", "stats", None)
    }

    /// Clears statistics and pending faults.
    pub fn reset(&self) {
        self.control("POST", "reset", Some(json!({})));
    }

    /// Runs SQL directly on the engine (no auth, not counted): for assertions.
    pub fn sql(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let reply = self.control("POST", "sql", Some(json!({ "sql": sql })));
        serde_json::from_value(reply["rows"].clone()).expect("rows")
    }

    /// The single value of a one-row, one-column query.
    pub fn scalar(&self, sql: &str) -> Option<String> {
        self.sql(sql)
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next())
            .flatten()
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- emulator log ({}) ----\n{}",
                self.log_path.display(),
                self.log()
            );
            if let Some(dir) = self.dir.take() {
                eprintln!("emulator files kept in {}", dir.keep().display());
            }
        }
    }
}
