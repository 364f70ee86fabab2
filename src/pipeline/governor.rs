//! How fast the claimer may drain: Redis's own clients come first, the backlog waits in the stream.
//!
//! Every claim costs Redis twice: the lock hold itself (the main thread cannot serve a command
//! meanwhile) and the CPU the module's threads then spend on the host's cores. While Redis's main
//! thread is saturated, that cost is taken straight from the application's throughput, and the
//! backlog may as well wait in the stream — that is what write-behind is for. So:
//!
//! - [`MainThread`] samples how busy the main thread is, every ~100 ms: its CPU time plus its time
//!   waiting for a CPU (`/proc/self/task/<pid>/schedstat`, or `stat` ticks where schedstat is
//!   missing) over the time it could run — wall time less the time the module's own threads held
//!   the Redis lock, and less the share of the host's CPU time the hypervisor took (steal, from
//!   `/proc/stat`) ([`busy_fraction`]). Linux only; elsewhere it says nothing and the drain runs at
//!   full speed.
//! - [`Governor`] (pure, no clock of its own) turns the samples into the share of time the drain may
//!   hold the lock: the whole of its usual share (half: each hold is followed by a pause as long)
//!   while the main thread has room, less while it is busier than [`SATURATED`], down to none. The
//!   share follows the samples, down fast and up more slowly, so it settles where the main thread is
//!   85 % busy: the drain takes what the clients leave, and no more. Below its whole share the mode
//!   is `Yielding`, and claims are paced (each hold followed by a wait that keeps holds to the
//!   share); whatever the share, `DRAIN_MIN_RECORDS_PER_SECOND` entries per second are still claimed,
//!   about ten holds a second. The floor keeps the drain moving under sustained load; it never
//!   stops. A new governor starts with no share (the floor only) until the first sample shows the
//!   main thread has room, so a server started under a saturating load gives its clients no burst
//!   at full speed first. While the clients alone saturate the main thread, the module's threads
//!   watch for the lock instead of sleeping on it ([`crate::host::gil`]): asleep, they would hardly
//!   ever get it, and the floor would not be kept.
//! - [`ChunkSizer`] bounds each hold by time ([`HOLD_TARGET`], or [`BUSY_HOLD_TARGET`] while clients
//!   keep the main thread busy) as well as by bytes and entries, from the time per entry the last
//!   holds took (claims, and the workers' acknowledgements).
//!
//! The figures are published for `WB.STATUS` (see [`published`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::control::Pipeline;
pub use super::sizer::ChunkSizer;

/// Above this busy fraction (smoothed) the main thread counts as saturated. Measured on a 2-core
/// host: ~0.9 under pipelined XADDs as fast as Redis takes them, ~0 while only the drain runs.
pub const SATURATED: f64 = 0.85;
/// The share of the time the drain holds the lock at full speed: each hold is followed by a pause
/// as long ([`crate::host::gil::Gil::with`]).
pub const FULL_SHARE: f64 = 0.5;
/// How far one sample moves the share, per unit of busy fraction above [`SATURATED`] (down) or
/// below it (up), in units of [`FULL_SHARE`]: a saturated main thread (busy ~0.95 and more) takes
/// the share to none in two or three samples; an idle one gives it back in two or three samples,
/// one that is nearly saturated only slowly.
const SHARE_DOWN: f64 = 4.0;
const SHARE_UP: f64 = 0.5;
/// While yielding, holds shorten with the share (a hold is what a client waits for), down to this
/// fraction of [`HOLD_TARGET`].
const YIELD_HOLD_MIN: f64 = 0.2;
/// How often the main thread is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The longest one claim may hold the Redis lock, as far as the chunk size can steer it, while no
/// client keeps the main thread busy.
pub const HOLD_TARGET: Duration = Duration::from_millis(1);
/// The longest hold while clients keep the main thread busy (at least [`CLIENTS_BUSY`]): a command
/// that arrives during a hold waits for the rest of it. Measured at half load (60,000 XADD/s, the
/// main thread ~60 % busy, the module's threads on another CPU than the main thread and the
/// clients), three runs each: p99 0.60, 0.70, 0.77 ms against 0.84, 0.83, 0.81 ms with 1 ms holds
/// (without the module 0.18, 0.29, 0.51 ms; docs/performance.md), the module's CPU unchanged.
/// Shorter holds cost more lock hand-offs per entry, which an idle main thread does not need.
pub const BUSY_HOLD_TARGET: Duration = Duration::from_micros(200);
/// From this busy fraction (smoothed) on, clients are taken to be waiting on the main thread, and
/// holds are kept to [`BUSY_HOLD_TARGET`]. A drain alone keeps it near 0.
const CLIENTS_BUSY: f64 = 0.2;
/// Yielding, claims come about this often (each takes the tokens gathered since the last).
const YIELD_HOLDS_PER_SECOND: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The main thread has room: drain as fast as the pipeline goes.
    Full,
    /// The main thread is saturated: drain in the time its clients leave, at least at the floor rate.
    Yielding,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Yielding => "yielding",
        }
    }
}

