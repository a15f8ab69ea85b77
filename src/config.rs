//! DoLake's configuration: the guide's `DoLakeConfig` and `RateLimitConfig`.
//!
//! Read from one JSON document (the wrangler var `DOLAKE_CONFIG`) using the
//! guide's camelCase names, rate limits under `rateLimit`. Every option has the
//! guide's default. Unknown keys, wrong types and impossible values are refused
//! with an error that names the key; nothing is silently ignored.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// Largest `rateLimit.maxPayloadSize`: a flush step holds one whole batch,
/// parsed, in the isolate's 128 MB (a 4 MiB step measured 20 MiB of heap).
pub const MAX_PAYLOAD_SIZE: u64 = 8 * 1024 * 1024;

/// Parquet compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Uncompressed.
    None,
    /// Snappy (the default).
    Snappy,
    /// Gzip (deflate).
    Gzip,
    /// Zstandard.
    Zstd,
}

/// Partitioning of the Iceberg tables by the event timestamp `_cdc_ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionBy {
    /// `day(_cdc_ts)` (the default).
    Day,
    /// `hour(_cdc_ts)`.
    Hour,
    /// Unpartitioned.
    None,
}

/// Which tables DoLake makes of each CDC table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableKinds {
    /// The change log only (one row per event).
    Changelog,
    /// The current-state table only (UPDATE and DELETE applied).
    CurrentState,
    /// Both (the default).
    Both,
}

impl TableKinds {
    /// Whether change log tables are written.
    pub fn changelog(self) -> bool {
        self != TableKinds::CurrentState
    }
    /// Whether current-state tables are written.
    pub fn current_state(self) -> bool {
        self != TableKinds::Changelog
    }
}

/// Rate limits (the guide's `RateLimitConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitConfig {
    /// New WebSocket connections per second (token refill rate).
    pub connections_per_second: u64,
    /// Messages per second per connection.
    pub messages_per_second: u64,
    /// Largest accepted message, bytes.
    pub max_payload_size: u64,
    /// Token bucket burst capacity for new connections.
    pub burst_capacity: u64,
    /// Concurrent connections per client IP.
    pub max_connections_per_ip: u64,
    /// Most events in one `cdc_batch`.
    pub max_events_per_message: u64,
    /// Largest single event (its JSON), bytes.
    pub max_event_size: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            connections_per_second: 100,
            messages_per_second: 1000,
            max_payload_size: 4 * 1024 * 1024,
            burst_capacity: 50,
            max_connections_per_ip: 10,
            max_events_per_message: 10_000,
            max_event_size: 1024 * 1024,
        }
    }
}

/// Table maintenance (`maintenance` in `DOLAKE_CONFIG`; see the README's
/// "Table lifecycle").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceConfig {
    /// Run maintenance on the alarm.
    pub enabled: bool,
    /// Time between runs, ms (default 1 h).
    pub interval_ms: u64,
    /// Snapshots older than this may expire, ms (default 7 days).
    pub snapshot_max_age_ms: u64,
    /// The newest this many snapshots never expire (default 100).
    pub min_snapshots_to_keep: u64,
    /// At most this many snapshots are kept, whatever their age (default
    /// 1,000; a table flushed every 30 s makes 20,160 in 7 days).
    pub max_snapshots_to_keep: u64,
    /// Merge manifests when the current snapshot lists more than this many
    /// (default 100).
    pub manifest_merge_min_count: u64,
    /// Size merged manifests are filled to, bytes (default 8 MiB).
    pub target_manifest_bytes: u64,
    /// Rewrite small data files into larger ones.
    pub compaction_enabled: bool,
    /// Size compaction aims at, bytes (default 128 MiB).
    pub target_file_bytes: u64,
    /// Unreferenced objects younger than this are never deleted, ms (default
    /// 3 days, at least 60 s).
    pub orphan_min_age_ms: u64,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 3_600_000,
            snapshot_max_age_ms: 7 * 24 * 3_600_000,
            min_snapshots_to_keep: 100,
            max_snapshots_to_keep: 1_000,
            manifest_merge_min_count: 100,
            target_manifest_bytes: 8 * 1024 * 1024,
            compaction_enabled: true,
            target_file_bytes: 128 * 1024 * 1024,
            orphan_min_age_ms: 3 * 24 * 3_600_000,
        }
    }
}

