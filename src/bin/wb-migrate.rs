//! `wb-migrate`: loads Redis dump files of the old deployment into Snowflake (see
//! [`redis_writebehind::migrate`] for how and why).
//!
//! This file is the command line only: arguments, the progress bar, the summary, the exit code.
//! Settings come from the environment under the module's names (`SNOWFLAKE_URL`, `SNOWFLAKE_ACCOUNT`,
//! `REDIS_STREAM`, `EXTRA_BRIDGE_KEYS`, `SKIP_FRESHNESS`, ...), so the deployment's env list works as
//! it is. Exit codes: 0 done, 1 failed (one line on stderr), 2 bad usage.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use redis_writebehind::migrate::{self, Options, Progress};

const USAGE: &str = "\
usage: wb-migrate [--dry-run] [--match PATTERN]... [--stream NAME] [--batch-size N]
                  [--redis-server PATH] DUMP...

Loads the user data of Redis dump files (RDB) into Snowflake, through the module's rules:
legacy string-key batches (keys matching --match, default EXTRA_BRIDGE_KEYS) and the entries of
the stream (--stream, default REDIS_STREAM) in database REDIS_DB. Re-running on the same dumps
changes nothing.

  --dry-run            decode and plan, log the SQL, execute nothing (also DRY_RUN=1)
  --match PATTERN      legacy key pattern (glob, as SCAN MATCH); repeatable
  --stream NAME        stream to read
  --batch-size N       keys or entries read per step (default 1000)
  --redis-server PATH  Redis 8 redis-server used to read the dumps (default: REDIS_SERVER,
                       then scripts/redis8 of this source tree, then redis-server on PATH)

Snowflake settings come from the environment as for the module: SNOWFLAKE_URL or SNOWFLAKE_ACCOUNT,
SNOWFLAKE_USER, SNOWFLAKE_PRIVATE_KEY_PATH or SNOWFLAKE_TOKEN(_FILE), SNOWFLAKE_DATABASE, ...
Rules too: SKIP_FRESHNESS, HASH_NULL_TRACK_ID, NEWER_RECORD_TIME_LIMIT_SECONDS, ...";

/// What the command line asked for.
#[derive(Debug)]
struct Args {
    dry_run: bool,
    patterns: Vec<String>,
    stream: Option<String>,
    batch_size: Option<usize>,
    redis_server: Option<PathBuf>,
    dumps: Vec<PathBuf>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        dry_run: false,
        patterns: Vec::new(),
        stream: None,
        batch_size: None,
        redis_server: None,
        dumps: Vec::new(),
    };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--dry-run" => a.dry_run = true,
            "--match" => a.patterns.push(value("--match")?),
            "--stream" => a.stream = Some(value("--stream")?),
            "--redis-server" => a.redis_server = Some(PathBuf::from(value("--redis-server")?)),
            "--batch-size" => {
                let v = value("--batch-size")?;
                match v.parse::<usize>() {
                    Ok(n) if (1..=100_000).contains(&n) => a.batch_size = Some(n),
                    _ => return Err(format!("--batch-size must be 1..100000, got '{v}'")),
                }
            }
            "--" => a.dumps.extend(it.by_ref().map(PathBuf::from)),
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            dump => a.dumps.push(PathBuf::from(dump)),
        }
    }
    if a.dumps.is_empty() {
        return Err("no dump file given".into());
    }
    Ok(Some(a))
}

/// The redis-server to read dumps with: `--redis-server`, `REDIS_SERVER`, `scripts/redis8` of the
/// source tree this was built from (when present), then `redis-server` on `PATH`.
fn redis_server(given: Option<PathBuf>) -> PathBuf {
    if let Some(p) = given.or_else(|| std::env::var_os("REDIS_SERVER").map(PathBuf::from)) {
        return p;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/redis8");
    if script.exists() {
        if let Ok(out) = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(line) = text.lines().last().filter(|_| out.status.success()) {
                return PathBuf::from(line.trim());
            }
        }
    }
    PathBuf::from("redis-server")
}

/// The progress bar on stderr (drawn only when stderr is a terminal).
struct Bar(ProgressBar);

impl Progress for Bar {
    fn dump_started(&self, path: &std::path::Path, total: u64) {
        self.0.reset();
        self.0.set_length(total);
        self.0.set_message(format!("{}", path.display()));
    }
    fn advanced(&self, n: u64) {
        self.0.inc(n);
    }
    fn phase(&self, what: &str) {
        self.0.set_message(what.to_string());
    }
    fn dump_finished(&self) {
        self.0.set_message("read");
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("wb-migrate: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let snap = migrate::run::settings_from_env();
    let mut opts = Options::from_settings(&snap, args.dumps, redis_server(args.redis_server));
    opts.dry_run |= args.dry_run;
    if !args.patterns.is_empty() {
        opts.patterns = args.patterns;
    }
    if let Some(s) = args.stream {
        opts.stream = s;
    }
    if let Some(n) = args.batch_size {
        opts.batch_size = n;
    }
    if opts.patterns.is_empty() {
        eprintln!("wb-migrate: no legacy key pattern (--match or EXTRA_BRIDGE_KEYS): reading the stream only");
    }

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let progress = Bar(bar);
    let outcome = migrate::run(&opts, &snap, &progress);
    progress.0.finish_and_clear();
    match outcome {
        Ok(summary) => {
            eprintln!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wb-migrate: error: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Option<Args>, String> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_and_dumps_are_read() {
        let a = args(&[
            "--dry-run",
            "--match",
            "a:*",
            "--match",
            "b:*",
            "--stream",
            "s",
            "--batch-size",
            "50",
            "x.rdb",
            "y.rdb",
        ])
        .unwrap()
        .unwrap();
        assert!(a.dry_run);
        assert_eq!(a.patterns, ["a:*", "b:*"]);
        assert_eq!(a.stream.as_deref(), Some("s"));
        assert_eq!(a.batch_size, Some(50));
        assert_eq!(a.dumps, [PathBuf::from("x.rdb"), PathBuf::from("y.rdb")]);
    }

    #[test]
    fn bad_usage_is_refused_with_a_reason() {
        assert!(args(&[]).unwrap_err().contains("no dump"));
        assert!(args(&["--match"]).unwrap_err().contains("needs a value"));
        assert!(args(&["--batch-size", "0", "d"]).is_err());
        assert!(args(&["--frobnicate", "d"])
            .unwrap_err()
            .contains("unknown"));
        assert!(args(&["--help"]).unwrap().is_none());
    }
}
