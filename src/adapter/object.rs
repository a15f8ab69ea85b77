//! The `DoLake` Durable Object: hibernatable WebSockets in, durable buffer out.

use std::cell::{Cell, RefCell};

use serde::{Deserialize, Serialize};
use worker::worker_sys::WebSocketRequestResponsePair;
use worker::{
    console_error, console_log, console_warn, durable_object, DurableObject, Env, Method, Request,
    Response, Result, State, WebSocket, WebSocketIncomingMessage, WebSocketPair,
};

use super::json_response;
use super::r2::Lake;
use super::store::Store;
use crate::admission::{check_token, ConnectionGate, MessageGate, MessageVerdict, TokenBucket};
use crate::config::DoLakeConfig;
use crate::error::{Error, ErrorKind};
use crate::flush::{FlushHistory, FlushSchedule, FlushTrigger};
use crate::intake::{self, Admission, Intake};
use crate::protocol::{
    decode_client_message, sniff_sequence_number, ClientMessage, FlushResponseMessage, PongMessage,
    ServerMessage, MAX_ID_BYTES,
};

/// What the object knows about one connection; kept in the socket's
/// attachment so that it survives hibernation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Connection {
    source_id: Option<String>,
    shard_name: Option<String>,
    client_id: Option<String>,
    ip: Option<String>,
    priority: Option<String>,
    connected_at: i64,
    messages: u64,
    acks: u64,
    nacks: u64,
    last_message_at: Option<i64>,
    /// Message rate limit and size strikes (survive hibernation here).
    gate: Option<MessageGate>,
}

/// What a text frame gets back.
enum Reply {
    /// Send this.
    Send(ServerMessage),
    /// Flush, then send the `flush_response` with this correlation id.
    Flush(Option<String>),
}

/// The object's core, or why it could not start.
pub(super) enum Core {
    Ready(Box<Intake>),
    Failed(Error),
}

/// The DoLake Durable Object.
#[durable_object]
pub struct DoLake {
    pub(super) state: State,
    pub(super) store: Option<Store>,
    pub(super) core: RefCell<Core>,
    pub(super) lake: Result<Lake, Error>,
    /// This buffer's epoch (see `crate::flush`); no flush runs without it.
    pub(super) epoch: Result<String, Error>,
    /// The last flush's result (a request that waited for it reports it).
    pub(super) last_result: RefCell<Option<crate::protocol::FlushResult>>,
    pub(super) history: RefCell<FlushHistory>,
    pub(super) flush_running: Cell<bool>,
    /// Flushes ended since construction (a waiting request joins the one
    /// that ended while it waited).
    pub(super) flushes_done: Cell<u64>,
    /// The alarm as last set by this instance (`None`: unknown or none).
    pub(super) alarm_at: Cell<Option<i64>>,
    /// `DOLAKE_TEST_HOOKS=1`: failure injection at `POST /lakehouse/_test/faults`.
    test_hooks: bool,
    /// The shared secret (`DOLAKE_AUTH_TOKEN`), when set.
    pub(super) auth_token: Option<String>,
    /// The bindings (the catalog's storage settings, other instances).
    pub(super) env: Env,
    /// New-connection token bucket (persisted in `meta`).
    conn_bucket: RefCell<Option<TokenBucket>>,
    /// Message gates of HTTP ingest, per client IP (memory only).
    http_gates: RefCell<std::collections::HashMap<String, MessageGate>>,
    /// Refusals by reason since construction, plus those persisted before.
    refusals: RefCell<std::collections::BTreeMap<String, u64>>,
    constructions: u64,
    constructed_at: i64,
}

pub(super) fn now_ms() -> i64 {
    worker::Date::now().as_millis() as i64
}

/// Lowest level logged (0 debug, 1 info, 2 warn, 3 error): `DOLAKE_LOG_LEVEL`.
static LOG_LEVEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);

fn level_rank(level: &str) -> Option<u8> {
    match level {
        "debug" => Some(0),
        "info" => Some(1),
        "warn" => Some(2),
        "error" => Some(3),
        _ => None,
    }
}

/// One JSON line per event, if `level` is at or above `DOLAKE_LOG_LEVEL`.
pub(super) fn log(level: &str, event: &str, fields: serde_json::Value) {
    let rank = level_rank(level).unwrap_or(1);
    if rank < LOG_LEVEL.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let mut line = serde_json::json!({"level": level, "event": event, "time": now_ms()});
    if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
        line.extend(fields);
    }
    match level {
        "error" => console_error!("{line}"),
        "warn" => console_warn!("{line}"),
        _ => console_log!("{line}"),
    }
}

