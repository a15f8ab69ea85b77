//! The Iceberg REST catalog that DoLake serves (read side), sans IO.
//!
//! Engines attach by URL (`GET /v1/config`, then namespaces and tables)
//! instead of by a `metadata.json` path. This room owns:
//! - the routes of the REST catalog API DoLake answers ([`route`]), and a
//!   clear `406 UnsupportedOperationException` for every write;
//! - the error body of the spec (`{"error": {message, type, code}}`,
//!   [`CatalogError`]);
//! - the registry of tables ([`Registry`], [`Registration`]): tables live in
//!   several DoLake instances (`lakehouse-{table}` routing), so each instance
//!   registers the tables it commits with the one catalog instance, and
//!   listing never scans the bucket;
//! - the responses (config with its `endpoints`, namespace and table lists
//!   with paging, load-table with the storage `config`);
//! - finding a table's current metadata file in the object store
//!   ([`load_table`]: `version-hint.text`, then probing forward, as the
//!   flush does, without writing).
//!
//! The Durable Object performs: it keeps the registry in SQLite, reads R2,
//! and sends registrations from writer instances to the catalog instance.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::Error;
use crate::flush::ports::ObjectStore;
use crate::lake::TablePaths;

#[cfg(test)]
mod tests;

pub use crate::admission::{is_catalog_path, CATALOG_INSTANCE};

/// Default and largest page of a list.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// What an engine asked the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogRequest {
    /// `GET /v1/config`.
    Config,
    /// `GET /v1/namespaces` (`parent` set: children of a namespace, none
    /// here since namespaces have one level).
    ListNamespaces { parent: Option<String>, page: Page },
    /// `GET` or `HEAD /v1/namespaces/{ns}`.
    Namespace { namespace: String },
    /// `GET /v1/namespaces/{ns}/tables`.
    ListTables { namespace: String, page: Page },
    /// `GET` or `HEAD /v1/namespaces/{ns}/tables/{table}` (load table).
    Table { namespace: String, table: String },
}

/// What the registry answers: a body, or a table to load from the lake.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer<'r> {
    /// The response body.
    Body(Value),
    /// Load this table's current metadata ([`load_table`]); when it is
    /// missing there, answer [`Registry::missing`]. A table that is not
    /// `registered` (its writer's registration failed and was not retried
    /// yet) is still found by name, and is to be registered then.
    LoadTable {
        namespace: &'r str,
        table: &'r str,
        registered: bool,
    },
}

/// A page request: resume after `token`, at most `size` items.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub token: Option<String>,
    pub size: Option<usize>,
}

/// Why the catalog refuses, as the spec's exception types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogErrorKind {
    BadRequest,
    NoSuchNamespace,
    NoSuchTable,
    NotFound,
    MethodNotAllowed,
    Unsupported,
    Unavailable,
    Internal,
}

/// A catalog error: its HTTP status and body follow the REST spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogError {
    pub kind: CatalogErrorKind,
    pub message: String,
}

impl CatalogError {
    fn new(kind: CatalogErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self.kind {
            CatalogErrorKind::BadRequest => 400,
            CatalogErrorKind::NoSuchNamespace
            | CatalogErrorKind::NoSuchTable
            | CatalogErrorKind::NotFound => 404,
            CatalogErrorKind::MethodNotAllowed => 405,
            CatalogErrorKind::Unsupported => 406,
            CatalogErrorKind::Unavailable => 503,
            CatalogErrorKind::Internal => 500,
        }
    }

    /// The spec's exception type name.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            CatalogErrorKind::BadRequest => "BadRequestException",
            CatalogErrorKind::NoSuchNamespace => "NoSuchNamespaceException",
            CatalogErrorKind::NoSuchTable => "NoSuchTableException",
            CatalogErrorKind::NotFound => "NotFoundException",
            CatalogErrorKind::MethodNotAllowed => "MethodNotAllowedException",
            CatalogErrorKind::Unsupported => "UnsupportedOperationException",
            CatalogErrorKind::Unavailable => "ServiceUnavailableException",
            CatalogErrorKind::Internal => "ServerError",
        }
    }

    /// `{"error": {"message", "type", "code"}}`.
    pub fn to_json(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.type_name(), "code": self.status()}})
    }
}