/// The mode a share of the lock means: the whole share is full speed.
fn mode_of(share: f64) -> Mode {
    if share >= FULL_SHARE {
        Mode::Full
    } else {
        Mode::Yielding
    }
}

/// What the claimer may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Claim up to this many entries.
    Claim(usize),
    /// Claim nothing before this much time has passed.
    Wait(Duration),
}

/// The drain's mode, its share of the lock and, while yielding, its pacing and token bucket. Time is
/// given by the caller (time since any fixed start), so the decisions are testable without a clock.
#[derive(Debug, Clone)]
pub struct Governor {
    /// The smoothed busy fraction; `None` when it cannot be measured.
    busy: Option<f64>,
    /// The share of the time the drain may hold the lock, from none to [`FULL_SHARE`].
    share: f64,
    /// While yielding, when the next paced claim may start.
    next_claim: Duration,
    /// Entries the yielding drain may claim now.
    tokens: f64,
    /// When the tokens were last topped up.
    refilled: Option<Duration>,
}

impl Default for Governor {
    fn default() -> Governor {
        // Until the first sample says the main thread has room, the drain claims only its floor:
        // a server started (or a claimer restarted) under a saturating load does not take a
        // burst at full speed from its clients first.
        Governor {
            busy: None,
            share: 0.0,
            next_claim: Duration::ZERO,
            tokens: 0.0,
            refilled: None,
        }
    }
}

impl Governor {
    /// `Full` with the whole share, `Yielding` below it.
    pub fn mode(&self) -> Mode {
        mode_of(self.share)
    }

    pub fn busy(&self) -> Option<f64> {
        self.busy
    }

    /// Whether Redis's clients alone keep its main thread saturated: yielding with no share of the
    /// lock left, only floor claims are made, and a thread asleep on the lock would hardly ever
    /// get it ([`crate::host::gil`]).
    pub fn clients_saturate(&self) -> bool {
        self.mode() == Mode::Yielding && self.share == 0.0
    }

    /// The share of the time the drain may hold the lock now.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// How long one claim should hold the lock: [`HOLD_TARGET`] at full speed, shorter with the
    /// share while yielding, and at most [`BUSY_HOLD_TARGET`] while clients keep the main thread
    /// busy (a client that arrives during a hold waits for all of it).
    pub fn hold_target(&self) -> Duration {
        hold_target_of(self.share, self.busy)
    }

    /// Takes one sample of the main thread's busy fraction (`None`: not measurable, which means full
    /// speed). Samples are smoothed over two periods; the share moves by how far the busier of the
    /// sample and the smoothed figure is from [`SATURATED`].
    pub fn observe(&mut self, sample: Option<f64>) {
        let Some(sample) = sample.filter(|s| s.is_finite()) else {
            self.busy = None;
            self.share = FULL_SHARE;
            return;
        };
        let sample = sample.clamp(0.0, 1.0);
        let first = self.busy.is_none();
        let busy = match self.busy {
            Some(prev) => 0.5 * prev + 0.5 * sample,
            None => sample,
        };
        self.busy = Some(busy);
        // The share follows the busier of the sample and the smoothed figure: it gives way at the
        // first busy sample (a burst of writes is met within a sample or two, not after the
        // smoothing caught up), and comes back only as the smoothed figure falls.
        let signal = busy.max(sample);
        let gain = if signal > SATURATED {
            SHARE_DOWN
        } else {
            SHARE_UP
        };
        let was = self.mode();
        self.share = if first {
            // The first sample decides the start: the whole share, or none.
            if signal > SATURATED {
                0.0
            } else {
                FULL_SHARE
            }
        } else {
            (self.share + gain * (SATURATED - signal) * FULL_SHARE).clamp(0.0, FULL_SHARE)
        };
        if was == Mode::Full && self.mode() == Mode::Yielding {
            // Start with no tokens saved up: the first floor claim comes a period later.
            self.tokens = 0.0;
            self.refilled = None;
        }
    }

