//! The boundary between Redis and Rust: nothing unwinds across it.
//!
//! A Rust panic reaching an `extern "C"` frame aborts `redis-server`. Every command, callback and
//! thread root of the module runs its body through [`guard`], which catches the unwind, logs it with
//! the place it happened, and returns a fallback, so a bug costs one reply or one batch, never Redis.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::logging;

/// Runs `body`; on a panic logs `where_` and the panic message and returns `None`.
pub fn guard<T>(where_: &str, body: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => Some(v),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            logging::warning(&format!("internal error in {where_}: {msg} (recovered)"));
            None
        }
    }
}
