//! The row index of the current-state tables in Durable Object SQLite (the
//! [`RowIndex`] port; what it means is in `flush::current`).
//!
//! Tables, all keyed by the CDC table's name `tbl`:
//! - `cs_state(tbl, positions, has_stage, stage_positions)`: the positions
//!   id the index is at (NULL: unknown), and whether a change is staged;
//! - `cs_files(id, tbl, path, deleted)`: each data file of the table with
//!   its deleted positions as a portable Roaring bitmap (the encoding of
//!   Iceberg v3 deletion vectors' payload);
//! - `cs_rows(tbl, key, file, pos)`: where each live row key lies (the file
//!   by id, so a row costs its key plus two integers);
//! - `cs_stage_rows`, `cs_stage_files`: the staged change, applied by
//!   [`RowIndex::apply_staged`] in one transaction. Its rows are staged in
//!   chunks of at most [`CHUNK_BYTES`]: keys to remove as a JSON array of
//!   strings (`file` NULL), keys placed in one file as a JSON object
//!   `{key: position}` (`file`: the file's index among the staged files).
//!   Applied by SQL over `json_each`, whose `key` and `value` columns are
//!   the row's key and position (no JSON path per row): a few statements per
//!   change, not one per row (each statement crosses from WASM into the
//!   runtime), and the file's id looked up once per chunk.
//! - `cs_stage_chunks`: rows staged by versions before 2026-12 (JSON arrays
//!   `[key, file index, position]`, `[key]` removes); still applied.

use std::collections::{BTreeMap, HashMap};

use roaring::RoaringBitmap;
use worker::SqlStorageValue;

use super::store::{Statement, Store};
use crate::error::{Error, Result};
use crate::flush::ports::{IndexStatus, RowIndex};
use crate::lake::current::{IndexChange, RowLoc};

pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS cs_state (
        tbl TEXT PRIMARY KEY,
        positions INTEGER,
        has_stage INTEGER NOT NULL DEFAULT 0,
        stage_positions INTEGER)",
    "CREATE TABLE IF NOT EXISTS cs_files (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tbl TEXT NOT NULL,
        path TEXT NOT NULL,
        deleted BLOB NOT NULL,
        UNIQUE (tbl, path))",
    "CREATE TABLE IF NOT EXISTS cs_rows (
        tbl TEXT NOT NULL,
        key TEXT NOT NULL,
        file INTEGER NOT NULL,
        pos INTEGER NOT NULL,
        PRIMARY KEY (tbl, key)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS cs_stage_chunks (
        tbl TEXT NOT NULL,
        n INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (tbl, n)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS cs_stage_rows (
        tbl TEXT NOT NULL,
        n INTEGER NOT NULL,
        file INTEGER,
        data TEXT NOT NULL,
        PRIMARY KEY (tbl, n)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS cs_stage_files (
        tbl TEXT NOT NULL,
        idx INTEGER NOT NULL,
        path TEXT NOT NULL,
        deleted BLOB,
        dropped INTEGER NOT NULL,
        PRIMARY KEY (tbl, idx)) WITHOUT ROWID",
];

/// Largest JSON text bound to one statement (Durable Object SQLite holds
/// strings of up to 2 MB).
const CHUNK_BYTES: usize = 512 * 1024;

fn index_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::storage(format!("row index: {what}: {e}"))
}

fn bitmap_bytes(b: &RoaringBitmap) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(b.serialized_size());
    b.serialize_into(&mut out)
        .map_err(|e| index_error("encoding a bitmap", e))?;
    Ok(out)
}

/// `values` as JSON arrays of at most about [`CHUNK_BYTES`] of text each.
fn json_chunks(values: impl Iterator<Item = serde_json::Value>) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::from("[");
    for v in values {
        if cur.len() > 1 {
            cur.push(',');
        }
        cur.push_str(&v.to_string());
        if cur.len() >= CHUNK_BYTES {
            cur.push(']');
            out.push(std::mem::replace(&mut cur, String::from("[")));
        }
    }
    if cur.len() > 1 {
        cur.push(']');
        out.push(cur);
    }
    out
}

