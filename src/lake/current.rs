//! Current-state tables: each CDC table as the shard holds it, UPDATE and
//! DELETE applied, merge-on-read with position deletes.
//!
//! A current-state table has the changelog's columns (the last change's
//! `_cdc_op`, `_cdc_seq`, `_cdc_ts`, `_cdc_source`, `_cdc_row_id`, the row
//! image's columns, `_cdc_overflow`; `_cdc_before` stays null) and one live
//! row per row key (the event's `rowId`). It is unpartitioned: an updated row
//! must be able to move anywhere, and a position delete file then always
//! lies in the same (empty) partition as the data file it applies to.
//!
//! A commit ([`plan_current_commit`]) takes one step's events of the CDC
//! table, reduced to the last change of each key ([`reduce`]):
//! - an INSERT or UPDATE (an UPDATE of a key never seen acts as an upsert,
//!   counted) writes the row's image into the commit's new data files;
//! - a DELETE writes nothing (a DELETE of a key the table does not hold is a
//!   no-op, counted);
//! - the key's previous row, found in the row index (key -> data file,
//!   position; kept by the caller, in SQLite in the Durable Object), gets
//!   its position deleted.
//!
//! Deleted positions are held per data file as a bitmap. A data file has at
//! most one position delete file: a commit that deletes more rows of it
//! writes a new delete file with every deleted position of that file (the
//! bitmap) and removes the old one, so a reader never merges more than one
//! delete file per data file. Delete files carry equal lower and upper
//! bounds on `file_path`, which readers take as "applies to this file only".
//! The table keeps one delete manifest, rewritten by every commit that
//! changes delete files. Writing Iceberg v3 deletion vectors later changes
//! only the encoding of the bitmap.
//!
//! The commit also returns the row index's change ([`IndexChange`]); the
//! caller applies it only once the commit has happened, and the snapshot
//! summary key [`SUMMARY_POSITIONS`] says which index state the table is
//! consistent with (see `flush::current`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field as ArrowField, Schema as ArrowSchema};
use parquet::arrow::{ArrowWriter, PARQUET_FIELD_ID_META_KEY};
use roaring::RoaringBitmap;

use super::avro::DataFile;
use super::changelog::{ChangeEvent, Op};
use super::commit::{plan_rows, Commit, CommitIds, DeleteChanges, Extra, TableKind, WriteOptions};
use super::manifest::ManifestEntry;
use super::parquet::{properties, ParquetSettings};
use super::table::TableState;
use crate::config::PartitionBy;
use crate::error::{Error, ErrorKind, Result};

/// Summary key holding the id of the snapshot whose row positions the table
/// is at: set by every commit that moves rows, carried by the others.
pub const SUMMARY_POSITIONS: &str = "dolake.current.positions";
/// Summary key counting UPDATEs of keys the table did not hold (upserts).
pub const SUMMARY_UPSERTS_OF_UNKNOWN: &str = "dolake.current.unknown-updates";
/// Summary key counting DELETEs of keys the table did not hold (no-ops).
pub const SUMMARY_DELETES_OF_UNKNOWN: &str = "dolake.current.unknown-deletes";
/// Field id of `file_path` in position delete files (spec).
pub const DELETE_FILE_PATH_ID: i32 = 2_147_483_546;
/// Field id of `pos` in position delete files (spec).
pub const DELETE_POS_ID: i32 = 2_147_483_545;

/// Where a row lies: its data file (location, as in manifests) and position.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowLoc {
    /// The data file's location.
    pub file: String,
    /// 0-based row position in the file.
    pub pos: u32,
}

/// The last change of one key within a step.
#[derive(Debug, Clone, Copy)]
pub struct Final<'a> {
    /// The row key.
    pub key: &'a str,
    /// The last event of the key (its image when not a DELETE).
    pub event: &'a ChangeEvent,
    /// Whether an INSERT or UPDATE of the key came before in the step.
    pub written_before: bool,
}

