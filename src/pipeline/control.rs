//! A [`Pipeline`] value and the [`Registry`] that holds the pipelines of this process.
//!
//! A pipeline is one source stream and what runs it: its [`Control`] (the state word, the
//! stop/pause/degraded flags, the wake-up and settled signals, its counted threads — started behind
//! the panic guard, restarted after a panic), its counters ([`Metrics`]) and its triage evidence
//! ([`Triage`]), its Snowflake client, and what its threads hand each other ([`super::state`]: the
//! workers' inboxes, the settled entries, the `WB.WRITE SYNC` waiters, the drain figures). Commands,
//! the report and the host's listener find pipelines in the registry; every pipeline thread and
//! command reads this file, and it reads nothing of theirs but those values.
//!
//! Today the process runs one pipeline, the configured stream's ([`main`]); the free functions
//! below ([`control`], [`spawn_thread`], [`METRICS`], ...) are that pipeline's. The settings stay
//! module configs: a pipeline keeps its own source name, and takes its snapshot per attempt.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::{Condvar, Mutex, RwLock};

use super::metrics::Metrics;
use super::triage::Triage;
use crate::settings::{Key, Snapshot};
use crate::snowflake::Client;

/// What the pipeline is doing, for `WB.STATUS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Starting = 0,
    Loading,
    Replica,
    Unconfigured,
    Paused,
    /// On a cluster: this node does not serve the stream's slot (another primary drains it).
    Elsewhere,
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
            State::Elsewhere => "not-served",
            State::Running => "running",
            State::DryRun => "dry-run",
            State::Retrying => "retrying",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
        }
    }

    fn from_u8(n: u8) -> State {
        const ALL: [State; 11] = [
            State::Starting,
            State::Loading,
            State::Replica,
            State::Unconfigured,
            State::Paused,
            State::Elsewhere,
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
    pub(super) threads: Mutex<Vec<JoinHandle<()>>>,
    /// Pipeline threads that have not returned yet.
    pub(super) alive: std::sync::atomic::AtomicUsize,
    /// Restarts of pipeline threads after a panic, since load.
    pub restarts: std::sync::atomic::AtomicU64,
    /// Until when (wall-clock ms) a supervised thread counts as failing: its restarts keep dying
    /// (see [`spawn_supervised`]).
    pub failing_until_ms: std::sync::atomic::AtomicU64,
    /// Set when claimed entries may have been lost from module memory (a thread died holding them),
    /// or, with a written group, when a read failed (the rewind after it delivers them again): the
    /// claimer stops claiming until nothing is in flight, then takes over every pending entry (or
    /// sets the group back to the written group).
    pub recover: AtomicBool,
}

impl Control {
    pub fn new() -> Control {
        let (wake_tx, wake_rx) = bounded(1);
        Control {
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
        }
    }
}

impl Default for Control {
    fn default() -> Control {
        Control::new()
    }
}

/// One pipeline: a source stream, its control, its counters and its triage evidence.
pub struct Pipeline {
    /// Its stream (`REDIS_STREAM`, or one shard stream of it; restart-only settings) and the names
    /// of the keys it writes for it (dead-letter stream, marker, import set).
    pub names: crate::shard::Names,
    pub control: Control,
    pub metrics: Metrics,
    pub triage: Triage,
    /// Its Snowflake client, built on first use (see [`super::sink::client_of`]).
    pub client: Mutex<Option<Arc<Client>>>,
    /// Read-backs done so far by `VERIFY_TRACKED_AFTER_WRITE` (capped by `VERIFY_TRACKED_LIMIT`).
    pub verified: AtomicU64,
    /// Its workers' inboxes, kept so stopping can close them.
    pub inboxes: Mutex<Vec<super::state::Inbox>>,
    /// Settled entries waiting for one lock hold ([`super::ack`]).
    pub acks: super::state::Acks,
    /// `WB.WRITE ... SYNC` callers waiting for its entries ([`super::waiters`]).
    pub waiters: Mutex<Vec<super::state::Waiter>>,
    /// What its claimer last published ([`super::governor`]).
    pub drain: super::state::DrainFigures,
    /// What is delivered and what of it is written ([`super::progress`]).
    pub progress: super::progress::Progress,
}

impl Pipeline {
    pub fn new(source: impl Into<String>) -> Pipeline {
        let source = source.into();
        Pipeline::named(crate::shard::Names::new(&source, false))
    }

    /// A pipeline over `names.stream`, writing the keys `names` gives.
    pub fn named(names: crate::shard::Names) -> Pipeline {
        Pipeline {
            names,
            control: Control::new(),
            metrics: Metrics::default(),
            triage: Triage::new(),
            client: Mutex::new(None),
            verified: AtomicU64::new(0),
            inboxes: Mutex::new(Vec::new()),
            acks: Default::default(),
            waiters: Mutex::new(Vec::new()),
            drain: Default::default(),
            progress: Default::default(),
        }
    }
}

/// The pipelines of a process. A pipeline lives as long as the process (a module unloaded and
/// loaded again finds it as it was, and [`super::start`] resets its control).
pub struct Registry {
    pipelines: RwLock<Vec<&'static Pipeline>>,
    /// The same, by stream name.
    by_source: RwLock<Option<std::collections::HashMap<String, &'static Pipeline>>>,
    main: OnceLock<&'static Pipeline>,
    /// The hash mappings in force and their figures ([`super::mapped`]), set at load.
    pub mapped: RwLock<Option<Arc<super::mapped::Mapped>>>,
    /// The start-up legacy import has been run (once per process, by the first pipeline whose
    /// stream this node serves, over every stream it serves then).
    pub imported_at_start: AtomicBool,
}

impl Registry {
    pub const fn new() -> Registry {
        Registry {
            pipelines: RwLock::new(Vec::new()),
            by_source: RwLock::new(None),
            main: OnceLock::new(),
            mapped: RwLock::new(None),
            imported_at_start: AtomicBool::new(false),
        }
    }

    /// Adds a pipeline (for the life of the process) and gives it back.
    pub fn add(&self, pipeline: Pipeline) -> &'static Pipeline {
        let p: &'static Pipeline = Box::leak(Box::new(pipeline));
        self.pipelines.write().push(p);
        self.by_source
            .write()
            .get_or_insert_with(Default::default)
            .insert(p.source().to_string(), p);
        p
    }

    /// The pipeline reading `source`.
    pub fn find(&self, source: &str) -> Option<&'static Pipeline> {
        self.by_source.read().as_ref()?.get(source).copied()
    }

    /// The hash mappings in force, if any.
    pub fn mapped(&self) -> Option<Arc<super::mapped::Mapped>> {
        self.mapped.read().clone()
    }

    /// Puts `mapped` in force (at load).
    pub fn set_mapped(&self, mapped: Option<super::mapped::Mapped>) {
        *self.mapped.write() = mapped.map(Arc::new);
    }

    /// Every pipeline, in the order they were added.
    pub fn all(&self) -> Vec<&'static Pipeline> {
        self.pipelines.read().clone()
    }

    /// Adds a pipeline for each of `streams` that has none yet (at load; a module loaded again finds
    /// its pipelines as they were).
    pub fn open(&self, streams: Vec<crate::shard::Names>) {
        for names in streams {
            if self.find(&names.stream).is_none() {
                self.add(Pipeline::named(names));
            }
        }
    }

    /// The pipelines whose stream's slot this node serves now (every one on a standalone server).
    /// Under the lock.
    pub fn served(&self, ctx: &redis_module::Context) -> Vec<&'static Pipeline> {
        self.all()
            .into_iter()
            .filter(|p| crate::host::cluster::serves(ctx, p.source()).is_ok())
            .collect()
    }

    /// The key names of the streams this node serves now (see [`Registry::served`]). Takes the
    /// lock through `gil`.
    pub fn served_names(&self, gil: &crate::host::gil::Gil) -> Vec<crate::shard::Names> {
        gil.with(|ctx| self.served(ctx).iter().map(|p| p.names.clone()).collect())
    }

    /// The first pipeline, made for `source()` when there is none yet.
    pub fn main_or(&self, source: impl FnOnce() -> String) -> &'static Pipeline {
        self.main.get_or_init(|| {
            if let Some(first) = self.pipelines.read().first() {
                return first;
            }
            self.add(Pipeline::new(source()))
        })
    }
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::new()
    }
}

