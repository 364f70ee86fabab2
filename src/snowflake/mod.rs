//! The one place that talks to Snowflake: its public SQL API v2 over HTTPS.
//!
//! The pipeline hands a [`Statement`](crate::statement::Statement) (SQL with `?` binds) to a shared
//! [`Client`] and gets back a [`QueryResult`] or a classified [`SnowflakeError`]; how credentials are
//! made, how requests are retried without running twice, how long statements are polled and how
//! large results are paged stays in here.
//!
//! - [`config`]: [`ClientConfig`], built from the settings or directly.
//! - [`auth`]: key-pair JWTs and bearer tokens (with file rotation).
//! - [`client`]: submit, poll, cancel, read partitions; `ping` for `WB.PING`.
//! - [`retry`]: backoff with jitter within a deadline.
//! - [`resolve`]: each host's addresses looked up once a minute, not per request.
//! - [`error`]: [`SnowflakeError`] and its [`ErrorClass`].

pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod resolve;
pub mod retry;

pub use client::{timestamp_ntz, Client, EachPartition, Partition, QueryResult, SessionContext};
pub use config::{AccountForms, AuthConfig, ClientConfig, ConfigError, TokenSource, TokenType};
pub use error::{ErrorClass, SnowflakeError};
