// The load generator (src/bin/dolake-loadgen) end to end against the real
// worker in workerd: a small scenario with --verify (every acked event in the
// Iceberg tables exactly once), and a crash of the runtime mid-run (the shards
// reconnect, resend their pending batches, and the lake still holds every
// acked event once). Every wait is bounded; everything talks to 127.0.0.1.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { flushAndExport, getJson, removeDir, sleep, startDoLake, tempStateDir, withTimeout } from './harness.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const binary = path.join(root, 'target/debug/dolake-loadgen');
const QUIET = { flushThresholdEvents: 1_000_000_000, flushThresholdBytes: 50_000_000, flushThresholdMs: 3_600_000, flushIntervalMs: 3_600_000 };

/** Runs a command; resolves { code, stdout, stderr }; kills it after `ms`. */
function run(cmd, args, { ms, cwd = root, onStderr } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; onStderr?.(stderr); });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')} timed out after ${ms} ms\n${stdout}\n${stderr.slice(-4000)}`));
    }, ms);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

before(async () => {
  // A debug build reuses what `cargo test` compiled; speed does not matter here.
  const { code, stderr } = await run('cargo', ['build', '--bin', 'dolake-loadgen'], { ms: 15 * 60_000 });
  assert.equal(code, 0, stderr.slice(-4000));
  assert.ok(existsSync(binary));
}, { timeout: 16 * 60_000 });

describe('dolake-loadgen', () => {
  const dirs = [];
  after(() => dirs.forEach(removeDir));

  test('4 shards x 20 batches x 50 events over 2 tables, --verify: all acked, the lake holds each once', { timeout: 10 * 60_000 }, async () => {
    const stateDir = tempStateDir();
    dirs.push(stateDir);
    const server = await startDoLake({ stateDir, config: QUIET });
    try {
      const out = path.join(stateDir, 'results.json');
      const { code, stdout, stderr } = await run(binary, [
        '--url', server.wsUrl, '--inspector', server.inspector,
        '--shards', '4', '--batches', '20', '--batch-size', '50', '--tables', 'users,orders',
        '--row-bytes', '300', '--mix', '70:20:10', '--heartbeat-ms', '100', '--seed', '42',
        '--verify', '--out', out,
      ], { ms: 8 * 60_000 });
      const detail = `${stdout}\n${stderr.slice(-4000)}`;
      assert.equal(code, 0, detail);
      const s = JSON.parse(readFileSync(out, 'utf8'));
      assert.equal(s.ok, true, detail);
      assert.equal(s.eventsSent, 4 * 20 * 50);
      assert.equal(s.eventsAcked, s.eventsSent);
      assert.equal(s.batchesAcked, 80);
      assert.equal(s.droppedBatches, 0);
      assert.deepEqual(s.nacksByReason, {});
      assert.deepEqual(s.shardErrors, []);
      assert.equal(s.ackLatencyMs.count, 80);
      assert.ok(s.ackLatencyMs.p50 > 0 && s.ackLatencyMs.p50 <= s.ackLatencyMs.p95);
      assert.ok(s.ackLatencyMs.p95 <= s.ackLatencyMs.p99 && s.ackLatencyMs.p99 <= s.ackLatencyMs.max);
      assert.ok(s.eventsPerSecond > 0);
      assert.equal(s.verification.passed, true, detail);
      assert.equal(s.verification.expectedEvents, 4000);
      assert.equal(s.verification.eventsFlushed, 4000);
      assert.match(stdout, /events sent 4000 {2}acked 4000/);
      assert.match(stdout, /ack latency ms: p50 [\d.]+ {2}p95 [\d.]+ {2}p99 [\d.]+ {2}max [\d.]+/);
      assert.match(stdout, /verification: PASSED/);
      assert.match(stdout, /users: ok rows=\d+/);
      assert.match(stdout, /orders: ok rows=\d+/);
      // The server saw the shards as the guide's DoSQL: named sources, heartbeats answered.
      const status = (await getJson(`${server.url}/lakehouse/status`)).body;
      assert.equal(status.buffer.eventCount, 0);
      const sources = JSON.stringify(status.sourceStates ?? status);
      for (let i = 0; i < 4; i++) assert.ok(sources.includes(`loadgen-42-${i}`), sources.slice(0, 2000));
    } finally {
      await server.stop();
    }
  });

  test('the runtime is killed mid-run: shards reconnect and resend, nothing is lost or doubled', { timeout: 10 * 60_000 }, async () => {
    const stateDir = tempStateDir();
    dirs.push(stateDir);
    let server = await startDoLake({ stateDir, config: QUIET });
    const port = Number(new URL(server.url).port);
    const out = path.join(stateDir, 'results.json');
    const acked = path.join(stateDir, 'acked.jsonl');
    let progressSeen;
    const progress = new Promise((resolve) => { progressSeen = resolve; });
    const loadgen = run(binary, [
      // Time-bounded (not count-bounded), so a fast machine cannot finish
      // before the kill: the shards keep sending until 6 s after start.
      '--url', server.wsUrl, '--shards', '3', '--batches', '1000000', '--duration-s', '6', '--batch-size', '10',
      '--tables', 'a,b,c', '--row-bytes', '150', '--seed', '7', '--out', out, '--acked-out', acked,
    ], {
      ms: 8 * 60_000,
      onStderr: (text) => { if (/progress: [1-9]\d* events acked/.test(text)) progressSeen(); },
    });
    try {
      await withTimeout(progress, 60_000, 'a progress line with acked events (plain lines when not on a terminal)');
      await server.kill();
      await sleep(1_000);
      server = await startDoLake({ stateDir, config: QUIET, port });
      const { code, stdout, stderr } = await loadgen;
      const detail = `${stdout}\n${stderr.slice(-4000)}`;
      assert.equal(code, 0, detail);
      const s = JSON.parse(readFileSync(out, 'utf8'));
      assert.ok(s.batchesSent > 0 && s.eventsSent === s.batchesSent * 10, detail);
      assert.equal(s.eventsAcked, s.eventsSent, detail);
      assert.ok(s.reconnects >= 1, detail);
      assert.ok(s.sends > s.batchesSent, 'pending batches were resent');
      assert.match(stderr, /connection lost|connect failed/);
      // Flush everything and read the lake back.
      const warehouse = await flushAndExport(server, stateDir);
      const lines = readFileSync(acked, 'utf8').split('\n').filter(Boolean);
      assert.equal(lines.length, s.eventsAcked);
      // The loadgen's own JSONL as the expectation (a JSON.parse round trip
      // would turn 2.0 into 2 in the before images).
      const check = await run(path.join(root, '.tools/venv/bin/python'), [
        path.join(root, 'tests/e2e/verify_lake.py'), '--warehouse', warehouse, '--namespace', 'default', '--expected', acked,
      ], { ms: 180_000 });
      assert.equal(check.code, 0, check.stdout + check.stderr);
    } finally {
      await loadgen.catch(() => {});
      await server.stop();
    }
  });
});
