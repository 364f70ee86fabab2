//! The one table of settings, and the typed snapshot every other part reads.
//!
//! Each row names a setting once: its seed (environment) name, aliases, default, type and whether it
//! may change while the server runs. Everything else derives from this table: the module configs
//! `writebehind.<name>` registered in [`crate::host::config`], the environment defaults, validation errors,
//! `docs/configuration.md` and the tests. Adding a setting is one row here.
//!
//! Values are kept as an immutable [`Snapshot`] behind an `Arc`; a `CONFIG SET` builds a new snapshot
//! and swaps it in, so a worker thread holding the previous one never sees a half-applied change.
//!
//! Secrets (`SNOWFLAKE_TOKEN`, `SNOWFLAKE_PRIVATE_KEY_PASSPHRASE`) are *not* in this table: they are
//! read from the environment only (see [`secret_from_env`]) and never become module configs, because
//! `CONFIG GET` would show them.

use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;

/// How a value is checked and what it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0`/`1` (also `yes`/`no`, `true`/`false`, `on`/`off`).
    Bool,
    /// A whole number in `min..=max`.
    Int { min: i64, max: i64 },
    /// One of a fixed set of words (case-insensitive, stored upper-case).
    Choice(&'static [&'static str]),
    /// A Redis key or consumer name: non-empty, no whitespace or control characters.
    Name,
    /// A Snowflake identifier, optionally qualified (`DB.SCHEMA.TABLE`); see [`validate_identifier`].
    Identifier,
    /// An `http://` or `https://` base URL without `user:password@`, or empty for the account's
    /// default.
    Url,
    /// A Snowflake account identifier in one of the forms of [`crate::account::AccountForms`],
    /// or empty.
    Account,
    /// A comma-separated list; empty means none.
    List,
    /// A Linux CPU list (`1`, `1-3,6`), or empty; see [`cpu_list`].
    Cpus,
    /// Free text (may be empty).
    Text,
}

/// Whether a setting may change while the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `CONFIG SET` takes effect at once.
    Live,
    /// Set in redis.conf, `MODULE LOADEX ... CONFIG` or the environment; `CONFIG SET` is refused.
    Restart,
}

/// What a setting is for, so docs and status can group them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Stream,
    Rules,
    Pipeline,
    Snowflake,
    Restore,
    Mappings,
    Logging,
    /// Accepted for compatibility with the sidecar's environment and ignored inside Redis.
    Ignored,
}

/// One row of the table.
#[derive(Debug)]
pub struct Spec {
    /// The seed's environment name, e.g. `NEWER_RECORD_TIME_LIMIT_SECONDS`.
    pub name: &'static str,
    /// Other environment names that mean the same (weaker than `name`); each is also a module config.
    pub aliases: &'static [&'static str],
    pub default: &'static str,
    pub kind: Kind,
    pub change: Change,
    pub group: Group,
    pub doc: &'static str,
}

impl Spec {
    /// The module config name without the `writebehind.` prefix: lower-case, `_` becomes `-`.
    pub fn config_name(name: &str) -> String {
        name.to_ascii_lowercase().replace('_', "-")
    }

    /// The accepted values, in words, for error messages and docs.
    pub fn accepted(&self) -> String {
        match self.kind {
            Kind::Bool => "0 or 1".into(),
            Kind::Int { min, max } => format!("a whole number from {min} to {max}"),
            Kind::Choice(words) => format!("one of {}", words.join(", ")),
            Kind::Name => "a non-empty name without spaces".into(),
            Kind::Identifier => {
                "a Snowflake identifier (letters, digits, _ and $, not starting with a digit; optionally DB.SCHEMA.NAME)"
                    .into()
            }
            Kind::Url => "an http:// or https:// URL without user:password@, or empty".into(),
            Kind::Account => "a Snowflake account identifier (letters, digits, '_' and '-', e.g. myorg-myaccount, xy12345.us-east-1, myorg-myaccount.privatelink), or empty".into(),
            Kind::List => "a comma-separated list".into(),
            Kind::Cpus => format!(
                "a CPU list such as 1 or 1-3,6 (CPUs 0 to {}), or empty",
                MAX_CPU
            ),
            Kind::Text => "any text".into(),
        }
    }
}

macro_rules! settings {
    ($( $key:ident = $name:literal $([$($alias:literal),*])?, $default:literal, $kind:expr, $change:ident, $group:ident, $doc:literal; )*) => {
        /// Names a row of [`TABLE`]; `key as usize` is its index.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(clippy::upper_case_acronyms)]
        pub enum Key { $($key),* }

        /// Every setting, in the order of [`Key`].
        pub static TABLE: &[Spec] = &[
            $(Spec {
                name: $name,
                aliases: &[$($($alias),*)?],
                default: $default,
                kind: $kind,
                change: Change::$change,
                group: Group::$group,
                doc: $doc,
            }),*
        ];

        impl Key {
            /// Every key, in table order.
            pub const ALL: &'static [Key] = &[$(Key::$key),*];
        }
    };
}

