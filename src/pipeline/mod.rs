//! The write-behind pipeline: notify → claim → batch → commit → acknowledge.
//!
//! - [`notify`]: the stream notification only wakes the claimer; nothing else runs on the XADD path.
//! - [`claim`]: one thread reads entries through the consumer group, under the Redis lock, in bounded
//!   chunks (pending entries first after a start or a promotion), decodes them off the lock and routes
//!   each to the worker owning the rows it writes, so each row's entries stay in stream order.
//! - [`governor`]: how much the claimer may take per lock hold (about a millisecond's worth) and how
//!   fast: full speed while Redis's main thread has room, `DRAIN_MIN_RECORDS_PER_SECOND` while it is
//!   saturated.
//! - [`worker`]: a pool of threads, each batching by count, bytes and linger time.
//! - [`sink`]: turns a batch into SQL and commits it — to Snowflake, or to the log in dry run — with
//!   retries; a statement Snowflake rejects is split until the entry at fault is found.
//! - [`triage`]: whether a data error is one entry's own (dead-letter it) or every statement's
//!   (blocked, nothing dead-lettered).
//! - [`ack`]: only after the commit, `XACK` (and dead-letter copies) under the lock, replicated.
//!
//! The stream is the durable queue: the module holds at most `MAX_IN_FLIGHT` claimed entries, and an
//! entry leaves the group's pending list only once its outcome is settled in Snowflake.

pub mod ack;
pub mod claim;
pub mod gil;
pub mod governor;
pub mod housekeeping;
pub mod notify;
pub mod sink;
pub mod triage;
pub mod waiters;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use crate::settings::{Key, Snapshot};
use crate::status::METRICS;

/// What the pipeline is doing, for `WB.STATUS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Starting = 0,
    Loading,
    Replica,
    Unconfigured,
    Paused,
    Running,
    DryRun,
    Retrying,
    Stopping,
    Stopped,
}

impl State {
    fn word(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Loading => "loading",
            State::Replica => "replica",
            State::Unconfigured => "unconfigured",
            State::Paused => "paused",
            State::Running => "running",
            State::DryRun => "dry-run",
            State::Retrying => "retrying",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
        }
    }

    fn from_u8(n: u8) -> State {
        const ALL: [State; 10] = [
            State::Starting,
            State::Loading,
            State::Replica,
            State::Unconfigured,
            State::Paused,
            State::Running,
            State::DryRun,
            State::Retrying,
            State::Stopping,
            State::Stopped,
        ];
        ALL.get(n as usize).copied().unwrap_or(State::Stopped)
    }
}

/// Control shared by the pipeline's threads and the commands.
pub struct Control {
    state: AtomicU8,
    /// Set by SHUTDOWN and MODULE UNLOAD: stop claiming, finish or abandon in-flight work.
    pub stop: AtomicBool,
    pub paused: AtomicBool,
    /// Set by a retryable failure, cleared by the next success: the Snowflake session is down.
    pub degraded: AtomicBool,
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    /// Signalled whenever entries are acknowledged (in-flight space frees up).
    pub settled: (Mutex<()>, Condvar),
    /// Batches between "commit started" and "acknowledgements queued".
    pub committing: std::sync::atomic::AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Pipeline threads that have not returned yet.
    alive: std::sync::atomic::AtomicUsize,
    /// Restarts of pipeline threads after a panic, since load.
    pub restarts: std::sync::atomic::AtomicU64,
    /// Until when (wall-clock ms) a supervised thread counts as failing: its restarts keep dying
    /// (see [`spawn_supervised`]).
    pub failing_until_ms: std::sync::atomic::AtomicU64,
    /// Set when claimed entries may have been lost from module memory (a thread died holding them):
    /// the claimer stops claiming until nothing is in flight, then takes over every pending entry.
    pub recover: AtomicBool,
}

static CONTROL: OnceLock<Arc<Control>> = OnceLock::new();

pub fn control() -> &'static Arc<Control> {
    CONTROL.get_or_init(|| {
        let (wake_tx, wake_rx) = bounded(1);
        Arc::new(Control {
            state: AtomicU8::new(State::Starting as u8),
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            degraded: AtomicBool::new(false),
            wake_tx,
            wake_rx,
            settled: (Mutex::new(()), Condvar::new()),
            committing: std::sync::atomic::AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
            alive: std::sync::atomic::AtomicUsize::new(0),
            restarts: std::sync::atomic::AtomicU64::new(0),
            failing_until_ms: std::sync::atomic::AtomicU64::new(0),
            recover: AtomicBool::new(false),
        })
    })
}