    /// How many entries may be claimed at `now` (`floor`: the minimum entries per second; `want`:
    /// what the claimer would read at full speed, bounded by hold time; `most`: the bound by count,
    /// bytes and in-flight entries alone). While yielding, a paced claim reads `want` once the last
    /// hold is its share of the time since it began ([`Governor::held`]); claims for the floor are
    /// few and large, and the floor wins over the hold-time bound: a hold slowed down by a busy host
    /// must not slow the drain below the floor.
    pub fn budget(&mut self, now: Duration, floor: u64, want: usize, most: usize) -> Budget {
        if self.mode() == Mode::Full {
            return Budget::Claim(want.max(1));
        }
        let paced = self.share > 0.0;
        if paced && now >= self.next_claim {
            return Budget::Claim(want.max(1));
        }
        let want = most.max(1);
        let floor = floor.max(1) as f64;
        if let Some(then) = self.refilled {
            let elapsed = now.saturating_sub(then).as_secs_f64();
            // At most one second of tokens is saved up: a long pause never turns into a burst.
            self.tokens = (self.tokens + elapsed * floor).min(floor.max(1.0));
        }
        self.refilled = Some(now);
        // One claim takes about a tenth of a second's tokens: few holds, each of useful size.
        let step = (floor / YIELD_HOLDS_PER_SECOND as f64)
            .max(1.0)
            .min(want as f64);
        if self.tokens >= step {
            return Budget::Claim((self.tokens.floor() as usize).clamp(1, want));
        }
        // (At least a microsecond: tokens a hair short of a step must not read as no wait at all.)
        let for_tokens =
            Duration::from_secs_f64((step - self.tokens) / floor).max(Duration::from_micros(1));
        Budget::Wait(if paced {
            for_tokens.min(self.next_claim - now)
        } else {
            for_tokens
        })
    }

    /// Records a claim's hold, which began at `start` and lasted `held`: while yielding, the next
    /// paced claim waits until the hold is the drain's share of the time since `start`.
    pub fn held(&mut self, start: Duration, held: Duration) {
        if self.share > 0.0 {
            // A share a hair above none gives a wait longer than any clock: never a panic.
            let wait = Duration::try_from_secs_f64(held.as_secs_f64() / self.share)
                .unwrap_or(Duration::MAX);
            self.next_claim = start.saturating_add(wait);
        }
    }

    /// Counts `n` entries claimed against the yielding budget.
    pub fn spent(&mut self, n: usize) {
        if self.mode() == Mode::Yielding {
            self.tokens = (self.tokens - n as f64).max(0.0);
        }
    }
}

/// Samples Redis's main thread (its thread ID is the process ID).
pub struct MainThread {
    /// The last sample: when, the main thread's demand, the module's lock held, both cumulative.
    last: Option<(Instant, Duration, Duration)>,
    /// The host's CPU ticks at the last sample (see [`HostTicks`]).
    host: Option<HostTicks>,
    /// The share of the host's CPU time stolen between the last two samples.
    stolen: Option<f64>,
    source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `/proc/self/task/<pid>/schedstat`: nanoseconds on a CPU and waiting for one.
    Schedstat,
    /// `/proc/self/task/<pid>/stat`: utime + stime in clock ticks (coarser; no run-queue wait).
    Stat,
    /// Neither is readable (not Linux, or /proc is hidden).
    None,
}

impl Default for MainThread {
    fn default() -> MainThread {
        MainThread::new()
    }
}

impl MainThread {
    pub fn new() -> MainThread {
        let source = if demand(Source::Schedstat).is_some() {
            Source::Schedstat
        } else if demand(Source::Stat).is_some() {
            Source::Stat
        } else {
            Source::None
        };
        MainThread {
            last: None,
            host: None,
            stolen: None,
            source,
        }
    }

    /// Whether the main thread's busy fraction can be read here (Linux).
    pub fn measurable(&self) -> bool {
        self.source != Source::None
    }

    /// Whether a new sample is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.measurable()
            && self
                .last
                .is_none_or(|(then, _, _)| now.duration_since(then) >= SAMPLE_EVERY)
    }

    /// The main thread's busy fraction since the last sample ([`busy_fraction`]); `None` for the
    /// first sample or when it cannot be read.
    pub fn sample(&mut self, now: Instant) -> Option<f64> {
        let Some(total) = demand(self.source) else {
            self.source = Source::None;
            self.last = None;
            return None;
        };
        let held = crate::host::gil::held();
        let host = HostTicks::read();
        let host_before = std::mem::replace(&mut self.host, host);
        let (then, before, held_before) = self.last.replace((now, total, held))?;
        self.stolen = host_before
            .zip(host)
            .map(|(before, after)| after.stolen_since(before));
        busy_fraction(
            total.saturating_sub(before),
            held.saturating_sub(held_before),
            now.duration_since(then),
            self.stolen.unwrap_or(0.0),
        )
    }

    /// The share of the host's CPU time stolen over the last sample; `None` before two samples, or
    /// where `/proc/stat` cannot be read.
    pub fn stolen(&self) -> Option<f64> {
        self.stolen
    }
}

/// The host's CPU time, all CPUs together, in ticks: the `cpu` line of `/proc/stat`.
///
/// On a virtual machine the hypervisor may run other guests on this guest's CPUs ("steal"). A
/// thread that is on a CPU while it is stolen is neither running nor waiting on a run queue as the
/// guest's scheduler counts it, so the main thread's demand misses that time: on a shared VM with a
/// third of its CPU time stolen, a saturated main thread read ~60 % busy and the drain never gave
/// way. The share stolen over a sample is taken out of the time the main thread could run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostTicks {
    stolen: u64,
    total: u64,
}

