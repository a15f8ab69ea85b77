//! Snapshot expiry: keeping a table's metadata bounded for months (issue 10).
//!
//! Every commit adds a snapshot, a `snapshot-log` entry and a `metadata-log`
//! entry, and rewrites the whole `metadata.json`; without expiry it grows by
//! about a kilobyte per commit forever. [`plan_expire`] plans what Iceberg's
//! `ExpireSnapshots` (and R2 Data Catalog's snapshot expiration) does, as a
//! deterministic, sans-IO step like [`plan_commit`](super::plan_commit): it
//! takes the table's state, the time and an [`ExpirePolicy`], and returns a
//! new metadata version to put (no new snapshot: the current snapshot and
//! every ref stay as they are) plus what the caller may delete afterwards.
//!
//! # What expires
//!
//! A snapshot expires when **all** of these hold:
//! - it is older than [`ExpirePolicy::max_snapshot_age_ms`] (its
//!   `timestamp-ms` is before `now - max age`);
//! - it is not among the newest [`ExpirePolicy::min_snapshots_to_keep`]
//!   snapshots;
//! - it is not the current snapshot, and no ref (branch or tag) points to it;
//! - it is not on the current snapshot's ancestry between the current
//!   snapshot and the newest snapshot carrying the flush's buffer marks
//!   (`dolake.buffer.*` summary keys). The flush finds its marks by walking
//!   back from the current snapshot (another engine's commits carry none);
//!   expiring that chain would hide them and break exactly-once. In DoLake's
//!   own tables the current snapshot carries the marks, so this keeps nothing
//!   more.
//!
//! The new metadata keeps the live snapshots unchanged (so the oldest live
//! snapshot's `parent-snapshot-id` may name an expired snapshot, which the
//! spec allows and pyiceberg, DuckDB and iceberg-rust accept), a
//! `snapshot-log` of live snapshots only (as Java does, an entry of a removed
//! snapshot also drops every entry before it, so the log stays a valid
//! history), `statistics` / `partition-statistics` of live snapshots only, a
//! `metadata-log` bounded to [`ExpirePolicy::max_metadata_log`], and
//! `last-updated-ms` = now.
//!
//! # What the caller deletes, and the split of the work
//!
//! The planner reads nothing but the table's state, so it lists only what the
//! metadata alone tells:
//! - [`Expiry::expired_manifest_lists`]: the manifest lists that only expired
//!   snapshots referenced;
//! - [`Expiry::expired_metadata_files`]: the metadata files no longer in
//!   `metadata-log`. Commits drop the oldest log entry once the log holds
//!   [`METADATA_LOG_MAX`] entries, so the files dropped since the previous
//!   expiry are listed too: the table property
//!   [`METADATA_EXPIRED_BELOW_PROPERTY`] records the version below which
//!   files were already listed by an expiry.
//!
//! Which **manifests** and **data files** can go is decided by the caller,
//! which reads manifests (the manifest reader lives in `manifest.rs`): a
//! manifest listed by an expired manifest list and by no live snapshot's
//! manifest list is unreferenced, and so is a data file of such a manifest
//! that no live manifest lists. DoLake's appends carry every manifest forward,
//! so without manifest merging or compaction nothing more is unreferenced.
//!
//! The caller's order: put [`Expiry::commit`]'s puts in order (the metadata
//! only if absent: if it exists, another commit won and the plan is void;
//! delete nothing). Once the commit succeeded: read the expired manifest lists
//! (and the live ones) to find unreferenced manifests and data files, then
//! delete data files, manifests, the expired manifest lists, and the expired
//! metadata files, in that order (leaves first, so that a crash in between
//! leaves nothing referenced by a deleted object; deletes are idempotent, so
//! persisting the lists first lets a restarted object finish them).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::commit::{Commit, ObjectKind, PutObject, METADATA_LOG_MAX, SUMMARY_MARK_PREFIX};
use super::metadata::{MetadataLogEntry, Snapshot, TableMetadata};
use super::table::{TablePaths, TableState};
use crate::error::{Error, Result};

/// Default [`ExpirePolicy::max_snapshot_age_ms`]: 7 days, as Iceberg's
/// `history.expire.max-snapshot-age-ms`.
pub const DEFAULT_MAX_SNAPSHOT_AGE_MS: i64 = 7 * 24 * 3_600_000;
/// Default [`ExpirePolicy::min_snapshots_to_keep`].
pub const DEFAULT_MIN_SNAPSHOTS_TO_KEEP: usize = 100;
/// Table property: metadata files `v{N}.metadata.json` with N below this
/// value were listed for deletion by an expiry (see [`plan_expire`]).
pub const METADATA_EXPIRED_BELOW_PROPERTY: &str = "dolake.metadata-expired-below";

