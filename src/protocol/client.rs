//! Messages from a shard to DoLake, and their decoding.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The operation of a change event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// A new row (`after` holds it).
    #[serde(rename = "INSERT")]
    Insert,
    /// A changed row (`after` holds the new image, `before` the old one).
    #[serde(rename = "UPDATE")]
    Update,
    /// A removed row (`before` holds it, or only `rowId` is known).
    #[serde(rename = "DELETE")]
    Delete,
}

impl Operation {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "INSERT",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// One change event (the guide's `CDCEvent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdcEvent {
    /// Position of the event in its source's change stream.
    pub sequence: u64,
    /// When the change happened, Unix milliseconds.
    pub timestamp: i64,
    /// INSERT, UPDATE or DELETE.
    pub operation: Operation,
    /// The source table.
    pub table: String,
    /// The row's key. Integers are accepted and kept as their decimal text.
    #[serde(deserialize_with = "row_id")]
    pub row_id: String,
    /// The row before the change (UPDATE, DELETE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Map<String, Value>>,
    /// The row after the change (INSERT, UPDATE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Map<String, Value>>,
    /// Free-form metadata of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

fn row_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    RowIdText::deserialize(d).map(|id| id.0.into_owned())
}

/// A `rowId`: a string, or an integer kept as its decimal text; borrowed
/// from the message when it can be (the one-pass decoder's events).
pub(super) struct RowIdText<'a>(pub(super) std::borrow::Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for RowIdText<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RowIdText<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RowIdText(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RowIdText(v.to_owned().into()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(RowIdText(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RowIdText(v.to_string().into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RowIdText(v.to_string().into()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Capabilities a shard announces in `connect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Whether the shard can speak a binary protocol.
    #[serde(default)]
    pub binary_protocol: bool,
    /// Whether the shard can compress messages.
    #[serde(default)]
    pub compression: bool,
    /// Whether the shard batches events.
    #[serde(default)]
    pub batching: bool,
    /// The shard's largest batch, events.
    #[serde(default)]
    pub max_batch_size: Option<u64>,
    /// The shard's largest message, bytes.
    #[serde(default)]
    pub max_message_size: Option<u64>,
}

/// `connect`: a shard introduces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectMessage {
    /// Send time, Unix ms.
    #[serde(default)]
    pub timestamp: Option<i64>,
    /// Correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The shard's Durable Object id.
    pub source_do_id: String,
    /// The shard's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_shard_name: Option<String>,
    /// The last batch sequence the shard saw acked.
    #[serde(default)]
    pub last_ack_sequence: Option<i64>,
    /// Protocol version (1).
    #[serde(default)]
    pub protocol_version: Option<u32>,
    /// Announced capabilities.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
}

/// `cdc_batch`: a batch of change events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdcBatchMessage {
    /// Send time, Unix ms.
    #[serde(default)]
    pub timestamp: Option<i64>,
    /// Correlation id, echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The shard's Durable Object id.
    pub source_do_id: String,
    /// The shard's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_shard_name: Option<String>,
    /// The events, in order.
    pub events: BatchEvents,
    /// The batch's sequence number in its source.
    pub sequence_number: u64,
    /// `events[0].sequence` as the shard saw it.
    #[serde(default)]
    pub first_event_sequence: Option<u64>,
    /// `events[last].sequence` as the shard saw it.
    #[serde(default)]
    pub last_event_sequence: Option<u64>,
    /// The shard's estimate of the batch size.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// Whether this is a resend.
    #[serde(default)]
    pub is_retry: bool,
    /// How often it was resent.
    #[serde(default)]
    pub retry_count: u32,
    /// The message's `type` as decoded (`None` when built in code, or when
    /// the text had none). Read in the same pass as the rest, so the
    /// one-pass decoder needs no second look at the text; never written (the
    /// enclosing message writes its own `type`).
    #[serde(rename = "type", default, skip_serializing)]
    pub message_type: Option<CdcBatchType>,
}

/// The events of a batch: decoded (built in code, or read by the general
/// decoder), or as received (read by the one-pass decoder: their text,
/// checked, with what intake needs of each, and never decoded into maps).
/// Written and compared as the list of events either way.
#[derive(Debug, Clone)]
pub enum BatchEvents {
    /// The events as values.
    Decoded(Vec<CdcEvent>),
    /// The events as they arrived.
    Received(ReceivedEvents),
}

