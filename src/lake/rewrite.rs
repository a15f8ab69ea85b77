//! `replace` snapshots: commits that reorganise a table without changing
//! its rows (Iceberg's `RewriteManifests` and `RewriteFiles`).
//!
//! Two kinds of maintenance commit through [`plan_replace`]:
//! - **manifest merging** ([`merge_bins`]): many small manifests of the
//!   current snapshot become a few, their live entries carried as EXISTING;
//! - **compaction**: small data files of a partition become one file; the
//!   manifests that list them are rewritten with the old files DELETED, the
//!   other files EXISTING and the new file ADDED.
//!
//! The new snapshot has `operation: replace`, the parent's buffer marks
//! (so the flush's exactly-once marks survive, see `flush/mod.rs`) and row
//! positions mark (manifest merging moves no row), and the
//! planner refuses any plan whose live rows differ from the parent's: a
//! replace never changes what a reader sees.

use std::collections::{BTreeMap, BTreeSet};

use super::avro::{
    write_manifest_entries, write_manifest_list, DataFile, FieldSummary, ManifestFile,
};
use super::commit::{add_snapshot, Commit, CommitIds, ObjectKind, PutObject, SUMMARY_MARK_PREFIX};
use super::manifest::{EntryStatus, ManifestEntry};
use super::metadata::{Operation, PartitionSpec, Snapshot};
use super::table::{TablePaths, TableState};
use crate::error::{Error, ErrorKind, Result};

/// Summary key naming the maintenance kind of a `replace` snapshot.
pub const SUMMARY_MAINTENANCE: &str = "dolake.maintenance";

/// The kind of a replace commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceKind {
    /// Manifests merged; no data file changes.
    MergeManifests,
    /// Data files rewritten into fewer files.
    Compaction,
}

impl ReplaceKind {
    fn name(self) -> &'static str {
        match self {
            Self::MergeManifests => "merge-manifests",
            Self::Compaction => "compaction",
        }
    }
}

/// A manifest the replace writes: its spec and entries.
#[derive(Debug, Clone)]
pub struct NewManifest {
    /// The partition spec id of every entry.
    pub spec_id: i32,
    /// The entries, any status.
    pub entries: Vec<ManifestEntry>,
}

/// What a replace commit changes in the current snapshot.
#[derive(Debug, Clone)]
pub struct Replace {
    /// Merge or compaction.
    pub kind: ReplaceKind,
    /// Paths (`manifest_path`) of the current manifests this replaces.
    pub replaced: BTreeSet<String>,
    /// The manifests that take their place.
    pub manifests: Vec<NewManifest>,
    /// Data files already uploaded by the caller (compaction), as puts are
    /// not part of this plan: their total size, for the summary.
    pub added_bytes: u64,
    /// The row positions mark of the new snapshot when rows moved (a
    /// current-state table's compaction); `None` carries the parent's.
    pub positions: Option<i64>,
}

/// Partition summaries of `files` under `spec` (manifest list field 507).
pub(crate) fn partition_summaries<'a>(
    spec: &PartitionSpec,
    files: impl Iterator<Item = &'a DataFile> + Clone,
) -> Vec<FieldSummary> {
    (0..spec.fields.len())
        .map(|i| {
            let values = files.clone().map(|f| f.partition.get(i).copied().flatten());
            let present = values.clone().flatten();
            FieldSummary {
                contains_null: values.clone().any(|v| v.is_none()),
                contains_nan: Some(false),
                lower_bound: present.clone().min().map(|v| v.to_le_bytes().to_vec()),
                upper_bound: present.max().map(|v| v.to_le_bytes().to_vec()),
            }
        })
        .collect()
}

