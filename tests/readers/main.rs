//! Writes DoLake test tables for the reader tests (pyiceberg, DuckDB,
//! iceberg-rust), and the rows every reader must return.
//!
//! `cargo test --test readers` writes them to a temporary directory and checks
//! what the writer can check itself. With `DOLAKE_READERS_OUT=<dir>` the tables
//! stay in `<dir>` for `tests/readers/run.sh`:
//!
//! - `<dir>/warehouse/<namespace>/<table>/...`: the tables, written through
//!   the same keys the flush pipeline uses, with `file://` locations;
//! - `<dir>/expected/<table>.jsonl`: one JSON object per row, derived from the
//!   events sent (not from the writer), timestamps in microseconds, JSON-text
//!   columns as parsed JSON;
//! - `<dir>/tables.json`: per table its metadata file, snapshots with their
//!   cumulative row counts, and which columns hold JSON text;
//! - `<dir>/expected/random_doubles.bits.json`: for the `random_doubles`
//!   table, the exact bits (hex) every double column must read back as, per
//!   `_cdc_seq`;
//! - the dead-letter table `_dolake_rejected` (rows of events the lake could
//!   not write, with odd unicode and huge numbers in their JSON text), listed
//!   apart under `dead_letter_tables` in `tables.json` (its columns are not
//!   the changelog's), with its rows in `expected/_dolake_rejected.jsonl`.
//!
//! - the table `expired`: weeks of commits from three sources, a tag on an
//!   old snapshot, then snapshot expiry (with the deletes the flush does),
//!   more commits, and a second expiry: every row must still read back, and
//!   the metadata holds only the kept snapshots (`tables.json` lists them,
//!   with `expired_snapshot_ids`, `deleted_files`, `live_data_files`).
//!
//! - the table `maintained`: 40 small commits from two sources over two days,
//!   a column added midway, then DoLake's table maintenance (compaction with
//!   multipart uploads, manifest merging, snapshot expiry with its deletes,
//!   orphan cleanup) run through the same code and ports as in the Durable
//!   Object, 12 more commits and a second run. `tables.json` lists its live
//!   snapshots (replace snapshots hold their parent's rows), the live data
//!   files and `replace_snapshot_ids`.
//!
//! Every commit after the first is planned on the state read back from the
//! files written (version hint, metadata, manifest list), as after a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dolake::config::{Compression, DoLakeConfig, PartitionBy};
use dolake::flush::maintenance::{self, Policy};
use dolake::flush::ports::{Buffer, IndexStatus, Listed, ObjectStore, Part, Put, RowIndex};
use dolake::flush::procedure::{Env, Settings};
use dolake::flush::{BufferedBatch, LoadedBatch, TableRef};
use dolake::lake::compact::CompactPolicy;
use dolake::lake::current::{IndexChange, RowLoc};
use dolake::lake::MergePolicy;
use dolake::lake::{
    committed_watermarks, plan_commit, plan_expire, plan_rejected_commit, ChangeEvent, CommitIds,
    ExpirePolicy, Op, RejectedEvent, TablePaths, TableState, Watermark, WriteOptions,
    REJECTED_TABLE, WATERMARKS_PROPERTY,
};
use serde_json::{json, Map, Value};
use uuid::Uuid;

const NAMESPACE: &str = "cdc";
/// 2026-11-26T00:00:00Z in ms.
const DAY0: i64 = 1_795_651_200_000;
const HOUR: i64 = 3_600_000;
const LEVELS: [&str; 3] = ["INFO", "WARN", "ERROR"];

/// The column types the writer is expected to infer, per table.
#[derive(Clone, Copy, PartialEq)]
enum Ty {
    Long,
    Double,
    Str,
    Json,
    Bool,
}

