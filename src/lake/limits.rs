//! What the lake can write: the one rule intake applies to every event before
//! acknowledging it ([`check_event`]), and the bounds the writer keeps by
//! itself (the width of a table and the size of its schemas).
//!
//! Every event [`check_event`] accepts is writable by
//! [`plan_commit_with_marks`](super::plan_commit_with_marks): alone, together
//! with any other accepted events of the same table, and on top of any table
//! DoLake wrote before, whatever columns the table already has. (Only a table
//! DoLake cannot extend at all, such as one whose fixed columns another
//! engine changed, makes a commit fail; that is a property of the table, not
//! of an event.) The limits, and where each comes from:
//!
//! | limit | value | why |
//! |---|---|---|
//! | table name | [`validate_name`] | one key segment and one Iceberg identifier |
//! | `sequence` | at most [`MAX_SEQUENCE`] | `_cdc_seq` is an Iceberg `long` |
//! | `timestamp` | [`MIN_TIMESTAMP_MS`]..=[`MAX_TIMESTAMP_MS`] | `_cdc_ts` is microseconds in an `i64`, the `day` and `hour` partition values are `i32` |
//! | keys of `after` / `before` | at most [`MAX_EVENT_KEYS`] each | bounds the work per event |
//! | nesting of `after`, `before` ([`check_metadata`]: `metadata`) | at most [`MAX_JSON_DEPTH`] levels | the JSON text written stays readable |
//!
//! What an event cannot break, because the writer bounds it instead of
//! failing: a key that would be a new column but cannot be one (the table
//! already has [`MAX_TABLE_COLUMNS`] columns, its schemas together hold
//! [`MAX_SCHEMA_FIELDS`] fields, or the name is longer than
//! [`MAX_COLUMN_NAME_BYTES`]) keeps its value in `_cdc_overflow` under its
//! name, as a value of the wrong type does, and is counted in the commit's
//! overflow. Names reserved for DoLake (`_cdc_*`, the empty name) are never
//! refused either: their values go to `_cdc_overflow`.

use serde_json::{Map, Value};

use super::changelog::{base_fields, ChangeEvent};
use super::metadata::TableMetadata;
use super::table::validate_name;
use crate::error::{Error, ErrorKind, Result};

/// Milliseconds in an hour.
const HOUR_MS: i64 = 3_600_000;

/// Earliest writable `timestamp`, ms since the epoch: the first millisecond
/// of hour `i32::MIN` (about 243,000 BC). The `hour` partition value of
/// `_cdc_ts` is an `i32` of hours since 1970 (Iceberg spec, partition
/// transforms), the strictest of the three bounds: microseconds in an `i64`
/// reach ±292,000 years and `day` values in an `i32` ±5.8 million years.
pub const MIN_TIMESTAMP_MS: i64 = i32::MIN as i64 * HOUR_MS;

/// Latest writable `timestamp`, ms since the epoch: the last millisecond of
/// hour `i32::MAX` (about AD 247,000). See [`MIN_TIMESTAMP_MS`].
pub const MAX_TIMESTAMP_MS: i64 = (i32::MAX as i64 + 1) * HOUR_MS - 1;

/// Highest writable event `sequence`: `_cdc_seq` is an Iceberg `long`.
pub const MAX_SEQUENCE: u64 = i64::MAX as u64;

/// Most keys in an event's `after`, and in its `before`. Ten times the 100
/// columns a table of a SQLite-backed Durable Object (a DoSQL shard) can
/// have, so no real row is refused; it bounds the work one event makes
/// (type inference, the overflow object) and, with [`MAX_TABLE_COLUMNS`],
/// the width of a file.
pub const MAX_EVENT_KEYS: usize = 1_000;

/// Deepest nesting of arrays and objects in an event's `after`, `before` and
/// `metadata`, counting the image itself as one level. The JSON text DoLake
/// writes of them (`_cdc_before`, `_cdc_metadata`, `_cdc_overflow`, JSON
/// columns, and the whole event in the dead-letter table, one level more)
/// then nests at most 127 levels, which serde_json's default parser and the
/// common JSON readers read back. The wire decoder stops at 128 levels for
/// the whole message already, so no event that arrives over a socket is
/// refused by this rule; it keeps the writer's recursion bounded for events
/// built any other way.
pub const MAX_JSON_DEPTH: usize = 126;

/// Most columns of a table's schema, the 8 fixed `_cdc_*` columns included.
/// A key that would be a column beyond it goes to `_cdc_overflow` instead.
/// Every column costs statistics in every data file's manifest entry and a
/// column chunk in every row group; a table with more columns than any real
/// source has is a table whose keys are data (ids, dates), and those are
/// better kept together in `_cdc_overflow`.
pub const MAX_TABLE_COLUMNS: usize = 1_000;

