//! Table maintenance, run by DoLake itself between flushes (issue 10).
//!
//! A table that receives a commit every 30 s gains ~2,880 snapshots, manifests
//! and small data files a day. [`run`] keeps it healthy, per table, in this
//! order, each step a commit of its own through the same ports and the same
//! conditional metadata put as a flush:
//!
//! 1. **compaction**: small data files of a partition are rewritten into files
//!    near the target size, streamed row group by row group (multipart upload
//!    for large outputs), committed as a `replace` snapshot;
//! 2. **manifest merging**: when the current snapshot lists more than
//!    `manifestMergeMinCount` manifests, the small ones are merged (`replace`);
//! 3. **snapshot expiry**: snapshots past the age and count policy go (never
//!    the current one, a ref's, or the chain to the buffer marks), then the
//!    files only they referenced are deleted;
//! 4. **orphan cleanup**: objects under the table's prefix that no live
//!    snapshot or metadata file references and that are older than
//!    `orphanMinAgeMs` are deleted (leftovers of crashed or lost commits).
//!
//! # Why a crash anywhere is harmless
//! Maintenance never changes rows: `plan_replace` refuses a plan whose live
//! rows differ. Every commit puts new objects first and the metadata last,
//! only if absent; a crash before it leaves unreferenced objects (found by
//! orphan cleanup later), a crash after it leaves a complete commit. Deletes
//! come only after the commit that unreferenced the files, leaves first, and
//! only of files no live snapshot references (computed from the committed
//! state); a crash in between leaves unreferenced files, again for orphan
//! cleanup. Replace snapshots carry the parent's buffer marks, so the flush's
//! exactly-once bookkeeping reads the same after maintenance.
//! `crash_tests::maintenance` crashes every operation of every kind.

use std::collections::{BTreeMap, BTreeSet};

use super::TableRef;
use crate::error::{Error, ErrorKind, Result};
use crate::lake::changelog::ROW_ID;
use crate::lake::compact::{compactable, plan_bins, CompactPolicy, Rewriter};
use crate::lake::current::{IndexChange, RowLoc};
use crate::lake::parquet::ParquetSettings;
use crate::lake::rewrite::current_compaction_replace;
use crate::lake::rewrite::{compaction_replace, merge_bins, merge_replace};
use crate::lake::TableKind;
use crate::lake::{
    plan_expire, plan_replace, read_manifest, read_manifest_list, ExpirePolicy, ManifestEntry,
    ManifestFile, MergePolicy, TableMetadata, TablePaths, TableState,
};

use super::ports::{ObjectStore, Part, RowIndex};
use super::procedure::{load_ref, put_commit, Env, Loaded, Outcome, Settings};

/// R2's smallest multipart part (all parts but the last): 5 MiB.
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

/// What maintenance does (from `DOLAKE_CONFIG.maintenance`).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Snapshot expiry.
    pub expire: ExpirePolicy,
    /// Most snapshots kept whatever their age (a table committed every 30 s
    /// would otherwise keep ~20,000 in 7 days); never below
    /// `expire.min_snapshots_to_keep`.
    pub max_snapshots: usize,
    /// Manifest merging.
    pub merge: MergePolicy,
    /// Compaction; `None` turns it off.
    pub compact: Option<CompactPolicy>,
    /// Objects younger than this are never orphans (a commit in flight).
    pub orphan_min_age_ms: i64,
    /// Bytes per multipart part of a compacted file (R2 wants at least
    /// [`MIN_PART_BYTES`] for every part but the last).
    pub part_bytes: usize,
    /// Most compaction groups per table per run (each is one commit).
    pub max_compactions: usize,
    /// Look for orphans in this run (it reads every live snapshot's
    /// manifest list, so the caller runs it less often than the rest).
    pub scan_orphans: bool,
}

/// Most bytes of one data file compaction takes as input: an input is read
/// whole into the isolate (128 MB), and flushes write files of 16 MiB.
pub const MAX_INPUT_FILE_BYTES: u64 = 16 * 1024 * 1024;

