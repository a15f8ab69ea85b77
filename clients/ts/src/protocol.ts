/**
 * The wire protocol between DoSQL shards and DoLake (JSON over WebSocket,
 * and over `POST /lakehouse/cdc`), as the integration guide names it.
 *
 * These types are checked against the Rust protocol types: the Rust test
 * `tests/protocol_golden.rs` writes every message with all optional fields
 * and with none to `tests/golden/protocol/shapes.json`, and
 * `clients/ts/test/check-shapes.mjs` type-checks each against the type here
 * in both directions (no key missing, no key extra, optional exactly where
 * Rust may omit a field). Change both sides together.
 */

/** A row image: column name to JSON value. */
export type Row = Record<string, unknown>;

/** The kind of change. */
export type CDCOperation = 'INSERT' | 'UPDATE' | 'DELETE';

/** One change event (the guide's `CDCEvent`). */
export interface CDCEvent {
  /** The shard's change sequence number. */
  sequence: number;
  /** When the change happened, Unix ms. */
  timestamp: number;
  operation: CDCOperation;
  /** The table the row belongs to. */
  table: string;
  /** The row's key (a string; numbers are accepted by DoLake too). */
  rowId: string;
  /** The row before the change (UPDATE, DELETE). */
  before?: Row;
  /** The row after the change (INSERT, UPDATE). */
  after?: Row;
  /** Anything else the shard wants to carry (kept as JSON). */
  metadata?: unknown;
}

/** What a shard announces in `connect`. */
export interface Capabilities {
  binaryProtocol: boolean;
  compression: boolean;
  batching: boolean;
  maxBatchSize?: number;
  maxMessageSize?: number;
}

/** `connect`: a shard introduces itself. */
export interface ConnectMessage {
  type: 'connect';
  timestamp?: number;
  correlationId?: string;
  sourceDoId: string;
  sourceShardName?: string;
  /** The last batch sequence number the shard saw acked. */
  lastAckSequence?: number;
  protocolVersion?: number;
  capabilities?: Capabilities;
}

/** `cdc_batch`: a batch of change events. */
export interface CDCBatchMessage {
  type: 'cdc_batch';
  timestamp?: number;
  correlationId?: string;
  sourceDoId: string;
  sourceShardName?: string;
  events: CDCEvent[];
  /** Per-source batch number: a resend keeps it, so DoLake can deduplicate. */
  sequenceNumber: number;
  firstEventSequence?: number;
  lastEventSequence?: number;
  sizeBytes?: number;
  isRetry: boolean;
  retryCount: number;
}

/** `heartbeat`: keeps the connection alive; answered with `pong`. */
export interface HeartbeatMessage {
  type: 'heartbeat';
  timestamp?: number;
  correlationId?: string;
  sourceDoId?: string;
  lastAckSequence?: number;
  pendingEvents?: number;
}

/** `flush_request`: asks DoLake to flush now; answered with `flush_response`. */
export interface FlushRequestMessage {
  type: 'flush_request';
  timestamp?: number;
  correlationId?: string;
  sourceDoId?: string;
  reason?: string;
}

/** `disconnect`: a shard says goodbye. */
export interface DisconnectMessage {
  type: 'disconnect';
  timestamp?: number;
  correlationId?: string;
  sourceDoId?: string;
  reason?: string;
}

/** Any message a shard sends. */
export type ClientMessage =
  | ConnectMessage
  | CDCBatchMessage
  | HeartbeatMessage
  | FlushRequestMessage
  | DisconnectMessage;

/** How DoLake took a batch. */
export type AckStatus = 'ok' | 'buffered' | 'persisted' | 'duplicate' | 'fallback';

export interface AckDetails {
  eventsProcessed: number;
  bufferUtilization: number;
  timeUntilFlush?: number;
  persistedPath?: string;
  remainingTokens?: number;
  bucketCapacity?: number;
  suggestedDelayMs?: number;
}

export interface RateLimitInfo {
  limit: number;
  remaining: number;
  resetAt: number;
}

/** `ack`: the batch is durable in DoLake (or was already). */
export interface AckMessage {
  type: 'ack';
  timestamp: number;
  correlationId?: string;
  sequenceNumber: number;
  status: AckStatus;
  batchId?: string;
  details?: AckDetails;
  rateLimit?: RateLimitInfo;
}

/** Why a batch or message was refused. */
export type NackReason =
  | 'invalid_format'
  | 'invalid_sequence'
  | 'buffer_full'
  | 'rate_limited'
  | 'payload_too_large'
  | 'event_too_large'
  | 'overloaded'
  | 'internal_error'
  | (string & {});

/** `nack`: refused; `shouldRetry` says whether a resend can succeed. */
export interface NackMessage {
  type: 'nack';
  timestamp: number;
  correlationId?: string;
  sequenceNumber?: number;
  reason: NackReason;
  errorMessage: string;
  shouldRetry: boolean;
  retryDelayMs?: number;
  maxSize?: number;
}

export type ServiceState = 'idle' | 'receiving' | 'flushing' | 'recovering' | 'error';

export interface BufferSnapshot {
  batchCount: number;
  eventCount: number;
  totalSizeBytes: number;
  utilization: number;
  oldestBatchTime?: number;
  newestBatchTime?: number;
}

/** `status`: DoLake's state (after `connect`, and on request). */
export interface StatusMessage {
  type: 'status';
  timestamp: number;
  correlationId?: string;
  state: ServiceState;
  buffer: BufferSnapshot;
  connectedSources: number;
  lastFlushTime?: number;
  nextFlushTime?: number;
}

/** `pong`: the answer to `heartbeat`. */
export interface PongMessage {
  type: 'pong';
  timestamp?: number;
  correlationId?: string;
  serverTime: number;
}

/** The outcome of a flush. */
export interface FlushResult {
  success: boolean;
  batchesFlushed: number;
  eventsFlushed: number;
  bytesWritten: number;
  paths: string[];
  durationMs: number;
  usedFallback: boolean;
  error?: string;
  complete: boolean;
  eventsRejected: number;
}

/** `flush_response`: the answer to `flush_request`. */
export interface FlushResponseMessage {
  type: 'flush_response';
  timestamp: number;
  correlationId?: string;
  result: FlushResult;
}

/** Any message DoLake sends. */
export type ServerMessage =
  | AckMessage
  | NackMessage
  | StatusMessage
  | PongMessage
  | FlushResponseMessage;
