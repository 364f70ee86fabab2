//! How many entries fit in one hold of the Redis lock, from what the last holds took per entry: the
//! claims' chunks and the workers' acknowledgements are both sized by it.

use std::time::Duration;

/// A hold's entries bounded by time: how long an entry took under the lock lately, and so how many
/// fit in the hold target the governor sets.
#[derive(Debug, Clone, Default)]
pub struct ChunkSizer {
    /// Smoothed nanoseconds of lock hold per entry claimed; `None` before the first claim.
    per_entry_ns: Option<f64>,
}

impl ChunkSizer {
    /// The entries the next claim may read: at most `max` (the count and byte bounds), at most what
    /// fits in a hold of `target` (the governor's hold target), at least one.
    pub fn count(&self, max: usize, target: Duration) -> usize {
        let max = max.max(1);
        match self.per_entry_ns {
            Some(ns) if ns > 0.0 => {
                let fit = (target.as_nanos() as f64 / ns).floor() as usize;
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
