//! When to flush, and what one flush step commits (sans-IO).
//!
//! [`FlushSchedule`] decides from the buffer totals and the flush history
//! whether a flush is due and when the alarm must next fire. [`plan_step`]
//! takes the oldest buffered batches (a bounded chunk, so a flush fits the
//! isolate's memory) and groups their events by table, leaving out what each
//! table already committed.
//!
//! Exactly-once across crashes rests on buffer row ids: the buffer gives every
//! stored batch an id that only grows (SQLite AUTOINCREMENT) within one
//! buffer *epoch* (a uuid drawn when the storage is created). Each commit to a
//! table records in its snapshot summary `dolake.buffer.{epoch}.row-id`, the
//! highest row id whose events it holds; flushes take batches in id order, so
//! everything at or below that mark is in the table. A flush that crashed after
//! some tables committed finds their marks on the next attempt and skips those
//! rows for those tables only. Per-source sequence numbers would not do: a
//! batch acked late with a lower sequence number than one already committed
//! must still be committed.

pub mod current;
pub mod faults;
pub mod maintenance;
#[cfg(test)]
pub(crate) mod memory;
pub mod ports;
pub mod procedure;

use std::collections::BTreeMap;

use crate::config::DoLakeConfig;
use crate::error::Result;
use crate::intake::BufferTotals;
use crate::lake::{ChangeEvent, Op, TableKind};
use crate::protocol::{CdcEvent, Operation};

/// Summary key prefix of the buffer marks (carried forward by the lake writer).
pub const SUMMARY_BUFFER_PREFIX: &str = crate::lake::commit::SUMMARY_MARK_PREFIX;
/// Summary key suffix of the buffer marks.
pub const SUMMARY_BUFFER_SUFFIX: &str = ".row-id";

/// The summary key holding the mark of buffer `epoch`.
pub fn buffer_mark_key(epoch: &str) -> String {
    format!("{SUMMARY_BUFFER_PREFIX}{epoch}{SUMMARY_BUFFER_SUFFIX}")
}

/// The mark of buffer `epoch` in a snapshot summary: rows at or below it are
/// committed to the table.
pub fn buffer_mark(summary: &BTreeMap<String, String>, epoch: &str) -> Option<i64> {
    summary
        .get(&buffer_mark_key(epoch))
        .and_then(|v| v.parse().ok())
}

/// A table DoLake writes: its kind, and the CDC table it is made from (or
/// the name of one of DoLake's own tables, which are change logs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRef {
    /// Change log or current state.
    pub kind: TableKind,
    /// The CDC table's name.
    pub name: String,
}

impl TableRef {
    /// The change log of CDC table `name`.
    pub fn changelog(name: &str) -> Self {
        Self {
            kind: TableKind::Changelog,
            name: name.to_string(),
        }
    }

    /// The current-state table of CDC table `name`.
    pub fn current(name: &str) -> Self {
        Self {
            kind: TableKind::CurrentState,
            name: name.to_string(),
        }
    }

    /// The Iceberg namespace the table is in under `config`.
    pub fn namespace<'c>(&self, config: &'c DoLakeConfig) -> &'c str {
        match self.kind {
            TableKind::Changelog => &config.namespace,
            TableKind::CurrentState => &config.current_state_namespace,
        }
    }

    /// The table's object keys under `config`.
    pub fn paths(&self, config: &DoLakeConfig) -> Result<crate::lake::TablePaths> {
        crate::lake::TablePaths::new(self.namespace(config), &self.name)
    }

    /// How status and metrics name the table: a change log by its CDC
    /// table's name, a current-state table as `{namespace}.{name}`.
    pub fn label(&self, config: &DoLakeConfig) -> String {
        match self.kind {
            TableKind::Changelog => self.name.clone(),
            TableKind::CurrentState => {
                format!("{}.{}", config.current_state_namespace, self.name)
            }
        }
    }
}

/// Why a flush runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushTrigger {
    /// `flushThresholdEvents` reached.
    Events,
    /// `flushThresholdBytes` reached.
    Bytes,
    /// The oldest buffered batch is `flushThresholdMs` old.
    Age,
    /// `flushIntervalMs` passed since the last flush.
    Interval,
    /// A `flush_request` or `POST /flush`.
    Request,
    /// A flush that used its time budget goes on.
    Continue,
    /// A failed flush is retried.
    Retry,
}

impl FlushTrigger {
    /// Name for logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            FlushTrigger::Events => "events",
            FlushTrigger::Bytes => "bytes",
            FlushTrigger::Age => "age",
            FlushTrigger::Interval => "interval",
            FlushTrigger::Request => "request",
            FlushTrigger::Continue => "continue",
            FlushTrigger::Retry => "retry",
        }
    }
}

