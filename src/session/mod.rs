//! The message pipeline (sans-IO): a frame from a connection, an HTTP ingest
//! request or a WebSocket upgrade in; what to send, whether to close, what to
//! log and whether the alarm is wanted out. Time is an argument.
//!
//! It owns what sits between a connection and [`Intake`]: the per-connection
//! message limit and the size caps, decoding and dispatch, the size-strike
//! policy, the rate-limit fields of acks, the refusal counters, the limits on
//! new connections and on HTTP clients, and the `/status` and metrics views
//! ([`views`]). Storage is reached through [`Host`], synchronously (SQLite
//! in the Durable Object, memory in tests); the object only performs what an
//! [`Outcome`] says: send, close, set the alarm, flush, log.

pub mod views;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::admission::{
    ConnectionGate, MessageGate, MessageVerdict, Refusal, TokenBucket, UpgradeRefusal,
    MAX_SIZE_STRIKES,
};
use crate::config::{DoLakeConfig, RateLimitConfig};
use crate::error::{Error, ErrorKind};
use crate::intake::{self, Admission, BatchFacts, BufferTotals, Intake, SourceState, StorePlan};
use crate::protocol::{
    decode_client_message, sniff_sequence_number, AckStatus, CdcBatchMessage, ClientMessage,
    ConnectMessage, PongMessage, RateLimitInfo, ServerMessage, MAX_ID_BYTES,
};

/// Most per-client gates of HTTP ingest kept in memory (then they start over).
const HTTP_GATES_MAX: usize = 10_000;

/// What the pipeline stores and reads outside itself. Synchronous: every
/// write is durable when it returns (the ack follows it).
pub trait Host {
    /// Stores a batch's plan, all or nothing.
    fn write_plan(&self, plan: &StorePlan) -> Result<(), Error>;
    /// Stores one source's state (its counters, after a refusal or contact).
    fn save_source(&self, source: &SourceState) -> Result<(), Error>;
    /// Stores the persisted refusal counters.
    fn save_refusals(&self, counts: &BTreeMap<String, u64>) -> Result<(), Error>;
    /// Stores the new-connection bucket.
    fn save_connection_bucket(&self, bucket: &TokenBucket) -> Result<(), Error>;
    /// What is known of every open connection (their saved states).
    fn connections(&self) -> Vec<Connection>;
    /// When the last flush succeeded and when the alarm is set, Unix ms.
    fn flush_times(&self) -> (Option<i64>, Option<i64>);
}

/// What the object knows about one connection; kept in the socket's
/// attachment so that it survives hibernation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Connection {
    /// The source, once a `connect` or a batch named it.
    pub source_id: Option<String>,
    /// `X-Shard-Name` or the `connect`'s shard name.
    pub shard_name: Option<String>,
    /// `X-Client-ID`.
    pub client_id: Option<String>,
    /// `CF-Connecting-IP`.
    pub ip: Option<String>,
    /// `X-Priority`.
    pub priority: Option<String>,
    /// When the upgrade was accepted, Unix ms.
    pub connected_at: i64,
    /// Frames received.
    pub messages: u64,
    /// Acks sent.
    pub acks: u64,
    /// Nacks sent.
    pub nacks: u64,
    /// When the last frame arrived, Unix ms.
    pub last_message_at: Option<i64>,
    /// Message rate limit and size strikes (survive hibernation here).
    pub gate: Option<MessageGate>,
}

/// One frame of a WebSocket.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    /// A text frame.
    Text(&'a str),
    /// A binary frame of this many bytes (never accepted).
    Binary(usize),
}

/// What a frame gets back.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Send this.
    Send(ServerMessage),
    /// Flush, then send the `flush_response` with this correlation id.
    Flush(Option<String>),
}

/// Why the connection is to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client said `disconnect` (1000).
    Disconnect,
    /// [`MAX_SIZE_STRIKES`] size violations (1008).
    Violations,
}

