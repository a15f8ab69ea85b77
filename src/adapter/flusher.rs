//! Glue of the flush: runs the core's procedure (`crate::flush::procedure`)
//! over the SQLite buffer and R2, records the outcome, and keeps the alarm
//! where the schedule wants it.

use crate::config::DoLakeConfig;
use crate::error::{Error, Result};
use crate::flush::maintenance;
use std::collections::{BTreeMap, HashMap};

use roaring::RoaringBitmap;

use crate::flush::ports::{Buffer, IndexStatus, RowIndex};
use crate::flush::procedure::{self, Env, Settings};
use crate::flush::{BufferedBatch, FlushHistory, FlushSchedule, FlushTrigger, LoadedBatch};
use crate::intake::BufferTotals;
use crate::lake::current::{IndexChange, RowLoc};
use crate::lake::CommitIds;
use crate::protocol::FlushResult;

use super::object::{log, now_ms, Core, Object};

/// Most bytes of buffered JSON one step loads (bounds isolate memory).
pub const STEP_BUDGET_BYTES: u64 = 4 * 1024 * 1024;
/// Bound on one Parquet data file.
pub const TARGET_FILE_BYTES: usize = 16 * 1024 * 1024;
/// A flush stops starting new commits after this long and continues from the
/// next alarm, to stay inside one invocation's CPU limit.
pub const TIME_BUDGET_MS: i64 = 20_000;
/// Longest a flush request waits for a running flush to end.
const JOIN_WAIT_MS: i64 = 60_000;

/// The runtime's clock and random ids.
struct RuntimeEnv;

impl Env for RuntimeEnv {
    fn now(&self) -> i64 {
        now_ms()
    }
    fn commit_ids(&self, now: i64) -> CommitIds {
        let snapshot_id = (uuid::Uuid::new_v4().as_u128() as i64 & i64::MAX).max(1);
        CommitIds {
            snapshot_id,
            commit_uuid: uuid::Uuid::new_v4(),
            table_uuid: uuid::Uuid::new_v4(),
            now_ms: now,
        }
    }
}

/// The SQLite buffer as the flush's port; trimming it also refreshes the
/// intake's totals, so that intake sees the room a long flush makes.
struct BufferPort<'a>(&'a Object);

impl BufferPort<'_> {
    fn store(&self) -> Result<&super::store::Store> {
        self.0
            .store
            .as_ref()
            .ok_or_else(|| Error::storage("storage is not available"))
    }
}

impl Buffer for BufferPort<'_> {
    fn list(&self, limit: u32) -> Result<Vec<BufferedBatch>> {
        self.store()?.list_batches(limit)
    }
    fn load(&self, first: i64, last: i64) -> Result<Vec<LoadedBatch>> {
        self.store()?.load_batches(first, last)
    }
    /// Deletes the batches and, in the same transaction, folds what they
    /// added into their sources' rows.
    fn delete_through(&self, last: i64) -> Result<()> {
        let mut core = self.0.core.borrow_mut();
        let Core::Ready(session) = &mut *core else {
            return Err(Error::storage("the buffer's sources are not loaded"));
        };
        self.store()?
            .delete_batches(last, session.intake().unfolded())?;
        session.intake_mut().folded();
        let totals = self.totals()?;
        session.intake_mut().set_buffer(totals);
        Ok(())
    }
    fn totals(&self) -> Result<BufferTotals> {
        self.store()?.load_totals()
    }
}

/// The row index lives in the same SQLite storage as the buffer.
impl RowIndex for BufferPort<'_> {
    fn status(&self, table: &str) -> Result<IndexStatus> {
        self.store()?.status(table)
    }
    fn lookup(&self, table: &str, keys: &[&str]) -> Result<HashMap<String, RowLoc>> {
        self.store()?.lookup(table, keys)
    }
    fn deleted(&self, table: &str, files: &[&str]) -> Result<BTreeMap<String, RoaringBitmap>> {
        self.store()?.deleted(table, files)
    }
    fn stage(&self, table: &str, change: &IndexChange) -> Result<()> {
        self.store()?.stage(table, change)
    }
    fn apply_staged(&self, table: &str) -> Result<()> {
        self.store()?.apply_staged(table)
    }
    fn discard_staged(&self, table: &str) -> Result<()> {
        self.store()?.discard_staged(table)
    }
    fn clear(&self, table: &str) -> Result<()> {
        self.store()?.clear(table)
    }
}

