// Acked batches survive a crash of the runtime process (SIGKILL of node and
// workerd) and a restart on the same persisted state: nothing lost, nothing twice.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { getJson, getMetrics, QUIET, removeDir, Shard, sleep, startDoLake, tempStateDir } from './harness.mjs';

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

// A batch's row keeps what it adds to its source; the source's row is
// rewritten when a flush deletes batches. Whether a source's state was folded
// by a flush, written by a refusal or a rename, or is only in the batch rows,
// a restart after SIGKILL restores it exactly, and every acked batch stays a
// duplicate.
test('every source state is restored exactly after a crash, before and after a flush folded it', async () => {
  const stateDir = tempStateDir();
  const config = { ...QUIET, maxBufferSize: 400_000, flushThresholdBytes: 400_000 };
  let server = await startDoLake({ stateDir, config });
  try {
    const ids = ['fold-a', 'fold-b', 'fold-c'];
    const shards = await Promise.all(ids.map((id) => new Shard(server.wsUrl, { sourceDoId: id }).open()));
    const sent = new Map(ids.map((id) => [id, []]));
    const sendBatches = async (count) => {
      for (let b = 0; b < count; b++) {
        for (const shard of shards) {
          const message = shard.batchMessage(shard.makeEvents(5, ['users', 'orders']));
          const ack = await shard.send(message);
          assert.equal(ack.status, 'ok', JSON.stringify(ack));
          sent.get(shard.sourceDoId).push(message);
        }
      }
    };
    await sendBatches(6);
    const flushed = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
    assert.equal(flushed.status, 200, JSON.stringify(flushed.body));
    assert.equal((await getJson(`${server.url}/lakehouse/status`)).body.buffer.batchCount, 0);
    await sendBatches(4);
    // A resend (counted duplicate, writes the source) and a rename (written
    // with its batch) on some sources; the third has only batch rows.
    const resend = await shards[0].send({ ...sent.get('fold-a')[7], isRetry: true });
    assert.equal(resend.status, 'duplicate');
    shards[1].shardName = 'renamed-b';
    const renamed = shards[1].batchMessage(shards[1].makeEvents(5));
    assert.equal((await shards[1].send(renamed)).status, 'ok');
    sent.get('fold-b').push(renamed);
    await sendBatches(3);

    const states = async () => {
      const status = (await getJson(`${server.url}/lakehouse/status`)).body;
      return Object.fromEntries(status.sourceStates.map(({ connected, ...s }) => [s.sourceDoId, s]));
    };
    const before = await states();
    assert.equal(before['fold-b'].shardName, 'renamed-b');
    assert.equal(before['fold-a'].duplicateBatches, 1);
    await server.kill();

    server = await startDoLake({ stateDir, config });
    assert.deepEqual(await states(), before, 'every source as it was acked');
    const again = await Promise.all(ids.map((id) => new Shard(server.wsUrl, { sourceDoId: id }).open()));
    for (const shard of again) {
      for (const message of sent.get(shard.sourceDoId)) {
        const reply = await shard.send({ ...message, isRetry: true, retryCount: 1 });
        assert.equal(reply.status, 'duplicate', `${shard.sourceDoId} #${message.sequenceNumber}: ${JSON.stringify(reply)}`);
      }
    }
    const status = (await getJson(`${server.url}/lakehouse/status`)).body;
    assert.equal(status.buffer.batchCount, 3 * 7 + 1, 'nothing stored twice');
    await Promise.all(again.map((s) => s.close()));
  } finally {
    await server.stop();
    removeDir(stateDir);
  }
});