const fn int(min: i64, max: i64) -> Kind {
    Kind::Int { min, max }
}
const DAY: i64 = 86_400;
const LOG_LEVELS: &[&str] = &["DEBUG", "INFO", "WARNING", "ERROR"];
const TOKEN_TYPES: &[&str] = &["PROGRAMMATIC_ACCESS_TOKEN", "OAUTH"];
/// How the userdata stream records what is written (`ACK_MODE`).
pub const ACK_MODES: &[&str] = &["XACK", "WRITTEN_GROUP"];

settings! {
    // --- stream and consumer group -----------------------------------------------------------------
    RedisStream = "REDIS_STREAM" ["STREAM"], "userdata-stream", Kind::Name, Restart, Stream,
        "Stream the application writes to; its dead-letter stream is `<stream>:dlq`.";
    StreamShards = "STREAM_SHARDS", "1", int(1, 256), Restart, Stream,
        "Number of shard streams: above 1 the application writes to `<stream>:{0}` ... `<stream>:{N-1}` (the shard of an entry is CRC-32 of its row id modulo N), and each node drains the ones whose slots it serves as a primary (see docs/operations.md, cluster).";
    Group = "GROUP" ["REDIS_GROUP"], "snowflake-writer", Kind::Name, Restart, Stream,
        "Consumer group the writer reads through (created at ID 0 with MKSTREAM when missing).";
    Consumer = "CONSUMER" ["REDIS_CONSUMER"], "consumer-1", Kind::Name, Restart, Stream,
        "Consumer name inside the group.";
    RedisDb = "REDIS_DB", "0", int(0, 15), Restart, Stream,
        "Database index the stream, dead-letter stream and marker keys live in.";
    FallbackJsonFields = "FALLBACK_JSON_FIELDS", "value,payload,data", Kind::List, Live, Rules,
        "Entry fields inspected for JSON, in order, after `value`.";
    ExtraBridgeKeys = "EXTRA_BRIDGE_KEYS", "", Kind::List, Live, Restore,
        "Patterns of legacy string keys (one batch JSON each) copied into the stream at start-up and by WB.IMPORT.";
    StreamFailoverToSnowflake = "STREAM_FAILOVER_TO_SNOWFLAKE", "0", Kind::Bool, Live, Pipeline,
        "When Redis cannot take an entry (e.g. maxmemory), WB.WRITE writes it straight to Snowflake and logs FAILOVER.";

    MappingsFile = "MAPPINGS_FILE", "", Kind::Text, Restart, Mappings,
        "YAML file of hash mappings (hashes under a key prefix written to a table; see docs/mappings.md); empty: none. A bad file stops the module from loading, with the file, line and reason.";

    // --- rules -------------------------------------------------------------------------------------
    AckInvalidJson = "ACK_INVALID_JSON", "0", Kind::Bool, Live, Rules,
        "Acknowledge undecodable entries without keeping a dead-letter copy.";
    AlwaysProcessStaleFirst = "ALWAYS_PROCESS_STALE_FIRST", "0", Kind::Bool, Live, Rules,
        "Write the first stale record of each batch anyway.";
    AutoQuoteLastplus = "AUTO_QUOTE_LASTPLUS", "0", Kind::Bool, Live, Rules,
        "Quote bare `lastplus` tokens and datetimes before parsing.";
    EnableFallbackRecordList = "ENABLE_FALLBACK_RECORD_LIST", "1", Kind::Bool, Live, Rules,
        "Treat a pure JSON list of tracked records as a batch.";
    EnableFallbackSingleRecord = "ENABLE_FALLBACK_SINGLE_RECORD", "1", Kind::Bool, Live, Rules,
        "Treat a lone tracked record as a single-record batch.";
    HashNullTrackId = "HASH_NULL_TRACK_ID", "0", Kind::Bool, Live, Rules,
        "Store a blank track_id as `auto_` + 12 hex digits of MD5(title|url|id) instead of ''.";
    KeyAppendPage = "KEY_APPEND_PAGE", "1", Kind::Bool, Live, Restore,
        "Append the page segment to restored visited keys (`/visited/<page>`).";
    KeyPrefix = "KEY_PREFIX", "userdata-events", Kind::Name, Live, Rules,
        "Prefix of batch keys (`<prefix>:<id>/visited`).";
    LenientJsonRepair = "LENIENT_JSON_REPAIR", "0", Kind::Bool, Live, Rules,
        "Close truncated JSON (braces, brackets, strings) before giving up on an entry.";
    MaxJsonRepairAppend = "MAX_JSON_REPAIR_APPEND", "10", int(0, 1000), Live, Rules,
        "Most characters the repair may append.";
    NewerRecordTimeLimitSeconds = "NEWER_RECORD_TIME_LIMIT_SECONDS", "30", int(0, 100 * 365 * DAY), Live, Rules,
        "Freshness window: a record whose lastplus is older than this, relative to the entry's ID time, is stale.";
    PreserveTrackTypeCase = "PRESERVE_TRACK_TYPE_CASE", "0", Kind::Bool, Live, Rules,
        "Keep track_type as sent instead of upper-casing it.";
    ProcessStaleSaved = "PROCESS_STALE_SAVED", "1", Kind::Bool, Live, Rules,
        "Write stale records under /saved keys (saves and deletes) anyway.";
    SkipFreshness = "SKIP_FRESHNESS", "0", Kind::Bool, Live, Rules,
        "Ignore the freshness window: write every record.";
    UsernameSplitHyphen = "USERNAME_SPLIT_HYPHEN", "1", Kind::Bool, Live, Rules,
        "Cut the derived username at its first hyphen.";
    UsernameUseRecordId = "USERNAME_USE_RECORD_ID", "0", Kind::Bool, Live, Rules,
        "Derive the username from the record id instead of the key's id segment.";

    // --- pipeline ----------------------------------------------------------------------------------
    DryRun = "DRY_RUN", "0", Kind::Bool, Restart, Pipeline,
        "Log SQL instead of executing it, reading through a separate dry-run group so the live position is kept.";
    AllowNoSnowflake = "ALLOW_NO_SNOWFLAKE", "0", Kind::Bool, Restart, Pipeline,
        "Run as DRY_RUN when the Snowflake settings are incomplete.";
    Workers = "WORKERS", "2", int(1, 64), Restart, Pipeline,
        "Worker threads committing batches; entries of one user always go to the same worker.";
    BatchMaxEntries = "BATCH_MAX_ENTRIES", "2000", int(1, 100_000), Live, Pipeline,
        "Most stream entries in one Snowflake round trip.";
    BatchMaxBytes = "BATCH_MAX_BYTES", "900000", int(1_024, 16_000_000), Live, Pipeline,
        "Most bytes of bound data in one statement (Snowflake advises staying under 1 MB).";
    BatchLingerMs = "BATCH_LINGER_MS", "50", int(0, 60_000), Live, Pipeline,
        "How long a worker waits for a batch to fill before committing what it has; a claimer that has caught up with the writes waits a tenth of it (at most 5 ms) before claiming again.";
    MaxInFlight = "MAX_IN_FLIGHT", "8000", int(1, 10_000_000), Live, Pipeline,
        "Most claimed, not yet acknowledged entries held by the module; bounds its memory.";
    AckMode = "ACK_MODE", "XACK", Kind::Choice(ACK_MODES), Restart, Pipeline,
        "How the stream records what is written. XACK: entries are read into the group's pending list (what XPENDING shows) and acknowledged once Snowflake has committed them. WRITTEN_GROUP: entries are read with NOACK and a second group, `<GROUP>-written`, is moved past each run of committed entries (XGROUP SETID, replicated); after a restart or a failover the entries after it are read again and change nothing; about a third of the Redis lock time per drained entry (docs/performance.md).";
    ClaimChunk = "CLAIM_CHUNK", "1000", int(1, 100_000), Live, Pipeline,
        "Most entries read per XREADGROUP call under the lock; the claimer reads fewer when a hold would last over about 1 ms or read over 1 MiB.";
    DrainMinRecordsPerSecond = "DRAIN_MIN_RECORDS_PER_SECOND", "1000", int(1, 10_000_000), Live, Pipeline,
        "While Redis's main thread is saturated the drain yields to it (WB.STATUS drain_mode yielding): it holds the lock only in the time the clients leave, but still claims at least this many stream entries per second, so the backlog keeps moving; at full speed otherwise. Set it to at least the sustained write rate for a backlog that cannot grow under load; a value above the drain's full rate turns yielding off.";
    ShutdownGraceMs = "SHUTDOWN_GRACE_MS", "5000", int(0, 600_000), Live, Pipeline,
        "On SHUTDOWN, how long in-flight batches get to commit; the rest stay pending.";
    BackgroundNice = "BACKGROUND_NICE", "10", int(0, 19), Restart, Pipeline,
        "Scheduling niceness of the module's threads: on a busy machine Redis's own thread runs first and the backlog waits.";
    BackgroundCpus = "BACKGROUND_CPUS", "", Kind::Cpus, Restart, Pipeline,
        "CPUs the module's threads run on (a CPU list, e.g. 1-3); empty: where Redis starts them. With Redis's server-cpulist keeping its main thread on other CPUs, the drain never delays a command by taking its CPU.";
    RetryMaxBackoffMs = "RETRY_MAX_BACKOFF_MS", "30000", int(10, 3_600_000), Live, Pipeline,
        "Cap of the exponential backoff between retries of a failing batch.";

    // --- Snowflake -----------------------------------------------------------------------------------
    SnowflakeAccount = "SNOWFLAKE_ACCOUNT", "", Kind::Account, Restart, Snowflake,
        "Account identifier, e.g. myorg-myaccount.";
    SnowflakeUser = "SNOWFLAKE_USER", "", Kind::Text, Restart, Snowflake,
        "User name.";
    SnowflakePrivateKeyPath = "SNOWFLAKE_PRIVATE_KEY_PATH", "", Kind::Text, Restart, Snowflake,
        "PKCS#8 PEM private key file for key-pair (JWT) auth; its passphrase comes from SNOWFLAKE_PRIVATE_KEY_PASSPHRASE in the environment.";
    SnowflakeTokenFile = "SNOWFLAKE_TOKEN_FILE", "", Kind::Text, Restart, Snowflake,
        "File holding a programmatic access token or OAuth token; re-read when it changes.";
    SnowflakeTokenType = "SNOWFLAKE_TOKEN_TYPE", "PROGRAMMATIC_ACCESS_TOKEN", Kind::Choice(TOKEN_TYPES), Restart, Snowflake,
        "Kind of bearer token given by SNOWFLAKE_TOKEN or SNOWFLAKE_TOKEN_FILE.";
    SnowflakeDatabase = "SNOWFLAKE_DATABASE", "", Kind::Text, Restart, Snowflake,
        "Session database.";
    SnowflakeSchema = "SNOWFLAKE_SCHEMA", "", Kind::Text, Restart, Snowflake,
        "Session schema.";
    SnowflakeWarehouse = "SNOWFLAKE_WAREHOUSE", "", Kind::Text, Restart, Snowflake,
        "Session warehouse.";
    SnowflakeRole = "SNOWFLAKE_ROLE", "", Kind::Text, Restart, Snowflake,
        "Session role.";
    SnowflakeUrl = "SNOWFLAKE_URL", "", Kind::Url, Restart, Snowflake,
        "Base URL; empty means https://<account>.snowflakecomputing.com.";
    SnowflakeTrackedTable = "SNOWFLAKE_TRACKED_TABLE", "TRACKED", Kind::Identifier, Restart, Snowflake,
        "Table of tracked items.";
    SnowflakeUserTable = "SNOWFLAKE_USER_TABLE", "USER", Kind::Identifier, Restart, Snowflake,
        "Table of users.";
    SnowflakeAutoReconnect = "SNOWFLAKE_AUTO_RECONNECT", "1", Kind::Bool, Restart, Snowflake,
        "Re-authenticate and retry when the token or JWT has expired.";
    SnowflakePingIntervalSeconds = "SNOWFLAKE_PING_INTERVAL_SECONDS", "300", int(0, DAY), Live, Snowflake,
        "Keep-alive round trip interval; 0 turns it off.";
    SnowflakeRequestTimeoutSeconds = "SNOWFLAKE_REQUEST_TIMEOUT_SECONDS", "120", int(1, DAY), Restart, Snowflake,
        "How long one statement may take, including polling (also its timeout in Snowflake); past it the statement is retried under the same requestId, which waits for it rather than running it twice.";
    ConfigMaxAttempts = "CONFIG_MAX_ATTEMPTS", "12", int(1, 1_000_000), Live, Snowflake,
        "Start-up connection attempts before the state shows the failure (the writer keeps retrying with backoff).";
    ConfigSleepSeconds = "CONFIG_SLEEP_SECONDS", "5", int(0, 3_600), Live, Snowflake,
        "Pause between start-up connection attempts.";
    VerboseSnowflakeTest = "VERBOSE_SNOWFLAKE_TEST", "0", Kind::Bool, Live, Snowflake,
        "Log the session context (user, role, warehouse, database, schema) on connect.";

    // --- restore -----------------------------------------------------------------------------------
    RestoreOnEmpty = "RESTORE_ON_EMPTY", "1", Kind::Bool, Live, Restore,
        "At start-up, seed an empty stream from Snowflake.";
    RestoreForce = "RESTORE_FORCE", "0", Kind::Bool, Live, Restore,
        "Restore even when the stream is not empty or the marker key exists.";
    RestoreDays = "RESTORE_DAYS", "7", int(1, 3_650), Live, Restore,
        "Look-back window of the restore, in days.";
    RestoreLimitTotal = "RESTORE_LIMIT_TOTAL", "2000", int(1, 10_000_000), Live, Restore,
        "Most rows queried and emitted by one restore.";
    RestoreBatchSize = "RESTORE_BATCH_SIZE", "100", int(1, 10_000), Live, Restore,
        "Records per restored stream entry.";
    RestoreIncludeSaved = "RESTORE_INCLUDE_SAVED", "1", Kind::Bool, Live, Restore,
        "Restore saved rows.";
    RestoreIncludeVisited = "RESTORE_INCLUDE_VISITED", "1", Kind::Bool, Live, Restore,
        "Restore visited rows.";
    RestoreLogSample = "RESTORE_LOG_SAMPLE", "5", int(0, 1_000), Live, Restore,
        "How many restored entries to mention in the log (sizes only, never contents).";
    RestoreMarkKey = "RESTORE_MARK_KEY", "_userdata_stream_restored", Kind::Name, Live, Restore,
        "Key set after a restore so it does not run again.";
    RestoreMinRowsTrigger = "RESTORE_MIN_ROWS_TRIGGER", "0", int(0, 10_000_000), Live, Restore,
        "Skip the restore when fewer rows than this qualify (unless forced); 0 turns the check off.";

    // --- logging -----------------------------------------------------------------------------------
    LogLevel = "LOG_LEVEL", "INFO", Kind::Choice(LOG_LEVELS), Live, Logging,
        "Least severe module log line written to the Redis log.";
    LogRaw = "LOG_RAW", "0", Kind::Bool, Live, Logging,
        "Log each raw stream entry as read.";
    LogSql = "LOG_SQL", "0", Kind::Bool, Live, Logging,
        "Log each SQL statement (values are bound, never in the text).";
    LogTrackedEach = "LOG_TRACKED_EACH", "0", Kind::Bool, Live, Logging,
        "Log every tracked record written (RECORD_EXEC).";
    LogTrackedHashGen = "LOG_TRACKED_HASH_GEN", "0", Kind::Bool, Live, Logging,
        "Log each generated auto_ track_id.";
    TraceSql = "TRACE_SQL", "0", Kind::Bool, Live, Logging,
        "Extra SQL trace lines (statement handles, timings, row counts).";
    TargetLogIds = "TARGET_LOG_IDS", "", Kind::List, Live, Logging,
        "Record ids or usernames whose processing is logged in detail.";
    ListStreamKeysOnStart = "LIST_STREAM_KEYS_ON_START", "0", Kind::Bool, Live, Logging,
        "Log the stream keys of the database at start-up.";
    MetricsIntervalSeconds = "METRICS_INTERVAL_SECONDS", "60", int(0, DAY), Live, Logging,
        "Interval of the metrics log line; 0 turns it off.";
    VerifyTrackedAfterWrite = "VERIFY_TRACKED_AFTER_WRITE", "0", Kind::Bool, Live, Logging,
        "After a write, read back sample rows and log them.";
    VerifyTrackedLimit = "VERIFY_TRACKED_LIMIT", "20", int(0, 10_000), Live, Logging,
        "Most rows read back by VERIFY_TRACKED_AFTER_WRITE.";

    // --- accepted and ignored inside Redis ---------------------------------------------------------
    RedisHost = "REDIS_HOST", "localhost", Kind::Text, Restart, Ignored,
        "Ignored: the module runs inside Redis.";
    RedisPort = "REDIS_PORT", "6379", int(0, 65_535), Restart, Ignored,
        "Ignored: the module runs inside Redis.";
    UnitTest = "UNIT_TEST", "0", Kind::Bool, Restart, Ignored,
        "Ignored: the sidecar's in-memory Redis stub has no meaning inside Redis.";
}

