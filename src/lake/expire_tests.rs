//! Tables that stay healthy for months (issue 10): snapshot expiry over
//! hundreds of commits on a simulated clock, metadata size, reading back
//! after expiry, and the compact per-source watermarks.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use serde_json::json;
use uuid::Uuid;

use super::commit::{SUMMARY_MARK_PREFIX, SUMMARY_WATERMARK_PREFIX};
use super::expire::{DEFAULT_MAX_SNAPSHOT_AGE_MS, METADATA_EXPIRED_BELOW_PROPERTY};
use super::metadata::SnapshotRef;
use super::*;
use crate::config::{Compression, PartitionBy};
use crate::flush::memory::{read_table, Crash, MemoryStore};
use crate::flush::procedure::mark_in_history;

/// 2026-11-26T13:45:00Z in ms.
const T0: i64 = 1_795_700_700_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const SOURCES: [&str; 5] = ["shard-a", "shard-b", "shard-c", "shard-d", "shard-e"];
const NS: &str = "default";
const TABLE: &str = "events";
const EPOCH_MARK: &str = "dolake.buffer.epoch-1.row-id";

fn options() -> WriteOptions {
    WriteOptions {
        warehouse_location: "s3://lakehouse/warehouse".into(),
        namespace: NS.into(),
        table: TABLE.into(),
        compression: Compression::Snappy,
        row_group_size: 100_000,
        partition_by: PartitionBy::Day,
        target_file_size: commit::DEFAULT_TARGET_FILE_SIZE,
    }
}

fn paths() -> TablePaths {
    TablePaths::new(NS, TABLE).unwrap()
}

/// A table written commit by commit into a [`MemoryStore`], as the flush
/// would, with what every reader must find in it.
struct Table {
    store: MemoryStore,
    state: Option<TableState>,
    /// Commits made (snapshot `n` has id `1000 + n`).
    commits: u64,
    /// `(now_ms, snapshot id)` of every commit.
    times: Vec<(i64, i64)>,
    /// Highest batch / event sequence per source sent.
    want: BTreeMap<String, Watermark>,
    /// `(source, sequence)` of every row sent.
    rows: BTreeSet<(String, u64)>,
}

impl Table {
    fn new() -> Self {
        Self {
            store: MemoryStore::new(Rc::new(Crash::default())),
            state: None,
            commits: 0,
            times: Vec::new(),
            want: BTreeMap::new(),
            rows: BTreeSet::new(),
        }
    }

    fn state(&self) -> &TableState {
        self.state.as_ref().unwrap()
    }

    fn put_all(&self, puts: &[PutObject]) {
        for p in puts {
            self.store.insert(&p.key, p.bytes.clone());
        }
    }

    /// One commit at `now`: three events of one or two of the five sources.
    fn commit(&mut self, now: i64) -> Commit {
        self.commits += 1;
        let n = self.commits;
        let pick = [
            SOURCES[(n % 5) as usize],
            SOURCES[(n % 5) as usize],
            SOURCES[((n / 5) % 5) as usize],
        ];
        let mut events = Vec::new();
        let mut batch_done = BTreeSet::new();
        for (j, source) in pick.into_iter().enumerate() {
            let w = self.want.entry(source.to_string()).or_default();
            if batch_done.insert(source) {
                w.batch_seq += 1;
            }
            w.event_seq += 1;
            let after =
                json!({"id": n * 10 + j as u64, "source": source, "note": format!("commit {n}")});
            events.push(ChangeEvent {
                source_id: source.to_string(),
                batch_seq: w.batch_seq,
                sequence: w.event_seq,
                timestamp_ms: now - j as i64,
                operation: Op::Insert,
                row_id: format!("{source}:{}", w.event_seq),
                before: None,
                after: after.as_object().cloned(),
                metadata: None,
            });
            self.rows.insert((source.to_string(), w.event_seq));
        }
        let ids = CommitIds {
            snapshot_id: 1000 + n as i64,
            commit_uuid: Uuid::from_u128(u128::from(n)),
            table_uuid: Uuid::from_bytes([0xab; 16]),
            now_ms: now,
        };
        let marks = BTreeMap::from([(EPOCH_MARK.to_string(), n.to_string())]);
        let c =
            plan_commit_with_marks(&events, self.state.as_ref(), &options(), &ids, &marks).unwrap();
        self.put_all(&c.puts);
        self.state = Some(c.state.clone());
        self.times.push((now, c.snapshot_id));
        c
    }