/// A batch's events as received: the array's text as sent, and what the
/// one-pass decoder read of each event.
/// Made only by the decoder, which checked the text decodes to valid events
/// whose images are within the lake's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivedEvents {
    /// The `events` array exactly as sent.
    pub(crate) text: String,
    /// Bytes of each event's text, in order.
    pub(crate) sizes: Vec<usize>,
    /// Each event's `(sequence, timestamp)`, in order.
    pub(crate) heads: Vec<(u64, i64)>,
    /// The events' distinct tables, in order of first appearance.
    pub(crate) tables: Vec<String>,
    /// The events' content digest (`protocol::digest`).
    pub(crate) digest: u64,
}

impl BatchEvents {
    /// How many events.
    pub fn len(&self) -> usize {
        match self {
            BatchEvents::Decoded(events) => events.len(),
            BatchEvents::Received(r) => r.sizes.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events as values (decoded from the text when received).
    pub fn decoded(&self) -> serde_json::Result<std::borrow::Cow<'_, [CdcEvent]>> {
        match self {
            BatchEvents::Decoded(events) => Ok(std::borrow::Cow::Borrowed(events)),
            BatchEvents::Received(r) => {
                super::fast::events_of(&r.text).map(std::borrow::Cow::Owned)
            }
        }
    }

    /// The events as values, owned.
    pub fn into_vec(self) -> serde_json::Result<Vec<CdcEvent>> {
        match self {
            BatchEvents::Decoded(events) => Ok(events),
            BatchEvents::Received(r) => super::fast::events_of(&r.text),
        }
    }

    /// The events as values, to change in a test.
    #[cfg(test)]
    pub(crate) fn to_mut(&mut self) -> &mut Vec<CdcEvent> {
        if let BatchEvents::Received(_) = self {
            *self = BatchEvents::Decoded(std::mem::take(self).into_vec().unwrap());
        }
        match self {
            BatchEvents::Decoded(events) => events,
            BatchEvents::Received(_) => unreachable!(),
        }
    }
}

impl Default for BatchEvents {
    fn default() -> Self {
        BatchEvents::Decoded(Vec::new())
    }
}

impl From<Vec<CdcEvent>> for BatchEvents {
    fn from(events: Vec<CdcEvent>) -> Self {
        BatchEvents::Decoded(events)
    }
}

impl FromIterator<CdcEvent> for BatchEvents {
    fn from_iter<I: IntoIterator<Item = CdcEvent>>(iter: I) -> Self {
        BatchEvents::Decoded(iter.into_iter().collect())
    }
}

impl PartialEq for BatchEvents {
    fn eq(&self, other: &Self) -> bool {
        match (self.decoded(), other.decoded()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

impl Serialize for BatchEvents {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.decoded()
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for BatchEvents {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<CdcEvent>::deserialize(deserializer).map(BatchEvents::Decoded)
    }
}

/// The `type` of a `cdc_batch`: decodes only from the string `"cdc_batch"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CdcBatchType;

impl<'de> Deserialize<'de> for CdcBatchType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = CdcBatchType;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the string \"cdc_batch\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CdcBatchType, E> {
                if v == "cdc_batch" {
                    Ok(CdcBatchType)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// `heartbeat`: keep-alive with the shard's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatMessage {
    /// Send time, Unix ms; echoed in the `pong`.
    #[serde(default)]
    pub timestamp: Option<i64>,
    /// Correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The shard's Durable Object id.
    #[serde(default)]
    pub source_do_id: Option<String>,
    /// The last batch sequence the shard saw acked.
    #[serde(default)]
    pub last_ack_sequence: Option<i64>,
    /// Events waiting in the shard.
    #[serde(default)]
    pub pending_events: Option<u64>,
}

/// `flush_request`: the shard asks DoLake to flush.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlushRequestMessage {
    /// Send time, Unix ms.
    #[serde(default)]
    pub timestamp: Option<i64>,
    /// Correlation id, echoed in the `flush_response`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The shard's Durable Object id.
    #[serde(default)]
    pub source_do_id: Option<String>,
    /// manual, shutdown, buffer_full or time_threshold.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `disconnect`: the shard is leaving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DisconnectMessage {
    /// Send time, Unix ms.
    #[serde(default)]
    pub timestamp: Option<i64>,
    /// Correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The shard's Durable Object id.
    #[serde(default)]
    pub source_do_id: Option<String>,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Any message a shard sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `connect`.
    Connect(ConnectMessage),
    /// `cdc_batch`.
    CdcBatch(CdcBatchMessage),
    /// `heartbeat`.
    Heartbeat(HeartbeatMessage),
    /// `flush_request`.
    FlushRequest(FlushRequestMessage),
    /// `disconnect`.
    Disconnect(DisconnectMessage),
}

/// Why a message was refused, with what could still be read of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// What was wrong, for the `errorMessage` of the `nack`.
    pub message: String,
    /// The batch's `sequenceNumber`, when it could be read.
    pub sequence_number: Option<u64>,
    /// The message's `correlationId`, when it could be read.
    pub correlation_id: Option<String>,
    /// The message's `type`, when it could be read.
    pub message_type: Option<String>,
}

impl DecodeError {
    fn bare(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            sequence_number: None,
            correlation_id: None,
            message_type: None,
        }
    }
}

fn typed<T: serde::de::DeserializeOwned>(value: Value, kind: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        if path.is_empty() || path == "." {
            format!("invalid {kind} message: {inner}")
        } else {
            format!("invalid {kind} message: field `{path}`: {inner}")
        }
    })
}