/// Flush history, persisted so that the schedule survives restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FlushHistory {
    /// End of the last successful flush, Unix ms.
    pub last_success_ms: Option<i64>,
    /// Start of the last attempt, Unix ms.
    pub last_attempt_ms: Option<i64>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Successful flushes.
    pub flushes: u64,
    /// Failed flushes.
    pub failures: u64,
    /// Events written to the lake.
    pub events_flushed: u64,
    /// Bytes written to R2.
    pub bytes_written: u64,
    /// Objects written to R2.
    pub files_written: u64,
    /// Wall time of the last flush, ms.
    pub last_duration_ms: u64,
    /// The last flush stopped at its time budget with batches left: the
    /// next alarm goes on at once, whatever the thresholds say.
    pub continuing: bool,
    /// Events written to the dead-letter table.
    pub events_rejected: u64,
    /// Lagging `version-hint.text` files rewritten.
    pub hints_repaired: u64,
    /// Tables DoLake cannot extend (their events are dead-lettered), with
    /// the reason, as last seen.
    pub unwritable_tables: BTreeMap<String, String>,
    /// Every change log (and DoLake's own table) a flush committed to: the
    /// tables maintenance keeps, with [`current_tables`](Self::current_tables).
    pub tables: std::collections::BTreeSet<String>,
    /// Every current-state table a flush committed to, by CDC table.
    pub current_tables: std::collections::BTreeSet<String>,
    /// What current-state commits counted, over every flush.
    pub current_state: crate::lake::current::CurrentCounts,
    /// Row indexes that did not agree with their table and were repaired
    /// (a staged change applied or discarded, or a rebuild).
    pub index_repairs: u64,
    /// Table maintenance.
    pub maintenance: MaintenanceHistory,
}

/// Orphan cleanup reads every live snapshot's manifest list: once a day.
pub const ORPHAN_SCAN_INTERVAL_MS: i64 = 24 * 3_600_000;

/// Table maintenance as it went, persisted with the flush history.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MaintenanceHistory {
    /// Start of the last run, Unix ms.
    pub last_run_ms: Option<i64>,
    /// Runs.
    pub runs: u64,
    /// Runs in which a table's maintenance failed.
    pub failures: u64,
    /// The last run stopped at its time budget: the next goes on at once.
    pub continuing: bool,
    /// Wall time of the last run, ms.
    pub last_duration_ms: u64,
    /// Totals over every run.
    pub files_compacted: u64,
    /// Manifests merged away, over every run.
    pub manifests_merged: u64,
    /// Snapshots expired, over every run.
    pub snapshots_expired: u64,
    /// Objects deleted after expiry, over every run.
    pub files_deleted: u64,
    /// Orphans deleted, over every run.
    pub orphans_deleted: u64,
    /// Start of the last run that looked for orphans, Unix ms.
    pub last_orphan_scan_ms: Option<i64>,
    /// Each table as its last maintenance left it.
    pub tables: BTreeMap<String, maintenance::TableReport>,
}

impl MaintenanceHistory {
    /// Records a run that started at `start` and ended at `end`.
    pub fn record(
        &mut self,
        start: i64,
        end: i64,
        report: &maintenance::Report,
        scanned_orphans: bool,
    ) {
        self.last_run_ms = Some(start);
        if scanned_orphans && !report.more {
            self.last_orphan_scan_ms = Some(start);
        }
        self.runs += 1;
        self.continuing = report.more;
        self.last_duration_ms = (end - start).max(0) as u64;
        if report.tables.values().any(|t| t.error.is_some()) {
            self.failures += 1;
        }
        for (table, r) in &report.tables {
            self.files_compacted += r.files_compacted;
            self.manifests_merged += r.manifests_merged;
            self.snapshots_expired += r.snapshots_expired;
            self.files_deleted += r.files_deleted;
            self.orphans_deleted += r.orphans_deleted;
            let mut r = r.clone();
            r.ran_ms = Some(start);
            if r.health.is_none() {
                // Keep the last known shape of a table that failed now.
                r.health = self.tables.get(table).and_then(|t| t.health.clone());
            }
            self.tables.insert(table.clone(), r);
        }
    }

    /// Whether a run at `now` looks for orphans: once a day.
    pub fn orphan_scan_due(&self, now: i64) -> bool {
        self.last_orphan_scan_ms
            .is_none_or(|at| now - at >= ORPHAN_SCAN_INTERVAL_MS)
    }

