//! Maintenance against the in-memory fakes: every kind (compaction, merging,
//! expiry with deletes, orphan cleanup) keeps every row exactly once, keeps
//! every live snapshot readable, bounds the table, and survives a crash at
//! every operation.

use std::collections::BTreeSet;

use serde_json::json;

use super::crash_tests::{event, World, NS};
use super::maintenance::{run, Policy, Report};
use super::memory::block_on;
use super::procedure::Settings;
use super::TableRef;
use crate::lake::compact::CompactPolicy;
use crate::lake::{
    read_manifest, read_manifest_list, ExpirePolicy, MergePolicy, TableMetadata, TablePaths,
};

const T0: i64 = 1_700_000_000_000;
const TABLES: [&str; 2] = ["users", "orders"];

fn policy() -> Policy {
    Policy {
        expire: ExpirePolicy {
            max_snapshot_age_ms: 10 * 60_000,
            min_snapshots_to_keep: 3,
            max_metadata_log: 5,
        },
        max_snapshots: 8,
        merge: MergePolicy {
            min_count_to_merge: 4,
            target_manifest_bytes: 1 << 20,
        },
        compact: Some(CompactPolicy {
            target_file_bytes: 1 << 20,
        }),
        orphan_min_age_ms: 60_000,
        // Tiny parts: compaction uploads every output in several.
        part_bytes: 256,
        max_compactions: 4,
        scan_orphans: true,
    }
}

/// A world whose flushes write tiny row groups (so that compaction streams
/// several and takes multipart parts).
fn world() -> World {
    let mut w = World::new();
    w.config = crate::config::DoLakeConfig::parse(Some(
        r#"{"warehouseLocation":"s3://bucket/lake","parquetRowGroupSize":2}"#,
    ))
    .unwrap();
    w
}

/// `commits` flushes 30 s apart, each a batch of 3 events into both tables;
/// from the 8th on, rows carry a new column (schema evolution); events span
/// two days (two partitions); some values are null.
fn history(w: &World, commits: u64) {
    let first = (w.rows("users").len() + w.rows("orders").len() + 3 * w.buffer.len()) as u64;
    for c in 0..commits {
        let events = (0..3)
            .map(|i| {
                let seq = first + c * 3 + i + 1;
                let table = TABLES[(seq % 2) as usize];
                let day = i64::from(seq.is_multiple_of(3)) * 86_400_000;
                let mut after = json!({"id": seq, "name": format!("n{seq}")});
                if c >= 7 || first > 0 {
                    after["score"] = json!(seq as f64 / 4.0);
                }
                if seq.is_multiple_of(5) {
                    after["name"] = json!(null);
                }
                event(table, seq, T0 + day + seq as i64, after)
            })
            .collect();
        w.buffer.push("s1", first + c, events);
        let o = w.flush();
        assert!(o.error.is_none(), "{:?}", o.error);
        advance(w, 30_000);
    }
}

fn advance(w: &World, ms: i64) {
    let now = w.env.now.get() + ms;
    w.env.now.set(now);
    w.store.clock.set(now);
}

fn maintain(w: &World, policy: &Policy) -> Report {
    let settings = Settings {
        config: &w.config,
        epoch: "e1",
        step_budget_bytes: 4 << 20,
        target_file_bytes: 1 << 20,
        time_budget_ms: 20_000,
    };
    let tables: Vec<TableRef> = TABLES.iter().map(|t| TableRef::changelog(t)).collect();
    block_on(run(&w.store, &w.index, &w.env, &settings, policy, &tables))
}

/// What the live snapshots of `table` hold: every object they reference
/// must exist. Returns (snapshots, manifests of the current snapshot, live
/// data files of the current snapshot).
fn check_live(w: &World, table: &str) -> (usize, usize, usize) {
    let paths = TablePaths::new(NS, table).unwrap();
    let hint = w.store.object(&paths.version_hint_key()).unwrap();
    let version = crate::lake::parse_version_hint(&hint).unwrap();
    let metadata =
        TableMetadata::from_json(&w.store.object(&paths.metadata_key(version)).unwrap()).unwrap();
    let key = |loc: &str| paths.key_for_location(&metadata.location, loc).unwrap();
    let mut current = (0, 0);
    for s in &metadata.snapshots {
        let list = w
            .store
            .object(&key(&s.manifest_list))
            .unwrap_or_else(|| panic!("{table}: list of live snapshot {} missing", s.snapshot_id));
        let manifests = read_manifest_list(&list).unwrap();
        let mut files = 0;
        for m in &manifests {
            let bytes = w
                .store
                .object(&key(&m.manifest_path))
                .unwrap_or_else(|| panic!("{table}: manifest {} missing", m.manifest_path));
            for e in read_manifest(&bytes, m).unwrap() {
                if e.status.is_live() {
                    files += 1;
                    assert!(
                        w.store.object(&key(&e.file.file_path)).is_some(),
                        "{table}: data file {} of live snapshot {} missing",
                        e.file.file_path,
                        s.snapshot_id
                    );
                }
            }
        }
        if Some(s.snapshot_id) == metadata.current_snapshot_id {
            current = (manifests.len(), files);
        }
    }
    for e in &metadata.metadata_log {
        assert!(
            w.store.object(&key(&e.metadata_file)).is_some(),
            "{table}: logged metadata file {} missing",
            e.metadata_file
        );
    }
    (metadata.snapshots.len(), current.0, current.1)
}

