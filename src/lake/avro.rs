//! Iceberg manifests and manifest lists in Avro.
//!
//! The Avro schemas are generated from one table of the spec's fields (ids,
//! names, types, optionality) per file kind, never typed twice. Every field
//! carries `field-id`, every list `element-id`, and the column-id maps are
//! arrays of `{key, value}` records with `logicalType: map` (spec, "Avro").
//!
//! The object container is written here (null codec, sync marker from the
//! caller) so that the bytes are a pure function of the input; the records
//! inside are encoded by `apache-avro`. Manifest lists are read back with
//! `apache-avro`'s reader to carry the previous manifests forward.

use std::collections::BTreeMap;

use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::{json, Value};

use super::manifest::ManifestEntry;
use super::metadata::{PartitionSpec, Schema, Transform};
use crate::error::{Error, ErrorKind, Result};

/// An Avro type of a spec field.
#[derive(Debug, Clone)]
enum AType {
    Int,
    Long,
    String,
    Bytes,
    Boolean,
    /// `int` with `logicalType: date` (the result of the `day` transform).
    Date,
    Record(String, Vec<AField>),
    /// A list whose element has the given id.
    List(i32, Box<AType>),
    /// A map with int keys, as an array of `k{key}_v{value}` records.
    IdMap(i32, i32, Box<AType>),
}

/// A field of an Avro record with its Iceberg field id.
#[derive(Debug, Clone)]
struct AField {
    id: i32,
    name: String,
    optional: bool,
    ty: AType,
}

fn req(id: i32, name: &str, ty: AType) -> AField {
    AField {
        id,
        name: name.to_string(),
        optional: false,
        ty,
    }
}

fn opt(id: i32, name: &str, ty: AType) -> AField {
    AField {
        id,
        name: name.to_string(),
        optional: true,
        ty,
    }
}

impl AType {
    fn to_json(&self) -> Value {
        match self {
            AType::Int => json!("int"),
            AType::Long => json!("long"),
            AType::String => json!("string"),
            AType::Bytes => json!("bytes"),
            AType::Boolean => json!("boolean"),
            AType::Date => json!({"type": "int", "logicalType": "date"}),
            AType::Record(name, fields) => json!({
                "type": "record",
                "name": name,
                "fields": fields.iter().map(AField::to_json).collect::<Vec<_>>(),
            }),
            AType::List(element_id, item) => json!({
                "type": "array",
                "items": item.to_json(),
                "element-id": element_id,
            }),
            AType::IdMap(key_id, value_id, value) => json!({
                "type": "array",
                "logicalType": "map",
                "items": {
                    "type": "record",
                    "name": format!("k{key_id}_v{value_id}"),
                    "fields": [
                        {"name": "key", "type": "int", "field-id": key_id},
                        {"name": "value", "type": value.to_json(), "field-id": value_id},
                    ],
                },
            }),
        }
    }
}

impl AField {
    fn to_json(&self) -> Value {
        if self.optional {
            json!({
                "name": self.name,
                "type": ["null", self.ty.to_json()],
                "default": null,
                "field-id": self.id,
            })
        } else {
            json!({"name": self.name, "type": self.ty.to_json(), "field-id": self.id})
        }
    }
}

/// The fields of a manifest list entry (`manifest_file`, spec ids 500-519).
fn manifest_file_fields() -> Vec<AField> {
    use AType::*;
    let summary = Record(
        "r508".to_string(),
        vec![
            req(509, "contains_null", Boolean),
            opt(518, "contains_nan", Boolean),
            opt(510, "lower_bound", Bytes),
            opt(511, "upper_bound", Bytes),
        ],
    );
    vec![
        req(500, "manifest_path", String),
        req(501, "manifest_length", Long),
        req(502, "partition_spec_id", Int),
        req(517, "content", Int),
        req(515, "sequence_number", Long),
        req(516, "min_sequence_number", Long),
        req(503, "added_snapshot_id", Long),
        req(504, "added_files_count", Int),
        req(505, "existing_files_count", Int),
        req(506, "deleted_files_count", Int),
        req(512, "added_rows_count", Long),
        req(513, "existing_rows_count", Long),
        req(514, "deleted_rows_count", Long),
        opt(507, "partitions", List(508, Box::new(summary))),
        opt(519, "key_metadata", Bytes),
    ]
}