impl Policy {
    /// The policy of `DOLAKE_CONFIG.maintenance`.
    pub fn from_config(c: &crate::config::MaintenanceConfig) -> Self {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let count = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Self {
            expire: ExpirePolicy {
                max_snapshot_age_ms: clamp(c.snapshot_max_age_ms),
                min_snapshots_to_keep: count(c.min_snapshots_to_keep),
                max_metadata_log: crate::lake::commit::METADATA_LOG_MAX,
            },
            max_snapshots: count(c.max_snapshots_to_keep),
            merge: MergePolicy {
                min_count_to_merge: count(c.manifest_merge_min_count),
                target_manifest_bytes: c.target_manifest_bytes,
            },
            compact: c.compaction_enabled.then_some(CompactPolicy {
                target_file_bytes: c.target_file_bytes,
            }),
            orphan_min_age_ms: clamp(c.orphan_min_age_ms),
            part_bytes: MIN_PART_BYTES.max(8 * 1024 * 1024),
            max_compactions: 16,
            scan_orphans: true,
        }
    }
}

/// The shape of a table after maintenance, for `/status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableHealth {
    /// Snapshots in the metadata.
    pub snapshots: u64,
    /// Manifests in the current snapshot.
    pub manifests: u64,
    /// Live data files.
    pub data_files: u64,
    /// Their total size.
    pub data_bytes: u64,
    /// Size of the current `metadata.json`.
    pub metadata_bytes: u64,
    /// The current metadata version.
    pub version: u64,
}

impl TableHealth {
    /// Mean size of a live data file (0 without files).
    pub fn mean_file_bytes(&self) -> u64 {
        self.data_bytes.checked_div(self.data_files).unwrap_or(0)
    }

    fn of(state: &TableState) -> Self {
        let summary = |k: &str| -> u64 {
            state
                .metadata
                .current_snapshot()
                .and_then(|s| s.summary.get(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Self {
            snapshots: state.metadata.snapshots.len() as u64,
            manifests: state.manifests.len() as u64,
            data_files: state
                .manifests
                .iter()
                .filter(|m| m.content == 0)
                .map(|m| (m.added_files_count + m.existing_files_count).max(0) as u64)
                .sum(),
            data_bytes: summary("total-files-size"),
            metadata_bytes: state.metadata.to_json().len() as u64,
            version: state.version,
        }
    }
}

/// What one table's maintenance did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableReport {
    /// Data files rewritten by compaction.
    pub files_compacted: u64,
    /// Files compaction wrote.
    pub files_written: u64,
    /// Manifests merged away.
    pub manifests_merged: u64,
    /// Snapshots expired.
    pub snapshots_expired: u64,
    /// Objects deleted after expiry (data files, manifests, lists, metadata).
    pub files_deleted: u64,
    /// Orphans deleted.
    pub orphans_deleted: u64,
    /// Commits made.
    pub commits: u64,
    /// The table after maintenance (absent when it could not be loaded).
    pub health: Option<TableHealth>,
    /// Why the table was skipped or stopped early.
    pub error: Option<String>,
    /// When this run started, Unix ms (set when recorded).
    #[serde(default)]
    pub ran_ms: Option<i64>,
}

/// What a maintenance run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Per table.
    pub tables: BTreeMap<String, TableReport>,
    /// The time budget ran out: run again soon.
    pub more: bool,
}

/// Maintains `tables`, each in the order of the module docs, until done or
/// out of time. A table whose step fails keeps the error in its report; the
/// others go on.
pub async fn run<O: ObjectStore, I: RowIndex, E: Env>(
    objects: &O,
    index: &I,
    env: &E,
    settings: &Settings<'_>,
    policy: &Policy,
    tables: &[TableRef],
) -> Report {
    let start = env.now();
    let mut report = Report::default();
    for table in tables {
        if env.now() - start >= settings.time_budget_ms {
            report.more = true;
            break;
        }
        let mut r = TableReport::default();
        let result = maintain(objects, index, env, settings, policy, table, start, &mut r).await;
        match result {
            Ok(Done::All) => {}
            Ok(Done::OutOfTime) => report.more = true,
            Err(e) => r.error = Some(e.message().to_string()),
        }
        report.tables.insert(table.label(settings.config), r);
    }
    report
}

enum Done {
    All,
    OutOfTime,
}

struct Table<'a> {
    name: &'a TableRef,
    paths: TablePaths,
    state: TableState,
}