/// At most this share of the time is taken as stolen, whatever `/proc/stat` says.
const MOST_STOLEN: f64 = 0.9;

impl HostTicks {
    fn read() -> Option<HostTicks> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        HostTicks::parse(text.lines().next()?)
    }

    /// `cpu  user nice system idle iowait irq softirq steal [guest guest_nice]`; guest time is
    /// already inside user and nice, so the total is the first eight.
    fn parse(line: &str) -> Option<HostTicks> {
        let mut f = line.split_ascii_whitespace();
        if f.next()? != "cpu" {
            return None;
        }
        let mut ticks = [0u64; 8];
        for t in &mut ticks {
            *t = f.next()?.parse().ok()?;
        }
        Some(HostTicks {
            stolen: ticks[7],
            total: ticks.iter().fold(0u64, |a, t| a.saturating_add(*t)),
        })
    }

    /// The share of the host's CPU time stolen between `before` and `self`.
    fn stolen_since(self, before: HostTicks) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return 0.0;
        }
        let stolen = self.stolen.saturating_sub(before.stolen);
        stolen as f64 / total as f64
    }
}

/// How busy the main thread was over `wall`: its `demand` (CPU and run-queue time) over the time
/// it could run, which is `wall` less the time the module's threads `held` the Redis lock, of which
/// the `stolen` share was the hypervisor's (see [`HostTicks`]). While the
/// module holds the lock, the main thread waits off any run queue, so its demand alone cannot show
/// that the drain squeezes it: with the lock held half of the time and the main thread busy all of
/// the other half, demand over wall would read 0.5, and the drain would never yield to the clients
/// it keeps waiting. Never above 1; `None` for an empty period.
///
/// An idle main thread reads near 0 however long the lock was held; one whose clients keep it
/// busy reads near 1 whatever share of the time the drain took from it.
pub fn busy_fraction(demand: Duration, held: Duration, wall: Duration, stolen: f64) -> Option<f64> {
    if wall.is_zero() {
        return None;
    }
    // The module holds the lock at most about half of the time (each hold is followed by a pause as
    // long); a tenth of the period is kept as the least it could run, whatever the clock says.
    let could_run = wall.saturating_sub(held).max(wall / 10).as_secs_f64()
        * (1.0 - stolen.clamp(0.0, MOST_STOLEN));
    Some((demand.as_secs_f64() / could_run).min(1.0))
}

/// The main thread's CPU time plus its run-queue wait, cumulative.
fn demand(source: Source) -> Option<Duration> {
    let pid = std::process::id();
    match source {
        Source::Schedstat => {
            let text = std::fs::read_to_string(format!("/proc/self/task/{pid}/schedstat")).ok()?;
            parse_schedstat(&text)
        }
        Source::Stat => {
            let text = std::fs::read_to_string(format!("/proc/self/task/{pid}/stat")).ok()?;
            // SAFETY: sysconf has no preconditions.
            let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            parse_stat(&text, u64::try_from(ticks).ok().filter(|t| *t > 0)?)
        }
        Source::None => None,
    }
}

/// `<ns on cpu> <ns waiting on a run queue> <timeslices>`.
fn parse_schedstat(text: &str) -> Option<Duration> {
    let mut f = text.split_ascii_whitespace();
    let run: u64 = f.next()?.parse().ok()?;
    let wait: u64 = f.next()?.parse().ok()?;
    // Some kernels without schedstats report zeros: unusable.
    (run > 0).then(|| Duration::from_nanos(run.saturating_add(wait)))
}

/// utime + stime (fields 14 and 15; the command name in parentheses may hold spaces).
fn parse_stat(text: &str, ticks_per_second: u64) -> Option<Duration> {
    let rest = text.rsplit_once(')')?.1;
    let mut f = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    let ticks = utime.saturating_add(stime);
    Some(Duration::from_secs_f64(
        ticks as f64 / ticks_per_second as f64,
    ))
}

// --- what WB.STATUS shows --------------------------------------------------------------------------

/// A measured fraction as published: per mille, `u64::MAX` when not measured.
fn store_permille(to: &AtomicU64, fraction: Option<f64>) {
    let permille = fraction.map_or(u64::MAX, |f| (f * 1000.0).round().clamp(0.0, 1000.0) as u64);
    to.store(permille, Ordering::Relaxed);
}

/// A fraction published by [`store_permille`], in per mille; `None` when not measured.
fn load_permille(from: &AtomicU64) -> Option<u64> {
    Some(from.load(Ordering::Relaxed)).filter(|&p| p != u64::MAX)
}

/// Publishes the claimer's view for `WB.STATUS`.
pub fn publish(p: &Pipeline, g: &Governor, chunk: usize) {
    let d = &p.drain;
    store_permille(&d.busy_permille, g.busy);
    d.chunk.store(chunk as u64, Ordering::Relaxed);
    d.share_permille
        .store((g.share * 1000.0).floor() as u64, Ordering::Relaxed);
}