/// Environment-only secrets. They are never module configs, never logged and never shown.
pub const SECRET_ENV: &[&str] = &["SNOWFLAKE_TOKEN", "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"];

/// Reads a secret from the environment; empty counts as absent.
pub fn secret_from_env(name: &str) -> Option<String> {
    debug_assert!(SECRET_ENV.contains(&name));
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Key {
    pub fn spec(self) -> &'static Spec {
        &TABLE[self as usize]
    }

    /// Finds a key by its seed name or any alias (case-insensitive, `-` and `_` alike).
    pub fn by_name(name: &str) -> Option<Key> {
        let wanted = name.to_ascii_uppercase().replace('-', "_");
        Key::ALL.iter().copied().find(|k| {
            let s = k.spec();
            s.name == wanted || s.aliases.contains(&wanted.as_str())
        })
    }
}

/// A checked value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<String>),
}

/// Why a value was refused; its `Display` is the error line `CONFIG SET` returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value '{shown}' for {setting}: expected {accepted}")]
pub struct InvalidValue {
    pub setting: String,
    pub shown: String,
    pub accepted: String,
}

/// When `url` carries `user:password@` in its authority: the URL with that part replaced, for an
/// error that names the problem without the secret.
fn url_userinfo(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..end].rfind('@')?;
    Some(format!("{scheme}://<user:password removed>{}", &rest[at..]))
}

