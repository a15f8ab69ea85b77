//! Admission of CDC batches: dedup, size limits, buffer accounting and the
//! reply each batch gets.
//!
//! [`Intake`] is a deterministic state machine. For each `cdc_batch` it either
//! answers at once (a duplicate, a refusal) or returns a [`StorePlan`]: the
//! rows the adapter must write to Durable Object storage. Only after the write
//! succeeded does the adapter call [`Intake::commit`], which updates the
//! in-memory state and yields the `ack`. A failed write changes nothing, so a
//! batch is acked only once it is durable, and is stored whole or not at all.
//!
//! Dedup is exact: per source, the batch sequence numbers acked and the event
//! sequences stored are kept as range sets ([`SeqSet`]), persisted with every
//! batch. A resent batch is acked `duplicate`; an event already stored is never
//! stored again; a batch that was never acked is never taken for a duplicate.
//! The `deduplicationWindowMs` bounds the in-memory cache of recent batches
//! (used to report what the original batch stored); correctness never depends
//! on it.

mod seqset;
mod source;

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::config::DoLakeConfig;
use crate::error::{Error, ErrorKind};
use crate::protocol::{
    AckDetails, AckMessage, AckStatus, BufferSnapshot, CdcBatchMessage, NackMessage, ServerMessage,
    ServiceState, StatusMessage,
};

pub use seqset::SeqSet;
pub use source::SourceState;

/// How long a `buffer_full` refusal asks the shard to wait, ms.
pub const BUFFER_FULL_RETRY_MS: u64 = 5_000;

/// Buffer utilization from which acks carry a slow-down hint.
pub const BACKPRESSURE_UTILIZATION: f64 = 0.8;

/// Most ranges a source's watermark may hold; beyond, sequences are too sparse
/// to track exactly and batches are refused with `invalid_sequence`.
pub const MAX_WATERMARK_RANGES: usize = 10_000;

/// Totals of the durable buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BufferTotals {
    /// Buffered batches.
    pub batches: u64,
    /// Buffered events.
    pub events: u64,
    /// Buffered bytes (stored JSON of the events).
    pub bytes: u64,
    /// Receive time of the oldest buffered batch.
    pub oldest_ms: Option<i64>,
    /// Receive time of the newest buffered batch.
    pub newest_ms: Option<i64>,
}

/// One batch as stored in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    /// The source.
    pub source_id: String,
    /// The batch's sequence number.
    pub batch_seq: u64,
    /// Lowest stored event sequence.
    pub first_event_seq: u64,
    /// Highest stored event sequence.
    pub last_event_seq: u64,
    /// Stored events.
    pub event_count: u64,
    /// Bytes of `payload`.
    pub size_bytes: u64,
    /// Receive time, Unix ms.
    pub received_at: i64,
    /// Distinct tables of the events, sorted.
    pub tables: Vec<String>,
    /// The stored events: a JSON array of the protocol's events.
    pub payload: String,
}

impl BatchRecord {
    /// The payload in pieces of at most `max_bytes` (at least 4), cut on char
    /// boundaries, for storage rows with a size limit.
    pub fn payload_chunks(&self, max_bytes: usize) -> Vec<&str> {
        let max_bytes = max_bytes.max(4);
        let mut chunks = Vec::with_capacity(self.payload.len() / max_bytes + 1);
        let mut rest = self.payload.as_str();
        while !rest.is_empty() {
            let mut end = rest.len().min(max_bytes);
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            chunks.push(&rest[..end]);
            rest = &rest[end..];
        }
        chunks
    }
}

/// What the adapter must make durable before the batch is acked.
#[derive(Debug, Clone, PartialEq)]
pub struct StorePlan {
    /// The source's new state (always written).
    pub source: SourceState,
    /// The batch's rows, or `None` when every event was already stored.
    pub record: Option<BatchRecord>,
    /// The batch's sequence number.
    pub sequence_number: u64,
    /// Stored in the fallback headroom past `maxBufferSize` (the lake is failing).
    pub fallback: bool,
    /// The batch's correlation id.
    pub correlation_id: Option<String>,
}

