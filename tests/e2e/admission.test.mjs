// Admission control and security in real workerd: 429s with headers, every
// nack reason, the 1008 close, authentication on and off, and a bounded flood
// after which every acked event is in the lake exactly once.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { exportLake, getJson, removeDir, Shard, sleep, startDoLake, tempStateDir, verifyLake, withTimeout } from './harness.mjs';

async function withServer(options, fn) {
  const stateDir = tempStateDir();
  const server = await startDoLake({ stateDir, ...options });
  try {
    return await fn(server, stateDir);
  } finally {
    await server.stop();
    removeDir(stateDir);
  }
}

const status = async (server, headers = {}) => (await getJson(`${server.url}/lakehouse/status`, { headers })).body;

describe('rate limits', () => {
  test('new connections: burst then 429 rate_limited with headers; per-IP limit: 429 ip_limit', () =>
    withServer({ config: { rateLimit: { connectionsPerSecond: 1, burstCapacity: 3, maxConnectionsPerIp: 2 } } }, async (server) => {
      const open = [];
      // Distinct client addresses (header values only), so that only the rate applies.
      const from = (i) => ({ 'CF-Connecting-IP': `192.0.2.${i + 1}` });
      for (let i = 0; i < 3; i++) open.push(await new Shard(server.wsUrl, { sourceDoId: `burst-${i}`, headers: from(i) }).open());
      const refused = await new Shard(server.wsUrl, { sourceDoId: 'burst-x', headers: from(9) }).open().then(() => null, (e) => e);
      assert.ok(refused, 'the fourth connection in the same second is refused');
      assert.equal(refused.status, 429);
      assert.equal(refused.body.reason, 'rate_limited');
      assert.ok(refused.body.retryAfter >= 1);
      assert.match(refused.body.error, /connectionsPerSecond/);
      for (const h of ['x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset', 'retry-after']) assert.ok(refused.headers[h], h);
      assert.equal(refused.headers['x-ratelimit-limit'], '3');
      assert.equal(refused.headers['x-ratelimit-remaining'], '0');
      await Promise.all(open.map((s) => s.close()));

      await sleep(3_100);
      const ip = { 'CF-Connecting-IP': '198.51.100.7' };
      const a = await new Shard(server.wsUrl, { sourceDoId: 'ip-a', headers: ip }).open();
      const b = await new Shard(server.wsUrl, { sourceDoId: 'ip-b', headers: ip }).open();
      const c = await new Shard(server.wsUrl, { sourceDoId: 'ip-c', headers: ip }).open().then(() => null, (e) => e);
      assert.equal(c?.status, 429);
      assert.equal(c.body.reason, 'ip_limit');
      const s = await status(server);
      assert.equal(s.rateLimits.connectionsPerIp['198.51.100.7'], 2);
      assert.equal(s.rateLimits.refusals.rate_limited, 1);
      assert.equal(s.rateLimits.refusals.ip_limit, 1);
      await a.close();
      await b.close();
    }));

  test('messages per second: nack rate_limited with retryDelayMs; acks carry rateLimit', () =>
    withServer({ config: { rateLimit: { messagesPerSecond: 5 } } }, async (server) => {
      const shard = await new Shard(server.wsUrl, { sourceDoId: 'chatty' }).open();
      const ack = await shard.send(shard.batchMessage(shard.makeEvents(2)));
      assert.equal(ack.status, 'ok');
      assert.equal(ack.rateLimit.limit, 5);
      assert.equal(ack.rateLimit.remaining, 4);
      assert.ok(ack.rateLimit.resetAt > Date.now() - 1_000);
      assert.equal(ack.details.bucketCapacity, 5);
      const replies = [];
      for (let i = 0; i < 10; i++) replies.push(shard.send(shard.batchMessage(shard.makeEvents(1))));
      const results = await Promise.all(replies);
      const limited = results.filter((r) => r.type === 'nack');
      assert.ok(limited.length >= 5, `${limited.length} refused`);
      for (const n of limited) {
        assert.equal(n.reason, 'rate_limited');
        assert.equal(n.shouldRetry, true);
        assert.ok(n.retryDelayMs > 0 && n.retryDelayMs <= 1_000);
        assert.equal(typeof n.sequenceNumber, 'number');
      }
      await sleep(1_100);
      const resent = await shard.send({ ...shard.batchMessage(limited[0] ? [] : [], limited[0].sequenceNumber), events: shard.makeEvents(1) });
      assert.equal(resent.type, 'ack', 'after the delay the refused batch is accepted');
      assert.ok((await status(server)).rateLimits.refusals.rate_limited >= 5);
      await shard.close();
    }));

  test('size limits: payload_too_large and event_too_large nacks, then 1008 on the third violation', () =>
    withServer({ config: { rateLimit: { maxPayloadSize: 4_000, maxEventSize: 300 } } }, async (server) => {
      const shard = await new Shard(server.wsUrl, { sourceDoId: 'big' }).open();
      const huge = shard.batchMessage(shard.makeEvents(40));
      let nack = await shard.send(huge);
      assert.equal(nack.reason, 'payload_too_large');
      assert.equal(nack.maxSize, 4_000);
      assert.equal(nack.shouldRetry, false);
      assert.equal(nack.sequenceNumber, huge.sequenceNumber);
      const fat = shard.makeEvents(1);
      fat[0].after = { blob: 'x'.repeat(500) };
      nack = await shard.send(shard.batchMessage(fat));
      assert.equal(nack.reason, 'event_too_large');
      assert.equal(nack.maxSize, 300);
      assert.equal(nack.shouldRetry, false);
      assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(2)))).status, 'ok', 'good batches still pass');
      shard.sendRaw(JSON.stringify(shard.batchMessage(shard.makeEvents(40))));
      const closed = await withTimeout(shard.closed, 5_000, 'the 1008 close');
      assert.equal(closed.code, 1008);
      assert.match(closed.reason, /size violations/);
      const s = await status(server);
      assert.equal(s.rateLimits.refusals.payload_too_large, 2);
      assert.equal(s.rateLimits.refusals.event_too_large, 1);
      assert.equal(s.buffer.eventCount, 2, 'refused batches are not partially applied');
    }));
});

