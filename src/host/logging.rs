//! Logging through the Redis log, filtered by `LOG_LEVEL`.
//!
//! Lines go to `RedisModule_Log` with a NULL context, which Redis allows from any thread; the message is
//! passed as a `%s` argument so a `%` in data can never be read as a format directive, and control
//! characters (NUL, CR, LF, escape sequences, ...) are escaped, so data in a line can neither cut it
//! short nor forge another line. Outside Redis (unit tests, the migration tool) lines go to standard error. Secrets are never
//! passed here: callers log names and sizes, not credentials.

use std::ffi::CString;

use redis_module::raw;

use crate::settings::{self, Key};
pub use crate::text::escaped;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
}

impl Level {
    fn from_setting(word: &str) -> Level {
        match word {
            "DEBUG" => Level::Debug,
            "WARNING" => Level::Warning,
            "ERROR" => Level::Error,
            _ => Level::Info,
        }
    }

    fn redis_level(self) -> &'static str {
        match self {
            Level::Debug => "verbose",
            Level::Info => "notice",
            Level::Warning | Level::Error => "warning",
        }
    }
}

/// Whether lines of `level` are written now.
pub fn enabled(level: Level) -> bool {
    level >= Level::from_setting(settings::current().str(Key::LogLevel))
}

pub fn log(level: Level, message: &str) {
    if !enabled(level) {
        return;
    }
    let text = escaped(message);
    match unsafe { raw::RedisModule_Log } {
        Some(log_fn) => {
            let (Ok(lvl), Ok(fmt), Ok(msg)) = (
                CString::new(level.redis_level()),
                CString::new("writebehind: %s"),
                CString::new(text),
            ) else {
                return;
            };
            unsafe {
                log_fn(
                    std::ptr::null_mut(),
                    lvl.as_ptr(),
                    fmt.as_ptr(),
                    msg.as_ptr(),
                )
            };
        }
        None => eprintln!("[{level:?}] {text}"),
    }
}

pub fn debug(message: &str) {
    log(Level::Debug, message);
}
pub fn info(message: &str) {
    log(Level::Info, message);
}
pub fn warning(message: &str) {
    log(Level::Warning, message);
}
pub fn error(message: &str) {
    log(Level::Error, message);
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            super::escaped("a\r\nb\0c\u{1b}[2J"),
            "a\\r\\nb\\u{0}c\\u{1b}[2J"
        );
        assert_eq!(super::escaped("plain é"), "plain é");
    }
}
