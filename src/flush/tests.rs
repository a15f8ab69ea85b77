use super::*;
use serde_json::json;

fn config(text: &str) -> DoLakeConfig {
    DoLakeConfig::parse(Some(text)).unwrap()
}

fn totals(batches: u64, events: u64, bytes: u64, oldest: i64) -> BufferTotals {
    BufferTotals {
        batches,
        events,
        bytes,
        oldest_ms: Some(oldest),
        newest_ms: Some(oldest),
        refused_full: false,
    }
}

#[test]
fn each_threshold_triggers_on_its_own() {
    let c = config(
        r#"{"flushThresholdEvents":100,"flushThresholdBytes":1000,"flushThresholdMs":5000,"flushIntervalMs":20000}"#,
    );
    let s = FlushSchedule::new(&c);
    let h = FlushHistory::default();
    assert_eq!(s.due(0, &BufferTotals::default(), &h), None);
    assert_eq!(
        s.next_alarm(0, &BufferTotals::default(), &h),
        None,
        "empty: no alarm"
    );
    assert_eq!(
        s.due(10, &totals(1, 100, 10, 0), &h),
        Some(FlushTrigger::Events)
    );
    assert_eq!(
        s.due(10, &totals(1, 1, 1000, 0), &h),
        Some(FlushTrigger::Bytes)
    );
    assert_eq!(s.next_alarm(10, &totals(1, 1, 1000, 0), &h), Some(10));
    assert_eq!(s.due(4999, &totals(1, 1, 1, 0), &h), None);
    assert_eq!(
        s.due(5000, &totals(1, 1, 1, 0), &h),
        Some(FlushTrigger::Age)
    );
    assert_eq!(s.next_alarm(10, &totals(1, 1, 1, 0), &h), Some(5000));
}

