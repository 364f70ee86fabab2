//! The module's state and counters, and the one report `WB.STATUS` and `INFO writebehind` both show.
//!
//! Counters are atomics bumped by the pipeline threads without a lock (the per-reason tallies sit behind
//! a short mutex); the report reads them on the main thread. Both outputs derive from [`report`], so an
//! exporter scraping INFO and an operator typing `WB.STATUS` always see the same figures.

use std::sync::atomic::{AtomicU64, Ordering};

use redis_module::Context;

use super::control::{Pipeline, REGISTRY};
pub use crate::host::server::{maxmemory_policy, role};
use crate::host::stream;
pub use crate::host::Figure;
use crate::settings::{self, Key};

/// A warning when the policy can evict the stream (any `allkeys-*` policy: eviction deletes the
/// queue itself, with every entry not yet written).
pub fn eviction_warning(policy: &str) -> Option<String> {
    policy.starts_with("allkeys-").then(|| {
        format!(
            "maxmemory-policy {policy} can evict the stream and lose entries not yet written; use noeviction (or a volatile-* policy, the stream has no TTL)"
        )
    })
}

/// How long ago Redis received the oldest entry not yet written: the first after the written group
/// (or, for a group with a pending list, its lowest pending entry, else the first not delivered);
/// 0 when there is none.
fn oldest_unwritten_age_ms(
    ctx: &Context,
    stream_name: &str,
    group: &str,
    info: &stream::GroupInfo,
) -> u64 {
    let oldest = if info.pending > 0 {
        stream::lowest_pending(ctx, stream_name, group)
    } else if (info.lag != Some(0) || info.unwritten() != Some(0))
        && !info.last_delivered_id.is_empty()
    {
        let from = info
            .written
            .as_ref()
            .map_or(info.last_delivered_id.as_str(), |w| w.id.as_str());
        let after = format!("({from}");
        stream::call_read(
            ctx,
            "XRANGE",
            &[
                stream_name.as_bytes(),
                after.as_bytes(),
                b"+",
                b"COUNT",
                b"1",
            ],
        )
        .ok()
        .and_then(|v| stream::parse_entries(&v).into_iter().next())
        .map(|e| e.id)
    } else {
        None
    };
    let Some(id) = oldest.and_then(|id| crate::entry::EntryId::parse(&id).ok()) else {
        return 0;
    };
    let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
    now.saturating_sub(id.ms)
}

/// Entries delivered and not yet written: counted in the stream between the two groups (or the
/// pending list), or — where that says less, because the application trimmed or deleted entries the
/// module still holds, or Redis cannot tell — the module's own count of entries in flight.
fn pending(info: &stream::GroupInfo, p: &Pipeline) -> i64 {
    let held = p.metrics.in_flight.load(Ordering::Relaxed) as i64;
    info.unwritten().map_or(held, |n| n.max(held))
}

/// The figures of one stream (its length, what is delivered and not written — `pending` — and not
/// delivered, its dead letters), read under the lock.
fn stream_figures(ctx: &Context, p: &Pipeline, group: &str) -> Vec<(&'static str, Figure)> {
    let stream_name = p.source();
    let info = stream::group_info(ctx, stream_name, group).unwrap_or_default();
    let oldest = oldest_unwritten_age_ms(ctx, stream_name, group, &info);
    vec![
        ("stream_length", stream::length(ctx, stream_name).into()),
        ("pending", pending(&info, p).into()),
        ("lag", info.lag.unwrap_or(-1).into()),
        ("oldest_unwritten_age_ms", oldest.into()),
        ("last_delivered_id", info.last_delivered_id.into()),
        (
            "written_id",
            info.written.map(|w| w.id).unwrap_or_default().into(),
        ),
        ("dlq_length", stream::length(ctx, &p.names.dlq()).into()),
    ]
}

