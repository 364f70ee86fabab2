//! The retry policy of one `execute`: exponential backoff with jitter, capped, within a deadline.
//!
//! Snowflake's 429 carries no `Retry-After`, so clients must space their retries themselves; the
//! jitter keeps several workers that failed together from retrying together. The deadline bounds
//! how long a worker thread is held: past it the error goes back to the pipeline, which keeps the
//! batch and tries again later.

use std::time::{Duration, Instant};

use rand::Rng;

/// Delays between attempts: `base * 2^n`, capped at `max`, each randomised to between half and
/// all of that ("equal jitter"), so a retry never comes immediately after a failure.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base: base.max(Duration::from_millis(1)),
            max: max.max(Duration::from_millis(1)),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay, jittered.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(rand::thread_rng().gen_range(0..=spread))
    }
}

/// Sleeps up to `delay`, stopping `keep` before `deadline`; returns false, without sleeping, when
/// no more than `keep` is left. A poll loop paced by this still polls once shortly before its
/// deadline, where [`sleep_before`] would give up as soon as the next full delay does not fit: with
/// delays doubling, that can be half the time allowed.
pub fn sleep_toward(delay: Duration, deadline: Instant, keep: Duration) -> bool {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if left > keep => {
            std::thread::sleep(delay.min(left - keep));
            true
        }
        _ => false,
    }
}

/// Sleeps `delay` unless that would pass `deadline`; returns whether it slept.
pub fn sleep_before(delay: Duration, deadline: Instant) -> bool {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if left > delay => {
            std::thread::sleep(delay);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_and_stop_at_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1_000));
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside {ceiling:?}"
            );
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }

    #[test]
    fn no_sleep_past_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(5);
        assert!(!sleep_before(Duration::from_secs(10), deadline));
    }

    #[test]
    fn a_poll_pause_is_cut_short_to_leave_time_for_one_last_poll() {
        let keep = Duration::from_millis(50);
        let deadline = Instant::now() + Duration::from_millis(200);
        assert!(sleep_toward(Duration::from_secs(10), deadline, keep));
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(left <= keep, "woke with {left:?} left");
        assert!(!sleep_toward(Duration::from_secs(10), deadline, keep));
    }
}