    /// Plans an expiry; when there is one, performs it as the flush would:
    /// its puts, then the deletes of what it lists.
    fn expire(&mut self, now: i64, policy: &ExpirePolicy) -> Option<Expiry> {
        let e = plan_expire(self.state(), &paths(), now, policy).unwrap()?;
        self.put_all(&e.commit.puts);
        for key in e
            .expired_manifest_lists
            .iter()
            .chain(&e.expired_metadata_files)
        {
            self.store.objects.borrow_mut().remove(key);
        }
        self.state = Some(e.commit.state.clone());
        Some(e)
    }

    fn metadata_size(&self) -> usize {
        self.store
            .object(&paths().metadata_key(self.state().version))
            .unwrap()
            .len()
    }

    /// Reads the table back from the store as an engine would and as the
    /// flush would after a restart; checks every row sent is there once.
    fn check_reads_back(&self) {
        let rows = read_table(&self.store, NS, TABLE).unwrap();
        let got: Vec<(String, u64)> = rows
            .iter()
            .map(|r| (r["_cdc_source"].clone(), r["_cdc_seq"].parse().unwrap()))
            .collect();
        assert_eq!(got.len(), self.rows.len(), "every row once");
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), self.rows);
        let p = paths();
        let hint = self.store.object(&p.version_hint_key()).unwrap();
        let version = parse_version_hint(&hint).unwrap();
        let meta = self.store.object(&p.metadata_key(version)).unwrap();
        let metadata = TableMetadata::from_json(&meta).unwrap();
        let list = self
            .store
            .object(&p.manifest_list_key(&metadata).unwrap().unwrap())
            .unwrap();
        let loaded = TableState::from_objects(&hint, &meta, Some(&list)).unwrap();
        assert_eq!(&loaded, self.state(), "the state reloads from the store");
        // Every live snapshot can still be read (time travel).
        for s in &metadata.snapshots {
            let key = p.key_for_location(&metadata.location, &s.manifest_list);
            assert!(
                self.store.object(&key.unwrap()).is_some(),
                "manifest list of live snapshot {}",
                s.snapshot_id
            );
        }
    }
}

/// The snapshot ids the policy must keep, from the commit times alone.
fn policy_keeps(
    times: &[(i64, i64)],
    now: i64,
    policy: &ExpirePolicy,
    pinned: &[i64],
) -> BTreeSet<i64> {
    let n = times.len();
    times
        .iter()
        .enumerate()
        .filter(|(i, (t, id))| {
            *i + policy.min_snapshots_to_keep >= n
                || *t >= now - policy.max_snapshot_age_ms
                || pinned.contains(id)
        })
        .map(|(_, (_, id))| *id)
        .collect()
}

fn snapshot_ids(m: &TableMetadata) -> BTreeSet<i64> {
    m.snapshots.iter().map(|s| s.snapshot_id).collect()
}

