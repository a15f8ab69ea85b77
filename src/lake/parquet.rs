//! Parquet data files, written in memory with the `parquet` crate's Arrow
//! writer.
//!
//! Every Arrow field carries its Iceberg field id (`PARQUET:field_id`), so
//! readers map columns by id, not by name. `_cdc_ts` is an INT64 timestamp in
//! microseconds, adjusted to UTC. Rows are encoded in chunks; a file is closed
//! once its encoded size reaches the target, so a large flush becomes several
//! bounded files instead of one unbounded buffer. Column statistics for the
//! manifest are collected from the values themselves while encoding.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field as ArrowField, Schema as ArrowSchema, TimeUnit};
use parquet::arrow::{ArrowWriter, PARQUET_FIELD_ID_META_KEY};
use parquet::basic::{Compression as Codec, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::changelog::{Cell, ChangeEvent, RowLayout};
use super::metadata::{FieldType, Schema};
use super::stats::ColumnStats;
use crate::config::Compression;
use crate::error::{Error, ErrorKind, Result};

/// Rows encoded per Arrow batch (the unit of the file-size check).
const CHUNK_ROWS: usize = 1024;

/// How data files are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParquetSettings {
    /// Codec.
    pub compression: Compression,
    /// Most rows per row group.
    pub row_group_size: usize,
    /// A file is closed once its encoded size reaches this many bytes.
    pub target_file_size: usize,
}

/// One encoded data file.
#[derive(Debug, Clone)]
pub struct EncodedFile {
    /// The whole Parquet file.
    pub bytes: Vec<u8>,
    /// Rows.
    pub record_count: u64,
    /// Statistics per schema field (same order as the schema's fields;
    /// fields not written have empty statistics).
    pub stats: Vec<ColumnStats>,
    /// Compressed size per written field id.
    pub column_sizes: BTreeMap<i32, i64>,
}

fn parquet_error(e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!("encoding a Parquet file failed: {e}"),
    )
}

/// The Arrow type of a column, `None` for types DoLake does not write.
fn arrow_type(t: &FieldType) -> Option<DataType> {
    match t {
        FieldType::Boolean => Some(DataType::Boolean),
        FieldType::Long => Some(DataType::Int64),
        FieldType::Double => Some(DataType::Float64),
        FieldType::String => Some(DataType::Utf8),
        FieldType::Timestamptz => Some(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("+00:00".into()),
        )),
        FieldType::Other(_) => None,
    }
}

/// The Arrow schema of the written columns, and for each its schema index.
/// Optional columns of types DoLake does not write are left out (readers
/// read them as null); a required one is an error.
pub fn arrow_schema(schema: &Schema) -> Result<(Arc<ArrowSchema>, Vec<usize>)> {
    let mut fields = Vec::new();
    let mut indices = Vec::new();
    for (i, f) in schema.fields.iter().enumerate() {
        match arrow_type(&f.field_type) {
            Some(dt) => {
                let meta =
                    HashMap::from([(PARQUET_FIELD_ID_META_KEY.to_string(), f.id.to_string())]);
                fields.push(ArrowField::new(&f.name, dt, !f.required).with_metadata(meta));
                indices.push(i);
            }
            None if f.required => {
                return Err(Error::new(
                    ErrorKind::Lake,
                    format!(
                        "required column `{}` has a type DoLake cannot write",
                        f.name
                    ),
                ))
            }
            None => {}
        }
    }
    Ok((Arc::new(ArrowSchema::new(fields)), indices))
}

pub(crate) fn properties(s: &ParquetSettings) -> WriterProperties {
    builder(s).build()
}

/// Values of a string column sampled to choose its encoding.
const DICTIONARY_SAMPLE: usize = 256;

