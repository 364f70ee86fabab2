//! The claimer: reads entries through the consumer group and routes them to the workers.
//!
//! It waits until Redis has finished loading and is a primary; then it first takes over every entry
//! still pending in the group (claimed before a crash, a restart or a failover — `XAUTOCLAIM` from
//! `0-0`), then reads new ones (`XREADGROUP ... >`). With `ACK_MODE=WRITTEN_GROUP` it instead sets the
//! group back to its written group (everything after it may not be in Snowflake) and reads from there
//! with `NOACK`: Redis keeps no pending list, the module's [`progress`](super::progress) does. Each
//! read is one bounded chunk under the lock, and
//! the number of claimed-but-unwritten entries never exceeds `MAX_IN_FLIGHT`, so the module's
//! memory stays bounded however long the stream grows. Decoding happens off the lock.
//!
//! How much it claims, and how often, the [`governor`](super::governor) decides: each hold is sized
//! to last about a millisecond, and while Redis's main thread is saturated the claims are paced to
//! the time its clients leave, down to `DRAIN_MIN_RECORDS_PER_SECOND`.

use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::host::server::{KnownPhase, Phase as Server, NOT_PRIMARY};

use super::control::{dry_run, group_name, Pipeline, State};
use super::governor::{self, Budget, ChunkSizer, Governor, MainThread};
use super::worker::{Inbox, Work};
use crate::entry::{self, EntryId, Rules};
use crate::host::gil::Gil;
use crate::host::logging;
use crate::host::stream::{self, Claimed};
use crate::settings::{self, Key};
use redis_module::Context;

/// Starts the claimer of `pipeline`, and with `eager` its workers, housekeeper and deadline thread
/// ([`crew`]) at once (at load, on the main thread). Otherwise — on a cluster — they start when the
/// claimer first finds its stream served by this node: a node runs only a claimer for each shard
/// stream it does not serve.
pub fn spawn(pipeline: &'static Pipeline, eager: bool) -> Result<JoinHandle<()>, String> {
    let gil = Gil::new().ok_or("could not create the claimer context")?;
    // Restarted after a panic: start-up tasks are not run again, the crew is not started again.
    let mut started = false;
    let mut workers: Vec<Inbox> = if eager { crew(pipeline)? } else { Vec::new() };
    pipeline.spawn_supervised("wb-claimer", move || {
        run(pipeline, &gil, &mut workers, &mut started)
    })
}

/// Starts the rest of `p`'s threads: `WORKERS` workers, the housekeeper and the deadline thread;
/// gives back the workers' inboxes. Under the lock (each thread's context is made under it).
fn crew(p: &'static Pipeline) -> Result<Vec<Inbox>, String> {
    let n = settings::current().int(Key::Workers).clamp(1, 64) as usize;
    let (inboxes, handles) = super::worker::spawn(p, n)?;
    let housekeeper = super::housekeeping::spawn(p)?;
    let deadlines = super::waiters::spawn(p)?;
    let mut threads = p.control.threads.lock();
    threads.extend(handles);
    threads.extend([housekeeper, deadlines]);
    Ok(inboxes)
}

/// An idle claimer looks for new entries again after [`IDLE_LOOK_MIN`], doubling the wait each time
/// it finds none, up to [`IDLE_LOOK_MAX`] ([`idle_look_max`]): a stream written every few
/// milliseconds is looked at as often, an idle one forty times a second, each look one short lock
/// hold.
///
/// Nothing of the module runs on the application's `XADD`. A keyspace notification would wake the
/// claimer at once, but the server makes a module context for every notification it delivers,
/// whether or not anyone waits: it cost ~10 % of pipelined `XADD` throughput (docs/performance.md).
/// `WB.WRITE` and `WB.FLUSH` wake the claimer themselves.
const IDLE_LOOK_MIN: Duration = Duration::from_millis(1);
const IDLE_LOOK_MAX: Duration = Duration::from_millis(25);
/// The longest wait between looks, however many streams.
const IDLE_LOOK_CAP: Duration = Duration::from_millis(250);

/// The longest wait between an idle claimer's looks when the node runs `streams` claimers (shard
/// streams): [`IDLE_LOOK_MAX`] for every four, so that idle streams cost the main thread about as
/// many lock holds a second however many there are, up to [`IDLE_LOOK_CAP`].
fn idle_look_max(streams: usize) -> Duration {
    let fours = u32::try_from(streams.max(1).div_ceil(4)).unwrap_or(u32::MAX);
    IDLE_LOOK_MAX.saturating_mul(fours).min(IDLE_LOOK_CAP)
}