/// Publishes the share of the host's CPU time stolen over the last sample.
pub fn publish_stolen(p: &Pipeline, stolen: Option<f64>) {
    store_permille(&p.drain.stolen_permille, stolen);
}

/// Records the last claim's lock hold and the wait to take the lock.
pub fn publish_hold(p: &Pipeline, held: Duration, waited: Duration) {
    p.drain
        .last_hold_us
        .store(held.as_micros() as u64, Ordering::Relaxed);
    p.drain
        .last_lock_wait_us
        .store(waited.as_micros() as u64, Ordering::Relaxed);
}

/// [`Governor::hold_target`] for a share of the time and a busy fraction (`None`: not measured).
fn hold_target_of(share: f64, busy: Option<f64>) -> Duration {
    let by_share = match mode_of(share) {
        Mode::Full => HOLD_TARGET,
        Mode::Yielding => HOLD_TARGET.mul_f64((share / FULL_SHARE).clamp(YIELD_HOLD_MIN, 1.0)),
    };
    if busy.is_some_and(|b| b >= CLIENTS_BUSY) {
        by_share.min(BUSY_HOLD_TARGET)
    } else {
        by_share
    }
}

/// The hold target of the share and busy fraction the claimer last published: what bounds the
/// other threads' holds (the workers' acknowledgements).
pub fn published_hold_target(p: &Pipeline) -> Duration {
    let d = &p.drain;
    hold_target_of(
        d.share_permille.load(Ordering::Relaxed) as f64 / 1000.0,
        load_permille(&d.busy_permille).map(|b| b as f64 / 1000.0),
    )
}

/// What the claimer last published.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub mode: Mode,
    /// Percent, `None` when not measured.
    pub busy_pct: Option<u64>,
    /// The share of the host's CPU time stolen, in percent; `None` when not measured.
    pub stolen_pct: Option<u64>,
    pub chunk: u64,
    /// The share of the time the drain may hold the lock, in percent (rounded down).
    pub share_pct: u64,
    /// How long a hold is sized to now ([`published_hold_target`]).
    pub hold_target_us: u64,
    pub last_hold_us: u64,
    pub last_lock_wait_us: u64,
    pub ack_chunk: u64,
    pub last_ack_hold_us: u64,
    pub ack_holds: u64,
    pub claims: u64,
}