/// The counters of one pipeline.
fn counters(p: &Pipeline) -> Vec<(String, Figure)> {
    let mut out: Vec<(String, Figure)> = Vec::new();
    let mut put = |k: &str, v: Figure| out.push((k.to_string(), v));
    let m = &p.metrics;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    put("in_flight", get(&m.in_flight).into());
    put("in_flight_bytes", get(&m.in_flight_bytes).into());
    put("entries_read", get(&m.entries_read).into());
    put("entries_acked", get(&m.entries_acked).into());
    put("entries_committed", get(&m.entries_committed).into());
    put("batches", get(&m.batches).into());
    put("statements", get(&m.statements).into());
    put("retries", get(&m.retries).into());
    put("failed", get(&m.failed).into());
    put("dead_lettered", get(&m.dead_lettered).into());
    put("dropped_invalid", get(&m.dropped_invalid).into());
    put("lost_trimmed", get(&m.lost_trimmed).into());
    put("lost_deleted", get(&m.lost_deleted).into());
    put("dead_letter_errors", get(&m.dead_letter_errors).into());
    put("failovers", get(&m.failovers).into());
    {
        let t = m.tally.lock();
        put("records_written", t.records_written.into());
        let kind = |k: &str| t.by_kind.get(k).copied().unwrap_or(0);
        put("diagnostics", kind("diagnostic").into());
        put("restored_acked", kind("restored").into());
        put("users_written", t.users.into());
        put("repaired", t.repaired.into());
        put("track_ids_hashed", t.track_ids_hashed.into());
        put("skipped", t.skipped.values().sum::<u64>().into());
        for (reason, n) in &t.skipped {
            put(&format!("skipped_{reason}"), (*n).into());
        }
        put("rejected", t.rejected.values().sum::<u64>().into());
        for (reason, n) in &t.rejected {
            put(&format!("rejected_{reason}"), (*n).into());
        }
        for (reason, n) in &t.undecodable {
            put(&format!("undecodable_{reason}"), (*n).into());
        }
        for (by, n) in &t.stale_written {
            put(&format!("stale_written_{by}"), (*n).into());
        }
    }
    put("batch_latency_p50_ms", m.latency_percentile(50).into());
    put("batch_latency_p99_ms", m.latency_percentile(99).into());
    put("last_success_ms", get(&m.last_success_ms).into());
    put("last_error", m.last_error.lock().clone().into());
    put("blocked_code", m.blocked_code.lock().clone().into());
    put("id_regression", m.id_regression.lock().clone().into());
    out
}

/// Figures that combine over streams by their largest value, not their sum.
const BY_MAX: &[&str] = &[
    "batch_latency_p50_ms",
    "batch_latency_p99_ms",
    "last_success_ms",
    "oldest_unwritten_age_ms",
];

/// The figures of several streams as one: numbers added (or the largest, [`BY_MAX`]; an unknown
/// `lag` of -1 makes the total unknown), the first non-empty text; in first-seen order.
fn totals(parts: Vec<Vec<(String, Figure)>>) -> Vec<(String, Figure)> {
    let mut out: Vec<(String, Figure)> = Vec::new();
    for part in parts {
        for (k, v) in part {
            let Some(slot) = out.iter_mut().find(|(name, _)| *name == k) else {
                out.push((k, v));
                continue;
            };
            slot.1 = match (&slot.1, v) {
                (Figure::Int(a), Figure::Int(b)) if BY_MAX.contains(&k.as_str()) => {
                    Figure::Int((*a).max(b))
                }
                (Figure::Int(a), Figure::Int(b)) if k == "lag" && (*a < 0 || b < 0) => {
                    Figure::Int(-1)
                }
                (Figure::Int(a), Figure::Int(b)) => Figure::Int(a.saturating_add(b)),
                (Figure::Text(a), Figure::Text(b)) if a.is_empty() => Figure::Text(b),
                (kept, _) => kept.clone(),
            };
        }
    }
    out
}

