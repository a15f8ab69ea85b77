//! Durable Object storage of the buffer and of source progress (SQLite).
//!
//! Tables:
//! - `meta(key, value)`: counters of the object itself.
//! - `sources(source_id, state, folded_through)`: each source's
//!   [`SourceState`] as JSON, including its dedup watermarks, as of the
//!   batch with id `folded_through` (the highest id when it was written).
//! - `batches(...)`: one row per stored batch, with its accounting and what
//!   it adds to its source ([`BatchFacts`]: the source's row is not rewritten
//!   with every batch; batches past `folded_through` are replayed onto it at
//!   start-up).
//! - `batch_chunks(batch_id, idx, data)`: the batch's events as JSON text, in
//!   pieces below the 2 MB row limit of Durable Object SQLite.
//!
//! A batch that fits in its row is one statement. One in pieces, or written
//! with its source's row, is written in one `transactionSync`: all or
//! nothing. The flush deletes batches and writes the rows of the sources
//! that lack them in one transaction too.

use serde::Deserialize;
use worker::js_sys::{Function, Reflect};
use worker::wasm_bindgen::closure::Closure;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{SqlStorage, SqlStorageValue, Storage};

use crate::error::{Error, Result};
use crate::flush::{BufferedBatch, FlushHistory, LoadedBatch};
use crate::intake::decode_events;
use crate::intake::{BatchFacts, BufferTotals, SourceState, StorePlan};