/// The outcome of [`Intake::admit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Write the plan, then call [`Intake::commit`].
    Store(Box<StorePlan>),
    /// Nothing to write; send this.
    Reply(ServerMessage),
}

#[derive(Debug, Clone, Copy)]
struct RecentBatch {
    events_stored: u64,
}

/// Dedup counters for `/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DedupCounters {
    duplicate_batches: u64,
    duplicate_events: u64,
    expired_entries: u64,
}

/// The intake state machine. See the module docs.
#[derive(Debug)]
pub struct Intake {
    config: DoLakeConfig,
    sources: BTreeMap<String, SourceState>,
    buffer: BufferTotals,
    recent: HashMap<(String, u64), RecentBatch>,
    recent_order: VecDeque<(i64, String, u64)>,
    dedup: DedupCounters,
    lake_failing: bool,
}

impl Intake {
    /// Restores the state machine from what storage holds.
    pub fn new(config: DoLakeConfig, sources: Vec<SourceState>, buffer: BufferTotals) -> Self {
        Self {
            config,
            sources: sources
                .into_iter()
                .map(|s| (s.source_id.clone(), s))
                .collect(),
            buffer,
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            dedup: DedupCounters::default(),
            lake_failing: false,
        }
    }

    /// The active configuration.
    pub fn config(&self) -> &DoLakeConfig {
        &self.config
    }

    /// The buffer totals.
    pub fn buffer(&self) -> &BufferTotals {
        &self.buffer
    }

    /// Replaces the buffer totals (after storage removed flushed batches).
    pub fn set_buffer(&mut self, buffer: BufferTotals) {
        self.buffer = buffer;
    }

    /// Tells intake whether flushes to the lake are failing. While they are,
    /// and `enableFallback` is on, the buffer takes up to `maxFallbackSize`
    /// bytes past `maxBufferSize` (acked with status `fallback`).
    pub fn set_lake_failing(&mut self, failing: bool) {
        self.lake_failing = failing;
    }

    /// Bytes the buffer may hold now.
    pub fn capacity(&self) -> u64 {
        let headroom = if self.config.enable_fallback && self.lake_failing {
            self.config.max_fallback_size
        } else {
            0
        };
        self.config.max_buffer_size + headroom
    }

    /// Known sources, by id.
    pub fn sources(&self) -> impl Iterator<Item = &SourceState> {
        self.sources.values()
    }

    /// One source.
    pub fn source(&self, source_id: &str) -> Option<&SourceState> {
        self.sources.get(source_id)
    }

    /// Buffered bytes over `maxBufferSize`.
    pub fn utilization(&self) -> f64 {
        self.buffer.bytes as f64 / self.config.max_buffer_size as f64
    }

    /// Records a `connect` or `heartbeat`; returns the source state to persist.
    pub fn note_contact(
        &mut self,
        now: i64,
        source_id: &str,
        shard_name: Option<&str>,
        client_last_ack: Option<i64>,
    ) -> &SourceState {
        let source = self
            .sources
            .entry(source_id.to_string())
            .or_insert_with(|| SourceState::new(source_id, now));
        source.last_seen_ms = now;
        if let Some(name) = shard_name {
            source.shard_name = Some(name.to_string());
        }
        if client_last_ack.is_some() {
            source.client_last_ack_sequence = client_last_ack;
        }
        source
    }