impl DurableObject for DoLake {
    fn new(state: State, env: Env) -> Self {
        console_error_panic_hook::set_once();
        let constructed_at = now_ms();
        if let Ok(level) = env.var("DOLAKE_LOG_LEVEL") {
            let level = level.to_string();
            match level_rank(&level) {
                Some(rank) => LOG_LEVEL.store(rank, std::sync::atomic::Ordering::Relaxed),
                None => log(
                    "warn",
                    "bad_log_level",
                    serde_json::json!({"value": level, "expected": "debug, info, warn or error"}),
                ),
            }
        }
        // `ping` is answered by the runtime itself, even while hibernated.
        if let Ok(pair) = WebSocketRequestResponsePair::new("ping", "pong") {
            state.set_websocket_auto_response(&pair);
        }
        let config_text = env.var("DOLAKE_CONFIG").ok().map(|v| v.to_string());
        let store = Store::open(state.storage());
        let (store, core, constructions) = match store {
            Err(e) => (None, Core::Failed(e), 0),
            Ok(store) => {
                let constructions = store.count_construction().unwrap_or(0);
                let core = DoLakeConfig::parse(config_text.as_deref()).and_then(|config| {
                    let sources = store.load_sources()?;
                    let totals = store.load_totals()?;
                    Ok(Intake::new(config, sources, totals))
                });
                let core = match core {
                    Ok(intake) => Core::Ready(Box::new(intake)),
                    Err(e) => Core::Failed(e),
                };
                (Some(store), core, constructions)
            }
        };
        match &core {
            Core::Ready(intake) => log(
                "info",
                "started",
                serde_json::json!({
                    "constructions": constructions,
                    "bufferedEvents": intake.buffer().events,
                    "bufferedBatches": intake.buffer().batches,
                }),
            ),
            Core::Failed(e) => log(
                "error",
                "start_failed",
                serde_json::json!({"error": e.message(), "kind": e.kind().as_str()}),
            ),
        }
        let epoch = match &store {
            Some(s) => s.epoch(|| uuid::Uuid::new_v4().simple().to_string()),
            None => Err(Error::storage("storage is not available")),
        };
        let history = store
            .as_ref()
            .and_then(|s| s.load_history().ok())
            .unwrap_or_default();
        let mut core = core;
        if let Core::Ready(intake) = &mut core {
            intake.set_lake_failing(history.consecutive_failures > 0);
        }
        let auth_token = super::setting(&env, "DOLAKE_AUTH_TOKEN");
        if auth_token.is_none() {
            log(
                "warn",
                "no_authentication",
                serde_json::json!({"message": "DOLAKE_AUTH_TOKEN is not set: WebSocket upgrades and HTTP endpoints are open to anyone who can reach this worker"}),
            );
        }
        let conn_bucket = store
            .as_ref()
            .and_then(|s| s.load_json::<TokenBucket>("conn_bucket").ok().flatten());
        let refusals = store
            .as_ref()
            .and_then(|s| s.load_json("refusals").ok().flatten())
            .unwrap_or_default();
        let base_path = match &core {
            Core::Ready(intake) => intake.config().r2_base_path.clone(),
            Core::Failed(_) => String::new(),
        };
        let lake = env
            .bucket("LAKEHOUSE_BUCKET")
            .map(|bucket| Lake::new(bucket, &base_path))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Lake,
                    format!("the R2 binding LAKEHOUSE_BUCKET is missing: {e}"),
                )
            });
        // Whatever is buffered must have an alarm, even if the process died
        // between storing a batch and setting it: make sure one exists.
        if matches!(&core, Core::Ready(intake) if intake.buffer().batches > 0) {
            let storage = state.storage();
            state.wait_until(async move {
                if let Ok(None) = storage.get_alarm().await {
                    let soon = worker::ScheduledTime::from(std::time::Duration::from_secs(1));
                    if let Err(e) = storage.set_alarm(soon).await {
                        log(
                            "error",
                            "alarm_set_failed",
                            serde_json::json!({"error": e.to_string()}),
                        );
                    }
                }
            });
        }
        Self {
            state,
            store,
            core: RefCell::new(core),
            lake,
            epoch,
            last_result: RefCell::new(None),
            history: RefCell::new(history),
            flush_running: Cell::new(false),
            flushes_done: Cell::new(0),
            alarm_at: Cell::new(None),
            test_hooks: env
                .var("DOLAKE_TEST_HOOKS")
                .is_ok_and(|v| v.to_string() == "1"),
            auth_token,
            env,
            conn_bucket: RefCell::new(conn_bucket),
            refusals: RefCell::new(refusals),
            http_gates: RefCell::new(std::collections::HashMap::new()),
            constructions,
            constructed_at,
        }
    }

    async fn alarm(&self) -> Result<Response> {
        self.alarm_at.set(None);
        let due = match &*self.core.borrow() {
            Core::Ready(intake) => FlushSchedule::new(intake.config()).due(
                now_ms(),
                intake.buffer(),
                &self.history.borrow(),
            ),
            Core::Failed(_) => None,
        };
        let flushed_all = match due {
            Some(trigger) => self.flush(trigger).await.complete,
            None => true,
        };
        // Maintenance runs only once the buffer's backlog is written.
        if flushed_all && self.maintenance_due() {
            if let Err(e) = self.maintain("alarm").await {
                log(
                    "warn",
                    "maintenance_skipped",
                    serde_json::json!({"error": e.message()}),
                );
            }
        }
        self.rearm().await;
        Response::ok("")
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let url = req.url()?;
        let path = url.path().to_string();
        let route = path.strip_prefix("/lakehouse").unwrap_or(&path);
        let route = if route.is_empty() { "/" } else { route };
        let upgrade = req
            .headers()
            .get("Upgrade")?
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        // Defence in depth: the Worker already refused unauthenticated
        // requests before naming this instance; this 401 writes no storage.
        if let Some(secret) = &self.auth_token {
            let given = req.headers().get("Authorization")?;
            if route != "/health" && !check_token(given.as_deref(), secret) {
                self.count_refusal("unauthorized");
                log(
                    "warn",
                    "unauthorized",
                    serde_json::json!({"path": path, "scope": "instance"}),
                );
                return super::unauthorized_response();
            }
        }
        if crate::catalog::is_catalog_path(&path) {
            return self.catalog_http(&req).await;
        }
        match (route, req.method()) {
            (crate::catalog::REGISTER_PATH, Method::Post) => self.catalog_register(req).await,
            ("/ws", _) if upgrade => self.accept(&req),
            ("/ws", _) => error_response(&Error::invalid(
                "/ws expects a WebSocket upgrade (header `Upgrade: websocket`)",
            )),
            ("/status", Method::Get) => self.status(),
            ("/metrics", Method::Get) => self.metrics(),
            ("/health", Method::Get) => self.health(),
            ("/flush", Method::Post) => self.flush_http().await,
            ("/maintenance", Method::Post) => self.maintenance_http().await,
            ("/cdc", Method::Post) => self.ingest_http(req).await,
            ("/_test/faults", Method::Post) if self.test_hooks => self.set_faults(req).await,
            ("/status" | "/health" | "/metrics", _) => error_response(&Error::new(
                ErrorKind::MethodNotAllowed,
                format!("{path} answers GET only"),
            )),
            ("/flush" | "/cdc" | "/maintenance", _) => error_response(&Error::new(
                ErrorKind::MethodNotAllowed,
                format!("{path} answers POST only"),
            )),
            _ => error_response(&Error::new(
                ErrorKind::NotFound,
                format!("no route for {path}"),
            )),
        }
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let now = now_ms();
        let mut conn = ws
            .deserialize_attachment::<Connection>()
            .ok()
            .flatten()
            .unwrap_or_else(|| Connection {
                connected_at: now,
                ..Connection::default()
            });
        conn.messages += 1;
        conn.last_message_at = Some(now);
        let limits = match &*self.core.borrow() {
            Core::Ready(intake) => Some(intake.config().rate_limit.clone()),
            Core::Failed(_) => None,
        };
        let verdict = limits.as_ref().map(|limits| {
            conn.gate
                .get_or_insert_with(|| MessageGate::new(limits, now))
                .on_message(limits, now)
        });
        if let Some(MessageVerdict::Throttled(retry_ms)) = verdict {
            let sequence = match &message {
                WebSocketIncomingMessage::String(text) => sniff_sequence_number(text),
                WebSocketIncomingMessage::Binary(_) => None,
            };
            let limit = limits.as_ref().map_or(0, |l| l.messages_per_second);
            let error = Error::new(
                ErrorKind::RateLimited,
                format!("more than {limit} messages per second on this connection (rateLimit.messagesPerSecond)"),
            );
            self.count_refusal("rate_limited");
            let mut nack = self.refuse(now, &conn, sequence, None, &error);
            if let ServerMessage::Nack(n) = &mut nack {
                n.retry_delay_ms = Some(retry_ms);
            }
            conn.nacks += 1;
            let _ = ws.send_with_str(nack.to_json());
            return self.save_attachment(&ws, &conn);
        }
        let (reply, close) = match message {
            WebSocketIncomingMessage::String(text) => {
                let (reply, close) = self.handle_text(now, &mut conn, &text);
                match reply {
                    Some(Reply::Flush(correlation_id)) => {
                        // Messages handled during the flush update the
                        // attachment; save ours first, read theirs after.
                        self.save_attachment(&ws, &conn)?;
                        let result = self.flush(FlushTrigger::Request).await;
                        if let Some(fresh) =
                            ws.deserialize_attachment::<Connection>().ok().flatten()
                        {
                            conn = fresh;
                        }
                        let reply = ServerMessage::FlushResponse(FlushResponseMessage {
                            timestamp: now_ms(),
                            correlation_id,
                            result,
                        });
                        (Some(reply), close)
                    }
                    Some(Reply::Send(m)) => (Some(m), close),
                    None => (None, close),
                }
            }
            WebSocketIncomingMessage::Binary(bytes) => {
                let error = Error::invalid(format!(
                    "binary frames are not supported ({} bytes received); send JSON text frames",
                    bytes.len()
                ));
                (Some(self.refuse(now, &conn, None, None, &error)), false)
            }
        };
        let stored = matches!(&reply, Some(ServerMessage::Ack(a)) if a.status != crate::protocol::AckStatus::Duplicate);
        let mut reply = reply;
        let mut violation_close = false;
        match (&mut reply, verdict, &limits) {
            (
                Some(ServerMessage::Ack(ack)),
                Some(MessageVerdict::Allowed {
                    remaining,
                    reset_at,
                }),
                Some(limits),
            ) => {
                ack.rate_limit = Some(crate::protocol::RateLimitInfo {
                    limit: limits.messages_per_second,
                    remaining,
                    reset_at,
                });
                if let Some(details) = &mut ack.details {
                    details.remaining_tokens = Some(remaining);
                    details.bucket_capacity = Some(limits.messages_per_second);
                }
            }
            (Some(ServerMessage::Nack(nack)), _, _)
                if matches!(
                    nack.kind,
                    Some(ErrorKind::PayloadTooLarge | ErrorKind::EventTooLarge)
                ) =>
            {
                self.count_refusal(&nack.reason);
                violation_close = conn.gate.as_mut().is_some_and(MessageGate::strike);
            }
            (Some(ServerMessage::Nack(nack)), _, _) => self.count_refusal(&nack.reason),
            _ => {}
        }
        if let Some(reply) = reply {
            match &reply {
                ServerMessage::Ack(_) => conn.acks += 1,
                ServerMessage::Nack(_) => conn.nacks += 1,
                _ => {}
            }
            if let Err(e) = ws.send_with_str(reply.to_json()) {
                log(
                    "warn",
                    "send_failed",
                    serde_json::json!({"error": e.to_string()}),
                );
            }
        }
        self.save_attachment(&ws, &conn)?;
        if violation_close {
            log(
                "warn",
                "closed_for_violations",
                serde_json::json!({"sourceDoId": conn.source_id, "strikes": crate::admission::MAX_SIZE_STRIKES}),
            );
            ws.close(Some(1008), Some("repeated size violations"))?;
        } else if close {
            ws.close(Some(1000), Some("disconnect"))?;
        }
        if stored || self.flush_wanted_now() {
            self.ensure_alarm().await;
        }
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        let conn = ws.deserialize_attachment::<Connection>().ok().flatten();
        log(
            "info",
            "disconnected",
            serde_json::json!({
                "sourceDoId": conn.as_ref().and_then(|c| c.source_id.clone()),
                "code": code,
                "reason": reason,
            }),
        );
        // Completes the closing handshake; fails harmlessly if already closed.
        let _ = ws.close(Some(1000), Some("closing"));
        Ok(())
    }

    async fn websocket_error(&self, _ws: WebSocket, error: worker::Error) -> Result<()> {
        log(
            "warn",
            "socket_error",
            serde_json::json!({"error": error.to_string()}),
        );
        Ok(())
    }
}

