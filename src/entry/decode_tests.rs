//! Unit tests of the decoder: each shape, each record rule, each setting that changes them.

use super::*;
use crate::entry::{Tally, RESTORED_FIELD};

/// Received 2025-11-03 12:20:00 UTC.
const ID: EntryId = EntryId::new(1_762_172_400_000, 0);
const FRESH: &str = "2025-11-03 12:19:55";
const STALE: &str = "2025-11-03 11:00:00";

fn value(json: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![(b"value".to_vec(), json.as_bytes().to_vec())]
}

fn run(json: &str, rules: &Rules) -> Decoded {
    decode(ID, &value(json), rules)
}

fn tracked(json: &str, rules: &Rules) -> TrackedBatch {
    match run(json, rules) {
        Decoded::Tracked(b) => b,
        other => panic!("expected a tracked batch, got {other:?}"),
    }
}

fn undecodable(json: &str, rules: &Rules) -> DecodeError {
    match run(json, rules) {
        Decoded::Undecodable { reason, .. } => reason,
        other => panic!("expected undecodable, got {other:?}"),
    }
}

fn rec(fields: &str) -> String {
    format!(r#"{{"id":"alice-1","track_id":"item-01","lastplus":"{FRESH}",{fields}}}"#)
}

fn batch(kind: &str, records: &[String]) -> String {
    format!(
        r#"{{"key":"userdata-events:alice-1/{kind}","records":[{}]}}"#,
        records.join(",")
    )
}

#[test]
fn seed_visited_batch_becomes_events() {
    let json = r#"{"key":"userdata-events:user.name-abc123/visited","records":[{"id":"user.name-abc123","page_name":"search","query_row_count":"25","track_id":"item-01","track_title":"Report 01","track_type":"report","track_url":"/search?q=item-01","lastplus":"2025-11-03 12:19:50","action":"v"}]}"#;
    let b = tracked(json, &Rules::default());
    assert_eq!(b.shape, Shape::Batch);
    assert_eq!(b.kind(), Some(KeyKind::Visited));
    assert_eq!((b.username(), b.partition()), ("user.name", "user.name"));
    assert_eq!((b.rejected.len(), b.skipped.len()), (0, 0));
    let e = &b.events[0];
    assert_eq!(e.index, 0);
    assert_eq!(e.action, Action::Visit);
    assert_eq!(
        (e.tracked_id(), e.track_id()),
        ("user.name-abc123", "item-01")
    );
    assert_eq!(e.username(), "user.name");
    assert_eq!(e.page_name(), Some("search"));
    assert_eq!(e.query_row_count, Some(25));
    assert_eq!(e.title(), Some("Report 01"));
    assert_eq!(e.track_type(), Some("REPORT"));
    assert_eq!(e.url(), Some("/search?q=item-01"));
    assert_eq!(rules::ts_text(&e.lastplus), "2025-11-03 12:19:50");
    assert_eq!(e.stale_override, None);
}

#[test]
fn create_user_username_is_the_emails_local_part() {
    let Decoded::CreateUser(u) = run(
        r#"{"user_email":"user.name@example.com"}"#,
        &Rules::default(),
    ) else {
        panic!("not a user")
    };
    assert_eq!(
        (u.email.as_str(), u.username.as_str()),
        ("user.name@example.com", "user.name")
    );
    let d = run(
        r#"{"user_email":"user.name@example.com"}"#,
        &Rules::default(),
    );
    assert_eq!(d.partition_key(), "user.name");
    assert_eq!(
        undecodable(r#"{"user_email":"nobody"}"#, &Rules::default()).to_string(),
        "user_email 'nobody' has no '@'"
    );
    assert_eq!(
        undecodable(r#"{"user_email":7}"#, &Rules::default()).to_string(),
        "user_email must be a string, found a number"
    );
}

#[test]
fn diagnostic_entries_are_recognised_not_written() {
    let d = run(
        r#"{"diag":"ping","ts":"2025-11-01 10:22:00"}"#,
        &Rules::default(),
    );
    assert_eq!(
        d,
        Decoded::Diagnostic {
            id: ID,
            diag: "ping".into()
        }
    );
    assert_eq!(d.partition_key(), "");
}

#[test]
fn entries_of_our_own_restore_are_never_written_back() {
    let mut fields = value(&batch("visited", &[rec(r#""action":"v""#)]));
    fields.push((RESTORED_FIELD.as_bytes().to_vec(), b"1".to_vec()));
    assert_eq!(
        decode(ID, &fields, &Rules::default()),
        Decoded::Restored { id: ID }
    );
}

#[test]
fn hello_world_is_undecodable_because_a_record_needs_an_id() {
    let e = undecodable(r#"{"hello":"world"}"#, &Rules::default());
    assert_eq!(e.code(), "not_a_record");
    assert_eq!(
        e.to_string(),
        "not a tracked record: a lone JSON object needs an 'id' (or is a batch with key and records, a user_email or a diag); it has keys 'hello'"
    );
}

#[test]
fn lone_record_is_a_single_record_batch_with_fallback_single_record() {
    let b = tracked(&rec(r#""action":"s""#), &Rules::default());
    assert_eq!(b.shape, Shape::SingleRecord);
    assert_eq!(b.key, None);
    assert_eq!(b.events[0].action, Action::Save);
    assert_eq!((b.username(), b.partition()), ("alice", "alice"));
    let off = Rules {
        enable_fallback_single_record: false,
        ..Rules::default()
    };
    let e = undecodable(&rec(r#""action":"s""#), &off);
    assert_eq!(
        e.to_string(),
        "a lone record without a batch key is turned off (ENABLE_FALLBACK_SINGLE_RECORD=0)"
    );
}

#[test]
fn record_list_is_a_batch_with_fallback_record_list_and_actions_decide() {
    let json = format!(
        "[{},{},{}]",
        rec(r#""action":"v""#),
        rec(r#""action":"s""#),
        rec(r#""action":"d""#)
    );
    let b = tracked(&json, &Rules::default());
    assert_eq!(b.shape, Shape::RecordList);
    let actions: Vec<Action> = b.events.iter().map(|e| e.action).collect();
    assert_eq!(actions, [Action::Visit, Action::Save, Action::Delete]);
    let off = Rules {
        enable_fallback_record_list: false,
        ..Rules::default()
    };
    assert_eq!(undecodable(&json, &off).code(), "fallback_disabled");
}

#[test]
fn lists_that_are_not_records_are_undecodable() {
    let r = Rules::default();
    assert_eq!(undecodable("[]", &r), DecodeError::EmptyList);
    assert_eq!(
        undecodable(r#"[{"id":"a"},3]"#, &r),
        DecodeError::ListNotRecords {
            index: 1,
            found: "a number"
        }
    );
    assert_eq!(
        undecodable(r#"[{"hello":"world"}]"#, &r),
        DecodeError::NoRecordInList
    );
}

#[test]
fn malformed_batches_say_what_is_wrong() {
    let r = Rules::default();
    assert_eq!(
        undecodable(r#"{"records":[]}"#, &r),
        DecodeError::MissingKey
    );
    assert_eq!(
        undecodable(r#"{"key":"userdata-events:a/visited"}"#, &r),
        DecodeError::MissingRecords
    );
    assert_eq!(
        undecodable(r#"{"key":"userdata-events:a/visited","records":{}}"#, &r).to_string(),
        "batch 'records' must be a list, found an object"
    );
    assert_eq!(
        undecodable(r#"{"key":"userdata-events:a/liked","records":[]}"#, &r).to_string(),
        "batch key 'userdata-events:a/liked' ends in '/liked', expected /visited, /visited/<page> or /saved"
    );
    assert_eq!(
        undecodable(r#"{"key":"events:a/visited","records":[]}"#, &r).to_string(),
        "batch key 'events:a/visited' does not start with 'userdata-events:' (KEY_PREFIX)"
    );
    let custom = Rules {
        key_prefix: "events".into(),
        ..Rules::default()
    };
    assert!(matches!(
        run(r#"{"key":"events:a/visited","records":[]}"#, &custom),
        Decoded::Tracked(_)
    ));
}

#[test]
fn empty_records_list_is_an_empty_batch() {
    let b = tracked(&batch("visited", &[]), &Rules::default());
    assert!(b.events.is_empty() && b.rejected.is_empty());
}

#[test]
fn page_segment_of_restored_visited_keys_fills_a_missing_page_name() {
    let json = format!(
        r#"{{"key":"userdata-events:alice-1/visited/search","records":[{},{}]}}"#,
        rec(r#""action":"v""#),
        rec(r#""page_name":"home""#)
    );
    let b = tracked(&json, &Rules::default());
    assert_eq!(b.key.as_ref().and_then(|k| k.page()), Some("search"));
    assert_eq!(b.events[0].page_name(), Some("search"));
    assert_eq!(b.events[1].page_name(), Some("home"));
}

#[test]
fn username_comes_from_the_key_id_or_the_record_id() {
    let json = r#"{"key":"userdata-events:bob-7/visited","records":[{"id":"carol-9","lastplus":"2025-11-03 12:19:55"}]}"#;
    let b = tracked(json, &Rules::default());
    assert_eq!(b.events[0].username(), "bob");
    let by_record = Rules {
        username_use_record_id: true,
        ..Rules::default()
    };
    assert_eq!(tracked(json, &by_record).events[0].username(), "carol");
    let whole = Rules {
        username_use_record_id: true,
        username_split_hyphen: false,
        ..Rules::default()
    };
    assert_eq!(tracked(json, &whole).events[0].username(), "carol-9");
    let key_whole = Rules {
        username_split_hyphen: false,
        ..Rules::default()
    };
    let b = tracked(json, &key_whole);
    assert_eq!(b.events[0].username(), "bob-7");
    // Routing does not follow the live setting.
    assert_eq!(b.partition(), "bob");
}

#[test]
fn saved_key_records_are_saves_or_deletes() {
    let b = tracked(
        &batch(
            "saved",
            &[
                rec(r#""action":"s""#),
                rec(r#""action":"d""#),
                rec("\"x\":0"),
            ],
        ),
        &Rules::default(),
    );
    let actions: Vec<Action> = b.events.iter().map(|e| e.action).collect();
    assert_eq!(actions, [Action::Save, Action::Delete, Action::Save]);
}

#[test]
fn an_action_that_contradicts_the_key_rejects_that_record_only() {
    let b = tracked(
        &batch("visited", &[rec(r#""action":"d""#), rec(r#""action":"v""#)]),
        &Rules::default(),
    );
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.rejected[0].index, 0);
    assert_eq!(
        b.rejected[0].reason.to_string(),
        "action 'd' does not belong under a /visited key"
    );
    let b = tracked(
        &batch("saved", &[rec(r#""action":"zap""#)]),
        &Rules::default(),
    );
    assert_eq!(b.rejected[0].reason.code(), "unknown_action");
}

#[test]
fn invalid_lastplus_rejects_that_record_only() {
    let records = [
        r#"{"id":"alice-1","lastplus":"2025-11-03"}"#.to_string(),
        r#"{"id":"alice-1","lastplus":20251103}"#.to_string(),
        r#"{"id":"alice-1"}"#.to_string(),
        rec(r#""action":"v""#),
    ];
    let b = tracked(&batch("visited", &records), &Rules::default());
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.events[0].index, 3);
    let reasons: Vec<String> = b.rejected.iter().map(|r| r.reason.to_string()).collect();
    assert_eq!(
        reasons,
        [
            "lastplus '2025-11-03' is not UTC YYYY-MM-DD HH:MM:SS",
            "lastplus '20251103' is not UTC YYYY-MM-DD HH:MM:SS",
            "record has no lastplus",
        ]
    );
    assert_eq!(b.rejected[0].record_id.as_deref(), Some("alice-1"));
}

#[test]
fn a_record_without_id_or_not_an_object_is_rejected() {
    let records = [
        format!(r#"{{"id":"  ","lastplus":"{FRESH}"}}"#),
        "\"text\"".to_string(),
        rec("\"n\":1"),
    ];
    let b = tracked(&batch("visited", &records), &Rules::default());
    let codes: Vec<&str> = b.rejected.iter().map(|r| r.reason.code()).collect();
    assert_eq!(codes, ["missing_id", "not_an_object"]);
    assert_eq!(b.events.len(), 1);
}

#[test]
fn stale_visit_is_skipped_with_a_reason() {
    let stale = format!(r#"{{"id":"alice-1","lastplus":"{STALE}"}}"#);
    let b = tracked(
        &batch("visited", &[stale, rec("\"n\":1")]),
        &Rules::default(),
    );
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.skipped.len(), 1);
    let s = &b.skipped[0];
    assert_eq!(
        (s.index, s.record_id.as_str(), s.reason.code()),
        (0, "alice-1", "stale_visit")
    );
    assert_eq!(
        s.reason.to_string(),
        "stale visit: lastplus is 4800 s older than the entry (NEWER_RECORD_TIME_LIMIT_SECONDS=30)"
    );
}

#[test]
fn freshness_is_relative_to_the_entry_not_the_processing_time() {
    // Decoded long after 2025 (a backlog, an outage): still fresh, because Redis received it then.
    let b = tracked(&batch("visited", &[rec("\"n\":1")]), &Rules::default());
    assert_eq!((b.events.len(), b.skipped.len()), (1, 0));
    // The same record in an entry received an hour later is stale.
    let later = EntryId::new(ID.ms + 3_600_000, 0);
    let d = decode(
        later,
        &value(&batch("visited", &[rec("\"n\":1")])),
        &Rules::default(),
    );
    let Decoded::Tracked(b) = d else { panic!() };
    assert_eq!((b.events.len(), b.skipped.len()), (0, 1));
}

#[test]
fn stale_saved_and_deleted_records_are_written_when_process_stale_saved() {
    let s = format!(r#"{{"id":"alice-1","track_id":"t","lastplus":"{STALE}","action":"s"}}"#);
    let d = format!(r#"{{"id":"alice-1","track_id":"t","lastplus":"{STALE}","action":"d"}}"#);
    let b = tracked(&batch("saved", &[s.clone(), d.clone()]), &Rules::default());
    assert_eq!(b.events.len(), 2);
    assert!(b
        .events
        .iter()
        .all(|e| e.stale_override == Some(StaleOverride::Saved)));
    let off = Rules {
        process_stale_saved: false,
        ..Rules::default()
    };
    let b = tracked(&batch("saved", &[s, d]), &off);
    let codes: Vec<&str> = b.skipped.iter().map(|s| s.reason.code()).collect();
    assert_eq!(codes, ["stale_save", "stale_delete"]);
    assert!(b.skipped[0]
        .reason
        .to_string()
        .contains("PROCESS_STALE_SAVED=1"));
}

#[test]
fn first_stale_record_is_written_when_always_process_stale_first() {
    let stale = |n: u32| format!(r#"{{"id":"alice-{n}","lastplus":"{STALE}"}}"#);
    let rules = Rules {
        always_process_stale_first: true,
        ..Rules::default()
    };
    let b = tracked(
        &batch("visited", &[rec("\"n\":1"), stale(2), stale(3)]),
        &rules,
    );
    assert_eq!(b.events.len(), 2);
    assert_eq!(b.events[1].tracked_id(), "alice-2");
    assert_eq!(b.events[1].stale_override, Some(StaleOverride::First));
    assert_eq!(b.skipped[0].record_id, "alice-3");
}

#[test]
fn skip_freshness_writes_stale_records() {
    let rules = Rules {
        skip_freshness: true,
        ..Rules::default()
    };
    let stale = r#"{"id":"alice-1","lastplus":"2001-01-01 00:00:00"}"#.to_string();
    let b = tracked(&batch("visited", &[stale]), &rules);
    assert_eq!((b.events.len(), b.skipped.len()), (1, 0));
    assert_eq!(b.events[0].stale_override, None);
}

#[test]
fn blank_track_id_is_empty_or_hashed_with_hash_null_track_id() {
    let r = r#"{"id":"alice-1","track_id":"","track_title":"Sample","track_url":"/search?q=Sample","lastplus":"2025-11-03 12:19:55"}"#;
    let missing = r#"{"id":"alice-1","track_title":"Sample","track_url":"/search?q=Sample","lastplus":"2025-11-03 12:19:55"}"#;
    let b = tracked(
        &batch("visited", &[r.into(), missing.into()]),
        &Rules::default(),
    );
    assert_eq!(b.events[0].track_id(), "");
    assert!(!b.events[0].track_id_generated);
    let hashing = Rules {
        hash_null_track_id: true,
        ..Rules::default()
    };
    let b = tracked(&batch("visited", &[r.into(), missing.into()]), &hashing);
    assert_eq!(b.events[0].track_id(), "auto_d053f3e2642f");
    assert_eq!(b.events[1].track_id(), "auto_d053f3e2642f");
    assert!(b.events[0].track_id_generated);
}

#[test]
fn track_type_is_upper_cased_unless_preserve_track_type_case() {
    let b = tracked(
        &batch("visited", &[rec(r#""track_type":"Query""#)]),
        &Rules::default(),
    );
    assert_eq!(b.events[0].track_type(), Some("QUERY"));
    let keep = Rules {
        preserve_track_type_case: true,
        ..Rules::default()
    };
    let b = tracked(&batch("visited", &[rec(r#""track_type":"Query""#)]), &keep);
    assert_eq!(b.events[0].track_type(), Some("Query"));
}

#[test]
fn an_event_holds_its_track_type_as_the_rule_upper_cases_it() {
    // Upper-cased into the event's own text, beside its other strings: the same text as the rule,
    // non-ASCII, longer upper case, escapes and the strings after it included.
    for raw in [
        "report",
        "réport",
        "straße",
        "ǆ",
        "REPORT_2",
        "Mixed Case",
        "a\\\"b",
    ] {
        for preserve in [false, true] {
            let rules = Rules {
                preserve_track_type_case: preserve,
                ..Rules::default()
            };
            let member = format!(r#""track_type":"{raw}","track_url":"/u""#);
            let b = tracked(&batch("visited", &[rec(&member)]), &rules);
            let sent: String = serde_json::from_str(&format!("\"{raw}\"")).unwrap();
            let want = rules::track_type(&sent, preserve);
            assert_eq!(b.events[0].track_type(), Some(&*want), "{raw} {preserve}");
            assert_eq!(b.events[0].url(), Some("/u"), "{raw} {preserve}");
        }
    }
}

#[test]
fn non_numeric_query_row_count_is_stored_as_null_with_a_note() {
    let b = tracked(
        &batch(
            "visited",
            &[
                rec(r#""query_row_count":"lots""#),
                rec(r#""query_row_count":7"#),
            ],
        ),
        &Rules::default(),
    );
    assert_eq!(b.events[0].query_row_count, None);
    assert_eq!(b.events[1].query_row_count, Some(7));
    assert_eq!(
        b.notes[0].to_string(),
        "record 0: query_row_count 'lots' is not a whole number; stored as NULL"
    );
}

#[test]
fn hostile_strings_are_carried_intact() {
    let title = "it's \"quoted\"'; DROP TABLE TRACKED; -- ünïcødé 🎉 \u{0} end";
    let big = "x".repeat(1 << 20);
    let record = serde_json::json!({
        "id": "alice-1'; DROP TABLE \"USER\"; --",
        "track_id": "\u{0}'\"",
        "track_title": title,
        "track_url": big,
        "lastplus": FRESH,
    });
    let json = serde_json::json!({"key": "userdata-events:alice-1/visited", "records": [record]});
    let b = tracked(&json.to_string(), &Rules::default());
    let e = &b.events[0];
    assert_eq!(e.tracked_id(), "alice-1'; DROP TABLE \"USER\"; --");
    assert_eq!(e.track_id(), "\u{0}'\"");
    assert_eq!(e.title(), Some(title));
    assert_eq!(e.url().map(str::len), Some(1 << 20));
}

#[test]
fn invalid_utf8_is_undecodable_not_a_panic() {
    let fields = vec![(
        b"value".to_vec(),
        b"{\"user_email\":\"\xc3\x28@x\"}".to_vec(),
    )];
    let d = decode(ID, &fields, &Rules::default());
    let Decoded::Undecodable { reason, .. } = d else {
        panic!()
    };
    assert_eq!(
        reason.to_string(),
        "field 'value' is not valid UTF-8 (invalid byte at offset 15)"
    );
}

#[test]
fn truncated_batch_keeps_complete_records_and_rejects_the_cut_one() {
    let rules = Rules {
        lenient_json_repair: true,
        ..Rules::default()
    };
    let full = batch("visited", &[rec("\"n\":1"), rec("\"n\":2")]);
    let cut = full.get(..full.len() - 20).unwrap();
    let b = tracked(cut, &rules);
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.rejected.len(), 1);
    assert_eq!(b.rejected[0].reason, RejectReason::CutOff);
    assert_eq!(b.rejected[0].index, 1);
    assert!(b.repair.as_ref().is_some_and(|r| r.dropped_partial_record));
    assert!(run(cut, &rules).outcome().repaired);
}

#[test]
fn truncated_lone_record_is_undecodable() {
    let rules = Rules {
        lenient_json_repair: true,
        ..Rules::default()
    };
    let cut = r#"{"id":"alice-1","lastplus":"2025-11-03 12:19:55","#;
    assert_eq!(undecodable(cut, &rules), DecodeError::TruncatedRecord);
}

#[test]
fn outcome_and_tally_count_by_reason() {
    let stale = format!(r#"{{"id":"alice-1","lastplus":"{STALE}"}}"#);
    let bad = r#"{"id":"alice-1","lastplus":"nope"}"#.to_string();
    let d = run(
        &batch("visited", &[rec("\"n\":1"), stale, bad]),
        &Rules::default(),
    );
    assert_eq!(
        d.outcome().to_string(),
        "tracked written=1 skipped=1 rejected=1"
    );
    let mut t = Tally::default();
    d.tally(&mut t);
    run(r#"{"hello":"world"}"#, &Rules::default()).tally(&mut t);
    assert_eq!(t.entries, 2);
    assert_eq!(t.records_written, 1);
    assert_eq!(t.skipped.get("stale_visit"), Some(&1));
    assert_eq!(t.rejected.get("bad_lastplus"), Some(&1));
    assert_eq!(t.undecodable.get("not_a_record"), Some(&1));
}

#[test]
fn record_exec_line_names_the_record_not_its_content() {
    let b = tracked(
        &batch("visited", &[rec(r#""track_title":"secret""#)]),
        &Rules::default(),
    );
    let line = b.events[0].record_exec(ID);
    assert_eq!(
        line,
        "RECORD_EXEC entry=1762172400000-0 index=0 action=visit tracked_id='alice-1' track_id='item-01' username='alice' lastplus=2025-11-03 12:19:55"
    );
}

#[test]
fn numbers_as_ids_are_text() {
    let b = tracked(
        &batch(
            "visited",
            &[format!(r#"{{"id":42,"track_id":7,"lastplus":"{FRESH}"}}"#)],
        ),
        &Rules::default(),
    );
    assert_eq!(
        (b.events[0].tracked_id(), b.events[0].track_id()),
        ("42", "7")
    );
}

/// The decoder reading from the entry's bytes decides every payload as reading it through a
/// `serde_json::Value` does: hostile shapes, every prefix of them (truncations, with and without
/// the repairs), duplicate members, escapes, numbers in every position.
#[test]
fn reading_the_bytes_decides_as_reading_a_value_does() {
    let by_value =
        |fields: &[(Vec<u8>, Vec<u8>)], rules: &Rules| match fields::select(fields, rules) {
            Ok(s) => decode_document(ID, s.doc, s.repair, rules)
                .unwrap_or_else(|reason| Decoded::Undecodable { id: ID, reason }),
            Err(e) => Decoded::Undecodable {
                id: ID,
                reason: e.into(),
            },
        };
    let mut payloads: Vec<String> = vec![
        batch(
            "saved",
            &[
                rec(r#""action":"d","track_title":"a \"q\" \u00e9","query_row_count":"25""#),
                rec(r#""action":"S","id":"bob-2","query_row_count":2.0,"track_type":"report""#),
                rec(r#""action":7,"page_name":null,"track_url":{"b":[1,2],"a":true}"#),
                r#"{"id":{"x":1},"lastplus":20251103}"#.to_string(),
                r#"[1]"#.to_string(),
                "null".to_string(),
            ],
        ),
        format!(r#"[{},{{"no_id":1}},{}]"#, rec(""), rec(r#""track_id":"""#)),
        r#"{"key":"userdata-events:a/visited","key":"userdata-events:b/saved","records":[]}"#
            .to_string(),
        r#"{"records":[],"key":5}"#.to_string(),
        r#"{"user_email":"  Al\u0069ce@example.com ","diag":1}"#.to_string(),
        r#"{"diag":{"z":1,"a":[null,1.5e3]}}"#.to_string(),
        r#"{"b":1,"a":2,"c":{"id":1},"d":4,"e":5,"f":6,"g":7,"h":8,"i":9}"#.to_string(),
        format!(r#"{{"id":"alice-1","lastplus":{FRESH}}}"#),
        format!(
            r#"{{"key":"userdata-events:alice-1/visited","records":[{{"id":"alice-1","lastplus":{FRESH},"x":1e400}}]}}"#
        ),
        r#"{"id":-0.0,"lastplus":"2025-11-03 12:19:60Z"}"#.to_string(),
    ];
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode");
    if let Ok(dir) = std::fs::read_dir(seeds) {
        for file in dir.flatten() {
            if let Ok(bytes) = std::fs::read(file.path()) {
                payloads.push(String::from_utf8_lossy(bytes.get(2..).unwrap_or_default()).into());
            }
        }
    }
    // Mutations of each payload, from a fixed seed: bytes dropped, replaced or inserted, the
    // inserted ones mostly JSON's own punctuation and escapes.
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % n.max(1) as u64).unwrap_or_default()
    };
    let alphabet = b"\"\\{}[],:0-e.u\x01tnfx \n";
    let originals = payloads.clone();
    for payload in &originals {
        for _ in 0..200 {
            let mut bytes = payload.clone().into_bytes();
            for _ in 0..1 + next(3) {
                let at = next(bytes.len() + 1);
                let b = alphabet[next(alphabet.len())];
                match next(3) {
                    0 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    1 if at < bytes.len() => bytes[at] = b,
                    _ => bytes.insert(at, b),
                }
            }
            payloads.push(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    let lenient = Rules {
        lenient_json_repair: true,
        auto_quote_lastplus: true,
        hash_null_track_id: true,
        ..Rules::default()
    };
    let mut compared = 0;
    for (n, payload) in payloads.iter().enumerate() {
        if n >= originals.len() {
            // A mutation: compared whole, not cut at every byte.
            let fields = value(payload);
            for rules in [&Rules::default(), &lenient] {
                assert_eq!(
                    decode(ID, &fields, rules),
                    by_value(&fields, rules),
                    "{payload:?}"
                );
                compared += 1;
            }
            continue;
        }
        let cuts = (0..=payload.len()).filter(|&i| payload.is_char_boundary(i));
        for cut in cuts {
            let fields = value(payload.get(..cut).unwrap_or_default());
            for rules in [&Rules::default(), &lenient] {
                assert_eq!(
                    decode(ID, &fields, rules),
                    by_value(&fields, rules),
                    "{:?}",
                    payload.get(..cut)
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 2_000, "{compared}");
}

#[test]
fn an_events_strings_read_back_as_given_with_absent_and_empty_kept_apart() {
    let given = Strings {
        tracked_id: "alice-1",
        track_id: "",
        username: "alice",
        page_name: Some(""),
        title: None,
        track_type: Some("QUERY"),
        url: Some("/a?b=ü"),
    };
    assert_eq!(Texts::new(&given).strings(), given);
    let none = Strings::default();
    assert_eq!(Texts::new(&none).strings(), none);
    assert_eq!(Texts::default().strings(), none);
}

#[test]
fn an_events_strings_are_read_from_the_payload_escapes_included() {
    let json = format!(
        r#"{{"key":"userdata-events:al-1/visited","records":[{{"id":"al-1","track_id":"t\"1","track_title":"\u00e9t\u00e9","track_type":"Report","page_name":"p","lastplus":"{FRESH}"}}]}}"#
    );
    let b = tracked(&json, &Rules::default());
    let e = &b.events[0];
    assert_eq!(
        e.strings(),
        Strings {
            tracked_id: "al-1",
            track_id: "t\"1",
            username: "al",
            page_name: Some("p"),
            title: Some("été"),
            track_type: Some("REPORT"),
            url: None,
        }
    );
}
