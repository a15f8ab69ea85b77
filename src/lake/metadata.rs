//! Iceberg v2 table metadata (`v{N}.metadata.json`) as types.
//!
//! One struct per spec object, kebab-case JSON as the spec writes it. Keys this
//! module does not model are kept in `extra` maps and written back unchanged,
//! so a table touched by another engine does not lose anything when DoLake
//! commits to it. Parsing never panics on outside input.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

/// An Iceberg primitive type, as far as DoLake writes or reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    /// `boolean`
    Boolean,
    /// `long` (64-bit signed integer)
    Long,
    /// `double`
    Double,
    /// `string` (UTF-8)
    String,
    /// `timestamptz` (microseconds since the epoch, UTC)
    Timestamptz,
    /// Any other type (`int`, `date`, a nested type, ...), kept as written.
    /// DoLake never writes values into such a column: they go to the overflow
    /// column.
    Other(Value),
}

impl FieldType {
    fn to_json(&self) -> Value {
        match self {
            FieldType::Boolean => Value::from("boolean"),
            FieldType::Long => Value::from("long"),
            FieldType::Double => Value::from("double"),
            FieldType::String => Value::from("string"),
            FieldType::Timestamptz => Value::from("timestamptz"),
            FieldType::Other(v) => v.clone(),
        }
    }

    fn from_json(v: Value) -> Self {
        match v.as_str() {
            Some("boolean") => FieldType::Boolean,
            Some("long") => FieldType::Long,
            Some("double") => FieldType::Double,
            Some("string") => FieldType::String,
            Some("timestamptz") => FieldType::Timestamptz,
            _ => FieldType::Other(v),
        }
    }
}

impl Serialize for FieldType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for FieldType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Value::deserialize(d).map(FieldType::from_json)
    }
}

/// A top-level field of a schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Field {
    /// Field id, unique in the table forever.
    pub id: i32,
    /// Column name.
    pub name: String,
    /// Whether every row has a value.
    pub required: bool,
    /// The type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Documentation. DoLake marks columns that hold JSON text with
    /// [`JSON_DOC`](super::changelog::JSON_DOC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
    /// Keys not modelled here (`initial-default`, ...), kept as read.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// A schema version of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Schema {
    /// Always `"struct"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Schema id.
    pub schema_id: i32,
    /// Top-level fields, in order.
    pub fields: Vec<Field>,
    /// Keys not modelled here (`identifier-field-ids`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Schema {
    /// A schema of `fields`.
    pub fn new(schema_id: i32, fields: Vec<Field>) -> Self {
        Self {
            kind: "struct".to_string(),
            schema_id,
            fields,
            extra: BTreeMap::new(),
        }
    }

    /// The field named `name`.
    pub fn field_by_name(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The schema as JSON text (the manifest header's `schema`).
    pub fn to_json_string(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A partition transform (spec: "Partition Transforms"). DoLake writes
/// `day` and `hour` of `_cdc_ts`; any other transform of a table written by
/// another engine is kept as read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transform {
    /// `day`: days since 1970-01-01 (a `date`).
    Day,
    /// `hour`: hours since 1970-01-01 00:00 (an `int`).
    Hour,
    /// Any other transform, as written (`identity`, `bucket[16]`, ...).
    Other(String),
}

impl Transform {
    /// The spec's name of the transform.
    pub fn as_str(&self) -> &str {
        match self {
            Transform::Day => "day",
            Transform::Hour => "hour",
            Transform::Other(s) => s,
        }
    }

    /// The transform named `s`.
    pub fn parse(s: &str) -> Self {
        match s {
            "day" => Transform::Day,
            "hour" => Transform::Hour,
            other => Transform::Other(other.to_string()),
        }
    }

    /// The transform's value of a timestamp in microseconds (`None` for
    /// transforms DoLake does not compute).
    pub fn of_micros(&self, micros: i64) -> Option<i32> {
        match self {
            Transform::Day => Some(super::stats::day_of(micros)),
            Transform::Hour => Some(super::stats::hour_of(micros)),
            Transform::Other(_) => None,
        }
    }
}

impl Serialize for Transform {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Transform {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(|s| Transform::parse(&s))
    }
}

/// A snapshot's `operation` (spec: "Snapshots").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Only data files were added (every flush).
    Append,
    /// Files were rewritten without changing the rows (maintenance).
    Replace,
    /// Data and delete files were added and removed.
    Overwrite,
    /// Data files were removed or delete files added.
    Delete,
}

impl Operation {
    /// The spec's name, as written in the snapshot summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Append => "append",
            Operation::Replace => "replace",
            Operation::Overwrite => "overwrite",
            Operation::Delete => "delete",
        }
    }

    /// The summary key that holds it.
    pub const SUMMARY_KEY: &'static str = "operation";
}

/// One field of a partition spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PartitionField {
    /// Partition field name.
    pub name: String,
    /// Transform: `day`, `hour`, `identity`, ...
    pub transform: Transform,
    /// Id of the source column.
    pub source_id: i32,
    /// Partition field id (1000 and up).
    pub field_id: i32,
}

/// A partition spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PartitionSpec {
    /// Spec id.
    pub spec_id: i32,
    /// Fields; empty when unpartitioned.
    pub fields: Vec<PartitionField>,
}

/// A sort order (DoLake only writes the unsorted order 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SortOrder {
    /// Order id.
    pub order_id: i32,
    /// Sort fields, kept as read.
    pub fields: Vec<Value>,
}

