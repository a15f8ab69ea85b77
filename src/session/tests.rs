use std::cell::{Cell, RefCell};

use super::*;
use crate::flush::FlushHistory;
use crate::protocol::{AckMessage, NackMessage};
use serde_json::json;

/// Storage and sockets in memory; a write fails while `fail_writes` is set.
#[derive(Default)]
struct MemoryHost {
    plans: RefCell<Vec<StorePlan>>,
    sources: RefCell<BTreeMap<String, SourceState>>,
    refusals: RefCell<BTreeMap<String, u64>>,
    bucket: RefCell<Option<TokenBucket>>,
    open: RefCell<Vec<Connection>>,
    fail_writes: Cell<bool>,
}

impl Host for MemoryHost {
    fn write_plan(&self, plan: &StorePlan) -> Result<(), Error> {
        if self.fail_writes.get() {
            return Err(Error::storage("disk on fire"));
        }
        self.plans.borrow_mut().push(plan.clone());
        if let Some(source) = &plan.source {
            self.save_source(source)?;
        }
        Ok(())
    }
    fn save_source(&self, source: &SourceState) -> Result<(), Error> {
        let mut sources = self.sources.borrow_mut();
        sources.insert(source.source_id.clone(), source.clone());
        Ok(())
    }
    fn save_refusals(&self, counts: &BTreeMap<String, u64>) -> Result<(), Error> {
        *self.refusals.borrow_mut() = counts.clone();
        Ok(())
    }
    fn save_connection_bucket(&self, bucket: &TokenBucket) -> Result<(), Error> {
        *self.bucket.borrow_mut() = Some(*bucket);
        Ok(())
    }
    fn connections(&self) -> Vec<Connection> {
        self.open.borrow().clone()
    }
    fn flush_times(&self) -> (Option<i64>, Option<i64>) {
        (Some(111), Some(222))
    }
}

const NOW: i64 = 1_700_000_000_000;

fn session(config: &str) -> Session {
    Session::new(
        DoLakeConfig::parse(Some(config)).unwrap(),
        Restored::default(),
    )
}

fn batch_text(source: &str, seq: u64, events: u64) -> String {
    let events: Vec<serde_json::Value> = (0..events)
        .map(|i| {
            json!({"sequence": i, "timestamp": NOW, "operation": "INSERT", "table": "users",
                   "rowId": format!("r{seq}-{i}"), "after": {"id": i, "name": "x"}})
        })
        .collect();
    json!({"type": "cdc_batch", "sourceDoId": source, "sequenceNumber": seq,
           "correlationId": format!("c{seq}"), "events": events})
    .to_string()
}

fn text(s: &mut Session, conn: &mut Connection, host: &MemoryHost, t: &str) -> Outcome {
    s.on_frame(NOW, conn, Frame::Text(t), host)
}

fn ack(out: &Outcome) -> &AckMessage {
    match out.message() {
        Some(ServerMessage::Ack(a)) => a,
        other => panic!("expected an ack, got {other:?}"),
    }
}

fn nack(out: &Outcome) -> &NackMessage {
    match out.message() {
        Some(ServerMessage::Nack(n)) => n,
        other => panic!("expected a nack, got {other:?}"),
    }
}

