//! The boundary between Redis and Rust: nothing unwinds across it.
//!
//! A Rust panic reaching an `extern "C"` frame aborts `redis-server`. Every command, callback and
//! thread root of the module runs its body through [`guard`], which catches the unwind, logs it with
//! the place it happened, and returns a fallback, so a bug costs one reply or one batch, never Redis.
//!
//! Replies cross the boundary too: [`command`] builds and sends a command's reply inside the guard,
//! after [`safe_reply`] has turned every string made from data into a bulk string and every error
//! into one printable line, so no byte a client or an application stored can abort the server.

use std::panic::{catch_unwind, AssertUnwindSafe};

use redis_module::{
    raw, BlockedClient, Context, RedisError, RedisResult, RedisValue, ThreadSafeContext,
};

use crate::host::logging;

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

/// The bytes of a server string, borrowed. `None` for a null string.
///
/// # Safety
/// `s` is null or a string the server keeps alive for `'a` (a notification's key: the callback).
pub unsafe fn string_bytes<'a>(s: *const raw::RedisModuleString) -> Option<&'a [u8]> {
    let ptr_len = unsafe { raw::RedisModule_StringPtrLen }?;
    if s.is_null() {
        return None;
    }
    let mut len = 0usize;
    let p = unsafe { ptr_len(s, &mut len) };
    if p.is_null() {
        return None;
    }
    Some(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
}

/// The longest error line a command replies with; longer texts are cut (they may carry data).
const MAX_ERROR_BYTES: usize = 512;

/// An error text as one printable ASCII line: control characters become spaces, other non-ASCII
/// characters are escaped (`\u{..}`), and it is cut at [`MAX_ERROR_BYTES`]. Redis writes an error
/// reply as a C string after narrowing each character to one byte, so a NUL, a CR LF or a
/// character such as U+0100 (whose low byte is 0) would otherwise abort the server or break the
/// reply stream.
pub fn error_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_ERROR_BYTES));
    for c in text.chars() {
        if out.len() >= MAX_ERROR_BYTES {
            out.push_str("...");
            break;
        }
        match c {
            ' '..='~' => out.push(c),
            c if c.is_control() => out.push(' '),
            c => out.push_str(&c.escape_unicode().to_string()),
        }
    }
    out
}

/// A reply that cannot fail on the way out: every string made from data becomes a bulk string
/// (never a simple string, which Redis sends as a C string: a NUL would abort the server, a CR LF
/// would corrupt the reply stream), and every error text becomes one printable line.
pub fn safe_reply(result: RedisResult) -> RedisResult {
    match result {
        Ok(v) => Ok(safe_value(v)),
        Err(RedisError::String(s)) => Err(RedisError::String(error_line(&s))),
        Err(e) => Err(e),
    }
}

fn safe_value(v: RedisValue) -> RedisValue {
    match v {
        RedisValue::SimpleString(s) => RedisValue::BulkString(s),
        // Static texts are the module's own words; they are checked by the unit test below.
        RedisValue::SimpleStringStatic(s) if s.bytes().all(|b| (b' '..=b'~').contains(&b)) => {
            RedisValue::SimpleStringStatic(s)
        }
        RedisValue::SimpleStringStatic(s) => RedisValue::BulkString(s.to_string()),
        RedisValue::StaticError(s) => RedisValue::StaticError(s),
        RedisValue::Array(items) => RedisValue::Array(items.into_iter().map(safe_value).collect()),
        RedisValue::Map(m) => {
            RedisValue::Map(m.into_iter().map(|(k, v)| (k, safe_value(v))).collect())
        }
        RedisValue::OrderedMap(m) => {
            RedisValue::OrderedMap(m.into_iter().map(|(k, v)| (k, safe_value(v))).collect())
        }
        other => other,
    }
}

/// Runs a command's body behind the panic guard and sends its reply from inside the guard too, so
/// neither the work nor building the reply can unwind into Redis. Returns `NoReply` to the caller
/// (the reply is already sent).
pub fn command(ctx: &Context, name: &str, body: impl FnOnce() -> RedisResult) -> RedisResult {
    let result = guard(name, body).unwrap_or_else(|| {
        Err(RedisError::String(format!(
            "ERR internal error in {name}; see the server log"
        )))
    });
    let _ = guard(&format!("{name} reply"), || ctx.reply(safe_reply(result)));
    Ok(RedisValue::NoReply)
}

/// Replies to a blocked client from any thread, made safe and behind the panic guard.
pub fn reply_blocked(name: &str, client: BlockedClient, result: RedisResult) {
    let _ = guard(&format!("{name} reply"), move || {
        ThreadSafeContext::with_blocked_client(client).reply(safe_reply(result));
    });
}

/// Refuses to block where Redis cannot (MULTI, scripts, clients that deny blocking).
pub fn can_block(ctx: &Context) -> bool {
    let f = super::stream::flags(ctx);
    f & (raw::REDISMODULE_CTX_FLAGS_MULTI
        | raw::REDISMODULE_CTX_FLAGS_LUA
        | raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING)
        == 0
}

/// Whether the server only asks which arguments of the command are keys (a command registered
/// with `getkeys-api`: cluster routing, `COMMAND GETKEYS`, ACL key checks).
pub fn keys_request(ctx: &Context) -> bool {
    unsafe { raw::RedisModule_IsKeysPositionRequest }.is_some_and(|f| unsafe { f(ctx.ctx) } != 0)
}

/// Answers a keys request: argument `pos` is a key.
pub fn declare_key(ctx: &Context, pos: i32) {
    if let Some(f) = unsafe { raw::RedisModule_KeyAtPos } {
        unsafe { f(ctx.ctx, pos as std::ffi::c_int) };
    }
}

/// Blocks the calling client until a background thread replies with [`reply_blocked`].
pub fn block(ctx: &Context) -> BlockedClient {
    ctx.block_client()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_printable_ascii_and_short() {
        let e = error_line("a\0b\r\nc\u{100}d\u{4e00}e");
        assert_eq!(e, "a b  c\\u{100}d\\u{4e00}e");
        assert!(error_line(&"x".repeat(5000)).len() <= MAX_ERROR_BYTES + 3);
    }

    #[test]
    fn data_strings_never_become_simple_strings() {
        let v = safe_reply(Ok(RedisValue::Array(vec![
            RedisValue::SimpleString("a\0b".into()),
            RedisValue::SimpleString("c\r\nd".into()),
            RedisValue::SimpleStringStatic("OK"),
        ])));
        let Ok(RedisValue::Array(items)) = v else {
            panic!("{v:?}")
        };
        assert!(matches!(&items[0], RedisValue::BulkString(s) if s == "a\0b"));
        assert!(matches!(&items[1], RedisValue::BulkString(s) if s == "c\r\nd"));
        assert!(matches!(items[2], RedisValue::SimpleStringStatic("OK")));
        let Err(RedisError::String(e)) = safe_reply(Err(RedisError::String("x\0\u{100}".into())))
        else {
            panic!()
        };
        assert_eq!(e, "x \\u{100}");
    }
}