async fn reload<O: ObjectStore>(
    objects: &O,
    settings: &Settings<'_>,
    name: &TableRef,
) -> Result<Option<TableState>> {
    let mut scratch = Outcome::default();
    match load_ref(objects, settings, name, &mut scratch).await? {
        Loaded::Ready(state) => Ok(Some(*state)),
        Loaded::Missing => Ok(None),
        Loaded::Unwritable(why) => Err(Error::new(
            ErrorKind::Lake,
            format!(
                "table {} cannot be maintained: {why}",
                name.label(settings.config)
            ),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
async fn maintain<O: ObjectStore, I: RowIndex, E: Env>(
    objects: &O,
    index: &I,
    env: &E,
    settings: &Settings<'_>,
    policy: &Policy,
    name: &TableRef,
    start: i64,
    r: &mut TableReport,
) -> Result<Done> {
    let Some(state) = reload(objects, settings, name).await? else {
        return Ok(Done::All);
    };
    let mut t = Table {
        name,
        paths: name.paths(settings.config)?,
        state,
    };
    let out_of_time = |env: &E| env.now() - start >= settings.time_budget_ms;

    if name.kind == TableKind::CurrentState {
        // The row index must agree with the table before rows move.
        super::current::sync(objects, index, &t.paths, &name.name, Some(&t.state)).await?;
    }
    if let Some(compact) = &policy.compact {
        // Manifest entries read once; each compaction reads only the manifest
        // it wrote.
        let mut entries = BTreeMap::new();
        for _ in 0..policy.max_compactions {
            if out_of_time(env) {
                r.health = Some(TableHealth::of(&t.state));
                return Ok(Done::OutOfTime);
            }
            if !compact_one(
                objects,
                index,
                env,
                settings,
                policy,
                compact,
                &mut t,
                &mut entries,
                r,
            )
            .await?
            {
                break;
            }
        }
    }
    if out_of_time(env) {
        r.health = Some(TableHealth::of(&t.state));
        return Ok(Done::OutOfTime);
    }
    merge(objects, env, policy, &mut t, r).await?;
    if out_of_time(env) {
        r.health = Some(TableHealth::of(&t.state));
        return Ok(Done::OutOfTime);
    }
    expire(objects, env, policy, &mut t, r).await?;
    if out_of_time(env) {
        r.health = Some(TableHealth::of(&t.state));
        return Ok(Done::OutOfTime);
    }
    if policy.scan_orphans {
        orphans(objects, env, policy, &t, r).await?;
    }
    r.health = Some(TableHealth::of(&t.state));
    Ok(Done::All)
}

/// The entries of each manifest in `manifests`, read from the store.
async fn read_entries<O: ObjectStore>(
    objects: &O,
    paths: &TablePaths,
    location: &str,
    manifests: &[ManifestFile],
) -> Result<BTreeMap<String, Vec<ManifestEntry>>> {
    let mut out = BTreeMap::new();
    for m in manifests {
        let key = paths
            .key_for_location(location, &m.manifest_path)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Lake,
                    format!("manifest {} is outside the table", m.manifest_path),
                )
            })?;
        let bytes = objects
            .get(&key)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::Lake, format!("manifest {key} is missing")))?;
        out.insert(m.manifest_path.clone(), read_manifest(&bytes, m)?);
    }
    Ok(out)
}

fn location(metadata: &TableMetadata) -> String {
    metadata.location.trim_end_matches('/').to_string()
}

/// Puts a planned maintenance commit and adopts its state.
async fn commit<O: ObjectStore>(
    objects: &O,
    t: &mut Table<'_>,
    c: crate::lake::Commit,
    r: &mut TableReport,
) -> Result<()> {
    let mut scratch = Outcome::default();
    put_commit(objects, c.puts, &t.name.name, &mut scratch).await?;
    t.state = c.state;
    r.commits += 1;
    Ok(())
}

