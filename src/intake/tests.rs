use super::*;
use crate::protocol::{CdcEvent, Operation};
use serde_json::json;

fn event(sequence: u64, table: &str) -> CdcEvent {
    CdcEvent {
        sequence,
        timestamp: 1_700_000_000_000 + sequence as i64,
        operation: Operation::Insert,
        table: table.to_string(),
        row_id: format!("r{sequence}"),
        before: None,
        after: json!({"id": sequence, "name": "x"}).as_object().cloned(),
        metadata: None,
    }
}

fn batch(source: &str, seq: u64, events: std::ops::Range<u64>) -> CdcBatchMessage {
    CdcBatchMessage {
        timestamp: Some(1),
        correlation_id: Some(format!("c{seq}")),
        source_do_id: source.to_string(),
        source_shard_name: Some(format!("shard-{source}")),
        events: events.map(|s| event(s, "users")).collect(),
        sequence_number: seq,
        first_event_sequence: None,
        last_event_sequence: None,
        size_bytes: None,
        is_retry: false,
        retry_count: 0,
    }
}

fn intake(config: &str) -> Intake {
    Intake::new(
        DoLakeConfig::parse(Some(config)).unwrap(),
        vec![],
        BufferTotals::default(),
    )
}

/// Admits and, when asked to store, commits as if the write succeeded.
fn send(intake: &mut Intake, now: i64, b: CdcBatchMessage) -> (ServerMessage, Option<BatchRecord>) {
    match intake.admit(now, b) {
        Admission::Reply(m) => (m, None),
        Admission::Store(plan) => {
            let record = plan.record.clone();
            (intake.commit(now, *plan), record)
        }
    }
}

fn ack(m: &ServerMessage) -> &AckMessage {
    match m {
        ServerMessage::Ack(a) => a,
        other => panic!("expected ack, got {other:?}"),
    }
}

fn nack_of(m: &ServerMessage) -> &NackMessage {
    match m {
        ServerMessage::Nack(n) => n,
        other => panic!("expected nack, got {other:?}"),
    }
}

#[test]
fn stores_then_acks_with_exact_accounting() {
    let mut i = intake("{}");
    let (m, rec) = send(&mut i, 10, batch("a", 0, 0..3));
    let a = ack(&m);
    assert_eq!(a.status, AckStatus::Ok);
    assert_eq!(a.sequence_number, 0);
    assert_eq!(a.correlation_id.as_deref(), Some("c0"));
    assert_eq!(a.details.as_ref().unwrap().events_processed, 3);
    let rec = rec.unwrap();
    assert_eq!(
        (rec.first_event_seq, rec.last_event_seq, rec.event_count),
        (0, 2, 3)
    );
    assert_eq!(rec.tables, vec!["users".to_string()]);
    let stored: Vec<CdcEvent> = serde_json::from_str(&rec.payload).unwrap();
    assert_eq!(stored, batch("a", 0, 0..3).events);
    send(&mut i, 20, batch("b", 0, 0..2));
    let totals = i.buffer().clone();
    assert_eq!(totals.batches, 2);
    assert_eq!(totals.events, 5);
    assert_eq!(totals.oldest_ms, Some(10));
    assert_eq!(totals.newest_ms, Some(20));
    assert_eq!(
        totals.bytes,
        rec.size_bytes + {
            let (_, r) = send(&mut intake("{}"), 0, batch("b", 0, 0..2));
            r.unwrap().size_bytes
        }
    );
    let s = i.source("a").unwrap();
    assert_eq!(s.shard_name.as_deref(), Some("shard-a"));
    assert_eq!((s.batches_acked, s.events_acked), (1, 3));
}

#[test]
fn a_resent_batch_is_a_duplicate_and_stored_once() {
    let mut i = intake("{}");
    send(&mut i, 0, batch("a", 5, 0..10));
    let (m, rec) = send(&mut i, 1, batch("a", 5, 0..10));
    let a = ack(&m);
    assert_eq!(a.status, AckStatus::Duplicate);
    assert_eq!(a.batch_id.as_deref(), Some("a:5"));
    assert_eq!(a.details.as_ref().unwrap().events_processed, 10);
    assert!(rec.is_none());
    assert_eq!(i.buffer().events, 10);
    assert_eq!(i.source("a").unwrap().duplicate_batches, 1);
    assert_eq!(i.source("a").unwrap().events_received, 20);
    // The same sequence number from another source is not a duplicate.
    let (m, _) = send(&mut i, 2, batch("b", 5, 0..10));
    assert_eq!(ack(&m).status, AckStatus::Ok);
}

