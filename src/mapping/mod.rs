//! Hash write-behind: hashes under a key prefix mapped to a Snowflake table (the rgsync role).
//!
//! # Layout
//! - [`file`]: the mappings file, validated at load.
//! - [`op`]: rgsync's `#` field: what a change asks for (replicate or not, delete, acknowledge).
//! - [`column`]: column types as Snowflake describes them, and each hash value converted to one.

pub mod column;
pub mod file;
pub mod op;

pub use file::{FieldColumn, FileError, Mapping, Mappings};