/// Where the claimer reads through its group, and what it knows of it. Made afresh after a start, a
/// promotion, a move away or a failed read: what it read is forgotten, pending entries are taken
/// over first (or, with a written group, the group is set back to it), and the group is checked.
struct Reading {
    /// Pending entries (or the written group) come before new ones.
    recovering: bool,
    /// Where taking over pending entries goes on (`XAUTOCLAIM`'s cursor).
    cursor: String,
    /// The group known to exist.
    group_ready: Option<String>,
    /// The group's read counter after this claimer's last read (see the trimming check).
    last_entries_read: Option<i64>,
}

impl Reading {
    fn afresh() -> Reading {
        Reading {
            recovering: true,
            cursor: "0-0".into(),
            group_ready: None,
            last_entries_read: None,
        }
    }

    /// Takes over every pending entry again, from the first.
    fn recover(&mut self) {
        self.recovering = true;
        self.cursor = "0-0".into();
    }
}

fn run(p: &'static Pipeline, gil: &Gil, workers: &mut Vec<Inbox>, started: &mut bool) {
    let c = &p.control;
    let mut reading = Reading::afresh();
    // The size of the entries read last, for the next read's count.
    let mut avg_entry_bytes: u64 = 64 << 10;
    let mut main_thread = MainThread::new();
    let mut governor = Governor::default();
    if !main_thread.measurable() {
        // Nothing to yield to as far as the drain can tell: full speed from the start.
        governor.observe(None);
    }
    let mut sizer = ChunkSizer::default();
    let mut idle_look = IDLE_LOOK_MIN;
    let longest_look = idle_look_max(super::control::REGISTRY.all().len());
    let epoch = Instant::now();
    let on_cluster = gil.with(crate::host::cluster::enabled);
    let mut known = KnownPhase::default();
    loop {
        if c.stopping() {
            return;
        }
        let now = Instant::now();
        if main_thread.due(now) {
            // The first sample only starts the clock (and says nothing). A sample that finds the
            // main thread no longer measurable (its /proc files unreadable) means full speed, as
            // at start.
            let sample = main_thread.sample(now);
            if sample.is_some() || !main_thread.measurable() {
                governor.observe(sample);
            }
            governor::publish_stolen(p, main_thread.stolen());
        }
        crate::host::gil::set_saturated(governor.clients_saturate());
        let snap = settings::current();
        // Paused: park without touching the Redis lock (MODULE UNLOAD waits for this thread).
        if c.paused.load(Ordering::Relaxed) {
            c.set_state(State::Paused);
            c.wait_wake(Duration::from_millis(100));
            continue;
        }
        // Not this node's to drain now: a replica, or on a cluster a node that does not serve the
        // stream's slot (before the cluster is formed, once the slot has moved away). What it read
        // is forgotten: when the stream is its own again, pending entries are taken over first.
        // Once this server is known to be a ready primary, each claim checks that again inside its
        // own lock hold, so waiting turns take no lock of their own.
        let away = match known.phase(gil) {
            Server::Loading => {
                c.set_state(State::Loading);
                c.wait_wake(Duration::from_millis(50));
                continue;
            }
            Server::Replica => Some((State::Replica, Duration::from_millis(200))),
            // Once reading, the check inside each read's own lock hold is enough: a refusal there
            // forgets the group, and the next turn looks here again.
            Server::Primary if on_cluster && reading.group_ready.is_none() => {
                match gil.with(|ctx| crate::host::cluster::serves(ctx, p.source())) {
                    Ok(()) => None,
                    Err(why) => {
                        if c.state() != State::Elsewhere {
                            logging::info(&format!("{why}: another primary drains it"));
                        }
                        // One look a second: a node takes the lock for a stream it does not serve
                        // only this often (the slot comes by a failover or a resharding).
                        Some((State::Elsewhere, Duration::from_secs(1)))
                    }
                }
            }
            Server::Primary => None,
        };
        if let Some((state, look_again)) = away {
            known.lost();
            c.set_state(state);
            reading = Reading::afresh();
            c.wait_wake(look_again);
            continue;
        }
        if workers.is_empty() {
            match gil.with(|_| crew(p)) {
                Ok(inboxes) => *workers = inboxes,
                Err(e) => {
                    logging::warning(&format!("{}: {e}; trying again", p.source()));
                    p.metrics.set_error(&e);
                    c.wait_wake(Duration::from_secs(1));
                    continue;
                }
            }
        }
        // Start-up tasks (restore, legacy import) run once, when this server is first a ready primary.
        if !*started {
            *started = true;
            if snap.bool(Key::ListStreamKeysOnStart) {
                list_stream_keys(gil);
            }
            // A new context must be made under the lock (it creates a Redis client).
            if let Some(task_gil) = gil.with(|_| Gil::new()) {
                if let Err(e) = p.spawn_thread("wb-startup", move || startup_tasks(p, &task_gil)) {
                    logging::warning(&format!("start-up restore and import not run: {e}"));
                }
            }
        }
        if c.paused.load(Ordering::Relaxed) {
            c.set_state(State::Paused);
            c.wait_wake(Duration::from_millis(200));
            continue;
        }
        if super::control::unconfigured(&snap) {
            c.set_state(State::Unconfigured);
            c.wait_wake(Duration::from_secs(1));
            continue;
        }
        c.set_state(if dry_run(&snap) {
            State::DryRun
        } else {
            State::Running
        });

        let in_flight = p.metrics.in_flight.load(Ordering::Relaxed);
        // A thread died holding claimed entries (or, with a written group, a read failed): claim
        // nothing new until every entry still in the module is settled, then take over everything
        // pending (what the dead thread held included), or set the group back to the written group.
        if c.recover.load(Ordering::Relaxed) {
            if in_flight > 0 {
                c.wait_settled(Duration::from_millis(100));
                continue;
            }
            c.recover.store(false, Ordering::Relaxed);
            reading.recover();
        }
        // While Snowflake is failing, the workers are retrying what they hold: claiming more would only
        // move entries from the stream into module memory. Keep one batch per worker until it recovers.
        let mut cap = snap.uint(Key::MaxInFlight).max(1);
        if c.degraded.load(Ordering::Relaxed) {
            cap = cap.min(snap.uint(Key::Workers).max(1) * snap.uint(Key::BatchMaxEntries).max(1));
        }
        // Bounded by bytes as well: the module's memory counts against maxmemory.
        let held_bytes = p.metrics.in_flight_bytes.load(Ordering::Relaxed);
        if in_flight >= cap || held_bytes >= super::control::MAX_IN_FLIGHT_BYTES {
            c.wait_settled(Duration::from_millis(100));
            continue;
        }
        // One read copies whole entries: after large ones, read fewer at a time.
        let by_bytes = (super::control::CLAIM_CHUNK_BYTES / avg_entry_bytes.max(1)).max(1);
        let most = snap
            .uint(Key::ClaimChunk)
            .min(cap - in_flight)
            .min(by_bytes)
            .max(1) as usize;
        // Bounded by time too: as many as fit in one short hold (at full speed; while yielding the
        // floor comes first, in few holds).
        let fits = sizer.count(most, governor.hold_target());
        let count = match governor.budget(
            epoch.elapsed(),
            snap.uint(Key::DrainMinRecordsPerSecond),
            fits,
            most,
        ) {
            Budget::Claim(n) => n,
            Budget::Wait(d) => {
                governor::publish(p, &governor, fits);
                // Not woken by the application's XADDs: while yielding, they are why it waits.
                pause(p, d.min(governor::SAMPLE_EVERY));
                continue;
            }
        };
        governor::publish(p, &governor, count);
        let stream_name = p.source().to_string();
        let group = group_name(&snap);
        let consumer = snap.str(Key::Consumer).to_string();
        let written_mode = super::control::written_mode(&snap);

        let lock_asked = Instant::now();
        let mut hold = (Duration::ZERO, Duration::ZERO);
        let read = gil.with(|ctx| {
            let lock_taken = Instant::now();
            let read = (|| -> Result<(Claimed, Option<String>), String> {
                crate::host::server::require_primary(ctx)?;
                crate::host::cluster::serves(ctx, &stream_name)?;
                if reading.group_ready.as_deref() != Some(group.as_str()) {
                    stream::ensure_group(ctx, &stream_name, &group)?;
                    if written_mode {
                        stream::ensure_written_group(ctx, &stream_name, &group)?;
                    }
                }
                if reading.recovering && written_mode {
                    reading.last_entries_read = rewind(p, ctx, &stream_name, &group)?;
                    reading.recovering = false;
                }
                if reading.recovering {
                    if reading.cursor == "0-0" {
                        leave_written_group(ctx, &stream_name, &group)?;
                    }
                    let step = stream::autoclaim(
                        ctx,
                        &stream_name,
                        &group,
                        &consumer,
                        &reading.cursor,
                        count,
                    )?;
                    p.metrics.report_trimmed(
                        step.deleted.len() as u64,
                        &stream_name,
                        &format!("pending entries {}", preview(&step.deleted)),
                    );
                    return Ok((step.entries.into(), Some(step.next)));
                }
                // The group's read counter before and after tells whether entries were trimmed away
                // between the last delivered entry and the next one (Redis counts every entry ever added).
                // Redis may not know the counter (after deletions); the previous read's value then
                // stands in for it, since only this claimer reads through the group.
                // A group that was never delivered anything has read nothing, even where Redis
                // cannot give the counter (created on a stream already trimmed).
                let before = stream::group_info(ctx, &stream_name, &group)
                    .and_then(|g| {
                        g.entries_read
                            .or_else(|| (g.last_delivered_id == "0-0").then_some(0))
                    })
                    .or(reading.last_entries_read);
                let entries = stream::read_group_chunk(
                    ctx,
                    &stream_name,
                    &group,
                    &consumer,
                    ">",
                    count,
                    written_mode,
                )?;
                if !entries.is_empty() {
                    let after =
                        stream::group_info(ctx, &stream_name, &group).and_then(|g| g.entries_read);
                    if after.is_some() {
                        reading.last_entries_read = after;
                    }
                    let skipped = match (before, after) {
                        (Some(b), Some(a)) => (a - b - entries.len() as i64).max(0) as u64,
                        _ => 0,
                    };
                    if written_mode {
                        // Redis hands out well-formed IDs.
                        let ids: Vec<EntryId> = entries
                            .iter()
                            .map(|e| EntryId::parse(e.id).unwrap_or_default())
                            .collect();
                        // Reported once the written group moves past them: entries read again
                        // after a crash are counted by one process only.
                        p.progress.delivered(&ids, after, skipped);
                    } else if skipped > 0 {
                        let first = entries.first().map_or("?", |e| e.id);
                        p.metrics.report_trimmed(
                            skipped,
                            &stream_name,
                            &super::metrics::never_read(first),
                        );
                    }
                }
                Ok((entries, None))
            })();
            // In flight from the moment they are claimed, under the same lock hold, so a stream
            // deleted right after never counts them as lost (they are still written).
            if let Ok((entries, _)) = &read {
                p.metrics
                    .in_flight
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
            }
            hold = (lock_taken - lock_asked, lock_taken.elapsed());
            read
        });
        let (waited, held) = hold;
        governor::publish_hold(p, held, waited);
        let (entries, next) = match read {
            Ok(r) => {
                reading.group_ready = Some(group.clone());
                known.confirmed();
                r
            }
            // No longer a ready primary (a REPLICAOF, a failover, a load): the next turn says which.
            Err(e) if e == NOT_PRIMARY => {
                known.lost();
                reading = Reading::afresh();
                continue;
            }
            Err(e) => {
                // The stream or group was deleted, or Redis refused: re-create and retry shortly.
                // A slot that moved away is not a failure: the next turn says `not-served`.
                if reading.group_ready.is_some() && !crate::host::cluster::elsewhere(&e) {
                    logging::warning(&format!(
                        "reading {stream_name} through {group} failed: {e}"
                    ));
                }
                // A re-created stream starts its own count, and is read from its written group.
                reading = Reading::afresh();
                // With a written group the rewind re-delivers what follows it: it waits until what
                // the module holds is settled, so no entry is in flight twice (a second dead-letter
                // copy).
                if written_mode {
                    c.recover.store(true, Ordering::Relaxed);
                }
                c.wait_wake(Duration::from_millis(200));
                continue;
            }
        };
        sizer.record(held, entries.len());
        governor.spent(entries.len());
        governor.held(lock_asked.duration_since(epoch) + waited, held);
        if !entries.is_empty() {
            avg_entry_bytes =
                entries.iter().map(|e| e.size() as u64).sum::<u64>() / entries.len() as u64;
        }
        if let Some(next) = next {
            if next == "0-0" {
                reading.recovering = false;
            }
            reading.cursor = next;
        }
        if entries.is_empty() {
            if !reading.recovering {
                c.wait_wake(idle_look);
                idle_look = (idle_look * 2).min(longest_look);
            }
            continue;
        }
        idle_look = IDLE_LOOK_MIN;
        p.drain.claims.fetch_add(1, Ordering::Relaxed);
        // Fewer new entries than asked for: the claim has caught up with the application's writes.
        let caught_up = !reading.recovering && entries.len() < count;
        dispatch(
            p,
            entries,
            workers,
            &stream_name,
            &group,
            &Rules::from_settings(&snap),
            snap.bool(Key::LogRaw),
        );
        if caught_up {
            c.wait_wake(caught_up_linger(&snap));
        }
    }
}

