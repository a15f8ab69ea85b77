//! Planning one commit: events in, the objects to put and the new table state
//! out. Deterministic: ids, uuids and the time come from the caller.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::avro::{
    write_manifest, write_manifest_entries, write_manifest_list, DataFile, ManifestFile,
};
use super::changelog::{evolve_within, ChangeEvent, RowLayout, TS};
use super::limits::schema_room;
use super::manifest::ManifestEntry;
use super::metadata::{
    MetadataLogEntry, Operation, PartitionField, PartitionSpec, Schema, Snapshot, SnapshotLogEntry,
    SnapshotRef, SortOrder, TableMetadata, Transform,
};
use super::parquet::{write_data_files, EncodedFile, ParquetSettings};
use super::stats::{day_string, hour_string};
use super::table::{TablePaths, TableState};
use crate::config::{Compression, DoLakeConfig, PartitionBy};
use crate::error::{Error, ErrorKind, Result};

/// Default bound on the size of one data file.
pub const DEFAULT_TARGET_FILE_SIZE: usize = 64 * 1024 * 1024;
/// How many previous metadata files `metadata-log` keeps.
pub const METADATA_LOG_MAX: usize = 100;

/// Summary key prefix of the per-commit highest sequences of a source.
pub const SUMMARY_SOURCE_PREFIX: &str = "dolake.source.";
/// Summary key prefix of the cumulative watermark of a source, as tables
/// written before [`WATERMARKS_PROPERTY`] recorded it in every summary. Read
/// (see [`committed_watermarks`]), no longer written.
pub const SUMMARY_WATERMARK_PREFIX: &str = "dolake.watermark.";
/// Table property holding the cumulative watermark of every source, as
/// compact JSON `{"source":[batchSeq,eventSeq],...}`, rewritten by every
/// commit that has sources. One place per metadata file, so metadata does
/// not grow with commits x sources (snapshot summaries only name the sources
/// their commit changed: [`SUMMARY_SOURCE_PREFIX`]).
pub const WATERMARKS_PROPERTY: &str = "dolake.watermarks";
/// Summary key suffix of a batch sequence number.
pub const SUMMARY_BATCH_SUFFIX: &str = ".batch-seq";
/// Summary key suffix of an event sequence number.
pub const SUMMARY_EVENT_SUFFIX: &str = ".event-seq";
/// Summary key of the number of values put in `_cdc_overflow` by the commit.
pub const SUMMARY_OVERFLOW: &str = "dolake.overflow-values";

/// How a table is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOptions {
    /// URI prefix of `r2BasePath` in metadata (`s3://bucket/base`, `file:///dir`).
    pub warehouse_location: String,
    /// Iceberg namespace.
    pub namespace: String,
    /// Table name.
    pub table: String,
    /// Parquet codec.
    pub compression: Compression,
    /// Most rows per row group.
    pub row_group_size: usize,
    /// Partitioning of new files.
    pub partition_by: PartitionBy,
    /// Bound on the size of one data file, bytes.
    pub target_file_size: usize,
}

impl WriteOptions {
    /// The options of `config` for table `table`.
    pub fn from_config(config: &DoLakeConfig, table: &str) -> Self {
        Self {
            warehouse_location: config.warehouse_location.clone(),
            namespace: config.namespace.clone(),
            table: table.to_string(),
            compression: config.parquet_compression,
            row_group_size: usize::try_from(config.parquet_row_group_size).unwrap_or(usize::MAX),
            partition_by: config.partition_by,
            target_file_size: DEFAULT_TARGET_FILE_SIZE,
        }
    }
}

/// What the caller supplies so that the commit is deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitIds {
    /// Id of the new snapshot (positive, not used before in the table).
    pub snapshot_id: i64,
    /// Makes this commit's file names unique (a retry must use a new one).
    pub commit_uuid: Uuid,
    /// Uuid of the table, used only when the table is created.
    pub table_uuid: Uuid,
    /// Now, ms since the epoch.
    pub now_ms: i64,
}

/// Highest sequence numbers of one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Watermark {
    /// Highest `cdc_batch` `sequenceNumber`.
    pub batch_seq: u64,
    /// Highest event `sequence`.
    pub event_seq: u64,
}

impl Watermark {
    fn raise(&mut self, other: Watermark) {
        self.batch_seq = self.batch_seq.max(other.batch_seq);
        self.event_seq = self.event_seq.max(other.event_seq);
    }
}

/// What an object of a commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A Parquet data file.
    Data,
    /// The Avro manifest.
    Manifest,
    /// The Avro manifest list.
    ManifestList,
    /// `v{N}.metadata.json`: the commit point. Put it only if absent.
    Metadata,
    /// `version-hint.text`, put last.
    VersionHint,
}