impl Close {
    /// The close code and reason.
    pub fn frame(self) -> (u16, &'static str) {
        match self {
            Close::Disconnect => (1000, "disconnect"),
            Close::Violations => (1008, "repeated size violations"),
        }
    }
}

/// Something worth a log line; the object writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A `connect` named its source.
    SourceConnected {
        source_id: String,
        shard_name: Option<String>,
    },
    /// A message was refused before it reached intake.
    MessageRefused {
        source_id: Option<String>,
        sequence_number: Option<u64>,
        message: String,
    },
    /// A batch was refused.
    BatchRefused {
        source_id: String,
        sequence_number: u64,
        reason: &'static str,
        message: String,
    },
    /// Storing a batch failed (it was nacked).
    StoreFailed {
        source_id: String,
        sequence_number: u64,
        message: String,
    },
    /// A source's counters or the refusal counters could not be stored.
    SaveFailed { what: &'static str, message: String },
    /// The connection is closed for size violations.
    ClosedForViolations { source_id: Option<String> },
    /// An upgrade was refused.
    UpgradeRefused {
        reason: &'static str,
        ip: Option<String>,
        message: String,
    },
}

impl Note {
    /// `info` or `warn` or `error`.
    pub fn level(&self) -> &'static str {
        match self {
            Note::SourceConnected { .. } => "info",
            Note::StoreFailed { .. } => "error",
            _ => "warn",
        }
    }

    /// The log line's event name.
    pub fn event(&self) -> &'static str {
        match self {
            Note::SourceConnected { .. } => "source_connected",
            Note::MessageRefused { .. } => "message_refused",
            Note::BatchRefused { .. } => "batch_refused",
            Note::StoreFailed { .. } => "store_failed",
            Note::SaveFailed { .. } => "save_failed",
            Note::ClosedForViolations { .. } => "closed_for_violations",
            Note::UpgradeRefused { .. } => "upgrade_refused",
        }
    }

    /// The log line's fields.
    pub fn fields(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Note::SourceConnected {
                source_id,
                shard_name,
            } => json!({"sourceDoId": source_id, "shardName": shard_name}),
            Note::MessageRefused {
                source_id,
                sequence_number,
                message,
            } => {
                json!({"sourceDoId": source_id, "sequenceNumber": sequence_number, "error": message})
            }
            Note::BatchRefused {
                source_id,
                sequence_number,
                reason,
                message,
            } => {
                json!({"sourceDoId": source_id, "sequenceNumber": sequence_number, "reason": reason, "error": message})
            }
            Note::StoreFailed {
                source_id,
                sequence_number,
                message,
            } => {
                json!({"sourceDoId": source_id, "sequenceNumber": sequence_number, "error": message})
            }
            Note::SaveFailed { what, message } => json!({"what": what, "error": message}),
            Note::ClosedForViolations { source_id } => {
                json!({"sourceDoId": source_id, "strikes": MAX_SIZE_STRIKES})
            }
            Note::UpgradeRefused {
                reason,
                ip,
                message,
            } => json!({"reason": reason, "ip": ip, "error": message}),
        }
    }
}

/// What the object does after a frame or an ingest request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// What to send (or the flush to run first).
    pub reply: Option<Reply>,
    /// Whether, and why, to close the connection after sending.
    pub close: Option<Close>,
    /// A batch was stored, or a refusal wants a flush now: the alarm must
    /// exist (and be brought forward).
    pub wake: bool,
    /// Lines to log.
    pub notes: Vec<Note>,
}

impl Outcome {
    fn send(message: ServerMessage) -> Self {
        Self {
            reply: Some(Reply::Send(message)),
            ..Self::default()
        }
    }

    /// The message to send, if it is one (not a flush).
    pub fn message(&self) -> Option<&ServerMessage> {
        match &self.reply {
            Some(Reply::Send(m)) => Some(m),
            _ => None,
        }
    }
}

