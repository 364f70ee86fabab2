//! Bad commands: every `WB.*` command given missing, extra, wrong-typed or hostile arguments
//! replies with a one-line error, and the server keeps serving; commands that wait are refused
//! inside MULTI and scripts; an ACL user for applications can add entries but not run the
//! operator's commands.

mod common;

use common::redis_server::{q, Options, RedisServer};

/// Sends `args` (raw bytes allowed) and returns the error text, failing on a success.
fn error_of(con: &mut redis::Connection, args: &[&[u8]]) -> String {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).expect("command name"));
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<redis::Value>(con) {
        Ok(v) => panic!("{:?} succeeded with {v:?}", shown(args)),
        Err(e) => e.to_string(),
    }
}

fn shown(args: &[&[u8]]) -> Vec<String> {
    args.iter()
        .map(|a| String::from_utf8_lossy(&a[..a.len().min(40)]).into_owned())
        .collect()
}

fn alive(con: &mut redis::Connection) {
    let pong: String = q(con, &["PING"]);
    assert_eq!(pong, "PONG");
}

#[test]
fn every_wb_command_with_bad_arguments_replies_with_an_error_and_the_server_keeps_running() {
    let mut server = RedisServer::start(Options::default());
    let mut con = server.connection();
    let big = vec![b'x'; 1_000_000];
    let not_utf8: &[u8] = b"\xff\xfe\x00bad";
    let cases: Vec<(Vec<&[u8]>, &str)> = vec![
        // extra arguments
        (vec![b"WB.STATUS", b"x"], "wrong number"),
        (vec![b"WB.PAUSE", b"x"], "wrong number"),
        (vec![b"WB.RESUME", b"x"], "wrong number"),
        (vec![b"WB.PING", b"x"], "wrong number"),
        (vec![b"WB.FLUSH", b"1", b"2"], "wrong number"),
        (vec![b"WB.DLQ", b"LIST", b"1", b"2"], "wrong number"),
        (
            vec![b"WB.WRITE", b"{}", b"SYNC", b"1", b"2"],
            "wrong number",
        ),
        // missing arguments
        (vec![b"WB.DLQ"], "wrong number"),
        (vec![b"WB.DLQ", b"REPLAY"], "wrong number"),
        (vec![b"WB.WRITE"], "wrong number"),
        (vec![b"WB.RESTORE", b"DAYS"], "wrong number"),
        (vec![b"WB.RESTORE", b"USER"], "wrong number"),
        (vec![b"WB.IMPORT", b"MATCH"], "wrong number"),
        (vec![b"WB.IMPORT"], "no key patterns"),
        // wrong types and values
        (vec![b"WB.FLUSH", b"abc"], "timeout-ms"),
        (vec![b"WB.FLUSH", b"-1"], "timeout-ms"),
        (vec![b"WB.FLUSH", b"1.5"], "timeout-ms"),
        (vec![b"WB.FLUSH", b"99999999999999999999999"], "timeout-ms"),
        (vec![b"WB.FLUSH", b""], "timeout-ms"),
        (vec![b"WB.DLQ", b"LIST", b"many"], "count"),
        (vec![b"WB.DLQ", b"LIST", b"-5"], "count"),
        (
            vec![b"WB.DLQ", b"REPLAY", b"not-an-id"],
            "not a stream entry ID",
        ),
        (vec![b"WB.DLQ", b"PURGE", b"1-2-3"], "not a stream entry ID"),
        (vec![b"WB.DLQ", b"BOGUS"], "LIST, REPLAY or PURGE"),
        (vec![b"WB.DLQ", b""], "LIST, REPLAY or PURGE"),
        (vec![b"WB.RESTORE", b"BOGUS"], "FORCE, DAYS n or USER name"),
        (vec![b"WB.RESTORE", b"DAYS", b"abc"], "DAYS"),
        (vec![b"WB.RESTORE", b"DAYS", b"0"], "DAYS"),
        (vec![b"WB.RESTORE", b"DAYS", b"99999"], "DAYS"),
        (vec![b"WB.RESTORE", b"FORCE"], "not configured"),
        (vec![b"WB.IMPORT", b"BOGUS"], "MATCH pattern or DELETE"),
        (vec![b"WB.PING"], "not configured"),
        (vec![b"WB.WRITE", b"{not json"], "invalid payload"),
        (vec![b"WB.WRITE", b"{}"], "invalid payload"),
        (vec![b"WB.WRITE", b"[]"], "invalid payload"),
        (vec![b"WB.WRITE", b"{}", b"NOW"], "SYNC"),
        (vec![b"WB.WRITE", b"{}", b"SYNC", b"soon"], "timeout-ms"),
        // hostile bytes
        (vec![b"WB.FLUSH", not_utf8], "UTF-8"),
        (vec![b"WB.DLQ", not_utf8], "UTF-8"),
        (vec![b"WB.RESTORE", not_utf8], "UTF-8"),
        (vec![b"WB.IMPORT", not_utf8], "UTF-8"),
        (vec![b"WB.DLQ", b"REPLAY", not_utf8], "UTF-8"),
        (vec![b"WB.WRITE", not_utf8], "invalid payload"),
        (vec![b"WB.DLQ", &big], "LIST, REPLAY or PURGE"),
        (vec![b"WB.WRITE", &big], "invalid payload"),
        (vec![b"WB.FLUSH", &big], "timeout-ms"),
    ];
    for (args, says) in &cases {
        let e = error_of(&mut con, args);
        let short: String = e.chars().take(300).collect();
        assert!(
            e.to_lowercase().contains(&says.to_lowercase()),
            "{:?}: {short}",
            shown(args)
        );
        // One line, and an argument is never echoed whole.
        assert!(
            !e.contains('\n') && e.len() < 600,
            "{:?}: {short}",
            shown(args)
        );
        alive(&mut con);
    }
    // Lower case works like upper case; nothing was added by the refused writes.
    let _: redis::Value = q(&mut con, &["wb.dlq", "list"]);
    let len: i64 = q(&mut con, &["XLEN", "userdata-stream"]);
    assert_eq!(len, 0);
    assert!(server.is_running());
    let log = server.log();
    assert!(!log.contains("panicked"), "a command panicked");
    assert!(
        !log.contains("internal error"),
        "an internal error was logged"
    );
}

