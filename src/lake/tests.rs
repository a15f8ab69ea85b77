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
    // The cumulative marks are one table property, not repeated per summary.
    assert!(!s.keys().any(|k| k.starts_with("dolake.watermark.")));
    assert_eq!(
        c2.state.metadata.properties["dolake.watermarks"],
        r#"{"shard-a":[2,5],"shard-b":[7,40]}"#
    );
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
        let record = plan.record.clone();
        intake.commit(T0, *plan);
        // The flush: the stored JSON parsed back, grouped by table, committed.
        loaded.push(crate::flush::LoadedBatch {
            row_id: b as i64 + 1,
            source_id: record.facts.source_id.clone(),
            batch_seq: record.facts.batch_seq,
            events: crate::intake::decode_events(&record.payload).unwrap(),
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

// ------------------------------------------ poison events (issue 9, item 2)

mod poison {
    use std::collections::BTreeMap;
    use std::sync::OnceLock;

    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, TimestampMicrosecondType};
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use super::{ids, options, put, read_parquet, T0};
    use crate::config::{Compression, PartitionBy};
    use crate::error::ErrorKind;
    use crate::lake::changelog::OVERFLOW;
    use crate::lake::limits::{
        check_change_event, MAX_COLUMN_NAME_BYTES, MAX_EVENT_KEYS, MAX_JSON_DEPTH,
        MAX_SCHEMA_FIELDS, MAX_SEQUENCE, MAX_TABLE_COLUMNS, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS,
    };
    use crate::lake::rejected::{DEAD_LETTER_KIND, TABLE_KIND_PROPERTY};
    use crate::lake::stats::decimal_bytes;
    use crate::lake::*;

    fn ev(seq: u64, ts: i64, after: Value) -> ChangeEvent {
        ChangeEvent {
            source_id: "shard-p".into(),
            batch_seq: 1,
            sequence: seq,
            timestamp_ms: ts,
            operation: Op::Insert,
            row_id: format!("r{seq}"),
            before: None,
            after: after.as_object().cloned(),
            metadata: None,
        }
    }

    fn wide(prefix: &str, n: usize) -> Value {
        Value::Object(
            (0..n)
                .map(|i| (format!("{prefix}{i}"), json!(i)))
                .collect::<Map<String, Value>>(),
        )
    }

    /// The state the flush would read back from the objects of `c`.
    fn reload(c: &Commit) -> TableState {
        let obj = |k| put(c, k)[0].bytes.clone();
        TableState::from_objects(
            &obj(ObjectKind::VersionHint),
            &obj(ObjectKind::Metadata),
            Some(&obj(ObjectKind::ManifestList)),
        )
        .unwrap()
    }

    fn strings(b: &arrow_array::RecordBatch, name: &str) -> Vec<Option<String>> {
        b.column_by_name(name)
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    /// Every input issue 9 names: refused by the rule, and failing the
    /// commit when it gets there anyway (or, for hours beyond an `i32`,
    /// silently written to a wrong partition before this rule).
    #[test]
    fn poison_events_are_refused_and_fail_planning() {
        let cases: Vec<(ChangeEvent, &str)> = vec![
            (ev(1, 9_300_000_000_000_000, json!({})), "timestamp"),
            (ev(1, i64::MIN, json!({})), "timestamp"),
            (ev(1, MAX_TIMESTAMP_MS + 1, json!({})), "timestamp"),
            (ev(1, MIN_TIMESTAMP_MS - 1, json!({})), "timestamp"),
            (ev(MAX_SEQUENCE + 1, T0, json!({})), "sequence"),
            (ev(u64::MAX, T0, json!({})), "sequence"),
        ];
        for partition_by in [PartitionBy::Hour, PartitionBy::Day, PartitionBy::None] {
            let o = options(partition_by, Compression::Snappy);
            for (e, field) in &cases {
                let refused = check_change_event("users", e).unwrap_err();
                assert_eq!(refused.kind(), ErrorKind::InvalidFormat);
                assert!(
                    refused.message().starts_with(field),
                    "{}",
                    refused.message()
                );
                let failed = plan_commit(std::slice::from_ref(e), None, &o, &ids(1)).unwrap_err();
                assert_eq!(failed.kind(), ErrorKind::InvalidFormat, "{field}");
            }
        }
        // The edges themselves are written, into the right hour partitions.
        let o = options(PartitionBy::Hour, Compression::Snappy);
        let edges = [
            ev(1, MIN_TIMESTAMP_MS, json!({"a": 1})),
            ev(MAX_SEQUENCE, MAX_TIMESTAMP_MS, json!({"a": 2})),
        ];
        for e in &edges {
            check_change_event("users", e).unwrap();
        }
        let c = plan_commit(&edges, None, &o, &ids(1)).unwrap();
        let list = read_manifest_list(&put(&c, ObjectKind::ManifestList)[0].bytes).unwrap();
        let p = &list[0].partitions.as_ref().unwrap()[0];
        assert_eq!(p.lower_bound, Some(i32::MIN.to_le_bytes().to_vec()));
        assert_eq!(p.upper_bound, Some(i32::MAX.to_le_bytes().to_vec()));
        let keys: Vec<&str> = put(&c, ObjectKind::Data)
            .iter()
            .map(|p| p.key.as_str())
            .collect();
        assert_eq!(keys.len(), 2);
        assert!(keys[0].contains("_cdc_ts_hour=-24"), "{keys:?}");
        assert!(keys[1].contains("_cdc_ts_hour=2"), "{keys:?}");
    }

    #[test]
    fn tables_stop_growing_at_the_column_cap_and_keep_the_rest_in_overflow() {
        let o = options(PartitionBy::None, Compression::Snappy);
        let first = ev(1, T0, wide("c", MAX_EVENT_KEYS));
        check_change_event("users", &first).unwrap();
        let c1 = plan_commit(&[first], None, &o, &ids(1)).unwrap();
        let schema = c1.state.metadata.current_schema().unwrap();
        assert_eq!(schema.fields.len(), MAX_TABLE_COLUMNS);
        let row_columns = MAX_TABLE_COLUMNS - 8;
        assert_eq!(c1.added_columns.len(), row_columns);
        // First appearance wins (keys of a JSON object are sorted).
        assert!(schema.field_by_name("c0").is_some());
        assert_eq!(c1.overflow_total(), (MAX_EVENT_KEYS - row_columns) as u64);
        // A later commit with only new keys: no new column, all overflow.
        let state = reload(&c1);
        let mut second = ev(2, T0, json!({"late": "x", "c5": 5}));
        second
            .after
            .as_mut()
            .unwrap()
            .insert("é".repeat(200), json!(true));
        let c2 = plan_commit(&[second], Some(&state), &o, &ids(2)).unwrap();
        assert!(c2.added_columns.is_empty());
        assert_eq!(c2.state.metadata.schemas.len(), 1);
        assert_eq!(c2.overflow.len(), 2);
        let (batches, _) = read_parquet(&put(&c2, ObjectKind::Data)[0].bytes);
        let overflow: Value =
            serde_json::from_str(strings(&batches[0], OVERFLOW)[0].as_deref().unwrap()).unwrap();
        assert_eq!(overflow, json!({"late": "x", "é".repeat(200): true}));
        let c5 = batches[0].column_by_name("c5").unwrap();
        assert_eq!(
            c5.as_primitive::<arrow_array::types::Int64Type>().value(0),
            5
        );
    }

    #[test]
    fn long_names_never_become_columns() {
        let o = options(PartitionBy::None, Compression::Snappy);
        let long = "k".repeat(MAX_COLUMN_NAME_BYTES + 1);
        let ok = "k".repeat(MAX_COLUMN_NAME_BYTES);
        let e = ev(1, T0, json!({ long.clone(): 1, ok.clone(): 2 }));
        let c = plan_commit(&[e], None, &o, &ids(1)).unwrap();
        let schema = c.state.metadata.current_schema().unwrap();
        assert!(schema.field_by_name(&ok).is_some());
        assert!(schema.field_by_name(&long).is_none());
        assert_eq!(c.overflow, BTreeMap::from([(long, 1)]));
    }

    #[test]
    fn schema_versions_stop_at_the_metadata_budget() {
        let o = options(PartitionBy::None, Compression::None);
        let mut c = plan_commit(&[ev(1, T0, wide("base", 900))], None, &o, &ids(1)).unwrap();
        let mut n = 1_u8;
        // Each commit adds one column, so each adds a schema of 900+ fields.
        loop {
            n += 1;
            let e = ev(u64::from(n), T0, json!({ format!("new{n}"): n }));
            let state = reload(&c);
            let total: usize = state.metadata.schemas.iter().map(|s| s.fields.len()).sum();
            c = plan_commit(&[e], Some(&state), &o, &ids(n)).unwrap();
            let after: usize = c
                .state
                .metadata
                .schemas
                .iter()
                .map(|s| s.fields.len())
                .sum();
            assert!(after <= MAX_SCHEMA_FIELDS, "{after}");
            if c.added_columns.is_empty() {
                assert_eq!(after, total, "no new schema");
                assert_eq!(c.overflow_total(), 1);
                break;
            }
            assert!(n < 20, "evolution never stopped");
        }
        assert_eq!(c.state.metadata.schemas.len(), 10);
    }

    // ------------------------------------------------ the property

    /// Numbers, strings and keys at the edges of every type.
    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            prop_oneof![
                Just(i64::MIN),
                Just(i64::MAX),
                Just(0),
                Just(-1),
                Just(1 << 53),
                Just((1 << 53) + 1),
                any::<i64>()
            ]
            .prop_map(|n| json!(n)),
            prop_oneof![Just(u64::MAX), Just(i64::MAX as u64 + 1), any::<u64>()]
                .prop_map(|n| json!(n)),
            prop_oneof![
                Just(f64::MAX),
                Just(f64::MIN),
                Just(f64::MIN_POSITIVE),
                Just(5e-324),
                Just(-0.0),
                Just(1e308),
                Just(0.1),
                any::<f64>().prop_filter("finite", |f| f.is_finite())
            ]
            .prop_map(|f| json!(f)),
            text(),
        ]
    }

    fn text() -> impl Strategy<Value = Value> {
        prop_oneof![
            ".{0,12}".prop_map(Value::String),
            "[\\u{0}-\\u{1f}\\u{7f}\\u{e000}-\\u{ffff}\\u{10000}-\\u{10ffff}]{0,8}"
                .prop_map(Value::String),
            (0..70_000_usize).prop_map(|n| Value::String("ü".repeat(n / 2))),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,3}",
            ".{0,6}",
            Just(String::new()),
            Just("_cdc_op".to_string()),
            Just("_cdc_overflow".to_string()),
            (250..300_usize).prop_map(|n| "n".repeat(n)),
            "[\\u{10000}-\\u{10ffff}\\u{300}]{1,4}",
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let nested = leaf().prop_recursive(4, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop_oneof![
            6 => nested,
            // As deep as the rule allows under an image key.
            1 => (leaf(), 100..MAX_JSON_DEPTH).prop_map(|(mut v, levels)| {
                for i in 0..levels {
                    v = if i % 2 == 0 { json!([v]) } else { json!({"d": v}) };
                }
                v
            }),
        ]
    }

    fn image() -> impl Strategy<Value = Map<String, Value>> {
        prop_oneof![
            8 => prop::collection::btree_map(key(), json_value(), 0..8)
                .prop_map(|m| m.into_iter().collect()),
            1 => (0..=MAX_EVENT_KEYS, prop::bool::ANY).prop_map(|(n, strings)| {
                (0..n)
                    .map(|i| {
                        let v = if strings { json!(format!("v{i}")) } else { json!(i) };
                        (format!("w{i}"), v)
                    })
                    .collect()
            }),
        ]
    }

    fn timestamp() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(MIN_TIMESTAMP_MS),
            Just(MAX_TIMESTAMP_MS),
            Just(0),
            Just(-1),
            Just(T0),
            MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS,
            any::<i64>(),
        ]
    }

    fn sequence() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0), Just(MAX_SEQUENCE), 0..=MAX_SEQUENCE, any::<u64>()]
    }

    fn change_event() -> impl Strategy<Value = ChangeEvent> {
        (
            (sequence(), timestamp(), any::<u64>(), 0..3_u8),
            (".{0,10}", ".{0,10}"),
            (
                prop::option::of(image()),
                prop::option::of(image()),
                prop::option::of(json_value()),
            ),
        )
            .prop_map(
                |(
                    (sequence, ts, batch_seq, op),
                    (source_id, row_id),
                    (before, after, metadata),
                )| {
                    let operation = [Op::Insert, Op::Update, Op::Delete][usize::from(op)];
                    ChangeEvent {
                        source_id,
                        batch_seq,
                        sequence,
                        timestamp_ms: ts,
                        operation,
                        row_id,
                        before,
                        after,
                        metadata,
                    }
                },
            )
    }

    /// A table DoLake wrote before: one column of every type, and
    /// `MAX_TABLE_COLUMNS - 20` columns in all, so new keys soon hit the cap.
    fn existing_tables() -> &'static [TableState; 2] {
        static TABLES: OnceLock<[TableState; 2]> = OnceLock::new();
        TABLES.get_or_init(|| {
            let o = options(PartitionBy::Day, Compression::Snappy);
            let typed = json!({"b": true, "i": 7, "f": 1.5, "s": "x", "o": {"k": 1}, "a": [1],
                "w1": 1, "w2": "two", "ü": 3});
            let small = plan_commit(&[ev(1, T0, typed.clone())], None, &o, &ids(1)).unwrap();
            let mut near_cap = typed.as_object().cloned().unwrap();
            near_cap.extend(
                wide("x", MAX_TABLE_COLUMNS - 20 - 8 - near_cap.len())
                    .as_object()
                    .cloned()
                    .unwrap(),
            );
            let wide =
                plan_commit(&[ev(1, T0, Value::Object(near_cap))], None, &o, &ids(1)).unwrap();
            [reload(&small), reload(&wide)]
        })
    }

    /// Plans `events` and reads the result back: rows, files, metadata.
    fn plans(
        events: &[ChangeEvent],
        state: Option<&TableState>,
        partition_by: PartitionBy,
    ) -> std::result::Result<(), TestCaseError> {
        let mut o = options(partition_by, Compression::Snappy);
        o.target_file_size = 256 * 1024;
        let marks = BTreeMap::from([("dolake.buffer.e.row-id".to_string(), "7".to_string())]);
        let c = plan_commit_with_marks(events, state, &o, &ids(9), &marks)
            .map_err(|e| TestCaseError::fail(format!("plan failed: {e}")))?;
        prop_assert_eq!(c.rows, events.len() as u64);
        let mut rows = 0;
        for d in put(&c, ObjectKind::Data) {
            let (batches, _) = read_parquet(&d.bytes);
            rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
        }
        prop_assert_eq!(rows, events.len());
        let schema = c.state.metadata.current_schema().unwrap();
        prop_assert!(
            schema.fields.len()
                <= MAX_TABLE_COLUMNS.max(
                    state
                        .and_then(|s| s.metadata.current_schema())
                        .map_or(0, |s| s.fields.len())
                )
        );
        let again = reload(&c);
        prop_assert_eq!(&again, &c.state);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn accepted_events_are_writable_alone_together_and_onto_tables(
            events in prop::collection::vec(change_event(), 1..6),
            partition in 0..3_usize,
        ) {
            let partition_by = [PartitionBy::None, PartitionBy::Day, PartitionBy::Hour][partition];
            let accepted: Vec<ChangeEvent> = events
                .iter()
                .filter(|e| check_change_event("users", e).is_ok())
                .cloned()
                .collect();
            for e in &events {
                let plan = plan_commit(
                    std::slice::from_ref(e),
                    None,
                    &options(partition_by, Compression::None),
                    &ids(1),
                );
                match check_change_event("users", e) {
                    Ok(()) => plans(std::slice::from_ref(e), None, partition_by)?,
                    // What the rule refuses for its number ranges, planning
                    // refuses too.
                    Err(why) if why.message().starts_with("timestamp")
                        || why.message().starts_with("sequence") =>
                    {
                        prop_assert!(plan.is_err());
                    }
                    Err(_) => {}
                }
            }
            if !accepted.is_empty() {
                plans(&accepted, None, partition_by)?;
                for state in existing_tables() {
                    plans(&accepted, Some(state), partition_by)?;
                }
            }
        }
    }

    // ------------------------------------------------ the dead-letter table

    fn dead_letters() -> Vec<RejectedEvent> {
        let odd = "nul\u{0} tab\t bell\u{7} é e\u{301} 表 😀 \u{e000} \u{fffd} \u{ffff} \u{10ffff} rtl\u{202e}";
        vec![
            RejectedEvent {
                table: "users".into(),
                source_id: "shard-a".into(),
                batch_seq: 7,
                sequence: 1,
                raw: r#"{"sequence":9300000000000000,"timestamp":9300000000000000,"n":123456789012345678901234567890,"f":1e400}"#.into(),
                reason: "timestamp 9300000000000000 (ms) is outside the writable range".into(),
            },
            RejectedEvent {
                table: odd.into(),
                source_id: odd.into(),
                batch_seq: u64::MAX,
                sequence: u64::MAX,
                raw: format!("{{\"after\":{{\"{odd}\":\"{odd}\",\"big\":18446744073709551616}}}}"),
                reason: odd.into(),
            },
            RejectedEvent {
                table: String::new(),
                source_id: String::new(),
                batch_seq: 0,
                sequence: i64::MAX as u64 + 1,
                raw: "not even JSON {".into(),
                reason: String::new(),
            },
            RejectedEvent {
                table: "logs".into(),
                source_id: "shard-b".into(),
                batch_seq: 1 << 63,
                sequence: 42,
                raw: format!("{{\"after\":{{\"blob\":\"{}\"}}}}", "x".repeat(3 << 20)),
                reason: "too wide".into(),
            },
        ]
    }

    fn dl_options() -> WriteOptions {
        let mut o = options(PartitionBy::Day, Compression::Zstd);
        o.table = REJECTED_TABLE.into();
        o
    }

    /// Every row of the dead-letter commit `c`, field by field.
    fn read_dead_letters(c: &Commit) -> Vec<(RejectedEvent, i64)> {
        let mut out = Vec::new();
        for d in put(c, ObjectKind::Data) {
            let (batches, meta) = read_parquet(&d.bytes);
            let schema = meta.file_metadata().schema_descr();
            let ids: Vec<i32> = schema
                .columns()
                .iter()
                .map(|c| c.self_type().get_basic_info().id())
                .collect();
            assert_eq!(ids, (1..=7).collect::<Vec<_>>());
            assert_eq!(
                schema.column(2).logical_type_ref(),
                Some(&::parquet::basic::LogicalType::decimal(0, 20))
            );
            assert_eq!(
                schema.column(4).logical_type_ref(),
                Some(&::parquet::basic::LogicalType::timestamp(
                    true,
                    ::parquet::basic::TimeUnit::MICROS
                ))
            );
            for b in &batches {
                let s = |n| strings(b, n);
                let dec = |n: &str| -> Vec<u64> {
                    b.column_by_name(n)
                        .unwrap()
                        .as_primitive::<Decimal128Type>()
                        .values()
                        .iter()
                        .map(|v| u64::try_from(*v).unwrap())
                        .collect()
                };
                let at = b
                    .column_by_name("rejected_at")
                    .unwrap()
                    .as_primitive::<TimestampMicrosecondType>()
                    .values()
                    .to_vec();
                let (table, source, reason, raw) =
                    (s("table_name"), s("source_id"), s("reason"), s("raw"));
                let (batch_seq, sequence) = (dec("batch_seq"), dec("sequence"));
                for i in 0..b.num_rows() {
                    out.push((
                        RejectedEvent {
                            table: table[i].clone().unwrap(),
                            source_id: source[i].clone().unwrap(),
                            batch_seq: batch_seq[i],
                            sequence: sequence[i],
                            raw: raw[i].clone().unwrap(),
                            reason: reason[i].clone().unwrap(),
                        },
                        at[i],
                    ));
                }
            }
        }
        out
    }

    /// `lower_bounds` and `upper_bounds` of the first entry of a manifest.
    fn manifest_bounds(manifest: &[u8]) -> BTreeMap<String, BTreeMap<i32, Vec<u8>>> {
        use apache_avro::types::Value as A;
        let entry = apache_avro::Reader::new(manifest)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let A::Record(entry) = entry else { panic!() };
        let A::Record(df) = &entry[4].1 else { panic!() };
        let mut out = BTreeMap::new();
        for name in ["lower_bounds", "upper_bounds"] {
            let (_, v) = df.iter().find(|(k, _)| k == name).unwrap();
            let A::Union(1, arr) = v else {
                panic!("{name}")
            };
            let A::Array(items) = &**arr else { panic!() };
            let map = items
                .iter()
                .map(|kv| {
                    let A::Record(kv) = kv else { panic!() };
                    let (A::Int(k), A::Bytes(b)) = (&kv[0].1, &kv[1].1) else {
                        panic!()
                    };
                    (*k, b.clone())
                })
                .collect();
            out.insert(name.to_string(), map);
        }
        out
    }

    #[test]
    fn dead_letters_are_written_whole_and_read_back_exactly() {
        let rows = dead_letters();
        let o = dl_options();
        let marks = BTreeMap::from([("dolake.buffer.ep1.row-id".to_string(), "12".to_string())]);
        let c1 = plan_rejected_commit(&rows, None, &o, &ids(1), &marks).unwrap();
        assert_eq!(c1.rows, 4);
        assert!(c1.overflow.is_empty() && c1.sources.is_empty());
        let got = read_dead_letters(&c1);
        let want: Vec<_> = rows
            .iter()
            .map(|r| (r.clone(), ids(1).now_ms * 1000))
            .collect();
        assert_eq!(got, want);
        for p in &c1.puts {
            assert!(p.key.starts_with("default/_dolake_rejected/"), "{}", p.key);
        }
        let m = &c1.state.metadata;
        assert_eq!(m.properties[TABLE_KIND_PROPERTY], DEAD_LETTER_KIND);
        assert_eq!(m.properties["write.parquet.compression-codec"], "zstd");
        assert!(!m.properties.contains_key("dolake.table-layout"));
        assert!(m.default_spec().unwrap().fields.is_empty(), "unpartitioned");
        let v: Value = serde_json::from_slice(&put(&c1, ObjectKind::Metadata)[0].bytes).unwrap();
        let fields = &v["schemas"][0]["fields"];
        let names: Vec<&str> = fields
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "table_name",
                "source_id",
                "batch_seq",
                "sequence",
                "rejected_at",
                "reason",
                "raw"
            ]
        );
        assert_eq!(fields[2]["type"], "decimal(20, 0)");
        assert_eq!(fields[4]["type"], "timestamptz");
        assert!(fields
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["required"] == true));
        assert_eq!(v["last-column-id"], 7);
        let summary = &m.current_snapshot().unwrap().summary;
        assert_eq!(summary["dolake.buffer.ep1.row-id"], "12");
        assert_eq!(summary["added-records"], "4");
        assert_eq!(summary["operation"], "append");

        // Manifest statistics: decimal bounds, no bounds for raw or reason.
        let manifest = &put(&c1, ObjectKind::Manifest)[0].bytes;
        let bounds = manifest_bounds(manifest);
        assert_eq!(bounds["lower_bounds"][&3], decimal_bytes(0), "batch_seq");
        assert_eq!(
            bounds["upper_bounds"][&3],
            decimal_bytes(i128::from(u64::MAX))
        );
        assert_eq!(bounds["lower_bounds"][&4], decimal_bytes(1), "sequence");
        // Strings with characters Java orders differently get no bounds.
        assert!(!bounds["lower_bounds"].contains_key(&1), "table_name");
        assert_eq!(
            bounds["upper_bounds"][&5],
            (ids(1).now_ms * 1000).to_le_bytes().to_vec(),
            "rejected_at"
        );
        assert!(!bounds["lower_bounds"].contains_key(&6), "reason");
        assert!(!bounds["upper_bounds"].contains_key(&7), "raw");

        // A second commit on the state read back: marks carried forward and
        // replaced, the schema kept, the table growing.
        let state = reload(&c1);
        let more = vec![RejectedEvent {
            table: "t".into(),
            source_id: "s".into(),
            batch_seq: 3,
            sequence: 4,
            raw: "{}".into(),
            reason: "r".into(),
        }];
        let marks2 = BTreeMap::from([("dolake.buffer.ep2.row-id".to_string(), "3".to_string())]);
        let c2 = plan_rejected_commit(&more, Some(&state), &o, &ids(2), &marks2).unwrap();
        let s2 = &c2.state.metadata.current_snapshot().unwrap().summary;
        assert_eq!(s2["dolake.buffer.ep1.row-id"], "12", "carried forward");
        assert_eq!(s2["dolake.buffer.ep2.row-id"], "3");
        assert_eq!(s2["total-records"], "5");
        assert_eq!(c2.state.metadata.schemas.len(), 1);
        assert_eq!(c2.state.metadata.snapshots.len(), 2);
        assert_eq!(
            c2.state
                .metadata
                .current_snapshot()
                .unwrap()
                .parent_snapshot_id,
            Some(ids(1).snapshot_id)
        );
        assert_eq!(
            read_manifest_list(&put(&c2, ObjectKind::ManifestList)[0].bytes)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(read_dead_letters(&c2)[0].0, more[0]);
        // Deterministic.
        let again = plan_rejected_commit(&more, Some(&state), &o, &ids(2), &marks2).unwrap();
        assert_eq!(again.puts, c2.puts);
    }

    #[test]
    fn many_and_large_dead_letters_split_into_bounded_files() {
        let rows: Vec<RejectedEvent> = (0..3000_u64)
            .map(|i| RejectedEvent {
                table: format!("t{}", i % 3),
                source_id: "s".into(),
                batch_seq: i / 100,
                sequence: i,
                raw: format!(
                    "{{\"i\":{i},\"pad\":\"{}\"}}",
                    "p".repeat((i % 7) as usize * 300)
                ),
                reason: "r".into(),
            })
            .collect();
        let mut o = dl_options();
        o.compression = Compression::None;
        o.target_file_size = 200_000;
        o.row_group_size = 500;
        let c = plan_rejected_commit(&rows, None, &o, &ids(1), &BTreeMap::new()).unwrap();
        assert!(c.data_files >= 3, "{} files", c.data_files);
        let got: Vec<RejectedEvent> = read_dead_letters(&c).into_iter().map(|(r, _)| r).collect();
        assert_eq!(got, rows);
        // One 20 MiB document: a file of its own, written whole.
        let big = RejectedEvent {
            raw: "[".to_string() + &"1,".repeat(10 << 20) + "1]",
            ..rows[0].clone()
        };
        let c = plan_rejected_commit(
            &[rows[1].clone(), big.clone(), rows[2].clone()],
            None,
            &o,
            &ids(1),
            &BTreeMap::new(),
        )
        .unwrap();
        let got = read_dead_letters(&c);
        assert_eq!(got[1].0, big);
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn dead_letter_commits_refuse_what_they_cannot_write() {
        let o = dl_options();
        let none = BTreeMap::new();
        let e = plan_rejected_commit(&[], None, &o, &ids(1), &none).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal);
        let bad_mark = BTreeMap::from([("x".to_string(), "1".to_string())]);
        let rows = dead_letters();
        assert!(plan_rejected_commit(&rows, None, &o, &ids(1), &bad_mark).is_err());
        // A changelog table is not a dead-letter table, and the other way
        // round.
        let changelog = plan_commit(
            &[ev(1, T0, json!({"a": 1}))],
            None,
            &options(PartitionBy::None, Compression::Snappy),
            &ids(1),
        )
        .unwrap();
        let e =
            plan_rejected_commit(&rows, Some(&changelog.state), &o, &ids(2), &none).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Lake);
        assert!(e.message().contains("dead-letter"), "{}", e.message());
        let dead = plan_rejected_commit(&rows, None, &o, &ids(1), &none).unwrap();
        let e = plan_commit(&[ev(1, T0, json!({}))], Some(&dead.state), &o, &ids(2)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Lake);
    }
}

