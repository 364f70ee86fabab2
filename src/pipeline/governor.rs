//! How fast the claimer may drain: Redis's own clients come first, the backlog waits in the stream.
//!
//! Every claim costs Redis twice: the lock hold itself (the main thread cannot serve a command
//! meanwhile) and the CPU the module's threads then spend on the host's cores. While Redis's main
//! thread is saturated, that cost is taken straight from the application's throughput, and the
//! backlog may as well wait in the stream — that is what write-behind is for. So:
//!
//! - [`MainThread`] samples how busy the main thread is, every ~100 ms: its CPU time plus its time
//!   waiting for a CPU (`/proc/self/task/<pid>/schedstat`, or `stat` ticks where schedstat is
//!   missing) over wall time. Linux only; elsewhere it says nothing and the drain runs at full speed.
//! - [`Governor`] (pure, no clock of its own) turns the samples into a [`Mode`]: `Full` while the
//!   main thread has room; `Yielding` while it is saturated (busy ≥ 85 %, smoothed), when claims are paced to
//!   `DRAIN_MIN_RECORDS_PER_SECOND` entries per second, about ten holds a second. The floor keeps
//!   the drain moving under sustained load; it never stops.
//! - [`ChunkSizer`] bounds each hold by time ([`HOLD_TARGET`]) as well as by bytes and entries, from
//!   the time per entry the last holds took.
//!
//! The figures are published for `WB.STATUS` (see [`published`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::control::Pipeline;

/// Above this busy fraction (smoothed) the main thread counts as saturated. Measured on a 2-core
/// host: ~0.9 under pipelined XADDs as fast as Redis takes them, ~0 while only the drain runs.
pub const SATURATED: f64 = 0.85;
/// Below this the drain goes back to full speed (the gap avoids flapping at the threshold).
pub const RELAXED: f64 = 0.65;
/// How often the main thread is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The longest one claim may hold the Redis lock, as far as the chunk size can steer it.
pub const HOLD_TARGET: Duration = Duration::from_millis(1);
/// Yielding, claims come about this often (each takes the tokens gathered since the last).
const YIELD_HOLDS_PER_SECOND: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The main thread has room: drain as fast as the pipeline goes.
    Full,
    /// The main thread is saturated: drain at the floor rate only.
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

/// What the claimer may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Claim up to this many entries.
    Claim(usize),
    /// Claim nothing before this much time has passed.
    Wait(Duration),
}

/// The drain's mode and, while yielding, its token bucket. Time is given by the caller (time since
/// any fixed start), so the decisions are testable without a clock.
#[derive(Debug, Clone)]
pub struct Governor {
    mode: Mode,
    /// The smoothed busy fraction; `None` when it cannot be measured.
    busy: Option<f64>,
    /// Entries the yielding drain may claim now.
    tokens: f64,
    /// When the tokens were last topped up.
    refilled: Option<Duration>,
}

impl Default for Governor {
    fn default() -> Governor {
        Governor {
            mode: Mode::Full,
            busy: None,
            tokens: 0.0,
            refilled: None,
        }
    }
}

impl Governor {
    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn busy(&self) -> Option<f64> {
        self.busy
    }

    /// Takes one sample of the main thread's busy fraction (`None`: not measurable, which means full
    /// speed). Samples are smoothed over a few periods, and the mode changes with hysteresis.
    pub fn observe(&mut self, sample: Option<f64>) {
        let Some(sample) = sample.filter(|s| s.is_finite()) else {
            self.busy = None;
            self.mode = Mode::Full;
            return;
        };
        let sample = sample.clamp(0.0, 1.0);
        let busy = match self.busy {
            Some(prev) => 0.5 * prev + 0.5 * sample,
            None => sample,
        };
        self.busy = Some(busy);
        self.mode = match self.mode {
            Mode::Full if busy >= SATURATED => {
                // Start with no tokens saved up: the first yielding claim comes a period later.
                self.tokens = 0.0;
                self.refilled = None;
                Mode::Yielding
            }
            Mode::Yielding if busy < RELAXED => Mode::Full,
            m => m,
        };
    }

    /// How many entries may be claimed at `now` (`floor`: the minimum entries per second; `want`:
    /// what the claimer would read at full speed, bounded by hold time; `most`: the bound by count,
    /// bytes and in-flight entries alone). While yielding, holds are few, and the floor wins over the
    /// hold-time bound: a hold slowed down by a busy host must not slow the drain below the floor.
    pub fn budget(&mut self, now: Duration, floor: u64, want: usize, most: usize) -> Budget {
        if self.mode == Mode::Full {
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
            Budget::Claim((self.tokens.floor() as usize).clamp(1, want))
        } else {
            Budget::Wait(Duration::from_secs_f64((step - self.tokens) / floor))
        }
    }

    /// Counts `n` entries claimed against the yielding budget.
    pub fn spent(&mut self, n: usize) {
        if self.mode == Mode::Yielding {
            self.tokens = (self.tokens - n as f64).max(0.0);
        }
    }
}