/// Compacts one group of small files; `false` when there is none.
/// `entries` caches the entries of the current data manifests, by path.
#[allow(clippy::too_many_arguments)]
async fn compact_one<O: ObjectStore, I: RowIndex, E: Env>(
    objects: &O,
    index: &I,
    env: &E,
    settings: &Settings<'_>,
    policy: &Policy,
    compact: &CompactPolicy,
    t: &mut Table<'_>,
    entries: &mut BTreeMap<String, Vec<ManifestEntry>>,
    r: &mut TableReport,
) -> Result<bool> {
    let loc = location(&t.state.metadata);
    let data: Vec<ManifestFile> = t
        .state
        .manifests
        .iter()
        .filter(|m| m.content == 0)
        .cloned()
        .collect();
    entries.retain(|path, _| data.iter().any(|m| &m.manifest_path == path));
    let missing: Vec<ManifestFile> = data
        .iter()
        .filter(|m| !entries.contains_key(&m.manifest_path))
        .cloned()
        .collect();
    entries.extend(read_entries(objects, &t.paths, &loc, &missing).await?);
    let entries = &*entries;
    let spec_of: BTreeMap<&str, i32> = data
        .iter()
        .map(|m| (m.manifest_path.as_str(), m.partition_spec_id))
        .collect();
    let live: Vec<(i32, &ManifestEntry)> = entries
        .iter()
        .flat_map(|(path, es)| {
            let spec = spec_of[path.as_str()];
            es.iter()
                .filter(|e| e.status.is_live())
                .map(move |e| (spec, e))
        })
        .collect();
    let files: Vec<(i32, &crate::lake::avro::DataFile)> = live
        .iter()
        .filter(|(_, e)| e.file.file_size_in_bytes.max(0) as u64 <= MAX_INPUT_FILE_BYTES)
        .map(|(s, e)| (*s, &e.file))
        .collect();
    let Some(bin) = plan_bins(&files, compact).into_iter().next() else {
        return Ok(false);
    };
    if !t.state.metadata.current_schema().is_some_and(compactable) {
        return Ok(false);
    }
    let spec_id = files[bin[0]].0;
    let schema = t
        .state
        .metadata
        .current_schema()
        .ok_or_else(|| Error::new(ErrorKind::Lake, "the table has no current schema"))?;
    let parquet = ParquetSettings {
        compression: settings.config.parquet_compression,
        row_group_size: usize::try_from(settings.config.parquet_row_group_size)
            .unwrap_or(usize::MAX),
        target_file_size: compact.target_file_bytes as usize,
    };
    let ids = env.commit_ids(env.now());
    let first = &files[bin[0]].1.file_path;
    let dir = first.rsplit_once('/').map(|(d, _)| d).unwrap_or(&loc);
    let file_path = format!("{dir}/{}-c00000.parquet", ids.commit_uuid);
    let key = t
        .paths
        .key_for_location(&loc, &file_path)
        .ok_or_else(|| Error::new(ErrorKind::Lake, format!("{file_path} is outside the table")))?;

    // A current-state table's files are rewritten with their deletes
    // applied; the row index follows the rows kept.
    let current = t.name.kind == TableKind::CurrentState;
    // Their deleted positions from the row index, which `maintain` synced
    // with the table.
    let deleted = if current {
        let inputs: Vec<&str> = bin.iter().map(|&i| files[i].1.file_path.as_str()).collect();
        index.deleted(&t.name.name, &inputs)?
    } else {
        BTreeMap::new()
    };
    let none = roaring::RoaringBitmap::new();
    let mut moved: Vec<String> = Vec::new();
    let mut rewriter = if current {
        Rewriter::with_exact_stats(schema, &parquet)?
    } else {
        Rewriter::new(schema, &parquet)?
    };
    let mut upload: Option<(String, Vec<Part>)> = None;
    for &i in &bin {
        let file = files[i].1;
        let input_key = t
            .paths
            .key_for_location(&loc, &file.file_path)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Lake,
                    format!("{} is outside the table", file.file_path),
                )
            })?;
        let bytes = objects.get(&input_key).await?.ok_or_else(|| {
            Error::new(ErrorKind::Lake, format!("data file {input_key} is missing"))
        })?;
        if current {
            let gone = deleted.get(&file.file_path).unwrap_or(&none);
            moved.extend(rewriter.push_live(bytes, file, gone, ROW_ID)?);
        } else {
            rewriter.push_file(bytes, file)?;
        }
        while let Some(part) = rewriter.take_part(policy.part_bytes) {
            let (id, parts) = match &mut upload {
                Some(u) => u,
                None => upload.insert((objects.multipart_start(&key).await?, Vec::new())),
            };
            let n = parts.len() as u16 + 1;
            parts.push(objects.multipart_part(&key, id, n, part).await?);
        }
    }
    let partition = files[bin[0]].1.partition.clone();
    let (last, data_file) = rewriter.finish(file_path, partition)?;
    match upload {
        None => {
            objects.put(&key, last, false).await?;
        }
        Some((id, mut parts)) => {
            let n = parts.len() as u16 + 1;
            parts.push(objects.multipart_part(&key, &id, n, last).await?);
            objects.multipart_complete(&key, &id, parts).await?;
        }
    }
    objects.step_done(super::faults::CommitStep::Data).await?;
    let removed: BTreeSet<String> = bin.iter().map(|&i| files[i].1.file_path.clone()).collect();
    if !current {
        let replace =
            compaction_replace(ids.snapshot_id, spec_id, &removed, vec![data_file], entries)?;
        let c = plan_replace(&t.state, &t.paths, &ids, replace)?;
        commit(objects, t, c, r).await?;
    } else {
        let delete_manifests: Vec<ManifestFile> = t
            .state
            .manifests
            .iter()
            .filter(|m| m.content == 1)
            .cloned()
            .collect();
        let delete_entries = read_entries(objects, &t.paths, &loc, &delete_manifests).await?;
        let new_file = data_file.file_path.clone();
        let replace = current_compaction_replace(
            ids.snapshot_id,
            spec_id,
            &removed,
            data_file,
            entries,
            &delete_entries,
        )?;
        let c = plan_replace(&t.state, &t.paths, &ids, replace)?;
        let mut change = IndexChange {
            positions_id: Some(ids.snapshot_id),
            dropped_files: removed.iter().cloned().collect(),
            ..IndexChange::default()
        };
        change
            .files
            .insert(new_file.clone(), roaring::RoaringBitmap::new());
        for (pos, key) in moved.into_iter().enumerate() {
            let pos = u32::try_from(pos)
                .map_err(|_| Error::internal("a compacted file of more than 2^32 rows"))?;
            let loc = RowLoc {
                file: new_file.clone(),
                pos,
            };
            change.rows.push((key, Some(loc)));
        }
        // Staged before the commit point, applied after (`flush::current`).
        index.stage(&t.name.name, &change)?;
        commit(objects, t, c, r).await?;
        index.apply_staged(&t.name.name)?;
    }
    r.files_compacted += removed.len() as u64;
    r.files_written += 1;
    Ok(true)
}

