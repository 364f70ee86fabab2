//! Hash write-behind: hashes under a key prefix mapped to a Snowflake table (the rgsync role).
//!
//! # Layout
//! - [`file`]: the mappings file, validated at load.
//! - [`op`]: rgsync's `#` field: what a change asks for (replicate or not, delete, acknowledge).
//! - [`column`]: column types as Snowflake describes them, and each hash value converted to one.
//! - [`capture`]: what a change to a mapped hash sets in motion (capture, `#`, write-through).
//! - [`change`]: one captured change, as the mapping's capture stream keeps it.
//! - [`crate::sql::mapping_plan`]: a batch of changes converted, coalesced per row, into MERGE
//!   statements ([`crate::sql::mapping`]).

pub mod capture;
pub mod change;
pub mod column;
pub mod file;
pub mod op;

pub use file::{FieldColumn, FileError, Mapping, Mappings};