#[test]
fn expiry_over_weeks_keeps_the_policy_and_bounds_the_metadata() {
    let mut t = Table::new();
    // 300 commits over four weeks (one every 2.24 h), five sources.
    let step = 28 * DAY / 300;
    let mut now = T0;
    let tagged = 1010;
    for n in 1..=300 {
        t.commit(now);
        if n == 10 {
            // A tag on an old snapshot, added by hand (as another engine
            // would): it must survive expiry.
            t.state.as_mut().unwrap().metadata.refs.insert(
                "audit".into(),
                SnapshotRef {
                    snapshot_id: tagged,
                    kind: "tag".into(),
                    extra: BTreeMap::new(),
                },
            );
        }
        now += step;
    }
    let before = t.state().clone();
    let size_before = t.metadata_size();
    assert_eq!(before.metadata.snapshots.len(), 300);
    // Summaries name only their commit's sources; no cumulative keys.
    for s in &before.metadata.snapshots {
        let sources = s
            .summary
            .keys()
            .filter(|k| k.starts_with("dolake.source."))
            .count();
        assert!(sources == 2 || sources == 4, "{sources}");
        assert!(!s
            .summary
            .keys()
            .any(|k| k.starts_with(SUMMARY_WATERMARK_PREFIX)));
        assert!(s.summary.contains_key(EPOCH_MARK));
    }
    assert_eq!(committed_watermarks(&before.metadata), t.want);

    let policy = ExpirePolicy::default();
    assert_eq!(policy.max_snapshot_age_ms, DEFAULT_MAX_SNAPSHOT_AGE_MS);
    assert_eq!(policy.min_snapshots_to_keep, 100);
    assert_eq!(policy.max_metadata_log, commit::METADATA_LOG_MAX);
    let e = t.expire(now, &policy).unwrap();
    let after = &e.commit.state.metadata;
    let size_after = t.metadata_size();
    println!(
        "metadata.json after 300 commits: {size_before} bytes; after expiry: {size_after} bytes ({} snapshots)",
        after.snapshots.len()
    );

    // Exactly the policy's snapshots: the newest 100 (more than the 75 of
    // the last 7 days), and the tagged one.
    let want = policy_keeps(&t.times, now, &policy, &[tagged]);
    assert_eq!(want.len(), 101);
    assert_eq!(snapshot_ids(after), want);
    let expired: BTreeSet<i64> = snapshot_ids(&before.metadata)
        .difference(&want)
        .copied()
        .collect();
    assert_eq!(
        e.expired_snapshot_ids
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
        expired
    );
    assert_eq!(e.expired_snapshot_ids.len(), 199);
    let p = paths();
    let lists: BTreeSet<String> = before
        .metadata
        .snapshots
        .iter()
        .filter(|s| expired.contains(&s.snapshot_id))
        .map(|s| {
            p.key_for_location(&before.metadata.location, &s.manifest_list)
                .unwrap()
        })
        .collect();
    assert_eq!(
        e.expired_manifest_lists
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>(),
        lists
    );
    // Metadata files: v301 is written; the log keeps v201..v300; v1..v200
    // are listed.
    assert_eq!(e.commit.metadata_key, p.metadata_key(301));
    assert_eq!(
        e.expired_metadata_files,
        (1..=200).map(|v| p.metadata_key(v)).collect::<Vec<_>>()
    );
    assert_eq!(after.metadata_log.len(), policy.max_metadata_log);
    assert!(after.metadata_log[0]
        .metadata_file
        .ends_with("/metadata/v201.metadata.json"));
    assert!(after.metadata_log[99]
        .metadata_file
        .ends_with("/metadata/v300.metadata.json"));
    assert_eq!(after.properties[METADATA_EXPIRED_BELOW_PROPERTY], "201");
    // A new metadata version, nothing else.
    let kinds: Vec<ObjectKind> = e.commit.puts.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [ObjectKind::Metadata, ObjectKind::VersionHint]);
    assert_eq!(e.commit.puts[1].bytes, b"301");
    assert_eq!(e.commit.snapshot_id, 1300);
    assert_eq!(
        (e.commit.rows, e.commit.data_files, e.commit.data_bytes),
        (0, 0, 0)
    );
    assert!(e.commit.sources.is_empty() && e.commit.added_columns.is_empty());
    assert_eq!(
        after.current_snapshot_id,
        before.metadata.current_snapshot_id
    );
    assert_eq!(after.refs, before.metadata.refs);
    assert_eq!(after.last_sequence_number, 300);
    assert_eq!(after.last_updated_ms, now);
    assert_eq!(e.commit.state.manifests, before.manifests);
    // snapshot-log: live snapshots only, a history without holes (the tagged
    // snapshot's entry went with the expired ones after it).
    let log: Vec<i64> = after.snapshot_log.iter().map(|l| l.snapshot_id).collect();
    assert_eq!(log, (1201..=1300).collect::<Vec<_>>());
    // The oldest live snapshot of the chain names an expired parent.
    assert_eq!(after.snapshot(1201).unwrap().parent_snapshot_id, Some(1200));
    // The buffer marks and watermarks are untouched.
    assert_eq!(after.current_snapshot().unwrap().summary[EPOCH_MARK], "300");
    assert_eq!(committed_watermarks(after), t.want);
    // The metadata round-trips, and the table reads back every row.
    assert_eq!(&TableMetadata::from_json(&after.to_json()).unwrap(), after);
    t.check_reads_back();
    for key in &e.expired_metadata_files {
        assert!(t.store.object(key).is_none());
    }
    assert!(
        size_after * 2 < size_before,
        "{size_after} vs {size_before}"
    );
    // Deterministic, and nothing left to expire right after.
    let again = plan_expire(&before, &p, now, &policy).unwrap().unwrap();
    assert_eq!(again.commit.puts, e.commit.puts);
    assert!(plan_expire(t.state(), &p, now, &policy).unwrap().is_none());

    // Four more weeks of commits, expiring once a day: the metadata stays
    // bounded and does not grow.
    let mut sizes = Vec::new();
    let mut next_expiry = now + DAY;
    for _ in 0..300 {
        t.commit(now);
        now += step;
        if now >= next_expiry {
            let e = t.expire(now, &policy).unwrap();
            assert!(!e.expired_snapshot_ids.is_empty());
            // The metadata files dropped from the log since the last expiry.
            assert!(!e.expired_metadata_files.is_empty());
            sizes.push(t.metadata_size());
            next_expiry += DAY;
        }
    }
    println!("metadata.json after each daily expiry: {sizes:?}");
    assert!(sizes.len() >= 27);
    let max = *sizes.iter().max().unwrap();
    assert!(max <= size_after + size_after / 10, "{max} vs {size_after}");
    let last = t.state().metadata.clone();
    assert!(last.snapshots.len() <= 101 + 11, "{}", last.snapshots.len());
    assert!(snapshot_ids(&last).contains(&tagged));
    assert!(last.metadata_log.len() <= commit::METADATA_LOG_MAX);
    assert_eq!(committed_watermarks(&last), t.want);
    // Every metadata file but the log's and the current one was deleted.
    let metadata_files = t
        .store
        .objects
        .borrow()
        .keys()
        .filter(|k| k.ends_with(".metadata.json"))
        .count();
    assert!(metadata_files <= commit::METADATA_LOG_MAX + 1 + 11);
    // A next append after expiry works and reads back.
    t.commit(now);
    t.check_reads_back();
    assert_eq!(committed_watermarks(&t.state().metadata), t.want);
}

