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
//!   [`RowIndex::apply_staged`] in one transaction.

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
    "CREATE TABLE IF NOT EXISTS cs_stage_rows (
        tbl TEXT NOT NULL,
        key TEXT NOT NULL,
        path TEXT,
        pos INTEGER,
        PRIMARY KEY (tbl, key)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS cs_stage_files (
        tbl TEXT NOT NULL,
        path TEXT NOT NULL,
        deleted BLOB,
        dropped INTEGER NOT NULL,
        PRIMARY KEY (tbl, path)) WITHOUT ROWID",
];

/// Rows per multi-row statement (Durable Object SQLite binds at most 100
/// parameters per statement).
const ROWS_PER_STATEMENT: usize = 24;

fn index_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::storage(format!("row index: {what}: {e}"))
}

fn bitmap_bytes(b: &RoaringBitmap) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(b.serialized_size());
    b.serialize_into(&mut out)
        .map_err(|e| index_error("encoding a bitmap", e))?;
    Ok(out)
}

fn int(v: &SqlStorageValue) -> Option<i64> {
    match v {
        SqlStorageValue::Integer(i) => Some(*i),
        SqlStorageValue::Float(f) => Some(*f as i64),
        _ => None,
    }
}

impl Store {
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
            "SELECT positions, has_stage, stage_positions FROM cs_state WHERE tbl = ?",
            vec![table.into()],
        )?;
        Ok(match rows.first() {
            None => IndexStatus::default(),
            Some(r) => IndexStatus {
                positions: r.first().and_then(int),
                staged: match r.get(1).and_then(int) {
                    Some(1) => r.get(2).and_then(int),
                    _ => None,
                },
            },
        })
    }

    fn lookup(&self, table: &str, keys: &[&str]) -> Result<HashMap<String, RowLoc>> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(90) {
            let marks = vec!["?"; chunk.len()].join(",");
            let query = format!(
                "SELECT r.key, f.path, r.pos FROM cs_rows r JOIN cs_files f ON f.id = r.file
                 WHERE r.tbl = ? AND r.key IN ({marks})"
            );
            let mut bindings: Vec<SqlStorageValue> = vec![table.into()];
            bindings.extend(chunk.iter().map(|k| SqlStorageValue::from(*k)));
            for r in self.rows(&query, bindings)? {
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
        let mut statements: Vec<Statement> = vec![
            (
                "DELETE FROM cs_stage_rows WHERE tbl = ?".into(),
                vec![table.into()],
            ),
            (
                "DELETE FROM cs_stage_files WHERE tbl = ?".into(),
                vec![table.into()],
            ),
        ];
        for chunk in change.rows.chunks(ROWS_PER_STATEMENT) {
            let values = vec!["(?, ?, ?, ?)"; chunk.len()].join(",");
            let mut bindings = Vec::with_capacity(chunk.len() * 4);
            for (key, loc) in chunk {
                bindings.push(table.into());
                bindings.push(key.as_str().into());
                match loc {
                    Some(l) => {
                        bindings.push(l.file.as_str().into());
                        bindings.push(i64::from(l.pos).into());
                    }
                    None => {
                        bindings.push(SqlStorageValue::Null);
                        bindings.push(SqlStorageValue::Null);
                    }
                }
            }
            statements.push((
                format!(
                    "INSERT OR REPLACE INTO cs_stage_rows (tbl, key, path, pos) VALUES {values}"
                )
                .into(),
                bindings,
            ));
        }
        for (path, bitmap) in &change.files {
            statements.push((
                "INSERT OR REPLACE INTO cs_stage_files (tbl, path, deleted, dropped)
                 VALUES (?, ?, ?, 0)"
                    .into(),
                vec![
                    table.into(),
                    path.as_str().into(),
                    bitmap_bytes(bitmap)?.into(),
                ],
            ));
        }
        for path in &change.dropped_files {
            statements.push((
                "INSERT OR REPLACE INTO cs_stage_files (tbl, path, deleted, dropped)
                 VALUES (?, ?, NULL, 1)"
                    .into(),
                vec![table.into(), path.as_str().into()],
            ));
        }
        let positions = match change.positions_id {
            Some(p) => SqlStorageValue::Integer(p),
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
        self.transaction(vec![
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
            (
                "DELETE FROM cs_rows WHERE tbl = ? AND key IN
                   (SELECT key FROM cs_stage_rows WHERE tbl = ? AND path IS NULL)"
                    .into(),
                tt(),
            ),
            (
                "INSERT OR REPLACE INTO cs_rows (tbl, key, file, pos)
                 SELECT s.tbl, s.key, f.id, s.pos FROM cs_stage_rows s
                 JOIN cs_files f ON f.tbl = s.tbl AND f.path = s.path
                 WHERE s.tbl = ? AND s.path IS NOT NULL"
                    .into(),
                t(),
            ),
            ("DELETE FROM cs_stage_rows WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_stage_files WHERE tbl = ?".into(), t()),
            (
                "UPDATE cs_state SET positions = stage_positions, has_stage = 0,
                   stage_positions = NULL WHERE tbl = ? AND has_stage = 1"
                    .into(),
                t(),
            ),
        ])
    }

    fn discard_staged(&self, table: &str) -> Result<()> {
        let t = || -> Vec<SqlStorageValue> { vec![table.into()] };
        self.transaction(vec![
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
            ("DELETE FROM cs_stage_rows WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_stage_files WHERE tbl = ?".into(), t()),
            ("DELETE FROM cs_state WHERE tbl = ?".into(), t()),
        ])
    }
}