/// The properties of a file whose first batch is `first`: dictionary
/// encoding off for string columns whose sample is mostly distinct values
/// (row keys, JSON images, free text). The writer would intern every such
/// value only to fall back to plain encoding past a 1 MiB dictionary, about
/// the size of a whole file; low-cardinality columns keep their dictionary.
pub(crate) fn properties_for(s: &ParquetSettings, first: &RecordBatch) -> WriterProperties {
    let mut b = builder(s);
    for (field, column) in first.schema().fields().iter().zip(first.columns()) {
        let Some(strings) = column.as_any().downcast_ref::<arrow_array::StringArray>() else {
            continue;
        };
        let sample = strings.len().min(DICTIONARY_SAMPLE);
        if sample < 32 {
            continue;
        }
        let distinct: std::collections::HashSet<Option<&str>> = (0..sample)
            .map(|i| strings.is_valid(i).then(|| strings.value(i)))
            .collect();
        if distinct.len() * 2 > sample {
            let path = parquet::schema::types::ColumnPath::new(vec![field.name().clone()]);
            b = b.set_column_dictionary_enabled(path, false);
        }
    }
    b.build()
}

fn builder(s: &ParquetSettings) -> parquet::file::properties::WriterPropertiesBuilder {
    let codec = match s.compression {
        Compression::None => Codec::UNCOMPRESSED,
        Compression::Snappy => Codec::SNAPPY,
        Compression::Gzip => Codec::GZIP(GzipLevel::default()),
        Compression::Zstd => Codec::ZSTD(ZstdLevel::default()),
    };
    WriterProperties::builder()
        .set_compression(codec)
        .set_max_row_group_row_count(Some(s.row_group_size.max(1)))
        .set_created_by(format!("dolake {}", env!("CARGO_PKG_VERSION")))
}

enum Builder {
    Bool(BooleanBuilder),
    Long(Int64Builder),
    Double(Float64Builder),
    Str(StringBuilder),
    Ts(TimestampMicrosecondBuilder),
}

impl Builder {
    fn new(t: &FieldType) -> Self {
        match t {
            FieldType::Boolean => Builder::Bool(BooleanBuilder::new()),
            FieldType::Long => Builder::Long(Int64Builder::new()),
            FieldType::Double => Builder::Double(Float64Builder::new()),
            FieldType::Timestamptz => {
                Builder::Ts(TimestampMicrosecondBuilder::new().with_timezone("+00:00"))
            }
            // Only called for written types; strings for anything else.
            _ => Builder::Str(StringBuilder::new()),
        }
    }