struct TableSpec {
    name: &'static str,
    partition_by: PartitionBy,
    row_group_size: usize,
    target_file_size: usize,
    columns: Vec<(&'static str, Ty)>,
    commits: Vec<(Compression, Vec<ChangeEvent>)>,
}

fn obj(v: Value) -> Option<Map<String, Value>> {
    v.as_object().cloned()
}

#[allow(clippy::too_many_arguments)]
fn ev(
    source: &str,
    batch: u64,
    seq: u64,
    ts: i64,
    op: Op,
    before: Value,
    after: Value,
    metadata: Option<Value>,
) -> ChangeEvent {
    ChangeEvent {
        source_id: source.to_string(),
        batch_seq: batch,
        sequence: seq,
        timestamp_ms: ts,
        operation: op,
        row_id: format!("{source}:{seq}"),
        before: obj(before),
        after: obj(after),
        metadata,
    }
}

fn insert(source: &str, batch: u64, seq: u64, ts: i64, after: Value) -> ChangeEvent {
    ev(source, batch, seq, ts, Op::Insert, Value::Null, after, None)
}

/// Orders: day partitions, every kind of value, updates, deletes, a column
/// added later, type conflicts.
fn orders() -> TableSpec {
    let mut c1 = Vec::new();
    for i in 0..40_u64 {
        let source = if i % 2 == 0 { "shard-a" } else { "shard-b" };
        let amount = if i % 3 == 0 {
            json!(i * 10)
        } else {
            json!(i as f64 + 0.25)
        };
        c1.push(insert(
            source,
            1 + i / 10,
            100 + i,
            DAY0 + (i as i64 % 3) * 24 * HOUR + i as i64 * 1000,
            json!({
                "id": i,
                "customer": format!("customer-{i:03}"),
                "amount": amount,
                "paid": i % 4 == 0,
                "tags": ["t", i],
                "address": {"city": "Zürich", "zip": format!("{:04}", 8000 + i)},
                "note": if i == 7 { json!("naïve 🚀 emoji") } else { json!(null) },
                "Ünïcødé col": format!("ü-{i}"),
            }),
        ));
    }
    let mut c2 = Vec::new();
    for i in 0..5_u64 {
        c2.push(ev(
            "shard-a",
            10,
            200 + i,
            DAY0 + 3 * 24 * HOUR + i as i64,
            Op::Update,
            json!({"id": i, "customer": format!("customer-{i:03}"), "amount": 1}),
            json!({"id": i, "customer": format!("customer-{i:03}"), "amount": 15, "discount": 0.5}),
            Some(json!({"txn": 9000 + i, "user": "admin"})),
        ));
    }
    for i in 5..8_u64 {
        c2.push(ev(
            "shard-b",
            11,
            300 + i,
            DAY0 + 3 * 24 * HOUR + 500 + i as i64,
            Op::Delete,
            json!({"id": i, "customer": format!("customer-{i:03}")}),
            Value::Null,
            None,
        ));
    }
    let c3 = vec![
        insert(
            "shard-a",
            12,
            400,
            DAY0 + 4 * 24 * HOUR,
            json!({"id": "forty-two", "customer": 123}),
        ),
        insert(
            "shard-a",
            12,
            401,
            DAY0 + 4 * 24 * HOUR + 1,
            json!({"id": 4.5, "tags": "not json"}),
        ),
        insert(
            "shard-a",
            12,
            402,
            DAY0 + 4 * 24 * HOUR + 2,
            json!({"id": 50, "amount": 18_446_744_073_709_551_615_u64, "_cdc_op": "spoof", "paid": "yes"}),
        ),
        insert(
            "shard-a",
            12,
            403,
            DAY0 + 4 * 24 * HOUR + 3,
            json!({"id": 51, "amount": -0.0, "customer": null, "discount": 7}),
        ),
        // A key-only delete.
        ev(
            "shard-b",
            13,
            500,
            DAY0 + 4 * 24 * HOUR + 4,
            Op::Delete,
            Value::Null,
            Value::Null,
            None,
        ),
    ];
    TableSpec {
        name: "orders",
        partition_by: PartitionBy::Day,
        row_group_size: 16,
        target_file_size: 64 * 1024 * 1024,
        columns: vec![
            ("id", Ty::Long),
            ("customer", Ty::Str),
            ("amount", Ty::Double),
            ("paid", Ty::Bool),
            ("tags", Ty::Json),
            ("address", Ty::Json),
            ("note", Ty::Str),
            ("Ünïcødé col", Ty::Str),
            ("discount", Ty::Double),
        ],
        commits: vec![
            (Compression::Snappy, c1),
            (Compression::Zstd, c2),
            (Compression::Gzip, c3),
        ],
    }
}

/// Metrics: hour partitions, timestamps before 1970, negative numbers.
fn metrics() -> TableSpec {
    let c1: Vec<ChangeEvent> = (0..30_u64)
        .map(|i| {
            insert(
                "sensor-1",
                1,
                i + 1,
                DAY0 + (i as i64 % 5) * HOUR + i as i64,
                json!({"metric": format!("m{}", i % 4), "value": -(i as f64) / 8.0, "count": i as i64 - 15}),
            )
        })
        .collect();
    let c2 = vec![
        insert(
            "sensor-1",
            2,
            31,
            -1_000,
            json!({"metric": "old", "value": 1e300, "count": i64::MIN}),
        ),
        insert(
            "sensor-2",
            1,
            1,
            -HOUR - 1,
            json!({"metric": "older", "value": 5, "count": i64::MAX}),
        ),
    ];
    TableSpec {
        name: "metrics",
        partition_by: PartitionBy::Hour,
        row_group_size: 100_000,
        target_file_size: 64 * 1024 * 1024,
        columns: vec![
            ("metric", Ty::Str),
            ("value", Ty::Double),
            ("count", Ty::Long),
        ],
        commits: vec![(Compression::Zstd, c1), (Compression::None, c2)],
    }
}

/// Logs: unpartitioned, many rows, small files and row groups.
fn logs() -> TableSpec {
    let commit = |batch: u64, from: u64, n: u64| -> Vec<ChangeEvent> {
        (from..from + n)
            .map(|i| {
                insert(
                    "app",
                    batch,
                    i,
                    DAY0 + i as i64 * 37,
                    json!({
                        "level": LEVELS[(i % 3) as usize],
                        "message": format!("request {i} served in {} ms", i % 97),
                        "latency": (i % 97) as f64 / 3.0,
                    }),
                )
            })
            .collect()
    };
    TableSpec {
        name: "logs",
        partition_by: PartitionBy::None,
        row_group_size: 300,
        target_file_size: 20 * 1024,
        columns: vec![
            ("level", Ty::Str),
            ("message", Ty::Str),
            ("latency", Ty::Double),
        ],
        commits: vec![
            (Compression::Gzip, commit(1, 1, 3000)),
            (Compression::None, commit(2, 3001, 1500)),
            (Compression::Snappy, commit(3, 4501, 10)),
        ],
    }
}

/// splitmix64: a seeded generator, so the tables are the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Doubles of every kind, `n` in all: edge cases, powers of two and their
/// neighbours, random bit patterns (finite), random subnormals, random values
/// of everyday magnitudes, random 15- to 17-significant-digit decimals.
fn random_doubles(seed: u64, n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = vec![
        0.0,
        -0.0,
        5e-324,
        -5e-324,
        2.225073858507201e-308,
        2.2250738585072014e-308,
        0.30000000000000004,
        0.1,
        1.0 / 3.0,
        985.6906946328695,
        4.35,
        1e-7,
        1e21,
        1e23,
        9007199254740994.0,
        1.2345678901234568e20,
        1e308,
        f64::MAX,
        f64::MIN,
    ];
    for e in (-1074_i32..=1023).step_by(5) {
        let p = if e >= -1022 {
            f64::from_bits(((e + 1023) as u64) << 52)
        } else {
            f64::from_bits(1 << (e + 1074))
        };
        v.extend([p, p.next_up(), p.next_down()]);
    }
    let mut rng = SplitMix(seed);
    let mut i = 0_u64;
    while v.len() < n {
        let r = rng.next();
        let unit = (r >> 11) as f64 / (1_u64 << 53) as f64;
        let x = match i % 8 {
            0 | 1 => f64::from_bits(rng.next()),
            2 => f64::from_bits((r & ((1 << 52) - 1)) | (r & (1 << 63))),
            3 => unit * 1000.0,
            4 => (unit - 0.5) * 2e6,
            _ => {
                let digits = 15 + (i % 3) as u32;
                let m = 10_u64.pow(digits - 1) + r % (9 * 10_u64.pow(digits - 1));
                let exp = (rng.next() % 640) as i32 - 330;
                let sign = if r & 1 == 0 { "" } else { "-" };
                format!("{sign}{m}e{exp}").parse::<f64>().unwrap()
            }
        };
        i += 1;
        if x.is_finite() {
            v.push(x);
        }
    }
    v.truncate(n);
    v
}

/// `x` as JavaScript's `JSON.stringify` writes it: the shortest digits that
/// read back as `x`, positional from 1e-7 to 1e21, else `1.5e+300`; -0 is `0`.
fn js_number(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    if x < 0.0 {
        return format!("-{}", js_number(-x));
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap();
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    let n = exp.parse::<i32>().unwrap() + 1;
    if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat(-n as usize))
    } else {
        let m = if k == 1 {
            digits.clone()
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let sign = if n > 0 { "+" } else { "-" };
        format!("{m}e{sign}{}", (n - 1).abs())
    }
}

/// The double columns of the `random_doubles` table and how their values are
/// sent: as JavaScript's `JSON.stringify` writes them, and with 17 significant
/// digits.
type DoubleColumn = (&'static str, fn(f64) -> String);
const DOUBLE_COLUMNS: [DoubleColumn; 2] = [("js", js_number), ("e17", |x| format!("{x:.16e}"))];

/// The bits a double column must hold for the JSON number `text`: those of
/// the double it denotes, or none (null) when it is an integer literal that a
/// double cannot hold exactly, which the writer puts in `_cdc_overflow`.
fn expected_bits(text: &str) -> Option<u64> {
    let exact = text.parse::<f64>().unwrap().to_bits();
    if text.contains(['.', 'e', 'E']) {
        return Some(exact);
    }
    let Ok(n) = text.parse::<i128>() else {
        return Some(exact);
    };
    let integer = if text.starts_with('-') {
        n != 0 && n >= i128::from(i64::MIN)
    } else {
        n <= i128::from(u64::MAX)
    };
    (!integer || (n as f64) as i128 == n).then_some(exact)
}

/// Doubles: a few thousand random doubles of every kind (fixed seed), sent as
/// JSON text the way a shard writes them and parsed the way the flush parses
/// the stored events. Returns the table and, per `_cdc_seq`, the exact bits
/// (hex) of every double column, or null where the value is overflow.
fn doubles() -> (TableSpec, Value) {
    let values = random_doubles(0xd01a_4ef6_4b17, 3000);
    let mut bits = Map::new();
    let mut commits = Vec::new();
    for (n, chunk) in values.chunks(1500).enumerate() {
        let mut payload = Vec::new();
        for (j, &x) in chunk.iter().enumerate() {
            let seq = n * 1500 + j + 1;
            let mut cols = vec![format!("\"id\":{seq}")];
            let mut row = Map::new();
            for (name, f) in DOUBLE_COLUMNS {
                let text = f(x);
                // The text denotes the value (JavaScript's -0 is 0).
                let want = if x == 0.0 && name == "js" { 0.0 } else { x };
                assert_eq!(text.parse::<f64>().unwrap().to_bits(), want.to_bits());
                cols.push(format!("\"{name}\":{text}"));
                row.insert(
                    name.to_string(),
                    json!(expected_bits(&text).map(|b| format!("{b:016x}"))),
                );
            }
            bits.insert(seq.to_string(), Value::Object(row));
            payload.push(format!(
                r#"{{"sequence":{seq},"timestamp":{},"operation":"INSERT","table":"random_doubles","rowId":"d{seq}","after":{{{}}}}}"#,
                DAY0 + seq as i64,
                cols.join(",")
            ));
        }
        // The stored JSON of a batch, parsed as the flush parses it.
        let parsed = dolake::intake::decode_events(&format!("[{}]", payload.join(","))).unwrap();
        let events: Vec<ChangeEvent> = parsed
            .into_iter()
            .map(|e| dolake::flush::into_change_event("shard-f", 1 + n as u64, e))
            .collect();
        // The parse is exact: every double is the one sent (or an integer).
        for e in &events {
            let after = e.after.as_ref().unwrap();
            for (name, _) in DOUBLE_COLUMNS {
                let want = &bits[&e.sequence.to_string()][name];
                let got = after[name].as_f64().unwrap().to_bits();
                if let Some(want) = want.as_str() {
                    assert_eq!(format!("{got:016x}"), want, "{name} of {}", e.sequence);
                }
            }
        }
        let compression = [Compression::Zstd, Compression::Snappy][n % 2];
        commits.push((compression, events));
    }
    let spec = TableSpec {
        name: "random_doubles",
        partition_by: PartitionBy::None,
        row_group_size: 1000,
        target_file_size: 16 * 1024,
        columns: vec![("id", Ty::Long), ("js", Ty::Double), ("e17", Ty::Double)],
        commits,
    };
    (spec, Value::Object(bits))
}

/// The row every reader must return for `e`, derived from the event alone
/// and the expected column types.
fn expected_row(e: &ChangeEvent, columns: &[(&str, Ty)]) -> Value {
    let mut row = Map::new();
    row.insert("_cdc_op".into(), json!(e.operation.as_str()));
    row.insert("_cdc_seq".into(), json!(e.sequence));
    row.insert("_cdc_ts".into(), json!(e.timestamp_ms * 1000));
    row.insert("_cdc_source".into(), json!(e.source_id));
    row.insert("_cdc_row_id".into(), json!(e.row_id));
    let image = e.after.as_ref().or(e.before.as_ref());
    let before = if e.after.is_some() {
        e.before.clone()
    } else {
        None
    };
    row.insert(
        "_cdc_before".into(),
        before.map(Value::Object).unwrap_or(Value::Null),
    );
    row.insert(
        "_cdc_metadata".into(),
        e.metadata.clone().unwrap_or(Value::Null),
    );
    let mut overflow = Map::new();
    for (name, _) in columns {
        row.insert(name.to_string(), Value::Null);
    }
    for (k, v) in image.into_iter().flatten() {
        let ty = columns.iter().find(|(n, _)| n == k).map(|(_, t)| *t);
        let fits = match (ty, v) {
            (Some(_), Value::Null) => true,
            (Some(Ty::Long), Value::Number(n)) => n.is_i64(),
            // Integers must survive the conversion to double exactly.
            (Some(Ty::Double), Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => (i as f64) as i128 == i128::from(i),
                (None, Some(u)) => (u as f64) as u128 == u128::from(u),
                _ => true,
            },
            (Some(Ty::Str), Value::String(_)) => true,
            (Some(Ty::Json), Value::Array(_) | Value::Object(_)) => true,
            (Some(Ty::Bool), Value::Bool(_)) => true,
            _ => false,
        };
        if fits {
            let v = match (ty, v) {
                (Some(Ty::Double), Value::Number(n)) => json!(n.as_f64()),
                _ => v.clone(),
            };
            row.insert(k.clone(), v);
        } else {
            // A null under a name that is neither a column nor reserved carries
            // nothing; anything else that does not fit is overflow.
            let carries_nothing =
                v.is_null() && ty.is_none() && !k.starts_with("_cdc_") && !k.is_empty();
            if carries_nothing {
                continue;
            }
            overflow.insert(k.clone(), v.clone());
        }
    }
    row.insert(
        "_cdc_overflow".into(),
        if overflow.is_empty() {
            Value::Null
        } else {
            Value::Object(overflow)
        },
    );
    Value::Object(row)
}

fn write_table(out: &Path, spec: &TableSpec) -> Value {
    let warehouse = out.join("warehouse");
    let warehouse_uri = format!("file://{}", warehouse.display());
    let paths = TablePaths::new(NAMESPACE, spec.name).unwrap();
    let read = |key: &str| std::fs::read(warehouse.join(key)).unwrap();
    let mut expected = Vec::new();
    let mut snapshots = Vec::new();
    let mut total_rows = 0_u64;
    let mut metadata_path = PathBuf::new();
    let mut all_events = Vec::new();
    for (n, (compression, events)) in spec.commits.iter().enumerate() {
        // The state as the flush pipeline would read it back from storage.
        let state = if n == 0 {
            None
        } else {
            let hint = read(&paths.version_hint_key());
            let version = dolake::lake::parse_version_hint(&hint).unwrap();
            let meta = read(&paths.metadata_key(version));
            let metadata = dolake::lake::TableMetadata::from_json(&meta).unwrap();
            let list_key = paths.manifest_list_key(&metadata).unwrap().unwrap();
            Some(TableState::from_objects(&hint, &meta, Some(&read(&list_key))).unwrap())
        };
        let options = WriteOptions {
            warehouse_location: warehouse_uri.clone(),
            namespace: NAMESPACE.to_string(),
            table: spec.name.to_string(),
            compression: *compression,
            row_group_size: spec.row_group_size,
            partition_by: spec.partition_by,
            target_file_size: spec.target_file_size,
        };
        let seed = spec.name.len() as u8 * 16 + n as u8;
        let ids = CommitIds {
            snapshot_id: 7_000_000_000 + (seed as i64) * 1000 + n as i64,
            commit_uuid: Uuid::from_bytes([seed; 16]),
            table_uuid: Uuid::from_bytes([spec.name.len() as u8; 16]),
            now_ms: DAY0 + 10 * 24 * HOUR + n as i64 * 60_000,
        };
        let commit = plan_commit(events, state.as_ref(), &options, &ids).unwrap();
        for p in &commit.puts {
            let path = warehouse.join(&p.key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &p.bytes).unwrap();
        }
        total_rows += events.len() as u64;
        assert_eq!(commit.rows, events.len() as u64);
        snapshots.push(json!({
            "snapshot_id": commit.snapshot_id,
            "total_rows": total_rows,
            "data_files": commit.data_files,
            "overflow": commit.overflow,
            "compression": format!("{compression:?}").to_lowercase(),
        }));
        metadata_path = warehouse.join(&commit.metadata_key);
        all_events.extend(events.iter().cloned());
        for e in events {
            expected.push(expected_row(e, &spec.columns));
        }
    }
    // The watermarks read back cover every source's highest sequences.
    let meta =
        dolake::lake::TableMetadata::from_json(&std::fs::read(&metadata_path).unwrap()).unwrap();
    let mut want: BTreeMap<String, Watermark> = BTreeMap::new();
    for e in &all_events {
        let w = want.entry(e.source_id.clone()).or_default();
        w.batch_seq = w.batch_seq.max(e.batch_seq);
        w.event_seq = w.event_seq.max(e.sequence);
    }
    assert_eq!(committed_watermarks(&meta), want);
    // The inferred schema is the one the expected rows assume.
    let schema = meta.current_schema().unwrap();
    for (name, ty) in &spec.columns {
        let f = schema
            .field_by_name(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let want = match ty {
            Ty::Long => "long",
            Ty::Double => "double",
            Ty::Str | Ty::Json => "string",
            Ty::Bool => "boolean",
        };
        assert_eq!(
            serde_json::to_value(&f.field_type).unwrap(),
            json!(want),
            "{name}"
        );
        assert_eq!(
            f.doc.as_deref() == Some("dolake:json"),
            *ty == Ty::Json,
            "{name}"
        );
    }
    let exp_dir = out.join("expected");
    std::fs::create_dir_all(&exp_dir).unwrap();
    let mut text = String::new();
    for row in &expected {
        text.push_str(&row.to_string());
        text.push('\n');
    }
    std::fs::write(exp_dir.join(format!("{}.jsonl", spec.name)), text).unwrap();
    let json_columns: Vec<&str> = ["_cdc_before", "_cdc_metadata", "_cdc_overflow"]
        .into_iter()
        .chain(
            spec.columns
                .iter()
                .filter(|(_, t)| *t == Ty::Json)
                .map(|(n, _)| *n),
        )
        .collect();
    json!({
        "name": spec.name,
        "namespace": NAMESPACE,
        "table_dir": warehouse.join(paths.prefix()),
        "metadata_path": metadata_path,
        "metadata_location": format!("file://{}", metadata_path.display()),
        "partition_by": format!("{:?}", spec.partition_by).to_lowercase(),
        "snapshots": snapshots,
        "rows": expected.len(),
        "json_columns": json_columns,
        "expected": exp_dir.join(format!("{}.jsonl", spec.name)),
    })
}

/// Rows of the dead-letter table: what a flush writes for events the lake
/// cannot take. Their JSON text carries odd unicode (NUL, controls, combining
/// marks, U+E000 and above, U+FFFF, U+10FFFF, bidi overrides, escaped lone
/// surrogates) and numbers no double or long holds, written as given.
fn dead_letter_rows() -> Vec<Vec<RejectedEvent>> {
    let odd = "nul\u{0} bell\u{7} tab\t nl\n é e\u{301} 表 😀 \u{e000} \u{fffd} \u{ffff} \u{10ffff} rtl\u{202e}x";
    let big = "123456789012345678901234567890123456789";
    let first = vec![
        RejectedEvent {
            table: "orders".into(),
            source_id: "shard-a".into(),
            batch_seq: 41,
            sequence: 9_223_372_036_854_775_808,
            raw: format!(
                r#"{{"sequence":9223372036854775808,"timestamp":9300000000000000,"operation":"INSERT","table":"orders","rowId":"r1","after":{{"n":{big},"f":1e400,"neg":-{big},"tiny":1e-400,"z":-0}}}}"#
            ),
            reason: "sequence 9223372036854775808 is above 9223372036854775807, the largest the lake's long column holds".into(),
        },
        RejectedEvent {
            table: odd.into(),
            source_id: odd.into(),
            batch_seq: u64::MAX,
            sequence: u64::MAX,
            raw: format!(
                "{{\"after\":{{\"{odd}\":\"{odd}\",\"\\ud800\":\"\\udfff lone\",\"u\":18446744073709551616}}}}"
            ),
            reason: odd.into(),
        },
        RejectedEvent {
            table: String::new(),
            source_id: String::new(),
            batch_seq: 0,
            sequence: 0,
            raw: "not JSON at all: {\"".into(),
            reason: String::new(),
        },
    ];
    let mut second: Vec<RejectedEvent> = (0..40_u64)
        .map(|i| RejectedEvent {
            table: format!("t{}", i % 4),
            source_id: format!("shard-{}", i % 3),
            batch_seq: 100 + i / 10,
            sequence: 1_000 + i,
            raw: format!(
                r#"{{"sequence":{},"after":{{"i":{i},"k":"{}"}}}}"#,
                1_000 + i,
                "ü".repeat(i as usize)
            ),
            reason: format!("reason {i}"),
        })
        .collect();
    // One large document.
    second.push(RejectedEvent {
        table: "logs".into(),
        source_id: "shard-z".into(),
        batch_seq: 9,
        sequence: 2_000,
        raw: format!(r#"{{"after":{{"blob":"{}"}}}}"#, "x😀".repeat(300_000)),
        reason: "too large".into(),
    });
    vec![first, second]
}

/// Writes the dead-letter table (two commits, the second on the state read
/// back) and its expected rows; returns its entry for `tables.json`.
fn write_dead_letter_table(out: &Path) -> Value {
    let warehouse = out.join("warehouse");
    let paths = TablePaths::new(NAMESPACE, REJECTED_TABLE).unwrap();
    let read = |key: &str| std::fs::read(warehouse.join(key)).unwrap();
    let mut expected = Vec::new();
    let mut snapshots = Vec::new();
    let mut metadata_path = PathBuf::new();
    for (n, rows) in dead_letter_rows().into_iter().enumerate() {
        let state = (n > 0).then(|| {
            let hint = read(&paths.version_hint_key());
            let version = dolake::lake::parse_version_hint(&hint).unwrap();
            let meta = read(&paths.metadata_key(version));
            let metadata = dolake::lake::TableMetadata::from_json(&meta).unwrap();
            let list_key = paths.manifest_list_key(&metadata).unwrap().unwrap();
            TableState::from_objects(&hint, &meta, Some(&read(&list_key))).unwrap()
        });
        let options = WriteOptions {
            warehouse_location: format!("file://{}", warehouse.display()),
            namespace: NAMESPACE.to_string(),
            table: REJECTED_TABLE.to_string(),
            compression: [Compression::Zstd, Compression::Snappy][n],
            row_group_size: 16,
            partition_by: PartitionBy::Day,
            target_file_size: 256 * 1024,
        };
        let now_ms = DAY0 + 11 * 24 * HOUR + n as i64 * 60_000;
        let ids = CommitIds {
            snapshot_id: 8_000_000_000 + n as i64,
            commit_uuid: Uuid::from_bytes([0xd0 + n as u8; 16]),
            table_uuid: Uuid::from_bytes([0xdd; 16]),
            now_ms,
        };
        let marks = BTreeMap::from([(
            format!("dolake.buffer.epoch-{n}.row-id"),
            (n * 10 + 5).to_string(),
        )]);
        let commit = plan_rejected_commit(&rows, state.as_ref(), &options, &ids, &marks).unwrap();
        for p in &commit.puts {
            let path = warehouse.join(&p.key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &p.bytes).unwrap();
        }
        // Every mark so far is in the summary.
        let summary = &commit.state.metadata.current_snapshot().unwrap().summary;
        for m in 0..=n {
            assert_eq!(
                summary[&format!("dolake.buffer.epoch-{m}.row-id")],
                (m * 10 + 5).to_string()
            );
        }
        for r in &rows {
            expected.push(json!({
                "table_name": r.table,
                "source_id": r.source_id,
                "batch_seq": r.batch_seq,
                "sequence": r.sequence,
                "rejected_at": now_ms * 1000,
                "reason": r.reason,
                "raw": r.raw,
            }));
        }
        snapshots.push(json!({
            "snapshot_id": commit.snapshot_id,
            "total_rows": expected.len(),
            "data_files": commit.data_files,
            "compression": format!("{:?}", options.compression).to_lowercase(),
        }));
        metadata_path = warehouse.join(&commit.metadata_key);
    }
    let exp_dir = out.join("expected");
    std::fs::create_dir_all(&exp_dir).unwrap();
    let exp_path = exp_dir.join(format!("{REJECTED_TABLE}.jsonl"));
    let text: String = expected.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&exp_path, text).unwrap();
    json!({
        "name": REJECTED_TABLE,
        "namespace": NAMESPACE,
        "table_dir": warehouse.join(paths.prefix()),
        "metadata_path": metadata_path,
        "metadata_location": format!("file://{}", metadata_path.display()),
        "snapshots": snapshots,
        "rows": expected.len(),
        "expected": exp_path,
    })
}

/// The state of a table as the flush reads it back from storage.
fn load_state(warehouse: &Path, paths: &TablePaths) -> TableState {
    let read = |key: &str| std::fs::read(warehouse.join(key)).unwrap();
    let hint = read(&paths.version_hint_key());
    let version = dolake::lake::parse_version_hint(&hint).unwrap();
    let meta = read(&paths.metadata_key(version));
    let metadata = dolake::lake::TableMetadata::from_json(&meta).unwrap();
    let list_key = paths.manifest_list_key(&metadata).unwrap().unwrap();
    TableState::from_objects(&hint, &meta, Some(&read(&list_key))).unwrap()
}

/// The table `expired`: 60 commits 8 hours apart (20 days) from three
/// sources, a tag on the 5th snapshot, an expiry (7 days, at least 10
/// snapshots, 20 metadata-log entries) with its deletes performed, 3 more
/// commits, and a second expiry two days later. Returns its `tables.json`
/// entry.
fn write_expired_table(out: &Path) -> Value {
    const NAME: &str = "expired";
    const SOURCES: [&str; 3] = ["shard-x", "shard-y", "shard-z"];
    let columns = vec![("id", Ty::Long), ("source", Ty::Str), ("note", Ty::Str)];
    let warehouse = out.join("warehouse");
    let paths = TablePaths::new(NAMESPACE, NAME).unwrap();
    let options = WriteOptions {
        warehouse_location: format!("file://{}", warehouse.display()),
        namespace: NAMESPACE.to_string(),
        table: NAME.to_string(),
        compression: Compression::Zstd,
        row_group_size: 1000,
        partition_by: PartitionBy::Day,
        target_file_size: 64 * 1024 * 1024,
    };
    let policy = ExpirePolicy {
        max_snapshot_age_ms: 7 * 24 * HOUR,
        min_snapshots_to_keep: 10,
        max_metadata_log: 20,
    };
    let start = DAY0 - 30 * 24 * HOUR;
    let mut expected = Vec::new();
    let mut want: BTreeMap<String, Watermark> = BTreeMap::new();
    let mut seq = 0_u64;
    // Per snapshot id: rows in the table then, data files added.
    let mut per_snapshot: BTreeMap<i64, (usize, usize)> = BTreeMap::new();
    let mut live_data_files = 0;
    let mut expired_ids: Vec<i64> = Vec::new();
    let mut deleted: Vec<PathBuf> = Vec::new();
    let mut tagged = 0;
    let mut now = start;
    let mut commit = |n: u64, now: i64, tag: Option<i64>| -> i64 {
        let mut state = (n > 1).then(|| load_state(&warehouse, &paths));
        if let (Some(s), Some(id)) = (state.as_mut(), tag) {
            s.metadata.refs.insert(
                "audit".into(),
                dolake::lake::metadata::SnapshotRef {
                    snapshot_id: id,
                    kind: "tag".into(),
                    extra: BTreeMap::new(),
                },
            );
        }
        let mut events = Vec::new();
        for j in 0..4_u64 {
            let source = SOURCES[((n + j / 2) % 3) as usize];
            seq += 1;
            let w = want.entry(source.to_string()).or_default();
            w.batch_seq = n;
            w.event_seq = seq;
            events.push(insert(
                source,
                n,
                seq,
                now + j as i64,
                json!({"id": seq, "source": source, "note": format!("commit {n}")}),
            ));
        }
        let ids = CommitIds {
            snapshot_id: 9_000_000_000 + n as i64,
            commit_uuid: Uuid::from_u128(0xe0_0000 + u128::from(n)),
            table_uuid: Uuid::from_bytes([0xee; 16]),
            now_ms: now,
        };
        let c = plan_commit(&events, state.as_ref(), &options, &ids).unwrap();
        for p in &c.puts {
            let path = warehouse.join(&p.key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &p.bytes).unwrap();
        }
        for e in &events {
            expected.push(expected_row(e, &columns));
        }
        live_data_files += c.data_files;
        per_snapshot.insert(c.snapshot_id, (expected.len(), c.data_files));
        c.snapshot_id
    };
    let mut expire = |now: i64| -> dolake::lake::Expiry {
        let state = load_state(&warehouse, &paths);
        let e = plan_expire(&state, &paths, now, &policy).unwrap().unwrap();
        // What the flush does: the puts in order, then the deletes.
        for p in &e.commit.puts {
            std::fs::write(warehouse.join(&p.key), &p.bytes).unwrap();
        }
        for key in e
            .expired_manifest_lists
            .iter()
            .chain(&e.expired_metadata_files)
        {
            let path = warehouse.join(key);
            std::fs::remove_file(&path).unwrap();
            deleted.push(path);
        }
        expired_ids.extend(&e.expired_snapshot_ids);
        e
    };
    for n in 1..=60 {
        let id = commit(n, now, (n == 6).then_some(tagged));
        if n == 5 {
            tagged = id;
        }
        now += 8 * HOUR;
    }
    let first = expire(now - 7 * HOUR);
    // The last 21 commits are younger than 7 days; and the tagged one.
    assert_eq!(first.commit.state.metadata.snapshots.len(), 22);
    assert_eq!(first.expired_snapshot_ids.len(), 38);
    assert_eq!(first.expired_manifest_lists.len(), 38);
    for n in 61..=63 {
        commit(n, now, None);
        now += 8 * HOUR;
    }
    let second = expire(now - 8 * HOUR + 2 * 24 * HOUR);
    // Snapshots 48..63 are younger than 7 days now.
    assert_eq!(second.expired_snapshot_ids.len(), 8);
    let meta = second.commit.state.metadata;
    assert_eq!(meta.snapshots.len(), 17);
    assert!(meta.snapshots.iter().any(|s| s.snapshot_id == tagged));
    assert_eq!(meta.metadata_log.len(), 20);
    assert_eq!(committed_watermarks(&meta), want);
    assert!(meta.properties.contains_key(WATERMARKS_PROPERTY));
    assert!(meta
        .snapshots
        .iter()
        .all(|s| !s.summary.keys().any(|k| k.starts_with("dolake.watermark."))));
    let metadata_path = warehouse.join(&second.commit.metadata_key);
    let snapshots: Vec<Value> = meta
        .snapshots
        .iter()
        .map(|s| {
            let (rows, files) = per_snapshot[&s.snapshot_id];
            json!({
                "snapshot_id": s.snapshot_id,
                "total_rows": rows,
                "data_files": files,
                "compression": "zstd",
            })
        })
        .collect();
    let exp_dir = out.join("expected");
    std::fs::create_dir_all(&exp_dir).unwrap();
    let exp_path = exp_dir.join(format!("{NAME}.jsonl"));
    let text: String = expected.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&exp_path, text).unwrap();
    let watermarks: BTreeMap<&String, [u64; 2]> = want
        .iter()
        .map(|(s, w)| (s, [w.batch_seq, w.event_seq]))
        .collect();
    json!({
        "name": NAME,
        "namespace": NAMESPACE,
        "table_dir": warehouse.join(paths.prefix()),
        "metadata_path": metadata_path,
        "metadata_location": format!("file://{}", metadata_path.display()),
        "partition_by": "day",
        "snapshots": snapshots,
        "rows": expected.len(),
        "json_columns": ["_cdc_before", "_cdc_metadata", "_cdc_overflow"],
        "expected": exp_path,
        "expired_snapshot_ids": expired_ids,
        "tagged_snapshot_id": tagged,
        "deleted_files": deleted,
        "live_data_files": live_data_files,
        "max_metadata_log": policy.max_metadata_log,
        "watermarks": watermarks,
    })
}

/// Polls a future that never waits (the directory store below is
/// synchronous) to completion.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the directory store never waits"),
    }
}