/// The pipelines of this process.
pub static REGISTRY: Registry = Registry::new();

/// Makes the pipelines of the configured streams (at load): `REDIS_STREAM`, or its
/// `STREAM_SHARDS` shard streams. On a cluster (`cluster`) or with shards, the keys of each stream
/// carry its hash tag.
pub fn open(cluster: bool) -> Result<(), String> {
    let s = crate::settings::current();
    let stream = s.str(Key::RedisStream);
    let shards = s.uint(Key::StreamShards).max(1) as u32;
    if let Some(why) = crate::shard::refusal(stream, shards, cluster) {
        return Err(why);
    }
    REGISTRY.open(crate::shard::Names::family(stream, shards, cluster));
    Ok(())
}

/// The configured stream's pipeline (made on first use, after the settings are loaded).
pub fn main() -> &'static Pipeline {
    REGISTRY.main_or(|| crate::settings::current().str(Key::RedisStream).to_string())
}

/// The hash mappings in force, if any.
pub fn mapped() -> Option<Arc<super::mapped::Mapped>> {
    REGISTRY.mapped()
}

/// The main pipeline's control.
pub fn control() -> &'static Control {
    &main().control
}

/// The main pipeline's counters, as `METRICS.<counter>`.
pub struct MainMetrics;

impl Deref for MainMetrics {
    type Target = Metrics;

