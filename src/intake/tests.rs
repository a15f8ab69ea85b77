use super::*;
use crate::protocol::{events_digest, CdcEvent, Operation};
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
        message_type: None,
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
            (intake.commit(now, *plan), Some(record))
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
        (
            rec.first_event_seq,
            rec.facts.last_event_seq,
            rec.facts.event_count
        ),
        (0, 2, 3)
    );
    assert_eq!(rec.tables, vec!["users".to_string()]);
    let stored: Vec<CdcEvent> = serde_json::from_str(&rec.payload).unwrap();
    assert_eq!(stored, batch("a", 0, 0..3).events.into_vec().unwrap());
    send(&mut i, 20, batch("b", 0, 0..2));
    let totals = i.buffer().clone();
    assert_eq!(totals.batches, 2);
    assert_eq!(totals.events, 5);
    assert_eq!(totals.oldest_ms, Some(10));
    assert_eq!(totals.newest_ms, Some(20));
    assert_eq!(
        totals.bytes,
        rec.facts.size_bytes + {
            let (_, r) = send(&mut intake("{}"), 0, batch("b", 0, 0..2));
            r.unwrap().facts.size_bytes
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

/// The guide's `DoSQL` class, exactly as far as DoLake can see it: it
/// persists `batch_sequence` before each send and never persists
/// `cdc_sequence`; its retries resend the same events under the same
/// `sequenceNumber`.
struct GuideShard {
    id: String,
    /// `ctx.storage` across restarts.
    stored_batch_sequence: u64,
    /// In memory only.
    cdc_sequence: u64,
    sequence_number: u64,
    retry_queue: Vec<CdcBatchMessage>,
}

impl GuideShard {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            stored_batch_sequence: 0,
            cdc_sequence: 0,
            sequence_number: 0,
            retry_queue: Vec::new(),
        }
    }
    /// The constructor after an eviction or a deploy.
    fn restart(&mut self) {
        self.cdc_sequence = 0; // `ctx.storage.get('cdc_sequence')` was never written.
        self.sequence_number = self.stored_batch_sequence;
        self.retry_queue.clear();
    }
    /// `captureCDC` x n, then `flushCDCBuffer`.
    fn next_batch(&mut self, n: u64, tag: &str) -> CdcBatchMessage {
        let events = (0..n)
            .map(|k| {
                let mut e = event(self.cdc_sequence, "users");
                e.row_id = format!("{tag}-{k}");
                e.after = json!({"id": format!("{tag}-{k}")}).as_object().cloned();
                self.cdc_sequence += 1;
                e
            })
            .collect();
        let seq = self.sequence_number;
        self.sequence_number += 1;
        self.stored_batch_sequence = self.sequence_number;
        let mut b = batch(&self.id, seq, 0..0);
        b.events = events;
        b
    }
}

#[test]
fn a_restarted_guide_shard_never_has_new_rows_dropped() {
    let mut i = intake("{}");
    let mut shard = GuideShard::new("do-1");
    let mut stored = Vec::new();
    for round in 0..3 {
        for b in 0..4 {
            let batch = shard.next_batch(5, &format!("r{round}b{b}"));
            let (m, rec) = send(&mut i, 0, batch.clone());
            assert_eq!(ack(&m).status, AckStatus::Ok, "round {round} batch {b}");
            stored.push(rec.unwrap());
            // The ack is lost once per round: the guide resends the batch.
            if b == 1 {
                shard.retry_queue.push(batch);
            }
        }
        for resend in std::mem::take(&mut shard.retry_queue) {
            let (m, rec) = send(&mut i, 0, resend);
            assert_eq!(ack(&m).status, AckStatus::Duplicate);
            assert!(rec.is_none(), "a resend is never stored twice");
        }
        shard.restart();
    }
    // 3 restarts x 4 batches x 5 events, each once, though event sequences
    // went 0..20 three times.
    assert_eq!(stored.len(), 12);
    assert_eq!(i.buffer().events, 60);
    let rows: std::collections::BTreeSet<String> = stored
        .iter()
        .flat_map(|r| {
            serde_json::from_str::<Vec<CdcEvent>>(&r.payload)
                .unwrap()
                .into_iter()
                .map(|e| e.row_id)
        })
        .collect();
    assert_eq!(rows.len(), 60);
}

