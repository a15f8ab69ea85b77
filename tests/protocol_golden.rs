//! Golden JSON for every protocol message: what DoLake sends is byte-stable,
//! and every client message of the guide decodes.

use dolake::protocol::*;
use serde_json::Value;

fn golden(name: &str) -> Value {
    let path = format!(
        "{}/tests/golden/protocol/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn assert_golden(message: ServerMessage, name: &str) {
    let encoded: Value = serde_json::from_str(&message.to_json()).unwrap();
    assert_eq!(encoded, golden(name), "{name}");
    let back: ServerMessage = serde_json::from_value(encoded).unwrap();
    assert_eq!(back, message, "{name} round trip");
}

#[test]
fn server_messages_match_golden_files() {
    assert_golden(
        ServerMessage::Ack(AckMessage {
            timestamp: 1_700_000_000_123,
            correlation_id: Some("c-1".into()),
            sequence_number: 7,
            status: AckStatus::Buffered,
            batch_id: Some("do-1:7".into()),
            details: Some(AckDetails {
                events_processed: 100,
                buffer_utilization: 0.5,
                time_until_flush: Some(30_000),
                persisted_path: None,
                remaining_tokens: Some(999),
                bucket_capacity: Some(1000),
                suggested_delay_ms: Some(250),
            }),
            rate_limit: Some(RateLimitInfo {
                limit: 1000,
                remaining: 999,
                reset_at: 1_700_000_001_000,
            }),
        }),
        "ack",
    );
    assert_golden(
        ServerMessage::Nack(NackMessage {
            timestamp: 1_700_000_000_123,
            correlation_id: None,
            sequence_number: Some(8),
            reason: "buffer_full".into(),
            error_message: "buffer is full".into(),
            should_retry: true,
            retry_delay_ms: Some(5000),
            max_size: None,
            kind: None,
        }),
        "nack",
    );
    assert_golden(
        ServerMessage::Status(StatusMessage {
            timestamp: 1_700_000_000_123,
            correlation_id: None,
            state: ServiceState::Receiving,
            buffer: BufferSnapshot {
                batch_count: 2,
                event_count: 200,
                total_size_bytes: 4096,
                utilization: 0.25,
                oldest_batch_time: Some(1_700_000_000_000),
                newest_batch_time: Some(1_700_000_000_100),
            },
            connected_sources: 3,
            last_flush_time: None,
            next_flush_time: Some(1_700_000_030_000),
        }),
        "status",
    );
    assert_golden(
        ServerMessage::Pong(PongMessage {
            timestamp: Some(1_700_000_000_000),
            correlation_id: None,
            server_time: 1_700_000_000_123,
        }),
        "pong",
    );
    assert_golden(
        ServerMessage::FlushResponse(FlushResponseMessage {
            timestamp: 1_700_000_000_123,
            correlation_id: Some("f-1".into()),
            result: FlushResult {
                success: false,
                batches_flushed: 0,
                events_flushed: 0,
                bytes_written: 0,
                paths: vec![],
                duration_ms: 0,
                used_fallback: false,
                error: Some("not flushed".into()),
                complete: false,
                events_rejected: 0,
            },
        }),
        "flush_response",
    );
}

#[test]
fn client_messages_of_the_guide_decode() {
    for name in [
        "connect",
        "cdc_batch",
        "heartbeat",
        "flush_request",
        "disconnect",
    ] {
        let text = serde_json::to_string(&golden(&format!("client_{name}"))).unwrap();
        let message = decode_client_message(&text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let ok = matches!(
            (name, &message),
            ("connect", ClientMessage::Connect(_))
                | ("cdc_batch", ClientMessage::CdcBatch(_))
                | ("heartbeat", ClientMessage::Heartbeat(_))
                | ("flush_request", ClientMessage::FlushRequest(_))
                | ("disconnect", ClientMessage::Disconnect(_))
        );
        assert!(ok, "{name} decoded as {message:?}");
    }
}
