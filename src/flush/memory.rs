//! In-memory fakes of the flush's ports, for native tests: a buffer, an
//! object store, a clock, and a crash switch that makes every operation from
//! the n-th on fail (a process that died there), plus a reader that returns
//! a table's rows through its metadata, manifest list, manifests and Parquet
//! files, as an engine would.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use arrow_array::{Array, Decimal128Array, Int64Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::faults::CommitStep;
use roaring::RoaringBitmap;

use super::ports::{Buffer, IndexStatus, Listed, ObjectStore, Part, Put, RowIndex};
use super::procedure::Env;
use super::{BufferedBatch, LoadedBatch};
use crate::error::{Error, Result};
use crate::intake::BufferTotals;
use crate::lake::current::{IndexChange, RowLoc};
use crate::lake::{CommitIds, TableMetadata, TablePaths};
use crate::protocol::CdcEvent;

/// Runs a future whose fakes never wait.
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the in-memory fakes never wait"),
    }
}

/// Counts operations of both fakes and fails every one from `crash_at` on.
#[derive(Debug, Default)]
pub(crate) struct Crash {
    ops: Cell<u64>,
    crash_at: Cell<Option<u64>>,
}

impl Crash {
    pub(crate) fn op(&self, what: &str) -> Result<()> {
        let n = self.ops.get();
        self.ops.set(n + 1);
        match self.crash_at.get() {
            Some(at) if n >= at => Err(Error::new(
                crate::error::ErrorKind::Lake,
                format!("crashed at operation {n} ({what})"),
            )),
            _ => Ok(()),
        }
    }
    /// Fails operation `n` (0-based, counted from now) and all after it.
    pub(crate) fn at(&self, n: u64) {
        self.crash_at.set(Some(self.ops.get() + n));
    }
    pub(crate) fn heal(&self) {
        self.crash_at.set(None);
    }
    pub(crate) fn ops(&self) -> u64 {
        self.ops.get()
    }
}

/// A stored batch: source, batch sequence number, events, stored bytes.
type Stored = (String, u64, Vec<CdcEvent>, u64);

/// The buffer in memory.
#[derive(Debug, Default)]
pub(crate) struct MemoryBuffer {
    batches: RefCell<BTreeMap<i64, Stored>>,
    next: Cell<i64>,
    crash: Rc<Crash>,
}

impl MemoryBuffer {
    pub(crate) fn new(crash: Rc<Crash>) -> Self {
        Self {
            crash,
            ..Self::default()
        }
    }
    /// Makes this buffer hold what `other` holds, row ids included.
    pub(crate) fn copy_from(&self, other: &MemoryBuffer) {
        *self.batches.borrow_mut() = other.batches.borrow().clone();
        self.next.set(other.next.get());
    }
    /// Stores a batch; returns its row id.
    pub(crate) fn push(&self, source: &str, batch_seq: u64, events: Vec<CdcEvent>) -> i64 {
        let id = self.next.get() + 1;
        self.next.set(id);
        let size = serde_json::to_string(&events).map_or(0, |s| s.len() as u64);
        self.batches
            .borrow_mut()
            .insert(id, (source.to_string(), batch_seq, events, size));
        id
    }
    /// Stores a batch as intake planned it.
    pub(crate) fn push_record(&self, record: &crate::intake::BatchRecord) -> i64 {
        let events = crate::intake::decode_events(&record.payload).unwrap();
        self.push(&record.facts.source_id, record.facts.batch_seq, events)
    }
    pub(crate) fn len(&self) -> usize {
        self.batches.borrow().len()
    }
}

impl Buffer for MemoryBuffer {
    fn list(&self, limit: u32) -> Result<Vec<BufferedBatch>> {
        self.crash.op("list")?;
        Ok(self
            .batches
            .borrow()
            .iter()
            .take(limit as usize)
            .map(|(id, b)| BufferedBatch {
                row_id: *id,
                size_bytes: b.3,
            })
            .collect())
    }
    fn load(&self, first: i64, last: i64) -> Result<Vec<LoadedBatch>> {
        self.crash.op("load")?;
        Ok(self
            .batches
            .borrow()
            .range(first..=last)
            .map(|(id, b)| LoadedBatch {
                row_id: *id,
                source_id: b.0.clone(),
                batch_seq: b.1,
                events: b.2.clone(),
            })
            .collect())
    }
    fn delete_through(&self, last: i64) -> Result<()> {
        self.crash.op("delete")?;
        self.batches.borrow_mut().retain(|id, _| *id > last);
        Ok(())
    }
    fn totals(&self) -> Result<BufferTotals> {
        self.crash.op("totals")?;
        let b = self.batches.borrow();
        Ok(BufferTotals {
            batches: b.len() as u64,
            events: b.values().map(|v| v.2.len() as u64).sum(),
            bytes: b.values().map(|v| v.3).sum(),
            oldest_ms: None,
            newest_ms: None,
            refused_full: false,
        })
    }
}

