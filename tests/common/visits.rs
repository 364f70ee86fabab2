//! Visit counts, `tracked_id|track_id` -> visits: what the entries of a stream add up to, and what
//! Snowflake's TRACKED holds, to compare the two.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::emulator::Emulator;
use super::redis_server::q;

/// A visited batch of one user, as the application writes it: `n` records of tracks `t<seq % 5>`,
/// `t<(seq + 1) % 5>`, ..., stamped now.
pub fn visited(user: &str, n: usize, seq: u64) -> String {
    let ts = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
    let records: Vec<Value> = (0..n)
        .map(|i| {
            json!({"id": user, "page_name": "search", "query_row_count": "3",
                "track_id": format!("t{}", (seq as usize + i) % 5), "track_title": "T",
                "track_type": "query", "track_url": "/t", "lastplus": ts, "action": "v"})
        })
        .collect();
    json!({"key": format!("userdata-events:{user}/visited"), "records": records}).to_string()
}

/// Adds the visits of every entry of `stream` (on the node `con` talks to) to `out`.
pub fn add_stream_visits(
    con: &mut redis::Connection,
    stream: &str,
    out: &mut BTreeMap<String, i64>,
) {
    let mut from = "-".to_string();
    loop {
        let page: Vec<(String, BTreeMap<String, String>)> =
            q(con, &["XRANGE", stream, &from, "+", "COUNT", "5000"]);
        let Some((last, _)) = page.last() else {
            break;
        };
        from = format!("({last}");
        for (_, fields) in &page {
            let v: Value = serde_json::from_str(&fields["value"]).expect("generated JSON");
            for r in v["records"].as_array().expect("records") {
                let key = format!(
                    "{}|{}",
                    r["id"].as_str().unwrap_or_default(),
                    r["track_id"].as_str().unwrap_or_default()
                );
                *out.entry(key).or_default() += 1;
            }
        }
    }
}

/// The visits of every entry of `stream` now.
pub fn stream_visits(con: &mut redis::Connection, stream: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    add_stream_visits(con, stream, &mut out);
    out
}

/// `visited_count` of every TRACKED row.
pub fn snowflake_visits(emu: &Emulator) -> BTreeMap<String, i64> {
    emu.sql("SELECT tracked_id, track_id, visited_count FROM TRACKED")
        .into_iter()
        .map(|r| {
            let n = r[2]
                .as_deref()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(-1.0) as i64;
            (
                format!(
                    "{}|{}",
                    r[0].clone().unwrap_or_default(),
                    r[1].clone().unwrap_or_default()
                ),
                n,
            )
        })
        .collect()
}

/// The rows where the two differ, one line each; empty when they agree.
pub fn differences(
    expected: &BTreeMap<String, i64>,
    actual: &BTreeMap<String, i64>,
) -> Vec<String> {
    let mut diffs: Vec<String> = expected
        .keys()
        .chain(actual.keys())
        .filter(|k| expected.get(*k) != actual.get(*k))
        .map(|k| {
            format!(
                "{k}: stream {:?} snowflake {:?}",
                expected.get(k),
                actual.get(k)
            )
        })
        .collect();
    diffs.dedup();
    diffs
}

/// Snowflake holds exactly the `expected` visits (none missing, none counted twice); gives their
/// total, which must not be zero.
pub fn assert_in_snowflake(expected: &BTreeMap<String, i64>, emu: &Emulator) -> i64 {
    let total: i64 = expected.values().sum();
    assert!(total > 0, "no entries were generated");
    let diffs = differences(expected, &snowflake_visits(emu));
    assert!(
        diffs.is_empty(),
        "Snowflake differs from the streams ({} of {} rows): {}",
        diffs.len(),
        expected.len(),
        diffs.join("; ")
    );
    total
}
