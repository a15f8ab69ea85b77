//! Data-file compaction: which small files to rewrite together
//! ([`plan_bins`]), and the streaming rewriter ([`Rewriter`]) that turns
//! them into one file.
//!
//! The rewriter reads one input file at a time, record batch by record
//! batch, and writes through one Arrow writer whose output is taken in parts
//! as it grows (for a multipart upload), so memory stays bounded by one input
//! file, one row group and one part. Columns are matched by Parquet field id,
//! so files written under an older schema (fewer columns) are read as the
//! current schema with nulls. Rows come out in input order, bit for bit.
//! The output's statistics are the inputs' merged (counts summed, bounds the
//! min and max by the column's type), so no value is looked at twice.
//!
//! Files of current-state tables are rewritten with their position deletes
//! applied ([`Rewriter::push_live`]): deleted rows are left out, the row keys
//! of the rows kept are returned in output order (the row index follows
//! them), and the statistics are computed from the values written.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::Schema as ArrowSchema;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, PARQUET_FIELD_ID_META_KEY};
use roaring::RoaringBitmap;

use super::avro::DataFile;
use super::metadata::{FieldType, Schema};
use super::parquet::{arrow_schema, properties, ParquetSettings};
use super::stats::ColumnStats;
use crate::error::{Error, ErrorKind, Result};

/// Which files compaction rewrites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactPolicy {
    /// The size outputs aim at; a file of at least 3/4 of it is big enough
    /// and never rewritten.
    pub target_file_bytes: u64,
}

/// Groups of indices into `files` (spec id, live data file) to rewrite into
/// one file each: files of one spec and one partition, each smaller than
/// 3/4 of the target, packed first-fit (largest first) up to the target;
/// groups of one file are dropped. Deterministic.
pub fn plan_bins(files: &[(i32, &DataFile)], policy: &CompactPolicy) -> Vec<Vec<usize>> {
    let small = policy.target_file_bytes.saturating_mul(3) / 4;
    let mut by_partition: BTreeMap<(i32, &[Option<i32>]), Vec<usize>> = BTreeMap::new();
    for (i, (spec, f)) in files.iter().enumerate() {
        if (f.file_size_in_bytes.max(0) as u64) < small {
            by_partition
                .entry((*spec, f.partition.as_slice()))
                .or_default()
                .push(i);
        }
    }
    let size = |i: usize| files[i].1.file_size_in_bytes.max(0) as u64;
    let mut out = Vec::new();
    for (_, mut idx) in by_partition {
        idx.sort_by(|&a, &b| {
            size(b)
                .cmp(&size(a))
                .then_with(|| files[a].1.file_path.cmp(&files[b].1.file_path))
        });
        let mut bins: Vec<(u64, Vec<usize>)> = Vec::new();
        for i in idx {
            match bins
                .iter_mut()
                .find(|(used, _)| used + size(i) <= policy.target_file_bytes)
            {
                Some((used, bin)) => {
                    *used += size(i);
                    bin.push(i);
                }
                None => bins.push((size(i), vec![i])),
            }
        }
        out.extend(bins.into_iter().map(|(_, b)| b).filter(|b| b.len() > 1));
    }
    out
}

fn parquet_error(e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Lake,
        format!("compacting a data file failed: {e}"),
    )
}

/// Whether compaction can rewrite files of `schema`: every column has a type
/// DoLake writes (tables with other types are left alone).
pub fn compactable(schema: &Schema) -> bool {
    schema
        .fields
        .iter()
        .all(|f| !matches!(f.field_type, FieldType::Other(_)))
}

/// Statistics of one column over the inputs so far.
#[derive(Default)]
struct Merged {
    values: i64,
    nulls: i64,
    nans: Option<i64>,
    lower: Option<Vec<u8>>,
    upper: Option<Vec<u8>>,
    /// A bound is missing from an input that has values: no bound at all.
    unbounded: bool,
    /// An input gave no counts for the column: no statistics at all.
    unknown: bool,
}