/// A part of a multipart upload: its number and bytes.
type Upload = (u16, Vec<u8>);

/// The lake in a directory, as maintenance sees R2: keys relative to the
/// warehouse, upload times from a clock the test moves.
struct DirStore {
    root: PathBuf,
    clock: std::cell::Cell<i64>,
    uploaded: std::cell::RefCell<BTreeMap<String, i64>>,
    parts: std::cell::RefCell<BTreeMap<String, Vec<Upload>>>,
    multipart_completed: std::cell::Cell<u32>,
}

impl DirStore {
    fn write(&self, key: &str, bytes: &[u8]) {
        let path = self.root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        self.uploaded
            .borrow_mut()
            .insert(key.to_string(), self.clock.get());
    }
}

impl ObjectStore for DirStore {
    async fn get(&self, key: &str) -> dolake::error::Result<Option<Vec<u8>>> {
        Ok(std::fs::read(self.root.join(key)).ok())
    }
    async fn exists(&self, key: &str) -> dolake::error::Result<bool> {
        Ok(self.root.join(key).exists())
    }
    async fn put(&self, key: &str, bytes: Vec<u8>, if_absent: bool) -> dolake::error::Result<Put> {
        if if_absent && self.root.join(key).exists() {
            return Ok(Put::Exists);
        }
        self.write(key, &bytes);
        Ok(Put::Stored)
    }
    async fn delete(&self, key: &str) -> dolake::error::Result<()> {
        let _ = std::fs::remove_file(self.root.join(key));
        self.uploaded.borrow_mut().remove(key);
        Ok(())
    }
    async fn list(&self, prefix: &str) -> dolake::error::Result<Vec<Listed>> {
        Ok(self
            .uploaded
            .borrow()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, t)| Listed {
                key: k.clone(),
                uploaded_ms: *t,
            })
            .collect())
    }
    async fn multipart_start(&self, key: &str) -> dolake::error::Result<String> {
        self.parts.borrow_mut().insert(key.to_string(), Vec::new());
        Ok(format!("upload-{key}"))
    }
    async fn multipart_part(
        &self,
        key: &str,
        _upload: &str,
        number: u16,
        bytes: Vec<u8>,
    ) -> dolake::error::Result<Part> {
        self.parts
            .borrow_mut()
            .get_mut(key)
            .unwrap()
            .push((number, bytes));
        Ok(Part {
            number,
            etag: format!("{number}"),
        })
    }
    async fn multipart_complete(
        &self,
        key: &str,
        _upload: &str,
        parts: Vec<Part>,
    ) -> dolake::error::Result<()> {
        let stored = self.parts.borrow_mut().remove(key).unwrap();
        assert_eq!(
            parts.iter().map(|p| p.number).collect::<Vec<_>>(),
            stored.iter().map(|p| p.0).collect::<Vec<_>>()
        );
        let bytes: Vec<u8> = stored.into_iter().flat_map(|(_, b)| b).collect();
        self.write(key, &bytes);
        self.multipart_completed
            .set(self.multipart_completed.get() + 1);
        Ok(())
    }
}