/// Staged rows in chunks of about [`CHUNK_BYTES`]: `(None, ["k", ...])` for
/// keys to remove, `(Some(file index), {"k": position, ...})` for keys placed
/// in that file.
fn staged_chunks(
    rows: &[(String, Option<RowLoc>)],
    file_idx: &HashMap<&str, usize>,
) -> Result<Vec<(Option<usize>, String)>> {
    let mut groups: BTreeMap<Option<usize>, Vec<(&str, u32)>> = BTreeMap::new();
    for (key, loc) in rows {
        let (file, pos) = match loc {
            None => (None, 0),
            Some(l) => {
                let idx = file_idx.get(l.file.as_str()).ok_or_else(|| {
                    index_error("staging", format!("row in {} not among the files", l.file))
                })?;
                (Some(*idx), l.pos)
            }
        };
        groups.entry(file).or_default().push((key, pos));
    }
    let mut out = Vec::new();
    for (file, rows) in groups {
        let (open, close) = if file.is_some() {
            ('{', '}')
        } else {
            ('[', ']')
        };
        let mut cur = String::from(open);
        for (key, pos) in rows {
            if cur.len() > 1 {
                cur.push(',');
            }
            cur.push_str(&serde_json::Value::from(key).to_string());
            if file.is_some() {
                cur.push(':');
                cur.push_str(&pos.to_string());
            }
            if cur.len() >= CHUNK_BYTES {
                cur.push(close);
                out.push((file, std::mem::replace(&mut cur, String::from(open))));
            }
        }
        if cur.len() > 1 {
            cur.push(close);
            out.push((file, cur));
        }
    }
    Ok(out)
}

/// A 64-bit integer read as text (`CAST(x AS TEXT)`): exact, unlike a
/// JavaScript number past 2^53.
fn exact_int(v: &SqlStorageValue) -> Option<i64> {
    match v {
        SqlStorageValue::String(s) => s.parse().ok(),
        other => int(other),
    }
}

fn int(v: &SqlStorageValue) -> Option<i64> {
    match v {
        SqlStorageValue::Integer(i) => Some(*i),
        SqlStorageValue::Float(f) => Some(*f as i64),
        _ => None,
    }
}

impl Store {
    /// The statements applying the staged rows of `table`: removals first,
    /// then placements, one statement per chunk.
    fn apply_rows_statements(&self, table: &str) -> Result<Vec<Statement>> {
        let chunks = self.rows(
            "SELECT n, file FROM cs_stage_rows WHERE tbl = ? ORDER BY file IS NOT NULL, n",
            vec![table.into()],
        )?;
        let mut statements: Vec<Statement> = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let n = chunk.first().and_then(int).unwrap_or(-1);
            let binds = |extra: Option<i64>| -> Vec<SqlStorageValue> {
                let mut b: Vec<SqlStorageValue> = vec![table.into(), n.into()];
                b.extend(extra.map(SqlStorageValue::from));
                b
            };
            match chunk.get(1).and_then(int) {
                None => statements.push((
                    "DELETE FROM cs_rows WHERE tbl = ?1 AND key IN (SELECT value FROM json_each(
                       (SELECT data FROM cs_stage_rows WHERE tbl = ?1 AND n = ?2)))"
                        .into(),
                    binds(None),
                )),
                Some(file) => statements.push((
                    "INSERT OR REPLACE INTO cs_rows (tbl, key, file, pos)
                     SELECT ?1, j.key,
                       (SELECT f.id FROM cs_stage_files s JOIN cs_files f
                          ON f.tbl = s.tbl AND f.path = s.path
                        WHERE s.tbl = ?1 AND s.idx = ?3),
                       j.value
                     FROM json_each((SELECT data FROM cs_stage_rows WHERE tbl = ?1 AND n = ?2)) j"
                        .into(),
                    binds(Some(file)),
                )),
            }
        }
        Ok(statements)
    }

    fn rows(
        &self,
        query: &str,
        bindings: Vec<SqlStorageValue>,
    ) -> Result<Vec<Vec<SqlStorageValue>>> {
        self.sql
            .exec(query, bindings)
            .map_err(|e| index_error("query", e))?
            .raw()
            .collect::<worker::Result<Vec<_>>>()
            .map_err(|e| index_error("reading rows", e))
    }

    /// Rows of the index, files, and bytes (for status).
    pub(super) fn index_size(&self) -> Result<(u64, u64)> {
        let rows = self.rows(
            "SELECT (SELECT count(*) FROM cs_rows), (SELECT count(*) FROM cs_files)",
            vec![],
        )?;
        let r = rows.first().ok_or_else(|| index_error("size", "no row"))?;
        Ok((
            r.first().and_then(int).unwrap_or(0) as u64,
            r.get(1).and_then(int).unwrap_or(0) as u64,
        ))
    }
}