/// The manifest list entry of the manifest at `path` (`length` bytes) that
/// snapshot `snapshot_id`, sequence number `sequence_number`, wrote with
/// `spec` and `entries` (any status; all data or all delete files).
pub(crate) fn listed_manifest(
    path: String,
    length: usize,
    spec: &PartitionSpec,
    sequence_number: i64,
    snapshot_id: i64,
    entries: &[ManifestEntry],
) -> Result<ManifestFile> {
    let count = |s: EntryStatus| {
        i32::try_from(entries.iter().filter(|e| e.status == s).count())
            .map_err(|_| Error::internal("too many files in one manifest"))
    };
    let rows = |s: EntryStatus| -> i64 {
        entries
            .iter()
            .filter(|e| e.status == s)
            .map(|e| e.file.record_count)
            .sum()
    };
    Ok(ManifestFile {
        manifest_path: path,
        manifest_length: length as i64,
        partition_spec_id: spec.spec_id,
        content: entries.first().map_or(0, |e| e.file.content),
        sequence_number,
        min_sequence_number: entries
            .iter()
            .filter(|e| e.status.is_live())
            .map(|e| e.sequence_number.unwrap_or(sequence_number))
            .min()
            .unwrap_or(sequence_number),
        added_snapshot_id: snapshot_id,
        added_files_count: count(EntryStatus::Added)?,
        existing_files_count: count(EntryStatus::Existing)?,
        deleted_files_count: count(EntryStatus::Deleted)?,
        added_rows_count: rows(EntryStatus::Added),
        existing_rows_count: rows(EntryStatus::Existing),
        deleted_rows_count: rows(EntryStatus::Deleted),
        partitions: Some(partition_summaries(spec, entries.iter().map(|e| &e.file))),
        key_metadata: None,
    })
}

/// Bytes of the files `entries` remove (DELETED).
pub(crate) fn removed_bytes(entries: &[ManifestEntry]) -> u64 {
    entries
        .iter()
        .filter(|e| e.status == EntryStatus::Deleted)
        .map(|e| e.file.file_size_in_bytes as u64)
        .sum()
}

fn lake_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Lake, msg.into())
}

/// The rows a reader sees: the data files' rows less their position
/// deletes (each deleted position is of a live row, see `lake::current`).
fn live_rows(manifests: &[ManifestFile]) -> i64 {
    manifests
        .iter()
        .map(|m| {
            let rows = m.added_rows_count + m.existing_rows_count;
            if m.content == 0 {
                rows
            } else {
                -rows
            }
        })
        .sum()
}

