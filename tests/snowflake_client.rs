//! The Snowflake SQL API client against the local emulator: authentication, retries without
//! duplicate execution, error classes, asynchronous statements, partitions and session context.

// Included directly so this suite needs nothing else from the shared harness.
#[allow(dead_code)]
#[path = "common/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use emulator::{keygen, Emulator, Options};
use redis_writebehind::snowflake::auth::KeyPairSigner;
use redis_writebehind::snowflake::{AuthConfig, Client, ErrorClass, SnowflakeError};
use redis_writebehind::statement::{Bind, Statement};
use serde_json::json;

fn client(cfg: redis_writebehind::snowflake::ClientConfig) -> Client {
    Client::new(cfg).expect("client builds")
}

fn count_users(em: &Emulator) -> i64 {
    em.scalar(r#"SELECT COUNT(*) FROM "USER""#)
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

fn insert_user(email: &str) -> Statement {
    Statement::new(
        r#"INSERT INTO "USER" (user_email, username) VALUES (?, ?)"#,
        vec![Bind::Text(email.into()), Bind::Text("x".into())],
    )
}

#[test]
fn key_pair_jwt_is_accepted_and_ping_returns_the_session_context() {
    let em = Emulator::start();
    let c = client(em.client_config());
    let ctx = c.ping().expect("ping");
    assert_eq!(ctx.user.as_deref(), Some("WRITER"));
    assert_eq!(ctx.role.as_deref(), Some("WRITER_ROLE"));
    assert_eq!(ctx.warehouse.as_deref(), Some("TEST_WH"));
    assert_eq!(ctx.database.as_deref(), Some("WRITEBEHIND"));
    assert_eq!(ctx.schema.as_deref(), Some("PUBLIC"));
    assert!(ctx.latency_ms < 20_000);
}

#[test]
fn every_request_names_the_client_and_the_token_type() {
    let em = Emulator::start();
    client(em.client_config()).ping().expect("ping");
    let last = &em.stats()["last_request"];
    assert_eq!(last["token_type"], "KEYPAIR_JWT");
    assert_eq!(last["accept"], "application/json");
    assert!(last["user_agent"]
        .as_str()
        .is_some_and(|ua| ua.starts_with("redis-writebehind/")));
    let request_id = last["query"]["requestId"].as_str().expect("a requestId");
    assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
    assert!(last["query"].get("retry").is_none());
}

#[test]
fn encrypted_key_with_its_passphrase_is_accepted() {
    let em = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let (key, _public) = keygen(dir.path(), Some("correct horse"));
    assert!(std::fs::read_to_string(&key).unwrap().contains("ENCRYPTED"));
    // The emulator trusts one key; sign with the encrypted copy of a key it knows instead.
    let cfg = em.config_with(AuthConfig::KeyPair {
        private_key_path: key,
        passphrase: Some("correct horse".into()),
    });
    let c = client(cfg);
    let e = c.ping().expect_err("this key is not registered");
    assert_eq!(e.class, ErrorClass::Reauth);
    // And the key registered with the emulator, encrypted the same way, works.
    let encrypted = dir.path().join("registered.p8");
    let status = std::process::Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:correct horse",
            "-in",
        ])
        .arg(&em.key_path)
        .arg("-out")
        .arg(&encrypted)
        .status()
        .unwrap();
    assert!(status.success());
    let c = client(em.config_with(AuthConfig::KeyPair {
        private_key_path: encrypted,
        passphrase: Some("correct horse".into()),
    }));
    c.ping().expect("encrypted registered key works");
}

#[test]
fn wrong_key_is_rejected_with_a_clear_error() {
    let em = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let (other_key, _) = keygen(dir.path(), None);
    let c = client(em.config_with(AuthConfig::KeyPair {
        private_key_path: other_key,
        passphrase: None,
    }));
    let e = c.ping().expect_err("an unregistered key is refused");
    assert_eq!(e.class, ErrorClass::Reauth);
    assert_eq!(e.http_status, Some(401));
    assert_eq!(e.code.as_deref(), Some("390144"));
    let line = e.to_string();
    assert!(line.contains("JWT token is invalid"), "{line}");
    assert!(line.contains("RSA_PUBLIC_KEY_FP"), "{line}");
    assert!(!line.contains('\n'));
}

#[test]
fn wrong_account_is_rejected_with_a_clear_error() {
    let em = Emulator::start();
    let mut cfg = em.client_config();
    cfg.account = "OTHER-ACCOUNT".into();
    let e = client(cfg).ping().expect_err("another account is refused");
    assert_eq!(e.class, ErrorClass::Reauth);
    assert_eq!(e.code.as_deref(), Some("390144"));
    assert!(e.to_string().contains("account mismatch"), "{e}");
    assert!(e.to_string().contains("OTHER-ACCOUNT.WRITER"), "{e}");
}