/// One object to put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutObject {
    /// Key relative to `r2BasePath`.
    pub key: String,
    /// Content.
    pub bytes: Vec<u8>,
    /// What it is.
    pub kind: ObjectKind,
}

/// The plan of one commit.
///
/// Put `puts` in order. Every key except `version-hint.text` is new (its name
/// holds the commit uuid or the new version); put the `Metadata` object only
/// if no object has its key (R2 `onlyIf`), which makes a concurrent or
/// repeated commit fail instead of overwriting. The commit has happened once
/// that put succeeds; `version-hint.text` only helps readers find it.
#[derive(Debug, Clone)]
pub struct Commit {
    /// Objects to put, in order.
    pub puts: Vec<PutObject>,
    /// The table after the commit (cache it for the next commit).
    pub state: TableState,
    /// Id of the new snapshot.
    pub snapshot_id: i64,
    /// Key of the new metadata file.
    pub metadata_key: String,
    /// Rows written (one per event).
    pub rows: u64,
    /// Data files written.
    pub data_files: usize,
    /// Bytes of data files written.
    pub data_bytes: u64,
    /// Values put in `_cdc_overflow`, per column name.
    pub overflow: BTreeMap<String, u64>,
    /// Columns added to the schema.
    pub added_columns: Vec<String>,
    /// Highest sequences per source in this commit.
    pub sources: BTreeMap<String, Watermark>,
    /// The data files written, in row order: location and rows.
    pub added_files: Vec<(String, u64)>,
}

impl Commit {
    /// Total values put in `_cdc_overflow`.
    pub fn overflow_total(&self) -> u64 {
        self.overflow.values().sum()
    }
}

/// The cumulative per-source watermarks of the table: everything at or below
/// them is committed. Read from the table property [`WATERMARKS_PROPERTY`]
/// and, for tables written before it, from the current snapshot's summary
/// keys `dolake.watermark.{source}.*`; where both name a source, the higher
/// value wins. Empty when the table has no current snapshot. Entries that do
/// not parse are skipped.
pub fn committed_watermarks(metadata: &TableMetadata) -> BTreeMap<String, Watermark> {
    let Some(snapshot) = metadata.current_snapshot() else {
        return BTreeMap::new();
    };
    let mut out = summary_watermarks(&snapshot.summary, SUMMARY_WATERMARK_PREFIX);
    let listed = metadata
        .properties
        .get(WATERMARKS_PROPERTY)
        .map(|v| parse_watermarks_property(v))
        .unwrap_or_default();
    for (source, w) in listed {
        out.entry(source).or_default().raise(w);
    }
    out
}

/// Parses the value of [`WATERMARKS_PROPERTY`]; what does not parse is
/// skipped (outside input must not stop a commit).
pub fn parse_watermarks_property(value: &str) -> BTreeMap<String, Watermark> {
    let Ok(map) = serde_json::from_str::<BTreeMap<String, serde_json::Value>>(value) else {
        return BTreeMap::new();
    };
    map.into_iter()
        .filter_map(|(source, v)| {
            let pair = v.as_array()?;
            match pair.as_slice() {
                [b, e] => Some((
                    source,
                    Watermark {
                        batch_seq: b.as_u64()?,
                        event_seq: e.as_u64()?,
                    },
                )),
                _ => None,
            }
        })
        .collect()
}

/// The value of [`WATERMARKS_PROPERTY`] for `watermarks`: compact JSON,
/// sources in order.
pub fn watermarks_property(watermarks: &BTreeMap<String, Watermark>) -> String {
    let map: BTreeMap<&str, [u64; 2]> = watermarks
        .iter()
        .map(|(s, w)| (s.as_str(), [w.batch_seq, w.event_seq]))
        .collect();
    serde_json::to_string(&map).unwrap_or_default()
}

fn summary_watermarks(
    summary: &BTreeMap<String, String>,
    prefix: &str,
) -> BTreeMap<String, Watermark> {
    let mut out: BTreeMap<String, Watermark> = BTreeMap::new();
    for (k, v) in summary {
        let Some(rest) = k.strip_prefix(prefix) else {
            continue;
        };
        let Ok(n) = v.parse::<u64>() else { continue };
        if let Some(source) = rest.strip_suffix(SUMMARY_BATCH_SUFFIX) {
            out.entry(source.to_string()).or_default().batch_seq = n;
        } else if let Some(source) = rest.strip_suffix(SUMMARY_EVENT_SUFFIX) {
            out.entry(source.to_string()).or_default().event_seq = n;
        }
    }
    out
}

fn lake_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Lake, msg)
}

