//! The one bounded executor for commands that wait (`WB.FLUSH`, `WB.PING`, `WB.RESTORE`, `WB.IMPORT`,
//! `WB.DLQ REPLAY` and the `WB.WRITE` failover): the caller is blocked with Redis's blocking-client
//! API while the work runs on a thread of its own, and Redis keeps serving everyone else.
//!
//! Bounded: at most [`MAX_RUNNING`] of these threads exist at once, and `WB.RESTORE`, `WB.IMPORT` and
//! `WB.DLQ REPLAY` run one at a time; a caller beyond that gets `-BUSY` at once, so no client
//! allowed to call them can grow the server's thread count. The thread is started before anything
//! that needs the Redis lock to be released (the blocked client, the thread's context) exists: when
//! the system refuses a thread, nothing is dropped on the main thread but a channel end. Every thread
//! is a counted pipeline thread, so `MODULE UNLOAD` waits for it or refuses.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use redis_module::{BlockedClient, Context, RedisError, RedisResult, RedisValue};

use super::control::{self, control};
use crate::host::ffi;
use crate::host::gil::Gil;

/// Background commands running at once, at most.
pub const MAX_RUNNING: usize = 16;

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static EXCLUSIVE: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Background commands running now (for `WB.STATUS`).
pub fn running() -> usize {
    RUNNING.load(Ordering::Relaxed)
}

/// A taken place in the executor, given back when dropped (also when the work panics).
struct Slot {
    name: &'static str,
    exclusive: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        if self.exclusive {
            EXCLUSIVE.lock().retain(|n| *n != self.name);
        }
    }
}

fn err(msg: String) -> RedisError {
    RedisError::String(msg)
}

fn take_slot(name: &'static str, exclusive: bool) -> Result<Slot, RedisError> {
    if RUNNING
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_RUNNING).then_some(n + 1)
        })
        .is_err()
    {
        return Err(err(format!(
            "BUSY {MAX_RUNNING} WB.* commands are already waiting in the background; {name} refused, retry when one has finished"
        )));
    }
    // Given back if the exclusive check below refuses.
    let shared = Slot {
        name,
        exclusive: false,
    };
    if !exclusive {
        return Ok(shared);
    }
    let mut running = EXCLUSIVE.lock();
    if running.contains(&name) {
        return Err(err(format!(
            "BUSY {name} is already running; wait for it to finish"
        )));
    }
    running.push(name);
    // One slot, now also holding the name: the shared one must not give it back as well.
    std::mem::forget(shared);
    Ok(Slot {
        name,
        exclusive: true,
    })
}

/// Runs `work` on a background thread while the caller is blocked, then replies with its result.
/// Main thread only (a command handler). `exclusive`: at most one of this name at a time.
pub fn run(
    ctx: &Context,
    name: &'static str,
    exclusive: bool,
    work: impl FnOnce(&Gil) -> RedisResult + Send + 'static,
) -> RedisResult {
    if !crate::host::ffi::can_block(ctx) {
        return Err(err(format!(
            "ERR {name} waits for background work and cannot run inside MULTI or a script"
        )));
    }
    if control().stopping() {
        return Err(err(format!("ERR {name} refused: the writer is stopping")));
    }
    let slot = take_slot(name, exclusive)?;
    let (tx, rx) = crossbeam_channel::bounded::<(Gil, BlockedClient)>(1);
    let spawned = control::spawn_thread(name, move || {
        // The sender is dropped without sending when the command could not block its caller.
        let Ok((gil, client)) = rx.recv() else {
            return;
        };
        let reply = ffi::guard(name, || work(&gil)).unwrap_or_else(|| {
            Err(err(format!(
                "ERR internal error in {name}; see the server log"
            )))
        });
        // Free before the caller hears back, so its next command finds the place free.
        drop(slot);
        ffi::reply_blocked(name, client, reply);
    });
    if let Err(e) = spawned {
        // Only the unrun closure (the slot, a channel end) was dropped: nothing holds a context yet.
        return Err(err(format!("BUSY {e}; {name} refused, retry later")));
    }
    let Some(gil) = Gil::new() else {
        return Err(err(format!("ERR {name}: could not create a context")));
    };
    let client = ffi::block(ctx);
    if let Err(back) = tx.send((gil, client)) {
        // The thread is gone (it cannot be: it waits for this). Answer here; the context is handed
        // to the next MODULE UNLOAD rather than freed under a lock this thread already holds.
        let (gil, client) = back.into_inner();
        gil.retire();
        ffi::reply_blocked(
            name,
            client,
            Err(err(format!(
                "ERR internal error in {name}; see the server log"
            ))),
        );
    }
    Ok(RedisValue::NoReply)
}
