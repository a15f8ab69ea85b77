//! The dead-letter table: where a flush puts, whole and unchanged, the events
//! it cannot write to their own table, so that no event can block a flush.
//!
//! The table [`REJECTED_TABLE`] lives in the same namespace as the tables it
//! serves. Its rows are written by [`plan_rejected_commit`], a commit like
//! [`plan_commit_with_marks`](super::plan_commit_with_marks) (same files,
//! manifests, snapshot summary and marks) of a fixed schema:
//!
//! | id | name | type | |
//! |---|---|---|---|
//! | 1 | `table_name` | string, required | the table the event was for |
//! | 2 | `source_id` | string, required | `sourceDoId` |
//! | 3 | `batch_seq` | decimal(20, 0), required | the batch's `sequenceNumber` |
//! | 4 | `sequence` | decimal(20, 0), required | the event's `sequence` |
//! | 5 | `rejected_at` | timestamptz, required | the commit's time, microseconds |
//! | 6 | `reason` | string, required | why the lake could not write it |
//! | 7 | `raw` | string, required | the event's JSON text, exactly as given |
//!
//! Sequence numbers are `u64`, which a `long` does not hold; `decimal(20, 0)`
//! holds every one exactly and still compares as a number. The column is
//! `table_name`, not `table`, which is a reserved word in SQL. The table is
//! unpartitioned (dead letters are rare) and has the property
//! `dolake.table-kind` = `dead-letter`. Nothing a row holds can make the
//! commit fail: every column takes any string (up to 2 GiB each), and every
//! `u64`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::builder::{Decimal128Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field as ArrowField, Schema as ArrowSchema, TimeUnit};
use parquet::arrow::{ArrowWriter, PARQUET_FIELD_ID_META_KEY};
use parquet::basic::{Compression as Codec, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use super::commit::{
    finish, resolve_spec, Commit, CommitIds, DataFiles, Start, WriteOptions, Written,
};
use super::metadata::{Field, FieldType, Schema};
use super::parquet::EncodedFile;
use super::stats::ColumnStats;
use super::table::TableState;
use crate::config::{Compression, PartitionBy};
use crate::error::{Error, ErrorKind, Result};

/// Name of the dead-letter table (in the namespace of the tables it serves).
/// Event table names cannot take it: see
/// [`RESERVED_TABLE_PREFIX`](super::table::RESERVED_TABLE_PREFIX).
pub const REJECTED_TABLE: &str = "_dolake_rejected";

/// Table property naming what a DoLake table holds.
pub const TABLE_KIND_PROPERTY: &str = "dolake.table-kind";

/// [`TABLE_KIND_PROPERTY`] of the dead-letter table.
pub const DEAD_LETTER_KIND: &str = "dead-letter";

/// The Iceberg type of the sequence columns.
pub const SEQUENCE_TYPE: &str = "decimal(20, 0)";

/// Most rows encoded per Arrow batch.
const CHUNK_ROWS: usize = 1024;

/// Most bytes of text per Arrow batch (a batch always takes one row). Arrow
/// strings have 32-bit offsets: a batch's column must stay below 2 GiB.
const CHUNK_TEXT_BYTES: usize = 64 * 1024 * 1024;

/// One event the lake could not write, and why. Any strings and numbers
/// make a valid row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedEvent {
    /// The table the event was for (column `table_name`).
    pub table: String,
    /// `sourceDoId` of the shard that sent it.
    pub source_id: String,
    /// `sequenceNumber` of the batch it came in.
    pub batch_seq: u64,
    /// The event's `sequence`.
    pub sequence: u64,
    /// The event's JSON text, written exactly as given.
    pub raw: String,
    /// Why it was rejected.
    pub reason: String,
}

/// What a column of the dead-letter table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    Table,
    Source,
    BatchSeq,
    Sequence,
    RejectedAt,
    Reason,
    Raw,
}

