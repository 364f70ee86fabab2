//! A dump's data, read through a temporary `redis-server` 8 started on a copy of it.
//!
//! Why a server rather than a parser is in [`super`]. The server gets a private directory holding a
//! copy of the dump (the original is never opened for writing), listens on 127.0.0.1 only, on a
//! free port, with `save ""` and `appendonly no` so it never writes a file, and is killed by its own
//! PID when this value is dropped. Keys are listed with `SCAN ... TYPE string` and read with `MGET`,
//! stream entries with exclusive `XRANGE`, all in steps of a bounded count.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::entry::EntryId;

/// How long loading a dump may take before the tool gives up.
const LOAD_DEADLINE: Duration = Duration::from_secs(1800);

/// Fields of one stream entry, as the decoder takes them.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A running server holding one dump.
pub struct DumpServer {
    child: Child,
    dir: PathBuf,
    con: redis::Connection,
}

impl DumpServer {
    /// Copies `dump` into a fresh directory and starts `redis_server` on it; returns once the data
    /// is loaded. On failure the reason is the server's own log line when it has one.
    pub fn start(redis_server: &Path, dump: &Path) -> Result<DumpServer, String> {
        let dir = std::env::temp_dir().join(format!(
            "wb-migrate-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cleanup = |e: String| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        std::fs::copy(dump, dir.join("dump.rdb"))
            .map_err(|e| cleanup(format!("copying {}: {e}", dump.display())))?;
        let port = free_port().map_err(cleanup)?;
        let child = Command::new(redis_server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&dir)
            .args([
                "--dbfilename",
                "dump.rdb",
                "--appendonly",
                "no",
                "--save",
                "",
            ])
            .args(["--protected-mode", "yes", "--daemonize", "no"])
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| cleanup(format!("cannot start {}: {e}", redis_server.display())))?;
        let mut pending = Pending {
            child: Some(child),
            dir: dir.clone(),
        };
        let con = pending.wait_loaded(port)?;
        let child = pending.child.take().ok_or("server handle lost")?;
        Ok(DumpServer { child, dir, con })
    }

    /// Selects the database the data lives in (`REDIS_DB`).
    pub fn select(&mut self, db: i64) -> Result<(), String> {
        redis::cmd("SELECT")
            .arg(db)
            .query::<()>(&mut self.con)
            .map_err(|e| format!("SELECT {db}: {e}"))
    }

    /// Names of the string keys matching `pattern`, scanned `count` at a time.
    pub fn string_keys(&mut self, pattern: &str, count: usize) -> Result<Vec<Vec<u8>>, String> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count)
                .arg("TYPE")
                .arg("string")
                .query(&mut self.con)
                .map_err(|e| format!("SCAN MATCH {pattern}: {e}"))?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// The values of `keys` (a key deleted or retyped meanwhile reads as `None`).
    pub fn values(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, String> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        redis::cmd("MGET")
            .arg(keys)
            .query(&mut self.con)
            .map_err(|e| format!("MGET: {e}"))
    }

    /// `XLEN` of `stream`; 0 when it does not exist or is not a stream.
    pub fn stream_len(&mut self, stream: &str) -> Result<u64, String> {
        let kind: String = redis::cmd("TYPE")
            .arg(stream)
            .query(&mut self.con)
            .map_err(|e| format!("TYPE {stream}: {e}"))?;
        if kind != "stream" {
            return Ok(0);
        }
        redis::cmd("XLEN")
            .arg(stream)
            .query(&mut self.con)
            .map_err(|e| format!("XLEN {stream}: {e}"))
    }

    /// Up to `count` entries of `stream` after `after` (from the start when `None`), in order.
    pub fn entries_after(
        &mut self,
        stream: &str,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<(EntryId, Fields)>, String> {
        let start = after.map_or_else(|| "-".to_string(), |id| format!("({id}"));
        let raw: Vec<(Vec<u8>, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query(&mut self.con)
            .map_err(|e| format!("XRANGE {stream} {start}: {e}"))?;
        raw.into_iter()
            .map(|(id, flat)| {
                let id = EntryId::parse_bytes(&id).map_err(|e| e.to_string())?;
                let mut fields = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    fields.push((k, v));
                }
                Ok((id, fields))
            })
            .collect()
    }
}

impl Drop for DumpServer {
    fn drop(&mut self) {
        stop(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server that has been started but not yet loaded: stopped and cleaned up if loading fails.
struct Pending {
    child: Option<Child>,
    dir: PathBuf,
}

impl Pending {
    fn wait_loaded(&mut self, port: u16) -> Result<redis::Connection, String> {
        let url = format!("redis://127.0.0.1:{port}/");
        let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + LOAD_DEADLINE;
        let mut pause = Duration::from_millis(10);
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "exited ({status}) while loading the dump: {}",
                        self.log_reason()
                    ));
                }
            }
            match client.get_connection_with_timeout(Duration::from_secs(2)) {
                Ok(mut con) => match redis::cmd("PING").query::<String>(&mut con) {
                    Ok(_) => return Ok(con),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        Err(format!(
            "did not finish loading within {LOAD_DEADLINE:?} ({last})"
        ))
    }

    /// The most telling line of the server log (the last warning), for an error message.
    fn log_reason(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        let pick = lines
            .iter()
            .rev()
            .find(|l| l.contains(" # "))
            .or(lines.last())
            .map(|l| {
                l.split_once(" # ")
                    .map_or(*l, |(_, msg)| msg)
                    .trim()
                    .to_string()
            });
        pick.unwrap_or_else(|| "no log".into())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Kills the server by its PID and reaps it; it has nothing to save.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free local port: {e}"))
}