/// Checks `raw` against the setting's kind.
pub fn parse(key: Key, raw: &str) -> Result<Value, InvalidValue> {
    let spec = key.spec();
    let bad = || InvalidValue {
        setting: format!("writebehind.{}", Spec::config_name(spec.name)),
        shown: raw.chars().take(64).collect(),
        accepted: spec.accepted(),
    };
    let trimmed = raw.trim();
    match spec.kind {
        Kind::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "1" | "yes" | "true" | "on" => Ok(Value::Bool(true)),
            "0" | "no" | "false" | "off" => Ok(Value::Bool(false)),
            _ => Err(bad()),
        },
        Kind::Int { min, max } => match trimmed.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Value::Int(n)),
            _ => Err(bad()),
        },
        Kind::Choice(words) => {
            let up = trimmed.to_ascii_uppercase();
            if words.contains(&up.as_str()) {
                Ok(Value::Str(up))
            } else {
                Err(bad())
            }
        }
        Kind::Name => {
            if !raw.is_empty() && !raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Ok(Value::Str(raw.to_string()))
            } else {
                Err(bad())
            }
        }
        Kind::Identifier => validate_identifier(trimmed)
            .map(|_| Value::Str(trimmed.to_string()))
            .map_err(|_| bad()),
        Kind::Url if url_userinfo(trimmed).is_some() => Err(InvalidValue {
            // The value is never shown: what precedes the `@` is a credential.
            shown: url_userinfo(trimmed).unwrap_or_default(),
            ..bad()
        }),
        Kind::Account => crate::account::validate_account(trimmed)
            .map(|_| Value::Str(trimmed.to_string()))
            .map_err(|_| bad()),
        Kind::Url => {
            let ok = trimmed.is_empty()
                || ((trimmed.starts_with("http://") || trimmed.starts_with("https://"))
                    && !trimmed.chars().any(|c| c.is_whitespace() || c.is_control()));
            if ok {
                Ok(Value::Str(trimmed.trim_end_matches('/').to_string()))
            } else {
                Err(bad())
            }
        }
        Kind::List => Ok(Value::List(
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        )),
        Kind::Cpus => cpu_list(trimmed)
            .map(|_| Value::Str(trimmed.to_string()))
            .map_err(|_| bad()),
        Kind::Text => {
            if raw.chars().any(|c| c.is_control()) {
                Err(bad())
            } else {
                Ok(Value::Str(trimmed.to_string()))
            }
        }
    }
}