impl DoLake {
    /// Writes the connection's state into its socket. A failure is an error:
    /// without it the per-connection limits would silently stop applying, so
    /// the socket is closed (1011) and the shard reconnects.
    fn save_attachment(&self, ws: &WebSocket, conn: &Connection) -> Result<()> {
        if let Err(e) = ws.serialize_attachment(conn) {
            log(
                "error",
                "attachment_failed",
                serde_json::json!({"sourceDoId": conn.source_id, "error": e.to_string()}),
            );
            ws.close(Some(1011), Some("connection state could not be saved"))?;
        }
        Ok(())
    }
}

/// Most per-client gates of HTTP ingest kept in memory (then they start over).
const HTTP_GATES_MAX: usize = 10_000;

/// An `ack` (200) or a `nack` with the HTTP status of its error kind.
fn message_response(message: &ServerMessage) -> Result<Response> {
    let status = match message {
        ServerMessage::Nack(n) => n.kind.map_or(400, ErrorKind::http_status),
        _ => 200,
    };
    let body: serde_json::Value = serde_json::from_str(&message.to_json())?;
    json_response(&body, status)
}

fn error_response(error: &Error) -> Result<Response> {
    json_response(&error.to_json(), error.kind().http_status())
}

impl DoLake {
    fn accept(&self, req: &Request) -> Result<Response> {
        let limits = match &*self.core.borrow() {
            Core::Ready(intake) => intake.config().rate_limit.clone(),
            Core::Failed(e) => {
                let e = Error::new(
                    e.kind(),
                    format!("DoLake is not accepting connections: {}", e.message()),
                );
                return json_response(&e.to_json(), 503);
            }
        };
        let header = |name: &str| req.headers().get(name).ok().flatten();
        for name in ["X-Client-ID", "X-Shard-Name", "X-Priority"] {
            if let Some(value) = header(name).filter(|v| v.len() > MAX_ID_BYTES) {
                let e = Error::invalid(format!(
                    "header {name} is {} bytes; at most {MAX_ID_BYTES} are allowed",
                    value.len()
                ));
                return error_response(&e);
            }
        }
        let ip = header("CF-Connecting-IP");
        let now = now_ms();
        let open_from_ip = ip.as_ref().map_or(0, |ip| {
            self.state
                .get_websockets()
                .iter()
                .filter_map(|ws| ws.deserialize_attachment::<Connection>().ok().flatten())
                .filter(|c| c.ip.as_ref() == Some(ip))
                .count() as u64
        });
        let admitted = {
            let mut bucket = self.conn_bucket.borrow_mut();
            let bucket =
                bucket.get_or_insert_with(|| TokenBucket::full(limits.burst_capacity, now));
            let verdict = ConnectionGate::new(&limits).admit(bucket, open_from_ip, now);
            if let Some(store) = &self.store {
                let _ = store.save_json("conn_bucket", &*bucket);
            }
            verdict
        };
        if let Err(refusal) = admitted {
            self.count_refusal(refusal.reason);
            log(
                "warn",
                "upgrade_refused",
                serde_json::json!({"reason": refusal.reason, "ip": ip, "error": refusal.message}),
            );
            let headers = worker::Headers::new();
            headers.set("X-RateLimit-Limit", &refusal.limit.to_string())?;
            headers.set("X-RateLimit-Remaining", &refusal.remaining.to_string())?;
            headers.set("X-RateLimit-Reset", &refusal.reset_s.to_string())?;
            headers.set("Retry-After", &refusal.retry_after_s.to_string())?;
            let body = serde_json::json!({
                "error": refusal.message,
                "reason": refusal.reason,
                "retryAfter": refusal.retry_after_s,
            });
            return Ok(json_response(&body, 429)?.with_headers(headers));
        }
        let pair = WebSocketPair::new()?;
        let conn = Connection {
            client_id: header("X-Client-ID"),
            shard_name: header("X-Shard-Name"),
            ip,
            gate: Some(MessageGate::new(&limits, now)),
            priority: header("X-Priority"),
            connected_at: now,
            ..Connection::default()
        };
        self.state.accept_web_socket(&pair.server);
        pair.server.serialize_attachment(&conn)?;
        log(
            "info",
            "connected",
            serde_json::json!({"clientId": conn.client_id, "shardName": conn.shard_name}),
        );
        Response::from_websocket(pair.client)
    }