impl Object {
    /// Runs a flush and records its outcome; never panics, never loses data.
    /// A request that finds a flush running waits for it, then flushes what
    /// is left, and reports both together.
    pub(super) async fn flush(&self, trigger: FlushTrigger) -> FlushResult {
        let mut joined: Option<FlushResult> = None;
        if self.flush_running.get() {
            if trigger != FlushTrigger::Request {
                // The running flush re-arms the alarm when it ends.
                return FlushResult {
                    error: Some("a flush is already running".into()),
                    ..FlushResult::default()
                };
            }
            let waited_from = now_ms();
            let flushes_before = self.flushes_done.get();
            while self.flush_running.get() {
                if now_ms() - waited_from > JOIN_WAIT_MS {
                    return FlushResult {
                        error: Some(format!(
                            "a running flush did not end within {JOIN_WAIT_MS} ms; retry later"
                        )),
                        ..FlushResult::default()
                    };
                }
                worker::Delay::from(std::time::Duration::from_millis(25)).await;
            }
            // Join the result of the flush that ended while we waited.
            if self.flushes_done.get() != flushes_before {
                joined = self.last_result.borrow().clone();
            }
        }
        let mut result = self.flush_now(trigger).await;
        if let Some(earlier) = joined {
            result.batches_flushed += earlier.batches_flushed;
            result.events_flushed += earlier.events_flushed;
            result.events_rejected += earlier.events_rejected;
            result.bytes_written += earlier.bytes_written;
            let mut paths = earlier.paths;
            paths.append(&mut result.paths);
            result.paths = paths;
        }
        result
    }

    async fn flush_now(&self, trigger: FlushTrigger) -> FlushResult {
        self.flush_running.set(true);
        let start = now_ms();
        let (config, used_fallback) = match &*self.core.borrow() {
            Core::Ready(session) => (
                Some(session.intake().config().clone()),
                session.intake().buffer().bytes > session.intake().config().max_buffer_size,
            ),
            Core::Failed(_) => (None, false),
        };
        let outcome = match (&config, &self.epoch, &self.lake) {
            (Some(config), Ok(epoch), Ok(lake)) => {
                let settings = self.settings(config, epoch);
                let port = BufferPort(self);
                procedure::run(&port, lake, &port, &RuntimeEnv, &settings).await
            }
            (None, _, _) => failed(Error::internal("DoLake failed to start")),
            // Without its epoch no mark can be trusted: fail closed.
            (_, Err(e), _) | (_, _, Err(e)) => failed(e.clone()),
        };
        let end = now_ms();
        let result = outcome.to_result((end - start).max(0) as u64, used_fallback);
        self.record_history(|history| history.record(start, end, &outcome));
        if let Ok(totals) = BufferPort(self).totals() {
            if let Core::Ready(session) = &mut *self.core.borrow_mut() {
                session.intake_mut().set_buffer(totals);
            }
        }
        if let Core::Ready(session) = &mut *self.core.borrow_mut() {
            session.intake_mut().set_lake_failing(!result.success);
        }
        log_flush(trigger, &outcome, &result);
        *self.last_result.borrow_mut() = Some(result.clone());
        self.flushes_done.set(self.flushes_done.get() + 1);
        self.flush_running.set(false);
        // New tables become visible in the REST catalog (before a flush
        // request is answered, so a reader told "flushed" finds them).
        self.register_tables().await;
        // A flush cut by its time budget goes on from the alarm at once.
        self.rearm().await;
        result
    }

    /// Changes the flush history and stores it.
    fn record_history(&self, change: impl FnOnce(&mut FlushHistory)) {
        let mut history = self.history.borrow_mut();
        change(&mut history);
        if let Some(Err(e)) = self.store.as_ref().map(|s| s.save_history(&history)) {
            log(
                "warn",
                "history_save_failed",
                serde_json::json!({"error": e.message()}),
            );
        }
    }

    fn settings<'a>(&self, config: &'a DoLakeConfig, epoch: &'a str) -> Settings<'a> {
        Settings {
            config,
            epoch,
            step_budget_bytes: STEP_BUDGET_BYTES,
            target_file_bytes: TARGET_FILE_BYTES,
            time_budget_ms: self.time_budget_ms(),
        }
    }

    fn time_budget_ms(&self) -> i64 {
        match &self.lake {
            Ok(lake) => lake
                .faults
                .borrow()
                .time_budget_ms
                .unwrap_or(TIME_BUDGET_MS),
            Err(_) => TIME_BUDGET_MS,
        }
    }

