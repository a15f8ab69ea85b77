// The flush pipeline in real workerd with local R2: each trigger on its own,
// and many sources and tables committed to Iceberg tables that pyiceberg and
// DuckDB read back exactly (every acked event once).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { exportLake, getJson, QUIET, Shard, sleep, verifyLake, waitFor, withServer } from './harness.mjs';


const status = async (server) => (await getJson(`${server.url}/lakehouse/status`)).body;
const flushedLog = (server, trigger) => server.logs.find((l) => l.includes('"event":"flushed"') && l.includes(`"trigger":"${trigger}"`));

describe('flush triggers', () => {
  test('flushThresholdEvents triggers a flush on its own', () => withServer({ ...QUIET, flushThresholdEvents: 50 }, async (server) => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'thr-events' }).open();
    assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(40)))).status, 'ok');
    await sleep(2_000);
    assert.equal((await status(server)).buffer.eventCount, 40, 'below the threshold nothing flushes');
    assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(20)))).status, 'ok');
    await waitFor(async () => (await status(server)).buffer.eventCount === 0, 15_000, 'the buffer to drain');
    const s = await status(server);
    assert.equal(s.flush.history.eventsFlushed, 60);
    assert.ok(flushedLog(server, 'events'), server.logs.join('\n'));
    await shard.close();
  }));

  test('flushThresholdBytes triggers a flush on its own', () => withServer({ ...QUIET, flushThresholdBytes: 20_000 }, async (server) => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'thr-bytes' }).open();
    assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(20)))).status, 'ok');
    await sleep(2_000);
    const before = await status(server);
    assert.ok(before.buffer.totalSizeBytes < 20_000 && before.buffer.eventCount === 20);
    while ((await status(server)).buffer.totalSizeBytes > 0 && (await status(server)).flush.history.flushes === 0) {
      assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(40)))).status, 'ok');
      await sleep(100);
    }
    await waitFor(async () => (await status(server)).flush.history.flushes >= 1, 15_000, 'a flush');
    assert.ok(flushedLog(server, 'bytes'), server.logs.join('\n'));
    await shard.close();
  }));

  test('flushThresholdMs (age of the oldest event) triggers a flush on its own', () => withServer({ ...QUIET, flushThresholdMs: 1_500 }, async (server) => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'thr-age' }).open();
    assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(5)))).status, 'ok');
    const s = await status(server);
    assert.ok(s.nextFlushTime > Date.now() - 5_000, 'an alarm is set as soon as something is buffered');
    await waitFor(async () => (await status(server)).buffer.eventCount === 0, 15_000, 'the age flush');
    assert.ok(flushedLog(server, 'age'), server.logs.join('\n'));
    const after = await status(server);
    // An empty buffer wants no flush: the only alarm left is maintenance's,
    // an interval after the flush (maintenance.intervalMs, 1 h by default).
    assert.equal(after.nextFlushTime, after.maintenance.nextRunMs, 'an empty buffer has only the maintenance alarm');
    assert.ok(after.maintenance.nextRunMs > Date.now() + 3_000_000);
    await shard.close();
  }));

  test('flushIntervalMs triggers a flush on its own', () => withServer({ ...QUIET, flushIntervalMs: 1_500 }, async (server) => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'thr-interval' }).open();
    for (let round = 0; round < 2; round++) {
      assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(5)))).status, 'ok');
      await waitFor(async () => (await status(server)).buffer.eventCount === 0, 15_000, `interval flush ${round}`);
    }
    assert.equal((await status(server)).flush.history.flushes, 2);
    assert.ok(flushedLog(server, 'interval'), server.logs.join('\n'));
    await shard.close();
  }));
});

describe('lake contents', () => {
  test('8 sources x 3 tables, several flushes, resends: the tables hold every acked event exactly once', () => withServer(QUIET, async (server, stateDir) => {
    const tables = ['users', 'orders', 'items'];
    const shards = await Promise.all(Array.from({ length: 8 }, (_, i) => new Shard(server.wsUrl, { sourceDoId: `lake-src-${i}` }).open()));
    const acked = [];
    const sentBatches = [];
    let flushes = 0;
    for (let round = 0; round < 6; round++) {
      await Promise.all(shards.map(async (shard) => {
        const events = shard.makeEvents(50, tables);
        if (round >= 3) for (const e of events) if (e.after) e.after.note = `round ${round}`;
        const message = shard.batchMessage(events);
        const ack = await shard.send(message);
        assert.equal(ack.status, 'ok', JSON.stringify(ack));
        acked.push(...events.map((e) => ({ sourceDoId: shard.sourceDoId, ...e })));
        sentBatches.push([shard, message]);
      }));
      if (round === 2) {
        shards[0].sendRaw(JSON.stringify({ type: 'flush_request', timestamp: Date.now(), sourceDoId: shards[0].sourceDoId, reason: 'manual', correlationId: 'mid' }));
        const response = await shards[0].next((m) => m.type === 'flush_response', 60_000);
        assert.equal(response.correlationId, 'mid');
        assert.equal(response.result.success, true, JSON.stringify(response.result));
        assert.equal(response.result.eventsFlushed, 8 * 150);
        assert.ok(response.result.paths.some((p) => p.endsWith('.parquet')));
        assert.ok(response.result.paths.some((p) => p.endsWith('version-hint.text')));
        flushes++;
      }
    }
    // Resends of batches from before and after the first flush: duplicates.
    for (const [shard, message] of sentBatches.filter((_, i) => i % 7 === 0)) {
      const reply = await shard.send({ ...message, isRetry: true, retryCount: 1 });
      assert.equal(reply.status, 'duplicate');
    }
    const res = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.success, true);
    assert.equal(res.body.eventsFlushed, 8 * 150);
    assert.ok(res.body.bytesWritten > 0);
    assert.equal(typeof res.body.durationMs, 'number');
    assert.equal(res.body.usedFallback, false);
    flushes++;
    const s = await status(server);
    assert.equal(s.buffer.eventCount, 0);
    assert.equal(s.flush.history.flushes, flushes);
    assert.equal(s.flush.history.eventsFlushed, acked.length);

    const warehouse = path.join(stateDir, 'export', 'warehouse');
    mkdirSync(warehouse, { recursive: true });
    const { count } = await exportLake(server, warehouse);
    assert.ok(count > 0);
    const { code, out } = await verifyLake({ warehouse, events: acked });
    assert.equal(code, 0, out);
    for (const t of tables) assert.match(out, new RegExp(`${t}: ok rows=${acked.filter((e) => e.table === t).length}`));
    await Promise.all(shards.map((s) => s.close()));
  }));
});

