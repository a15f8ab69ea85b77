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
//! Dedup is exact: per source, the batch sequence numbers acked are kept as a
//! range set ([`SeqSet`]) with the fingerprints of the latest batches. What a
//! stored batch adds to its source is written with the batch, in its row
//! ([`BatchFacts`]); the source's own row is rewritten only when the flush
//! deletes batches ([`Intake::unfolded`]) or something a batch row cannot say
//! changed (a new source, a new shard name), and at start-up the batches it
//! does not include are replayed onto it ([`Intake::replay`]). A resent batch is acked `duplicate`; an event already stored is never
//! stored again; a batch that was never acked is never taken for a duplicate.
//! The `deduplicationWindowMs` bounds the in-memory cache of recent batches
//! (used to report what the original batch stored); correctness never depends
//! on it.

mod seqset;
mod source;
mod stored;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::config::DoLakeConfig;
use crate::error::{Error, ErrorKind};
use crate::protocol::{
    AckDetails, AckMessage, AckStatus, BufferSnapshot, CdcBatchMessage, NackMessage, ServerMessage,
    ServiceState, StatusMessage,
};

pub use seqset::SeqSet;
pub use source::{BatchFacts, SourceState};
pub use stored::decode_events;
#[cfg(test)]
use stored::legacy_fingerprint;
use stored::Incoming;

/// How long a `buffer_full` refusal asks the shard to wait, ms.
pub const BUFFER_FULL_RETRY_MS: u64 = 5_000;

/// Buffer utilization from which acks carry a slow-down hint.
pub const BACKPRESSURE_UTILIZATION: f64 = 0.8;

/// Most ranges a source's batch watermark may hold; beyond, sequence numbers
/// are too sparse to track exactly and batches are refused with
/// `invalid_sequence`.
pub const MAX_WATERMARK_RANGES: usize = 1_000;

/// Most sources whose dedup state is kept. A new source beyond it evicts
/// sources idle for [`SOURCE_RETENTION_MS`], or is refused (`load_shedding`).
pub const MAX_SOURCES: usize = 10_000;

/// How long an idle source's dedup state is kept when room is needed: a
/// batch resent after that long may be stored again.
pub const SOURCE_RETENTION_MS: i64 = 30 * 86_400_000;

/// How many of a source's latest batches keep the fingerprint of their
/// events, to tell a resend from a reused `sequenceNumber`.
pub const FINGERPRINT_WINDOW: usize = 64;

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
    /// A batch was refused with `buffer_full` since these totals were read
    /// from storage (a flush reads them again): the buffer is as full as it
    /// gets, so the byte threshold counts as reached. Without this a
    /// threshold close to `maxBufferSize` is never reached by batches larger
    /// than the room left, and intake stalls.
    pub refused_full: bool,
}

/// One batch as stored in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    /// Its source, number, counts and fingerprint: what it adds to its
    /// source (replayed at start-up).
    pub facts: BatchFacts,
    /// Lowest stored event sequence.
    pub first_event_seq: u64,
    /// Distinct tables of the events, sorted.
    pub tables: Vec<String>,
    /// The stored events: a JSON array of the protocol's events.
    pub payload: String,
}

/// What the adapter must make durable before the batch is acked.
#[derive(Debug, Clone, PartialEq)]
pub struct StorePlan {
    /// The source's row, written with the batch (after it) when the batch's
    /// row cannot say what changed: a new source, a new shard name, an
    /// eviction. Otherwise the batch's row alone records what it added.
    pub source: Option<SourceState>,
    /// The batch's rows.
    pub record: BatchRecord,
    /// The batch's sequence number.
    pub sequence_number: u64,
    /// Stored in the fallback headroom past `maxBufferSize` (the lake is failing).
    pub fallback: bool,
    /// The batch's correlation id.
    pub correlation_id: Option<String>,
    /// Sources whose dedup state is dropped (idle past the retention).
    pub evicted: Vec<String>,
}

/// The outcome of [`Intake::admit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Write the plan, then call [`Intake::commit`].
    Store(Box<StorePlan>),
    /// Nothing to write; send this.
    Reply(ServerMessage),
}

/// A batch that is not stored (refused, or a resend), as its source counts it.
struct Refused<'a> {
    now: i64,
    source_id: &'a str,
    shard_name: Option<&'a str>,
    seq: u64,
    events: u64,
    correlation_id: Option<String>,
}

