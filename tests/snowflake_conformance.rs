//! The product's statements and client held to what a real Snowflake account may do and the
//! lenient defaults of the local emulator would hide: an account-wide `TIMESTAMP_INPUT_FORMAT`, a
//! session time zone other than UTC, constants where Snowflake refuses binds.
//!
//! Every statement family the product sends (pipeline MERGEs, the failover's direct MERGE, the
//! migration's staged MERGEs, the restore query) runs here against an emulator set up the strict way.

#[allow(dead_code)]
#[path = "common/emulator.rs"]
mod emulator;

use emulator::Emulator;
use redis_writebehind::entry::{decode, Decoded, EntryId, Rules};
use redis_writebehind::migrate::stage::Stage;
use redis_writebehind::pipeline::restore;
use redis_writebehind::snowflake::Client;
use redis_writebehind::sql::{self, direct, Tables, Target};
use redis_writebehind::statement::Statement;
use serde_json::json;

/// 2025-11-03 12:20:00 UTC.
const T0: u64 = 1_762_172_400_000;

/// A format no value the product sends matches: any conversion that relies on the session's format
/// fails with 100035 (22007), as on an account that set it.
const FOREIGN_FORMAT: &str = "DD/MM/YYYY HH24:MI:SS";

fn entry(seq: u64, payload: &serde_json::Value) -> Decoded {
    let rules = Rules {
        skip_freshness: true,
        ..Rules::default()
    };
    let fields = vec![(b"value".to_vec(), payload.to_string().into_bytes())];
    decode(EntryId::new(T0 + seq, 0), &fields, &rules)
}

fn run(c: &Client, em: &Emulator, st: &Statement) {
    if let Err(e) = c.execute(st) {
        panic!("{e}\n{}\n{}", st.sql, em.log());
    }
}