/// The highest CPU number a [`Kind::Cpus`] list may name (Linux's default `CPU_SETSIZE` less one).
pub const MAX_CPU: usize = 1023;

/// The CPUs of a Linux CPU list, as `taskset -c` and Redis's `server-cpulist` take it: numbers and
/// ranges (`1`, `0-3`, `1,4-5`), each from 0 to [`MAX_CPU`], a range's first no higher than its last.
/// Sorted, without repeats; empty for an empty list.
pub fn cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let number = |t: &str| -> Result<usize, String> {
        let t = t.trim();
        match t.parse::<usize>() {
            Ok(n) if n <= MAX_CPU && t.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(format!("'{t}' is not a CPU number from 0 to {MAX_CPU}")),
        }
    };
    let mut cpus = Vec::new();
    if text.trim().is_empty() {
        return Ok(cpus);
    }
    for part in text.split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (number(first)?, number(last)?);
                if first > last {
                    return Err(format!("the range {first}-{last} runs backwards"));
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(number(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Checks a Snowflake object name from config: one to three dot-separated parts, each an unquoted
/// identifier (`[A-Za-z_][A-Za-z0-9_$]*`, at most 255 characters). Quoting is left to the SQL builder,
/// so no configured text can ever change the meaning of a statement.
pub fn validate_identifier(name: &str) -> Result<Vec<&str>, String> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return Err(format!(
            "'{name}' must be NAME, SCHEMA.NAME or DB.SCHEMA.NAME"
        ));
    }
    for p in &parts {
        let mut chars = p.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        if !first_ok || !rest_ok || p.len() > 255 {
            return Err(format!("'{p}' is not a valid Snowflake identifier"));
        }
    }
    Ok(parts)
}

/// The canonical text of a value, as `CONFIG GET` shows it.
pub fn render(value: &Value) -> String {
    match value {
        Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Str(s) => s.clone(),
        Value::List(items) => items.join(","),
    }
}

/// All values at one moment. Cheap to clone through its `Arc`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    values: Vec<Value>,
}