/// The last change of every key of `events`, in the order of those last
/// changes (deterministic).
pub fn reduce(events: &[ChangeEvent]) -> Vec<Final<'_>> {
    let mut last: HashMap<&str, (usize, bool)> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let entry = last.entry(e.row_id.as_str()).or_insert((i, false));
        // Whether an image of the key was written before its last change.
        let written = entry.1 || (entry.0 < i && events[entry.0].operation != Op::Delete);
        *entry = (i, written);
    }
    let mut out: Vec<(usize, bool)> = last.into_values().collect();
    out.sort_unstable();
    out.into_iter()
        .map(|(i, written_before)| Final {
            key: &events[i].row_id,
            event: &events[i],
            written_before,
        })
        .collect()
}

/// What the row index must become once a commit has happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexChange {
    /// The positions the index is at once the change is applied: the id of
    /// the commit's snapshot ([`SUMMARY_POSITIONS`]; 0 for a table without
    /// one); `None` for a part of a rebuild (not complete yet).
    pub positions_id: Option<i64>,
    /// Keys and where their row now lies; `None` removes the key.
    pub rows: Vec<(String, Option<RowLoc>)>,
    /// Data files whose deleted positions changed, with every deleted
    /// position (the whole bitmap), and new data files (empty bitmaps);
    /// every file a row of `rows` lies in is here.
    pub files: BTreeMap<String, RoaringBitmap>,
    /// Data files that left the table (compaction).
    pub dropped_files: Vec<String>,
}

/// What a current-state commit counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CurrentCounts {
    /// Events applied.
    pub events: u64,
    /// Rows written (last images of keys).
    pub rows_written: u64,
    /// Rows whose earlier position was deleted.
    pub rows_deleted: u64,
    /// UPDATEs of keys the table did not hold (written as upserts).
    pub upserts_of_unknown: u64,
    /// DELETEs of keys the table did not hold (nothing to do).
    pub deletes_of_unknown: u64,
}

impl CurrentCounts {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &CurrentCounts) {
        self.events += other.events;
        self.rows_written += other.rows_written;
        self.rows_deleted += other.rows_deleted;
        self.upserts_of_unknown += other.upserts_of_unknown;
        self.deletes_of_unknown += other.deletes_of_unknown;
    }
}

/// A planned current-state commit and the index change it implies.
#[derive(Debug, Clone)]
pub struct CurrentCommit {
    /// The objects to put.
    pub commit: Commit,
    /// Apply to the row index once the metadata put succeeded.
    pub index: IndexChange,
    /// What the commit counted.
    pub counts: CurrentCounts,
}

/// What the caller looked up for a commit.
pub struct Lookups<'a> {
    /// Where each key of the step lies now (keys absent: not in the table).
    pub locs: &'a HashMap<String, RowLoc>,
    /// The deleted positions of every data file a key lies in.
    pub deleted: &'a BTreeMap<String, RoaringBitmap>,
    /// The live entries of the table's delete manifests.
    pub delete_entries: &'a [ManifestEntry],
}

/// The options of a current-state table made from `options` (those of the
/// CDC table's changelog, with the current-state namespace).
pub(crate) fn current_options(options: &WriteOptions) -> WriteOptions {
    WriteOptions {
        partition_by: PartitionBy::None,
        ..options.clone()
    }
}