    /// When the schedule wants the alarm: the next flush or the next
    /// maintenance run, whichever is first; `None` for no alarm.
    fn wanted_alarm(&self) -> Option<i64> {
        match &*self.core.borrow() {
            Core::Ready(session) => {
                let now = now_ms();
                let history = self.history.borrow();
                let flush = FlushSchedule::new(session.intake().config()).next_alarm(
                    now,
                    session.intake().buffer(),
                    &history,
                );
                let maintenance = history
                    .maintenance
                    .next_run(&session.intake().config().maintenance, &history)
                    .map(|at| at.max(now));
                match (flush, maintenance) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Core::Failed(_) => None,
        }
    }

    /// Whether maintenance is due now.
    pub(super) fn maintenance_due(&self) -> bool {
        match &*self.core.borrow() {
            Core::Ready(session) => {
                let history = self.history.borrow();
                history
                    .maintenance
                    .next_run(&session.intake().config().maintenance, &history)
                    .is_some_and(|at| at <= now_ms())
            }
            Core::Failed(_) => false,
        }
    }

    /// Runs table maintenance over every table a flush has written (never
    /// while a flush runs: both are commits to the same tables), records it
    /// and re-arms the alarm. `Err` when it cannot run now.
    pub(super) async fn maintain(&self, trigger: &str) -> Result<maintenance::Report> {
        if self.flush_running.get() {
            return Err(Error::new(
                crate::error::ErrorKind::Overloaded,
                "a flush or maintenance run is in progress; retry later",
            ));
        }
        let (config, tables) = match &*self.core.borrow() {
            Core::Ready(session) => (
                session.intake().config().clone(),
                self.history.borrow().known_tables(),
            ),
            Core::Failed(e) => return Err(e.clone()),
        };
        let (epoch, lake) = match (&self.epoch, &self.lake) {
            (Ok(epoch), Ok(lake)) => (epoch, lake),
            (Err(e), _) | (_, Err(e)) => return Err(e.clone()),
        };
        self.flush_running.set(true);
        let start = now_ms();
        let settings = self.settings(&config, epoch);
        let mut policy = maintenance::Policy::from_config(&config.maintenance);
        policy.scan_orphans =
            trigger == "request" || self.history.borrow().maintenance.orphan_scan_due(start);
        let port = BufferPort(self);
        let report = maintenance::run(lake, &port, &RuntimeEnv, &settings, &policy, &tables).await;
        let end = now_ms();
        self.record_history(|history| {
            let scanned = policy.scan_orphans;
            history.maintenance.record(start, end, &report, scanned);
        });
        log_maintenance(trigger, &report);
        self.flushes_done.set(self.flushes_done.get() + 1);
        self.flush_running.set(false);
        self.rearm().await;
        Ok(report)
    }

    /// Sets the alarm to when the schedule wants it, or deletes it when the
    /// buffer is empty (so an idle DoLake can hibernate). The wish is read
    /// again after each await: a batch stored meanwhile must not be left
    /// without an alarm.
    pub(super) async fn rearm(&self) {
        for _ in 0..4 {
            let wanted = self.wanted_alarm();
            match wanted {
                Some(at) => self.set_alarm_at(at).await,
                None => {
                    // Cleared before the await, so that a batch stored while
                    // it runs sets its own alarm (`ensure_alarm`).
                    self.alarm_at.set(None);
                    if let Err(e) = self.state.storage().delete_alarm().await {
                        log(
                            "warn",
                            "alarm_delete_failed",
                            serde_json::json!({"error": e.to_string()}),
                        );
                    }
                }
            }
            if self.wanted_alarm().is_some() == wanted.is_some() {
                return;
            }
        }
    }

    /// Makes sure an alarm fires no later than the schedule wants.
    pub(super) async fn ensure_alarm(&self) {
        if let Some(at) = self.wanted_alarm() {
            if self.alarm_at.get().is_none_or(|current| at < current) && !self.flush_running.get() {
                self.set_alarm_at(at).await;
            }
        }
    }

    pub(super) async fn set_alarm_at(&self, at: i64) {
        let when = worker::ScheduledTime::new(worker::js_sys::Date::new(
            &worker::wasm_bindgen::JsValue::from_f64(at as f64),
        ));
        match self.state.storage().set_alarm(when).await {
            Ok(()) => self.alarm_at.set(Some(at)),
            Err(e) => log(
                "error",
                "alarm_set_failed",
                serde_json::json!({"error": e.to_string()}),
            ),
        }
    }
}

/// The log lines of a flush: type conflicts, dead letters, the result.
fn log_flush(trigger: FlushTrigger, outcome: &procedure::Outcome, result: &FlushResult) {
    for (table, n) in &outcome.overflow {
        log(
            "warn",
            "type_conflicts",
            serde_json::json!({"table": table, "overflowValues": n}),
        );
    }
    if outcome.events_rejected > 0 {
        log(
            "error",
            "events_dead_lettered",
            serde_json::json!({"events": outcome.events_rejected, "table": crate::lake::REJECTED_TABLE, "unwritableTables": outcome.unwritable_tables}),
        );
    }
    log(
        if result.success { "info" } else { "error" },
        if result.success {
            "flushed"
        } else {
            "flush_failed"
        },
        serde_json::json!({
            "trigger": trigger.as_str(),
            "batches": result.batches_flushed,
            "events": result.events_flushed,
            "rejected": result.events_rejected,
            "bytes": result.bytes_written,
            "files": result.paths.len(),
            "durationMs": result.duration_ms,
            "complete": result.complete,
            "error": result.error,
        }),
    );
}

/// One log line per table a maintenance run went through.
fn log_maintenance(trigger: &str, report: &maintenance::Report) {
    for (table, r) in &report.tables {
        log(
            if r.error.is_none() { "info" } else { "error" },
            if r.error.is_none() {
                "maintained"
            } else {
                "maintenance_failed"
            },
            serde_json::json!({"trigger": trigger, "table": table, "report": r}),
        );
    }
}

fn failed(error: Error) -> procedure::Outcome {
    procedure::Outcome {
        error: Some(error),
        ..procedure::Outcome::default()
    }
}
