//! The module's state and counters, and the one report `WB.STATUS` and `INFO writebehind` both show.
//!
//! Counters are atomics bumped by the pipeline threads without a lock (the per-reason tallies sit behind
//! a short mutex); the report reads them on the main thread. Both outputs derive from [`report`], so an
//! exporter scraping INFO and an operator typing `WB.STATUS` always see the same figures.

use std::sync::atomic::{AtomicU64, Ordering};

use redis_module::Context;

use super::control::METRICS;
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

/// How long ago Redis received the oldest entry not yet written: the lowest pending entry, or else
/// the first one not yet delivered to the group; 0 when there is none.
fn oldest_unwritten_age_ms(
    ctx: &Context,
    stream_name: &str,
    group: &str,
    info: &stream::GroupInfo,
) -> u64 {
    let oldest = if info.pending > 0 {
        stream::lowest_pending(ctx, stream_name, group)
    } else if info.lag != Some(0) && !info.last_delivered_id.is_empty() {
        let after = format!("({}", info.last_delivered_id);
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

/// Every figure, in display order. Runs on the main thread; `live` is false while Redis writes a crash
/// report, when no command may run, and only counters are given.
pub fn report(live: bool) -> Vec<(String, Figure)> {
    let home = stream::home().filter(|_| live);
    let mut out: Vec<(String, Figure)> = Vec::new();
    let mut put = |k: &str, v: Figure| out.push((k.to_string(), v));
    let s = settings::current();
    // While Redis loads its AOF/RDB the main thread holds the lock the claimer waits for, so the
    // claimer cannot record `loading` itself: the server's own flag says it.
    let loading = home.as_ref().is_some_and(crate::host::server::loading);
    let state = match crate::pipeline::control::state() {
        "starting" | "running" | "retrying" if loading => "loading",
        s => s,
    };
    put("state", state.into());
    if let Some(ctx) = home.as_ref() {
        put("role", role(ctx).into());
    }
    put("version", env!("CARGO_PKG_VERSION").into());
    put("server", crate::host::server::current().describe().into());
    put(
        "threads_alive",
        (crate::pipeline::control::threads_alive() as u64).into(),
    );
    put(
        "thread_restarts",
        crate::pipeline::control()
            .restarts
            .load(Ordering::Relaxed)
            .into(),
    );
    put(
        "background_commands",
        (crate::pipeline::background::running() as u64).into(),
    );
    put(
        "sync_writers_waiting",
        (crate::pipeline::waiters::count(crate::pipeline::control::main()) as u64).into(),
    );
    put("stream", s.str(Key::RedisStream).into());
    put("group", crate::pipeline::control::group_name(&s).into());
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
    put(
        "snowflake_session",
        crate::pipeline::control::session_state().into(),
    );
    if let Some(ctx) = home.as_ref() {
        let stream_name = s.str(Key::RedisStream);
        let info = stream::group_info(ctx, stream_name, &crate::pipeline::control::group_name(&s))
            .unwrap_or_default();
        put("stream_length", stream::length(ctx, stream_name).into());
        put("pending", info.pending.into());
        put("lag", info.lag.unwrap_or(-1).into());
        put(
            "oldest_unwritten_age_ms",
            oldest_unwritten_age_ms(
                ctx,
                stream_name,
                &crate::pipeline::control::group_name(&s),
                &info,
            )
            .into(),
        );
        put("last_delivered_id", info.last_delivered_id.into());
        put(
            "dlq_length",
            stream::length(ctx, &stream::dlq_name(stream_name)).into(),
        );
        let policy = maxmemory_policy(ctx);
        put("maxmemory_policy", policy.as_str().into());
        put(
            "eviction_warning",
            eviction_warning(&policy).unwrap_or_default().into(),
        );
    }
    let drain = super::governor::published(crate::pipeline::control::main());
    put("drain_mode", drain.mode.as_str().into());
    put(
        "main_thread_busy_pct",
        drain.busy_pct.map_or(-1, |p| p as i64).into(),
    );
    put("drain_claim_chunk", drain.chunk.into());
    put("drain_last_hold_us", drain.last_hold_us.into());
    put("drain_last_lock_wait_us", drain.last_lock_wait_us.into());
    put("lock_held_ms", crate::host::gil::held_ms().into());
    let m = &*METRICS;
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
    if let Some(mapped) = crate::pipeline::control::mapped() {
        for (name, text) in crate::pipeline::mapped::texts(&mapped) {
            put(&name, text.into());
        }
        for (name, n) in crate::pipeline::mapped::figures(&mapped) {
            put(&name, (n as i64).into());
        }
    }
    out
}