/// Shortest `maintenance.orphanMinAgeMs`: a commit in flight is never older.
pub const MIN_ORPHAN_AGE_MS: u64 = 60_000;

/// The whole configuration (the guide's `DoLakeConfig` plus DoLake's own
/// `warehouseLocation`, `namespace` and `partitionBy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DoLakeConfig {
    /// Name of the R2 bucket (informational; the binding is `LAKEHOUSE_BUCKET`).
    pub r2_bucket_name: String,
    /// Key prefix of the Iceberg tables in the bucket.
    pub r2_base_path: String,
    /// Flush when this many events are buffered.
    pub flush_threshold_events: u64,
    /// Flush when this many bytes are buffered.
    pub flush_threshold_bytes: u64,
    /// Flush when the oldest buffered event is this old, ms.
    pub flush_threshold_ms: u64,
    /// Scheduled flush interval, ms.
    pub flush_interval_ms: u64,
    /// Past this many buffered bytes, batches are refused with `buffer_full`.
    pub max_buffer_size: u64,
    /// Keep data in Durable Object storage when R2 fails.
    pub enable_fallback: bool,
    /// Most bytes held in fallback storage.
    pub max_fallback_size: u64,
    /// Deduplicate resent batches and events.
    pub enable_deduplication: bool,
    /// How long per-batch dedup entries are kept in memory, ms.
    pub deduplication_window_ms: u64,
    /// Rows per Parquet row group.
    pub parquet_row_group_size: u64,
    /// Parquet compression codec.
    pub parquet_compression: Compression,
    /// Partitioning of the tables.
    pub partition_by: PartitionBy,
    /// URI prefix written into Iceberg metadata for `r2BasePath`.
    pub warehouse_location: String,
    /// Iceberg namespace of the tables.
    pub namespace: String,
    /// Which tables are made of each CDC table.
    pub table_kinds: TableKinds,
    /// Iceberg namespace of the current-state tables.
    pub current_state_namespace: String,
    /// Rate limits.
    pub rate_limit: RateLimitConfig,
    /// Table maintenance.
    pub maintenance: MaintenanceConfig,
}

impl Default for DoLakeConfig {
    fn default() -> Self {
        let r2_bucket_name = "lakehouse".to_string();
        let r2_base_path = "warehouse".to_string();
        Self {
            warehouse_location: default_warehouse(&r2_bucket_name, &r2_base_path),
            r2_bucket_name,
            r2_base_path,
            flush_threshold_events: 10_000,
            flush_threshold_bytes: 50 * 1024 * 1024,
            flush_threshold_ms: 60_000,
            flush_interval_ms: 30_000,
            max_buffer_size: 100 * 1024 * 1024,
            enable_fallback: true,
            max_fallback_size: 10 * 1024 * 1024,
            enable_deduplication: true,
            deduplication_window_ms: 300_000,
            parquet_row_group_size: 100_000,
            parquet_compression: Compression::Snappy,
            partition_by: PartitionBy::Day,
            namespace: "default".to_string(),
            table_kinds: TableKinds::Both,
            current_state_namespace: "default_current".to_string(),
            rate_limit: RateLimitConfig::default(),
            maintenance: MaintenanceConfig::default(),
        }
    }
}

fn default_warehouse(bucket: &str, base: &str) -> String {
    let base = base.trim_matches('/');
    if base.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{base}")
    }
}

/// The document as written: every key optional, unknown keys refused.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    r2_bucket_name: Option<String>,
    r2_base_path: Option<String>,
    flush_threshold_events: Option<u64>,
    flush_threshold_bytes: Option<u64>,
    flush_threshold_ms: Option<u64>,
    flush_interval_ms: Option<u64>,
    max_buffer_size: Option<u64>,
    enable_fallback: Option<bool>,
    max_fallback_size: Option<u64>,
    enable_deduplication: Option<bool>,
    deduplication_window_ms: Option<u64>,
    parquet_row_group_size: Option<u64>,
    parquet_compression: Option<Compression>,
    partition_by: Option<PartitionBy>,
    warehouse_location: Option<String>,
    namespace: Option<String>,
    table_kinds: Option<TableKinds>,
    current_state_namespace: Option<String>,
    rate_limit: Option<RawRateLimit>,
    maintenance: Option<RawMaintenance>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMaintenance {
    enabled: Option<bool>,
    interval_ms: Option<u64>,
    snapshot_max_age_ms: Option<u64>,
    min_snapshots_to_keep: Option<u64>,
    max_snapshots_to_keep: Option<u64>,
    manifest_merge_min_count: Option<u64>,
    target_manifest_bytes: Option<u64>,
    compaction_enabled: Option<bool>,
    target_file_bytes: Option<u64>,
    orphan_min_age_ms: Option<u64>,
}