#[test]
fn a_reused_sequence_number_with_other_events_is_stored_not_dropped() {
    let mut i = intake("{}");
    send(&mut i, 0, batch("a", 0, 0..5));
    // A shard that lost its batch counter: number 0 again, other events.
    let (m, rec) = send(&mut i, 1, batch("a", 0, 100..105));
    assert_eq!(ack(&m).status, AckStatus::Ok);
    assert_eq!(rec.unwrap().facts.event_count, 5);
    assert_eq!(i.source("a").unwrap().reused_sequence_numbers, 1);
    // Either content resent: a duplicate.
    for range in [0..5, 100..105] {
        let (m, rec) = send(&mut i, 2, batch("a", 0, range));
        assert_eq!(ack(&m).status, AckStatus::Duplicate);
        assert!(rec.is_none());
    }
    assert_eq!(i.buffer().events, 10);
}

#[test]
fn past_the_fingerprint_window_an_acked_number_stays_a_duplicate() {
    let mut i = intake("{}");
    for seq in 0..(FINGERPRINT_WINDOW as u64 + 10) {
        send(&mut i, 0, batch("a", seq, seq * 2..seq * 2 + 2));
    }
    assert_eq!(
        i.source("a").unwrap().fingerprints.len(),
        FINGERPRINT_WINDOW
    );
    let (m, rec) = send(&mut i, 0, batch("a", 0, 999..1001));
    assert_eq!(ack(&m).status, AckStatus::Duplicate);
    assert!(rec.is_none());
}

