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
