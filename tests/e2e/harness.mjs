// Test harness: starts DoLake in real workerd (server.mjs) and drives it with
// a real WebSocket client that behaves like the integration guide's DoSQL.
// Every wait has a timeout; every server is killed when its test ends.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));

export function tempStateDir() {
  return mkdtempSync(path.join(os.tmpdir(), 'dolake-e2e-'));
}

export function removeDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}

/** Resolves `promise` or rejects after `ms` with `what`. */
export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Starts DoLake on loopback. Returns { url, wsUrl, logs, stop(), kill() }.
 * `config` becomes the DOLAKE_CONFIG var (a string or an object).
 */
export async function startDoLake({ stateDir, config, port, hooks = false, authToken, logLevel, extraEnv = {} } = {}) {
  const env = { ...process.env, ...extraEnv, STATE_DIR: stateDir };
  if (logLevel) env.DOLAKE_LOG_LEVEL = logLevel;
  if (hooks) env.DOLAKE_TEST_HOOKS = '1';
  if (authToken) env.DOLAKE_AUTH_TOKEN = authToken;
  if (config !== undefined) env.DOLAKE_CONFIG = typeof config === 'string' ? config : JSON.stringify(config);
  if (port) env.PORT = String(port);
  const child = spawn(process.execPath, [path.join(here, 'server.mjs')], {
    env,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs = [];
  let exited = false;
  child.on('exit', () => { exited = true; });
  const ready = new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      for (const line of d.toString().split('\n')) if (line.trim()) logs.push(line);
      const m = out.match(/READY (\S+) (\S+)/);
      if (m) resolve([m[1], m[2]]);
    });
    child.stderr.on('data', (d) => logs.push(...d.toString().split('\n').filter((l) => l.trim())));
    child.on('exit', (code) => reject(new Error(`server exited early (${code}): ${logs.slice(-20).join('\n')}`)));
  });
  const [href, inspector] = await withTimeout(ready, 30_000, 'DoLake server start');
  const url = href.replace(/\/$/, '');
  const killGroup = (signal) => {
    try { process.kill(-child.pid, signal); } catch { /* already gone */ }
  };
  const waitExit = () => (exited ? Promise.resolve() : new Promise((r) => child.once('exit', r)));
  return {
    url,
    /** The runtime's process group (node and workerd). */
    pid: child.pid,
    wsUrl: url.replace(/^http/, 'ws'),
    inspector,
    logs,
    /** Crash: SIGKILL node and workerd at once. */
    async kill() {
      killGroup('SIGKILL');
      await withTimeout(waitExit(), 10_000, 'server exit after SIGKILL');
      await sleep(200);
    },
    async stop() {
      killGroup('SIGTERM');
      await withTimeout(waitExit(), 10_000, 'server exit after SIGTERM').catch(() => killGroup('SIGKILL'));
    },
  };
}

export async function getJson(url, init) {
  let res;
  try {
    res = await withTimeout(fetch(url, init), 10_000, `fetch ${url}`);
  } catch (e) {
    // A reused keep-alive connection that the server closed: retry GETs once.
    if ((init?.method ?? 'GET') !== 'GET' || e.cause?.code !== 'ECONNRESET') throw e;
    res = await withTimeout(fetch(url, init), 10_000, `fetch ${url} (retry)`);
  }
  const text = await res.text();
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  return { status: res.status, body, headers: res.headers };
}

/**
 * A DoSQL shard as in the guide: connects with its headers, sends `connect`,
 * sends cdc_batch messages and waits for the ack or nack of each sequence number.
 */
export class Shard {
  constructor(wsUrl, { sourceDoId, shardName, path = '/ws', headers = {} } = {}) {
    this.wsUrl = wsUrl;
    this.path = path;
    this.sourceDoId = sourceDoId ?? `do-${Math.random().toString(16).slice(2, 10)}`;
    this.shardName = shardName ?? `shard-${this.sourceDoId.slice(0, 8)}`;
    this.headers = headers;
    this.cdcSequence = 0;
    this.sequenceNumber = 0;
    this.pending = new Map();
    this.inbox = [];
    this.waiters = [];
    this.closed = null;
  }