/// How long a claimer that has caught up with the application's writes waits before it claims
/// again: a tenth of `BATCH_LINGER_MS`, at most [`CAUGHT_UP_LINGER_MAX`] (5 ms by default).
///
/// A claimer that has caught up and claims again at once finds a handful of entries each time (at
/// 60,000 XADDs a second, ~5 every 80 µs): each claim's fixed work under the Redis lock (the group's
/// state before and after, the read itself) then outweighs its entries', and the module's threads
/// wake thousands of times a second. Waiting a few milliseconds lets the entries gather in the
/// stream instead: measured at 60,000 XADDs a second, the module's threads used a third less CPU
/// and the main thread was as busy as without the drain (docs/performance.md). The entries waited
/// anyway: a worker holds a batch open for `BATCH_LINGER_MS` (50 ms by default) for more to come.
/// `WB.FLUSH` and `WB.WRITE` end the wait at once.
fn caught_up_linger(snap: &settings::Snapshot) -> Duration {
    Duration::from_millis(snap.uint(Key::BatchLingerMs) / 10).min(CAUGHT_UP_LINGER_MAX)
}

/// The longest wait of a claimer that has caught up ([`caught_up_linger`]).
const CAUGHT_UP_LINGER_MAX: Duration = Duration::from_millis(5);

