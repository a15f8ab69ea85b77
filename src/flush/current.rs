//! Keeping the row index and the current-state tables in agreement.
//!
//! A current-state commit (`lake::current`) is planned against the row index
//! and changes it. The index lives in the Durable Object's SQLite, the table
//! in R2: no transaction spans both, so the index is changed in two steps
//! around the commit point (the put of the metadata file):
//!
//! 1. before any put, the index change is **staged** (stored beside the
//!    index, not applied), tagged with the new snapshot's id;
//! 2. the commit's objects are put;
//! 3. the staged change is **applied** (one SQLite transaction), which makes
//!    the snapshot id the index's *positions*.
//!
//! Every snapshot of a current-state table names, in its summary key
//! `dolake.current.positions`, the commit whose row positions it holds
//! (maintenance that moves no row carries it). Before a table is planned,
//! [`sync`] compares that with the index: a staged change whose id the table
//! now holds happened (apply it); any other staged change did not (discard
//! it); an index at the table's positions is current; anything else (an index
//! lost with the Durable Object's storage, another writer, a rebuild cut
//! short) is rebuilt from the table itself ([`rebuild`]: every live data
//! file's row keys, minus its deleted positions), in bounded memory, one
//! record batch at a time. So a crash at any step never leaves the index and
//! the table disagreeing (tests: `flush::current_tests`).

use std::collections::{BTreeMap, HashMap};

use arrow_array::Array;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use roaring::RoaringBitmap;

use super::ports::{ObjectStore, RowIndex};
use crate::error::{Error, ErrorKind, Result};
use crate::lake::current::{referenced_file, IndexChange, RowLoc, SUMMARY_POSITIONS};
use crate::lake::manifest::{read_manifest, ManifestEntry};
use crate::lake::{TablePaths, TableState};

/// Keys applied per index change during a rebuild.
const REBUILD_CHUNK: usize = 8192;

/// The positions id a table's current snapshot holds (0 when none).
pub(crate) fn table_positions(state: Option<&TableState>) -> i64 {
    state
        .and_then(|s| s.metadata.current_snapshot())
        .and_then(|s| s.summary.get(SUMMARY_POSITIONS))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What [`sync`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// The index was current.
    Current,
    /// A staged change was applied (its commit had happened).
    Applied,
    /// A staged change was discarded (its commit had not happened).
    Discarded,
    /// The index was rebuilt from the table.
    Rebuilt,
}

/// Brings the index of `table` into agreement with the table `state`
/// (`None`: not created) whose objects are under `paths`.
pub(crate) async fn sync<O: ObjectStore, I: RowIndex>(
    objects: &O,
    index: &I,
    paths: &TablePaths,
    table: &str,
    state: Option<&TableState>,
) -> Result<Synced> {
    let positions = table_positions(state);
    let status = index.status(table)?;
    let mut synced = Synced::Current;
    if let Some(staged) = status.staged {
        if staged == positions && positions != 0 {
            index.apply_staged(table)?;
            return Ok(Synced::Applied);
        }
        index.discard_staged(table)?;
        synced = Synced::Discarded;
    }
    // A table that does not exist yet and an index never written for it
    // agree: an index with no status for a table holds none of its rows.
    let both_new = state.is_none() && status.positions.is_none();
    if status.positions == Some(positions) || both_new {
        return Ok(synced);
    }
    rebuild(objects, index, paths, table, state, positions).await?;
    Ok(Synced::Rebuilt)
}

/// The live entries of the delete manifests of `state`.
pub(crate) async fn delete_entries<O: ObjectStore>(
    objects: &O,
    paths: &TablePaths,
    state: &TableState,
) -> Result<Vec<ManifestEntry>> {
    entries_of(objects, paths, state, 1).await
}

async fn entries_of<O: ObjectStore>(
    objects: &O,
    paths: &TablePaths,
    state: &TableState,
    content: i32,
) -> Result<Vec<ManifestEntry>> {
    let location = state.metadata.location.trim_end_matches('/');
    let mut out = Vec::new();
    for m in state.manifests.iter().filter(|m| m.content == content) {
        let key = key_of(paths, location, &m.manifest_path)?;
        let bytes = objects
            .get(&key)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::Lake, format!("manifest {key} is missing")))?;
        out.extend(
            read_manifest(&bytes, m)?
                .into_iter()
                .filter(|e| e.status.is_live()),
        );
    }
    Ok(out)
}

fn key_of(paths: &TablePaths, location: &str, file: &str) -> Result<String> {
    paths
        .key_for_location(location, file)
        .ok_or_else(|| Error::new(ErrorKind::Lake, format!("{file} is outside the table")))
}

fn read_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Lake, format!("reading {what}: {e}"))
}

