//! The `DoLake` Durable Object: hibernatable WebSockets in, durable buffer out.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use worker::worker_sys::WebSocketRequestResponsePair;
use worker::{
    console_error, console_log, console_warn, durable_object, DurableObject, Env, Method, Request,
    Response, Result, State, WebSocket, WebSocketIncomingMessage, WebSocketPair,
};

use super::json_response;
use super::r2::Lake;
use super::store::Store;
use crate::admission::{check_token, Refusal, TokenBucket};
use crate::config::DoLakeConfig;
use crate::error::{Error, ErrorKind};
use crate::flush::{FlushHistory, FlushSchedule, FlushTrigger};
use crate::intake::{SourceState, StorePlan};
use crate::protocol::{FlushResponseMessage, ServerMessage};
use crate::session::views::{self, Facts};
use crate::session::{
    self, Connection, Frame, Host, HttpThrottled, Outcome, Reply, Restored, Session, Upgrade,
    UpgradeRefused,
};

/// The object's core, or why it could not start.
pub(super) enum Core {
    Ready(Box<Session>),
    Failed(Error),
}

/// The DoLake Durable Object. The macro exports its constructor, `fetch`
/// and `alarm`; its WebSocket entry points are in `sockets.rs`. It holds the
/// object in an `Rc`, so that a handler that must wait (a flush, the alarm)
/// can own what it waits with, and one that need not wait returns at once.
#[durable_object(alarm)]
pub struct DoLake {
    pub(super) object: Rc<Object>,
}

