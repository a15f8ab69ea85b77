// The guide's protocol against the built worker in real workerd.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { getJson, getMetrics, removeDir, Shard, startDoLake, tempStateDir, withTimeout } from './harness.mjs';

const bytesOf = (events) => Buffer.byteLength(JSON.stringify(events));

describe('protocol', () => {
  let server;
  let stateDir;
  before(async () => {
    stateDir = tempStateDir();
    server = await startDoLake({ stateDir });
  });
  after(async () => {
    await server?.stop();
    removeDir(stateDir);
  });

  test('several sources and tables: every batch acked, /lakehouse/status exact', async () => {
    const shards = await Promise.all([0, 1, 2].map((i) => new Shard(server.wsUrl, { sourceDoId: `src-${i}` }).open()));
    let expectedBytes = 0;
    for (const shard of shards) {
      const status = await shard.connect();
      assert.equal(status.type, 'status');
      assert.ok(['idle', 'receiving'].includes(status.state));
      assert.equal(typeof status.buffer.eventCount, 'number');
    }
    for (let b = 0; b < 5; b++) {
      const replies = await Promise.all(shards.map((shard) => {
        const events = shard.makeEvents(40, ['users', 'orders', 'items']);
        expectedBytes += bytesOf(events);
        return shard.send(shard.batchMessage(events));
      }));
      for (const [i, ack] of replies.entries()) {
        assert.equal(ack.type, 'ack', JSON.stringify(ack));
        assert.equal(ack.status, 'ok');
        assert.equal(ack.sequenceNumber, b);
        assert.equal(ack.batchId, `src-${i}:${b}`);
        assert.equal(ack.correlationId, `corr-src-${i}-${b}`);
        assert.equal(ack.details.eventsProcessed, 40);
      }
    }
    const { status, body } = await getJson(`${server.url}/lakehouse/status`);
    assert.equal(status, 200);
    assert.equal(body.state, 'receiving');
    assert.equal(body.buffer.batchCount, 15);
    assert.equal(body.buffer.eventCount, 600);
    assert.equal(body.buffer.totalSizeBytes, expectedBytes);
    assert.ok(body.buffer.oldestBatchTime <= body.buffer.newestBatchTime);
    assert.equal(body.connectedSources, 3);
    assert.equal(body.sourceStates.length, 3);
    for (const s of body.sourceStates) {
      assert.equal(s.shardName, `shard-${s.sourceDoId.slice(0, 8)}`);
      assert.equal(s.connected, true);
      assert.equal(s.batchesAcked, 5);
      assert.equal(s.eventsAcked, 200);
      assert.equal(s.lastAckedSequence, 4);
      assert.equal(s.lastReceivedSequence, 4);
      assert.equal(s.highestEventSequence, 199);
    }
    assert.equal(body.dedupStats.enabled, true);
    assert.equal(body.config.flushThresholdEvents, 10000);
    assert.equal(body.config.rateLimit.maxPayloadSize, 4 * 1024 * 1024);
    const metrics = await getMetrics(server);
    const one = (name) => metrics[`dolake_${name}`].samples[0].value;
    assert.equal(one('buffer_events'), 600);
    assert.equal(one('buffer_batches'), 15);
    assert.equal(one('buffer_bytes'), expectedBytes);
    assert.equal(one('events_acked_total'), 600);
    assert.equal(one('events_received_total'), 600);
    assert.equal(one('batches_acked_total'), 15);
    assert.equal(one('connected_sources'), 3);
    for (const [name, family] of Object.entries(metrics)) {
      assert.ok(name.startsWith('dolake_'), name);
      assert.ok(['counter', 'gauge'].includes(family.type), name);
      if (family.type === 'counter') assert.ok(name.endsWith('_total'), name);
    }
    await Promise.all(shards.map((s) => s.close()));
  });

  test('resent batches are acked as duplicate and stored once', async () => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'dup-source' }).open();
    await shard.connect();
    const first = shard.batchMessage(shard.makeEvents(10));
    assert.equal((await shard.send(first)).status, 'ok');
    const before = (await getJson(`${server.url}/lakehouse/status`)).body.buffer;

    const resent = await shard.send({ ...first, isRetry: true, retryCount: 1 });
    assert.equal(resent.type, 'ack');
    assert.equal(resent.status, 'duplicate');
    assert.equal(resent.details.eventsProcessed, 10, 'reports what the original stored');

    // A new batch number is new data, even with event sequences seen before
    // (a guide shard restarts its event sequences at 0; README "Deduplication").
    const restarted = shard.makeEvents(5).map((e, i) => ({ ...e, sequence: i }));
    const fresh = await shard.send(shard.batchMessage(restarted));
    assert.equal(fresh.status, 'ok');
    assert.equal(fresh.details.eventsProcessed, 5);

    const afterStatus = (await getJson(`${server.url}/lakehouse/status`)).body;
    assert.equal(afterStatus.buffer.eventCount, before.eventCount + 5);
    assert.equal(afterStatus.buffer.batchCount, before.batchCount + 1);
    const src = afterStatus.sourceStates.find((s) => s.sourceDoId === 'dup-source');
    assert.equal(src.duplicateBatches, 1);
    assert.equal(src.duplicateEvents, 10);
    assert.equal(src.eventsAcked, 15);
    assert.ok(afterStatus.dedupStats.duplicateBatches >= 1);

    // The same resend on a new connection is still a duplicate.
    await shard.close();
    const again = await new Shard(server.wsUrl, { sourceDoId: 'dup-source' }).open();
    assert.equal((await again.send(first)).status, 'duplicate');
    await again.close();
  });

  test('malformed messages are nacked with a reason and the connection stays open', async () => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'bad-source' }).open();
    await shard.connect();
    const nextNack = () => shard.next((m) => m.type === 'nack');
    // A source exists from its first stored batch (then its nacks are counted).
    assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(3), 6))).status, 'ok');

    shard.sendRaw('{not json');
    let nack = await nextNack();
    assert.equal(nack.reason, 'invalid_format');
    assert.equal(nack.shouldRetry, false);
    assert.match(nack.errorMessage, /malformed JSON/);

    nack = await shard.send({ type: 'gossip', sequenceNumber: 41 });
    assert.equal(nack.reason, 'invalid_format');
    assert.equal(nack.sequenceNumber, 41);
    assert.match(nack.errorMessage, /unknown message type/);

    const cases = [
      [{ events: [] }, /`events` must not be empty/],
      [{ events: [{ sequence: 1, timestamp: 1, operation: 'UPSERT', table: 't', rowId: 'r', after: {} }] }, /events\[0\]\.operation/],
      [{ events: [{ sequence: 1, timestamp: 1, operation: 'INSERT', rowId: 'r', after: {} }] }, /missing field `table`/],
      [{ events: [{ sequence: 1, timestamp: 1, operation: 'INSERT', table: 't', after: {} }] }, /missing field `rowId`/],
      [{ events: [{ sequence: 1, timestamp: 1, operation: 'INSERT', table: '../etc', rowId: 'r', after: {} }] }, /must not contain `\/`/],
      [{ events: [{ sequence: 1, timestamp: 1, operation: 'INSERT', table: 'a#b', rowId: 'r', after: {} }] }, /must hold only ASCII letters/],
      [{ events: [{ sequence: 1, timestamp: 9_300_000_000_000_000, operation: 'INSERT', table: 't', rowId: 'r', after: {} }] }, /events\[0\]: timestamp/],
      [{ sequenceNumber: undefined, events: [{ sequence: 1, timestamp: 1, operation: 'INSERT', table: 't', rowId: 'r', after: {} }] }, /sequenceNumber/],
    ];
    let seq = 100;
    for (const [patch, pattern] of cases) {
      const message = { ...shard.batchMessage([{ sequence: 0 }], seq), ...patch };
      if ('sequenceNumber' in patch) {
        delete message.sequenceNumber;
        shard.sendRaw(JSON.stringify(message));
        nack = await nextNack();
        assert.equal(nack.sequenceNumber, undefined);
      } else {
        nack = await shard.send(message);
        assert.equal(nack.sequenceNumber, seq, 'the nack carries the batch sequence number');
      }
      assert.equal(nack.type, 'nack');
      assert.equal(nack.reason, 'invalid_format');
      assert.equal(nack.shouldRetry, false);
      assert.match(nack.errorMessage, pattern);
      seq++;
    }

    shard.sendRaw(Buffer.from([0xff, 0x00, 0x13]));
    nack = await nextNack();
    assert.equal(nack.reason, 'invalid_format');
    assert.match(nack.errorMessage, /binary frames/);

    // Still open and working: the next good batch is acked.
    const ack = await shard.send(shard.batchMessage(shard.makeEvents(3), 7));
    assert.equal(ack.status, 'ok');
    const src = (await getJson(`${server.url}/lakehouse/status`)).body.sourceStates.find((s) => s.sourceDoId === 'bad-source');
    assert.equal(src.eventsAcked, 6);
    assert.ok(src.batchesNacked >= cases.length);
    await shard.close();
  });

  test('ping, heartbeat, flush_request and disconnect are answered', async () => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'hb-source' }).open();
    shard.sendRaw('ping');
    const pong = await shard.next((m) => m.type === 'raw');
    assert.equal(pong.text, 'pong');

    const sent = Date.now() - 1234;
    shard.sendRaw(JSON.stringify({ type: 'heartbeat', timestamp: sent, sourceDoId: 'hb-source', lastAckSequence: 3, pendingEvents: 0 }));
    const hb = await shard.next((m) => m.type === 'pong');
    assert.equal(hb.timestamp, sent);
    assert.ok(Math.abs(hb.serverTime - Date.now()) < 60_000);

    const buffered = (await getJson(`${server.url}/lakehouse/status`)).body.buffer;
    shard.sendRaw(JSON.stringify({ type: 'flush_request', timestamp: Date.now(), sourceDoId: 'hb-source', reason: 'manual', correlationId: 'flush-1' }));
    const flush = await shard.next((m) => m.type === 'flush_response', 60_000);
    assert.equal(flush.correlationId, 'flush-1');
    for (const key of ['success', 'batchesFlushed', 'eventsFlushed', 'bytesWritten', 'paths', 'durationMs', 'usedFallback']) {
      assert.ok(key in flush.result, key);
    }
    assert.equal(flush.result.success, true, JSON.stringify(flush.result));
    assert.equal(flush.result.eventsFlushed, buffered.eventCount);
    assert.equal(flush.result.batchesFlushed, buffered.batchCount);
    assert.ok(flush.result.bytesWritten > 0 && flush.result.paths.length > 0);
    assert.equal((await getJson(`${server.url}/lakehouse/status`)).body.buffer.eventCount, 0);

    shard.sendRaw(JSON.stringify({ type: 'disconnect', timestamp: Date.now(), sourceDoId: 'hb-source', reason: 'shutdown' }));
    const closed = await withTimeout(shard.closed, 5_000, 'close after disconnect');
    assert.equal(closed.code, 1000);
  });

  test('HTTP routes: health, 404 with JSON, table routing to its own instance', async () => {
    let r = await getJson(`${server.url}/lakehouse/health`);
    assert.equal(r.status, 200);
    assert.equal(r.body.status, 'ok');
    r = await getJson(`${server.url}/nowhere`);
    assert.equal(r.status, 404);
    assert.equal(r.body.status, 404);
    assert.match(r.body.error, /no route/);
    r = await getJson(`${server.url}/lakehouse/nowhere`);
    assert.equal(r.status, 404);
    assert.equal(r.body.kind, 'not_found');
    r = await getJson(`${server.url}/lakehouse/status`, { method: 'DELETE' });
    assert.equal(r.status, 405);
    r = await getJson(`${server.url}/lakehouse/ws`);
    assert.equal(r.status, 400);

    // ?table=orders goes to the instance `lakehouse-orders`, which is empty.
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'routed', path: '/ws?table=orders' }).open();
    assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(4, ['orders'])))).status, 'ok');
    const routed = (await getJson(`${server.url}/lakehouse/status?table=orders`)).body;
    assert.equal(routed.buffer.eventCount, 4);
    assert.deepEqual(routed.sourceStates.map((s) => s.sourceDoId), ['routed']);
    const main = (await getJson(`${server.url}/lakehouse/status`)).body;
    assert.ok(!main.sourceStates.some((s) => s.sourceDoId === 'routed'));
    await shard.close();
  });
});

describe('configuration errors', () => {
  test('an invalid DOLAKE_CONFIG is refused by key name, never ignored', async () => {
    const stateDir = tempStateDir();
    const server = await startDoLake({ stateDir, config: { flushThresholdEvents: 0, parquetCompression: 'snappy' } });
    try {
      let r = await getJson(`${server.url}/lakehouse/status`);
      assert.equal(r.status, 500);
      assert.equal(r.body.state, 'error');
      assert.match(r.body.error, /flushThresholdEvents/);
      r = await getJson(`${server.url}/lakehouse/health`);
      assert.equal(r.status, 503);
      const ws = new WebSocket(`${server.wsUrl}/ws`);
      const refused = await withTimeout(new Promise((resolve, reject) => {
        ws.once('unexpected-response', (_req, res) => resolve(res.statusCode));
        ws.once('open', () => reject(new Error('upgrade accepted with a broken config')));
        ws.once('error', () => {});
      }), 10_000, 'upgrade refusal');
      assert.equal(refused, 503);
      assert.ok(server.logs.some((l) => l.includes('start_failed') && l.includes('flushThresholdEvents')), 'logged');
    } finally {
      await server.stop();
      removeDir(stateDir);
    }
  });
});
