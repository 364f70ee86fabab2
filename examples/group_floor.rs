//! The least a consumer-group drain does, for `scripts/bench`'s half load: `XREADGROUP` what is new,
//! `XACK` it, nothing else (no decoding, no sink).
//!
//! Any write-behind that keeps SPEC §3's promise (an entry is acknowledged once written) reads and
//! acknowledges every entry through Redis's main thread; this does only that, as a client, so the
//! XADD latency beside it is what that part alone costs, whoever does it.
//!
//! ```text
//! group_floor --port 6379 --seconds 10 [--stream S] [--group G] [--count 2000]
//! ```
//!
//! Creates the group at the stream's end (`$`, `MKSTREAM`), then reads (`BLOCK 100`) and acknowledges
//! until `--seconds` have passed. Prints one JSON line: entries acknowledged and calls made.

mod common;

use std::time::{Duration, Instant};

use redis::Value;

struct Args {
    port: u16,
    seconds: f64,
    stream: String,
    group: String,
    count: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        port: 0,
        seconds: 0.0,
        stream: "userdata-stream".into(),
        group: "group-floor".into(),
        count: 2000,
    };
    common::flags(|flag, value| {
        match flag {
            "--port" => a.port = common::parsed(flag, value)?,
            "--seconds" => a.seconds = common::parsed(flag, value)?,
            "--stream" => a.stream = value.to_string(),
            "--group" => a.group = value.to_string(),
            "--count" => a.count = common::parsed(flag, value)?,
            _ => return Err(format!("unknown option {flag}")),
        }
        Ok(())
    })?;
    if a.port == 0 || a.seconds <= 0.0 || a.count == 0 {
        return Err("--port, a positive --seconds and --count are required".into());
    }
    Ok(a)
}

/// The entry IDs of an `XREADGROUP` reply for one stream: `[[stream, [[id, fields], ...]]]`.
fn entry_ids(reply: Value) -> Vec<Vec<u8>> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    streams
        .into_iter()
        .filter_map(|s| match s {
            Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
            _ => None,
        })
        .flat_map(|entries| match entries {
            Value::Array(entries) => entries,
            _ => Vec::new(),
        })
        .filter_map(|entry| match entry {
            Value::Array(mut e) if !e.is_empty() => match e.swap_remove(0) {
                Value::BulkString(id) => Some(id),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn run(a: &Args) -> redis::RedisResult<(u64, u64)> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", a.port))?;
    let mut con = client.get_connection()?;
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&a.stream)
        .arg(&a.group)
        .arg("$")
        .arg("MKSTREAM")
        .query(&mut con);
    if let Err(e) = created {
        if e.code() != Some("BUSYGROUP") {
            return Err(e);
        }
    }
    let end = Instant::now() + Duration::from_secs_f64(a.seconds);
    let (mut acked, mut calls) = (0u64, 0u64);
    while Instant::now() < end {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&a.group)
            .arg("floor")
            .arg("COUNT")
            .arg(a.count)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(&a.stream)
            .arg(">")
            .query(&mut con)?;
        calls += 1;
        let ids = entry_ids(reply);
        if ids.is_empty() {
            continue;
        }
        let n: u64 = redis::cmd("XACK")
            .arg(&a.stream)
            .arg(&a.group)
            .arg(ids)
            .query(&mut con)?;
        acked += n;
        calls += 1;
    }
    Ok((acked, calls))
}

fn main() {
    let a = common::or_usage("group_floor", parse_args());
    match run(&a) {
        Ok((acked, calls)) => println!("{}", serde_json::json!({"acked": acked, "calls": calls})),
        Err(e) => {
            eprintln!("group_floor: {e}");
            std::process::exit(1);
        }
    }
}
