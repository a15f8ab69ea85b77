//! Glue of the Iceberg REST catalog (`crate::catalog` decides): the registry
//! in SQLite on the catalog instance, load-table over R2, and registrations
//! sent DO to DO from writer instances after their flushes.
//!
//! Table `catalog_tables(namespace, name, registered_at)`: every table any
//! instance registered. A writer keeps the set it has registered in `meta`
//! (`catalog_registered`) and sends only what is new; a failed registration
//! is sent again after the next flush.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;
use worker::{Headers, Method, Request, RequestInit, Response, Result};

use crate::catalog::{
    self, Answer, CatalogError, CatalogErrorKind, Registration, Registry, StorageAccess, TableId,
    CATALOG_INSTANCE, REGISTER_PATH,
};

use super::object::{log, now_ms, Core, Object};
use super::{json_response, setting};

pub(super) const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS catalog_tables (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
)"];

/// Longest a registration waits for the catalog instance.
const REGISTER_TIMEOUT_MS: u64 = 5_000;

#[derive(Deserialize)]
struct Row {
    namespace: String,
    name: String,
}

impl Object {
    /// `GET`/`HEAD /v1/...`: the REST catalog's answer, or its error body.
    pub(super) async fn catalog_http(&self, req: &Request) -> Result<Response> {
        let url = req.url()?;
        let method = req.method().to_string().to_ascii_uppercase();
        let query: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let head = method == "HEAD";
        match self.catalog_answer(&method, url.path(), &query).await {
            Ok(_) if head => Ok(Response::empty()?.with_status(204)),
            Ok(body) => json_response(&body, 200),
            Err(e) if head => Ok(Response::empty()?.with_status(e.status())),
            Err(e) => json_response(&e.to_json(), e.status()),
        }
    }

    async fn catalog_answer(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
    ) -> std::result::Result<Value, CatalogError> {
        let request = catalog::route(method, path, query)?;
        let registry = self.registry()?;
        let (namespace, table, registered) = match registry.answer(&request)? {
            Answer::Body(body) => return Ok(body),
            Answer::LoadTable {
                namespace,
                table,
                registered,
            } => (namespace, table, registered),
        };
        let lake = self
            .lake
            .as_ref()
            .map_err(|e| CatalogError::from(e.clone()))?;
        let loaded = match catalog::load_table(lake, namespace, table).await {
            Err(e) if e.kind == CatalogErrorKind::NoSuchTable => {
                return Err(registry.missing(namespace, table))
            }
            other => other?,
        };
        if !registered {
            let id = TableId {
                namespace: namespace.to_string(),
                name: table.to_string(),
            };
            if let Err(e) = self.record_tables(&[id]) {
                log(
                    "warn",
                    "catalog_registration_failed",
                    serde_json::json!({"error": e.message}),
                );
            }
        }
        Ok(loaded.to_response(&self.storage_access()))
    }

