//! The write-behind pipeline: notify → claim → batch → commit → acknowledge.
//!
//! - [`notify`]: the stream notification only wakes the claimer; nothing else runs on the XADD path.
//! - [`claim`]: one thread reads entries through the consumer group, under the Redis lock, in bounded
//!   chunks (pending entries first after a start or a promotion), decodes them off the lock and routes
//!   each to the worker owning the rows it writes, so each row's entries stay in stream order.
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
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
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
        })
        .map_err(|e| {
            control().alive.fetch_sub(1, Ordering::SeqCst);
            format!("could not start the {name} thread: {e}")
        })
}

/// The state word for `WB.STATUS`.
pub fn state() -> &'static str {
    let c = control();
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
    c.set_state(State::Starting);
    let s = crate::settings::current();
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

/// Stops every thread, giving in-flight batches until `grace` to commit; what is not acknowledged by
/// then stays pending for the next start. Runs on the main thread (SHUTDOWN), which holds the Redis
/// lock: the acknowledgements the workers queued are written here, since they cannot take the lock.
pub fn shutdown(grace: Duration) {
    let c = control();
    c.stop.store(true, Ordering::Relaxed);
    c.set_state(State::Stopping);
    c.wake();
    let deadline = Instant::now() + grace;
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