impl RowIndex for Store {
    fn status(&self, table: &str) -> Result<IndexStatus> {
        let rows = self.rows(
            "SELECT CAST(positions AS TEXT), has_stage, CAST(stage_positions AS TEXT)
             FROM cs_state WHERE tbl = ?",
            vec![table.into()],
        )?;
        Ok(match rows.first() {
            None => IndexStatus::default(),
            Some(r) => IndexStatus {
                positions: r.first().and_then(exact_int),
                staged: match r.get(1).and_then(int) {
                    Some(1) => r.get(2).and_then(exact_int),
                    _ => None,
                },
            },
        })
    }

    fn lookup(&self, table: &str, keys: &[&str]) -> Result<HashMap<String, RowLoc>> {
        let mut out = HashMap::new();
        for chunk in json_chunks(keys.iter().map(|k| serde_json::Value::from(*k))) {
            let rows = self.rows(
                "SELECT r.key, f.path, r.pos FROM json_each(?) j
                 CROSS JOIN cs_rows r CROSS JOIN cs_files f
                 WHERE r.tbl = ? AND r.key = j.value AND f.id = r.file",
                vec![chunk.into(), table.into()],
            )?;
            for r in rows {
                if let [SqlStorageValue::String(key), SqlStorageValue::String(path), pos] = &r[..] {
                    let pos = int(pos)
                        .and_then(|p| u32::try_from(p).ok())
                        .ok_or_else(|| index_error("lookup", "a position out of range"))?;
                    out.insert(
                        key.clone(),
                        RowLoc {
                            file: path.clone(),
                            pos,
                        },
                    );
                }
            }
        }
        Ok(out)
    }

    fn deleted(&self, table: &str, files: &[&str]) -> Result<BTreeMap<String, RoaringBitmap>> {
        let mut out = BTreeMap::new();
        for chunk in files.chunks(90) {
            let marks = vec!["?"; chunk.len()].join(",");
            let query =
                format!("SELECT path, deleted FROM cs_files WHERE tbl = ? AND path IN ({marks})");
            let mut bindings: Vec<SqlStorageValue> = vec![table.into()];
            bindings.extend(chunk.iter().map(|k| SqlStorageValue::from(*k)));
            for r in self.rows(&query, bindings)? {
                if let [SqlStorageValue::String(path), SqlStorageValue::Blob(bytes)] = &r[..] {
                    let bitmap = RoaringBitmap::deserialize_from(&bytes[..])
                        .map_err(|e| index_error("decoding a bitmap", e))?;
                    out.insert(path.clone(), bitmap);
                }
            }
        }
        Ok(out)
    }

    fn stage(&self, table: &str, change: &IndexChange) -> Result<()> {
        let t = || -> Vec<SqlStorageValue> { vec![table.into()] };
        let mut statements: Vec<Statement> = vec![
            ("DELETE FROM cs_stage_chunks WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_stage_rows WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_stage_files WHERE tbl = ?".into(), t()),
        ];
        let mut file_idx: HashMap<&str, usize> = HashMap::new();
        for (path, bitmap) in &change.files {
            let idx = file_idx.len();
            file_idx.insert(path.as_str(), idx);
            statements.push((
                "INSERT INTO cs_stage_files (tbl, idx, path, deleted, dropped)
                 VALUES (?, ?, ?, ?, 0)"
                    .into(),
                vec![
                    table.into(),
                    (idx as i64).into(),
                    path.as_str().into(),
                    bitmap_bytes(bitmap)?.into(),
                ],
            ));
        }
        // Dropped files come after; no staged row names them.
        for (i, path) in change.dropped_files.iter().enumerate() {
            let idx = change.files.len() + i;
            statements.push((
                "INSERT INTO cs_stage_files (tbl, idx, path, deleted, dropped)
                 VALUES (?, ?, ?, NULL, 1)"
                    .into(),
                vec![table.into(), (idx as i64).into(), path.as_str().into()],
            ));
        }
        let chunks = staged_chunks(&change.rows, &file_idx)?;
        for (n, (file, chunk)) in chunks.into_iter().enumerate() {
            let file = file.map_or(SqlStorageValue::Null, |f| (f as i64).into());
            statements.push((
                "INSERT INTO cs_stage_rows (tbl, n, file, data) VALUES (?, ?, ?, ?)".into(),
                vec![table.into(), (n as i64).into(), file, chunk.into()],
            ));
        }
        // Snapshot ids use all 63 bits: a JavaScript number would round
        // them, so they cross as text (stored as integers by the column's
        // affinity, read back as text; see `exact_int`).
        let positions = match change.positions_id {
            Some(p) => SqlStorageValue::String(p.to_string()),
            None => SqlStorageValue::Null,
        };
        statements.push((
            "INSERT INTO cs_state (tbl, positions, has_stage, stage_positions)
             VALUES (?, NULL, 1, ?)
             ON CONFLICT(tbl) DO UPDATE SET has_stage = 1,
                stage_positions = excluded.stage_positions"
                .into(),
            vec![table.into(), positions],
        ));
        self.transaction(statements)
    }

