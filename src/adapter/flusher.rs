//! The flush: buffered batches -> Iceberg commits in R2, exactly once.
//!
//! Each step takes the oldest batches up to [`STEP_BUDGET_BYTES`], loads each
//! affected table's current state from R2, commits the events the table does
//! not have yet (with this buffer's mark), and only then deletes the batches.
//! A crash or an R2 failure anywhere leaves the batches buffered; the next
//! attempt skips, per table, what that table's mark says it already holds.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, ErrorKind, Result};
use crate::flush::{
    buffer_mark, buffer_mark_key, chunk_len, plan_step, FlushSchedule, FlushTrigger,
};
use crate::lake::{plan_commit_with_marks, CommitIds, TablePaths, WriteOptions};
use crate::protocol::FlushResult;

use super::object::{log, now_ms, Core, DoLake};
use super::r2::PutOutcome;

/// Most bytes of buffered JSON one step loads (bounds isolate memory).
pub const STEP_BUDGET_BYTES: u64 = 4 * 1024 * 1024;
/// Bound on one Parquet data file.
pub const TARGET_FILE_BYTES: usize = 16 * 1024 * 1024;
/// A flush stops starting new steps after this long and continues from the
/// next alarm, to stay inside one invocation's CPU limit.
pub const TIME_BUDGET_MS: i64 = 20_000;
/// Most batches listed per step.
const LIST_LIMIT: u32 = 100_000;

fn random_ids(now: i64) -> CommitIds {
    let snapshot_id = (uuid::Uuid::new_v4().as_u128() as i64 & i64::MAX).max(1);
    CommitIds {
        snapshot_id,
        commit_uuid: uuid::Uuid::new_v4(),
        table_uuid: uuid::Uuid::new_v4(),
        now_ms: now,
    }
}