/// A WebSocket upgrade as the pipeline sees it (the request's headers).
#[derive(Debug, Clone, Default)]
pub struct Upgrade {
    /// `X-Client-ID`.
    pub client_id: Option<String>,
    /// `X-Shard-Name`.
    pub shard_name: Option<String>,
    /// `X-Priority`.
    pub priority: Option<String>,
    /// `CF-Connecting-IP`.
    pub ip: Option<String>,
}

/// Why an upgrade is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum UpgradeRefused {
    /// A malformed request (400).
    Invalid(Error),
    /// A connection limit (429 with rate-limit headers).
    Limited(UpgradeRefusal),
}

/// An HTTP ingest request refused by the per-client limit (429).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpThrottled {
    /// The nack to answer with.
    pub nack: ServerMessage,
    /// `X-RateLimit-Limit`.
    pub limit: u64,
    /// `X-RateLimit-Reset`, Unix seconds.
    pub reset_s: i64,
    /// `Retry-After`, seconds.
    pub retry_after_s: u64,
    /// Lines to log.
    pub notes: Vec<Note>,
}

/// Refusals by reason: since construction, plus those persisted before.
/// `unauthorized` is never persisted: a request that failed authentication
/// must not write storage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RefusalCounts {
    persisted: BTreeMap<String, u64>,
    unauthorized: u64,
}

impl RefusalCounts {
    /// The counts storage held.
    pub fn restore(persisted: BTreeMap<String, u64>) -> Self {
        let mut persisted = persisted;
        persisted.remove(Refusal::Unauthorized.as_str());
        Self {
            persisted,
            unauthorized: 0,
        }
    }

    /// Every count, by reason.
    pub fn by_reason(&self) -> BTreeMap<String, u64> {
        let mut all = self.persisted.clone();
        if self.unauthorized > 0 {
            all.insert(
                Refusal::Unauthorized.as_str().to_string(),
                self.unauthorized,
            );
        }
        all
    }
}

/// What storage held for the session at start.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Every source's state, as its row holds it.
    pub sources: Vec<SourceState>,
    /// The stored batches the sources' rows do not include yet, in order.
    pub unfolded: Vec<BatchFacts>,
    /// The buffer's totals.
    pub totals: BufferTotals,
    /// Whether the last flush failed (the fallback headroom applies).
    pub lake_failing: bool,
    /// Refusal counters.
    pub refusals: BTreeMap<String, u64>,
    /// The new-connection bucket.
    pub connection_bucket: Option<TokenBucket>,
}

/// The pipeline's state: intake, the counters and the limits it keeps.
#[derive(Debug)]
pub struct Session {
    intake: Intake,
    refusals: RefusalCounts,
    connection_bucket: Option<TokenBucket>,
    /// Message gates of HTTP ingest, per client IP (memory only).
    http_gates: HashMap<String, MessageGate>,
}

impl Session {
    /// The session of `config` over what storage held.
    pub fn new(config: DoLakeConfig, restored: Restored) -> Self {
        let mut intake = Intake::new(config, restored.sources, restored.totals);
        intake.replay(restored.unfolded);
        intake.set_lake_failing(restored.lake_failing);
        Self {
            intake,
            refusals: RefusalCounts::restore(restored.refusals),
            connection_bucket: restored.connection_bucket,
            http_gates: HashMap::new(),
        }
    }

    /// Intake (the flush reads and resets its totals).
    pub fn intake(&self) -> &Intake {
        &self.intake
    }

    /// Intake, to change.
    pub fn intake_mut(&mut self) -> &mut Intake {
        &mut self.intake
    }

    /// The active configuration.
    pub fn config(&self) -> &DoLakeConfig {
        self.intake.config()
    }

    /// Refusal counters.
    pub fn refusals(&self) -> &RefusalCounts {
        &self.refusals
    }

