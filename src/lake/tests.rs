//! Commit-level tests: golden metadata, round trips, snapshot chains,
//! watermarks, Parquet content, file splitting and errors.

use std::collections::BTreeMap;

use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use ::parquet::basic::Compression as Codec;
use bytes::Bytes;
use serde_json::{json, Value};
use uuid::Uuid;

use super::*;
use crate::config::{Compression, PartitionBy};
use crate::error::ErrorKind;

/// 2026-11-26T13:45:00Z in ms.
const T0: i64 = 1_795_700_700_000;

fn options(partition_by: PartitionBy, compression: Compression) -> WriteOptions {
    WriteOptions {
        warehouse_location: "s3://lakehouse/warehouse".into(),
        namespace: "default".into(),
        table: "users".into(),
        compression,
        row_group_size: 100_000,
        partition_by,
        target_file_size: commit::DEFAULT_TARGET_FILE_SIZE,
    }
}

fn ids(n: u8) -> CommitIds {
    CommitIds {
        snapshot_id: 1000 + i64::from(n),
        commit_uuid: Uuid::from_bytes([n; 16]),
        table_uuid: Uuid::from_bytes([0xab; 16]),
        now_ms: T0 + 60_000 * i64::from(n),
    }
}

fn event(source: &str, batch: u64, seq: u64, op: Op, ts: i64, row: Value) -> ChangeEvent {
    let row = row.as_object().cloned();
    ChangeEvent {
        source_id: source.into(),
        batch_seq: batch,
        sequence: seq,
        timestamp_ms: ts,
        operation: op,
        row_id: format!("row-{seq}"),
        before: if op == Op::Delete { row.clone() } else { None },
        after: if op == Op::Delete { None } else { row },
        metadata: None,
    }
}

fn first_events() -> Vec<ChangeEvent> {
    vec![
        event(
            "shard-a",
            1,
            1,
            Op::Insert,
            T0,
            json!({"id": 1, "name": "Ada", "score": 1.5}),
        ),
        event(
            "shard-a",
            1,
            2,
            Op::Insert,
            T0 + 1,
            json!({"id": 2, "name": "Bob", "score": 2}),
        ),
        // The next day.
        event(
            "shard-b",
            7,
            40,
            Op::Insert,
            T0 + 86_400_000,
            json!({"id": 3, "name": "Cy"}),
        ),
    ]
}

fn second_events() -> Vec<ChangeEvent> {
    let mut update = event(
        "shard-a",
        2,
        3,
        Op::Update,
        T0 + 120_000,
        json!({"id": 1, "name": "Ada L.", "email": "ada@example.com"}),
    );
    update.before = json!({"id": 1, "name": "Ada"}).as_object().cloned();
    update.metadata = Some(json!({"txn": 77}));
    vec![
        update,
        event("shard-a", 2, 4, Op::Delete, T0 + 121_000, json!({"id": 2})),
        event(
            "shard-a",
            2,
            5,
            Op::Insert,
            T0 + 122_000,
            json!({"id": "four"}),
        ),
    ]
}

fn two_commits(partition_by: PartitionBy) -> (Commit, Commit) {
    let o = options(partition_by, Compression::Snappy);
    let c1 = plan_commit(&first_events(), None, &o, &ids(1)).unwrap();
    let c2 = plan_commit(&second_events(), Some(&c1.state), &o, &ids(2)).unwrap();
    (c1, c2)
}

fn put(c: &Commit, kind: ObjectKind) -> Vec<&PutObject> {
    c.puts.iter().filter(|p| p.kind == kind).collect()
}

