//! What DoLake knows about one source (a DoSQL shard), and what each stored
//! batch adds to it.
//!
//! A source's row is not rewritten with every batch: a batch's own row keeps
//! what it adds ([`BatchFacts`]), and the source's row is rewritten when the
//! flush deletes batches (or the source changes otherwise). At start-up the
//! batches a source's row does not include yet are replayed onto it with
//! [`SourceState::replay`], the same steps intake took when it stored them,
//! so the dedup state after a crash is the one that was acked.

use serde::{Deserialize, Serialize};

use super::seqset::SeqSet;

/// Per-source progress and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SourceState {
    /// The shard's Durable Object id (`sourceDoId`).
    pub source_id: String,
    /// The shard's name.
    pub shard_name: Option<String>,
    /// Batch sequence numbers acked as stored (the batch watermark).
    pub acked_batches: SeqSet,
    /// Highest event sequence stored (reported only: event sequences restart
    /// when a guide shard restarts, so they play no part in dedup).
    pub highest_event_sequence: Option<u64>,
    /// Fingerprints of the events of the latest batches, by sequence number
    /// (at most [`super::FINGERPRINT_WINDOW`] numbers, a few prints each).
    pub fingerprints: std::collections::BTreeMap<u64, Vec<u64>>,
    /// Batches stored though their `sequenceNumber` was acked before with
    /// other events (a shard that lost its batch counter).
    pub reused_sequence_numbers: u64,
    /// Highest batch sequence number received.
    pub last_received_sequence: Option<u64>,
    /// Highest batch sequence number acked.
    pub last_acked_sequence: Option<u64>,
    /// The `lastAckSequence` the shard reported (connect, heartbeat).
    pub client_last_ack_sequence: Option<i64>,
    /// Batches received (including refused and duplicates).
    pub batches_received: u64,
    /// Events received in batches (including refused and duplicate ones).
    pub events_received: u64,
    /// Batches acked as newly stored.
    pub batches_acked: u64,
    /// Events stored.
    pub events_acked: u64,
    /// Bytes stored.
    pub bytes_acked: u64,
    /// Resent batches acked as `duplicate`.
    pub duplicate_batches: u64,
    /// Events dropped because they were already stored.
    pub duplicate_events: u64,
    /// Batches refused with a `nack`.
    pub batches_nacked: u64,
    /// First contact, Unix ms.
    pub first_seen_ms: i64,
    /// Last contact, Unix ms.
    pub last_seen_ms: i64,
    /// Last ack, Unix ms.
    pub last_ack_ms: Option<i64>,
}

/// What a stored batch adds to its source: kept in the batch's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFacts {
    /// The source.
    pub source_id: String,
    /// The batch's sequence number.
    pub batch_seq: u64,
    /// Highest stored event sequence.
    pub last_event_seq: u64,
    /// Stored events.
    pub event_count: u64,
    /// Stored bytes.
    pub size_bytes: u64,
    /// Receive time, Unix ms.
    pub received_at: i64,
    /// The events' fingerprint (only while deduplication is on).
    pub fingerprint: Option<u64>,
}

impl SourceState {
    /// A source seen for the first time at `now`.
    pub fn new(source_id: &str, now: i64) -> Self {
        Self {
            source_id: source_id.to_string(),
            first_seen_ms: now,
            last_seen_ms: now,
            ..Self::default()
        }
    }

    /// Counts a batch received at `now`, stored or not.
    pub(super) fn received(&mut self, now: i64, seq: u64, events: u64) {
        self.last_seen_ms = now;
        self.batches_received += 1;
        self.events_received += events;
        self.last_received_sequence = self.last_received_sequence.max(Some(seq));
    }

    /// Records a batch stored (after [`Self::received`]). A number acked
    /// before with other events is a reused one.
    pub(super) fn stored(&mut self, batch: &BatchFacts) {
        let seq = batch.batch_seq;
        if let Some(fingerprint) = batch.fingerprint {
            if self.acked_batches.contains(seq) {
                self.reused_sequence_numbers += 1;
            }
            self.acked_batches.insert(seq);
            self.remember(seq, fingerprint);
        }
        self.highest_event_sequence = self.highest_event_sequence.max(Some(batch.last_event_seq));
        self.last_acked_sequence = self.last_acked_sequence.max(Some(seq));
        self.last_ack_ms = Some(batch.received_at);
        self.batches_acked += 1;
        self.events_acked += batch.event_count;
        self.bytes_acked += batch.size_bytes;
    }

    /// Applies a stored batch that this state, as read from its row, does
    /// not include yet: what intake did when it stored it.
    pub fn replay(&mut self, batch: &BatchFacts) {
        self.received(batch.received_at, batch.batch_seq, batch.event_count);
        self.stored(batch);
    }

    /// Whether batch `seq` (acked before) with events of `fingerprint` is a
    /// resend. Past the fingerprint window, any acked number is.
    pub fn is_resend(&self, seq: u64, fingerprint: u64) -> bool {
        self.fingerprints
            .get(&seq)
            .is_none_or(|prints| prints.contains(&fingerprint))
    }

    /// Remembers the fingerprint of batch `seq`, forgetting the oldest
    /// numbers past the window.
    pub fn remember(&mut self, seq: u64, fingerprint: u64) {
        let prints = self.fingerprints.entry(seq).or_default();
        if !prints.contains(&fingerprint) {
            prints.push(fingerprint);
            if prints.len() > 4 {
                prints.remove(0);
            }
        }
        while self.fingerprints.len() > super::FINGERPRINT_WINDOW {
            self.fingerprints.pop_first();
        }
    }

    /// The state as reported in `/status` `sourceStates`.
    pub fn report(&self, connected: bool) -> serde_json::Value {
        serde_json::json!({
            "sourceDoId": self.source_id,
            "shardName": self.shard_name,
            "connected": connected,
            "lastReceivedSequence": self.last_received_sequence,
            "lastAckedSequence": self.last_acked_sequence,
            "clientLastAckSequence": self.client_last_ack_sequence,
            "batchesReceived": self.batches_received,
            "eventsReceived": self.events_received,
            "batchesAcked": self.batches_acked,
            "eventsAcked": self.events_acked,
            "bytesAcked": self.bytes_acked,
            "duplicateBatches": self.duplicate_batches,
            "duplicateEvents": self.duplicate_events,
            "batchesNacked": self.batches_nacked,
            "highestEventSequence": self.highest_event_sequence,
            "reusedSequenceNumbers": self.reused_sequence_numbers,
            "watermarkRanges": self.acked_batches.range_count(),
            "firstSeenTime": self.first_seen_ms,
            "lastSeenTime": self.last_seen_ms,
            "lastAckTime": self.last_ack_ms,
        })
    }
}
