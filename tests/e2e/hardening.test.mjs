// Hostile and unlucky inputs in real workerd (issue 9): nothing a shard can
// send crashes the object, stalls its flushes or is silently dropped.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { getJson, getMetrics, QUIET, Shard, waitFor, withServer, withTimeout } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

const status = async (server) => (await getJson(`${server.url}/lakehouse/status`)).body;
const flush = (server) => getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });

describe('hostile batches', () => {
  test('a huge declared sizeBytes crashes nothing; the object keeps acking', () => withServer(QUIET, async (server) => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'size-liar' }).open();
    const ack = await shard.send(shard.batchMessage(shard.makeEvents(3), undefined, { sizeBytes: 3_000_000_000 }));
    assert.equal(ack.status, 'ok', JSON.stringify(ack));
    assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(3)))).status, 'ok');
    assert.equal((await status(server)).buffer.eventCount, 6);
    await shard.close();
  }));

  test('events the lake cannot write are refused at intake, naming the field', () => withServer(QUIET, async (server) => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'poison' }).open();
    const events = shard.makeEvents(3);
    events[1].timestamp = 9_300_000_000_000_000;
    const nack = await shard.send(shard.batchMessage(events));
    assert.equal(nack.type, 'nack');
    assert.equal(nack.reason, 'invalid_format');
    assert.match(nack.errorMessage, /events\[1\]/);
    assert.match(nack.errorMessage, /timestamp/);
    assert.equal(nack.shouldRetry, false);
    // A sequence above i64::MAX, as JSON text (JS numbers cannot hold it).
    const good = shard.makeEvents(1);
    const text = JSON.stringify(shard.batchMessage(good, 77)).replace(`"sequence":${good[0].sequence}`, '"sequence":18446744073709551615');
    const reply = new Promise((resolve) => shard.pending.set(77, resolve));
    shard.sendRaw(text);
    const nack2 = await withTimeout(reply, 10_000, 'nack of the huge sequence');
    assert.equal(nack2.reason, 'invalid_format');
    assert.match(nack2.errorMessage, /sequence/);
    const s = await status(server);
    assert.equal(s.buffer.eventCount, 0, 'nothing of a refused batch is kept');
    await shard.close();
  }));

  test('over-long identifiers are refused by name; connect spam stores nothing', () => withServer(QUIET, async (server) => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'ids' }).open();
    const long = 'x'.repeat(20_000);
    const nack = await shard.send({ ...shard.batchMessage(shard.makeEvents(1)), sourceDoId: long });
    assert.equal(nack.reason, 'invalid_format');
    assert.match(nack.errorMessage, /sourceDoId/);
    for (let i = 0; i < 30; i++) {
      shard.sendRaw(JSON.stringify({ type: 'connect', timestamp: Date.now(), sourceDoId: `spam-${i}`, lastAckSequence: 0, protocolVersion: 1, capabilities: {} }));
      await shard.next((m) => m.type === 'status');
    }
    const s = await status(server);
    assert.equal(s.dedupStats.sourcesTracked, 0, 'connect alone creates no source');
    // The connection's limits still apply: its attachment was written.
    assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(2)))).status, 'ok');
    assert.equal((await status(server)).connections[0].messages, 32);
    const refused = await new Shard(server.wsUrl, { sourceDoId: 'ids2', headers: { 'X-Client-ID': long } }).open().catch((e) => e);
    assert.equal(refused.status, 400);
    assert.match(JSON.stringify(refused.body), /X-Client-ID/);
    await shard.close();
  }));
});

