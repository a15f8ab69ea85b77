// Measures a flush of a full buffer (default maxBufferSize, 100 MiB) in real
// workerd with local R2: fill time, flush time (all steps, across alarms),
// events per second, and the WASM linear memory high-water mark.
// Usage: node tests/bench/flush_full_buffer.mjs [targetMiB=95] [codec=snappy]
import { mkdirSync } from 'node:fs';
import { getJson, removeDir, Shard, startDoLake, tempStateDir, waitFor, withTimeout } from '../e2e/harness.mjs';

const targetMiB = Number(process.argv[2] ?? 95);
const codec = process.argv[3] ?? 'snappy';
const stateDir = tempStateDir();
mkdirSync(stateDir, { recursive: true });
const config = { flushThresholdEvents: 1_000_000_000, flushThresholdBytes: 100 * 1024 * 1024, flushThresholdMs: 3_600_000, flushIntervalMs: 3_600_000, parquetCompression: codec };
const server = await startDoLake({ stateDir, config });
const status = async () => (await getJson(`${server.url}/lakehouse/status`)).body;
try {
  const shards = await Promise.all([0, 1, 2, 3].map((i) => new Shard(server.wsUrl, { sourceDoId: `bench-${i}` }).open()));
  const fillStart = Date.now();
  let bytes = 0;
  let events = 0;
  while (bytes < targetMiB * 1024 * 1024) {
    const acks = await Promise.all(shards.map((s) => s.send(s.batchMessage(s.makeEvents(1000, ['users', 'orders', 'items'])), 60_000)));
    for (const a of acks) if (a.type !== 'ack') throw new Error(JSON.stringify(a));
    const s = await status();
    bytes = s.buffer.totalSizeBytes;
    events = s.buffer.eventCount;
  }
  const fillMs = Date.now() - fillStart;
  const before = await status();
  const flushStart = Date.now();
  const first = { body: await (await withTimeout(fetch(`${server.url}/lakehouse/flush`, { method: 'POST' }), 600_000, 'POST /flush')).json() };
  await waitFor(async () => (await status()).buffer.eventCount === 0, 600_000, 'the buffer to drain');
  const flushMs = Date.now() - flushStart;
  const after = await status();
  const row = {
    codec,
    bufferedMiB: +(before.buffer.totalSizeBytes / 1048576).toFixed(1),
    events,
    fillSeconds: +(fillMs / 1000).toFixed(1),
    ackedEventsPerSecond: Math.round(events / (fillMs / 1000)),
    flushSeconds: +(flushMs / 1000).toFixed(1),
    flushEventsPerSecond: Math.round(events / (flushMs / 1000)),
    firstRequestMs: first.body.durationMs,
    alarmsOrRequests: after.flush.history.flushes,
    bytesWrittenMiB: +(after.flush.history.bytesWritten / 1048576).toFixed(1),
    wasmMemoryMiBBeforeFlush: +(before.instance.wasmMemoryBytes / 1048576).toFixed(1),
    wasmMemoryMiBAfterFlush: +(after.instance.wasmMemoryBytes / 1048576).toFixed(1),
  };
  console.log(JSON.stringify(row));
  await Promise.all(shards.map((s) => s.close()));
} catch (e) {
  console.error(e);
  console.error(server.logs.slice(-30).join('\n'));
  process.exitCode = 1;
} finally {
  await server.stop();
  removeDir(stateDir);
}