/// A multipart upload in progress: its key and parts.
type Upload = (String, BTreeMap<u16, Vec<u8>>);

/// The object store in memory; `clock` stamps puts (tests move it).
#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    pub(crate) objects: RefCell<BTreeMap<String, Vec<u8>>>,
    uploaded: RefCell<BTreeMap<String, i64>>,
    pub(crate) clock: Cell<i64>,
    /// Multipart uploads in progress: id -> (key, parts).
    uploads: RefCell<BTreeMap<String, Upload>>,
    /// Multipart uploads completed.
    pub(crate) multipart_completed: Cell<u64>,
    crash: Rc<Crash>,
}

impl MemoryStore {
    pub(crate) fn new(crash: Rc<Crash>) -> Self {
        Self {
            crash,
            ..Self::default()
        }
    }
    pub(crate) fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.objects.borrow().get(key).cloned()
    }
    /// Makes this store hold exactly what `other` holds (objects and their
    /// upload times), to replay a scenario from one state.
    pub(crate) fn copy_from(&self, other: &MemoryStore) {
        *self.objects.borrow_mut() = other.objects.borrow().clone();
        *self.uploaded.borrow_mut() = other.uploaded.borrow().clone();
        self.clock.set(other.clock.get());
    }
    pub(crate) fn insert(&self, key: &str, bytes: Vec<u8>) {
        self.objects.borrow_mut().insert(key.to_string(), bytes);
        self.uploaded
            .borrow_mut()
            .insert(key.to_string(), self.clock.get());
    }
}

impl ObjectStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.crash.op("get")?;
        Ok(self.object(key))
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        self.crash.op("exists")?;
        Ok(self.objects.borrow().contains_key(key))
    }
    async fn put(&self, key: &str, bytes: Vec<u8>, if_absent: bool) -> Result<Put> {
        self.crash.op("put")?;
        let mut objects = self.objects.borrow_mut();
        if if_absent && objects.contains_key(key) {
            return Ok(Put::Exists);
        }
        objects.insert(key.to_string(), bytes);
        self.uploaded
            .borrow_mut()
            .insert(key.to_string(), self.clock.get());
        Ok(Put::Stored)
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.crash.op("delete")?;
        self.objects.borrow_mut().remove(key);
        self.uploaded.borrow_mut().remove(key);
        Ok(())
    }
    async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        self.crash.op("list")?;
        Ok(self
            .uploaded
            .borrow()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, t)| Listed {
                key: k.clone(),
                uploaded_ms: *t,
            })
            .collect())
    }
    async fn multipart_start(&self, key: &str) -> Result<String> {
        self.crash.op("multipart_start")?;
        let mut uploads = self.uploads.borrow_mut();
        let id = format!("upload-{}", uploads.len());
        uploads.insert(id.clone(), (key.to_string(), BTreeMap::new()));
        Ok(id)
    }
    async fn multipart_part(
        &self,
        key: &str,
        upload: &str,
        number: u16,
        bytes: Vec<u8>,
    ) -> Result<Part> {
        self.crash.op("multipart_part")?;
        let mut uploads = self.uploads.borrow_mut();
        let Some((k, parts)) = uploads.get_mut(upload).filter(|(k, _)| k == key) else {
            return Err(crate::error::Error::internal("no such upload"));
        };
        let _ = k;
        parts.insert(number, bytes);
        Ok(Part {
            number,
            etag: format!("{upload}-{number}"),
        })
    }
    async fn multipart_complete(&self, key: &str, upload: &str, parts: Vec<Part>) -> Result<()> {
        self.crash.op("multipart_complete")?;
        let Some((k, stored)) = self.uploads.borrow_mut().remove(upload) else {
            return Err(crate::error::Error::internal("no such upload"));
        };
        assert_eq!(k, key, "the upload belongs to another key");
        let mut bytes = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(usize::from(p.number), i + 1, "parts out of order");
            bytes.extend_from_slice(&stored[&p.number]);
        }
        self.insert(key, bytes);
        self.multipart_completed
            .set(self.multipart_completed.get() + 1);
        Ok(())
    }
    async fn step_done(&self, _step: CommitStep) -> Result<()> {
        self.crash.op("step")
    }
}