/// The partition spec for `by`, reusing a matching spec of the table or
/// adding one. Returns the spec and the new `last-partition-id`.
pub(crate) fn resolve_spec(
    base: Option<&TableMetadata>,
    by: PartitionBy,
    ts_id: i32,
) -> (PartitionSpec, bool, i32) {
    let wanted: Option<(Transform, &str)> = match by {
        PartitionBy::Day => Some((Transform::Day, "_cdc_ts_day")),
        PartitionBy::Hour => Some((Transform::Hour, "_cdc_ts_hour")),
        PartitionBy::None => None,
    };
    let matches = |s: &PartitionSpec| match &wanted {
        None => s.fields.is_empty(),
        Some((t, _)) => {
            s.fields.len() == 1 && &s.fields[0].transform == t && s.fields[0].source_id == ts_id
        }
    };
    let Some(base) = base else {
        let fields: Vec<PartitionField> = wanted
            .map(|(t, name)| PartitionField {
                name: name.to_string(),
                transform: t,
                source_id: ts_id,
                field_id: 1000,
            })
            .into_iter()
            .collect();
        let last = if fields.is_empty() { 999 } else { 1000 };
        return (PartitionSpec { spec_id: 0, fields }, true, last);
    };
    if let Some(spec) = base.partition_specs.iter().find(|s| matches(s)) {
        return (spec.clone(), false, base.last_partition_id);
    }
    let spec_id = base
        .partition_specs
        .iter()
        .map(|s| s.spec_id)
        .max()
        .unwrap_or(-1)
        + 1;
    let mut last = base.last_partition_id.max(999);
    let fields = wanted
        .map(|(t, name)| {
            let reused = base
                .partition_specs
                .iter()
                .flat_map(|s| &s.fields)
                .find(|f| f.source_id == ts_id && f.transform == t)
                .map(|f| f.field_id);
            let field_id = reused.unwrap_or_else(|| {
                last += 1;
                last
            });
            PartitionField {
                name: name.to_string(),
                transform: t,
                source_id: ts_id,
                field_id,
            }
        })
        .into_iter()
        .collect();
    (PartitionSpec { spec_id, fields }, true, last)
}

fn codec_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "uncompressed",
        Compression::Snappy => "snappy",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

fn summary_u64(summary: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    summary.get(key).and_then(|v| v.parse().ok())
}

/// Plans the commit of `events` (all of one table) onto `current` (`None`
/// creates the table). Writes nothing: returns the objects to put.
pub fn plan_commit(
    events: &[ChangeEvent],
    current: Option<&TableState>,
    options: &WriteOptions,
    ids: &CommitIds,
) -> Result<Commit> {
    plan_commit_with_marks(events, current, options, ids, &BTreeMap::new())
}

/// Summary key prefix of the caller's marks (see [`plan_commit_with_marks`]).
pub const SUMMARY_MARK_PREFIX: &str = "dolake.buffer.";

/// [`plan_commit`] that also records `marks` in the snapshot summary. Keys
/// must start with [`SUMMARY_MARK_PREFIX`]; the previous snapshot's keys under
/// that prefix are carried forward unless `marks` replaces them, so every
/// snapshot holds every writer's latest mark.
pub fn plan_commit_with_marks(
    events: &[ChangeEvent],
    current: Option<&TableState>,
    options: &WriteOptions,
    ids: &CommitIds,
    marks: &BTreeMap<String, String>,
) -> Result<Commit> {
    let kind = TableKind::Changelog;
    let extra = Extra {
        applied: None,
        layout: "changelog-v1",
        table_properties: kind.properties(&options.table),
        deletes: None,
        summary: BTreeMap::new(),
    };
    plan_rows(events, current, options, ids, marks, extra)
}

/// Table property naming what a table is ([`TableKind`]).
pub const TABLE_KIND_PROPERTY: &str = "dolake.table-kind";
/// Table property naming the CDC table a table is made from.
pub const CDC_TABLE_PROPERTY: &str = "dolake.cdc-table";

/// What DoLake makes of a CDC table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableKind {
    /// One row per change event.
    Changelog,
    /// The rows as the shard holds them: UPDATE and DELETE applied.
    CurrentState,
}

impl TableKind {
    /// The value of [`TABLE_KIND_PROPERTY`].
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Changelog => "changelog",
            TableKind::CurrentState => "current-state",
        }
    }

    /// The properties every commit to a table of this kind made from CDC
    /// table `cdc_table` sets.
    pub(crate) fn properties(self, cdc_table: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TABLE_KIND_PROPERTY.to_string(), self.as_str().to_string()),
            (CDC_TABLE_PROPERTY.to_string(), cdc_table.to_string()),
        ])
    }
}

