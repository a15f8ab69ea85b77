// One flush of N buffered INSERTs (batches of 500) in workerd, timed: the
// probe behind the attribution figures of docs/benchmarks.md (current-state
// tables). Usage: node tests/bench/flush_probe.mjs N changelog|both|current-state
// Prints: N, tableKinds, wall ms, the flush's durationMs, success, error. Loopback only.
import { getJson, QUIET, removeDir, Shard, startDoLake, tempStateDir } from '../e2e/harness.mjs';
const n = Number(process.argv[2]);
const stateDir = tempStateDir();
const server = await startDoLake({ stateDir, config: { ...QUIET, tableKinds: process.argv[3] } });
try {
  const shard = await new Shard(server.wsUrl, { sourceDoId: 'p' }).open();
  for (let i = 0; i < n; i += 500) {
    const ev = [];
    for (let j = i; j < i + 500; j++) ev.push({ sequence: j, timestamp: Date.now(), operation: 'INSERT', table: 'users', rowId: `i${j}`, after: { id: `i${j}`, n: j } });
    const a = await shard.send(shard.batchMessage(ev), 60000);
    if (a.status !== 'ok') throw new Error(JSON.stringify(a));
  }
  const t = Date.now();
  const r = await fetch(`${server.url}/lakehouse/flush`, { method: 'POST' });
  const b = await r.json();
  console.log(n, process.argv[3], Date.now() - t, b.durationMs, b.success, b.error);
} finally { await server.stop(); removeDir(stateDir); }
