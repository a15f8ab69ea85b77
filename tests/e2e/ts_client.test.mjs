// The `dolake` TypeScript package's client inside a real TypeScript Durable
// Object (clients/ts/test/shard-worker.ts), streaming to DoLake DO to DO (a
// second worker whose DOLAKE binding names the DoLake class by script name,
// one runtime). DoLake is made to refuse with buffer_full (R2 failing, buffer
// full) so that batches are pending in the shard, then the runtime is killed
// (both sides), restarted, and the shard resumes: its client restores its
// sequences and unacknowledged batches from storage and resends them. Every
// event the shard handed over is in the lake exactly once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { flushAndExport, getJson, removeDir, startDoLake, tempStateDir, verifyLake, waitFor } from './harness.mjs';
import { changeFor } from '../../clients/ts/test/changes.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const bundle = path.join(root, 'clients/ts/test/.generated/shard-worker.js');

// Small buffer, no fallback, no scheduled flushes: once R2 fails the buffer
// stays full and DoLake nacks with buffer_full (retryable).
const CONFIG = {
  flushThresholdEvents: 1_000_000_000, flushThresholdBytes: 40_000, maxBufferSize: 40_000,
  flushThresholdMs: 3_600_000, flushIntervalMs: 3_600_000, enableFallback: false,
  maintenance: { enabled: false },
};

test('TS client in a Durable Object: DO to DO, across a kill of both sides, every handed-over event once', { timeout: 6 * 60_000 }, async () => {
  execFileSync(path.join(root, 'node_modules/.bin/esbuild'), [
    path.join(root, 'clients/ts/test/shard-worker.ts'), '--bundle', '--format=esm', '--platform=neutral', `--outfile=${bundle}`, '--log-level=warning',
  ]);
  const stateDir = tempStateDir();
  const start = () => startDoLake({ stateDir, config: CONFIG, hooks: true, extraEnv: { SHARD_SCRIPT: bundle } });
  let server = await start();
  const shard = async (route, ms = 90_000) => {
    // Not getJson: its 10 s bound is too short for waiting on acks.
    const res = await fetch(`${server.inspector}/shard${route}`, { signal: AbortSignal.timeout(ms) });
    const body = await res.json();
    assert.equal(res.status, 200, JSON.stringify(body));
    return body;
  };
  try {
    // Healthy: two rounds acked.
    let s = await shard('/write?n=60');
    assert.equal(s.pending, 0);
    assert.equal(s.nextSequence, 60);
    s = await shard('/write?n=40');
    assert.equal(s.nextSequence, 100);
    assert.ok(s.stats.acked >= 4, JSON.stringify(s.stats));

    // R2 fails: the buffer fills and DoLake refuses with buffer_full; the
    // shard's batches are persisted and pending.
    const faults = await getJson(`${server.url}/lakehouse/_test/faults`, { method: 'POST', body: JSON.stringify({ failUntilMs: Date.now() + 600_000 }) });
    assert.equal(faults.status, 200, JSON.stringify(faults.body));
    s = await shard('/write?n=400&wait=0');
    assert.equal(s.nextSequence, 500);
    s = await waitFor(async () => {
      const st = await shard('/state');
      return st.stats.retryableNacks > 0 && st.pending > 0 ? st : null;
    }, 60_000, 'buffer_full nacks leaving batches pending in the shard');
    const pendingAtKill = s.pending;

    // Kill -9 of the runtime: DoLake and the shard restart together.
    await server.kill();
    server = await start();
    // R2 is back; the flushes that failed left DoLake backing off, so ask for
    // one flush (then the byte threshold keeps the buffer draining).
    const flushed = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
    assert.equal(flushed.status, 200, JSON.stringify(flushed.body));
    s = await shard('/wait?ms=120000', 150_000);
    assert.equal(s.pending, 0, JSON.stringify(s));
    assert.equal(s.nextSequence, 500, 'the event sequence survived the restart');
    assert.ok(s.stats.restoredBatches >= pendingAtKill, `restored ${s.stats.restoredBatches} of ${pendingAtKill} pending`);
    assert.ok(s.stats.resends >= s.stats.restoredBatches, JSON.stringify(s.stats));
    // More changes after the restart continue the sequence.
    s = await shard('/write?n=50');
    assert.equal(s.nextSequence, 550);
    assert.equal(s.pending, 0);

    const warehouse = await flushAndExport(server, stateDir);
    const events = [];
    for (let seq = 0; seq < s.nextSequence; seq++) {
      events.push({ ...changeFor(seq), sequence: seq, sourceDoId: s.sourceDoId });
    }
    const changelog = await verifyLake({ warehouse, events });
    assert.equal(changelog.code, 0, changelog.out);
    const current = await verifyLake({ warehouse, namespace: 'default_current', events, currentState: true });
    assert.equal(current.code, 0, current.out);
  } finally {
    await server.stop();
    removeDir(stateDir);
  }
});
