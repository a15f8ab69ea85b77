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

/// Every protocol type with every optional field set (`max`) and with none
/// (`min`), plus the default configuration, as `tests/golden/protocol/shapes.json`:
/// the TypeScript package (`clients/ts`) type-checks its types against this
/// file, so the two cannot drift. Struct literals list every field, so a new
/// Rust field fails to compile here until it is added, then changes the file.
/// `UPDATE_GOLDEN=1 cargo test --test protocol_golden` rewrites it.
#[test]
fn protocol_shapes_match_the_golden_file_the_typescript_types_are_checked_against() {
    use dolake::config::DoLakeConfig;
    use serde_json::{json, Map};
    fn typed<T: serde::Serialize>(kind: &str, v: &T) -> Value {
        let mut v = serde_json::to_value(v).unwrap();
        let mut out = Map::new();
        out.insert("type".into(), kind.into());
        out.extend(v.as_object_mut().unwrap().clone());
        Value::Object(out)
    }
    /// A client message as the guide's shard sends it: absent optionals
    /// omitted (Rust decodes absent and null alike).
    fn client<T: serde::Serialize>(kind: &str, v: &T) -> Value {
        let mut v = typed(kind, v);
        v.as_object_mut().unwrap().retain(|_, x| !x.is_null());
        v
    }
    let row = |age: i64| json!({"id": "u1", "age": age}).as_object().unwrap().clone();
    let event_max = CdcEvent {
        sequence: 1,
        timestamp: 1_700_000_000_001,
        operation: Operation::Update,
        table: "users".into(),
        row_id: "u1".into(),
        before: Some(row(36)),
        after: Some(row(37)),
        metadata: Some(json!({"txId": "t1"})),
    };
    let event_min = CdcEvent {
        operation: Operation::Delete,
        before: None,
        after: None,
        metadata: None,
        ..event_max.clone()
    };
    let capabilities_max = Capabilities {
        binary_protocol: false,
        compression: false,
        batching: true,
        max_batch_size: Some(1000),
        max_message_size: Some(4_194_304),
    };
    let batch_max = CdcBatchMessage {
        timestamp: Some(1_700_000_000_000),
        correlation_id: Some("c-1".into()),
        source_do_id: "do-1".into(),
        source_shard_name: Some("shard-1".into()),
        events: vec![event_max.clone(), event_min.clone()].into(),
        sequence_number: 3,
        first_event_sequence: Some(1),
        last_event_sequence: Some(1),
        size_bytes: Some(200),
        is_retry: true,
        retry_count: 2,
        message_type: None,
    };
    let batch_min = CdcBatchMessage {
        timestamp: None,
        correlation_id: None,
        source_shard_name: None,
        events: vec![event_min.clone()].into(),
        first_event_sequence: None,
        last_event_sequence: None,
        size_bytes: None,
        ..batch_max.clone()
    };
    let connect_max = ConnectMessage {
        timestamp: Some(1_700_000_000_000),
        correlation_id: Some("c-0".into()),
        source_do_id: "do-1".into(),
        source_shard_name: Some("shard-1".into()),
        last_ack_sequence: Some(2),
        protocol_version: Some(1),
        capabilities: Some(capabilities_max.clone()),
    };
    let heartbeat_max = HeartbeatMessage {
        timestamp: Some(1_700_000_000_000),
        correlation_id: Some("h-1".into()),
        source_do_id: Some("do-1".into()),
        last_ack_sequence: Some(2),
        pending_events: Some(0),
    };
    let flush_request_max = FlushRequestMessage {
        timestamp: Some(1_700_000_000_000),
        correlation_id: Some("f-1".into()),
        source_do_id: Some("do-1".into()),
        reason: Some("manual".into()),
    };
    let disconnect_max = DisconnectMessage {
        timestamp: Some(1_700_000_000_000),
        correlation_id: Some("d-1".into()),
        source_do_id: Some("do-1".into()),
        reason: Some("shutdown".into()),
    };
    let details_max = AckDetails {
        events_processed: 2,
        buffer_utilization: 0.5,
        time_until_flush: Some(1000),
        persisted_path: Some("warehouse/x".into()),
        remaining_tokens: Some(9),
        bucket_capacity: Some(10),
        suggested_delay_ms: Some(100),
    };
    let ack_max = AckMessage {
        timestamp: 1_700_000_000_123,
        correlation_id: Some("c-1".into()),
        sequence_number: 3,
        status: AckStatus::Ok,
        batch_id: Some("do-1:3".into()),
        details: Some(details_max.clone()),
        rate_limit: Some(RateLimitInfo {
            limit: 1000,
            remaining: 999,
            reset_at: 1_700_000_001_000,
        }),
    };
    let ack_min = AckMessage {
        correlation_id: None,
        batch_id: None,
        details: None,
        rate_limit: None,
        ..ack_max.clone()
    };
    let nack_max = NackMessage {
        timestamp: 1_700_000_000_123,
        correlation_id: Some("c-1".into()),
        sequence_number: Some(3),
        reason: "payload_too_large".into(),
        error_message: "too large".into(),
        should_retry: false,
        retry_delay_ms: Some(100),
        max_size: Some(4_194_304),
        kind: None,
    };
    let nack_min = NackMessage {
        correlation_id: None,
        sequence_number: None,
        retry_delay_ms: None,
        max_size: None,
        ..nack_max.clone()
    };
    let buffer_max = BufferSnapshot {
        batch_count: 1,
        event_count: 2,
        total_size_bytes: 300,
        utilization: 0.1,
        oldest_batch_time: Some(1),
        newest_batch_time: Some(2),
    };
    let status_max = StatusMessage {
        timestamp: 1_700_000_000_123,
        correlation_id: Some("c-1".into()),
        state: ServiceState::Receiving,
        buffer: buffer_max.clone(),
        connected_sources: 1,
        last_flush_time: Some(3),
        next_flush_time: Some(4),
    };
    let status_min = StatusMessage {
        correlation_id: None,
        buffer: BufferSnapshot {
            oldest_batch_time: None,
            newest_batch_time: None,
            ..buffer_max.clone()
        },
        last_flush_time: None,
        next_flush_time: None,
        ..status_max.clone()
    };
    let pong_max = PongMessage {
        timestamp: Some(1),
        correlation_id: Some("h-1".into()),
        server_time: 2,
    };
    let result_max = FlushResult {
        success: true,
        batches_flushed: 1,
        events_flushed: 2,
        bytes_written: 3,
        paths: vec!["warehouse/default/users/data/a.parquet".into()],
        duration_ms: 4,
        used_fallback: false,
        error: Some("e".into()),
        complete: true,
        events_rejected: 0,
    };
    let flush_response_max = FlushResponseMessage {
        timestamp: 1,
        correlation_id: Some("f-1".into()),
        result: result_max.clone(),
    };
    let shapes = json!({
        "CDCEvent.max": serde_json::to_value(&event_max).unwrap(),
        "CDCEvent.min": serde_json::to_value(&event_min).unwrap(),
        "Capabilities.max": serde_json::to_value(&capabilities_max).unwrap(),
        "CDCBatchMessage.max": client("cdc_batch", &batch_max),
        "CDCBatchMessage.min": client("cdc_batch", &batch_min),
        "ConnectMessage.max": client("connect", &connect_max),
        "HeartbeatMessage.max": client("heartbeat", &heartbeat_max),
        "FlushRequestMessage.max": client("flush_request", &flush_request_max),
        "DisconnectMessage.max": client("disconnect", &disconnect_max),
        "AckDetails.max": serde_json::to_value(&details_max).unwrap(),
        "AckMessage.max": serde_json::to_value(ServerMessage::Ack(ack_max)).unwrap(),
        "AckMessage.min": serde_json::to_value(ServerMessage::Ack(ack_min)).unwrap(),
        "NackMessage.max": serde_json::to_value(ServerMessage::Nack(nack_max)).unwrap(),
        "NackMessage.min": serde_json::to_value(ServerMessage::Nack(nack_min)).unwrap(),
        "BufferSnapshot.max": serde_json::to_value(&buffer_max).unwrap(),
        "StatusMessage.max": serde_json::to_value(ServerMessage::Status(status_max)).unwrap(),
        "StatusMessage.min": serde_json::to_value(ServerMessage::Status(status_min)).unwrap(),
        "PongMessage.max": serde_json::to_value(ServerMessage::Pong(pong_max)).unwrap(),
        "FlushResult.max": serde_json::to_value(&result_max).unwrap(),
        "FlushResponseMessage.max": serde_json::to_value(ServerMessage::FlushResponse(flush_response_max)).unwrap(),
        "DoLakeConfig.default": serde_json::to_value(DoLakeConfig::default()).unwrap(),
    });
    // The client messages decode as what they are.
    for key in [
        "CDCBatchMessage.max",
        "CDCBatchMessage.min",
        "ConnectMessage.max",
        "HeartbeatMessage.max",
        "FlushRequestMessage.max",
        "DisconnectMessage.max",
    ] {
        let text = shapes[key].to_string();
        decode_client_message(&text).unwrap_or_else(|e| panic!("{key}: {e:?}"));
    }
    let path = format!(
        "{}/tests/golden/protocol/shapes.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = serde_json::to_string_pretty(&shapes).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        on_disk, text,
        "{path} is stale: UPDATE_GOLDEN=1 cargo test --test protocol_golden, then update clients/ts to match"
    );
}