/// The columns in schema order, with their names.
const COLUMNS: [(Col, &str); 7] = [
    (Col::Table, "table_name"),
    (Col::Source, "source_id"),
    (Col::BatchSeq, "batch_seq"),
    (Col::Sequence, "sequence"),
    (Col::RejectedAt, "rejected_at"),
    (Col::Reason, "reason"),
    (Col::Raw, "raw"),
];

impl Col {
    fn field_type(self) -> FieldType {
        match self {
            Col::BatchSeq | Col::Sequence => FieldType::Other(Value::from(SEQUENCE_TYPE)),
            Col::RejectedAt => FieldType::Timestamptz,
            _ => FieldType::String,
        }
    }

    /// Whether `t` is this column's type (decimals compared without spaces,
    /// as other writers may format them).
    fn accepts(self, t: &FieldType) -> bool {
        match (self.field_type(), t) {
            (FieldType::Other(_), FieldType::Other(Value::String(s))) => {
                s.replace(' ', "") == SEQUENCE_TYPE.replace(' ', "")
            }
            (want, got) => &want == got,
        }
    }

    fn arrow_type(self) -> DataType {
        match self {
            Col::BatchSeq | Col::Sequence => DataType::Decimal128(20, 0),
            Col::RejectedAt => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            _ => DataType::Utf8,
        }
    }

    fn text(self, row: &RejectedEvent) -> Option<&str> {
        match self {
            Col::Table => Some(&row.table),
            Col::Source => Some(&row.source_id),
            Col::Reason => Some(&row.reason),
            Col::Raw => Some(&row.raw),
            _ => None,
        }
    }
}

/// The schema of a new dead-letter table.
pub fn rejected_schema() -> Schema {
    let fields = COLUMNS
        .iter()
        .zip(1..)
        .map(|(&(col, name), id)| Field {
            id,
            name: name.to_string(),
            required: true,
            field_type: col.field_type(),
            doc: None,
            extra: BTreeMap::new(),
        })
        .collect();
    Schema::new(0, fields)
}

/// Where each column is in `schema`, which must hold them all with their
/// types; any other column must be optional (it is left null).
fn layout(schema: &Schema) -> Result<[usize; 7]> {
    let by_name: HashMap<&str, usize> = schema
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.as_str(), i))
        .collect();
    let mut at = [0; 7];
    for (slot, &(col, name)) in at.iter_mut().zip(&COLUMNS) {
        *slot = match by_name.get(name) {
            Some(&i) if col.accepts(&schema.fields[i].field_type) => i,
            _ => {
                return Err(Error::new(
                    ErrorKind::Lake,
                    format!(
                        "the table's current schema has no column `{name}` of type {}; it is not a DoLake dead-letter table",
                        serde_json::to_string(&col.field_type()).unwrap_or_default()
                    ),
                ))
            }
        };
    }
    if let Some(f) = schema
        .fields
        .iter()
        .enumerate()
        .find(|(i, f)| f.required && !at.contains(i))
        .map(|(_, f)| f)
    {
        return Err(Error::new(
            ErrorKind::Lake,
            format!(
                "the dead-letter table has a required column `{}` DoLake does not write",
                f.name
            ),
        ));
    }
    Ok(at)
}