#[test]
fn waiting_commands_are_refused_inside_multi_and_scripts() {
    let server = RedisServer::start(Options::default());
    let mut con = server.connection();
    for command in ["WB.FLUSH", "WB.RESTORE", "WB.IMPORT"] {
        let e = error_of(
            &mut con,
            &[
                b"EVAL",
                format!("return redis.call('{command}')").as_bytes(),
                b"0",
            ],
        );
        assert!(
            e.contains("cannot run inside MULTI or a script"),
            "{command} in a script: {e}"
        );
        alive(&mut con);
    }
    let e = error_of(
        &mut con,
        &[b"EVAL", b"return redis.call('WB.FLUSH', '100')", b"0"],
    );
    assert!(e.contains("cannot run inside MULTI or a script"), "{e}");
    let _: String = q(&mut con, &["MULTI"]);
    let _: String = q(&mut con, &["WB.FLUSH", "100"]);
    let exec = match redis::cmd("EXEC").query::<redis::Value>(&mut con) {
        Ok(v) => format!("{v:?}"),
        Err(e) => e.to_string(),
    };
    assert!(exec.contains("cannot run inside MULTI"), "{exec}");
    let e = error_of(
        &mut con,
        &[
            b"EVAL",
            b"return redis.call('WB.WRITE', '{\"user_email\":\"a.b@example.com\"}', 'SYNC')",
            b"0",
        ],
    );
    assert!(e.contains("cannot be used inside MULTI or a script"), "{e}");
    // Nothing was added by the refused write.
    let n: i64 = q(&mut con, &["XLEN", "userdata-stream"]);
    assert_eq!(n, 0);
    alive(&mut con);
}

#[test]
fn an_application_acl_user_can_add_entries_but_not_run_operator_commands() {
    let server = RedisServer::start(Options::default());
    let mut admin = server.connection();
    // The user the guarantees document recommends for applications.
    let _: String = q(
        &mut admin,
        &[
            "ACL",
            "SETUSER",
            "app",
            "on",
            ">app-secret",
            "~userdata-stream",
            "resetchannels",
            "-@all",
            "+xadd",
            "+ping",
            "+wb.write",
            "+wb.status",
        ],
    );
    let client = redis::Client::open(format!("redis://app:app-secret@127.0.0.1:{}/", server.port))
        .expect("url");
    let mut app = client.get_connection().expect("app connects");
    let ts = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
    let value = format!(
        r#"{{"key":"userdata-events:acl-1/visited","records":[{{"id":"acl-1","track_id":"t","lastplus":"{ts}","action":"v"}}]}}"#
    );
    let _: String = q(&mut app, &["XADD", "userdata-stream", "*", "value", &value]);
    let _: String = q(&mut app, &["WB.WRITE", &value]);
    let _: redis::Value = q(&mut app, &["WB.STATUS"]);
    for args in [
        vec!["WB.DLQ", "PURGE"],
        vec!["WB.DLQ", "LIST"],
        vec!["WB.PAUSE"],
        vec!["WB.RESUME"],
        vec!["WB.RESTORE", "FORCE"],
        vec!["WB.IMPORT", "MATCH", "*"],
        vec!["XGROUP", "DESTROY", "userdata-stream", "snowflake-writer"],
        vec!["DEL", "userdata-stream"],
        vec!["CONFIG", "GET", "writebehind.*"],
    ] {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let e = error_of(&mut app, &bytes);
        assert!(
            e.contains("NOPERM") || e.contains("permission"),
            "{args:?}: {e}"
        );
    }
    // A broad user without @admin (as the guarantees document suggests) reaches the application's
    // commands but none of the operator's: the categories themselves do the work.
    let _: String = q(
        &mut admin,
        &[
            "ACL",
            "SETUSER",
            "broad",
            "on",
            ">broad-secret",
            "~*",
            "&*",
            "+@all",
            "-@admin",
        ],
    );
    let client = redis::Client::open(format!(
        "redis://broad:broad-secret@127.0.0.1:{}/",
        server.port
    ))
    .expect("url");
    let mut broad = client.get_connection().expect("broad connects");
    let _: String = q(&mut broad, &["WB.WRITE", &value]);
    let _: redis::Value = q(&mut broad, &["WB.STATUS"]);
    for args in [
        vec!["WB.DLQ", "PURGE"],
        vec!["WB.PAUSE"],
        vec!["WB.RESUME"],
        vec!["WB.RESTORE", "FORCE"],
        vec!["WB.IMPORT", "MATCH", "*"],
    ] {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let e = error_of(&mut broad, &bytes);
        assert!(
            e.contains("NOPERM") || e.contains("permission"),
            "{args:?} by a user without @admin: {e}"
        );
    }
    // The operator's commands need the admin category: WB.PAUSE and WB.RESUME are in it.
    let cats: Vec<String> = q(&mut admin, &["ACL", "CAT", "admin"]);
    for c in ["wb.pause", "wb.resume"] {
        assert!(
            cats.iter().any(|x| x == c),
            "{c} is not in @admin: {cats:?}"
        );
    }
}
