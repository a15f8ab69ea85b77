//! The changelog table: one row per CDC event, its columns, type inference,
//! additive schema evolution and the place of values that do not fit.
//!
//! Columns, in order:
//!
//! | id | name | type | |
//! |---|---|---|---|
//! | 1 | `_cdc_op` | string, required | `INSERT`, `UPDATE` or `DELETE` |
//! | 2 | `_cdc_seq` | long, required | the event's `sequence` |
//! | 3 | `_cdc_ts` | timestamptz, required | the event's `timestamp`, microseconds |
//! | 4 | `_cdc_source` | string, required | `sourceDoId` |
//! | 5 | `_cdc_row_id` | string, required | `rowId` |
//! | 6 | `_cdc_before` | string (JSON text) | the `before` image when it is not the row image (an UPDATE's old row) |
//! | 7 | `_cdc_metadata` | string (JSON text) | the event's `metadata` |
//! | 8 | `_cdc_overflow` | string (JSON text) | values that fit no column, as an object keyed by column name |
//! | 9.. | the row's own columns | optional | from the row image |
//!
//! The row image is `after` when present, else `before` (so a DELETE's row is
//! its `before`). Types are inferred from the first non-null value a new column
//! receives: boolean, long for integers, double for other numbers (or for
//! integers mixed with fractions in the same commit), string for strings, and
//! string holding JSON text for objects and arrays (such columns carry the doc
//! [`JSON_DOC`], so a JSON column and a text column are never mixed up). A
//! column whose only values so far are null is not created yet: in the lake a
//! null and a missing key read the same.
//!
//! A value that does not fit its column (a string in a long column, a fraction
//! in a long column, an object in a text column, an integer a double cannot
//! hold exactly) is never dropped or converted: it goes to `_cdc_overflow`
//! under its column name, the column is null in that row, and the commit
//! counts it per column. So do values under names reserved for DoLake (any
//! name starting with `_cdc_`) and under the empty name. Integers in a double
//! column are stored as doubles when exactly representable.
//!
//! A table does not grow without bound: it gets at most
//! [`MAX_TABLE_COLUMNS`] columns, a commit adds none once the schemas kept
//! in the metadata would hold more than
//! [`MAX_SCHEMA_FIELDS`](super::limits::MAX_SCHEMA_FIELDS) fields together,
//! and names longer than [`MAX_COLUMN_NAME_BYTES`] never become columns. A
//! key left without a column keeps its value in `_cdc_overflow`, like a
//! value of the wrong type (see [`limits`](super::limits)).

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use super::limits::{check_timestamp, MAX_COLUMN_NAME_BYTES, MAX_TABLE_COLUMNS};
use super::metadata::{Field, FieldType, Schema};
use crate::error::{Error, ErrorKind, Result};

/// Doc string of columns that hold JSON text.
pub const JSON_DOC: &str = "dolake:json";
/// Prefix reserved for DoLake's own columns.
pub const RESERVED_PREFIX: &str = "_cdc_";
/// Name of the operation column.
pub const OP: &str = "_cdc_op";
/// Name of the sequence column.
pub const SEQ: &str = "_cdc_seq";
/// Name of the timestamp column.
pub const TS: &str = "_cdc_ts";
/// Name of the source column.
pub const SOURCE: &str = "_cdc_source";
/// Name of the row id column.
pub const ROW_ID: &str = "_cdc_row_id";
/// Name of the before-image column.
pub const BEFORE: &str = "_cdc_before";
/// Name of the event metadata column.
pub const METADATA: &str = "_cdc_metadata";
/// Name of the overflow column.
pub const OVERFLOW: &str = "_cdc_overflow";

/// The operation of a change event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A new row.
    Insert,
    /// A changed row.
    Update,
    /// A removed row.
    Delete,
}

