//! Capturing changes of mapped hashes (`MAPPINGS_FILE`) into each mapping's stream, inside the
//! command that made them.
//!
//! A notification about a key under a mapping's prefix (or its write-through key `__{<key>}`)
//! schedules one job per key and command ([`crate::host::After`]); the job reads the key as
//! the command left it, lets [`crate::mapping::capture::decide`] say what to do, and does it: removes
//! the `#` field, deletes the key for `-`/`~`, adds the change to the mapping's stream
//! `writebehind:<name>`, writes an immediate acknowledgement, or dead-letters a change whose `#`
//! field cannot be read to `writebehind:<name>:dlq` with the reason. All of it is part of the
//! command, so Redis never acknowledges a change to a mapped hash that is not also in the stream.
//!
//! Nothing is captured on a replica or while the server loads its data: there the changes arrive
//! with the primary's (or the AOF's) own capture entries.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::Ordering;

use redis_module::{raw, Context, RedisValue};

use super::control::{mapped, REGISTRY};
use super::mapped::{Counters, Mapped};
use crate::host::{keyspace, logging, stream};
use crate::mapping::capture::{decide, target, Actions, Found};
use crate::mapping::op::ACK_TTL_SECONDS;
use crate::mapping::{Mapping, Mappings};

thread_local! {
    /// Keys with a capture job scheduled and not run yet (main thread).
    static PENDING: RefCell<HashSet<Vec<u8>>> = RefCell::new(HashSet::new());
}

/// Loads `MAPPINGS_FILE` (at module load) and, when it maps anything, subscribes to key events. A bad
/// file stops the load with the file, line and reason.
pub fn load(ctx: &Context, path: &str) -> Result<(), String> {
    if path.trim().is_empty() {
        REGISTRY.set_mapped(None);
        return Ok(());
    }
    let mappings = Mappings::load(path.trim()).map_err(|e| e.to_string())?;
    // On a cluster a mapping's stream would live in one slot while its keys live in all of them, and
    // the capture would write into slots this node may not serve: refuse rather than do that.
    if !mappings.mappings.is_empty() && stream::flags(ctx) & raw::REDISMODULE_CTX_FLAGS_CLUSTER != 0
    {
        return Err(format!(
            "{path}: hash mappings do not run on a cluster-enabled server yet; leave MAPPINGS_FILE empty there"
        ));
    }
    let names: Vec<&str> = mappings.mappings.iter().map(|m| m.name.as_str()).collect();
    logging::info(&format!(
        "mappings from {path}: {}",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    ));
    let n = mappings.mappings.len();
    let any = n > 0;
    REGISTRY.set_mapped(Some(Mapped {
        mappings,
        counters: (0..n).map(|_| Counters::default()).collect(),
        writers: (0..n).map(|_| Default::default()).collect(),
        wakes: (0..n).map(|_| crossbeam_channel::bounded(1)).collect(),
    }));
    if any {
        let prefixes = mapped()
            .map(|m| {
                m.mappings
                    .mappings
                    .iter()
                    .map(|m| m.key_prefix.as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default();
        keyspace::register(ctx, prefixes)?;
    }
    Ok(())
}

/// A command touched `key`: schedule its capture once per command.
pub fn on_key_event(_event: &[u8], key: &[u8], after: &crate::host::After<'_>) {
    let Some(mapped) = mapped() else { return };
    if target(&mapped.mappings, key).is_none() {
        return;
    }
    let first = PENDING.with(|p| p.borrow_mut().insert(key.to_vec()));
    if !first {
        return;
    }
    let key = key.to_vec();
    let scheduled = after.run("hash capture", {
        let key = key.clone();
        move |ctx| capture(ctx, &key)
    });
    if !scheduled {
        PENDING.with(|p| p.borrow_mut().remove(&key));
        logging::warning(&format!(
            "LOST the change of {} could not be captured: the server refused to schedule it",
            key.escape_ascii()
        ));
    }
}

/// The job: read the key, decide, do it (inside the command).
fn capture(ctx: &Context, key: &[u8]) {
    PENDING.with(|p| p.borrow_mut().remove(key));
    let flags = stream::flags(ctx);
    if flags & (raw::REDISMODULE_CTX_FLAGS_SLAVE | raw::REDISMODULE_CTX_FLAGS_LOADING) != 0 {
        return;
    }
    let Some(mapped) = mapped() else { return };
    let Some(t) = target(&mapped.mappings, key) else {
        return;
    };
    let index = mapped
        .mappings
        .mappings
        .iter()
        .position(|m| std::ptr::eq(m, t.mapping))
        .unwrap_or(0);
    let counters = &mapped.counters[index];
    let hash = read_hash(ctx, key);
    let actions = decide(
        &t,
        match &hash {
            Some(fields) => Found::Hash(fields),
            None => Found::Gone,
        },
    );
    keyspace::quiet(|| {
        if let Err(e) = carry_out(ctx, key, t.mapping, &actions, hash.as_deref()) {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            logging::warning(&format!(
                "LOST the change of {} was not captured for mapping {}: {e}",
                key.escape_ascii(),
                t.mapping.name
            ));
            return;
        }
        if actions.capture.is_some() {
            counters.captured.fetch_add(1, Ordering::Relaxed);
            super::mapped::wake(&mapped, index);
        }
        if let Some(why) = &actions.refused {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            logging::warning(&format!(
                "the change of {} was dead-lettered to {}: {why}",
                key.escape_ascii(),
                t.mapping.dead_letter_stream()
            ));
        }
    });
}

/// The key's fields when it is a hash; `None` when it is gone or holds another type.
fn read_hash(ctx: &Context, key: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    // One read: another type answers WRONGTYPE, and a key that is gone answers an empty list (a
    // hash has at least one field).
    let RedisValue::Array(items) = stream::call_read(ctx, "HGETALL", &[key]).ok()? else {
        return None;
    };
    if items.is_empty() {
        return None;
    }
    let items: Vec<Vec<u8>> = items.iter().filter_map(stream::bytes).collect();
    Some(
        items
            .chunks_exact(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect(),
    )
}

fn carry_out(
    ctx: &Context,
    key: &[u8],
    mapping: &Mapping,
    actions: &Actions,
    hash: Option<&[(Vec<u8>, Vec<u8>)]>,
) -> Result<(), String> {
    if actions.delete_key {
        stream::call_write(ctx, "DEL", &[key])?;
    } else if actions.remove_control {
        stream::call_write(ctx, "HDEL", &[key, b"#"])?;
    }
    if let Some(fields) = &actions.capture {
        let pairs: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|(f, v)| (f.as_slice(), v.as_slice()))
            .collect();
        stream::add(ctx, &mapping.capture_stream(), &pairs)?;
    }
    if let Some((ack_stream, fields)) = &actions.ack_now {
        let mut args: Vec<&[u8]> = vec![ack_stream, b"*"];
        for (f, v) in fields {
            args.push(f);
            args.push(v);
        }
        stream::call_write(ctx, "XADD", &args)?;
        let ttl = ACK_TTL_SECONDS.to_string();
        stream::call_write(ctx, "EXPIRE", &[ack_stream, ttl.as_bytes()])?;
    }
    if let Some(why) = &actions.refused {
        let mut pairs: Vec<(&[u8], &[u8])> = vec![(b"key", key), (b"reason", why.as_bytes())];
        for (f, v) in hash.unwrap_or_default() {
            pairs.push((f, v));
        }
        stream::add(ctx, &mapping.dead_letter_stream(), &pairs)?;
    }
    Ok(())
}
