//! The writer of hash mappings: one thread per mapping drains its capture stream into its table.
//!
//! Like the userdata pipeline, it reads through the consumer group (`GROUP`; pending entries first,
//! after a start or a promotion), and acknowledges a change only after Snowflake committed it (or it
//! was dead-lettered with its reason). One thread per mapping writes batches one after another, so
//! the changes of a key are applied in stream order; a batch is coalesced per row
//! ([`crate::mapping::plan`]), so replaying any part of the stream leaves each row as the hash's
//! newest captured state.
//!
//! After a batch commits, under one lock hold: `XACK`; each requested acknowledgement stream gets
//! `status done` (or `status failed` and `error` for a change dead-lettered), expiring after an
//! hour; each write-through key `__{<key>}` is renamed to `<key>` (its write is done), or deleted
//! when its change failed. The rename is captured as an ordinary change of `<key>`, behind any
//! older one, so the row always ends on the newest state.
//!
//! The table's columns are read once (`DESCRIBE TABLE`) when the writer starts; a missing table or
//! column, or a type that cannot be mapped, stops that mapping with the reason in `WB.STATUS`
//! (`mapping.<name>.state: blocked`, `last_error`) and is retried slowly.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis_module::Context;

use super::control::{control, dry_run, group_name, mapped, spawn_supervised, unconfigured};
use super::mapped::WriterFigures;
use super::retry::SinkError;
use crate::host::gil::Gil;
use crate::host::server::{KnownPhase, Phase, NOT_PRIMARY};
use crate::host::stream::{self, RawEntry};
use crate::host::{keyspace, logging};
use crate::mapping::capture::{done, failed, through_key};
use crate::mapping::change::{decode, Change};
use crate::mapping::column::{resolve, Resolved};
use crate::mapping::op::{ack_stream, ACK_TTL_SECONDS};
use crate::mapping::Mapping;
use crate::settings::{self, Key};
use crate::snowflake::retry::Backoff;
use crate::snowflake::Client;
use crate::sql::ident::quote_table;
use crate::sql::mapping::describe_sql;
use crate::sql::mapping_plan::plan;
use crate::statement::Statement;

/// Starts one writer per mapping (at load, after the userdata pipeline).
pub fn spawn_all() -> Result<Vec<std::thread::JoinHandle<()>>, String> {
    let Some(m) = mapped() else {
        return Ok(Vec::new());
    };
    let mut threads = Vec::new();
    for index in 0..m.mappings.mappings.len() {
        let gil = Gil::new().ok_or("could not create a mapping writer's context")?;
        let name = format!("wb-map-{index}");
        threads.push(spawn_supervised(&name, move || run(&gil, index))?);
    }
    Ok(threads)
}

fn set_state(f: &WriterFigures, state: &'static str) {
    *f.state.lock() = state;
}