impl Control {
    pub fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Wakes the claimer (never blocks: one pending wake-up is enough).
    pub fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }

    /// Waits for a wake-up or `timeout`.
    pub fn wait_wake(&self, timeout: Duration) {
        let _ = self.wake_rx.recv_timeout(timeout);
    }

    /// Tells waiters that in-flight entries were settled.
    pub fn notify_settled(&self) {
        let _g = self.settled.0.lock();
        self.settled.1.notify_all();
    }

    /// Waits until notified or `timeout`.
    pub fn wait_settled(&self, timeout: Duration) {
        let mut g = self.settled.0.lock();
        self.settled.1.wait_for(&mut g, timeout);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Starts a pipeline thread: its body runs behind the panic guard, and its exit is counted so
/// `MODULE UNLOAD` can tell when every thread has returned.
pub fn spawn_thread(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, String> {
    let c = Arc::clone(control());
    c.alive.fetch_add(1, Ordering::SeqCst);
    let label = name.to_string();
    let nice = crate::settings::current()
        .int(Key::BackgroundNice)
        .clamp(0, 19) as libc::c_int;
    let builder = std::thread::Builder::new().name(name.to_string());
    let body = move || {
        // Lower this thread's priority (Linux nice values are per thread); never raise it.
        if nice > 0 {
            unsafe {
                let tid = libc::gettid();
                let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, current.max(nice));
            }
        }
        crate::ffi::guard(&label, body);
        c.alive.fetch_sub(1, Ordering::SeqCst);
    };
    let spawned = if crate::faults::spawn_refused(name) {
        // As the system refusing: the body is dropped here, on the caller's thread, unrun.
        drop(body);
        Err(std::io::Error::other("refused by WB_TEST_SPAWN_REFUSED"))
    } else {
        builder.spawn(body)
    };
    spawned.map_err(|e| {
        control().alive.fetch_sub(1, Ordering::SeqCst);
        format!("could not start the {name} thread: {e}")
    })
}

/// A supervised thread that panics this many times in a row, each within [`HEALTHY_RUN`] of its
/// start, is reported as failing (`WB.STATUS` state `failed`); it keeps being restarted.
const FAILING_AFTER: u32 = 5;
/// A run this long without a panic resets the thread's backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// The longest wait before a restart.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// Starts a pipeline thread that is restarted when its body panics: the panic is logged, the thread
/// waits (100 ms, doubling to 30 s; reset after a minute without a panic) and runs `body` again, and
/// any claimed entries it may have held are taken over again by the claimer. A body that returns
/// ends the thread.
pub fn spawn_supervised(
    name: &str,
    mut body: impl FnMut() + Send + 'static,
) -> Result<JoinHandle<()>, String> {
    let label = name.to_string();
    spawn_thread(name, move || {
        let c = control();
        let mut in_a_row: u32 = 0;
        loop {
            let started = Instant::now();
            if crate::ffi::guard(&label, &mut body).is_some() {
                break;
            }
            if c.stopping() {
                break;
            }
            if started.elapsed() >= HEALTHY_RUN {
                in_a_row = 0;
            }
            in_a_row += 1;
            c.restarts.fetch_add(1, Ordering::Relaxed);
            c.recover.store(true, Ordering::Relaxed);
            let wait = Duration::from_millis(100)
                .saturating_mul(1 << in_a_row.saturating_sub(1).min(10))
                .min(MAX_RESTART_BACKOFF);
            if in_a_row >= FAILING_AFTER {
                // Failing until the restarted body has run a healthy while without dying.
                let until = now_ms() + (wait + HEALTHY_RUN).as_millis() as u64;
                c.failing_until_ms.fetch_max(until, Ordering::Relaxed);
            }
            crate::logging::warning(&format!(
                "THREAD {label} died (panic {in_a_row} in a row); restarting in {} ms",
                wait.as_millis()
            ));
            crate::status::METRICS.set_error(&format!("thread {label} died and was restarted"));
            let until = Instant::now() + wait;
            while Instant::now() < until && !c.stopping() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if c.stopping() {
                break;
            }
        }
    })
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// The most bytes of claimed entries the module holds at once (with `MAX_IN_FLIGHT` entries): the
/// module's memory counts against `maxmemory`, so it stays small under any backlog.
pub const MAX_IN_FLIGHT_BYTES: u64 = 64 << 20;
/// About how many bytes one claim reads under the lock (each hold is bounded by time as well, see
/// [`governor::HOLD_TARGET`]).
pub const CLAIM_CHUNK_BYTES: u64 = 1 << 20;

/// Gives back `bytes` of claimed entries the module no longer holds.
pub fn release_bytes(bytes: u64) {
    let _ = METRICS
        .in_flight_bytes
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(bytes))
        });
}

/// Forgets `n` claimed entries that will not be settled by this process (a worker stopped or died
/// holding them): they leave the in-flight count, stay pending in the group, and the claimer takes
/// them over again once nothing else is in flight.
pub fn settle_lost(n: u64) {
    if n == 0 {
        return;
    }
    let c = control();
    let _ = METRICS
        .in_flight
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    if !c.stopping() {
        c.recover.store(true, Ordering::Relaxed);
    }
    c.notify_settled();
}

/// Pipeline threads running now (for `WB.STATUS`).
pub fn threads_alive() -> usize {
    control().alive.load(Ordering::SeqCst)
}