/// Largest piece of a batch's JSON in one row. A batch that fits is stored
/// in its own row (`batches.payload`, one statement); a larger one in
/// `batch_chunks` rows (`batches.chunks` of them, `payload` NULL).
const CHUNK_BYTES: usize = 1_000_000;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sources (source_id TEXT PRIMARY KEY, state TEXT NOT NULL,
        folded_through INTEGER NOT NULL DEFAULT 0)",
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
        payload TEXT,
        fingerprint TEXT)",
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
struct FactsRow {
    source_id: String,
    batch_seq: String,
    last_event_seq: String,
    event_count: i64,
    size_bytes: i64,
    received_at: i64,
    fingerprint: Option<String>,
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
        let store = Self { storage, sql };
        // Buffers written before batches kept their payload in their row.
        if !store.has_column("batches", "payload")? {
            store.transaction(vec![(
                "ALTER TABLE batches ADD COLUMN payload TEXT".into(),
                vec![],
            )])?;
        }
        // Sources written before batches kept what they add to their source:
        // every source's row included all its batches.
        if !store.has_column("sources", "folded_through")? {
            store.transaction(vec![
                (
                    "ALTER TABLE batches ADD COLUMN fingerprint TEXT".into(),
                    vec![],
                ),
                (
                    "ALTER TABLE sources ADD COLUMN folded_through INTEGER NOT NULL DEFAULT 0"
                        .into(),
                    vec![],
                ),
                (
                    "UPDATE sources SET folded_through = (SELECT coalesce(max(id), 0) FROM batches)"
                        .into(),
                    vec![],
                ),
            ])?;
        }
        Ok(store)
    }

    fn has_column(&self, table: &str, column: &str) -> Result<bool> {
        let columns: Vec<serde_json::Value> = self
            .sql
            .exec(
                "SELECT name FROM pragma_table_info(?) WHERE name = ?",
                vec![table.into(), column.into()],
            )
            .and_then(|c| c.to_array())
            .map_err(|e| storage_error("reading a table's columns", e))?;
        Ok(!columns.is_empty())
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

    /// Removes the batches with ids up to `last` (committed to every table),
    /// writing first the rows of `unfolded`, the sources whose rows lack some
    /// of their batches (all of them: their states hold every stored batch).
    pub fn delete_batches<'a>(
        &self,
        last: i64,
        unfolded: impl Iterator<Item = &'a SourceState>,
    ) -> Result<()> {
        let mut statements = unfolded.map(source_statement).collect::<Result<Vec<_>>>()?;
        statements.push((
            "DELETE FROM batch_chunks WHERE batch_id <= ?".into(),
            vec![last.into()],
        ));
        statements.push((
            "DELETE FROM batches WHERE id <= ?".into(),
            vec![last.into()],
        ));
        self.transaction(statements)
    }

    /// What the stored batches that their sources' rows do not include add
    /// to them, in the order they were stored.
    pub fn load_unfolded(&self) -> Result<Vec<BatchFacts>> {
        let rows: Vec<FactsRow> = self
            .sql
            .exec(
                "SELECT b.source_id, b.batch_seq, b.last_event_seq, b.event_count, b.size_bytes,
                        b.received_at, b.fingerprint
                 FROM batches b JOIN sources s ON s.source_id = b.source_id
                 WHERE b.id > s.folded_through ORDER BY b.id",
                None,
            )
            .and_then(|c| c.to_array())
            .map_err(|e| storage_error("reading unfolded batches", e))?;
        rows.into_iter()
            .map(|r| {
                let number = |text: &str| {
                    text.parse::<u64>()
                        .map_err(|e| storage_error("decoding a batch's facts", e))
                };
                Ok(BatchFacts {
                    batch_seq: number(&r.batch_seq)?,
                    last_event_seq: number(&r.last_event_seq)?,
                    event_count: r.event_count as u64,
                    size_bytes: r.size_bytes as u64,
                    received_at: r.received_at,
                    fingerprint: r.fingerprint.as_deref().map(number).transpose()?,
                    source_id: r.source_id,
                })
            })
            .collect()
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

    /// Makes a plan durable: the batch, its chunks and, when the plan says
    /// so, the source's row; one statement when the batch fits in its row and
    /// the source's row is not written, else one transaction.
    pub fn write_plan(&self, plan: &StorePlan) -> Result<()> {
        let mut statements: Vec<Statement> = Vec::new();
        for id in &plan.evicted {
            statements.push((
                "DELETE FROM sources WHERE source_id = ?".into(),
                vec![id.as_str().into()],
            ));
        }
        let record = &plan.record;
        let facts = &record.facts;
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
                event_count, size_bytes, received_at, tables, chunks, payload, fingerprint)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                .into(),
            vec![
                facts.source_id.as_str().into(),
                facts.batch_seq.to_string().into(),
                record.first_event_seq.to_string().into(),
                facts.last_event_seq.to_string().into(),
                (facts.event_count as i64).into(),
                (facts.size_bytes as i64).into(),
                facts.received_at.into(),
                tables.into(),
                (chunks.len() as i64).into(),
                inline.map_or(SqlStorageValue::Null, SqlStorageValue::from),
                facts
                    .fingerprint
                    .map_or(SqlStorageValue::Null, |f| f.to_string().into()),
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
        // After the batch: the row's `folded_through` then includes it.
        if let Some(source) = &plan.source {
            statements.push(source_statement(source)?);
        }
        match <[Statement; 1]>::try_from(statements) {
            Ok([(query, bindings)]) => self
                .sql
                .exec(&query, bindings)
                .map(|_| ())
                .map_err(|e| storage_error("storing the batch", e)),
            Err(statements) => self.transaction(statements),
        }
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

/// Writes a source's row. Its state holds every stored batch (intake applies
/// a batch when its write returns), so it is folded through the highest id.
fn source_statement(source: &SourceState) -> Result<Statement> {
    let state = serde_json::to_string(source).map_err(|e| storage_error("encoding a source", e))?;
    Ok((
        "INSERT INTO sources (source_id, state, folded_through)
         VALUES (?, ?, (SELECT coalesce(max(id), 0) FROM batches))
         ON CONFLICT(source_id) DO UPDATE SET state = excluded.state,
             folded_through = excluded.folded_through"
            .into(),
        vec![source.source_id.as_str().into(), state.into()],
    ))
}