async fn merge<O: ObjectStore, E: Env>(
    objects: &O,
    env: &E,
    policy: &Policy,
    t: &mut Table<'_>,
    r: &mut TableReport,
) -> Result<()> {
    let Some(bins) = merge_bins(&t.state, &policy.merge) else {
        return Ok(());
    };
    let loc = location(&t.state.metadata);
    let listed: Vec<ManifestFile> = bins.iter().flatten().cloned().collect();
    let entries = read_entries(objects, &t.paths, &loc, &listed).await?;
    let replace = merge_replace(&bins, &entries)?;
    let merged = replace.replaced.len() as u64;
    let c = plan_replace(&t.state, &t.paths, &env.commit_ids(env.now()), replace)?;
    commit(objects, t, c, r).await?;
    r.manifests_merged += merged;
    Ok(())
}

/// Everything the live snapshots of `state` reference, as object keys.
#[derive(Default)]
struct Live {
    lists: BTreeSet<String>,
    manifests: BTreeSet<String>,
    data: BTreeSet<String>,
}

/// What the snapshots `ids` of `state` reference (every live snapshot for
/// orphan cleanup; the boundary snapshots after an expiry, see
/// [`boundary`]).
async fn live_set<O: ObjectStore>(
    objects: &O,
    paths: &TablePaths,
    state: &TableState,
    ids: &BTreeSet<i64>,
) -> Result<Live> {
    let loc = location(&state.metadata);
    let mut live = Live::default();
    let mut manifests: BTreeMap<String, ManifestFile> = BTreeMap::new();
    for s in state
        .metadata
        .snapshots
        .iter()
        .filter(|s| ids.contains(&s.snapshot_id))
    {
        let Some(key) = paths.key_for_location(&loc, &s.manifest_list) else {
            continue;
        };
        if !live.lists.insert(key.clone()) {
            continue;
        }
        let bytes = objects.get(&key).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::Lake,
                format!("manifest list {key} of a live snapshot is missing"),
            )
        })?;
        for m in read_manifest_list(&bytes)? {
            manifests.entry(m.manifest_path.clone()).or_insert(m);
        }
    }
    for m in manifests.values() {
        let Some(key) = paths.key_for_location(&loc, &m.manifest_path) else {
            continue;
        };
        let bytes = objects.get(&key).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::Lake,
                format!("manifest {key} of a live snapshot is missing"),
            )
        })?;
        for e in read_manifest(&bytes, m)? {
            // A DELETED entry's file is live only through older snapshots'
            // manifests, which are read too when they are live.
            if e.status.is_live() {
                if let Some(k) = paths.key_for_location(&loc, &e.file.file_path) {
                    live.data.insert(k);
                }
            }
        }
        live.manifests.insert(key);
    }
    Ok(live)
}

