// How a flush's cost grows with the tables it writes to (issue 12): ROUNDS
// rounds of buffering EVENTS events (4 shards x 1,000-event batches, 200-byte
// rows, 3 tables, change logs and current-state tables) and flushing them, on
// one instance; prints each round's flush time. A flush should cost about
// the same in every round: what it writes, not what the tables already hold.
// `node tests/bench/flush_growth.mjs [--rounds 4] [--events 100000]` after `make build`.
import os from 'node:os';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { getJson, removeDir, startDoLake, tempStateDir } from '../e2e/harness.mjs';
import { CONFIG, drain, fill } from './common.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const arg = (name, dflt) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : dflt);
const rounds = Number(arg('--rounds', '4'));
const events = Number(arg('--events', '100000'));

const stateDir = tempStateDir();
const server = await startDoLake({ stateDir, config: CONFIG, logLevel: 'error' });
const rows = [];
try {
  for (let round = 0; round < rounds; round++) {
    const r = await fill(server, events, 11 + round);
    const seconds = await drain(server);
    const s = (await getJson(`${server.url}/lakehouse/status`)).body;
    const row = { round, events: r.eventsAcked, seconds: +seconds.toFixed(2), eventsPerSecond: Math.round(r.eventsAcked / seconds),
      indexRepairs: s.flush.history.indexRepairs, indexRows: s.instance.rowIndex?.rows };
    rows.push(row);
    console.log(JSON.stringify(row));
  }
} finally {
  await server.stop();
  removeDir(stateDir);
}
const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root }).toString().trim();
console.log(`\nmachine: ${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown'}); commit ${commit}\n`);
console.log('| round | events | flush s | events/s | index repairs so far | index rows |\n|---|---|---|---|---|---|');
for (const r of rows) console.log(`| ${r.round} | ${r.events} | ${r.seconds} | ${r.eventsPerSecond} | ${r.indexRepairs} | ${r.indexRows} |`);