/// The claim chunk bounded by hold time: how long an entry took under the lock lately, and so how
/// many fit in [`HOLD_TARGET`].
#[derive(Debug, Clone, Default)]
pub struct ChunkSizer {
    /// Smoothed nanoseconds of lock hold per entry claimed; `None` before the first claim.
    per_entry_ns: Option<f64>,
}

impl ChunkSizer {
    /// The entries the next claim may read: at most `max` (the count and byte bounds), at most what
    /// fits in the hold target, at least one.
    pub fn count(&self, max: usize) -> usize {
        let max = max.max(1);
        match self.per_entry_ns {
            Some(ns) if ns > 0.0 => {
                let fit = (HOLD_TARGET.as_nanos() as f64 / ns).floor() as usize;
                fit.clamp(1, max)
            }
            // Unknown yet: a small first read measures the cost.
            _ => max.min(100),
        }
    }

    /// Records a hold of `held` that claimed `n` entries (holds that claimed nothing say nothing
    /// about the cost per entry).
    pub fn record(&mut self, held: Duration, n: usize) {
        if n == 0 {
            return;
        }
        let ns = held.as_nanos() as f64 / n as f64;
        self.per_entry_ns = Some(match self.per_entry_ns {
            // A slower hold weighs in at once (holds must stay short); a faster one only gradually.
            Some(prev) if ns < prev => 0.75 * prev + 0.25 * ns,
            _ => ns,
        });
    }
}

/// Samples Redis's main thread (its thread ID is the process ID).
pub struct MainThread {
    last: Option<(Instant, Duration)>,
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
        MainThread { last: None, source }
    }

    /// Whether a new sample is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.source != Source::None
            && self
                .last
                .is_none_or(|(then, _)| now.duration_since(then) >= SAMPLE_EVERY)
    }

    /// The main thread's busy fraction since the last sample; `None` for the first sample or when
    /// it cannot be read.
    pub fn sample(&mut self, now: Instant) -> Option<f64> {
        let Some(total) = demand(self.source) else {
            self.source = Source::None;
            self.last = None;
            return None;
        };
        let prev = self.last.replace((now, total));
        let (then, before) = prev?;
        let wall = now.duration_since(then).as_secs_f64();
        (wall > 0.0).then(|| total.saturating_sub(before).as_secs_f64() / wall)
    }
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

/// Publishes the claimer's view for `WB.STATUS`.
pub fn publish(p: &Pipeline, g: &Governor, chunk: usize) {
    let d = &p.drain;
    d.mode
        .store(u8::from(g.mode == Mode::Yielding), Ordering::Relaxed);
    let busy = g
        .busy
        .map_or(u64::MAX, |b| (b * 1000.0).round().clamp(0.0, 1000.0) as u64);
    d.busy_permille.store(busy, Ordering::Relaxed);
    d.chunk.store(chunk as u64, Ordering::Relaxed);
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

/// What the claimer last published.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub mode: Mode,
    /// Percent, `None` when not measured.
    pub busy_pct: Option<u64>,
    pub chunk: u64,
    pub last_hold_us: u64,
    pub last_lock_wait_us: u64,
}

pub fn published(p: &Pipeline) -> Published {
    let d = &p.drain;
    let busy = d.busy_permille.load(Ordering::Relaxed);
    Published {
        mode: if d.mode.load(Ordering::Relaxed) == 1 {
            Mode::Yielding
        } else {
            Mode::Full
        },
        busy_pct: (busy != u64::MAX).then(|| (busy + 5) / 10),
        chunk: d.chunk.load(Ordering::Relaxed),
        last_hold_us: d.last_hold_us.load(Ordering::Relaxed),
        last_lock_wait_us: d.last_lock_wait_us.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn saturated() -> Governor {
        let mut g = Governor::default();
        for _ in 0..3 {
            g.observe(Some(0.95));
        }
        g
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
    fn one_busy_sample_among_idle_ones_does_not_switch() {
        let mut g = Governor::default();
        g.observe(Some(0.1));
        g.observe(Some(0.9));
        assert_eq!(g.mode(), Mode::Full, "smoothed: {:?}", g.busy());
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
        assert_eq!(s.count(1000), 100, "a small first read measures the cost");
        // 100 entries in 2 ms: 20 µs each, so 50 fit in 1 ms.
        s.record(ms(2), 100);
        assert_eq!(s.count(1000), 50);
        // Cheaper entries raise the count gradually, never above the other bounds.
        for _ in 0..50 {
            s.record(Duration::from_micros(5), 100);
        }
        assert_eq!(s.count(1000), 1000);
        assert_eq!(s.count(300), 300);
        // A slow hold cuts it at once.
        s.record(ms(10), 10);
        assert_eq!(s.count(1000), 1);
        s.record(ms(5), 0);
        assert_eq!(s.count(1000), 1, "an empty read says nothing");
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