#[test]
fn events_already_stored_are_dropped_from_a_new_batch() {
    let mut i = intake("{}");
    send(&mut i, 0, batch("a", 0, 0..10));
    // Re-batched after a reconnect: 5..15 under a new sequence number.
    let (m, rec) = send(&mut i, 1, batch("a", 1, 5..15));
    assert_eq!(ack(&m).details.as_ref().unwrap().events_processed, 5);
    let rec = rec.unwrap();
    assert_eq!((rec.first_event_seq, rec.last_event_seq), (10, 14));
    assert_eq!(i.buffer().events, 15);
    // Entirely stored already: acked as duplicate, nothing buffered.
    let (m, rec) = send(&mut i, 2, batch("a", 2, 0..15));
    assert_eq!(ack(&m).status, AckStatus::Duplicate);
    assert!(rec.is_none());
    assert_eq!(i.buffer().events, 15);
    // And that batch number is now known too.
    let (m, _) = send(&mut i, 3, batch("a", 2, 0..15));
    assert_eq!(ack(&m).status, AckStatus::Duplicate);
}

#[test]
fn an_older_batch_that_was_never_acked_is_stored() {
    let mut i = intake(r#"{"maxBufferSize":100000,"flushThresholdBytes":1000}"#);
    // Batch 1 arrives first (batch 0 was nacked by the shard's view).
    send(&mut i, 0, batch("a", 1, 10..20));
    let (m, rec) = send(&mut i, 1, batch("a", 0, 0..10));
    assert_eq!(ack(&m).status, AckStatus::Ok);
    assert_eq!(rec.unwrap().event_count, 10);
    assert_eq!(i.source("a").unwrap().acked_batches.ranges(), &[(0, 1)]);
}

#[test]
fn duplicate_events_inside_one_batch_are_kept_once() {
    let mut i = intake("{}");
    let mut b = batch("a", 0, 0..3);
    b.events.push(event(1, "users"));
    let (m, rec) = send(&mut i, 0, b);
    assert_eq!(ack(&m).details.as_ref().unwrap().events_processed, 3);
    assert_eq!(rec.unwrap().event_count, 3);
}

#[test]
fn without_dedup_everything_is_stored() {
    let mut i = intake(r#"{"enableDeduplication":false}"#);
    send(&mut i, 0, batch("a", 0, 0..3));
    let (m, _) = send(&mut i, 0, batch("a", 0, 0..3));
    assert_eq!(ack(&m).status, AckStatus::Ok);
    assert_eq!(i.buffer().events, 6);
}

#[test]
fn a_full_buffer_refuses_with_retry_and_changes_nothing() {
    let mut i = intake(r#"{"maxBufferSize":1500,"flushThresholdBytes":1000}"#);
    let mut acked = 0;
    let mut refused = None;
    for seq in 0..100 {
        let (m, _) = send(&mut i, seq as i64, batch("a", seq, seq * 5..seq * 5 + 5));
        match m {
            ServerMessage::Ack(_) => acked += 1,
            ServerMessage::Nack(n) => {
                refused = Some((seq, n));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let (seq, n) = refused.expect("the buffer must fill");
    assert!(acked > 0);
    assert_eq!(n.reason, "buffer_full");
    assert!(n.should_retry);
    assert_eq!(n.retry_delay_ms, Some(BUFFER_FULL_RETRY_MS));
    assert_eq!(n.sequence_number, Some(seq));
    assert!(i.buffer().bytes <= 1500);
    // The refused batch was not recorded as seen: after space frees up it is stored.
    assert!(!i.source("a").unwrap().acked_batches.contains(seq));
    i.set_buffer(BufferTotals::default());
    let (m, _) = send(&mut i, 1000, batch("a", seq, seq * 5..seq * 5 + 5));
    assert_eq!(ack(&m).status, AckStatus::Ok);
}

#[test]
fn backpressure_hints_before_the_buffer_is_full() {
    let mut i = intake(r#"{"maxBufferSize":10000,"flushThresholdBytes":1000}"#);
    let mut saw_buffered = false;
    for seq in 0..1000 {
        let (m, _) = send(&mut i, 0, batch("a", seq, seq * 5..seq * 5 + 5));
        match m {
            ServerMessage::Ack(a) if a.status == AckStatus::Buffered => {
                let d = a.details.unwrap();
                assert!(d.buffer_utilization >= BACKPRESSURE_UTILIZATION);
                assert!(d.suggested_delay_ms.unwrap() > 0);
                saw_buffered = true;
            }
            ServerMessage::Ack(a) => {
                assert_eq!(a.status, AckStatus::Ok);
                assert!(!saw_buffered, "ok after buffered without a flush");
            }
            ServerMessage::Nack(n) => {
                assert_eq!(n.reason, "buffer_full");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(saw_buffered);
}

#[test]
fn size_limits_refuse_whole_batches() {
    let mut i = intake(r#"{"rateLimit":{"maxEventsPerMessage":3,"maxEventSize":150}}"#);
    let (m, _) = send(&mut i, 0, batch("a", 0, 0..4));
    let n = nack_of(&m);
    assert_eq!(n.reason, "invalid_format");
    assert!(n.error_message.contains("maxEventsPerMessage"));
    assert!(!n.should_retry);
    let mut b = batch("a", 1, 0..2);
    b.events[1].after = json!({"blob": "x".repeat(500)}).as_object().cloned();
    let (m, _) = send(&mut i, 0, b);
    let n = nack_of(&m);
    assert_eq!(n.reason, "event_too_large");
    assert_eq!(n.max_size, Some(150));
    assert!(!n.should_retry);
    assert_eq!(i.buffer().events, 0, "nothing of a refused batch is kept");
    assert!(!i.source("a").unwrap().stored_events.contains(0));
    assert_eq!(i.source("a").unwrap().batches_nacked, 2);
}

#[test]
fn recent_entries_expire_but_dedup_holds() {
    let mut i = intake(r#"{"deduplicationWindowMs":1000}"#);
    send(&mut i, 0, batch("a", 0, 0..3));
    assert_eq!(i.dedup_stats(10)["recentBatchesTracked"], 1);
    assert_eq!(i.dedup_stats(1000)["recentBatchesTracked"], 0);
    assert_eq!(i.dedup_stats(1000)["expiredEntries"], 1);
    let (m, _) = send(&mut i, 5000, batch("a", 0, 0..3));
    assert_eq!(ack(&m).status, AckStatus::Duplicate);
    assert_eq!(i.dedup_stats(5000)["duplicateBatches"], 1);
}

#[test]
fn state_survives_a_restart_through_its_persisted_form() {
    let mut i = intake("{}");
    let mut persisted = Vec::new();
    for seq in 0..3 {
        if let Admission::Store(plan) = i.admit(0, batch("a", seq, seq * 2..seq * 2 + 2)) {
            persisted = vec![serde_json::to_string(&plan.source).unwrap()];
            i.commit(0, *plan);
        }
    }
    let buffer = i.buffer().clone();
    let sources = persisted
        .iter()
        .map(|s| serde_json::from_str::<SourceState>(s).unwrap())
        .collect();
    let mut restarted = Intake::new(DoLakeConfig::default(), sources, buffer.clone());
    let (m, _) = send(&mut restarted, 1, batch("a", 1, 2..4));
    assert_eq!(ack(&m).status, AckStatus::Duplicate);
    let (m, _) = send(&mut restarted, 1, batch("a", 9, 0..6));
    assert_eq!(ack(&m).status, AckStatus::Duplicate);
    assert_eq!(restarted.buffer(), &buffer);
}

#[test]
fn status_reports_the_buffer() {
    let mut i = intake("{}");
    assert_eq!(i.state(), ServiceState::Idle);
    send(&mut i, 7, batch("a", 0, 0..3));
    let ServerMessage::Status(s) = i.status_message(9, 1, None) else {
        panic!()
    };
    assert_eq!(s.state, ServiceState::Receiving);
    assert_eq!(s.buffer.event_count, 3);
    assert_eq!(s.buffer.oldest_batch_time, Some(7));
    assert_eq!(s.connected_sources, 1);
}

#[test]
fn payload_chunks_cut_on_char_boundaries() {
    let record = BatchRecord {
        source_id: "a".into(),
        batch_seq: 0,
        first_event_seq: 0,
        last_event_seq: 0,
        event_count: 1,
        size_bytes: 0,
        received_at: 0,
        tables: vec![],
        payload: "aé€😀".repeat(1000),
    };
    for max in [4, 5, 7, 100, 1_000_000] {
        let chunks = record.payload_chunks(max);
        assert_eq!(chunks.concat(), record.payload);
        assert!(chunks.iter().all(|c| c.len() <= max && !c.is_empty()));
    }
}

#[test]
fn while_the_lake_fails_the_fallback_headroom_takes_batches() {
    let mut i =
        intake(r#"{"maxBufferSize":1500,"flushThresholdBytes":1000,"maxFallbackSize":1000}"#);
    let fill = |i: &mut Intake, from: u64| {
        let mut seq = from;
        loop {
            let (m, _) = send(i, 0, batch("a", seq, seq * 5..seq * 5 + 5));
            seq += 1;
            if let ServerMessage::Nack(n) = m {
                assert_eq!(n.reason, "buffer_full");
                return (seq - 1, i.buffer().bytes);
            }
        }
    };
    let (next, full) = fill(&mut i, 0);
    assert!(full <= 1500);
    i.set_lake_failing(true);
    let (m, _) = send(&mut i, 0, batch("a", next, next * 5..next * 5 + 5));
    assert_eq!(ack(&m).status, AckStatus::Fallback);
    let (_, with_fallback) = fill(&mut i, next + 1);
    assert!(with_fallback > 1500 && with_fallback <= 2500);
    // Without the fallback option the limit stays maxBufferSize.
    let mut strict =
        intake(r#"{"maxBufferSize":1500,"flushThresholdBytes":1000,"enableFallback":false}"#);
    strict.set_lake_failing(true);
    let (_, bytes) = fill(&mut strict, 0);
    assert!(bytes <= 1500);
}