impl Snapshot {
    /// Every setting at its table default.
    pub fn defaults() -> Snapshot {
        let values = Key::ALL
            .iter()
            // Every default parses (pinned by a unit test); the fallback only keeps this panic-free.
            .map(|&k| {
                parse(k, k.spec().default).unwrap_or_else(|_| Value::Str(k.spec().default.into()))
            })
            .collect();
        Snapshot { values }
    }

    pub fn get(&self, key: Key) -> &Value {
        &self.values[key as usize]
    }

    pub fn bool(&self, key: Key) -> bool {
        matches!(self.get(key), Value::Bool(true))
    }

    pub fn int(&self, key: Key) -> i64 {
        match self.get(key) {
            Value::Int(n) => *n,
            _ => 0,
        }
    }

    /// Non-negative integers as `u64` (every `Int` row has `min >= 0`).
    pub fn uint(&self, key: Key) -> u64 {
        u64::try_from(self.int(key)).unwrap_or(0)
    }

    pub fn str(&self, key: Key) -> &str {
        match self.get(key) {
            Value::Str(s) => s,
            _ => "",
        }
    }

    pub fn list(&self, key: Key) -> &[String] {
        match self.get(key) {
            Value::List(items) => items,
            _ => &[],
        }
    }

    pub fn with(&self, key: Key, value: Value) -> Snapshot {
        let mut next = self.clone();
        next.values[key as usize] = value;
        next
    }