#[test]
fn the_age_limit_and_the_count_limit_both_hold() {
    let mut t = Table::new();
    // 40 commits, one every 12 hours: 20 days.
    let mut now = T0;
    for _ in 0..40 {
        t.commit(now);
        now += 12 * HOUR;
    }
    let before = t.state().clone();
    // Few to keep by count: the last 7 days (14 commits) stay.
    let by_age = ExpirePolicy {
        min_snapshots_to_keep: 3,
        ..ExpirePolicy::default()
    };
    let e = plan_expire(&before, &paths(), now, &by_age)
        .unwrap()
        .unwrap();
    let kept = snapshot_ids(&e.commit.state.metadata);
    assert_eq!(kept, policy_keeps(&t.times, now, &by_age, &[]));
    assert_eq!(kept.len(), 14);
    // Young snapshots only count: nothing older than 30 days, no expiry.
    let young = ExpirePolicy {
        max_snapshot_age_ms: 30 * DAY,
        min_snapshots_to_keep: 1,
        ..ExpirePolicy::default()
    };
    assert!(plan_expire(&before, &paths(), now, &young)
        .unwrap()
        .is_none());
    // Everything old, keep 5: the newest 5.
    let count = ExpirePolicy {
        max_snapshot_age_ms: 0,
        min_snapshots_to_keep: 5,
        max_metadata_log: 10,
    };
    let e = plan_expire(&before, &paths(), now, &count)
        .unwrap()
        .unwrap();
    assert_eq!(
        snapshot_ids(&e.commit.state.metadata),
        (1036..=1040).collect()
    );
    // The log keeps v31..v40; v1..v30 go.
    assert_eq!(e.commit.state.metadata.metadata_log.len(), 10);
    assert_eq!(e.expired_metadata_files.len(), 30);
    // Keep 0, age 0: only the current snapshot is left.
    let all = ExpirePolicy {
        max_snapshot_age_ms: 0,
        min_snapshots_to_keep: 0,
        max_metadata_log: 0,
    };
    let e = plan_expire(&before, &paths(), now, &all).unwrap().unwrap();
    assert_eq!(
        snapshot_ids(&e.commit.state.metadata),
        BTreeSet::from([1040])
    );
    assert!(e.commit.state.metadata.metadata_log.is_empty());
    assert_eq!(
        e.expired_metadata_files,
        (1..=40)
            .map(|v| paths().metadata_key(v))
            .collect::<Vec<_>>()
    );
    // A negative age is a bug of the caller.
    let bad = ExpirePolicy {
        max_snapshot_age_ms: -1,
        ..ExpirePolicy::default()
    };
    assert!(plan_expire(&before, &paths(), now, &bad).is_err());
}

