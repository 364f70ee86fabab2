//! Callers of `WB.WRITE ... SYNC` waiting for their entry to be committed.
//!
//! The command registers the entry ID with its blocked client before Redis's main thread lets the
//! claimer see the entry, so the settle can never be missed. When the entry is settled
//! ([`super::ack::drain`]) the caller gets its ID (or the dead-letter reason); when the deadline
//! passes first ([`expire`], on this module's own deadline thread, which nothing else can hold up) it
//! gets an error saying the entry stays queued and will still be written.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis_module::{BlockedClient, RedisError, RedisResult, RedisValue};

use super::control::Pipeline;
use super::state::Waiter;

/// `WB.WRITE ... SYNC` callers waiting at once, at most; more are refused with `-BUSY` before their
/// entry is added.
pub const MAX_WAITERS: usize = 1000;

/// Callers waiting now.
pub fn count(p: &Pipeline) -> usize {
    p.waiters.lock().len()
}

fn reply(client: BlockedClient, r: RedisResult) {
    crate::host::ffi::reply_blocked("WB.WRITE SYNC", client, r);
}

pub fn register(p: &Pipeline, stream: &str, id: &str, deadline: Instant, client: BlockedClient) {
    p.waiters.lock().push(Waiter {
        stream: stream.to_string(),
        id: id.to_string(),
        deadline,
        client,
    });
}

/// Called for every settled entry: `Ok` when committed (or nothing to write), `Err(reason)` when
/// dead-lettered.
pub fn settled(p: &Pipeline, stream: &str, id: &str, outcome: Result<(), &str>) {
    let found = {
        let mut w = p.waiters.lock();
        if w.is_empty() {
            return;
        }
        match w.iter().position(|x| x.id == id && x.stream == stream) {
            Some(i) => w.swap_remove(i),
            None => return,
        }
    };
    let r = match outcome {
        Ok(()) => Ok(RedisValue::BulkString(found.id)),
        Err(reason) => Err(RedisError::String(format!(
            "ERR entry {} was not written: {reason} (it is in the dead-letter stream)",
            found.id
        ))),
    };
    reply(found.client, r);
}

/// Answers the callers whose deadline has passed.
pub fn expire(p: &Pipeline) {
    let now = Instant::now();
    let due: Vec<Waiter> = {
        let mut w = p.waiters.lock();
        if w.is_empty() {
            return;
        }
        let (due, keep): (Vec<Waiter>, Vec<Waiter>) = w.drain(..).partition(|x| x.deadline <= now);
        *w = keep;
        due
    };
    for x in due {
        reply(
            x.client,
            Err(RedisError::String(format!(
                "TIMEOUT entry {} is not committed yet; it stays queued and will still be written",
                x.id
            ))),
        );
    }
}

/// The deadline thread: answers timed-out callers within about 10 ms of their deadline.
pub fn spawn(pipeline: &'static Pipeline) -> Result<JoinHandle<()>, String> {
    pipeline.spawn_supervised("wb-deadlines", move || {
        let c = &pipeline.control;
        while !c.stopping() {
            let idle = pipeline.waiters.lock().is_empty();
            std::thread::sleep(Duration::from_millis(if idle { 50 } else { 10 }));
            expire(pipeline);
        }
    })
}