    fn push(&mut self, cell: &Cell, stats: &mut ColumnStats) {
        match (self, cell) {
            (Builder::Bool(b), Cell::Bool(v)) => {
                b.append_value(*v);
                stats.bool(*v);
            }
            (Builder::Long(b), Cell::Long(v)) => {
                b.append_value(*v);
                stats.long(*v);
            }
            (Builder::Ts(b), Cell::Long(v)) => {
                b.append_value(*v);
                stats.long(*v);
            }
            (Builder::Double(b), Cell::Double(v)) => {
                b.append_value(*v);
                stats.double(*v);
            }
            (Builder::Str(b), Cell::Str(v)) => {
                b.append_value(v);
                stats.string(v);
            }
            (b, _) => {
                // A null (a mismatched cell cannot come out of `fit`).
                match b {
                    Builder::Bool(b) => b.append_null(),
                    Builder::Long(b) => b.append_null(),
                    Builder::Ts(b) => b.append_null(),
                    Builder::Double(b) => b.append_null(),
                    Builder::Str(b) => b.append_null(),
                }
                stats.null();
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Long(b) => Arc::new(b.finish()),
            Builder::Double(b) => Arc::new(b.finish()),
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::Ts(b) => Arc::new(b.finish()),
        }
    }
}

struct OpenFile {
    writer: ArrowWriter<Vec<u8>>,
    rows: u64,
    stats: Vec<ColumnStats>,
}

/// Encodes the rows of `events` (all of one partition) into one or more
/// Parquet files of about `target_file_size` bytes at most (a file is closed
/// after the chunk that reaches the target). Values that fit no column are
/// counted in `overflow_counts`.
pub fn write_data_files(
    schema: &Schema,
    layout: &RowLayout<'_>,
    events: &[&ChangeEvent],
    settings: &ParquetSettings,
    overflow_counts: &mut BTreeMap<String, u64>,
) -> Result<Vec<EncodedFile>> {
    let (arrow, written) = arrow_schema(schema)?;
    let mut files = Vec::new();
    let mut open: Option<OpenFile> = None;
    let mut cells = Vec::with_capacity(schema.fields.len());
    for chunk in events.chunks(CHUNK_ROWS) {
        let mut builders: Vec<Builder> = written
            .iter()
            .map(|&i| Builder::new(&schema.fields[i].field_type))
            .collect();
        let mut chunk_stats = vec![ColumnStats::new(); schema.fields.len()];
        for event in chunk {
            layout.fill(event, &mut cells, overflow_counts)?;
            for (b, &i) in builders.iter_mut().zip(&written) {
                b.push(&cells[i], &mut chunk_stats[i]);
            }
        }
        let columns: Vec<ArrayRef> = builders.iter_mut().map(Builder::finish).collect();
        let batch = RecordBatch::try_new(arrow.clone(), columns).map_err(parquet_error)?;
        let file = match &mut open {
            Some(f) => f,
            None => open.insert(OpenFile {
                writer: ArrowWriter::try_new(
                    Vec::new(),
                    arrow.clone(),
                    Some(properties_for(settings, &batch)),
                )
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
        if file.writer.bytes_written() + file.writer.in_progress_size() >= settings.target_file_size
        {
            if let Some(f) = open.take() {
                files.push(close(f, schema, &written)?);
            }
        }
    }
    if let Some(f) = open.take() {
        files.push(close(f, schema, &written)?);
    }
    Ok(files)
}

fn close(f: OpenFile, schema: &Schema, written: &[usize]) -> Result<EncodedFile> {
    let mut writer = f.writer;
    writer.flush().map_err(parquet_error)?;
    let mut column_sizes = BTreeMap::new();
    for rg in writer.flushed_row_groups() {
        for (col, &i) in rg.columns().iter().zip(written) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use parquet::schema::types::ColumnPath;

    fn batch(rows: usize) -> RecordBatch {
        let schema = Arc::new(ArrowSchema::new(vec![
            ArrowField::new("key", DataType::Utf8, false),
            ArrowField::new("op", DataType::Utf8, true),
            ArrowField::new("n", DataType::Int64, false),
        ]));
        let keys: StringArray = (0..rows).map(|i| Some(format!("row-{i}"))).collect();
        let ops: StringArray = (0..rows)
            .map(|i| (i % 7 != 0).then_some(["INSERT", "UPDATE", "DELETE"][i % 3]))
            .collect();
        let n: Int64Array = (0..rows as i64).collect();
        RecordBatch::try_new(schema, vec![Arc::new(keys), Arc::new(ops), Arc::new(n)]).unwrap()
    }

    #[test]
    fn dictionaries_only_for_string_columns_that_repeat() {
        let settings = ParquetSettings {
            compression: Compression::Snappy,
            row_group_size: 1000,
            target_file_size: 1 << 20,
        };
        let col = |name: &str| ColumnPath::new(vec![name.to_string()]);
        let props = properties_for(&settings, &batch(1000));
        assert!(
            !props.dictionary_enabled(&col("key")),
            "distinct keys: plain"
        );
        assert!(
            props.dictionary_enabled(&col("op")),
            "three values: dictionary"
        );
        assert!(props.dictionary_enabled(&col("n")), "not a string column");
        // Too few rows to judge: the writer's default.
        let props = properties_for(&settings, &batch(10));
        assert!(props.dictionary_enabled(&col("key")));
        // Written with those properties, the file reads back the same.
        let mut w = ArrowWriter::try_new(
            Vec::new(),
            batch(1000).schema(),
            Some(properties_for(&settings, &batch(1000))),
        )
        .unwrap();
        w.write(&batch(1000)).unwrap();
        let bytes = bytes::Bytes::from(w.into_inner().unwrap());
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let chunks = reader.metadata().row_group(0).columns().to_vec();
        assert!(
            chunks[0].dictionary_page_offset().is_none(),
            "key has no dictionary page"
        );
        assert!(chunks[1].dictionary_page_offset().is_some(), "op has one");
        let read: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(read, vec![batch(1000)]);
    }
}