/// The fields of a manifest entry (`manifest_entry`, ids 0-4, data file
/// 100-140) for a partition record of `partition_fields`.
fn manifest_entry_fields(partition_fields: Vec<AField>) -> Vec<AField> {
    use AType::*;
    let data_file = Record(
        "r2".to_string(),
        vec![
            req(134, "content", Int),
            req(100, "file_path", String),
            req(101, "file_format", String),
            req(
                102,
                "partition",
                Record("r102".to_string(), partition_fields),
            ),
            req(103, "record_count", Long),
            req(104, "file_size_in_bytes", Long),
            opt(108, "column_sizes", IdMap(117, 118, Box::new(Long))),
            opt(109, "value_counts", IdMap(119, 120, Box::new(Long))),
            opt(110, "null_value_counts", IdMap(121, 122, Box::new(Long))),
            opt(137, "nan_value_counts", IdMap(138, 139, Box::new(Long))),
            opt(125, "lower_bounds", IdMap(126, 127, Box::new(Bytes))),
            opt(128, "upper_bounds", IdMap(129, 130, Box::new(Bytes))),
            opt(131, "key_metadata", Bytes),
            opt(132, "split_offsets", List(133, Box::new(Long))),
            opt(135, "equality_ids", List(136, Box::new(Int))),
            opt(140, "sort_order_id", Int),
        ],
    );
    vec![
        req(0, "status", Int),
        opt(1, "snapshot_id", Long),
        opt(3, "sequence_number", Long),
        opt(4, "file_sequence_number", Long),
        req(2, "data_file", data_file),
    ]
}

/// The partition record's fields of `spec`: the transform's result type under
/// the partition field's id, optional.
fn partition_fields(spec: &PartitionSpec) -> Result<Vec<AField>> {
    spec.fields
        .iter()
        .map(|f| {
            let ty = match &f.transform {
                Transform::Day => AType::Date,
                Transform::Hour => AType::Int,
                Transform::Other(other) => {
                    return Err(Error::new(
                        ErrorKind::Lake,
                        format!("partition transform `{other}` is not written by DoLake"),
                    ))
                }
            };
            Ok(opt(f.field_id, &f.name, ty))
        })
        .collect()
}

/// The Avro schema of a manifest list, as JSON.
pub fn manifest_list_schema() -> Value {
    AType::Record("manifest_file".to_string(), manifest_file_fields()).to_json()
}

/// The Avro schema of a manifest written with `spec`, as JSON.
pub fn manifest_schema(spec: &PartitionSpec) -> Result<Value> {
    Ok(AType::Record(
        "manifest_entry".to_string(),
        manifest_entry_fields(partition_fields(spec)?),
    )
    .to_json())
}

/// Summary of one partition field over the files of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSummary {
    /// Whether any file has a null for this field.
    pub contains_null: bool,
    /// Whether any file has NaN for this field.
    pub contains_nan: Option<bool>,
    /// Lowest value, spec binary encoding.
    pub lower_bound: Option<Vec<u8>>,
    /// Highest value, spec binary encoding.
    pub upper_bound: Option<Vec<u8>>,
}

/// An entry of a manifest list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// Location of the manifest.
    pub manifest_path: String,
    /// Its exact size in bytes.
    pub manifest_length: i64,
    /// Spec its files were written with.
    pub partition_spec_id: i32,
    /// 0 data, 1 deletes.
    pub content: i32,
    /// Sequence number of the snapshot that added it.
    pub sequence_number: i64,
    /// Lowest data sequence number of its files.
    pub min_sequence_number: i64,
    /// Snapshot that added it.
    pub added_snapshot_id: i64,
    /// Entries with status ADDED.
    pub added_files_count: i32,
    /// Entries with status EXISTING.
    pub existing_files_count: i32,
    /// Entries with status DELETED.
    pub deleted_files_count: i32,
    /// Rows in ADDED files.
    pub added_rows_count: i64,
    /// Rows in EXISTING files.
    pub existing_rows_count: i64,
    /// Rows in DELETED files.
    pub deleted_rows_count: i64,
    /// Per partition field summaries.
    pub partitions: Option<Vec<FieldSummary>>,
    /// Encryption key metadata.
    pub key_metadata: Option<Vec<u8>>,
}