async fn expire<O: ObjectStore, E: Env>(
    objects: &O,
    env: &E,
    policy: &Policy,
    t: &mut Table<'_>,
    r: &mut TableReport,
) -> Result<()> {
    let now = env.now();
    let mut expire_policy = policy.expire;
    // The count ceiling: keep at most `max_snapshots` (by shortening the age
    // so that only the newest that many are young enough).
    let mut times: Vec<i64> = t
        .state
        .metadata
        .snapshots
        .iter()
        .map(|s| s.timestamp_ms)
        .collect();
    let ceiling = policy
        .max_snapshots
        .max(expire_policy.min_snapshots_to_keep);
    if times.len() > ceiling {
        times.sort_unstable_by(|a, b| b.cmp(a));
        let newest_dropped = times[ceiling];
        expire_policy.max_snapshot_age_ms = expire_policy
            .max_snapshot_age_ms
            .min(now - newest_dropped - 1)
            .max(0);
    }
    let Some(expiry) = plan_expire(&t.state, &t.paths, now, &expire_policy)? else {
        return Ok(());
    };
    let loc = location(&t.state.metadata);
    // The lists of expired snapshots, read before the commit (their
    // manifests are the candidates for deletion).
    let mut candidates: BTreeMap<String, ManifestFile> = BTreeMap::new();
    for key in &expiry.expired_manifest_lists {
        if let Some(bytes) = objects.get(key).await? {
            for m in read_manifest_list(&bytes)? {
                candidates.entry(m.manifest_path.clone()).or_insert(m);
            }
        }
    }
    let expired = expiry.expired_snapshot_ids.len() as u64;
    let linear = on_current_ancestry(&t.state.metadata, &expiry.expired_snapshot_ids);
    commit(objects, t, expiry.commit, r).await?;
    r.snapshots_expired += expired;

    // Leaves first: data files, manifests, manifest lists, metadata files.
    let readers = if linear {
        boundary(&t.state.metadata)
    } else {
        t.state
            .metadata
            .snapshots
            .iter()
            .map(|s| s.snapshot_id)
            .collect()
    };
    let live = live_set(objects, &t.paths, &t.state, &readers).await?;
    let live_lists: BTreeSet<String> = t
        .state
        .metadata
        .snapshots
        .iter()
        .filter_map(|s| t.paths.key_for_location(&loc, &s.manifest_list))
        .collect();
    let mut data = BTreeSet::new();
    let mut manifests = BTreeSet::new();
    for m in candidates.values() {
        let Some(key) = t.paths.key_for_location(&loc, &m.manifest_path) else {
            continue;
        };
        if live.manifests.contains(&key) {
            continue;
        }
        if let Some(bytes) = objects.get(&key).await? {
            for e in read_manifest(&bytes, m)? {
                if let Some(k) = t.paths.key_for_location(&loc, &e.file.file_path) {
                    if !live.data.contains(&k) {
                        data.insert(k);
                    }
                }
            }
        }
        manifests.insert(key);
    }
    let lists = expiry
        .expired_manifest_lists
        .iter()
        .filter(|k| !live_lists.contains(*k));
    let keys: Vec<&String> = data
        .iter()
        .chain(&manifests)
        .chain(lists)
        .chain(&expiry.expired_metadata_files)
        .collect();
    for key in keys {
        objects.delete(key).await?;
        r.files_deleted += 1;
    }
    Ok(())
}