#[test]
fn an_older_batch_that_was_never_acked_is_stored() {
    let mut i = intake(r#"{"maxBufferSize":100000,"flushThresholdBytes":1000}"#);
    // Batch 1 arrives first (batch 0 was nacked by the shard's view).
    send(&mut i, 0, batch("a", 1, 10..20));
    let (m, rec) = send(&mut i, 1, batch("a", 0, 0..10));
    assert_eq!(ack(&m).status, AckStatus::Ok);
    assert_eq!(rec.unwrap().facts.event_count, 10);
    assert_eq!(i.source("a").unwrap().acked_batches.ranges(), &[(0, 1)]);
}

#[test]
fn every_event_of_a_new_batch_is_kept_even_with_repeated_sequences() {
    let mut i = intake("{}");
    let mut b = batch("a", 0, 0..3);
    b.events.to_mut().push(event(1, "users"));
    let (m, rec) = send(&mut i, 0, b);
    assert_eq!(ack(&m).details.as_ref().unwrap().events_processed, 4);
    assert_eq!(rec.unwrap().facts.event_count, 4);
}

#[test]
fn a_client_declared_size_sizes_nothing() {
    let mut i = intake("{}");
    let mut b = batch("a", 0, 0..3);
    b.size_bytes = Some(3_000_000_000);
    let (m, rec) = send(&mut i, 0, b);
    assert_eq!(ack(&m).status, AckStatus::Ok);
    assert!(rec.unwrap().payload.capacity() < 10_000);
}

#[test]
fn sources_are_bounded_and_idle_ones_evicted() {
    let mut i = intake("{}");
    for k in 0..MAX_SOURCES {
        let (m, _) = send(&mut i, k as i64, batch(&format!("s{k}"), 0, 0..1));
        assert_eq!(ack(&m).status, AckStatus::Ok);
    }
    // Full, nobody idle long enough: a new source waits.
    let (m, _) = send(&mut i, 1_000, batch("new", 0, 0..1));
    let n = nack_of(&m);
    assert_eq!(n.reason, "load_shedding");
    assert!(n.should_retry);
    // Known sources go on.
    let (m, _) = send(&mut i, 5_000, batch("s1", 1, 1..2));
    assert_eq!(ack(&m).status, AckStatus::Ok);
    // A month later the idle ones make room, oldest first.
    let later = SOURCE_RETENTION_MS + 5_000;
    match i.admit(later, batch("new", 0, 0..1)) {
        Admission::Store(plan) => {
            assert_eq!(plan.evicted.len(), MAX_SOURCES / 10);
            assert_eq!(plan.evicted[0], "s0");
            assert!(
                !plan.evicted.contains(&"s1".to_string()),
                "s1 was seen last"
            );
            i.commit(later, *plan);
        }
        other => panic!("{other:?}"),
    }
    assert!(i.source("s0").is_none() && i.source("new").is_some());
    // connect and heartbeat of an unknown source create no state.
    assert!(i.note_contact(later, "ghost", None, Some(1)).is_none());
    assert!(i.source("ghost").is_none());
}

#[test]
fn too_sparse_batch_numbers_are_refused_not_dropped() {
    let mut i = intake("{}");
    for k in 0..MAX_WATERMARK_RANGES as u64 {
        let (m, _) = send(&mut i, 0, batch("a", k * 2, 0..1));
        assert_eq!(ack(&m).status, AckStatus::Ok);
    }
    let (m, _) = send(&mut i, 0, batch("a", 1_000_000, 0..1));
    assert_eq!(nack_of(&m).reason, "invalid_sequence");
    // Filling a gap still works.
    let (m, _) = send(&mut i, 0, batch("a", 1, 0..1));
    assert_eq!(ack(&m).status, AckStatus::Ok);
}

#[test]
fn events_the_lake_cannot_write_are_refused_naming_the_field() {
    let mut i = intake("{}");
    let mut b = batch("a", 0, 0..3);
    b.events.to_mut()[1].timestamp = 9_300_000_000_000_000;
    let (m, rec) = send(&mut i, 0, b);
    let n = nack_of(&m);
    assert_eq!(n.reason, "invalid_format");
    assert!(n.error_message.contains("events[1]"), "{}", n.error_message);
    assert!(n.error_message.contains("timestamp"), "{}", n.error_message);
    assert!(rec.is_none());
    let mut b = batch("a", 1, 0..3);
    b.events.to_mut()[2].sequence = u64::MAX;
    let (m, _) = send(&mut i, 0, b);
    assert!(nack_of(&m).error_message.contains("sequence"));
    assert_eq!(i.buffer().events, 0);
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
    // Refusals of an unknown source create no state.
    send(&mut i, 0, batch("new", 0, 0..4));
    assert!(i.source("new").is_none());
    send(&mut i, 0, batch("a", 9, 0..1));
    let (m, _) = send(&mut i, 0, batch("a", 0, 0..4));
    let n = nack_of(&m);
    assert_eq!(n.reason, "invalid_format");
    assert!(n.error_message.contains("maxEventsPerMessage"));
    assert!(!n.should_retry);
    let mut b = batch("a", 1, 0..2);
    b.events.to_mut()[1].after = json!({"blob": "x".repeat(500)}).as_object().cloned();
    let (m, _) = send(&mut i, 0, b);
    let n = nack_of(&m);
    assert_eq!(n.reason, "event_too_large");
    assert_eq!(n.max_size, Some(150));
    assert!(!n.should_retry);
    assert_eq!(i.buffer().events, 1, "nothing of a refused batch is kept");
    assert!(!i.source("a").unwrap().acked_batches.contains(1));
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
            i.commit(0, *plan);
            // The source's row as a flush folds it.
            persisted = vec![serde_json::to_string(i.source("a").unwrap()).unwrap()];
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
    assert_eq!(restarted.buffer(), &buffer);
    // A new batch number with event sequences seen before is new data.
    let (m, _) = send(&mut restarted, 1, batch("a", 9, 0..6));
    assert_eq!(ack(&m).status, AckStatus::Ok);
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
        facts: BatchFacts {
            source_id: "a".into(),
            batch_seq: 0,
            last_event_seq: 0,
            event_count: 1,
            size_bytes: 0,
            received_at: 0,
            fingerprint: None,
        },
        first_event_seq: 0,
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

fn decoded(text: &str) -> CdcBatchMessage {
    match crate::protocol::decode_client_message(text) {
        Ok(crate::protocol::ClientMessage::CdcBatch(b)) => b,
        other => panic!("expected a batch, got {other:?}"),
    }
}

#[test]
fn a_batch_is_stored_as_received_and_decodes_to_the_same_events() {
    let mut i = intake("{}");
    let text = r#"{"type":"cdc_batch","sourceDoId":"a","sequenceNumber":1,"events":[
        {"sequence":1,"timestamp":5,"operation":"INSERT","table":"t","rowId":"r1","after":{"z":1.50,"a":"\u00e9","n":null}},
        {"table":"t","operation":"DELETE","rowId":7,"sequence":2,"timestamp":6,"before":{"id":7}}]}"#;
    let batch = decoded(text);
    let events = batch.events.clone().into_vec().unwrap();
    let (reply, record) = send(&mut i, 1, batch);
    ack(&reply);
    let record = record.unwrap();
    // The events' own text, numbers and escapes as sent.
    assert!(
        record.payload.contains(r#""z":1.50,"a":"\u00e9""#),
        "{}",
        record.payload
    );
    assert_eq!(record.facts.size_bytes, record.payload.len() as u64);
    let stored = crate::intake::decode_events(&record.payload).unwrap();
    assert_eq!(stored, events, "a flush reads the same events");
}

#[test]
fn a_resend_as_other_text_is_still_a_duplicate() {
    let mut i = intake("{}");
    let first = r#"{"type":"cdc_batch","sourceDoId":"a","sequenceNumber":1,"events":[{"sequence":1,"timestamp":5,"operation":"INSERT","table":"t","rowId":"r1","after":{"id":1,"name":"x"}}]}"#;
    // Same events, keys in another order, other spacing, the rowId a number.
    let again = r#"{"sequenceNumber":1,"isRetry":true,"sourceDoId":"a","type":"cdc_batch","events":[ {"after":{"name":"x", "id":1},"rowId":"r1","table":"t","operation":"INSERT","timestamp":5,"sequence":1} ]}"#;
    let other = r#"{"type":"cdc_batch","sourceDoId":"a","sequenceNumber":1,"events":[{"sequence":1,"timestamp":5,"operation":"INSERT","table":"t","rowId":"r1","after":{"id":1,"name":"y"}}]}"#;
    ack(&send(&mut i, 1, decoded(first)).0);
    let (reply, record) = send(&mut i, 2, decoded(again));
    assert_eq!(ack(&reply).status, AckStatus::Duplicate);
    assert!(record.is_none());
    let (reply, record) = send(&mut i, 3, decoded(other));
    assert_ne!(
        ack(&reply).status,
        AckStatus::Duplicate,
        "other events are not a resend"
    );
    assert!(record.is_some());
    assert_eq!(i.source("a").unwrap().reused_sequence_numbers, 1);
}

#[test]
fn a_resend_of_a_batch_acked_by_an_older_version_is_still_a_duplicate() {
    // The source's state as a version with the FNV print of the events
    // encoded again left it: batch 1 acked, its print in the window.
    let mut b = batch("a", 1, 0..3);
    let mut source = SourceState::new("a", 0);
    source.acked_batches.insert(1);
    source.remember(1, legacy_fingerprint(b.events.to_mut()));
    let mut i = Intake::new(
        DoLakeConfig::parse(Some("{}")).unwrap(),
        vec![source],
        BufferTotals::default(),
    );
    let (reply, record) = send(&mut i, 1, b);
    assert_eq!(ack(&reply).status, AckStatus::Duplicate);
    assert!(record.is_none());
    // Other events under that number are stored (and counted).
    let (reply, record) = send(&mut i, 2, batch("a", 1, 5..6));
    assert_ne!(ack(&reply).status, AckStatus::Duplicate);
    assert!(record.is_some());
}

#[test]
fn the_fingerprint_is_stable_and_sees_every_field() {
    let events = batch("a", 1, 0..2).events.into_vec().unwrap();
    let base = events_digest(&events);
    // A stored value: it must not change between builds or targets.
    assert_eq!(base, 0x9441_816c_6ec5_36d0);
    let mut changed = events.clone();
    changed[1].row_id.push('x');
    assert_ne!(events_digest(&changed), base);
    let mut changed = events.clone();
    changed[0]
        .after
        .as_mut()
        .unwrap()
        .insert("name".into(), json!("y"));
    assert_ne!(events_digest(&changed), base);
    let mut changed = events.clone();
    changed[0]
        .after
        .as_mut()
        .unwrap()
        .insert("id".into(), json!(0.0));
    assert_ne!(
        events_digest(&changed),
        base,
        "0 and 0.0 are different values"
    );
    let mut changed = events.clone();
    changed.swap(0, 1);
    assert_ne!(events_digest(&changed), base, "order matters");
}

/// Where the CPU of one batch goes on the intake path, natively (issue 12's
/// profile; the WASM factor is in docs/benchmarks.md):
/// `cargo test --release --lib intake::tests::intake_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn intake_cost() {
    use std::time::Instant;
    let config = crate::config::DoLakeConfig::parse(Some(
        r#"{"maxBufferSize":4000000000,"flushThresholdBytes":4000000000}"#,
    ))
    .unwrap();
    for events_per_batch in [100usize, 1000] {
        let batches = 200_000 / events_per_batch;
        let texts: Vec<String> = (0..batches)
            .map(|b| {
                let events: Vec<serde_json::Value> = (0..events_per_batch)
                    .map(|i| {
                        let seq = b * events_per_batch + i;
                        let table = ["users", "orders", "items"][seq % 3];
                        serde_json::json!({"sequence": seq, "timestamp": 1_760_000_000_000u64 + seq as u64,
                            "operation": "INSERT", "table": table, "rowId": format!("row-{seq}"),
                            "after": {"id": seq, "name": format!("name-{seq}"), "email": format!("user{seq}@example.com"),
                                      "score": seq as f64 / 7.0, "active": seq % 2 == 0, "city": "Lisbon", "note": "x".repeat(40)}})
                    })
                    .collect();
                serde_json::json!({"type": "cdc_batch", "timestamp": 1_760_000_000_000u64, "correlationId": format!("c-{b}"),
                    "sourceDoId": "src-1", "sourceShardName": "shard-1", "events": events, "sequenceNumber": b,
                    "isRetry": false, "retryCount": 0})
                .to_string()
            })
            .collect();
        let bytes: usize = texts.iter().map(String::len).sum();
        let mut intake = Intake::new(config.clone(), Vec::new(), BufferTotals::default());
        let (mut decode, mut admit, mut state, mut commit) = (0.0, 0.0, 0.0, 0.0);
        for (b, text) in texts.iter().enumerate() {
            let t = Instant::now();
            let Ok(crate::protocol::ClientMessage::CdcBatch(batch)) =
                crate::protocol::decode_client_message(text)
            else {
                panic!("decodes")
            };
            let t1 = Instant::now();
            let Admission::Store(plan) = intake.admit(b as i64, batch) else {
                panic!("stored")
            };
            let t2 = Instant::now();
            // What the store writes besides the payload: the source's state as JSON.
            let source_json = serde_json::to_string(&plan.source).unwrap();
            assert!(!source_json.is_empty());
            let t3 = Instant::now();
            let ack = intake.commit(b as i64, *plan).to_json();
            assert!(ack.contains("\"ack\""));
            let t4 = Instant::now();
            decode += (t1 - t).as_secs_f64();
            admit += (t2 - t1).as_secs_f64();
            state += (t3 - t2).as_secs_f64();
            commit += (t4 - t3).as_secs_f64();
        }
        let events = (batches * events_per_batch) as f64;
        let per_event = |s: f64| s * 1e9 / events;
        println!(
            "intake_cost: {batches} batches x {events_per_batch} events ({:.0} B/event): per event decode {:.0} ns, admit (dedup, limits, payload encoding) {:.0} ns, source state JSON {:.0} ns, commit + ack {:.0} ns; total {:.0} ns/event = {:.0} events/s on one core",
            bytes as f64 / events,
            per_event(decode),
            per_event(admit),
            per_event(state),
            per_event(commit),
            per_event(decode + admit + state + commit),
            events / (decode + admit + state + commit)
        );
    }
}