impl From<Error> for CatalogError {
    fn from(e: Error) -> Self {
        let kind = match e.kind() {
            crate::ErrorKind::Lake | crate::ErrorKind::Storage => CatalogErrorKind::Unavailable,
            crate::ErrorKind::InvalidFormat => CatalogErrorKind::BadRequest,
            _ => CatalogErrorKind::Internal,
        };
        Self::new(kind, e.message())
    }
}

/// Decodes a `%XX`-escaped path segment (a multi-level namespace is joined
/// by `%1F`, which [`route`] refuses: DoLake's namespaces have one level).
fn unescape(segment: &str) -> Result<String, CatalogError> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            CatalogError::new(
                CatalogErrorKind::BadRequest,
                format!("path segment {segment:?} is not UTF-8"),
            )
        })
}

fn page(query: &[(String, String)]) -> Result<Page, CatalogError> {
    let mut p = Page::default();
    for (k, v) in query {
        match k.as_str() {
            "pageToken" if !v.is_empty() => p.token = Some(v.clone()),
            "pageSize" => {
                let n: usize = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    CatalogError::new(
                        CatalogErrorKind::BadRequest,
                        format!("pageSize must be a positive integer, got {v:?}"),
                    )
                })?;
                p.size = Some(n);
            }
            _ => {}
        }
    }
    Ok(p)
}

/// The catalog request of `method` (upper case) on `path` with `query`.
/// Writes (`POST`, `PUT`, `DELETE` on catalog objects) are
/// [`CatalogErrorKind::Unsupported`]: DoLake is the only writer of its
/// tables, and it writes them from the change streams.
pub fn route(
    method: &str,
    path: &str,
    query: &[(String, String)],
) -> Result<CatalogRequest, CatalogError> {
    let rest = path.strip_prefix("/v1").unwrap_or(path);
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let read = matches!(method, "GET" | "HEAD");
    let unsupported = || {
        CatalogError::new(
            CatalogErrorKind::Unsupported,
            format!(
                "{method} {path} is not supported: DoLake's catalog is read-only (DoLake alone writes its tables, from the change streams)"
            ),
        )
    };
    let only_get = || {
        CatalogError::new(
            CatalogErrorKind::MethodNotAllowed,
            format!("{path} answers GET only"),
        )
    };
    let one_level = |ns: &str| -> Result<String, CatalogError> {
        let ns = unescape(ns)?;
        if ns.contains('\u{1f}') {
            return Err(CatalogError::new(
                CatalogErrorKind::NoSuchNamespace,
                format!("namespace {ns:?} does not exist: DoLake's namespaces have one level"),
            ));
        }
        Ok(ns)
    };
    match segments.as_slice() {
        ["config"] if method == "GET" => Ok(CatalogRequest::Config),
        ["config"] => Err(only_get()),
        ["oauth", "tokens"] => Err(CatalogError::new(
            CatalogErrorKind::Unsupported,
            "DoLake issues no OAuth tokens: send the deployment's token as `Authorization: Bearer <token>` (pyiceberg: `token`, DuckDB: a secret with TOKEN)",
        )),
        ["namespaces"] if method == "GET" => {
            let parent = query
                .iter()
                .find(|(k, _)| k == "parent")
                .map(|(_, v)| v.clone());
            Ok(CatalogRequest::ListNamespaces {
                parent,
                page: page(query)?,
            })
        }
        ["namespaces", ns] if read => Ok(CatalogRequest::Namespace {
            namespace: one_level(ns)?,
        }),
        ["namespaces", ns, "tables"] if method == "GET" => Ok(CatalogRequest::ListTables {
            namespace: one_level(ns)?,
            page: page(query)?,
        }),
        ["namespaces", ns, "tables", table] if read => Ok(CatalogRequest::Table {
            namespace: one_level(ns)?,
            table: unescape(table)?,
        }),
        ["namespaces"]
        | ["namespaces", _]
        | ["namespaces", _, "tables"]
        | ["namespaces", _, "tables", _]
        | ["namespaces", _, "tables", _, ..]
        | ["namespaces", _, "properties"]
        | ["namespaces", _, "register"]
        | ["namespaces", _, "views", ..]
        | ["tables", "rename"]
        | ["transactions", "commit"] => Err(unsupported()),
        _ => Err(CatalogError::new(
            CatalogErrorKind::NotFound,
            format!("no catalog route for {method} {path}"),
        )),
    }
}