/// Deletes what no live snapshot or metadata file references, older than
/// the policy's minimum age.
async fn orphans<O: ObjectStore, E: Env>(
    objects: &O,
    env: &E,
    policy: &Policy,
    t: &Table<'_>,
    r: &mut TableReport,
) -> Result<()> {
    let every: BTreeSet<i64> = t
        .state
        .metadata
        .snapshots
        .iter()
        .map(|s| s.snapshot_id)
        .collect();
    let live = live_set(objects, &t.paths, &t.state, &every).await?;
    let loc = location(&t.state.metadata);
    let mut keep: BTreeSet<String> = live.lists;
    keep.extend(live.manifests);
    keep.extend(live.data);
    keep.insert(t.paths.version_hint_key());
    keep.insert(t.paths.metadata_key(t.state.version));
    for e in &t.state.metadata.metadata_log {
        if let Some(k) = t.paths.key_for_location(&loc, &e.metadata_file) {
            keep.insert(k);
        }
    }
    let cutoff = env.now() - policy.orphan_min_age_ms.max(0);
    for dir in ["data/", "metadata/"] {
        let prefix = format!("{}/{dir}", t.paths.prefix());
        for object in objects.list(&prefix).await? {
            if object.uploaded_ms >= cutoff || keep.contains(&object.key) {
                continue;
            }
            // Metadata files newer than the current version belong to a
            // commit that is landing right now.
            if let Some(v) = metadata_version(&object.key) {
                if v > t.state.version {
                    continue;
                }
            }
            objects.delete(&object.key).await?;
            r.orphans_deleted += 1;
        }
    }
    Ok(())
}

/// Whether every snapshot of `ids` is an ancestor of the current snapshot
/// of `metadata` (DoLake's own history is one chain).
fn on_current_ancestry(metadata: &TableMetadata, ids: &[i64]) -> bool {
    let mut chain = BTreeSet::new();
    let mut id = metadata.current_snapshot_id;
    while let Some(s) = id.and_then(|id| metadata.snapshot(id)) {
        if !chain.insert(s.snapshot_id) {
            break; // a cycle
        }
        id = s.parent_snapshot_id;
    }
    ids.iter().all(|id| chain.contains(id))
}

/// After an expiry of snapshots that were all ancestors of the current one:
/// the live snapshots whose parent is gone. A manifest or data file, once
/// removed from a snapshot, is never listed again by a later one (rewrites
/// write new files), so a file that an expired snapshot and a live one both
/// list is listed by every snapshot between them, and so by the boundary
/// snapshot that follows the expired ones. Reading the boundary's manifests
/// (usually one snapshot's) tells which expired files are still live,
/// instead of reading every live snapshot's manifest list.
fn boundary(metadata: &TableMetadata) -> BTreeSet<i64> {
    let live: BTreeSet<i64> = metadata.snapshots.iter().map(|s| s.snapshot_id).collect();
    metadata
        .snapshots
        .iter()
        .filter(|s| s.parent_snapshot_id.is_none_or(|p| !live.contains(&p)))
        .map(|s| s.snapshot_id)
        .collect()
}

fn metadata_version(key: &str) -> Option<u64> {
    key.rsplit_once("/v")?
        .1
        .strip_suffix(".metadata.json")?
        .parse()
        .ok()
}
