// Shared by the benchmarks (intake_baseline.mjs, profile.mjs,
// flush_growth.mjs): the configuration that holds flushes off, the load
// generator run, buffering events and flushing them all, and the CPU of a
// process group.
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { getJson, waitFor, withTimeout } from '../e2e/harness.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const loadgen = path.join(root, 'target/release/dolake-loadgen');

export const CONFIG = {
  flushThresholdEvents: 1_000_000_000, flushThresholdMs: 3_600_000, flushIntervalMs: 3_600_000,
  maxBufferSize: 2 * 1024 * 1024 * 1024, flushThresholdBytes: 2 * 1024 * 1024 * 1024,
  rateLimit: { maxConnectionsPerIp: 1000, messagesPerSecond: 1_000_000, burstCapacity: 1_000_000, connectionsPerSecond: 1000 },
  maintenance: { enabled: false },
};

/** CPU seconds (user + system) of every process in process group `pgid`. */
export function groupCpu(pgid) {
  let ticks = 0;
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    let stat;
    try { stat = readFileSync(`/proc/${pid}/stat`, 'utf8'); } catch { continue; }
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(f[2]) === pgid) ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks / 100;
}

/** Runs the load generator with `args`; its JSON report. */
export function loadgenRun(args, limitSeconds) {
  return new Promise((resolve, reject) => {
    const out = path.join(os.tmpdir(), `loadgen-${process.pid}-${Date.now()}.json`);
    const child = spawn(loadgen, [...args, '--quiet', '--out', out], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => { err += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), limitSeconds * 1000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      try { resolve(JSON.parse(readFileSync(out, 'utf8'))); } catch { reject(new Error(`loadgen exited ${code}: ${err.slice(-2000)}`)); }
    });
  });
}

/** One cell of the intake benches: `shards` x `batchSize`-event batches for `seconds`. */
export function runLoadgen(url, shards, batchSize, seconds) {
  return loadgenRun(['--url', url, '--shards', String(shards), '--duration-s', String(seconds), '--batch-size', String(batchSize),
    '--row-bytes', '220', '--tables', 'users,orders,items', '--seed', '7', '--heartbeat-ms', '0'], seconds + 120);
}

/** Buffers `events` events (4 shards x 1,000-event batches, 200-byte rows, 3 tables). */
export async function fill(server, events, seed = 11) {
  const r = await loadgenRun(['--url', server.wsUrl, '--shards', '4', '--batches', String(Math.ceil(events / 4 / 1000)),
    '--batch-size', '1000', '--row-bytes', '200', '--tables', 'users,orders,items', '--seed', String(seed), '--heartbeat-ms', '0'], 900);
  if (r.eventsAcked !== r.eventsSent) throw new Error(`${r.eventsAcked} of ${r.eventsSent} acked`);
  return r;
}

/** Flushes until the buffer is empty; seconds taken. */
export async function drain(server) {
  const start = Date.now();
  await withTimeout(fetch(`${server.url}/lakehouse/flush`, { method: 'POST' }), 900_000, 'flush');
  // A status request can wait behind a flush step: waitFor retries.
  await waitFor(async () => (await getJson(`${server.url}/lakehouse/status`)).body.buffer.eventCount === 0, 900_000, 'the buffer to drain');
  return (Date.now() - start) / 1000;
}
