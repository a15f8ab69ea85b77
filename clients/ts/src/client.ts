/**
 * A ready DoSQL-side client: what the integration guide's DoSQL code does,
 * with its sequences and unacknowledged batches persisted.
 *
 * - Changes are batched (`batchSize` events or `batchTimeoutMs`, whichever
 *   first). A batch is cut by writing it, with the next event and batch
 *   sequence numbers, to the shard's storage in one `put`, then sent. So a
 *   restart of the shard resumes both sequences where they were (the guide
 *   never writes `cdc_sequence`) and resends every batch DoLake has not
 *   acknowledged, with its original `sequenceNumber`, which DoLake
 *   deduplicates.
 * - An `ack` deletes the batch from storage. A `nack` with `shouldRetry`
 *   resends it after `retryDelayMs`; any other `nack` hands the batch to
 *   `onRejected` and drops it (resending cannot succeed).
 * - The connection is re-opened with exponential backoff after a close, an
 *   error, or an ack that does not come within `ackTimeoutMs`; `connect` is
 *   sent first, then the unacknowledged batches again in order. Heartbeats
 *   keep the connection alive.
 *
 * Runs inside a Durable Object (pass `ctx.storage` and a function that opens
 * the WebSocket to DoLake through its stub), or anywhere with a storage of
 * the same shape.
 */
import type {
  AckMessage,
  CDCBatchMessage,
  CDCEvent,
  FlushResult,
  NackMessage,
  ServerMessage,
  StatusMessage,
} from './protocol.js';

/** The WebSocket methods the client uses (a Workers `WebSocket` has them). */
export interface WebSocketLike {
  accept?(): void;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (event: any) => void): void;
}

/** The storage the client persists to (a Durable Object's `ctx.storage` fits). */
export interface ClientStorage {
  get<T = unknown>(key: string): Promise<T | undefined>;
  put(entries: Record<string, unknown>): Promise<void>;
  delete(key: string): Promise<boolean>;
  list<T = unknown>(options: { prefix: string }): Promise<Map<string, T>>;
}

export interface DoLakeClientOptions {
  /**
   * Opens a WebSocket to DoLake with these headers (`X-Client-ID`,
   * `X-Shard-Name`, plus `headers`). In a Durable Object:
   * `(h) => stub.fetch('https://dolake/ws', { headers: { Upgrade: 'websocket', ...h } }).then((r) => r.webSocket!)`,
   * or use {@link connectThroughStub}.
   */
  connect(headers: Record<string, string>): Promise<WebSocketLike>;
  /** Where sequences and unacknowledged batches are kept. */
  storage: ClientStorage;
  /** This shard's id (`sourceDoId`); stable across restarts. */
  sourceDoId: string;
  sourceShardName?: string;
  /** Extra headers of the upgrade request (e.g. `Authorization`). */
  headers?: Record<string, string>;
  /** Events per batch [100]. */
  batchSize?: number;
  /** Longest an event waits for its batch to fill, ms [5000]. */
  batchTimeoutMs?: number;
  /** Batches sent and not yet acknowledged [8]. */
  maxInFlight?: number;
  /** Heartbeat interval, ms; 0 = none [30000]. */
  heartbeatIntervalMs?: number;
  /** No reply for this long: reconnect and resend, ms [30000]. */
  ackTimeoutMs?: number;
  /** First reconnect delay, ms; doubles up to `maxReconnectDelayMs` [500]. */
  reconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  /** Prefix of the client's storage keys ['dolake:']. */
  storagePrefix?: string;
  /** A batch DoLake refused for good (a nack with `shouldRetry: false`). */
  onRejected?(batch: CDCBatchMessage, nack: NackMessage): void | Promise<void>;
  /** Each `status` DoLake sends. */
  onStatus?(status: StatusMessage): void;
  /** The clock, Unix ms [Date.now]. */
  now?(): number;
}