impl Op {
    /// The value written to `_cdc_op`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// One CDC event of the table being committed.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// `sourceDoId` of the shard that sent it.
    pub source_id: String,
    /// `sequenceNumber` of the batch it came in.
    pub batch_seq: u64,
    /// The event's `sequence`.
    pub sequence: u64,
    /// The event's `timestamp`, ms since the epoch.
    pub timestamp_ms: i64,
    /// The operation.
    pub operation: Op,
    /// `rowId`.
    pub row_id: String,
    /// The row before the change.
    pub before: Option<Map<String, Value>>,
    /// The row after the change.
    pub after: Option<Map<String, Value>>,
    /// The event's `metadata`.
    pub metadata: Option<Value>,
}

impl ChangeEvent {
    /// The image whose values fill the row's own columns.
    pub fn row_image(&self) -> Option<&Map<String, Value>> {
        self.after.as_ref().or(self.before.as_ref())
    }

    /// The `before` image when it is not the row image.
    pub fn extra_before(&self) -> Option<&Map<String, Value>> {
        if self.after.is_some() {
            self.before.as_ref()
        } else {
            None
        }
    }

    /// `_cdc_ts` in microseconds. Refuses a timestamp outside
    /// [`MIN_TIMESTAMP_MS`](super::limits::MIN_TIMESTAMP_MS)..=
    /// [`MAX_TIMESTAMP_MS`](super::limits::MAX_TIMESTAMP_MS), whose `hour`
    /// partition value would not fit an `i32` (see [`check_timestamp`]).
    pub fn timestamp_micros(&self) -> Result<i64> {
        check_timestamp(self.timestamp_ms).map_err(|e| {
            Error::new(
                ErrorKind::InvalidFormat,
                format!(
                    "event {} of source {}: {}",
                    self.sequence,
                    self.source_id,
                    e.message()
                ),
            )
        })?;
        Ok(self.timestamp_ms * 1000)
    }

    /// `_cdc_seq` as a long.
    pub fn sequence_long(&self) -> Result<i64> {
        i64::try_from(self.sequence).map_err(|_| {
            Error::new(
                ErrorKind::InvalidFormat,
                format!(
                    "event sequence {} of source {} does not fit a long",
                    self.sequence, self.source_id
                ),
            )
        })
    }
}

/// Whether a name may be a row column.
fn is_row_column_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with(RESERVED_PREFIX)
}

/// The fixed columns of a new table (ids 1-8).
pub fn base_fields() -> Vec<Field> {
    let f = |id, name: &str, required, t, json| Field {
        id,
        name: name.to_string(),
        required,
        field_type: t,
        doc: if json {
            Some(JSON_DOC.to_string())
        } else {
            None
        },
        extra: BTreeMap::new(),
    };
    vec![
        f(1, OP, true, FieldType::String, false),
        f(2, SEQ, true, FieldType::Long, false),
        f(3, TS, true, FieldType::Timestamptz, false),
        f(4, SOURCE, true, FieldType::String, false),
        f(5, ROW_ID, true, FieldType::String, false),
        f(6, BEFORE, false, FieldType::String, true),
        f(7, METADATA, false, FieldType::String, true),
        f(8, OVERFLOW, false, FieldType::String, true),
    ]
}

/// What a JSON value would make of a new column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Integer,
    Fraction,
    Text,
    Json,
}

fn kind_of(v: &Value) -> Option<Kind> {
    match v {
        Value::Null => None,
        Value::Bool(_) => Some(Kind::Bool),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(Kind::Integer),
        Value::Number(_) => Some(Kind::Fraction),
        Value::String(_) => Some(Kind::Text),
        Value::Array(_) | Value::Object(_) => Some(Kind::Json),
    }
}

/// The result of evolving a schema for a commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Evolution {
    /// The schema the commit's files are written with.
    pub schema: Schema,
    /// Highest column id assigned.
    pub last_column_id: i32,
    /// Names of the columns added, in order.
    pub added: Vec<String>,
}