    fn deref(&self) -> &Metrics {
        &main().metrics
    }
}

/// The main pipeline's counters (a name for [`main`]`().metrics`, holding nothing itself).
pub static METRICS: MainMetrics = MainMetrics;

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

/// A supervised thread that panics this many times in a row, each within [`HEALTHY_RUN`] of its
/// start, is reported as failing (`WB.STATUS` state `failed`); it keeps being restarted.
const FAILING_AFTER: u32 = 5;
/// A run this long without a panic resets the thread's backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// The longest wait before a restart.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

impl Pipeline {
    /// Starts a pipeline thread: its body runs behind the panic guard, and its exit is counted so
    /// `MODULE UNLOAD` can tell when every thread has returned.
    pub fn spawn_thread(
        &'static self,
        name: &str,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<JoinHandle<()>, String> {
        let c = &self.control;
        c.alive.fetch_add(1, Ordering::SeqCst);
        let label = name.to_string();
        let snap = crate::settings::current();
        let nice = snap.int(Key::BackgroundNice).clamp(0, 19) as libc::c_int;
        let cpus = crate::settings::cpu_list(snap.str(Key::BackgroundCpus)).unwrap_or_default();
        let builder = std::thread::Builder::new().name(name.to_string());
        let body = move || {
            if let Err(e) = super::affinity::pin_this_thread(&cpus) {
                crate::host::logging::warning(&format!("{label}: {e}; it runs where it started"));
            }
            // Lower this thread's priority (Linux nice values are per thread); never raise it.
            if nice > 0 {
                unsafe {
                    let tid = libc::gettid();
                    let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
                    libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, current.max(nice));
                }
            }
            crate::host::ffi::guard(&label, body);
            c.alive.fetch_sub(1, Ordering::SeqCst);
        };
        let spawned = if super::faults::spawn_refused(name) {
            // As the system refusing: the body is dropped here, on the caller's thread, unrun.
            drop(body);
            Err(std::io::Error::other("refused by WB_TEST_SPAWN_REFUSED"))
        } else {
            builder.spawn(body)
        };
        spawned.map_err(|e| {
            c.alive.fetch_sub(1, Ordering::SeqCst);
            format!("could not start the {name} thread: {e}")
        })
    }