    /// Whether a refusal left the buffer wanting a flush now (see
    /// `BufferTotals::refused_full`).
    pub fn flush_wanted_now(&self) -> bool {
        self.intake.buffer().refused_full
    }

    /// Counts a refusal, and stores the counters unless it is
    /// `unauthorized`.
    pub fn count_refusal(&mut self, refusal: Refusal, host: &impl Host) -> Option<Note> {
        if refusal == Refusal::Unauthorized {
            self.refusals.unauthorized += 1;
            return None;
        }
        *self
            .refusals
            .persisted
            .entry(refusal.as_str().to_string())
            .or_default() += 1;
        host.save_refusals(&self.refusals.persisted)
            .err()
            .map(|e| Note::SaveFailed {
                what: "refusals",
                message: e.message().to_string(),
            })
    }

    /// Decides on a WebSocket upgrade; the connection's first state, or why
    /// not.
    pub fn upgrade(
        &mut self,
        now: i64,
        request: Upgrade,
        host: &impl Host,
    ) -> Result<Connection, (UpgradeRefused, Vec<Note>)> {
        let headers = [
            ("X-Client-ID", &request.client_id),
            ("X-Shard-Name", &request.shard_name),
            ("X-Priority", &request.priority),
        ];
        for (name, value) in headers {
            if let Some(value) = value.as_ref().filter(|v| v.len() > MAX_ID_BYTES) {
                let e = Error::invalid(format!(
                    "header {name} is {} bytes; at most {MAX_ID_BYTES} are allowed",
                    value.len()
                ));
                return Err((UpgradeRefused::Invalid(e), Vec::new()));
            }
        }
        let limits = self.intake.config().rate_limit.clone();
        let open_from_ip = request.ip.as_ref().map_or(0, |ip| {
            host.connections()
                .iter()
                .filter(|c| c.ip.as_ref() == Some(ip))
                .count() as u64
        });
        let bucket = self
            .connection_bucket
            .get_or_insert_with(|| TokenBucket::full(limits.burst_capacity, now));
        let admitted = ConnectionGate::new(&limits).admit(bucket, open_from_ip, now);
        let mut notes = Vec::new();
        if let Err(e) = host.save_connection_bucket(bucket) {
            notes.push(Note::SaveFailed {
                what: "connection bucket",
                message: e.message().to_string(),
            });
        }
        if let Err(refusal) = admitted {
            notes.extend(self.count_refusal(refusal.reason, host));
            notes.push(Note::UpgradeRefused {
                reason: refusal.reason.as_str(),
                ip: request.ip,
                message: refusal.message.clone(),
            });
            return Err((UpgradeRefused::Limited(refusal), notes));
        }
        Ok(Connection {
            client_id: request.client_id,
            shard_name: request.shard_name,
            ip: request.ip,
            gate: Some(MessageGate::new(&limits, now)),
            priority: request.priority,
            connected_at: now,
            ..Connection::default()
        })
    }

    /// One WebSocket frame of `conn` (whose state it updates).
    pub fn on_frame(
        &mut self,
        now: i64,
        conn: &mut Connection,
        frame: Frame<'_>,
        host: &impl Host,
    ) -> Outcome {
        conn.messages += 1;
        conn.last_message_at = Some(now);
        let limits = self.intake.config().rate_limit.clone();
        let verdict = conn
            .gate
            .get_or_insert_with(|| MessageGate::new(&limits, now))
            .on_message(&limits, now);
        let mut out = match verdict {
            MessageVerdict::Throttled(retry_ms) => {
                let sequence = match frame {
                    Frame::Text(text) => sniff_sequence_number(text),
                    Frame::Binary(_) => None,
                };
                let error = Error::new(
                    ErrorKind::RateLimited,
                    format!(
                        "more than {} messages per second on this connection (rateLimit.messagesPerSecond)",
                        limits.messages_per_second
                    ),
                );
                let mut out = self.refuse(now, conn.source_id.as_deref(), sequence, None, &error);
                if let Some(Reply::Send(ServerMessage::Nack(n))) = &mut out.reply {
                    n.retry_delay_ms = Some(retry_ms);
                }
                out
            }
            MessageVerdict::Allowed {
                remaining,
                reset_at,
            } => {
                let rate = RateLimitInfo {
                    limit: limits.messages_per_second,
                    remaining,
                    reset_at,
                };
                match frame {
                    Frame::Text(text) => self.on_text(now, conn, text, rate, host),
                    Frame::Binary(len) => {
                        let error = Error::invalid(format!(
                            "binary frames are not supported ({len} bytes received); send JSON text frames"
                        ));
                        self.refuse(now, conn.source_id.as_deref(), None, None, &error)
                    }
                }
            }
        };
        self.settle(conn, &mut out, host);
        out
    }