/// Adds the columns `events` need to `current` (or to a new table's base
/// columns). Existing columns are never changed; new ones are optional, get
/// ids above `last_column_id`, and come in order of first appearance. When a
/// column is added the schema gets id `next_schema_id`.
///
/// The schema grows to [`MAX_TABLE_COLUMNS`] columns at most, and names
/// longer than [`MAX_COLUMN_NAME_BYTES`] never become columns: keys left
/// without a column keep their values in `_cdc_overflow` (see
/// [`RowLayout::fill`]).
pub fn evolve(
    current: Option<&Schema>,
    last_column_id: i32,
    next_schema_id: i32,
    events: &[ChangeEvent],
) -> Evolution {
    evolve_within(current, last_column_id, next_schema_id, events, usize::MAX)
}

/// [`evolve`] adding at most `room` columns (the first to appear), for the
/// table-wide bounds of [`schema_room`](super::limits::schema_room).
pub fn evolve_within(
    current: Option<&Schema>,
    last_column_id: i32,
    next_schema_id: i32,
    events: &[ChangeEvent],
    room: usize,
) -> Evolution {
    let (mut schema, mut last_id) = match current {
        Some(s) => (s.clone(), last_column_id),
        None => (Schema::new(0, base_fields()), 8),
    };
    let room = room.min(MAX_TABLE_COLUMNS.saturating_sub(schema.fields.len()));
    let existing: HashMap<&str, ()> = schema
        .fields
        .iter()
        .map(|f| (f.name.as_str(), ()))
        .collect();
    // New column name -> (order of first typed value, kind).
    let mut new: HashMap<String, (usize, Kind)> = HashMap::new();
    for image in events.iter().filter_map(ChangeEvent::row_image) {
        for (name, value) in image {
            if !is_row_column_name(name)
                || name.len() > MAX_COLUMN_NAME_BYTES
                || existing.contains_key(name.as_str())
            {
                continue;
            }
            let Some(kind) = kind_of(value) else { continue };
            let next = new.len();
            if next >= room && !new.contains_key(name) {
                continue; // no room: the value goes to the overflow column
            }
            let entry = new.entry(name.clone()).or_insert((next, kind));
            // Integers and fractions together make a double column.
            if matches!(
                (entry.1, kind),
                (Kind::Integer, Kind::Fraction) | (Kind::Fraction, Kind::Integer)
            ) {
                entry.1 = Kind::Fraction;
            }
        }
    }
    let mut new: Vec<(String, (usize, Kind))> = new.into_iter().collect();
    new.sort_by_key(|(_, (order, _))| *order);
    let added: Vec<String> = new.iter().map(|(n, _)| n.clone()).collect();
    for (name, (_, kind)) in new {
        last_id += 1;
        let (field_type, doc) = match kind {
            Kind::Bool => (FieldType::Boolean, None),
            Kind::Integer => (FieldType::Long, None),
            Kind::Fraction => (FieldType::Double, None),
            Kind::Text => (FieldType::String, None),
            Kind::Json => (FieldType::String, Some(JSON_DOC.to_string())),
        };
        schema.fields.push(Field {
            id: last_id,
            name,
            required: false,
            field_type,
            doc,
            extra: BTreeMap::new(),
        });
    }
    if !added.is_empty() || current.is_none() {
        schema.schema_id = if current.is_none() { 0 } else { next_schema_id };
    }
    Evolution {
        schema,
        last_column_id: last_id,
        added,
    }
}

/// A value ready for a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Null.
    Null,
    /// A boolean.
    Bool(bool),
    /// A long (or microseconds for timestamptz).
    Long(i64),
    /// A double.
    Double(f64),
    /// A string.
    Str(String),
}

