//! Durable Object storage of the buffer and of source progress (SQLite).
//!
//! Tables:
//! - `meta(key, value)`: counters of the object itself.
//! - `sources(source_id, state)`: each source's [`SourceState`] as JSON,
//!   including its dedup watermarks.
//! - `batches(...)`: one row per stored batch, with its accounting.
//! - `batch_chunks(batch_id, idx, data)`: the batch's events as JSON text, in
//!   pieces below the 2 MB row limit of Durable Object SQLite.
//!
//! A batch, its chunks and its source's new state are written in one
//! `transactionSync`: all or nothing.

use serde::Deserialize;
use worker::js_sys::{Function, Reflect};
use worker::wasm_bindgen::closure::Closure;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{SqlStorage, SqlStorageValue, Storage};

use crate::error::{Error, Result};
use crate::flush::{BufferedBatch, FlushHistory, LoadedBatch};
use crate::intake::decode_events;
use crate::intake::{BufferTotals, SourceState, StorePlan};

/// Largest piece of a batch's JSON in one row. A batch that fits is stored
/// in its own row (`batches.payload`, one statement); a larger one in
/// `batch_chunks` rows (`batches.chunks` of them, `payload` NULL).
const CHUNK_BYTES: usize = 1_000_000;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sources (source_id TEXT PRIMARY KEY, state TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS batches (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source_id TEXT NOT NULL,
        batch_seq TEXT NOT NULL,
        first_event_seq TEXT NOT NULL,
        last_event_seq TEXT NOT NULL,
        event_count INTEGER NOT NULL,
        size_bytes INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        tables TEXT NOT NULL,
        chunks INTEGER NOT NULL,
        payload TEXT)",
    "CREATE TABLE IF NOT EXISTS batch_chunks (
        batch_id INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (batch_id, idx))",
];

fn storage_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::storage(format!("{what}: {e}"))
}

