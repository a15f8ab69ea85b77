// Admission control and security in real workerd: 429s with headers, every
// nack reason, the 1008 close, authentication on and off, and a bounded flood
// after which every acked event is in the lake exactly once.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { doInstancesOnDisk, doStorageSnapshot, exportLake, getJson, removeDir, Shard, sleep, startDoLake, tempStateDir, verifyLake, withTimeout } from './harness.mjs';

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

const status = async (server, headers = {}, query = '') => (await getJson(`${server.url}/lakehouse/status${query}`, { headers })).body;

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
  const TOKEN = 'correct-horse';
  const AUTH = { Authorization: `Bearer ${TOKEN}` };
  const assertUnauthorized = (r, what) => {
    assert.equal(r.status, 401, what);
    assert.deepEqual(Object.keys(r.body).sort(), ['error', 'kind', 'status'], what);
    assert.equal(r.body.kind, 'unauthorized', what);
    assert.equal(r.body.status, 401, what);
  };
  // A WebSocket upgrade refused before it is accepted (status and JSON body).
  const refusedUpgrade = (server, path, headers = {}) =>
    new Shard(server.wsUrl, { sourceDoId: 'anon', path, headers }).open().then(
      (shard) => { shard.close(); return null; },
      (e) => e,
    );

  test('with DOLAKE_AUTH_TOKEN every route but /health needs the bearer token', () =>
    withServer({ authToken: TOKEN }, async (server) => {
      let r = await getJson(`${server.url}/lakehouse/status`);
      assertUnauthorized(r, 'no token');
      assert.ok(!JSON.stringify(r.body).includes(TOKEN));
      assert.match(r.headers.get('www-authenticate') ?? '', /^Bearer /, 'RFC 7235: a 401 names the scheme');
      r = await getJson(`${server.url}/lakehouse/status`, { headers: { Authorization: 'Bearer wrong-horse' } });
      assertUnauthorized(r, 'wrong token');
      r = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
      assertUnauthorized(r, 'flush');
      r = await getJson(`${server.url}/lakehouse/health`);
      assert.equal(r.status, 200);
      assert.deepEqual(r.body, { status: 'ok', scope: 'worker' }, 'answered by the Worker, no instance touched');
      r = await getJson(`${server.url}/lakehouse/health`, { headers: AUTH });
      assert.equal(r.status, 200);
      assert.deepEqual(r.body, { status: 'ok' }, 'with the token, health is the instance\'s');
      const refused = await refusedUpgrade(server, '/ws');
      assert.equal(refused?.status, 401);
      assert.equal(refused.body.kind, 'unauthorized');
      const shard = await new Shard(server.wsUrl, { sourceDoId: 'authed', headers: AUTH }).open();
      assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(3)))).status, 'ok');
      const s = await status(server, AUTH);
      assert.equal(s.authentication, 'enabled');
      // The Worker refused all four before any instance was asked: the
      // instance counted none; the Worker's log lines are the record.
      assert.equal(s.rateLimits.refusals.unauthorized, undefined, JSON.stringify(s.rateLimits.refusals));
      assert.equal(server.logs.filter((l) => l.includes('"event":"unauthorized"') && l.includes('"scope":"worker"')).length, 4);
      assert.ok(!JSON.stringify(s).includes(TOKEN), 'the secret never appears in /status');
      assert.ok(!server.logs.some((l) => l.includes(TOKEN)), 'nor in the logs');
      await shard.close();
    }));

  test('unauthenticated requests create no instance and write no storage', () =>
    withServer({ authToken: TOKEN }, async (server, stateDir) => {
      // A control instance and the default one exist, with storage, before.
      assert.equal((await getJson(`${server.url}/lakehouse/status?table=control`, { headers: AUTH })).status, 200);
      assert.equal((await getJson(`${server.url}/lakehouse/status`, { headers: AUTH })).status, 200);
      const before = doStorageSnapshot(stateDir);
      assert.equal(doInstancesOnDisk(stateDir).length, 2, `the check sees instances on disk: ${JSON.stringify(before)}`);

      const N = 12;
      const wrong = { Authorization: 'Bearer wrong-horse' };
      for (let i = 1; i <= N; i++) {
        const table = `x${i}`;
        const headers = i % 2 ? {} : wrong;
        const health = await getJson(`${server.url}/lakehouse/health?table=${table}`, { headers });
        assert.equal(health.status, 200);
        assert.deepEqual(health.body, { status: 'ok', scope: 'worker' });
        assertUnauthorized(await getJson(`${server.url}/lakehouse/status?table=${table}`, { headers }), `status ${table}`);
        assertUnauthorized(await getJson(`${server.url}/lakehouse/metrics?table=${table}`, { headers }), `metrics ${table}`);
        assertUnauthorized(await getJson(`${server.url}/lakehouse/flush?table=${table}`, { method: 'POST', headers }), `flush ${table}`);
        assertUnauthorized(await getJson(`${server.url}/lakehouse/health?table=${table}`, { method: 'POST', headers }), `POST health ${table}`);
        const ws = await refusedUpgrade(server, `/ws?table=${table}`, headers);
        assert.equal(ws?.status, 401, `ws ${table}`);
        assert.equal(ws.body.kind, 'unauthorized');
      }
      // Existing instances are not reached either.
      for (const q of ['?table=control', '', '?table=']) {
        assertUnauthorized(await getJson(`${server.url}/lakehouse/status${q}`), `status${q}`);
        assert.equal((await refusedUpgrade(server, `/ws${q}`))?.status, 401);
      }

      // No new instance, and not a byte written to any instance's storage.
      assert.deepEqual(doStorageSnapshot(stateDir), before);
      // The same seen from the instances: constructed once (this first look
      // with the token), and no refusal counted by any of them.
      for (const table of ['x1', `x${N}`]) {
        const s = await status(server, AUTH, `?table=${table}`);
        assert.equal(s.instance.constructions, 1, `${table} was never constructed before`);
        assert.deepEqual(s.rateLimits.refusals, {});
      }
      const control = await status(server, AUTH, '?table=control');
      assert.equal(control.instance.constructions, 1);
      assert.deepEqual(control.rateLimits.refusals, {});
      // The check is sensitive: two authenticated looks made two instances.
      assert.equal(doInstancesOnDisk(stateDir).length, 4);
    }));

  test('the Bearer scheme is case-insensitive and may be followed by several spaces', () =>
    withServer({ authToken: TOKEN }, async (server) => {
      for (const authorization of [`bearer ${TOKEN}`, `BEARER ${TOKEN}`, `bEaReR ${TOKEN}`, `Bearer   ${TOKEN}`]) {
        const r = await getJson(`${server.url}/lakehouse/status?table=cased`, { headers: { Authorization: authorization } });
        assert.equal(r.status, 200, authorization);
      }
      for (const authorization of [`Bearer ${TOKEN.toUpperCase()}`, `Bearer${TOKEN}`, `Basic ${TOKEN}`, TOKEN]) {
        assertUnauthorized(await getJson(`${server.url}/lakehouse/status?table=cased`, { headers: { Authorization: authorization } }), authorization);
      }
      const shard = await new Shard(server.wsUrl, { sourceDoId: 'lower', path: '/ws?table=cased', headers: { Authorization: `bearer ${TOKEN}` } }).open();
      assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(2)))).status, 'ok');
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