/// Converts `value` for a column of type `t` (`json`: the column holds JSON
/// text). `None` when it does not fit and belongs in the overflow column.
pub fn fit(value: &Value, t: &FieldType, json: bool) -> Option<Cell> {
    match (value, t) {
        (Value::Null, _) => Some(Cell::Null),
        (Value::Bool(b), FieldType::Boolean) => Some(Cell::Bool(*b)),
        (Value::Number(n), FieldType::Long) => n.as_i64().map(Cell::Long),
        (Value::Number(n), FieldType::Double) => {
            if let Some(i) = n.as_i64() {
                let d = i as f64;
                // Exact: the double converts back to the same integer.
                (d as i128 == i128::from(i)).then_some(Cell::Double(d))
            } else if let Some(u) = n.as_u64() {
                let d = u as f64;
                (d as u128 == u128::from(u)).then_some(Cell::Double(d))
            } else {
                n.as_f64().map(Cell::Double)
            }
        }
        (Value::String(s), FieldType::String) if !json => Some(Cell::Str(s.clone())),
        (Value::Array(_) | Value::Object(_), FieldType::String) if json => {
            Some(Cell::Str(value.to_string()))
        }
        _ => None,
    }
}

/// Positions of the columns of one schema, for turning events into rows.
#[derive(Debug)]
pub struct RowLayout<'a> {
    schema: &'a Schema,
    by_name: HashMap<&'a str, usize>,
    op: usize,
    seq: usize,
    ts: usize,
    source: usize,
    row_id: usize,
    before: usize,
    metadata: usize,
    overflow: usize,
}

impl<'a> RowLayout<'a> {
    /// The layout of `schema`, which must have DoLake's fixed columns.
    pub fn new(schema: &'a Schema) -> Result<Self> {
        let by_name: HashMap<&str, usize> = schema
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.as_str(), i))
            .collect();
        let find = |name: &str, t: FieldType| -> Result<usize> {
            match by_name.get(name) {
                Some(&i) if schema.fields[i].field_type == t => Ok(i),
                _ => Err(Error::new(
                    ErrorKind::Lake,
                    format!(
                        "the table's current schema has no column `{name}` of type {:?}; it was not written by DoLake",
                        t
                    ),
                )),
            }
        };
        Ok(Self {
            op: find(OP, FieldType::String)?,
            seq: find(SEQ, FieldType::Long)?,
            ts: find(TS, FieldType::Timestamptz)?,
            source: find(SOURCE, FieldType::String)?,
            row_id: find(ROW_ID, FieldType::String)?,
            before: find(BEFORE, FieldType::String)?,
            metadata: find(METADATA, FieldType::String)?,
            overflow: find(OVERFLOW, FieldType::String)?,
            schema,
            by_name,
        })
    }

    /// Index of `_cdc_ts`.
    pub fn ts_index(&self) -> usize {
        self.ts
    }

    /// Fills `cells` (one per schema field) with the row of `event`. Values
    /// that fit no column go to the overflow cell and are counted in
    /// `overflow_counts` by column name.
    pub fn fill(
        &self,
        event: &ChangeEvent,
        cells: &mut Vec<Cell>,
        overflow_counts: &mut BTreeMap<String, u64>,
    ) -> Result<()> {
        cells.clear();
        cells.resize(self.schema.fields.len(), Cell::Null);
        cells[self.op] = Cell::Str(event.operation.as_str().to_string());
        cells[self.seq] = Cell::Long(event.sequence_long()?);
        cells[self.ts] = Cell::Long(event.timestamp_micros()?);
        cells[self.source] = Cell::Str(event.source_id.clone());
        cells[self.row_id] = Cell::Str(event.row_id.clone());
        if let Some(before) = event.extra_before() {
            cells[self.before] = Cell::Str(Value::Object(before.clone()).to_string());
        }
        if let Some(m) = &event.metadata {
            cells[self.metadata] = Cell::Str(m.to_string());
        }
        let mut overflow: Option<Map<String, Value>> = None;
        if let Some(image) = event.row_image() {
            for (name, value) in image {
                let fitted = if is_row_column_name(name) {
                    self.by_name.get(name.as_str()).and_then(|&i| {
                        let f = &self.schema.fields[i];
                        let json = f.doc.as_deref() == Some(JSON_DOC);
                        fit(value, &f.field_type, json).map(|c| (i, c))
                    })
                } else {
                    None
                };
                match fitted {
                    Some((i, cell)) => cells[i] = cell,
                    // A null under an unknown or reserved name carries nothing.
                    None if value.is_null() && !is_reserved_or_empty(name) => {}
                    None => {
                        *overflow_counts.entry(name.clone()).or_insert(0) += 1;
                        overflow
                            .get_or_insert_with(Map::new)
                            .insert(name.clone(), value.clone());
                    }
                }
            }
        }
        if let Some(o) = overflow {
            cells[self.overflow] = Cell::Str(Value::Object(o).to_string());
        }
        Ok(())
    }
}

