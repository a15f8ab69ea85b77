//! The one-pass decoder of a valid `cdc_batch`: the common case of intake.
//!
//! It walks the message's top-level object and its `events` array itself
//! (braces, commas, colons and whitespace) and reads every key and value
//! with serde_json where it lies, so each event is read once, straight into
//! what intake needs (its head, its images in the digest's canonical form),
//! and its text is known by where its reading started and ended. The text
//! is kept as received for intake to store.
//!
//! It has the fields and rules of `CdcBatchMessage` and `CdcEvent` (a
//! duplicate field, a missing one or a wrong type refuses the message), and
//! the checks of the general path's validation and of the lake's limits on
//! images. Whatever it does not clearly accept returns `None`, and the
//! general decoder then reads the message again to say precisely what is
//! wrong (or to accept it, for intake's own checks to refuse).

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::client::{
    validate_table_name, BatchEvents, CdcBatchMessage, CdcBatchType, CdcEvent, Operation,
    ReceivedEvents, RowIdText, MAX_ID_BYTES,
};
use super::digest::{Canonical, Digest, EventHead, Image, Text};

/// A valid batch, or `None`.
pub(super) fn decode_batch(text: &str) -> Option<CdcBatchMessage> {
    let mut cursor = Cursor { text, at: 0 };
    let mut envelope = Envelope::default();
    cursor.expect(b'{')?;
    if !cursor.eat(b'}') {
        loop {
            let Text(key) = cursor.value::<Text>()?;
            cursor.expect(b':')?;
            envelope.field(&key, &mut cursor)?;
            if cursor.eat(b',') {
                continue;
            }
            cursor.expect(b'}')?;
            break;
        }
    }
    if !cursor.at_end() {
        return None;
    }
    envelope.finish()
}

/// A position in the message text.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn skip_whitespace(&mut self) {
        let rest = &self.text.as_bytes()[self.at..];
        self.at += rest
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .count();
    }

    /// Consumes `byte` after whitespace, if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_whitespace();
        let next = self.text.as_bytes().get(self.at) == Some(&byte);
        if next {
            self.at += 1;
        }
        next
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// Reads one value of type `T` where it lies, after whitespace.
    fn value<T: Deserialize<'a>>(&mut self) -> Option<T> {
        self.spanned::<T>().ok().map(|(value, _)| value)
    }

    /// Reads one value where it lies and returns it with its text. Each
    /// value gets serde_json's whole nesting budget (127 levels).
    fn spanned<T: Deserialize<'a>>(&mut self) -> serde_json::Result<(T, &'a str)> {
        self.skip_whitespace();
        let rest = &self.text[self.at..];
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<T>();
        let value = stream
            .next()
            .unwrap_or_else(|| Err(serde::de::Error::custom("a value is missing")))?;
        let len = stream.byte_offset();
        self.at += len;
        Ok((value, &rest[..len]))
    }

    /// Reads an array, calling `each` at each element (`None` stops it).
    fn items(&mut self, mut each: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        if self.eat(b']') {
            return Some(());
        }
        loop {
            each(self)?;
            if !self.eat(b',') {
                return self.expect(b']');
            }
        }
    }

    /// Whether only whitespace is left.
    fn at_end(&mut self) -> bool {
        self.skip_whitespace();
        self.at == self.text.len()
    }
}

/// A JSON array of events (a batch's stored form, or the events kept as
/// received), each event read with serde_json's whole nesting budget, as
/// the one-pass decoder read it: whatever it accepted reads back.
pub(crate) fn events_of(text: &str) -> serde_json::Result<Vec<CdcEvent>> {
    let mut cursor = Cursor { text, at: 0 };
    let (mut events, mut error) = (Vec::new(), None);
    let read = cursor.items(|c| match c.spanned::<CdcEvent>() {
        Ok((event, _)) => {
            events.push(event);
            Some(())
        }
        Err(e) => {
            error = Some(e);
            None
        }
    });
    match (read.filter(|()| cursor.at_end()), error) {
        (Some(()), _) => Ok(events),
        (None, Some(e)) => Err(e),
        (None, None) => Err(serde::de::Error::custom("expected a JSON array of events")),
    }
}