/// Time and ids for maintenance commits: deterministic.
struct TestEnv {
    now: std::cell::Cell<i64>,
    n: std::cell::Cell<u64>,
}

impl Env for TestEnv {
    fn now(&self) -> i64 {
        self.now.get()
    }
    fn commit_ids(&self, now: i64) -> CommitIds {
        let n = self.n.get() + 1;
        self.n.set(n);
        CommitIds {
            snapshot_id: 7_000_000_000 + n as i64,
            commit_uuid: Uuid::from_u128(0x7700_0000 + u128::from(n)),
            table_uuid: Uuid::from_bytes([0x77; 16]),
            now_ms: now,
        }
    }
}

/// The table `maintained` (see the module docs). Returns its `tables.json`
/// entry.
fn write_maintained_table(out: &Path) -> Value {
    const NAME: &str = "maintained";
    const SOURCES: [&str; 2] = ["shard-m", "shard-n"];
    let columns = vec![
        ("id", Ty::Long),
        ("source", Ty::Str),
        ("note", Ty::Str),
        ("score", Ty::Double),
    ];
    let warehouse = out.join("warehouse");
    let location = format!("file://{}", warehouse.display());
    let paths = TablePaths::new(NAMESPACE, NAME).unwrap();
    let options = WriteOptions {
        warehouse_location: location.clone(),
        namespace: NAMESPACE.to_string(),
        table: NAME.to_string(),
        compression: Compression::Zstd,
        row_group_size: 7,
        partition_by: PartitionBy::Day,
        target_file_size: 64 * 1024 * 1024,
    };
    let config = DoLakeConfig::parse(Some(
        &json!({
            "warehouseLocation": location,
            "namespace": NAMESPACE,
            "parquetCompression": "zstd",
            "parquetRowGroupSize": 7,
        })
        .to_string(),
    ))
    .unwrap();
    let settings = Settings {
        config: &config,
        epoch: "readers",
        step_budget_bytes: 4 << 20,
        target_file_bytes: 16 << 20,
        time_budget_ms: i64::MAX / 4,
    };
    let policy = Policy {
        expire: ExpirePolicy {
            max_snapshot_age_ms: 0,
            min_snapshots_to_keep: 5,
            max_metadata_log: 20,
        },
        max_snapshots: 5,
        merge: MergePolicy {
            min_count_to_merge: 5,
            target_manifest_bytes: 1 << 20,
        },
        compact: Some(CompactPolicy {
            target_file_bytes: 1 << 20,
        }),
        orphan_min_age_ms: 60_000,
        // Small parts: every compacted file goes up in several.
        part_bytes: 2048,
        max_compactions: 16,
        scan_orphans: true,
    };
    let store = DirStore {
        root: warehouse.clone(),
        clock: std::cell::Cell::new(DAY0),
        uploaded: std::cell::RefCell::new(BTreeMap::new()),
        parts: std::cell::RefCell::new(BTreeMap::new()),
        multipart_completed: std::cell::Cell::new(0),
    };
    let env = TestEnv {
        now: std::cell::Cell::new(DAY0),
        n: std::cell::Cell::new(0),
    };
    let mut expected = Vec::new();
    // Rows in the table at each snapshot, counted from the events sent.
    let mut rows_at: BTreeMap<i64, usize> = BTreeMap::new();
    let mut seq = 0_u64;
    let mut commit = |n: u64, expected: &mut Vec<Value>| {
        let state = (n > 1).then(|| load_state(&warehouse, &paths));
        let now = env.now.get();
        let mut events = Vec::new();
        for j in 0..5_u64 {
            let source = SOURCES[((n + j) % 2) as usize];
            seq += 1;
            let mut after = json!({"id": seq, "source": source, "note": format!("commit {n}")});
            if n > 20 {
                after["score"] = json!(seq as f64 / 4.0);
            }
            if seq.is_multiple_of(7) {
                after["note"] = Value::Null;
            }
            // Two days: every third event is a day earlier.
            let ts = now - i64::from(seq.is_multiple_of(3)) * 24 * HOUR + j as i64;
            events.push(insert(source, n, seq, ts, after));
        }
        let ids = CommitIds {
            snapshot_id: 8_000_000_000 + n as i64,
            commit_uuid: Uuid::from_u128(0x8800_0000 + u128::from(n)),
            table_uuid: Uuid::from_bytes([0x88; 16]),
            now_ms: now,
        };
        let c = plan_commit(&events, state.as_ref(), &options, &ids).unwrap();
        for p in &c.puts {
            store.write(&p.key, &p.bytes);
        }
        for e in &events {
            expected.push(expected_row(e, &columns));
        }
        rows_at.insert(c.snapshot_id, expected.len());
        env.now.set(now + 30_000);
        store.clock.set(now + 30_000);
    };
    let orphan = format!(
        "{}/data/_cdc_ts_day=2026-11-25/crashed-00000.parquet",
        paths.prefix()
    );
    let maintain = |env: &TestEnv, store: &DirStore| {
        env.now.set(env.now.get() + HOUR);
        store.clock.set(env.now.get());
        let report = block_on(maintenance::run(
            store,
            &MapIndex::default(),
            env,
            &settings,
            &policy,
            &[TableRef::changelog(NAME)],
        ));
        let r = report.tables[NAME].clone();
        assert_eq!(r.error, None);
        assert!(!report.more);
        r
    };
    for n in 1..=40 {
        commit(n, &mut expected);
    }
    store.write(&orphan, b"left by a crashed commit");
    let first = maintain(&env, &store);
    assert!(first.files_compacted >= 40, "{first:?}");
    assert!(
        first.snapshots_expired > 0 && first.files_deleted > 0,
        "{first:?}"
    );
    assert_eq!(first.orphans_deleted, 1);
    assert!(!warehouse.join(&orphan).exists());
    for n in 41..=52 {
        commit(n, &mut expected);
    }
    let second = maintain(&env, &store);
    assert!(second.files_compacted >= 12, "{second:?}");
    assert!(store.multipart_completed.get() >= 2);

    let state = load_state(&warehouse, &paths);
    let meta = &state.metadata;
    assert!(meta.snapshots.len() <= 5);
    let mut replace_ids = Vec::new();
    let mut snapshots = Vec::new();
    let mut by_seq: Vec<&dolake::lake::metadata::Snapshot> = meta.snapshots.iter().collect();
    by_seq.sort_by_key(|s| s.sequence_number);
    for s in &by_seq {
        // A replace snapshot holds exactly its parent's rows.
        let rows = match s.summary.get("operation").map(String::as_str) {
            Some("replace") => {
                replace_ids.push(s.snapshot_id);
                let parent = s.parent_snapshot_id.unwrap();
                let rows = rows_at[&parent];
                rows_at.insert(s.snapshot_id, rows);
                rows
            }
            _ => rows_at[&s.snapshot_id],
        };
        snapshots.push(json!({
            "snapshot_id": s.snapshot_id,
            "total_rows": rows,
            "data_files": 0,
            "compression": "zstd",
        }));
    }
    assert!(!replace_ids.is_empty());
    assert_eq!(
        meta.current_snapshot_id,
        Some(by_seq.last().unwrap().snapshot_id)
    );
    let mut live_data_files = 0;
    for m in &state.manifests {
        let key = paths
            .key_for_location(&meta.location, &m.manifest_path)
            .unwrap();
        let bytes = std::fs::read(warehouse.join(key)).unwrap();
        live_data_files += dolake::lake::read_manifest(&bytes, m)
            .unwrap()
            .iter()
            .filter(|e| e.status.is_live())
            .count();
    }
    assert!(live_data_files <= 2 * 2, "{live_data_files} live files");
    let metadata_path = warehouse.join(paths.metadata_key(state.version));
    let exp_dir = out.join("expected");
    std::fs::create_dir_all(&exp_dir).unwrap();
    let exp_path = exp_dir.join(format!("{NAME}.jsonl"));
    let text: String = expected.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&exp_path, text).unwrap();
    json!({
        "name": NAME,
        "namespace": NAMESPACE,
        "table_dir": warehouse.join(paths.prefix()),
        "metadata_path": metadata_path,
        "metadata_location": format!("file://{}", metadata_path.display()),
        "partition_by": "day",
        "snapshots": snapshots,
        "rows": expected.len(),
        "json_columns": ["_cdc_before", "_cdc_metadata", "_cdc_overflow"],
        "expected": exp_path,
        "live_data_files": live_data_files,
        "replace_snapshot_ids": replace_ids,
        "commits": 52,
    })
}