impl Refused<'_> {
    /// Counts the batch as received by its source, if the source is known.
    fn apply<'s>(
        &self,
        sources: &'s mut BTreeMap<String, SourceState>,
    ) -> Option<&'s mut SourceState> {
        let source = sources.get_mut(self.source_id)?;
        source.received(self.now, self.seq, self.events);
        if let Some(name) = self.shard_name {
            source.shard_name = Some(name.to_string());
        }
        Some(source)
    }
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
    evicted_sources: u64,
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
    /// Sources with stored batches their row does not include yet.
    unfolded: BTreeSet<String>,
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
            unfolded: BTreeSet::new(),
        }
    }

    /// Replays, in the order they were stored, the batches that their
    /// sources' rows do not include yet (see the module docs). A batch of a
    /// source without a row belongs to a source that was evicted: skipped.
    pub fn replay(&mut self, batches: impl IntoIterator<Item = BatchFacts>) {
        for batch in batches {
            if let Some(source) = self.sources.get_mut(&batch.source_id) {
                source.replay(&batch);
                self.unfolded.insert(batch.source_id);
            }
        }
    }

    /// The sources whose rows lack some of their stored batches: the flush
    /// writes them when it deletes batches, then calls [`Self::folded`].
    pub fn unfolded(&self) -> impl Iterator<Item = &SourceState> {
        self.unfolded.iter().filter_map(|id| self.sources.get(id))
    }

    /// Every source's row now includes all its stored batches.
    pub fn folded(&mut self) {
        self.unfolded.clear();
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

    /// Records a `connect` or `heartbeat` of a known source; returns its
    /// state to persist. An unknown source is not recorded: a source exists
    /// from its first stored batch, so `connect` spam creates no state.
    pub fn note_contact(
        &mut self,
        now: i64,
        source_id: &str,
        shard_name: Option<&str>,
        client_last_ack: Option<i64>,
    ) -> Option<&SourceState> {
        let source = self.sources.get_mut(source_id)?;
        source.last_seen_ms = now;
        if let Some(name) = shard_name {
            source.shard_name = Some(name.to_string());
        }
        if client_last_ack.is_some() {
            source.client_last_ack_sequence = client_last_ack;
        }
        Some(source)
    }

    /// Decides what to do with a decoded batch.
    ///
    /// The dedup rule (README "Deduplication"): a batch is a resend, acked
    /// `duplicate` and not stored, when its source already had a batch with
    /// the same `sequenceNumber` acked *and* (while that number is among the
    /// source's last [`FINGERPRINT_WINDOW`] batches) the same events. Event
    /// `sequence`s play no part: the guide's shard does not persist them, so
    /// they start again at 0 after a restart while batch numbers go on.
    pub fn admit(&mut self, now: i64, mut batch: CdcBatchMessage) -> Admission {
        self.expire(now);
        let seq = batch.sequence_number;
        let correlation_id = batch.correlation_id.clone();
        let known = self.sources.contains_key(&batch.source_do_id);
        let mut evicted = Vec::new();
        if !known && self.sources.len() >= MAX_SOURCES {
            evicted = self.evict_idle(now);
            if evicted.is_empty() {
                let error = Error::new(
                    ErrorKind::Overloaded,
                    format!(
                        "DoLake tracks {MAX_SOURCES} sources, none idle for {} days; a new source must wait",
                        SOURCE_RETENTION_MS / 86_400_000
                    ),
                );
                return Admission::Reply(nack(now, &error, Some(seq), correlation_id, None));
            }
        }
        let source_id = std::mem::take(&mut batch.source_do_id);
        let shard_name = batch.source_shard_name.take();
        let refused = Refused {
            now,
            source_id: &source_id,
            shard_name: shard_name.as_deref(),
            seq,
            events: batch.events.len() as u64,
            correlation_id,
        };
        let dedup = self.config.enable_deduplication;

        let limits = &self.config.rate_limit;
        if batch.events.len() as u64 > limits.max_events_per_message {
            let error = Error::invalid(format!(
                "batch has {} events; at most {} are allowed per message (rateLimit.maxEventsPerMessage)",
                batch.events.len(),
                limits.max_events_per_message
            ));
            return self.refuse_batch(refused, &error, None);
        }

        // The stored form: the events as JSON, in the shard's order, as
        // received when the decoder kept the text. Sized by what arrived,
        // never by the client's `sizeBytes`. Only deduplication keeps prints.
        let n = batch.events.len() as u64;
        let incoming = match Incoming::new(std::mem::take(&mut batch.events), dedup) {
            Ok(incoming) => incoming,
            Err(error) => return self.refuse_batch(refused, &error, None),
        };
        let (mut first, mut last) = (u64::MAX, 0u64);
        for (i, (&(sequence, _), size)) in incoming.heads.iter().zip(&incoming.sizes).enumerate() {
            if let Err(e) = incoming.check(i) {
                let error = Error::invalid(format!("events[{i}]: {}", e.message()));
                return self.refuse_batch(refused, &error, None);
            }
            if *size as u64 > limits.max_event_size {
                let error = Error::new(
                    ErrorKind::EventTooLarge,
                    format!(
                        "event with sequence {sequence} is {size} bytes; at most {} are allowed (rateLimit.maxEventSize)",
                        limits.max_event_size
                    ),
                );
                let max = Some(limits.max_event_size);
                return self.refuse_batch(refused, &error, max);
            }
            first = first.min(sequence);
            last = last.max(sequence);
        }
        let fingerprint = incoming.fingerprint;

        // The checks read the source as it is: intake's state changes only
        // once the batch is stored (`commit`), or refused.
        let source = self.sources.get(&source_id);
        let acked = |s: &SourceState| s.acked_batches.contains(seq);
        if let Some((source, fingerprint)) = source.filter(|s| acked(s)).zip(fingerprint) {
            // The same number with other events is not a resend (a shard
            // that lost its batch counter): stored, and counted as reused.
            if source.is_resend(seq, fingerprint)
                || source.is_resend(seq, incoming.legacy_fingerprint())
            {
                return self.duplicate(refused);
            }
        }
        // One insert adds at most one range: only a full set needs the check.
        if let Some(source) = source
            .filter(|s| dedup && s.acked_batches.range_count() >= MAX_WATERMARK_RANGES && !acked(s))
        {
            let mut acked = source.acked_batches.clone();
            acked.insert(seq);
            if acked.range_count() > MAX_WATERMARK_RANGES {
                let error = Error::new(
                    ErrorKind::InvalidSequence,
                    format!(
                        "batch sequence numbers of source {source_id:?} are too sparse to track (more than {MAX_WATERMARK_RANGES} gaps); send increasing sequenceNumbers"
                    ),
                );
                return self.refuse_batch(refused, &error, None);
            }
        }

        let size = incoming.payload.len() as u64;
        let capacity = self.capacity();
        if self.buffer.bytes + size > capacity {
            self.buffer.refused_full = true;
            let error = Error::new(
                ErrorKind::BufferFull,
                format!(
                    "buffer holds {} of {capacity} bytes; this batch needs {size} more; retry after a flush",
                    self.buffer.bytes
                ),
            );
            return self.refuse_batch(refused, &error, None);
        }
        let fallback = self.buffer.bytes + size > self.config.max_buffer_size;
        let Refused { correlation_id, .. } = refused;
        let record = BatchRecord {
            facts: BatchFacts {
                source_id,
                batch_seq: seq,
                last_event_seq: last,
                event_count: n,
                size_bytes: size,
                received_at: now,
                fingerprint,
            },
            first_event_seq: first,
            tables: incoming.tables,
            payload: incoming.payload,
        };
        // What the batch's row cannot say (a new source, a new shard name,
        // an eviction) is written with it: the source's row after the batch.
        let renamed = shard_name
            .as_ref()
            .is_some_and(|name| source.is_some_and(|s| s.shard_name.as_ref() != Some(name)));
        let source = (source.is_none() || renamed || !evicted.is_empty()).then(|| {
            let mut source = source
                .cloned()
                .unwrap_or_else(|| SourceState::new(&record.facts.source_id, now));
            source.shard_name = shard_name.or(source.shard_name);
            source.replay(&record.facts);
            source
        });
        Admission::Store(Box::new(StorePlan {
            source,
            record,
            sequence_number: seq,
            fallback,
            correlation_id,
            evicted,
        }))
    }

    /// Forgets the dedup state of sources idle for [`SOURCE_RETENTION_MS`]
    /// (at most a tenth of the table at a time); returns their ids.
    fn evict_idle(&mut self, now: i64) -> Vec<String> {
        let mut idle: Vec<(i64, String)> = self
            .sources
            .values()
            .filter(|s| now - s.last_seen_ms >= SOURCE_RETENTION_MS)
            .map(|s| (s.last_seen_ms, s.source_id.clone()))
            .collect();
        idle.sort();
        idle.truncate((MAX_SOURCES / 10).max(1));
        for (_, id) in &idle {
            self.sources.remove(id);
            self.unfolded.remove(id);
            self.dedup.evicted_sources += 1;
        }
        idle.into_iter().map(|(_, id)| id).collect()
    }

    /// Applies a plan the adapter has made durable; returns the `ack`.
    pub fn commit(&mut self, now: i64, plan: StorePlan) -> ServerMessage {
        let StorePlan {
            source,
            record,
            sequence_number,
            fallback,
            correlation_id,
            evicted: _,
        } = plan;
        let facts = &record.facts;
        let source_id = &facts.source_id;
        match source {
            // Written with the batch: its row holds the batch.
            Some(source) => {
                self.unfolded.remove(source_id);
                self.sources.insert(source_id.clone(), source);
            }
            // Only the batch's row holds it, until a flush folds it in.
            None => {
                if let Some(source) = self.sources.get_mut(source_id) {
                    source.replay(facts);
                }
                if !self.unfolded.contains(source_id) {
                    self.unfolded.insert(source_id.clone());
                }
            }
        }
        self.buffer.batches += 1;
        self.buffer.events += facts.event_count;
        self.buffer.bytes += facts.size_bytes;
        self.buffer.oldest_ms = Some(self.buffer.oldest_ms.unwrap_or(facts.received_at));
        self.buffer.newest_ms = Some(facts.received_at);
        let status = if fallback {
            AckStatus::Fallback
        } else if self.utilization() >= BACKPRESSURE_UTILIZATION {
            AckStatus::Buffered
        } else {
            AckStatus::Ok
        };
        let events_stored = facts.event_count;
        if self.config.enable_deduplication {
            self.recent.insert(
                (source_id.clone(), sequence_number),
                RecentBatch { events_stored },
            );
            self.recent_order
                .push_back((now, source_id.clone(), sequence_number));
        }
        ServerMessage::Ack(AckMessage {
            timestamp: now,
            correlation_id,
            sequence_number,
            status,
            batch_id: Some(batch_id(source_id, sequence_number)),
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

    /// Refuses a batch. Only a known source keeps counters of refusals:
    /// refused batches must not create state (the source table is bounded).
    fn refuse_batch(&mut self, r: Refused<'_>, error: &Error, max_size: Option<u64>) -> Admission {
        if let Some(source) = r.apply(&mut self.sources) {
            source.batches_nacked += 1;
        }
        Admission::Reply(nack(r.now, error, Some(r.seq), r.correlation_id, max_size))
    }

    /// Acks a resend as `duplicate`, with what the original batch stored.
    fn duplicate(&mut self, r: Refused<'_>) -> Admission {
        if let Some(source) = r.apply(&mut self.sources) {
            source.duplicate_batches += 1;
            source.duplicate_events += r.events;
        }
        self.dedup.duplicate_batches += 1;
        self.dedup.duplicate_events += r.events;
        let original = self.recent.get(&(r.source_id.to_string(), r.seq)).copied();
        Admission::Reply(ServerMessage::Ack(AckMessage {
            timestamp: r.now,
            correlation_id: r.correlation_id,
            sequence_number: r.seq,
            status: AckStatus::Duplicate,
            batch_id: Some(batch_id(r.source_id, r.seq)),
            details: Some(AckDetails {
                events_processed: original.map_or(0, |o| o.events_stored),
                ..self.details()
            }),
            rate_limit: None,
        }))
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
            "maxSources": MAX_SOURCES,
            "evictedSources": self.dedup.evicted_sources,
            "reusedSequenceNumbers": self.sources.values().map(|s| s.reused_sequence_numbers).sum::<u64>(),
            "watermarkRanges": self.sources.values()
                .map(|s| s.acked_batches.range_count())
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
            ErrorKind::Overloaded => Some(60_000),
            ErrorKind::Storage | ErrorKind::Internal => Some(1_000),
            _ => None,
        },
        max_size,
        kind: Some(kind),
    })
}

#[cfg(test)]
mod tests;