describe('guide shards that restart', () => {
  test('a shard whose event sequences start again at 0 has every new row stored', () => withServer(QUIET, async (server) => {
    // The guide's DoSQL persists batch_sequence, never cdc_sequence.
    let persistedBatchSequence = 0;
    let total = 0;
    for (let life = 0; life < 3; life++) {
      const shard = await new Shard(server.wsUrl, { sourceDoId: 'guide-restart' }).open();
      shard.sequenceNumber = persistedBatchSequence;
      const status0 = await shard.connect();
      if (life > 0) assert.ok(status0.lastFlushTime > 0, 'connect status carries lastFlushTime');
      for (let b = 0; b < 3; b++) {
        const message = shard.batchMessage(shard.makeEvents(10));
        persistedBatchSequence = shard.sequenceNumber;
        const ack = await shard.send(message);
        assert.equal(ack.status, 'ok', `life ${life} batch ${b}: ${JSON.stringify(ack)}`);
        assert.equal(ack.details.eventsProcessed, 10);
        total += 10;
        if (b === 1) assert.equal((await shard.send({ ...message, isRetry: true, retryCount: 1 })).status, 'duplicate');
      }
      const res = await flush(server);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.body.complete, true);
      await shard.close();
    }
    const s = await status(server);
    assert.equal(s.flush.history.eventsFlushed, total);
    assert.equal(s.dedupStats.duplicateBatches, 3);
  }));
});

describe('flushes', () => {
  test('a flush request during a running flush waits for it and reports both', () => withServer(QUIET, async (server) => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'join' }).open();
    let sent = 0;
    for (let b = 0; b < 20; b++) {
      assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(200, ['a', 'b', 'c'])))).status, 'ok');
      sent += 200;
    }
    const [one, two] = await Promise.all([flush(server), flush(server)]);
    assert.equal(one.status, 200, JSON.stringify(one.body));
    assert.equal(two.status, 200, JSON.stringify(two.body));
    assert.equal(Math.max(one.body.eventsFlushed, two.body.eventsFlushed), sent);
    assert.equal((await status(server)).buffer.eventCount, 0);
    await shard.close();
  }));

  test('a table DoLake cannot extend is dead-lettered while others flush', () => withServer(QUIET, async (server) => {
    // A format-v1 table written by another tool.
    const v1 = JSON.parse(readFileSync(path.join(here, '../../src/lake/testdata/v1.metadata.json'), 'utf8'));
    v1['format-version'] = 1;
    for (const [key, body] of [['warehouse/default/legacy/metadata/v1.metadata.json', JSON.stringify(v1)], ['warehouse/default/legacy/metadata/version-hint.text', '1']]) {
      const res = await withTimeout(fetch(`${server.inspector}/put?key=${encodeURIComponent(key)}`, { method: 'POST', body }), 10_000, 'put');
      assert.equal(res.status, 200);
    }
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'mixed' }).open();
    const events = shard.makeEvents(6, ['legacy', 'users']);
    assert.equal((await shard.send(shard.batchMessage(events))).status, 'ok');
    const res = await flush(server);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.eventsRejected, 3);
    assert.equal(res.body.eventsFlushed, 3);
    const s = await status(server);
    assert.equal(s.buffer.eventCount, 0, 'nothing waits behind the unwritable table');
    assert.ok(s.flush.history.unwritableTables.legacy, JSON.stringify(s.flush.history));
    const metrics = await getMetrics(server);
    assert.equal(metrics.dolake_events_rejected_total.samples[0].value, 3);
    const { body: keys } = await getJson(`${server.inspector}/list`);
    assert.ok(keys.some((k) => k.startsWith('warehouse/default/_dolake_rejected/data/')), keys.join('\n'));
    await shard.close();
  }));

  test('an empty-buffer flush racing a new batch leaves that batch an alarm', () => withServer({ ...QUIET, flushThresholdMs: 1_000 }, async (server) => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'race' }).open();
    assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(5)))).status, 'ok');
    // The flush empties the buffer and deletes the alarm while batches arrive.
    const flushing = flush(server);
    const acks = [];
    for (let b = 0; b < 5; b++) acks.push(await shard.send(shard.batchMessage(shard.makeEvents(5))));
    await flushing;
    assert.ok(acks.every((a) => a.status === 'ok'));
    await waitFor(async () => (await status(server)).buffer.eventCount === 0, 15_000, 'every batch flushed by its alarm');
    await shard.close();
  }));
});