fn run(gil: &Gil, index: usize) {
    let c = control();
    let Some(m) = mapped() else { return };
    let mapping = &m.mappings.mappings[index];
    let figures = &m.writers[index];
    let stream_name = mapping.capture_stream();
    let mut recovering = true;
    let mut cursor = String::from("0-0");
    let mut resolved: Option<(String, Resolved)> = None;
    let mut client: Option<Arc<Client>> = None;
    let mut accepted_once = false;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    // Once the server is known to be a ready primary, each read checks it again inside its own
    // lock hold (as the claimer does), so a turn takes no hold of its own just to ask.
    let mut known = KnownPhase::default();
    loop {
        if c.stopping() {
            return;
        }
        let snap = settings::current();
        if c.paused.load(Ordering::Relaxed) {
            set_state(figures, "paused");
            c.wait_wake(Duration::from_millis(200));
            continue;
        }
        match known.phase(gil) {
            Phase::Loading => {
                set_state(figures, "loading");
                rest(Duration::from_millis(50));
                continue;
            }
            Phase::Replica => {
                set_state(figures, "replica");
                recovering = true;
                cursor = "0-0".into();
                rest(Duration::from_millis(200));
                continue;
            }
            Phase::Primary => {}
        }
        if unconfigured(&snap) || dry_run(&snap) {
            set_state(figures, "unconfigured");
            rest(Duration::from_millis(500));
            continue;
        }
        // The client and the table's columns, once.
        if client.is_none() {
            match super::sink::client() {
                Ok(cl) => client = Some(cl),
                Err(e) => {
                    blocked(figures, &format!("Snowflake client: {e}"));
                    rest(backoff.next_delay().max(Duration::from_secs(1)));
                    continue;
                }
            }
        }
        let Some(cl) = client.clone() else { continue };
        if resolved.is_none() {
            match describe(&cl, mapping) {
                Ok(r) => {
                    logging::info(&format!(
                        "mapping {}: writing {} into {}",
                        mapping.name, stream_name, mapping.table
                    ));
                    resolved = Some(r);
                }
                Err(e) => {
                    blocked(figures, &e);
                    rest(Duration::from_secs(
                        snap.uint(Key::ConfigSleepSeconds).clamp(1, 30),
                    ));
                    continue;
                }
            }
        }
        let Some((table, cols)) = resolved.as_ref() else {
            continue;
        };
        let group = group_name(&snap);
        let consumer = snap.str(Key::Consumer).to_string();
        let count = snap.uint(Key::BatchMaxEntries).clamp(1, 10_000) as usize;
        let read = gil.with(|ctx| -> Result<(Vec<RawEntry>, Option<String>), String> {
            crate::host::server::require_primary(ctx)?;
            stream::ensure_group(ctx, &stream_name, &group)?;
            if recovering {
                let step = stream::autoclaim(ctx, &stream_name, &group, &consumer, &cursor, count)?;
                Ok((step.entries, Some(step.next)))
            } else {
                Ok((
                    stream::read_group(ctx, &stream_name, &group, &consumer, ">", count)?,
                    None,
                ))
            }
        });
        let (entries, next) = match read {
            Ok(r) => {
                known.confirmed();
                r
            }
            // No longer a ready primary: the next turn says which, and a replica starts over.
            Err(e) if e == NOT_PRIMARY => {
                known.lost();
                continue;
            }
            Err(e) => {
                logging::warning(&format!(
                    "mapping {}: reading {stream_name} failed: {e}",
                    mapping.name
                ));
                rest(Duration::from_millis(200));
                continue;
            }
        };
        if let Some(next) = next {
            if next == "0-0" {
                recovering = false;
            }
            cursor = next;
        }
        if entries.is_empty() {
            if !recovering {
                set_state(figures, "idle");
                // Woken by the capture of a change (or at the latest after the wait).
                if let Some((_, rx)) = m.wakes.get(index) {
                    let _ = rx.recv_timeout(Duration::from_millis(500));
                }
            }
            continue;
        }
        set_state(figures, "running");
        let max_bytes = snap.uint(Key::BatchMaxBytes).max(64 << 10) as usize;
        // Commit until done; transient failures keep the batch and wait.
        let outcome = loop {
            if c.stopping() {
                return;
            }
            match commit(
                &cl,
                mapping,
                table,
                cols,
                &entries,
                max_bytes,
                &mut accepted_once,
            ) {
                Ok(o) => {
                    backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
                    break o;
                }
                Err(e) => {
                    figures.retries.fetch_add(1, Ordering::Relaxed);
                    let slow = matches!(e, SinkError::Blocked { .. });
                    if slow {
                        blocked(figures, e.message());
                    } else {
                        set_state(figures, "retrying");
                        *figures.last_error.lock() = e.message().to_string();
                    }
                    let delay = backoff.next_delay();
                    rest(if slow {
                        delay.max(Duration::from_secs(2))
                    } else {
                        delay
                    });
                }
            }
        };
        figures
            .statements
            .fetch_add(outcome.statements, Ordering::Relaxed);
        settle(
            gil,
            mapping,
            &stream_name,
            &group,
            &entries,
            &outcome,
            figures,
        );
    }
}

fn blocked(figures: &WriterFigures, why: &str) {
    set_state(figures, "blocked");
    let mut last = figures.last_error.lock();
    if *last != why {
        logging::warning(&format!("mapping blocked: {why}"));
        *last = why.to_string();
    }
}

/// The table's columns, as the mapping needs them.
fn describe(cl: &Client, mapping: &Mapping) -> Result<(String, Resolved), String> {
    let table = quote_table(&mapping.table)?;
    let result = cl
        .execute(&Statement::new(describe_sql(&table), Vec::new()))
        .map_err(|e| {
            format!(
                "mapping {}: cannot describe {}: {e}",
                mapping.name, mapping.table
            )
        })?;
    let described: Vec<(String, String, bool)> = (0..result.rows.len())
        .filter_map(|row| {
            Some((
                result.get(row, "name")?.to_string(),
                result.get(row, "type")?.to_string(),
                result
                    .get(row, "null?")
                    .is_none_or(|n| n.eq_ignore_ascii_case("Y")),
            ))
        })
        .collect();
    let r = resolve(mapping, &described).map_err(|e| format!("mapping {}: {e}", mapping.name))?;
    Ok((table, r))
}

/// What a committed batch leaves to settle: which entries failed (index, reason).
struct Outcome {
    failed: Vec<(usize, String)>,
    statements: u64,
}