fn maintenance(raw: RawMaintenance) -> Result<MaintenanceConfig> {
    let d = MaintenanceConfig::default();
    let key = |k: &str| format!("maintenance.{k}");
    let m = MaintenanceConfig {
        enabled: raw.enabled.unwrap_or(d.enabled),
        interval_ms: positive(&key("intervalMs"), raw.interval_ms.unwrap_or(d.interval_ms))?,
        snapshot_max_age_ms: raw.snapshot_max_age_ms.unwrap_or(d.snapshot_max_age_ms),
        min_snapshots_to_keep: positive(
            &key("minSnapshotsToKeep"),
            raw.min_snapshots_to_keep.unwrap_or(d.min_snapshots_to_keep),
        )?,
        max_snapshots_to_keep: positive(
            &key("maxSnapshotsToKeep"),
            raw.max_snapshots_to_keep.unwrap_or(d.max_snapshots_to_keep),
        )?,
        manifest_merge_min_count: positive(
            &key("manifestMergeMinCount"),
            raw.manifest_merge_min_count
                .unwrap_or(d.manifest_merge_min_count),
        )?,
        target_manifest_bytes: positive(
            &key("targetManifestBytes"),
            raw.target_manifest_bytes.unwrap_or(d.target_manifest_bytes),
        )?,
        compaction_enabled: raw.compaction_enabled.unwrap_or(d.compaction_enabled),
        target_file_bytes: positive(
            &key("targetFileBytes"),
            raw.target_file_bytes.unwrap_or(d.target_file_bytes),
        )?,
        orphan_min_age_ms: raw.orphan_min_age_ms.unwrap_or(d.orphan_min_age_ms),
    };
    if m.max_snapshots_to_keep < m.min_snapshots_to_keep {
        return Err(config_error(
            "DOLAKE_CONFIG key `maintenance.maxSnapshotsToKeep` must not be below `maintenance.minSnapshotsToKeep`",
        ));
    }
    if m.orphan_min_age_ms < MIN_ORPHAN_AGE_MS {
        return Err(config_error(format!(
            "DOLAKE_CONFIG key `maintenance.orphanMinAgeMs` must be at least {MIN_ORPHAN_AGE_MS} (a commit in flight must never look orphaned)"
        )));
    }
    if m.interval_ms > i64::MAX as u64 / 4
        || m.snapshot_max_age_ms > i64::MAX as u64 / 4
        || m.orphan_min_age_ms > i64::MAX as u64 / 4
    {
        return Err(config_error(
            "DOLAKE_CONFIG keys `maintenance.*Ms` must be below 2^61",
        ));
    }
    Ok(m)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRateLimit {
    connections_per_second: Option<u64>,
    messages_per_second: Option<u64>,
    max_payload_size: Option<u64>,
    burst_capacity: Option<u64>,
    max_connections_per_ip: Option<u64>,
    max_events_per_message: Option<u64>,
    max_event_size: Option<u64>,
}

fn config_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Config, message)
}

/// Refuses a zero where zero makes no sense.
fn positive(key: &str, value: u64) -> Result<u64> {
    if value == 0 {
        Err(config_error(format!(
            "DOLAKE_CONFIG key `{key}` must be greater than 0"
        )))
    } else {
        Ok(value)
    }
}

/// A name used as one segment of an object key and of an Iceberg identifier.
fn identifier(key: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(config_error(format!(
            "DOLAKE_CONFIG key `{key}` must be 1-128 characters of [A-Za-z0-9_-], got {value:?}"
        )))
    }
}