/// A data file entry of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct DataFile {
    /// 0 data, 1 position deletes (2, equality deletes, is never written).
    pub content: i32,
    /// Full URI of the Parquet file.
    pub file_path: String,
    /// Partition values, one per field of the spec.
    pub partition: Vec<Option<i32>>,
    /// Rows.
    pub record_count: i64,
    /// Exact size in bytes.
    pub file_size_in_bytes: i64,
    /// Compressed bytes per column id.
    pub column_sizes: BTreeMap<i32, i64>,
    /// Values (including nulls) per column id.
    pub value_counts: BTreeMap<i32, i64>,
    /// Nulls per column id.
    pub null_value_counts: BTreeMap<i32, i64>,
    /// NaNs per (double) column id.
    pub nan_value_counts: BTreeMap<i32, i64>,
    /// Lower bounds per column id.
    pub lower_bounds: BTreeMap<i32, Vec<u8>>,
    /// Upper bounds per column id.
    pub upper_bounds: BTreeMap<i32, Vec<u8>>,
}

impl DataFile {
    /// Records the statistics of a file written with `schema` (`stats`, one
    /// per field; a field without values was not written).
    pub(crate) fn set_stats(&mut self, schema: &Schema, stats: &[super::stats::ColumnStats]) {
        for (field, st) in schema.fields.iter().zip(stats) {
            if st.values == 0 {
                continue;
            }
            self.value_counts.insert(field.id, st.values as i64);
            self.null_value_counts.insert(field.id, st.nulls as i64);
            if field.field_type == super::metadata::FieldType::Double {
                self.nan_value_counts.insert(field.id, st.nans as i64);
            }
            if let Some(b) = st.lower_bound() {
                self.lower_bounds.insert(field.id, b);
            }
            if let Some(b) = st.upper_bound() {
                self.upper_bounds.insert(field.id, b);
            }
        }
    }
}

fn some(v: Avro) -> Avro {
    Avro::Union(1, Box::new(v))
}

fn none() -> Avro {
    Avro::Union(0, Box::new(Avro::Null))
}

fn opt_value<T>(v: Option<T>, f: impl FnOnce(T) -> Avro) -> Avro {
    v.map(|v| some(f(v))).unwrap_or_else(none)
}

fn long_map(m: &BTreeMap<i32, i64>) -> Avro {
    some(Avro::Array(
        m.iter()
            .map(|(k, v)| {
                Avro::Record(vec![
                    ("key".to_string(), Avro::Int(*k)),
                    ("value".to_string(), Avro::Long(*v)),
                ])
            })
            .collect(),
    ))
}

fn bytes_map(m: &BTreeMap<i32, Vec<u8>>) -> Avro {
    some(Avro::Array(
        m.iter()
            .map(|(k, v)| {
                Avro::Record(vec![
                    ("key".to_string(), Avro::Int(*k)),
                    ("value".to_string(), Avro::Bytes(v.clone())),
                ])
            })
            .collect(),
    ))
}