/// The flush procedure's buffer, in memory.
#[derive(Default)]
struct VecBuffer {
    batches: std::cell::RefCell<Vec<LoadedBatch>>,
    next: std::cell::Cell<i64>,
}

impl VecBuffer {
    fn push(&self, source: &str, batch_seq: u64, events: Vec<dolake::protocol::CdcEvent>) {
        self.next.set(self.next.get() + 1);
        self.batches.borrow_mut().push(LoadedBatch {
            row_id: self.next.get(),
            source_id: source.to_string(),
            batch_seq,
            events,
        });
    }
}

impl Buffer for VecBuffer {
    fn list(&self, limit: u32) -> dolake::error::Result<Vec<BufferedBatch>> {
        Ok(self
            .batches
            .borrow()
            .iter()
            .take(limit as usize)
            .map(|b| BufferedBatch {
                row_id: b.row_id,
                size_bytes: 100 * b.events.len() as u64,
            })
            .collect())
    }
    fn load(&self, first: i64, last: i64) -> dolake::error::Result<Vec<LoadedBatch>> {
        Ok(self
            .batches
            .borrow()
            .iter()
            .filter(|b| (first..=last).contains(&b.row_id))
            .cloned()
            .collect())
    }
    fn delete_through(&self, last: i64) -> dolake::error::Result<()> {
        self.batches.borrow_mut().retain(|b| b.row_id > last);
        Ok(())
    }
    fn totals(&self) -> dolake::error::Result<dolake::intake::BufferTotals> {
        Ok(dolake::intake::BufferTotals::default())
    }
}