/// Every row of both tables, sorted (null values are absent from a row,
/// so a column added later reads the same before and after compaction).
fn all_keys(w: &World) -> Vec<Vec<crate::flush::memory::Row>> {
    TABLES
        .iter()
        .map(|t| {
            let mut rows = w.rows(t);
            rows.sort_by_key(|r| r["_cdc_seq"].parse::<u64>().unwrap());
            rows
        })
        .collect()
}

/// The statistics of every live data file of `table`'s current snapshot
/// agree with its values: counts, nulls, and exact bounds of long columns.
fn check_stats(w: &World, table: &str) -> usize {
    use arrow_array::{Array, Int64Array};
    let paths = TablePaths::new(NS, table).unwrap();
    let hint = w.store.object(&paths.version_hint_key()).unwrap();
    let version = crate::lake::parse_version_hint(&hint).unwrap();
    let metadata =
        TableMetadata::from_json(&w.store.object(&paths.metadata_key(version)).unwrap()).unwrap();
    let key = |loc: &str| paths.key_for_location(&metadata.location, loc).unwrap();
    let schema = metadata.current_schema().unwrap();
    let list = w
        .store
        .object(&key(&metadata.current_snapshot().unwrap().manifest_list))
        .unwrap();
    let mut checked = 0;
    for m in read_manifest_list(&list).unwrap() {
        let bytes = w.store.object(&key(&m.manifest_path)).unwrap();
        for e in read_manifest(&bytes, &m).unwrap() {
            if !e.status.is_live() {
                continue;
            }
            let f = &e.file;
            let data = w.store.object(&key(&f.file_path)).unwrap();
            assert_eq!(data.len() as i64, f.file_size_in_bytes, "{}", f.file_path);
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                bytes::Bytes::from(data),
            )
            .unwrap()
            .build()
            .unwrap();
            let batches: Vec<_> = reader.map(Result::unwrap).collect();
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            assert_eq!(rows as i64, f.record_count);
            for field in &schema.fields {
                let Some(values) = f.value_counts.get(&field.id) else {
                    continue;
                };
                assert_eq!(*values, f.record_count, "{} values", field.name);
                let col = |b: &arrow_array::RecordBatch| b.column_by_name(&field.name).cloned();
                let nulls: usize = batches
                    .iter()
                    .map(|b| col(b).map_or(b.num_rows(), |c| c.null_count()))
                    .sum();
                assert_eq!(
                    f.null_value_counts[&field.id], nulls as i64,
                    "{} nulls",
                    field.name
                );
                let longs: Vec<i64> = batches
                    .iter()
                    .filter_map(col)
                    .filter_map(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
                    .flat_map(|a| a.iter().flatten().collect::<Vec<_>>())
                    .collect();
                if let (Some(lo), Some(hi)) = (longs.iter().min(), longs.iter().max()) {
                    assert_eq!(
                        f.lower_bounds[&field.id],
                        lo.to_le_bytes(),
                        "{}",
                        field.name
                    );
                    assert_eq!(
                        f.upper_bounds[&field.id],
                        hi.to_le_bytes(),
                        "{}",
                        field.name
                    );
                }
            }
            checked += 1;
        }
    }
    checked
}

#[test]
fn maintenance_bounds_every_table_and_keeps_every_row() {
    let w = world();
    history(&w, 24);
    let before = all_keys(&w);
    assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 72);
    let (snapshots, manifests, files) = check_live(&w, "users");
    assert_eq!(snapshots, 24);
    assert_eq!(manifests, 24);
    assert!(files >= 24, "{files}");

    // An orphan old enough to go, and one too young (a commit in flight).
    let paths = TablePaths::new(NS, "users").unwrap();
    let old_orphan = format!("{}/data/crashed-00000.parquet", paths.prefix());
    w.store
        .insert(&old_orphan, b"left by a crashed commit".to_vec());
    advance(&w, 3_600_000);
    let young_orphan = format!("{}/metadata/in-flight-m0.avro", paths.prefix());
    w.store.insert(&young_orphan, b"being written".to_vec());

    let report = maintain(&w, &policy());
    assert!(!report.more);
    for table in TABLES {
        let r = &report.tables[table];
        assert_eq!(r.error, None, "{table}");
        assert!(r.files_compacted >= 12, "{table}: {r:?}");
        assert!(
            r.snapshots_expired > 0 && r.files_deleted > 0,
            "{table}: {r:?}"
        );
    }
    assert_eq!(all_keys(&w), before, "maintenance changed rows");
    for table in TABLES {
        let (snapshots, manifests, files) = check_live(&w, table);
        assert!(snapshots <= 8, "{table}: {snapshots} snapshots");
        assert!(manifests <= 4, "{table}: {manifests} manifests");
        assert!(files <= 2, "{table}: {files} data files (two partitions)");
        assert_eq!(check_stats(&w, table), files);
        let health = report.tables[table].health.clone().unwrap();
        assert_eq!(health.data_files as usize, files);
        assert_eq!(health.snapshots as usize, snapshots);
    }
    assert_eq!(report.tables["users"].orphans_deleted, 1);
    assert!(
        w.store.multipart_completed.get() > 0,
        "no output went up in parts"
    );
    assert!(w.store.object(&old_orphan).is_none());
    assert!(w.store.object(&young_orphan).is_some());
    // Nothing left that no live snapshot or log references (but the young
    // orphan): expiry and cleanup deleted every object they unreferenced.
    let report = maintain(&w, &policy());
    assert_eq!(report.tables["users"].orphans_deleted, 0);

    // The table goes on: new flushes append after the replace snapshots.
    history(&w, 2);
    let after = all_keys(&w);
    assert_eq!(after.iter().map(Vec::len).sum::<usize>(), 78);
    assert_eq!(after[0][..before[0].len()], before[0][..]);
}