/// Which snapshots and metadata files an expiry keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpirePolicy {
    /// Snapshots older than this (ms) may expire. Default 7 days.
    pub max_snapshot_age_ms: i64,
    /// The newest this many snapshots never expire. Default 100.
    pub min_snapshots_to_keep: usize,
    /// Most entries of `metadata-log`. Default [`METADATA_LOG_MAX`], the bound
    /// commits keep.
    pub max_metadata_log: usize,
}

impl Default for ExpirePolicy {
    fn default() -> Self {
        Self {
            max_snapshot_age_ms: DEFAULT_MAX_SNAPSHOT_AGE_MS,
            min_snapshots_to_keep: DEFAULT_MIN_SNAPSHOTS_TO_KEEP,
            max_metadata_log: METADATA_LOG_MAX,
        }
    }
}

/// The plan of one expiry.
#[derive(Debug, Clone)]
pub struct Expiry {
    /// The new metadata version: puts `v{N+1}.metadata.json` (only if absent)
    /// then `version-hint.text`. No new snapshot: `snapshot_id` is the
    /// current snapshot's (0 without one), the refs are unchanged, and rows,
    /// data files, bytes, overflow, added columns and sources are empty.
    pub commit: Commit,
    /// The snapshots removed, in metadata order.
    pub expired_snapshot_ids: Vec<i64>,
    /// Keys (relative to `r2BasePath`) of the manifest lists only expired
    /// snapshots referenced. Lists outside the table's location are left out.
    pub expired_manifest_lists: Vec<String>,
    /// Keys of the metadata files no longer referenced by `metadata-log`
    /// (and not listed by an earlier expiry), oldest first.
    pub expired_metadata_files: Vec<String>,
}