/// The row index as plain maps (what the Durable Object keeps in SQLite).
#[derive(Default)]
struct MapIndex {
    rows: std::cell::RefCell<BTreeMap<String, RowLoc>>,
    files: std::cell::RefCell<BTreeMap<String, roaring::RoaringBitmap>>,
    positions: std::cell::Cell<Option<i64>>,
    staged: std::cell::RefCell<Option<IndexChange>>,
}

impl RowIndex for MapIndex {
    fn status(&self, _table: &str) -> dolake::error::Result<IndexStatus> {
        Ok(IndexStatus {
            positions: self.positions.get(),
            staged: self.staged.borrow().as_ref().and_then(|c| c.positions_id),
        })
    }
    fn lookup(
        &self,
        _table: &str,
        keys: &[&str],
    ) -> dolake::error::Result<std::collections::HashMap<String, RowLoc>> {
        let rows = self.rows.borrow();
        Ok(keys
            .iter()
            .filter_map(|k| rows.get(*k).map(|l| (k.to_string(), l.clone())))
            .collect())
    }
    fn deleted(
        &self,
        _table: &str,
        files: &[&str],
    ) -> dolake::error::Result<BTreeMap<String, roaring::RoaringBitmap>> {
        let known = self.files.borrow();
        Ok(files
            .iter()
            .filter_map(|f| known.get(*f).map(|b| (f.to_string(), b.clone())))
            .collect())
    }
    fn stage(&self, _table: &str, change: &IndexChange) -> dolake::error::Result<()> {
        *self.staged.borrow_mut() = Some(change.clone());
        Ok(())
    }
    fn apply_staged(&self, _table: &str) -> dolake::error::Result<()> {
        let Some(change) = self.staged.borrow_mut().take() else {
            return Ok(());
        };
        self.files.borrow_mut().extend(change.files);
        let mut rows = self.rows.borrow_mut();
        for (key, loc) in change.rows {
            match loc {
                Some(l) => rows.insert(key, l),
                None => rows.remove(&key),
            };
        }
        self.positions.set(change.positions_id);
        Ok(())
    }
    fn discard_staged(&self, _table: &str) -> dolake::error::Result<()> {
        *self.staged.borrow_mut() = None;
        Ok(())
    }
    fn clear(&self, _table: &str) -> dolake::error::Result<()> {
        self.rows.borrow_mut().clear();
        self.files.borrow_mut().clear();
        self.positions.set(None);
        *self.staged.borrow_mut() = None;
        Ok(())
    }
}