fn check_golden(name: &str, actual: &[u8]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/lake/testdata")
        .join(name);
    if std::env::var_os("DOLAKE_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read(&path).unwrap_or_else(|_| {
        panic!(
            "{} missing; run with DOLAKE_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{name} differs from the golden file; if the change is intended, rerun with DOLAKE_UPDATE_GOLDEN=1\n{}",
        String::from_utf8_lossy(actual)
    );
}

#[test]
fn metadata_matches_golden_files() {
    let (c1, c2) = two_commits(PartitionBy::Day);
    check_golden("v1.metadata.json", &put(&c1, ObjectKind::Metadata)[0].bytes);
    check_golden("v2.metadata.json", &put(&c2, ObjectKind::Metadata)[0].bytes);
}

#[test]
fn commits_are_deterministic() {
    let (a1, a2) = two_commits(PartitionBy::Hour);
    let (b1, b2) = two_commits(PartitionBy::Hour);
    assert_eq!(a1.puts, b1.puts);
    assert_eq!(a2.puts, b2.puts);
}

#[test]
fn metadata_round_trips_through_json() {
    let (_, c2) = two_commits(PartitionBy::Day);
    let m = &c2.state.metadata;
    let parsed = TableMetadata::from_json(&m.to_json()).unwrap();
    assert_eq!(&parsed, m);
    // Unknown keys survive a round trip.
    let mut v: Value = serde_json::from_slice(&m.to_json()).unwrap();
    v["statistics"] = json!([]);
    v["snapshots"][0]["first-row-id"] = json!(0);
    let parsed = TableMetadata::from_json(v.to_string().as_bytes()).unwrap();
    let again: Value = serde_json::from_slice(&parsed.to_json()).unwrap();
    assert_eq!(again, v);
}

#[test]
fn metadata_has_what_the_spec_requires() {
    let (c1, c2) = two_commits(PartitionBy::Day);
    let v: Value = serde_json::from_slice(&put(&c2, ObjectKind::Metadata)[0].bytes).unwrap();
    assert_eq!(v["format-version"], 2);
    assert_eq!(v["table-uuid"], Uuid::from_bytes([0xab; 16]).to_string());
    assert_eq!(v["location"], "s3://lakehouse/warehouse/default/users");
    assert_eq!(v["last-sequence-number"], 2);
    assert_eq!(v["last-updated-ms"], T0 + 120_000);
    assert_eq!(v["current-schema-id"], 1, "email was added");
    assert_eq!(v["schemas"].as_array().unwrap().len(), 2);
    assert_eq!(v["last-column-id"], 12);
    assert_eq!(v["default-spec-id"], 0);
    assert_eq!(v["last-partition-id"], 1000);
    assert_eq!(
        v["partition-specs"][0]["fields"][0],
        json!({"name": "_cdc_ts_day", "transform": "day", "source-id": 3, "field-id": 1000})
    );
    assert_eq!(v["sort-orders"], json!([{"order-id": 0, "fields": []}]));
    assert_eq!(v["default-sort-order-id"], 0);
    assert_eq!(v["current-snapshot-id"], 1002);
    assert_eq!(
        v["refs"]["main"],
        json!({"snapshot-id": 1002, "type": "branch"})
    );
    let snaps = v["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[1]["parent-snapshot-id"], 1001);
    assert!(snaps[0].get("parent-snapshot-id").is_none());
    assert_eq!(snaps[1]["sequence-number"], 2);
    assert_eq!(snaps[1]["schema-id"], 1);
    for s in snaps {
        for (k, val) in s["summary"].as_object().unwrap() {
            assert!(val.is_string(), "summary {k} must be a string");
        }
        assert_eq!(s["summary"]["operation"], "append");
    }
    assert_eq!(snaps[1]["summary"]["total-records"], "6");
    assert_eq!(snaps[1]["summary"]["added-records"], "3");
    assert_eq!(snaps[1]["summary"]["total-data-files"], "3");
    assert_eq!(snaps[1]["summary"][commit::SUMMARY_OVERFLOW], "1");
    assert_eq!(
        v["metadata-log"],
        json!([{"timestamp-ms": T0 + 60_000,
                "metadata-file": "s3://lakehouse/warehouse/default/users/metadata/v1.metadata.json"}])
    );
    assert_eq!(v["snapshot-log"].as_array().unwrap().len(), 2);
    assert_eq!(put(&c1, ObjectKind::VersionHint)[0].bytes, b"1");
    assert_eq!(put(&c2, ObjectKind::VersionHint)[0].bytes, b"2");
    // Every location is a full URI inside the table; every key its relative form.
    for p in &c2.puts {
        assert!(p.key.starts_with("default/users/"), "{}", p.key);
    }
    assert!(snaps[1]["manifest-list"]
        .as_str()
        .unwrap()
        .starts_with("s3://lakehouse/warehouse/default/users/metadata/snap-1002-1-"));
}

#[test]
fn previous_manifests_are_carried_forward_unchanged() {
    let (c1, c2) = two_commits(PartitionBy::Day);
    let l1 = read_manifest_list(&put(&c1, ObjectKind::ManifestList)[0].bytes).unwrap();
    let l2 = read_manifest_list(&put(&c2, ObjectKind::ManifestList)[0].bytes).unwrap();
    assert_eq!(l1.len(), 1);
    assert_eq!(l2.len(), 2);
    assert_eq!(l2[1], l1[0], "old entry unchanged");
    assert_eq!(l2, c2.state.manifests);
    let new = &l2[0];
    assert_eq!(new.added_snapshot_id, 1002);
    assert_eq!((new.sequence_number, new.min_sequence_number), (2, 2));
    assert_eq!(new.added_files_count, 1);
    assert_eq!(new.added_rows_count, 3);
    let manifest = put(&c2, ObjectKind::Manifest)[0];
    assert_eq!(new.manifest_length, manifest.bytes.len() as i64);
    assert!(new
        .manifest_path
        .ends_with(manifest.key.trim_start_matches("default/users")));
    // Two days in commit 1: partition summary bounds are those days.
    let days = &l1[0].partitions.as_ref().unwrap()[0];
    let d0 = stats::day_of(T0 * 1000);
    assert_eq!(days.lower_bound, Some(d0.to_le_bytes().to_vec()));
    assert_eq!(days.upper_bound, Some((d0 + 1).to_le_bytes().to_vec()));
    assert_eq!(l1[0].added_files_count, 2);
}

#[test]
fn state_reloads_from_the_objects_put() {
    let (c1, c2) = two_commits(PartitionBy::Day);
    let obj = |c: &Commit, k| put(c, k)[0].bytes.clone();
    let loaded = TableState::from_objects(
        &obj(&c2, ObjectKind::VersionHint),
        &obj(&c2, ObjectKind::Metadata),
        Some(&obj(&c2, ObjectKind::ManifestList)),
    )
    .unwrap();
    assert_eq!(loaded, c2.state);
    let paths = TablePaths::new("default", "users").unwrap();
    assert_eq!(
        paths.manifest_list_key(&loaded.metadata).unwrap().unwrap(),
        put(&c2, ObjectKind::ManifestList)[0].key
    );
    // Committing on the reloaded state equals committing on the cached one.
    let o = options(PartitionBy::Day, Compression::Snappy);
    let e = vec![event(
        "shard-a",
        3,
        6,
        Op::Insert,
        T0 + 200_000,
        json!({"id": 6}),
    )];
    let a = plan_commit(&e, Some(&loaded), &o, &ids(3)).unwrap();
    let b = plan_commit(&e, Some(&c2.state), &o, &ids(3)).unwrap();
    assert_eq!(a.puts, b.puts);
    // The manifest list of an older snapshot is refused.
    let stale = TableState {
        manifests: c1.state.manifests.clone(),
        ..c2.state.clone()
    };
    let err = plan_commit(&e, Some(&stale), &o, &ids(3)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Lake);
    assert!(err.message().contains("manifest list"), "{}", err.message());
}

#[test]
fn watermarks_are_recorded_per_commit_and_cumulatively() {
    let (c1, c2) = two_commits(PartitionBy::None);
    let w1 = committed_watermarks(&c1.state.metadata);
    assert_eq!(
        w1,
        BTreeMap::from([
            (
                "shard-a".to_string(),
                Watermark {
                    batch_seq: 1,
                    event_seq: 2
                }
            ),
            (
                "shard-b".to_string(),
                Watermark {
                    batch_seq: 7,
                    event_seq: 40
                }
            ),
        ])
    );
    let w2 = committed_watermarks(&c2.state.metadata);
    assert_eq!(
        w2["shard-a"],
        Watermark {
            batch_seq: 2,
            event_seq: 5
        }
    );
    assert_eq!(w2["shard-b"], w1["shard-b"], "kept from earlier commits");
    let s = &c2.state.metadata.current_snapshot().unwrap().summary;
    assert_eq!(s["dolake.source.shard-a.batch-seq"], "2");
    assert_eq!(s["dolake.source.shard-a.event-seq"], "5");
    assert!(
        !s.contains_key("dolake.source.shard-b.batch-seq"),
        "not in this commit"
    );
    assert_eq!(s["dolake.watermark.shard-b.event-seq"], "40");
    assert_eq!(c2.sources.len(), 1);
    assert!(committed_watermarks(&TableMetadata {
        current_snapshot_id: None,
        ..c1.state.metadata.clone()
    })
    .is_empty());
}

fn read_parquet(
    bytes: &[u8],
) -> (
    Vec<arrow_array::RecordBatch>,
    ::parquet::file::metadata::ParquetMetaData,
) {
    let b = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes.to_vec())).unwrap();
    let meta = b.metadata().as_ref().clone();
    let batches = b
        .build()
        .unwrap()
        .collect::<std::result::Result<Vec<_>, _>>()
        .unwrap();
    (batches, meta)
}

