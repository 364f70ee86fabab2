//! The seed's rules end to end: stream entry fields → `entry::decode` → `sql::plan` → the Snowflake
//! client → the local SQL API emulator, then the exact rows read back through the same API.
//!
//! Each test drives a small table of entries through the real statements and asserts the rows the
//! rules promise: the seed's verification query, visits counted once however often entries are
//! replayed (alone or mixed with new ones), save→delete and delete→save within one batch, a delete of
//! a missing item creating nothing, and hostile strings carried intact.

#[allow(dead_code)]
#[path = "common/emulator.rs"]
mod emulator;

use emulator::Emulator;
use redis_writebehind::entry::{decode, Decoded, EntryId, Rules};
use redis_writebehind::snowflake::Client;
use redis_writebehind::sql::{plan, Tables};
use serde_json::json;

/// 2025-11-03 12:20:00 UTC: entries are "received" from here on, one millisecond apart.
const T0: u64 = 1_762_172_400_000;

type Rows = Vec<Vec<Option<String>>>;

struct Harness {
    // Field order matters: the client goes before the emulator it talks to.
    client: Client,
    emu: Emulator,
    rules: Rules,
    tables: Tables,
    max_bytes: usize,
}

impl Harness {
    fn start() -> Harness {
        let emu = Emulator::start();
        let client = Client::new(emu.client_config()).expect("client");
        Harness {
            client,
            emu,
            rules: Rules::default(),
            tables: Tables::default(),
            max_bytes: 900_000,
        }
    }

    fn decode(&self, seq: u64, json: &str) -> Decoded {
        let fields = vec![(b"value".to_vec(), json.as_bytes().to_vec())];
        decode(EntryId::new(T0 + seq, 0), &fields, &self.rules)
    }

    /// Applies one batch of entries `(seq, payload)` the way a worker does: plan, then execute
    /// every statement.
    fn apply(&self, entries: &[(u64, String)]) {
        let decoded: Vec<Decoded> = entries.iter().map(|(s, j)| self.decode(*s, j)).collect();
        for d in &decoded {
            assert!(!d.is_undecodable(), "undecodable: {d:?}");
        }
        for p in plan(&decoded, &self.tables, self.max_bytes) {
            if let Err(e) = self.client.execute(&p.statement) {
                panic!("{} failed: {e}\n{}", p.target.marker(), self.emu.log());
            }
        }
    }

