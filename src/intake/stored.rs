//! The stored form of a batch, in one place: its events as a JSON array of
//! the protocol's events (as received, or encoded when a batch was built in
//! code), cut into chunks for storage rows, and read back by the flush; and
//! the fingerprint of a batch's events that deduplication keeps.

use xxhash_rust::xxh3::Xxh3;

use super::BatchRecord;
use crate::error::{Error, Result};
use crate::protocol::CdcEvent;

/// Reads the stored events of a batch back.
pub fn decode_events(payload: &str) -> Result<Vec<CdcEvent>> {
    serde_json::from_str(payload)
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

/// The fingerprint of a batch's events: XXH3 (64 bits) of their decoded
/// content, so the same events sent as other text (key order, spacing) have
/// the same print; stable across builds and targets (it is stored).
pub(crate) fn fingerprint(events: &[CdcEvent]) -> u64 {
    let mut h = Xxh3::new();
    for e in events {
        h.update(&e.sequence.to_le_bytes());
        h.update(&e.timestamp.to_le_bytes());
        hash_str(&mut h, e.operation.as_str());
        hash_str(&mut h, &e.table);
        hash_str(&mut h, &e.row_id);
        for image in [&e.before, &e.after] {
            match image {
                None => h.update(b"-"),
                Some(map) => hash_object(&mut h, map),
            }
        }
        match &e.metadata {
            None => h.update(b"-"),
            Some(v) => hash_value(&mut h, v),
        }
    }
    h.digest()
}

fn hash_str(h: &mut Xxh3, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn hash_object(h: &mut Xxh3, map: &serde_json::Map<String, serde_json::Value>) {
    h.update(b"o");
    h.update(&(map.len() as u64).to_le_bytes());
    // serde_json's map is ordered by key: the order of the text plays no part.
    for (k, v) in map {
        hash_str(h, k);
        hash_value(h, v);
    }
}

fn hash_value(h: &mut Xxh3, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => h.update(b"n"),
        Value::Bool(b) => h.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                h.update(b"u");
                h.update(&u.to_le_bytes());
            } else if let Some(i) = n.as_i64() {
                h.update(b"i");
                h.update(&i.to_le_bytes());
            } else {
                h.update(b"d");
                h.update(&n.as_f64().unwrap_or(f64::NAN).to_bits().to_le_bytes());
            }
        }
        Value::String(s) => {
            h.update(b"s");
            hash_str(h, s);
        }
        Value::Array(items) => {
            h.update(b"a");
            h.update(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| hash_value(h, item));
        }
        Value::Object(map) => hash_object(h, map),
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
