//! The flush procedure: buffered batches -> Iceberg commits, exactly once.
//!
//! [`run`] performs a whole flush over the two ports (the buffer, the object
//! store) in bounded steps. Each step takes the oldest batches up to
//! [`Settings::step_budget_bytes`], loads every affected table, plans each
//! table's commit (leaving out what the table's mark says it holds), commits
//! the events no table can take to the dead-letter table, then commits each
//! table, and only then deletes the batches. A crash or a failure anywhere
//! leaves the batches buffered; the next attempt skips, per table, what that
//! table's mark says it already holds (see the module docs of `flush`).
//!
//! Nothing an event holds can block a flush: an event the lake cannot write
//! (found by the lake's own rule, or by planning the table without it) goes
//! whole into the dead-letter table with the reason; so do the events of a
//! table whose metadata DoLake cannot extend. Only the object store failing
//! (or another writer winning the commit race) fails a flush, and that is
//! retried with backoff.

use std::collections::BTreeMap;

use crate::config::DoLakeConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::lake::{
    plan_commit_with_marks, ChangeEvent, Commit, CommitIds, ObjectKind, PutObject, TableMetadata,
    TableState, WriteOptions,
};

use super::current::{lookups, sync, Synced};
use super::faults::CommitStep;
use super::ports::{Buffer, ObjectStore, Put, RowIndex};
use super::{buffer_mark, buffer_mark_key, chunk_len, plan_step, TableRef, TableWork};
use crate::lake::current::{plan_current_commit, CurrentCommit, CurrentCounts, Lookups};
use crate::lake::TableKind;

/// Most batches listed per step.
const LIST_LIMIT: u32 = 100_000;

/// Most snapshots walked back from the current one to find a mark.
const MAX_ANCESTRY: usize = 100_000;

/// How the flush runs.
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    /// The active configuration.
    pub config: &'a DoLakeConfig,
    /// This buffer's epoch (see the module docs of `flush`).
    pub epoch: &'a str,
    /// Most bytes of buffered JSON one step loads (bounds memory).
    pub step_budget_bytes: u64,
    /// Bound on one Parquet data file.
    pub target_file_bytes: usize,
    /// No new table commit starts after this long; the flush goes on later.
    pub time_budget_ms: i64,
}

/// The clock and the random ids of commits.
pub trait Env {
    /// Now, Unix ms.
    fn now(&self) -> i64;
    /// Fresh ids for one commit at `now` (a new uuid every call).
    fn commit_ids(&self, now: i64) -> CommitIds;
}

/// What a flush did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Batches removed from the buffer.
    pub batches_flushed: u64,
    /// Events written to their tables.
    pub events_flushed: u64,
    /// Events written to the dead-letter table.
    pub events_rejected: u64,
    /// Bytes put.
    pub bytes_written: u64,
    /// Keys put.
    pub paths: Vec<String>,
    /// Values that went to `_cdc_overflow` (type conflicts), per table.
    pub overflow: BTreeMap<String, u64>,
    /// Lagging `version-hint.text` files rewritten.
    pub hints_repaired: u64,
    /// The flush stopped at its time budget with batches left.
    pub more: bool,
    /// Why it failed, if it did (what was done before stays done).
    pub error: Option<Error>,
    /// Tables whose events were dead-lettered because their metadata cannot
    /// be extended, with the reason.
    pub unwritable_tables: BTreeMap<String, String>,
    /// Tables committed to (the dead-letter table included).
    pub committed_tables: std::collections::BTreeSet<TableRef>,
    /// What the current-state commits counted, over the flush.
    pub current: CurrentCounts,
    /// Row indexes synced with their tables other than by being current
    /// (a staged change applied or discarded, a rebuild).
    pub index_repairs: u64,
}