/// The top-level fields of a `cdc_batch` as they are read (each at most
/// once, as the derived decoder insists).
#[derive(Default)]
struct Envelope {
    timestamp: Option<Option<i64>>,
    correlation_id: Option<Option<String>>,
    source_do_id: Option<String>,
    source_shard_name: Option<Option<String>>,
    events: Option<ReceivedEvents>,
    sequence_number: Option<u64>,
    first_event_sequence: Option<Option<u64>>,
    last_event_sequence: Option<Option<u64>>,
    size_bytes: Option<Option<u64>>,
    is_retry: Option<bool>,
    retry_count: Option<u32>,
    message_type: Option<CdcBatchType>,
}

/// Sets a field read once; `None` when it was already read.
fn once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value?);
    Some(())
}

impl Envelope {
    fn field(&mut self, key: &str, cursor: &mut Cursor<'_>) -> Option<()> {
        match key {
            "timestamp" => once(&mut self.timestamp, cursor.value()),
            "correlationId" => once(&mut self.correlation_id, cursor.value()),
            "sourceDoId" => once(&mut self.source_do_id, cursor.value()),
            "sourceShardName" => once(&mut self.source_shard_name, cursor.value()),
            "events" => once(&mut self.events, read_events(cursor)),
            "sequenceNumber" => once(&mut self.sequence_number, cursor.value()),
            "firstEventSequence" => once(&mut self.first_event_sequence, cursor.value()),
            "lastEventSequence" => once(&mut self.last_event_sequence, cursor.value()),
            "sizeBytes" => once(&mut self.size_bytes, cursor.value()),
            "isRetry" => once(&mut self.is_retry, cursor.value()),
            "retryCount" => once(&mut self.retry_count, cursor.value()),
            "type" => once(&mut self.message_type, cursor.value()),
            _ => cursor.value::<IgnoredAny>().map(drop),
        }
    }

    fn finish(self) -> Option<CdcBatchMessage> {
        let source_do_id = self.source_do_id?;
        let correlation_id = self.correlation_id.flatten();
        let source_shard_name = self.source_shard_name.flatten();
        let ids = [
            Some(&source_do_id),
            source_shard_name.as_ref(),
            correlation_id.as_ref(),
        ];
        if source_do_id.is_empty() || ids.into_iter().flatten().any(|id| id.len() > MAX_ID_BYTES) {
            return None;
        }
        Some(CdcBatchMessage {
            timestamp: self.timestamp.flatten(),
            correlation_id,
            source_do_id,
            source_shard_name,
            events: BatchEvents::Received(self.events?),
            sequence_number: self.sequence_number?,
            first_event_sequence: self.first_event_sequence.flatten(),
            last_event_sequence: self.last_event_sequence.flatten(),
            size_bytes: self.size_bytes.flatten(),
            is_retry: self.is_retry.unwrap_or_default(),
            retry_count: self.retry_count.unwrap_or_default(),
            message_type: Some(self.message_type?),
        })
    }
}

/// The `events` array: each event read once where it lies, checked, its
/// text kept; `None` if it is empty or anything in it is not clearly valid.
fn read_events(cursor: &mut Cursor<'_>) -> Option<ReceivedEvents> {
    cursor.skip_whitespace();
    let start = cursor.at;
    let mut received = ReceivedEvents::default();
    let mut digest = Digest::default();
    cursor.items(|c| {
        let (event, text) = c.spanned::<EventText>().ok()?;
        event.check(&mut received.tables)?;
        event.digest(&mut digest);
        received.heads.push((event.sequence, event.timestamp));
        received.sizes.push(text.len());
        Some(())
    })?;
    if received.sizes.is_empty() {
        return None;
    }
    // The array as sent, whitespace between events included.
    received.text = cursor.text[start..cursor.at].to_owned();
    received.digest = digest.finish();
    Some(received)
}

/// One event as the one-pass decoder reads it: the fields and rules of
/// `CdcEvent`, with the images in canonical form instead of maps.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventText<'a> {
    sequence: u64,
    timestamp: i64,
    operation: Operation,
    #[serde(borrow)]
    table: Text<'a>,
    #[serde(borrow)]
    row_id: RowIdText<'a>,
    #[serde(default)]
    before: Option<Image>,
    #[serde(default)]
    after: Option<Image>,
    #[serde(default)]
    metadata: Option<Canonical>,
}