/// Most fields of all the schemas in a table's metadata together. Iceberg
/// keeps every schema version in `metadata.json`, each with all its fields,
/// and each commit that adds a column adds a version: a table gaining one
/// column per commit would grow its metadata with the square of its width
/// (1,000 columns added one at a time: about 500,000 fields, 50 MB). Once a
/// new schema would take the total over this bound, no column is added (new
/// keys go to `_cdc_overflow`), which keeps the schemas at about 1 MB (up to
/// 4 MB with the longest names). A table of 100 columns can still evolve
/// about 100 times; to get new columns after that, rewrite the table.
pub const MAX_SCHEMA_FIELDS: usize = 10_000;

/// Longest name, in bytes, that becomes a column (AWS Glue's bound on column
/// names is 255 characters); a longer key keeps its value in
/// `_cdc_overflow`. Names are written into every schema version and every
/// manifest's header, so this bounds the metadata with
/// [`MAX_SCHEMA_FIELDS`].
pub const MAX_COLUMN_NAME_BYTES: usize = 255;

fn refuse(msg: String) -> Error {
    Error::new(ErrorKind::InvalidFormat, msg)
}

/// Whether the lake can write an event of table `table`: the rule intake
/// applies before acknowledging an event (with [`check_metadata`] for its
/// `metadata`). The error (kind [`ErrorKind::InvalidFormat`]) names the
/// field first (`table`, `sequence`, `timestamp`, `before` or `after`), then
/// the key and the limit, so the caller can prefix it with the event's
/// position (`events[3].`).
pub fn check_event(
    table: &str,
    sequence: u64,
    timestamp_ms: i64,
    before: Option<&Map<String, Value>>,
    after: Option<&Map<String, Value>>,
) -> Result<()> {
    validate_name("table", table)?;
    check_sequence(sequence)?;
    check_timestamp(timestamp_ms)?;
    for (what, image) in [("before", before), ("after", after)] {
        let Some(image) = image else { continue };
        if image.len() > MAX_EVENT_KEYS {
            return Err(refuse(format!(
                "{what} has {} keys; at most {MAX_EVENT_KEYS} are written per event",
                image.len()
            )));
        }
        for (key, value) in image {
            check_depth(what, Some(key), value, 2)?;
        }
    }
    Ok(())
}

/// The part of the rule for an event's `metadata`: nesting at most
/// [`MAX_JSON_DEPTH`] levels (anything else in it is written as it is). The
/// error starts with `metadata`.
pub fn check_metadata(metadata: &Value) -> Result<()> {
    check_depth("metadata", None, metadata, 1)
}

/// [`check_event`] and [`check_metadata`] of a [`ChangeEvent`] of table
/// `table`.
pub fn check_change_event(table: &str, event: &ChangeEvent) -> Result<()> {
    check_event(
        table,
        event.sequence,
        event.timestamp_ms,
        event.before.as_ref(),
        event.after.as_ref(),
    )?;
    event.metadata.as_ref().map_or(Ok(()), check_metadata)
}

/// Refuses a `sequence` above [`MAX_SEQUENCE`].
pub fn check_sequence(sequence: u64) -> Result<()> {
    if sequence > MAX_SEQUENCE {
        return Err(refuse(format!(
            "sequence {sequence} is above {MAX_SEQUENCE}, the largest the lake's long column holds"
        )));
    }
    Ok(())
}

/// Refuses a `timestamp` (ms) outside
/// [`MIN_TIMESTAMP_MS`]..=[`MAX_TIMESTAMP_MS`].
pub fn check_timestamp(timestamp_ms: i64) -> Result<()> {
    if !(MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&timestamp_ms) {
        return Err(refuse(format!(
            "timestamp {timestamp_ms} (ms) is outside {MIN_TIMESTAMP_MS}..={MAX_TIMESTAMP_MS}, the range whose hour partition values fit a 32-bit int"
        )));
    }
    Ok(())
}

