//! What the flush procedure needs from the outside world, as small traits:
//! the durable buffer, the object store, and the row index of the
//! current-state tables. The Durable Object
//! implements them over SQLite and R2; native tests implement them in memory
//! (see `memory`), with failures injected at every step.

use std::collections::{BTreeMap, HashMap};

use roaring::RoaringBitmap;

use crate::error::Result;
use crate::intake::BufferTotals;
use crate::lake::current::{IndexChange, RowLoc};

use super::faults::CommitStep;
use super::{BufferedBatch, LoadedBatch};

/// The durable buffer of acked batches, as the flush sees it.
pub trait Buffer {
    /// The oldest buffered batches (row id and size), at most `limit`.
    fn list(&self, limit: u32) -> Result<Vec<BufferedBatch>>;
    /// The batches with row ids in `first..=last`, with their events.
    fn load(&self, first: i64, last: i64) -> Result<Vec<LoadedBatch>>;
    /// Removes the batches with row ids up to `last` (committed everywhere).
    fn delete_through(&self, last: i64) -> Result<()>;
    /// The buffer's totals as stored.
    fn totals(&self) -> Result<BufferTotals>;
}

/// The outcome of a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The object was written.
    Stored,
    /// A conditional put found the key taken (another writer committed).
    Exists,
}

/// An object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Key relative to the lake's base path.
    pub key: String,
    /// When it was written, Unix ms.
    pub uploaded_ms: i64,
}

/// A part of a multipart upload, as the store acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// 1-based part number.
    pub number: u16,
    /// The store's tag for the part.
    pub etag: String,
}

/// An object store with conditional put (R2), keys relative to the lake's
/// base path.
#[allow(async_fn_in_trait)] // Single-threaded (WASM and the native fakes): no Send bound wanted.
pub trait ObjectStore {
    /// The object's bytes, `None` when absent.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Whether the object exists.
    async fn exists(&self, key: &str) -> Result<bool>;
    /// Writes the object; with `if_absent`, only when no object has the key.
    async fn put(&self, key: &str, bytes: Vec<u8>, if_absent: bool) -> Result<Put>;
    /// Deletes the object (absent is fine).
    async fn delete(&self, key: &str) -> Result<()>;
    /// Every object whose key starts with `prefix`, with its upload time.
    async fn list(&self, prefix: &str) -> Result<Vec<Listed>>;
    /// Starts a multipart upload of `key`; its upload id.
    async fn multipart_start(&self, key: &str) -> Result<String>;
    /// Uploads part `number` (1-based; every part but the last at least
    /// 5 MiB on R2).
    async fn multipart_part(
        &self,
        key: &str,
        upload: &str,
        number: u16,
        bytes: Vec<u8>,
    ) -> Result<Part>;
    /// Completes the upload: the object is the parts in order.
    async fn multipart_complete(&self, key: &str, upload: &str, parts: Vec<Part>) -> Result<()>;
    /// Called when a step of a commit is done (tests pause or crash here).
    async fn step_done(&self, _step: CommitStep) -> Result<()> {
        Ok(())
    }
}

/// The row index of the current-state tables (see `lake::current`): for
/// each table (named by its CDC table), where each live row key lies and
/// which positions of each data file are deleted. Changes are staged before
/// the commit they describe and applied once it has happened (see
/// `flush::current`).
pub trait RowIndex {
    /// What the index of `table` holds.
    fn status(&self, table: &str) -> Result<IndexStatus>;
    /// Where the rows of `keys` lie (keys not in the table are absent).
    fn lookup(&self, table: &str, keys: &[&str]) -> Result<HashMap<String, RowLoc>>;
    /// The deleted positions of each of `files` (data file locations).
    fn deleted(&self, table: &str, files: &[&str]) -> Result<BTreeMap<String, RoaringBitmap>>;
    /// Stores `change` beside the index, not applied (replaces any staged
    /// change). All or nothing.
    fn stage(&self, table: &str, change: &IndexChange) -> Result<()>;
    /// Applies the staged change and makes its `positions_id` the index's
    /// positions. All or nothing; nothing staged is a no-op.
    fn apply_staged(&self, table: &str) -> Result<()>;
    /// Forgets the staged change.
    fn discard_staged(&self, table: &str) -> Result<()>;
    /// Empties the index of `table`: no rows, no files, nothing staged,
    /// positions unknown.
    fn clear(&self, table: &str) -> Result<()>;
}

/// The state of one table's row index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStatus {
    /// The [`SUMMARY_POSITIONS`](crate::lake::current::SUMMARY_POSITIONS)
    /// of the table state the index describes (0: a table without one, or
    /// none); `None` when the index is not known to describe any (never
    /// built, or a rebuild under way).
    pub positions: Option<i64>,
    /// The positions id of the staged change, if one is staged with one.
    pub staged: Option<i64>,
}