/// Orders two bounds of a column of type `t` (Iceberg's single-value
/// binary encoding); `None` when they cannot be compared.
fn compare(t: &FieldType, a: &[u8], b: &[u8]) -> Option<std::cmp::Ordering> {
    match t {
        FieldType::Long | FieldType::Timestamptz => {
            let a = i64::from_le_bytes(a.try_into().ok()?);
            let b = i64::from_le_bytes(b.try_into().ok()?);
            Some(a.cmp(&b))
        }
        FieldType::Double => {
            let a = f64::from_le_bytes(a.try_into().ok()?);
            let b = f64::from_le_bytes(b.try_into().ok()?);
            a.partial_cmp(&b)
        }
        FieldType::Boolean | FieldType::String => Some(a.cmp(b)),
        FieldType::Other(_) => None,
    }
}

/// Adds every value of `column` to `stats` (the types DoLake writes).
fn observe(stats: &mut ColumnStats, column: &dyn Array) {
    for i in 0..column.len() {
        if column.is_null(i) {
            stats.null();
            continue;
        }
        if let Some(a) = column.as_boolean_opt() {
            stats.bool(a.value(i));
        } else if let Some(a) = column.as_primitive_opt::<Int64Type>() {
            stats.long(a.value(i));
        } else if let Some(a) = column.as_primitive_opt::<TimestampMicrosecondType>() {
            stats.long(a.value(i));
        } else if let Some(a) = column.as_primitive_opt::<Float64Type>() {
            stats.double(a.value(i));
        } else if let Some(a) = column.as_string_opt::<i32>() {
            stats.string(a.value(i));
        } else {
            stats.unbounded();
        }
    }
}

/// Rewrites input files into one output file, streaming.
pub struct Rewriter {
    schema: Schema,
    arrow: Arc<ArrowSchema>,
    writer: ArrowWriter<Vec<u8>>,
    /// Bytes taken out as parts.
    taken: u64,
    rows: i64,
    stats: BTreeMap<i32, Merged>,
    /// Statistics from the values written (once a file with deletes is in).
    exact: Option<Vec<ColumnStats>>,
}

impl Rewriter {
    /// A new output with the table's current `schema`, written as flushes
    /// write (`settings`).
    pub fn new(schema: &Schema, settings: &ParquetSettings) -> Result<Self> {
        if !compactable(schema) {
            return Err(Error::new(
                ErrorKind::Lake,
                "the table has columns of a type DoLake does not write; not compacted",
            ));
        }
        let (arrow, _) = arrow_schema(schema)?;
        let writer = ArrowWriter::try_new(Vec::new(), arrow.clone(), Some(properties(settings)))
            .map_err(parquet_error)?;
        Ok(Self {
            schema: schema.clone(),
            arrow,
            writer,
            taken: 0,
            rows: 0,
            stats: schema
                .fields
                .iter()
                .map(|f| (f.id, Merged::default()))
                .collect(),
            exact: None,
        })
    }

    /// A rewriter whose statistics come from the values written (for files
    /// with deleted rows, whose entries' statistics count those rows too).
    pub fn with_exact_stats(schema: &Schema, settings: &ParquetSettings) -> Result<Self> {
        let mut r = Self::new(schema, settings)?;
        r.exact = Some(vec![ColumnStats::new(); r.arrow.fields().len()]);
        Ok(r)
    }