/// Plans the expiry of `state` (table `paths`) at `now_ms` under `policy`.
/// `None` when nothing expires: no snapshot and no metadata file. Writes
/// nothing (see the module docs for what the caller puts and deletes).
pub fn plan_expire(
    state: &TableState,
    paths: &TablePaths,
    now_ms: i64,
    policy: &ExpirePolicy,
) -> Result<Option<Expiry>> {
    if policy.max_snapshot_age_ms < 0 {
        return Err(Error::internal(
            "the maximum snapshot age must not be negative",
        ));
    }
    let base = &state.metadata;
    let location = base.location.trim_end_matches('/');

    // Snapshots.
    let mut keep: BTreeSet<i64> = base.refs.values().map(|r| r.snapshot_id).collect();
    keep.extend(base.current_snapshot_id);
    let mut newest: Vec<&Snapshot> = base.snapshots.iter().collect();
    newest.sort_by_key(|s| Reverse((s.timestamp_ms, s.sequence_number, s.snapshot_id)));
    keep.extend(
        newest
            .iter()
            .take(policy.min_snapshots_to_keep)
            .map(|s| s.snapshot_id),
    );
    let cutoff = now_ms.saturating_sub(policy.max_snapshot_age_ms);
    keep.extend(
        base.snapshots
            .iter()
            .filter(|s| s.timestamp_ms >= cutoff)
            .map(|s| s.snapshot_id),
    );
    keep.extend(ancestry_to_marks(base));
    let (live, expired): (Vec<&Snapshot>, Vec<&Snapshot>) = base
        .snapshots
        .iter()
        .partition(|s| keep.contains(&s.snapshot_id));
    let live_ids: BTreeSet<i64> = live.iter().map(|s| s.snapshot_id).collect();

    // Manifest lists only expired snapshots referenced.
    let live_lists: BTreeSet<&str> = live.iter().map(|s| s.manifest_list.as_str()).collect();
    let mut expired_manifest_lists: Vec<String> = Vec::new();
    for s in &expired {
        if live_lists.contains(s.manifest_list.as_str()) {
            continue;
        }
        if let Some(key) = paths.key_for_location(location, &s.manifest_list) {
            if !expired_manifest_lists.contains(&key) {
                expired_manifest_lists.push(key);
            }
        }
    }

    // The new metadata.
    let version = state.version + 1;
    let mut metadata = base.clone();
    metadata
        .snapshots
        .retain(|s| live_ids.contains(&s.snapshot_id));
    let mut snapshot_log = Vec::new();
    for entry in &base.snapshot_log {
        if live_ids.contains(&entry.snapshot_id) {
            snapshot_log.push(entry.clone());
        } else {
            // The history must not show a transition from a removed snapshot.
            snapshot_log.clear();
        }
    }
    metadata.snapshot_log = snapshot_log;
    for key in ["statistics", "partition-statistics"] {
        if let Some(Value::Array(files)) = metadata.extra.get_mut(key) {
            files.retain(|f| {
                f.get("snapshot-id")
                    .and_then(Value::as_i64)
                    .is_none_or(|id| live_ids.contains(&id))
            });
        }
    }
    metadata.metadata_log.push(MetadataLogEntry {
        timestamp_ms: base.last_updated_ms,
        metadata_file: format!("{location}/metadata/v{}.metadata.json", state.version),
    });
    let excess = metadata
        .metadata_log
        .len()
        .saturating_sub(policy.max_metadata_log);
    let dropped: Vec<MetadataLogEntry> = metadata.metadata_log.drain(..excess).collect();

    // Metadata files no longer referenced: the versions between the last
    // expiry's bound and the oldest version still referenced, and any other
    // file dropped from the log now.
    let version_of = |file: &str| -> Option<u64> {
        file.strip_prefix(location)?
            .strip_prefix("/metadata/v")?
            .strip_suffix(".metadata.json")?
            .parse()
            .ok()
    };
    let referenced: BTreeSet<u64> = metadata
        .metadata_log
        .iter()
        .filter_map(|e| version_of(&e.metadata_file))
        .chain([version])
        .collect();
    let below = referenced.first().copied().unwrap_or(version);
    let floor = base
        .properties
        .get(METADATA_EXPIRED_BELOW_PROPERTY)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    let mut expired_metadata_files: Vec<String> =
        (floor..below).map(|v| paths.metadata_key(v)).collect();
    let kept_files: BTreeSet<&str> = metadata
        .metadata_log
        .iter()
        .map(|e| e.metadata_file.as_str())
        .collect();
    for entry in &dropped {
        if version_of(&entry.metadata_file).is_some_and(|v| v < below)
            || kept_files.contains(entry.metadata_file.as_str())
        {
            continue; // listed above, or already listed, or still referenced
        }
        if let Some(key) = paths.key_for_location(location, &entry.metadata_file) {
            if key != paths.metadata_key(version) && !expired_metadata_files.contains(&key) {
                expired_metadata_files.push(key);
            }
        }
    }

    // Nothing to do unless snapshots expire, or metadata files dropped from
    // the log by earlier commits wait, or the log is over its bound. (This
    // commit's own log entry would always drop one: not a reason to commit.)
    let referenced_now = base
        .metadata_log
        .iter()
        .filter_map(|e| version_of(&e.metadata_file))
        .chain([state.version])
        .min()
        .unwrap_or(state.version);
    if expired.is_empty()
        && referenced_now <= floor
        && base.metadata_log.len() <= policy.max_metadata_log
    {
        return Ok(None);
    }
    if below > floor {
        metadata.properties.insert(
            METADATA_EXPIRED_BELOW_PROPERTY.to_string(),
            below.to_string(),
        );
    }
    metadata.last_updated_ms = now_ms.max(base.last_updated_ms);

    let metadata_key = paths.metadata_key(version);
    let puts = vec![
        PutObject {
            key: metadata_key.clone(),
            bytes: metadata.to_json(),
            kind: ObjectKind::Metadata,
        },
        PutObject {
            key: paths.version_hint_key(),
            bytes: version.to_string().into_bytes(),
            kind: ObjectKind::VersionHint,
        },
    ];
    Ok(Some(Expiry {
        commit: Commit {
            puts,
            state: TableState {
                version,
                metadata,
                manifests: state.manifests.clone(),
            },
            snapshot_id: base.current_snapshot_id.unwrap_or(0),
            metadata_key,
            rows: 0,
            data_files: 0,
            data_bytes: 0,
            overflow: BTreeMap::new(),
            added_columns: Vec::new(),
            sources: BTreeMap::new(),
            added_files: Vec::new(),
        },
        expired_snapshot_ids: expired.iter().map(|s| s.snapshot_id).collect(),
        expired_manifest_lists,
        expired_metadata_files,
    }))
}

/// The current snapshot and its ancestors up to the newest one whose summary
/// holds a buffer mark ([`SUMMARY_MARK_PREFIX`]); empty when no ancestor
/// holds one (then there is nothing to protect).
fn ancestry_to_marks(metadata: &TableMetadata) -> Vec<i64> {
    let mut chain = Vec::new();
    let mut id = metadata.current_snapshot_id;
    // Bounded: a cycle of parent ids must not loop forever.
    for _ in 0..metadata.snapshots.len() {
        let Some(snapshot) = id.and_then(|id| metadata.snapshot(id)) else {
            break;
        };
        chain.push(snapshot.snapshot_id);
        if snapshot
            .summary
            .keys()
            .any(|k| k.starts_with(SUMMARY_MARK_PREFIX))
        {
            return chain;
        }
        id = snapshot.parent_snapshot_id;
    }
    Vec::new()
}