    /// When maintenance is due next under `config` (`None`: never), given
    /// the tables known and the last flush.
    pub fn next_run(
        &self,
        config: &crate::config::MaintenanceConfig,
        history: &FlushHistory,
    ) -> Option<i64> {
        if !config.enabled || (history.tables.is_empty() && history.current_tables.is_empty()) {
            return None;
        }
        let interval = i64::try_from(config.interval_ms).unwrap_or(i64::MAX / 4);
        if self.continuing {
            return Some(self.last_run_ms.unwrap_or(0));
        }
        let from = self.last_run_ms.or(history.last_success_ms)?;
        // Nothing committed since the last run: only expiry by age and the
        // daily orphan scan have work, so an idle table wakes once a day.
        let idle = match (self.last_run_ms, history.last_success_ms) {
            (Some(run), Some(flush)) => flush < run,
            (Some(_), None) => true,
            _ => false,
        };
        let wait = if idle {
            interval.max(ORPHAN_SCAN_INTERVAL_MS)
        } else {
            interval
        };
        Some(from.saturating_add(wait))
    }
}

impl FlushHistory {
    /// Every table maintenance keeps.
    pub fn known_tables(&self) -> Vec<TableRef> {
        let changelogs = self.tables.iter().map(|t| TableRef::changelog(t));
        changelogs
            .chain(self.current_tables.iter().map(|t| TableRef::current(t)))
            .collect()
    }

    /// Records a flush that started at `start` and ended at `end`.
    pub fn record(&mut self, start: i64, end: i64, outcome: &procedure::Outcome) {
        self.last_attempt_ms = Some(start);
        self.events_flushed += outcome.events_flushed;
        self.events_rejected += outcome.events_rejected;
        self.hints_repaired += outcome.hints_repaired;
        self.bytes_written += outcome.bytes_written;
        self.files_written += outcome.paths.len() as u64;
        self.last_duration_ms = (end - start).max(0) as u64;
        self.unwritable_tables
            .extend(outcome.unwritable_tables.clone());
        self.current_state.add(&outcome.current);
        self.index_repairs += outcome.index_repairs;
        for t in &outcome.committed_tables {
            match t.kind {
                TableKind::Changelog => self.tables.insert(t.name.clone()),
                TableKind::CurrentState => self.current_tables.insert(t.name.clone()),
            };
        }
        match &outcome.error {
            None => {
                self.continuing = outcome.more;
                self.consecutive_failures = 0;
                self.last_success_ms = Some(end);
                self.flushes += 1;
                self.last_error = None;
            }
            Some(e) => {
                self.continuing = false;
                self.consecutive_failures += 1;
                self.failures += 1;
                self.last_error = Some(e.message().to_string());
            }
        }
    }
}

/// First retry delay after a failed flush, ms; doubles up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: i64 = 1_000;
/// Longest retry delay, ms.
pub const MAX_BACKOFF_MS: i64 = 60_000;

/// Decides when to flush.
pub struct FlushSchedule<'a> {
    config: &'a DoLakeConfig,
}

impl<'a> FlushSchedule<'a> {
    /// The schedule of `config`.
    pub fn new(config: &'a DoLakeConfig) -> Self {
        Self { config }
    }

    /// The size or count threshold the buffer reached, if any.
    pub fn threshold_reached(&self, totals: &BufferTotals) -> Option<FlushTrigger> {
        if totals.events >= self.config.flush_threshold_events {
            Some(FlushTrigger::Events)
        } else if totals.bytes >= self.config.flush_threshold_bytes || totals.refused_full {
            Some(FlushTrigger::Bytes)
        } else {
            None
        }
    }

    /// Why a flush is due at `now`, if it is.
    pub fn due(
        &self,
        now: i64,
        totals: &BufferTotals,
        history: &FlushHistory,
    ) -> Option<FlushTrigger> {
        if totals.batches == 0 {
            return None;
        }
        if history.consecutive_failures > 0 {
            return (now >= self.retry_at(history)).then_some(FlushTrigger::Retry);
        }
        if history.continuing {
            return Some(FlushTrigger::Continue);
        }
        if let Some(t) = self.threshold_reached(totals) {
            return Some(t);
        }
        let oldest = totals.oldest_ms.unwrap_or(now);
        if now >= oldest + self.config.flush_threshold_ms as i64 {
            return Some(FlushTrigger::Age);
        }
        (now >= self.interval_at(totals, history)).then_some(FlushTrigger::Interval)
    }

    /// When the alarm must fire next; `None` (no alarm) when the buffer is empty.
    pub fn next_alarm(
        &self,
        now: i64,
        totals: &BufferTotals,
        history: &FlushHistory,
    ) -> Option<i64> {
        if totals.batches == 0 {
            return None;
        }
        if history.consecutive_failures > 0 {
            return Some(self.retry_at(history).max(now));
        }
        if history.continuing || self.threshold_reached(totals).is_some() {
            return Some(now);
        }
        let oldest = totals.oldest_ms.unwrap_or(now);
        let age_at = oldest + self.config.flush_threshold_ms as i64;
        Some(age_at.min(self.interval_at(totals, history)).max(now))
    }

