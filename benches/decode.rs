//! CPU cost per record of the pure core: decoding stream entries, applying the seed's rules, folding
//! a batch and serialising its MERGE binds — the work a drained record costs besides Redis and the
//! network.
//!
//! Runs on a generated stream that looks like production traffic: visits, saves, deletes and
//! create-users, one to three records per entry, repeated rows so the fold has work. Each stage is
//! timed with the thread's CPU clock over the whole stream, several rounds, and reported as µs per
//! record (median, best). `decode + rules (Value)` is the generic reader (a `serde_json::Value`
//! tree, then the shapes), kept callable as the reference the typed decoder must agree with; the
//! run checks that both give the same result for every entry before it times them.
//!
//!   scripts/bench decode [--entries N] [--rounds N] [--batch N] [--typed-only]
//!
//! `--typed-only` leaves the reference out of the timed rounds (for a profiler's view of the path
//! the module runs).

use std::time::Duration;

use redis_writebehind::entry::{self, fields, Decoded, EntryId, Rules};
use redis_writebehind::sql::{self, Tables};

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A small deterministic generator (xorshift64*), so every run times the same stream.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time in seconds.
fn utc(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// One generated entry: its ID and fields.
fn stream(entries: usize) -> Vec<(EntryId, Fields)> {
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    let start_ms: u64 = 1_762_172_400_000;
    let mut out = Vec::with_capacity(entries);
    for i in 0..entries {
        let ms = start_ms + i as u64;
        let id = EntryId::new(ms, 0);
        let user = g.below(300);
        let uid = format!("user.name{user}-{:06x}", user * 7919);
        let now = i64::try_from(ms / 1000).unwrap_or_default();
        let json = match g.below(20) {
            0..=1 => format!(r#"{{"user_email":"user.name{user}@example.com"}}"#),
            kind => {
                let saved = kind >= 12;
                let n = 1 + g.below(3);
                let records: Vec<String> = (0..n)
                    .map(|_| {
                        let item = g.below(25);
                        let action = match (saved, g.below(4)) {
                            (false, _) => "v",
                            (true, 0) => "d",
                            (true, _) => "s",
                        };
                        let age = i64::try_from(g.below(20)).unwrap_or_default();
                        format!(
                            r#"{{"id":"{uid}","track_id":"item-{item:04}","track_title":"Quarterly report {item}: \"revenue\" by region","track_url":"/search?q=report+{item}&page=2","lastplus":"{}","action":"{action}","page_name":"search","query_row_count":"{}","track_type":"query"}}"#,
                            utc(now - age),
                            g.below(500)
                        )
                    })
                    .collect();
                format!(
                    r#"{{"key":"userdata-events:{uid}/{}","records":[{}]}}"#,
                    if saved { "saved" } else { "visited" },
                    records.join(",")
                )
            }
        };
        out.push((id, vec![(b"value".to_vec(), json.into_bytes())]));
    }
    out
}

/// The reference reader: the payload as a `serde_json::Value`, then the shapes.
fn decode_value(id: EntryId, f: &Fields, rules: &Rules) -> Decoded {
    match fields::select(f, rules) {
        Ok(s) => entry::decode::decode_document(id, s.doc, s.repair, rules)
            .unwrap_or_else(|reason| Decoded::Undecodable { id, reason }),
        Err(e) => Decoded::Undecodable {
            id,
            reason: e.into(),
        },
    }
}

/// CPU time of this thread.
fn cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or_default(),
        u32::try_from(ts.tv_nsec).unwrap_or_default(),
    )
}

fn records(decoded: &[Decoded]) -> usize {
    decoded
        .iter()
        .map(|d| match d {
            Decoded::Tracked(b) => b.events.len(),
            Decoded::CreateUser(_) => 1,
            _ => 0,
        })
        .sum()
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--entries", 20_000);
    let rounds = arg(&args, "--rounds", 15).max(1);
    let batch = arg(&args, "--batch", 500).max(1);
    let typed_only = args.iter().any(|a| a == "--typed-only");
    let rules = Rules::default();
    let tables = Tables::default();
    let max_bytes = 900_000;
    let input = stream(n);
    let bytes: usize = input.iter().map(|(_, f)| f[0].1.len()).sum();

    let decoded: Vec<Decoded> = input
        .iter()
        .map(|(id, f)| entry::decode(*id, f, &rules))
        .collect();
    for ((id, f), d) in input.iter().zip(&decoded) {
        let reference = decode_value(*id, f, &rules);
        if *d != reference {
            eprintln!("entry {id}: the decoders disagree:\n{d:?}\n{reference:?}");
            std::process::exit(1);
        }
        if d.is_undecodable() {
            eprintln!("entry {id} is undecodable: {d:?}");
            std::process::exit(1);
        }
    }
    let recs = records(&decoded);

    let mut stages: [(&str, Vec<f64>); 4] = [
        ("decode + rules", Vec::new()),
        ("decode + rules (Value)", Vec::new()),
        ("fold + serialise", Vec::new()),
        ("total", Vec::new()),
    ];
    let mut sink = 0usize;
    for _ in 0..rounds {
        let t = cpu();
        let fresh: Vec<Decoded> = input
            .iter()
            .map(|(id, f)| entry::decode(*id, f, &rules))
            .collect();
        let decode = cpu() - t;
        let t = cpu();
        let reference: Vec<Decoded> = if typed_only {
            Vec::new()
        } else {
            input
                .iter()
                .map(|(id, f)| decode_value(*id, f, &rules))
                .collect()
        };
        let value = cpu() - t;
        let t = cpu();
        for chunk in fresh.chunks(batch) {
            for p in sql::plan(chunk, &tables, max_bytes) {
                sink += p.statement.size();
            }
        }
        let plan = cpu() - t;
        sink += reference.len();
        let per = |d: Duration| d.as_secs_f64() * 1e6 / recs as f64;
        stages[0].1.push(per(decode));
        stages[1].1.push(per(value));
        stages[2].1.push(per(plan));
        stages[3].1.push(per(decode + plan));
    }

    println!(
        "{n} entries, {recs} records, {:.0} bytes per entry, batches of {batch}, {rounds} rounds (thread CPU time)",
        bytes as f64 / n as f64
    );
    println!("{:<26} {:>12} {:>12}", "stage", "µs/record", "best");
    let mut medians = Vec::new();
    for (name, mut v) in stages {
        v.sort_by(f64::total_cmp);
        let median = v.get(v.len() / 2).copied().unwrap_or_default();
        let best = v.first().copied().unwrap_or_default();
        println!("{name:<26} {median:>12.3} {best:>12.3}");
        medians.push(median);
    }
    if let [typed, value, ..] = medians[..] {
        println!("decode: typed / Value = {:.2}", typed / value);
    }
    std::hint::black_box(sink);
}
