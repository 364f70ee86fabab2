//! Whether this node serves a key's slot, for every write the module makes on a cluster.
//!
//! On a cluster-enabled server the module writes a stream's keys only while this node serves the
//! stream's slot: not before the cluster is formed, not after the slot moved away (`CLUSTER
//! SETSLOT`/`MIGRATE`, a resharding), not while the cluster is down. The server's own routing
//! decides it: a command run by the module on a key of a slot the node does not serve is refused
//! by the server itself (`RedisModule_Call` applies the cluster's redirection rules to a module's
//! calls, and a migrating slot's key that already left counts as not served). [`serves`] asks it
//! with a read of the key before the module writes.

use redis_module::{raw, Context};

/// Valkey's module option `VALKEYMODULE_OPTIONS_HANDLE_ATOMIC_SLOT_MIGRATION` (Valkey 9.0 and later).
const HANDLE_ATOMIC_SLOT_MIGRATION: i32 = 1 << 5;

/// On Valkey 9 and later, tells the server the module handles atomic slot migration (`CLUSTER
/// MIGRATESLOTS`), which Valkey refuses while any loaded module has not said so.
///
/// It does: during an import the target holds the slot's keys before it serves the slot, and the
/// module neither reads nor writes a key of a slot its node does not serve ([`serves`]); a key
/// dropped by an aborted import, or by the source once the slot left, is a key leaving with its
/// slot ([`leaving`]), not a loss. Claims and acknowledgements the source made just before the
/// hand-over reach Snowflake at most twice, which the MERGE makes once, as after a failover.
/// On Redis the bit means nothing yet, so it is not set there.
pub fn declare_options(ctx: &Context) -> Result<(), String> {
    let server = super::server::current();
    if server.family != super::server::Family::Valkey || server.version.0 < 9 {
        return Ok(());
    }
    if let Some(set) = unsafe { raw::RedisModule_SetModuleOptions } {
        unsafe { set(ctx.ctx, HANDLE_ATOMIC_SLOT_MIGRATION) };
    }
    Ok(())
}

/// The start of the error of a write dropped because this node does not serve the key's slot.
pub const NOT_SERVED: &str = "NOTSERVED";

/// Whether this server runs with `cluster-enabled yes`.
pub fn enabled(ctx: &Context) -> bool {
    super::stream::flags(ctx) & raw::REDISMODULE_CTX_FLAGS_CLUSTER != 0
}

/// `Ok` when this node serves `key`'s slot now (always on a standalone server), else why not (an
/// error starting with [`NOT_SERVED`]). Must be called under the lock, in the hold that writes.
pub fn serves(ctx: &Context, key: &str) -> Result<(), String> {
    if !enabled(ctx) {
        return Ok(());
    }
    super::stream::call_read(ctx, "EXISTS", &[key.as_bytes()])
        .map(|_| ())
        .map_err(|e| format!("{NOT_SERVED} {key} is not served by this node now ({e})"))
}

/// Whether `error` says a write was dropped because the key's slot is served elsewhere.
pub fn elsewhere(error: &str) -> bool {
    error.starts_with(NOT_SERVED)
}

/// Whether `key`, about to be deleted on this node, leaves with its slot rather than for good: this
/// node no longer serves the slot (the cluster drops a lost slot's keys), or the slot is being
/// migrated away (`MIGRATE` during a resharding: this node's line of `CLUSTER NODES` lists it as
/// `[<slot>->-<target>]`). Main thread; only for the module's own streams.
pub fn leaving(ctx: &Context, key: &str) -> bool {
    if !enabled(ctx) {
        return false;
    }
    if serves(ctx, key).is_err() {
        return true;
    }
    let read = super::stream::call_read;
    let Ok(redis_module::RedisValue::Integer(slot)) =
        read(ctx, "CLUSTER", &[b"KEYSLOT", key.as_bytes()])
    else {
        return false;
    };
    let nodes = read(ctx, "CLUSTER", &[b"NODES"])
        .ok()
        .as_ref()
        .and_then(super::stream::text)
        .unwrap_or_default();
    let migrating = format!("[{slot}->-");
    nodes
        .lines()
        .find(|line| line.contains("myself"))
        .is_some_and(|line| line.contains(&migrating))
}