#[test]
fn a_buffer_full_refusal_makes_a_flush_due_below_the_byte_threshold() {
    // 36 kB buffered, threshold and capacity 40 kB, a 5 kB batch refused:
    // no threshold will ever be reached, so the refusal itself is the trigger.
    let c = config(r#"{"flushThresholdBytes":40000,"maxBufferSize":40000,"enableFallback":false}"#);
    let s = FlushSchedule::new(&c);
    let mut t = totals(7, 175, 36_000, 0);
    let mut h = FlushHistory::default();
    assert_eq!(s.due(10, &t, &h), None);
    t.refused_full = true;
    assert_eq!(s.due(10, &t, &h), Some(FlushTrigger::Bytes));
    assert_eq!(s.next_alarm(10, &t, &h), Some(10));
    // A failed flush backs off as always.
    let failed = procedure::Outcome {
        error: Some(crate::Error::internal("R2 down")),
        ..procedure::Outcome::default()
    };
    h.record(10, 20, &failed);
    assert_eq!(s.due(21, &t, &h), None, "backing off");
    // The refusal is intake's: it marks the totals it refuses against, and a
    // flush reads them again from storage (unmarked).
    let mut intake = crate::intake::Intake::new(c.clone(), Vec::new(), totals(7, 175, 36_000, 0));
    let mut batch: crate::protocol::CdcBatchMessage = serde_json::from_value(json!({
        "sourceDoId": "s", "sequenceNumber": 1, "events": [{"sequence": 1, "timestamp": 1,
        "operation": "INSERT", "table": "t", "rowId": "r", "after": {"x": "y".repeat(6_000)}}]}))
    .unwrap();
    batch.is_retry = false;
    let crate::intake::Admission::Reply(crate::protocol::ServerMessage::Nack(nack)) =
        intake.admit(10, batch)
    else {
        panic!("refused")
    };
    assert_eq!(nack.reason, "buffer_full");
    assert!(intake.buffer().refused_full);
    intake.set_buffer(totals(0, 0, 0, 0));
    assert!(!intake.buffer().refused_full);
}

#[test]
fn the_interval_fires_before_the_age_threshold_when_shorter() {
    let c = config(r#"{"flushThresholdMs":60000,"flushIntervalMs":30000}"#);
    let s = FlushSchedule::new(&c);
    let h = FlushHistory {
        last_success_ms: Some(1_000),
        ..FlushHistory::default()
    };
    let t = totals(1, 1, 1, 2_000);
    assert_eq!(s.next_alarm(2_000, &t, &h), Some(32_000));
    assert_eq!(s.due(31_999, &t, &h), None);
    assert_eq!(s.due(32_000, &t, &h), Some(FlushTrigger::Interval));
}

#[test]
fn failures_back_off_exponentially() {
    let c = config("{}");
    let s = FlushSchedule::new(&c);
    let t = totals(1, 1, 1, 0);
    let mut h = FlushHistory {
        last_attempt_ms: Some(100_000),
        consecutive_failures: 1,
        ..FlushHistory::default()
    };
    assert_eq!(s.next_alarm(100_000, &t, &h), Some(101_000));
    assert_eq!(s.due(100_500, &t, &h), None);
    assert_eq!(s.due(101_000, &t, &h), Some(FlushTrigger::Retry));
    h.consecutive_failures = 3;
    assert_eq!(s.next_alarm(100_000, &t, &h), Some(104_000));
    h.consecutive_failures = 30;
    assert_eq!(
        s.next_alarm(100_000, &t, &h),
        Some(100_000 + MAX_BACKOFF_MS)
    );
}

#[test]
fn chunks_are_bounded_but_never_empty() {
    let b = |row_id, size_bytes| BufferedBatch { row_id, size_bytes };
    assert_eq!(chunk_len(&[], 10), 0);
    assert_eq!(chunk_len(&[b(1, 50)], 10), 1);
    assert_eq!(chunk_len(&[b(1, 4), b(2, 4), b(3, 4)], 10), 2);
    assert_eq!(chunk_len(&[b(1, 4), b(2, 4), b(3, 2)], 10), 3);
}

fn ev(seq: u64, table: &str) -> CdcEvent {
    CdcEvent {
        sequence: seq,
        timestamp: 1_700_000_000_000,
        operation: Operation::Insert,
        table: table.into(),
        row_id: format!("r{seq}"),
        before: None,
        after: json!({"id": seq}).as_object().cloned(),
        metadata: None,
    }
}

#[test]
fn a_step_skips_per_table_what_that_table_committed() {
    let batches = vec![
        LoadedBatch {
            row_id: 3,
            source_id: "a".into(),
            batch_seq: 0,
            events: vec![ev(0, "users"), ev(1, "orders")],
        },
        LoadedBatch {
            row_id: 4,
            source_id: "a".into(),
            batch_seq: 1,
            events: vec![ev(2, "users"), ev(3, "orders")],
        },
    ];
    // `users` committed row 3 in a flush that crashed before `orders`.
    let work = plan_step(batches.clone(), |t| (t == "users").then_some(3));
    let users = &work["users"];
    assert_eq!(
        users.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(users.skipped_events, 1);
    assert_eq!(users.mark, 4);
    let orders = &work["orders"];
    assert_eq!(
        orders.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert_eq!(orders.events[0].source_id, "a");
    assert_eq!(orders.events[1].batch_seq, 1);
    // Everything committed: nothing left to write, but the table is listed.
    let work = plan_step(batches, |_| Some(4));
    assert!(work.values().all(|w| w.events.is_empty()));
}

#[test]
fn marks_round_trip_through_a_summary() {
    let mut summary = BTreeMap::new();
    summary.insert(buffer_mark_key("e1"), "42".to_string());
    assert_eq!(buffer_mark(&summary, "e1"), Some(42));
    assert_eq!(buffer_mark(&summary, "e2"), None);
}

#[test]
fn commits_carry_every_buffer_mark_forward() {
    use crate::lake::{plan_commit_with_marks, CommitIds, WriteOptions};
    let config = DoLakeConfig::default();
    let options = WriteOptions::from_config(&config, "users");
    let ids = |n: u128| CommitIds {
        snapshot_id: n as i64,
        commit_uuid: uuid::Uuid::from_u128(n),
        table_uuid: uuid::Uuid::from_u128(99),
        now_ms: 1_700_000_000_000 + n as i64,
    };
    let events = vec![into_change_event("a", 0, ev(0, "users"))];
    let marks = |k: &str, v: i64| BTreeMap::from([(buffer_mark_key(k), v.to_string())]);
    let first = plan_commit_with_marks(&events, None, &options, &ids(1), &marks("e1", 5)).unwrap();
    let second = plan_commit_with_marks(
        &events,
        Some(&first.state),
        &options,
        &ids(2),
        &marks("e2", 7),
    )
    .unwrap();
    let third = plan_commit_with_marks(
        &events,
        Some(&second.state),
        &options,
        &ids(3),
        &marks("e1", 9),
    )
    .unwrap();
    let summary = &third.state.metadata.current_snapshot().unwrap().summary;
    assert_eq!(buffer_mark(summary, "e1"), Some(9));
    assert_eq!(buffer_mark(summary, "e2"), Some(7));
    let bad = BTreeMap::from([("other".to_string(), "1".to_string())]);
    assert!(plan_commit_with_marks(&events, None, &options, &ids(4), &bad).is_err());
}

#[test]
fn a_flush_cut_by_its_time_budget_goes_on_at_once() {
    let c = config("{}");
    let s = FlushSchedule::new(&c);
    let t = totals(100, 1_000, 1_000, 0);
    let mut h = FlushHistory {
        last_success_ms: Some(10),
        continuing: true,
        ..FlushHistory::default()
    };
    assert_eq!(s.due(20, &t, &h), Some(FlushTrigger::Continue));
    assert_eq!(s.next_alarm(20, &t, &h), Some(20));
    h.continuing = false;
    assert_eq!(s.due(20, &t, &h), None, "otherwise the thresholds decide");
    assert_eq!(
        s.due(
            20,
            &BufferTotals::default(),
            &FlushHistory {
                continuing: true,
                ..h
            }
        ),
        None
    );
}

#[test]
fn maintenance_runs_an_interval_after_flushes_and_daily_when_idle() {
    use crate::config::MaintenanceConfig;
    let config = MaintenanceConfig::default();
    let hour = 3_600_000;
    let mut history = FlushHistory::default();
    assert_eq!(
        history.maintenance.next_run(&config, &history),
        None,
        "no table yet"
    );
    history.tables.insert("users".into());
    history.last_success_ms = Some(10 * hour);
    assert_eq!(
        history.maintenance.next_run(&config, &history),
        Some(11 * hour)
    );
    // A run at 11 h; flushes since: the next one an interval later.
    let report = maintenance::Report::default();
    history
        .maintenance
        .record(11 * hour, 11 * hour + 5, &report, true);
    history.last_success_ms = Some(11 * hour + 30_000);
    assert_eq!(
        history.maintenance.next_run(&config, &history),
        Some(12 * hour)
    );
    // No flush since the run: a day later.
    history.last_success_ms = Some(10 * hour);
    assert_eq!(
        history.maintenance.next_run(&config, &history),
        Some(35 * hour)
    );
    // A run cut by its budget goes on at once.
    let more = maintenance::Report {
        more: true,
        ..Default::default()
    };
    history
        .maintenance
        .record(12 * hour, 12 * hour + 5, &more, false);
    assert_eq!(
        history.maintenance.next_run(&config, &history),
        Some(12 * hour)
    );
    // Orphans: a day after the last run that scanned (11 h; the cut run
    // at 12 h did not).
    assert!(!history.maintenance.orphan_scan_due(35 * hour - 1));
    assert!(history.maintenance.orphan_scan_due(35 * hour));
    // Off: never.
    let off = MaintenanceConfig {
        enabled: false,
        ..config
    };
    assert_eq!(history.maintenance.next_run(&off, &history), None);
}
