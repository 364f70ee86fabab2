//! Legacy import: copies string keys of the pre-stream design (one batch JSON each) into the stream.
//!
//! Keys matching the `EXTRA_BRIDGE_KEYS` patterns are imported at start-up, and by
//! `WB.IMPORT [MATCH pattern] [DELETE]` on demand. The keyspace is walked with `SCAN` in bounded steps,
//! one step per lock hold. Each imported key is recorded in the set `_wb_imported` in the same lock hold
//! as its `XADD` (both replicated and in the AOF as one unit), so an import interrupted halfway and run
//! again never imports a key twice. With `DELETE` the key is removed instead of recorded.

use redis_module::RedisValue;

use crate::entry::legacy;
use crate::entry::Rules;
use crate::host::gil::Gil;
use crate::host::logging;
use crate::host::stream::{self, bytes};
use crate::settings::{Key, Snapshot};

/// The set of legacy keys already imported.
pub const IMPORTED_SET: &str = "_wb_imported";

/// Keys examined per SCAN step.
const SCAN_COUNT: &[u8] = b"200";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub imported: usize,
    pub already: usize,
    pub not_strings: usize,
}

/// Imports the keys matching each pattern. Runs on a background thread.
pub fn run(patterns: &[String], delete: bool, gil: &Gil, s: &Snapshot) -> Result<Summary, String> {
    let stream_name = s.str(Key::RedisStream).to_string();
    let rules = Rules::from_settings(s);
    let mut sum = Summary::default();
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
                    if key == IMPORTED_SET.as_bytes() {
                        continue;
                    }
                    if matches!(
                        stream::call_read(ctx, "SISMEMBER", &[IMPORTED_SET.as_bytes(), &key]),
                        Ok(RedisValue::Integer(1))
                    ) {
                        sum.already += 1;
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
                    let refs: Vec<(&[u8], &[u8])> = fields
                        .iter()
                        .map(|(k, v)| (k.as_slice(), v.as_slice()))
                        .collect();
                    stream::add(ctx, &stream_name, &refs)?;
                    if delete {
                        stream::call_write(ctx, "DEL", &[&key])?;
                    } else {
                        stream::call_write(ctx, "SADD", &[IMPORTED_SET.as_bytes(), &key])?;
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
    if sum.imported > 0 || sum.already > 0 {
        logging::info(&format!(
            "IMPORT {} legacy keys added to {stream_name} ({} imported before, {} not strings)",
            sum.imported, sum.already, sum.not_strings
        ));
    }
    Ok(sum)
}