#[test]
fn expired_jwt_is_rejected_with_a_clear_error() {
    let em = Emulator::start();
    let signer =
        KeyPairSigner::from_file(&em.key_path, None, &em.opts.account, &em.opts.user).unwrap();
    let two_hours_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 7200;
    let jwt = signer.jwt_at(two_hours_ago).unwrap();
    let (status, text) = post_statement(&em, &jwt, Some("test"), &json!({"statement": "SELECT 1"}));
    assert!(status >= 400, "an expired JWT must be refused");
    let e = SnowflakeError::from_response(status, &text);
    assert_eq!(e.class, ErrorClass::Reauth);
    assert_eq!(e.code.as_deref(), Some("390144"));
    assert!(e.to_string().contains("expired"), "{e}");
}

#[test]
fn expired_jwt_is_renewed_transparently() {
    let em = Emulator::start();
    let c = client(em.client_config());
    c.execute(&insert_user("a@example.com")).expect("first");
    em.expire_credentials();
    c.execute(&insert_user("b@example.com"))
        .expect("renewed and retried");
    assert_eq!(em.stats()["auth_failures"], 1);
    assert_eq!(count_users(&em), 2);
}

#[test]
fn token_file_rotation_is_picked_up_without_a_restart() {
    let em = Emulator::start();
    let mut cfg = em.token_config();
    // Without re-authentication on 401, only reading the changed file can make this work.
    cfg.auto_reconnect = false;
    let c = client(cfg);
    c.ping().expect("first token");
    em.write_token("token-two-rotated");
    c.ping().expect("rotated token");
    assert_eq!(em.stats()["auth_failures"], 0);
    assert_eq!(
        em.stats()["last_request"]["token_type"],
        "PROGRAMMATIC_ACCESS_TOKEN"
    );
}

#[test]
fn expired_token_is_a_reauth_error_naming_its_code() {
    let em = Emulator::start();
    let mut cfg = em.token_config();
    cfg.auto_reconnect = false;
    let c = client(cfg);
    c.ping().expect("valid token");
    em.expire_credentials();
    let e = c.ping().expect_err("the token expired");
    assert_eq!(e.class, ErrorClass::Reauth);
    assert_eq!(e.code.as_deref(), Some("390114"));
    assert!(e.to_string().contains("has expired"), "{e}");
    assert!(
        !e.to_string().contains("token-one"),
        "the token leaked: {e}"
    );
}

#[test]
fn rate_limit_and_unavailable_bursts_are_retried_to_success_with_one_execution() {
    let em = Emulator::start();
    let c = client(em.client_config());
    em.fault(json!({"faults": [
        {"next": 2, "status": 429},
        {"next": 1, "status": 503, "after_execute": true},
        {"next": 1, "status": 500, "after_execute": true},
    ]}));
    let r = c
        .execute(&insert_user("once@example.com"))
        .expect("retried to success");
    assert_eq!(r.rows_affected, Some(1));
    let stats = em.stats();
    assert_eq!(stats["submissions"], 5, "{stats}");
    assert_eq!(stats["executions"], 1, "{stats}");
    assert_eq!(stats["deduplicated"], 2, "{stats}");
    let per_id = stats["executions_by_request_id"].as_object().unwrap();
    assert_eq!(
        per_id.len(),
        1,
        "one requestId for every resubmission: {stats}"
    );
    let last = &stats["last_request"]["query"];
    assert_eq!(last["retry"], "true", "{stats}");
    assert!(per_id.contains_key(last["requestId"].as_str().unwrap()));
    assert_eq!(count_users(&em), 1);
}

#[test]
fn lost_connection_after_execution_is_resubmitted_without_running_twice() {
    let em = Emulator::start();
    let mut cfg = em.client_config();
    cfg.http_timeout = Duration::from_millis(500);
    let c = client(cfg);
    em.fault(json!({"faults": [
        {"next": 1, "refuse": true, "after_execute": true},
        {"next": 1, "hang": true, "hang_ms": 3000, "after_execute": true},
    ]}));
    c.execute(&insert_user("reset@example.com"))
        .expect("recovered");
    let stats = em.stats();
    assert_eq!(stats["submissions"], 3, "{stats}");
    assert_eq!(stats["executions"], 1, "{stats}");
    assert_eq!(stats["deduplicated"], 2, "{stats}");
    assert_eq!(count_users(&em), 1);
}

