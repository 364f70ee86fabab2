//! Which server the module was loaded into, detected once at load from `INFO server`.
//!
//! One binary runs on Redis OSS 8 and on Valkey 9. They share the module API the module uses, with
//! one difference that matters at load: Redis 8 takes a config and its aliases as one registration
//! (`name|alias`, `UNPREFIXED`), Valkey (and Redis 7) refuse that form, so [`crate::host::config`] asks
//! [`Server::joined_aliases`] which form to use. `WB.STATUS` shows the detected server.

use std::sync::OnceLock;

use redis_module::{raw, Context, RedisValue};

/// The server family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Redis,
    Valkey,
}

/// The detected server: family and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    pub family: Family,
    pub version: (u32, u32, u32),
}

static DETECTED: OnceLock<Server> = OnceLock::new();

impl Server {
    /// Reads family and version from the text of `INFO server`. Valkey reports `server_name:valkey`
    /// and `valkey_version:`, beside a `redis_version:` that only names the API level it is compatible
    /// with; Redis reports `redis_version:` alone.
    pub fn from_info(info: &str) -> Option<Server> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let (family, version) = match (field("server_name"), field("valkey_version")) {
            (Some("valkey"), Some(v)) | (None, Some(v)) => (Family::Valkey, v),
            _ => (Family::Redis, field("redis_version")?),
        };
        let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Server {
            family,
            version: (major, minor, patch),
        })
    }

    /// Whether the server takes `name|alias` in one config registration (Redis 8 and later).
    pub fn joined_aliases(&self) -> bool {
        self.family == Family::Redis && self.version.0 >= 8
    }

    /// `redis 8.0.6`, `valkey 9.1.2`.
    pub fn describe(&self) -> String {
        let (a, b, c) = self.version;
        let name = match self.family {
            Family::Redis => "redis",
            Family::Valkey => "valkey",
        };
        format!("{name} {a}.{b}.{c}")
    }
}

/// Detects the server at load (main thread, inside `OnLoad`) and remembers it.
pub fn detect(ctx: &Context) -> Result<(), String> {
    let info = match ctx.call("INFO", &["server"]) {
        Ok(RedisValue::SimpleString(s)) => s,
        Ok(RedisValue::BulkString(s)) => s,
        Ok(RedisValue::VerbatimString((_, bytes))) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(RedisValue::StringBuffer(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(other) => return Err(format!("INFO server gave an unexpected reply: {other:?}")),
        Err(e) => return Err(format!("INFO server failed: {e}")),
    };
    let server = Server::from_info(&info)
        .ok_or_else(|| "INFO server names no server version".to_string())?;
    let _ = DETECTED.set(server);
    Ok(())
}

/// The server detected at load; Redis 8 when detection has not run (unit tests).
pub fn current() -> Server {
    DETECTED.get().copied().unwrap_or(Server {
        family: Family::Redis,
        version: (8, 0, 0),
    })
}

/// What the server allows right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Loading its data (or starting up): the stream is not there yet.
    Loading,
    Replica,
    Primary,
}

/// The server's phase, from the context flags.
pub fn phase(ctx: &Context) -> Phase {
    let f = super::stream::flags(ctx);
    if f & (raw::REDISMODULE_CTX_FLAGS_LOADING
        | raw::REDISMODULE_CTX_FLAGS_ASYNC_LOADING
        | raw::REDISMODULE_CTX_FLAGS_SERVER_STARTUP)
        != 0
    {
        Phase::Loading
    } else if f & raw::REDISMODULE_CTX_FLAGS_SLAVE != 0 {
        Phase::Replica
    } else {
        Phase::Primary
    }
}

/// A read's error when the server is no longer a ready primary at the read's own lock hold
/// ([`require_primary`]).
pub const NOT_PRIMARY: &str = "not a ready primary";

/// Inside a read's lock hold: [`NOT_PRIMARY`] unless the server is a ready primary.
pub fn require_primary(ctx: &Context) -> Result<(), String> {
    if phase(ctx) == Phase::Primary {
        Ok(())
    } else {
        Err(NOT_PRIMARY.into())
    }
}

/// A reading loop's knowledge of the server's phase. Until a read has succeeded as a primary
/// ([`KnownPhase::confirmed`]), each turn asks in a lock hold of its own; from then on each read
/// checks again inside its own hold ([`require_primary`]), so waiting turns take no lock, and a read
/// refused with [`NOT_PRIMARY`] ([`KnownPhase::lost`]) makes the next turn ask again.
#[derive(Debug, Default)]
pub struct KnownPhase {
    primary: bool,
}

impl KnownPhase {
    /// The phase for this turn: asked under the lock unless already known to be a primary.
    pub fn phase(&mut self, gil: &super::gil::Gil) -> Phase {
        if self.primary {
            return Phase::Primary;
        }
        gil.with(phase)
    }

    /// A read succeeded, its hold having found a ready primary.
    pub fn confirmed(&mut self) {
        self.primary = true;
    }

    /// Forgets that the server is a primary: the next turn asks again.
    pub fn lost(&mut self) {
        self.primary = false;
    }
}

/// Whether the server is loading its AOF/RDB (start-up excluded).
pub fn loading(ctx: &Context) -> bool {
    super::stream::flags(ctx)
        & (raw::REDISMODULE_CTX_FLAGS_LOADING | raw::REDISMODULE_CTX_FLAGS_ASYNC_LOADING)
        != 0
}

/// Whether this server is a primary or a replica, from the context flags.
pub fn role(ctx: &Context) -> &'static str {
    let flags = match unsafe { raw::RedisModule_GetContextFlags } {
        Some(f) => (unsafe { f(ctx.ctx) }) as u32,
        None => 0,
    };
    if flags & raw::REDISMODULE_CTX_FLAGS_SLAVE != 0 {
        "replica"
    } else {
        "primary"
    }
}

/// The server's `maxmemory-policy`.
pub fn maxmemory_policy(ctx: &Context) -> String {
    match super::stream::call_read(ctx, "CONFIG", &[b"GET", b"maxmemory-policy"]) {
        Ok(redis_module::RedisValue::Array(kv)) => {
            kv.get(1).and_then(super::stream::text).unwrap_or_default()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valkey_is_told_apart_from_its_redis_compatibility_version() {
        let info =
            "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2\r\n";
        let s = Server::from_info(info).unwrap();
        assert_eq!(s.family, Family::Valkey);
        assert_eq!(s.version, (9, 1, 2));
        assert!(!s.joined_aliases());
        assert_eq!(s.describe(), "valkey 9.1.2");
    }

    #[test]
    fn redis_8_joins_aliases_and_redis_7_does_not() {
        let r8 =
            Server::from_info("# Server\r\nredis_version:8.0.6\r\nredis_git_sha1:0\r\n").unwrap();
        assert_eq!((r8.family, r8.version), (Family::Redis, (8, 0, 6)));
        assert!(r8.joined_aliases());
        let r7 = Server::from_info("redis_version:7.4.1\n").unwrap();
        assert!(!r7.joined_aliases());
        assert_eq!(Server::from_info("uptime:3\n"), None);
    }
}