#[test]
fn a_young_table_has_nothing_to_expire() {
    let mut t = Table::new();
    for n in 0..5 {
        t.commit(T0 + n * HOUR);
    }
    assert!(
        plan_expire(t.state(), &paths(), T0 + DAY, &ExpirePolicy::default())
            .unwrap()
            .is_none()
    );
}

#[test]
fn the_chain_to_the_flush_marks_survives_commits_by_another_engine() {
    let mut t = Table::new();
    for n in 0..10 {
        t.commit(T0 + n * HOUR);
    }
    // Another engine commits 5 times on top, without DoLake's marks, reusing
    // the manifest list (a shared list must not be listed for deletion).
    let mut m = t.state().metadata.clone();
    for k in 0..5 {
        let mut s = m.current_snapshot().unwrap().clone();
        s.parent_snapshot_id = Some(s.snapshot_id);
        s.snapshot_id = 5000 + k;
        s.sequence_number += 1;
        s.timestamp_ms += HOUR;
        s.summary.retain(|k, _| !k.starts_with("dolake."));
        m.current_snapshot_id = Some(s.snapshot_id);
        m.last_sequence_number = s.sequence_number;
        m.snapshots.push(s);
    }
    m.refs.get_mut("main").unwrap().snapshot_id = 5004;
    // Statistics of an expired and of the current snapshot.
    m.extra.insert(
        "statistics".into(),
        json!([{"snapshot-id": 1001, "statistics-path": "s3://x/1.puffin"},
               {"snapshot-id": 5004, "statistics-path": "s3://x/2.puffin"}]),
    );
    let state = TableState {
        metadata: m,
        ..t.state().clone()
    };
    assert_eq!(mark_in_history(&state.metadata, "epoch-1"), Some(10));
    let policy = ExpirePolicy {
        max_snapshot_age_ms: 0,
        min_snapshots_to_keep: 1,
        max_metadata_log: 100,
    };
    let e = plan_expire(&state, &paths(), T0 + 30 * DAY, &policy)
        .unwrap()
        .unwrap();
    let after = &e.commit.state.metadata;
    // The current snapshot's ancestry down to DoLake's last commit stays.
    assert_eq!(
        snapshot_ids(after),
        BTreeSet::from([1010, 5000, 5001, 5002, 5003, 5004])
    );
    assert_eq!(mark_in_history(after, "epoch-1"), Some(10));
    assert_eq!(e.expired_snapshot_ids, (1001..=1009).collect::<Vec<_>>());
    assert_eq!(e.expired_manifest_lists.len(), 9);
    assert_eq!(after.extra["statistics"].as_array().unwrap().len(), 1);
    assert_eq!(after.extra["statistics"][0]["snapshot-id"], 5004);
    // Without any mark in the table, only the policy counts.
    let mut bare = state.clone();
    for s in &mut bare.metadata.snapshots {
        s.summary.retain(|k, _| !k.starts_with(SUMMARY_MARK_PREFIX));
    }
    let e = plan_expire(&bare, &paths(), T0 + 30 * DAY, &policy)
        .unwrap()
        .unwrap();
    assert_eq!(
        snapshot_ids(&e.commit.state.metadata),
        BTreeSet::from([5004])
    );
    // 1010 and 5000..5003 share the live snapshot's manifest list.
    assert_eq!(e.expired_snapshot_ids.len(), 14);
    assert_eq!(e.expired_manifest_lists.len(), 9);
}