    /// Counts what `out` sends (refusals by reason, the connection's acks
    /// and nacks, size strikes) and decides on a close for violations.
    fn settle(&mut self, conn: &mut Connection, out: &mut Outcome, host: &impl Host) {
        let Some(Reply::Send(message)) = &out.reply else {
            return;
        };
        match message {
            ServerMessage::Ack(_) => conn.acks += 1,
            ServerMessage::Nack(nack) => {
                conn.nacks += 1;
                let kind = nack.kind.unwrap_or(ErrorKind::Internal);
                let note = self.count_refusal(Refusal::Nack(kind), host);
                out.notes.extend(note);
                let size_violation =
                    matches!(kind, ErrorKind::PayloadTooLarge | ErrorKind::EventTooLarge);
                if size_violation && conn.gate.as_mut().is_some_and(MessageGate::strike) {
                    out.close = Some(Close::Violations);
                    out.notes.push(Note::ClosedForViolations {
                        source_id: conn.source_id.clone(),
                    });
                }
            }
            _ => {}
        }
        out.wake = out.wake || self.flush_wanted_now();
    }

    /// A text frame within the message limit.
    fn on_text(
        &mut self,
        now: i64,
        conn: &mut Connection,
        text: &str,
        rate: RateLimitInfo,
        host: &impl Host,
    ) -> Outcome {
        if text == "ping" {
            // Normally answered by the runtime's auto-response.
            return Outcome::default();
        }
        if let Some(nack) = self.oversized(now, text, "message") {
            return Outcome::send(nack);
        }
        let message = match decode_client_message(text) {
            Ok(m) => m,
            Err(e) => {
                let error = Error::invalid(e.message);
                let source = conn.source_id.as_deref();
                return self.refuse(now, source, e.sequence_number, e.correlation_id, &error);
            }
        };
        match message {
            ClientMessage::Connect(m) => self.on_connect(now, conn, m, host),
            ClientMessage::CdcBatch(batch) => {
                if conn.source_id.is_none() {
                    conn.source_id = Some(batch.source_do_id.clone());
                }
                self.on_batch(now, batch, rate, host)
            }
            ClientMessage::Heartbeat(h) => {
                if let Some(source) = h.source_do_id.as_deref().or(conn.source_id.as_deref()) {
                    self.intake
                        .note_contact(now, source, None, h.last_ack_sequence);
                }
                Outcome::send(ServerMessage::Pong(PongMessage {
                    timestamp: h.timestamp,
                    correlation_id: h.correlation_id,
                    server_time: now,
                }))
            }
            ClientMessage::FlushRequest(f) => Outcome {
                reply: Some(Reply::Flush(f.correlation_id)),
                ..Outcome::default()
            },
            ClientMessage::Disconnect(_) => Outcome {
                close: Some(Close::Disconnect),
                ..Outcome::default()
            },
        }
    }