/// Refuses `value` (at nesting level `level`, its container counting as
/// that level) when it nests deeper than [`MAX_JSON_DEPTH`]. Iterative, so
/// any depth is checked without recursion.
fn check_depth(what: &str, key: Option<&str>, value: &Value, level: usize) -> Result<()> {
    let mut stack: Vec<(&Value, usize)> = vec![(value, level)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if depth > MAX_JSON_DEPTH {
            let at = key.map(|k| format!(" under key {k:?}")).unwrap_or_default();
            return Err(refuse(format!(
                "{what} nests more than {MAX_JSON_DEPTH} levels of arrays and objects{at}"
            )));
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(())
}

/// How many columns the next commit to a table with metadata `base` (none:
/// a new table) may add: [`MAX_TABLE_COLUMNS`] and [`MAX_SCHEMA_FIELDS`]
/// permitting.
pub fn schema_room(base: Option<&TableMetadata>) -> usize {
    let fixed = base_fields().len();
    let Some(base) = base else {
        return MAX_TABLE_COLUMNS.saturating_sub(fixed);
    };
    let width = base
        .current_schema()
        .map(|s| s.fields.len())
        .unwrap_or(fixed);
    let total: usize = base.schemas.iter().map(|s| s.fields.len()).sum();
    // A new version holds the current fields and the added ones.
    let budget = MAX_SCHEMA_FIELDS.saturating_sub(total.saturating_add(width));
    MAX_TABLE_COLUMNS.saturating_sub(width).min(budget)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn check(ts: i64, seq: u64, after: Value) -> Result<()> {
        check_event("t", seq, ts, None, Some(&obj(after)))
    }

    #[test]
    fn limits_are_what_the_types_hold() {
        assert_eq!(MIN_TIMESTAMP_MS, -7_730_941_132_800_000);
        assert_eq!(MAX_TIMESTAMP_MS, 7_730_941_132_799_999);
        for ts in [MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS] {
            let micros = ts.checked_mul(1000).unwrap();
            assert_eq!(
                i64::from(super::super::stats::hour_of(micros)),
                micros.div_euclid(3_600_000_000)
            );
            assert_eq!(
                i64::from(super::super::stats::day_of(micros)),
                micros.div_euclid(86_400_000_000)
            );
        }
        assert_eq!(
            (MAX_TIMESTAMP_MS * 1000).div_euclid(3_600_000_000),
            i64::from(i32::MAX)
        );
        assert_eq!(
            (MIN_TIMESTAMP_MS * 1000).div_euclid(3_600_000_000),
            i64::from(i32::MIN)
        );
        assert_eq!(i64::try_from(MAX_SEQUENCE).unwrap(), i64::MAX);
    }

    #[test]
    fn each_limit_names_its_field() {
        check(MAX_TIMESTAMP_MS, MAX_SEQUENCE, json!({})).unwrap();
        check(MIN_TIMESTAMP_MS, 0, json!({})).unwrap();
        let msg = |r: Result<()>| {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidFormat);
            e.message().to_string()
        };
        let m = msg(check(9_300_000_000_000_000, 1, json!({})));
        assert!(m.starts_with("timestamp 9300000000000000"), "{m}");
        assert!(m.contains("7730941132799999"), "{m}");
        assert!(msg(check(MAX_TIMESTAMP_MS + 1, 1, json!({}))).starts_with("timestamp"));
        assert!(msg(check(MIN_TIMESTAMP_MS - 1, 1, json!({}))).starts_with("timestamp"));
        assert!(msg(check(i64::MIN, 1, json!({}))).starts_with("timestamp"));
        let m = msg(check(0, MAX_SEQUENCE + 1, json!({})));
        assert!(m.starts_with("sequence 9223372036854775808"), "{m}");
        let wide: Map<String, Value> = (0..=MAX_EVENT_KEYS)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        let m = msg(check(0, 1, Value::Object(wide.clone())));
        assert!(m.starts_with("after has 1001 keys"), "{m}");
        assert!(m.contains("1000"), "{m}");
        let m = msg(check_event("t", 1, 0, Some(&wide), None));
        assert!(m.starts_with("before has 1001 keys"), "{m}");
        let m = msg(check_event("a.b", 1, 0, None, None));
        assert!(m.starts_with("table name"), "{m}");
        let m = msg(check_event("_dolake_rejected", 1, 0, None, None));
        assert!(m.starts_with("table name"), "{m}");
    }

    fn nested(levels: usize) -> Value {
        let mut v = json!(1);
        for i in 0..levels {
            v = if i % 2 == 0 {
                json!([v])
            } else {
                json!({ "k": v })
            };
        }
        v
    }

    #[test]
    fn depth_counts_the_image_as_one_level() {
        // The image is level 1, so a value under it may nest 125 levels.
        check(0, 1, json!({ "deep": nested(MAX_JSON_DEPTH - 1) })).unwrap();
        let e = check(0, 1, json!({ "deep": nested(MAX_JSON_DEPTH) })).unwrap_err();
        assert!(e.message().starts_with("after nests more than 126"), "{e}");
        assert!(e.message().contains("\"deep\""), "{e}");
        check_metadata(&nested(MAX_JSON_DEPTH)).unwrap();
        let e = check_metadata(&nested(MAX_JSON_DEPTH + 1)).unwrap_err();
        assert!(e.message().starts_with("metadata nests"), "{e}");
        // Far deeper than any recursion could go: refused, not a crash.
        let mut v = json!(0);
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        let e = check_metadata(&v).unwrap_err();
        assert!(e.message().starts_with("metadata"), "{e}");
        // Dropping a 100,000-deep value recurses: take it apart by hand.
        while let Value::Array(mut a) = v {
            v = a.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn the_text_written_of_the_deepest_image_parses_back() {
        let after = obj(json!({ "deep": nested(MAX_JSON_DEPTH - 1) }));
        check_event("t", 1, 0, None, Some(&after)).unwrap();
        // The whole event, one level more than its image.
        let event = json!({"table": "t", "after": Value::Object(after)}).to_string();
        serde_json::from_str::<Value>(&event).unwrap();
    }
}