#[test]
fn watermarks_of_tables_written_before_are_still_read() {
    let mut t = Table::new();
    t.commit(T0);
    t.commit(T0 + HOUR);
    let new_style = t.state().metadata.clone();
    assert_eq!(committed_watermarks(&new_style), t.want);
    // A table written before: cumulative keys in the current summary, no
    // property.
    let mut old = new_style.clone();
    old.properties.remove(WATERMARKS_PROPERTY);
    let summary = &mut old.snapshots.last_mut().unwrap().summary;
    for (source, b, e) in [("shard-a", 7, 70), ("old-shard", 3, 30)] {
        summary.insert(
            format!("dolake.watermark.{source}.batch-seq"),
            b.to_string(),
        );
        summary.insert(
            format!("dolake.watermark.{source}.event-seq"),
            e.to_string(),
        );
    }
    let w = committed_watermarks(&old);
    assert_eq!(
        w["old-shard"],
        Watermark {
            batch_seq: 3,
            event_seq: 30
        }
    );
    assert_eq!(
        w["shard-a"],
        Watermark {
            batch_seq: 7,
            event_seq: 70
        }
    );
    assert!(!w.contains_key("shard-b"), "the property was removed");
    // Both places: the higher value of each wins.
    let mut both = old.clone();
    both.properties.insert(
        WATERMARKS_PROPERTY.into(),
        r#"{"shard-a":[9,5],"shard-b":[1,2]}"#.into(),
    );
    let w = committed_watermarks(&both);
    assert_eq!(
        w["shard-a"],
        Watermark {
            batch_seq: 9,
            event_seq: 70
        }
    );
    assert_eq!(w.len(), 3);
    // A property that does not parse is skipped, not an error.
    let mut bad = old.clone();
    bad.properties
        .insert(WATERMARKS_PROPERTY.into(), "{not json".into());
    assert_eq!(committed_watermarks(&bad), committed_watermarks(&old));
    bad.properties.insert(
        WATERMARKS_PROPERTY.into(),
        r#"{"x":[1],"y":"z","shard-a":[-1,2],"ok":[1,2]}"#.into(),
    );
    let w = committed_watermarks(&bad);
    assert_eq!(
        w["ok"],
        Watermark {
            batch_seq: 1,
            event_seq: 2
        }
    );
    assert!(!w.contains_key("x") && !w.contains_key("y"));
    // The next commit on the old table moves everything to the property and
    // drops the cumulative summary keys.
    let mut state = t.state().clone();
    state.metadata = old;
    t.state = Some(state);
    let c = t.commit(T0 + 2 * HOUR);
    let m = &c.state.metadata;
    assert!(!m
        .current_snapshot()
        .unwrap()
        .summary
        .keys()
        .any(|k| k.starts_with(SUMMARY_WATERMARK_PREFIX)));
    let listed = commit::parse_watermarks_property(&m.properties[WATERMARKS_PROPERTY]);
    assert_eq!(listed, committed_watermarks(m));
    assert_eq!(
        listed["old-shard"],
        Watermark {
            batch_seq: 3,
            event_seq: 30
        }
    );
    assert!(listed["shard-a"].batch_seq >= 7 && listed["shard-a"].event_seq >= 70);
    // No current snapshot: nothing is committed.
    assert!(committed_watermarks(&TableMetadata {
        current_snapshot_id: None,
        ..m.clone()
    })
    .is_empty());
}

#[test]
fn summaries_no_longer_grow_with_the_number_of_sources() {
    // 200 sources, each once; then one commit of one source.
    let mut m = None;
    for k in 0..200_u64 {
        let e = ChangeEvent {
            source_id: format!("source-{k:03}"),
            batch_seq: 1,
            sequence: 1,
            timestamp_ms: T0,
            operation: Op::Insert,
            row_id: "r".into(),
            before: None,
            after: json!({"id": k}).as_object().cloned(),
            metadata: None,
        };
        let ids = CommitIds {
            snapshot_id: 1 + k as i64,
            commit_uuid: Uuid::from_u128(u128::from(k) + 1),
            table_uuid: Uuid::from_bytes([1; 16]),
            now_ms: T0 + k as i64,
        };
        let c = plan_commit(&[e], m.as_ref(), &options(), &ids).unwrap();
        m = Some(c.state);
    }
    let state = m.unwrap();
    let last = state.metadata.current_snapshot().unwrap();
    let keys = last
        .summary
        .keys()
        .filter(|k| k.starts_with("dolake."))
        .count();
    // The source's two keys and the overflow count.
    assert_eq!(keys, 3, "{:?}", last.summary.keys().collect::<Vec<_>>());
    assert_eq!(committed_watermarks(&state.metadata).len(), 200);
}