/// The current-state table `cdc_current.accounts`, written by DoLake's flush
/// procedure from a random stream of INSERT / UPDATE / DELETE over 40 keys
/// (re-inserts after deletes, UPDATEs and DELETEs of keys never seen, many
/// changes of one key in one batch), 12 flushes: position delete files,
/// replaced as more rows of a data file go. `expected/current/accounts.jsonl`
/// holds the model: the last image of every live key.
fn write_current_state_table(out: &Path) -> Value {
    const NAME: &str = "accounts";
    let warehouse = out.join("warehouse");
    let location = format!("file://{}", warehouse.display());
    let config = DoLakeConfig::parse(Some(
        &json!({
            "warehouseLocation": location,
            "namespace": NAMESPACE,
            "tableKinds": "current-state",
        })
        .to_string(),
    ))
    .unwrap();
    let settings = Settings {
        config: &config,
        epoch: "readers",
        step_budget_bytes: 4 << 20,
        target_file_bytes: 16 << 20,
        time_budget_ms: i64::MAX / 4,
    };
    let store = DirStore {
        root: warehouse.clone(),
        clock: std::cell::Cell::new(DAY0),
        uploaded: Default::default(),
        parts: Default::default(),
        multipart_completed: Default::default(),
    };
    let env = TestEnv {
        now: std::cell::Cell::new(DAY0),
        n: std::cell::Cell::new(1_000),
    };
    let buffer = VecBuffer::default();
    let index = MapIndex::default();
    let mut model: BTreeMap<String, Value> = BTreeMap::new();
    let mut rng = 0x00C0_FFEE_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut seq = 0_u64;
    let mut counts = (0_u64, 0_u64);
    for flush in 0..12 {
        for b in 0..3_u64 {
            let mut events = Vec::new();
            for _ in 0..15 {
                seq += 1;
                let key = format!("acct-{:02}", next(40));
                let op =
                    ["INSERT", "INSERT", "UPDATE", "UPDATE", "UPDATE", "DELETE"][next(6) as usize];
                let image = json!({
                    "id": key, "n": seq as i64 * 1_000_003, "s": format!("name {} ü", next(10_000)),
                    "flag": next(2) == 0,
                });
                let mut e = json!({
                    "sequence": seq, "timestamp": DAY0 + seq as i64 * 1000,
                    "operation": op, "table": NAME, "rowId": key,
                });
                if op == "DELETE" {
                    e["before"] = model.get(&key).cloned().unwrap_or(json!({"id": key}));
                    model.remove(&key);
                } else {
                    e["after"] = image.clone();
                    model.insert(key.clone(), image);
                }
                events.push(serde_json::from_value(e).unwrap());
            }
            buffer.push(["shard-x", "shard-y"][b as usize % 2], seq, events);
        }
        env.now.set(env.now.get() + HOUR);
        let o = block_on(dolake::flush::procedure::run(
            &buffer, &store, &index, &env, &settings,
        ));
        assert!(o.error.is_none(), "flush {flush}: {:?}", o.error);
        counts.0 += o.current.rows_deleted;
        counts.1 += o.current.deletes_of_unknown + o.current.upserts_of_unknown;
    }
    assert!(counts.0 > 0 && counts.1 > 0, "{counts:?}");
    let ns = config.current_state_namespace.clone();
    let paths = TablePaths::new(&ns, NAME).unwrap();
    let state = load_state(&warehouse, &paths);
    let summary = &state.metadata.current_snapshot().unwrap().summary;
    let delete_files: u64 = summary["total-delete-files"].parse().unwrap();
    assert!(delete_files > 0, "{summary:?}");
    assert_eq!(
        state.metadata.properties["dolake.table-kind"],
        "current-state"
    );
    let expected_dir = out.join("expected").join("current");
    std::fs::create_dir_all(&expected_dir).unwrap();
    let expected_path = expected_dir.join(format!("{NAME}.jsonl"));
    let mut lines = String::new();
    for image in model.values() {
        lines.push_str(&image.to_string());
        lines.push('\n');
    }
    std::fs::write(&expected_path, lines).unwrap();
    let metadata_path = warehouse.join(paths.metadata_key(state.version));
    json!({
        "name": NAME,
        "namespace": ns,
        "metadata_location": format!("file://{}", metadata_path.display()),
        "expected": expected_path,
        "rows": model.len(),
        "delete_files": delete_files,
        "columns": ["id", "n", "s", "flag"],
    })
}