/// Longest identifier a message may carry (`sourceDoId`, `sourceShardName`,
/// `correlationId`), bytes. Ids are kept per connection (the socket
/// attachment holds at most 2 KiB), per source and in snapshot summaries,
/// so they must stay small; a Durable Object id is 64 characters.
pub const MAX_ID_BYTES: usize = 256;

/// The top-level identifier fields bounded by [`MAX_ID_BYTES`].
const ID_FIELDS: [&str; 3] = ["sourceDoId", "sourceShardName", "correlationId"];

/// Decodes one text frame. Never panics; serde_json bounds nesting depth.
pub fn decode_client_message(text: &str) -> Result<ClientMessage, DecodeError> {
    match decode_batch_fast(text) {
        Some(batch) => Ok(ClientMessage::CdcBatch(batch)),
        None => decode_general(text),
    }
}

/// Any message, through a `Value` tree: precise errors (the field's path),
/// and the sequence number and correlation id of an invalid batch for its
/// nack.
fn decode_general(text: &str) -> Result<ClientMessage, DecodeError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| DecodeError::bare(format!("malformed JSON: {e}")))?;
    let Value::Object(ref object) = value else {
        return Err(DecodeError::bare(format!(
            "a message must be a JSON object, got {}",
            json_kind(&value)
        )));
    };
    let sequence_number = object.get("sequenceNumber").and_then(Value::as_u64);
    // An over-long id is not echoed back in the nack.
    let correlation_id = object
        .get("correlationId")
        .and_then(Value::as_str)
        .filter(|id| id.len() <= MAX_ID_BYTES)
        .map(str::to_owned);
    let message_type = object
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let fail = |message: String| DecodeError {
        message,
        sequence_number,
        correlation_id: correlation_id.clone(),
        message_type: message_type.clone(),
    };
    let Some(kind) = message_type.clone() else {
        return Err(fail(match object.get("type") {
            None => "missing field `type`".to_string(),
            Some(v) => format!("field `type` must be a string, got {}", json_kind(v)),
        }));
    };
    for field in ID_FIELDS {
        if let Some(Value::String(id)) = object.get(field) {
            if id.len() > MAX_ID_BYTES {
                return Err(fail(format!(
                    "field `{field}` is {} bytes; at most {MAX_ID_BYTES} are allowed",
                    id.len()
                )));
            }
        }
    }
    let decoded = match kind.as_str() {
        "connect" => typed(value, "connect").map(ClientMessage::Connect),
        "cdc_batch" => typed(value, "cdc_batch")
            .and_then(|b: CdcBatchMessage| validate_batch(&b).map(|()| b))
            .map(ClientMessage::CdcBatch),
        "heartbeat" => typed(value, "heartbeat").map(ClientMessage::Heartbeat),
        "flush_request" => typed(value, "flush_request").map(ClientMessage::FlushRequest),
        "disconnect" => typed(value, "disconnect").map(ClientMessage::Disconnect),
        other => Err(format!(
            "unknown message type {other:?}; expected connect, cdc_batch, heartbeat, flush_request or disconnect"
        )),
    };
    decoded.map_err(fail)
}