/// What differs between the commits of the table kinds.
pub(crate) struct Extra<'e> {
    /// The changes the commit applies, when not only the rows it writes
    /// (their watermarks are recorded).
    pub applied: Option<&'e [ChangeEvent]>,
    /// `dolake.table-layout` of a new table.
    pub layout: &'static str,
    /// Set by every commit.
    pub table_properties: BTreeMap<String, String>,
    /// Delete files (current-state tables).
    pub deletes: Option<DeleteChanges>,
    /// Summary keys besides the standard ones.
    pub summary: BTreeMap<String, String>,
}

/// Plans a commit that writes the rows of `events` (their row images), and
/// `extra`'s delete files, onto `current`.
pub(crate) fn plan_rows(
    events: &[ChangeEvent],
    current: Option<&TableState>,
    options: &WriteOptions,
    ids: &CommitIds,
    marks: &BTreeMap<String, String>,
    extra: Extra<'_>,
) -> Result<Commit> {
    // A commit applies at least one change (a current-state commit may
    // write no row: its changes can be all DELETEs).
    let applied = extra.applied.unwrap_or(events).len();
    let start = Start::new(applied, current, options, ids, marks)?;
    let base = start.base();

    // Schema.
    let next_schema_id = base
        .map(|b| b.schemas.iter().map(|s| s.schema_id).max().unwrap_or(0) + 1)
        .unwrap_or(0);
    let evolution = evolve_within(
        base.and_then(TableMetadata::current_schema),
        base.map(|b| b.last_column_id).unwrap_or(0),
        next_schema_id,
        events,
        schema_room(base),
    );
    let schema = &evolution.schema;
    let layout = RowLayout::new(schema)?;
    debug_assert!(schema.field_by_name(TS).is_some());
    let ts_id = schema.fields[layout.ts_index()].id;

    // Partitioning: group the events by partition value, in event order.
    let (spec, spec_is_new, last_partition_id) = resolve_spec(base, options.partition_by, ts_id);
    let transform = spec.fields.first().map(|f| f.transform.clone());
    let mut groups: BTreeMap<Option<i32>, Vec<&ChangeEvent>> = BTreeMap::new();
    for e in events {
        let micros = e.timestamp_micros()?;
        let key = transform.as_ref().and_then(|t| t.of_micros(micros));
        groups.entry(key).or_default().push(e);
    }
    // The watermarks of every change the commit applies (a current-state
    // commit writes no row for a DELETE, yet applies it).
    let mut sources: BTreeMap<String, Watermark> = BTreeMap::new();
    for e in extra.applied.unwrap_or(events) {
        sources
            .entry(e.source_id.clone())
            .or_default()
            .raise(Watermark {
                batch_seq: e.batch_seq,
                event_seq: e.sequence,
            });
    }

    // Data files.
    let settings = ParquetSettings {
        compression: options.compression,
        row_group_size: options.row_group_size,
        target_file_size: options.target_file_size,
    };
    let mut overflow = BTreeMap::new();
    let mut data = DataFiles::default();
    for (value, group) in &groups {
        let dir = match (&transform, value) {
            (Some(Transform::Day), Some(d)) => format!("data/_cdc_ts_day={}", day_string(*d)),
            (Some(Transform::Hour), Some(h)) => format!("data/_cdc_ts_hour={}", hour_string(*h)),
            _ => "data".to_string(),
        };
        let partition = if transform.is_some() {
            vec![*value]
        } else {
            vec![]
        };
        for file in write_data_files(schema, &layout, group, &settings, &mut overflow)? {
            data.add(&start, ids, schema, &dir, partition.clone(), file)?;
        }
    }

    let properties = BTreeMap::from([
        ("write.format.default".to_string(), "parquet".to_string()),
        ("dolake.table-layout".to_string(), extra.layout.to_string()),
    ]);
    finish(
        start,
        options,
        ids,
        marks,
        Written {
            schema: evolution.schema,
            last_column_id: evolution.last_column_id,
            spec,
            spec_is_new,
            last_partition_id,
            data,
            overflow,
            added_columns: evolution.added,
            sources,
            new_table_properties: properties,
            table_properties: extra.table_properties,
            deletes: extra.deletes,
            summary: extra.summary,
        },
    )
}

/// The start of every commit: the checks that do not depend on the rows,
/// the table's keys and its location.
pub(crate) struct Start<'a> {
    paths: TablePaths,
    location: String,
    current: Option<&'a TableState>,
}