fn is_reserved_or_empty(name: &str) -> bool {
    !is_row_column_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn ev(seq: u64, op: Op, after: Value) -> ChangeEvent {
        ChangeEvent {
            source_id: "src-a".into(),
            batch_seq: 1,
            sequence: seq,
            timestamp_ms: 1_795_700_700_000 + seq as i64,
            operation: op,
            row_id: format!("r{seq}"),
            before: None,
            after: after.as_object().cloned(),
            metadata: None,
        }
    }

    fn types(s: &Schema) -> Vec<(String, FieldType, bool)> {
        s.fields[8..]
            .iter()
            .map(|f| {
                (
                    f.name.clone(),
                    f.field_type.clone(),
                    f.doc.as_deref() == Some(JSON_DOC),
                )
            })
            .collect()
    }

    #[test]
    fn types_are_inferred_from_json() {
        let events = vec![
            ev(
                1,
                Op::Insert,
                json!({"b": true, "i": 7, "f": 1.5, "s": "x", "o": {"k": 1}, "a": [1], "n": null}),
            ),
            ev(2, Op::Insert, json!({"mixed": 1})),
            ev(3, Op::Insert, json!({"mixed": 2.5, "late": null})),
            ev(4, Op::Insert, json!({"late": "now"})),
        ];
        let e = evolve(None, 0, 0, &events);
        assert_eq!(e.schema.schema_id, 0);
        let mut t = types(&e.schema);
        t.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            t,
            vec![
                ("a".into(), FieldType::String, true),
                ("b".into(), FieldType::Boolean, false),
                ("f".into(), FieldType::Double, false),
                ("i".into(), FieldType::Long, false),
                ("late".into(), FieldType::String, false),
                ("mixed".into(), FieldType::Double, false),
                ("o".into(), FieldType::String, true),
                ("s".into(), FieldType::String, false),
            ]
        );
        // Only-null column "n" is not created; ids are dense from 9.
        assert!(e.schema.field_by_name("n").is_none());
        let ids: Vec<i32> = e.schema.fields.iter().map(|f| f.id).collect();
        assert_eq!(ids, (1..=16).collect::<Vec<_>>());
        assert_eq!(e.last_column_id, 16);
        assert!(e.schema.fields[8..].iter().all(|f| !f.required));
    }

    #[test]
    fn evolution_only_adds() {
        let first = evolve(None, 0, 0, &[ev(1, Op::Insert, json!({"id": 1}))]);
        let same = evolve(
            Some(&first.schema),
            9,
            1,
            &[ev(2, Op::Insert, json!({"id": 2}))],
        );
        assert_eq!(same.schema, first.schema, "no new column, same schema id");
        assert!(same.added.is_empty());
        let more = evolve(
            Some(&first.schema),
            9,
            1,
            &[ev(3, Op::Insert, json!({"id": "three", "email": "a@b"}))],
        );
        assert_eq!(more.schema.schema_id, 1);
        assert_eq!(more.added, vec!["email".to_string()]);
        let id = more.schema.field_by_name("id").unwrap();
        assert_eq!((id.id, &id.field_type), (9, &FieldType::Long), "type kept");
        let email = more.schema.field_by_name("email").unwrap();
        assert_eq!((email.id, email.required), (10, false));
    }

    #[test]
    fn values_that_do_not_fit_overflow_and_are_counted() {
        let schema = evolve(
            None,
            0,
            0,
            &[ev(
                1,
                Op::Insert,
                json!({"n": 1, "d": 0.5, "s": "x", "j": {"a": 1}, "b": true}),
            )],
        )
        .schema;
        let layout = RowLayout::new(&schema).unwrap();
        let mut cells = Vec::new();
        let mut counts = BTreeMap::new();
        let e = ev(
            2,
            Op::Insert,
            json!({"n": "forty", "d": 3, "s": 5, "j": "text", "b": null, "_cdc_op": "x", "": 1}),
        );
        layout.fill(&e, &mut cells, &mut counts).unwrap();
        let get =
            |name: &str| cells[schema.fields.iter().position(|f| f.name == name).unwrap()].clone();
        assert_eq!(get("d"), Cell::Double(3.0), "integers widen into doubles");
        assert_eq!(get("n"), Cell::Null);
        assert_eq!(get("s"), Cell::Null);
        assert_eq!(get("j"), Cell::Null);
        assert_eq!(get("b"), Cell::Null);
        let Cell::Str(o) = get(OVERFLOW) else {
            panic!("no overflow")
        };
        let o: Value = serde_json::from_str(&o).unwrap();
        assert_eq!(
            o,
            json!({"n": "forty", "s": 5, "j": "text", "_cdc_op": "x", "": 1})
        );
        assert_eq!(
            get(OP),
            Cell::Str("INSERT".into()),
            "reserved name not overwritten"
        );
        assert_eq!(
            counts,
            BTreeMap::from([
                ("".to_string(), 1),
                ("_cdc_op".to_string(), 1),
                ("j".to_string(), 1),
                ("n".to_string(), 1),
                ("s".to_string(), 1)
            ])
        );
        // A fraction in a long column, an integer too big for a double.
        let e = ev(
            3,
            Op::Insert,
            json!({"n": 1.5, "d": 9_007_199_254_740_993_u64}),
        );
        layout.fill(&e, &mut cells, &mut counts).unwrap();
        let get =
            |name: &str| cells[schema.fields.iter().position(|f| f.name == name).unwrap()].clone();
        assert_eq!(get("n"), Cell::Null);
        assert_eq!(get("d"), Cell::Null);
        assert_eq!(counts["n"], 2);
        assert_eq!(counts["d"], 1);
    }

    #[test]
    fn images_and_json_columns() {
        let schema = evolve(None, 0, 0, &[ev(1, Op::Insert, json!({"id": 1}))]).schema;
        let layout = RowLayout::new(&schema).unwrap();
        let mut cells = Vec::new();
        let mut counts = BTreeMap::new();
        let mut update = ev(2, Op::Update, json!({"id": 2}));
        update.before = json!({"id": 1}).as_object().cloned();
        update.metadata = Some(json!({"txn": 9}));
        layout.fill(&update, &mut cells, &mut counts).unwrap();
        assert_eq!(cells[5], Cell::Str(r#"{"id":1}"#.into()));
        assert_eq!(cells[6], Cell::Str(r#"{"txn":9}"#.into()));
        assert_eq!(cells[8], Cell::Long(2));
        let mut delete = ev(3, Op::Delete, Value::Null);
        delete.before = json!({"id": 3}).as_object().cloned();
        layout.fill(&delete, &mut cells, &mut counts).unwrap();
        assert_eq!(cells[0], Cell::Str("DELETE".into()));
        assert_eq!(cells[5], Cell::Null, "a DELETE's before is its row");
        assert_eq!(cells[8], Cell::Long(3));
        assert_eq!(cells[2], Cell::Long(1_795_700_700_003_000));
        assert!(counts.is_empty());
    }

    #[test]
    fn foreign_schemas_are_refused() {
        let s = Schema::new(0, vec![]);
        let e = RowLayout::new(&s).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Lake);
        assert!(e.message().contains("_cdc_op"));
    }
}