/// Plans the commit of one step's `events` (all of CDC table `cdc_table`,
/// in order) to its current-state table `current`.
pub fn plan_current_commit(
    cdc_table: &str,
    events: &[ChangeEvent],
    current: Option<&TableState>,
    lookups: &Lookups<'_>,
    options: &WriteOptions,
    ids: &CommitIds,
    marks: &BTreeMap<String, String>,
) -> Result<CurrentCommit> {
    let options = current_options(options);
    let finals = reduce(events);
    let mut counts = CurrentCounts {
        events: events.len() as u64,
        ..CurrentCounts::default()
    };
    let mut images: Vec<ChangeEvent> = Vec::new();
    let mut image_keys: Vec<&str> = Vec::new();
    let mut index = IndexChange {
        positions_id: Some(ids.snapshot_id),
        ..IndexChange::default()
    };
    let mut newly: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for f in &finals {
        let old = lookups.locs.get(f.key);
        if let Some(loc) = old {
            newly.entry(loc.file.as_str()).or_default().push(loc.pos);
            counts.rows_deleted += 1;
        }
        match f.event.operation {
            Op::Delete => {
                if old.is_some() {
                    index.rows.push((f.key.to_string(), None));
                } else if !f.written_before {
                    counts.deletes_of_unknown += 1;
                }
            }
            op => {
                if op == Op::Update && old.is_none() && !f.written_before {
                    counts.upserts_of_unknown += 1;
                }
                let mut image = f.event.clone();
                image.before = None;
                images.push(image);
                image_keys.push(f.key);
            }
        }
    }

    // Delete files: one per data file that lost rows, with every deleted
    // position of that file; the file's previous delete file is removed.
    let deletes = if newly.is_empty() {
        None
    } else {
        let location = current
            .map(|c| c.metadata.location.trim_end_matches('/').to_string())
            .ok_or_else(|| Error::internal("rows to delete in a table that does not exist"))?;
        let settings = ParquetSettings {
            compression: options.compression,
            row_group_size: options.row_group_size,
            target_file_size: options.target_file_size,
        };
        let mut entries = Vec::new();
        let mut files = Vec::new();
        for e in lookups.delete_entries {
            match referenced_file(&e.file) {
                Some(f) if newly.contains_key(f.as_str()) => {
                    entries.push(e.deleted(ids.snapshot_id))
                }
                _ => entries.push(e.existing()),
            }
        }
        for (n, (file, positions)) in newly.iter().enumerate() {
            let mut bitmap = lookups.deleted.get(*file).cloned().unwrap_or_default();
            bitmap.extend(positions.iter().copied());
            let path = format!("{location}/data/{}-deletes-{n:05}.parquet", ids.commit_uuid);
            let (bytes, df) = write_position_deletes(&path, file, &bitmap, &settings)?;
            entries.push(ManifestEntry::added(ids.snapshot_id, df));
            files.push((path, bytes));
            index.files.insert((*file).to_string(), bitmap);
        }
        Some(DeleteChanges { entries, files })
    };

    counts.rows_written = images.len() as u64;
    let mut summary =
        BTreeMap::from([(SUMMARY_POSITIONS.to_string(), ids.snapshot_id.to_string())]);
    if counts.upserts_of_unknown > 0 {
        summary.insert(
            SUMMARY_UPSERTS_OF_UNKNOWN.to_string(),
            counts.upserts_of_unknown.to_string(),
        );
    }
    if counts.deletes_of_unknown > 0 {
        summary.insert(
            SUMMARY_DELETES_OF_UNKNOWN.to_string(),
            counts.deletes_of_unknown.to_string(),
        );
    }
    let extra = Extra {
        applied: Some(events),
        layout: "current-state-v1",
        table_properties: TableKind::CurrentState.properties(cdc_table),
        deletes,
        summary,
    };
    let commit = plan_rows(&images, current, &options, ids, marks, extra)?;

    // The new rows' places: files in row order, positions within each.
    let mut keys = image_keys.into_iter();
    for (file, rows) in &commit.added_files {
        index.files.insert(file.clone(), RoaringBitmap::new());
        for pos in 0..*rows {
            let pos = u32::try_from(pos)
                .map_err(|_| Error::internal("a data file of more than 2^32 rows"))?;
            let key = keys
                .next()
                .ok_or_else(|| Error::internal("more rows written than images"))?;
            index.rows.push((
                key.to_string(),
                Some(RowLoc {
                    file: file.clone(),
                    pos,
                }),
            ));
        }
    }
    if keys.next().is_some() {
        return Err(Error::internal("fewer rows written than images"));
    }
    Ok(CurrentCommit {
        commit,
        index,
        counts,
    })
}