/// A replace (maintenance) never changes rows: a plan whose live rows differ
/// from the parent's is refused, and so is a replace of a manifest that is
/// not in the current snapshot.
#[test]
fn replace_commits_refuse_to_change_rows() {
    use super::rewrite::{compaction_replace, merge_replace};
    let opts = options(PartitionBy::None, Compression::Snappy);
    let mut state: Option<TableState> = None;
    let mut manifests: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for n in 1..=3_u8 {
        let e = event(
            "s",
            u64::from(n),
            u64::from(n),
            Op::Insert,
            1_700_000_000_000,
            json!({"id": n}),
        );
        let c = plan_commit(&[e], state.as_ref(), &opts, &ids(n)).unwrap();
        for p in c.puts.iter().filter(|p| p.kind == ObjectKind::Manifest) {
            manifests.insert(p.key.clone(), p.bytes.clone());
        }
        state = Some(c.state);
    }
    let state = state.unwrap();
    let paths = TablePaths::new("default", "users").unwrap();
    let entries: BTreeMap<String, Vec<ManifestEntry>> = state
        .manifests
        .iter()
        .map(|m| {
            let key = paths
                .key_for_location(&state.metadata.location, &m.manifest_path)
                .unwrap();
            (
                m.manifest_path.clone(),
                read_manifest(&manifests[&key], m).unwrap(),
            )
        })
        .collect();
    let files: Vec<_> = entries.values().flatten().map(|e| e.file.clone()).collect();
    assert_eq!(files.len(), 3);
    // Merging all three manifests: allowed, the rows stay.
    let bins = vec![state.manifests.clone()];
    let merged = plan_replace(
        &state,
        &paths,
        &ids(9),
        merge_replace(&bins, &entries).unwrap(),
    )
    .unwrap();
    assert_eq!(merged.state.manifests.len(), 1);
    assert_eq!(merged.state.manifests[0].existing_rows_count, 3);
    let summary = &merged.state.metadata.current_snapshot().unwrap().summary;
    assert_eq!(summary["operation"], "replace");
    assert_eq!(summary["total-records"], "3");
    // A compaction whose output lost a row: refused.
    let removed = files.iter().map(|f| f.file_path.clone()).collect();
    let mut short = files[0].clone();
    short.file_path = "s3://lakehouse/warehouse/default/users/data/x.parquet".into();
    short.record_count = 2;
    let r = compaction_replace(9, 0, &removed, vec![short.clone()], &entries).unwrap();
    let e = plan_replace(&state, &paths, &ids(9), r).unwrap_err();
    assert!(
        e.message().contains("must not change the rows"),
        "{}",
        e.message()
    );
    // The same with every row: allowed.
    short.record_count = 3;
    let r = compaction_replace(9, 0, &removed, vec![short], &entries).unwrap();
    let c = plan_replace(&state, &paths, &ids(9), r).unwrap();
    assert_eq!(c.state.manifests.len(), 1);
    assert_eq!(c.state.manifests[0].deleted_files_count, 3);
    assert_eq!(c.state.manifests[0].added_files_count, 1);
    // A manifest that is not in the current snapshot: refused.
    let mut r = merge_replace(&bins, &entries).unwrap();
    r.replaced.insert("s3://elsewhere/m.avro".into());
    assert!(plan_replace(&state, &paths, &ids(9), r).is_err());
}