    /// Decides what to do with a decoded batch.
    pub fn admit(&mut self, now: i64, batch: CdcBatchMessage) -> Admission {
        self.expire(now);
        let seq = batch.sequence_number;
        let correlation_id = batch.correlation_id.clone();
        let mut source = self
            .sources
            .get(&batch.source_do_id)
            .cloned()
            .unwrap_or_else(|| SourceState::new(&batch.source_do_id, now));
        source.last_seen_ms = now;
        source.batches_received += 1;
        source.events_received += batch.events.len() as u64;
        source.last_received_sequence = source.last_received_sequence.max(Some(seq));
        if let Some(name) = &batch.source_shard_name {
            source.shard_name = Some(name.clone());
        }
        let dedup = self.config.enable_deduplication;

        if dedup && source.acked_batches.contains(seq) {
            source.duplicate_batches += 1;
            self.dedup.duplicate_batches += 1;
            let original = self.recent.get(&(source.source_id.clone(), seq)).copied();
            let batch_id = batch_id(&source.source_id, seq);
            self.sources.insert(source.source_id.clone(), source);
            return Admission::Reply(ServerMessage::Ack(AckMessage {
                timestamp: now,
                correlation_id,
                sequence_number: seq,
                status: AckStatus::Duplicate,
                batch_id: Some(batch_id),
                details: Some(AckDetails {
                    events_processed: original.map_or(0, |o| o.events_stored),
                    ..self.details()
                }),
                rate_limit: None,
            }));
        }

        let limits = &self.config.rate_limit;
        if batch.events.len() as u64 > limits.max_events_per_message {
            let error = Error::invalid(format!(
                "batch has {} events; at most {} are allowed per message (rateLimit.maxEventsPerMessage)",
                batch.events.len(),
                limits.max_events_per_message
            ));
            return self.refuse_batch(now, source, seq, correlation_id, &error, None);
        }

        // Keep the events not stored before, once each, in the shard's order.
        let mut pending = source.stored_events.clone();
        let mut payload = String::with_capacity(batch.size_bytes.unwrap_or(0) as usize + 2);
        payload.push('[');
        let mut kept = 0u64;
        let (mut first, mut last) = (u64::MAX, 0u64);
        let mut tables: Vec<String> = Vec::new();
        let mut dropped = 0u64;
        for event in &batch.events {
            if dedup && !pending.insert(event.sequence) {
                dropped += 1;
                continue;
            }
            let json = match serde_json::to_string(event) {
                Ok(json) => json,
                Err(e) => {
                    let error = Error::internal(format!("cannot re-encode event: {e}"));
                    return self.refuse_batch(now, source, seq, correlation_id, &error, None);
                }
            };
            if json.len() as u64 > limits.max_event_size {
                let error = Error::new(
                    ErrorKind::EventTooLarge,
                    format!(
                        "event with sequence {} is {} bytes; at most {} are allowed (rateLimit.maxEventSize)",
                        event.sequence,
                        json.len(),
                        limits.max_event_size
                    ),
                );
                let max = Some(limits.max_event_size);
                return self.refuse_batch(now, source, seq, correlation_id, &error, max);
            }
            if kept > 0 {
                payload.push(',');
            }
            payload.push_str(&json);
            kept += 1;
            first = first.min(event.sequence);
            last = last.max(event.sequence);
            if let Err(i) = tables.binary_search(&event.table) {
                tables.insert(i, event.table.clone());
            }
        }
        payload.push(']');
        if pending.range_count() > MAX_WATERMARK_RANGES {
            let error = Error::new(
                ErrorKind::InvalidSequence,
                format!(
                    "event sequences of source {:?} are too sparse to track (more than {MAX_WATERMARK_RANGES} gaps); send increasing sequences",
                    source.source_id
                ),
            );
            return self.refuse_batch(now, source, seq, correlation_id, &error, None);
        }

        let mut fallback = false;
        let record = if kept == 0 {
            None
        } else {
            let size = payload.len() as u64;
            let capacity = self.capacity();
            if self.buffer.bytes + size > capacity {
                let error = Error::new(
                    ErrorKind::BufferFull,
                    format!(
                        "buffer holds {} of {capacity} bytes; this batch needs {size} more; retry after a flush",
                        self.buffer.bytes
                    ),
                );
                return self.refuse_batch(now, source, seq, correlation_id, &error, None);
            }
            fallback = self.buffer.bytes + size > self.config.max_buffer_size;
            Some(BatchRecord {
                source_id: source.source_id.clone(),
                batch_seq: seq,
                first_event_seq: first,
                last_event_seq: last,
                event_count: kept,
                size_bytes: size,
                received_at: now,
                tables,
                payload,
            })
        };

        if dedup {
            source.acked_batches.insert(seq);
            source.stored_events = pending;
        }
        source.duplicate_events += dropped;
        source.last_acked_sequence = source.last_acked_sequence.max(Some(seq));
        source.last_ack_ms = Some(now);
        match &record {
            Some(r) => {
                source.batches_acked += 1;
                source.events_acked += r.event_count;
                source.bytes_acked += r.size_bytes;
            }
            None => source.duplicate_batches += 1,
        }
        Admission::Store(Box::new(StorePlan {
            source,
            record,
            sequence_number: seq,
            fallback,
            correlation_id,
        }))
    }

