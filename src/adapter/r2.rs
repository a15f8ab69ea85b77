//! The lake in R2: reading a table's current state and putting a commit's
//! objects, the metadata file only if absent.

use std::cell::RefCell;

use worker::{Bucket, Conditional};

use crate::error::{Error, ErrorKind, Result};
use crate::flush::faults::{CommitStep, FaultPlan};
use crate::lake::{ObjectKind, PutObject, TablePaths, TableState};

fn lake_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Lake, format!("{what}: {e}"))
}

/// The lakehouse bucket under `r2BasePath`.
pub struct Lake {
    bucket: Bucket,
    base: String,
    /// Injected failures (tests only; empty otherwise).
    pub faults: RefCell<FaultPlan>,
}

/// The outcome of putting a commit.
pub enum PutOutcome {
    /// Every object was put; bytes written and keys.
    Committed(u64, Vec<String>),
    /// Another writer created this metadata version first.
    Conflict,
}

impl Lake {
    /// The bucket, with keys under `base` (no leading or trailing slash).
    pub fn new(bucket: Bucket, base: &str) -> Self {
        Self {
            bucket,
            base: base.trim_matches('/').to_string(),
            faults: RefCell::new(FaultPlan::default()),
        }
    }

    fn full_key(&self, key: &str) -> String {
        if self.base.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.base)
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let full = self.full_key(key);
        let object = self
            .bucket
            .get(full.as_str())
            .execute()
            .await
            .map_err(|e| lake_error(&format!("reading {full}"), e))?;
        let Some(object) = object else {
            return Ok(None);
        };
        match object.body() {
            Some(body) => Ok(Some(
                body.bytes()
                    .await
                    .map_err(|e| lake_error(&format!("reading {full}"), e))?,
            )),
            None => Ok(None),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        let full = self.full_key(key);
        self.bucket
            .head(full.as_str())
            .await
            .map(|o| o.is_some())
            .map_err(|e| lake_error(&format!("checking {full}"), e))
    }

    /// The table's current state, or `None` when it does not exist yet.
    ///
    /// `version-hint.text` is written after the metadata file, so after a
    /// crash between the two it lags: newer `v{N}.metadata.json` files are
    /// looked for past it, and the newest one is current.
    pub async fn load_table(&self, paths: &TablePaths) -> Result<Option<TableState>> {
        let hint = match self.get(&paths.version_hint_key()).await? {
            Some(bytes) => crate::lake::parse_version_hint(&bytes)?,
            None => 0,
        };
        let mut version = hint;
        while self.exists(&paths.metadata_key(version + 1)).await? {
            version += 1;
        }
        if version == 0 {
            return Ok(None);
        }
        let metadata_key = paths.metadata_key(version);
        let metadata = self.get(&metadata_key).await?.ok_or_else(|| {
            lake_error("reading table metadata", format!("{metadata_key} vanished"))
        })?;
        let parsed = crate::lake::TableMetadata::from_json(&metadata)?;
        let list = match paths.manifest_list_key(&parsed)? {
            Some(key) => Some(self.get(&key).await?.ok_or_else(|| {
                lake_error("reading the manifest list", format!("{key} is missing"))
            })?),
            None => None,
        };
        TableState::from_objects(version.to_string().as_bytes(), &metadata, list.as_deref())
            .map(Some)
    }

    /// Puts a commit's objects in order; the metadata file only if absent.
    pub async fn put_commit(&self, puts: Vec<PutObject>) -> Result<PutOutcome> {
        let mut bytes = 0u64;
        let mut keys = Vec::with_capacity(puts.len());
        let kinds: Vec<ObjectKind> = puts.iter().map(|p| p.kind).collect();
        for (i, put) in puts.into_iter().enumerate() {
            let full = self.full_key(&put.key);
            let injected = self
                .faults
                .borrow_mut()
                .before_put(&full, worker::Date::now().as_millis() as i64);
            if let Some(why) = injected {
                return Err(lake_error(&format!("writing {full}"), why));
            }
            let size = put.bytes.len() as u64;
            let mut request = self.bucket.put(full.as_str(), put.bytes);
            if put.kind == ObjectKind::Metadata {
                request = request.only_if(Conditional {
                    etag_does_not_match: Some("*".to_string()),
                    ..Conditional::default()
                });
            }
            let stored = request
                .execute()
                .await
                .map_err(|e| lake_error(&format!("writing {full}"), e))?;
            if stored.is_none() {
                if put.kind == ObjectKind::Metadata {
                    return Ok(PutOutcome::Conflict);
                }
                return Err(lake_error(&format!("writing {full}"), "R2 refused the put"));
            }
            bytes += size;
            keys.push(full);
            let step_done = kinds.get(i + 1).map(|next| CommitStep::after(*next))
                != Some(CommitStep::after(put.kind));
            if step_done
                && self
                    .faults
                    .borrow()
                    .pauses_after(CommitStep::after(put.kind))
            {
                super::object::log(
                    "warn",
                    "test_pause",
                    serde_json::json!({"step": format!("{:?}", CommitStep::after(put.kind)), "key": keys.last()}),
                );
                worker::Delay::from(std::time::Duration::from_secs(600)).await;
            }
        }
        Ok(PutOutcome::Committed(bytes, keys))
    }
}