    /// Appends the rows of one input file that `deleted` does not hold
    /// (positions) and returns their `key_column` values (the row keys), in
    /// output order. Needs [`with_exact_stats`](Self::with_exact_stats).
    pub fn push_live(
        &mut self,
        bytes: Vec<u8>,
        file: &DataFile,
        deleted: &RoaringBitmap,
        key_column: &str,
    ) -> Result<Vec<String>> {
        if self.exact.is_none() {
            return Err(Error::internal("push_live needs exact statistics"));
        }
        let key_index = self
            .arrow
            .fields()
            .iter()
            .position(|f| f.name() == key_column)
            .ok_or_else(|| parquet_error(format!("no column `{key_column}`")))?;
        let mut keys = Vec::new();
        let mut pos: u32 = 0;
        self.read_file(bytes, file, &mut |batch| {
            let n = batch.num_rows();
            let keep: BooleanArray = (0..n)
                .map(|i| Some(!deleted.contains(pos + i as u32)))
                .collect();
            pos += n as u32;
            let kept =
                arrow_select::filter::filter_record_batch(&batch, &keep).map_err(parquet_error)?;
            let k = kept.column(key_index).as_string::<i32>();
            keys.extend((0..k.len()).map(|i| k.value(i).to_string()));
            Ok(kept)
        })?;
        Ok(keys)
    }

    /// Appends every row of one input file; `file` is its manifest entry,
    /// whose statistics are merged into the output's.
    pub fn push_file(&mut self, bytes: Vec<u8>, file: &DataFile) -> Result<()> {
        let by_id = self.read_file(bytes, file, &mut Ok)?;
        if self.exact.is_none() {
            self.merge_stats(file, &by_id);
        }
        Ok(())
    }