/// One SQL statement with its bindings.
pub(super) type Statement = (std::borrow::Cow<'static, str>, Vec<SqlStorageValue>);

/// The SQLite storage of one DoLake object.
pub struct Store {
    storage: Storage,
    pub(super) sql: SqlStorage,
}

#[derive(Deserialize)]
struct StateRow {
    state: String,
}

#[derive(Deserialize)]
struct TotalsRow {
    batches: i64,
    events: i64,
    bytes: i64,
    oldest: Option<i64>,
    newest: Option<i64>,
}

#[derive(Deserialize)]
struct ValueRow {
    value: String,
}

#[derive(Deserialize)]
struct BatchSizeRow {
    id: i64,
    size_bytes: i64,
}

#[derive(Deserialize)]
struct BatchRow {
    id: i64,
    source_id: String,
    batch_seq: String,
    payload: Option<String>,
}

#[derive(Deserialize)]
struct ChunkRow {
    batch_id: i64,
    data: String,
}

impl Store {
    /// Opens the storage, creating the tables on first use.
    pub fn open(storage: Storage) -> Result<Self> {
        let sql = storage.sql();
        for statement in SCHEMA
            .iter()
            .chain(super::index::SCHEMA)
            .chain(super::catalog::SCHEMA)
        {
            sql.exec(statement, None)
                .map_err(|e| storage_error("creating tables", e))?;
        }
        // Buffers written before batches kept their payload in their row.
        let columns: Vec<serde_json::Value> = sql
            .exec(
                "SELECT name FROM pragma_table_info('batches') WHERE name = 'payload'",
                None,
            )
            .and_then(|c| c.to_array())
            .map_err(|e| storage_error("reading the batches table", e))?;
        if columns.is_empty() {
            sql.exec("ALTER TABLE batches ADD COLUMN payload TEXT", None)
                .map_err(|e| storage_error("adding batches.payload", e))?;
        }
        Ok(Self { storage, sql })
    }

    /// Counts this construction of the object; returns the count.
    pub fn count_construction(&self) -> Result<u64> {
        self.sql
            .exec(
                "INSERT INTO meta (key, value) VALUES ('constructions', '1')
                 ON CONFLICT(key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
                None,
            )
            .map_err(|e| storage_error("counting constructions", e))?;
        let rows: Vec<ValueRow> = self
            .sql
            .exec("SELECT value FROM meta WHERE key = 'constructions'", None)
            .and_then(|c| c.to_array())
            .map_err(|e| storage_error("reading constructions", e))?;
        Ok(rows.first().and_then(|r| r.value.parse().ok()).unwrap_or(1))
    }

    /// A meta value.
    fn meta(&self, key: &str) -> Result<Option<String>> {
        let rows: Vec<ValueRow> = self
            .sql
            .exec("SELECT value FROM meta WHERE key = ?", vec![key.into()])
            .and_then(|c| c.to_array())
            .map_err(|e| storage_error("reading meta", e))?;
        Ok(rows.into_iter().next().map(|r| r.value))
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.sql
            .exec(
                "INSERT INTO meta (key, value) VALUES (?, ?)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                vec![key.into(), value.into()],
            )
            .map(|_| ())
            .map_err(|e| storage_error("writing meta", e))
    }

    /// The buffer's epoch: drawn once when the storage is created, it tells
    /// this buffer's row ids apart from any other's in the tables' marks.
    pub fn epoch(&self, fresh: impl FnOnce() -> String) -> Result<String> {
        if let Some(epoch) = self.meta("epoch")? {
            return Ok(epoch);
        }
        let epoch = fresh();
        self.set_meta("epoch", &epoch)?;
        Ok(epoch)
    }

    /// A JSON value kept under `key` in `meta`.
    pub fn load_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.meta(key)? {
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| storage_error(&format!("decoding {key}"), e)),
            None => Ok(None),
        }
    }

    /// Keeps a JSON value under `key` in `meta`.
    pub fn save_json<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let text = serde_json::to_string(value)
            .map_err(|e| storage_error(&format!("encoding {key}"), e))?;
        self.set_meta(key, &text)
    }

    /// The flush history.
    pub fn load_history(&self) -> Result<FlushHistory> {
        match self.meta("flush_history")? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| storage_error("decoding the flush history", e)),
            None => Ok(FlushHistory::default()),
        }
    }

    /// Writes the flush history.
    pub fn save_history(&self, history: &FlushHistory) -> Result<()> {
        let text = serde_json::to_string(history)
            .map_err(|e| storage_error("encoding the flush history", e))?;
        self.set_meta("flush_history", &text)
    }

    /// The oldest buffered batches (id and size), at most `limit`.
    pub fn list_batches(&self, limit: u32) -> Result<Vec<BufferedBatch>> {
        let rows: Vec<BatchSizeRow> = self
            .sql
            .exec(
                "SELECT id, size_bytes FROM batches ORDER BY id LIMIT ?",
                vec![(limit as i64).into()],
            )
            .and_then(|c| c.to_array())
            .map_err(|e| storage_error("listing batches", e))?;
        Ok(rows
            .into_iter()
            .map(|r| BufferedBatch {
                row_id: r.id,
                size_bytes: r.size_bytes as u64,
            })
            .collect())
    }

    /// The batches with ids in `first..=last`, with their events.
    pub fn load_batches(&self, first: i64, last: i64) -> Result<Vec<LoadedBatch>> {
        let rows: Vec<BatchRow> = self
            .sql
            .exec(
                "SELECT id, source_id, batch_seq, payload FROM batches
                 WHERE id BETWEEN ? AND ? ORDER BY id",
                vec![first.into(), last.into()],
            )
            .and_then(|c| c.to_array())
            .map_err(|e| storage_error("reading batches", e))?;
        let chunks: Vec<ChunkRow> = self
            .sql
            .exec(
                "SELECT batch_id, data FROM batch_chunks WHERE batch_id BETWEEN ? AND ?
                 ORDER BY batch_id, idx",
                vec![first.into(), last.into()],
            )
            .and_then(|c| c.to_array())
            .map_err(|e| storage_error("reading batch chunks", e))?;
        let mut chunks = chunks.into_iter().peekable();
        let mut batches = Vec::with_capacity(rows.len());
        for row in rows {
            let mut payload = row.payload.unwrap_or_default();
            while let Some(chunk) = chunks.next_if(|c| c.batch_id <= row.id) {
                if chunk.batch_id == row.id {
                    payload.push_str(&chunk.data);
                }
            }
            batches.push(LoadedBatch {
                row_id: row.id,
                source_id: row.source_id,
                batch_seq: row.batch_seq.parse().unwrap_or_default(),
                events: decode_events(&payload)?,
            });
        }
        Ok(batches)
    }

    /// Removes the batches with ids up to `last` (committed to every table).
    pub fn delete_batches(&self, last: i64) -> Result<()> {
        self.transaction(vec![
            (
                "DELETE FROM batch_chunks WHERE batch_id <= ?".into(),
                vec![last.into()],
            ),
            (
                "DELETE FROM batches WHERE id <= ?".into(),
                vec![last.into()],
            ),
        ])
    }

    /// Every known source.
    pub fn load_sources(&self) -> Result<Vec<SourceState>> {
        let rows: Vec<StateRow> = self
            .sql
            .exec("SELECT state FROM sources", None)
            .and_then(|c| c.to_array())
            .map_err(|e| storage_error("reading sources", e))?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(&r.state).map_err(|e| storage_error("decoding a source", e))
            })
            .collect()
    }

    /// The buffer totals, computed from the stored batches.
    pub fn load_totals(&self) -> Result<BufferTotals> {
        let rows: Vec<TotalsRow> = self
            .sql
            .exec(
                "SELECT count(*) AS batches, coalesce(sum(event_count), 0) AS events,
                        coalesce(sum(size_bytes), 0) AS bytes,
                        min(received_at) AS oldest, max(received_at) AS newest
                 FROM batches",
                None,
            )
            .and_then(|c| c.to_array())
            .map_err(|e| storage_error("reading buffer totals", e))?;
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| Error::storage("buffer totals query returned no row"))?;
        Ok(BufferTotals {
            batches: row.batches as u64,
            events: row.events as u64,
            bytes: row.bytes as u64,
            oldest_ms: row.oldest,
            newest_ms: row.newest,
            refused_full: false,
        })
    }

    /// Writes a source's state.
    pub fn save_source(&self, source: &SourceState) -> Result<()> {
        let statement = source_statement(source)?;
        self.sql
            .exec(&statement.0, statement.1)
            .map(|_| ())
            .map_err(|e| storage_error("writing a source", e))
    }

    /// Makes a plan durable: the batch, its chunks and the source state, in one
    /// transaction.
    pub fn write_plan(&self, plan: &StorePlan) -> Result<()> {
        let mut statements: Vec<Statement> = vec![source_statement(&plan.source)?];
        for id in &plan.evicted {
            statements.push((
                "DELETE FROM sources WHERE source_id = ?".into(),
                vec![id.as_str().into()],
            ));
        }
        if let Some(record) = &plan.record {
            let mut chunks = record.payload_chunks(CHUNK_BYTES);
            let inline = if chunks.len() == 1 {
                chunks.pop()
            } else {
                None
            };
            let tables = serde_json::to_string(&record.tables)
                .map_err(|e| storage_error("encoding tables", e))?;
            statements.push((
                "INSERT INTO batches (source_id, batch_seq, first_event_seq, last_event_seq,
                    event_count, size_bytes, received_at, tables, chunks, payload)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    .into(),
                vec![
                    record.source_id.as_str().into(),
                    record.batch_seq.to_string().into(),
                    record.first_event_seq.to_string().into(),
                    record.last_event_seq.to_string().into(),
                    (record.event_count as i64).into(),
                    (record.size_bytes as i64).into(),
                    record.received_at.into(),
                    tables.into(),
                    (chunks.len() as i64).into(),
                    inline.map_or(SqlStorageValue::Null, SqlStorageValue::from),
                ],
            ));
            for (idx, chunk) in chunks.into_iter().enumerate() {
                statements.push((
                    "INSERT INTO batch_chunks (batch_id, idx, data)
                     VALUES ((SELECT max(id) FROM batches), ?, ?)"
                        .into(),
                    vec![(idx as i64).into(), chunk.into()],
                ));
            }
        }
        self.transaction(statements)
    }

    /// Runs statements in `storage.transactionSync`, so they commit together
    /// or not at all.
    pub(super) fn transaction(&self, statements: Vec<Statement>) -> Result<()> {
        let raw: &JsValue = self.storage.as_raw().as_ref();
        let function: Function = Reflect::get(raw, &JsValue::from_str("transactionSync"))
            .ok()
            .and_then(|f| f.dyn_into().ok())
            .ok_or_else(|| Error::storage("storage.transactionSync is not available"))?;
        let sql = self.sql.clone();
        let body = Closure::once(move || -> std::result::Result<(), JsValue> {
            for (query, bindings) in statements {
                sql.exec(&query, bindings)
                    .map_err(|e| JsValue::from_str(&e.to_string()))?;
            }
            Ok(())
        });
        function
            .call1(raw, body.as_ref().unchecked_ref())
            .map(|_| ())
            .map_err(|e| storage_error("storing the batch", format!("{e:?}")))
    }

    /// Size of the SQLite database, bytes.
    pub fn database_size(&self) -> usize {
        self.sql.database_size()
    }
}

fn source_statement(source: &SourceState) -> Result<Statement> {
    let state = serde_json::to_string(source).map_err(|e| storage_error("encoding a source", e))?;
    Ok((
        "INSERT INTO sources (source_id, state) VALUES (?, ?)
         ON CONFLICT(source_id) DO UPDATE SET state = excluded.state"
            .into(),
        vec![source.source_id.as_str().into(), state.into()],
    ))
}
