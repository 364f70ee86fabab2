//! Taking the Redis lock from a background thread, for short, bounded work only.
//!
//! Each pipeline thread owns one detached thread-safe context selected to `REDIS_DB`. Holding the lock
//! blocks Redis's main thread, so callers do only a few commands under it (one `XREADGROUP` chunk, one
//! `XACK` of a batch) and never network I/O.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis_module::{raw, Context};

use crate::settings::{self, Key};

pub struct Gil {
    ctx: *mut raw::RedisModuleCtx,
}

// The context is only used while the lock is held, which serialises all access to it.
unsafe impl Send for Gil {}

impl Gil {
    /// A context for this thread (needs the module to be loaded).
    pub fn new() -> Option<Gil> {
        let get_detached = unsafe { raw::RedisModule_GetDetachedThreadSafeContext }?;
        let home = crate::host::stream::home()?;
        let ctx = unsafe { get_detached(home.ctx) };
        if ctx.is_null() {
            return None;
        }
        Some(Gil { ctx })
    }

    /// Runs `body` with the lock held.
    pub fn with<T>(&self, body: impl FnOnce(&Context) -> T) -> T {
        let (Some(lock), Some(unlock)) =
            (unsafe { raw::RedisModule_ThreadSafeContextLock }, unsafe {
                raw::RedisModule_ThreadSafeContextUnlock
            })
        else {
            return body(&Context::new(self.ctx));
        };
        acquire(self.ctx, lock);
        struct Unlock(
            *mut raw::RedisModuleCtx,
            unsafe extern "C" fn(*mut raw::RedisModuleCtx),
        );
        impl Drop for Unlock {
            fn drop(&mut self) {
                unsafe { (self.1)(self.0) };
            }
        }
        let started = Instant::now();
        let result = {
            let _unlock = Unlock(self.ctx, unlock);
            let _held = Held(started);
            // The database may have been changed by a restart of the module's settings; select it each time.
            if let Some(select) = unsafe { raw::RedisModule_SelectDb } {
                unsafe { select(self.ctx, settings::current().int(Key::RedisDb) as i32) };
            }
            body(&Context::new(self.ctx))
        };
        // The lock is not fair: a thread that takes it again right after releasing it can keep Redis's
        // main thread waiting. Pausing as long as the hold lasted (at least a moment) leaves the main
        // thread at least half of the time, however many holds follow each other.
        std::thread::sleep(started.elapsed().clamp(
            std::time::Duration::from_micros(20),
            std::time::Duration::from_millis(5),
        ));
        result
    }
}

/// Until when (ms since [`EPOCH`]) Redis's clients alone saturate its main thread, as a drain last
/// reported it (yielding with no share of the lock left, claiming only its floor): lock takers then
/// watch for the lock instead of sleeping on it (see [`acquire`]). A report lasts [`REPORT_LASTS`],
/// so one from a claimer that stopped reporting expires.
static SATURATED_UNTIL_MS: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();
const REPORT_LASTS: Duration = Duration::from_secs(1);

fn epoch_ms() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Tells every lock taker whether Redis's clients alone saturate its main thread now (claimers
/// report it at every turn).
pub fn set_saturated(saturated: bool) {
    let until = if saturated {
        epoch_ms().saturating_add(REPORT_LASTS.as_millis() as u64)
    } else {
        0
    };
    SATURATED_UNTIL_MS.store(until, Ordering::Relaxed);
}

fn saturated() -> bool {
    epoch_ms() < SATURATED_UNTIL_MS.load(Ordering::Relaxed)
}

/// How long one watch for the lock lasts before the thread gives its CPU back for as long.
const WATCH: Duration = Duration::from_millis(2);
/// How long a lock taker watches, in all, before it sleeps on the lock like any other.
const WATCH_FOR: Duration = Duration::from_millis(50);