/// Plans the commit of `rows` to the dead-letter table (`options.table`,
/// normally [`REJECTED_TABLE`]) onto `current` (`None` creates the table).
/// Like [`plan_commit_with_marks`](super::plan_commit_with_marks): writes
/// nothing, records `marks` in the snapshot summary and carries the previous
/// snapshot's marks forward. `rejected_at` is `ids.now_ms`. The table is
/// never partitioned, whatever `options.partition_by` says.
pub fn plan_rejected_commit(
    rows: &[RejectedEvent],
    current: Option<&TableState>,
    options: &WriteOptions,
    ids: &CommitIds,
    marks: &BTreeMap<String, String>,
) -> Result<Commit> {
    let start = Start::new(rows.len(), current, options, ids, marks)?;
    let base = start.base();
    let (schema, last_column_id) = match base {
        Some(b) => (
            b.current_schema()
                .cloned()
                .ok_or_else(|| Error::internal("table metadata without its current schema"))?,
            b.last_column_id,
        ),
        None => (rejected_schema(), COLUMNS.len() as i32),
    };
    let at = layout(&schema)?;
    let rejected_at = ids.now_ms.checked_mul(1000).ok_or_else(|| {
        Error::internal(format!("the commit time {} ms is out of range", ids.now_ms))
    })?;
    let (spec, spec_is_new, last_partition_id) = resolve_spec(base, PartitionBy::None, 0);

    let mut data = DataFiles::default();
    for file in write_files(rows, &schema, &at, options, rejected_at)? {
        data.add(&start, ids, &schema, "data", vec![], file)?;
    }
    let properties = BTreeMap::from([
        ("write.format.default".to_string(), "parquet".to_string()),
        (
            TABLE_KIND_PROPERTY.to_string(),
            DEAD_LETTER_KIND.to_string(),
        ),
    ]);
    finish(
        start,
        options,
        ids,
        marks,
        Written {
            schema,
            last_column_id,
            spec,
            spec_is_new,
            last_partition_id,
            data,
            overflow: BTreeMap::new(),
            added_columns: Vec::new(),
            sources: BTreeMap::new(),
            new_table_properties: properties,
            table_properties: BTreeMap::new(),
            deletes: None,
            summary: BTreeMap::new(),
        },
    )
}

fn parquet_error(e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!("encoding a dead-letter Parquet file failed: {e}"),
    )
}

