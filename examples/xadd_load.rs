//! An open-loop XADD load at a fixed rate, for `scripts/bench`'s half load.
//!
//! `redis-benchmark` has no rate limit: a lighter load can only come from fewer clients and
//! shallower pipelines, whose rate then depends on how fast the server answers (a closed loop), and
//! whose latency leaves out the commands a stalled server kept from being sent. Here each
//! connection sends its commands on a fixed schedule, whatever the server does, and a command's
//! latency runs from the moment it was due to its reply: a stall delays every command due during
//! it, as it would an application's.
//!
//! ```text
//! xadd_load --port 6379 --rate 300000 --seconds 10 [--connections 4] [--users 500]
//!           [--stream S] [--payload JSON]
//! ```
//!
//! `__rand_int__` in the payload is replaced by a random user number below `--users`, written as
//! twelve digits (as `redis-benchmark -r` does). Prints one JSON line: the commands sent and
//! answered, the rate reached, errors, and the latency percentiles in ms.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Args {
    port: u16,
    rate: f64,
    seconds: f64,
    connections: usize,
    users: u64,
    stream: String,
    payload: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        port: 0,
        rate: 0.0,
        seconds: 10.0,
        connections: 4,
        users: 500,
        stream: "userdata-stream".into(),
        payload: r#"{"key":"userdata-events:user__rand_int__-1/visited","records":[]}"#.into(),
    };
    common::flags(|flag, value| {
        match flag {
            "--port" => a.port = common::parsed(flag, value)?,
            "--rate" => a.rate = common::parsed(flag, value)?,
            "--seconds" => a.seconds = common::parsed(flag, value)?,
            "--connections" => a.connections = common::parsed(flag, value)?,
            "--users" => a.users = common::parsed(flag, value)?,
            "--stream" => a.stream = value.to_string(),
            "--payload" => a.payload = value.to_string(),
            _ => return Err(format!("unknown option {flag}")),
        }
        Ok(())
    })?;
    if a.port == 0 || a.rate <= 0.0 || a.seconds <= 0.0 || a.connections == 0 || a.users == 0 {
        return Err("--port and a positive --rate are required".into());
    }
    Ok(a)
}

/// One `XADD <stream> * value <payload>` per user, in RESP, built once.
fn commands(a: &Args) -> Vec<Vec<u8>> {
    (0..a.users)
        .map(|u| {
            let payload = a.payload.replace("__rand_int__", &format!("{u:012}"));
            redis::cmd("XADD")
                .arg(&a.stream)
                .arg("*")
                .arg("value")
                .arg(payload)
                .get_packed_command()
        })
        .collect()
}

/// What one connection saw: a latency in µs per answered command, and the errors.
struct Seen {
    latencies_us: Vec<u32>,
    errors: u64,
    sent: u64,
}

/// Sends `total` commands at `rate` a second from `t0` on one connection, reading the replies on a
/// second thread.
fn connection(
    port: u16,
    cmds: &[Vec<u8>],
    rate: f64,
    total: u64,
    t0: Instant,
    seed: u64,
) -> Result<Seen, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let reader = stream.try_clone().map_err(|e| e.to_string())?;
    // The replies stop coming when the server stalls for good: give up a while after the last
    // command was due.
    let last_due = t0 + Duration::from_secs_f64(total as f64 / rate);
    reader
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let receiver = std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 16, reader);
        let mut seen = Seen {
            latencies_us: Vec::with_capacity(total as usize),
            errors: 0,
            sent: 0,
        };
        let mut line = Vec::new();
        let mut k: u64 = 0;
        while k < total {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() > last_due + Duration::from_secs(30) {
                        break;
                    }
                    continue;
                }
                Err(_) => break,
            }
            match line.first() {
                // A bulk reply (the new ID): its text follows on the next line.
                Some(b'$') => {
                    let mut id = Vec::new();
                    if r.read_until(b'\n', &mut id).is_err() {
                        break;
                    }
                }
                Some(b'-') => seen.errors += 1,
                _ => {}
            }
            let due = t0 + Duration::from_secs_f64(k as f64 / rate);
            let us = Instant::now().saturating_duration_since(due).as_micros();
            seen.latencies_us
                .push(u32::try_from(us).unwrap_or(u32::MAX));
            k += 1;
        }
        seen
    });
    let mut w = stream;
    let mut rng = seed | 1;
    let mut sent: u64 = 0;
    let mut out = Vec::with_capacity(1 << 16);
    while sent < total {
        let now = Instant::now();
        let due = ((now.saturating_duration_since(t0).as_secs_f64() * rate) as u64 + 1).min(total);
        if due > sent {
            out.clear();
            while sent < due {
                // xorshift64: which user this command writes for.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                out.extend_from_slice(&cmds[(rng % cmds.len() as u64) as usize]);
                sent += 1;
            }
            if w.write_all(&out).is_err() {
                break;
            }
        } else {
            let next = t0 + Duration::from_secs_f64(sent as f64 / rate);
            std::thread::sleep(
                next.saturating_duration_since(now)
                    .min(Duration::from_micros(200)),
            );
        }
    }
    let mut seen = receiver
        .join()
        .map_err(|_| "the reply reader failed".to_string())?;
    seen.sent = sent;
    Ok(seen)
}

fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

fn main() {
    let a = common::or_usage("xadd_load", parse_args());
    let cmds = commands(&a);
    let per_conn_rate = a.rate / a.connections as f64;
    let per_conn_total = (per_conn_rate * a.seconds).round() as u64;
    // Every connection starts on the same schedule, a moment from now (connecting takes time).
    let t0 = Instant::now() + Duration::from_millis(50);
    let started = Instant::now();
    let results: Vec<Result<Seen, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.connections)
            .map(|i| {
                let cmds = &cmds;
                s.spawn(move || {
                    connection(
                        a.port,
                        cmds,
                        per_conn_rate,
                        per_conn_total,
                        t0,
                        0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a connection failed".into()))
            })
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let (mut all, mut errors, mut sent) = (Vec::new(), 0u64, 0u64);
    for r in results {
        match r {
            Ok(seen) => {
                all.extend_from_slice(&seen.latencies_us);
                errors += seen.errors;
                sent += seen.sent;
            }
            Err(e) => {
                eprintln!("xadd_load: {e}");
                std::process::exit(1);
            }
        }
    }
    all.sort_unstable();
    let answered = all.len() as u64;
    let ms = |p: f64| percentile_ms(&all, p);
    let summary = serde_json::json!({
        "rate": a.rate,
        "seconds": a.seconds,
        "connections": a.connections,
        "sent": sent,
        "answered": answered,
        "errors": errors,
        "wall_s": wall,
        "answered_per_s": (answered as f64 / wall.max(1e-9)).round(),
        "p50_ms": ms(50.0),
        "p90_ms": ms(90.0),
        "p99_ms": ms(99.0),
        "p999_ms": ms(99.9),
        "max_ms": all.last().map_or(0.0, |&m| f64::from(m) / 1000.0),
    });
    println!("{summary}");
    if answered < sent {
        std::process::exit(1);
    }
}