impl<'a> Start<'a> {
    /// Checks `marks`, the table name, that there are rows (`rows`) and that
    /// the snapshot id is new, and that `current` is consistent.
    pub(crate) fn new(
        rows: usize,
        current: Option<&'a TableState>,
        options: &WriteOptions,
        ids: &CommitIds,
        marks: &BTreeMap<String, String>,
    ) -> Result<Self> {
        if let Some(bad) = marks.keys().find(|k| !k.starts_with(SUMMARY_MARK_PREFIX)) {
            return Err(Error::internal(format!(
                "summary mark {bad:?} must start with {SUMMARY_MARK_PREFIX:?}"
            )));
        }
        let paths = TablePaths::new(&options.namespace, &options.table)?;
        if rows == 0 {
            return Err(Error::internal("a commit needs at least one event"));
        }
        if ids.snapshot_id <= 0 {
            return Err(Error::internal("snapshot ids must be positive"));
        }
        let base = current.map(|c| &c.metadata);
        if let Some(b) = base {
            if b.snapshot(ids.snapshot_id).is_some() {
                return Err(Error::internal(format!(
                    "snapshot id {} is already used in the table",
                    ids.snapshot_id
                )));
            }
            if let Some(s) = b.current_snapshot() {
                if let Some(total) = summary_u64(&s.summary, "total-records") {
                    let listed: i64 = current
                        .map(|c| &c.manifests)
                        .into_iter()
                        .flatten()
                        .filter(|m| m.content == 0)
                        .map(|m| m.added_rows_count + m.existing_rows_count)
                        .sum();
                    if listed != total as i64 {
                        return Err(lake_error(format!(
                            "the manifest list given holds {listed} rows but snapshot {} has {total}; it is not the current snapshot's",
                            s.snapshot_id
                        )));
                    }
                }
            }
        }
        let location = match base {
            Some(b) => b.location.trim_end_matches('/').to_string(),
            None => format!(
                "{}/{}",
                options.warehouse_location.trim_end_matches('/'),
                paths.prefix()
            ),
        };
        Ok(Self {
            paths,
            location,
            current,
        })
    }

    /// The table's current metadata.
    pub(crate) fn base(&self) -> Option<&'a TableMetadata> {
        self.current.map(|c| &c.metadata)
    }

    /// The object key of a location inside the table.
    fn key_of(&self, loc: &str) -> Result<String> {
        self.paths
            .key_for_location(&self.location, loc)
            .ok_or_else(|| Error::internal(format!("{loc} is outside the table")))
    }
}

/// The data files of a commit: their manifest entries and their puts.
#[derive(Default)]
pub(crate) struct DataFiles {
    files: Vec<DataFile>,
    puts: Vec<PutObject>,
    bytes: u64,
}

impl DataFiles {
    /// Adds `file`, written with `schema`, under `dir` (relative to the
    /// table location) with partition values `partition`.
    pub(crate) fn add(
        &mut self,
        start: &Start<'_>,
        ids: &CommitIds,
        schema: &Schema,
        dir: &str,
        partition: Vec<Option<i32>>,
        file: EncodedFile,
    ) -> Result<()> {
        let n = self.files.len();
        let file_path = format!(
            "{}/{dir}/{}-{n:05}.parquet",
            start.location, ids.commit_uuid
        );
        let mut df = DataFile {
            content: 0,
            file_path: file_path.clone(),
            partition,
            record_count: file.record_count as i64,
            file_size_in_bytes: file.bytes.len() as i64,
            column_sizes: file.column_sizes,
            value_counts: BTreeMap::new(),
            null_value_counts: BTreeMap::new(),
            nan_value_counts: BTreeMap::new(),
            lower_bounds: BTreeMap::new(),
            upper_bounds: BTreeMap::new(),
        };
        df.set_stats(schema, &file.stats);
        self.bytes += file.bytes.len() as u64;
        self.puts.push(PutObject {
            key: start.key_of(&file_path)?,
            bytes: file.bytes,
            kind: ObjectKind::Data,
        });
        self.files.push(df);
        Ok(())
    }
}

/// What a commit wrote, for [`finish`].
pub(crate) struct Written {
    /// The schema the files were written with (the new current schema).
    pub schema: Schema,
    /// Highest column id assigned.
    pub last_column_id: i32,
    /// The spec the files were written with (the new default spec).
    pub spec: PartitionSpec,
    /// Whether `spec` is not yet in the table.
    pub spec_is_new: bool,
    /// Highest partition field id assigned.
    pub last_partition_id: i32,
    /// The data files.
    pub data: DataFiles,
    /// Values put in `_cdc_overflow`, per column name.
    pub overflow: BTreeMap<String, u64>,
    /// Columns added to the schema.
    pub added_columns: Vec<String>,
    /// Highest sequences per source, recorded in the summary.
    pub sources: BTreeMap<String, Watermark>,
    /// Properties of the table when this commit creates it.
    pub new_table_properties: BTreeMap<String, String>,
    /// Properties set by every commit (the table's kind and CDC table).
    pub table_properties: BTreeMap<String, String>,
    /// Delete files the commit adds and replaces (current-state tables).
    pub deletes: Option<DeleteChanges>,
    /// Summary keys this commit sets besides the standard ones.
    pub summary: BTreeMap<String, String>,
}