    /// Whether enough is set to reach Snowflake: an account or URL, a user, and a key or a token.
    pub fn snowflake_configured(&self) -> bool {
        let has_target =
            !self.str(Key::SnowflakeAccount).is_empty() || !self.str(Key::SnowflakeUrl).is_empty();
        let has_auth = !self.str(Key::SnowflakePrivateKeyPath).is_empty()
            || !self.str(Key::SnowflakeTokenFile).is_empty()
            || secret_from_env("SNOWFLAKE_TOKEN").is_some();
        has_target && !self.str(Key::SnowflakeUser).is_empty() && has_auth
    }
}

/// Where a setting's initial value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    Env(&'static str),
}

/// The initial text of a setting: the environment under its seed name, then its aliases, then the
/// default. An invalid environment value is reported (the caller logs it) and the default is used, so
/// a typo in a Kubernetes manifest never keeps Redis from starting.
pub fn initial(
    key: Key,
    env: &dyn Fn(&str) -> Option<String>,
) -> (String, Origin, Option<InvalidValue>) {
    let spec = key.spec();
    for name in std::iter::once(&spec.name).chain(spec.aliases.iter()) {
        if let Some(raw) = env(name) {
            return match parse(key, &raw) {
                Ok(v) => (render(&v), Origin::Env(name), None),
                Err(e) => (spec.default.to_string(), Origin::Default, Some(e)),
            };
        }
    }
    (spec.default.to_string(), Origin::Default, None)
}

static CURRENT: RwLock<Option<Arc<Snapshot>>> = RwLock::new(None);

/// The values in force now (the defaults before the module has loaded its configs).
pub fn current() -> Arc<Snapshot> {
    if let Some(s) = CURRENT.read().as_ref() {
        return Arc::clone(s);
    }
    let mut slot = CURRENT.write();
    Arc::clone(slot.get_or_insert_with(|| Arc::new(Snapshot::defaults())))
}

