//! The hash mappings in force and what their capture and writers did: the one place both the capture
//! ([`super::capture`]) and the writers ([`super::mapping_writer`]) read, and `WB.STATUS` reports.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::mapping::Mappings;

/// The loaded mappings and their counters.
pub struct Mapped {
    pub mappings: Mappings,
    pub counters: Vec<Counters>,
    /// What each mapping's writer did ([`super::mapping_writer`]).
    pub writers: Vec<WriterFigures>,
    /// Each writer's wake-up: one pending signal at most.
    pub wakes: Vec<(
        crossbeam_channel::Sender<()>,
        crossbeam_channel::Receiver<()>,
    )>,
}

/// What the capture of one mapping did since the module loaded.
#[derive(Default)]
pub struct Counters {
    /// Changes added to the mapping's stream.
    pub captured: AtomicU64,
    /// Changes refused (an unreadable `#` field), dead-lettered with the reason.
    pub refused: AtomicU64,
    /// Captures that failed to write (logged as `LOST`): the change is in Redis but not in the stream.
    pub failed: AtomicU64,
}

/// What one mapping's writer did, for `WB.STATUS`.
#[derive(Default)]
pub struct WriterFigures {
    pub written: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub statements: AtomicU64,
    pub retries: AtomicU64,
    pub state: Mutex<&'static str>,
    pub last_error: Mutex<String>,
}

/// Wakes the writer of mapping `index` (the capture of a change).
pub fn wake(m: &Mapped, index: usize) {
    if let Some((tx, _)) = m.wakes.get(index) {
        let _ = tx.try_send(());
    }
}

/// Each mapping's state and last error: `mapping.<name>.state`, `mapping.<name>.last_error`.
pub fn texts(mapped: &Mapped) -> Vec<(String, String)> {
    mapped
        .mappings
        .mappings
        .iter()
        .zip(&mapped.writers)
        .flat_map(|(m, w)| {
            [
                (
                    format!("mapping.{}.state", m.name),
                    (*w.state.lock()).to_string(),
                ),
                (
                    format!("mapping.{}.last_error", m.name),
                    w.last_error.lock().clone(),
                ),
            ]
        })
        .collect()
}

/// Each mapping's counters as status lines: `mapping.<name>.<figure>`.
pub fn figures(mapped: &Mapped) -> Vec<(String, u64)> {
    mapped
        .mappings
        .mappings
        .iter()
        .zip(&mapped.counters)
        .zip(&mapped.writers)
        .flat_map(|((m, c), w)| {
            [
                ("captured", c.captured.load(Ordering::Relaxed)),
                ("refused", c.refused.load(Ordering::Relaxed)),
                ("capture_failed", c.failed.load(Ordering::Relaxed)),
                ("written", w.written.load(Ordering::Relaxed)),
                ("dead_lettered", w.dead_lettered.load(Ordering::Relaxed)),
                ("statements", w.statements.load(Ordering::Relaxed)),
                ("retries", w.retries.load(Ordering::Relaxed)),
            ]
            .map(|(name, v)| (format!("mapping.{}.{name}", m.name), v))
        })
        .collect()
}