/// The deleted positions of every data file, read from the live delete
/// files of `state`.
async fn read_deleted<O: ObjectStore>(
    objects: &O,
    paths: &TablePaths,
    state: &TableState,
) -> Result<BTreeMap<String, RoaringBitmap>> {
    let location = state.metadata.location.trim_end_matches('/');
    let mut deleted: BTreeMap<String, RoaringBitmap> = BTreeMap::new();
    for e in delete_entries(objects, paths, state).await? {
        let key = key_of(paths, location, &e.file.file_path)?;
        let bytes = objects
            .get(&key)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::Lake, format!("delete file {key} is missing")))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .and_then(|b| b.build())
            .map_err(|e| read_error(&key, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| read_error(&key, e))?;
            let (Some(files), Some(pos)) = (
                batch
                    .column_by_name("file_path")
                    .and_then(|c| c.as_any().downcast_ref::<arrow_array::StringArray>()),
                batch
                    .column_by_name("pos")
                    .and_then(|c| c.as_any().downcast_ref::<arrow_array::Int64Array>()),
            ) else {
                return Err(read_error(&key, "not a position delete file"));
            };
            for i in 0..batch.num_rows() {
                let p = u32::try_from(pos.value(i))
                    .map_err(|_| read_error(&key, "a position beyond 2^32"))?;
                deleted
                    .entry(files.value(i).to_string())
                    .or_default()
                    .insert(p);
            }
        }
        // A file-scoped delete file names its data file even when empty.
        if let Some(f) = referenced_file(&e.file) {
            deleted.entry(f).or_default();
        }
    }
    Ok(deleted)
}

/// Rebuilds the index of `table` from `state`: clears it, then adds every
/// live row of every live data file, and finally marks it at `positions`.
async fn rebuild<O: ObjectStore, I: RowIndex>(
    objects: &O,
    index: &I,
    paths: &TablePaths,
    table: &str,
    state: Option<&TableState>,
    positions: i64,
) -> Result<()> {
    index.clear(table)?;
    let mut pending = IndexChange::default();
    if let Some(state) = state {
        let location = state.metadata.location.trim_end_matches('/');
        let mut deleted = read_deleted(objects, paths, state).await?;
        for e in entries_of(objects, paths, state, 0).await? {
            let file = e.file.file_path.clone();
            let gone = deleted.remove(&file).unwrap_or_default();
            let key = key_of(paths, location, &file)?;
            let bytes = objects.get(&key).await?.ok_or_else(|| {
                Error::new(ErrorKind::Lake, format!("data file {key} is missing"))
            })?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
                .map_err(|e| read_error(&key, e))?;
            let leaf = builder
                .parquet_schema()
                .columns()
                .iter()
                .position(|c| c.name() == crate::lake::changelog::ROW_ID)
                .ok_or_else(|| read_error(&key, "no _cdc_row_id column"))?;
            let mask = ProjectionMask::leaves(builder.parquet_schema(), [leaf]);
            let reader = builder
                .with_projection(mask)
                .build()
                .map_err(|e| read_error(&key, e))?;
            pending.files.insert(file.clone(), gone.clone());
            let mut pos: u32 = 0;
            for batch in reader {
                let batch = batch.map_err(|e| read_error(&key, e))?;
                let keys = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .ok_or_else(|| read_error(&key, "_cdc_row_id is not a string column"))?;
                for i in 0..keys.len() {
                    if !gone.contains(pos) {
                        let loc = RowLoc {
                            file: file.clone(),
                            pos,
                        };
                        pending.rows.push((keys.value(i).to_string(), Some(loc)));
                    }
                    pos = pos
                        .checked_add(1)
                        .ok_or_else(|| read_error(&key, "more than 2^32 rows"))?;
                }
                if pending.rows.len() >= REBUILD_CHUNK {
                    apply(index, table, std::mem::take(&mut pending))?;
                    // Every change names the files its rows lie in.
                    pending.files.insert(file.clone(), gone.clone());
                }
            }
        }
    }
    pending.positions_id = Some(positions);
    apply(index, table, pending)
}

fn apply<I: RowIndex>(index: &I, table: &str, change: IndexChange) -> Result<()> {
    index.stage(table, &change)?;
    index.apply_staged(table)
}

/// Looks up what a commit of `keys` to `table` needs from the index and the
/// table: where each key lies, the deleted positions of those files, and the
/// table's live delete files.
pub(crate) async fn lookups<O: ObjectStore, I: RowIndex>(
    objects: &O,
    index: &I,
    paths: &TablePaths,
    table: &str,
    state: Option<&TableState>,
    keys: &[&str],
) -> Result<Looked> {
    let locs = index.lookup(table, keys)?;
    let mut files: Vec<&str> = locs.values().map(|l| l.file.as_str()).collect();
    files.sort_unstable();
    files.dedup();
    let deleted = index.deleted(table, &files)?;
    let delete_entries = match (state, files.is_empty()) {
        (Some(s), false) => delete_entries(objects, paths, s).await?,
        _ => Vec::new(),
    };
    Ok(Looked {
        locs,
        deleted,
        delete_entries,
    })
}

/// What [`lookups`] found.
pub(crate) struct Looked {
    pub locs: HashMap<String, RowLoc>,
    pub deleted: BTreeMap<String, RoaringBitmap>,
    pub delete_entries: Vec<ManifestEntry>,
}