impl DoLake {
    /// Runs a flush and records its outcome; never panics, never loses data.
    pub(super) async fn flush(&self, trigger: FlushTrigger) -> FlushResult {
        let start = now_ms();
        if self.flush_running.replace(true) {
            return FlushResult {
                error: Some("a flush is already running; retry when it ends".into()),
                ..FlushResult::default()
            };
        }
        let used_fallback = match &*self.core.borrow() {
            Core::Ready(intake) => intake.buffer().bytes > intake.config().max_buffer_size,
            Core::Failed(_) => false,
        };
        let outcome = self.flush_steps(start).await;
        self.flush_running.set(false);
        let end = now_ms();
        let (mut result, more) = match outcome {
            Ok((result, more)) => (result, more),
            Err((partial, e)) => {
                let mut result = partial;
                result.success = false;
                result.error = Some(e.message().to_string());
                (result, false)
            }
        };
        result.duration_ms = (end - start).max(0) as u64;
        result.used_fallback = used_fallback;
        if result.error.is_none() {
            result.success = true;
        }
        {
            let mut history = self.history.borrow_mut();
            history.last_attempt_ms = Some(start);
            history.events_flushed += result.events_flushed;
            history.bytes_written += result.bytes_written;
            history.files_written += result.paths.len() as u64;
            history.last_duration_ms = result.duration_ms;
            history.continuing = result.success && more;
            if result.success {
                history.consecutive_failures = 0;
                history.last_success_ms = Some(end);
                history.flushes += 1;
                history.last_error = None;
            } else {
                history.consecutive_failures += 1;
                history.failures += 1;
                history.last_error = result.error.clone();
            }
            if let Some(store) = &self.store {
                if let Err(e) = store.save_history(&history) {
                    log(
                        "warn",
                        "history_save_failed",
                        serde_json::json!({"error": e.message()}),
                    );
                }
            }
        }
        if let Core::Ready(intake) = &mut *self.core.borrow_mut() {
            intake.set_lake_failing(!result.success);
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
                "bytes": result.bytes_written,
                "files": result.paths.len(),
                "durationMs": result.duration_ms,
                "continues": more,
                "error": result.error,
            }),
        );
        // A flush cut by its time budget goes on from the alarm at once.
        self.rearm().await;
        result
    }

    /// Flush steps until the buffer is empty or the time budget is used.
    /// Returns what was flushed and whether more remains for the next alarm.
    async fn flush_steps(
        &self,
        start: i64,
    ) -> std::result::Result<(FlushResult, bool), (FlushResult, Error)> {
        let mut result = FlushResult::default();
        loop {
            match self.flush_step(&mut result).await {
                Ok(false) => return Ok((result, false)),
                Ok(true) if now_ms() - start >= self.time_budget_ms() => return Ok((result, true)),
                Ok(true) => {}
                Err(e) => return Err((result, e)),
            }
        }
    }

    /// One step; returns false when the buffer was empty.
    async fn flush_step(&self, result: &mut FlushResult) -> Result<bool> {
        let (store, lake) = match (&self.store, &self.lake) {
            (Some(store), Ok(lake)) => (store, lake),
            (None, _) => return Err(Error::storage("storage is not available")),
            (_, Err(e)) => return Err(e.clone()),
        };
        let config = match &*self.core.borrow() {
            Core::Ready(intake) => intake.config().clone(),
            Core::Failed(e) => return Err(e.clone()),
        };
        let rows = store.list_batches(LIST_LIMIT)?;
        if rows.is_empty() {
            return Ok(false);
        }
        let n = chunk_len(&rows, STEP_BUDGET_BYTES);
        let (first, last) = (rows[0].row_id, rows[n - 1].row_id);
        drop(rows);
        let batches = store.load_batches(first, last)?;
        let tables: BTreeSet<String> = batches
            .iter()
            .flat_map(|b| b.events.iter().map(|e| e.table.clone()))
            .collect();
        let mut states = BTreeMap::new();
        for table in tables {
            let paths = TablePaths::new(&config.namespace, &table)?;
            let state = lake.load_table(&paths).await?;
            states.insert(table, state);
        }
        let batch_count = batches.len() as u64;
        let work = plan_step(batches, |table| {
            let snapshot = states.get(table)?.as_ref()?.metadata.current_snapshot()?;
            buffer_mark(&snapshot.summary, &self.epoch)
        });
        for (table, work) in work {
            if work.events.is_empty() {
                continue;
            }
            let state = states.remove(&table).flatten();
            let mut options = WriteOptions::from_config(&config, &table);
            options.target_file_size = TARGET_FILE_BYTES;
            let marks = BTreeMap::from([(buffer_mark_key(&self.epoch), work.mark.to_string())]);
            let commit = plan_commit_with_marks(
                &work.events,
                state.as_ref(),
                &options,
                &random_ids(now_ms()),
                &marks,
            )?;
            let rows = commit.rows;
            let overflow = commit.overflow_total();
            drop(work);
            match lake.put_commit(commit.puts).await? {
                PutOutcome::Committed(bytes, keys) => {
                    result.bytes_written += bytes;
                    result.events_flushed += rows;
                    result.paths.extend(keys);
                    if overflow > 0 {
                        log(
                            "warn",
                            "type_conflicts",
                            serde_json::json!({"table": table, "overflowValues": overflow}),
                        );
                    }
                }
                PutOutcome::Conflict => {
                    return Err(Error::new(
                        ErrorKind::Lake,
                        format!("table {table} got a new version from another writer during the flush; retrying later"),
                    ))
                }
            }
        }
        store.delete_batches(last)?;
        result.batches_flushed += batch_count;
        let totals = store.load_totals()?;
        if let Core::Ready(intake) = &mut *self.core.borrow_mut() {
            intake.set_buffer(totals);
        }
        Ok(true)
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

    /// When the schedule wants the alarm, now; `None` for no alarm.
    fn wanted_alarm(&self) -> Option<i64> {
        match &*self.core.borrow() {
            Core::Ready(intake) => FlushSchedule::new(intake.config()).next_alarm(
                now_ms(),
                intake.buffer(),
                &self.history.borrow(),
            ),
            Core::Failed(_) => None,
        }
    }

    /// Sets the alarm to when the schedule wants it, or deletes it when the
    /// buffer is empty (so an idle DoLake can hibernate).
    pub(super) async fn rearm(&self) {
        match self.wanted_alarm() {
            Some(at) => self.set_alarm_at(at).await,
            None => {
                if let Err(e) = self.state.storage().delete_alarm().await {
                    log(
                        "warn",
                        "alarm_delete_failed",
                        serde_json::json!({"error": e.to_string()}),
                    );
                }
                self.alarm_at.set(None);
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