  async open() {
    const ws = new WebSocket(`${this.wsUrl}${this.path}`, {
      headers: { 'X-Client-ID': this.sourceDoId, 'X-Shard-Name': this.shardName, ...this.headers },
    });
    this.ws = ws;
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    ws.on('message', (data, isBinary) => this.#receive(isBinary ? data : data.toString()));
    await withTimeout(new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => {
        let body = '';
        res.on('data', (d) => { body += d; });
        res.on('end', () => {
          const error = new Error(`upgrade refused: ${res.statusCode} ${body}`);
          error.status = res.statusCode;
          error.headers = res.headers;
          try { error.body = JSON.parse(body); } catch { error.body = body; }
          reject(error);
        });
      });
    }), 10_000, 'WebSocket open');
    return this;
  }

  #receive(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { msg = { type: 'raw', text }; }
    if ((msg.type === 'ack' || msg.type === 'nack') && this.pending.has(msg.sequenceNumber)) {
      const resolve = this.pending.get(msg.sequenceNumber);
      this.pending.delete(msg.sequenceNumber);
      resolve(msg);
      return;
    }
    const i = this.waiters.findIndex((w) => w.match(msg));
    if (i >= 0) {
      const [w] = this.waiters.splice(i, 1);
      w.resolve(msg);
    } else {
      this.inbox.push(msg);
    }
  }

  /** The next message (not an expected ack) for which `match` is true. */
  next(match = () => true, ms = 10_000) {
    const i = this.inbox.findIndex(match);
    if (i >= 0) return Promise.resolve(this.inbox.splice(i, 1)[0]);
    return withTimeout(new Promise((resolve) => this.waiters.push({ match, resolve })), ms, 'a message from DoLake');
  }

  sendRaw(data) {
    this.ws.send(data);
  }

  async connect() {
    this.sendRaw(JSON.stringify({
      type: 'connect',
      timestamp: Date.now(),
      sourceDoId: this.sourceDoId,
      sourceShardName: this.shardName,
      lastAckSequence: this.sequenceNumber - 1,
      protocolVersion: 1,
      capabilities: { binaryProtocol: false, compression: false, batching: true, maxBatchSize: 1000, maxMessageSize: 4 * 1024 * 1024 },
    }));
    return this.next((m) => m.type === 'status');
  }

  /** Builds change events: `count` events over `tables`, a mix of operations. */
  makeEvents(count, tables = ['users']) {
    const events = [];
    for (let i = 0; i < count; i++) {
      const sequence = this.cdcSequence++;
      const table = tables[sequence % tables.length];
      const rowId = `${this.sourceDoId}-${sequence}`;
      const row = { id: rowId, n: sequence, name: `name-${sequence}`, score: sequence / 4, active: sequence % 2 === 0 };
      const op = sequence % 5 === 3 ? 'UPDATE' : sequence % 5 === 4 ? 'DELETE' : 'INSERT';
      const event = { sequence, timestamp: Date.now(), operation: op, table, rowId };
      if (op !== 'DELETE') event.after = row;
      if (op !== 'INSERT') event.before = { ...row, n: row.n - 1 };
      events.push(event);
    }
    return events;
  }

  batchMessage(events, sequenceNumber = this.sequenceNumber++, extra = {}) {
    return {
      type: 'cdc_batch',
      timestamp: Date.now(),
      correlationId: `corr-${this.sourceDoId}-${sequenceNumber}`,
      sourceDoId: this.sourceDoId,
      sourceShardName: this.shardName,
      events,
      sequenceNumber,
      firstEventSequence: events[0]?.sequence,
      lastEventSequence: events.at(-1)?.sequence,
      sizeBytes: JSON.stringify(events).length,
      isRetry: false,
      retryCount: 0,
      ...extra,
    };
  }

  /** Sends a batch message and resolves with its ack or nack. */
  send(message, ms = 15_000) {
    const reply = new Promise((resolve) => this.pending.set(message.sequenceNumber, resolve));
    this.sendRaw(JSON.stringify(message));
    return withTimeout(reply, ms, `reply to batch ${message.sequenceNumber}`);
  }

  async close() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.close(1000, 'test done');
      await withTimeout(this.closed, 5_000, 'close').catch(() => this.ws.terminate());
    }
  }
}

/** Flush thresholds far away: flushes happen only when a test asks. */
export const QUIET = { flushThresholdEvents: 1_000_000_000, flushThresholdBytes: 50_000_000, flushThresholdMs: 3_600_000, flushIntervalMs: 3_600_000 };

/** Runs `fn(server, stateDir)` against a fresh DoLake with test hooks, then stops it. */
export async function withServer(config, fn) {
  const stateDir = tempStateDir();
  const server = await startDoLake({ stateDir, config, hooks: true });
  try {
    return await fn(server, stateDir);
  } finally {
    await server.stop();
    removeDir(stateDir);
  }
}

/** Copies every R2 object under `prefix/` to `dir` (keys relative to the prefix). */
export async function exportLake(server, dir, prefix = 'warehouse') {
  const { body: keys } = await getJson(`${server.inspector}/list`);
  let count = 0;
  for (const key of keys) {
    if (!key.startsWith(`${prefix}/`)) continue;
    const res = await withTimeout(fetch(`${server.inspector}/get?key=${encodeURIComponent(key)}`), 10_000, `get ${key}`);
    if (res.status !== 200) throw new Error(`cannot read ${key}: ${res.status}`);
    const file = path.join(dir, key.slice(prefix.length + 1));
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, Buffer.from(await res.arrayBuffer()));
    count++;
  }
  return { keys, count };
}

