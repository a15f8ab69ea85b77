// Current-state tables in workerd (issue 11): shards stream a mixed workload
// (inserts, updates, deletes, re-inserts, updates and deletes of keys never
// seen, many changes of one key in one batch) over keys they share across
// batches; flushes, a compaction run, and kill -9 at the commit point of a
// flush and of a compaction in between. The current-state tables
// (namespace `default_current`) equal the model (the last image of every
// live key), read by pyiceberg and DuckDB with their position deletes; the
// change logs hold every acked event once.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { exportLake, getJson, QUIET, removeDir, Shard, startDoLake, tempStateDir, verifyLake, waitFor, withTimeout } from './harness.mjs';

const CONFIG = {
  ...QUIET,
  parquetRowGroupSize: 16,
  maintenance: {
    intervalMs: 3_600_000,
    minSnapshotsToKeep: 2,
    maxSnapshotsToKeep: 4,
    manifestMergeMinCount: 3,
    targetFileBytes: 1_048_576,
  },
};

const status = async (server) => (await getJson(`${server.url}/lakehouse/status`)).body;
const setFaults = (server, plan) => getJson(`${server.url}/lakehouse/_test/faults`, { method: 'POST', body: JSON.stringify(plan) });

/** A deterministic generator (mulberry32). */
function rng(seed) {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) % n);
  };
}

/** Mixed changes over 30 keys per source, in two tables. */
function changes(shard, next, count) {
  const events = [];
  for (let i = 0; i < count; i++) {
    const sequence = shard.cdcSequence++;
    const table = ['users', 'orders'][next(2)];
    const rowId = `${shard.sourceDoId}-k${next(30)}`;
    const op = ['INSERT', 'INSERT', 'UPDATE', 'UPDATE', 'UPDATE', 'DELETE'][next(6)];
    const row = { id: rowId, n: sequence, name: `name-${next(1000)}`, score: next(1000) / 8, active: next(2) === 0 };
    const event = { sequence, timestamp: Date.now(), operation: op, table, rowId };
    if (op !== 'DELETE') event.after = row;
    if (op !== 'INSERT') event.before = { id: rowId };
    events.push(event);
  }
  return events;
}

async function stream(server, sources, batches, acked, seed) {
  const next = rng(seed);
  const shards = await Promise.all(sources.map((id) => new Shard(server.wsUrl, { sourceDoId: id }).open()));
  for (const shard of shards) shard.cdcSequence = acked.filter((e) => e.sourceDoId === shard.sourceDoId).length;
  for (let b = 0; b < batches; b++) {
    for (const shard of shards) {
      const message = shard.batchMessage(changes(shard, next, 25));
      message.sequenceNumber = shard.cdcSequence; // unique per batch across restarts
      const ack = await shard.send(message);
      assert.equal(ack.type, 'ack', JSON.stringify(ack));
      acked.push(...message.events.map((e) => ({ sourceDoId: shard.sourceDoId, ...e })));
    }
  }
  await Promise.all(shards.map((s) => s.close()));
}

async function flush(server) {
  const r = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.success, true, JSON.stringify(r.body));
}

/** Kills the runtime once `step` of a current-state table's commit is done. */
async function killAt(server, stateDir, step, url) {
  assert.equal((await setFaults(server, { pauseAfter: step, pauseWhenKeyContains: 'default_current/' })).status, 200);
  const pending = fetch(url, { method: 'POST' }).catch(() => null);
  await waitFor(() => server.logs.some((l) => l.includes('"event":"test_pause"')), 30_000, `the pause after ${step}`);
  await server.kill();
  await withTimeout(pending, 5_000, 'the cut request');
  return startDoLake({ stateDir, config: CONFIG, hooks: true });
}

async function assertLake(server, stateDir, acked, name) {
  const warehouse = path.join(stateDir, `export-${name}`, 'warehouse');
  mkdirSync(warehouse, { recursive: true });
  await exportLake(server, warehouse);
  const current = await verifyLake({ warehouse, namespace: 'default_current', events: acked, currentState: true });
  assert.equal(current.code, 0, current.out);
  const changelog = await verifyLake({ warehouse, events: acked });
  assert.equal(changelog.code, 0, changelog.out);
  return current.out;
}

describe('current-state tables', () => {
  test('a mixed workload with flushes, compaction and kill -9 at commit points: tables equal the model', async () => {
    const stateDir = tempStateDir();
    let server = await startDoLake({ stateDir, config: CONFIG, hooks: true });
    try {
      const acked = [];
      const sources = ['cs-a', 'cs-b'];
      for (let round = 0; round < 4; round++) {
        await stream(server, sources, 2, acked, 100 + round);
        await flush(server);
      }
      let s = await status(server);
      // Without a crash the row index always agrees with its table: no flush
      // repairs it. (Snapshot ids use 63 bits and once came back rounded from
      // SQLite: every step then rebuilt every index from the table's data
      // files.)
      assert.equal(s.flush.history.indexRepairs, 0, JSON.stringify(s.flush.history));
      assert.ok(s.flush.history.currentState.rowsDeleted > 0, JSON.stringify(s.flush.history.currentState));
      assert.ok(s.instance.rowIndex.rows > 0, JSON.stringify(s.instance));
      assert.ok(s.tables['default_current.users'], Object.keys(s.tables).join());

      // Killed at the commit point of a flush: the table holds the commit,
      // the row index only its staged change.
      await stream(server, sources, 2, acked, 200);
      server = await killAt(server, stateDir, 'metadata', `${server.url}/lakehouse/flush`);
      await flush(server);
      s = await status(server);
      assert.ok(s.flush.history.indexRepairs >= 1, JSON.stringify(s.flush.history));

      // Compaction applies the deletes; killed at its commit point, then run
      // again.
      await stream(server, sources, 2, acked, 300);
      await flush(server);
      server = await killAt(server, stateDir, 'metadata', `${server.url}/lakehouse/maintenance`);
      const m = await getJson(`${server.url}/lakehouse/maintenance`, { method: 'POST' });
      assert.equal(m.status, 200, JSON.stringify(m.body));
      for (const t of ['default_current.users', 'default_current.orders']) {
        assert.equal(m.body.tables[t].error, null, JSON.stringify(m.body.tables[t]));
        // Compacted by the killed run (committed before the kill) or this one.
        assert.ok(m.body.tables[t].health.dataFiles <= 2, JSON.stringify(m.body.tables[t]));
      }

      // The tables go on after compaction.
      await stream(server, sources, 2, acked, 400);
      await flush(server);
      const out = await assertLake(server, stateDir, acked, 'final');
      assert.match(out, /users: ok rows=\d+/);
      s = await status(server);
      assert.equal(s.buffer.eventCount, 0);
    } finally {
      await server.stop();
      removeDir(stateDir);
    }
  });
});