/// The rows of `sources` and `batches` as the Durable Object's store keeps
/// them (adapter/store.rs): a source's row holds its state as of
/// `folded_through`, a batch's row what it added to its source.
#[derive(Default)]
struct Rows {
    sources: BTreeMap<String, (SourceState, i64)>,
    batches: Vec<(i64, BatchFacts)>,
    last_id: i64,
}

impl Rows {
    fn write_source(&mut self, source: &SourceState) {
        let folded_through = self.batches.last().map_or(0, |b| b.0);
        self.sources
            .insert(source.source_id.clone(), (source.clone(), folded_through));
    }

    fn write_plan(&mut self, plan: &StorePlan) {
        for id in &plan.evicted {
            self.sources.remove(id);
        }
        self.last_id += 1;
        self.batches.push((self.last_id, plan.record.facts.clone()));
        if let Some(source) = &plan.source {
            self.write_source(source);
        }
    }

    /// The flush's delete: the unfolded sources' rows, then the batches.
    fn delete_through(&mut self, intake: &mut Intake, last: i64) {
        let unfolded: Vec<SourceState> = intake.unfolded().cloned().collect();
        for source in &unfolded {
            self.write_source(source);
        }
        self.batches.retain(|b| b.0 > last);
        intake.folded();
    }

    /// A new object over these rows.
    fn restart(&self, config: &DoLakeConfig, buffer: BufferTotals) -> Intake {
        let sources = self.sources.values().map(|s| s.0.clone()).collect();
        let mut intake = Intake::new(config.clone(), sources, buffer);
        intake.replay(self.batches.iter().filter_map(|(id, facts)| {
            let (_, folded_through) = self.sources.get(&facts.source_id)?;
            (id > folded_through).then(|| facts.clone())
        }));
        intake
    }
}