    fn registry(&self) -> std::result::Result<Registry, CatalogError> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| CatalogError::from(crate::Error::storage("storage is not available")))?;
        let rows: Vec<Row> = store
            .sql
            .exec("SELECT namespace, name FROM catalog_tables", None)
            .and_then(|c| c.to_array())
            .map_err(|e| {
                CatalogError::from(crate::Error::storage(format!("reading the catalog: {e}")))
            })?;
        Ok(Registry::new(rows.into_iter().map(|r| TableId {
            namespace: r.namespace,
            name: r.name,
        })))
    }

    /// What engines get to read the bucket through R2's S3 API, as the
    /// deployment configures it (never logged, never on `/status`).
    fn storage_access(&self) -> StorageAccess {
        StorageAccess {
            endpoint: setting(&self.env, "DOLAKE_CATALOG_S3_ENDPOINT"),
            region: setting(&self.env, "DOLAKE_CATALOG_S3_REGION"),
            access_key_id: setting(&self.env, "DOLAKE_CATALOG_S3_ACCESS_KEY_ID"),
            secret_access_key: setting(&self.env, "DOLAKE_CATALOG_S3_SECRET_ACCESS_KEY"),
        }
    }

    /// `POST /_catalog/register` (DO to DO only): records the tables.
    pub(super) async fn catalog_register(&self, mut req: Request) -> Result<Response> {
        let registration: Registration = match req.json().await {
            Ok(r) => r,
            Err(e) => {
                let e = CatalogError {
                    kind: CatalogErrorKind::BadRequest,
                    message: format!(
                        "a registration is {{\"tables\": [{{namespace, name}}]}}: {e}"
                    ),
                };
                return json_response(&e.to_json(), e.status());
            }
        };
        for t in &registration.tables {
            if let Err(e) = crate::lake::TablePaths::new(&t.namespace, &t.name) {
                let e = CatalogError::from(e);
                return json_response(&e.to_json(), e.status());
            }
        }
        match self.record_tables(&registration.tables) {
            Ok(()) => json_response(
                &serde_json::json!({"registered": registration.tables.len()}),
                200,
            ),
            Err(e) => json_response(&e.to_json(), e.status()),
        }
    }

    /// Adds tables to the registry (present ones are kept as they are).
    fn record_tables(&self, tables: &[TableId]) -> std::result::Result<(), CatalogError> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| CatalogError::from(crate::Error::storage("storage is not available")))?;
        let now = now_ms();
        let statements = tables
            .iter()
            .map(|t| {
                (
                    std::borrow::Cow::Borrowed(
                        "INSERT INTO catalog_tables (namespace, name, registered_at) VALUES (?, ?, ?)
                         ON CONFLICT(namespace, name) DO NOTHING",
                    ),
                    vec![
                        t.namespace.clone().into(),
                        t.name.clone().into(),
                        (now as f64).into(),
                    ],
                )
            })
            .collect();
        store.transaction(statements).map_err(CatalogError::from)
    }

    /// Sends the catalog instance the tables this instance committed to that
    /// it has not registered yet; remembers what was accepted. Failures are
    /// logged and retried after the next flush.
    pub(super) async fn register_tables(&self) {
        let Some(store) = &self.store else { return };
        let mut registered: BTreeSet<TableId> = store
            .load_json("catalog_registered")
            .ok()
            .flatten()
            .unwrap_or_default();
        let todo = match &*self.core.borrow() {
            Core::Ready(session) => catalog::unregistered(
                &self.history.borrow(),
                session.intake().config(),
                &registered,
            ),
            Core::Failed(_) => return,
        };
        if todo.is_empty() {
            return;
        }
        match self.send_registration(&todo).await {
            Ok(()) => {
                registered.extend(todo.iter().cloned());
                if let Err(e) = store.save_json("catalog_registered", &registered) {
                    log(
                        "warn",
                        "catalog_registration_unsaved",
                        serde_json::json!({"error": e.message()}),
                    );
                }
                log(
                    "info",
                    "catalog_registered",
                    serde_json::json!({"tables": todo}),
                );
            }
            Err(e) => log(
                "warn",
                "catalog_registration_failed",
                serde_json::json!({"error": e.to_string(), "tables": todo}),
            ),
        }
    }

    async fn send_registration(&self, tables: &[TableId]) -> Result<()> {
        let body = serde_json::to_string(&Registration {
            tables: tables.to_vec(),
        })?;
        let headers = Headers::new();
        headers.set("Content-Type", "application/json")?;
        if let Some(token) = &self.auth_token {
            headers.set("Authorization", &format!("Bearer {token}"))?;
        }
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_headers(headers)
            .with_body(Some(body.into()));
        let req = Request::new_with_init(&format!("https://dolake{REGISTER_PATH}"), &init)?;
        let stub = self
            .env
            .durable_object("DOLAKE")?
            .id_from_name(CATALOG_INSTANCE)?
            .get_stub()?;
        // Bounded: a flush (and a flush request) waits for this.
        let call = std::pin::pin!(stub.fetch_with_request(req));
        let timeout = std::pin::pin!(worker::Delay::from(std::time::Duration::from_millis(
            REGISTER_TIMEOUT_MS
        )));
        let res = match futures::future::select(call, timeout).await {
            futures::future::Either::Left((res, _)) => res?,
            futures::future::Either::Right(_) => {
                return Err(worker::Error::RustError(format!(
                    "the catalog instance did not answer within {REGISTER_TIMEOUT_MS} ms"
                )))
            }
        };
        if res.status_code() == 200 {
            Ok(())
        } else {
            Err(worker::Error::RustError(format!(
                "the catalog instance answered {}",
                res.status_code()
            )))
        }
    }
}