/// The state of several streams in one word: the one that most needs an operator's eye.
fn summary_state<'a>(states: impl Iterator<Item = &'a str>) -> &'a str {
    const ORDER: &[&str] = &[
        "failed",
        "blocked",
        "retrying",
        "stopping",
        "stopped",
        "paused",
        "loading",
        "replica",
        "unconfigured",
        "starting",
        "dry-run",
        "running",
    ];
    let states: Vec<&str> = states.collect();
    ORDER
        .iter()
        .find_map(|w| states.iter().find(|s| *s == w).copied())
        .or_else(|| states.first().copied())
        .unwrap_or("not-served")
}

/// Every figure, in display order. Runs on the main thread; `live` is false while Redis writes a crash
/// report, when no command may run, and only counters are given.
///
/// With one stream (the default) the figures are that stream's. With `STREAM_SHARDS` > 1 the
/// top-level figures are the totals over the shard streams this node serves (`state`: the one
/// most in need of attention, `not-served` when it serves none), and `shard.<i>.*` gives each
/// shard stream's own, `shard.<i>.served` saying whether this node drains it now.
pub fn report(live: bool) -> Vec<(String, Figure)> {
    let home = stream::home().filter(|_| live);
    let mut out: Vec<(String, Figure)> = Vec::new();
    let mut put = |k: &str, v: Figure| out.push((k.to_string(), v));
    let s = settings::current();
    let all = REGISTRY.all();
    let served: Vec<bool> = all
        .iter()
        .map(|p| {
            home.as_ref()
                .is_none_or(|ctx| crate::host::cluster::serves(ctx, p.source()).is_ok())
        })
        .collect();
    let group = crate::pipeline::control::group_name(&s);
    // While Redis loads its AOF/RDB the main thread holds the lock the claimer waits for, so the
    // claimer cannot record `loading` itself: the server's own flag says it.
    let loading = home.as_ref().is_some_and(crate::host::server::loading);
    let state_of = |p: &Pipeline| match p.state() {
        "starting" | "running" | "retrying" if loading => "loading",
        s => s,
    };
    let state = summary_state(
        all.iter()
            .zip(&served)
            .filter(|(_, served)| **served)
            .map(|(p, _)| state_of(p)),
    );
    put("state", state.into());
    if let Some(ctx) = home.as_ref() {
        put("role", role(ctx).into());
    }
    put("version", env!("CARGO_PKG_VERSION").into());
    put("server", crate::host::server::current().describe().into());
    let sum = |f: &dyn Fn(&Pipeline) -> u64| -> u64 { all.iter().map(|p| f(p)).sum() };
    put("threads_alive", sum(&|p| p.threads_alive() as u64).into());
    put(
        "thread_restarts",
        sum(&|p| p.control.restarts.load(Ordering::Relaxed)).into(),
    );
    put(
        "background_commands",
        (crate::pipeline::background::running() as u64).into(),
    );
    put(
        "sync_writers_waiting",
        sum(&|p| crate::pipeline::waiters::count(p) as u64).into(),
    );
    put("stream", s.str(Key::RedisStream).into());
    put("stream_shards", s.int(Key::StreamShards).into());
    put(
        "streams_served",
        (served.iter().filter(|s| **s).count() as u64).into(),
    );
    put("group", group.as_str().into());
    put("consumer", s.str(Key::Consumer).into());
    put("db", s.int(Key::RedisDb).into());
    put(
        "dry_run",
        u64::from(crate::pipeline::control::dry_run(&s)).into(),
    );
    put(
        "snowflake",
        if s.snowflake_configured() {
            "configured"
        } else {
            "unconfigured"
        }
        .into(),
    );
    let sessions: Vec<&str> = all.iter().map(|p| p.session_state()).collect();
    put(
        "snowflake_session",
        ["failing", "dry-run", "ok", "idle"]
            .into_iter()
            .find(|w| sessions.contains(w))
            .unwrap_or("idle")
            .into(),
    );
    let per_stream: Vec<Vec<(&'static str, Figure)>> = match home.as_ref() {
        Some(ctx) => all.iter().map(|p| stream_figures(ctx, p, &group)).collect(),
        None => Vec::new(),
    };
    if let Some(ctx) = home.as_ref() {
        let mut mine: Vec<Vec<(String, Figure)>> = per_stream
            .iter()
            .zip(&served)
            .filter(|(_, served)| **served)
            .map(|(f, _)| f.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
            .collect();
        if all.len() > 1 {
            // One stream's newest delivered entry is not comparable with another's.
            for f in &mut mine {
                f.retain(|(k, _)| k != "last_delivered_id");
            }
        }
        let mut figures = totals(mine);
        // A node serving none of the streams has nothing of theirs: zero, not missing.
        for name in [
            "stream_length",
            "pending",
            "lag",
            "oldest_unwritten_age_ms",
            "dlq_length",
        ] {
            if !figures.iter().any(|(k, _)| k == name) {
                figures.push((name.to_string(), Figure::Int(0)));
            }
        }
        out.extend(figures);
        let policy = maxmemory_policy(ctx);
        out.push(("maxmemory_policy".into(), policy.as_str().into()));
        out.push((
            "eviction_warning".into(),
            eviction_warning(&policy).unwrap_or_default().into(),
        ));
    }
    let mut put = |k: &str, v: Figure| out.push((k.to_string(), v));
    let drain = super::governor::published(crate::pipeline::control::main());
    put("drain_mode", drain.mode.as_str().into());
    put(
        "main_thread_busy_pct",
        drain.busy_pct.map_or(-1, |p| p as i64).into(),
    );
    put(
        "host_cpu_stolen_pct",
        drain.stolen_pct.map_or(-1, |p| p as i64).into(),
    );
    put("drain_lock_share_pct", drain.share_pct.into());
    put("drain_claim_chunk", drain.chunk.into());
    put("drain_hold_target_us", drain.hold_target_us.into());
    put("drain_last_hold_us", drain.last_hold_us.into());
    put("drain_last_lock_wait_us", drain.last_lock_wait_us.into());
    put("drain_ack_chunk", drain.ack_chunk.into());
    put("drain_last_ack_hold_us", drain.last_ack_hold_us.into());
    put("drain_ack_holds", drain.ack_holds.into());
    put("drain_claims", drain.claims.into());
    put("lock_held_ms", crate::host::gil::held_ms().into());
    let each: Vec<Vec<(String, Figure)>> = all.iter().map(|p| counters(p)).collect();
    let mut shards: Vec<(String, Figure)> = Vec::new();
    if all.len() > 1 {
        for (i, p) in all.iter().enumerate() {
            let prefix = format!("shard.{i}.");
            shards.push((format!("{prefix}stream"), p.source().into()));
            shards.push((format!("{prefix}served"), u64::from(served[i]).into()));
            shards.push((format!("{prefix}state"), state_of(p).into()));
            if let Some(f) = per_stream.get(i) {
                shards.extend(f.iter().map(|(k, v)| (format!("{prefix}{k}"), v.clone())));
            }
            shards.extend(
                each[i]
                    .iter()
                    .filter(|(k, _)| SHARD_COUNTERS.contains(&k.as_str()))
                    .map(|(k, v)| (format!("{prefix}{k}"), v.clone())),
            );
        }
    }
    out.extend(totals(each));
    out.extend(shards);
    if let Some(mapped) = crate::pipeline::control::mapped() {
        for (name, text) in crate::pipeline::mapped::texts(&mapped) {
            out.push((name, text.into()));
        }
        for (name, n) in crate::pipeline::mapped::figures(&mapped) {
            out.push((name, (n as i64).into()));
        }
    }
    out
}

/// The counters `shard.<i>.*` repeats for each shard stream.
const SHARD_COUNTERS: &[&str] = &[
    "in_flight",
    "entries_read",
    "entries_committed",
    "records_written",
    "dead_lettered",
    "retries",
    "batch_latency_p99_ms",
    "last_success_ms",
    "last_error",
];
