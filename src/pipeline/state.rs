//! What a pipeline's threads hand each other, held by the [`super::control::Pipeline`] they serve:
//! the claimer's work for the workers, the settled entries waiting for one lock hold, the
//! `WB.WRITE ... SYNC` callers waiting for their entry, and the drain figures `WB.STATUS` shows.
//!
//! Only the values live here; the files that use them ([`super::worker`], [`super::ack`],
//! [`super::waiters`], [`super::governor`]) say what is done with them. Kept apart from those files so
//! the pipeline value can own them without the files importing each other in a circle.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use redis_module::BlockedClient;

use crate::entry::Decoded;
use crate::host::stream::RawEntry;

/// One claimed entry on its way to Snowflake.
#[derive(Debug)]
pub struct Work {
    /// The entry's ID, and its fields only when it is undecodable (see the claimer).
    pub raw: RawEntry,
    /// The entry's size in the stream, for the batch byte cap.
    pub bytes: usize,
    pub decoded: Decoded,
    /// The stream and group it was claimed from (settles go back there); shared, not copied per entry.
    pub stream: Arc<str>,
    pub group: Arc<str>,
}

/// A worker's inbox. The claimer sends each worker its share of one claim at once: one wake-up per
/// claim and worker, not one per entry.
pub type Inbox = Sender<Vec<Work>>;

/// What to do with one settled entry.
#[derive(Debug, Clone)]
pub enum Settle {
    /// Written (or nothing to write): acknowledge.
    Ack { id: String },
    /// Undecodable or rejected by Snowflake: copy to `<stream>:dlq` with the reason, acknowledge.
    DeadLetter { entry: RawEntry, reason: String },
}

#[derive(Debug, Clone)]
pub struct Item {
    /// Shared by the entries of a claim (no copy of the names per entry).
    pub stream: std::sync::Arc<str>,
    pub group: std::sync::Arc<str>,
    pub settle: Settle,
}

impl Item {
    pub fn settle_id(&self) -> &str {
        match &self.settle {
            Settle::Ack { id } => id,
            Settle::DeadLetter { entry, .. } => &entry.id,
        }
    }
}

/// Dead-letter copies that failed (the dead-letter key holds another type, Redis is out of memory,
/// ...): retried with backoff, the entry still pending and in flight, never counted as done.
pub struct Retry {
    pub item: Item,
    pub attempts: u32,
    pub due: Instant,
}

/// Settled entries waiting for one lock hold, and the dead-letter copies to try again.
#[derive(Default)]
pub struct Acks {
    pub queue: Mutex<Vec<Item>>,
    /// How many settled entries fit in one lock hold ([`super::ack::drain_in_holds`]).
    pub sizer: Mutex<super::sizer::ChunkSizer>,
    pub retries: Mutex<Vec<Retry>>,
    /// Attempts made so far of the dead-letter copies back in the queue (entry ID, attempts).
    pub attempts: Mutex<Vec<(String, u32)>>,
}

/// A `WB.WRITE ... SYNC` caller waiting for its entry.
pub struct Waiter {
    pub stream: String,
    pub id: String,
    pub deadline: Instant,
    pub client: BlockedClient,
}

/// What the claimer last published for `WB.STATUS` ([`super::governor::published`]).
pub struct DrainFigures {
    /// Busy fraction in per mille; `u64::MAX` when unknown.
    pub busy_permille: AtomicU64,
    /// The share of the host's CPU time stolen over the last sample, in per mille; `u64::MAX` when
    /// unknown.
    pub stolen_permille: AtomicU64,
    pub chunk: AtomicU64,
    /// The share of the time the drain may hold the lock, in per mille (rounded down, so that
    /// below 500 is yielding).
    pub share_permille: AtomicU64,
    pub last_hold_us: AtomicU64,
    pub last_lock_wait_us: AtomicU64,
    /// Settled entries the last acknowledging hold wrote, how long it held the lock, and how many
    /// such holds there were ([`super::ack::drain_in_holds`]).
    pub ack_chunk: AtomicU64,
    pub last_ack_hold_us: AtomicU64,
    pub ack_holds: AtomicU64,
    /// Claims that took at least one entry since start.
    pub claims: AtomicU64,
}

impl Default for DrainFigures {
    fn default() -> DrainFigures {
        DrainFigures {
            busy_permille: AtomicU64::new(u64::MAX),
            stolen_permille: AtomicU64::new(u64::MAX),
            chunk: AtomicU64::new(0),
            share_permille: AtomicU64::new(500),
            last_hold_us: AtomicU64::new(0),
            last_lock_wait_us: AtomicU64::new(0),
            ack_chunk: AtomicU64::new(0),
            last_ack_hold_us: AtomicU64::new(0),
            ack_holds: AtomicU64::new(0),
            claims: AtomicU64::new(0),
        }
    }
}