    fn rows(&self, sql: &str) -> Rows {
        match self
            .client
            .execute(&redis_writebehind::statement::Statement::new(sql, vec![]))
        {
            Ok(r) => r.rows,
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    /// TRACKED rows of one tracked_id, as text, in a stable order.
    fn tracked(&self, tracked_id: &str) -> Rows {
        assert!(tracked_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-'));
        self.rows(&format!(
            "SELECT track_id, username, visited_count, saved, \
             TO_VARCHAR(visited_dts, 'YYYY-MM-DD HH24:MI:SS'), \
             TO_VARCHAR(saved_dts, 'YYYY-MM-DD HH24:MI:SS'), \
             TO_VARCHAR(deleted_dts, 'YYYY-MM-DD HH24:MI:SS'), \
             page_name, query_row_count, track_title, track_type, track_url \
             FROM TRACKED WHERE tracked_id = '{tracked_id}' ORDER BY track_id"
        ))
    }
}

fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(String::from)).collect()
}

/// A record under `alice-1` (or another id) with the given action, item and time.
fn rec(id: &str, action: &str, track: &str, lastplus: &str) -> serde_json::Value {
    json!({"id": id, "track_id": track, "lastplus": lastplus, "action": action,
           "track_title": format!("Title {track}"), "track_type": "report",
           "track_url": format!("/r/{track}"), "page_name": "search", "query_row_count": "5"})
}

fn batch(id: &str, kind: &str, records: &[serde_json::Value]) -> String {
    json!({"key": format!("userdata-events:{id}/{kind}"), "records": records}).to_string()
}

#[test]
fn seed_dry_run_entries_give_the_rows_of_the_seed_verification_query() {
    let mut h = Harness::start();
    h.rules.hash_null_track_id = true;
    let visit = r#"{"key":"userdata-events:alice-1/visited","records":[{"id":"alice-1","page_name":"search","query_row_count":"5","track_id":"","track_title":"Sample","track_type":"QUERY","track_url":"/search?q=Sample","lastplus":"2025-11-03 12:19:58","action":"v"}]}"#;
    h.apply(&[
        (1, r#"{"user_email":"alice@example.com"}"#.to_string()),
        (2, visit.to_string()),
        (
            3,
            r#"{"diag":"ping","ts":"2025-11-01 10:22:00"}"#.to_string(),
        ),
    ]);
    // The seed's query, unchanged.
    let rows = h.rows(
        "SELECT tracked_id, track_id, saved, visited_count, deleted_dts FROM TRACKED WHERE tracked_id = 'alice-1' ORDER BY visited_dts DESC LIMIT 5;",
    );
    assert_eq!(
        rows,
        [row(&[
            Some("alice-1"),
            Some("auto_d053f3e2642f"),
            Some("0"),
            Some("1"),
            None
        ])]
    );
    assert_eq!(
        h.tracked("alice-1"),
        [row(&[
            Some("auto_d053f3e2642f"),
            Some("alice"),
            Some("1"),
            Some("0"),
            Some("2025-11-03 12:19:58"),
            None,
            None,
            Some("search"),
            Some("5"),
            Some("Sample"),
            Some("QUERY"),
            Some("/search?q=Sample"),
        ])]
    );
    assert_eq!(
        h.rows("SELECT user_email, username, TO_VARCHAR(created_dts, 'YYYY-MM-DD HH24:MI:SS'), last_entry_id FROM \"USER\""),
        [row(&[
            Some("alice@example.com"),
            Some("alice"),
            Some("2025-11-03 12:20:00"),
            Some(EntryId::new(T0 + 1, 0).sort_key().as_str()),
        ])]
    );
}

#[test]
fn visits_are_counted_once_however_entries_are_replayed() {
    let h = Harness::start();
    let a = (
        1,
        batch(
            "alice-1",
            "visited",
            &[
                rec("alice-1", "v", "i1", "2025-11-03 12:19:40"),
                rec("alice-1", "v", "i1", "2025-11-03 12:19:50"),
                rec("alice-1", "v", "i2", "2025-11-03 12:19:45"),
            ],
        ),
    );
    let b = (
        2,
        batch(
            "alice-1",
            "visited",
            &[rec("alice-1", "v", "i1", "2025-11-03 12:19:35")],
        ),
    );
    let c = (
        3,
        batch(
            "alice-1",
            "visited",
            &[rec("alice-1", "v", "i2", "2025-11-03 12:19:59")],
        ),
    );
    h.apply(&[a.clone(), b.clone()]);
    let counts = |h: &Harness| -> Vec<(Option<String>, Option<String>, Option<String>)> {
        h.tracked("alice-1")
            .into_iter()
            .map(|r| (r[0].clone(), r[2].clone(), r[4].clone()))
            .collect()
    };
    let s = |v: &str| Some(v.to_string());
    let after_ab = vec![
        (s("i1"), s("3"), s("2025-11-03 12:19:50")),
        (s("i2"), s("1"), s("2025-11-03 12:19:45")),
    ];
    assert_eq!(counts(&h), after_ab);
    // The whole batch again (a crash before XACK), then one entry alone (a retry).
    h.apply(&[a.clone(), b.clone()]);
    h.apply(std::slice::from_ref(&b));
    assert_eq!(counts(&h), after_ab);
    // Applied entries mixed with a new one: only the new one counts.
    h.apply(&[a, b, c.clone()]);
    let after_abc = vec![
        (s("i1"), s("3"), s("2025-11-03 12:19:50")),
        (s("i2"), s("2"), s("2025-11-03 12:19:59")),
    ];
    assert_eq!(counts(&h), after_abc);
    h.apply(&[c]);
    assert_eq!(counts(&h), after_abc);
}

#[test]
fn saves_and_deletes_apply_in_stream_order_within_a_batch() {
    let h = Harness::start();
    let state = |id: &str| -> Rows {
        h.tracked(id)
            .into_iter()
            .map(|r| {
                vec![
                    r[0].clone(),
                    r[2].clone(),
                    r[3].clone(),
                    r[5].clone(),
                    r[6].clone(),
                ]
            })
            .collect()
    };
    // save → delete in one batch (one entry): the row exists, not saved, both times kept.
    h.apply(&[(
        1,
        batch(
            "bob-1",
            "saved",
            &[
                rec("bob-1", "s", "q1", "2025-11-03 12:19:10"),
                rec("bob-1", "d", "q1", "2025-11-03 12:19:20"),
            ],
        ),
    )]);
    assert_eq!(
        state("bob-1"),
        [row(&[
            Some("q1"),
            Some("0"),
            Some("0"),
            Some("2025-11-03 12:19:10"),
            Some("2025-11-03 12:19:20")
        ])]
    );
    // delete → save across two entries of one batch: saved again, the deletion time stays.
    h.apply(&[
        (
            2,
            batch(
                "bob-1",
                "saved",
                &[rec("bob-1", "d", "q1", "2025-11-03 12:19:30")],
            ),
        ),
        (
            3,
            batch(
                "bob-1",
                "saved",
                &[rec("bob-1", "s", "q1", "2025-11-03 12:19:40")],
            ),
        ),
    ]);
    assert_eq!(
        state("bob-1"),
        [row(&[
            Some("q1"),
            Some("0"),
            Some("1"),
            Some("2025-11-03 12:19:40"),
            Some("2025-11-03 12:19:30")
        ])]
    );
    // A delete of an item that has no row creates none, alone or next to other events.
    h.apply(&[
        (
            4,
            batch(
                "bob-1",
                "saved",
                &[rec("bob-1", "d", "never-saved", "2025-11-03 12:19:50")],
            ),
        ),
        (
            5,
            batch(
                "bob-1",
                "visited",
                &[rec("bob-1", "v", "q1", "2025-11-03 12:19:55")],
            ),
        ),
    ]);
    assert_eq!(
        state("bob-1"),
        [row(&[
            Some("q1"),
            Some("1"),
            Some("1"),
            Some("2025-11-03 12:19:40"),
            Some("2025-11-03 12:19:30")
        ])]
    );
    // A later delete of the saved item turns it off; replaying everything changes nothing.
    let last = (
        6,
        batch(
            "bob-1",
            "saved",
            &[rec("bob-1", "d", "q1", "2025-11-03 12:19:59")],
        ),
    );
    h.apply(std::slice::from_ref(&last));
    let expected = [row(&[
        Some("q1"),
        Some("1"),
        Some("0"),
        Some("2025-11-03 12:19:40"),
        Some("2025-11-03 12:19:59"),
    ])];
    assert_eq!(state("bob-1"), expected);
    h.apply(&[last]);
    assert_eq!(state("bob-1"), expected);
}

#[test]
fn a_delete_before_the_first_save_or_visit_of_a_batch_leaves_no_deletion_time() {
    let h = Harness::start();
    let d = |seq: u64, time: &str| {
        (
            seq,
            batch("gina-1", "saved", &[rec("gina-1", "d", "n1", time)]),
        )
    };
    let v = |seq: u64, time: &str| {
        (
            seq,
            batch("gina-1", "visited", &[rec("gina-1", "v", "n1", time)]),
        )
    };
    // In one batch: the delete meets no row and does nothing; the visit creates the row.
    h.apply(&[d(1, "2025-11-03 12:19:40"), v(2, "2025-11-03 12:19:45")]);
    let one_batch = h.tracked("gina-1");
    assert_eq!(one_batch[0][6], None, "{one_batch:?}");
    assert_eq!(one_batch[0][2].as_deref(), Some("1"));
    // The same entries in two batches on a fresh table give the same row.
    let h2 = Harness::start();
    h2.apply(&[d(1, "2025-11-03 12:19:40")]);
    assert!(h2.tracked("gina-1").is_empty());
    h2.apply(&[v(2, "2025-11-03 12:19:45")]);
    assert_eq!(h2.tracked("gina-1"), one_batch);
    // Replaying both, then a delete after the visit, sets it.
    h.apply(&[
        d(1, "2025-11-03 12:19:40"),
        v(2, "2025-11-03 12:19:45"),
        d(3, "2025-11-03 12:19:50"),
    ]);
    let after = h.tracked("gina-1");
    assert_eq!(after[0][6].as_deref(), Some("2025-11-03 12:19:50"));
    assert_eq!(after[0][2].as_deref(), Some("1"));
}

#[test]
fn stale_and_rejected_records_are_not_written_and_stale_saves_are() {
    let h = Harness::start();
    h.apply(&[(
        1,
        batch(
            "carol-1",
            "visited",
            &[
                rec("carol-1", "v", "stale", "2025-11-03 11:00:00"),
                rec("carol-1", "v", "bad", "2025-11-03 12:19"),
                rec("carol-1", "v", "fresh", "2025-11-03 12:19:59"),
            ],
        ),
    )]);
    h.apply(&[(
        2,
        batch(
            "carol-1",
            "saved",
            &[rec("carol-1", "s", "old-save", "2025-10-01 00:00:00")],
        ),
    )]);
    let items: Vec<Option<String>> = h
        .tracked("carol-1")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(
        items,
        [Some("fresh".to_string()), Some("old-save".to_string())]
    );
}

#[test]
fn users_are_upserted_once_per_entry() {
    let h = Harness::start();
    let u1 = (1, r#"{"user_email":"dave@example.com"}"#.to_string());
    let u2 = (5, r#"{"user_email":"dave@example.com"}"#.to_string());
    h.apply(&[u1.clone(), u2.clone()]);
    let q = "SELECT user_email, username, TO_VARCHAR(created_dts, 'YYYY-MM-DD HH24:MI:SS'), last_entry_id FROM \"USER\"";
    let expected = [row(&[
        Some("dave@example.com"),
        Some("dave"),
        Some("2025-11-03 12:20:00"),
        Some(EntryId::new(T0 + 5, 0).sort_key().as_str()),
    ])];
    assert_eq!(h.rows(q), expected);
    h.apply(&[u1, u2]);
    assert_eq!(h.rows(q), expected);
}

#[test]
fn a_batch_split_by_bytes_gives_the_same_rows_as_one_statement() {
    let mut h = Harness::start();
    h.max_bytes = 8_000;
    let entries: Vec<(u64, String)> = (1..=12)
        .map(|i| {
            let title = "t".repeat(900);
            let mut r = rec("erin-1", "v", "i1", "2025-11-03 12:19:50");
            r["track_title"] = json!(title);
            (i, batch("erin-1", "visited", &[r]))
        })
        .collect();
    let decoded: Vec<Decoded> = entries.iter().map(|(s, j)| h.decode(*s, j)).collect();
    assert!(plan(&decoded, &h.tables, h.max_bytes).len() > 1);
    h.apply(&entries);
    h.apply(&entries);
    let rows = h.tracked("erin-1");
    assert_eq!(rows[0][2].as_deref(), Some("12"));
}

#[test]
fn hostile_strings_are_carried_intact() {
    let mut h = Harness::start();
    h.max_bytes = 4_000_000;
    let hostile = [
        "it's \"quoted\" `back` \\slash",
        "'; DROP TABLE TRACKED; --",
        "\"; DROP TABLE \"USER\"; --",
        "ünïcødé ✓ 日本語 🎉 \u{202e}rtl",
        "tab\tnew\nline\rcr",
        "nul \u{0} inside",
        "?? ? :1 $1 %s {}",
    ];
    let mut records: Vec<serde_json::Value> = hostile
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": "frank-1", "track_id": format!("h{i}-{s}"), "track_title": s, "track_url": s,
                   "track_type": "x", "page_name": s, "lastplus": "2025-11-03 12:19:59"})
        })
        .collect();
    let big = "é".repeat(512 * 1024); // 1 MB of UTF-8
    records.push(json!({"id": "frank-1", "track_id": "big", "track_title": big, "lastplus": "2025-11-03 12:19:59"}));
    h.apply(&[(1, batch("frank-1", "visited", &records))]);

    let rows = h.rows(
        "SELECT track_id, track_title, track_url, page_name FROM TRACKED WHERE tracked_id = 'frank-1' AND track_id <> 'big' ORDER BY track_id",
    );
    let mut expected: Vec<Vec<Option<String>>> = hostile
        .iter()
        .enumerate()
        .map(|(i, s)| {
            row(&[
                Some(format!("h{i}-{s}").as_str()),
                Some(s),
                Some(s),
                Some(s),
            ])
        })
        .collect();
    expected.sort();
    assert_eq!(rows, expected);
    let big_back =
        h.rows("SELECT track_title FROM TRACKED WHERE tracked_id = 'frank-1' AND track_id = 'big'");
    assert_eq!(big_back, [row(&[Some(big.as_str())])]);
    // Both tables are still there.
    assert_eq!(h.rows("SELECT COUNT(*) FROM \"USER\""), [row(&[Some("0")])]);
}
