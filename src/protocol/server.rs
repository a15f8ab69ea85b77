//! Messages from DoLake to a shard, and their encoding.

use serde::{Deserialize, Serialize};

/// The status of an `ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckStatus {
    /// Stored durably in the buffer.
    Ok,
    /// Stored durably; the buffer is filling, slow down (see `details`).
    Buffered,
    /// Already written to the lake.
    Persisted,
    /// Already stored before; nothing new was stored.
    Duplicate,
    /// Stored in fallback storage.
    Fallback,
}

/// Details of an `ack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckDetails {
    /// Events of the batch that were stored (duplicates excluded).
    pub events_processed: u64,
    /// Buffered bytes over `maxBufferSize`, 0..1.
    pub buffer_utilization: f64,
    /// Milliseconds until the next scheduled flush.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_until_flush: Option<u64>,
    /// Where the data was persisted, for `persisted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persisted_path: Option<String>,
    /// Message tokens left to the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_tokens: Option<u64>,
    /// The connection's token bucket capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_capacity: Option<u64>,
    /// How long the shard should wait before its next batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested_delay_ms: Option<u64>,
}

/// Rate-limit state reported with an `ack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitInfo {
    /// Messages allowed per window.
    pub limit: u64,
    /// Messages left in this window.
    pub remaining: u64,
    /// When the window resets, Unix ms.
    pub reset_at: i64,
}

/// `ack`: the batch is safe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckMessage {
    /// Send time, Unix ms.
    pub timestamp: i64,
    /// The batch's correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The batch's sequence number.
    pub sequence_number: u64,
    /// What happened to it.
    pub status: AckStatus,
    /// DoLake's id for the stored batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<AckDetails>,
    /// Rate-limit state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitInfo>,
}

/// `nack`: the message was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NackMessage {
    /// Send time, Unix ms.
    pub timestamp: i64,
    /// The message's correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The batch's sequence number, whenever it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<u64>,
    /// One of the protocol's nack reasons.
    pub reason: String,
    /// What was wrong.
    pub error_message: String,
    /// Whether resending later can succeed.
    pub should_retry: bool,
    /// When to resend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_ms: Option<u64>,
    /// The limit that was exceeded, for size refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// The error kind behind `reason` (not on the wire): what the edges map
    /// to HTTP statuses and strike policies, instead of parsing `reason`.
    #[serde(skip)]
    pub kind: Option<crate::error::ErrorKind>,
}

/// The service state reported by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// Nothing buffered.
    Idle,
    /// Events buffered, waiting for a flush.
    Receiving,
    /// A flush is running.
    Flushing,
    /// Recovering after a failure.
    Recovering,
    /// Misconfigured or failing.
    Error,
}

/// The buffer as reported by `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BufferSnapshot {
    /// Buffered batches.
    pub batch_count: u64,
    /// Buffered events.
    pub event_count: u64,
    /// Buffered bytes (the stored JSON of the events).
    pub total_size_bytes: u64,
    /// `totalSizeBytes / maxBufferSize`.
    pub utilization: f64,
    /// Receive time of the oldest buffered batch, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_batch_time: Option<i64>,
    /// Receive time of the newest buffered batch, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_batch_time: Option<i64>,
}

/// `status`: DoLake's state, sent in reply to `connect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusMessage {
    /// Send time, Unix ms.
    pub timestamp: i64,
    /// The `connect`'s correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Service state.
    pub state: ServiceState,
    /// The buffer.
    pub buffer: BufferSnapshot,
    /// Sources with an open connection.
    pub connected_sources: u64,
    /// Last successful flush, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_flush_time: Option<i64>,
    /// Next scheduled flush, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_flush_time: Option<i64>,
}

/// `pong`: the answer to `heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PongMessage {
    /// The heartbeat's `timestamp`, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// The heartbeat's correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// DoLake's clock, Unix ms.
    pub server_time: i64,
}

/// The outcome of a flush (the guide's `FlushResult`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlushResult {
    /// Whether everything asked for was flushed.
    pub success: bool,
    /// Batches written to the lake.
    pub batches_flushed: u64,
    /// Events written to the lake.
    pub events_flushed: u64,
    /// Bytes written to R2.
    pub bytes_written: u64,
    /// Object keys written.
    pub paths: Vec<String>,
    /// Wall time of the flush, ms.
    pub duration_ms: u64,
    /// Whether data went to fallback storage instead of R2.
    pub used_fallback: bool,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the buffer was emptied. `false` with `success` when the flush
    /// stopped at its time budget: the rest goes on from the next alarm.
    #[serde(default)]
    pub complete: bool,
    /// Events that no table could take, written to the dead-letter table.
    #[serde(default)]
    pub events_rejected: u64,
}

/// `flush_response`: the answer to `flush_request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlushResponseMessage {
    /// Send time, Unix ms.
    pub timestamp: i64,
    /// The request's correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The outcome.
    pub result: FlushResult,
}

/// Any message DoLake sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// `ack`.
    Ack(AckMessage),
    /// `nack`.
    Nack(NackMessage),
    /// `status`.
    Status(StatusMessage),
    /// `pong`.
    Pong(PongMessage),
    /// `flush_response`.
    FlushResponse(FlushResponseMessage),
}

impl ServerMessage {
    /// The JSON text of the message.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"nack","timestamp":0,"reason":"internal_error","errorMessage":"encoding failed: {e}","shouldRetry":true}}"#)
        })
    }
}