/// The `endpoints` DoLake's catalog answers, as the config response lists
/// them.
pub const ENDPOINTS: &[&str] = &[
    "GET /v1/{prefix}/namespaces",
    "GET /v1/{prefix}/namespaces/{namespace}",
    "HEAD /v1/{prefix}/namespaces/{namespace}",
    "GET /v1/{prefix}/namespaces/{namespace}/tables",
    "GET /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "HEAD /v1/{prefix}/namespaces/{namespace}/tables/{table}",
];

/// `GET /v1/config`.
pub fn config_response() -> Value {
    json!({"defaults": {}, "overrides": {}, "endpoints": ENDPOINTS})
}

/// One registered table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableId {
    pub namespace: String,
    pub name: String,
}

/// What a writer instance sends the catalog instance: tables it has
/// committed to (registering twice is harmless).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub tables: Vec<TableId>,
}

/// The path of registrations on the catalog instance. The Worker never
/// routes it (only `/ws`, `/lakehouse/*` and `/v1/*` reach instances), so
/// only instances call it, DO to DO.
pub const REGISTER_PATH: &str = "/_catalog/register";

/// Every registered table, by namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    namespaces: BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl Registry {
    /// The registry of `tables`.
    pub fn new(tables: impl IntoIterator<Item = TableId>) -> Self {
        let mut r = Self::default();
        for t in tables {
            r.namespaces.entry(t.namespace).or_default().insert(t.name);
        }
        r
    }

    /// Whether the namespace holds a registered table.
    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.namespaces.contains_key(namespace)
    }

    /// Whether the table is registered.
    pub fn has_table(&self, namespace: &str, table: &str) -> bool {
        self.namespaces
            .get(namespace)
            .is_some_and(|t| t.contains(table))
    }

    /// The answer to `request`: everything but load-table is answered from
    /// the registry alone.
    pub fn answer<'r>(&self, request: &'r CatalogRequest) -> Result<Answer<'r>, CatalogError> {
        let body = match request {
            CatalogRequest::Config => config_response(),
            CatalogRequest::ListNamespaces { parent, page } => {
                if let Some(parent) = parent.as_deref().filter(|p| !p.is_empty()) {
                    // Namespaces have one level: a known parent has no children.
                    self.namespace_exists(parent)?;
                    return Ok(Answer::Body(json!({"namespaces": []})));
                }
                let (items, next) = paged(self.namespaces.keys(), page);
                let list: Vec<Value> = items.into_iter().map(|ns| json!([ns])).collect();
                with_token(json!({"namespaces": list}), next)
            }
            CatalogRequest::Namespace { namespace } => {
                self.namespace_exists(namespace)?;
                json!({"namespace": [namespace], "properties": {}})
            }
            CatalogRequest::ListTables { namespace, page } => {
                self.namespace_exists(namespace)?;
                let tables = &self.namespaces[namespace.as_str()];
                let (items, next) = paged(tables.iter(), page);
                let list: Vec<Value> = items
                    .into_iter()
                    .map(|t| json!({"namespace": [namespace], "name": t}))
                    .collect();
                with_token(json!({"identifiers": list}), next)
            }
            CatalogRequest::Table { namespace, table } => {
                return Ok(Answer::LoadTable {
                    namespace,
                    table,
                    registered: self.has_table(namespace, table),
                })
            }
        };
        Ok(Answer::Body(body))
    }

    /// The 404 of a table the lake does not hold: no such namespace, or no
    /// such table in it.
    pub fn missing(&self, namespace: &str, table: &str) -> CatalogError {
        match self.namespace_exists(namespace) {
            Err(e) => e,
            Ok(()) => no_such_table(namespace, table),
        }
    }

    fn namespace_exists(&self, namespace: &str) -> Result<(), CatalogError> {
        if self.has_namespace(namespace) {
            Ok(())
        } else {
            Err(CatalogError::new(
                CatalogErrorKind::NoSuchNamespace,
                format!("namespace does not exist: {namespace}"),
            ))
        }
    }
}

fn no_such_table(namespace: &str, table: &str) -> CatalogError {
    CatalogError::new(
        CatalogErrorKind::NoSuchTable,
        format!("table does not exist: {namespace}.{table}"),
    )
}