fn manifest_file_value(m: &ManifestFile) -> Avro {
    let partitions = m.partitions.as_ref().map(|ps| {
        Avro::Array(
            ps.iter()
                .map(|p| {
                    Avro::Record(vec![
                        ("contains_null".into(), Avro::Boolean(p.contains_null)),
                        (
                            "contains_nan".into(),
                            opt_value(p.contains_nan, Avro::Boolean),
                        ),
                        (
                            "lower_bound".into(),
                            opt_value(p.lower_bound.clone(), Avro::Bytes),
                        ),
                        (
                            "upper_bound".into(),
                            opt_value(p.upper_bound.clone(), Avro::Bytes),
                        ),
                    ])
                })
                .collect(),
        )
    });
    Avro::Record(vec![
        (
            "manifest_path".into(),
            Avro::String(m.manifest_path.clone()),
        ),
        ("manifest_length".into(), Avro::Long(m.manifest_length)),
        ("partition_spec_id".into(), Avro::Int(m.partition_spec_id)),
        ("content".into(), Avro::Int(m.content)),
        ("sequence_number".into(), Avro::Long(m.sequence_number)),
        (
            "min_sequence_number".into(),
            Avro::Long(m.min_sequence_number),
        ),
        ("added_snapshot_id".into(), Avro::Long(m.added_snapshot_id)),
        ("added_files_count".into(), Avro::Int(m.added_files_count)),
        (
            "existing_files_count".into(),
            Avro::Int(m.existing_files_count),
        ),
        (
            "deleted_files_count".into(),
            Avro::Int(m.deleted_files_count),
        ),
        ("added_rows_count".into(), Avro::Long(m.added_rows_count)),
        (
            "existing_rows_count".into(),
            Avro::Long(m.existing_rows_count),
        ),
        (
            "deleted_rows_count".into(),
            Avro::Long(m.deleted_rows_count),
        ),
        ("partitions".into(), opt_value(partitions, |v| v)),
        (
            "key_metadata".into(),
            opt_value(m.key_metadata.clone(), Avro::Bytes),
        ),
    ])
}

pub(super) fn data_file_entry_value(spec: &PartitionSpec, entry: &ManifestEntry) -> Avro {
    let f = &entry.file;
    let partition = spec
        .fields
        .iter()
        .zip(&f.partition)
        .map(|(pf, v)| {
            let v = match (&pf.transform, v) {
                (Transform::Day, Some(d)) => some(Avro::Date(*d)),
                (_, Some(h)) => some(Avro::Int(*h)),
                (_, None) => none(),
            };
            (pf.name.clone(), v)
        })
        .collect();
    let data_file = Avro::Record(vec![
        ("content".into(), Avro::Int(f.content)),
        ("file_path".into(), Avro::String(f.file_path.clone())),
        ("file_format".into(), Avro::String("PARQUET".into())),
        ("partition".into(), Avro::Record(partition)),
        ("record_count".into(), Avro::Long(f.record_count)),
        (
            "file_size_in_bytes".into(),
            Avro::Long(f.file_size_in_bytes),
        ),
        ("column_sizes".into(), long_map(&f.column_sizes)),
        ("value_counts".into(), long_map(&f.value_counts)),
        ("null_value_counts".into(), long_map(&f.null_value_counts)),
        ("nan_value_counts".into(), long_map(&f.nan_value_counts)),
        ("lower_bounds".into(), bytes_map(&f.lower_bounds)),
        ("upper_bounds".into(), bytes_map(&f.upper_bounds)),
        ("key_metadata".into(), none()),
        ("split_offsets".into(), none()),
        ("equality_ids".into(), none()),
        ("sort_order_id".into(), some(Avro::Int(0))),
    ]);
    Avro::Record(vec![
        ("status".into(), Avro::Int(entry.status as i32)),
        (
            "snapshot_id".into(),
            opt_value(entry.snapshot_id, Avro::Long),
        ),
        (
            "sequence_number".into(),
            opt_value(entry.sequence_number, Avro::Long),
        ),
        (
            "file_sequence_number".into(),
            opt_value(entry.file_sequence_number, Avro::Long),
        ),
        ("data_file".into(), data_file),
    ])
}

fn avro_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!("encoding the {what} failed: {e}"),
    )
}

