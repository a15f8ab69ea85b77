// HTTP ingest (issue 13): POST /lakehouse/cdc takes one cdc_batch and answers
// the same ack/nack as the WebSocket, 200 only once the batch is durable.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { getJson, removeDir, Shard, startDoLake, tempStateDir } from './harness.mjs';

const QUIET = { flushThresholdEvents: 1_000_000_000, flushThresholdBytes: 50_000_000, flushThresholdMs: 3_600_000, flushIntervalMs: 3_600_000, rateLimit: { messagesPerSecond: 20, maxPayloadSize: 200_000, maxEventSize: 100_000 } };

const post = (server, body, headers = {}) => getJson(`${server.url}/lakehouse/cdc`, { method: 'POST', body: typeof body === 'string' ? body : JSON.stringify(body), headers: { 'content-type': 'application/json', ...headers } });

test('HTTP ingest: durable acks, dedup, refusals with statuses, rate limits', async () => {
  const stateDir = tempStateDir();
  let server = await startDoLake({ stateDir, config: QUIET });
  try {
    const shard = new Shard(server.wsUrl, { sourceDoId: 'http-src' });
    const first = shard.batchMessage(shard.makeEvents(10));
    let res = await post(server, first);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.type, 'ack');
    assert.equal(res.body.status, 'ok');
    assert.equal(res.body.details.eventsProcessed, 10);
    assert.equal(typeof res.body.rateLimit.remaining, 'number');
    // A resend is a duplicate, stored once.
    res = await post(server, { ...first, isRetry: true, retryCount: 1 });
    assert.equal(res.status, 200);
    assert.equal(res.body.status, 'duplicate');
    // Invalid input: 400 with the nack.
    res = await post(server, '{"type":"cdc_batch","sequenceNumber":5');
    assert.equal(res.status, 400);
    assert.equal(res.body.type, 'nack');
    assert.equal(res.body.reason, 'invalid_format');
    res = await post(server, { type: 'heartbeat', timestamp: 1, sourceDoId: 'x', lastAckSequence: 0, pendingEvents: 0 });
    assert.equal(res.status, 400);
    // Over maxPayloadSize: 413.
    const big = shard.batchMessage(shard.makeEvents(1).map((e) => ({ ...e, after: { blob: 'x'.repeat(250_000) } })));
    res = await post(server, big);
    assert.equal(res.status, 413);
    assert.equal(res.body.reason, 'payload_too_large');
    assert.equal(res.body.sequenceNumber, big.sequenceNumber);
    // Durable once acked: a kill -9 right after keeps it.
    const second = shard.batchMessage(shard.makeEvents(5));
    assert.equal((await post(server, second)).body.status, 'ok');
    await server.kill();
    server = await startDoLake({ stateDir, config: QUIET });
    const s = (await getJson(`${server.url}/lakehouse/status`)).body;
    assert.equal(s.buffer.eventCount, 15);
    assert.equal((await post(server, second)).body.status, 'duplicate', 'dedup survives the restart');
    // Rate limit: a burst past messagesPerSecond gets 429 with headers.
    const results = await Promise.all(Array.from({ length: 40 }, () => post(server, second)));
    const limited = results.filter((r) => r.status === 429);
    assert.ok(limited.length > 0, results.map((r) => r.status).join(','));
    assert.equal(limited[0].body.reason, 'rate_limited');
    assert.ok(limited[0].headers.get('retry-after'));
    assert.ok(limited[0].headers.get('x-ratelimit-limit'));
    const flushed = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
    assert.equal(flushed.body.eventsFlushed, 15);
  } finally {
    await server.stop();
    removeDir(stateDir);
  }
});
