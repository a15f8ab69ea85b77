// `make bench`: DoLake's performance baseline, in real workerd on loopback.
// Intake: dolake-loadgen with 1, 10 and 50 shards x batch sizes 100 and 1,000
// (200-byte rows). Flush: 10,000, 100,000 and 1,000,000 buffered events with
// snappy and zstd. Plus the WASM size. Writes target/bench/results.json and
// prints a table. Every server is on 127.0.0.1 and stopped at the end.
// Usage: node tests/bench/run.mjs [--quick]   (--quick: smaller, for a smoke run)
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { getJson, removeDir, startDoLake, tempStateDir, waitFor, withTimeout } from '../e2e/harness.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const quick = process.argv.includes('--quick');
// --flush-only N: only the flush scenarios of N events (both codecs).
const flushOnly = process.argv.includes('--flush-only') ? Number(process.argv[process.argv.indexOf('--flush-only') + 1]) : null;
// --intake-only N: only the intake scenarios with N shards.
const intakeOnly = process.argv.includes('--intake-only') ? Number(process.argv[process.argv.indexOf('--intake-only') + 1]) : null;
const loadgen = path.join(root, 'target/release/dolake-loadgen');
const outDir = path.join(root, 'target/bench');
mkdirSync(outDir, { recursive: true });

const QUIET = { flushThresholdEvents: 1_000_000_000, flushThresholdMs: 3_600_000, flushIntervalMs: 3_600_000 };

async function withServer(config, fn) {
  const stateDir = tempStateDir();
  const server = await startDoLake({ stateDir, config });
  try {
    return await fn(server);
  } finally {
    await server.stop();
    removeDir(stateDir);
  }
}

function runLoadgen(args) {
  return new Promise((resolve, reject) => {
    const out = path.join(os.tmpdir(), `loadgen-${process.pid}-${Date.now()}.json`);
    const child = spawn(loadgen, [...args, '--quiet', '--out', out], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => { err += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      try { resolve(JSON.parse(readFileSync(out, 'utf8'))); } catch (e) { reject(new Error(`loadgen exited ${code}: ${err}`)); }
    });
  });
}

async function intake(shards, batchSize) {
  // Buffer big enough that intake is measured, not backpressure.
  // All shards connect from 127.0.0.1: lift the per-IP limit (default 10).
  const config = { ...QUIET, maxBufferSize: 1024 * 1024 * 1024, flushThresholdBytes: 1024 * 1024 * 1024, rateLimit: { maxConnectionsPerIp: 1000 } };
  return withServer(config, async (server) => {
    const r = await runLoadgen(['--url', server.wsUrl, '--shards', String(shards), '--duration-s', quick ? '3' : '10',
      '--batch-size', String(batchSize), '--row-bytes', '200', '--tables', 'users,orders,items', '--seed', '7']);
    return { scenario: 'intake', shards, batchSize, rowBytes: 200, eventsAcked: r.eventsAcked, seconds: +r.elapsedSeconds.toFixed(1),
      eventsPerSecond: Math.round(r.eventsPerSecond), batchesPerSecond: Math.round(r.batchesPerSecond),
      p50: r.ackLatencyMs.p50, p95: r.ackLatencyMs.p95, p99: r.ackLatencyMs.p99, max: r.ackLatencyMs.max, nacks: r.nacksByReason };
  });
}

async function flush(events, codec) {
  const config = { ...QUIET, maxBufferSize: 1024 * 1024 * 1024, flushThresholdBytes: 1024 * 1024 * 1024, parquetCompression: codec };
  return withServer(config, async (server) => {
    // During a long flush a status request can wait behind a flush step: retry.
    const status = async () => {
      for (let attempt = 1; ; attempt++) {
        try {
          return (await getJson(`${server.url}/lakehouse/status`)).body;
        } catch (e) {
          if (attempt >= 30) throw e;
        }
      }
    };
    const shards = 4;
    const r = await runLoadgen(['--url', server.wsUrl, '--shards', String(shards), '--batches', String(Math.ceil(events / shards / 1000)),
      '--batch-size', '1000', '--row-bytes', '200', '--tables', 'users,orders,items', '--seed', '11']);
    const before = await status();
    const start = Date.now();
    await withTimeout(fetch(`${server.url}/lakehouse/flush`, { method: 'POST' }), 900_000, 'flush');
    await waitFor(async () => (await status()).buffer.eventCount === 0, 900_000, 'the buffer to drain');
    const seconds = (Date.now() - start) / 1000;
    const after = await status();
    return { scenario: 'flush', codec, events: r.eventsAcked, bufferedMiB: +(before.buffer.totalSizeBytes / 1048576).toFixed(1),
      seconds: +seconds.toFixed(1), eventsPerSecond: Math.round(r.eventsAcked / seconds), invocations: after.flush.history.flushes,
      writtenMiB: +(after.flush.history.bytesWritten / 1048576).toFixed(1), files: after.flush.history.filesWritten,
      wasmMemoryMiB: +(after.instance.wasmMemoryBytes / 1048576).toFixed(1) };
  });
}

const results = { machine: `${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown'}), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB`, date: new Date().toISOString(), quick, rows: [] };
const wasm = path.join(root, 'build/index_bg.wasm');
results.wasm = { rawBytes: statSync(wasm).size, gzipBytes: gzipSync(readFileSync(wasm), { level: 9 }).length };
results.commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root }).toString().trim();

for (const shards of flushOnly ? [] : intakeOnly ? [intakeOnly] : quick ? [1, 10] : [1, 10, 50]) {
  for (const batchSize of [100, 1000]) {
    const row = await intake(shards, batchSize);
    results.rows.push(row);
    console.log(JSON.stringify(row));
  }
}
for (const events of intakeOnly ? [] : flushOnly ? [flushOnly] : quick ? [10_000] : [10_000, 100_000, 1_000_000]) {
  for (const codec of ['snappy', 'zstd']) {
    const row = await flush(events, codec);
    results.rows.push(row);
    console.log(JSON.stringify(row));
  }
}
writeFileSync(path.join(outDir, 'results.json'), JSON.stringify(results, null, 2));

const table = [
  `machine: ${results.machine}; commit ${results.commit}; WASM ${(results.wasm.rawBytes / 1e6).toFixed(2)} MB raw, ${(results.wasm.gzipBytes / 1e6).toFixed(2)} MB gzip -9`,
  '',
  '| intake: shards | batch | events acked | events/s | ack p50 ms | p95 | p99 | max |',
  '|---|---|---|---|---|---|---|---|',
  ...results.rows.filter((r) => r.scenario === 'intake').map((r) => `| ${r.shards} | ${r.batchSize} | ${r.eventsAcked} | ${r.eventsPerSecond} | ${r.p50} | ${r.p95} | ${r.p99} | ${r.max} |`),
  '',
  '| flush: events | codec | buffered MiB | seconds | events/s | invocations | written MiB | files | WASM memory MiB |',
  '|---|---|---|---|---|---|---|---|---|',
  ...results.rows.filter((r) => r.scenario === 'flush').map((r) => `| ${r.events} | ${r.codec} | ${r.bufferedMiB} | ${r.seconds} | ${r.eventsPerSecond} | ${r.invocations} | ${r.writtenMiB} | ${r.files} | ${r.wasmMemoryMiB} |`),
].join('\n');
writeFileSync(path.join(outDir, 'results.md'), table + '\n');
console.log(`\n${table}\n\nwritten: target/bench/results.json, target/bench/results.md`);
