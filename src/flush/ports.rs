//! What the flush procedure needs from the outside world, as two small
//! traits: the durable buffer and the object store. The Durable Object
//! implements them over SQLite and R2; native tests implement them in memory
//! (see `memory`), with failures injected at every step.

use crate::error::Result;
use crate::intake::BufferTotals;

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