impl DurableObject for DoLake {
    fn new(state: State, env: Env) -> Self {
        Self {
            object: Rc::new(Object::new(state, env)),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        self.object.fetch(req).await
    }

    async fn alarm(&self) -> Result<Response> {
        self.object.alarm().await
    }
}

/// What the Durable Object holds and does.
pub(super) struct Object {
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
    constructions: u64,
    constructed_at: i64,
    /// The connections' states (attachments, and copies in memory).
    connections: super::connections::Connections,
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

/// Applies `DOLAKE_LOG_LEVEL`.
fn set_log_level(env: &Env) {
    let Ok(level) = env.var("DOLAKE_LOG_LEVEL") else {
        return;
    };
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

/// Logs what the pipeline noted.
fn log_notes(notes: &[session::Note]) {
    for note in notes {
        log(note.level(), note.event(), note.fields());
    }
}

/// Opens storage and starts the session from what it holds.
fn start(state: &State, env: &Env) -> (Option<Store>, Core, FlushHistory, u64) {
    let store = match Store::open(state.storage()) {
        Ok(store) => store,
        Err(e) => return (None, Core::Failed(e), FlushHistory::default(), 0),
    };
    let constructions = store.count_construction().unwrap_or(0);
    let history = store.load_history().unwrap_or_default();
    let config_text = env.var("DOLAKE_CONFIG").ok().map(|v| v.to_string());
    let core = DoLakeConfig::parse(config_text.as_deref()).and_then(|config| {
        let restored = Restored {
            sources: store.load_sources()?,
            unfolded: store.load_unfolded()?,
            totals: store.load_totals()?,
            lake_failing: history.consecutive_failures > 0,
            refusals: store
                .load_json("refusals")
                .ok()
                .flatten()
                .unwrap_or_default(),
            connection_bucket: store.load_json("conn_bucket").ok().flatten(),
        };
        Ok(Session::new(config, restored))
    });
    let core = match core {
        Ok(session) => {
            let buffer = session.intake().buffer();
            log(
                "info",
                "started",
                serde_json::json!({"constructions": constructions, "bufferedEvents": buffer.events, "bufferedBatches": buffer.batches}),
            );
            Core::Ready(Box::new(session))
        }
        Err(e) => {
            log(
                "error",
                "start_failed",
                serde_json::json!({"error": e.message(), "kind": e.kind().as_str()}),
            );
            Core::Failed(e)
        }
    };
    (Some(store), core, history, constructions)
}

impl Object {
    fn new(state: State, env: Env) -> Self {
        console_error_panic_hook::set_once();
        let constructed_at = now_ms();
        set_log_level(&env);
        // `ping` is answered by the runtime itself, even while hibernated.
        if let Ok(pair) = WebSocketRequestResponsePair::new("ping", "pong") {
            state.set_websocket_auto_response(&pair);
        }
        let (store, core, history, constructions) = start(&state, &env);
        let epoch = match &store {
            Some(s) => s.epoch(|| uuid::Uuid::new_v4().simple().to_string()),
            None => Err(Error::storage("storage is not available")),
        };
        let auth_token = super::setting(&env, "DOLAKE_AUTH_TOKEN");
        if auth_token.is_none() {
            log(
                "warn",
                "no_authentication",
                serde_json::json!({"message": "DOLAKE_AUTH_TOKEN is not set: WebSocket upgrades and HTTP endpoints are open to anyone who can reach this worker"}),
            );
        }
        let lake = open_lake(&env, &core);
        if matches!(&core, Core::Ready(s) if s.intake().buffer().batches > 0) {
            alarm_for_buffered(&state);
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
            constructions,
            constructed_at,
            connections: super::connections::Connections::new(
                &uuid::Uuid::new_v4().simple().to_string(),
            ),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        self.alarm_at.set(None);
        let due = match &*self.core.borrow() {
            Core::Ready(session) => FlushSchedule::new(session.config()).due(
                now_ms(),
                session.intake().buffer(),
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
        // Defence in depth: the Worker already refused unauthenticated
        // requests before naming this instance; this 401 writes no storage.
        if let Some(secret) = &self.auth_token {
            let given = req.headers().get("Authorization")?;
            if route != "/health" && !check_token(given.as_deref(), secret) {
                if let Core::Ready(session) = &mut *self.core.borrow_mut() {
                    session.count_refusal(Refusal::Unauthorized, self);
                }
                log(
                    "warn",
                    "unauthorized",
                    serde_json::json!({"path": path, "scope": "instance"}),
                );
                return super::unauthorized_response(&path);
            }
        }
        if crate::catalog::is_catalog_path(&path) {
            return self.catalog_http(&req).await;
        }
        self.route(req, route, &path).await
    }

    pub(super) async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let now = now_ms();
        let mut conn = self.connections.read(&ws).unwrap_or_else(|| Connection {
            connected_at: now,
            ..Connection::default()
        });
        let frame = match &message {
            WebSocketIncomingMessage::String(text) => Frame::Text(text),
            WebSocketIncomingMessage::Binary(bytes) => Frame::Binary(bytes.len()),
        };
        let out = match &mut *self.core.borrow_mut() {
            Core::Ready(session) => session.on_frame(now, &mut conn, frame, self),
            Core::Failed(e) => {
                let text = if let Frame::Text(t) = frame { t } else { "" };
                let nack = session::not_started(now, text, e);
                Outcome {
                    reply: Some(Reply::Send(nack)),
                    ..Outcome::default()
                }
            }
        };
        self.perform(&ws, conn, out).await
    }

    pub(super) async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        let conn = self.connections.read(&ws);
        self.connections.forget(&ws);
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

    pub(super) async fn websocket_error(&self, ws: WebSocket, error: worker::Error) -> Result<()> {
        self.connections.forget(&ws);
        log(
            "warn",
            "socket_error",
            serde_json::json!({"error": error.to_string()}),
        );
        Ok(())
    }
}

/// The R2 bucket under the configured base path.
fn open_lake(env: &Env, core: &Core) -> std::result::Result<Lake, Error> {
    let base_path = match core {
        Core::Ready(session) => session.config().r2_base_path.as_str(),
        Core::Failed(_) => "",
    };
    env.bucket("LAKEHOUSE_BUCKET")
        .map(|bucket| Lake::new(bucket, base_path))
        .map_err(|e| {
            let message = format!("the R2 binding LAKEHOUSE_BUCKET is missing: {e}");
            Error::new(ErrorKind::Lake, message)
        })
}

/// Whatever is buffered must have an alarm, even if the process died
/// between storing a batch and setting it: makes sure one exists.
fn alarm_for_buffered(state: &State) {
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

/// The pipeline's storage is the object's SQLite; its view of connections
/// is the sockets' attachments.
impl Host for Object {
    fn write_plan(&self, plan: &StorePlan) -> std::result::Result<(), Error> {
        self.store()?.write_plan(plan)
    }

    fn save_source(&self, source: &SourceState) -> std::result::Result<(), Error> {
        self.store()?.save_source(source)
    }

    fn save_refusals(
        &self,
        counts: &std::collections::BTreeMap<String, u64>,
    ) -> std::result::Result<(), Error> {
        self.store()?.save_json("refusals", counts)
    }

    fn save_connection_bucket(&self, bucket: &TokenBucket) -> std::result::Result<(), Error> {
        self.store()?.save_json("conn_bucket", bucket)
    }

    fn connections(&self) -> Vec<Connection> {
        let sockets = self.state.get_websockets();
        sockets
            .iter()
            .filter_map(|ws| self.connections.read(ws))
            .collect()
    }

    fn flush_times(&self) -> (Option<i64>, Option<i64>) {
        (self.history.borrow().last_success_ms, self.alarm_at.get())
    }
}

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

/// 400 for a malformed upgrade, 429 with rate-limit headers for a limit.
fn upgrade_refused_response(refused: &UpgradeRefused) -> Result<Response> {
    let refusal = match refused {
        UpgradeRefused::Invalid(e) => return error_response(e),
        UpgradeRefused::Limited(refusal) => refusal,
    };
    let headers = worker::Headers::new();
    headers.set("X-RateLimit-Limit", &refusal.limit.to_string())?;
    headers.set("X-RateLimit-Remaining", &refusal.remaining.to_string())?;
    headers.set("X-RateLimit-Reset", &refusal.reset_s.to_string())?;
    headers.set("Retry-After", &refusal.retry_after_s.to_string())?;
    let body = serde_json::json!({
        "error": refusal.message,
        "reason": refusal.reason.as_str(),
        "retryAfter": refusal.retry_after_s,
    });
    Ok(json_response(&body, 429)?.with_headers(headers))
}

/// 429 with rate-limit headers for a throttled HTTP client.
fn http_throttled_response(throttled: &HttpThrottled) -> Result<Response> {
    let headers = worker::Headers::new();
    headers.set("X-RateLimit-Limit", &throttled.limit.to_string())?;
    headers.set("X-RateLimit-Remaining", "0")?;
    headers.set("X-RateLimit-Reset", &throttled.reset_s.to_string())?;
    headers.set("Retry-After", &throttled.retry_after_s.to_string())?;
    Ok(message_response(&throttled.nack)?.with_headers(headers))
}

impl Object {
    fn store(&self) -> std::result::Result<&Store, Error> {
        self.store
            .as_ref()
            .ok_or_else(|| Error::storage("storage is not available"))
    }

    /// The object's own routes (`path` without `/lakehouse` is `route`).
    async fn route(&self, req: Request, route: &str, path: &str) -> Result<Response> {
        let upgrade = req
            .headers()
            .get("Upgrade")?
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
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

    /// Does what the pipeline decided for one frame: logs, runs a requested
    /// flush, sends, saves the connection's state, closes, sets the alarm.
    async fn perform(&self, ws: &WebSocket, mut conn: Connection, out: Outcome) -> Result<()> {
        log_notes(&out.notes);
        let reply = match out.reply {
            Some(Reply::Flush(correlation_id)) => {
                // Messages handled during the flush update the attachment;
                // save ours first, read theirs after.
                self.save_attachment(ws, &conn)?;
                let result = self.flush(FlushTrigger::Request).await;
                conn = self.connections.read(ws).unwrap_or(conn);
                Some(ServerMessage::FlushResponse(FlushResponseMessage {
                    timestamp: now_ms(),
                    correlation_id,
                    result,
                }))
            }
            Some(Reply::Send(message)) => Some(message),
            None => None,
        };
        if let Some(reply) = reply {
            if let Err(e) = ws.send_with_str(reply.to_json()) {
                log(
                    "warn",
                    "send_failed",
                    serde_json::json!({"error": e.to_string()}),
                );
            }
        }
        self.save_attachment(ws, &conn)?;
        if let Some(close) = out.close {
            let (code, reason) = close.frame();
            ws.close(Some(code), Some(reason))?;
        }
        if out.wake {
            self.ensure_alarm().await;
        }
        Ok(())
    }

    /// Writes the connection's state into its socket. A failure is an error:
    /// without it the per-connection limits would silently stop applying, so
    /// the socket is closed (1011) and the shard reconnects.
    fn save_attachment(&self, ws: &WebSocket, conn: &Connection) -> Result<()> {
        if let Err(e) = self.connections.save(ws, conn) {
            log(
                "error",
                "attachment_failed",
                serde_json::json!({"sourceDoId": conn.source_id, "error": e.to_string()}),
            );
            ws.close(Some(1011), Some("connection state could not be saved"))?;
        }
        Ok(())
    }

    fn accept(&self, req: &Request) -> Result<Response> {
        let header = |name: &str| req.headers().get(name).ok().flatten();
        let upgrade = Upgrade {
            client_id: header("X-Client-ID"),
            shard_name: header("X-Shard-Name"),
            priority: header("X-Priority"),
            ip: header("CF-Connecting-IP"),
        };
        let admitted = match &mut *self.core.borrow_mut() {
            Core::Ready(session) => session.upgrade(now_ms(), upgrade, self),
            Core::Failed(e) => {
                let message = format!("DoLake is not accepting connections: {}", e.message());
                return json_response(&Error::new(e.kind(), message).to_json(), 503);
            }
        };
        let conn = match admitted {
            Ok(conn) => conn,
            Err((refused, notes)) => {
                log_notes(&notes);
                return upgrade_refused_response(&refused);
            }
        };
        let pair = WebSocketPair::new()?;
        self.state.accept_web_socket(&pair.server);
        self.connections.save(&pair.server, &conn)?;
        log(
            "info",
            "connected",
            serde_json::json!({"clientId": conn.client_id, "shardName": conn.shard_name}),
        );
        Response::from_websocket(pair.client)
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
        let client = req.headers().get("CF-Connecting-IP")?;
        let client = client.as_deref().unwrap_or("unknown");
        let gate = match &mut *self.core.borrow_mut() {
            Core::Ready(session) => session.gate_http(now, client, self),
            Core::Failed(e) => return error_response(e),
        };
        let rate = match gate {
            Ok(rate) => rate,
            Err(throttled) => {
                log_notes(&throttled.notes);
                return http_throttled_response(&throttled);
            }
        };
        let text = req.text().await?;
        let out = match &mut *self.core.borrow_mut() {
            Core::Ready(session) => session.on_http_batch(now, &text, rate, self),
            Core::Failed(e) => return error_response(e),
        };
        log_notes(&out.notes);
        if out.wake {
            self.ensure_alarm().await;
        }
        match out.message() {
            Some(message) => message_response(message),
            None => error_response(&Error::internal("no reply to the batch")),
        }
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

    /// The instance's platform facts for `/status`.
    fn instance_facts(&self, open_sockets: usize) -> serde_json::Value {
        serde_json::json!({
            "constructions": self.constructions,
            "constructedAt": self.constructed_at,
            "storageBytes": self.store.as_ref().map(Store::database_size),
            "rowIndex": self.store.as_ref().and_then(|s| s.index_size().ok()).map(|(rows, files)| serde_json::json!({"rows": rows, "files": files})),
            "openSockets": open_sockets,
            // Linear memory never shrinks: this is the Rust heap's high-water mark.
            "wasmMemoryBytes": core::arch::wasm32::memory_size(0) as u64 * 65_536,
        })
    }

    /// Gathers what the views need besides the session, and renders one.
    fn with_facts<T>(&self, view: impl FnOnce(&Facts<'_>) -> T) -> T {
        let sockets = self.state.get_websockets();
        let connections: Vec<Connection> = sockets
            .iter()
            .filter_map(|ws| self.connections.read(ws))
            .collect();
        let history = self.history.borrow();
        let instance = self.instance_facts(sockets.len());
        let epoch = self.epoch.as_ref().ok().map(String::as_str);
        view(&Facts {
            now: now_ms(),
            connections: &connections,
            open_sockets: sockets.len(),
            history: &history,
            next_flush_ms: self.alarm_at.get(),
            flush_running: self.flush_running.get(),
            epoch,
            authenticated: self.auth_token.is_some(),
            instance: &instance,
        })
    }

    fn metrics(&self) -> Result<Response> {
        let text = match &*self.core.borrow() {
            Core::Ready(session) => self.with_facts(|facts| views::metrics(session, facts)),
            Core::Failed(_) => {
                let e = Error::internal("DoLake failed to start; see /lakehouse/status");
                return error_response(&e);
            }
        };
        let mut response = Response::ok(text)?;
        response
            .headers_mut()
            .set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")?;
        Ok(response)
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
        match &mut *self.core.borrow_mut() {
            Core::Ready(session) => {
                let body = self.with_facts(|facts| views::status(session, facts));
                json_response(&body, 200)
            }
            Core::Failed(e) => {
                let body = self.with_facts(|facts| {
                    serde_json::json!({
                        "state": "error",
                        "error": e.message(),
                        "kind": e.kind().as_str(),
                        "connectedSources": facts.connected_sources(),
                        "instance": facts.instance,
                    })
                });
                json_response(&body, 500)
            }
        }
    }
}
