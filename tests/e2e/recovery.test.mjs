// Crash recovery and R2 failures: the runtime killed at each step of the
// commit protocol, puts failing by count and for a period; afterwards the
// tables hold every acked event exactly once.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { exportLake, getJson, removeDir, Shard, sleep, startDoLake, tempStateDir, verifyLake, waitFor, withTimeout } from './harness.mjs';

const QUIET = { flushThresholdEvents: 1_000_000_000, flushThresholdBytes: 50_000_000, flushThresholdMs: 3_600_000, flushIntervalMs: 3_600_000 };
const status = async (server) => (await getJson(`${server.url}/lakehouse/status`)).body;
const setFaults = (server, plan) => getJson(`${server.url}/lakehouse/_test/faults`, { method: 'POST', body: JSON.stringify(plan) });

async function fill(server, sources, batches, acked, sent) {
  const shards = await Promise.all(sources.map((id) => new Shard(server.wsUrl, { sourceDoId: id }).open()));
  for (let b = 0; b < batches; b++) {
    for (const shard of shards) {
      const message = shard.batchMessage(shard.makeEvents(30, ['users', 'orders']));
      const ack = await shard.send(message);
      assert.equal(ack.type, 'ack', JSON.stringify(ack));
      acked.push(...message.events.map((e) => ({ sourceDoId: shard.sourceDoId, ...e })));
      sent.push(message);
    }
  }
  await Promise.all(shards.map((s) => s.close()));
}

async function resendAll(server, sent) {
  const shards = new Map();
  for (const message of sent) {
    if (!shards.has(message.sourceDoId)) shards.set(message.sourceDoId, await new Shard(server.wsUrl, { sourceDoId: message.sourceDoId }).open());
    const reply = await shards.get(message.sourceDoId).send({ ...message, isRetry: true, retryCount: 1 });
    assert.equal(reply.status, 'duplicate', JSON.stringify(reply));
  }
  await Promise.all([...shards.values()].map((s) => s.close()));
}

async function assertLakeExact(server, stateDir, acked) {
  const warehouse = path.join(stateDir, `export-${Date.now()}`, 'warehouse');
  mkdirSync(warehouse, { recursive: true });
  await exportLake(server, warehouse);
  const { code, out } = await verifyLake({ warehouse, events: acked });
  assert.equal(code, 0, out);
}

describe('crash at each step of the commit protocol', () => {
  for (const step of ['data', 'manifests', 'metadata', 'version-hint']) {
    test(`killed after the ${step} step, restarted, flushed again: exact`, async () => {
      const stateDir = tempStateDir();
      let server = await startDoLake({ stateDir, config: QUIET, hooks: true });
      try {
        const acked = [];
        const sent = [];
        await fill(server, ['crash-a', 'crash-b'], 3, acked, sent);
        assert.equal((await setFaults(server, { pauseAfter: step })).status, 200);
        const pending = fetch(`${server.url}/lakehouse/flush`, { method: 'POST' }).catch(() => null);
        await waitFor(() => server.logs.some((l) => l.includes('"event":"test_pause"')), 30_000, `the pause after ${step}`);
        await server.kill();
        await withTimeout(pending, 5_000, 'the cut flush request');

        server = await startDoLake({ stateDir, config: QUIET, hooks: true });
        assert.equal((await status(server)).buffer.eventCount, acked.length, 'nothing left the buffer before its commit finished');
        await resendAll(server, sent);
        const res = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
        assert.equal(res.status, 200, JSON.stringify(res.body));
        assert.equal(res.body.success, true);
        const s = await status(server);
        assert.equal(s.buffer.eventCount, 0);
        await assertLakeExact(server, stateDir, acked);
      } finally {
        await server.stop();
        removeDir(stateDir);
      }
    });
  }
});

describe('R2 failures', () => {
  test('a failed put fails the flush, keeps the events, and the next flush is exact', async () => {
    const stateDir = tempStateDir();
    const server = await startDoLake({ stateDir, config: QUIET, hooks: true });
    try {
      const acked = [];
      await fill(server, ['nth-a'], 3, acked, []);
      await setFaults(server, { failNthPuts: [2] });
      let res = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
      assert.equal(res.status, 503);
      assert.equal(res.body.success, false);
      assert.match(res.body.error, /injected failure of put #2/);
      let s = await status(server);
      assert.equal(s.buffer.eventCount, acked.length);
      assert.equal(s.flush.history.consecutiveFailures, 1);
      assert.match(s.flush.history.lastError, /injected/);
      assert.ok(s.nextFlushTime, 'a retry is scheduled');
      res = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
      assert.equal(res.body.success, true, JSON.stringify(res.body));
      s = await status(server);
      assert.equal(s.buffer.eventCount, 0);
      assert.equal(s.flush.history.consecutiveFailures, 0);
      await assertLakeExact(server, stateDir, acked);
    } finally {
      await server.stop();
      removeDir(stateDir);
    }
  });

  test('an R2 outage: acks continue (fallback) until buffer_full, then R2 recovers and the tables are exact', async () => {
    const stateDir = tempStateDir();
    const config = { ...QUIET, maxBufferSize: 60_000, flushThresholdBytes: 20_000, maxFallbackSize: 20_000 };
    const server = await startDoLake({ stateDir, config, hooks: true });
    try {
      const outageEnds = Date.now() + 6_000;
      await setFaults(server, { failUntilMs: outageEnds });
      const shard = await new Shard(server.wsUrl, { sourceDoId: 'outage' }).open();
      const acked = [];
      const statuses = new Set();
      const nacks = new Set();
      const queue = Array.from({ length: 40 }, () => shard.batchMessage(shard.makeEvents(20, ['users', 'orders'])));
      let sawFailureInStatus = false;
      const deadline = Date.now() + 90_000;
      while (queue.length) {
        assert.ok(Date.now() < deadline, 'every batch is acked in the end');
        const message = queue.shift();
        const reply = await shard.send(message);
        if (reply.type === 'ack') {
          statuses.add(reply.status);
          acked.push(...message.events.map((e) => ({ sourceDoId: shard.sourceDoId, ...e })));
        } else {
          nacks.add(reply.reason);
          assert.equal(reply.reason, 'buffer_full', JSON.stringify(reply));
          assert.equal(reply.shouldRetry, true);
          if (!sawFailureInStatus) {
            const s = await status(server);
            sawFailureInStatus = s.flush.history.consecutiveFailures > 0 && /outage/.test(s.flush.history.lastError);
          }
          queue.unshift(message);
          await sleep(Math.min(reply.retryDelayMs, 1_000));
        }
      }
      assert.ok(nacks.has('buffer_full'), 'the buffer filled during the outage');
      assert.ok(statuses.has('fallback'), `fallback headroom was used: ${[...statuses]}`);
      assert.ok(sawFailureInStatus, 'the failure was reported in /lakehouse/status');
      const res = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
      assert.equal(res.body.success, true, JSON.stringify(res.body));
      assert.ok(server.logs.some((l) => l.includes('"event":"flush_failed"') && l.includes('outage')));
      await assertLakeExact(server, stateDir, acked);
      await shard.close();
    } finally {
      await server.stop();
      removeDir(stateDir);
    }
  });
});