#[test]
fn persistent_unavailability_gives_up_with_a_retryable_error() {
    let em = Emulator::start();
    let mut cfg = em.client_config();
    cfg.max_attempts = 3;
    let c = client(cfg);
    em.fault(json!({"next": 10, "status": 503}));
    let e = c
        .execute(&insert_user("never@example.com"))
        .expect_err("gives up");
    assert_eq!(e.class, ErrorClass::Retryable);
    assert_eq!(e.http_status, Some(503));
    assert!(e.to_string().contains("gave up after 3 attempts"), "{e}");
    assert_eq!(em.stats()["submissions"], 3);
}

#[test]
fn refused_connection_is_retryable() {
    let em = Emulator::start();
    let mut cfg = em.client_config();
    // Nothing listens on port 9 of the loopback address.
    cfg.base_url = "http://127.0.0.1:9".into();
    cfg.max_attempts = 2;
    let e = client(cfg).ping().expect_err("nothing listens");
    assert_eq!(e.class, ErrorClass::Retryable);
    assert!(
        e.to_string().contains("cannot reach http://127.0.0.1:9"),
        "{e}"
    );
}

#[test]
fn sql_error_is_permanent_with_its_code_and_not_retried() {
    let em = Emulator::start();
    let c = client(em.client_config());
    let e = c
        .execute(&Statement::new("SELECT * FROM NO_SUCH_TABLE", vec![]))
        .expect_err("missing table");
    assert_eq!(e.class, ErrorClass::Permanent);
    assert_eq!(e.http_status, Some(422));
    assert_eq!(e.code.as_deref(), Some("002003"));
    assert_eq!(e.sql_state.as_deref(), Some("42S02"));
    assert!(e.to_string().contains("code 002003"), "{e}");
    assert_eq!(em.stats()["submissions"], 1);
}