describe('table names in ?table=', () => {
  const TOKEN = 'correct-horse';
  // `?table=` is percent-decoded; `+` is a space.
  const bad = { 'a%23b': 'a#b', 'a%20b': 'a b', 'a+b': 'a b', 'a%3Fb': 'a?b', 'a%2Fb': 'a/b', '..': '..' };

  for (const authToken of [TOKEN, undefined]) {
    test(`a name breaking the table rule is 400 from the Worker, no instance created (auth ${authToken ? 'on' : 'off'})`, () =>
      withServer({ authToken }, async (server, stateDir) => {
        const auth = authToken ? { Authorization: `Bearer ${authToken}` } : {};
        for (const [query, name] of Object.entries(bad)) {
          for (const headers of [auth, {}]) {
            for (const [route, init] of [['/lakehouse/status', {}], ['/lakehouse/health', {}], ['/lakehouse/flush', { method: 'POST' }]]) {
              const r = await getJson(`${server.url}${route}?table=${query}`, { ...init, headers });
              assert.equal(r.status, 400, `${route}?table=${query}: ${JSON.stringify(r.body)}`);
              assert.deepEqual(Object.keys(r.body).sort(), ['error', 'kind', 'status']);
              assert.equal(r.body.kind, 'invalid_format');
              assert.equal(r.body.status, 400);
              assert.match(r.body.error, /table name .* must/, 'the message names the rule');
              assert.ok(r.body.error.includes(JSON.stringify(name)), `${r.body.error} names ${JSON.stringify(name)}`);
            }
            const ws = await new Shard(server.wsUrl, { path: `/ws?table=${query}`, headers }).open().then(() => null, (e) => e);
            assert.equal(ws?.status, 400, `/ws?table=${query}`);
            assert.equal(ws.body.kind, 'invalid_format');
          }
        }
        assert.deepEqual(doInstancesOnDisk(stateDir), [], 'no instance was created');
        // An empty `table=` is the default instance, as before.
        const plain = await status(server, auth);
        const empty = await status(server, auth, '?table=');
        assert.equal(empty.flush.epoch, plain.flush.epoch, 'the same instance');
        const named = await status(server, auth, '?table=Users_2-b');
        assert.notEqual(named.flush.epoch, plain.flush.epoch, 'a valid name is its own instance');
        assert.equal(doInstancesOnDisk(stateDir).length, 2);
      }));
  }
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
