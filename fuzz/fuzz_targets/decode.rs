//! Fuzzes the decoder: whatever bytes an application (or an attacker) puts into a stream entry, and
//! whatever the rule settings, decoding and planning SQL never panic. The module runs inside
//! `redis-server`, where a panic that escaped would take the server down.
//!
//! Input layout: byte 0 selects the rule flags, byte 1 the repair budget, the rest is split at the
//! first 0x00 into a `value` field and a `payload` field (so field selection is exercised too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_writebehind::entry::repair::{close_truncated, quote_bare_lastplus};
use redis_writebehind::entry::{decode, EntryId, Rules};
use redis_writebehind::sql::{plan, Tables};

fuzz_target!(|data: &[u8]| {
    let flags = data.first().copied().unwrap_or(0);
    let budget = data.get(1).copied().unwrap_or(10);
    let body = data.get(2..).unwrap_or_default();
    let bit = |n: u8| flags & (1 << n) != 0;
    let rules = Rules {
        lenient_json_repair: bit(0),
        auto_quote_lastplus: bit(1),
        hash_null_track_id: bit(2),
        username_use_record_id: bit(3),
        skip_freshness: bit(4),
        always_process_stale_first: bit(5),
        process_stale_saved: !bit(6),
        enable_fallback_record_list: !bit(7),
        max_json_repair_append: usize::from(budget),
        ..Rules::default()
    };
    let (value, payload) = match body.iter().position(|&b| b == 0) {
        Some(at) => {
            let (v, rest) = body.split_at(at);
            (v, rest.get(1..).unwrap_or_default())
        }
        None => (body, &[][..]),
    };
    let fields = vec![
        (b"value".to_vec(), value.to_vec()),
        (b"payload".to_vec(), payload.to_vec()),
    ];
    let id = EntryId::new(1_762_172_400_000, u64::from(flags));
    let decoded = decode(id, &fields, &rules);
    let _ = decoded.partition_key();
    let _ = decoded.outcome().to_string();
    if let redis_writebehind::entry::Decoded::Undecodable { reason, .. } = &decoded {
        // A dead-letter reason is one line.
        assert!(!reason.to_string().contains('\n'));
    }
    for planned in plan(&[decoded], &Tables::default(), 1 << 20) {
        assert_eq!(
            planned.statement.sql.matches('?').count(),
            planned.statement.binds.len()
        );
    }
    if let Ok(text) = std::str::from_utf8(value) {
        if let Ok((closed, _)) = close_truncated(text, usize::from(budget)) {
            // What the repair produces parses (escape sequences are left to the JSON parser to judge).
            if !closed.contains('\\') {
                assert!(
                    serde_json::from_str::<serde_json::Value>(&closed).is_ok(),
                    "repair produced invalid JSON: {closed:?}"
                );
            }
        }
        let _ = quote_bare_lastplus(text);
    }
});