#[test]
fn a_batch_is_stored_before_its_ack_which_carries_the_connection_rate_limit() {
    let mut s = session(r#"{"rateLimit":{"messagesPerSecond":10}}"#);
    let host = MemoryHost::default();
    let mut conn = Connection::default();
    let out = text(&mut s, &mut conn, &host, &batch_text("a", 1, 3));
    let a = ack(&out);
    assert_eq!(a.sequence_number, 1);
    assert_eq!(host.plans.borrow().len(), 1, "stored once, before the ack");
    let rate = a.rate_limit.as_ref().unwrap();
    assert_eq!((rate.limit, rate.remaining), (10, 9));
    let details = a.details.as_ref().unwrap();
    assert_eq!(details.remaining_tokens, Some(9));
    assert_eq!(details.bucket_capacity, Some(10));
    assert!(out.wake, "a stored batch needs the alarm");
    assert_eq!((conn.messages, conn.acks, conn.nacks), (1, 1, 0));
    assert_eq!(conn.source_id.as_deref(), Some("a"));
    // The resend is a duplicate: acked, not stored, no alarm needed.
    let out = text(&mut s, &mut conn, &host, &batch_text("a", 1, 3));
    assert_eq!(ack(&out).status, AckStatus::Duplicate);
    assert!(!out.wake);
    assert_eq!(host.plans.borrow().len(), 1);
}

#[test]
fn a_failed_write_is_a_retryable_nack_counted_and_noted_never_an_ack() {
    let mut s = session("{}");
    let host = MemoryHost::default();
    host.fail_writes.set(true);
    let mut conn = Connection::default();
    let out = text(&mut s, &mut conn, &host, &batch_text("a", 1, 2));
    let n = nack(&out);
    assert!(n.should_retry);
    assert_eq!(n.kind, Some(ErrorKind::Storage));
    assert!(out
        .notes
        .iter()
        .any(|n| matches!(n, Note::StoreFailed { .. })));
    assert_eq!(s.intake().buffer().batches, 0);
    assert_eq!(host.refusals.borrow().get(n.reason.as_str()), Some(&1));
    // Once storage is back the same batch is stored (it was never acked).
    host.fail_writes.set(false);
    let out = text(&mut s, &mut conn, &host, &batch_text("a", 1, 2));
    assert_eq!(ack(&out).status, AckStatus::Ok);
    assert_eq!(s.intake().buffer().batches, 1);
}

#[test]
fn a_connection_over_its_message_rate_gets_rate_limited_nacks_with_a_retry_delay() {
    let mut s = session(r#"{"rateLimit":{"messagesPerSecond":2}}"#);
    let host = MemoryHost::default();
    let mut conn = Connection::default();
    for seq in 1..=2 {
        ack(&text(&mut s, &mut conn, &host, &batch_text("a", seq, 1)));
    }
    let out = text(&mut s, &mut conn, &host, &batch_text("a", 3, 1));
    let n = nack(&out);
    assert_eq!(n.reason, "rate_limited");
    assert_eq!(n.sequence_number, Some(3), "the sequence is sniffed");
    assert!(n.retry_delay_ms.is_some_and(|ms| ms > 0));
    assert_eq!(
        host.plans.borrow().len(),
        2,
        "the throttled batch is not stored"
    );
    assert_eq!(conn.nacks, 1);
    assert_eq!(s.refusals().by_reason().get("rate_limited"), Some(&1));
    // A second later the bucket has refilled.
    let out = s.on_frame(
        NOW + 1000,
        &mut conn,
        Frame::Text(&batch_text("a", 3, 1)),
        &host,
    );
    ack(&out);
}

#[test]
fn the_third_size_violation_closes_the_connection() {
    let mut s = session(r#"{"rateLimit":{"maxPayloadSize":2000,"maxEventSize":1000}}"#);
    let host = MemoryHost::default();
    let mut conn = Connection::default();
    let big = batch_text("a", 1, 40);
    assert!(big.len() > 2000);
    for strike in 1..=3 {
        let out = text(&mut s, &mut conn, &host, &big);
        assert_eq!(nack(&out).reason, "payload_too_large");
        assert_eq!(nack(&out).max_size, Some(2000));
        let closed = out.close == Some(Close::Violations);
        assert_eq!(closed, strike == 3, "strike {strike}");
    }
    assert_eq!(s.refusals().by_reason().get("payload_too_large"), Some(&3));
    assert!(host.plans.borrow().is_empty());
}

#[test]
fn binary_frames_and_malformed_text_are_refused_as_invalid_format() {
    let mut s = session("{}");
    let host = MemoryHost::default();
    let mut conn = Connection::default();
    let out = s.on_frame(NOW, &mut conn, Frame::Binary(12), &host);
    assert_eq!(nack(&out).reason, "invalid_format");
    assert!(nack(&out).error_message.contains("binary"));
    let out = text(
        &mut s,
        &mut conn,
        &host,
        r#"{"type":"cdc_batch","sequenceNumber":7}"#,
    );
    assert_eq!(nack(&out).reason, "invalid_format");
    assert_eq!(nack(&out).sequence_number, Some(7));
    assert!(matches!(out.notes[0], Note::MessageRefused { .. }));
    assert_eq!(s.refusals().by_reason().get("invalid_format"), Some(&2));
    assert_eq!(out.close, None, "format errors do not count as strikes");
}

#[test]
fn connect_answers_status_with_flush_times_and_distinct_connected_sources() {
    let mut s = session("{}");
    let host = MemoryHost::default();
    host.open.borrow_mut().extend([
        Connection {
            source_id: Some("b".into()),
            ..Connection::default()
        },
        Connection {
            source_id: Some("b".into()),
            ..Connection::default()
        },
        Connection::default(),
    ]);
    let mut conn = Connection::default();
    ack(&text(&mut s, &mut conn, &host, &batch_text("a", 1, 1)));
    let connect = json!({"type": "connect", "sourceDoId": "a", "sourceShardName": "shard-a",
                         "lastAckSequence": 1, "timestamp": NOW, "correlationId": "k"});
    let out = s.on_frame(NOW + 5, &mut conn, Frame::Text(&connect.to_string()), &host);
    let Some(ServerMessage::Status(status)) = out.message() else {
        panic!("expected status, got {:?}", out.reply);
    };
    assert_eq!(status.connected_sources, 2, "a and b");
    assert_eq!(status.correlation_id.as_deref(), Some("k"));
    assert_eq!(
        (status.last_flush_time, status.next_flush_time),
        (Some(111), Some(222))
    );
    assert_eq!(status.buffer.batch_count, 1);
    assert_eq!(conn.shard_name.as_deref(), Some("shard-a"));
    let saved = host.sources.borrow()["a"].clone();
    assert_eq!(saved.last_seen_ms, NOW + 5, "the contact is stored");
    assert_eq!(saved.shard_name.as_deref(), Some("shard-a"));
}

#[test]
fn heartbeat_flush_request_and_disconnect_map_to_their_replies() {
    let mut s = session("{}");
    let host = MemoryHost::default();
    let mut conn = Connection::default();
    let hb = json!({"type": "heartbeat", "sourceDoId": "a", "timestamp": 42, "correlationId": "h"});
    let out = text(&mut s, &mut conn, &host, &hb.to_string());
    assert!(
        matches!(out.message(), Some(ServerMessage::Pong(p)) if p.timestamp == Some(42) && p.server_time == NOW)
    );
    let fr =
        json!({"type": "flush_request", "sourceDoId": "a", "timestamp": 1, "correlationId": "f"});
    let out = text(&mut s, &mut conn, &host, &fr.to_string());
    assert_eq!(out.reply, Some(Reply::Flush(Some("f".into()))));
    let dc = json!({"type": "disconnect", "sourceDoId": "a", "timestamp": 1});
    let out = text(&mut s, &mut conn, &host, &dc.to_string());
    assert_eq!(out.close, Some(Close::Disconnect));
    assert_eq!(out.reply, None);
    assert_eq!(conn.messages, 3);
}

#[test]
fn a_buffer_full_refusal_wants_a_flush_now() {
    let mut s = session(r#"{"maxBufferSize":3000,"flushThresholdBytes":2900}"#);
    let host = MemoryHost::default();
    let mut conn = Connection::default();
    let first = text(&mut s, &mut conn, &host, &batch_text("a", 1, 10));
    assert!(first.wake);
    assert!(!s.flush_wanted_now());
    let out = text(&mut s, &mut conn, &host, &batch_text("a", 2, 10));
    assert!(out.wake);
    assert!(!s.flush_wanted_now());
    let out = text(&mut s, &mut conn, &host, &batch_text("a", 3, 10));
    assert_eq!(nack(&out).reason, "buffer_full");
    assert!(out.wake, "the refusal brings the flush forward");
    assert!(matches!(
        out.notes.last(),
        Some(Note::BatchRefused {
            reason: "buffer_full",
            ..
        })
    ));
}

#[test]
fn unauthorized_is_counted_but_never_stored() {
    let mut s = Session::new(
        DoLakeConfig::parse(None).unwrap(),
        Restored {
            refusals: BTreeMap::from([("unauthorized".into(), 9), ("rate_limited".into(), 4)]),
            ..Restored::default()
        },
    );
    let host = MemoryHost::default();
    s.count_refusal(Refusal::Unauthorized, &host);
    s.count_refusal(Refusal::Unauthorized, &host);
    assert!(
        host.refusals.borrow().is_empty(),
        "no write for an unauthenticated request"
    );
    let all = s.refusals().by_reason();
    assert_eq!(all.get("unauthorized"), Some(&2), "since construction only");
    assert_eq!(all.get("rate_limited"), Some(&4));
    s.count_refusal(Refusal::IpLimit, &host);
    let stored = host.refusals.borrow().clone();
    assert_eq!(
        stored,
        BTreeMap::from([("ip_limit".into(), 1), ("rate_limited".into(), 4)])
    );
}

#[test]
fn upgrades_are_refused_for_long_headers_and_per_address_limits() {
    let mut s = session(r#"{"rateLimit":{"maxConnectionsPerIp":1}}"#);
    let host = MemoryHost::default();
    let long = Upgrade {
        client_id: Some("x".repeat(MAX_ID_BYTES + 1)),
        ..Upgrade::default()
    };
    let Err((UpgradeRefused::Invalid(e), _)) = s.upgrade(NOW, long, &host) else {
        panic!("a long header must be refused");
    };
    assert!(e.message().contains("X-Client-ID"));
    let from = |ip: &str| Upgrade {
        ip: Some(ip.into()),
        shard_name: Some("s".into()),
        ..Upgrade::default()
    };
    let conn = s.upgrade(NOW, from("1.2.3.4"), &host).unwrap();
    assert_eq!(conn.shard_name.as_deref(), Some("s"));
    assert!(conn.gate.is_some());
    assert!(
        host.bucket.borrow().is_some(),
        "the connection bucket is stored"
    );
    host.open.borrow_mut().push(conn);
    let Err((UpgradeRefused::Limited(r), notes)) = s.upgrade(NOW, from("1.2.3.4"), &host) else {
        panic!("a second connection from the address must be refused");
    };
    assert_eq!(r.reason, Refusal::IpLimit);
    assert!(matches!(
        notes.last(),
        Some(Note::UpgradeRefused {
            reason: "ip_limit",
            ..
        })
    ));
    assert_eq!(host.refusals.borrow().get("ip_limit"), Some(&1));
    s.upgrade(NOW, from("5.6.7.8"), &host).unwrap();
}

#[test]
fn http_ingest_has_its_own_client_limit_and_the_same_replies() {
    let mut s = session(
        r#"{"rateLimit":{"messagesPerSecond":1,"maxPayloadSize":3000,"maxEventSize":1000}}"#,
    );
    let host = MemoryHost::default();
    let rate = s.gate_http(NOW, "1.1.1.1", &host).unwrap();
    let out = s.on_http_batch(NOW, &batch_text("h", 1, 2), rate, &host);
    assert_eq!(ack(&out).rate_limit.as_ref().map(|r| r.limit), Some(1));
    assert!(out.wake);
    let throttled = s.gate_http(NOW + 10, "1.1.1.1", &host).unwrap_err();
    assert!(matches!(&throttled.nack, ServerMessage::Nack(n) if n.reason == "rate_limited"));
    assert!(throttled.retry_after_s >= 1);
    // Another client is not affected.
    let rate = s.gate_http(NOW + 10, "2.2.2.2", &host).unwrap();
    let hb = json!({"type": "heartbeat", "sourceDoId": "h", "timestamp": 1});
    let out = s.on_http_batch(NOW + 10, &hb.to_string(), rate.clone(), &host);
    assert!(nack(&out).error_message.contains("cdc_batch"));
    let out = s.on_http_batch(NOW + 10, &batch_text("h", 2, 40), rate, &host);
    assert_eq!(nack(&out).kind, Some(ErrorKind::PayloadTooLarge));
    let counted = s.refusals().by_reason();
    assert_eq!(counted.get("rate_limited"), Some(&1));
    assert_eq!(counted.get("invalid_format"), Some(&1));
    assert_eq!(counted.get("payload_too_large"), Some(&1));
}

#[test]
fn the_views_show_the_session_and_the_facts() {
    let mut s = session("{}");
    let host = MemoryHost::default();
    let mut conn = Connection::default();
    ack(&text(&mut s, &mut conn, &host, &batch_text("a", 1, 4)));
    s.on_frame(NOW, &mut conn, Frame::Binary(1), &host);
    let connections = vec![
        conn.clone(),
        Connection {
            source_id: Some("a".into()),
            ip: Some("9.9.9.9".into()),
            ..Connection::default()
        },
    ];
    let history = FlushHistory::default();
    let instance = json!({"constructions": 1});
    let facts = views::Facts {
        now: NOW,
        connections: &connections,
        open_sockets: 2,
        history: &history,
        next_flush_ms: Some(5),
        flush_running: false,
        epoch: Some("e"),
        authenticated: false,
        instance: &instance,
    };
    let text = views::metrics(&s, &facts);
    assert!(text.contains("dolake_buffer_events 4"), "{text}");
    assert!(text.contains("dolake_connected_sources 1"), "{text}");
    assert!(text.contains("dolake_open_sockets 2"), "{text}");
    assert!(
        text.contains(r#"dolake_refusals_total{reason="invalid_format"} 1"#),
        "{text}"
    );
    let status = views::status(&mut s, &facts);
    assert_eq!(status["buffer"]["eventCount"], 4);
    assert_eq!(status["connectedSources"], 1);
    assert_eq!(status["sourceStates"][0]["connected"], true);
    assert_eq!(status["rateLimits"]["connectionsPerIp"]["9.9.9.9"], 1);
    assert_eq!(status["rateLimits"]["connectionsPerIp"]["unknown"], 1);
    assert_eq!(status["rateLimits"]["refusals"]["invalid_format"], 1);
    assert_eq!(status["flush"]["epoch"], "e");
    assert_eq!(status["nextFlushTime"], 5);
}