impl Outcome {
    /// The guide's `FlushResult` of this outcome.
    pub fn to_result(&self, duration_ms: u64, used_fallback: bool) -> crate::protocol::FlushResult {
        crate::protocol::FlushResult {
            success: self.error.is_none(),
            batches_flushed: self.batches_flushed,
            events_flushed: self.events_flushed,
            bytes_written: self.bytes_written,
            paths: self.paths.clone(),
            duration_ms,
            used_fallback,
            error: self.error.as_ref().map(|e| e.message().to_string()),
            complete: self.error.is_none() && !self.more,
            events_rejected: self.events_rejected,
        }
    }
}

/// Runs a flush until the buffer is empty, the time budget is used, or a
/// step fails.
pub async fn run<B: Buffer, O: ObjectStore, I: RowIndex, E: Env>(
    buffer: &B,
    objects: &O,
    index: &I,
    env: &E,
    settings: &Settings<'_>,
) -> Outcome {
    let start = env.now();
    let mut out = Outcome::default();
    let ports = Ports {
        objects,
        index,
        env,
        settings,
    };
    loop {
        match step(buffer, &ports, start, &mut out).await {
            Ok(StepEnd::Empty) => return out,
            Ok(StepEnd::Done) if env.now() - start >= settings.time_budget_ms => {
                out.more = true;
                return out;
            }
            Ok(StepEnd::Done) => {}
            Ok(StepEnd::OutOfTime) => {
                out.more = true;
                return out;
            }
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        }
    }
}

enum StepEnd {
    /// The buffer was empty.
    Empty,
    /// A step's batches are committed and deleted.
    Done,
    /// The time budget ran out in the middle of a step; nothing deleted.
    OutOfTime,
}

/// A table as loaded for a step.
pub(super) enum Loaded {
    /// Not created yet.
    Missing,
    /// Its current state.
    Ready(Box<TableState>),
    /// Its metadata exists but DoLake cannot extend it (why).
    Unwritable(String),
}

impl Loaded {
    pub(super) fn state(&self) -> Option<&TableState> {
        match self {
            Loaded::Ready(s) => Some(s),
            _ => None,
        }
    }
}

/// The ports and settings a flush step works with.
struct Ports<'a, O, I, E> {
    objects: &'a O,
    index: &'a I,
    env: &'a E,
    settings: &'a Settings<'a>,
}

/// A table's planned commit.
enum Planned {
    Changelog(TableRef, Box<Commit>),
    Current(TableRef, Box<CurrentCommit>),
}