/// A snapshot of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshot {
    /// Snapshot id.
    pub snapshot_id: i64,
    /// The previous snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_snapshot_id: Option<i64>,
    /// Data sequence number of the snapshot.
    pub sequence_number: i64,
    /// When the snapshot was made, ms since the epoch.
    pub timestamp_ms: i64,
    /// Location of the manifest list.
    pub manifest_list: String,
    /// Summary; `operation` is one of its keys. Every value is a string.
    pub summary: BTreeMap<String, String>,
    /// Schema id current when the snapshot was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<i32>,
    /// Keys not modelled here.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// A named reference to a snapshot (`refs.main`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotRef {
    /// The snapshot.
    pub snapshot_id: i64,
    /// `branch` or `tag`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Keys not modelled here (retention settings).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// An entry of `snapshot-log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotLogEntry {
    /// When the snapshot became current.
    pub timestamp_ms: i64,
    /// The snapshot.
    pub snapshot_id: i64,
}

/// An entry of `metadata-log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MetadataLogEntry {
    /// `last-updated-ms` of that metadata file.
    pub timestamp_ms: i64,
    /// Its location.
    pub metadata_file: String,
}

/// The whole `metadata.json` of a format version 2 table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TableMetadata {
    /// Always 2.
    pub format_version: i32,
    /// The table's uuid.
    pub table_uuid: String,
    /// Base location (full URI).
    pub location: String,
    /// Highest sequence number assigned.
    pub last_sequence_number: i64,
    /// When this metadata was written, ms.
    pub last_updated_ms: i64,
    /// Highest column id assigned.
    pub last_column_id: i32,
    /// Every schema version.
    pub schemas: Vec<Schema>,
    /// The current schema.
    pub current_schema_id: i32,
    /// Every partition spec.
    pub partition_specs: Vec<PartitionSpec>,
    /// The spec new files are written with.
    pub default_spec_id: i32,
    /// Highest partition field id assigned.
    pub last_partition_id: i32,
    /// Table properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The current snapshot, if any.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "snapshot_id_or_none"
    )]
    pub current_snapshot_id: Option<i64>,
    /// Every snapshot.
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
    /// History of the current snapshot.
    #[serde(default)]
    pub snapshot_log: Vec<SnapshotLogEntry>,
    /// Previous metadata files.
    #[serde(default)]
    pub metadata_log: Vec<MetadataLogEntry>,
    /// Every sort order.
    pub sort_orders: Vec<SortOrder>,
    /// The default sort order.
    pub default_sort_order_id: i32,
    /// Branches and tags.
    #[serde(default)]
    pub refs: BTreeMap<String, SnapshotRef>,
    /// Keys not modelled here (`statistics`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Java writes `-1` for "no current snapshot"; read it as none.
fn snapshot_id_or_none<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<i64>, D::Error> {
    let v = Option::<i64>::deserialize(d)?;
    Ok(v.filter(|id| *id != -1))
}

impl TableMetadata {
    /// Parses a `metadata.json`. Refuses anything but format version 2 and
    /// metadata whose ids do not resolve (current schema, default spec,
    /// current snapshot).
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let m: TableMetadata = serde_path_to_error::deserialize(de).map_err(|e| {
            Error::new(
                ErrorKind::InvalidFormat,
                format!(
                    "table metadata is not valid at `{}`: {}",
                    e.path(),
                    e.inner()
                ),
            )
        })?;
        m.validate()?;
        Ok(m)
    }

    /// The metadata as JSON text (pretty-printed, stable key order).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorKind::InvalidFormat, m));
        if self.format_version != 2 {
            return bad(format!(
                "table metadata has format-version {}, DoLake writes only version 2",
                self.format_version
            ));
        }
        if self.current_schema().is_none() {
            return bad(format!(
                "table metadata names current-schema-id {} but has no such schema",
                self.current_schema_id
            ));
        }
        if self.default_spec().is_none() {
            return bad(format!(
                "table metadata names default-spec-id {} but has no such partition spec",
                self.default_spec_id
            ));
        }
        if let Some(id) = self.current_snapshot_id {
            if self.snapshot(id).is_none() {
                return bad(format!(
                    "table metadata names current-snapshot-id {id} but has no such snapshot"
                ));
            }
        }
        Ok(())
    }

    /// The current schema.
    pub fn current_schema(&self) -> Option<&Schema> {
        self.schemas
            .iter()
            .find(|s| s.schema_id == self.current_schema_id)
    }

    /// The default partition spec.
    pub fn default_spec(&self) -> Option<&PartitionSpec> {
        self.partition_specs
            .iter()
            .find(|s| s.spec_id == self.default_spec_id)
    }

    /// The snapshot with id `id`.
    pub fn snapshot(&self, id: i64) -> Option<&Snapshot> {
        self.snapshots.iter().find(|s| s.snapshot_id == id)
    }

    /// The current snapshot.
    pub fn current_snapshot(&self) -> Option<&Snapshot> {
        self.current_snapshot_id.and_then(|id| self.snapshot(id))
    }
}

/// Parses `version-hint.text`: the number of the current `v{N}.metadata.json`.
pub fn parse_version_hint(bytes: &[u8]) -> Result<u64> {
    let text = std::str::from_utf8(bytes).unwrap_or("").trim();
    text.parse::<u64>().map_err(|_| {
        Error::new(
            ErrorKind::InvalidFormat,
            format!("version-hint.text must hold a version number, got {text:?}"),
        )
    })
}
