//! The stored form of a batch, in one place: its events as a JSON array of
//! the protocol's events (as received, or encoded when a batch was built in
//! code), cut into chunks for storage rows, and read back by the flush; and
//! the fingerprint deduplication keeps (the events' content digest,
//! `protocol::digest`, and the legacy print of earlier versions).

use super::BatchRecord;
use crate::error::{Error, Result};
use crate::protocol::{events_digest, BatchEvents, CdcEvent};

/// A batch's events in their stored form, with what admission checks of
/// each event.
pub(crate) struct Incoming {
    /// The stored events: a JSON array.
    pub payload: String,
    /// Bytes of each event's text.
    pub sizes: Vec<usize>,
    /// Each event's `(sequence, timestamp)`.
    pub heads: Vec<(u64, i64)>,
    /// The distinct tables, sorted.
    pub tables: Vec<String>,
    /// The events' fingerprint, when asked for.
    pub fingerprint: Option<u64>,
    /// Events built in code or read by the general decoder: not yet checked
    /// against the lake's rules (received ones were, as they were read).
    pub unchecked: Option<Vec<CdcEvent>>,
}

impl Incoming {
    /// The stored form of `events`, with their fingerprint if `fingerprint`.
    pub fn new(events: BatchEvents, fingerprint: bool) -> Result<Incoming> {
        match events {
            BatchEvents::Received(r) => {
                let mut tables = r.tables;
                tables.sort_unstable();
                Ok(Incoming {
                    payload: r.text,
                    sizes: r.sizes,
                    heads: r.heads,
                    tables,
                    fingerprint: fingerprint.then_some(r.digest),
                    unchecked: None,
                })
            }
            BatchEvents::Decoded(events) => {
                let (payload, sizes) = encode_events(&events)
                    .map_err(|e| Error::internal(format!("cannot encode events: {e}")))?;
                let mut tables: Vec<String> = Vec::new();
                for event in &events {
                    if let Err(i) = tables.binary_search(&event.table) {
                        tables.insert(i, event.table.clone());
                    }
                }
                Ok(Incoming {
                    payload,
                    sizes,
                    heads: events.iter().map(|e| (e.sequence, e.timestamp)).collect(),
                    tables,
                    fingerprint: fingerprint.then(|| events_digest(&events)),
                    unchecked: Some(events),
                })
            }
        }
    }

    /// The lake's rules for event `i`: all of them for an unchecked event,
    /// what the decoder leaves to intake for a received one.
    pub fn check(&self, i: usize) -> Result<()> {
        match &self.unchecked {
            Some(events) => {
                let e = &events[i];
                crate::lake::check_event(
                    &e.table,
                    e.sequence,
                    e.timestamp,
                    e.before.as_ref(),
                    e.after.as_ref(),
                )?;
                e.metadata
                    .as_ref()
                    .map_or(Ok(()), crate::lake::check_metadata)
            }
            None => {
                let (sequence, timestamp) = self.heads[i];
                crate::lake::limits::check_sequence(sequence)?;
                crate::lake::limits::check_timestamp(timestamp)
            }
        }
    }

    /// The fingerprint versions before 2026-12 kept ([`legacy_fingerprint`]).
    pub fn legacy_fingerprint(&self) -> u64 {
        match &self.unchecked {
            Some(events) => legacy_fingerprint(events),
            None => decode_events(&self.payload).map_or(0, |events| legacy_fingerprint(&events)),
        }
    }
}

/// Reads the stored events of a batch back (each event with the nesting
/// budget the decoder read it with, so whatever intake accepted reads back).
pub fn decode_events(payload: &str) -> Result<Vec<CdcEvent>> {
    crate::protocol::events_of(payload)
        .map_err(|e| Error::storage(format!("a buffered batch could not be decoded: {e}")))
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

/// The fingerprint of versions before 2026-12: FNV-1a (64 bits) of the
/// events encoded again. Batches acked by them keep theirs in the window, so
/// a resend of one is still recognised (computed only when the current print
/// does not match).
pub(crate) fn legacy_fingerprint(events: &[CdcEvent]) -> u64 {
    let Ok((payload, _)) = encode_events(events) else {
        return 0;
    };
    payload.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The events encoded as a JSON array, with each event's size: the stored
/// form of a batch that did not come with its text (built in code).
pub(crate) fn encode_events(
    events: &[CdcEvent],
) -> Result<(String, Vec<usize>), serde_json::Error> {
    let mut payload: Vec<u8> = Vec::with_capacity(events.len() * 256);
    let mut sizes = Vec::with_capacity(events.len());
    payload.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            payload.push(b',');
        }
        let start = payload.len();
        serde_json::to_writer(&mut payload, event)?;
        sizes.push(payload.len() - start);
    }
    payload.push(b']');
    // serde_json writes UTF-8 only.
    let payload = String::from_utf8(payload).expect("serde_json writes UTF-8");
    Ok((payload, sizes))
}