describe('authentication', () => {
  test('with DOLAKE_AUTH_TOKEN every route but /health needs the bearer token', () =>
    withServer({ authToken: 'correct-horse' }, async (server) => {
      let r = await getJson(`${server.url}/lakehouse/status`);
      assert.equal(r.status, 401);
      assert.equal(r.body.kind, 'unauthorized');
      assert.ok(!JSON.stringify(r.body).includes('correct-horse'));
      r = await getJson(`${server.url}/lakehouse/status`, { headers: { Authorization: 'Bearer wrong-horse' } });
      assert.equal(r.status, 401);
      r = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
      assert.equal(r.status, 401);
      r = await getJson(`${server.url}/lakehouse/health`);
      assert.equal(r.status, 200);
      const refused = await new Shard(server.wsUrl, { sourceDoId: 'anon' }).open().then(() => null, (e) => e);
      assert.equal(refused?.status, 401);
      const shard = await new Shard(server.wsUrl, { sourceDoId: 'authed', headers: { Authorization: 'Bearer correct-horse' } }).open();
      assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(3)))).status, 'ok');
      const s = await status(server, { Authorization: 'Bearer correct-horse' });
      assert.equal(s.authentication, 'enabled');
      assert.equal(s.rateLimits.refusals.unauthorized, 4);
      assert.ok(!JSON.stringify(s).includes('correct-horse'), 'the secret never appears in /status');
      assert.ok(!server.logs.some((l) => l.includes('correct-horse')), 'nor in the logs');
      await shard.close();
    }));

  test('without a token DoLake warns at start and says so on /status', () =>
    withServer({}, async (server) => {
      const s = await status(server);
      assert.match(s.authentication, /disabled/);
      assert.ok(server.logs.some((l) => l.includes('no_authentication')));
      const line = JSON.parse(server.logs.find((l) => l.includes('no_authentication')));
      assert.equal(line.level, 'warn', 'logs are one JSON object per line');
      assert.ok(server.logs.some((l) => l.includes('"event":"started"')), 'info is logged by default');
    }));

  test('DOLAKE_LOG_LEVEL=error keeps only errors', () =>
    withServer({ logLevel: 'error' }, async (server) => {
      const shard = await new Shard(server.wsUrl, { sourceDoId: 'quiet' }).open();
      shard.sendRaw('{not json');
      await shard.next((m) => m.type === 'nack');
      await shard.close();
      const json = server.logs.filter((l) => l.startsWith('{'));
      assert.ok(!json.some((l) => /"level":"(info|warn)"/.test(l)), json.join('\n'));
    }));
});

describe('flood', () => {
  test('50 connections sending as fast as they can for 3 s: every acked event once, status still answers', () =>
    withServer({ config: { flushThresholdMs: 3_600_000, flushIntervalMs: 3_600_000, flushThresholdEvents: 20_000 } }, async (server, stateDir) => {
      const shards = [];
      // Five "clients" (header values only) with ten connections each: the per-IP limit.
      for (let i = 0; i < 50; i++) {
        const headers = { 'CF-Connecting-IP': `192.0.2.${1 + (i % 5)}` };
        shards.push(await new Shard(server.wsUrl, { sourceDoId: `flood-${i}`, headers }).open());
      }
      const acked = [];
      const nacks = {};
      const stopAt = Date.now() + 3_000;
      await Promise.all(shards.map(async (shard) => {
        while (Date.now() < stopAt) {
          const message = shard.batchMessage(shard.makeEvents(20, ['a', 'b']));
          const reply = await shard.send(message, 60_000);
          if (reply.type === 'ack') acked.push(...message.events.map((e) => ({ sourceDoId: shard.sourceDoId, ...e })));
          else { nacks[reply.reason] = (nacks[reply.reason] ?? 0) + 1; await sleep(reply.retryDelayMs ?? 100); }
        }
      }));
      assert.ok(acked.length > 0);
      const s = await status(server);
      assert.equal(s.connectedSources, 50);
      const res = await withTimeout(fetch(`${server.url}/lakehouse/flush`, { method: 'POST' }), 120_000, 'final flush');
      assert.equal(res.status, 200, await res.text());
      const after = await status(server);
      assert.equal(after.buffer.eventCount, 0);
      assert.equal(after.flush.history.eventsFlushed, acked.length);
      const warehouse = path.join(stateDir, 'export', 'warehouse');
      mkdirSync(warehouse, { recursive: true });
      await exportLake(server, warehouse);
      const { code, out } = await verifyLake({ warehouse, events: acked });
      assert.equal(code, 0, out);
      console.log(`flood: ${acked.length} events acked by 50 connections in 3 s; nacks ${JSON.stringify(nacks)}`);
      await Promise.all(shards.map((sh) => sh.close()));
    }));
});