async fn step<B: Buffer, O: ObjectStore, I: RowIndex, E: Env>(
    buffer: &B,
    ports: &Ports<'_, O, I, E>,
    start: i64,
    out: &mut Outcome,
) -> Result<StepEnd> {
    let Ports {
        objects,
        env,
        settings,
        ..
    } = *ports;
    let rows = buffer.list(LIST_LIMIT)?;
    if rows.is_empty() {
        return Ok(StepEnd::Empty);
    }
    let n = chunk_len(&rows, settings.step_budget_bytes);
    let (first, last) = (rows[0].row_id, rows[n - 1].row_id);
    drop(rows);
    let batches = buffer.load(first, last)?;
    let batch_count = batches.len() as u64;

    let kinds = settings.config.table_kinds;
    let mut refs: Vec<fn(&str) -> TableRef> = Vec::new();
    if kinds.changelog() {
        refs.push(TableRef::changelog);
    }
    if kinds.current_state() {
        refs.push(TableRef::current);
    }
    let mut tables: BTreeMap<TableRef, Loaded> = BTreeMap::new();
    let mut names: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for batch in &batches {
        names.extend(batch.events.iter().map(|e| e.table.as_str()));
    }
    for name in names {
        for make in &refs {
            let r = make(name);
            let loaded = load_ref(objects, settings, &r, out).await?;
            tables.insert(r, loaded);
        }
    }
    // Each row index agrees with its table before anything is planned, even
    // for tables that have nothing left to commit in this step (a crash
    // after a commit point leaves a staged change to apply).
    for (r, loaded) in &tables {
        if r.kind != TableKind::CurrentState || matches!(loaded, Loaded::Unwritable(_)) {
            continue;
        }
        let paths = r.paths(settings.config)?;
        if sync(objects, ports.index, &paths, &r.name, loaded.state()).await? != Synced::Current {
            out.index_repairs += 1;
        }
    }
    let mark_of = |tables: &BTreeMap<TableRef, Loaded>, r: &TableRef| {
        mark_in_history(&tables.get(r)?.state()?.metadata, settings.epoch)
    };
    // A row is left out of the step only when every table of its CDC
    // table holds it; each table then skips what its own mark covers.
    let work = plan_step(batches, |table| {
        refs.iter()
            .map(|make| mark_of(&tables, &make(table)))
            .collect::<Option<Vec<i64>>>()?
            .into_iter()
            .min()
    });

    // Plan every table first: what no table can take is known before any
    // table commits, so the dead-letter commit can go first (a retry skips
    // committed tables and would never see their rejects again).
    let mut rejected: Vec<Rejected> = Vec::new();
    let mut commits: Vec<Planned> = Vec::new();
    for (table, mut work) in work {
        if work.events.is_empty() {
            continue;
        }
        if kinds.current_state() {
            let r = TableRef::current(&table);
            let mark = mark_of(&tables, &r);
            let loaded = tables.remove(&r).unwrap_or(Loaded::Missing);
            let from = work
                .rows
                .partition_point(|row| mark.is_some_and(|m| *row <= m));
            let planned = plan_current(ports, &r, &work, from, &loaded, out).await?;
            // Events the lake's rule refuses are dead-lettered once, by the
            // change log when there is one.
            for (i, reason, refused) in planned.rejected {
                if !refused || !kinds.changelog() {
                    rejected.push(Rejected {
                        // What the lake's rule refuses is the event's own
                        // fault; the rest is this table's.
                        table: if refused {
                            table.clone()
                        } else {
                            r.label(settings.config)
                        },
                        reason,
                        row: work.rows[i],
                        event: work.events[i].clone(),
                    });
                }
            }
            if let Some(c) = planned.commit {
                commits.push(Planned::Current(r, Box::new(c)));
            }
        }
        if !kinds.changelog() {
            continue;
        }
        let r = TableRef::changelog(&table);
        let mark = mark_of(&tables, &r);
        let loaded = tables.remove(&r).unwrap_or(Loaded::Missing);
        let from = work
            .rows
            .partition_point(|row| mark.is_some_and(|m| *row <= m));
        work.rows.drain(..from);
        work.events.drain(..from);
        if work.events.is_empty() {
            continue;
        }
        if let Loaded::Unwritable(why) = &loaded {
            out.unwritable_tables.insert(table.clone(), why.clone());
            let reason = format!("table {table} cannot be extended by DoLake: {why}");
            rejected.extend(
                work.rows
                    .into_iter()
                    .zip(work.events)
                    .map(|(row, e)| Rejected {
                        table: table.clone(),
                        reason: reason.clone(),
                        row,
                        event: e,
                    }),
            );
            continue;
        }
        let (commit, bad) = plan_table(&table, work, loaded.state(), env, settings)?;
        rejected.extend(bad);
        if let Some(commit) = commit {
            commits.push(Planned::Changelog(r, Box::new(commit)));
        }
    }

    if !rejected.is_empty() {
        commit_rejected(objects, env, settings, last, rejected, out).await?;
    }
    for (i, planned) in commits.into_iter().enumerate() {
        if i > 0 && env.now() - start >= settings.time_budget_ms {
            return Ok(StepEnd::OutOfTime);
        }
        match planned {
            Planned::Changelog(r, commit) => {
                let commit = *commit;
                let rows = commit.rows;
                let overflow = commit.overflow_total();
                put_commit(objects, commit.puts, &r.name, out).await?;
                out.committed_tables.insert(r.clone());
                out.events_flushed += rows;
                if overflow > 0 {
                    *out.overflow.entry(r.name).or_default() += overflow;
                }
            }
            Planned::Current(r, c) => {
                let CurrentCommit {
                    commit,
                    index,
                    counts,
                } = *c;
                let events = counts.events;
                // Staged before the commit point, applied after it (see
                // `flush::current`).
                ports.index.stage(&r.name, &index)?;
                put_commit(objects, commit.puts, &r.name, out).await?;
                ports.index.apply_staged(&r.name)?;
                out.committed_tables.insert(r.clone());
                out.current.add(&counts);
                if !kinds.changelog() {
                    out.events_flushed += events;
                    let overflow = commit.overflow.values().sum::<u64>();
                    if overflow > 0 {
                        *out.overflow.entry(r.label(settings.config)).or_default() += overflow;
                    }
                }
            }
        }
    }
    buffer.delete_through(last)?;
    out.batches_flushed += batch_count;
    Ok(StepEnd::Done)
}

