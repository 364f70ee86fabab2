//! `wb-migrate`: loads the user data of the old deployment's Redis dump files (RDB) into Snowflake.
//!
//! The tool serves the cut-over: history kept in Redis before the module existed (legacy string-key
//! batches of the Redis 6 design, and stream entries of the Redis 8 sidecar design) goes to Snowflake
//! through the same rules as the module — [`crate::entry::decode()`] for every entry,
//! [`crate::sql::plan`] for its rows — so a migrated record lands exactly as the module would have
//! written it, and re-running the tool, or the module later seeing the same stream entries, never
//! counts a visit twice.
//!
//! # Layout
//! - [`dump`]: the RDB header (format version, creation time); refuses files that are not dumps.
//! - [`source`]: a temporary `redis-server` on a copy of a dump; legacy keys and stream entries in
//!   bounded steps.
//! - [`ids`]: deterministic entry IDs for legacy string keys.
//! - [`stage`]: the staging table and the statements that fill it, merge it and drop it.
//! - [`run`](mod@run): the whole migration; [`summary`]: what it read, wrote and skipped.
//!
//! # Reading the dump: a temporary `redis-server` 8, not an RDB parser crate
//! The old deployment wrote Redis 6 dumps (RDB 9: ziplist/intset encodings, strings) and then Redis 8
//! dumps (RDB 12: listpacks, streams with consumer groups). `redis-server` 8 loads every RDB version
//! up to its own, checks the CRC, and is the reference implementation of every encoding. The crates
//! on crates.io that parse RDB either stop before streams or skip them (`rdb` 0.4 walks stream
//! objects without decoding them), so a crate would need its own stream decoder that has to follow
//! every new listpack revision. The cost of the server: a Redis 8 binary (`scripts/redis8`, or
//! `--redis-server PATH`) and memory for one dump at a time. The server runs on a copy of the file
//! in a private directory, bound to 127.0.0.1 on a free port, with persistence off, and is killed by
//! its PID when the dump has been read. One limit: a dump holding data of a module that is not
//! loaded (e.g. RedisGears' auxiliary data) is refused by Redis; the tool then stops with Redis's own
//! reason.
//!
//! # Writing: a staging table, then one MERGE per table
//! The SQL API runs each request in its own session (a `TEMPORARY` table would vanish after the
//! request that made it) and accepts no binds in multi-statement requests. So the tool:
//! 1. creates a uniquely named `TRANSIENT` table `WB_MIGRATE_<utc time>_<random>` beside TRACKED
//!    (transient: no fail-safe storage for scratch data);
//! 2. fills it with bound `INSERT ... SELECT f.value FROM ... LATERAL FLATTEN(PARSE_JSON(?))`, one JSON
//!    array per statement, cut under `BATCH_MAX_BYTES` — the very links the module's MERGEs read
//!    ([`crate::sql::links_json`]), folded from all the dumps' entries at once, since one MERGE
//!    applies them (the decoded entries are held in memory until then: about the size of the
//!    records themselves);
//! 3. runs the module's own TRACKED and USER MERGEs once each, with the staging table in place of the
//!    JSON bind ([`stage::Stage::merge`]), so effectively-once (`last_entry_id`), per-row
//!    aggregation and event order are the module's, not a second copy;
//! 4. drops the table (also after a failure; a killed run leaves a `WB_MIGRATE_*` table to drop).
//!
//! Why not send [`crate::sql::plan`]'s MERGEs directly: they would be about as many requests for
//! 10,000 records, but each MERGE reads the target table, so a large dump would pay one target scan
//! per megabyte of input; with the stage it is one per table whatever the dump's size, and each
//! table's change is a single atomic statement — an interrupted run changes nothing until its MERGEs.
//!
//! # Entry IDs
//! Stream entries keep their real IDs, so the module and the tool agree on what was applied.
//! Legacy string keys have none; [`ids::legacy_id`] derives one from the batch itself: the newest
//! record time as the clock part (the batch cannot have been written before it, and it places the
//! batch in time among the others) and 64 bits of MD5 of the key name and value as the sequence. The
//! same key with the same value gives the same ID in any dump, any run, any key order, so a re-run or
//! a key present in two dumps is applied once; a key whose value changed between dumps is a different
//! batch. The same choice decides freshness: a legacy record is stale when it is older than the newest
//! record of its batch by more than the window — the module's rule with "received" read as "written
//! with its newest record" (`SKIP_FRESHNESS=1` loads every record).

pub mod dump;
pub mod ids;
pub mod run;
pub mod source;
pub mod summary;

/// The staging table lives with the other statement texts, in `src/sql/`.
pub use crate::sql::stage;
pub use run::{run, Options, Progress};
pub use summary::Summary;

/// Why a migration stopped. Its `Display` is the one line the tool prints.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{path}: {reason}")]
    Dump { path: String, reason: String },
    #[error("redis-server: {0}")]
    Server(String),
    #[error("reading {what}: {reason}")]
    Read { what: String, reason: String },
    #[error("settings: {0}")]
    Settings(String),
    #[error("Snowflake: {0}")]
    Snowflake(String),
}
