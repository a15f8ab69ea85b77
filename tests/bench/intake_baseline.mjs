// `make bench` (issue 12): DoLake's intake against a minimal store-then-ack
// Durable Object (tests/bench/baseline/worker.mjs), same runtime (workerd via
// Miniflare, loopback), same client (dolake-loadgen, one batch in flight per
// shard, ~220-byte rows, flushes held off), same cells, in alternating
// rounds; reports per cell the median events/s and p99 ack latency of each,
// the ratio, and the CPU of the client and of the server (node + workerd
// process group, from /proc).
// Usage: node tests/bench/intake_baseline.mjs [--rounds N] [--seconds S] [--cells 1x100,10x1000]
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { removeDir, startDoLake, tempStateDir } from '../e2e/harness.mjs';
import { CONFIG, groupCpu, runLoadgen } from './common.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const arg = (name, dflt) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : dflt);
const rounds = Number(arg('--rounds', '3'));
const seconds = Number(arg('--seconds', '6'));
const cells = arg('--cells', '1x100,1x1000,10x100,10x1000,50x100,50x1000').split(',').map((c) => c.split('x').map(Number));
const outDir = path.join(root, 'target/bench');
mkdirSync(outDir, { recursive: true });

async function measure(target, shards, batchSize) {
  const stateDir = tempStateDir();
  const extraEnv = target === 'baseline' ? { BASELINE_SCRIPT: path.join(root, 'tests/bench/baseline/worker.mjs') } : {};
  const server = await startDoLake({ stateDir, config: CONFIG, extraEnv, logLevel: 'error' });
  try {
    const cpu0 = groupCpu(server.pid);
    const r = await runLoadgen(server.wsUrl, shards, batchSize, seconds);
    const serverCpu = groupCpu(server.pid) - cpu0;
    if (r.eventsAcked !== r.eventsSent) throw new Error(`${target} ${shards}x${batchSize}: ${r.eventsAcked} of ${r.eventsSent} acked; nacks ${JSON.stringify(r.nacksByReason)}`);
    return { eventsPerSecond: r.eventsPerSecond, p99: r.ackLatencyMs.p99, serverCores: serverCpu / r.elapsedSeconds, clientCores: (r.clientCpuSeconds ?? NaN) / r.elapsedSeconds };
  } finally {
    await server.stop();
    removeDir(stateDir);
  }
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const runs = new Map();
for (let round = 0; round < rounds; round++) {
  for (const [shards, batchSize] of cells) {
    const order = round % 2 === 0 ? ['baseline', 'dolake'] : ['dolake', 'baseline'];
    for (const target of order) {
      const m = await measure(target, shards, batchSize);
      const key = `${shards}x${batchSize}`;
      if (!runs.has(key)) runs.set(key, { baseline: [], dolake: [] });
      runs.get(key)[target].push(m);
      console.log(JSON.stringify({ round, cell: key, target, ...m }));
    }
  }
}
const rows = [...runs.entries()].map(([cell, r]) => {
  const med = (t, f) => median(r[t].map((m) => m[f]));
  const ratios = r.dolake.map((m, i) => m.eventsPerSecond / r.baseline[i].eventsPerSecond);
  return {
    cell,
    baselineEventsPerSecond: Math.round(med('baseline', 'eventsPerSecond')), dolakeEventsPerSecond: Math.round(med('dolake', 'eventsPerSecond')),
    ratioOfMedians: +(med('dolake', 'eventsPerSecond') / med('baseline', 'eventsPerSecond')).toFixed(2), medianRoundRatio: +median(ratios).toFixed(2),
    baselineP99: +med('baseline', 'p99').toFixed(1), dolakeP99: +med('dolake', 'p99').toFixed(1),
    baselineServerCores: +med('baseline', 'serverCores').toFixed(2), dolakeServerCores: +med('dolake', 'serverCores').toFixed(2),
    clientCores: +median([...r.baseline, ...r.dolake].map((m) => m.clientCores)).toFixed(2),
  };
});
const machine = `${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown'}), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB`;
const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root }).toString().trim();
writeFileSync(path.join(outDir, 'intake_baseline.json'), JSON.stringify({ machine, commit, rounds, seconds, rows, runs: Object.fromEntries(runs) }, null, 2));
const table = [
  `machine: ${machine}; commit ${commit}; ${rounds} rounds of ${seconds} s per cell and target, alternating`,
  '',
  '| shards x batch | baseline ev/s | DoLake ev/s | ratio (medians) | median of round ratios | p99 ms baseline | p99 ms DoLake | server cores baseline | server cores DoLake | client cores |',
  '|---|---|---|---|---|---|---|---|---|---|',
  ...rows.map((r) => `| ${r.cell} | ${r.baselineEventsPerSecond} | ${r.dolakeEventsPerSecond} | ${r.ratioOfMedians} | ${r.medianRoundRatio} | ${r.baselineP99} | ${r.dolakeP99} | ${r.baselineServerCores} | ${r.dolakeServerCores} | ${r.clientCores} |`),
].join('\n');
writeFileSync(path.join(outDir, 'intake_baseline.md'), table + '\n');
console.log(`\n${table}\n\nwritten: target/bench/intake_baseline.json, target/bench/intake_baseline.md`);
