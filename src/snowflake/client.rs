//! The Snowflake SQL API v2 client: submit a statement, wait for it, read every partition.
//!
//! One [`Client`] is shared (through an `Arc`) by every worker thread; it owns one `ureq::Agent`, so
//! TLS connections are reused. Each planned statement has one `requestId` for its whole life: every
//! resubmission of it (after a timeout, a lost connection, a 429 or a 5xx — inside one call or by a
//! caller trying the same statement again) sends the same `requestId` with `retry=true`, which tells
//! Snowflake not to run it twice ([`Client::execute_idempotent`] derives the id from the statement
//! itself, [`Client::execute_with`] takes the caller's [`Request`]). A statement that ran and failed
//! is tried again as a new request. A `202` answer is polled through its status
//! URL with backoff until the statement finishes. Past the request timeout a running statement is
//! **not** cancelled: the error says it timed out, and the next submission with the same
//! `requestId` finds the same running statement and polls it to its end, so a slow statement is
//! never run beside a copy of itself. Nothing here panics or sleeps past the deadline: the calling
//! thread lives inside redis-server.
//!
//! Values always travel as bind variables (`bindings`); multi-statement requests carry none, as
//! Snowflake does not support binds there.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use uuid::Uuid;
use zeroize::Zeroize;

use super::auth::{Authenticator, Bearer};
use super::config::{AuthConfig, ClientConfig};
use super::error::{ErrorClass, SnowflakeError};
use super::resolve::KeptResolver;
use super::retry::{sleep_before, sleep_toward, Backoff};
use crate::statement::{Bind, JsonSink, Statement};

/// Largest successful response body read (a result partition is far smaller); a larger one is
/// refused, never read whole into memory.
pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// Largest error response body read: Snowflake's error objects are a few hundred bytes.
pub const MAX_ERROR_BODY_BYTES: u64 = 64 * 1024;
/// Each connection's output buffer: a request reaches the socket in writes of up to this size (a
/// batch of the default `BATCH_MAX_BYTES` in four, a typical one in one or two).
const OUTPUT_BUFFER_BYTES: usize = 256 * 1024;
/// How long a best-effort cancel may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// Planned statements whose request is remembered (a few batches per worker).
const REMEMBERED_REQUESTS: usize = 1024;
/// First pause before polling a running statement.
const POLL_FIRST: Duration = Duration::from_millis(20);
/// Time kept for the last status poll before a request's deadline: the pause before it is cut
/// short so that a statement finishing just before the deadline is still seen finished.
const LAST_POLL: Duration = Duration::from_millis(100);

/// The outcome of a statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Column names, from `resultSetMetaData.rowType`.
    pub columns: Vec<String>,
    /// Every row of every partition; values as Snowflake sends them (strings, or null).
    pub rows: Vec<Vec<Option<String>>>,
    /// For DML: rows inserted + updated + deleted.
    pub rows_affected: Option<u64>,
    pub statement_handle: String,
    /// For multi-statement requests: the handle of each statement, in order.
    pub statement_handles: Vec<String>,
}

/// One result partition handed to [`Client::execute_each`]: its rows, and the column names and
/// the statement's total row count (`resultSetMetaData.numRows`) as the first partition gave them.
pub struct Partition<'a> {
    pub columns: &'a [String],
    pub rows: Vec<Vec<Option<String>>>,
    pub total_rows: Option<u64>,
}

/// Called with each partition in order; an error stops the reading (and becomes a permanent error).
pub type EachPartition<'a> = &'a mut dyn FnMut(Partition<'_>) -> Result<(), String>;

impl QueryResult {
    /// The value in `row` of the column named `name` (case-insensitive).
    pub fn get(&self, row: usize, name: &str) -> Option<&str> {
        let col = self
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))?;
        self.rows.get(row)?.get(col)?.as_deref()
    }
}

/// The session a request runs in, as `WB.PING` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionContext {
    pub user: Option<String>,
    pub role: Option<String>,
    pub warehouse: Option<String>,
    pub database: Option<String>,
    pub schema: Option<String>,
    pub latency_ms: u64,
}

/// A Snowflake SQL API client. `Send + Sync`; share it with `Arc`.
pub struct Client {
    cfg: ClientConfig,
    agent: ureq::Agent,
    /// The agent's resolver: what it kept is dropped when a host cannot be reached.
    resolver: KeptResolver,
    auth: Authenticator,
    round_trips: AtomicU64,
    /// The request of each planned statement submitted recently (see [`Client::execute_idempotent`]).
    planned: Mutex<VecDeque<(Uuid, Request)>>,
    /// Told of each round trip the client repeats itself (see [`Client::counting_retries`]).
    on_retry: Option<Box<dyn Fn() + Send + Sync>>,
}