#[test]
fn write_reader_test_tables() {
    let (out, keep) = match std::env::var_os("DOLAKE_READERS_OUT") {
        Some(dir) => (PathBuf::from(dir), true),
        None => (
            std::env::temp_dir().join(format!("dolake-readers-{}", std::process::id())),
            false,
        ),
    };
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let out = out.canonicalize().unwrap();
    let (doubles, double_bits) = doubles();
    let mut tables: Vec<Value> = [orders(), metrics(), logs(), doubles]
        .iter()
        .map(|t| write_table(&out, t))
        .collect();
    let bits_path = out.join("expected").join("random_doubles.bits.json");
    std::fs::write(&bits_path, serde_json::to_vec(&double_bits).unwrap()).unwrap();
    tables[3]["double_bits"] = json!(bits_path);
    // Some integer literals sent for doubles went to the overflow column.
    let overflowed: u64 = tables[3]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["overflow"]["js"].as_u64().unwrap_or(0))
        .sum();
    let want_overflow = double_bits
        .as_object()
        .unwrap()
        .values()
        .filter(|r| r["js"].is_null())
        .count();
    assert_eq!(overflowed, want_overflow as u64);
    // The logs table was split into several files per commit.
    assert!(tables[2]["snapshots"][0]["data_files"].as_u64().unwrap() >= 3);
    // The conflicts of the orders table were counted.
    let overflow = &tables[0]["snapshots"][2]["overflow"];
    assert_eq!(overflow["id"], 2);
    assert_eq!(overflow["customer"], 1);
    assert_eq!(overflow["_cdc_op"], 1);
    tables.push(write_expired_table(&out));
    tables.push(write_maintained_table(&out));
    let dead_letter = write_dead_letter_table(&out);
    let current = write_current_state_table(&out);
    std::fs::write(
        out.join("tables.json"),
        serde_json::to_vec_pretty(&json!({
            "tables": tables,
            "dead_letter_tables": [dead_letter],
            "current_state_tables": [current],
        }))
        .unwrap(),
    )
    .unwrap();
    if !keep {
        std::fs::remove_dir_all(&out).unwrap();
    } else {
        eprintln!("reader test tables written to {}", out.display());
    }
}