/// Takes the Redis lock for `ctx`.
///
/// The lock is a plain mutex and not fair. While Redis's main thread is saturated it releases the
/// lock only for the moment it polls for events between two loops (a few microseconds, every
/// millisecond or so) and takes it straight back: a thread asleep on the mutex is woken too late
/// for that moment, again and again (seen: 0.85 s to take it, so the drain fell below its floor).
/// So while saturated a lock taker first watches for that moment, trying the lock in a loop, in
/// watches of [`WATCH`] separated by pauses as long, for up to [`WATCH_FOR`]; only then does it
/// sleep on the mutex. At about ten floor claims a second this costs a few milliseconds of CPU a
/// second. While the main thread has room (at full speed, or yielding with a share of the lock) it
/// waits in its poll often enough for a sleeping thread to get the lock, and watching would only
/// take a CPU from it (measured at half load: the drain 35 % slower, the p99 a tenth better).
fn acquire(ctx: *mut raw::RedisModuleCtx, lock: unsafe extern "C" fn(*mut raw::RedisModuleCtx)) {
    if saturated() {
        if let Some(try_lock) = unsafe { raw::RedisModule_ThreadSafeContextTryLock } {
            let start = Instant::now();
            loop {
                let watch = Instant::now();
                while watch.elapsed() < WATCH {
                    for _ in 0..64 {
                        if unsafe { try_lock(ctx) } == raw::REDISMODULE_OK as c_int {
                            return;
                        }
                        for _ in 0..8 {
                            std::hint::spin_loop();
                        }
                    }
                }
                if start.elapsed() >= WATCH_FOR {
                    break;
                }
                std::thread::sleep(WATCH);
            }
        }
    }
    unsafe { lock(ctx) };
}

/// Nanoseconds the module's threads have held the Redis lock since start: time Redis's main thread
/// could not serve a command (`WB.STATUS` `lock_held_ms`).
static HELD_NS: AtomicU64 = AtomicU64::new(0);

/// Counts a hold when it ends (also when the body panics).
struct Held(Instant);

impl Drop for Held {
    fn drop(&mut self) {
        let ns = u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        HELD_NS.fetch_add(ns, Ordering::Relaxed);
    }
}

/// Milliseconds the module's threads have held the Redis lock since start.
pub fn held_ms() -> u64 {
    held().as_millis() as u64
}

/// How long the module's threads have held the Redis lock since start (holds that have ended).
pub fn held() -> std::time::Duration {
    std::time::Duration::from_nanos(HELD_NS.load(Ordering::Relaxed))
}

impl Gil {
    /// Hands the context over to [`free_retired`] instead of freeing it now: for a thread that
    /// already holds the Redis lock (the main thread), where freeing it would wait for that lock.
    pub fn retire(self) {
        RETIRED.lock().push(self.ctx as usize);
        std::mem::forget(self);
    }
}

/// Contexts of threads that ended while the pipeline was stopping; freed by [`free_retired`].
static RETIRED: parking_lot::Mutex<Vec<usize>> = parking_lot::Mutex::new(Vec::new());

/// Frees the contexts of stopped threads. Main thread only (it holds the lock).
pub fn free_retired() {
    let Some(free) = (unsafe { raw::RedisModule_FreeThreadSafeContext }) else {
        return;
    };
    for ctx in RETIRED.lock().drain(..) {
        unsafe { free(ctx as *mut raw::RedisModuleCtx) };
    }
}

impl Drop for Gil {
    fn drop(&mut self) {
        // While stopping (MODULE UNLOAD, SHUTDOWN) the main thread may hold the lock waiting for this
        // thread to end: hand the context over instead of waiting for the lock.
        if super::listener().is_some_and(|l| l.stopping()) {
            RETIRED.lock().push(self.ctx as usize);
            return;
        }
        // Freeing a context releases its fake client, which must happen under the lock.
        let apis = unsafe {
            (
                raw::RedisModule_ThreadSafeContextLock,
                raw::RedisModule_FreeThreadSafeContext,
                raw::RedisModule_ThreadSafeContextUnlock,
            )
        };
        if let (Some(lock), Some(free), Some(unlock)) = apis {
            unsafe {
                lock(self.ctx);
                free(self.ctx);
                // The unlock releases the global lock; it does not read the context.
                unlock(self.ctx);
            }
        }
    }
}