/// A clock that moves `tick` ms at every reading, and counter-based ids.
#[derive(Debug)]
pub(crate) struct FakeEnv {
    pub(crate) now: Cell<i64>,
    pub(crate) tick: i64,
    ids: Cell<u64>,
}

impl FakeEnv {
    pub(crate) fn new(now: i64, tick: i64) -> Self {
        Self {
            now: Cell::new(now),
            tick,
            ids: Cell::new(0),
        }
    }
}

impl FakeEnv {
    /// The same clock and id counter as `other`.
    pub(crate) fn copy_from(&self, other: &FakeEnv) {
        self.now.set(other.now.get());
        self.ids.set(other.ids.get());
    }
}

impl Env for FakeEnv {
    fn now(&self) -> i64 {
        let now = self.now.get();
        self.now.set(now + self.tick);
        now
    }
    fn commit_ids(&self, now: i64) -> CommitIds {
        let n = self.ids.get() + 1;
        self.ids.set(n);
        CommitIds {
            snapshot_id: n as i64,
            commit_uuid: uuid::Uuid::from_u128(0xC0 << 64 | n as u128),
            table_uuid: uuid::Uuid::from_u128(0x7A << 64 | n as u128),
            now_ms: now,
        }
    }
}

/// One row of a table as read back.
pub(crate) type Row = BTreeMap<String, String>;

/// Reads every live row of `table` as an engine would: the hint, the
/// metadata it names, the current snapshot's manifest list, its manifests
/// and their data files, less the positions its position delete files
/// delete. `None` when the table does not exist.
pub(crate) fn read_table(store: &MemoryStore, namespace: &str, table: &str) -> Option<Vec<Row>> {
    let paths = TablePaths::new(namespace, table).unwrap();
    let hint = store.object(&paths.version_hint_key())?;
    let version = crate::lake::parse_version_hint(&hint).unwrap();
    let metadata = store.object(&paths.metadata_key(version)).unwrap();
    let metadata = TableMetadata::from_json(&metadata).unwrap();
    let key_of = |location: &str| {
        paths
            .key_for_location(&metadata.location, location)
            .unwrap_or_else(|| panic!("{location} outside the table"))
    };
    let mut rows = Vec::new();
    let Some(snapshot) = metadata.current_snapshot() else {
        return Some(rows);
    };
    let list = store.object(&key_of(&snapshot.manifest_list)).unwrap();
    let manifests = crate::lake::read_manifest_list(&list).unwrap();
    let live = |m: &crate::lake::ManifestFile| {
        let bytes = store.object(&key_of(&m.manifest_path)).unwrap();
        crate::lake::read_manifest(&bytes, m)
            .unwrap()
            .into_iter()
            .filter(|e| e.status.is_live())
            .collect::<Vec<_>>()
    };
    // Deleted positions per data file, from every live position delete file
    // (a reader must not assume one per data file).
    let mut deleted: BTreeMap<String, std::collections::BTreeSet<i64>> = BTreeMap::new();
    for m in manifests.iter().filter(|m| m.content == 1) {
        for e in live(m) {
            assert_eq!(e.file.content, 1, "a data file in a delete manifest");
            let data = store.object(&key_of(&e.file.file_path)).unwrap();
            for row in parquet_rows(data) {
                deleted
                    .entry(row["file_path"].clone())
                    .or_default()
                    .insert(row["pos"].parse().unwrap());
            }
        }
    }
    for m in manifests.iter().filter(|m| m.content == 0) {
        for e in live(m) {
            assert_eq!(e.file.content, 0, "a delete file in a data manifest");
            let data = store.object(&key_of(&e.file.file_path)).unwrap();
            let gone = deleted.remove(&e.file.file_path).unwrap_or_default();
            rows.extend(
                parquet_rows(data)
                    .into_iter()
                    .enumerate()
                    .filter(|(pos, _)| !gone.contains(&(*pos as i64)))
                    .map(|(_, row)| row),
            );
        }
    }
    assert!(
        deleted.values().all(|d| d.is_empty()),
        "position deletes of files not in the table: {deleted:?}"
    );
    Some(rows)
}

fn parquet_rows(data: Vec<u8>) -> Vec<Row> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(data))
        .unwrap()
        .build()
        .unwrap();
    reader.flat_map(|b| batch_rows(&b.unwrap())).collect()
}

