//! Legacy import: copies string keys of the pre-stream design (one batch JSON each) into the stream.
//!
//! Keys matching the `EXTRA_BRIDGE_KEYS` patterns are imported at start-up, and by
//! `WB.IMPORT [MATCH pattern] [DELETE]` on demand. The keyspace is walked with `SCAN` in bounded steps,
//! one step per lock hold. Each imported key is recorded in the set `_wb_imported` (`_wb_imported:{i}`
//! of its shard stream with `STREAM_SHARDS`, see [`crate::shard::Names`]) in the same lock hold
//! as its `XADD` (both replicated and in the AOF as one unit), so an import interrupted halfway and run
//! again never imports a key twice. With `DELETE` the key is removed instead of recorded.

use redis_module::RedisValue;

use crate::entry::legacy;
use crate::entry::Rules;
use crate::host::gil::Gil;
use crate::host::logging;
use crate::host::stream::{self, bytes};
use crate::settings::Snapshot;

/// Keys examined per SCAN step.
const SCAN_COUNT: &[u8] = b"200";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub imported: usize,
    pub already: usize,
    pub not_strings: usize,
    /// On a cluster with `STREAM_SHARDS` > 1: keys whose shard stream another node serves (the
    /// module cannot write there); they stay as they are.
    pub elsewhere: usize,
}

/// The stream a legacy entry goes to: the shard stream of its first row id (an entry without one
/// goes to the first stream; the writer dead-letters it with the reason), when this node serves it.
fn home<'a>(
    streams: &'a [crate::shard::Names],
    fields: &[(Vec<u8>, Vec<u8>)],
    rules: &Rules,
) -> Option<&'a crate::shard::Names> {
    let first = streams.first()?;
    let Some(shard) = first.shard else {
        return Some(first);
    };
    let decoded = crate::entry::decode(crate::entry::EntryId::default(), fields, rules);
    let index = decoded
        .row_keys_each()
        .next()
        .map_or(0, |id| crate::shard::shard_of(id.as_bytes(), shard.count));
    let name = first.sibling(index);
    streams.iter().find(|n| n.stream == name)
}

/// Imports the keys matching each pattern into `streams` (the streams this node serves: each key
/// goes to the shard stream of its rows). Runs on a background thread.
pub fn run(
    streams: &[crate::shard::Names],
    patterns: &[String],
    delete: bool,
    gil: &Gil,
    s: &Snapshot,
) -> Result<Summary, String> {
    let rules = Rules::from_settings(s);
    let mut sum = Summary::default();
    let sets: Vec<String> = streams.iter().map(|n| n.imported()).collect();
    for pattern in patterns {
        let mut cursor = b"0".to_vec();
        loop {
            let next = gil.with(|ctx| -> Result<Vec<u8>, String> {
                let reply = stream::call_read(
                    ctx,
                    "SCAN",
                    &[&cursor, b"MATCH", pattern.as_bytes(), b"COUNT", SCAN_COUNT],
                )?;
                let RedisValue::Array(parts) = reply else {
                    return Ok(b"0".to_vec());
                };
                let next = parts
                    .first()
                    .and_then(bytes)
                    .unwrap_or_else(|| b"0".to_vec());
                let Some(RedisValue::Array(keys)) = parts.get(1) else {
                    return Ok(next);
                };
                for key in keys.iter().filter_map(bytes) {
                    if sets.iter().any(|set| key == set.as_bytes()) {
                        continue;
                    }
                    let value = match stream::call_read(ctx, "GET", &[&key]) {
                        Ok(v) => bytes(&v),
                        Err(_) => None, // not a string (WRONGTYPE): leave it alone
                    };
                    let Some(value) = value else {
                        sum.not_strings += 1;
                        continue;
                    };
                    let fields = legacy::import_fields(&key, &value, &rules);
                    let Some(target) = home(streams, &fields, &rules) else {
                        sum.elsewhere += 1;
                        continue;
                    };
                    let set = target.imported();
                    if matches!(
                        stream::call_read(ctx, "SISMEMBER", &[set.as_bytes(), &key]),
                        Ok(RedisValue::Integer(1))
                    ) {
                        sum.already += 1;
                        continue;
                    }
                    crate::host::cluster::serves(ctx, &target.stream)?;
                    let refs: Vec<(&[u8], &[u8])> = fields
                        .iter()
                        .map(|(k, v)| (k.as_slice(), v.as_slice()))
                        .collect();
                    stream::add(ctx, &target.stream, &refs)?;
                    if delete {
                        stream::call_write(ctx, "DEL", &[&key])?;
                    } else {
                        stream::call_write(ctx, "SADD", &[set.as_bytes(), &key])?;
                    }
                    sum.imported += 1;
                }
                Ok(next)
            })?;
            if next == b"0" {
                break;
            }
            cursor = next;
        }
    }
    if sum.imported > 0 || sum.already > 0 || sum.elsewhere > 0 {
        let into: Vec<&str> = streams.iter().map(|n| n.stream.as_str()).collect();
        logging::info(&format!(
            "IMPORT {} legacy keys added to {} ({} imported before, {} not strings)",
            sum.imported,
            into.join(", "),
            sum.already,
            sum.not_strings
        ));
    }
    if sum.elsewhere > 0 {
        logging::warning(&format!(
            "IMPORT {} legacy keys left as they are: their shard streams are served by other nodes, and a module writes only to its own node (see docs/operations.md, cluster)",
            sum.elsewhere
        ));
    }
    Ok(sum)
}