/// The common case, typed: a valid `cdc_batch`, read in one pass
/// (`protocol::fast`). Anything else, including every invalid batch,
/// returns `None` and takes the general path, which gives the precise error;
/// whatever this accepts, that path accepts the same way.
fn decode_batch_fast(text: &str) -> Option<CdcBatchMessage> {
    super::fast::decode_batch(text)
}

/// Best-effort read of a message's top-level `sequenceNumber` without
/// parsing it (for refusing messages too large to parse). The guide's shards
/// write it after `events`, so the last occurrence is the top-level one.
pub fn sniff_sequence_number(text: &str) -> Option<u64> {
    const KEY: &str = "\"sequenceNumber\"";
    let at = text.rfind(KEY)? + KEY.len();
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// Checks what types alone cannot: identities, events and their images.
fn validate_batch(batch: &CdcBatchMessage) -> Result<(), String> {
    if batch.source_do_id.is_empty() {
        return Err("invalid cdc_batch message: field `sourceDoId` must not be empty".into());
    }
    if batch.events.is_empty() {
        return Err("invalid cdc_batch message: field `events` must not be empty".into());
    }
    // Received events were checked as the one-pass decoder read them.
    let BatchEvents::Decoded(events) = &batch.events else {
        return Ok(());
    };
    for (i, event) in events.iter().enumerate() {
        let at = |what: &str| format!("invalid cdc_batch message: field `events[{i}]`: {what}");
        validate_table_name(&event.table).map_err(|e| at(&e))?;
        if event.row_id.is_empty() {
            return Err(at("`rowId` must not be empty"));
        }
        match event.operation {
            Operation::Insert | Operation::Update if event.after.is_none() => {
                return Err(at(&format!(
                    "an {} event needs an `after` object",
                    event.operation.as_str()
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A table name becomes one segment of an object key and an Iceberg
/// identifier, so it must not be able to leave its place in the bucket. The
/// lake's rule is the rule: what intake accepts, a flush can always write.
pub(crate) fn validate_table_name(name: &str) -> Result<(), String> {
    crate::lake::validate_name("table", name)
        .map_err(|e| e.message().replace("table name", "`table`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_json(events: &str) -> String {
        format!(
            r#"{{"type":"cdc_batch","timestamp":1,"correlationId":"c-1","sourceDoId":"do-1",
            "sourceShardName":"shard-1","events":{events},"sequenceNumber":7,
            "firstEventSequence":0,"lastEventSequence":0,"sizeBytes":10,"isRetry":false,"retryCount":0}}"#
        )
    }

    #[test]
    fn decodes_the_guides_batch() {
        let text = batch_json(
            r#"[{"sequence":0,"timestamp":1700000000000,"operation":"INSERT","table":"users",
            "rowId":"u1","after":{"id":"u1","age":3}},
            {"sequence":1,"timestamp":1700000000001,"operation":"DELETE","table":"users","rowId":42}]"#,
        );
        let ClientMessage::CdcBatch(b) = decode_client_message(&text).unwrap() else {
            panic!("not a batch")
        };
        assert_eq!(b.sequence_number, 7);
        assert_eq!(b.events.len(), 2);
        let events = b.events.decoded().unwrap();
        assert_eq!(events[0].operation, Operation::Insert);
        assert_eq!(events[0].after.as_ref().unwrap()["age"], 3);
        assert_eq!(events[1].row_id, "42");
        assert_eq!(b.correlation_id.as_deref(), Some("c-1"));
    }

    #[test]
    fn refusals_say_what_and_keep_the_sequence_number() {
        let cases = [
            (batch_json("[]"), "`events` must not be empty"),
            (
                batch_json(
                    r#"[{"sequence":0,"timestamp":1,"operation":"UPSERT","table":"t","rowId":"r"}]"#,
                ),
                "events[0].operation",
            ),
            (
                batch_json(
                    r#"[{"sequence":0,"timestamp":1,"operation":"INSERT","rowId":"r","after":{}}]"#,
                ),
                "missing field `table`",
            ),
            (
                batch_json(
                    r#"[{"sequence":0,"timestamp":1,"operation":"INSERT","table":"t","after":{}}]"#,
                ),
                "missing field `rowId`",
            ),
            (
                batch_json(
                    r#"[{"sequence":0,"timestamp":1,"operation":"INSERT","table":"t","rowId":"r"}]"#,
                ),
                "needs an `after` object",
            ),
            (
                batch_json(
                    r#"[{"sequence":0,"timestamp":1,"operation":"INSERT","table":"../x","rowId":"r","after":{}}]"#,
                ),
                "must not contain `/`",
            ),
            (
                batch_json(
                    r#"[{"sequence":"zero","timestamp":1,"operation":"INSERT","table":"t","rowId":"r","after":{}}]"#,
                ),
                "events[0].sequence",
            ),
        ];
        for (text, expected) in cases {
            let e = decode_client_message(&text).unwrap_err();
            assert!(e.message.contains(expected), "{} !~ {expected}", e.message);
            assert_eq!(e.sequence_number, Some(7), "{}", e.message);
            assert_eq!(e.correlation_id.as_deref(), Some("c-1"));
        }
    }

    #[test]
    fn refuses_non_messages() {
        for (text, expected) in [
            ("{", "malformed JSON"),
            ("[]", "must be a JSON object"),
            ("{}", "missing field `type`"),
            (r#"{"type":5}"#, "must be a string"),
            (
                r#"{"type":"gossip","sequenceNumber":3}"#,
                "unknown message type",
            ),
            (r#"{"type":"connect"}"#, "sourceDoId"),
        ] {
            let e = decode_client_message(text).unwrap_err();
            assert!(e.message.contains(expected), "{} !~ {expected}", e.message);
        }
        let e = decode_client_message(r#"{"type":"gossip","sequenceNumber":3}"#).unwrap_err();
        assert_eq!(e.sequence_number, Some(3));
    }

    #[test]
    fn sniffs_the_top_level_sequence_number() {
        assert_eq!(sniff_sequence_number(&batch_json("[]")), Some(7));
        assert_eq!(
            sniff_sequence_number(r#"{"sequenceNumber" : 12}"#),
            Some(12)
        );
        assert_eq!(sniff_sequence_number(r#"{"sequenceNumber":"x"}"#), None);
        assert_eq!(sniff_sequence_number("garbage"), None);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode_client_message(&deep).is_err());
        let deep_event = batch_json(&format!(
            r#"[{{"sequence":0,"timestamp":1,"operation":"INSERT","table":"t","rowId":"r","after":{{"x":{}1{}}}}}]"#,
            "[".repeat(5000),
            "]".repeat(5000)
        ));
        let e = decode_client_message(&deep_event).unwrap_err();
        assert!(e.message.contains("malformed JSON"), "{}", e.message);
    }

    /// The one-pass decoder of valid batches agrees with the general one on
    /// everything it accepts, and accepts the valid batches that shards send.
    mod fast_path {
        use super::*;
        use proptest::prelude::*;

        /// The one-pass decoder repeats the fields of `CdcBatchMessage`: every one of
        /// them, set, comes out of the fast path as out of the general one.
        #[test]
        fn every_field_of_a_batch_survives_the_fast_path() {
            let text = serde_json::json!({
                "type": "cdc_batch", "timestamp": 7, "correlationId": "c", "sourceDoId": "do-1",
                "sourceShardName": "s1", "sequenceNumber": 9, "firstEventSequence": 3,
                "lastEventSequence": 4, "sizeBytes": 120, "isRetry": true, "retryCount": 2,
                "events": [
                    {"sequence": 3, "timestamp": 5, "operation": "INSERT", "table": "t", "rowId": "a", "after": {"x": 1}},
                    {"sequence": 4, "timestamp": 6, "operation": "DELETE", "table": "t", "rowId": 2, "before": {"x": 1}, "metadata": {"m": true}},
                ],
            })
            .to_string();
            let fast = decode_batch_fast(&text).expect("a valid batch takes the fast path");
            let Ok(ClientMessage::CdcBatch(general)) = decode_general(&text) else {
                panic!("the general path must accept it too");
            };
            let fields = serde_json::to_value(&general).unwrap();
            for key in [
                "timestamp",
                "correlationId",
                "sourceShardName",
                "firstEventSequence",
                "lastEventSequence",
                "sizeBytes",
                "isRetry",
                "retryCount",
            ] {
                assert!(
                    !fields[key].is_null() && fields[key] != false,
                    "{key} is set: {fields}"
                );
            }
            assert!(matches!(fast.events, BatchEvents::Received(_)));
            assert!(matches!(general.events, BatchEvents::Decoded(_)));
            assert_eq!(fast, general);
        }

        fn arb_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-1e300f64..1e300).prop_map(Value::from),
                "[a-z\\\\\"\u{e9}\u{1F600}\\n ]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::btree_map("[a-zA-Z_]{1,6}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn arb_event() -> impl Strategy<Value = Value> {
            (
                any::<u32>(),
                0..3usize,
                prop_oneof![
                    "[a-z0-9-]{1,10}".prop_map(Value::from),
                    any::<u32>().prop_map(Value::from)
                ],
                prop::option::of(prop::collection::btree_map("[a-z]{1,5}", arb_value(), 0..5)),
                prop::option::of(prop::collection::btree_map("[a-z]{1,5}", arb_value(), 0..5)),
                prop::option::of(arb_value()),
            )
                .prop_map(|(seq, op, row_id, before, after, metadata)| {
                    let operation = ["INSERT", "UPDATE", "DELETE"][op];
                    let mut e = serde_json::json!({
                        "sequence": seq, "timestamp": 1_700_000_000_000u64 + seq as u64,
                        "operation": operation, "table": "users", "rowId": row_id,
                    });
                    let obj = |m: std::collections::BTreeMap<String, Value>| {
                        Value::Object(m.into_iter().collect())
                    };
                    if let Some(b) = before {
                        e["before"] = obj(b);
                    }
                    if let Some(a) = after {
                        e["after"] = obj(a);
                    }
                    if let Some(m) = metadata {
                        e["metadata"] = m;
                    }
                    e
                })
        }

        proptest! {
            #[test]
            fn agrees_with_the_general_decoder(events in prop::collection::vec(arb_event(), 1..6), seq in any::<u32>()) {
                let text = serde_json::json!({
                    "type": "cdc_batch", "timestamp": 1, "correlationId": "c", "sourceDoId": "do-1",
                    "events": events, "sequenceNumber": seq, "isRetry": false, "retryCount": 0,
                }).to_string();
                let general = decode_general(&text);
                let fast = decode_batch_fast(&text);
                match (&fast, &general) {
                    (Some(b), Ok(ClientMessage::CdcBatch(g))) => {
                        // The text it keeps is the events as sent, decoding to
                        // the same events, with the same digest.
                        let BatchEvents::Received(received) = &b.events else {
                            panic!("the fast path keeps the text");
                        };
                        let BatchEvents::Decoded(events) = &g.events else {
                            panic!("the general path decodes");
                        };
                        let again: Vec<CdcEvent> = serde_json::from_str(&received.text).unwrap();
                        prop_assert_eq!(&again, events);
                        prop_assert_eq!(received.digest, crate::protocol::events_digest(events));
                        prop_assert_eq!(received.sizes.len(), events.len());
                        let heads: Vec<(u64, i64)> = events.iter().map(|e| (e.sequence, e.timestamp)).collect();
                        prop_assert_eq!(&received.heads, &heads);
                        prop_assert!(text.contains(&received.text[1..received.text.len() - 1]) || events.len() > 1);
                        prop_assert_eq!(b, g)
                    }
                    (None, Err(_)) => {}
                    (f, g) => prop_assert!(false, "fast {:?} but general {:?}", f.is_some(), g),
                }
            }

            #[test]
            fn refuses_whatever_the_general_decoder_refuses(text in "\\{\"type\":\"cdc_batch\",\"sourceDoId\":\"[a-z]{0,3}\",\"sequenceNumber\":[0-9.e-]{1,4},\"events\":\\[(\\{\"sequence\":[0-9]{1,3},\"timestamp\":[0-9]{1,3},\"operation\":\"(INSERT|DELETE|NOPE)\",\"table\":\"[a-z/.]{0,4}\",\"rowId\":(\"[a-z]{0,2}\"|[0-9.]{1,3}|null)(,\"after\":(\\{\\}|\\[\\]|1))?\\},?){0,2}\\](,\"sequenceNumber\":1)?\\}") {
                let general = decode_general(&text);
                match (decode_batch_fast(&text), general) {
                    (Some(b), Ok(ClientMessage::CdcBatch(g))) => {
                        prop_assert_eq!(b, g)
                    }
                    (Some(b), g) => prop_assert!(false, "fast accepted {:?}, general said {:?}", b, g),
                    (None, _) => {}
                }
            }
        }
    }
}