#[test]
fn slow_statement_answers_202_and_is_polled_to_completion() {
    let em = Emulator::start_with(Options {
        async_after_ms: 50,
        ..Options::default()
    });
    let c = client(em.client_config());
    em.fault(json!({"next": 1, "slow_ms": 400}));
    let r = c
        .execute(&insert_user("slow@example.com"))
        .expect("completes");
    assert_eq!(r.rows_affected, Some(1));
    let stats = em.stats();
    assert!(stats["polls"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["executions"], 1);
}

#[test]
fn statement_past_the_request_timeout_keeps_running_and_the_retry_waits_for_it() {
    let em = Emulator::start_with(Options {
        async_after_ms: 50,
        ..Options::default()
    });
    let mut cfg = em.client_config();
    cfg.request_timeout = Duration::from_secs(1);
    let c = client(cfg);
    em.fault(json!({"next": 1, "slow_ms": 2500}));
    let st = insert_user("late@example.com");
    let e = c.execute_idempotent(&st).expect_err("times out");
    assert_eq!(e.class, ErrorClass::Retryable);
    assert!(e.timed_out, "{e}");
    // The caller tries the same planned statement again: it is found running and waited for.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let r = loop {
        match c.execute_idempotent(&st) {
            Ok(r) => break r,
            Err(e) if e.timed_out && std::time::Instant::now() < deadline => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(r.rows_affected, Some(1));
    let stats = em.stats();
    assert_eq!(stats["cancels"], 0, "{stats}");
    assert_eq!(stats["executions"], 1, "{stats}");
    assert_eq!(
        stats["executions_by_request_id"]
            .as_object()
            .map(|m| m.len()),
        Some(1),
        "{stats}"
    );
    assert!(stats["deduplicated"].as_u64().unwrap_or(0) >= 1, "{stats}");
    assert_eq!(count_users(&em), 1);
}

#[test]
fn lock_waits_and_statement_timeouts_are_retried_as_new_requests() {
    let em = Emulator::start();
    let c = client(em.client_config());
    // Too many lock waiters, twice: retryable. The statement ran and failed, so the next try is a
    // new request (a resubmission of the same requestId could be answered with the stored failure).
    em.fault(json!({"next": 2, "statement_error": true, "code": "000625", "sql_state": "57014",
                    "message": "Statement 'x' has locked table 'USER' and 20 waiters are already queued."}));
    let st = insert_user("locked@example.com");
    c.execute_idempotent(&st).expect("ridden out");
    let stats = em.stats();
    assert_eq!(stats["submissions"], 3, "{stats}");
    assert_eq!(stats["deduplicated"], 0, "{stats}");
    assert!(
        stats["last_request"]["query"].get("retry").is_none(),
        "{stats}"
    );
    assert_eq!(count_users(&em), 1);
    // A statement timeout (000630) is ridden out the same way, by the same call.
    em.fault(json!({"next": 1, "statement_error": true, "code": "000630", "sql_state": "57014",
                    "message": "Statement reached its statement or warehouse timeout of 60 second(s) and was canceled."}));
    c.execute_idempotent(&insert_user("slow@example.com"))
        .expect("ridden out");
    assert_eq!(count_users(&em), 2);
}

#[test]
fn a_failed_statement_tried_again_by_the_caller_is_a_new_request() {
    let em = Emulator::start();
    let mut cfg = em.client_config();
    cfg.max_attempts = 1;
    let c = client(cfg);
    em.fault(json!({"next": 1, "statement_error": true, "code": "000625", "sql_state": "57014",
                    "message": "Statement 'x' has locked table 'USER' and 20 waiters are already queued."}));
    let st = insert_user("again@example.com");
    let e = c.execute_idempotent(&st).expect_err("one attempt only");
    assert!(e.is_retryable(), "{e}");
    c.execute_idempotent(&st).expect("the next try runs");
    let stats = em.stats();
    assert_eq!(stats["deduplicated"], 0, "{stats}");
    assert_eq!(count_users(&em), 1);
}

#[test]
fn five_thousand_rows_are_read_across_partitions() {
    let em = Emulator::start_with(Options {
        partition_rows: 1000,
        ..Options::default()
    });
    let c = client(em.client_config());
    let r = c
        .execute(&Statement::new(
            "SELECT seq4() AS n, 'row' AS label FROM TABLE(GENERATOR(ROWCOUNT => 5000)) ORDER BY n",
            vec![],
        ))
        .expect("select");
    assert_eq!(r.columns, ["N", "LABEL"]);
    assert_eq!(r.rows.len(), 5000);
    for (i, row) in r.rows.iter().enumerate() {
        assert_eq!(row[0].as_deref(), Some(i.to_string().as_str()));
    }
    assert_eq!(em.stats()["partition_reads"], 4);
    // The client asks for compressed partitions, as Snowflake sends them, and reads them.
    assert_eq!(em.stats()["partitions_gzipped"], 4);
}

#[test]
fn merge_with_one_json_bind_and_lateral_flatten_upserts() {
    let em = Emulator::start();
    let c = client(em.client_config());
    let merge = r#"
MERGE INTO TRACKED t
USING (
    SELECT f.value:id::VARCHAR AS tracked_id,
           f.value:track_id::VARCHAR AS track_id,
           f.value:n::NUMBER AS n,
           f.value:title::VARCHAR AS track_title
    FROM (SELECT PARSE_JSON(?) AS j) b, LATERAL FLATTEN(input => b.j) f
) s
ON t.tracked_id = s.tracked_id AND t.track_id = s.track_id
WHEN MATCHED THEN UPDATE SET visited_count = t.visited_count + s.n, track_title = s.track_title
WHEN NOT MATCHED THEN INSERT (tracked_id, track_id, visited_count, track_title)
    VALUES (s.tracked_id, s.track_id, s.n, s.track_title)"#;
    let batch =
        |items: serde_json::Value| Statement::new(merge, vec![Bind::Text(items.to_string())]);
    let first = c
        .execute(&batch(json!([
            {"id": "alice-1", "track_id": "t1", "n": 1, "title": "It's \"quoted\""},
            {"id": "alice-1", "track_id": "t2", "n": 2, "title": "two"},
        ])))
        .expect("first merge");
    assert_eq!(first.rows_affected, Some(2));
    let second = c
        .execute(&batch(json!([
            {"id": "alice-1", "track_id": "t1", "n": 3, "title": "again"},
            {"id": "bob", "track_id": "t9", "n": 1, "title": "new"},
        ])))
        .expect("second merge");
    assert_eq!(second.rows_affected, Some(2));
    let rows = em.sql(
        "SELECT tracked_id, track_id, visited_count, track_title FROM TRACKED ORDER BY tracked_id, track_id",
    );
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        vec![
            vec![s("alice-1"), s("t1"), s("4"), s("again")],
            vec![s("alice-1"), s("t2"), s("2"), s("two")],
            vec![s("bob"), s("t9"), s("1"), s("new")],
        ]
    );
}

#[test]
fn multi_statement_request_runs_an_explicit_transaction() {
    let em = Emulator::start();
    let c = client(em.client_config());
    let r = c
        .execute_multi(&[
            "BEGIN",
            r#"INSERT INTO "USER" (user_email, username) VALUES ('m@example.com', 'm')"#,
            "COMMIT;",
        ])
        .expect("multi-statement request");
    assert_eq!(r.statement_handles.len(), 3);
    let inserted = c
        .fetch_result(&r.statement_handles[1])
        .expect("second result");
    assert_eq!(inserted.rows_affected, Some(1));
    assert_eq!(count_users(&em), 1);
}

#[test]
fn one_client_serves_several_threads() {
    let em = Emulator::start();
    let c = Arc::new(client(em.client_config()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                for i in 0..5 {
                    c.execute(&insert_user(&format!("u{t}-{i}@example.com")))
                        .expect("insert");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(count_users(&em), 20);
    assert_eq!(em.stats()["executions"], 20);
}

#[test]
fn unknown_database_is_a_permanent_error_naming_it() {
    let em = Emulator::start();
    let mut cfg = em.client_config();
    cfg.database = Some("NO_SUCH_DB".into());
    let e = client(cfg).ping().expect_err("unknown database");
    assert_eq!(e.class, ErrorClass::Permanent);
    assert!(e.to_string().contains("NO_SUCH_DB"), "{e}");
}

/// Sends a raw SQL API request with a valid JWT; returns (status, body).
fn raw_submit(
    em: &Emulator,
    body: serde_json::Value,
    user_agent: bool,
) -> (u16, serde_json::Value) {
    let signer =
        KeyPairSigner::from_file(&em.key_path, None, &em.opts.account, &em.opts.user).unwrap();
    let jwt = signer.bearer(SystemTime::now()).expect("jwt").value;
    let (status, text) = post_statement(em, &jwt, user_agent.then_some("test"), &body);
    (status, serde_json::from_str(&text).unwrap())
}

/// POSTs `body` to the statements endpoint with `jwt`, and `user_agent` as the User-Agent (an empty
/// one when `None`, which counts as missing): the status and the body's text, whatever the status.
fn post_statement(
    em: &Emulator,
    jwt: &str,
    user_agent: Option<&str>,
    body: &serde_json::Value,
) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into();
    let mut resp = agent
        .post(&format!("{}/api/v2/statements", em.url))
        .header("Authorization", &format!("Bearer {jwt}"))
        .header("X-Snowflake-Authorization-Token-Type", "KEYPAIR_JWT")
        .header("User-Agent", user_agent.unwrap_or(""))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

#[test]
fn emulator_enforces_the_sql_api_rules_the_client_relies_on() {
    let em = Emulator::start();
    let (status, body) = raw_submit(
        &em,
        json!({"statement": "SELECT 1; SELECT 2", "parameters": {"MULTI_STATEMENT_COUNT": "3"}}),
        true,
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("000008")),
        "{body}"
    );
    let (status, body) = raw_submit(&em, json!({"statement": "SELECT 1; SELECT 2"}), true);
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("000008")),
        "{body}"
    );
    let (status, _) = raw_submit(
        &em,
        json!({"statement": "SELECT ?; SELECT 2", "parameters": {"MULTI_STATEMENT_COUNT": "2"},
               "bindings": {"1": {"type": "TEXT", "value": "x"}}}),
        true,
    );
    assert_eq!(
        status, 422,
        "bind variables are refused in multi-statement requests"
    );
    let (status, body) = raw_submit(&em, json!({"statement": "SELECT 1"}), false);
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("391903")),
        "{body}"
    );
    assert_eq!(em.stats()["executions"], 0);
}

#[test]
fn timestamps_come_back_in_the_sql_api_format_and_parse() {
    let em = Emulator::start();
    let c = client(em.client_config());
    c.execute(&Statement::new(
        "INSERT INTO TRACKED (tracked_id, track_id, visited_dts) VALUES (?, ?, TO_TIMESTAMP_NTZ(?))",
        vec![
            Bind::Text("t-1".into()),
            Bind::Text("x".into()),
            Bind::Text("2026-11-22 10:20:30".into()),
        ],
    ))
    .expect("insert");
    let r = c
        .execute(&Statement::new(
            "SELECT visited_dts FROM TRACKED WHERE tracked_id = ?",
            vec![Bind::Text("t-1".into())],
        ))
        .expect("select");
    let raw = r.get(0, "VISITED_DTS").expect("a value");
    assert_eq!(raw, "1795342830.000000000");
    let t = redis_writebehind::snowflake::timestamp_ntz(raw).unwrap();
    assert_eq!(t.to_string(), "2026-11-22 10:20:30");
}