/// Appends Avro's zig-zag varint encoding of `v`.
fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// An Avro object container file: header (schema, null codec, `metadata` in
/// the given order), then one block of `values`.
fn container(
    what: &str,
    schema_json: &Value,
    metadata: &[(&str, String)],
    sync: [u8; 16],
    values: &[Avro],
) -> Result<Vec<u8>> {
    let schema_text = schema_json.to_string();
    let schema = apache_avro::Schema::parse_str(&schema_text).map_err(|e| avro_error(what, e))?;
    let writer = GenericDatumWriter::builder(&schema)
        .build()
        .map_err(|e| avro_error(what, e))?;
    let mut block = Vec::new();
    for v in values {
        writer
            .write_value_ref(&mut block, v)
            .map_err(|e| avro_error(what, e))?;
    }
    let mut out = Vec::with_capacity(block.len() + schema_text.len() + 256);
    out.extend_from_slice(b"Obj\x01");
    put_long(&mut out, 2 + metadata.len() as i64);
    put_bytes(&mut out, b"avro.schema");
    put_bytes(&mut out, schema_text.as_bytes());
    put_bytes(&mut out, b"avro.codec");
    put_bytes(&mut out, b"null");
    for (k, v) in metadata {
        put_bytes(&mut out, k.as_bytes());
        put_bytes(&mut out, v.as_bytes());
    }
    put_long(&mut out, 0);
    out.extend_from_slice(&sync);
    if !values.is_empty() {
        put_long(&mut out, values.len() as i64);
        put_long(&mut out, block.len() as i64);
        out.extend_from_slice(&block);
        out.extend_from_slice(&sync);
    }
    Ok(out)
}

/// Encodes a data manifest of `files`, all ADDED by `snapshot_id` with
/// `schema` and `spec` (sequence numbers inherited from the manifest list).
pub fn write_manifest(
    schema: &Schema,
    spec: &PartitionSpec,
    snapshot_id: i64,
    files: &[DataFile],
    sync: [u8; 16],
) -> Result<Vec<u8>> {
    let entries: Vec<ManifestEntry> = files
        .iter()
        .map(|f| ManifestEntry::added(snapshot_id, f.clone()))
        .collect();
    write_manifest_entries(schema, spec, &entries, sync)
}

/// Encodes a manifest of `entries` (any status; all data files or all
/// delete files, which makes it a data or a delete manifest) with `schema`
/// and `spec`.
pub fn write_manifest_entries(
    schema: &Schema,
    spec: &PartitionSpec,
    entries: &[ManifestEntry],
    sync: [u8; 16],
) -> Result<Vec<u8>> {
    let values: Vec<Avro> = entries
        .iter()
        .map(|e| data_file_entry_value(spec, e))
        .collect();
    let metadata = [
        ("schema", schema.to_json_string()),
        ("schema-id", schema.schema_id.to_string()),
        (
            "partition-spec",
            serde_json::to_string(&spec.fields).unwrap_or_default(),
        ),
        ("partition-spec-id", spec.spec_id.to_string()),
        ("format-version", "2".to_string()),
        (
            "content",
            match entries.first().map(|e| e.file.content) {
                Some(c) if c != 0 => "deletes",
                _ => "data",
            }
            .to_string(),
        ),
    ];
    container(
        "manifest",
        &manifest_schema(spec)?,
        &metadata,
        sync,
        &values,
    )
}

/// Encodes the manifest list of snapshot `snapshot_id`.
pub fn write_manifest_list(
    snapshot_id: i64,
    parent_snapshot_id: Option<i64>,
    sequence_number: i64,
    manifests: &[ManifestFile],
    sync: [u8; 16],
) -> Result<Vec<u8>> {
    let values: Vec<Avro> = manifests.iter().map(manifest_file_value).collect();
    let metadata = [
        ("snapshot-id", snapshot_id.to_string()),
        (
            "parent-snapshot-id",
            parent_snapshot_id
                .map(|p| p.to_string())
                .unwrap_or_else(|| "null".to_string()),
        ),
        ("sequence-number", sequence_number.to_string()),
        ("format-version", "2".to_string()),
    ];
    container(
        "manifest list",
        &manifest_list_schema(),
        &metadata,
        sync,
        &values,
    )
}