    /// Applies a plan the adapter has made durable; returns the `ack`.
    pub fn commit(&mut self, now: i64, plan: StorePlan) -> ServerMessage {
        let StorePlan {
            source,
            record,
            sequence_number,
            fallback,
            correlation_id,
        } = plan;
        let events_stored = record.as_ref().map_or(0, |r| r.event_count);
        let status = match &record {
            None => {
                self.dedup.duplicate_batches += 1;
                AckStatus::Duplicate
            }
            Some(r) => {
                self.buffer.batches += 1;
                self.buffer.events += r.event_count;
                self.buffer.bytes += r.size_bytes;
                self.buffer.oldest_ms = Some(self.buffer.oldest_ms.unwrap_or(r.received_at));
                self.buffer.newest_ms = Some(r.received_at);
                if fallback {
                    AckStatus::Fallback
                } else if self.utilization() >= BACKPRESSURE_UTILIZATION {
                    AckStatus::Buffered
                } else {
                    AckStatus::Ok
                }
            }
        };
        let previous_dups = self
            .sources
            .get(&source.source_id)
            .map_or(0, |s| s.duplicate_events);
        self.dedup.duplicate_events += source.duplicate_events.saturating_sub(previous_dups);
        if self.config.enable_deduplication {
            self.recent.insert(
                (source.source_id.clone(), sequence_number),
                RecentBatch { events_stored },
            );
            self.recent_order
                .push_back((now, source.source_id.clone(), sequence_number));
        }
        let batch_id = batch_id(&source.source_id, sequence_number);
        self.sources.insert(source.source_id.clone(), source);
        ServerMessage::Ack(AckMessage {
            timestamp: now,
            correlation_id,
            sequence_number,
            status,
            batch_id: Some(batch_id),
            details: Some(AckDetails {
                events_processed: events_stored,
                ..self.details()
            }),
            rate_limit: None,
        })
    }

    /// Counts a refusal that happened outside [`Intake::admit`] (decoding,
    /// storage failures) and builds its `nack`.
    pub fn refuse(
        &mut self,
        now: i64,
        source_id: Option<&str>,
        sequence_number: Option<u64>,
        correlation_id: Option<String>,
        error: &Error,
    ) -> ServerMessage {
        if let Some(source) = source_id.and_then(|id| self.sources.get_mut(id)) {
            source.batches_nacked += 1;
            source.last_seen_ms = now;
        }
        nack(now, error, sequence_number, correlation_id, None)
    }

    fn refuse_batch(
        &mut self,
        now: i64,
        mut source: SourceState,
        seq: u64,
        correlation_id: Option<String>,
        error: &Error,
        max_size: Option<u64>,
    ) -> Admission {
        source.batches_nacked += 1;
        self.sources.insert(source.source_id.clone(), source);
        Admission::Reply(nack(now, error, Some(seq), correlation_id, max_size))
    }

