//! The write-behind pipeline: notify → claim → batch → commit → acknowledge.
//!
//! - [`events`]: what the host tells the pipeline — a server event wakes, stops or counts a deleted
//!   stream's loss. Nothing of the module runs on the application's XADD ([`claim`] looks).
//! - [`claim`]: one thread reads entries through the consumer group, under the Redis lock, in bounded
//!   chunks (pending entries first after a start or a promotion), decodes them off the lock and routes
//!   each to the worker owning the rows it writes, so each row's entries stay in stream order.
//! - [`governor`]: how much the claimer may take per lock hold (about a millisecond's worth) and how
//!   fast: full speed while Redis's main thread has room, `DRAIN_MIN_RECORDS_PER_SECOND` while it is
//!   saturated.
//! - [`worker`]: a pool of threads, each batching by count, bytes and linger time.
//! - [`sink`]: turns a batch into SQL and commits it — to Snowflake, or to the log in dry run — with
//!   retries; a statement Snowflake rejects is split until the entry at fault is found.
//! - [`retry`]: the one retry policy: retry, retry slowly, split, or dead-letter, from typed classes.
//! - [`triage`]: whether a data error is one entry's own (dead-letter it) or every statement's
//!   (blocked, nothing dead-lettered).
//! - [`ack`]: only after the commit, `XACK` (and dead-letter copies) under the lock, replicated; with
//!   `ACK_MODE=WRITTEN_GROUP` the move of the written group instead, as far as [`progress`] says.
//!
//!
//! Beside the data path: [`control`](mod@control) (state, flags, wake-ups and the counted threads every other file
//! uses), [`metrics`] (the counters) and [`status`] (the report `WB.STATUS` and `INFO` show),
//! [`housekeeping`] (periodic checks), [`waiters`] (`WB.WRITE SYNC` callers), [`restore`] and
//! [`import`] (the other ways entries come in), [`background`] (the bounded executor for commands
//! that wait), [`affinity`] (the CPUs the module's threads run on) and [`faults`] (test-only fault
//! injection). This file starts and stops it all.
//!
//! The stream is the durable queue: the module holds at most `MAX_IN_FLIGHT` claimed entries, and an
//! entry leaves the group's pending list (or the written group moves past it) only once its outcome
//! is settled in Snowflake.

pub mod ack;
pub mod affinity;
pub mod background;
pub mod capture;
pub mod claim;
pub mod control;
pub mod events;
pub mod faults;
pub mod governor;
pub mod housekeeping;
pub mod import;
pub mod mapped;
pub mod mapping_writer;
pub mod metrics;
pub mod progress;
pub mod restore;
pub mod retry;
pub mod sink;
pub mod sizer;
pub mod state;
pub mod status;
pub mod triage;
pub mod waiters;
pub mod worker;

use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use control::{
    control, dry_run, group_name, release_bytes, session_state, settle_lost, spawn_supervised,
    spawn_thread, state, threads_alive, unconfigured, Control, State, CLAIM_CHUNK_BYTES,
    MAX_IN_FLIGHT_BYTES,
};

/// Starts the claimer and the workers of every pipeline, and the mappings' writers (at load, on the
/// main thread). They wait on their own for the server to finish loading before touching a stream;
/// on a cluster (`cluster`) each claimer drains its stream only while this node serves the stream's
/// slot, and its workers start the first time it does.
pub fn start(cluster: bool) -> Result<(), String> {
    affinity::check(crate::settings::current().str(crate::settings::Key::BackgroundCpus))?;
    for pipeline in control::REGISTRY.all() {
        start_one(pipeline, !cluster)?;
    }
    let writers = mapping_writer::spawn_all()?;
    control::main().control.threads.lock().extend(writers);
    Ok(())
}