/// The data file a position delete file applies to, from its `file_path`
/// bounds (equal for the files DoLake writes).
pub fn referenced_file(delete_file: &DataFile) -> Option<String> {
    let lo = delete_file.lower_bounds.get(&DELETE_FILE_PATH_ID)?;
    let hi = delete_file.upper_bounds.get(&DELETE_FILE_PATH_ID)?;
    (lo == hi).then(|| String::from_utf8(lo.clone()).ok())?
}

fn parquet_error(e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!("encoding a position delete file failed: {e}"),
    )
}

/// The Arrow schema of position delete files (spec field ids).
fn position_delete_schema() -> Arc<ArrowSchema> {
    let field = |name: &str, t: DataType, id: i32| {
        ArrowField::new(name, t, false).with_metadata(HashMap::from([(
            PARQUET_FIELD_ID_META_KEY.to_string(),
            id.to_string(),
        )]))
    };
    Arc::new(ArrowSchema::new(vec![
        field("file_path", DataType::Utf8, DELETE_FILE_PATH_ID),
        field("pos", DataType::Int64, DELETE_POS_ID),
    ]))
}

/// Encodes the position delete file at `path` of the positions `deleted` of
/// data file `data_file`: its bytes and its manifest entry's file.
pub(crate) fn write_position_deletes(
    path: &str,
    data_file: &str,
    deleted: &RoaringBitmap,
    settings: &ParquetSettings,
) -> Result<(Vec<u8>, DataFile)> {
    let schema = position_delete_schema();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties(settings)))
        .map_err(parquet_error)?;
    let mut iter = deleted.iter().peekable();
    while iter.peek().is_some() {
        let chunk: Vec<i64> = iter.by_ref().take(8192).map(i64::from).collect();
        let paths: ArrayRef = Arc::new(StringArray::from(vec![data_file; chunk.len()]));
        let pos: ArrayRef = Arc::new(Int64Array::from(chunk));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![paths, pos]).map_err(parquet_error)?;
        writer.write(&batch).map_err(parquet_error)?;
    }
    writer.flush().map_err(parquet_error)?;
    let mut column_sizes = BTreeMap::new();
    for rg in writer.flushed_row_groups() {
        for (col, id) in rg
            .columns()
            .iter()
            .zip([DELETE_FILE_PATH_ID, DELETE_POS_ID])
        {
            *column_sizes.entry(id).or_insert(0) += col.compressed_size();
        }
    }
    let bytes = writer.into_inner().map_err(parquet_error)?;
    let n = deleted.len() as i64;
    let (min, max) = (deleted.min().unwrap_or(0), deleted.max().unwrap_or(0));
    let path_bytes = data_file.as_bytes().to_vec();
    let file = DataFile {
        content: 1,
        file_path: path.to_string(),
        partition: Vec::new(),
        record_count: n,
        file_size_in_bytes: bytes.len() as i64,
        column_sizes,
        value_counts: BTreeMap::from([(DELETE_FILE_PATH_ID, n), (DELETE_POS_ID, n)]),
        null_value_counts: BTreeMap::from([(DELETE_FILE_PATH_ID, 0), (DELETE_POS_ID, 0)]),
        nan_value_counts: BTreeMap::new(),
        lower_bounds: BTreeMap::from([
            (DELETE_FILE_PATH_ID, path_bytes.clone()),
            (DELETE_POS_ID, i64::from(min).to_le_bytes().to_vec()),
        ]),
        upper_bounds: BTreeMap::from([
            (DELETE_FILE_PATH_ID, path_bytes),
            (DELETE_POS_ID, i64::from(max).to_le_bytes().to_vec()),
        ]),
    };
    Ok((bytes, file))
}