/// Items after the page token, at most the page size; the next token when
/// more follow. The token is the last name returned (names are sorted).
fn paged<'a>(
    items: impl Iterator<Item = &'a String>,
    page: &Page,
) -> (Vec<&'a String>, Option<String>) {
    let size = page.size.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE);
    let mut rest = items.filter(|n| page.token.as_ref().is_none_or(|t| n.as_str() > t.as_str()));
    let taken: Vec<&String> = rest.by_ref().take(size).collect();
    let next = match (rest.next(), taken.last()) {
        (Some(_), Some(last)) => Some((*last).clone()),
        _ => None,
    };
    (taken, next)
}

fn with_token(mut body: Value, next: Option<String>) -> Value {
    body["next-page-token"] = next.map_or(Value::Null, Value::String);
    body
}

/// Storage access the load-table response hands to engines: what the
/// deployment configured for reading the bucket through R2's S3 API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageAccess {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl StorageAccess {
    /// The load-table `config` (the pyiceberg / Java `s3.*` keys).
    pub fn to_config(&self) -> Value {
        let mut config = serde_json::Map::new();
        let mut set = |k: &str, v: &Option<String>| {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                config.insert(k.to_string(), Value::String(v.clone()));
            }
        };
        set("s3.endpoint", &self.endpoint);
        set("s3.region", &self.region);
        set("s3.access-key-id", &self.access_key_id);
        set("s3.secret-access-key", &self.secret_access_key);
        if self.endpoint.is_some() {
            // R2 answers path-style requests on its account endpoint.
            config.insert("s3.path-style-access".into(), Value::String("true".into()));
        }
        Value::Object(config)
    }
}

/// A table's current metadata, as found in the object store.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedTable {
    /// The full URI of the current `v{N}.metadata.json`.
    pub metadata_location: String,
    /// Its content.
    pub metadata: Value,
}

impl LoadedTable {
    /// The load-table response.
    pub fn to_response(&self, access: &StorageAccess) -> Value {
        json!({
            "metadata-location": self.metadata_location,
            "metadata": self.metadata,
            "config": access.to_config(),
        })
    }
}

/// Finds the current metadata of `namespace.table` (keys relative to the
/// lake's base path, as the flush writes them): the version in
/// `version-hint.text`, then any newer `v{N}.metadata.json` (a commit whose
/// hint put did not happen yet). Reads only.
pub async fn load_table<O: ObjectStore>(
    objects: &O,
    namespace: &str,
    table: &str,
) -> Result<LoadedTable, CatalogError> {
    let paths = TablePaths::new(namespace, table).map_err(|_| no_such_table(namespace, table))?;
    let hinted = match objects.get(&paths.version_hint_key()).await? {
        Some(bytes) => crate::lake::parse_version_hint(&bytes).unwrap_or(0),
        None => 0,
    };
    let mut version = hinted;
    while objects.exists(&paths.metadata_key(version + 1)).await? {
        version += 1;
    }
    if version == 0 {
        return Err(no_such_table(namespace, table));
    }
    let key = paths.metadata_key(version);
    let bytes = objects
        .get(&key)
        .await?
        .ok_or_else(|| no_such_table(namespace, table))?;
    let metadata: Value = serde_json::from_slice(&bytes).map_err(|e| {
        CatalogError::new(
            CatalogErrorKind::Internal,
            format!("{key} is not JSON: {e}"),
        )
    })?;
    let location = metadata
        .get("location")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            CatalogError::new(
                CatalogErrorKind::Internal,
                format!("{key} has no `location`"),
            )
        })?
        .trim_end_matches('/');
    Ok(LoadedTable {
        metadata_location: format!("{location}/metadata/v{version}.metadata.json"),
        metadata,
    })
}

/// The tables of `history` (every table this instance's flushes committed
/// to) that are not in `registered` yet: what the instance still has to
/// register with the catalog instance.
pub fn unregistered(
    history: &crate::flush::FlushHistory,
    config: &crate::config::DoLakeConfig,
    registered: &std::collections::BTreeSet<TableId>,
) -> Vec<TableId> {
    history
        .known_tables()
        .iter()
        .map(|t| TableId {
            namespace: t.namespace(config).to_string(),
            name: t.name.clone(),
        })
        .filter(|t| !registered.contains(t))
        .collect()
}
