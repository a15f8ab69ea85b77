//! One simulated DoSQL shard: its own thread, its own WebSocket, one batch in
//! flight at a time, following the guide's retry rules.

use crate::args::Args;
use crate::gen::Generator;
use dolake::protocol::{
    AckStatus, BatchEvents, Capabilities, CdcBatchMessage, ConnectMessage, DisconnectMessage,
    HeartbeatMessage, ServerMessage,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

/// How long one socket read waits before the shard looks at its clocks.
const POLL: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECT_FAILURES: u32 = 30;
/// Bounds on server-suggested waits, so a bad hint cannot stall the run.
const MAX_HINT: Duration = Duration::from_secs(60);

/// Counters the progress display reads while shards run.
#[derive(Default)]
pub struct Live {
    pub events_sent: AtomicU64,
    pub events_acked: AtomicU64,
    pub batches_acked: AtomicU64,
    pub shards_done: AtomicU64,
}

/// What one shard did.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardReport {
    pub source_do_id: String,
    pub batches_sent: u64,
    pub batches_acked: u64,
    pub events_sent: u64,
    pub events_acked: u64,
    pub sends: u64,
    pub acks_by_status: BTreeMap<String, u64>,
    pub nacks_by_reason: BTreeMap<String, u64>,
    pub dropped_batches: u64,
    pub dropped_events: u64,
    pub duplicates: u64,
    pub reconnects: u64,
    pub connect_failures: u64,
    pub heartbeats: u64,
    pub pongs: u64,
    pub delay_hint_ms: u64,
    pub error: Option<String>,
    #[serde(skip)]
    pub latencies_us: Vec<u64>,
    /// Acked events as verify_lake.py expects them (only with --verify / --acked-out).
    #[serde(skip)]
    pub acked_lines: Vec<String>,
}

#[derive(Serialize)]
struct Typed<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

