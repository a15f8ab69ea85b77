/**
 * DoLake's configuration (the `DOLAKE_CONFIG` var, one JSON document), as the
 * integration guide names it. Every key is optional; what is left out takes
 * the default below. DoLake refuses unknown keys and impossible values with an
 * error naming the key. `DEFAULT_DOLAKE_CONFIG` is checked against the Rust
 * defaults (`tests/golden/protocol/shapes.json`, `DoLakeConfig.default`).
 */

/** Limits on connections and messages (the guide's `RateLimitConfig`). */
export interface RateLimitConfig {
  /** New WebSocket connections per second. */
  connectionsPerSecond?: number;
  /** Messages per second per connection (and per client IP over HTTP). */
  messagesPerSecond?: number;
  /** Largest message, bytes. */
  maxPayloadSize?: number;
  /** Token bucket burst. */
  burstCapacity?: number;
  /** Connections per client IP. */
  maxConnectionsPerIp?: number;
  /** Events per `cdc_batch`. */
  maxEventsPerMessage?: number;
  /** Largest single event, bytes. */
  maxEventSize?: number;
}

/** Table maintenance (snapshot expiry, manifest merge, compaction, orphans). */
export interface MaintenanceConfig {
  enabled?: boolean;
  intervalMs?: number;
  snapshotMaxAgeMs?: number;
  minSnapshotsToKeep?: number;
  maxSnapshotsToKeep?: number;
  manifestMergeMinCount?: number;
  targetManifestBytes?: number;
  compactionEnabled?: boolean;
  targetFileBytes?: number;
  orphanMinAgeMs?: number;
}

/** The guide's `DoLakeConfig`, plus DoLake's own keys. */
export interface DoLakeConfig {
  r2BucketName?: string;
  /** Key prefix of the tables in the bucket. */
  r2BasePath?: string;
  flushThresholdEvents?: number;
  flushThresholdBytes?: number;
  flushThresholdMs?: number;
  flushIntervalMs?: number;
  maxBufferSize?: number;
  enableFallback?: boolean;
  maxFallbackSize?: number;
  enableDeduplication?: boolean;
  deduplicationWindowMs?: number;
  parquetRowGroupSize?: number;
  parquetCompression?: 'none' | 'snappy' | 'gzip' | 'zstd';
  /** Partitioning of the change logs by event time. */
  partitionBy?: 'day' | 'hour' | 'none';
  /** URI prefix written into Iceberg metadata (default `s3://{r2BucketName}/{r2BasePath}`). */
  warehouseLocation?: string;
  /** Iceberg namespace of the change logs. */
  namespace?: string;
  /** Which tables each CDC table becomes. */
  tableKinds?: 'changelog' | 'current-state' | 'both';
  /** Iceberg namespace of the current-state tables (default `{namespace}_current`). */
  currentStateNamespace?: string;
  rateLimit?: RateLimitConfig;
  maintenance?: MaintenanceConfig;
}

type DeepRequired<T> = { [K in keyof T]-?: T[K] extends object | undefined ? DeepRequired<NonNullable<T[K]>> : T[K] };

export const DEFAULT_RATE_LIMIT_CONFIG: Readonly<Required<RateLimitConfig>> = Object.freeze({
  connectionsPerSecond: 100,
  messagesPerSecond: 1000,
  maxPayloadSize: 4 * 1024 * 1024,
  burstCapacity: 50,
  maxConnectionsPerIp: 10,
  maxEventsPerMessage: 10_000,
  maxEventSize: 1024 * 1024,
});

export const DEFAULT_MAINTENANCE_CONFIG: Readonly<Required<MaintenanceConfig>> = Object.freeze({
  enabled: true,
  intervalMs: 3_600_000,
  snapshotMaxAgeMs: 7 * 24 * 3_600_000,
  minSnapshotsToKeep: 100,
  maxSnapshotsToKeep: 1_000,
  manifestMergeMinCount: 100,
  targetManifestBytes: 8 * 1024 * 1024,
  compactionEnabled: true,
  targetFileBytes: 128 * 1024 * 1024,
  orphanMinAgeMs: 3 * 24 * 3_600_000,
});

export const DEFAULT_DOLAKE_CONFIG: Readonly<DeepRequired<DoLakeConfig>> = Object.freeze({
  r2BucketName: 'lakehouse',
  r2BasePath: 'warehouse',
  flushThresholdEvents: 10_000,
  flushThresholdBytes: 50 * 1024 * 1024,
  flushThresholdMs: 60_000,
  flushIntervalMs: 30_000,
  maxBufferSize: 100 * 1024 * 1024,
  enableFallback: true,
  maxFallbackSize: 10 * 1024 * 1024,
  enableDeduplication: true,
  deduplicationWindowMs: 300_000,
  parquetRowGroupSize: 100_000,
  parquetCompression: 'snappy',
  partitionBy: 'day',
  warehouseLocation: 's3://lakehouse/warehouse',
  namespace: 'default',
  tableKinds: 'both',
  currentStateNamespace: 'default_current',
  rateLimit: DEFAULT_RATE_LIMIT_CONFIG,
  maintenance: DEFAULT_MAINTENANCE_CONFIG,
});

/**
 * The bindings of the DoLake worker (the guide's `DoLakeEnv`), for a worker
 * that routes to DoLake itself. The `DoLake` class is the Rust worker of this
 * repository, deployed on its own and bound by `script_name`; this package
 * does not contain it.
 */
export interface DoLakeEnv {
  /** The R2 bucket of the tables. */
  LAKEHOUSE_BUCKET: unknown;
  /** The DoLake Durable Object namespace. */
  DOLAKE: unknown;
  /** `DoLakeConfig` as JSON. */
  DOLAKE_CONFIG?: string;
  /** The shared bearer token (a secret). */
  DOLAKE_AUTH_TOKEN?: string;
}
