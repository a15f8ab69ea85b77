// A socket outlives the eviction of the object: the constructor runs again,
// the connection's attachment survives, and batches keep being acked and counted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { getJson, removeDir, Shard, sleep, startDoLake, tempStateDir } from './harness.mjs';

test('the same socket keeps working after the object is evicted', async () => {
  const stateDir = tempStateDir();
  const server = await startDoLake({ stateDir, config: { rateLimit: { messagesPerSecond: 10 } } });
  try {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'sleepy', shardName: 'shard-sleepy' }).open();
    await shard.connect();
    const firstBatch = shard.batchMessage(shard.makeEvents(10));
    assert.equal((await shard.send(firstBatch)).status, 'ok');
    for (let b = 1; b < 3; b++) assert.equal((await shard.send(shard.batchMessage(shard.makeEvents(10)))).status, 'ok');
    const before = (await getJson(`${server.url}/lakehouse/status`)).body;
    const constructions = before.instance.constructions;

    // Idle (no traffic at all) until the runtime evicts the object: it was seen
    // after 12-15 s here. Up to 4 rounds of 16 s.
    let after;
    for (let round = 0; round < 4; round++) {
      await sleep(16_000);
      shard.sendRaw('ping');
      assert.equal((await shard.next((m) => m.type === 'raw')).text, 'pong');
      const ack = await shard.send(shard.batchMessage(shard.makeEvents(10)));
      assert.equal(ack.type, 'ack', JSON.stringify(ack));
      assert.equal(ack.status, 'ok');
      after = (await getJson(`${server.url}/lakehouse/status`)).body;
      if (after.instance.constructions > constructions) break;
    }
    assert.ok(after.instance.constructions > constructions, 'the object was evicted and constructed again');
    const src = after.sourceStates.find((s) => s.sourceDoId === 'sleepy');
    assert.equal(src.eventsAcked, after.buffer.eventCount);
    assert.equal(src.batchesAcked, src.lastAckedSequence + 1);
    assert.equal(src.connected, true);
    const conn = after.connections.find((c) => c.sourceId === 'sleepy');
    assert.ok(conn, 'the attachment survived eviction');
    assert.equal(conn.shardName, 'shard-sleepy');
    assert.equal(conn.clientId, 'sleepy');
    assert.equal(conn.acks, src.batchesAcked, 'per-connection counters carried across eviction');
    assert.equal(after.connectedSources, 1);
    // The message limit still holds on the surviving socket: its bucket lives
    // in the attachment. A burst of 15 heartbeats: at most 10 (+ refill) pass.
    await sleep(1_100);
    for (let i = 0; i < 15; i++) shard.sendRaw(JSON.stringify({ type: 'heartbeat', timestamp: i, sourceDoId: 'sleepy', lastAckSequence: 0, pendingEvents: 0 }));
    const burst = [];
    for (let i = 0; i < 15; i++) burst.push(await shard.next((m) => m.type === 'pong' || (m.type === 'nack' && m.reason === 'rate_limited')));
    const limited = burst.filter((m) => m.type === 'nack').length;
    assert.ok(limited >= 4 && limited <= 5, `${limited} of 15 refused`);
    await sleep(1_100);
    // A resend across the eviction is still a duplicate.
    assert.equal((await shard.send({ ...firstBatch, isRetry: true, retryCount: 1 })).status, 'duplicate');
    await shard.close();
  } finally {
    await server.stop();
    removeDir(stateDir);
  }
});