/** A change as the shard hands it over; the client numbers it. */
export type Change = Omit<CDCEvent, 'sequence' | 'timestamp'> & { timestamp?: number };

/** What the client has done since it was opened. */
export interface ClientStats {
  batchesCut: number;
  sends: number;
  resends: number;
  acked: number;
  duplicates: number;
  retryableNacks: number;
  rejected: number;
  connects: number;
  /** Unacknowledged batches found in storage when the client was opened. */
  restoredBatches: number;
}

interface Stored {
  events: CDCEvent[];
  sequenceNumber: number;
  retryCount: number;
}

interface Entry extends Stored {
  sentAt: number | null;
  everSent: boolean;
}

/** Opens the WebSocket through a Durable Object stub (`env.DOLAKE.get(id)`). */
export function connectThroughStub(
  stub: { fetch(url: string, init?: { headers?: Record<string, string> }): Promise<{ status: number; webSocket?: WebSocketLike | null }> },
  url = 'https://dolake/ws',
): (headers: Record<string, string>) => Promise<WebSocketLike> {
  return async (headers) => {
    const res = await stub.fetch(url, { headers: { Upgrade: 'websocket', ...headers } });
    if (res.status !== 101 || !res.webSocket) throw new Error(`DoLake refused the upgrade: ${res.status}`);
    return res.webSocket;
  };
}

type Timer = unknown;
const timers = globalThis as unknown as {
  setTimeout(fn: () => void, ms: number): Timer;
  clearTimeout(t: Timer): void;
  setInterval(fn: () => void, ms: number): Timer;
  clearInterval(t: Timer): void;
};

const pad = (n: number) => n.toString().padStart(16, '0');

export class DoLakeClient {
  readonly stats: ClientStats = {
    batchesCut: 0, sends: 0, resends: 0, acked: 0, duplicates: 0, retryableNacks: 0, rejected: 0, connects: 0, restoredBatches: 0,
  };
  private readonly o: Required<Omit<DoLakeClientOptions, 'onRejected' | 'onStatus' | 'sourceShardName' | 'headers'>> & DoLakeClientOptions;
  private nextCdcSequence = 0;
  private nextBatchSequence = 0;
  private lastAckSequence = -1;
  private open: CDCEvent[] = [];
  private openWaiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  private openTimer: Timer | null = null;
  private queue = new Map<number, Entry>();
  private ws: WebSocketLike | null = null;
  private connecting = false;
  private attempt = 0;
  private reconnectTimer: Timer | null = null;
  private heartbeatTimer: Timer | null = null;
  private watchdog: Timer | null = null;
  private pausedUntil = 0;
  private resumeTimer: Timer | null = null;
  private idleWaiters: Array<() => void> = [];
  private flushWaiters = new Map<string, (r: FlushResult) => void>();
  private cutting: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(options: DoLakeClientOptions) {
    this.o = {
      batchSize: 100,
      batchTimeoutMs: 5000,
      maxInFlight: 8,
      heartbeatIntervalMs: 30_000,
      ackTimeoutMs: 30_000,
      reconnectDelayMs: 500,
      maxReconnectDelayMs: 30_000,
      storagePrefix: 'dolake:',
      now: () => Date.now(),
      ...options,
    };
  }

  /** Restores the sequences and unacknowledged batches, then connects. */
  static async open(options: DoLakeClientOptions): Promise<DoLakeClient> {
    const client = new DoLakeClient(options);
    await client.restore();
    client.start();
    return client;
  }

  /** The sequence number the next appended change gets. */
  get nextSequence(): number {
    return this.nextCdcSequence;
  }

  /** Batches persisted and not yet acknowledged. */
  get pendingBatches(): number {
    return this.queue.size;
  }