pub fn published(p: &Pipeline) -> Published {
    let d = &p.drain;
    Published {
        mode: mode_of(d.share_permille.load(Ordering::Relaxed) as f64 / 1000.0),
        busy_pct: load_permille(&d.busy_permille).map(|b| (b + 5) / 10),
        stolen_pct: load_permille(&d.stolen_permille).map(|s| (s + 5) / 10),
        chunk: d.chunk.load(Ordering::Relaxed),
        share_pct: d.share_permille.load(Ordering::Relaxed) / 10,
        hold_target_us: published_hold_target(p).as_micros() as u64,
        last_hold_us: d.last_hold_us.load(Ordering::Relaxed),
        last_lock_wait_us: d.last_lock_wait_us.load(Ordering::Relaxed),
        ack_chunk: d.ack_chunk.load(Ordering::Relaxed),
        last_ack_hold_us: d.last_ack_hold_us.load(Ordering::Relaxed),
        ack_holds: d.ack_holds.load(Ordering::Relaxed),
        claims: d.claims.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A governor whose main thread has been saturated long enough to leave the drain no share.
    fn saturated() -> Governor {
        let mut g = Governor::default();
        for _ in 0..10 {
            g.observe(Some(0.95));
        }
        assert_eq!(g.share(), 0.0);
        g
    }

    #[test]
    fn a_new_governor_claims_only_its_floor_until_the_first_sample_shows_room() {
        let mut g = Governor::default();
        assert_eq!((g.mode(), g.share()), (Mode::Yielding, 0.0));
        // No tokens saved up yet: the first floor claim comes a tenth of a second later.
        assert!(matches!(g.budget(ms(0), 1000, 500, 500), Budget::Wait(_)));
        // A saturated first sample keeps it there; one with room gives the whole share at once.
        let mut busy = g.clone();
        busy.observe(Some(0.95));
        assert_eq!((busy.mode(), busy.share()), (Mode::Yielding, 0.0));
        assert!(g.clients_saturate() && busy.clients_saturate());
        g.observe(Some(0.3));
        assert_eq!((g.mode(), g.share()), (Mode::Full, FULL_SHARE));
        assert!(!g.clients_saturate());
        assert_eq!(g.budget(ms(1), 1000, 500, 500), Budget::Claim(500));
    }

    #[test]
    fn the_share_settles_where_the_main_thread_is_saturated_and_no_further() {
        // The clients alone keep the main thread `own` busy; in the time the drain holds the lock
        // they wait, so the main thread reads `own / (1 - share)` busy (see `busy_fraction`).
        let settle = |own: f64| {
            let mut g = Governor::default();
            for _ in 0..200 {
                let h = g.share();
                g.observe(Some((own / (1.0 - h)).min(1.0)));
            }
            g
        };
        // Room to spare: the drain keeps its whole share.
        let g = settle(0.3);
        assert_eq!((g.mode(), g.share()), (Mode::Full, FULL_SHARE));
        // Busy clients: the drain takes what leaves the main thread 85 % busy (0.70 / 0.85).
        let g = settle(0.7);
        assert_eq!(g.mode(), Mode::Yielding);
        let expected = 1.0 - 0.7 / SATURATED;
        assert!(
            (g.share() - expected).abs() < 0.02,
            "{} vs {expected}",
            g.share()
        );
        // Clients that saturate it on their own: no share, the floor only.
        let g = settle(0.95);
        assert_eq!((g.mode(), g.share()), (Mode::Yielding, 0.0));
    }

    #[test]
    fn holds_are_short_while_clients_keep_the_main_thread_busy() {
        let mut g = Governor::default();
        g.observe(Some(0.1));
        assert_eq!((g.mode(), g.hold_target()), (Mode::Full, HOLD_TARGET));
        // Half load: full speed, short holds.
        let mut g = Governor::default();
        for _ in 0..10 {
            g.observe(Some(0.55));
        }
        assert_eq!((g.mode(), g.hold_target()), (Mode::Full, BUSY_HOLD_TARGET));
        // The clients leave: long holds again once the smoothed figure has fallen.
        for _ in 0..10 {
            g.observe(Some(0.0));
        }
        assert_eq!((g.mode(), g.hold_target()), (Mode::Full, HOLD_TARGET));
        // Not measurable: full speed, as nothing says a client waits.
        g.observe(None);
        assert_eq!(g.hold_target(), HOLD_TARGET);
        assert!(BUSY_HOLD_TARGET < HOLD_TARGET);
    }

    #[test]
    fn yielding_holds_are_shorter_with_the_share() {
        // The share left while yielding, with the clients gone since (the smoothed figure low).
        let mut g = Governor::default();
        for _ in 0..200 {
            let h = g.share();
            g.observe(Some((0.7 / (1.0 - h)).min(1.0)));
        }
        assert_eq!(g.hold_target(), BUSY_HOLD_TARGET, "clients still busy");
        g.busy = Some(0.0);
        let expected = HOLD_TARGET.mul_f64(g.share() / FULL_SHARE);
        assert_eq!(g.hold_target(), expected);
        assert!(g.hold_target() < HOLD_TARGET / 2);
        let g = saturated();
        assert_eq!(g.hold_target(), HOLD_TARGET.mul_f64(YIELD_HOLD_MIN));
        let mut s = ChunkSizer::default();
        s.record(ms(1), 100);
        assert_eq!(s.count(1000, Duration::from_micros(250)), 25);
    }

    #[test]
    fn a_share_a_hair_above_none_waits_without_overflow() {
        let mut g = saturated();
        g.share = f64::MIN_POSITIVE;
        g.held(Duration::from_secs(u64::MAX / 2), Duration::from_secs(1));
        assert_eq!(g.next_claim, Duration::MAX);
        // The floor still claims.
        assert!(matches!(g.budget(ms(0), 1000, 10, 1000), Budget::Wait(_)));
        assert_eq!(g.budget(ms(200), 1000, 10, 1000), Budget::Claim(200));
        assert_eq!(g.hold_target(), HOLD_TARGET.mul_f64(YIELD_HOLD_MIN));
    }

    #[test]
    fn paced_claims_hold_the_lock_for_the_share_and_no_more() {
        let mut g = Governor::default();
        // Between the thresholds: a share of about a fifth.
        for _ in 0..200 {
            let h = g.share();
            g.observe(Some((0.7 / (1.0 - h)).min(1.0)));
        }
        let share = g.share();
        let (mut now, mut holding) = (Duration::ZERO, Duration::ZERO);
        let hold = ms(1);
        while now < Duration::from_secs(10) {
            match g.budget(now, 1, 1000, 1000) {
                Budget::Claim(n) => {
                    g.spent(n);
                    g.held(now, hold);
                    holding += hold;
                    now += hold;
                }
                Budget::Wait(d) => {
                    assert!(d > Duration::ZERO);
                    now += d;
                }
            }
        }
        let measured = holding.as_secs_f64() / now.as_secs_f64();
        assert!((measured - share).abs() < 0.01, "{measured} vs {share}");
    }

    #[test]
    fn the_main_thread_is_as_busy_as_it_was_in_the_time_the_module_left_it() {
        let busy = |demand, held| busy_fraction(ms(demand), ms(held), ms(100), 0.0).unwrap();
        // No holds: demand over wall.
        assert!((busy(40, 0) - 0.4).abs() < 1e-9);
        // The drain held the lock half of the time and the clients kept the main thread busy in
        // the other half: saturated, though demand over wall reads 0.5.
        assert!((busy(50, 50) - 1.0).abs() < 1e-9);
        assert!(busy(45, 50) >= SATURATED);
        // An idle main thread stays idle however long the drain held the lock.
        assert!(busy(2, 50) < 0.05);
        // A moderately busy one with the drain at full speed stays below saturation.
        assert!(busy(25, 40) < SATURATED);
        // Never above 1, and a hold longer than the period (holds ending in it) is bounded.
        assert_eq!(busy(90, 50), 1.0);
        assert!(busy(5, 200) <= 1.0);
        assert_eq!(busy_fraction(ms(1), ms(0), Duration::ZERO, 0.0), None);
    }

    #[test]
    fn time_the_hypervisor_stole_is_time_the_main_thread_could_not_run() {
        // A third of the host's CPU time stolen: a main thread that ran 60 % of the wall time had
        // no more to take.
        let stolen = HostTicks {
            stolen: 1_100,
            total: 1_600,
        }
        .stolen_since(HostTicks {
            stolen: 1_000,
            total: 1_300,
        });
        assert!((stolen - 1.0 / 3.0).abs() < 1e-9);
        let busy = busy_fraction(ms(60), ms(0), ms(100), stolen).unwrap();
        assert!(busy >= SATURATED, "{busy}");
        // Without steal the same figure leaves room.
        assert!(busy_fraction(ms(60), ms(0), ms(100), 0.0).unwrap() < SATURATED);
        // Nothing elapsed, or counters that went back: nothing stolen; a wild figure is capped.
        let at = HostTicks {
            stolen: 5,
            total: 10,
        };
        assert_eq!(at.stolen_since(at), 0.0);
        assert_eq!(
            at.stolen_since(HostTicks {
                stolen: 9,
                total: 20
            }),
            0.0
        );
        assert!(busy_fraction(ms(1), ms(0), ms(100), 5.0).unwrap() <= 1.0);
        assert_eq!(
            HostTicks::parse("cpu  2385174 26694 198591 8054893 11346 0 15314 215191 0 0"),
            Some(HostTicks {
                stolen: 215_191,
                total: 2_385_174 + 26_694 + 198_591 + 8_054_893 + 11_346 + 15_314 + 215_191,
            })
        );
        assert_eq!(HostTicks::parse("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(HostTicks::parse("cpu 1 2 3"), None);
    }

    #[test]
    fn an_idle_main_thread_leaves_the_drain_at_full_speed() {
        let mut g = Governor::default();
        for _ in 0..10 {
            g.observe(Some(0.1));
        }
        assert_eq!(g.mode(), Mode::Full);
        assert_eq!(g.budget(ms(0), 1000, 800, 1000), Budget::Claim(800));
    }

    #[test]
    fn a_saturated_main_thread_makes_the_drain_yield() {
        let g = saturated();
        assert_eq!(g.mode(), Mode::Yielding);
        assert!(g.busy().is_some_and(|b| b > SATURATED));
    }

    #[test]
    fn a_burst_is_met_at_its_first_sample_and_the_share_comes_back_after_it() {
        let mut g = Governor::default();
        g.observe(Some(0.1));
        // One saturated sample: the drain gives way at once, most of its share at the second.
        g.observe(Some(1.0));
        assert_eq!(g.mode(), Mode::Yielding, "smoothed: {:?}", g.busy());
        g.observe(Some(1.0));
        assert!(g.share() <= 0.25 * FULL_SHARE, "share {}", g.share());
        // Idle again: full speed within a few samples.
        for _ in 0..4 {
            g.observe(Some(0.05));
        }
        assert_eq!(g.mode(), Mode::Full, "share {}", g.share());
    }

    #[test]
    fn the_mode_returns_to_full_only_well_below_the_threshold() {
        let mut g = saturated();
        g.observe(Some(0.75));
        g.observe(Some(0.75));
        assert_eq!(g.mode(), Mode::Yielding, "between the thresholds it stays");
        for _ in 0..5 {
            g.observe(Some(0.2));
        }
        assert_eq!(g.mode(), Mode::Full);
    }

    #[test]
    fn an_unmeasurable_main_thread_means_full_speed() {
        let mut g = saturated();
        g.observe(None);
        assert_eq!(g.mode(), Mode::Full);
        assert_eq!(g.busy(), None);
        g.observe(Some(f64::NAN));
        assert_eq!(g.mode(), Mode::Full);
    }

    /// Drives a yielding governor for `seconds` with the claimer asking every `tick`, and returns the
    /// entries claimed and the claims made.
    fn drain_for(
        g: &mut Governor,
        floor: u64,
        want: usize,
        seconds: u64,
        tick: Duration,
    ) -> (usize, usize) {
        let (mut now, mut claimed, mut holds) = (Duration::ZERO, 0, 0);
        while now < Duration::from_secs(seconds) {
            match g.budget(now, floor, 1, want) {
                Budget::Claim(n) => {
                    g.spent(n);
                    claimed += n;
                    holds += 1;
                    now += tick;
                }
                Budget::Wait(d) => {
                    assert!(d > Duration::ZERO);
                    now += d;
                }
            }
        }
        (claimed, holds)
    }

    #[test]
    fn yielding_drains_at_the_floor_in_few_holds() {
        let mut g = saturated();
        let (claimed, holds) = drain_for(&mut g, 1000, 1000, 10, ms(1));
        // 10 s at 1,000 entries/s, the first tenth of a second spent saving up.
        assert!((9_800..=10_000).contains(&claimed), "claimed {claimed}");
        assert!(holds <= 10 * 10 + 1, "{holds} holds");
        assert!(holds >= 90, "{holds} holds");
    }

    #[test]
    fn yielding_never_claims_more_than_the_chunk_allows() {
        let mut g = saturated();
        let (claimed, _) = drain_for(&mut g, 50_000, 200, 2, ms(1));
        assert!(claimed > 0);
        let mut g = saturated();
        g.budget(ms(0), 50_000, 1, 200);
        assert_eq!(g.budget(ms(900), 50_000, 1, 200), Budget::Claim(200));
    }

    #[test]
    fn a_tiny_floor_still_claims_one_entry_at_a_time() {
        let mut g = saturated();
        let (claimed, holds) = drain_for(&mut g, 1, 1000, 10, ms(1));
        assert!((9..=10).contains(&claimed), "claimed {claimed}");
        assert_eq!(claimed, holds);
    }

    #[test]
    fn yielding_keeps_the_floor_when_holds_are_slow() {
        // The hold-time bound says one entry at a time; the floor still gets its tenth of a second.
        let mut g = saturated();
        g.budget(ms(0), 5_000, 1, 1000);
        assert_eq!(g.budget(ms(100), 5_000, 1, 1000), Budget::Claim(500));
    }

    #[test]
    fn a_long_pause_does_not_become_a_burst() {
        let mut g = saturated();
        g.budget(ms(0), 1000, 1, 100_000);
        assert_eq!(
            g.budget(Duration::from_secs(60), 1000, 1, 100_000),
            Budget::Claim(1000)
        );
    }

    #[test]
    fn claims_are_sized_to_the_hold_target() {
        let mut s = ChunkSizer::default();
        assert_eq!(
            s.count(1000, HOLD_TARGET),
            100,
            "a small first read measures the cost"
        );
        // 100 entries in 2 ms: 20 µs each, so 50 fit in 1 ms.
        s.record(ms(2), 100);
        assert_eq!(s.count(1000, HOLD_TARGET), 50);
        // Cheaper entries raise the count gradually, never above the other bounds.
        for _ in 0..50 {
            s.record(Duration::from_micros(5), 100);
        }
        assert_eq!(s.count(1000, HOLD_TARGET), 1000);
        assert_eq!(s.count(300, HOLD_TARGET), 300);
        // A slow hold cuts it at once.
        s.record(ms(10), 10);
        assert_eq!(s.count(1000, HOLD_TARGET), 1);
        s.record(ms(5), 0);
        assert_eq!(s.count(1000, HOLD_TARGET), 1, "an empty read says nothing");
    }

    #[test]
    fn proc_files_are_parsed() {
        assert_eq!(
            parse_schedstat("196995788 37053282 40\n"),
            Some(Duration::from_nanos(196_995_788 + 37_053_282))
        );
        assert_eq!(parse_schedstat("0 0 0\n"), None);
        assert_eq!(parse_schedstat("garbage"), None);
        let stat =
            "1234 (redis-server *:6379) S 1 1234 1234 0 -1 4194560 1 0 0 0 150 50 0 0 20 0 6 0";
        assert_eq!(parse_stat(stat, 100), Some(Duration::from_secs(2)));
        assert_eq!(parse_stat("1234 (x) S", 100), None);
    }

    #[test]
    fn this_threads_process_can_be_sampled_on_linux() {
        let mut m = MainThread::new();
        let t0 = Instant::now();
        assert!(m.due(t0) || !cfg!(target_os = "linux"));
        assert_eq!(
            m.sample(t0),
            None,
            "the first sample has nothing to compare with"
        );
        let mut x = 0u64;
        while t0.elapsed() < ms(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        // The test harness runs tests on other threads than the process's first, so the figure says
        // little; it must be a fraction when it exists.
        if let Some(b) = m.sample(Instant::now()) {
            assert!((0.0..=4.0).contains(&b), "{b}");
        }
        assert!(!m.due(Instant::now()));
    }
}