    fn apply_staged(&self, table: &str) -> Result<()> {
        let t = || -> Vec<SqlStorageValue> { vec![table.into()] };
        let tt = || -> Vec<SqlStorageValue> { vec![table.into(), table.into()] };
        let chunks = self
            .rows("SELECT n FROM cs_stage_chunks WHERE tbl = ?", t())?
            .iter()
            .filter_map(|r| r.first().and_then(int))
            .collect::<Vec<i64>>();
        let mut statements: Vec<Statement> = vec![
            (
                "DELETE FROM cs_rows WHERE tbl = ? AND file IN (SELECT f.id FROM cs_files f
                   JOIN cs_stage_files s ON s.tbl = f.tbl AND s.path = f.path
                   WHERE f.tbl = ? AND s.dropped = 1)"
                    .into(),
                tt(),
            ),
            (
                "DELETE FROM cs_files WHERE tbl = ? AND path IN
                   (SELECT path FROM cs_stage_files WHERE tbl = ? AND dropped = 1)"
                    .into(),
                tt(),
            ),
            (
                "INSERT INTO cs_files (tbl, path, deleted)
                 SELECT tbl, path, deleted FROM cs_stage_files WHERE tbl = ? AND dropped = 0
                 ON CONFLICT(tbl, path) DO UPDATE SET deleted = excluded.deleted"
                    .into(),
                t(),
            ),
        ];
        // Rows staged by an earlier version (see the module docs).
        for n in chunks {
            let chunk = || -> Vec<SqlStorageValue> { vec![table.into(), n.into(), table.into()] };
            statements.push((
                "DELETE FROM cs_rows WHERE tbl = ?3 AND key IN
                   (SELECT json_extract(j.value, '$[0]') FROM json_each(
                      (SELECT data FROM cs_stage_chunks WHERE tbl = ?1 AND n = ?2)) j
                    WHERE json_array_length(j.value) = 1)"
                    .into(),
                chunk(),
            ));
            statements.push((
                "INSERT OR REPLACE INTO cs_rows (tbl, key, file, pos)
                 SELECT ?3, json_extract(j.value, '$[0]'), f.id, json_extract(j.value, '$[2]')
                 FROM json_each((SELECT data FROM cs_stage_chunks WHERE tbl = ?1 AND n = ?2)) j
                 CROSS JOIN cs_stage_files s CROSS JOIN cs_files f
                 WHERE json_array_length(j.value) = 3
                   AND s.tbl = ?3 AND s.idx = json_extract(j.value, '$[1]')
                   AND f.tbl = ?3 AND f.path = s.path"
                    .into(),
                chunk(),
            ));
        }
        statements.extend(self.apply_rows_statements(table)?);
        statements.extend([
            ("DELETE FROM cs_stage_chunks WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_stage_rows WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_stage_files WHERE tbl = ?".into(), t()),
            (
                "UPDATE cs_state SET positions = stage_positions, has_stage = 0,
                   stage_positions = NULL WHERE tbl = ? AND has_stage = 1"
                    .into(),
                t(),
            ),
        ]);
        self.transaction(statements)
    }

    fn discard_staged(&self, table: &str) -> Result<()> {
        let t = || -> Vec<SqlStorageValue> { vec![table.into()] };
        self.transaction(vec![
            ("DELETE FROM cs_stage_chunks WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_stage_rows WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_stage_files WHERE tbl = ?".into(), t()),
            (
                "UPDATE cs_state SET has_stage = 0, stage_positions = NULL WHERE tbl = ?".into(),
                t(),
            ),
        ])
    }

    fn clear(&self, table: &str) -> Result<()> {
        let t = || -> Vec<SqlStorageValue> { vec![table.into()] };
        self.transaction(vec![
            ("DELETE FROM cs_rows WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_files WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_stage_chunks WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_stage_rows WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_stage_files WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_state WHERE tbl = ?".into(), t()),
        ])
    }
}
