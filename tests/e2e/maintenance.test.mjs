// Table maintenance in workerd (issue 10): compaction with R2 multipart
// uploads, manifest merging, snapshot expiry with deletes and orphan cleanup,
// run by POST /lakehouse/maintenance and by the alarm; a kill -9 in the
// middle of a maintenance commit loses and duplicates nothing. The lake is
// read back by pyiceberg and DuckDB (verify_lake.py), row by row.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { exportLake, getJson, getMetrics, QUIET, removeDir, Shard, startDoLake, tempStateDir, verifyLake, waitFor, withTimeout } from './harness.mjs';

const MAINTAIN = {
  ...QUIET,
  // Tiny row groups and parts: compaction streams several and uploads in parts.
  parquetRowGroupSize: 20,
  maintenance: {
    intervalMs: 3_600_000,
    snapshotMaxAgeMs: 0,
    minSnapshotsToKeep: 2,
    maxSnapshotsToKeep: 3,
    manifestMergeMinCount: 3,
    targetFileBytes: 1_048_576,
    orphanMinAgeMs: 60_000,
  },
};

const status = async (server) => (await getJson(`${server.url}/lakehouse/status`)).body;
const flush = async (server) => {
  const r = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
  assert.equal(r.status, 200, JSON.stringify(r.body));
};
const maintain = (server) => getJson(`${server.url}/lakehouse/maintenance`, { method: 'POST' });
const keys = async (server) => (await getJson(`${server.inspector}/list`)).body;

/** `rounds` batches, each flushed on its own (one small commit per table). */
async function commits(server, shard, rounds, acked) {
  for (let i = 0; i < rounds; i++) {
    const events = shard.makeEvents(30, ['users', 'orders']);
    const ack = await shard.send(shard.batchMessage(events));
    assert.equal(ack.status, 'ok', JSON.stringify(ack));
    acked.push(...events.map((e) => ({ sourceDoId: shard.sourceDoId, ...e })));
    await flush(server);
  }
}

async function verify(server, stateDir, acked, name) {
  const warehouse = path.join(stateDir, `export-${name}`, 'warehouse');
  mkdirSync(warehouse, { recursive: true });
  await exportLake(server, warehouse);
  const { code, out } = await verifyLake({ warehouse, events: acked });
  assert.equal(code, 0, out);
  for (const t of ['users', 'orders']) assert.match(out, new RegExp(`${t}: ok rows=${acked.filter((e) => e.table === t).length}`));
}