fn bad_list(msg: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::InvalidFormat,
        format!("manifest list is not valid: {}", msg.into()),
    )
}

pub(super) fn unwrap_union(v: &Avro) -> &Avro {
    match v {
        Avro::Union(_, inner) => inner,
        other => other,
    }
}

pub(super) struct Rec<'a>(pub(super) &'a [(String, Avro)]);

impl<'a> Rec<'a> {
    pub(super) fn get(&self, names: &[&str]) -> Option<&'a Avro> {
        names.iter().find_map(|n| {
            self.0
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| unwrap_union(v))
        })
    }
    pub(super) fn long(&self, names: &[&str]) -> Result<i64> {
        match self.get(names) {
            Some(Avro::Long(v)) => Ok(*v),
            Some(Avro::Int(v)) => Ok(i64::from(*v)),
            _ => Err(bad_list(format!(
                "field `{}` missing or not a number",
                names[0]
            ))),
        }
    }
    pub(super) fn int(&self, names: &[&str]) -> Result<i32> {
        let v = self.long(names)?;
        i32::try_from(v).map_err(|_| bad_list(format!("field `{}` out of range", names[0])))
    }
    fn long_or(&self, names: &[&str], default: i64) -> Result<i64> {
        match self.get(names) {
            None | Some(Avro::Null) => Ok(default),
            _ => self.long(names),
        }
    }
    pub(super) fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        match self.get(&[name]) {
            Some(Avro::Bytes(b)) => Some(b.clone()),
            _ => None,
        }
    }
}