impl EventText<'_> {
    /// The general path's validation of an event and the lake's limits on
    /// images (`None` when one fails), noting the event's table in `tables`
    /// (validated once per table).
    fn check(&self, tables: &mut Vec<String>) -> Option<()> {
        let table = self.table.0.as_ref();
        if !tables.iter().any(|t| t == table) {
            validate_table_name(table).ok()?;
            tables.push(table.to_owned());
        }
        let needs_after = matches!(self.operation, Operation::Insert | Operation::Update);
        if self.row_id.0.is_empty() || (needs_after && self.after.is_none()) {
            return None;
        }
        let within = |depth: usize| depth <= crate::lake::limits::MAX_JSON_DEPTH;
        for image in [&self.before, &self.after].into_iter().flatten() {
            if image.keys > crate::lake::limits::MAX_EVENT_KEYS || !within(image.depth) {
                return None;
            }
        }
        self.metadata
            .as_ref()
            .is_none_or(|m| within(m.depth))
            .then_some(())
    }

    fn digest(&self, digest: &mut Digest) {
        let head = EventHead {
            sequence: self.sequence,
            timestamp: self.timestamp,
            operation: self.operation,
            table: &self.table.0,
            row_id: &self.row_id.0,
        };
        digest.event(
            head,
            [
                self.before.as_ref().map(|i| i.bytes.as_slice()),
                self.after.as_ref().map(|i| i.bytes.as_slice()),
                self.metadata.as_ref().map(|m| m.bytes.as_slice()),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_client_message, ClientMessage};

    fn general(text: &str) -> Option<CdcBatchMessage> {
        match serde_json::from_str::<CdcBatchMessage>(text) {
            Ok(b) if !b.events.is_empty() => Some(b),
            _ => None,
        }
    }

    const EVENT: &str = r#"{"sequence":1,"timestamp":5,"operation":"INSERT","table":"t","rowId":"r","after":{"a":1}}"#;

    #[test]
    fn the_envelope_is_read_as_the_derived_decoder_reads_it() {
        let ok = [
            format!(" {{ \"type\" : \"cdc_batch\" ,\n\"sourceDoId\":\"s\",\"events\" : [ {EVENT} , {EVENT} ] ,\"sequenceNumber\":1 }} \n"),
            format!(r#"{{"\u0074ype":"cdc_batch","sourceDoId":"s","events":[{EVENT}],"sequenceNumber":1,"extra":{{"x":[1,{{"y":null}}]}},"extra":2}}"#),
            format!(r#"{{"type":"cdc_batch","sourceDoId":"s","events":[{EVENT}],"sequenceNumber":1,"timestamp":null,"correlationId":null}}"#),
        ];
        for text in &ok {
            let fast = decode_batch(text).unwrap_or_else(|| panic!("accepted: {text}"));
            assert_eq!(Some(&fast), general(text).as_ref(), "{text}");
            let BatchEvents::Received(r) = &fast.events else {
                panic!()
            };
            // The events array exactly as sent.
            let start = text.find("[ {").or_else(|| text.find("[{")).unwrap();
            assert!(text[start..].starts_with(&r.text), "{}", r.text);
            assert!(r.text.ends_with(']'));
            assert!(r.sizes.iter().all(|&n| n == EVENT.len()));
        }
        let refused = [
            format!(
                r#"{{"type":"cdc_batch","sourceDoId":"s","events":[{EVENT}],"sequenceNumber":1,"sequenceNumber":2}}"#
            ),
            format!(
                r#"{{"type":"cdc_batch","sourceDoId":"s","events":[{EVENT}],"sequenceNumber":1}} x"#
            ),
            format!(
                r#"{{"type":"cdc_batch","sourceDoId":"s","events":[{EVENT},],"sequenceNumber":1}}"#
            ),
            format!(
                r#"{{"type":"cdc_batch","sourceDoId":"s","events":[{EVENT}],"sequenceNumber":1,}}"#
            ),
            format!(r#"{{"type":"cdc_batch","sourceDoId":"s","events":[{EVENT}]}}"#),
            r#"{"type":"cdc_batch","sourceDoId":"s","events":[],"sequenceNumber":1}"#.to_string(),
            format!(
                r#"{{"type":"cdc_batch","sourceDoId":"s","events":[{EVENT}],"sequenceNumber":1,"isRetry":null}}"#
            ),
            format!(
                r#"{{"type":"flush_request","sourceDoId":"s","events":[{EVENT}],"sequenceNumber":1}}"#
            ),
            format!(
                r#"[{{"type":"cdc_batch","sourceDoId":"s","events":[{EVENT}],"sequenceNumber":1}}]"#
            ),
            format!(
                r#"{{"type":"cdc_batch","sourceDoId":"s","events":[{EVENT}],"sequenceNumber":1"#
            ),
        ];
        for text in &refused {
            assert!(decode_batch(text).is_none(), "refused: {text}");
        }
    }

    /// Each event is read with serde_json's whole nesting budget; the stored
    /// form is read back the same way, so an event accepted near the limit
    /// (an image at the lake's deepest, a deep field the protocol ignores)
    /// never becomes a buffered batch the flush cannot read.
    #[test]
    fn whatever_is_accepted_reads_back_from_its_stored_form() {
        let nest = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        // `after` counts as one level, the arrays inside it the rest.
        let deep_image = EVENT.replace(
            r#"{"a":1}"#,
            &format!(
                r#"{{"a":{}}}"#,
                nest(crate::lake::limits::MAX_JSON_DEPTH - 1)
            ),
        );
        let deep_ignored = EVENT.replace(r#""rowId""#, &format!(r#""junk":{},"rowId""#, nest(126)));
        for event in [deep_image, deep_ignored] {
            let text = format!(
                r#"{{"type":"cdc_batch","sourceDoId":"s","events":[{event},{EVENT}],"sequenceNumber":1}}"#
            );
            let Ok(ClientMessage::CdcBatch(b)) = decode_client_message(&text) else {
                panic!("accepted")
            };
            let BatchEvents::Received(r) = &b.events else {
                panic!("the one-pass decoder took it")
            };
            let events = crate::intake::decode_events(&r.text).expect("reads back");
            assert_eq!(events.len(), 2);
            assert_eq!(crate::protocol::events_digest(&events), r.digest);
        }
        // An image one level deeper than the lake allows takes the general
        // path, which refuses the message (it nests past serde_json's
        // budget there); not a crash.
        let too_deep = EVENT.replace(
            r#"{"a":1}"#,
            &format!(r#"{{"a":{}}}"#, nest(crate::lake::limits::MAX_JSON_DEPTH)),
        );
        let text = format!(
            r#"{{"type":"cdc_batch","sourceDoId":"s","events":[{too_deep}],"sequenceNumber":1}}"#
        );
        assert!(decode_batch(&text).is_none());
        assert!(decode_client_message(&text).is_err());
        // Fields the protocol ignores are skipped without recursion, at any
        // depth, here and when the stored form is read.
        let ignored = EVENT.replace(r#""rowId""#, &format!(r#""junk":{},"rowId""#, nest(5_000)));
        let text = format!(
            r#"{{"type":"cdc_batch","sourceDoId":"s","events":[{ignored}],"sequenceNumber":1}}"#
        );
        let b = decode_batch(&text).expect("accepted");
        let BatchEvents::Received(r) = &b.events else {
            panic!()
        };
        assert_eq!(crate::intake::decode_events(&r.text).unwrap().len(), 1);
    }

    #[test]
    fn a_stored_array_reads_as_serde_json_reads_it() {
        let text = format!(" [ {EVENT} ,\n{EVENT} ] ");
        let events = events_of(&text).unwrap();
        assert_eq!(
            events,
            serde_json::from_str::<Vec<CdcEvent>>(&text).unwrap()
        );
        assert_eq!(events_of("[]").unwrap(), vec![]);
        for bad in [
            "",
            "{}",
            "[",
            &format!("[{EVENT}"),
            &format!("[{EVENT},]"),
            &format!("[{EVENT}] x"),
        ] {
            assert!(events_of(bad).is_err(), "{bad}");
        }
    }
}