#[test]
fn parquet_files_carry_field_ids_types_and_values() {
    let (_, c2) = two_commits(PartitionBy::Day);
    let data = put(&c2, ObjectKind::Data);
    assert_eq!(data.len(), 1);
    assert!(data[0]
        .key
        .starts_with("default/users/data/_cdc_ts_day=2026-11-26/"));
    let (batches, meta) = read_parquet(&data[0].bytes);
    let schema = meta.file_metadata().schema_descr();
    let ids: Vec<i32> = schema
        .columns()
        .iter()
        .map(|c| c.self_type().get_basic_info().id())
        .collect();
    let expected: Vec<i32> = c2
        .state
        .metadata
        .current_schema()
        .unwrap()
        .fields
        .iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(ids, expected);
    let ts = schema.column(2);
    assert_eq!(ts.physical_type(), ::parquet::basic::Type::INT64);
    assert_eq!(
        ts.logical_type_ref(),
        Some(&::parquet::basic::LogicalType::timestamp(
            true,
            ::parquet::basic::TimeUnit::MICROS
        ))
    );
    let b = &batches[0];
    assert_eq!(b.num_rows(), 3);
    let col = |name: &str| b.column_by_name(name).unwrap().clone();
    let op = col("_cdc_op");
    let op = op
        .as_any()
        .downcast_ref::<arrow_array::StringArray>()
        .unwrap();
    assert_eq!(
        op.iter().collect::<Vec<_>>(),
        vec![Some("UPDATE"), Some("DELETE"), Some("INSERT")]
    );
    let id = col("id");
    let id = id
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .unwrap();
    assert_eq!(id.iter().collect::<Vec<_>>(), vec![Some(1), Some(2), None]);
    let overflow = col("_cdc_overflow");
    let overflow = overflow
        .as_any()
        .downcast_ref::<arrow_array::StringArray>()
        .unwrap();
    assert_eq!(overflow.value(2), r#"{"id":"four"}"#);
    assert_eq!(c2.overflow, BTreeMap::from([("id".to_string(), 1)]));
    let before = col("_cdc_before");
    let before = before
        .as_any()
        .downcast_ref::<arrow_array::StringArray>()
        .unwrap();
    assert_eq!(before.value(0), r#"{"id":1,"name":"Ada"}"#);
    let ts = col("_cdc_ts");
    let ts = ts
        .as_any()
        .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
        .unwrap();
    assert_eq!(ts.value(0), (T0 + 120_000) * 1000);
    assert_eq!(c2.added_columns, vec!["email".to_string()]);
}

#[test]
fn manifest_stats_match_the_data() {
    let (_, c2) = two_commits(PartitionBy::None);
    let manifest = &put(&c2, ObjectKind::Manifest)[0].bytes;
    let reader = apache_avro::Reader::new(&manifest[..]).unwrap();
    let entries: Vec<_> = reader.map(|v| v.unwrap()).collect();
    assert_eq!(entries.len(), 1);
    let apache_avro::types::Value::Record(entry) = &entries[0] else {
        panic!()
    };
    let apache_avro::types::Value::Record(df) = &entry[4].1 else {
        panic!()
    };
    let field = |n: &str| df.iter().find(|(k, _)| k == n).unwrap().1.clone();
    let map = |n: &str| -> BTreeMap<i32, apache_avro::types::Value> {
        let apache_avro::types::Value::Union(1, arr) = field(n) else {
            panic!("{n}")
        };
        let apache_avro::types::Value::Array(items) = *arr else {
            panic!()
        };
        items
            .into_iter()
            .map(|kv| {
                let apache_avro::types::Value::Record(kv) = kv else {
                    panic!()
                };
                let apache_avro::types::Value::Int(k) = kv[0].1 else {
                    panic!()
                };
                (k, kv[1].1.clone())
            })
            .collect()
    };
    use apache_avro::types::Value as A;
    assert_eq!(field("record_count"), A::Long(3));
    assert_eq!(
        field("file_size_in_bytes"),
        A::Long(put(&c2, ObjectKind::Data)[0].bytes.len() as i64)
    );
    let id_col = c2
        .state
        .metadata
        .current_schema()
        .unwrap()
        .field_by_name("id")
        .unwrap()
        .id;
    assert_eq!(map("value_counts")[&id_col], A::Long(3));
    assert_eq!(map("null_value_counts")[&id_col], A::Long(1));
    assert_eq!(
        map("lower_bounds")[&id_col],
        A::Bytes(1_i64.to_le_bytes().to_vec())
    );
    assert_eq!(
        map("upper_bounds")[&id_col],
        A::Bytes(2_i64.to_le_bytes().to_vec())
    );
    assert_eq!(map("lower_bounds")[&1], A::Bytes(b"DELETE".to_vec()));
    assert_eq!(map("upper_bounds")[&1], A::Bytes(b"UPDATE".to_vec()));
    assert_eq!(
        map("lower_bounds")[&3],
        A::Bytes(((T0 + 120_000) * 1000).to_le_bytes().to_vec())
    );
    assert!(map("column_sizes").len() >= 9);
    // Unpartitioned: an empty partition record.
    assert_eq!(field("partition"), A::Record(vec![]));
}

#[test]
fn large_inputs_split_into_bounded_files_and_row_groups() {
    let events: Vec<ChangeEvent> = (0..6000)
        .map(|i| {
            event(
                "s",
                1,
                i,
                Op::Insert,
                T0,
                json!({"id": i, "payload": format!("{i:08}-{}", "x".repeat(100))}),
            )
        })
        .collect();
    let mut o = options(PartitionBy::None, Compression::None);
    o.row_group_size = 500;
    o.target_file_size = 200_000;
    let c = plan_commit(&events, None, &o, &ids(1)).unwrap();
    let data = put(&c, ObjectKind::Data);
    assert!(data.len() >= 3, "{} files", data.len());
    let mut rows = 0;
    for d in &data {
        // A file is closed after the 1024-row chunk that reaches the target.
        assert!(
            d.bytes.len() < 200_000 + 1024 * 200,
            "{} bytes",
            d.bytes.len()
        );
        let (batches, meta) = read_parquet(&d.bytes);
        for rg in meta.row_groups() {
            assert!(rg.num_rows() <= 500);
        }
        rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
    }
    assert_eq!(rows, 6000);
    assert_eq!(c.rows, 6000);
    let names: std::collections::BTreeSet<_> = data.iter().map(|d| d.key.clone()).collect();
    assert_eq!(names.len(), data.len(), "unique names");
    let list = read_manifest_list(&put(&c, ObjectKind::ManifestList)[0].bytes).unwrap();
    assert_eq!(list[0].added_files_count as usize, data.len());
    assert_eq!(list[0].added_rows_count, 6000);
}

#[test]
fn every_compression_is_written() {
    for (c, codec) in [
        (Compression::None, Codec::UNCOMPRESSED),
        (Compression::Snappy, Codec::SNAPPY),
        (Compression::Gzip, Codec::GZIP(Default::default())),
        (Compression::Zstd, Codec::ZSTD(Default::default())),
    ] {
        let commit = plan_commit(
            &first_events(),
            None,
            &options(PartitionBy::None, c),
            &ids(1),
        )
        .unwrap();
        let (batches, meta) = read_parquet(&put(&commit, ObjectKind::Data)[0].bytes);
        assert_eq!(batches[0].num_rows(), 3);
        let got = meta.row_group(0).column(0).compression();
        assert_eq!(
            std::mem::discriminant(&got),
            std::mem::discriminant(&codec),
            "{c:?}"
        );
    }
}

#[test]
fn partitioning_can_change_between_commits() {
    let o = options(PartitionBy::Day, Compression::Snappy);
    let c1 = plan_commit(&first_events(), None, &o, &ids(1)).unwrap();
    let o2 = options(PartitionBy::Hour, Compression::Snappy);
    let c2 = plan_commit(&second_events(), Some(&c1.state), &o2, &ids(2)).unwrap();
    let m = &c2.state.metadata;
    assert_eq!(m.default_spec_id, 1);
    assert_eq!(m.partition_specs[1].fields[0].field_id, 1001);
    assert_eq!(m.last_partition_id, 1001);
    let o3 = options(PartitionBy::None, Compression::Snappy);
    let c3 = plan_commit(&first_events(), Some(&c2.state), &o3, &ids(3)).unwrap();
    assert_eq!(c3.state.metadata.default_spec_id, 2);
    assert!(c3.state.metadata.partition_specs[2].fields.is_empty());
    // Back to day: the first spec is reused.
    let c4 = plan_commit(&first_events(), Some(&c3.state), &o, &ids(4)).unwrap();
    assert_eq!(c4.state.metadata.default_spec_id, 0);
    assert_eq!(c4.state.metadata.partition_specs.len(), 3);
    let hour = put(&c2, ObjectKind::Data)[0].key.clone();
    assert!(hour.contains("/data/_cdc_ts_hour=2026-11-26-13/"), "{hour}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let o = options(PartitionBy::Day, Compression::Snappy);
    assert_eq!(
        plan_commit(&[], None, &o, &ids(1)).unwrap_err().kind(),
        ErrorKind::Internal
    );
    let c1 = plan_commit(&first_events(), None, &o, &ids(1)).unwrap();
    let e = plan_commit(&first_events(), Some(&c1.state), &o, &ids(1)).unwrap_err();
    assert!(e.message().contains("already used"), "{}", e.message());
    let mut bad = o.clone();
    bad.table = "../etc".into();
    let e = plan_commit(&first_events(), None, &bad, &ids(1)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidFormat);
    let mut huge = first_events();
    huge[0].sequence = u64::MAX;
    let e = plan_commit(&huge, None, &o, &ids(1)).unwrap_err();
    assert!(
        e.message().contains("does not fit a long"),
        "{}",
        e.message()
    );
    for text in ["", "{}", "[]", r#"{"format-version":1}"#] {
        assert_eq!(
            TableMetadata::from_json(text.as_bytes())
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidFormat
        );
    }
    let mut v: Value = serde_json::from_slice(&c1.state.metadata.to_json()).unwrap();
    v["current-schema-id"] = json!(9);
    let e = TableMetadata::from_json(v.to_string().as_bytes()).unwrap_err();
    assert!(e.message().contains("current-schema-id"), "{}", e.message());
    assert!(parse_version_hint(b" 12\n").unwrap() == 12);
    assert!(parse_version_hint(b"x").is_err());
}

// ---------------------------------------------------------------- doubles

/// splitmix64: a seeded generator, so the double tests are reproducible.
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

/// Doubles of every kind: edge cases, every power of two and its neighbours,
/// random bit patterns (finite), random subnormals, random values of everyday
/// magnitudes, and random 15- to 17-significant-digit decimals.
#[allow(clippy::excessive_precision)] // 2.2250738585072011e-308 on purpose
fn test_doubles(seed: u64) -> Vec<f64> {
    let mut v: Vec<f64> = vec![
        0.0,
        -0.0,
        5e-324,
        -5e-324,
        1e-323,
        2.225073858507201e-308,  // largest subnormal
        2.2250738585072014e-308, // smallest normal
        2.2250738585072011e-308,
        0.1,
        0.2,
        0.3,
        0.30000000000000004,
        1.0 / 3.0,
        2.0 / 3.0,
        985.6906946328695,
        4.35,
        0.1 + 0.7,
        1.0,
        -1.0,
        1.5,
        100.0,
        1e-7,
        1e-6,
        1e21,
        1e22,
        1e23,
        9007199254740992.0,
        9007199254740994.0,
        -9007199254740994.0,
        1.2345678901234568e20,
        9.223372036854776e18,
        -9.223372036854776e18,
        1.8446744073709552e19,
        1e308,
        f64::MAX,
        f64::MIN,
        f64::EPSILON,
        std::f64::consts::PI,
        std::f64::consts::E,
    ];
    // Every power of two, and the doubles just above and below it.
    for e in -1074_i32..=1023 {
        let p = if e >= -1022 {
            f64::from_bits(((e + 1023) as u64) << 52)
        } else {
            f64::from_bits(1 << (e + 1074))
        };
        for x in [p, p.next_up(), p.next_down()] {
            if x.is_finite() {
                v.push(x);
            }
        }
    }
    let mut rng = SplitMix(seed);
    // Random bit patterns, finite only.
    while v.len() < 9_500 {
        let x = f64::from_bits(rng.next());
        if x.is_finite() {
            v.push(x);
        }
    }
    for i in 0..6_000_u32 {
        let r = rng.next();
        let unit = (r >> 11) as f64 / (1_u64 << 53) as f64;
        let x = match i % 6 {
            // Subnormals.
            0 => f64::from_bits((r & ((1 << 52) - 1)) | (r & (1 << 63))),
            // Everyday magnitudes (985.6906946328695 is one of these).
            1 => unit * 1000.0,
            2 => unit,
            3 => (unit - 0.5) * 2e6,
            // Decimals of 17, 16 and 15 significant digits, any exponent.
            _ => {
                let digits = 15 + (i % 3);
                let m = 10_u64.pow(digits - 1) + r % (9 * 10_u64.pow(digits - 1));
                let exp = (rng.next() % 640) as i32 - 330;
                let sign = if r & 1 == 0 { "" } else { "-" };
                format!("{sign}{m}e{exp}").parse::<f64>().unwrap()
            }
        };
        if x.is_finite() {
            v.push(x);
        }
    }
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

/// The ways a double is written as JSON text: JavaScript's `JSON.stringify`,
/// Rust's `{}` (shortest digits, never an exponent) and 17 significant digits.
type DoubleFormat = (&'static str, fn(f64) -> String);
const DOUBLE_FORMATS: [DoubleFormat; 3] = [
    ("js", js_number),
    ("display", |x| format!("{x}")),
    ("e17", |x| format!("{x:.16e}")),
];

/// What a column must hold for the JSON number `text`: the double it denotes,
/// or nothing (`None`) when it is an integer literal that a double cannot
/// hold exactly, which goes to `_cdc_overflow` (see `changelog::fit`).
fn expected_cell(text: &str) -> Option<f64> {
    let exact = text.parse::<f64>().unwrap();
    if text.contains(['.', 'e', 'E']) {
        return Some(exact);
    }
    let n: i128 = match text.parse() {
        Ok(n) => n,
        Err(_) => return Some(exact), // beyond i128: parsed as a double
    };
    let negative = text.starts_with('-');
    let integer = if negative {
        n != 0 && n >= i128::from(i64::MIN)
    } else {
        n <= i128::from(u64::MAX)
    };
    if integer && (n as f64) as i128 != n {
        None
    } else {
        Some(exact)
    }
}

#[test]
fn doubles_reach_parquet_bit_exact() {
    let values = test_doubles(0x0d0_1a4e);
    // Sanity of the formats: each text reads back (with Rust's correct
    // parser) as the value, but JavaScript's -0, which is 0.
    for &x in &values {
        for (name, f) in DOUBLE_FORMATS {
            let text = f(x);
            let back = text.parse::<f64>().unwrap();
            let want = if name == "js" && x == 0.0 { 0.0 } else { x };
            assert_eq!(back.to_bits(), want.to_bits(), "{name} {text}");
        }
    }

    // The wire: cdc_batch messages as a shard sends them, the numbers written
    // as text, admitted by the intake, which stores the events' JSON.
    let mut intake = crate::intake::Intake::new(
        crate::config::DoLakeConfig::parse(Some("{}")).unwrap(),
        vec![],
        crate::intake::BufferTotals::default(),
    );
    let mut loaded = Vec::new();
    for (b, chunk) in values.chunks(1000).enumerate() {
        let mut events = Vec::new();
        for (j, &x) in chunk.iter().enumerate() {
            let seq = b * 1000 + j;
            let cols: Vec<String> = DOUBLE_FORMATS
                .iter()
                .map(|(name, f)| format!("\"{name}\":{}", f(x)))
                .collect();
            events.push(format!(
                r#"{{"sequence":{seq},"timestamp":{T0},"operation":"INSERT","table":"doubles","rowId":"r{seq}","after":{{"id":{seq},{}}}}}"#,
                cols.join(",")
            ));
        }
        let text = format!(
            r#"{{"type":"cdc_batch","sourceDoId":"shard-f","sequenceNumber":{b},"events":[{}]}}"#,
            events.join(",")
        );
        let crate::protocol::ClientMessage::CdcBatch(batch) =
            crate::protocol::decode_client_message(&text)
                .unwrap_or_else(|e| panic!("batch {b} refused: {e:?}"))
        else {
            panic!("not a batch")
        };
        let crate::intake::Admission::Store(plan) = intake.admit(T0, batch) else {
            panic!("batch {b} not stored")
        };
        let record = plan.record.clone().unwrap();
        intake.commit(T0, *plan);
        // The flush: the stored JSON parsed back, grouped by table, committed.
        loaded.push(crate::flush::LoadedBatch {
            row_id: b as i64 + 1,
            source_id: record.source_id.clone(),
            batch_seq: record.batch_seq,
            events: crate::flush::parse_payload(&record.payload).unwrap(),
        });
    }
    let work = crate::flush::plan_step(loaded, |_| None);
    let events = &work["doubles"].events;
    assert_eq!(events.len(), values.len());
    let c = plan_commit(
        events,
        None,
        &options(PartitionBy::None, Compression::Zstd),
        &ids(1),
    )
    .unwrap();
    let schema = c.state.metadata.current_schema().unwrap();
    for (name, _) in DOUBLE_FORMATS {
        assert_eq!(
            schema.field_by_name(name).unwrap().field_type,
            metadata::FieldType::Double,
            "{name}"
        );
    }

    // Read every file back and compare every value's bits.
    let mut got: BTreeMap<usize, (Vec<Option<f64>>, Option<String>)> = BTreeMap::new();
    for d in put(&c, ObjectKind::Data) {
        let (batches, _) = read_parquet(&d.bytes);
        for b in &batches {
            let seq = b.column_by_name("_cdc_seq").unwrap();
            let seq = seq
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap();
            let overflow = b.column_by_name("_cdc_overflow").unwrap();
            let overflow = overflow
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            let cols: Vec<arrow_array::Float64Array> = DOUBLE_FORMATS
                .iter()
                .map(|(name, _)| {
                    b.column_by_name(name)
                        .unwrap()
                        .as_any()
                        .downcast_ref::<arrow_array::Float64Array>()
                        .unwrap()
                        .clone()
                })
                .collect();
            for r in 0..b.num_rows() {
                let cells = cols
                    .iter()
                    .map(|a| (!arrow_array::Array::is_null(a, r)).then(|| a.value(r)))
                    .collect();
                let o = (!arrow_array::Array::is_null(overflow, r))
                    .then(|| overflow.value(r).to_string());
                got.insert(seq.value(r) as usize, (cells, o));
            }
        }
    }
    assert_eq!(got.len(), values.len());
    let mut wrong = Vec::new();
    let mut overflowed = 0;
    for (seq, &x) in values.iter().enumerate() {
        let (cells, overflow) = &got[&seq];
        let mut want_overflow = serde_json::Map::new();
        for (i, (name, f)) in DOUBLE_FORMATS.iter().enumerate() {
            let text = f(x);
            match expected_cell(&text) {
                Some(want) => {
                    if cells[i].map(f64::to_bits) != Some(want.to_bits()) {
                        wrong.push(format!(
                            "{name}: sent {text}, stored {:?} ({:?}), want {want:?} ({:#018x})",
                            cells[i],
                            cells[i].map(|c| format!("{:#018x}", c.to_bits())),
                            want.to_bits()
                        ));
                    }
                }
                None => {
                    overflowed += 1;
                    assert_eq!(cells[i], None, "{name} {text}");
                    want_overflow.insert(name.to_string(), serde_json::from_str(&text).unwrap());
                }
            }
        }
        let want_overflow =
            (!want_overflow.is_empty()).then(|| Value::Object(want_overflow).to_string());
        assert_eq!(overflow, &want_overflow, "seq {seq}: {x:?}");
    }
    let total = values.len() * DOUBLE_FORMATS.len();
    assert!(
        wrong.is_empty(),
        "{} of {total} doubles were changed on the way to Parquet, e.g.:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
    // The integer literals a double cannot hold are few (and kept exactly).
    assert!(overflowed < total / 100, "{overflowed} overflowed");
}
