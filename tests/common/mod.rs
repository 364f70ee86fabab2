//! The shared integration-test harness: a real `redis-server` 8 with the module, on a free
//! 127.0.0.1 port and a temporary directory, stopped by PID. A failing test prints the server log.
#![allow(dead_code)]

pub mod cluster;
pub mod emulator;
pub mod redis_server;
pub mod visits;

use emulator::Emulator;
use redis_server::Options;

/// Server options pointing the module at `emu` with key-pair auth, with test-sized timings and no
/// restore at start-up (tests that want one turn it on).
pub fn wired(emu: &Emulator) -> Options {
    let mut o = Options::default();
    for (k, v) in emu.snowflake_env() {
        o = o.env(k, &v);
    }
    o.env("SNOWFLAKE_WAREHOUSE", "TEST_WH")
        .env("BATCH_LINGER_MS", "5")
        .env("RETRY_MAX_BACKOFF_MS", "300")
        .env("SNOWFLAKE_REQUEST_TIMEOUT_SECONDS", "20")
        .env("RESTORE_ON_EMPTY", "0")
}