/// The request a statement is sent as: its `requestId`, and whether that id may have reached
/// Snowflake already (a resubmission then says `retry=true`). One value follows a statement through
/// all its tries: after an answer that may hide an execution (a lost connection, a 5xx, a timeout
/// while running) the same request is sent again; after the statement ran and failed (the answer
/// names a SQL state: nothing applied, and Snowflake may answer a resubmission with the stored
/// failure) it becomes a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub id: Uuid,
    pub sent: bool,
}

impl Request {
    /// A request never sent.
    pub fn new(id: Uuid) -> Request {
        Request { id, sent: false }
    }

    /// Updates the request after an attempt that ended with `outcome`.
    fn after<T>(&mut self, outcome: &Result<T, SnowflakeError>) {
        match outcome {
            Err(e) if e.statement_failed() => *self = Request::new(Uuid::new_v4()),
            _ => self.sent = true,
        }
    }
}

impl Default for Request {
    fn default() -> Request {
        Request::new(Uuid::new_v4())
    }
}

impl Client {
    /// Builds the client and loads its credentials (reads and decrypts the key, or reads the
    /// token). No request is sent: use [`Client::ping`] or [`Client::connect`] for that.
    ///
    /// The key's passphrase is needed only to decrypt the key: it is taken out of the
    /// configuration and its bytes overwritten here, whether the key loads or not, so the client
    /// (which lives as long as the writer) never holds it.
    pub fn new(mut cfg: ClientConfig) -> Result<Client, SnowflakeError> {
        let auth = Authenticator::from_config(&cfg.auth, &cfg.account, &cfg.user);
        if let AuthConfig::KeyPair { passphrase, .. } = &mut cfg.auth {
            if let Some(mut secret) = passphrase.take() {
                secret.zeroize();
            }
        }
        let auth = auth?;
        let base = cfg.base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(SnowflakeError::config(format!(
                "SNOWFLAKE_URL must start with https:// or http://, got '{base}'"
            )));
        }
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(cfg.connect_timeout))
            .user_agent(cfg.user_agent.as_str())
            .max_idle_connections_per_host(32)
            // Every status comes back as a response: the body of an error carries Snowflake's code.
            .http_status_as_error(false)
            // No proxy from the environment: requests go where SNOWFLAKE_URL says.
            .proxy(None)
            // Few writes per batch: 8 KiB writes cost a system call (and, over TLS, a record) each.
            .output_buffer_size(OUTPUT_BUFFER_BYTES)
            .build();
        let resolver = KeptResolver::default();
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            resolver.clone(),
        );
        let cfg = ClientConfig {
            base_url: base,
            ..cfg
        };
        Ok(Client {
            cfg,
            agent,
            resolver,
            auth,
            round_trips: AtomicU64::new(0),
            planned: Mutex::new(VecDeque::new()),
            on_retry: None,
        })
    }

    /// Tells `count` of each round trip the client itself repeats (throttling, an outage, a
    /// timeout, renewed credentials): the pipeline counts them in `retries` of `WB.STATUS`, beside
    /// the batches it retries.
    pub fn counting_retries(self, count: impl Fn() + Send + Sync + 'static) -> Client {
        Client {
            on_retry: Some(Box::new(count)),
            ..self
        }
    }

    fn count_retry(&self) {
        if let Some(count) = &self.on_retry {
            count();
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// HTTP requests sent so far, for status and metrics.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Runs one statement with its bind variables, under a fresh `requestId` (reused only by the
    /// resubmissions inside this call). For reads and anything that must run each time it is asked.
    pub fn execute(&self, statement: &Statement) -> Result<QueryResult, SnowflakeError> {
        self.execute_with(statement, &mut Request::default())
    }

    /// Runs a write whose text and binds identify it: its first `requestId` is derived from them,
    /// and this client remembers the request of each planned statement it sent recently, so trying
    /// the same statement again after this call returned a retryable error resubmits the same
    /// request with `retry=true` — a statement that ran is not run again, one still running is
    /// found and waited for. For statements that are harmless to skip when already applied (the
    /// pipeline's MERGEs), never for reads.
    pub fn execute_idempotent(&self, statement: &Statement) -> Result<QueryResult, SnowflakeError> {
        let key = request_id_of(statement);
        let mut request = {
            let planned = self.planned.lock();
            planned
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(Request::new(key), |(_, r)| *r)
        };
        let result = self.execute_with(statement, &mut request);
        let mut planned = self.planned.lock();
        match planned.iter_mut().find(|(k, _)| *k == key) {
            Some((_, r)) => *r = request,
            None => {
                if planned.len() >= REMEMBERED_REQUESTS {
                    planned.pop_front();
                }
                planned.push_back((key, request));
            }
        }
        result
    }

    /// Runs a statement as `request`, which is updated for the caller's next try (see [`Request`]).
    pub fn execute_with(
        &self,
        statement: &Statement,
        request: &mut Request,
    ) -> Result<QueryResult, SnowflakeError> {
        let body = self.body(&statement.sql, &statement.binds, None);
        self.run(body, request, None)
    }

    /// Runs a read whose result may be larger than memory should hold: each partition is handed to
    /// `each` as soon as it is read and dropped after, so at most one partition is held at a time
    /// (each at most [`MAX_BODY_BYTES`]). The returned result carries no rows.
    pub fn execute_each(
        &self,
        statement: &Statement,
        each: EachPartition<'_>,
    ) -> Result<QueryResult, SnowflakeError> {
        let body = self.body(&statement.sql, &statement.binds, None);
        self.run(body, &mut Request::default(), Some(each))
    }

    /// Runs several statements in one request (`MULTI_STATEMENT_COUNT`), e.g. an explicit
    /// `BEGIN; ...; COMMIT`. Snowflake accepts no bind variables here, so this takes plain text:
    /// never build these statements from input values.
    pub fn execute_multi(&self, statements: &[&str]) -> Result<QueryResult, SnowflakeError> {
        let parts: Vec<&str> = statements
            .iter()
            .map(|s| s.trim().trim_end_matches(';').trim())
            .filter(|s| !s.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(SnowflakeError::new(
                ErrorClass::Permanent,
                "execute_multi was given no statements",
            ));
        }
        let count = parts.len().to_string();
        let body = self.body(&parts.join(";\n"), &[], Some(&count));
        self.run(body, &mut Request::default(), None)
    }

    /// Reads the result of a statement by its handle (e.g. one of a multi-statement request).
    pub fn fetch_result(&self, handle: &str) -> Result<QueryResult, SnowflakeError> {
        let deadline = Instant::now() + self.cfg.request_timeout;
        let url = self.handle_url(handle)?;
        self.wait(handle, &url, deadline, None)
    }

    /// One round trip now: the session context and how long it took.
    pub fn ping(&self) -> Result<SessionContext, SnowflakeError> {
        let started = Instant::now();
        let r = self.execute(&Statement::new(
            crate::sql::queries::SESSION_CONTEXT,
            vec![],
        ))?;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let Some(row) = r.rows.first() else {
            return Err(SnowflakeError::new(
                ErrorClass::Permanent,
                "the session context query returned no row",
            ));
        };
        let col = |i: usize| row.get(i).cloned().flatten();
        Ok(SessionContext {
            user: col(0),
            role: col(1),
            warehouse: col(2),
            database: col(3),
            schema: col(4),
            latency_ms,
        })
    }

    /// Start-up check: pings up to `startup_attempts` times, `startup_sleep` apart, stopping early
    /// on a configuration or permanent error, or when `should_stop` says so.
    pub fn connect(
        &self,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<SessionContext, SnowflakeError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.ping() {
                Ok(ctx) => return Ok(ctx),
                Err(e)
                    if matches!(e.class, ErrorClass::Retryable | ErrorClass::Reauth)
                        && attempt < self.cfg.startup_attempts =>
                {
                    let until = Instant::now() + self.cfg.startup_sleep;
                    while Instant::now() < until {
                        if should_stop() {
                            return Err(e);
                        }
                        let left = until.saturating_duration_since(Instant::now());
                        std::thread::sleep(left.min(Duration::from_millis(100)));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The request's JSON text (`statements`: `MULTI_STATEMENT_COUNT`, for a multi-statement request).
    ///
    /// Written piece by piece: a batch's bind is most of the request and is already escaped
    /// ([`Bind::Escaped`]), so it is copied in as it is, never escaped again or copied into a value
    /// tree first.
    fn body(&self, sql: &str, binds: &[Bind], statements: Option<&str>) -> String {
        let values: usize = binds.iter().map(Bind::size).sum();
        let mut out = String::with_capacity(sql.len() + values + values / 4 + 256);
        out.plain("{");
        out.name("statement");
        out.string(sql);
        out.plain(",");
        out.name("timeout");
        out.integer(self.cfg.request_timeout.as_secs().max(1));
        let context = [
            ("database", &self.cfg.database),
            ("schema", &self.cfg.schema),
            ("warehouse", &self.cfg.warehouse),
            ("role", &self.cfg.role),
        ];
        for (name, value) in context {
            if let Some(value) = value {
                out.plain(",");
                out.name(name);
                out.string(value);
            }
        }
        if !binds.is_empty() {
            out.plain(",");
            out.name("bindings");
            out.plain("{");
            for (i, b) in binds.iter().enumerate() {
                if i > 0 {
                    out.plain(",");
                }
                out.name(itoa::Buffer::new().format(i + 1));
                out.plain("{");
                out.name("type");
                out.string(b.sql_type());
                out.plain(",");
                out.name("value");
                match b {
                    Bind::Text(text) => out.string(text),
                    Bind::Escaped(text) => {
                        out.push('"');
                        out.push_str(text.as_escaped());
                        out.push('"');
                    }
                    Bind::Fixed(n) => out.string(itoa::Buffer::new().format(*n)),
                    Bind::Null => out.plain("null"),
                }
                out.plain("}");
            }
            out.plain("}");
        }
        if let Some(n) = statements {
            out.plain(",");
            out.name("parameters");
            out.plain("{");
            out.name("MULTI_STATEMENT_COUNT");
            out.string(n);
            out.plain("}");
        }
        out.plain("}");
        out
    }

    /// Submits a statement and returns its complete result.
    fn run(
        &self,
        text: String,
        request: &mut Request,
        each: Option<EachPartition<'_>>,
    ) -> Result<QueryResult, SnowflakeError> {
        let deadline = Instant::now() + self.cfg.request_timeout;
        let (status, reply) = self.with_retries(deadline, |_, bearer| {
            let url = submit_url(&self.cfg.base_url, &request.id, request.sent);
            let answer = self.call(&url, Some(&text), bearer, deadline);
            request.after(&answer);
            answer
        })?;
        match status {
            200 => self.complete(reply, deadline, each),
            202 => {
                let handle = handle_of(&reply)?;
                let url = self.status_url(&reply, &handle)?;
                let result = self.wait(&handle, &url, deadline, each);
                request.after(&result);
                result
            }
            other => Err(unexpected_status(other)),
        }
    }

    /// Polls a running statement until it finishes or the deadline passes. A statement still
    /// running then is left running (see the module doc): the error is retryable and `timed_out`.
    fn wait(
        &self,
        handle: &str,
        url: &str,
        deadline: Instant,
        mut each: Option<EachPartition<'_>>,
    ) -> Result<QueryResult, SnowflakeError> {
        let mut pause = Backoff::new(POLL_FIRST, self.cfg.poll_max_interval);
        let mut first = true;
        loop {
            if !first && !sleep_toward(pause.next_delay(), deadline, LAST_POLL) {
                return Err(self.still_running(handle));
            }
            first = false;
            let polled =
                self.with_retries(deadline, |_, bearer| self.call(url, None, bearer, deadline));
            match polled {
                Ok((200, reply)) => return self.complete(reply, deadline, each.take()),
                Ok((202, _)) => continue,
                Ok((other, _)) => return Err(unexpected_status(other)),
                Err(e) if e.is_retryable() && Instant::now() >= deadline => {
                    return Err(self.still_running(handle))
                }
                // The statement may still be running; the next submission under the same
                // requestId finds it again.
                Err(e) => return Err(e),
            }
        }
    }

    fn still_running(&self, handle: &str) -> SnowflakeError {
        let mut e = SnowflakeError::retryable(format!(
            "statement {handle} did not finish within {}s (SNOWFLAKE_REQUEST_TIMEOUT_SECONDS); it keeps running and the next attempt waits for it",
            self.cfg.request_timeout.as_secs(),
        ));
        e.timed_out = true;
        e
    }

    /// Asks Snowflake to cancel a running statement (best effort, short timeout).
    pub fn cancel(&self, handle: &str) -> Result<(), SnowflakeError> {
        let url = format!("{}/cancel", self.handle_url(handle)?);
        let bearer = self.auth.bearer()?;
        self.call(&url, Some("{}"), &bearer, Instant::now() + CANCEL_TIMEOUT)
            .map(|_| ())
    }

    /// Turns a finished statement's reply into a result, fetching partitions 1.. as needed: into
    /// the result, or, with `each`, handed over one at a time and not kept.
    fn complete(
        &self,
        reply: Value,
        deadline: Instant,
        mut each: Option<EachPartition<'_>>,
    ) -> Result<QueryResult, SnowflakeError> {
        let mut result = parse_result(&reply)?;
        let total_rows = reply
            .pointer("/resultSetMetaData/numRows")
            .and_then(Value::as_u64);
        let partitions = reply
            .pointer("/resultSetMetaData/partitionInfo")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let refused = |e: String| SnowflakeError::new(ErrorClass::Permanent, e);
        if let Some(each) = each.as_deref_mut() {
            let rows = std::mem::take(&mut result.rows);
            each(Partition {
                columns: &result.columns,
                rows,
                total_rows,
            })
            .map_err(refused)?;
        }
        drop(reply);
        if partitions > 1 {
            let base = self.handle_url(&result.statement_handle)?;
            for partition in 1..partitions {
                let url = format!("{base}?partition={partition}");
                let (status, part) = self.with_retries(deadline, |_, bearer| {
                    self.call(&url, None, bearer, deadline)
                })?;
                if status != 200 {
                    return Err(unexpected_status(status));
                }
                let rows = rows_of(&part);
                drop(part);
                match each.as_deref_mut() {
                    Some(each) => each(Partition {
                        columns: &result.columns,
                        rows,
                        total_rows,
                    })
                    .map_err(refused)?,
                    None => result.rows.extend(rows),
                }
            }
        }
        Ok(result)
    }

    /// Runs `attempt` until it succeeds, retrying retryable errors with backoff (bounded by
    /// `max_attempts` and `deadline`) and renewing rejected credentials once.
    fn with_retries<T>(
        &self,
        deadline: Instant,
        mut attempt: impl FnMut(u32, &Bearer) -> Result<T, SnowflakeError>,
    ) -> Result<T, SnowflakeError> {
        let mut backoff = Backoff::new(self.cfg.retry_base_backoff, self.cfg.retry_max_backoff);
        let started = Instant::now();
        let mut tries: u32 = 0;
        let mut renewed = false;
        loop {
            let bearer = self.auth.bearer()?;
            let outcome = attempt(tries, &bearer);
            tries = tries.saturating_add(1);
            match outcome {
                Ok(v) => return Ok(v),
                Err(e) if e.class == ErrorClass::Reauth && self.cfg.auto_reconnect && !renewed => {
                    renewed = true;
                    self.auth.renew(&bearer);
                    self.count_retry();
                }
                Err(mut e) if e.class == ErrorClass::Reauth => {
                    e.message = format!("{} ({})", e.message, self.auth.hint());
                    return Err(e);
                }
                Err(mut e) if e.class == ErrorClass::Retryable => {
                    if tries >= self.cfg.max_attempts.max(1)
                        || !sleep_before(backoff.next_delay(), deadline)
                    {
                        if tries > 1 {
                            e.message = format!(
                                "{} (gave up after {tries} attempts in {} ms)",
                                e.message,
                                started.elapsed().as_millis()
                            );
                        }
                        return Err(e);
                    }
                    self.count_retry();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The timeout and the headers every request carries (the SQL API's request headers for all
    /// operations).
    fn headed<B>(
        &self,
        request: ureq::RequestBuilder<B>,
        timeout: Option<Duration>,
        bearer: &Bearer,
    ) -> ureq::RequestBuilder<B> {
        request
            .config()
            .timeout_global(timeout)
            .build()
            .header("Authorization", format!("Bearer {}", bearer.value))
            .header("X-Snowflake-Authorization-Token-Type", bearer.token_type)
            .header("Accept", "application/json")
            .header("User-Agent", &self.cfg.user_agent)
    }

    /// One HTTP round trip, a `POST` of `body` or a `GET` without one. Returns the status (200 or
    /// 202) and the JSON body, or the classified error.
    fn call(
        &self,
        url: &str,
        body: Option<&str>,
        bearer: &Bearer,
        deadline: Instant,
    ) -> Result<(u16, Value), SnowflakeError> {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Err(SnowflakeError::retryable(format!(
                "no time left for the request (SNOWFLAKE_REQUEST_TIMEOUT_SECONDS is {}s)",
                self.cfg.request_timeout.as_secs()
            )));
        };
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let timeout = Some(left.min(self.cfg.http_timeout));
        let response = match body {
            Some(text) => self
                .headed(self.agent.post(url), timeout, bearer)
                .header("Content-Type", "application/json")
                .send(text),
            None => self.headed(self.agent.get(url), timeout, bearer).call(),
        };
        let resp = response.map_err(|e| {
            // The host may have moved: the next attempt looks it up again.
            self.resolver.forget();
            SnowflakeError::transport(&format!("cannot reach {}", self.cfg.base_url), &e)
        })?;
        let status = resp.status().as_u16();
        if status >= 400 {
            // An error body past its cap (or cut short) is classified by the status alone.
            let text =
                read_body(resp.into_body().into_reader(), MAX_ERROR_BODY_BYTES).unwrap_or_default();
            return Err(SnowflakeError::from_response(status, &text));
        }
        let text = read_body(resp.into_body().into_reader(), MAX_BODY_BYTES)?;
        let json = serde_json::from_str(&text).map_err(|e| {
            SnowflakeError::retryable(format!(
                "unreadable response from {} (HTTP {status}): {e}",
                self.cfg.base_url
            ))
        })?;
        Ok((status, json))
    }

    fn handle_url(&self, handle: &str) -> Result<String, SnowflakeError> {
        if handle.is_empty()
            || !handle
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(SnowflakeError::new(
                ErrorClass::Permanent,
                format!("invalid statement handle '{handle}'"),
            ));
        }
        Ok(format!("{}/api/v2/statements/{handle}", self.cfg.base_url))
    }

    /// The URL to poll: Snowflake's `statementStatusUrl` when it points at the same server (a
    /// credential is never sent anywhere else), otherwise the handle's URL.
    fn status_url(&self, reply: &Value, handle: &str) -> Result<String, SnowflakeError> {
        match reply.get("statementStatusUrl").and_then(Value::as_str) {
            Some(path) if path.starts_with('/') => Ok(format!("{}{path}", self.cfg.base_url)),
            Some(url) if url.starts_with(&format!("{}/", self.cfg.base_url)) => Ok(url.to_string()),
            _ => self.handle_url(handle),
        }
    }
}

/// Reads a `TIMESTAMP_NTZ` value as the SQL API sends it (`jsonv2`: seconds since the epoch with a
/// nine-digit fraction, e.g. `1700000000.123000000`); text such as `2024-01-02 03:04:05[.fff]`
/// (from a `TO_VARCHAR` in the query) is accepted too.
pub fn timestamp_ntz(value: &str) -> Option<chrono::NaiveDateTime> {
    let v = value.trim();
    if let Some((secs, frac)) = v.split_once('.').or(Some((v, ""))) {
        if !secs.is_empty()
            && secs
                .trim_start_matches('-')
                .chars()
                .all(|c| c.is_ascii_digit())
            && frac.chars().all(|c| c.is_ascii_digit())
        {
            let s: i64 = secs.parse().ok()?;
            let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
            let nanos: u32 = digits.parse().ok()?;
            return chrono::DateTime::from_timestamp(s, nanos).map(|t| t.naive_utc());
        }
    }
    chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f").ok()
}

/// The first `requestId` of a planned statement: a UUID (version 4 layout) from the BLAKE3 hash of
/// its text and binds, so the same statement planned again (by another try of the same batch) is the
/// same request. The hash is a cryptographic one because the binds carry what applications wrote: a
/// statement crafted to share another's `requestId` would be taken by Snowflake for a retry of it.
pub fn request_id_of(statement: &Statement) -> Uuid {
    let mut h = blake3::Hasher::new();
    h.update(b"redis-writebehind statement\0");
    h.update(statement.sql.as_bytes());
    for b in &statement.binds {
        h.update(&[0u8]);
        h.update(b.sql_type().as_bytes());
        // The value as sent, without copying a batch's (large) text bind; an escaped text is
        // hashed in its escaped form, under a tag of its own.
        let fixed;
        let (tag, value) = match b {
            Bind::Text(text) => (1u8, Some(text.as_str())),
            Bind::Escaped(text) => (3u8, Some(text.as_escaped())),
            Bind::Fixed(n) => {
                fixed = n.to_string();
                (1u8, Some(fixed.as_str()))
            }
            Bind::Null => (2u8, None),
        };
        h.update(&[tag]);
        if let Some(v) = value {
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
    }
    let mut bytes = [0u8; 16];
    h.finalize_xof().fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn submit_url(base: &str, request_id: &Uuid, retry: bool) -> String {
    let retry = if retry { "&retry=true" } else { "" };
    format!("{base}/api/v2/statements?requestId={request_id}{retry}")
}

/// Reads a response body of at most `cap` bytes. A longer one is refused (permanent: the same
/// request would get the same answer) after reading one byte past the cap, never buffered whole.
fn read_body(reader: impl Read, cap: u64) -> Result<String, SnowflakeError> {
    let mut buf = Vec::new();
    reader
        .take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| {
            SnowflakeError::retryable(format!("connection lost while reading the response: {e}"))
        })?;
    if buf.len() as u64 > cap {
        return Err(SnowflakeError::new(
            ErrorClass::Permanent,
            format!("response body larger than {} KiB refused", cap / 1024),
        ));
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn handle_of(reply: &Value) -> Result<String, SnowflakeError> {
    reply
        .get("statementHandle")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| SnowflakeError::retryable("Snowflake answered without a statementHandle"))
}

fn unexpected_status(status: u16) -> SnowflakeError {
    SnowflakeError {
        class: ErrorClass::Retryable,
        http_status: Some(status),
        code: None,
        sql_state: None,
        message: format!("unexpected HTTP status {status}"),
        timed_out: false,
    }
}

fn cell(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn rows_of(reply: &Value) -> Vec<Vec<Option<String>>> {
    reply
        .get("data")
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    row.as_array()
                        .map(|cells| cells.iter().map(cell).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Parses a finished statement's reply (partition 0).
fn parse_result(reply: &Value) -> Result<QueryResult, SnowflakeError> {
    let statement_handle = handle_of(reply)?;
    let columns: Vec<String> = reply
        .pointer("/resultSetMetaData/rowType")
        .and_then(Value::as_array)
        .map(|cols| {
            cols.iter()
                .map(|c| {
                    c.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    let rows = rows_of(reply);
    let statement_handles = reply
        .get("statementHandles")
        .and_then(Value::as_array)
        .map(|hs| {
            hs.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let rows_affected = match reply.get("stats") {
        Some(stats) => Some(
            ["numRowsInserted", "numRowsUpdated", "numRowsDeleted"]
                .iter()
                .filter_map(|k| stats.get(*k).and_then(Value::as_u64))
                .sum(),
        ),
        None => dml_counts(&columns, &rows),
    };
    Ok(QueryResult {
        columns,
        rows,
        rows_affected,
        statement_handle,
        statement_handles,
    })
}

/// DML results without `stats` still name their counts: `number of rows inserted`, ...
fn dml_counts(columns: &[String], rows: &[Vec<Option<String>>]) -> Option<u64> {
    if columns.is_empty() || !columns.iter().all(|c| c.starts_with("number of ")) {
        return None;
    }
    let row = rows.first()?;
    Some(
        columns
            .iter()
            .zip(row)
            .filter(|(c, _)| !c.contains("multi-joined"))
            .filter_map(|(_, v)| v.as_deref()?.parse::<u64>().ok())
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::EscapedText;
    use serde_json::json;

    #[test]
    fn a_body_past_its_cap_is_refused_after_one_byte_more() {
        let small = read_body(std::io::repeat(b'a').take(1000), 1000).unwrap();
        assert_eq!(small.len(), 1000);
        // An endless body: without the cap this never returns.
        let e = read_body(std::io::repeat(b'a'), MAX_ERROR_BODY_BYTES).unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(e.message.contains("larger than 64 KiB"), "{e}");
        let e = read_body(
            std::io::repeat(b'a').take(MAX_BODY_BYTES + 1),
            MAX_BODY_BYTES,
        );
        assert_eq!(e.unwrap_err().class, ErrorClass::Permanent);
    }

    /// A configuration for `http://127.0.0.1:9` (where nothing listens) with the encrypted test key
    /// and `passphrase`; the key file lives as long as the returned handle.
    fn config_for_port_9(passphrase: &str) -> (tempfile::NamedTempFile, ClientConfig) {
        use std::io::Write;
        let mut key = tempfile::NamedTempFile::new().unwrap();
        key.write_all(include_bytes!("testdata/test_key_encrypted.p8"))
            .unwrap();
        let cfg = ClientConfig::new(
            "http://127.0.0.1:9",
            "acct",
            "writer",
            AuthConfig::KeyPair {
                private_key_path: key.path().to_path_buf(),
                passphrase: Some(passphrase.to_string()),
            },
        );
        (key, cfg)
    }

    #[test]
    fn the_key_passphrase_is_dropped_once_the_key_is_decoded() {
        let (_key, cfg) = config_for_port_9("test-passphrase");
        let client = Client::new(cfg).unwrap();
        assert!(matches!(
            &client.config().auth,
            AuthConfig::KeyPair {
                passphrase: None,
                ..
            }
        ));
        // A wrong passphrase is refused without being shown.
        let (_key, cfg) = config_for_port_9("hunter2-guess");
        let e = Client::new(cfg).err().unwrap();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn a_host_that_cannot_be_reached_is_looked_up_again() {
        let (_key, mut cfg) = config_for_port_9("test-passphrase");
        cfg.max_attempts = 1;
        let client = Client::new(cfg).unwrap();
        crate::snowflake::resolve::tests::resolve(&client.resolver, "http://127.0.0.1:9/").unwrap();
        assert_eq!(client.resolver.hosts_kept(), 1);
        let e = client.ping().expect_err("nothing listens");
        assert!(e.to_string().contains("cannot reach"), "{e}");
        assert_eq!(client.resolver.hosts_kept(), 0);
    }

    #[test]
    fn a_request_body_carries_the_statement_its_binds_and_the_session() {
        let (_key, mut cfg) = config_for_port_9("test-passphrase");
        cfg.database = Some("DB".into());
        let client = Client::new(cfg).unwrap();
        let bind = r#"[[{"title":"a \"quoted\" ünï\u0001"}]]"#;
        let mut escaped = EscapedText::default();
        escaped.push_str(bind);
        let body: Value = serde_json::from_str(&client.body(
            "MERGE ?",
            &[
                Bind::Text(bind.into()),
                Bind::Fixed(-3),
                Bind::Null,
                Bind::Escaped(escaped),
            ],
            None,
        ))
        .unwrap();
        assert_eq!(body["statement"], "MERGE ?");
        assert_eq!(body["database"], "DB");
        assert!(body.get("role").is_none() && body.get("parameters").is_none());
        assert!(body["timeout"].as_u64().is_some_and(|t| t >= 1));
        assert_eq!(
            body["bindings"],
            json!({
                "1": {"type": "TEXT", "value": bind},
                "2": {"type": "FIXED", "value": "-3"},
                "3": {"type": "TEXT", "value": null},
                "4": {"type": "TEXT", "value": bind},
            })
        );
        let multi: Value = serde_json::from_str(&client.body("BEGIN", &[], Some("2"))).unwrap();
        assert!(multi.get("bindings").is_none());
        assert_eq!(multi["parameters"], json!({"MULTI_STATEMENT_COUNT": "2"}));
    }

    #[test]
    fn client_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Client>();
    }

    #[test]
    fn resubmissions_reuse_the_request_id_with_retry_true() {
        let id = Uuid::new_v4();
        let first = submit_url("https://a.snowflakecomputing.com", &id, false);
        let again = submit_url("https://a.snowflakecomputing.com", &id, true);
        assert_eq!(
            first,
            format!("https://a.snowflakecomputing.com/api/v2/statements?requestId={id}")
        );
        assert_eq!(again, format!("{first}&retry=true"));
    }

    #[test]
    fn a_planned_statement_keeps_its_request_id_and_another_gets_another() {
        let st = |json: &str| Statement::new("MERGE x ?", vec![Bind::Text(json.into())]);
        let id = request_id_of(&st("[1]"));
        assert_eq!(id, request_id_of(&st("[1]")));
        assert_ne!(id, request_id_of(&st("[2]")));
        assert_ne!(
            id,
            request_id_of(&Statement::new("MERGE y ?", vec![Bind::Text("[1]".into())]))
        );
        assert_ne!(
            request_id_of(&Statement::new("S ?", vec![Bind::Null])),
            request_id_of(&Statement::new("S ?", vec![Bind::Text(String::new())]))
        );
        assert_eq!(id.get_version_num(), 4);
    }

    #[test]
    fn a_request_is_resent_after_an_unknown_outcome_and_renewed_after_a_failure() {
        let id = Uuid::new_v4();
        let mut r = Request::new(id);
        r.after(&Err::<(), _>(SnowflakeError::retryable("connection reset")));
        assert_eq!(r, Request { id, sent: true });
        r.after(&Err::<(), _>(SnowflakeError::from_response(503, "")));
        assert_eq!(r, Request { id, sent: true });
        let failed = SnowflakeError::from_response(
            422,
            r#"{"code":"000625","sqlState":"57014","message":"too many waiters"}"#,
        );
        r.after(&Err::<(), _>(failed));
        assert_ne!(r.id, id);
        assert!(!r.sent);
    }

    #[test]
    fn select_result_keeps_columns_rows_and_nulls() {
        let reply = json!({
            "statementHandle": "01b2-3",
            "resultSetMetaData": {"numRows": 2, "rowType": [{"name": "A"}, {"name": "B"}],
                                   "partitionInfo": [{"rowCount": 2}]},
            "data": [["1", null], ["2", "x"]],
        });
        let r = parse_result(&reply).unwrap();
        assert_eq!(r.columns, ["A", "B"]);
        assert_eq!(
            r.rows,
            vec![
                vec![Some("1".into()), None],
                vec![Some("2".into()), Some("x".into())]
            ]
        );
        assert_eq!(r.rows_affected, None);
        assert_eq!(r.get(1, "b"), Some("x"));
        assert_eq!(r.statement_handle, "01b2-3");
    }

    #[test]
    fn dml_rows_affected_come_from_stats_or_count_columns() {
        let with_stats = json!({"statementHandle": "h", "stats": {"numRowsInserted": 3, "numRowsUpdated": 2, "numRowsDeleted": 0}});
        assert_eq!(parse_result(&with_stats).unwrap().rows_affected, Some(5));
        let counts = json!({"statementHandle": "h",
            "resultSetMetaData": {"rowType": [{"name": "number of rows updated"}, {"name": "number of multi-joined rows updated"}]},
            "data": [["4", "4"]]});
        assert_eq!(parse_result(&counts).unwrap().rows_affected, Some(4));
    }

    #[test]
    fn timestamps_read_from_epoch_seconds_or_text() {
        let t = timestamp_ntz("1700000000.123000000").unwrap();
        assert_eq!(t.to_string(), "2023-11-14 22:13:20.123");
        assert_eq!(
            timestamp_ntz("1700000000").unwrap().to_string(),
            "2023-11-14 22:13:20"
        );
        assert_eq!(
            timestamp_ntz("2024-01-02 03:04:05").unwrap().to_string(),
            "2024-01-02 03:04:05"
        );
        assert_eq!(timestamp_ntz("yesterday"), None);
    }

    #[test]
    fn a_reply_without_handle_is_retryable() {
        assert!(parse_result(&json!({"data": []}))
            .unwrap_err()
            .is_retryable());
    }
}