fn text(c: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    c.execute(&Statement::new(sql, vec![]))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// Every `TO_TIMESTAMP*` call in `sql` with its argument count.
fn conversions(sql: &str) -> Vec<(String, usize)> {
    let upper = sql.to_ascii_uppercase();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = upper[from..].find("TO_TIMESTAMP") {
        let start = from + at;
        let open = match upper[start..].find('(') {
            Some(o) => start + o,
            None => break,
        };
        let name = upper[start..open].trim().to_string();
        let (mut depth, mut args, mut quoted) = (0usize, 1usize, false);
        for c in upper[open + 1..].chars() {
            match c {
                '\'' => quoted = !quoted,
                _ if quoted => {}
                '(' => depth += 1,
                ')' if depth == 0 => break,
                ')' => depth -= 1,
                ',' if depth == 0 => args += 1,
                _ => {}
            }
        }
        out.push((name, args));
        from = open + 1;
    }
    out
}

#[test]
fn no_statement_the_product_sends_relies_on_the_session_timestamp_format() {
    let tables = Tables::default();
    let stage = Stage::new(&tables, "20251103121955", 1);
    let visit = entry(
        1,
        &json!({"key": "userdata-events:alice-1/visited", "records": [{"id": "alice-1", "track_id": "t", "lastplus": "2025-11-03 12:19:55"}]}),
    );
    let user = entry(2, &json!({"user_email": "alice@example.com"}));
    let mut texts: Vec<String> = sql::plan(&[visit.clone(), user.clone()], &tables, 1_000_000)
        .into_iter()
        .map(|p| p.statement.sql)
        .collect();
    for d in [&visit, &user] {
        texts.extend(
            direct::plan(d, &tables)
                .expect("direct statements")
                .into_iter()
                .map(|st| st.sql),
        );
    }
    for target in [Target::Tracked, Target::User] {
        texts.push(stage.merge(&tables, target).expect("staged merge").sql);
    }
    texts.push(
        restore::query(
            &tables,
            &restore::Request {
                force: false,
                days: 7,
                user: None,
            },
            10,
        )
        .sql,
    );
    let mut seen = 0;
    for sql in &texts {
        for (name, args) in conversions(sql) {
            seen += 1;
            assert_eq!(args, 2, "{name} without an explicit format in: {sql}");
        }
    }
    assert!(
        seen > 0,
        "the MERGEs convert their times ({seen} conversions found)"
    );
}

#[test]
fn every_write_path_works_when_the_account_sets_another_timestamp_input_format() {
    let em = Emulator::start();
    em.set_parameters(json!({ "TIMESTAMP_INPUT_FORMAT": FOREIGN_FORMAT }));
    let c = Client::new(em.client_config()).expect("client");
    // The emulator now refuses what such an account refuses.
    let e = c
        .execute(&Statement::new(
            "SELECT TO_TIMESTAMP_NTZ(?) AS t",
            vec![redis_writebehind::statement::Bind::Text(
                "2025-11-03 12:19:55".into(),
            )],
        ))
        .expect_err("a conversion without a format follows the session's");
    assert_eq!(e.code.as_deref(), Some("100035"), "{e}");
    assert_eq!(e.sql_state.as_deref(), Some("22007"), "{e}");

    let tables = Tables::default();
    // The pipeline's statements: a visit, a save then a delete, a user.
    let batch = [
        entry(
            1,
            &json!({"key": "userdata-events:alice-1/visited", "records": [
            {"id": "alice-1", "track_id": "a", "lastplus": "2025-11-03 12:19:55", "action": "v"}]}),
        ),
        entry(
            2,
            &json!({"key": "userdata-events:alice-1/saved", "records": [
            {"id": "alice-1", "track_id": "a", "lastplus": "2025-11-03 12:19:56", "action": "s"},
            {"id": "alice-1", "track_id": "a", "lastplus": "2025-11-03 12:19:57", "action": "d"}]}),
        ),
        entry(3, &json!({"user_email": "alice@example.com"})),
    ];
    for p in sql::plan(&batch, &tables, 1_000_000) {
        run(&c, &em, &p.statement);
    }
    // The failover's direct statements.
    let direct_visit = entry(
        4,
        &json!({"key": "userdata-events:bob-2/visited", "records": [
        {"id": "bob-2", "track_id": "b", "lastplus": "2025-11-03 12:20:01", "action": "v"}]}),
    );
    for st in direct::plan(&direct_visit, &tables).expect("direct") {
        run(&c, &em, &st);
    }
    // The migration's staged statements.
    let migrated = [entry(
        5,
        &json!({"key": "userdata-events:carol-3/visited", "records": [
        {"id": "carol-3", "track_id": "c", "lastplus": "2025-11-03 12:20:02", "action": "v"}]}),
    )];
    let stage = Stage::new(&tables, "20251103122000", 7);
    run(&c, &em, &stage.create());
    let (tracked_links, user_links) = sql::links_json(&migrated);
    for (target, links) in [(Target::Tracked, tracked_links), (Target::User, user_links)] {
        if links.is_empty() {
            continue;
        }
        let json = format!("[{}]", links.join(","));
        run(&c, &em, &stage.insert(target, &json));
        run(&c, &em, &stage.merge(&tables, target).expect("merge"));
    }
    run(&c, &em, &stage.drop());

    let rows = text(
        &c,
        "SELECT tracked_id, track_id, visited_count, saved, \
         TO_VARCHAR(visited_dts, 'YYYY-MM-DD HH24:MI:SS'), TO_VARCHAR(saved_dts, 'YYYY-MM-DD HH24:MI:SS'), \
         TO_VARCHAR(deleted_dts, 'YYYY-MM-DD HH24:MI:SS'), TO_VARCHAR(updated_dts, 'YYYY-MM-DD HH24:MI:SS') \
         FROM TRACKED ORDER BY tracked_id",
    );
    assert_eq!(
        rows,
        vec![
            vec![
                s("alice-1"),
                s("a"),
                s("1"),
                s("0"),
                s("2025-11-03 12:19:55"),
                s("2025-11-03 12:19:56"),
                s("2025-11-03 12:19:57"),
                s("2025-11-03 12:20:00")
            ],
            vec![
                s("bob-2"),
                s("b"),
                s("1"),
                s("0"),
                s("2025-11-03 12:20:01"),
                None,
                None,
                s("2025-11-03 12:20:00")
            ],
            vec![
                s("carol-3"),
                s("c"),
                s("1"),
                s("0"),
                s("2025-11-03 12:20:02"),
                None,
                None,
                s("2025-11-03 12:20:00")
            ],
        ]
    );
    let users = text(
        &c,
        "SELECT user_email, TO_VARCHAR(created_dts, 'YYYY-MM-DD HH24:MI:SS') FROM \"USER\"",
    );
    assert_eq!(
        users,
        vec![vec![s("alice@example.com"), s("2025-11-03 12:20:00")]]
    );
}

/// Inserts a TRACKED row whose latest visit was `hours_ago` hours before now (UTC).
fn visited_hours_ago(c: &Client, em: &Emulator, id: &str, hours_ago: i64) {
    let at = (chrono::Utc::now() - chrono::Duration::hours(hours_ago))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    run(
        c,
        em,
        &Statement::new(
            "INSERT INTO TRACKED (tracked_id, track_id, username, visited_count, visited_dts, saved) \
             VALUES (?, 't', ?, 1, TO_TIMESTAMP_NTZ(?, 'YYYY-MM-DD HH24:MI:SS'), 0)",
            vec![
                redis_writebehind::statement::Bind::Text(id.into()),
                redis_writebehind::statement::Bind::Text(id.into()),
                redis_writebehind::statement::Bind::Text(at),
            ],
        ),
    );
}

#[test]
fn the_restore_window_is_measured_in_utc_with_constants_snowflake_accepts() {
    let em = Emulator::start();
    // Snowflake's default session zone; the `*_dts` columns hold UTC wall-clock times.
    em.set_parameters(
        json!({ "TIMEZONE": "America/Los_Angeles", "TIMESTAMP_INPUT_FORMAT": FOREIGN_FORMAT }),
    );
    let c = Client::new(em.client_config()).expect("client");
    visited_hours_ago(&c, &em, "inside-20h", 20);
    visited_hours_ago(&c, &em, "outside-30h", 30);
    visited_hours_ago(&c, &em, "outside-50h", 50);
    let req = restore::Request {
        force: true,
        days: 1,
        user: None,
    };
    let r = c
        .execute(&restore::query(&Tables::default(), &req, 100))
        .unwrap_or_else(|e| panic!("restore query: {e}"));
    let ids: Vec<&str> = (0..r.rows.len())
        .filter_map(|i| r.get(i, "TRACKED_ID"))
        .collect();
    assert_eq!(ids, ["inside-20h"], "a one-day window counted in UTC");
    // The cap is honoured as a constant.
    let req = restore::Request { days: 3, ..req };
    let r = c
        .execute(&restore::query(&Tables::default(), &req, 2))
        .expect("capped restore query");
    assert_eq!(r.rows.len(), 2);
}

#[test]
fn privatelink_and_locator_identifiers_authenticate_as_their_account() {
    // The emulator's account is ACME-TEST; an operator may write it with any of its suffixes.
    let em = Emulator::start();
    for identifier in [
        "acme-test",
        "ACME-TEST.privatelink",
        "acme-test-abcd1234.global",
    ] {
        let mut cfg = em.client_config();
        cfg.account = identifier.to_string();
        let c = Client::new(cfg).expect("client");
        if let Err(e) = c.ping() {
            panic!("{identifier}: {e}");
        }
    }
}

#[test]
fn a_direct_write_past_the_request_timeout_counts_once() {
    // The failover's MERGE has no replay filter: running it twice would count the visit twice.
    let em = Emulator::start_with(emulator::Options {
        async_after_ms: 50,
        ..emulator::Options::default()
    });
    let mut cfg = em.client_config();
    cfg.request_timeout = std::time::Duration::from_secs(2);
    let c = Client::new(cfg).expect("client");
    let d = entry(
        1,
        &json!({"key": "userdata-events:direct-1/visited", "records": [
        {"id": "direct-1", "track_id": "d", "lastplus": "2025-11-03 12:20:00", "action": "v"}]}),
    );
    let statements = direct::plan(&d, &Tables::default()).expect("direct");
    assert_eq!(statements.len(), 1);
    // The statement outlasts one request timeout: the next try must find it, not run a copy.
    em.fault(json!({"next": 1, "slow_ms": 2500}));
    redis_writebehind::pipeline::retry::execute_direct(&c, &statements[0]).expect("written once");
    let stats = em.stats();
    assert_eq!(stats["cancels"], 0, "{stats}");
    assert_eq!(stats["executions"], 1, "{stats}");
    assert!(stats["deduplicated"].as_u64().unwrap_or(0) >= 1, "{stats}");
    let rows = text(
        &c,
        "SELECT visited_count FROM TRACKED WHERE tracked_id = 'direct-1'",
    );
    assert_eq!(rows, vec![vec![s("1")]]);
}