/// The writer settings of the changelog's data files (see `parquet.rs`).
fn properties(options: &WriteOptions) -> WriterProperties {
    let codec = match options.compression {
        Compression::None => Codec::UNCOMPRESSED,
        Compression::Snappy => Codec::SNAPPY,
        Compression::Gzip => Codec::GZIP(GzipLevel::default()),
        Compression::Zstd => Codec::ZSTD(ZstdLevel::default()),
    };
    WriterProperties::builder()
        .set_compression(codec)
        .set_max_row_group_row_count(Some(options.row_group_size.max(1)))
        .set_created_by(format!("dolake {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Bytes of text of a row.
fn text_bytes(row: &RejectedEvent) -> usize {
    row.table.len() + row.source_id.len() + row.reason.len() + row.raw.len()
}

enum Builder {
    Str(StringBuilder),
    Dec(Decimal128Builder),
    Ts(TimestampMicrosecondBuilder),
}

impl Builder {
    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::Dec(b) => Arc::new(b.finish()),
            Builder::Ts(b) => Arc::new(b.finish()),
        }
    }
}

struct OpenFile {
    writer: ArrowWriter<Vec<u8>>,
    rows: u64,
    stats: Vec<ColumnStats>,
}

/// Encodes `rows` into Parquet files of about `options.target_file_size`
/// bytes at most, with the field ids of `schema` (`at`: the columns'
/// positions in it).
fn write_files(
    rows: &[RejectedEvent],
    schema: &Schema,
    at: &[usize; 7],
    options: &WriteOptions,
    rejected_at: i64,
) -> Result<Vec<EncodedFile>> {
    if let Some(r) = rows.iter().find(|r| text_bytes(r) > i32::MAX as usize) {
        return Err(Error::internal(format!(
            "a rejected event of table {:?} holds {} bytes of text, more than a Parquet value can",
            r.table.get(..64).unwrap_or(&r.table),
            text_bytes(r)
        )));
    }
    let fields: Vec<ArrowField> = COLUMNS
        .iter()
        .zip(at)
        .map(|(&(col, name), &i)| {
            let meta = HashMap::from([(
                PARQUET_FIELD_ID_META_KEY.to_string(),
                schema.fields[i].id.to_string(),
            )]);
            ArrowField::new(name, col.arrow_type(), false).with_metadata(meta)
        })
        .collect();
    let arrow = Arc::new(ArrowSchema::new(fields));
    let props = properties(options);
    let mut files = Vec::new();
    let mut open: Option<OpenFile> = None;
    let mut from = 0;
    while from < rows.len() {
        // One chunk: at most CHUNK_ROWS rows and CHUNK_TEXT_BYTES of text,
        // and at least one row.
        let (mut to, mut bytes) = (from, 0_usize);
        while to < rows.len() && to - from < CHUNK_ROWS {
            let n = text_bytes(&rows[to]);
            if to > from && bytes + n > CHUNK_TEXT_BYTES {
                break;
            }
            bytes += n;
            to += 1;
        }
        let chunk = &rows[from..to];
        from = to;
        let mut chunk_stats = vec![ColumnStats::new(); schema.fields.len()];
        let mut columns = Vec::with_capacity(COLUMNS.len());
        for (&(col, _), &i) in COLUMNS.iter().zip(at) {
            let st = &mut chunk_stats[i];
            let mut b = match col {
                Col::BatchSeq | Col::Sequence => Builder::Dec(
                    Decimal128Builder::with_capacity(chunk.len())
                        .with_precision_and_scale(20, 0)
                        .map_err(parquet_error)?,
                ),
                Col::RejectedAt => Builder::Ts(
                    TimestampMicrosecondBuilder::with_capacity(chunk.len()).with_timezone("+00:00"),
                ),
                _ => Builder::Str(StringBuilder::new()),
            };
            for row in chunk {
                match (&mut b, col) {
                    (Builder::Dec(d), Col::BatchSeq) => {
                        d.append_value(i128::from(row.batch_seq));
                        st.decimal(i128::from(row.batch_seq));
                    }
                    (Builder::Dec(d), _) => {
                        d.append_value(i128::from(row.sequence));
                        st.decimal(i128::from(row.sequence));
                    }
                    (Builder::Ts(t), _) => {
                        t.append_value(rejected_at);
                        st.long(rejected_at);
                    }
                    (Builder::Str(s), col) => {
                        let v = col.text(row).unwrap_or_default();
                        s.append_value(v);
                        match col {
                            // Bounds of documents and messages help no
                            // filter; they are left out.
                            Col::Raw | Col::Reason => st.unbounded(),
                            _ => st.string(v),
                        }
                    }
                }
            }
            columns.push(b.finish());
        }
        let batch = RecordBatch::try_new(arrow.clone(), columns).map_err(parquet_error)?;
        let file = match &mut open {
            Some(f) => f,
            None => open.insert(OpenFile {
                writer: ArrowWriter::try_new(Vec::new(), arrow.clone(), Some(props.clone()))
                    .map_err(parquet_error)?,
                rows: 0,
                stats: vec![ColumnStats::new(); schema.fields.len()],
            }),
        };
        file.writer.write(&batch).map_err(parquet_error)?;
        file.rows += chunk.len() as u64;
        for (total, s) in file.stats.iter_mut().zip(&chunk_stats) {
            total.merge(s);
        }
        if file.writer.bytes_written() + file.writer.in_progress_size() >= options.target_file_size
        {
            if let Some(f) = open.take() {
                files.push(close(f, schema, at)?);
            }
        }
    }
    if let Some(f) = open.take() {
        files.push(close(f, schema, at)?);
    }
    Ok(files)
}

fn close(f: OpenFile, schema: &Schema, at: &[usize; 7]) -> Result<EncodedFile> {
    let mut writer = f.writer;
    writer.flush().map_err(parquet_error)?;
    let mut column_sizes = BTreeMap::new();
    for rg in writer.flushed_row_groups() {
        for (col, &i) in rg.columns().iter().zip(at) {
            *column_sizes.entry(schema.fields[i].id).or_insert(0) += col.compressed_size();
        }
    }
    let bytes = writer.into_inner().map_err(parquet_error)?;
    Ok(EncodedFile {
        bytes,
        record_count: f.rows,
        stats: f.stats,
        column_sizes,
    })
}