fn typed<T: Serialize>(kind: &'static str, body: &T) -> String {
    serde_json::to_string(&Typed { kind, body }).expect("protocol messages serialize")
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct Conn {
    ws: WebSocket<TcpStream>,
    last_heartbeat: Instant,
}

enum Reply {
    Ack(dolake::protocol::AckMessage),
    Nack(dolake::protocol::NackMessage),
    Broken(String),
}

enum ConnectError {
    /// Worth another try later (refused, 429, 5xx, timeout), after at least this long.
    Retry(String, Option<Duration>),
    /// Will not get better (401, 403, 404, bad URL).
    Fatal(String),
}

enum Delivery {
    Acked,
    Dropped,
    Fatal(String),
}

pub struct Shard {
    args: Arc<Args>,
    live: Arc<Live>,
    index: usize,
    source: String,
    name: String,
    generator: Generator,
    conn: Option<Conn>,
    last_ack: i64,
    report: ShardReport,
}

impl Shard {
    pub fn new(args: Arc<Args>, live: Arc<Live>, index: usize) -> Self {
        let source = format!("{}-{index}", args.source_prefix);
        let generator = Generator::new(
            args.seed,
            index,
            source.clone(),
            args.tables.clone(),
            args.mix,
            args.row_bytes,
        );
        Shard {
            name: format!("shard-{index}"),
            report: ShardReport {
                source_do_id: source.clone(),
                ..Default::default()
            },
            source,
            generator,
            args,
            live,
            index,
            conn: None,
            last_ack: -1,
        }
    }

    pub fn run(mut self, started: Instant) -> ShardReport {
        let deadline = self.args.duration.map(|d| started + d);
        let mut sequence_number = 0u64;
        loop {
            if self.args.batches.is_some_and(|m| sequence_number >= m)
                || deadline.is_some_and(|d| Instant::now() >= d)
            {
                break;
            }
            let ts = now_ms();
            let events: Vec<_> = (0..self.args.batch_size)
                .map(|_| self.generator.next_event(ts))
                .collect();
            let n = events.len() as u64;
            // Serialised once: the events' JSON gives `sizeBytes` and is
            // spliced into the first send's text (resends re-encode).
            let events_json = serde_json::to_string(&events).expect("events serialize");
            let size = events_json.len() as u64;
            let mut batch = CdcBatchMessage {
                timestamp: Some(ts),
                correlation_id: Some(format!("corr-{}-{sequence_number}", self.source)),
                source_do_id: self.source.clone(),
                source_shard_name: Some(self.name.clone()),
                first_event_sequence: events.first().map(|e| e.sequence),
                last_event_sequence: events.last().map(|e| e.sequence),
                events: events.into(),
                sequence_number,
                size_bytes: Some(size),
                is_retry: false,
                retry_count: 0,
                message_type: None,
            };
            self.report.batches_sent += 1;
            self.report.events_sent += n;
            self.live.events_sent.fetch_add(n, Ordering::Relaxed);
            let mut empty = batch.clone();
            empty.events = BatchEvents::default();
            let first = typed("cdc_batch", &empty).replacen(
                "\"events\":[]",
                &format!("\"events\":{events_json}"),
                1,
            );
            match self.deliver(&mut batch, Some(first)) {
                Delivery::Acked => {
                    self.report.batches_acked += 1;
                    self.report.events_acked += n;
                    self.live.events_acked.fetch_add(n, Ordering::Relaxed);
                    self.live.batches_acked.fetch_add(1, Ordering::Relaxed);
                    self.last_ack = sequence_number as i64;
                    if self.args.keep_acked() {
                        let BatchEvents::Decoded(events) = &batch.events else {
                            unreachable!("the load generator builds its events")
                        };
                        for e in events {
                            let mut v = serde_json::to_value(e).expect("event serializes");
                            v["sourceDoId"] = self.source.clone().into();
                            self.report.acked_lines.push(v.to_string());
                        }
                    }
                }
                Delivery::Dropped => {
                    self.report.dropped_batches += 1;
                    self.report.dropped_events += n;
                }
                Delivery::Fatal(why) => {
                    self.report.error = Some(why);
                    break;
                }
            }
            sequence_number += 1;
        }
        self.disconnect();
        self.live.shards_done.fetch_add(1, Ordering::Relaxed);
        self.report
    }

    /// Sends `batch` until it is acked, dropped, or the shard gives up.
    /// `prepared`: the text of the first send, already encoded.
    fn deliver(&mut self, batch: &mut CdcBatchMessage, prepared: Option<String>) -> Delivery {
        let mut retryable_nacks = 0u32;
        let mut prepared = prepared;
        loop {
            if let Err(why) = self.ensure_connected() {
                return Delivery::Fatal(why);
            }
            let text = match prepared.take() {
                Some(text) => text,
                None => {
                    batch.timestamp = Some(now_ms());
                    typed("cdc_batch", batch)
                }
            };
            let sent_at = Instant::now();
            self.report.sends += 1;
            let conn = self.conn.as_mut().expect("connected");
            let reply = match conn.ws.send(Message::text(text)) {
                Ok(()) => self.await_reply(batch.sequence_number),
                Err(e) => Reply::Broken(format!("send: {e}")),
            };
            match reply {
                Reply::Ack(ack) => {
                    self.report
                        .latencies_us
                        .push(sent_at.elapsed().as_micros() as u64);
                    let status = serde_json::to_value(ack.status)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default();
                    *self.report.acks_by_status.entry(status).or_default() += 1;
                    if ack.status == AckStatus::Duplicate {
                        self.report.duplicates += 1;
                    }
                    let hint = ack.details.as_ref().and_then(|d| d.suggested_delay_ms);
                    if let Some(ms) = hint.filter(|&ms| ms > 0) {
                        self.report.delay_hint_ms += ms;
                        self.idle(Duration::from_millis(ms).min(MAX_HINT));
                    }
                    return Delivery::Acked;
                }
                Reply::Nack(nack) => {
                    *self
                        .report
                        .nacks_by_reason
                        .entry(nack.reason.clone())
                        .or_default() += 1;
                    if !nack.should_retry {
                        eprintln!(
                            "[{}] batch {} refused ({}): {}; dropped",
                            self.source, batch.sequence_number, nack.reason, nack.error_message
                        );
                        return Delivery::Dropped;
                    }
                    retryable_nacks += 1;
                    if retryable_nacks > self.args.max_retries {
                        eprintln!(
                            "[{}] batch {}: {} retryable nacks, last {}; dropped",
                            self.source, batch.sequence_number, retryable_nacks, nack.reason
                        );
                        return Delivery::Dropped;
                    }
                    let delay = nack.retry_delay_ms.unwrap_or(1000);
                    self.report.delay_hint_ms += delay;
                    self.idle(Duration::from_millis(delay).min(MAX_HINT));
                }
                Reply::Broken(why) => {
                    if !self.args.quiet {
                        eprintln!(
                            "[{}] connection lost ({why}); reconnecting, batch {} will be resent",
                            self.source, batch.sequence_number
                        );
                    }
                    self.conn = None;
                    self.report.reconnects += 1;
                }
            }
            batch.is_retry = true;
            batch.retry_count += 1;
        }
    }

    /// Reads until the ack or nack of `sequence_number`, sending heartbeats.
    fn await_reply(&mut self, sequence_number: u64) -> Reply {
        let deadline = Instant::now() + self.args.ack_timeout;
        loop {
            if let Err(e) = self.maybe_heartbeat() {
                return Reply::Broken(format!("heartbeat: {e}"));
            }
            let conn = self.conn.as_mut().expect("connected");
            match conn.ws.read() {
                Ok(Message::Text(text)) => match serde_json::from_str::<ServerMessage>(&text) {
                    Ok(ServerMessage::Ack(ack)) if ack.sequence_number == sequence_number => {
                        return Reply::Ack(ack)
                    }
                    Ok(ServerMessage::Nack(nack))
                        if nack.sequence_number.is_none_or(|s| s == sequence_number) =>
                    {
                        return Reply::Nack(nack)
                    }
                    Ok(ServerMessage::Pong(_)) => self.report.pongs += 1,
                    Ok(_) => {}
                    Err(e) => eprintln!("[{}] unreadable message ({e}): {text:.200}", self.source),
                },
                Ok(Message::Close(frame)) => {
                    return Reply::Broken(format!("closed by DoLake: {frame:?}"));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    if Instant::now() >= deadline {
                        return Reply::Broken(format!(
                            "no reply to batch {sequence_number} in {:?}",
                            self.args.ack_timeout
                        ));
                    }
                }
                Err(e) => return Reply::Broken(e.to_string()),
            }
        }
    }

    fn maybe_heartbeat(&mut self) -> tungstenite::Result<()> {
        let Some(every) = self.args.heartbeat else {
            return Ok(());
        };
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        if conn.last_heartbeat.elapsed() < every {
            return Ok(());
        }
        conn.last_heartbeat = Instant::now();
        let hb = HeartbeatMessage {
            timestamp: Some(now_ms()),
            correlation_id: None,
            source_do_id: Some(self.source.clone()),
            last_ack_sequence: Some(self.last_ack),
            pending_events: Some(0),
        };
        self.report.heartbeats += 1;
        conn.ws.send(Message::text(typed("heartbeat", &hb)))
    }

    /// Waits `how_long`, keeping the connection (if any) read and alive.
    fn idle(&mut self, how_long: Duration) {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            if self.conn.is_none() {
                thread::sleep(until.saturating_duration_since(Instant::now()));
                return;
            }
            if self.maybe_heartbeat().is_err() {
                self.conn = None;
                self.report.reconnects += 1;
                continue;
            }
            let conn = self.conn.as_mut().expect("connected");
            match conn.ws.read() {
                Ok(Message::Text(text)) => {
                    if let Ok(ServerMessage::Pong(_)) = serde_json::from_str(&text) {
                        self.report.pongs += 1;
                    }
                }
                Ok(Message::Close(_)) => {
                    self.conn = None;
                    self.report.reconnects += 1;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => {
                    self.conn = None;
                    self.report.reconnects += 1;
                }
            }
        }
    }

    fn ensure_connected(&mut self) -> Result<(), String> {
        let mut failures = 0u32;
        while self.conn.is_none() {
            match self.open() {
                Ok(conn) => self.conn = Some(conn),
                Err(ConnectError::Fatal(why)) => return Err(why),
                Err(ConnectError::Retry(why, at_least)) => {
                    failures += 1;
                    self.report.connect_failures += 1;
                    if failures >= MAX_CONNECT_FAILURES {
                        return Err(format!(
                            "gave up after {failures} connection attempts: {why}"
                        ));
                    }
                    let backoff =
                        Duration::from_millis(100 << failures.min(6)).min(Duration::from_secs(5));
                    let wait = at_least.map_or(backoff, |d| d.max(backoff)).min(MAX_HINT);
                    eprintln!(
                        "[{}] connect failed ({why}); retrying in {wait:?}",
                        self.source
                    );
                    thread::sleep(wait);
                }
            }
        }
        Ok(())
    }

    fn open(&mut self) -> Result<Conn, ConnectError> {
        let retry = |e: String| ConnectError::Retry(e, None);
        let base = self.args.ws_base();
        let url = format!("{base}{}", self.args.path);
        let hostport = base
            .split_once("://")
            .map(|(_, r)| r.split('/').next().unwrap_or(r).to_string())
            .ok_or_else(|| ConnectError::Fatal(format!("bad --url {base}")))?;
        if base.starts_with("wss://") {
            return Err(ConnectError::Fatal(
                "wss:// is not supported (no TLS in this build)".into(),
            ));
        }
        let addrs: Vec<_> = hostport
            .to_socket_addrs()
            .map_err(|e| retry(format!("resolve {hostport}: {e}")))?
            .collect();
        let mut last = String::from("no address");
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        let stream = stream.ok_or_else(|| retry(last))?;
        let io = |e: std::io::Error| retry(e.to_string());
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT)).map_err(io)?;
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Fatal(format!("bad URL {url}: {e}")))?;
        let header = |v: &str| {
            HeaderValue::from_str(v).map_err(|e| ConnectError::Fatal(format!("header {v:?}: {e}")))
        };
        let headers = request.headers_mut();
        headers.insert("X-Client-ID", header(&self.source)?);
        headers.insert("X-Shard-Name", header(&self.name)?);
        if let Some(token) = &self.args.auth_token {
            headers.insert("Authorization", header(&format!("Bearer {token}"))?);
        }
        let (mut ws, _) = match tungstenite::client(request, stream) {
            Ok(done) => done,
            Err(HandshakeError::Failure(tungstenite::Error::Http(res))) => {
                let status = res.status().as_u16();
                let body = res
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect::<String>();
                let why = format!("upgrade refused: {status} {body}");
                let after = res
                    .headers()
                    .get("Retry-After")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                return Err(if status == 429 || status >= 500 {
                    ConnectError::Retry(why, after)
                } else {
                    ConnectError::Fatal(why)
                });
            }
            Err(e) => return Err(retry(format!("handshake: {e}"))),
        };
        let connect = ConnectMessage {
            timestamp: Some(now_ms()),
            correlation_id: Some(format!("connect-{}-{}", self.source, self.index)),
            source_do_id: self.source.clone(),
            source_shard_name: Some(self.name.clone()),
            last_ack_sequence: Some(self.last_ack),
            protocol_version: Some(1),
            capabilities: Some(Capabilities {
                binary_protocol: false,
                compression: false,
                batching: true,
                max_batch_size: Some(self.args.batch_size as u64),
                max_message_size: Some(4 * 1024 * 1024),
            }),
        };
        ws.send(Message::text(typed("connect", &connect)))
            .map_err(|e| retry(format!("send connect: {e}")))?;
        // The `status` reply, within the connect timeout (the socket's read timeout).
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    if let Ok(ServerMessage::Status(_)) = serde_json::from_str(&text) {
                        break;
                    }
                }
                Ok(Message::Close(frame)) => {
                    return Err(retry(format!("closed after connect: {frame:?}")))
                }
                Ok(_) => {}
                Err(e) => return Err(retry(format!("waiting for status: {e}"))),
            }
            if Instant::now() >= deadline {
                return Err(retry("no status after connect".into()));
            }
        }
        ws.get_mut().set_read_timeout(Some(POLL)).map_err(io)?;
        Ok(Conn {
            ws,
            last_heartbeat: Instant::now(),
        })
    }

    /// The guide's `disconnect`, then a close handshake (bounded).
    fn disconnect(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let bye = DisconnectMessage {
            timestamp: Some(now_ms()),
            correlation_id: None,
            source_do_id: Some(self.source.clone()),
            reason: Some("load generator done".into()),
        };
        // DoLake answers `disconnect` by closing with 1000; tungstenite
        // replies to that close frame. Without it, close from this side.
        let _ = conn.ws.send(Message::text(typed("disconnect", &bye)));
        let until = Instant::now() + Duration::from_secs(2);
        let mut closing = false;
        while Instant::now() < until {
            match conn.ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    if !closing && Instant::now() + Duration::from_secs(1) >= until {
                        closing = true;
                        let _ = conn.ws.close(Some(tungstenite::protocol::CloseFrame {
                            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                            reason: "load generator done".into(),
                        }));
                    }
                }
                Err(_) => break,
            }
        }
    }
}
