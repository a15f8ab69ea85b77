// Current-state tables, measured in workerd (issue 11; figures in
// docs/benchmarks.md):
//   1. flush cost with current-state tables on (`tableKinds: both`) against
//      the change log only, for an insert-heavy stream (new keys) and an
//      update-heavy one (90% UPDATEs of 10,000 existing keys, 10% DELETEs and
//      re-inserts); alternating rounds, medians of the flush's own duration;
//   2. scan time of a current-state table of `rows` rows with 10% of them
//      updated (position deletes), against the same table compacted, with
//      pyiceberg and DuckDB (tests/bench/scan_timer.py);
//   3. the row index's size per row in the Durable Object's SQLite: the
//      database size with current-state tables against without, same data.
// Usage: node tests/bench/current_state.mjs [events=50000] [rounds=3] [rows=100000]
// Loopback only; every server is stopped at the end.
import { mkdirSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import os from 'node:os';
import { exportLake, getJson, QUIET, removeDir, Shard, startDoLake, tempStateDir } from '../e2e/harness.mjs';

const EVENTS = Number(process.argv[2] ?? 50_000);
const ROUNDS = Number(process.argv[3] ?? 3);
const ROWS = Number(process.argv[4] ?? 100_000);
const BATCH = 500;
const python = path.resolve('.tools/venv/bin/python');
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function withDoLake(config, fn) {
  const stateDir = tempStateDir();
  const server = await startDoLake({ stateDir, config: { ...QUIET, ...config } });
  try {
    return await fn(server, stateDir);
  } finally {
    await server.stop();
    removeDir(stateDir);
  }
}

/** Sends `events` (built by `make(i)`) in batches; all acked. */
async function send(shard, count, make) {
  for (let i = 0; i < count; i += BATCH) {
    const events = [];
    for (let j = i; j < Math.min(count, i + BATCH); j++) events.push(make(shard.cdcSequence++, j));
    const ack = await shard.send(shard.batchMessage(events), 60_000);
    if (ack.status !== 'ok') throw new Error(JSON.stringify(ack));
  }
}

const row = (key, seq) => ({ id: key, n: seq, name: `name-${seq % 977}`, score: (seq % 1000) / 8, active: seq % 2 === 0 });
const insert = (key) => (seq) => ({ sequence: seq, timestamp: Date.now(), operation: 'INSERT', table: 'users', rowId: key(seq), after: row(key(seq), seq) });

/** Flush duration (ms, the flush's own figure) of one stream in one mode. */
async function flushCost(kinds, stream) {
  return withDoLake({ tableKinds: kinds }, async (server) => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'bench' }).open();
    const flush = async () => {
      const r = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
      if (r.status !== 200 || !r.body.success) throw new Error(JSON.stringify(r.body));
      return r.body.durationMs;
    };
    if (stream === 'update-heavy') {
      await send(shard, 10_000, insert((seq) => `u${seq}`));
      await flush();
    }
    await send(shard, EVENTS, (seq, j) => {
      if (stream === 'insert-heavy') return insert((s) => `i${s}`)(seq);
      const key = `u${(j * 7919) % 10_000}`;
      const op = j % 10 === 9 ? (j % 20 === 19 ? 'INSERT' : 'DELETE') : 'UPDATE';
      const e = { sequence: seq, timestamp: Date.now(), operation: op, table: 'users', rowId: key, before: { id: key } };
      if (op !== 'DELETE') e.after = row(key, seq);
      return e;
    });
    const ms = await flush();
    await shard.close();
    return ms;
  });
}

function scan(warehouse, ns, table) {
  const r = spawnSync(python, [path.resolve('tests/bench/scan_timer.py'), path.join(warehouse, ns, table)], { encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) throw new Error(`scan_timer: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1));
}

async function exported(server, stateDir, name) {
  const warehouse = path.join(stateDir, name, 'warehouse');
  rmSync(path.join(stateDir, name), { recursive: true, force: true });
  mkdirSync(warehouse, { recursive: true });
  await exportLake(server, warehouse);
  return warehouse;
}

const cpus = os.cpus();
console.log(`# machine: ${cpus.length} x ${cpus[0]?.model}, node ${process.version}; events per flush ${EVENTS}, rounds ${ROUNDS}, scan rows ${ROWS}`);

// 1. Flush cost.
for (const stream of ['insert-heavy', 'update-heavy']) {
  const times = { changelog: [], both: [] };
  for (let r = 0; r < ROUNDS; r++) {
    for (const kinds of r % 2 === 0 ? ['changelog', 'both'] : ['both', 'changelog']) {
      times[kinds].push(await flushCost(kinds, stream));
    }
  }
  const c = median(times.changelog);
  const b = median(times.both);
  console.log(JSON.stringify({ bench: 'flush', stream, events: EVENTS, changelogMs: c, bothMs: b, ratio: +(b / c).toFixed(2), runs: times }));
}

// 2 and 3. Scans with 10% of rows updated, then compacted; index size.
const sizes = {};
for (const kinds of ['changelog', 'current-state']) {
  await withDoLake({ tableKinds: kinds, maintenance: { targetFileBytes: 536_870_912 } }, async (server, stateDir) => {
    const shard = await new Shard(server.wsUrl, { sourceDoId: 'scan' }).open();
    await send(shard, ROWS, insert((seq) => `k${seq}`));
    let r = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
    if (!r.body.success) throw new Error(JSON.stringify(r.body));
    const s = (await getJson(`${server.url}/lakehouse/status`)).body;
    sizes[kinds] = { storageBytes: s.instance.storageBytes, indexRows: s.instance.rowIndex?.rows ?? 0 };
    if (kinds === 'changelog') return;
    // 10% of the rows updated, spread over the table.
    await send(shard, ROWS / 10, (seq, j) => {
      const key = `k${j * 10}`;
      return { sequence: seq, timestamp: Date.now(), operation: 'UPDATE', table: 'users', rowId: key, before: { id: key }, after: row(key, seq) };
    });
    r = await getJson(`${server.url}/lakehouse/flush`, { method: 'POST' });
    if (!r.body.success) throw new Error(JSON.stringify(r.body));
    const before = scan(await exported(server, stateDir, 'updated'), 'default_current', 'users');
    const m = await getJson(`${server.url}/lakehouse/maintenance`, { method: 'POST' });
    if (m.status !== 200) throw new Error(JSON.stringify(m.body));
    const after = scan(await exported(server, stateDir, 'compacted'), 'default_current', 'users');
    console.log(JSON.stringify({
      bench: 'scan', rows: ROWS, updated: ROWS / 10, withDeletes: before, compacted: after,
      pyicebergRatio: +(before.pyicebergSeconds / after.pyicebergSeconds).toFixed(2),
      duckdbRatio: +(before.duckdbSeconds / after.duckdbSeconds).toFixed(2),
    }));
    await shard.close();
  });
}
const indexBytes = sizes['current-state'].storageBytes - sizes.changelog.storageBytes;
console.log(JSON.stringify({
  bench: 'index', rows: ROWS, sqliteBytesChangelogOnly: sizes.changelog.storageBytes,
  sqliteBytesCurrentState: sizes['current-state'].storageBytes, indexRows: sizes['current-state'].indexRows,
  bytesPerRow: +(indexBytes / ROWS).toFixed(1),
}));
