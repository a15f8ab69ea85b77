//! Parquet data files and Iceberg v2 metadata for one commit (see issue 3).
//!
//! A deterministic, sans-IO core: [`plan_commit`] takes the CDC events of one
//! table, the table's current state (or none) and the ids of the commit (a
//! snapshot id, a uuid for file names, the time) and returns the objects to
//! put, in order, plus the table's new state. The flush pipeline performs the
//! puts; it reads a table back with [`TableState::from_objects`] and learns
//! what is already committed with [`committed_watermarks`].
//!
//! - [`changelog`]: the changelog table's columns, type inference, schema
//!   evolution, and the overflow column for values that fit no column.
//! - [`parquet`]: Parquet encoding into memory, files of bounded size.
//! - [`stats`]: column statistics and the spec's binary encoding of bounds.
//! - [`avro`]: manifests and manifest lists (Avro, spec field ids).
//! - [`metadata`]: `metadata.json` as types; parsing and writing.
//! - [`table`]: object keys of a table, name validation, loading its state.
//! - [`commit`]: planning a commit; snapshot summaries and watermarks.
//! - [`expire`]: snapshot expiry, which keeps a table's metadata bounded.
//! - [`manifest`]: manifest entries (added, existing, deleted) and their reader.
//! - [`current`]: current-state tables: the last image of every row key,
//!   merge-on-read with position deletes (one delete file per data file).
//! - [`rewrite`]: `replace` snapshots: manifest merging and compaction
//!   commits, which never change rows.
//! - [`limits`]: what the lake can write: [`check_event`], the rule intake
//!   applies to every event before acknowledging it, and the bounds on a
//!   table's width the writer keeps by itself.
//! - [`rejected`]: the dead-letter table [`REJECTED_TABLE`], where a flush
//!   puts the events it cannot write ([`plan_rejected_commit`]).
//!
//! Nothing here reads a clock, draws random numbers, spawns threads or
//! touches a file system, so the same code runs natively and in WASM.

pub mod avro;
pub mod changelog;
pub mod commit;
pub mod compact;
pub mod current;
pub mod expire;
pub mod limits;
pub mod manifest;
pub mod metadata;
pub mod parquet;
pub mod rejected;
pub mod rewrite;
pub mod stats;
pub mod table;

pub use avro::{read_manifest_list, ManifestFile};
pub use changelog::{ChangeEvent, Op};
pub use commit::WATERMARKS_PROPERTY;
pub use commit::{
    committed_watermarks, plan_commit, plan_commit_with_marks, Commit, CommitIds, ObjectKind,
    PutObject, Watermark, WriteOptions,
};
pub use commit::{TableKind, CDC_TABLE_PROPERTY, TABLE_KIND_PROPERTY};
pub use expire::{plan_expire, ExpirePolicy, Expiry};
pub use limits::{check_change_event, check_event, check_metadata};
pub use manifest::{read_manifest, EntryStatus, ManifestEntry};
pub use metadata::{parse_version_hint, TableMetadata};
pub use rejected::{plan_rejected_commit, RejectedEvent, REJECTED_TABLE};
pub use rewrite::{plan_replace, MergePolicy, Replace, ReplaceKind};
pub use table::{validate_key_segment, validate_name, TablePaths, TableState};

#[cfg(test)]
mod expire_tests;
#[cfg(test)]
mod tests;