/// With `STREAM_SHARDS` > 1, why an entry cannot be written from this shard stream: a row it writes
/// belongs to another shard. Each row is written from one stream only, since the entry IDs of two
/// streams are not comparable (a row remembers the newest entry applied to it).
fn wrong_shard(p: &Pipeline, decoded: &entry::Decoded) -> Option<entry::DecodeError> {
    let shard = p.names.shard?;
    let (row, home) = shard.stray(decoded.row_keys_each())?;
    let home = p.names.sibling(home);
    Some(entry::DecodeError::WrongShard {
        row: crate::entry::rules::shown(row),
        home,
    })
}

/// Sleeps `d`, in short steps so stopping and pausing are seen at once.
fn pause(p: &Pipeline, d: Duration) {
    let c = &p.control;
    let until = Instant::now() + d;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || c.stopping() || c.paused.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// The worker of a row key.
fn worker_of(key: &str, workers: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % workers.max(1) as u64) as usize
}

/// Where an entry goes: the one worker owning every row it writes, or — for an entry whose rows
/// belong to several workers — `Spanning(w)`: it must run alone, after everything sent before it
/// and before anything sent after it, so no row sees its updates out of stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    To(usize),
    Spanning(usize),
}

fn route<'a>(row_keys: impl IntoIterator<Item = &'a str>, entry_id: &str, workers: usize) -> Route {
    let mut owners = row_keys.into_iter().map(|k| worker_of(k, workers));
    match owners.next() {
        None => Route::To(worker_of(entry_id, workers)),
        Some(first) if owners.all(|w| w == first) => Route::To(first),
        Some(first) => Route::Spanning(first),
    }
}