    /// Handles one text frame; returns the reply and whether to close.
    fn handle_text(&self, now: i64, conn: &mut Connection, text: &str) -> (Option<Reply>, bool) {
        if text == "ping" {
            // Normally answered by the auto-response; kept for completeness.
            return (None, false);
        }
        let max_payload = match &*self.core.borrow() {
            Core::Ready(intake) => intake.config().rate_limit.max_payload_size,
            Core::Failed(e) => {
                let e = Error::internal(format!("DoLake failed to start: {}", e.message()));
                let nack = intake::nack(now, &e, sniff_sequence_number(text), None, None);
                return (Some(Reply::Send(nack)), false);
            }
        };
        if text.len() as u64 > max_payload {
            let error = Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "message is {} bytes; at most {max_payload} are allowed (rateLimit.maxPayloadSize)",
                    text.len()
                ),
            );
            let nack = intake::nack(
                now,
                &error,
                sniff_sequence_number(text),
                None,
                Some(max_payload),
            );
            return (Some(Reply::Send(nack)), false);
        }
        let message = match decode_client_message(text) {
            Ok(m) => m,
            Err(e) => {
                let error = Error::invalid(e.message);
                let reply = self.refuse(now, conn, e.sequence_number, e.correlation_id, &error);
                return (Some(Reply::Send(reply)), false);
            }
        };
        match message {
            ClientMessage::Connect(m) => {
                conn.source_id = Some(m.source_do_id.clone());
                if m.source_shard_name.is_some() {
                    conn.shard_name = m.source_shard_name.clone();
                }
                let last_flush = self.history.borrow().last_success_ms;
                let next_flush = self.alarm_at.get();
                let reply = self.with_intake(|intake, store| {
                    let source = intake.note_contact(
                        now,
                        &m.source_do_id,
                        m.source_shard_name
                            .as_deref()
                            .or(conn.shard_name.as_deref()),
                        m.last_ack_sequence,
                    );
                    if let Some(Err(e)) = source.map(|s| store.save_source(s)) {
                        log(
                            "warn",
                            "source_save_failed",
                            serde_json::json!({"error": e.message()}),
                        );
                    }
                    let mut status = intake.status_message(now, 0, m.correlation_id.clone());
                    if let ServerMessage::Status(s) = &mut status {
                        s.last_flush_time = last_flush;
                        s.next_flush_time = next_flush;
                    }
                    status
                });
                let reply = reply.map(|mut status| {
                    if let ServerMessage::Status(s) = &mut status {
                        s.connected_sources = self.connected_sources(Some(&m.source_do_id));
                    }
                    status
                });
                log(
                    "info",
                    "source_connected",
                    serde_json::json!({"sourceDoId": m.source_do_id, "shardName": conn.shard_name}),
                );
                (reply.map(Reply::Send), false)
            }
            ClientMessage::CdcBatch(batch) => {
                if conn.source_id.is_none() {
                    conn.source_id = Some(batch.source_do_id.clone());
                }
                (self.handle_batch(now, batch).map(Reply::Send), false)
            }
            ClientMessage::Heartbeat(h) => {
                if let Some(source) = h.source_do_id.as_deref().or(conn.source_id.as_deref()) {
                    let _ = self.with_intake(|intake, _| {
                        intake.note_contact(now, source, None, h.last_ack_sequence);
                    });
                }
                let pong = ServerMessage::Pong(PongMessage {
                    timestamp: h.timestamp,
                    correlation_id: h.correlation_id,
                    server_time: now,
                });
                (Some(Reply::Send(pong)), false)
            }
            ClientMessage::FlushRequest(f) => (Some(Reply::Flush(f.correlation_id)), false),
            ClientMessage::Disconnect(_) => (None, true),
        }
    }

    fn handle_batch(
        &self,
        now: i64,
        batch: crate::protocol::CdcBatchMessage,
    ) -> Option<ServerMessage> {
        let source_id = batch.source_do_id.clone();
        let sequence = batch.sequence_number;
        let correlation = batch.correlation_id.clone();
        let mut core = self.core.borrow_mut();
        let Core::Ready(intake) = &mut *core else {
            return None;
        };
        let Some(store) = &self.store else {
            return None;
        };
        let reply = match intake.admit(now, batch) {
            Admission::Reply(reply) => {
                // Counters of refused and duplicate batches are kept too.
                if let Some(source) = intake.source(&source_id) {
                    if let Err(e) = store.save_source(source) {
                        log(
                            "warn",
                            "source_save_failed",
                            serde_json::json!({"error": e.message()}),
                        );
                    }
                }
                reply
            }
            Admission::Store(plan) => match store.write_plan(&plan) {
                Ok(()) => intake.commit(now, *plan),
                Err(e) => {
                    log(
                        "error",
                        "store_failed",
                        serde_json::json!({"sourceDoId": source_id, "sequenceNumber": sequence, "error": e.message()}),
                    );
                    intake.refuse(now, Some(&source_id), Some(sequence), correlation, &e)
                }
            },
        };
        if let ServerMessage::Nack(n) = &reply {
            log(
                "warn",
                "batch_refused",
                serde_json::json!({"sourceDoId": source_id, "sequenceNumber": sequence, "reason": n.reason, "error": n.error_message}),
            );
        }
        Some(reply)
    }

    fn refuse(
        &self,
        now: i64,
        conn: &Connection,
        sequence_number: Option<u64>,
        correlation_id: Option<String>,
        error: &Error,
    ) -> ServerMessage {
        log(
            "warn",
            "message_refused",
            serde_json::json!({"sourceDoId": conn.source_id, "sequenceNumber": sequence_number, "error": error.message()}),
        );
        match &mut *self.core.borrow_mut() {
            Core::Ready(intake) => intake.refuse(
                now,
                conn.source_id.as_deref(),
                sequence_number,
                correlation_id,
                error,
            ),
            Core::Failed(_) => intake::nack(now, error, sequence_number, correlation_id, None),
        }
    }

    /// Counts a refusal by reason. Persisted, so counters never go back,
    /// except `unauthorized`: a request that failed authentication must not
    /// write storage, so that count lives in memory only (refusals by this
    /// instance since it was constructed; never written, not even along with
    /// another reason's count).
    /// Whether a refusal left the buffer wanting a flush now (see
    /// `BufferTotals::refused_full`): the alarm must be brought forward.
    fn flush_wanted_now(&self) -> bool {
        matches!(&*self.core.borrow(), Core::Ready(intake) if intake.buffer().refused_full)
    }

    fn count_refusal(&self, reason: &str) {
        let mut refusals = self.refusals.borrow_mut();
        *refusals.entry(reason.to_string()).or_default() += 1;
        if reason == "unauthorized" {
            return;
        }
        if let Some(store) = &self.store {
            let mut persisted = refusals.clone();
            persisted.remove("unauthorized");
            let _ = store.save_json("refusals", &persisted);
        }
    }

    /// Runs `f` on the intake and the store, if the object started.
    fn with_intake<T>(&self, f: impl FnOnce(&mut Intake, &Store) -> T) -> Option<T> {
        let mut core = self.core.borrow_mut();
        match (&mut *core, &self.store) {
            (Core::Ready(intake), Some(store)) => Some(f(intake, store)),
            _ => None,
        }
    }

    /// Distinct sources with an open socket (plus `extra`, a source whose
    /// attachment is being updated right now).
    fn connected_sources(&self, extra: Option<&str>) -> u64 {
        let mut ids: Vec<String> = self
            .state
            .get_websockets()
            .iter()
            .filter_map(|ws| ws.deserialize_attachment::<Connection>().ok().flatten())
            .filter_map(|c| c.source_id)
            .collect();
        ids.extend(extra.map(str::to_string));
        ids.sort();
        ids.dedup();
        ids.len() as u64
    }

    async fn set_faults(&self, mut req: Request) -> Result<Response> {
        let text = req.text().await?;
        let plan = match serde_json::from_str::<crate::flush::faults::FaultPlan>(&text) {
            Ok(plan) => plan,
            Err(e) => return error_response(&Error::invalid(format!("fault plan: {e}"))),
        };
        match &self.lake {
            Ok(lake) => {
                *lake.faults.borrow_mut() = plan;
                json_response(&serde_json::json!({"ok": true}), 200)
            }
            Err(e) => error_response(e),
        }
    }

    /// `POST /lakehouse/cdc`: one `cdc_batch` over HTTP, answered with the
    /// same `ack` or `nack` as on the WebSocket: 200 only once the batch is
    /// durable; a nack's HTTP status comes from its error kind.
    async fn ingest_http(&self, mut req: Request) -> Result<Response> {
        let now = now_ms();
        let limits = match &*self.core.borrow() {
            Core::Ready(intake) => intake.config().rate_limit.clone(),
            Core::Failed(e) => return error_response(e),
        };
        let ip = req
            .headers()
            .get("CF-Connecting-IP")?
            .unwrap_or_else(|| "unknown".to_string());
        let verdict = {
            let mut gates = self.http_gates.borrow_mut();
            if gates.len() >= HTTP_GATES_MAX && !gates.contains_key(&ip) {
                gates.clear();
            }
            gates
                .entry(ip)
                .or_insert_with(|| MessageGate::new(&limits, now))
                .on_message(&limits, now)
        };
        let rate = match verdict {
            MessageVerdict::Throttled(retry_ms) => {
                let error = Error::new(
                    ErrorKind::RateLimited,
                    format!("more than {} requests per second from this client (rateLimit.messagesPerSecond)", limits.messages_per_second),
                );
                self.count_refusal("rate_limited");
                let mut nack = intake::nack(now, &error, None, None, None);
                if let ServerMessage::Nack(n) = &mut nack {
                    n.retry_delay_ms = Some(retry_ms);
                }
                let headers = worker::Headers::new();
                headers.set("X-RateLimit-Limit", &limits.messages_per_second.to_string())?;
                headers.set("X-RateLimit-Remaining", "0")?;
                headers.set(
                    "X-RateLimit-Reset",
                    &((now + retry_ms as i64) / 1000).to_string(),
                )?;
                headers.set("Retry-After", &retry_ms.div_ceil(1000).max(1).to_string())?;
                return Ok(message_response(&nack)?.with_headers(headers));
            }
            MessageVerdict::Allowed {
                remaining,
                reset_at,
            } => (remaining, reset_at),
        };
        let text = req.text().await?;
        let conn = Connection {
            connected_at: now,
            ..Connection::default()
        };
        let reply = if text.len() as u64 > limits.max_payload_size {
            let error = Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "body is {} bytes; at most {} are allowed (rateLimit.maxPayloadSize)",
                    text.len(),
                    limits.max_payload_size
                ),
            );
            intake::nack(
                now,
                &error,
                sniff_sequence_number(&text),
                None,
                Some(limits.max_payload_size),
            )
        } else {
            match decode_client_message(&text) {
                Ok(ClientMessage::CdcBatch(batch)) => {
                    self.handle_batch(now, batch).unwrap_or_else(|| {
                        intake::nack(
                            now,
                            &Error::internal("DoLake failed to start"),
                            None,
                            None,
                            None,
                        )
                    })
                }
                Ok(_) => intake::nack(
                    now,
                    &Error::invalid("POST /lakehouse/cdc takes one `cdc_batch` message"),
                    None,
                    None,
                    None,
                ),
                Err(e) => {
                    let error = Error::invalid(e.message);
                    self.refuse(now, &conn, e.sequence_number, e.correlation_id, &error)
                }
            }
        };
        let stored = matches!(&reply, ServerMessage::Ack(a) if a.status != crate::protocol::AckStatus::Duplicate);
        let mut reply = reply;
        match &mut reply {
            ServerMessage::Ack(ack) => {
                ack.rate_limit = Some(crate::protocol::RateLimitInfo {
                    limit: limits.messages_per_second,
                    remaining: rate.0,
                    reset_at: rate.1,
                });
            }
            ServerMessage::Nack(nack) => self.count_refusal(&nack.reason),
            _ => {}
        }
        if stored || self.flush_wanted_now() {
            self.ensure_alarm().await;
        }
        message_response(&reply)
    }

    async fn flush_http(&self) -> Result<Response> {
        let result = self.flush(FlushTrigger::Request).await;
        let status = if result.success { 200 } else { 503 };
        json_response(&serde_json::to_value(&result)?, status)
    }

    /// `POST /lakehouse/maintenance`: runs maintenance now; 200 with the
    /// report when every table went through, 503 otherwise.
    async fn maintenance_http(&self) -> Result<Response> {
        match self.maintain("request").await {
            Ok(report) => {
                let ok = !report.more && report.tables.values().all(|t| t.error.is_none());
                json_response(
                    &serde_json::json!({
                        "success": ok,
                        "complete": !report.more,
                        "tables": report.tables,
                    }),
                    if ok { 200 } else { 503 },
                )
            }
            Err(e) => error_response(&e),
        }
    }

    fn metrics(&self) -> Result<Response> {
        use crate::metrics::{Exposition, Kind};
        let core = self.core.borrow();
        let Core::Ready(intake) = &*core else {
            return error_response(&Error::internal(
                "DoLake failed to start; see /lakehouse/status",
            ));
        };
        let history = self.history.borrow();
        let b = intake.buffer();
        let sum =
            |f: fn(&crate::intake::SourceState) -> u64| intake.sources().map(f).sum::<u64>() as f64;
        let mut e = Exposition::new();
        e.single(
            "buffer_events",
            Kind::Gauge,
            "Events in the durable buffer.",
            b.events as f64,
        )
        .single(
            "buffer_bytes",
            Kind::Gauge,
            "Bytes in the durable buffer.",
            b.bytes as f64,
        )
        .single(
            "buffer_batches",
            Kind::Gauge,
            "Batches in the durable buffer.",
            b.batches as f64,
        )
        .single(
            "buffer_utilization",
            Kind::Gauge,
            "Buffered bytes over maxBufferSize.",
            intake.utilization(),
        )
        .single(
            "connected_sources",
            Kind::Gauge,
            "Sources with an open WebSocket.",
            self.connected_sources(None) as f64,
        )
        .single(
            "open_sockets",
            Kind::Gauge,
            "Open WebSockets.",
            self.state.get_websockets().len() as f64,
        )
        .single(
            "batches_received_total",
            Kind::Counter,
            "cdc_batch messages received.",
            sum(|s| s.batches_received),
        )
        .single(
            "events_received_total",
            Kind::Counter,
            "Events received in cdc_batch messages.",
            sum(|s| s.events_received),
        )
        .single(
            "batches_acked_total",
            Kind::Counter,
            "Batches stored and acked.",
            sum(|s| s.batches_acked),
        )
        .single(
            "events_acked_total",
            Kind::Counter,
            "Events stored and acked.",
            sum(|s| s.events_acked),
        )
        .single(
            "batches_nacked_total",
            Kind::Counter,
            "Batches refused with a nack.",
            sum(|s| s.batches_nacked),
        )
        .single(
            "duplicate_batches_total",
            Kind::Counter,
            "Resent batches acked as duplicate.",
            sum(|s| s.duplicate_batches),
        )
        .single(
            "duplicate_events_total",
            Kind::Counter,
            "Events dropped as already stored.",
            sum(|s| s.duplicate_events),
        );
        let refusals: Vec<(Vec<(&str, String)>, f64)> = self
            .refusals
            .borrow()
            .iter()
            .map(|(reason, n)| (vec![("reason", reason.clone())], *n as f64))
            .collect();
        e.family(
            "refusals_total",
            Kind::Counter,
            "Nacks and refused upgrades or requests, by reason.",
            &refusals,
        )
        .family(
            "flushes_total",
            Kind::Counter,
            "Flushes by outcome.",
            &[
                (
                    vec![("outcome", "success".to_string())],
                    history.flushes as f64,
                ),
                (
                    vec![("outcome", "failure".to_string())],
                    history.failures as f64,
                ),
            ],
        )
        .single(
            "flush_events_total",
            Kind::Counter,
            "Events written to the lake.",
            history.events_flushed as f64,
        )
        .single(
            "flush_bytes_total",
            Kind::Counter,
            "Bytes written to R2.",
            history.bytes_written as f64,
        )
        .single(
            "flush_files_total",
            Kind::Counter,
            "Objects written to R2.",
            history.files_written as f64,
        )
        .single(
            "flush_last_duration_seconds",
            Kind::Gauge,
            "Wall time of the last flush.",
            history.last_duration_ms as f64 / 1000.0,
        )
        .single(
            "flush_last_success_timestamp_seconds",
            Kind::Gauge,
            "When the last successful flush ended (0: never).",
            history.last_success_ms.unwrap_or(0) as f64 / 1000.0,
        )
        .single(
            "flush_consecutive_failures",
            Kind::Gauge,
            "Failed flushes since the last success.",
            history.consecutive_failures as f64,
        )
        .single(
            "r2_errors_total",
            Kind::Counter,
            "Flushes that failed on R2 or storage.",
            history.failures as f64,
        )
        .single(
            "events_rejected_total",
            Kind::Counter,
            "Events written to the dead-letter table (_dolake_rejected) because no table could take them.",
            history.events_rejected as f64,
        )
        .single(
            "unwritable_tables",
            Kind::Gauge,
            "Tables whose metadata DoLake cannot extend (their events are dead-lettered).",
            history.unwritable_tables.len() as f64,
        )
        .single(
            "version_hints_repaired_total",
            Kind::Counter,
            "Lagging version-hint.text files rewritten.",
            history.hints_repaired as f64,
        );
        let m = &history.maintenance;
        e.single(
            "maintenance_runs_total",
            Kind::Counter,
            "Maintenance runs.",
            m.runs as f64,
        )
        .single(
            "maintenance_failures_total",
            Kind::Counter,
            "Maintenance runs in which a table failed.",
            m.failures as f64,
        )
        .single(
            "maintenance_files_compacted_total",
            Kind::Counter,
            "Data files rewritten by compaction.",
            m.files_compacted as f64,
        )
        .single(
            "maintenance_snapshots_expired_total",
            Kind::Counter,
            "Snapshots expired.",
            m.snapshots_expired as f64,
        )
        .single(
            "maintenance_files_deleted_total",
            Kind::Counter,
            "Objects deleted after expiry and as orphans.",
            (m.files_deleted + m.orphans_deleted) as f64,
        );
        let c = &history.current_state;
        e.single(
            "current_state_events_total",
            Kind::Counter,
            "Change events applied to current-state tables.",
            c.events as f64,
        )
        .single(
            "current_state_rows_deleted_total",
            Kind::Counter,
            "Rows of current-state tables replaced or deleted (position deletes written).",
            c.rows_deleted as f64,
        )
        .single(
            "current_state_unknown_keys_total",
            Kind::Counter,
            "UPDATEs (applied as upserts) and DELETEs (no-ops) of keys a current-state table did not hold.",
            (c.upserts_of_unknown + c.deletes_of_unknown) as f64,
        )
        .single(
            "row_index_repairs_total",
            Kind::Counter,
            "Row indexes that disagreed with their table and were repaired.",
            history.index_repairs as f64,
        );
        let healths: Vec<(&String, &crate::flush::maintenance::TableHealth)> = m
            .tables
            .iter()
            .filter_map(|(t, r)| Some((t, r.health.as_ref()?)))
            .collect();
        let gauge = |f: fn(&crate::flush::maintenance::TableHealth) -> u64| -> Vec<(Vec<(&str, String)>, f64)> {
            healths
                .iter()
                .map(|(t, h)| (vec![("table", (*t).clone())], f(h) as f64))
                .collect()
        };
        e.family(
            "table_snapshots",
            Kind::Gauge,
            "Snapshots in a table's metadata (after its last maintenance).",
            &gauge(|h| h.snapshots),
        )
        .family(
            "table_manifests",
            Kind::Gauge,
            "Manifests in a table's current snapshot.",
            &gauge(|h| h.manifests),
        )
        .family(
            "table_data_files",
            Kind::Gauge,
            "Live data files of a table.",
            &gauge(|h| h.data_files),
        )
        .family(
            "table_data_bytes",
            Kind::Gauge,
            "Bytes of a table's live data files.",
            &gauge(|h| h.data_bytes),
        )
        .family(
            "table_metadata_bytes",
            Kind::Gauge,
            "Size of a table's current metadata.json.",
            &gauge(|h| h.metadata_bytes),
        );
        let mut response = Response::ok(e.finish())?;
        response
            .headers_mut()
            .set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")?;
        Ok(response)
    }

    /// Every table a flush wrote, with its shape after its last maintenance.
    fn tables_report(&self, config: &crate::config::DoLakeConfig) -> serde_json::Value {
        let history = self.history.borrow();
        let m = &history.maintenance;
        let tables: serde_json::Map<String, serde_json::Value> = history
            .known_tables()
            .iter()
            .map(|t| {
                let label = t.label(config);
                let r = m.tables.get(&label);
                let h = r.and_then(|r| r.health.as_ref());
                (
                    label,
                    serde_json::json!({
                        "snapshots": h.map(|h| h.snapshots),
                        "manifests": h.map(|h| h.manifests),
                        "dataFiles": h.map(|h| h.data_files),
                        "dataBytes": h.map(|h| h.data_bytes),
                        "meanFileBytes": h.map(|h| h.mean_file_bytes()),
                        "metadataBytes": h.map(|h| h.metadata_bytes),
                        "lastMaintenanceMs": r.and_then(|r| r.ran_ms),
                        "lastMaintenance": r,
                    }),
                )
            })
            .collect();
        serde_json::Value::Object(tables)
    }

    fn health(&self) -> Result<Response> {
        match &*self.core.borrow() {
            Core::Ready(_) => json_response(&serde_json::json!({"status": "ok"}), 200),
            Core::Failed(e) => json_response(
                &serde_json::json!({"status": "error", "error": e.message(), "kind": e.kind().as_str()}),
                503,
            ),
        }
    }

    fn status(&self) -> Result<Response> {
        let now = now_ms();
        let connected = self.connected_sources(None);
        let sockets = self.state.get_websockets();
        let connections: Vec<Connection> = sockets
            .iter()
            .filter_map(|ws| ws.deserialize_attachment::<Connection>().ok().flatten())
            .collect();
        let mut connections_per_ip = std::collections::BTreeMap::<String, u64>::new();
        for c in &connections {
            *connections_per_ip
                .entry(c.ip.clone().unwrap_or_else(|| "unknown".to_string()))
                .or_default() += 1;
        }
        let open_ids: Vec<&str> = connections
            .iter()
            .filter_map(|c| c.source_id.as_deref())
            .collect();
        let instance = serde_json::json!({
            "constructions": self.constructions,
            "constructedAt": self.constructed_at,
            "storageBytes": self.store.as_ref().map(Store::database_size),
            "rowIndex": self.store.as_ref().and_then(|s| s.index_size().ok()).map(|(rows, files)| serde_json::json!({"rows": rows, "files": files})),
            "openSockets": sockets.len(),
            // Linear memory never shrinks: this is the Rust heap's high-water mark.
            "wasmMemoryBytes": core::arch::wasm32::memory_size(0) as u64 * 65_536,
        });
        let mut core = self.core.borrow_mut();
        let body = match &mut *core {
            Core::Ready(intake) => {
                let sources: Vec<serde_json::Value> = intake
                    .sources()
                    .map(|s| s.report(open_ids.contains(&s.source_id.as_str())))
                    .collect();
                serde_json::json!({
                    "state": intake.state(),
                    "buffer": intake.buffer_snapshot(),
                    "connectedSources": connected,
                    "sourceStates": sources,
                    "dedupStats": intake.dedup_stats(now),
                    "connections": connections,
                    "lastFlushTime": self.history.borrow().last_success_ms,
                    "nextFlushTime": self.alarm_at.get(),
                    "tables": self.tables_report(intake.config()),
                    "maintenance": {
                        "nextRunMs": self.history.borrow().maintenance.next_run(&intake.config().maintenance, &self.history.borrow()),
                        "lastRunMs": self.history.borrow().maintenance.last_run_ms,
                        "runs": self.history.borrow().maintenance.runs,
                        "failures": self.history.borrow().maintenance.failures,
                        "continuing": self.history.borrow().maintenance.continuing,
                    },
                    "flush": {
                        "running": self.flush_running.get(),
                        "history": serde_json::to_value(&*self.history.borrow()).unwrap_or_default(),
                        "epoch": self.epoch.as_ref().ok(),
                    },
                    "config": intake.config().to_json(),
                    "instance": instance,
                    "authentication": if self.auth_token.is_some() { "enabled" } else { "disabled (DOLAKE_AUTH_TOKEN is not set)" },
                    "rateLimits": {
                        "refusals": serde_json::to_value(&*self.refusals.borrow()).unwrap_or_default(),
                        "connectionsPerIp": connections_per_ip,
                        "limits": serde_json::to_value(&intake.config().rate_limit).unwrap_or_default(),
                    },
                })
            }
            Core::Failed(e) => serde_json::json!({
                "state": "error",
                "error": e.message(),
                "kind": e.kind().as_str(),
                "connectedSources": connected,
                "instance": instance,
            }),
        };
        let status = if matches!(&*core, Core::Failed(_)) {
            500
        } else {
            200
        };
        json_response(&body, status)
    }
}
