//! The lake in R2: the flush's object store (keys under `r2BasePath`,
//! conditional puts), with test-only failure injection.

use std::cell::RefCell;

use worker::{Bucket, Conditional};

use crate::error::{Error, ErrorKind, Result};
use crate::flush::faults::{CommitStep, FaultPlan};
use crate::flush::ports::{Listed, ObjectStore, Part, Put};

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
}

impl ObjectStore for Lake {
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

    async fn put(&self, key: &str, bytes: Vec<u8>, if_absent: bool) -> Result<Put> {
        let full = self.full_key(key);
        let injected = self
            .faults
            .borrow_mut()
            .before_put(&full, worker::Date::now().as_millis() as i64);
        if let Some(why) = injected {
            return Err(lake_error(&format!("writing {full}"), why));
        }
        let mut request = self.bucket.put(full.as_str(), bytes);
        if if_absent {
            request = request.only_if(Conditional {
                etag_does_not_match: Some("*".to_string()),
                ..Conditional::default()
            });
        }
        let stored = request
            .execute()
            .await
            .map_err(|e| lake_error(&format!("writing {full}"), e))?;
        Ok(if stored.is_some() {
            Put::Stored
        } else {
            Put::Exists
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key);
        self.bucket
            .delete(full.as_str())
            .await
            .map_err(|e| lake_error(&format!("deleting {full}"), e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let full = self.full_key(prefix);
        let strip = self.full_key("");
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request = self.bucket.list().prefix(full.clone()).limit(1000);
            if let Some(c) = cursor.take() {
                request = request.cursor(c);
            }
            let page = request
                .execute()
                .await
                .map_err(|e| lake_error(&format!("listing {full}"), e))?;
            for object in page.objects() {
                let key = object.key();
                out.push(Listed {
                    key: key.strip_prefix(&strip).unwrap_or(&key).to_string(),
                    uploaded_ms: object.uploaded().as_millis() as i64,
                });
            }
            match page.cursor() {
                Some(c) if page.truncated() => cursor = Some(c),
                _ => return Ok(out),
            }
        }
    }

    async fn multipart_start(&self, key: &str) -> Result<String> {
        let full = self.full_key(key);
        let upload = self
            .bucket
            .create_multipart_upload(full.as_str())
            .execute()
            .await
            .map_err(|e| lake_error(&format!("starting an upload of {full}"), e))?;
        Ok(upload.upload_id().await)
    }

    async fn multipart_part(
        &self,
        key: &str,
        upload: &str,
        number: u16,
        bytes: Vec<u8>,
    ) -> Result<Part> {
        let full = self.full_key(key);
        let what = format!("uploading part {number} of {full}");
        let upload = self
            .bucket
            .resume_multipart_upload(full.as_str(), upload)
            .map_err(|e| lake_error(&what, e))?;
        let part = upload
            .upload_part(number, bytes)
            .await
            .map_err(|e| lake_error(&what, e))?;
        Ok(Part {
            number: part.part_number(),
            etag: part.etag(),
        })
    }

    async fn multipart_complete(&self, key: &str, upload: &str, parts: Vec<Part>) -> Result<()> {
        let full = self.full_key(key);
        let what = format!("completing the upload of {full}");
        let upload = self
            .bucket
            .resume_multipart_upload(full.as_str(), upload)
            .map_err(|e| lake_error(&what, e))?;
        let parts = parts
            .into_iter()
            .map(|p| worker::UploadedPart::new(p.number, p.etag))
            .collect::<Vec<_>>();
        upload
            .complete(parts)
            .await
            .map(|_| ())
            .map_err(|e| lake_error(&what, e))
    }

    async fn step_done(&self, step: CommitStep) -> Result<()> {
        if self.faults.borrow().pauses_after(step) {
            super::object::log(
                "warn",
                "test_pause",
                serde_json::json!({"step": format!("{step:?}")}),
            );
            worker::Delay::from(std::time::Duration::from_secs(600)).await;
        }
        Ok(())
    }
}
