//! DoLake: a change-data-capture sink for Cloudflare Durable Objects.
//!
//! DoSQL shards stream CDC batches over hibernatable WebSockets; DoLake stores
//! each batch durably before acknowledging it, then flushes buffered events to
//! Parquet files and Apache Iceberg v2 tables in R2.
//!
//! The crate is split into a deterministic, sans-IO core that builds and tests
//! natively, and a thin Durable Object adapter that only exists on `wasm32`:
//!
//! - [`admission`]: rate limits, connection limits, authentication.
//! - [`config`]: the `DOLAKE_CONFIG` options, their defaults and validation.
//! - [`protocol`]: the JSON wire protocol (messages, decoding, encoding).
//! - [`intake`]: admission of CDC batches: dedup, buffer accounting, acks,
//!   and the stored form of a batch.
//! - [`session`]: the message pipeline: a frame, an HTTP ingest body or an
//!   upgrade in, what to send, store, log and close out; `/status` and
//!   `/metrics` views.
//! - [`lake`]: Parquet encoding and Iceberg metadata for a commit.
//! - [`flush`]: when to flush, the flush procedure and table maintenance.
//! - [`catalog`]: the Iceberg REST catalog (read side).
//! - [`metrics`]: the Prometheus text exposition.
//! - `task`: running a handler at once when it need not wait.
//! - `adapter` (wasm32 only): the Worker entry point and the `DoLake` Durable
//!   Object, which performs what the core decides (sockets, storage, R2, alarms).
//!
//! Errors of every layer are [`error::Error`], whose kind maps to a `nack`
//! reason or an HTTP status at the edge.

pub mod admission;
pub mod catalog;
pub mod config;
pub mod error;
pub mod flush;
pub mod intake;
pub mod lake;
pub mod metrics;
pub mod protocol;
pub mod session;
#[cfg(any(target_arch = "wasm32", test))]
pub(crate) mod task;

#[cfg(target_arch = "wasm32")]
mod adapter;

pub use error::{Error, ErrorKind, Result};
