// Acked batches survive a crash of the runtime process (SIGKILL of node and
// workerd) and a restart on the same persisted state: nothing lost, nothing twice.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { getJson, getMetrics, removeDir, Shard, sleep, startDoLake, tempStateDir } from './harness.mjs';

test('acked batches survive SIGKILL and restart, resends stay duplicates', async () => {
  const stateDir = tempStateDir();
  let server = await startDoLake({ stateDir });
  try {
    const shards = await Promise.all(['crash-a', 'crash-b'].map((id) => new Shard(server.wsUrl, { sourceDoId: id }).open()));
    const sent = new Map(shards.map((s) => [s.sourceDoId, []]));
    for (let b = 0; b < 20; b++) {
      for (const shard of shards) {
        const message = shard.batchMessage(shard.makeEvents(25, ['users', 'orders']));
        const ack = await shard.send(message);
        assert.equal(ack.status, 'ok');
        sent.get(shard.sourceDoId).push(message);
      }
    }
    const before = (await getJson(`${server.url}/lakehouse/status`)).body;
    assert.equal(before.buffer.eventCount, 1000);
    const metricsBefore = await getMetrics(server);
    assert.equal(metricsBefore.dolake_events_acked_total.samples[0].value, 1000);
    assert.equal(metricsBefore.dolake_events_acked_total.type, 'counter');
    assert.equal(before.buffer.batchCount, 40);

    // In flight at the moment of the crash: batches sent without waiting.
    const inflight = shards.map((shard) => {
      const messages = Array.from({ length: 10 }, () => shard.batchMessage(shard.makeEvents(25)));
      const replies = messages.map((m) => shard.send(m, 20_000).catch(() => null));
      for (const m of messages) sent.get(shard.sourceDoId).push(m);
      return replies;
    }).flat();
    await sleep(5);
    await server.kill();
    const ackedInFlight = (await Promise.all(inflight)).filter((r) => r?.type === 'ack').length;

    server = await startDoLake({ stateDir });
    const restarted = (await getJson(`${server.url}/lakehouse/status`)).body;
    // Counters never go backwards across a crash and restart.
    const metricsAfter = await getMetrics(server);
    for (const [name, family] of Object.entries(metricsBefore)) {
      if (family.type !== 'counter') continue;
      for (const sample of family.samples) {
        const now = metricsAfter[name].samples.find((s) => JSON.stringify(s.labels) === JSON.stringify(sample.labels));
        assert.ok(now && now.value >= sample.value, `${name} ${JSON.stringify(sample.labels)} went from ${sample.value} to ${now?.value}`);
      }
    }
    assert.ok(restarted.instance.constructions >= 2, 'a new instance was constructed');
    assert.ok(restarted.buffer.batchCount >= 40 + ackedInFlight, 'every acked batch is still buffered');
    assert.equal(restarted.buffer.eventCount, restarted.buffer.batchCount * 25);

    // The shards reconnect and resend everything they sent; acked batches are
    // duplicates, the rest are stored now. In the end every event is buffered once.
    const again = await Promise.all(['crash-a', 'crash-b'].map((id) => new Shard(server.wsUrl, { sourceDoId: id }).open()));
    let duplicates = 0;
    for (const shard of again) {
      await shard.connect();
      for (const message of sent.get(shard.sourceDoId)) {
        const reply = await shard.send({ ...message, isRetry: true, retryCount: 1 });
        assert.equal(reply.type, 'ack', JSON.stringify(reply));
        if (reply.status === 'duplicate') duplicates++;
        else assert.equal(reply.status, 'ok');
      }
    }
    assert.ok(duplicates >= 40 + ackedInFlight);
    const final = (await getJson(`${server.url}/lakehouse/status`)).body;
    assert.equal(final.buffer.eventCount, 1500, 'every event exactly once');
    assert.equal(final.buffer.batchCount, 60);
    for (const s of final.sourceStates) {
      assert.equal(s.eventsAcked, 750);
      assert.equal(s.highestEventSequence, 749);
    }
    await Promise.all(again.map((s) => s.close()));
  } finally {
    await server.stop();
    removeDir(stateDir);
  }
});