/// Plans the replace snapshot of `replace` on `state` (table `paths`): the
/// new manifests, the manifest list and the metadata, in put order. Errors
/// when a replaced manifest is not in the current snapshot, or when the live
/// rows would change.
pub fn plan_replace(
    state: &TableState,
    paths: &TablePaths,
    ids: &CommitIds,
    replace: Replace,
) -> Result<Commit> {
    let base = &state.metadata;
    let parent = base
        .current_snapshot()
        .ok_or_else(|| lake_error("a table without a snapshot has nothing to rewrite"))?;
    if base.snapshot(ids.snapshot_id).is_some() || ids.snapshot_id <= 0 {
        return Err(Error::internal(format!(
            "snapshot id {} is not new and positive",
            ids.snapshot_id
        )));
    }
    let current: BTreeSet<&str> = state
        .manifests
        .iter()
        .map(|m| m.manifest_path.as_str())
        .collect();
    if let Some(missing) = replace
        .replaced
        .iter()
        .find(|p| !current.contains(p.as_str()))
    {
        return Err(lake_error(format!(
            "manifest {missing} is not in the current snapshot"
        )));
    }
    let location = base.location.trim_end_matches('/').to_string();
    let key_of = |loc: &str| {
        paths
            .key_for_location(&location, loc)
            .ok_or_else(|| Error::internal(format!("{loc} is outside the table")))
    };
    let sequence_number = base.last_sequence_number + 1;
    let sync = *ids.commit_uuid.as_bytes();
    let schema = base
        .current_schema()
        .ok_or_else(|| lake_error("the table has no current schema"))?;

    let mut puts = Vec::new();
    let mut written = Vec::new();
    let (mut added_files, mut deleted_files, mut added_rows, mut deleted_rows) =
        (0_u64, 0_u64, 0_i64, 0_i64);
    let mut removed_bytes = 0_u64;
    // Delete files removed (their positions applied by a compaction).
    let (mut removed_delete_files, mut removed_positions) = (0_u64, 0_i64);
    for (i, m) in replace.manifests.iter().enumerate() {
        if m.entries.is_empty() {
            continue;
        }
        let content = m.entries[0].file.content;
        if m.entries.iter().any(|e| e.file.content != content) {
            return Err(Error::internal("a manifest mixes data and delete files"));
        }
        let spec = base
            .partition_specs
            .iter()
            .find(|s| s.spec_id == m.spec_id)
            .ok_or_else(|| {
                lake_error(format!("partition spec {} is not in the table", m.spec_id))
            })?;
        let path = format!("{location}/metadata/{}-m{i}.avro", ids.commit_uuid);
        let bytes = write_manifest_entries(schema, spec, &m.entries, sync)?;
        let listed = listed_manifest(
            path.clone(),
            bytes.len(),
            spec,
            sequence_number,
            ids.snapshot_id,
            &m.entries,
        )?;
        if content != 0 {
            if listed.added_files_count > 0 {
                return Err(Error::internal("a replace must not add delete files"));
            }
            removed_delete_files += listed.deleted_files_count as u64;
            removed_positions += listed.deleted_rows_count;
        } else {
            added_files += listed.added_files_count as u64;
            deleted_files += listed.deleted_files_count as u64;
            added_rows += listed.added_rows_count;
            deleted_rows += listed.deleted_rows_count;
        }
        removed_bytes += self::removed_bytes(&m.entries);
        written.push(listed);
        puts.push(PutObject {
            key: key_of(&path)?,
            bytes,
            kind: ObjectKind::Manifest,
        });
    }
    let kept: Vec<ManifestFile> = state
        .manifests
        .iter()
        .filter(|m| !replace.replaced.contains(&m.manifest_path))
        .cloned()
        .collect();
    let kept_count = kept.len();
    let mut manifests = written;
    let created = manifests.len();
    manifests.extend(kept);
    if live_rows(&manifests) != live_rows(&state.manifests)
        || added_rows != deleted_rows - removed_positions
    {
        return Err(Error::internal(format!(
            "a {} must not change the rows: {} live rows before, {} after",
            replace.kind.name(),
            live_rows(&state.manifests),
            live_rows(&manifests)
        )));
    }

    let list_path = format!(
        "{location}/metadata/snap-{}-1-{}.avro",
        ids.snapshot_id, ids.commit_uuid
    );
    let list = write_manifest_list(
        ids.snapshot_id,
        Some(parent.snapshot_id),
        sequence_number,
        &manifests,
        sync,
    )?;
    puts.push(PutObject {
        key: key_of(&list_path)?,
        bytes: list,
        kind: ObjectKind::ManifestList,
    });

    // Summary: totals carried, the parent's marks carried.
    let prev = |k: &str| -> u64 {
        parent
            .summary
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut summary: BTreeMap<String, String> = parent
        .summary
        .iter()
        .filter(|(k, _)| {
            k.starts_with(SUMMARY_MARK_PREFIX) || *k == super::current::SUMMARY_POSITIONS
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut put = |k: &str, v: u64| {
        summary.insert(k.to_string(), v.to_string());
    };
    put("added-data-files", added_files);
    put("deleted-data-files", deleted_files);
    put("added-records", added_rows as u64);
    put("deleted-records", deleted_rows as u64);
    put("added-files-size", replace.added_bytes);
    put("removed-files-size", removed_bytes);
    put("manifests-created", created as u64);
    put("manifests-replaced", replace.replaced.len() as u64);
    put("manifests-kept", kept_count as u64);
    put(
        "total-records",
        (prev("total-records") + added_rows as u64).saturating_sub(deleted_rows as u64),
    );
    if removed_delete_files > 0 {
        put("removed-delete-files", removed_delete_files);
        put("removed-position-delete-files", removed_delete_files);
        put("removed-position-deletes", removed_positions as u64);
    }
    put(
        "total-data-files",
        (prev("total-data-files") + added_files).saturating_sub(deleted_files),
    );
    put(
        "total-files-size",
        (prev("total-files-size") + replace.added_bytes).saturating_sub(removed_bytes),
    );
    put(
        "total-delete-files",
        prev("total-delete-files").saturating_sub(removed_delete_files),
    );
    put(
        "total-position-deletes",
        prev("total-position-deletes").saturating_sub(removed_positions as u64),
    );
    put("total-equality-deletes", prev("total-equality-deletes"));
    if let Some(p) = replace.positions {
        summary.insert(super::current::SUMMARY_POSITIONS.to_string(), p.to_string());
    }
    summary.insert(
        Operation::SUMMARY_KEY.to_string(),
        Operation::Replace.as_str().to_string(),
    );
    summary.insert(
        SUMMARY_MAINTENANCE.to_string(),
        replace.kind.name().to_string(),
    );

    let (metadata, metadata_puts, metadata_key, _) = add_snapshot(
        base.clone(),
        Some((state.version, base.last_updated_ms)),
        paths,
        Snapshot {
            snapshot_id: ids.snapshot_id,
            parent_snapshot_id: Some(parent.snapshot_id),
            sequence_number,
            timestamp_ms: ids.now_ms.max(base.last_updated_ms),
            manifest_list: list_path,
            summary,
            schema_id: Some(base.current_schema_id),
            extra: BTreeMap::new(),
        },
    );
    puts.extend(metadata_puts);
    Ok(Commit {
        puts,
        state: TableState {
            version: state.version + 1,
            metadata,
            manifests,
        },
        snapshot_id: ids.snapshot_id,
        metadata_key,
        rows: 0,
        data_files: added_files as usize,
        data_bytes: replace.added_bytes,
        overflow: BTreeMap::new(),
        added_columns: Vec::new(),
        sources: BTreeMap::new(),
        added_files: Vec::new(),
    })
}

/// Manifest merging policy (Iceberg's `commit.manifest-merge.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergePolicy {
    /// Merge only when the current snapshot lists more than this many data
    /// manifests (Iceberg's `min-count-to-merge`, default 100).
    pub min_count_to_merge: usize,
    /// Manifests at or above this size are left alone; merged manifests are
    /// filled up to about this size (`target-size-bytes`, default 8 MiB).
    pub target_manifest_bytes: u64,
}

impl Default for MergePolicy {
    fn default() -> Self {
        Self {
            min_count_to_merge: 100,
            target_manifest_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The groups of current data manifests to merge, each group into one new
/// manifest: `None` unless the snapshot lists more than
/// [`MergePolicy::min_count_to_merge`] data manifests. Only manifests smaller
/// than the target and of the same spec are grouped, up to the target size
/// each, newest first (as listed); groups of one are left alone.
pub fn merge_bins(state: &TableState, policy: &MergePolicy) -> Option<Vec<Vec<ManifestFile>>> {
    let data: Vec<&ManifestFile> = state.manifests.iter().filter(|m| m.content == 0).collect();
    if data.len() <= policy.min_count_to_merge {
        return None;
    }
    let mut by_spec: BTreeMap<i32, Vec<Vec<ManifestFile>>> = BTreeMap::new();
    let mut size: BTreeMap<i32, u64> = BTreeMap::new();
    for m in data {
        let len = m.manifest_length.max(0) as u64;
        if len >= policy.target_manifest_bytes {
            continue;
        }
        let bins = by_spec.entry(m.partition_spec_id).or_default();
        let used = size.entry(m.partition_spec_id).or_default();
        if bins.is_empty() || *used + len > policy.target_manifest_bytes {
            bins.push(Vec::new());
            *used = 0;
        }
        *used += len;
        bins.last_mut().expect("pushed above").push(m.clone());
    }
    let bins: Vec<Vec<ManifestFile>> = by_spec
        .into_values()
        .flatten()
        .filter(|b| b.len() > 1)
        .collect();
    (!bins.is_empty()).then_some(bins)
}

/// The replace that merges `bins` (from [`merge_bins`]) given each
/// manifest's entries (read with `read_manifest`): one new manifest per bin
/// with the live entries as EXISTING; DELETED entries are dropped.
pub fn merge_replace(
    bins: &[Vec<ManifestFile>],
    entries: &BTreeMap<String, Vec<ManifestEntry>>,
) -> Result<Replace> {
    let mut replaced = BTreeSet::new();
    let mut manifests = Vec::new();
    for bin in bins {
        let mut out = Vec::new();
        for m in bin {
            let listed = entries.get(&m.manifest_path).ok_or_else(|| {
                Error::internal(format!("entries of {} not read", m.manifest_path))
            })?;
            out.extend(
                listed
                    .iter()
                    .filter(|e| e.status.is_live())
                    .map(ManifestEntry::existing),
            );
            replaced.insert(m.manifest_path.clone());
        }
        manifests.push(NewManifest {
            spec_id: bin[0].partition_spec_id,
            entries: out,
        });
    }
    Ok(Replace {
        positions: None,
        kind: ReplaceKind::MergeManifests,
        replaced,
        manifests,
        added_bytes: 0,
    })
}

/// The replace of a compaction: the data files `removed` (paths) become
/// `added`, written with spec `spec_id`. `entries` holds the entries of every
/// current manifest listing a removed file; those manifests are rewritten
/// into one, with the removed files DELETED, the others EXISTING and the new
/// file ADDED.
pub fn compaction_replace(
    snapshot_id: i64,
    spec_id: i32,
    removed: &BTreeSet<String>,
    added: Vec<DataFile>,
    entries: &BTreeMap<String, Vec<ManifestEntry>>,
) -> Result<Replace> {
    let mut out = Vec::new();
    let mut replaced = BTreeSet::new();
    let mut found = BTreeSet::new();
    for (path, listed) in entries {
        if !listed
            .iter()
            .any(|e| e.status.is_live() && removed.contains(&e.file.file_path))
        {
            continue;
        }
        replaced.insert(path.clone());
        for e in listed.iter().filter(|e| e.status.is_live()) {
            if removed.contains(&e.file.file_path) {
                found.insert(e.file.file_path.clone());
                out.push(e.deleted(snapshot_id));
            } else {
                out.push(e.existing());
            }
        }
    }
    if found.len() != removed.len() {
        return Err(lake_error("a file to compact is no longer in the table"));
    }
    let added_bytes = added.iter().map(|f| f.file_size_in_bytes as u64).sum();
    out.extend(
        added
            .into_iter()
            .map(|f| ManifestEntry::added(snapshot_id, f)),
    );
    Ok(Replace {
        positions: None,
        kind: ReplaceKind::Compaction,
        replaced,
        manifests: vec![NewManifest {
            spec_id,
            entries: out,
        }],
        added_bytes,
    })
}
/// The compaction of a current-state table: [`compaction_replace`] of the
/// data files, whose position deletes the new file has applied, plus the
/// table's delete manifests (`delete_entries`, by manifest path) rewritten
/// into one with the removed files' delete files DELETED. The new snapshot
/// is at row positions `positions` (its own id).
pub fn current_compaction_replace(
    snapshot_id: i64,
    spec_id: i32,
    removed: &BTreeSet<String>,
    added: DataFile,
    entries: &BTreeMap<String, Vec<ManifestEntry>>,
    delete_entries: &BTreeMap<String, Vec<ManifestEntry>>,
) -> Result<Replace> {
    let mut replace = compaction_replace(snapshot_id, spec_id, removed, vec![added], entries)?;
    let mut out = Vec::new();
    for (path, listed) in delete_entries {
        replace.replaced.insert(path.clone());
        for e in listed.iter().filter(|e| e.status.is_live()) {
            match super::current::referenced_file(&e.file) {
                Some(f) if removed.contains(&f) => out.push(e.deleted(snapshot_id)),
                _ => out.push(e.existing()),
            }
        }
    }
    if !out.is_empty() {
        replace.manifests.push(NewManifest {
            spec_id,
            entries: out,
        });
    }
    replace.positions = Some(snapshot_id);
    Ok(replace)
}