/**
 * Flushes until the buffer is empty (`ms` at most), then exports the lake to
 * `stateDir/export/warehouse`; returns that directory.
 */
export async function flushAndExport(server, stateDir, ms = 120_000) {
  await waitFor(async () => {
    await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
    return (await getJson(`${server.url}/lakehouse/status`)).body.buffer.eventCount === 0;
  }, ms, 'the buffer to flush');
  const warehouse = path.join(stateDir, 'export', 'warehouse');
  mkdirSync(warehouse, { recursive: true });
  await exportLake(server, warehouse);
  return warehouse;
}

/** Polls `check` every 200 ms until it returns a truthy value or `ms` pass. */
export async function waitFor(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(200);
  }
}

const root = path.resolve(here, '../..');

/** Runs tests/e2e/verify_lake.py (pyiceberg + DuckDB) on an exported lake. */
export function verifyLake({ warehouse, namespace = 'default', events, currentState = false }) {
  const expected = path.join(warehouse, '..', currentState ? 'expected-current.jsonl' : 'expected.jsonl');
  writeFileSync(expected, events.map((e) => JSON.stringify(e)).join('\n') + '\n');
  const python = path.join(root, '.tools/venv/bin/python');
  const args = [path.join(here, 'verify_lake.py'), '--warehouse', warehouse, '--namespace', namespace, '--expected', expected];
  if (currentState) args.push('--current-state');
  return new Promise((resolve, reject) => {
    const child = spawn(python, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`verify_lake timed out:\n${out}`)); }, 180_000);
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code, out }); });
  });
}

/**
 * Parses Prometheus text exposition (version 0.0.4) strictly: every sample's
 * family must have HELP and TYPE lines, names and labels must be well formed,
 * values must be numbers. Returns { family: { type, help, samples: [{ labels, value }] } }.
 */
export function parsePrometheus(text) {
  const families = {};
  const family = (name) => (families[name] ??= { samples: [] });
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    let m;
    if ((m = line.match(/^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/))) { family(m[1]).help = m[2]; continue; }
    if ((m = line.match(/^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/))) { family(m[1]).type = m[2]; continue; }
    if (line.startsWith('#')) throw new Error(`bad comment line: ${line}`);
    m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/);
    if (!m) throw new Error(`bad sample line: ${line}`);
    const labels = {};
    if (m[2]) {
      for (const pair of m[2].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    }
    const value = Number(m[3].replace('+Inf', 'Infinity').replace('-Inf', '-Infinity'));
    if (Number.isNaN(value) && m[3] !== 'NaN') throw new Error(`bad value: ${line}`);
    const f = families[m[1]];
    if (!f?.type || f.help === undefined) throw new Error(`sample before HELP/TYPE: ${line}`);
    f.samples.push({ labels, value });
  }
  return families;
}

export async function getMetrics(server, headers = {}) {
  const res = await withTimeout(fetch(`${server.url}/lakehouse/metrics`, { headers }), 10_000, 'metrics');
  if (res.status !== 200) throw new Error(`metrics: ${res.status} ${await res.text()}`);
  if (!res.headers.get('content-type')?.startsWith('text/plain')) throw new Error('metrics content type');
  return parsePrometheus(await res.text());
}

/**
 * What Durable Object storage holds on disk under a server's `stateDir`
 * (Miniflare persists each instance as `do/<script>-<Class>/<id>.sqlite`):
 * `{ relativePath: sha256 }` of every instance's database and WAL, leaving out
 * Miniflare's own `metadata.sqlite*` and the WAL index (`-shm`, which readers
 * write too). Equal snapshots: no instance was created and none was written.
 */
export function doStorageSnapshot(stateDir) {
  const root = path.join(stateDir, 'do');
  const snapshot = {};
  let files;
  try { files = readdirSync(root, { recursive: true }); } catch { return snapshot; }
  for (const file of files.map(String).sort()) {
    const name = path.basename(file);
    if (name.startsWith('metadata.sqlite') || name.endsWith('-shm') || !name.includes('.sqlite')) continue;
    snapshot[file] = createHash('sha256').update(readFileSync(path.join(root, file))).digest('hex');
  }
  return snapshot;
}

/** The Durable Object instances with storage on disk (their `.sqlite` files). */
export function doInstancesOnDisk(stateDir) {
  return Object.keys(doStorageSnapshot(stateDir)).filter((f) => f.endsWith('.sqlite'));
}