    fn details(&self) -> AckDetails {
        let utilization = self.utilization();
        let suggested_delay_ms = (utilization >= BACKPRESSURE_UTILIZATION).then(|| {
            let over = (utilization - BACKPRESSURE_UTILIZATION) / (1.0 - BACKPRESSURE_UTILIZATION);
            (over.clamp(0.0, 1.0) * BUFFER_FULL_RETRY_MS as f64).ceil() as u64
        });
        AckDetails {
            events_processed: 0,
            buffer_utilization: utilization,
            time_until_flush: None,
            persisted_path: None,
            remaining_tokens: None,
            bucket_capacity: None,
            suggested_delay_ms,
        }
    }

    /// Drops recent-batch entries older than the dedup window.
    fn expire(&mut self, now: i64) {
        let window = self.config.deduplication_window_ms as i64;
        while let Some((at, _, _)) = self.recent_order.front() {
            if now - at < window {
                break;
            }
            if let Some((_, source, seq)) = self.recent_order.pop_front() {
                if self.recent.remove(&(source, seq)).is_some() {
                    self.dedup.expired_entries += 1;
                }
            }
        }
    }

    /// The buffer as the protocol reports it.
    pub fn buffer_snapshot(&self) -> BufferSnapshot {
        BufferSnapshot {
            batch_count: self.buffer.batches,
            event_count: self.buffer.events,
            total_size_bytes: self.buffer.bytes,
            utilization: self.utilization(),
            oldest_batch_time: self.buffer.oldest_ms,
            newest_batch_time: self.buffer.newest_ms,
        }
    }

    /// The service state.
    pub fn state(&self) -> ServiceState {
        if self.buffer.batches == 0 {
            ServiceState::Idle
        } else {
            ServiceState::Receiving
        }
    }

    /// The `status` message sent in reply to `connect`.
    pub fn status_message(
        &self,
        now: i64,
        connected_sources: u64,
        correlation_id: Option<String>,
    ) -> ServerMessage {
        ServerMessage::Status(StatusMessage {
            timestamp: now,
            correlation_id,
            state: self.state(),
            buffer: self.buffer_snapshot(),
            connected_sources,
            last_flush_time: None,
            next_flush_time: None,
        })
    }

    /// Dedup statistics for `/status`.
    pub fn dedup_stats(&mut self, now: i64) -> serde_json::Value {
        self.expire(now);
        serde_json::json!({
            "enabled": self.config.enable_deduplication,
            "windowMs": self.config.deduplication_window_ms,
            "recentBatchesTracked": self.recent.len(),
            "expiredEntries": self.dedup.expired_entries,
            "duplicateBatches": self.dedup.duplicate_batches,
            "duplicateEvents": self.dedup.duplicate_events,
            "sourcesTracked": self.sources.len(),
            "watermarkRanges": self.sources.values()
                .map(|s| s.acked_batches.range_count() + s.stored_events.range_count())
                .sum::<usize>(),
        })
    }
}

/// DoLake's id of a stored batch.
pub fn batch_id(source_id: &str, sequence_number: u64) -> String {
    format!("{source_id}:{sequence_number}")
}

/// The `nack` for an error.
pub fn nack(
    now: i64,
    error: &Error,
    sequence_number: Option<u64>,
    correlation_id: Option<String>,
    max_size: Option<u64>,
) -> ServerMessage {
    let kind = error.kind();
    ServerMessage::Nack(NackMessage {
        timestamp: now,
        correlation_id,
        sequence_number,
        reason: kind.nack_reason().to_string(),
        error_message: error.message().to_string(),
        should_retry: kind.should_retry(),
        retry_delay_ms: match kind {
            ErrorKind::BufferFull => Some(BUFFER_FULL_RETRY_MS),
            ErrorKind::Storage | ErrorKind::Internal => Some(1_000),
            _ => None,
        },
        max_size,
    })
}

#[cfg(test)]
mod tests;