fn batch_rows(batch: &RecordBatch) -> Vec<Row> {
    let schema = batch.schema();
    (0..batch.num_rows())
        .map(|i| {
            let mut row = Row::new();
            for (f, col) in schema.fields().iter().zip(batch.columns()) {
                if col.is_null(i) {
                    continue;
                }
                let text = if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
                    a.value(i).to_string()
                } else if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
                    a.value(i).to_string()
                } else if let Some(a) = col.as_any().downcast_ref::<Decimal128Array>() {
                    a.value_as_string(i)
                } else {
                    arrow_cast_text(col.as_ref(), i)
                };
                row.insert(f.name().clone(), text);
            }
            row
        })
        .collect()
}

/// Any other column as debug text (enough to compare values).
fn arrow_cast_text(col: &dyn Array, i: usize) -> String {
    format!("{:?}", col.slice(i, 1))
}

/// One table's row index in [`MemoryIndex`].
#[derive(Debug, Clone, Default)]
pub(crate) struct IndexedTable {
    pub(crate) rows: BTreeMap<String, RowLoc>,
    pub(crate) files: BTreeMap<String, RoaringBitmap>,
    pub(crate) positions: Option<i64>,
    staged: Option<IndexChange>,
}

/// The row index in memory, failing with the shared crash switch.
pub(crate) struct MemoryIndex {
    crash: Rc<Crash>,
    tables: RefCell<BTreeMap<String, IndexedTable>>,
}

impl MemoryIndex {
    pub(crate) fn new(crash: Rc<Crash>) -> Self {
        Self {
            crash,
            tables: RefCell::default(),
        }
    }
    /// Replaces this index by a copy of `other` (a restarted object).
    pub(crate) fn copy_from(&self, other: &MemoryIndex) {
        *self.tables.borrow_mut() = other.tables.borrow().clone();
    }
    /// The index of `table`.
    pub(crate) fn table(&self, table: &str) -> IndexedTable {
        self.tables.borrow().get(table).cloned().unwrap_or_default()
    }
    /// Forgets everything (storage lost).
    pub(crate) fn wipe(&self) {
        self.tables.borrow_mut().clear();
    }
}

impl RowIndex for MemoryIndex {
    fn status(&self, table: &str) -> Result<IndexStatus> {
        self.crash.op("index status")?;
        let t = self.table(table);
        Ok(IndexStatus {
            positions: t.positions,
            staged: t.staged.and_then(|s| s.positions_id),
        })
    }
    fn lookup(&self, table: &str, keys: &[&str]) -> Result<HashMap<String, RowLoc>> {
        self.crash.op("index lookup")?;
        let tables = self.tables.borrow();
        let Some(t) = tables.get(table) else {
            return Ok(HashMap::new());
        };
        Ok(keys
            .iter()
            .filter_map(|k| t.rows.get(*k).map(|l| (k.to_string(), l.clone())))
            .collect())
    }
    fn deleted(&self, table: &str, files: &[&str]) -> Result<BTreeMap<String, RoaringBitmap>> {
        self.crash.op("index deleted")?;
        let t = self.table(table);
        Ok(files
            .iter()
            .filter_map(|f| t.files.get(*f).map(|b| (f.to_string(), b.clone())))
            .collect())
    }
    fn stage(&self, table: &str, change: &IndexChange) -> Result<()> {
        self.crash.op("index stage")?;
        self.tables
            .borrow_mut()
            .entry(table.to_string())
            .or_default()
            .staged = Some(change.clone());
        Ok(())
    }
    fn apply_staged(&self, table: &str) -> Result<()> {
        self.crash.op("index apply")?;
        let mut tables = self.tables.borrow_mut();
        let t = tables.entry(table.to_string()).or_default();
        let Some(change) = t.staged.take() else {
            return Ok(());
        };
        for f in &change.dropped_files {
            t.files.remove(f);
        }
        for (f, bitmap) in change.files {
            t.files.insert(f, bitmap);
        }
        for (key, loc) in change.rows {
            match loc {
                Some(loc) => t.rows.insert(key, loc),
                None => t.rows.remove(&key),
            };
        }
        t.positions = change.positions_id;
        Ok(())
    }
    fn discard_staged(&self, table: &str) -> Result<()> {
        self.crash.op("index discard")?;
        if let Some(t) = self.tables.borrow_mut().get_mut(table) {
            t.staged = None;
        }
        Ok(())
    }
    fn clear(&self, table: &str) -> Result<()> {
        self.crash.op("index clear")?;
        self.tables.borrow_mut().remove(table);
        Ok(())
    }
}