/// The delete files of a commit to a current-state table: the one delete
/// manifest of the new snapshot, which replaces every delete manifest of
/// the current one.
pub(crate) struct DeleteChanges {
    /// Every entry of the new delete manifest: live delete files carried
    /// (EXISTING), replaced ones (DELETED) and new ones (ADDED).
    pub entries: Vec<ManifestEntry>,
    /// The new delete files: location and bytes.
    pub files: Vec<(String, Vec<u8>)>,
}

/// The manifest, the manifest list, the snapshot and the metadata of a
/// commit of `written`: the commit's remaining puts, and the commit.
pub(crate) fn finish(
    start: Start<'_>,
    options: &WriteOptions,
    ids: &CommitIds,
    marks: &BTreeMap<String, String>,
    written: Written,
) -> Result<Commit> {
    let Written {
        schema,
        last_column_id,
        spec,
        spec_is_new,
        last_partition_id,
        data,
        overflow,
        added_columns,
        sources,
        new_table_properties,
        table_properties,
        deletes,
        summary: extra_summary,
    } = written;
    let DataFiles {
        files: data_files,
        mut puts,
        bytes: data_bytes,
    } = data;
    let schema = &schema;
    let added_files: Vec<(String, u64)> = data_files
        .iter()
        .map(|f| (f.file_path.clone(), f.record_count as u64))
        .collect();
    let current = start.current;
    let base = start.base();
    let location = &start.location;
    let paths = &start.paths;

    // Manifests and manifest list.
    let sequence_number = base.map(|b| b.last_sequence_number).unwrap_or(0) + 1;
    let sync = *ids.commit_uuid.as_bytes();
    let added_rows: i64 = data_files.iter().map(|f| f.record_count).sum();
    let mut manifests = Vec::new();
    if !data_files.is_empty() {
        let manifest_path = format!("{location}/metadata/{}-m0.avro", ids.commit_uuid);
        let manifest = write_manifest(schema, &spec, ids.snapshot_id, &data_files, sync)?;
        let partitions = super::rewrite::partition_summaries(&spec, data_files.iter());
        manifests.push(ManifestFile {
            manifest_path: manifest_path.clone(),
            manifest_length: manifest.len() as i64,
            partition_spec_id: spec.spec_id,
            content: 0,
            sequence_number,
            min_sequence_number: sequence_number,
            added_snapshot_id: ids.snapshot_id,
            added_files_count: i32::try_from(data_files.len())
                .map_err(|_| Error::internal("too many data files in one commit"))?,
            existing_files_count: 0,
            deleted_files_count: 0,
            added_rows_count: added_rows,
            existing_rows_count: 0,
            deleted_rows_count: 0,
            partitions: Some(partitions),
            key_metadata: None,
        });
        puts.push(PutObject {
            key: start.key_of(&manifest_path)?,
            bytes: manifest,
            kind: ObjectKind::Manifest,
        });
    }
    let (delete_list, delete_stats) = match deletes {
        Some(d) => delete_manifest(&start, ids, schema, &spec, sequence_number, d, &mut puts)?,
        None => (None, DeleteStats::default()),
    };
    // A commit with deletes rewrites the table's one delete manifest.
    let rewrote_deletes = delete_list.is_some();
    manifests.extend(delete_list);
    manifests.extend(
        current
            .map(|c| c.manifests.iter().cloned())
            .into_iter()
            .flatten()
            .filter(|m| !rewrote_deletes || m.content == 0),
    );
    let parent = base.and_then(|b| b.current_snapshot_id);
    let list_path = format!(
        "{location}/metadata/snap-{}-1-{}.avro",
        ids.snapshot_id, ids.commit_uuid
    );
    let list = write_manifest_list(ids.snapshot_id, parent, sequence_number, &manifests, sync)?;
    puts.push(PutObject {
        key: start.key_of(&list_path)?,
        bytes: list,
        kind: ObjectKind::ManifestList,
    });

    // Snapshot summary.
    let prev_summary = base
        .and_then(TableMetadata::current_snapshot)
        .map(|s| s.summary.clone())
        .unwrap_or_default();
    let prev = |k: &str| summary_u64(&prev_summary, k).unwrap_or(0);
    let mut summary = BTreeMap::new();
    let mut put = |k: &str, v: u64| {
        summary.insert(k.to_string(), v.to_string());
    };
    let changed: BTreeSet<_> = data_files.iter().map(|f| f.partition.clone()).collect();
    put("added-data-files", data_files.len() as u64);
    put("added-records", added_rows as u64);
    put("added-files-size", data_bytes);
    put("changed-partition-count", changed.len() as u64);
    put("total-records", prev("total-records") + added_rows as u64);
    put(
        "total-data-files",
        prev("total-data-files") + data_files.len() as u64,
    );
    let d = delete_stats;
    put(
        "total-files-size",
        (prev("total-files-size") + data_bytes + d.added_bytes).saturating_sub(d.removed_bytes),
    );
    if rewrote_deletes {
        put("added-delete-files", d.added_files);
        put("removed-delete-files", d.removed_files);
        put("added-position-delete-files", d.added_files);
        put("removed-position-delete-files", d.removed_files);
        put("added-position-deletes", d.added_positions);
        put("removed-position-deletes", d.removed_positions);
    }
    put(
        "total-delete-files",
        (prev("total-delete-files") + d.added_files).saturating_sub(d.removed_files),
    );
    put(
        "total-position-deletes",
        (prev("total-position-deletes") + d.added_positions).saturating_sub(d.removed_positions),
    );
    put("total-equality-deletes", prev("total-equality-deletes"));
    let overflow_total: u64 = overflow.values().sum();
    put(SUMMARY_OVERFLOW, overflow_total);
    // Only this commit's sources go in the summary; the cumulative marks of
    // every source go in one table property (see WATERMARKS_PROPERTY).
    let mut cumulative = base.map(committed_watermarks).unwrap_or_default();
    for (source, w) in &sources {
        put(
            &format!("{SUMMARY_SOURCE_PREFIX}{source}{SUMMARY_BATCH_SUFFIX}"),
            w.batch_seq,
        );
        put(
            &format!("{SUMMARY_SOURCE_PREFIX}{source}{SUMMARY_EVENT_SUFFIX}"),
            w.event_seq,
        );
        cumulative.entry(source.clone()).or_default().raise(*w);
    }
    for (k, v) in prev_summary
        .iter()
        .filter(|(k, _)| k.starts_with(SUMMARY_MARK_PREFIX))
        .chain(marks)
    {
        summary.insert(k.clone(), v.clone());
    }
    summary.extend(extra_summary);
    let operation = if d.added_files + d.removed_files > 0 {
        Operation::Overwrite
    } else {
        Operation::Append
    };
    summary.insert(
        Operation::SUMMARY_KEY.to_string(),
        operation.as_str().to_string(),
    );

    // Metadata.
    let timestamp_ms = ids
        .now_ms
        .max(base.map(|b| b.last_updated_ms).unwrap_or(i64::MIN));
    let mut metadata = match base {
        Some(b) => b.clone(),
        None => TableMetadata {
            format_version: 2,
            table_uuid: ids.table_uuid.to_string(),
            location: location.clone(),
            last_sequence_number: 0,
            last_updated_ms: timestamp_ms,
            last_column_id: 0,
            schemas: Vec::new(),
            current_schema_id: 0,
            partition_specs: Vec::new(),
            default_spec_id: 0,
            last_partition_id: 0,
            properties: new_table_properties,
            current_snapshot_id: None,
            snapshots: Vec::new(),
            snapshot_log: Vec::new(),
            metadata_log: Vec::new(),
            sort_orders: vec![SortOrder {
                order_id: 0,
                fields: Vec::new(),
            }],
            default_sort_order_id: 0,
            refs: BTreeMap::new(),
            extra: BTreeMap::new(),
        },
    };
    if !metadata
        .schemas
        .iter()
        .any(|s| s.schema_id == schema.schema_id)
    {
        metadata.schemas.push(schema.clone());
    }
    metadata.current_schema_id = schema.schema_id;
    metadata.last_column_id = last_column_id;
    if spec_is_new {
        metadata.partition_specs.push(spec.clone());
    }
    metadata.default_spec_id = spec.spec_id;
    metadata.last_partition_id = last_partition_id;
    metadata.properties.extend(table_properties);
    metadata.properties.insert(
        "write.parquet.compression-codec".to_string(),
        codec_name(options.compression).to_string(),
    );
    if !cumulative.is_empty() {
        metadata.properties.insert(
            WATERMARKS_PROPERTY.to_string(),
            watermarks_property(&cumulative),
        );
    }
    let previous = base
        .zip(current)
        .map(|(b, c)| (c.version, b.last_updated_ms));
    let (metadata, metadata_puts, metadata_key, version) = add_snapshot(
        metadata,
        previous,
        paths,
        Snapshot {
            snapshot_id: ids.snapshot_id,
            parent_snapshot_id: parent,
            sequence_number,
            timestamp_ms,
            manifest_list: list_path,
            summary,
            schema_id: Some(schema.schema_id),
            extra: BTreeMap::new(),
        },
    );
    puts.extend(metadata_puts);
    Ok(Commit {
        puts,
        state: TableState {
            version,
            metadata,
            manifests,
        },
        snapshot_id: ids.snapshot_id,
        metadata_key,
        rows: added_rows as u64,
        data_files: data_files.len(),
        data_bytes,
        overflow,
        added_columns,
        sources,
        added_files,
    })
}