#[test]
fn marks_survive_maintenance_commits() {
    let w = world();
    history(&w, 6);
    let batch = || {
        vec![
            event("users", 100, T0, json!({"id": 100})),
            event("orders", 101, T0, json!({"id": 101})),
        ]
    };
    // How many operations the flush of one more batch takes.
    let probe = world();
    probe.store.copy_from(&w.store);
    probe.env.copy_from(&w.env);
    probe.buffer.copy_from(&w.buffer);
    probe.index.copy_from(&w.index);
    probe.buffer.push("s1", 99, batch());
    let start = probe.crash.ops();
    assert!(probe.flush().error.is_none());
    let ops = probe.crash.ops() - start;
    // The same flush crashing at the buffer trim (the last operation is the
    // listing that finds the buffer empty): both tables hold the batch, the
    // buffer still has it.
    w.buffer.push("s1", 99, batch());
    w.crash.at(ops - 2);
    assert!(w.flush().error.is_some(), "the trim must have failed");
    w.crash.heal();
    assert_eq!(w.buffer.len(), 1);
    let expected = all_keys(&w);
    assert_eq!(expected.iter().map(Vec::len).sum::<usize>(), 20);
    advance(&w, 3_600_000);
    let report = maintain(&w, &policy());
    assert!(
        report
            .tables
            .values()
            .all(|r| r.commits > 0 && r.error.is_none()),
        "{report:?}"
    );
    // The retried flush finds its marks through the replace snapshots.
    let o = w.flush();
    assert!(o.error.is_none());
    assert_eq!(
        o.events_flushed, 0,
        "rows already in the tables were written again"
    );
    assert_eq!(w.buffer.len(), 0);
    assert_eq!(all_keys(&w), expected);
}

#[test]
fn a_crash_at_any_maintenance_operation_keeps_every_row_and_every_live_file() {
    let base = world();
    history(&base, 12);
    advance(&base, 3_600_000);
    let before = all_keys(&base);
    let clean = world();
    clean.store.copy_from(&base.store);
    clean.env.copy_from(&base.env);
    clean.index.copy_from(&base.index);
    let clean_report = maintain(&clean, &policy());
    assert!(clean_report.tables.values().all(|r| r.error.is_none()));
    let total = clean.crash.ops();
    assert!(total > 40, "{total} operations");
    let clean_shape: Vec<_> = TABLES.iter().map(|t| check_live(&clean, t)).collect();

    let mut seen_errors = BTreeSet::new();
    for at in 0..total {
        let w = world();
        w.store.copy_from(&base.store);
        w.env.copy_from(&base.env);
        w.index.copy_from(&base.index);
        w.crash.at(at);
        let report = maintain(&w, &policy());
        w.crash.heal();
        for r in report.tables.values() {
            if let Some(e) = &r.error {
                seen_errors.insert(e.split(' ').take(3).collect::<Vec<_>>().join(" "));
            }
        }
        assert_eq!(all_keys(&w), before, "rows after a crash at operation {at}");
        for t in TABLES {
            check_live(&w, t);
        }
        // The next run finishes the work: the same shape as a clean run.
        advance(&w, 1);
        let report = maintain(&w, &policy());
        assert!(
            report.tables.values().all(|r| r.error.is_none()),
            "after a crash at {at}: {report:?}"
        );
        assert_eq!(all_keys(&w), before, "rows after recovery from {at}");
        let shape: Vec<_> = TABLES.iter().map(|t| check_live(&w, t)).collect();
        for (s, c) in shape.iter().zip(&clean_shape) {
            assert!(
                s.1 <= c.1.max(4) && s.2 <= c.2.max(2),
                "crash at {at}: {shape:?} vs {clean_shape:?}"
            );
        }
    }
    assert!(!seen_errors.is_empty());
}