    /// Reads `bytes` (the input `file`) as the table's schema, batch by
    /// batch, and writes what `each` makes of every batch; the input must
    /// hold the rows its entry says. Returns which input column holds each
    /// field id.
    fn read_file(
        &mut self,
        bytes: Vec<u8>,
        file: &DataFile,
        each: &mut dyn FnMut(RecordBatch) -> Result<RecordBatch>,
    ) -> Result<BTreeMap<i32, usize>> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .map_err(parquet_error)?;
        // Which input column feeds each output column (by field id).
        let input = builder.schema().clone();
        let mut by_id: BTreeMap<i32, usize> = BTreeMap::new();
        for (i, f) in input.fields().iter().enumerate() {
            let id = f
                .metadata()
                .get(PARQUET_FIELD_ID_META_KEY)
                .and_then(|v| v.parse::<i32>().ok())
                .ok_or_else(|| parquet_error(format!("column `{}` has no field id", f.name())))?;
            if self.schema.fields.iter().all(|s| s.id != id) {
                return Err(parquet_error(format!(
                    "column `{}` (id {id}) is not in the table's schema",
                    f.name()
                )));
            }
            by_id.insert(id, i);
        }
        let mut sources = Vec::with_capacity(self.arrow.fields().len());
        for (out, field) in self.arrow.fields().iter().zip(&self.schema.fields) {
            match by_id.get(&field.id) {
                Some(&i) if input.field(i).data_type() != out.data_type() => {
                    return Err(parquet_error(format!(
                        "column `{}` is {} in an input, {} in the table",
                        field.name,
                        input.field(i).data_type(),
                        out.data_type()
                    )))
                }
                Some(&i) => sources.push(Some(i)),
                None if field.required => {
                    return Err(parquet_error(format!(
                        "required column `{}` is missing from an input",
                        field.name
                    )))
                }
                None => sources.push(None),
            }
        }
        let reader = builder.build().map_err(parquet_error)?;
        let mut read = 0_i64;
        for batch in reader {
            let batch = batch.map_err(parquet_error)?;
            read += batch.num_rows() as i64;
            let columns: Vec<ArrayRef> = sources
                .iter()
                .zip(self.arrow.fields())
                .map(|(src, f)| match src {
                    Some(i) => batch.column(*i).clone(),
                    None => new_null_array(f.data_type(), batch.num_rows()),
                })
                .collect();
            let out = RecordBatch::try_new(self.arrow.clone(), columns).map_err(parquet_error)?;
            let out = each(out)?;
            if let Some(exact) = &mut self.exact {
                for (stats, column) in exact.iter_mut().zip(out.columns()) {
                    observe(stats, column.as_ref());
                }
            }
            self.writer.write(&out).map_err(parquet_error)?;
            self.rows += out.num_rows() as i64;
        }
        if read != file.record_count {
            return Err(parquet_error(format!(
                "{} holds {read} rows, its manifest entry says {}",
                file.file_path, file.record_count
            )));
        }
        Ok(by_id)
    }

    fn merge_stats(&mut self, file: &DataFile, present: &BTreeMap<i32, usize>) {
        for field in &self.schema.fields {
            let m = self.stats.get_mut(&field.id).expect("one entry per field");
            if !present.contains_key(&field.id) {
                m.values += file.record_count;
                m.nulls += file.record_count;
                continue;
            }
            let values = file.value_counts.get(&field.id).copied();
            let nulls = file.null_value_counts.get(&field.id).copied();
            let (Some(values), Some(nulls)) = (values, nulls) else {
                m.unknown = true;
                continue;
            };
            m.values += values;
            m.nulls += nulls;
            let nans = file.nan_value_counts.get(&field.id).copied();
            if field.field_type == FieldType::Double {
                m.nans = Some(m.nans.unwrap_or(0) + nans.unwrap_or(0));
            }
            if values - nulls - nans.unwrap_or(0) <= 0 {
                continue; // no bounds to give
            }
            let (Some(lo), Some(hi)) = (
                file.lower_bounds.get(&field.id),
                file.upper_bounds.get(&field.id),
            ) else {
                m.unbounded = true;
                continue;
            };
            let t = &field.field_type;
            let lower = match m.lower.take() {
                None => Some(lo.clone()),
                Some(cur) => match compare(t, lo, &cur) {
                    Some(std::cmp::Ordering::Less) => Some(lo.clone()),
                    Some(_) => Some(cur),
                    None => {
                        m.unbounded = true;
                        None
                    }
                },
            };
            let upper = match m.upper.take() {
                None => Some(hi.clone()),
                Some(cur) => match compare(t, hi, &cur) {
                    Some(std::cmp::Ordering::Greater) => Some(hi.clone()),
                    Some(_) => Some(cur),
                    None => {
                        m.unbounded = true;
                        None
                    }
                },
            };
            m.lower = lower;
            m.upper = upper;
        }
    }

    /// The output bytes written so far and not taken, when at least `min`
    /// bytes are waiting (one part of a multipart upload).
    pub fn take_part(&mut self, min: usize) -> Option<Vec<u8>> {
        // Only bytes the writer has handed down (whole pages of closed row
        // groups); its own offsets count every byte, taken or not.
        self.writer.sync().ok()?;
        if self.writer.inner().len() < min.max(1) {
            return None;
        }
        let part = std::mem::take(self.writer.inner_mut());
        self.taken += part.len() as u64;
        Some(part)
    }

    /// Output bytes waiting to be taken.
    pub fn buffered(&self) -> usize {
        self.writer.inner().len()
    }

    /// Closes the output: its last bytes (footer included) and its manifest
    /// entry's data file, at `file_path` with `partition`.
    pub fn finish(
        self,
        file_path: String,
        partition: Vec<Option<i32>>,
    ) -> Result<(Vec<u8>, DataFile)> {
        let Self {
            schema,
            mut writer,
            taken,
            rows,
            stats,
            exact,
            ..
        } = self;
        writer.flush().map_err(parquet_error)?;
        let mut column_sizes = BTreeMap::new();
        for rg in writer.flushed_row_groups() {
            for (col, field) in rg.columns().iter().zip(&schema.fields) {
                *column_sizes.entry(field.id).or_insert(0) += col.compressed_size();
            }
        }
        let last = writer.into_inner().map_err(parquet_error)?;
        let mut file = DataFile {
            content: 0,
            file_path,
            partition,
            record_count: rows,
            file_size_in_bytes: (taken + last.len() as u64) as i64,
            column_sizes,
            value_counts: BTreeMap::new(),
            null_value_counts: BTreeMap::new(),
            nan_value_counts: BTreeMap::new(),
            lower_bounds: BTreeMap::new(),
            upper_bounds: BTreeMap::new(),
        };
        if let Some(exact) = exact {
            file.set_stats(&schema, &exact);
            return Ok((last, file));
        }
        for (id, m) in stats {
            if m.unknown {
                continue;
            }
            file.value_counts.insert(id, m.values);
            file.null_value_counts.insert(id, m.nulls);
            if let Some(n) = m.nans {
                file.nan_value_counts.insert(id, n);
            }
            if !m.unbounded {
                if let Some(b) = m.lower {
                    file.lower_bounds.insert(id, b);
                }
                if let Some(b) = m.upper {
                    file.upper_bounds.insert(id, b);
                }
            }
        }
        Ok((last, file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, day: i32, size: i64) -> DataFile {
        DataFile {
            content: 0,
            file_path: path.to_string(),
            partition: vec![Some(day)],
            record_count: 1,
            file_size_in_bytes: size,
            column_sizes: BTreeMap::new(),
            value_counts: BTreeMap::new(),
            null_value_counts: BTreeMap::new(),
            nan_value_counts: BTreeMap::new(),
            lower_bounds: BTreeMap::new(),
            upper_bounds: BTreeMap::new(),
        }
    }

    #[test]
    fn bins_group_one_partition_and_spec_up_to_the_target() {
        let policy = CompactPolicy {
            target_file_bytes: 100,
        };
        let files = [
            file("a", 1, 40),
            file("b", 1, 40),
            file("c", 1, 40),
            file("d", 1, 75), // 3/4 of the target: big enough, never an input
            file("e", 2, 10), // alone in its partition: left alone
            file("f", 1, 20),
            file("g", 1, 30), // same partition, other spec
            file("h", 1, 30),
        ];
        let with_spec: Vec<(i32, &DataFile)> = files
            .iter()
            .enumerate()
            .map(|(i, f)| (if i >= 6 { 1 } else { 0 }, f))
            .collect();
        let bins = plan_bins(&with_spec, &policy);
        let names: Vec<Vec<&str>> = bins
            .iter()
            .map(|b| b.iter().map(|&i| files[i].file_path.as_str()).collect())
            .collect();
        // Largest first, first fit: a+b+f = 100, then c alone (dropped).
        assert_eq!(names, vec![vec!["a", "b", "f"], vec!["g", "h"]]);
        for b in &bins {
            let total: i64 = b.iter().map(|&i| files[i].file_size_in_bytes).sum();
            assert!(total <= 100);
        }
        assert_eq!(plan_bins(&with_spec, &policy), bins, "deterministic");
    }

    #[test]
    fn garbage_and_foreign_columns_are_errors_not_panics() {
        let schema = Schema::new(0, crate::lake::changelog::base_fields());
        let settings = ParquetSettings {
            compression: crate::config::Compression::Snappy,
            row_group_size: 10,
            target_file_size: 1 << 20,
        };
        let mut w = Rewriter::new(&schema, &settings).unwrap();
        let f = file("x", 1, 10);
        for input in [vec![], b"PAR1 not parquet".to_vec(), vec![0xff; 64]] {
            assert_eq!(w.push_file(input, &f).unwrap_err().kind(), ErrorKind::Lake);
        }
        // A file of another table: a column the schema does not have.
        let other = Schema::new(
            0,
            vec![crate::lake::metadata::Field {
                id: 9_999,
                name: "alien".into(),
                required: false,
                field_type: FieldType::Long,
                doc: None,
                extra: BTreeMap::new(),
            }],
        );
        let (arrow, _) = arrow_schema(&other).unwrap();
        let mut bytes = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut bytes, arrow.clone(), None).unwrap();
        let col: ArrayRef = Arc::new(arrow_array::Int64Array::from(vec![Some(1)]));
        writer
            .write(&RecordBatch::try_new(arrow, vec![col]).unwrap())
            .unwrap();
        writer.close().unwrap();
        let e = w.push_file(bytes, &f).unwrap_err();
        assert!(
            e.message().contains("not in the table's schema"),
            "{}",
            e.message()
        );
    }
}