/// Plans and commits the batch. A change Snowflake refuses for its data (once the table has taken a
/// statement, so the fault is not the table's) is found by committing the changes one by one, and
/// fails alone.
fn commit(
    cl: &Client,
    mapping: &Mapping,
    table: &str,
    cols: &Resolved,
    entries: &[RawEntry],
    max_bytes: usize,
    accepted_once: &mut bool,
) -> Result<Outcome, SinkError> {
    let mut failed: Vec<(usize, String)> = Vec::new();
    let mut changes: Vec<(usize, Change<'_>)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match decode(mapping, &e.fields) {
            Ok(ch) => changes.push((i, ch)),
            Err(why) => failed.push((i, format!("not a change this module captured: {why}"))),
        }
    }
    let only: Vec<Change<'_>> = changes.iter().map(|(_, ch)| ch.clone()).collect();
    let p = plan(table, cols, &only, max_bytes);
    failed.extend(
        p.refused
            .iter()
            .map(|(j, why)| (changes[*j].0, why.clone())),
    );
    let mut statements = 0;
    let mut data_error: Option<SinkError> = None;
    for s in &p.statements {
        statements += 1;
        match cl.execute_idempotent(s).map_err(SinkError::from) {
            Ok(_) => *accepted_once = true,
            Err(e @ SinkError::Data { .. }) => {
                data_error = Some(e);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = data_error {
        if !*accepted_once {
            return Err(SinkError::blocked(e.message().to_string()));
        }
        // One change at a time, in order: each either commits or fails alone.
        let refused: std::collections::HashSet<usize> = p.refused.iter().map(|(j, _)| *j).collect();
        for (j, (i, ch)) in changes.iter().enumerate() {
            if refused.contains(&j) {
                continue;
            }
            let single = plan(table, cols, std::slice::from_ref(ch), max_bytes);
            for s in &single.statements {
                statements += 1;
                match cl.execute_idempotent(s).map_err(SinkError::from) {
                    Ok(_) => {}
                    Err(SinkError::Data { message, .. }) => failed.push((*i, message)),
                    Err(other) => return Err(other),
                }
            }
        }
    }
    Ok(Outcome { failed, statements })
}

/// One lock hold: dead-letter what failed, acknowledge every entry, write the acknowledgements
/// asked for, and finish write-through keys.
fn settle(
    gil: &Gil,
    mapping: &Mapping,
    stream_name: &str,
    group: &str,
    entries: &[RawEntry],
    outcome: &Outcome,
    figures: &WriterFigures,
) {
    let refused: std::collections::HashMap<usize, &str> = outcome
        .failed
        .iter()
        .map(|(i, w)| (*i, w.as_str()))
        .collect();
    gil.with(|ctx| {
        if stream::is_replica(ctx) {
            return;
        }
        for (i, e) in entries.iter().enumerate() {
            let why = refused.get(&i).copied();
            if let Some(why) = why {
                let _ = stream::dead_letter(
                    ctx,
                    stream_name,
                    &mapping.dead_letter_stream(),
                    Some(group),
                    e,
                    why,
                );
            }
            let Ok(ch) = decode(mapping, &e.fields) else {
                continue;
            };
            if let Some(id) = ch.ack {
                let fields = match why {
                    None => done(),
                    Some(w) => failed(w),
                };
                write_ack(ctx, &ack_stream(ch.key, id), &fields);
            }
            if ch.through {
                finish_through(ctx, ch.key, why.is_none());
            }
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        if let Err(e) = stream::ack(ctx, stream_name, group, &ids) {
            logging::warning(&format!("mapping {}: XACK failed: {e}", mapping.name));
        }
    });
    figures.written.fetch_add(
        (entries.len() - outcome.failed.len()) as u64,
        Ordering::Relaxed,
    );
    figures
        .dead_lettered
        .fetch_add(outcome.failed.len() as u64, Ordering::Relaxed);
}

fn write_ack(ctx: &Context, stream_key: &[u8], fields: &[(Vec<u8>, Vec<u8>)]) {
    let mut args: Vec<&[u8]> = vec![stream_key, b"*"];
    for (f, v) in fields {
        args.push(f);
        args.push(v);
    }
    let ttl = ACK_TTL_SECONDS.to_string();
    if let Err(e) = stream::call_write(ctx, "XADD", &args)
        .and_then(|_| stream::call_write(ctx, "EXPIRE", &[stream_key, ttl.as_bytes()]))
    {
        logging::warning(&format!(
            "acknowledgement {} not written: {e}",
            stream_key.escape_ascii()
        ));
    }
}

/// A write-through key, once its change is settled: renamed to `key` when written, else deleted.
fn finish_through(ctx: &Context, key: &[u8], written: bool) {
    let temp = through_key(key);
    let exists = matches!(
        stream::call_read(ctx, "EXISTS", &[&temp]),
        Ok(redis_module::RedisValue::Integer(1))
    );
    if !exists {
        return;
    }
    let result = if written {
        // Captured as an ordinary change of `key`, so no older change can overtake it.
        stream::call_write(ctx, "RENAME", &[&temp, key])
    } else {
        keyspace::quiet(|| stream::call_write(ctx, "DEL", &[&temp]))
    };
    if let Err(e) = result {
        logging::warning(&format!(
            "write-through key {} not finished: {e}",
            temp.escape_ascii()
        ));
    }
}

/// Waits `d`, in short steps, so a stopping module (`SHUTDOWN`, `MODULE UNLOAD`) never waits for a
/// writer's backoff.
fn rest(d: Duration) {
    let until = std::time::Instant::now() + d;
    let c = control();
    while !c.stopping() {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}