describe('long flushes', () => {
  test('a flush cut by its time budget goes on from the next alarm until the buffer is empty', () => withServer(QUIET, async (server, stateDir) => {
    const r = await getJson(`${server.url}/lakehouse/_test/faults`, { method: 'POST', body: JSON.stringify({ timeBudgetMs: 0 }) });
    assert.equal(r.status, 200);
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'long' }).open();
    const acked = [];
    for (let b = 0; b < 24; b++) {
      const events = shard.makeEvents(1000, ['users', 'orders']);
      for (const e of events) if (e.after) e.after.pad = 'p'.repeat(300);
      assert.equal((await shard.send(shard.batchMessage(events))).status, 'ok');
      acked.push(...events.map((e) => ({ sourceDoId: 'long', ...e })));
    }
    assert.ok((await status(server)).buffer.totalSizeBytes > 8 * 1024 * 1024, 'more than two 4 MiB steps');
    const res = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
    assert.equal(res.body.success, true);
    assert.ok(res.body.eventsFlushed < acked.length, 'the request flushed one step only');
    await waitFor(async () => (await status(server)).buffer.eventCount === 0, 60_000, 'the continuation alarms');
    assert.ok(server.logs.some((l) => l.includes('"trigger":"continue"')), 'continued by the alarm');
    const s = await status(server);
    assert.ok(s.flush.history.flushes >= 3);
    assert.equal(s.flush.history.eventsFlushed, acked.length);
    const warehouse = path.join(stateDir, 'export', 'warehouse');
    mkdirSync(warehouse, { recursive: true });
    await exportLake(server, warehouse);
    const { code, out } = await verifyLake({ warehouse, events: acked });
    assert.equal(code, 0, out);
    await shard.close();
  }));
});

describe('codecs and partitioning in WASM', () => {
  for (const [codec, partitionBy, expected] of [['none', 'none', 'UNCOMPRESSED'], ['gzip', 'hour', 'GZIP'], ['zstd', 'day', 'ZSTD'], ['snappy', 'day', 'SNAPPY']]) {
    test(`parquetCompression ${codec}, partitionBy ${partitionBy}: written by the worker, read back exactly`, () =>
      withServer({ ...QUIET, parquetCompression: codec, partitionBy }, async (server, stateDir) => {
        const shard = await new Shard(server.wsUrl, { sourceDoId: `codec-${codec}` }).open();
        const acked = [];
        for (let b = 0; b < 2; b++) {
          const message = shard.batchMessage(shard.makeEvents(40, ['users', 'orders']));
          assert.equal((await shard.send(message)).status, 'ok');
          acked.push(...message.events.map((e) => ({ sourceDoId: shard.sourceDoId, ...e })));
        }
        const res = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
        assert.equal(res.body.success, true, JSON.stringify(res.body));
        const warehouse = path.join(stateDir, 'export', 'warehouse');
        mkdirSync(warehouse, { recursive: true });
        await exportLake(server, warehouse);
        const { code, out } = await verifyLake({ warehouse, events: acked });
        assert.equal(code, 0, out);
        // The codec and the partition spec are what the config asked for.
        const python = path.resolve('.tools/venv/bin/python');
        const script = `
import glob, json, sys
import pyarrow.parquet as pq
files = glob.glob(sys.argv[1] + '/default/users/data/**/*.parquet', recursive=True)
codecs = {pq.ParquetFile(f).metadata.row_group(0).column(0).compression for f in files}
meta = sorted(glob.glob(sys.argv[1] + '/default/users/metadata/v*.metadata.json'), key=lambda p: int(p.rsplit('/v', 1)[1].split('.')[0]))[-1]
spec = json.load(open(meta))['partition-specs']
print(json.dumps({'codecs': sorted(codecs), 'spec': spec}))`;
        const { stdout } = spawnSync(python, ['-c', script, warehouse], { encoding: 'utf8', timeout: 60_000 });
        const seen = JSON.parse(stdout);
        assert.deepEqual(seen.codecs, [expected]);
        const fields = seen.spec.at(-1).fields;
        if (partitionBy === 'none') assert.equal(fields.length, 0);
        else assert.equal(fields[0].transform, partitionBy);
        await shard.close();
      }));
  }
});