  /**
   * Adds a change to the open batch. Resolves once the batch holding it is
   * persisted (then it survives any restart and reaches DoLake), not when it
   * is acknowledged: see {@link waitForAcks}.
   */
  append(change: Change): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the DoLake client is closed'));
    const event: CDCEvent = { ...change, sequence: this.nextCdcSequence++, timestamp: change.timestamp ?? this.o.now() };
    this.open.push(event);
    const persisted = new Promise<void>((resolve, reject) => this.openWaiters.push({ resolve, reject }));
    if (this.open.length >= this.o.batchSize) {
      void this.flush();
    } else if (this.openTimer === null) {
      this.openTimer = timers.setTimeout(() => { this.openTimer = null; void this.flush(); }, this.o.batchTimeoutMs);
    }
    return persisted;
  }

  /** Cuts the open batch now: persists and sends it. */
  flush(): Promise<void> {
    if (this.openTimer !== null) { timers.clearTimeout(this.openTimer); this.openTimer = null; }
    const events = this.open;
    const waiters = this.openWaiters;
    this.open = [];
    this.openWaiters = [];
    if (events.length === 0) return this.cutting;
    // Cuts are persisted in order, so batch numbers follow event sequences.
    this.cutting = this.cutting.then(async () => {
      const sequenceNumber = this.nextBatchSequence;
      const stored: Stored = { events, sequenceNumber, retryCount: 0 };
      const p = this.o.storagePrefix;
      try {
        await this.o.storage.put({
          [`${p}batch:${pad(sequenceNumber)}`]: stored,
          [`${p}cdc_sequence`]: events[events.length - 1].sequence + 1,
          [`${p}batch_sequence`]: sequenceNumber + 1,
        });
      } catch (e) {
        waiters.forEach((w) => w.reject(e));
        return;
      }
      this.nextBatchSequence = sequenceNumber + 1;
      this.queue.set(sequenceNumber, { ...stored, sentAt: null, everSent: false });
      this.stats.batchesCut++;
      waiters.forEach((w) => w.resolve());
      this.pump();
    });
    return this.cutting;
  }

  /** Cuts the open batch and resolves once DoLake acknowledged every batch. */
  async waitForAcks(timeoutMs = 60_000): Promise<void> {
    await this.flush();
    if (this.queue.size === 0) return;
    await new Promise<void>((resolve, reject) => {
      const timer = timers.setTimeout(() => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== done);
        reject(new Error(`${this.queue.size} batch(es) not acknowledged after ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => { timers.clearTimeout(timer); resolve(); };
      this.idleWaiters.push(done);
    });
  }

  /** Sends `flush_request` and resolves with DoLake's `FlushResult`. */
  requestFlush(reason = 'manual', timeoutMs = 120_000): Promise<FlushResult> {
    const correlationId = `flush-${this.o.sourceDoId}-${this.o.now()}-${Math.random().toString(16).slice(2, 8)}`;
    return new Promise((resolve, reject) => {
      if (!this.ws) { reject(new Error('not connected to DoLake')); return; }
      const timer = timers.setTimeout(() => { this.flushWaiters.delete(correlationId); reject(new Error('no flush_response')); }, timeoutMs);
      this.flushWaiters.set(correlationId, (r) => { timers.clearTimeout(timer); resolve(r); });
      this.sendJson({ type: 'flush_request', timestamp: this.o.now(), correlationId, sourceDoId: this.o.sourceDoId, reason });
    });
  }

  /** Cuts the open batch, stops timers, says goodbye and closes the socket. */
  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    for (const t of [this.reconnectTimer, this.resumeTimer]) if (t !== null) timers.clearTimeout(t);
    for (const t of [this.heartbeatTimer, this.watchdog]) if (t !== null) timers.clearInterval(t);
    if (this.ws) {
      this.sendJson({ type: 'disconnect', timestamp: this.o.now(), sourceDoId: this.o.sourceDoId, reason: 'shutdown' });
      try { this.ws.close(1000, 'client closed'); } catch { /* already closed */ }
      this.ws = null;
    }
  }

  private async restore(): Promise<void> {
    const p = this.o.storagePrefix;
    const s = this.o.storage;
    this.nextCdcSequence = (await s.get<number>(`${p}cdc_sequence`)) ?? 0;
    this.nextBatchSequence = (await s.get<number>(`${p}batch_sequence`)) ?? 0;
    this.lastAckSequence = (await s.get<number>(`${p}last_ack_sequence`)) ?? -1;
    const stored = await s.list<Stored>({ prefix: `${p}batch:` });
    for (const b of stored.values()) {
      // Sent before the restart, maybe received: a resend is a retry.
      this.queue.set(b.sequenceNumber, { ...b, sentAt: null, everSent: true });
    }
    this.stats.restoredBatches = this.queue.size;
  }

  private start(): void {
    if (this.o.heartbeatIntervalMs > 0) {
      this.heartbeatTimer = timers.setInterval(() => {
        if (!this.ws) return;
        let pendingEvents = this.open.length;
        for (const e of this.queue.values()) pendingEvents += e.events.length;
        this.sendJson({ type: 'heartbeat', timestamp: this.o.now(), sourceDoId: this.o.sourceDoId, lastAckSequence: this.lastAckSequence, pendingEvents });
      }, this.o.heartbeatIntervalMs);
    }
    this.watchdog = timers.setInterval(() => {
      const now = this.o.now();
      for (const e of this.queue.values()) {
        if (e.sentAt !== null && now - e.sentAt > this.o.ackTimeoutMs) {
          this.drop('no reply within ackTimeoutMs');
          return;
        }
      }
    }, Math.max(100, Math.min(1000, this.o.ackTimeoutMs / 4)));
    void this.connect();
  }

  private async connect(): Promise<void> {
    if (this.closed || this.ws || this.connecting) return;
    this.connecting = true;
    let ws: WebSocketLike;
    try {
      ws = await this.o.connect({
        'X-Client-ID': this.o.sourceDoId,
        'X-Shard-Name': this.o.sourceShardName ?? this.o.sourceDoId,
        ...(this.o.headers ?? {}),
      });
      ws.accept?.();
    } catch {
      this.connecting = false;
      this.scheduleReconnect();
      return;
    }
    this.connecting = false;
    if (this.closed) { try { ws.close(1000, 'client closed'); } catch { /* gone */ } return; }
    this.ws = ws;
    this.stats.connects++;
    ws.addEventListener('message', (event: { data: unknown }) => {
      if (this.ws !== ws) return;
      let message: ServerMessage;
      try { message = JSON.parse(String(event.data)); } catch { return; }
      this.receive(message);
    });
    const lost = () => { if (this.ws === ws) this.drop('connection lost'); };
    ws.addEventListener('close', lost);
    ws.addEventListener('error', lost);
    this.sendJson({
      type: 'connect',
      timestamp: this.o.now(),
      sourceDoId: this.o.sourceDoId,
      sourceShardName: this.o.sourceShardName ?? this.o.sourceDoId,
      lastAckSequence: this.lastAckSequence,
      protocolVersion: 1,
      capabilities: { binaryProtocol: false, compression: false, batching: true, maxBatchSize: this.o.batchSize, maxMessageSize: 4 * 1024 * 1024 },
    });
    this.pump();
  }

  /** Forgets the socket; every unacknowledged batch goes again after reconnecting. */
  private drop(_why: string): void {
    const ws = this.ws;
    this.ws = null;
    if (ws) { try { ws.close(1011, 'reconnecting'); } catch { /* gone */ } }
    for (const e of this.queue.values()) e.sentAt = null;
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closed || this.reconnectTimer !== null) return;
    const base = Math.min(this.o.maxReconnectDelayMs, this.o.reconnectDelayMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    const delay = base / 2 + Math.random() * (base / 2);
    this.reconnectTimer = timers.setTimeout(() => { this.reconnectTimer = null; void this.connect(); }, delay);
  }

  private pump(): void {
    if (!this.ws || this.closed) return;
    const now = this.o.now();
    if (now < this.pausedUntil) {
      if (this.resumeTimer === null) {
        this.resumeTimer = timers.setTimeout(() => { this.resumeTimer = null; this.pump(); }, this.pausedUntil - now);
      }
      return;
    }
    let inFlight = 0;
    for (const e of this.queue.values()) if (e.sentAt !== null) inFlight++;
    const order = [...this.queue.keys()].sort((a, b) => a - b);
    for (const seq of order) {
      if (inFlight >= this.o.maxInFlight) break;
      const e = this.queue.get(seq)!;
      if (e.sentAt !== null) continue;
      const retry = e.everSent;
      if (retry) { e.retryCount++; this.stats.resends++; }
      const batch: CDCBatchMessage = {
        type: 'cdc_batch',
        timestamp: now,
        correlationId: `${this.o.sourceDoId}:${seq}`,
        sourceDoId: this.o.sourceDoId,
        sourceShardName: this.o.sourceShardName ?? this.o.sourceDoId,
        events: e.events,
        sequenceNumber: seq,
        firstEventSequence: e.events[0]?.sequence,
        lastEventSequence: e.events[e.events.length - 1]?.sequence,
        isRetry: retry,
        retryCount: e.retryCount,
      };
      if (!this.sendJson(batch)) return;
      e.sentAt = now;
      e.everSent = true;
      this.stats.sends++;
      inFlight++;
    }
  }

  private sendJson(message: unknown): boolean {
    try {
      this.ws?.send(JSON.stringify(message));
      return this.ws !== null;
    } catch {
      this.drop('send failed');
      return false;
    }
  }

  private receive(message: ServerMessage): void {
    switch (message.type) {
      case 'ack':
        void this.acked(message);
        break;
      case 'nack':
        void this.nacked(message);
        break;
      case 'status':
        this.attempt = 0;
        this.o.onStatus?.(message);
        break;
      case 'flush_response': {
        const waiter = message.correlationId ? this.flushWaiters.get(message.correlationId) : undefined;
        if (waiter) { this.flushWaiters.delete(message.correlationId!); waiter(message.result); }
        break;
      }
      default:
        break;
    }
  }

  private async acked(ack: AckMessage): Promise<void> {
    this.attempt = 0;
    const entry = this.queue.get(ack.sequenceNumber);
    if (!entry) return;
    this.queue.delete(ack.sequenceNumber);
    this.stats.acked++;
    if (ack.status === 'duplicate') this.stats.duplicates++;
    if (ack.sequenceNumber > this.lastAckSequence) this.lastAckSequence = ack.sequenceNumber;
    const p = this.o.storagePrefix;
    await this.o.storage.delete(`${p}batch:${pad(ack.sequenceNumber)}`);
    await this.o.storage.put({ [`${p}last_ack_sequence`]: this.lastAckSequence });
    this.pump();
    this.settle();
  }

  private async nacked(nack: NackMessage): Promise<void> {
    if (nack.sequenceNumber === undefined) return;
    const entry = this.queue.get(nack.sequenceNumber);
    if (!entry) return;
    if (nack.shouldRetry) {
      this.stats.retryableNacks++;
      entry.sentAt = null;
      this.pausedUntil = Math.max(this.pausedUntil, this.o.now() + (nack.retryDelayMs ?? 1000));
      this.pump();
      return;
    }
    this.queue.delete(nack.sequenceNumber);
    this.stats.rejected++;
    const batch: CDCBatchMessage = {
      type: 'cdc_batch', sourceDoId: this.o.sourceDoId, events: entry.events, sequenceNumber: entry.sequenceNumber, isRetry: entry.everSent, retryCount: entry.retryCount,
    };
    try {
      await this.o.onRejected?.(batch, nack);
    } finally {
      await this.o.storage.delete(`${this.o.storagePrefix}batch:${pad(nack.sequenceNumber)}`);
      this.pump();
      this.settle();
    }
  }

  private settle(): void {
    if (this.queue.size > 0 || this.open.length > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    waiters.forEach((w) => w());
  }
}