    /// Starts a pipeline thread that is restarted when its body panics: the panic is logged, the thread
    /// waits (100 ms, doubling to 30 s; reset after a minute without a panic) and runs `body` again, and
    /// any claimed entries it may have held are taken over again by the claimer. A body that returns
    /// ends the thread.
    pub fn spawn_supervised(
        &'static self,
        name: &str,
        mut body: impl FnMut() + Send + 'static,
    ) -> Result<JoinHandle<()>, String> {
        let label = name.to_string();
        self.spawn_thread(name, move || {
            let c = &self.control;
            let mut in_a_row: u32 = 0;
            loop {
                let started = Instant::now();
                if crate::host::ffi::guard(&label, &mut body).is_some() {
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
                crate::host::logging::warning(&format!(
                    "THREAD {label} died (panic {in_a_row} in a row); restarting in {} ms",
                    wait.as_millis()
                ));
                self.metrics
                    .set_error(&format!("thread {label} died and was restarted"));
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

    /// The stream it reads.
    pub fn source(&self) -> &str {
        &self.names.stream
    }

    /// Gives back `bytes` of claimed entries the module no longer holds.
    pub fn release_bytes(&self, bytes: u64) {
        let _ =
            self.metrics
                .in_flight_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(bytes))
                });
    }

    /// Forgets `n` claimed entries that will not be settled by this process (a worker stopped or died
    /// holding them): they leave the in-flight count, stay pending in the group, and the claimer takes
    /// them over again once nothing else is in flight.
    pub fn settle_lost(&self, n: u64) {
        if n == 0 {
            return;
        }
        let c = &self.control;
        let _ = self
            .metrics
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
    pub fn threads_alive(&self) -> usize {
        self.control.alive.load(Ordering::SeqCst)
    }

    /// The state word for `WB.STATUS`.
    pub fn state(&self) -> &'static str {
        let c = &self.control;
        if c.failing_until_ms.load(Ordering::Relaxed) > now_ms()
            && !matches!(c.state(), State::Stopping | State::Stopped)
        {
            return "failed";
        }
        match c.state() {
            State::Running if self.metrics.is_blocked() => "blocked",
            State::Running if c.degraded.load(Ordering::Relaxed) => State::Retrying.word(),
            s => s.word(),
        }
    }

    /// The Snowflake session in one word.
    pub fn session_state(&self) -> &'static str {
        let c = &self.control;
        if dry_run(&crate::settings::current()) {
            "dry-run"
        } else if c.degraded.load(Ordering::Relaxed) {
            "failing"
        } else if self.metrics.last_success_ms.load(Ordering::Relaxed) > 0 {
            "ok"
        } else {
            "idle"
        }
    }
}

/// [`Pipeline::spawn_thread`] of the main pipeline.
pub fn spawn_thread(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, String> {
    main().spawn_thread(name, body)
}

/// [`Pipeline::spawn_supervised`] of the main pipeline.
pub fn spawn_supervised(
    name: &str,
    body: impl FnMut() + Send + 'static,
) -> Result<JoinHandle<()>, String> {
    main().spawn_supervised(name, body)
}

/// [`Pipeline::release_bytes`] of the main pipeline.
pub fn release_bytes(bytes: u64) {
    main().release_bytes(bytes);
}

/// [`Pipeline::settle_lost`] of the main pipeline.
pub fn settle_lost(n: u64) {
    main().settle_lost(n);
}

/// [`Pipeline::threads_alive`] of the main pipeline.
pub fn threads_alive() -> usize {
    main().threads_alive()
}

/// [`Pipeline::state`] of the main pipeline.
pub fn state() -> &'static str {
    main().state()
}

/// [`Pipeline::session_state`] of the main pipeline.
pub fn session_state() -> &'static str {
    main().session_state()
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// The most bytes of claimed entries the module holds at once (with `MAX_IN_FLIGHT` entries): the
/// module's memory counts against `maxmemory`, so it stays small under any backlog.
pub const MAX_IN_FLIGHT_BYTES: u64 = 64 << 20;
/// About how many bytes one claim reads under the lock (each hold is bounded by time as well, see
/// [`super::governor::HOLD_TARGET`]).
pub const CLAIM_CHUNK_BYTES: u64 = 1 << 20;

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
/// Whether the userdata stream's progress is kept by its written group (`ACK_MODE=WRITTEN_GROUP`,
/// see [`crate::host::stream::written_group`]) rather than by the group's pending list.
pub fn written_mode(s: &Snapshot) -> bool {
    s.str(Key::AckMode) == "WRITTEN_GROUP"
}

pub fn group_name(s: &Snapshot) -> String {
    if dry_run(s) {
        format!("{}:dry-run", s.str(Key::Group))
    } else {
        s.str(Key::Group).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_pipelines_over_two_streams_share_nothing() {
        // A registry of its own: nothing global is needed for a second pipeline.
        let registry = Registry::new();
        let a = registry.add(Pipeline::new("stream-a"));
        let b = registry.add(Pipeline::new("stream-b"));
        assert!(std::ptr::eq(registry.find("stream-b").expect("found"), b));
        assert!(std::ptr::eq(registry.main_or(|| unreachable!()), a));
        assert_eq!(registry.all().len(), 2);

        a.metrics.in_flight.store(5, Ordering::Relaxed);
        a.metrics.in_flight_bytes.store(500, Ordering::Relaxed);
        a.settle_lost(2);
        a.release_bytes(100);
        assert_eq!(a.metrics.in_flight.load(Ordering::Relaxed), 3);
        assert_eq!(a.metrics.in_flight_bytes.load(Ordering::Relaxed), 400);
        assert!(a.control.recover.load(Ordering::Relaxed));
        assert_eq!(b.metrics.in_flight.load(Ordering::Relaxed), 0);
        assert!(!b.control.recover.load(Ordering::Relaxed));

        a.control.set_state(State::Running);
        b.control.set_state(State::Running);
        a.metrics.set_blocked(Some("42S02"));
        b.control.degraded.store(true, Ordering::Relaxed);
        assert_eq!((a.state(), b.state()), ("blocked", "retrying"));

        let (tx, rx) = crossbeam_channel::bounded(1);
        let t = a
            .spawn_thread("wb-test-a", move || {
                let _ = rx.recv();
            })
            .expect("started");
        assert_eq!((a.threads_alive(), b.threads_alive()), (1, 0));
        tx.send(()).expect("sent");
        t.join().expect("joined");
        assert_eq!(a.threads_alive(), 0);

        // What the threads hand each other is each pipeline's own too.
        a.acks.queue.lock().push(super::super::state::Item {
            stream: "stream-a".into(),
            group: "g".into(),
            settle: super::super::state::Settle::Ack { id: "1-0".into() },
        });
        assert_eq!(
            (a.acks.queue.lock().len(), b.acks.queue.lock().len()),
            (1, 0)
        );
        let (inbox, _rx) = crossbeam_channel::unbounded();
        b.inboxes.lock().push(inbox);
        assert_eq!((a.inboxes.lock().len(), b.inboxes.lock().len()), (0, 1));
        a.drain.chunk.store(7, Ordering::Relaxed);
        assert_eq!(b.drain.chunk.load(Ordering::Relaxed), 0);
    }
}