/// What the delete files of a commit change, for the summary.
#[derive(Debug, Clone, Copy, Default)]
struct DeleteStats {
    added_files: u64,
    removed_files: u64,
    added_positions: u64,
    removed_positions: u64,
    added_bytes: u64,
    removed_bytes: u64,
}

/// Writes the delete manifest of `changes` (none when it has no entry),
/// pushing the delete files' puts, then the manifest's.
fn delete_manifest(
    start: &Start<'_>,
    ids: &CommitIds,
    schema: &Schema,
    spec: &PartitionSpec,
    sequence_number: i64,
    changes: DeleteChanges,
    puts: &mut Vec<PutObject>,
) -> Result<(Option<ManifestFile>, DeleteStats)> {
    let DeleteChanges { entries, files } = changes;
    let mut stats = DeleteStats::default();
    for (location, bytes) in files {
        stats.added_bytes += bytes.len() as u64;
        puts.push(PutObject {
            key: start.key_of(&location)?,
            bytes,
            kind: ObjectKind::Data,
        });
    }
    if entries.is_empty() {
        return Ok((None, stats));
    }
    let path = format!("{}/metadata/{}-d0.avro", start.location, ids.commit_uuid);
    let bytes = write_manifest_entries(schema, spec, &entries, *ids.commit_uuid.as_bytes())?;
    let manifest = super::rewrite::listed_manifest(
        path.clone(),
        bytes.len(),
        spec,
        sequence_number,
        ids.snapshot_id,
        &entries,
    )?;
    stats.added_files = manifest.added_files_count as u64;
    stats.removed_files = manifest.deleted_files_count as u64;
    stats.added_positions = manifest.added_rows_count as u64;
    stats.removed_positions = manifest.deleted_rows_count as u64;
    stats.removed_bytes = super::rewrite::removed_bytes(&entries);
    puts.push(PutObject {
        key: start.key_of(&path)?,
        bytes,
        kind: ObjectKind::Manifest,
    });
    Ok((Some(manifest), stats))
}