    /// The interval counts from the last flush, or from the oldest buffered
    /// batch when that is later (an idle DoLake does not flush at once).
    fn interval_at(&self, totals: &BufferTotals, history: &FlushHistory) -> i64 {
        let from = match (history.last_success_ms, totals.oldest_ms) {
            (Some(last), Some(oldest)) => last.max(oldest),
            (Some(last), None) => last,
            (None, Some(oldest)) => oldest,
            (None, None) => 0,
        };
        from + self.config.flush_interval_ms as i64
    }

    fn retry_at(&self, history: &FlushHistory) -> i64 {
        let exponent = history.consecutive_failures.saturating_sub(1).min(16);
        let delay = (FIRST_BACKOFF_MS << exponent).min(MAX_BACKOFF_MS);
        history.last_attempt_ms.unwrap_or(0) + delay
    }
}

/// A buffered batch as the flush sees it before loading its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferedBatch {
    /// Buffer row id.
    pub row_id: i64,
    /// Stored JSON bytes.
    pub size_bytes: u64,
}

/// How many of `batches` (oldest first) one flush step takes: at least one,
/// then as many as fit in `budget_bytes`.
pub fn chunk_len(batches: &[BufferedBatch], budget_bytes: u64) -> usize {
    let mut used = 0u64;
    let mut n = 0;
    for b in batches {
        if n > 0 && used + b.size_bytes > budget_bytes {
            break;
        }
        used += b.size_bytes;
        n += 1;
    }
    n
}

/// A loaded batch: its row id, source and events.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedBatch {
    /// Buffer row id.
    pub row_id: i64,
    /// The source.
    pub source_id: String,
    /// The batch's sequence number.
    pub batch_seq: u64,
    /// The stored events.
    pub events: Vec<CdcEvent>,
}

/// What one table gets from a flush step.
#[derive(Debug, Clone, PartialEq)]
pub struct TableWork {
    /// The events to commit, in buffer order.
    pub events: Vec<ChangeEvent>,
    /// The buffer row id of each event (parallel to `events`).
    pub rows: Vec<i64>,
    /// The highest row id of the step (the mark to record).
    pub mark: i64,
    /// Rows skipped because the table already had them.
    pub skipped_events: u64,
}

/// Groups a step's events by table, consuming the batches (no copy of the
/// events: a step's memory is the largest part of a flush's). `committed(table)`
/// gives the table's mark of this buffer epoch; rows at or below it are left
/// out for that table.
pub fn plan_step(
    batches: Vec<LoadedBatch>,
    mut committed: impl FnMut(&str) -> Option<i64>,
) -> BTreeMap<String, TableWork> {
    let mark = batches.iter().map(|b| b.row_id).max().unwrap_or(0);
    let mut marks: BTreeMap<String, Option<i64>> = BTreeMap::new();
    let mut work: BTreeMap<String, TableWork> = BTreeMap::new();
    for batch in batches {
        for event in batch.events {
            let table_mark = match marks.get(&event.table) {
                Some(m) => *m,
                None => {
                    let m = committed(&event.table);
                    marks.insert(event.table.clone(), m);
                    m
                }
            };
            let entry = match work.get_mut(&event.table) {
                Some(entry) => entry,
                None => work.entry(event.table.clone()).or_insert(TableWork {
                    events: Vec::new(),
                    rows: Vec::new(),
                    mark,
                    skipped_events: 0,
                }),
            };
            if table_mark.is_some_and(|m| batch.row_id <= m) {
                entry.skipped_events += 1;
                continue;
            }
            entry.rows.push(batch.row_id);
            entry
                .events
                .push(into_change_event(&batch.source_id, batch.batch_seq, event));
        }
    }
    work
}

/// The lake writer's view of a protocol event.
pub fn into_change_event(source_id: &str, batch_seq: u64, event: CdcEvent) -> ChangeEvent {
    ChangeEvent {
        source_id: source_id.to_string(),
        batch_seq,
        sequence: event.sequence,
        timestamp_ms: event.timestamp,
        operation: match event.operation {
            Operation::Insert => Op::Insert,
            Operation::Update => Op::Update,
            Operation::Delete => Op::Delete,
        },
        row_id: event.row_id,
        before: event.before,
        after: event.after,
        metadata: event.metadata,
    }
}

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod current_tests;
#[cfg(test)]
mod maintenance_tests;
#[cfg(test)]
mod soak;
#[cfg(test)]
mod tests;