describe('table maintenance', () => {
  test('POST /lakehouse/maintenance compacts, merges, expires and cleans; rows exact; status and metrics show the tables', async () => {
    const stateDir = tempStateDir();
    const server = await startDoLake({ stateDir, config: MAINTAIN, hooks: true });
    try {
      const shard = await new Shard(server.wsUrl, { sourceDoId: 'maint' }).open();
      const acked = [];
      await commits(server, shard, 12, acked);
      const smallFiles = (await keys(server)).filter((k) => k.includes('/users/data/'));
      assert.ok(smallFiles.length >= 12);
      // A young orphan (a commit in flight): never deleted.
      const young = 'warehouse/default/users/data/in-flight-00000.parquet';
      assert.equal((await getJson(`${server.inspector}/put?key=${encodeURIComponent(young)}`, { method: 'POST', body: 'x' })).status, 200);

      const r = await maintain(server);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.success, true);
      for (const t of ['users', 'orders']) {
        const rep = r.body.tables[t];
        assert.equal(rep.error, null, JSON.stringify(rep));
        assert.ok(rep.filesCompacted >= 12, JSON.stringify(rep));
        assert.ok(rep.snapshotsExpired > 0 && rep.filesDeleted > 0, JSON.stringify(rep));
        assert.ok(rep.health.dataFiles <= 2, JSON.stringify(rep.health));
        assert.ok(rep.health.snapshots <= 3, JSON.stringify(rep.health));
      }
      assert.ok((await keys(server)).includes(young), 'an object younger than orphanMinAgeMs was deleted');
      const s = await status(server);
      assert.equal(s.tables.users.dataFiles, r.body.tables.users.health.dataFiles);
      assert.ok(s.tables.users.meanFileBytes > 0);
      assert.ok(s.tables.users.lastMaintenanceMs > 0);
      assert.equal(s.maintenance.runs, 1);
      const m = await getMetrics(server);
      const users = m.dolake_table_data_files.samples.find((x) => x.labels.table === 'users');
      assert.equal(users.value, r.body.tables.users.health.dataFiles);
      assert.equal(m.dolake_table_data_files.type, 'gauge');
      assert.ok(m.dolake_maintenance_files_compacted_total.samples[0].value >= 24);
      // The change logs and the current-state tables of both CDC tables.
      const logs = server.logs.filter((l) => l.includes('"event":"maintained"'));
      assert.equal(logs.length, 4);
      for (const t of ['default_current.users', 'default_current.orders']) {
        assert.equal(r.body.tables[t].error, null, JSON.stringify(r.body.tables[t]));
        assert.ok(r.body.tables[t].filesCompacted >= 12, JSON.stringify(r.body.tables[t]));
      }

      // The tables go on: more commits, a second run, every row once. The
      // snapshots that still listed the compacted files have expired by now
      // (snapshots are kept by count), so the files are gone from R2.
      await commits(server, shard, 4, acked);
      const again = await maintain(server);
      assert.equal(again.status, 200, JSON.stringify(again.body));
      const left = await keys(server);
      const kept = smallFiles.filter((k) => left.includes(k));
      assert.deepEqual(kept, [], 'compacted inputs of expired snapshots were not deleted');
      assert.ok(left.includes(young));
      await verify(server, stateDir, acked, 'a');
      await shard.close();
    } finally {
      await server.stop();
      removeDir(stateDir);
    }
  });

  for (const step of ['data', 'manifests', 'metadata']) {
    test(`a kill -9 after the ${step} step of a maintenance commit loses and duplicates nothing`, async () => {
      const stateDir = tempStateDir();
      let server = await startDoLake({ stateDir, config: MAINTAIN, hooks: true });
      try {
        const shard = await new Shard(server.wsUrl, { sourceDoId: `maint-kill-${step}` }).open();
        const acked = [];
        await commits(server, shard, 6, acked);
        await shard.close();
        const f = await getJson(`${server.url}/lakehouse/_test/faults`, { method: 'POST', body: JSON.stringify({ pauseAfter: step }) });
        assert.equal(f.status, 200);
        const pending = fetch(`${server.url}/lakehouse/maintenance`, { method: 'POST' }).catch(() => null);
        await waitFor(() => server.logs.some((l) => l.includes('"event":"test_pause"')), 30_000, `the pause after ${step}`);
        await server.kill();
        await withTimeout(pending, 5_000, 'the cut maintenance request');

        server = await startDoLake({ stateDir, config: MAINTAIN, hooks: true });
        const r = await maintain(server);
        assert.equal(r.status, 200, JSON.stringify(r.body));
        for (const t of ['users', 'orders']) assert.ok(r.body.tables[t].health.dataFiles <= 2, JSON.stringify(r.body.tables[t]));
        await verify(server, stateDir, acked, step);
      } finally {
        await server.stop();
        removeDir(stateDir);
      }
    });
  }

  test('the alarm runs maintenance on its interval', async () => {
    const stateDir = tempStateDir();
    const server = await startDoLake({ stateDir, config: { ...MAINTAIN, maintenance: { ...MAINTAIN.maintenance, intervalMs: 2_000 } }, hooks: true });
    try {
      const shard = await new Shard(server.wsUrl, { sourceDoId: 'maint-alarm' }).open();
      const acked = [];
      await commits(server, shard, 5, acked);
      const s = await waitFor(async () => {
        const s = await status(server);
        return s.maintenance.runs > 0 && s.tables.users.dataFiles !== null ? s : null;
      }, 30_000, 'a maintenance run from the alarm');
      assert.ok(s.tables.users.dataFiles <= 2, JSON.stringify(s.tables.users));
      assert.ok(server.logs.some((l) => l.includes('"event":"maintained"') && l.includes('"trigger":"alarm"')));
      assert.ok(s.maintenance.nextRunMs > s.maintenance.lastRunMs);
      await verify(server, stateDir, acked, 'alarm');
      await shard.close();
    } finally {
      await server.stop();
      removeDir(stateDir);
    }
  });
});