/// The last step of every commit kind (append, replace): `snapshot` becomes
/// the current snapshot of `main` in `metadata`, the table's next version
/// after `previous` (its version and last-updated time, logged in a
/// `metadata-log` bounded to [`METADATA_LOG_MAX`]; `None` when the commit
/// creates the table). Returns the metadata, its puts (the metadata file,
/// then `version-hint.text`), its key and its version.
pub(crate) fn add_snapshot(
    mut metadata: TableMetadata,
    previous: Option<(u64, i64)>,
    paths: &TablePaths,
    snapshot: Snapshot,
) -> (TableMetadata, Vec<PutObject>, String, u64) {
    if let Some((version, last_updated_ms)) = previous {
        let location = metadata.location.trim_end_matches('/').to_string();
        metadata.metadata_log.push(MetadataLogEntry {
            timestamp_ms: last_updated_ms,
            metadata_file: format!("{location}/metadata/v{version}.metadata.json"),
        });
        let excess = metadata.metadata_log.len().saturating_sub(METADATA_LOG_MAX);
        metadata.metadata_log.drain(..excess);
    }
    let version = previous.map_or(0, |(v, _)| v) + 1;
    metadata.last_sequence_number = snapshot.sequence_number;
    metadata.last_updated_ms = snapshot.timestamp_ms;
    metadata.current_snapshot_id = Some(snapshot.snapshot_id);
    metadata.snapshot_log.push(SnapshotLogEntry {
        timestamp_ms: snapshot.timestamp_ms,
        snapshot_id: snapshot.snapshot_id,
    });
    metadata.refs.insert(
        "main".to_string(),
        SnapshotRef {
            snapshot_id: snapshot.snapshot_id,
            kind: "branch".to_string(),
            extra: BTreeMap::new(),
        },
    );
    metadata.snapshots.push(snapshot);
    let metadata_key = paths.metadata_key(version);
    let puts = vec![
        PutObject {
            key: metadata_key.clone(),
            bytes: metadata.to_json(),
            kind: ObjectKind::Metadata,
        },
        PutObject {
            key: paths.version_hint_key(),
            bytes: version.to_string().into_bytes(),
            kind: ObjectKind::VersionHint,
        },
    ];
    (metadata, puts, metadata_key, version)
}