/// The state word for `WB.STATUS`.
pub fn state() -> &'static str {
    let c = control();
    if c.failing_until_ms.load(Ordering::Relaxed) > now_ms()
        && !matches!(c.state(), State::Stopping | State::Stopped)
    {
        return "failed";
    }
    match c.state() {
        State::Running if METRICS.is_blocked() => "blocked",
        State::Running if c.degraded.load(Ordering::Relaxed) => State::Retrying.word(),
        s => s.word(),
    }
}

/// Whether SQL is only logged: `DRY_RUN=1`, or Snowflake incomplete with `ALLOW_NO_SNOWFLAKE=1`.
pub fn dry_run(s: &Snapshot) -> bool {
    s.bool(Key::DryRun) || (!s.snowflake_configured() && s.bool(Key::AllowNoSnowflake))
}

/// Whether the writer has nothing to write to: no Snowflake settings and no dry run.
pub fn unconfigured(s: &Snapshot) -> bool {
    !dry_run(s) && !s.snowflake_configured()
}

/// The consumer group read through: the configured one, or in dry run a separate `<group>:dry-run`
/// group, so the live group's position is untouched and switching to live loses nothing.
pub fn group_name(s: &Snapshot) -> String {
    if dry_run(s) {
        format!("{}:dry-run", s.str(Key::Group))
    } else {
        s.str(Key::Group).to_string()
    }
}

/// The Snowflake session in one word.
pub fn session_state() -> &'static str {
    let c = control();
    if dry_run(&crate::settings::current()) {
        "dry-run"
    } else if c.degraded.load(Ordering::Relaxed) {
        "failing"
    } else if METRICS.last_success_ms.load(Ordering::Relaxed) > 0 {
        "ok"
    } else {
        "idle"
    }
}

/// Starts the claimer and the workers (at load, on the main thread). They wait on their own for the
/// server to finish loading before touching the stream.
pub fn start() -> Result<(), String> {
    let c = control();
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
    let workers = s.int(Key::Workers).clamp(1, 64) as usize;
    let (senders, handles) = worker::spawn(workers)?;
    let claimer = claim::spawn(senders)?;
    let housekeeper = housekeeping::spawn()?;
    let deadlines = waiters::spawn()?;
    let mut threads = c.threads.lock();
    threads.extend(handles);
    threads.extend([claimer, housekeeper, deadlines]);
    Ok(())
}

/// The longest `SHUTDOWN` waits for in-flight batches, whatever `SHUTDOWN_GRACE_MS` says: Redis's
/// main thread is held for the whole wait, and Kubernetes kills a pod 30 s after asking it to stop
/// (by default), Redis's own save included.
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Stops every thread, giving in-flight batches until `grace` (at most [`MAX_SHUTDOWN_GRACE`]) to
/// commit; what is not committed by then stays pending for the next start. Runs on the main thread
/// (SHUTDOWN), which holds the Redis lock.
///
/// Redis announces the shutdown after its final save: acknowledgements written now are not in the
/// RDB file (nor in the AOF, already flushed), so after the restart the entries committed during
/// the grace are pending again and are written again — Snowflake applies them once (each row
/// remembers the last entry applied). The grace only lets the statements in progress finish instead
/// of being abandoned mid-way; claiming stops at once.
pub fn shutdown(grace: Duration) {
    let c = control();
    c.stop.store(true, Ordering::Relaxed);
    c.set_state(State::Stopping);
    c.wake();
    let deadline = Instant::now() + grace.min(MAX_SHUTDOWN_GRACE);
    while c.committing.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        c.wait_settled(Duration::from_millis(10));
    }
    if let Some(ctx) = crate::stream::home() {
        ack::drain(&ctx);
    }
    c.set_state(State::Stopped);
}

/// For `MODULE UNLOAD`: stops and joins the threads if nothing is in flight, else refuses with why.
pub fn unload() -> Result<(), String> {
    let c = control();
    let in_flight = METRICS.in_flight.load(Ordering::Relaxed);
    if !c.paused.load(Ordering::Relaxed) || in_flight > 0 {
        return Err(format!(
            "the writer is running ({in_flight} entries in flight): run WB.PAUSE, wait until WB.STATUS shows in_flight 0, then MODULE UNLOAD"
        ));
    }
    c.stop.store(true, Ordering::Relaxed);
    c.wake();
    worker::close();
    // Wait (bounded) for every thread to return. This runs on the main thread, which holds the Redis
    // lock: a thread waiting for that lock cannot return until this call does, so rather than block
    // forever, refuse and let the operator repeat the command once it has.
    let deadline = Instant::now() + Duration::from_secs(2);
    while c.alive.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    c.set_state(State::Stopped);
    let left = c.alive.load(Ordering::SeqCst);
    if left > 0 {
        return Err(format!(
            "{left} writer threads are still stopping; run MODULE UNLOAD again"
        ));
    }
    let handles: Vec<JoinHandle<()>> = c.threads.lock().drain(..).collect();
    for h in handles {
        let _ = h.join();
    }
    gil::free_retired();
    Ok(())
}
