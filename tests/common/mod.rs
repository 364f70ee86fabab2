//! The shared integration-test harness: a real `redis-server` 8 with the module, on a free
//! 127.0.0.1 port and a temporary directory, stopped by PID. A failing test prints the server log.
#![allow(dead_code)]

pub mod emulator;
pub mod redis_server;