    /// The `payload_too_large` nack of a message over `maxPayloadSize`.
    fn oversized(&self, now: i64, text: &str, what: &str) -> Option<ServerMessage> {
        let max = self.intake.config().rate_limit.max_payload_size;
        (text.len() as u64 > max).then(|| {
            let error = Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "{what} is {} bytes; at most {max} are allowed (rateLimit.maxPayloadSize)",
                    text.len()
                ),
            );
            intake::nack(now, &error, sniff_sequence_number(text), None, Some(max))
        })
    }

    fn on_connect(
        &mut self,
        now: i64,
        conn: &mut Connection,
        m: ConnectMessage,
        host: &impl Host,
    ) -> Outcome {
        conn.source_id = Some(m.source_do_id.clone());
        if m.source_shard_name.is_some() {
            conn.shard_name = m.source_shard_name.clone();
        }
        let mut notes = Vec::new();
        let shard_name = conn.shard_name.as_deref();
        let source =
            self.intake
                .note_contact(now, &m.source_do_id, shard_name, m.last_ack_sequence);
        if let Some(Err(e)) = source.map(|s| host.save_source(s)) {
            notes.push(Note::SaveFailed {
                what: "source",
                message: e.message().to_string(),
            });
        }
        let mut open: Vec<String> = host
            .connections()
            .into_iter()
            .filter_map(|c| c.source_id)
            .collect();
        open.push(m.source_do_id.clone());
        open.sort();
        open.dedup();
        let (last_flush, next_flush) = host.flush_times();
        let mut status = self
            .intake
            .status_message(now, open.len() as u64, m.correlation_id);
        if let ServerMessage::Status(s) = &mut status {
            s.last_flush_time = last_flush;
            s.next_flush_time = next_flush;
        }
        notes.push(Note::SourceConnected {
            source_id: m.source_do_id,
            shard_name: conn.shard_name.clone(),
        });
        Outcome {
            notes,
            ..Outcome::send(status)
        }
    }

    /// A decoded batch: admitted, stored, acked (with `rate`) or refused.
    fn on_batch(
        &mut self,
        now: i64,
        batch: CdcBatchMessage,
        rate: RateLimitInfo,
        host: &impl Host,
    ) -> Outcome {
        let source_id = batch.source_do_id.clone();
        let sequence = batch.sequence_number;
        let correlation = batch.correlation_id.clone();
        let mut out = Outcome::default();
        let reply = match self.intake.admit(now, batch) {
            Admission::Reply(reply) => {
                // Counters of refused batches are kept too.
                let saved = self.intake.source(&source_id).map(|s| host.save_source(s));
                if let Some(Err(e)) = saved {
                    out.notes.push(Note::SaveFailed {
                        what: "source",
                        message: e.message().to_string(),
                    });
                }
                reply
            }
            Admission::Store(plan) => match host.write_plan(&plan) {
                Ok(()) => self.intake.commit(now, *plan),
                Err(e) => {
                    out.notes.push(Note::StoreFailed {
                        source_id: source_id.clone(),
                        sequence_number: sequence,
                        message: e.message().to_string(),
                    });
                    let source = Some(source_id.as_str());
                    self.intake
                        .refuse(now, source, Some(sequence), correlation, &e)
                }
            },
        };
        let reply = match reply {
            ServerMessage::Ack(mut ack) => {
                out.wake = ack.status != AckStatus::Duplicate;
                if let Some(details) = &mut ack.details {
                    details.remaining_tokens = Some(rate.remaining);
                    details.bucket_capacity = Some(rate.limit);
                }
                ack.rate_limit = Some(rate);
                ServerMessage::Ack(ack)
            }
            ServerMessage::Nack(n) => {
                out.notes.push(Note::BatchRefused {
                    source_id,
                    sequence_number: sequence,
                    reason: n.kind.unwrap_or(ErrorKind::Internal).nack_reason(),
                    message: n.error_message.clone(),
                });
                ServerMessage::Nack(n)
            }
            other => other,
        };
        out.reply = Some(Reply::Send(reply));
        out
    }

    /// A refusal outside intake's own checks (decoding, limits): counted on
    /// the source, logged, nacked.
    fn refuse(
        &mut self,
        now: i64,
        source_id: Option<&str>,
        sequence_number: Option<u64>,
        correlation_id: Option<String>,
        error: &Error,
    ) -> Outcome {
        let note = Note::MessageRefused {
            source_id: source_id.map(str::to_string),
            sequence_number,
            message: error.message().to_string(),
        };
        let nack = self
            .intake
            .refuse(now, source_id, sequence_number, correlation_id, error);
        Outcome {
            notes: vec![note],
            ..Outcome::send(nack)
        }
    }

    /// The per-client limit of HTTP ingest, before the body is read: the
    /// rate-limit state to report, or the refusal.
    pub fn gate_http(
        &mut self,
        now: i64,
        client: &str,
        host: &impl Host,
    ) -> Result<RateLimitInfo, Box<HttpThrottled>> {
        let limits: &RateLimitConfig = &self.intake.config().rate_limit;
        if self.http_gates.len() >= HTTP_GATES_MAX && !self.http_gates.contains_key(client) {
            self.http_gates.clear();
        }
        let verdict = self
            .http_gates
            .entry(client.to_string())
            .or_insert_with(|| MessageGate::new(limits, now))
            .on_message(limits, now);
        let limit = limits.messages_per_second;
        match verdict {
            MessageVerdict::Allowed {
                remaining,
                reset_at,
            } => Ok(RateLimitInfo {
                limit,
                remaining,
                reset_at,
            }),
            MessageVerdict::Throttled(retry_ms) => {
                let error = Error::new(
                    ErrorKind::RateLimited,
                    format!("more than {limit} requests per second from this client (rateLimit.messagesPerSecond)"),
                );
                let notes = self
                    .count_refusal(Refusal::Nack(ErrorKind::RateLimited), host)
                    .into_iter()
                    .collect();
                let mut nack = intake::nack(now, &error, None, None, None);
                if let ServerMessage::Nack(n) = &mut nack {
                    n.retry_delay_ms = Some(retry_ms);
                }
                Err(Box::new(HttpThrottled {
                    nack,
                    limit,
                    reset_s: (now + retry_ms as i64) / 1000,
                    retry_after_s: retry_ms.div_ceil(1000).max(1),
                    notes,
                }))
            }
        }
    }

    /// `POST /lakehouse/cdc`: one `cdc_batch` as a request body, admitted by
    /// [`Session::gate_http`]; the outcome always sends one message.
    pub fn on_http_batch(
        &mut self,
        now: i64,
        text: &str,
        rate: RateLimitInfo,
        host: &impl Host,
    ) -> Outcome {
        let mut out = match self.oversized(now, text, "body") {
            Some(nack) => Outcome::send(nack),
            None => match decode_client_message(text) {
                Ok(ClientMessage::CdcBatch(batch)) => self.on_batch(now, batch, rate, host),
                Ok(_) => Outcome::send(intake::nack(
                    now,
                    &Error::invalid("POST /lakehouse/cdc takes one `cdc_batch` message"),
                    None,
                    None,
                    None,
                )),
                Err(e) => {
                    let error = Error::invalid(e.message);
                    self.refuse(now, None, e.sequence_number, e.correlation_id, &error)
                }
            },
        };
        if let Some(ServerMessage::Nack(nack)) = out.message() {
            let kind = nack.kind.unwrap_or(ErrorKind::Internal);
            out.notes
                .extend(self.count_refusal(Refusal::Nack(kind), host));
        }
        out.wake = out.wake || self.flush_wanted_now();
        out
    }
}

/// The reply to a text frame when the object could not start.
pub fn not_started(now: i64, text: &str, error: &Error) -> ServerMessage {
    let e = Error::internal(format!("DoLake failed to start: {}", error.message()));
    intake::nack(now, &e, sniff_sequence_number(text), None, None)
}

#[cfg(test)]
mod tests;