#[derive(Debug, Clone)]
enum Step {
    Batch {
        source: u8,
        seq: u64,
        events: u8,
        shard: u8,
    },
    Contact(u8),
    Flush(u8),
    Restart,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (0u8..3, 0u64..6, 0u8..3, 0u8..2).prop_map(|(source, seq, events, shard)| {
            Step::Batch { source, seq, events, shard }
        }),
        1 => (0u8..3).prop_map(Step::Contact),
        2 => (0u8..=100).prop_map(Step::Flush),
        1 => Just(Step::Restart),
    ]
}

proptest::proptest! {
    /// Whatever was stored, refused, folded or flushed, an object started
    /// over the rows holds, for every source, the state the live one held:
    /// the same dedup watermarks and prints, the same counters.
    #[test]
    fn a_restart_restores_every_source_as_it_was(
        steps in proptest::collection::vec(step(), 1..60),
        dedup in proptest::bool::ANY,
    ) {
        let config = DoLakeConfig::parse(Some(&format!(
            r#"{{"enableDeduplication":{dedup},"maxBufferSize":6000,"flushThresholdBytes":6000}}"#
        )))
        .unwrap();
        let mut rows = Rows::default();
        let mut live = Intake::new(config.clone(), vec![], BufferTotals::default());
        for (now, step) in steps.into_iter().enumerate() {
            let now = now as i64 * 1_000;
            match step {
                Step::Batch { source, seq, events, shard } => {
                    let name = format!("s{source}");
                    let mut b = batch(&name, seq, seq * 10 + u64::from(events)..seq * 10 + 3);
                    b.source_shard_name = Some(format!("shard-{shard}"));
                    match live.admit(now, b) {
                        Admission::Store(plan) => {
                            rows.write_plan(&plan);
                            live.commit(now, *plan);
                        }
                        Admission::Reply(_) => {
                            // The session saves a refused batch's counters.
                            if let Some(s) = live.source(&name) {
                                rows.write_source(s);
                            }
                        }
                    }
                }
                Step::Contact(source) => {
                    let name = format!("s{source}");
                    if let Some(s) = live.note_contact(now, &name, Some("contact"), Some(7)) {
                        let s = s.clone();
                        rows.write_source(&s);
                    }
                }
                Step::Flush(share) => {
                    let ids: Vec<i64> = rows.batches.iter().map(|b| b.0).collect();
                    if let Some(&last) = ids.get(ids.len() * usize::from(share) / 101) {
                        rows.delete_through(&mut live, last);
                        let left = &rows.batches;
                        live.set_buffer(BufferTotals {
                            batches: left.len() as u64,
                            events: left.iter().map(|b| b.1.event_count).sum(),
                            bytes: left.iter().map(|b| b.1.size_bytes).sum(),
                            ..BufferTotals::default()
                        });
                    }
                }
                Step::Restart => {
                    live = rows.restart(&config, live.buffer().clone());
                }
            }
            let restarted = rows.restart(&config, live.buffer().clone());
            let want: Vec<&SourceState> = live.sources().collect();
            let got: Vec<&SourceState> = restarted.sources().collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn a_batch_writes_its_source_row_only_when_its_row_cannot_say_it() {
    let mut i = intake("{}");
    let plan = |i: &mut Intake, b: CdcBatchMessage| match i.admit(0, b) {
        Admission::Store(plan) => plan,
        other => panic!("expected a plan, got {other:?}"),
    };
    // A new source: its row is written with the batch.
    let p = plan(&mut i, batch("a", 0, 0..3));
    assert!(p.source.is_some());
    i.commit(0, *p);
    assert_eq!(i.unfolded().count(), 0);
    // The same shard name: the batch's row alone.
    let p = plan(&mut i, batch("a", 1, 3..6));
    assert!(p.source.is_none());
    i.commit(0, *p);
    assert_eq!(
        i.unfolded()
            .map(|s| s.source_id.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    // A new shard name: written, which folds the source.
    let mut b = batch("a", 2, 6..9);
    b.source_shard_name = Some("renamed".into());
    let p = plan(&mut i, b);
    assert!(p.source.is_some());
    i.commit(0, *p);
    assert_eq!(i.unfolded().count(), 0);
}