/// Replaces one value; called on the main thread by the config setter.
pub fn store(key: Key, value: Value) {
    let next = current().with(key, value);
    *CURRENT.write() = Some(Arc::new(next));
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.spec().name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_default_is_valid() {
        for &k in Key::ALL {
            assert!(parse(k, k.spec().default).is_ok(), "{k}");
        }
    }

    #[test]
    fn names_and_aliases_are_unique() {
        let mut seen = HashSet::new();
        for s in TABLE {
            for n in std::iter::once(&s.name).chain(s.aliases) {
                assert!(seen.insert(*n), "{n} appears twice");
            }
        }
    }

    #[test]
    fn cpu_lists_read_as_taskset_reads_them() {
        assert_eq!(cpu_list(""), Ok(vec![]));
        assert_eq!(cpu_list("1"), Ok(vec![1]));
        assert_eq!(cpu_list("3,0-2, 2"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(cpu_list("1023"), Ok(vec![1023]));
        for bad in ["1024", "3-1", "-1", "1-", "a", "1,,2", "+1", " - ", "0x1"] {
            assert!(cpu_list(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse(Key::BackgroundCpus, " 1-3 "),
            Ok(Value::Str("1-3".into()))
        );
        let err = parse(Key::BackgroundCpus, "2-1").unwrap_err().to_string();
        assert!(
            err.contains("writebehind.background-cpus") && err.contains("CPU list"),
            "{err}"
        );
    }

    #[test]
    fn config_name_is_lower_case_with_dashes() {
        assert_eq!(
            Spec::config_name("NEWER_RECORD_TIME_LIMIT_SECONDS"),
            "newer-record-time-limit-seconds"
        );
    }

    #[test]
    fn a_url_with_credentials_is_refused_without_showing_them() {
        for raw in [
            "https://svc:hunter2@myorg-acct.snowflakecomputing.com",
            "http://hunter2@127.0.0.1:8080/api",
        ] {
            let e = parse(Key::SnowflakeUrl, raw).unwrap_err();
            let line = e.to_string();
            assert!(!line.contains("hunter2"), "{line}");
            assert!(line.contains("without user:password@"), "{line}");
            assert!(line.contains("<user:password removed>@"), "{line}");
        }
        // An `@` after the host (in a path or query) is no credential.
        assert!(parse(Key::SnowflakeUrl, "http://127.0.0.1:8080/a@b").is_ok());
        assert!(parse(
            Key::SnowflakeUrl,
            "https://myorg-acct.snowflakecomputing.com"
        )
        .is_ok());
    }

    #[test]
    fn an_account_outside_snowflakes_forms_is_refused() {
        for good in [
            "",
            "xy12345",
            "myorg-my_account",
            "myorg.myaccount",
            "xy12345.us-east-2.aws",
            "xy12345.us-east-1.privatelink",
            "myorg-myaccount.privatelink",
            "myorg-myaccount-abcd1234.global",
            "xy12345.cn-north-1.aws",
            "ACME-TEST",
        ] {
            assert!(parse(Key::SnowflakeAccount, good).is_ok(), "{good}");
        }
        for bad in [
            "myorg-acct.snowflakecomputing.com",
            "https://myorg-acct",
            "acct/../../x",
            "acct@evil.example",
            "acct:443",
            "acct name",
            "-acct",
            "acct-",
            "acct..us-east-1",
            "acct.",
            ".acct",
            "acct.us-east-1.oracle",
            "my-org.account",
            "acct\u{0}",
            "äcct",
        ] {
            let e = parse(Key::SnowflakeAccount, bad).unwrap_err();
            assert!(e.to_string().contains("account identifier"), "{bad}: {e}");
        }
    }

    #[test]
    fn negative_days_are_refused_with_the_range() {
        let e = parse(Key::RestoreDays, "-3").unwrap_err();
        assert_eq!(e.setting, "writebehind.restore-days");
        assert!(e.to_string().contains("from 1 to 3650"), "{e}");
    }

    #[test]
    fn text_for_a_number_is_refused() {
        assert!(parse(Key::NewerRecordTimeLimitSeconds, "abc").is_err());
        assert_eq!(
            parse(Key::NewerRecordTimeLimitSeconds, " 45 "),
            Ok(Value::Int(45))
        );
    }

    #[test]
    fn booleans_accept_the_usual_spellings() {
        for t in ["1", "yes", "TRUE", "on"] {
            assert_eq!(parse(Key::DryRun, t), Ok(Value::Bool(true)), "{t}");
        }
        for f in ["0", "no", "false", "OFF"] {
            assert_eq!(parse(Key::DryRun, f), Ok(Value::Bool(false)), "{f}");
        }
        assert!(parse(Key::DryRun, "2").is_err());
    }

    #[test]
    fn identifiers_refuse_sql() {
        assert!(validate_identifier("TRACKED").is_ok());
        assert!(validate_identifier("db.sch.TRACKED_2$").is_ok());
        for bad in [
            "",
            "1abc",
            "a b",
            "x;DROP TABLE y",
            "\"q\"",
            "a.b.c.d",
            "a..b",
        ] {
            assert!(validate_identifier(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_beats_default_and_seed_name_beats_alias() {
        let env = |n: &str| match n {
            "STREAM" => Some("from-alias".to_string()),
            "REDIS_STREAM" => Some("from-name".to_string()),
            _ => None,
        };
        let (v, origin, err) = initial(Key::RedisStream, &env);
        assert_eq!(
            (v.as_str(), origin, err),
            ("from-name", Origin::Env("REDIS_STREAM"), None)
        );
        let only_alias = |n: &str| (n == "REDIS_GROUP").then(|| "g2".to_string());
        assert_eq!(initial(Key::Group, &only_alias).0, "g2");
    }

    #[test]
    fn invalid_env_falls_back_to_default_and_is_reported() {
        let env = |n: &str| (n == "RESTORE_DAYS").then(|| "-3".to_string());
        let (v, origin, err) = initial(Key::RestoreDays, &env);
        assert_eq!((v.as_str(), origin), ("7", Origin::Default));
        assert!(err.is_some());
    }

    #[test]
    fn by_name_finds_aliases_and_config_spellings() {
        assert_eq!(Key::by_name("stream"), Some(Key::RedisStream));
        assert_eq!(Key::by_name("restore-days"), Some(Key::RestoreDays));
        assert_eq!(Key::by_name("nope"), None);
    }

    #[test]
    fn snapshot_accessors_read_typed_values() {
        let s = Snapshot::defaults();
        assert_eq!(s.str(Key::RedisStream), "userdata-stream");
        assert_eq!(s.int(Key::NewerRecordTimeLimitSeconds), 30);
        assert!(s.bool(Key::ProcessStaleSaved));
        assert_eq!(
            s.list(Key::FallbackJsonFields),
            ["value", "payload", "data"]
        );
        assert!(!s.snowflake_configured());
    }
}