/// Waits until every entry sent to the workers is settled (`unsent`: entries of this claim not sent
/// yet, already counted in flight); `false` when stopping.
fn drained(p: &Pipeline, unsent: u64) -> bool {
    let c = &p.control;
    while p.metrics.in_flight.load(Ordering::Relaxed) > unsent {
        if c.stopping() {
            return false;
        }
        c.wait_settled(Duration::from_millis(50));
    }
    true
}

/// Decodes entries and sends each to the worker owning its rows (see [`route`]).
fn dispatch(
    p: &'static Pipeline,
    entries: Claimed,
    workers: &[Inbox],
    stream_name: &str,
    group: &str,
    rules: &Rules,
    log_raw: bool,
) {
    p.metrics
        .entries_read
        .fetch_add(entries.len() as u64, Ordering::Relaxed);
    let (stream_name, group): (std::sync::Arc<str>, std::sync::Arc<str>) =
        (stream_name.into(), group.into());
    let mut unsent = Unsent(p, entries.len() as u64);
    let mut outbox = Outbox(p, Vec::new(), entries.len());
    // One snapshot of the settings for the whole claim, as for its rules.
    let snap = settings::current();
    // An entry's fields, read in place from the claim's buffer; one list reused for every entry.
    let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
    for raw in entries.iter() {
        fields.clear();
        fields.extend(raw.fields());
        crate::pipeline::faults::in_claimer(raw.id, &fields);
        if log_raw {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    )
                })
                .collect();
            logging::info(&format!("RAW {} {}", raw.id, fields.join(" ")));
        }
        // Redis only hands out well-formed IDs.
        let id = EntryId::parse(raw.id).unwrap_or_default();
        // The decoder never panics by design; if it ever does, the entry is dead-lettered with the
        // reason rather than claimed again and again.
        let decoded = crate::host::ffi::guard("the decoder", || {
            crate::pipeline::faults::in_decoder(raw.id, &fields);
            entry::decode(id, &fields, rules)
        })
        .unwrap_or_else(|| {
            logging::warning(&format!("entry {} could not be decoded", raw.id));
            entry::Decoded::Undecodable {
                id,
                reason: entry::DecodeError::DecoderFailed,
            }
        });
        let decoded = match super::sink::too_large(&decoded, raw.size(), &snap) {
            Some((bytes, max)) => entry::Decoded::Undecodable {
                id,
                reason: entry::DecodeError::TooLarge { bytes, max },
            },
            None => decoded,
        };
        let decoded = match wrong_shard(p, &decoded) {
            Some(reason) => entry::Decoded::Undecodable { id, reason },
            None => decoded,
        };
        let route = route(decoded.row_keys_each(), raw.id, workers.len());
        // Only an undecodable entry keeps its fields in memory (for its dead-letter copy); any other is
        // read back from the stream in the rare case Snowflake rejects it, so a large in-flight window
        // costs the module little.
        let bytes = raw.size();
        let work = Work {
            raw: raw.to_raw(decoded.is_undecodable()),
            bytes,
            decoded,
            stream: std::sync::Arc::clone(&stream_name),
            group: std::sync::Arc::clone(&group),
        };
        let index = match route {
            Route::To(w) => w,
            Route::Spanning(w) => {
                // Everything before it first, then it alone. Stopping: the entry stays pending in the
                // group for the next start.
                outbox.send(workers, &mut unsent);
                if !drained(p, unsent.1) {
                    return;
                }
                w
            }
        };
        p.metrics
            .in_flight_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        outbox.put(index, work, workers.len());
        if matches!(route, Route::Spanning(_)) {
            outbox.send(workers, &mut unsent);
            if !drained(p, unsent.1) {
                return;
            }
        }
    }
    outbox.send(workers, &mut unsent);
}