fn start_one(pipeline: &'static control::Pipeline, eager: bool) -> Result<(), String> {
    let c = &pipeline.control;
    // A module unloaded and loaded again may find its statics as they were (a Rust library is not
    // always unmapped by dlclose): start from a clean control state.
    c.stop.store(false, Ordering::Relaxed);
    c.paused.store(false, Ordering::Relaxed);
    c.degraded.store(false, Ordering::Relaxed);
    c.recover.store(false, Ordering::Relaxed);
    c.failing_until_ms.store(0, Ordering::Relaxed);
    let s = crate::settings::current();
    // Without Snowflake settings the writer will not run: say so from the first moment, not only
    // once the claimer thread has looked.
    c.set_state(if unconfigured(&s) {
        State::Unconfigured
    } else {
        State::Starting
    });
    let claimer = claim::spawn(pipeline, eager)?;
    c.threads.lock().push(claimer);
    Ok(())
}

/// The longest `SHUTDOWN` waits for in-flight batches, whatever `SHUTDOWN_GRACE_MS` says: Redis's
/// main thread is held for the whole wait, and Kubernetes kills a pod 30 s after asking it to stop
/// (by default), Redis's own save included.
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Stops every thread, giving in-flight batches until `grace` (at most [`MAX_SHUTDOWN_GRACE`]) to
/// commit; what is not committed by then is read again at the next start. Runs on the main thread
/// (SHUTDOWN), which holds the Redis lock.
///
/// Redis announces the shutdown after its final save: a move of the written group made now is not
/// in the RDB file (nor in the AOF, already flushed), so after the restart the entries committed
/// during the grace are read again and are written again — Snowflake applies them once (each row
/// remembers the last entry applied). The grace only lets the statements in progress finish instead
/// of being abandoned mid-way; claiming stops at once.
pub fn shutdown(grace: Duration) {
    let all = control::REGISTRY.all();
    for p in &all {
        let c = &p.control;
        c.stop.store(true, Ordering::Relaxed);
        c.set_state(State::Stopping);
        c.wake();
    }
    let deadline = Instant::now() + grace.min(MAX_SHUTDOWN_GRACE);
    for p in &all {
        let c = &p.control;
        while c.committing.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            c.wait_settled(Duration::from_millis(10));
        }
    }
    if let Some(ctx) = crate::host::stream::home() {
        for p in &all {
            ack::drain(p, &ctx);
        }
    }
    for p in &all {
        p.control.set_state(State::Stopped);
    }
}

/// For `MODULE UNLOAD`: stops and joins the threads if nothing is in flight, else refuses with why.
pub fn unload() -> Result<(), String> {
    let all = control::REGISTRY.all();
    let in_flight: u64 = all
        .iter()
        .map(|p| p.metrics.in_flight.load(Ordering::Relaxed))
        .sum();
    if all
        .iter()
        .any(|p| !p.control.paused.load(Ordering::Relaxed))
        || in_flight > 0
    {
        return Err(format!(
            "the writer is running ({in_flight} entries in flight): run WB.PAUSE, wait until WB.STATUS shows in_flight 0, then MODULE UNLOAD"
        ));
    }
    for p in &all {
        p.control.stop.store(true, Ordering::Relaxed);
        p.control.wake();
        worker::close(p);
    }
    // Wait (bounded) for every thread to return. This runs on the main thread, which holds the Redis
    // lock: a thread waiting for that lock cannot return until this call does, so rather than block
    // forever, refuse and let the operator repeat the command once it has.
    let alive = || -> usize {
        all.iter()
            .map(|p| p.control.alive.load(Ordering::SeqCst))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in &all {
        p.control.set_state(State::Stopped);
    }
    let left = alive();
    if left > 0 {
        return Err(format!(
            "{left} writer threads are still stopping; run MODULE UNLOAD again"
        ));
    }
    for p in &all {
        let handles: Vec<JoinHandle<()>> = p.control.threads.lock().drain(..).collect();
        for h in handles {
            let _ = h.join();
        }
    }
    crate::host::gil::free_retired();
    Ok(())
}