impl DoLakeConfig {
    /// Parses `DOLAKE_CONFIG`. `None` or a blank string gives the defaults.
    pub fn parse(text: Option<&str>) -> Result<Self> {
        let text = match text {
            Some(t) if !t.trim().is_empty() => t,
            _ => return Ok(Self::default()),
        };
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path.is_empty() || path == "." {
                config_error(format!("DOLAKE_CONFIG is not a valid JSON object: {inner}"))
            } else {
                config_error(format!("DOLAKE_CONFIG key `{path}`: {inner}"))
            }
        })?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Self> {
        let d = Self::default();
        let r2_bucket_name = raw.r2_bucket_name.unwrap_or(d.r2_bucket_name);
        if r2_bucket_name.trim().is_empty() {
            return Err(config_error(
                "DOLAKE_CONFIG key `r2BucketName` must not be empty",
            ));
        }
        let r2_base_path = raw.r2_base_path.unwrap_or(d.r2_base_path);
        if r2_base_path.split('/').any(|s| s == ".." || s == ".") {
            return Err(config_error(
                "DOLAKE_CONFIG key `r2BasePath` must not contain `.` or `..` segments",
            ));
        }
        let r2_base_path = r2_base_path.trim_matches('/').to_string();
        let warehouse_location = match raw.warehouse_location {
            Some(w) => {
                let w = w.trim_end_matches('/').to_string();
                if !w.contains("://") {
                    return Err(config_error(format!(
                        "DOLAKE_CONFIG key `warehouseLocation` must be a URI such as s3://bucket/path, got {w:?}"
                    )));
                }
                w
            }
            None => default_warehouse(&r2_bucket_name, &r2_base_path),
        };
        let namespace = raw.namespace.unwrap_or(d.namespace);
        identifier("namespace", &namespace)?;
        let current_state_namespace = raw
            .current_state_namespace
            .unwrap_or_else(|| format!("{namespace}_current"));
        identifier("currentStateNamespace", &current_state_namespace)?;
        if current_state_namespace == namespace {
            return Err(config_error(
                "DOLAKE_CONFIG key `currentStateNamespace` must differ from `namespace` (a CDC table's two tables would have one name)",
            ));
        }

        let rl = raw.rate_limit.unwrap_or(RawRateLimit {
            connections_per_second: None,
            messages_per_second: None,
            max_payload_size: None,
            burst_capacity: None,
            max_connections_per_ip: None,
            max_events_per_message: None,
            max_event_size: None,
        });
        let drl = RateLimitConfig::default();
        let rate_limit = RateLimitConfig {
            connections_per_second: positive(
                "rateLimit.connectionsPerSecond",
                rl.connections_per_second
                    .unwrap_or(drl.connections_per_second),
            )?,
            messages_per_second: positive(
                "rateLimit.messagesPerSecond",
                rl.messages_per_second.unwrap_or(drl.messages_per_second),
            )?,
            max_payload_size: positive(
                "rateLimit.maxPayloadSize",
                rl.max_payload_size.unwrap_or(drl.max_payload_size),
            )?,
            burst_capacity: positive(
                "rateLimit.burstCapacity",
                rl.burst_capacity.unwrap_or(drl.burst_capacity),
            )?,
            max_connections_per_ip: positive(
                "rateLimit.maxConnectionsPerIp",
                rl.max_connections_per_ip
                    .unwrap_or(drl.max_connections_per_ip),
            )?,
            max_events_per_message: positive(
                "rateLimit.maxEventsPerMessage",
                rl.max_events_per_message
                    .unwrap_or(drl.max_events_per_message),
            )?,
            max_event_size: positive(
                "rateLimit.maxEventSize",
                rl.max_event_size.unwrap_or(drl.max_event_size),
            )?,
        };
        if rate_limit.max_payload_size > MAX_PAYLOAD_SIZE {
            return Err(config_error(format!(
                "DOLAKE_CONFIG key `rateLimit.maxPayloadSize` must be at most {MAX_PAYLOAD_SIZE} (a flush step holds one whole batch in the isolate's 128 MB)"
            )));
        }
        if rate_limit.max_event_size > rate_limit.max_payload_size {
            return Err(config_error(
                "DOLAKE_CONFIG key `rateLimit.maxEventSize` must not exceed `rateLimit.maxPayloadSize`",
            ));
        }

        let config = Self {
            r2_bucket_name,
            r2_base_path,
            flush_threshold_events: positive(
                "flushThresholdEvents",
                raw.flush_threshold_events
                    .unwrap_or(d.flush_threshold_events),
            )?,
            flush_threshold_bytes: positive(
                "flushThresholdBytes",
                raw.flush_threshold_bytes.unwrap_or(d.flush_threshold_bytes),
            )?,
            flush_threshold_ms: positive(
                "flushThresholdMs",
                raw.flush_threshold_ms.unwrap_or(d.flush_threshold_ms),
            )?,
            flush_interval_ms: positive(
                "flushIntervalMs",
                raw.flush_interval_ms.unwrap_or(d.flush_interval_ms),
            )?,
            max_buffer_size: positive(
                "maxBufferSize",
                raw.max_buffer_size.unwrap_or(d.max_buffer_size),
            )?,
            enable_fallback: raw.enable_fallback.unwrap_or(d.enable_fallback),
            max_fallback_size: positive(
                "maxFallbackSize",
                raw.max_fallback_size.unwrap_or(d.max_fallback_size),
            )?,
            enable_deduplication: raw.enable_deduplication.unwrap_or(d.enable_deduplication),
            deduplication_window_ms: positive(
                "deduplicationWindowMs",
                raw.deduplication_window_ms
                    .unwrap_or(d.deduplication_window_ms),
            )?,
            parquet_row_group_size: positive(
                "parquetRowGroupSize",
                raw.parquet_row_group_size
                    .unwrap_or(d.parquet_row_group_size),
            )?,
            parquet_compression: raw.parquet_compression.unwrap_or(d.parquet_compression),
            partition_by: raw.partition_by.unwrap_or(d.partition_by),
            warehouse_location,
            namespace,
            table_kinds: raw.table_kinds.unwrap_or(d.table_kinds),
            current_state_namespace,
            rate_limit,
            maintenance: maintenance(raw.maintenance.unwrap_or_default())?,
        };
        if config.flush_threshold_bytes > config.max_buffer_size {
            return Err(config_error(
                "DOLAKE_CONFIG key `flushThresholdBytes` must not exceed `maxBufferSize` (the buffer would fill before it flushes)",
            ));
        }
        Ok(config)
    }

    /// The active configuration as JSON (camelCase, as on `/status`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        let e = DoLakeConfig::parse(Some(text)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        e.message().to_string()
    }

    #[test]
    fn maintenance_keys_are_read_and_checked() {
        let c = DoLakeConfig::parse(None).unwrap().maintenance;
        assert!(c.enabled && c.compaction_enabled);
        assert_eq!(c.snapshot_max_age_ms, 604_800_000);
        assert_eq!(c.min_snapshots_to_keep, 100);
        assert_eq!(c.target_file_bytes, 134_217_728);
        let c = DoLakeConfig::parse(Some(
            r#"{"maintenance":{"enabled":false,"intervalMs":5000,"snapshotMaxAgeMs":0,"minSnapshotsToKeep":2,"maxSnapshotsToKeep":3,"manifestMergeMinCount":4,"targetManifestBytes":1000,"compactionEnabled":false,"targetFileBytes":65536,"orphanMinAgeMs":60000}}"#,
        ))
        .unwrap()
        .maintenance;
        assert_eq!(
            (
                c.enabled,
                c.interval_ms,
                c.snapshot_max_age_ms,
                c.min_snapshots_to_keep
            ),
            (false, 5000, 0, 2)
        );
        assert_eq!(
            (
                c.max_snapshots_to_keep,
                c.manifest_merge_min_count,
                c.target_manifest_bytes
            ),
            (3, 4, 1000)
        );
        assert_eq!(
            (
                c.compaction_enabled,
                c.target_file_bytes,
                c.orphan_min_age_ms
            ),
            (false, 65536, 60_000)
        );
        assert!(err(r#"{"maintenance":{"orphanMinAgeMs":1000}}"#)
            .contains("maintenance.orphanMinAgeMs"));
        assert!(
            err(r#"{"maintenance":{"minSnapshotsToKeep":5,"maxSnapshotsToKeep":4}}"#)
                .contains("maintenance.maxSnapshotsToKeep")
        );
        assert!(err(r#"{"maintenance":{"intervalMs":0}}"#).contains("maintenance.intervalMs"));
        assert!(err(r#"{"maintenance":{"targetFileBytes":-1}}"#)
            .contains("maintenance.targetFileBytes"));
        assert!(err(r#"{"maintenance":{"every":1}}"#).contains("every"));
    }

    #[test]
    fn defaults_are_the_guides() {
        let c = DoLakeConfig::parse(None).unwrap();
        assert_eq!(c, DoLakeConfig::parse(Some("  ")).unwrap());
        assert_eq!(c, DoLakeConfig::parse(Some("{}")).unwrap());
        assert_eq!(c.flush_threshold_events, 10_000);
        assert_eq!(c.flush_threshold_bytes, 52_428_800);
        assert_eq!(c.flush_threshold_ms, 60_000);
        assert_eq!(c.flush_interval_ms, 30_000);
        assert_eq!(c.max_buffer_size, 104_857_600);
        assert!(c.enable_fallback);
        assert_eq!(c.max_fallback_size, 10_485_760);
        assert!(c.enable_deduplication);
        assert_eq!(c.deduplication_window_ms, 300_000);
        assert_eq!(c.parquet_row_group_size, 100_000);
        assert_eq!(c.parquet_compression, Compression::Snappy);
        assert_eq!(c.partition_by, PartitionBy::Day);
        assert_eq!(c.namespace, "default");
        assert_eq!(c.warehouse_location, "s3://lakehouse/warehouse");
        let rl = &c.rate_limit;
        assert_eq!(
            (
                rl.connections_per_second,
                rl.messages_per_second,
                rl.max_payload_size,
                rl.burst_capacity,
                rl.max_connections_per_ip,
                rl.max_events_per_message,
                rl.max_event_size
            ),
            (100, 1000, 4_194_304, 50, 10, 10_000, 1_048_576)
        );
    }

    #[test]
    fn every_option_is_read() {
        let c = DoLakeConfig::parse(Some(
            r#"{"r2BucketName":"my-lakehouse-bucket","r2BasePath":"/warehouse/tables/",
            "flushThresholdEvents":5,"flushThresholdBytes":6,"flushThresholdMs":7,"flushIntervalMs":8,
            "maxBufferSize":9,"enableFallback":false,"maxFallbackSize":10,"enableDeduplication":false,
            "deduplicationWindowMs":11,"parquetRowGroupSize":12,"parquetCompression":"zstd",
            "partitionBy":"hour","namespace":"cdc",
            "rateLimit":{"connectionsPerSecond":1,"messagesPerSecond":2,"maxPayloadSize":300,
            "burstCapacity":4,"maxConnectionsPerIp":5,"maxEventsPerMessage":6,"maxEventSize":7}}"#,
        ))
        .unwrap();
        assert_eq!(c.r2_base_path, "warehouse/tables");
        assert_eq!(
            c.warehouse_location,
            "s3://my-lakehouse-bucket/warehouse/tables"
        );
        assert_eq!(c.flush_threshold_events, 5);
        assert_eq!(c.flush_threshold_bytes, 6);
        assert_eq!(c.flush_threshold_ms, 7);
        assert_eq!(c.flush_interval_ms, 8);
        assert_eq!(c.max_buffer_size, 9);
        assert!(!c.enable_fallback);
        assert_eq!(c.max_fallback_size, 10);
        assert!(!c.enable_deduplication);
        assert_eq!(c.deduplication_window_ms, 11);
        assert_eq!(c.parquet_row_group_size, 12);
        assert_eq!(c.parquet_compression, Compression::Zstd);
        assert_eq!(c.partition_by, PartitionBy::Hour);
        assert_eq!(c.namespace, "cdc");
        assert_eq!(c.rate_limit.max_payload_size, 300);
        assert_eq!(c.rate_limit.max_event_size, 7);
        let json = c.to_json();
        assert_eq!(json["rateLimit"]["burstCapacity"], 4);
        assert_eq!(json["parquetCompression"], "zstd");
    }

    #[test]
    fn explicit_warehouse_location_wins() {
        let c = DoLakeConfig::parse(Some(r#"{"warehouseLocation":"file:///tmp/wh/"}"#)).unwrap();
        assert_eq!(c.warehouse_location, "file:///tmp/wh");
        assert!(err(r#"{"warehouseLocation":"no-scheme"}"#).contains("warehouseLocation"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        assert!(err(r#"{"flushTresholdEvents":1}"#).contains("flushTresholdEvents"));
        assert!(err(r#"{"rateLimit":{"perSecond":1}}"#).contains("perSecond"));
    }

    #[test]
    fn wrong_types_name_the_key() {
        let m = err(r#"{"flushThresholdEvents":"many"}"#);
        assert!(m.contains("`flushThresholdEvents`"), "{m}");
        let m = err(r#"{"rateLimit":{"maxPayloadSize":-1}}"#);
        assert!(m.contains("`rateLimit.maxPayloadSize`"), "{m}");
        let m = err(r#"{"enableFallback":1}"#);
        assert!(m.contains("`enableFallback`"), "{m}");
        assert!(err("[1,2]").contains("DOLAKE_CONFIG"));
        assert!(err("{not json").contains("DOLAKE_CONFIG"));
    }

    #[test]
    fn table_kinds_and_the_current_state_namespace() {
        let c = DoLakeConfig::parse(None).unwrap();
        assert_eq!(c.table_kinds, TableKinds::Both);
        assert_eq!(c.current_state_namespace, "default_current");
        let c = DoLakeConfig::parse(Some(r#"{"namespace":"cdc","tableKinds":"current-state"}"#))
            .unwrap();
        assert_eq!(c.current_state_namespace, "cdc_current");
        assert!(!c.table_kinds.changelog() && c.table_kinds.current_state());
        let c = DoLakeConfig::parse(Some(
            r#"{"tableKinds":"changelog","currentStateNamespace":"now"}"#,
        ))
        .unwrap();
        assert_eq!(c.current_state_namespace, "now");
        assert!(c.table_kinds.changelog() && !c.table_kinds.current_state());
        let m = err(r#"{"tableKinds":"upsert"}"#);
        assert!(m.contains("tableKinds"), "{m}");
        let m = err(r#"{"namespace":"a","currentStateNamespace":"a"}"#);
        assert!(m.contains("currentStateNamespace"), "{m}");
        let m = err(r#"{"currentStateNamespace":"a.b"}"#);
        assert!(m.contains("currentStateNamespace"), "{m}");
    }

    #[test]
    fn impossible_values_are_refused_by_name() {
        for key in [
            "flushThresholdEvents",
            "flushThresholdBytes",
            "flushThresholdMs",
            "flushIntervalMs",
            "maxBufferSize",
            "parquetRowGroupSize",
            "deduplicationWindowMs",
        ] {
            let m = err(&format!(r#"{{"{key}":0}}"#));
            assert!(m.contains(key), "{m}");
        }
        let m = err(r#"{"parquetCompression":"lzo"}"#);
        assert!(m.contains("parquetCompression"), "{m}");
        let m = err(r#"{"partitionBy":"month"}"#);
        assert!(m.contains("partitionBy"), "{m}");
        let m = err(r#"{"rateLimit":{"burstCapacity":0}}"#);
        assert!(m.contains("rateLimit.burstCapacity"), "{m}");
        let m = err(r#"{"namespace":"a/b"}"#);
        assert!(m.contains("namespace"), "{m}");
        let m = err(r#"{"r2BasePath":"a/../b"}"#);
        assert!(m.contains("r2BasePath"), "{m}");
        let m = err(r#"{"flushThresholdBytes":200,"maxBufferSize":100}"#);
        assert!(m.contains("flushThresholdBytes"), "{m}");
        let m = err(r#"{"rateLimit":{"maxPayloadSize":100000000}}"#);
        assert!(m.contains("maxPayloadSize"), "{m}");
        // 16 MiB passes the WebSocket limit but not what one flush step holds.
        let m = err(r#"{"rateLimit":{"maxPayloadSize":16777216}}"#);
        assert!(m.contains("maxPayloadSize") && m.contains("8388608"), "{m}");
        DoLakeConfig::parse(Some(r#"{"rateLimit":{"maxPayloadSize":8388608}}"#)).unwrap();
    }
}