/// Each worker's share of one claim, sent at once, and the claim's size (to size the shares).
struct Outbox(&'static Pipeline, Vec<Vec<Work>>, usize);

impl Outbox {
    fn put(&mut self, worker: usize, work: Work, workers: usize) {
        if self.1.len() < workers {
            // A share holds about its part of the claim: room for that from the start, rather than
            // copying a growing list of entries several times.
            let room = self.2.div_ceil(workers.max(1));
            self.1.resize_with(workers, || Vec::with_capacity(room));
        }
        if let Some(share) = self.1.get_mut(worker) {
            share.push(work);
        }
    }

    /// Sends every share; `unsent` counts down what reached a worker.
    fn send(&mut self, workers: &[Inbox], unsent: &mut Unsent) {
        for (index, share) in self.1.iter_mut().enumerate() {
            if share.is_empty() {
                continue;
            }
            let share = std::mem::take(share);
            let (n, bytes) = (
                share.len() as u64,
                share.iter().map(|w| w.bytes as u64).sum::<u64>(),
            );
            if workers.get(index).is_some_and(|tx| tx.send(share).is_ok()) {
                unsent.1 -= n;
            } else {
                self.0.release_bytes(bytes);
                logging::warning(
                    "a worker has stopped; its entries stay pending and are claimed again",
                );
            }
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // Only after a panic are shares left unsent: their bytes are no longer held.
        let bytes: u64 = self.1.iter().flatten().map(|w| w.bytes as u64).sum();
        self.0.release_bytes(bytes);
    }
}

/// Entries of a claim not handed to a worker: in flight already; given back when this drops (a
/// worker stopped, the claimer panics, or it stops before a spanning entry).
struct Unsent(&'static Pipeline, u64);

impl Drop for Unsent {
    fn drop(&mut self) {
        self.0.settle_lost(self.1);
    }
}

fn list_stream_keys(gil: &Gil) {
    let keys = gil
        .with(|ctx| stream::call_read(ctx, "SCAN", &[b"0", b"TYPE", b"stream", b"COUNT", b"1000"]));
    if let Ok(redis_module::RedisValue::Array(parts)) = keys {
        logging::info(&format!("stream keys at start-up: {:?}", parts.get(1)));
    }
}

/// Restore on empty, then the legacy import, as the sidecar did at start-up.
fn startup_tasks(p: &Pipeline, gil: &Gil) {
    let snap = settings::current();
    if snap.bool(Key::RestoreOnEmpty) {
        if !snap.snowflake_configured() {
            logging::info("restore on empty skipped: Snowflake is not configured");
        } else {
            let mut req = crate::pipeline::restore::Request::from_settings(&snap);
            let attempts = snap.uint(Key::ConfigMaxAttempts).max(1);
            for attempt in 1..=attempts {
                match crate::pipeline::restore::run(&p.names, &req, gil, &snap) {
                    Ok(sum) => {
                        if let Some(why) = sum.skipped {
                            logging::info(&format!("restore on empty skipped: {why}"));
                        }
                        break;
                    }
                    Err(e) => {
                        logging::warning(&format!(
                            "restore on empty failed (attempt {attempt}/{attempts}): {e}"
                        ));
                        if attempt == attempts || p.control.stopping() {
                            logging::warning("restore on empty given up: run WB.RESTORE when Snowflake is reachable");
                            break;
                        }
                        // The conditions held when it was decided; entries added since must not cancel it.
                        req.force = true;
                        std::thread::sleep(Duration::from_secs(snap.uint(Key::ConfigSleepSeconds)));
                    }
                }
            }
        }
    }
    let patterns = snap.list(Key::ExtraBridgeKeys);
    if !patterns.is_empty()
        && !super::control::REGISTRY
            .imported_at_start
            .swap(true, Ordering::Relaxed)
    {
        let streams = super::control::REGISTRY.served_names(gil);
        if let Err(e) = crate::pipeline::import::run(&streams, patterns, false, gil, &snap) {
            logging::warning(&format!(
                "legacy import failed: {e} (WB.IMPORT runs it again)"
            ));
        }
    }
}

/// Sets the reading group back to its written group, so that every entry not known to be written
/// is read again; returns the group's read counter there. Runs at start, after a promotion, after a
/// thread died holding entries, and after a read failed (the stream deleted, say).
///
/// The entries read again may be in Snowflake already (committed after the written group last
/// moved): each row's `last_entry_id` makes them change nothing. Those already dead-lettered are
/// remembered so they get no second copy ([`dead_lettered_after`]).
fn rewind(
    p: &Pipeline,
    ctx: &Context,
    stream_name: &str,
    group: &str,
) -> Result<Option<i64>, String> {
    let info = stream::group_info(ctx, stream_name, group)
        .ok_or_else(|| format!("{stream_name} has no consumer group {group}"))?;
    let written = info.written.clone().ok_or_else(|| {
        format!(
            "{stream_name} has no group {}",
            stream::written_group(group)
        )
    })?;
    // A pending list kept by a group read before the written group existed: the written group
    // starts before its lowest entry, so the entries are read again.
    let cleared = stream::clear_pending(ctx, stream_name, group, 1000)?;
    let read = stream::set_back_to_written(ctx, stream_name, group, &written)?;
    p.progress.rewound(dead_lettered_after(
        ctx,
        stream_name,
        &p.names.dlq(),
        &written.id,
    ));
    if info.last_delivered_id != written.id || cleared > 0 {
        logging::info(&format!(
            "{stream_name}: reading again from {} (delivered up to {}); entries written already change nothing",
            written.id, info.last_delivered_id
        ));
    }
    Ok(read)
}

/// With `ACK_MODE=XACK`, a written group left by an earlier `WRITTEN_GROUP` run: the entries after
/// it may not be written, and no pending list holds them. The reading group is set back to it, and
/// it is removed; the pending list takes over from here.
fn leave_written_group(ctx: &Context, stream_name: &str, group: &str) -> Result<(), String> {
    let Some(written) = stream::group_info(ctx, stream_name, group).and_then(|g| g.written) else {
        return Ok(());
    };
    stream::set_back_to_written(ctx, stream_name, group, &written)?;
    let name = stream::written_group(group);
    stream::call_write(
        ctx,
        "XGROUP",
        &[b"DESTROY", stream_name.as_bytes(), name.as_bytes()],
    )?;
    logging::info(&format!(
        "{stream_name}: ACK_MODE=XACK: reading again from {} (where {name} stood), which is removed",
        written.id
    ));
    Ok(())
}

fn preview(ids: &[String]) -> String {
    let shown: Vec<&str> = ids.iter().take(5).map(String::as_str).collect();
    if ids.len() > shown.len() {
        format!("{} ...", shown.join(" "))
    } else {
        shown.join(" ")
    }
}

/// Most dead-letter copies [`dead_lettered_after`] looks at.
const DEAD_LETTER_LOOKBACK: usize = 10_000;

/// The entries of `stream_name` after `written` that have a copy in the dead-letter stream: copies
/// are written before the written group moves past them, so after a restart or a failover they
/// may be delivered again. Read from the newest copy back, a page at a time, until a page holds no
/// such entry (or [`DEAD_LETTER_LOOKBACK`] copies).
fn dead_lettered_after(
    ctx: &Context,
    stream_name: &str,
    dlq: &str,
    written: &str,
) -> std::collections::HashSet<EntryId> {
    let mut found = std::collections::HashSet::new();
    let Ok(written) = EntryId::parse(written) else {
        return found;
    };
    let mut end = String::from("+");
    let mut seen = 0;
    while seen < DEAD_LETTER_LOOKBACK {
        let Ok(page) = stream::call_read(
            ctx,
            "XREVRANGE",
            &[dlq.as_bytes(), end.as_bytes(), b"-", b"COUNT", b"500"],
        ) else {
            break;
        };
        let page = stream::parse_entries(&page);
        seen += page.len();
        let mut any = false;
        for copy in &page {
            let field = |name: &[u8]| {
                copy.fields
                    .iter()
                    .find(|(k, _)| k.as_slice() == name)
                    .map(|(_, v)| v.as_slice())
            };
            if field(b"source_stream") != Some(stream_name.as_bytes()) {
                continue;
            }
            match field(b"source_id").map(EntryId::parse_bytes) {
                Some(Ok(id)) if id > written => {
                    found.insert(id);
                    any = true;
                }
                _ => {}
            }
        }
        match page.last() {
            Some(last) if any && page.len() == 500 => end = format!("({}", last.id),
            _ => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_streams_are_looked_at_less_often_the_more_there_are() {
        assert_eq!(idle_look_max(0), IDLE_LOOK_MAX);
        assert_eq!(idle_look_max(1), IDLE_LOOK_MAX);
        assert_eq!(idle_look_max(4), IDLE_LOOK_MAX);
        assert_eq!(idle_look_max(12), IDLE_LOOK_MAX * 3);
        assert_eq!(idle_look_max(256), IDLE_LOOK_CAP);
        // Up to the cap, looks a second over all the streams stay within those of eight idle streams.
        for n in [1usize, 4, 5, 12, 40] {
            let per_second = n as f64 / idle_look_max(n).as_secs_f64();
            assert!(
                per_second <= 8.0 / IDLE_LOOK_MAX.as_secs_f64(),
                "{n}: {per_second}"
            );
        }
    }

    #[test]
    fn entries_go_to_the_worker_of_their_rows_not_of_their_key() {
        // Every entry writing row key "bob-1" reaches one worker, whatever its key names.
        assert_eq!(route(["bob-1"], "1-0", 4), route(["bob-1"], "2-0", 4));
        assert_eq!(route(["bob-1"], "1-0", 4), Route::To(worker_of("bob-1", 4)));
        // Nothing to write: spread by the entry's ID.
        assert_eq!(route([], "7-0", 4), Route::To(worker_of("7-0", 4)));
    }

    #[test]
    fn an_entry_whose_rows_belong_to_several_workers_runs_alone() {
        let (a, b) = (0..100)
            .map(|i| format!("u{i}"))
            .find_map(|k| (worker_of(&k, 4) != worker_of("u0", 4)).then_some(("u0".to_string(), k)))
            .expect("two keys on different workers");
        assert_eq!(
            route([a.as_str(), &b], "1-0", 4),
            Route::Spanning(worker_of(&a, 4))
        );
        assert_eq!(
            route([a.as_str(), &a], "1-0", 4),
            Route::To(worker_of(&a, 4))
        );
        assert_eq!(route([a.as_str(), &b], "1-0", 1), Route::To(0));
    }
}