/// Reads the entries of a manifest list (to carry them into the next one).
pub fn read_manifest_list(bytes: &[u8]) -> Result<Vec<ManifestFile>> {
    let reader = apache_avro::Reader::new(bytes).map_err(|e| bad_list(e.to_string()))?;
    let mut out = Vec::new();
    for value in reader {
        let value = value.map_err(|e| bad_list(e.to_string()))?;
        let Avro::Record(fields) = value else {
            return Err(bad_list("an entry is not a record"));
        };
        let r = Rec(&fields);
        let partitions = match r.get(&["partitions"]) {
            Some(Avro::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| match item {
                        Avro::Record(f) => {
                            let s = Rec(f);
                            Ok(FieldSummary {
                                contains_null: matches!(
                                    s.get(&["contains_null"]),
                                    Some(Avro::Boolean(true))
                                ),
                                contains_nan: match s.get(&["contains_nan"]) {
                                    Some(Avro::Boolean(b)) => Some(*b),
                                    _ => None,
                                },
                                lower_bound: s.bytes("lower_bound"),
                                upper_bound: s.bytes("upper_bound"),
                            })
                        }
                        _ => Err(bad_list("a partition summary is not a record")),
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            _ => None,
        };
        let sequence_number = r.long_or(&["sequence_number"], 0)?;
        out.push(ManifestFile {
            manifest_path: match r.get(&["manifest_path"]) {
                Some(Avro::String(s)) => s.clone(),
                _ => return Err(bad_list("field `manifest_path` missing")),
            },
            manifest_length: r.long(&["manifest_length"])?,
            partition_spec_id: r.int(&["partition_spec_id"])?,
            content: r.long_or(&["content"], 0)? as i32,
            sequence_number,
            min_sequence_number: r.long_or(&["min_sequence_number"], sequence_number)?,
            added_snapshot_id: r.long(&["added_snapshot_id"])?,
            added_files_count: r.int(&["added_files_count", "added_data_files_count"])?,
            existing_files_count: r.int(&["existing_files_count", "existing_data_files_count"])?,
            deleted_files_count: r.int(&["deleted_files_count", "deleted_data_files_count"])?,
            added_rows_count: r.long(&["added_rows_count"])?,
            existing_rows_count: r.long(&["existing_rows_count"])?,
            deleted_rows_count: r.long(&["deleted_rows_count"])?,
            partitions,
            key_metadata: r.bytes("key_metadata"),
        });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::lake::metadata::PartitionField;

    /// Walks an Avro schema JSON and returns the names of record fields
    /// without `field-id` and of arrays without `element-id` or map logical
    /// type.
    pub(crate) fn missing_ids(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if o.get("type") == Some(&json!("record")) {
                    for f in o["fields"].as_array().into_iter().flatten() {
                        if !f.get("field-id").is_some_and(Value::is_i64) {
                            out.push(f["name"].to_string());
                        }
                        missing_ids(&f["type"], out);
                    }
                } else if o.get("type") == Some(&json!("array")) {
                    if !o.contains_key("element-id") && o.get("logicalType") != Some(&json!("map"))
                    {
                        out.push("array".to_string());
                    }
                    missing_ids(&o["items"], out);
                }
            }
            Value::Array(a) => a.iter().for_each(|t| missing_ids(t, out)),
            _ => {}
        }
    }

    fn day_spec() -> PartitionSpec {
        PartitionSpec {
            spec_id: 0,
            fields: vec![PartitionField {
                name: "_cdc_ts_day".into(),
                transform: Transform::Day,
                source_id: 3,
                field_id: 1000,
            }],
        }
    }

    fn header(bytes: &[u8]) -> (Value, std::collections::HashMap<String, Vec<u8>>) {
        let reader = apache_avro::Reader::new(bytes).unwrap();
        let meta = reader.user_metadata().clone();
        let _ = reader;
        // The schema as written (not as re-serialized by the library).
        let start = bytes.windows(11).position(|w| w == b"avro.schema").unwrap() + 11;
        let mut len = 0_u64;
        let mut shift = 0;
        let mut i = start;
        loop {
            let b = bytes[i];
            len |= u64::from(b & 0x7f) << shift;
            i += 1;
            if b < 0x80 {
                break;
            }
            shift += 7;
        }
        let len = (len >> 1) as usize;
        let schema: Value = serde_json::from_slice(&bytes[i..i + len]).unwrap();
        (schema, meta)
    }

    #[test]
    fn schemas_carry_every_field_id() {
        let mut missing = Vec::new();
        missing_ids(&manifest_list_schema(), &mut missing);
        missing_ids(&manifest_schema(&day_spec()).unwrap(), &mut missing);
        assert!(missing.is_empty(), "{missing:?}");
        let s = manifest_schema(&day_spec()).unwrap();
        let text = s.to_string();
        for needle in [
            r#""element-id":133"#,
            r#""element-id":136"#,
            r#""name":"k117_v118""#,
            r#""field-id":1000"#,
            r#""logicalType":"date""#,
        ] {
            assert!(text.contains(needle), "{needle} missing");
        }
        assert!(manifest_list_schema()
            .to_string()
            .contains(r#""element-id":508"#));
    }

    fn sample_list() -> Vec<ManifestFile> {
        vec![
            ManifestFile {
                manifest_path: "file:///w/t/metadata/a-m0.avro".into(),
                manifest_length: 1234,
                partition_spec_id: 0,
                content: 0,
                sequence_number: 2,
                min_sequence_number: 2,
                added_snapshot_id: 22,
                added_files_count: 3,
                existing_files_count: 0,
                deleted_files_count: 0,
                added_rows_count: 300,
                existing_rows_count: 0,
                deleted_rows_count: 0,
                partitions: Some(vec![FieldSummary {
                    contains_null: false,
                    contains_nan: Some(false),
                    lower_bound: Some(20_000_i32.to_le_bytes().to_vec()),
                    upper_bound: Some(20_001_i32.to_le_bytes().to_vec()),
                }]),
                key_metadata: None,
            },
            ManifestFile {
                manifest_path: "file:///w/t/metadata/b-m0.avro".into(),
                manifest_length: 99,
                partition_spec_id: 1,
                content: 0,
                sequence_number: 1,
                min_sequence_number: 1,
                added_snapshot_id: 11,
                added_files_count: 1,
                existing_files_count: 0,
                deleted_files_count: 0,
                added_rows_count: 1,
                existing_rows_count: 0,
                deleted_rows_count: 0,
                partitions: Some(vec![]),
                key_metadata: None,
            },
        ]
    }

    #[test]
    fn manifest_lists_round_trip_with_header_metadata() {
        let list = sample_list();
        let bytes = write_manifest_list(22, Some(11), 2, &list, [7; 16]).unwrap();
        assert_eq!(read_manifest_list(&bytes).unwrap(), list);
        let (schema, meta) = header(&bytes);
        assert_eq!(schema, manifest_list_schema());
        let get = |k: &str| String::from_utf8(meta[k].clone()).unwrap();
        assert_eq!(get("snapshot-id"), "22");
        assert_eq!(get("parent-snapshot-id"), "11");
        assert_eq!(get("sequence-number"), "2");
        assert_eq!(get("format-version"), "2");
        // Deterministic bytes.
        assert_eq!(
            bytes,
            write_manifest_list(22, Some(11), 2, &list, [7; 16]).unwrap()
        );
        let first = write_manifest_list(11, None, 1, &list[1..], [7; 16]).unwrap();
        assert_eq!(
            String::from_utf8(header(&first).1["parent-snapshot-id"].clone()).unwrap(),
            "null"
        );
    }

    #[test]
    fn manifests_decode_with_ids_and_metadata() {
        let schema = Schema::new(0, crate::lake::changelog::base_fields());
        let file = DataFile {
            content: 0,
            file_path: "file:///w/t/data/x.parquet".into(),
            partition: vec![Some(20_418)],
            record_count: 5,
            file_size_in_bytes: 777,
            column_sizes: BTreeMap::from([(1, 10)]),
            value_counts: BTreeMap::from([(1, 5), (2, 5)]),
            null_value_counts: BTreeMap::from([(1, 0), (2, 0)]),
            nan_value_counts: BTreeMap::new(),
            lower_bounds: BTreeMap::from([(2, 1_i64.to_le_bytes().to_vec())]),
            upper_bounds: BTreeMap::from([(2, 5_i64.to_le_bytes().to_vec())]),
        };
        let bytes = write_manifest(&schema, &day_spec(), 42, &[file], [1; 16]).unwrap();
        let (avro_schema, meta) = header(&bytes);
        assert_eq!(avro_schema, manifest_schema(&day_spec()).unwrap());
        let get = |k: &str| String::from_utf8(meta[k].clone()).unwrap();
        assert_eq!(get("format-version"), "2");
        assert_eq!(get("content"), "data");
        assert_eq!(get("schema-id"), "0");
        assert_eq!(get("partition-spec-id"), "0");
        let spec: Value = serde_json::from_str(&get("partition-spec")).unwrap();
        assert_eq!(spec[0]["field-id"], 1000);
        assert_eq!(spec[0]["transform"], "day");
        let s: Schema = serde_json::from_str(&get("schema")).unwrap();
        assert_eq!(s, schema);
        let mut reader = apache_avro::Reader::new(&bytes[..]).unwrap();
        let Avro::Record(entry) = reader.next().unwrap().unwrap() else {
            panic!()
        };
        let r = Rec(&entry);
        assert_eq!(r.long(&["status"]).unwrap(), 1);
        assert_eq!(r.long(&["snapshot_id"]).unwrap(), 42);
        assert_eq!(r.get(&["sequence_number"]), Some(&Avro::Null));
        let Some(Avro::Record(df)) = r.get(&["data_file"]) else {
            panic!()
        };
        let df = Rec(df);
        assert_eq!(df.long(&["record_count"]).unwrap(), 5);
        assert_eq!(df.long(&["file_size_in_bytes"]).unwrap(), 777);
        let Some(Avro::Record(p)) = df.get(&["partition"]) else {
            panic!()
        };
        assert_eq!(unwrap_union(&p[0].1), &Avro::Date(20_418));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [&b""[..], b"Obj\x01", b"not avro at all", &[0xff; 64]] {
            assert_eq!(
                read_manifest_list(input).unwrap_err().kind(),
                ErrorKind::InvalidFormat
            );
        }
    }
}