/// An event left out of a plan: its index, the reason, and whether the
/// lake's rule refused it (rather than planning this table).
type Refused = (usize, String, bool);

/// A current-state table's plan for a step.
struct CurrentPlan {
    commit: Option<CurrentCommit>,
    /// Events left out (indexes into the work).
    rejected: Vec<Refused>,
}

/// Plans the commit of `work.events[from..]` to current-state table `r`:
/// syncs its row index with the table, looks up the rows' keys, plans.
async fn plan_current<O: ObjectStore, I: RowIndex, E: Env>(
    ports: &Ports<'_, O, I, E>,
    r: &TableRef,
    work: &TableWork,
    from: usize,
    loaded: &Loaded,
    out: &mut Outcome,
) -> Result<CurrentPlan> {
    let Ports {
        objects,
        index,
        env,
        settings,
    } = *ports;
    let mut plan = CurrentPlan {
        commit: None,
        rejected: Vec::new(),
    };
    let events = &work.events[from..];
    if events.is_empty() {
        return Ok(plan);
    }
    if let Loaded::Unwritable(why) = loaded {
        let label = r.label(settings.config);
        out.unwritable_tables.insert(label.clone(), why.clone());
        let reason = format!("table {label} cannot be extended by DoLake: {why}");
        plan.rejected = (from..work.events.len())
            .map(|i| (i, reason.clone(), false))
            .collect();
        return Ok(plan);
    }
    let paths = r.paths(settings.config)?;
    let state = loaded.state();
    let mut keys: Vec<&str> = events.iter().map(|e| e.row_id.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let looked = lookups(objects, index, &paths, &r.name, state, &keys).await?;
    let lookups = Lookups {
        locs: &looked.locs,
        deleted: &looked.deleted,
        delete_entries: &looked.delete_entries,
    };
    let mut options = WriteOptions::from_config(settings.config, &r.name);
    options.namespace = r.namespace(settings.config).to_string();
    options.target_file_size = settings.target_file_bytes;
    let marks = BTreeMap::from([(buffer_mark_key(settings.epoch), work.mark.to_string())]);
    let ids = env.commit_ids(env.now());
    let planner = |evs: &[ChangeEvent]| {
        plan_current_commit(&r.name, evs, state, &lookups, &options, &ids, &marks)
    };
    let (commit, bad) = plan_events(events, &planner)?;
    plan.commit = commit;
    plan.rejected = bad
        .into_iter()
        .map(|(i, reason, refused)| (from + i, reason, refused))
        .collect();
    Ok(plan)
}

/// Plans `events` with `plan`, leaving out the events the lake's rule
/// refuses (`true` in the rejects) and those planning fails on (`false`),
/// found by halving. Returns the plan (none when no event is left) and the
/// rejected events' indexes with the reason.
fn plan_events<C>(
    events: &[ChangeEvent],
    plan: &impl Fn(&[ChangeEvent]) -> Result<C>,
) -> Result<(Option<C>, Vec<Refused>)> {
    let mut rejected = Vec::new();
    let mut good = Vec::new();
    for (i, event) in events.iter().enumerate() {
        match writable(event) {
            Ok(()) => good.push(i),
            Err(e) => rejected.push((i, e.message().to_string(), true)),
        }
    }
    let owned: Vec<ChangeEvent>;
    let subset: &[ChangeEvent] = if good.len() == events.len() {
        events
    } else {
        owned = good.iter().map(|&i| events[i].clone()).collect();
        &owned
    };
    if subset.is_empty() {
        return Ok((None, rejected));
    }
    match plan(subset) {
        Ok(c) => return Ok((Some(c), rejected)),
        Err(e) if e.kind() != ErrorKind::InvalidFormat && e.kind() != ErrorKind::Lake => {
            return Err(e)
        }
        Err(_) => {}
    }
    let bad = failing_events(subset, plan);
    let keep: Vec<ChangeEvent> = (0..subset.len())
        .filter(|i| !bad.contains_key(i))
        .map(|i| subset[i].clone())
        .collect();
    let kept: Vec<usize> = (0..subset.len()).filter(|i| !bad.contains_key(i)).collect();
    for (i, reason) in bad {
        rejected.push((good[i], reason, false));
    }
    if keep.is_empty() {
        return Ok((None, rejected));
    }
    match plan(&keep) {
        Ok(c) => Ok((Some(c), rejected)),
        // Events that fail only together: none of them blocks the others.
        Err(e) => {
            let reason = e.message().to_string();
            rejected.extend(kept.into_iter().map(|i| (good[i], reason.clone(), false)));
            Ok((None, rejected))
        }
    }
}

/// Loads a table, repairing a lagging `version-hint.text`. Store failures are
/// errors (the flush is retried); metadata DoLake cannot read or extend makes
/// the table [`Loaded::Unwritable`].
pub(super) async fn load<O: ObjectStore>(
    objects: &O,
    settings: &Settings<'_>,
    table: &str,
    out: &mut Outcome,
) -> Result<Loaded> {
    load_ref(objects, settings, &TableRef::changelog(table), out).await
}

/// [`load`] of any table.
pub(super) async fn load_ref<O: ObjectStore>(
    objects: &O,
    settings: &Settings<'_>,
    table: &TableRef,
    out: &mut Outcome,
) -> Result<Loaded> {
    let paths = table.paths(settings.config)?;
    let hint = match objects.get(&paths.version_hint_key()).await? {
        Some(bytes) => crate::lake::parse_version_hint(&bytes).ok(),
        None => Some(0),
    };
    // A missing or unreadable hint is found again by probing from 0.
    let hinted = hint.unwrap_or(0);
    let mut version = hinted;
    while objects.exists(&paths.metadata_key(version + 1)).await? {
        version += 1;
    }
    if version == 0 {
        return Ok(Loaded::Missing);
    }
    if hint != Some(version) {
        // A crash between the metadata put and the hint put: readers that
        // follow the hint would miss the commit until the next one.
        let text = version.to_string().into_bytes();
        objects.put(&paths.version_hint_key(), text, false).await?;
        out.hints_repaired += 1;
    }
    let key = paths.metadata_key(version);
    let Some(metadata) = objects.get(&key).await? else {
        return Err(Error::new(ErrorKind::Lake, format!("{key} vanished")));
    };
    let parsed = match TableMetadata::from_json(&metadata) {
        Ok(m) => m,
        Err(e) => return Ok(Loaded::Unwritable(e.message().to_string())),
    };
    let list = match paths.manifest_list_key(&parsed) {
        Ok(Some(key)) => match objects.get(&key).await? {
            Some(bytes) => Some(bytes),
            None => {
                return Ok(Loaded::Unwritable(format!(
                    "manifest list {key} is missing"
                )))
            }
        },
        Ok(None) => None,
        Err(e) => return Ok(Loaded::Unwritable(e.message().to_string())),
    };
    let hint_text = version.to_string();
    match TableState::from_objects(hint_text.as_bytes(), &metadata, list.as_deref()) {
        Ok(state) => Ok(Loaded::Ready(Box::new(state))),
        Err(e) => Ok(Loaded::Unwritable(e.message().to_string())),
    }
}

/// The mark of buffer `epoch` in the table: the newest one found walking back
/// from the current snapshot through its ancestors (a commit by another
/// engine in between carries no mark, and must not hide ours).
pub fn mark_in_history(metadata: &TableMetadata, epoch: &str) -> Option<i64> {
    let mut id = metadata.current_snapshot_id;
    for _ in 0..MAX_ANCESTRY {
        let snapshot = metadata.snapshot(id?)?;
        if let Some(mark) = buffer_mark(&snapshot.summary, epoch) {
            return Some(mark);
        }
        id = snapshot.parent_snapshot_id;
    }
    None
}

/// An event no table can take, and why.
struct Rejected {
    table: String,
    reason: String,
    /// The buffer row the event came from.
    row: i64,
    event: ChangeEvent,
}

/// Plans one change log's commit. Events the lake's rule refuses, or
/// without which planning succeeds, are returned as rejected instead.
fn plan_table<E: Env>(
    table: &str,
    work: TableWork,
    state: Option<&TableState>,
    env: &E,
    settings: &Settings<'_>,
) -> Result<(Option<Commit>, Vec<Rejected>)> {
    let mut options = WriteOptions::from_config(settings.config, table);
    options.target_file_size = settings.target_file_bytes;
    let marks = BTreeMap::from([(buffer_mark_key(settings.epoch), work.mark.to_string())]);
    let ids = env.commit_ids(env.now());
    let plan =
        |events: &[ChangeEvent]| plan_commit_with_marks(events, state, &options, &ids, &marks);
    let (commit, bad) = plan_events(&work.events, &plan)?;
    let mut reasons: BTreeMap<usize, String> =
        bad.into_iter().map(|(i, reason, _)| (i, reason)).collect();
    let rejected = work
        .rows
        .into_iter()
        .zip(work.events)
        .enumerate()
        .filter_map(|(i, (row, event))| {
            reasons.remove(&i).map(|reason| Rejected {
                table: table.to_string(),
                reason,
                row,
                event,
            })
        })
        .collect();
    Ok((commit, rejected))
}

/// Indexes (into `events`) of the events planning fails on alone or within
/// a half that fails, with the error; bounded by `2 * bad * log2(n)` plans.
fn failing_events<C>(
    events: &[ChangeEvent],
    plan: &impl Fn(&[ChangeEvent]) -> Result<C>,
) -> BTreeMap<usize, String> {
    let mut bad = BTreeMap::new();
    let mut todo = vec![(0usize, events.len())];
    while let Some((from, to)) = todo.pop() {
        if let Err(e) = plan(&events[from..to]) {
            if to - from == 1 {
                bad.insert(from, e.message().to_string());
            } else {
                let mid = from + (to - from) / 2;
                todo.push((mid, to));
                todo.push((from, mid));
            }
        }
    }
    bad
}

/// The lake's rule for one buffered event (what intake checks too; the
/// table name and key counts were checked at intake, and the planner puts
/// what does not fit a column into `_cdc_overflow`).
fn writable(event: &ChangeEvent) -> Result<()> {
    crate::lake::limits::check_timestamp(event.timestamp_ms)?;
    crate::lake::limits::check_sequence(event.sequence)?;
    crate::lake::limits::check_metadata(event.metadata.as_ref().unwrap_or(&serde_json::Value::Null))
}

/// The event as JSON text, the shape the shard sent.
fn event_json(table: &str, e: &ChangeEvent) -> String {
    let mut o = serde_json::Map::new();
    o.insert("sequence".into(), e.sequence.into());
    o.insert("timestamp".into(), e.timestamp_ms.into());
    o.insert("operation".into(), e.operation.as_str().into());
    o.insert("table".into(), table.into());
    o.insert("rowId".into(), e.row_id.clone().into());
    if let Some(before) = &e.before {
        o.insert("before".into(), before.clone().into());
    }
    if let Some(after) = &e.after {
        o.insert("after".into(), after.clone().into());
    }
    if let Some(metadata) = &e.metadata {
        o.insert("metadata".into(), metadata.clone());
    }
    serde_json::Value::Object(o).to_string()
}

/// Commits the step's rejected events to the dead-letter table, unless its
/// mark says an earlier attempt of this step already did.
async fn commit_rejected<O: ObjectStore, E: Env>(
    objects: &O,
    env: &E,
    settings: &Settings<'_>,
    mark: i64,
    rejected: Vec<Rejected>,
    out: &mut Outcome,
) -> Result<()> {
    let table = crate::lake::REJECTED_TABLE;
    let loaded = load(objects, settings, table, out).await?;
    let state = match &loaded {
        Loaded::Unwritable(why) => {
            return Err(Error::new(
                ErrorKind::Lake,
                format!("the dead-letter table {table} cannot be extended: {why}"),
            ))
        }
        other => other.state(),
    };
    // Rows an earlier attempt already dead-lettered are left out.
    let done = state.and_then(|s| mark_in_history(&s.metadata, settings.epoch));
    let rows: Vec<crate::lake::RejectedEvent> = rejected
        .iter()
        .filter(|r| done.is_none_or(|m| r.row > m))
        .map(|r| crate::lake::RejectedEvent {
            table: r.table.clone(),
            source_id: r.event.source_id.clone(),
            batch_seq: r.event.batch_seq,
            sequence: r.event.sequence,
            raw: event_json(&r.table, &r.event),
            reason: r.reason.clone(),
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let mut options = WriteOptions::from_config(settings.config, table);
    options.target_file_size = settings.target_file_bytes;
    let marks = BTreeMap::from([(buffer_mark_key(settings.epoch), mark.to_string())]);
    let commit = crate::lake::plan_rejected_commit(
        &rows,
        state,
        &options,
        &env.commit_ids(env.now()),
        &marks,
    )?;
    put_commit(objects, commit.puts, table, out).await?;
    out.committed_tables.insert(TableRef::changelog(table));
    out.events_rejected += rows.len() as u64;
    Ok(())
}

/// Puts a commit's objects in order, the metadata file only if absent, and
/// tells the store when each step is done.
pub(super) async fn put_commit<O: ObjectStore>(
    objects: &O,
    puts: Vec<PutObject>,
    table: &str,
    out: &mut Outcome,
) -> Result<()> {
    let kinds: Vec<ObjectKind> = puts.iter().map(|p| p.kind).collect();
    for (i, put) in puts.into_iter().enumerate() {
        let size = put.bytes.len() as u64;
        let if_absent = put.kind == ObjectKind::Metadata;
        match objects.put(&put.key, put.bytes, if_absent).await? {
            Put::Stored => {}
            Put::Exists if if_absent => {
                return Err(Error::new(
                    ErrorKind::Lake,
                    format!("table {table} got a new version from another writer during the flush; retrying later"),
                ))
            }
            Put::Exists => {
                return Err(Error::new(
                    ErrorKind::Lake,
                    format!("writing {}: the store refused the put", put.key),
                ))
            }
        }
        out.bytes_written += size;
        out.paths.push(put.key);
        let step = CommitStep::after(put.kind);
        if kinds.get(i + 1).map(|next| CommitStep::after(*next)) != Some(step) {
            objects.step_done(step).await?;
        }
    }
    Ok(())
}
