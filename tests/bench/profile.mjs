// CPU profiles of DoLake in workerd (issue 12): the V8 inspector of DoLake's
// isolate samples it while it works, and the report says where the isolate's
// time goes: self time by function, time under each of DoLake's functions
// (inclusive), and for intake the share of samples under each stage of the
// path (a stage counts a sample when it is anywhere on the stack).
//   --mode intake (default): the load generator streams one cell (flushes
//     held off, as in intake_baseline.mjs) while sampling.
//   --mode flush: EVENTS events are buffered first (4 shards x 1,000-event
//     batches), then sampled while `POST /lakehouse/flush` and the alarms
//     after it drain the buffer.
// The WASM needs its name section: run after `make build-test` (no wasm-opt).
// Writes target/bench/profile-<mode>.{md,cpuprofile} (the latter opens in
// Chrome DevTools).
// `make profile`, or: node tests/bench/profile.mjs [--mode intake|flush]
//   [--seconds S] [--cell 10x100] [--events 100000] [--top N]
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { removeDir, startDoLake, tempStateDir, withTimeout } from '../e2e/harness.mjs';
import { CONFIG, drain, fill, runLoadgen } from './common.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const arg = (name, dflt) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : dflt);
const seconds = Number(arg('--seconds', '8'));
const [shards, batchSize] = arg('--cell', '10x100').split('x').map(Number);
const top = Number(arg('--top', '30'));
const mode = arg('--mode', 'intake');
const flushEvents = Number(arg('--events', '100000'));
if (!['intake', 'flush'].includes(mode)) throw new Error(`--mode intake or flush, not ${mode}`);
const outDir = path.join(root, 'target/bench');
mkdirSync(outDir, { recursive: true });

// Stages of the intake path, by the functions that do them (Rust symbols in
// the WASM name section, or the runtime's own JavaScript).
const STAGES = [
  ['webSocketMessage (the whole handler)', /dolake_webSocketMessage|websocket_message|on_socket_message/],
  ['  the frame text into WASM', /sockets::incoming|encode_into|__wbindgen_string_get/],
  ['  attachment read', /Connections::read|deserialize_attachment/],
  ['  session pipeline (Session::on_frame)', /Session.*on_frame/],
  ['    decode (decode_client_message)', /decode_client_message/],
  ['    intake admit (checks, dedup, plan)', /Intake.*admit/],
  ['      fingerprint', /intake::fingerprint|xxh3/i],
  ['    store the batch (write_plan)', /write_plan/],
  ['      SQLite statements (exec)', /SqlStorage.*exec|__wbg_exec/],
  ['    drop the decoded batch', /drop_in_place<dolake::protocol::client::CdcBatchMessage>/],
  ['  attachment write', /Connections::save|(?<!de)serialize_attachment/],
  ['  reply encode and send', /ServerMessage.*to_json|send_with_str/],
  ['  ensure_alarm', /ensure_alarm/],
  ['garbage collector', /^\(garbage collector\)$/],
];

const freePort = () => new Promise((resolve) => {
  const s = net.createServer();
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

/** A minimal Chrome DevTools Protocol client over the inspector's WebSocket. */
async function cdp(url) {
  // Miniflare's inspector proxy wants an Origin it knows.
  const ws = new WebSocket(url, { headers: { Origin: 'http://127.0.0.1' } });
  await withTimeout(new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); }), 10_000, 'inspector connect');
  let next = 0;
  const pending = new Map();
  ws.on('message', (data) => {
    const m = JSON.parse(data.toString());
    const p = pending.get(m.id);
    if (p) { pending.delete(m.id); if (m.error) p.reject(new Error(JSON.stringify(m.error))); else p.resolve(m.result); }
  });
  const send = (method, params = {}) => {
    const id = ++next;
    const answer = new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
    ws.send(JSON.stringify({ id, method, params }));
    return withTimeout(answer, 60_000, method);
  };
  return { send, close: () => ws.close() };
}

function analyse(profile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const name = (n) => n.callFrame.functionName || `(anonymous ${path.basename(n.callFrame.url || '?')})`;
  const total = profile.samples.length;
  const self = new Map();
  const stage = new Map(STAGES.map(([label]) => [label, 0]));
  const inclusive = new Map();
  let idle = 0;
  for (const id of profile.samples) {
    const leaf = byId.get(id);
    const leafName = name(leaf);
    if (leafName === '(idle)') { idle++; continue; }
    self.set(leafName, (self.get(leafName) ?? 0) + 1);
    const stack = [];
    for (let at = id; at !== undefined; at = parent.get(at)) stack.push(name(byId.get(at)));
    for (const [label, re] of STAGES) if (stack.some((f) => re.test(f))) stage.set(label, stage.get(label) + 1);
    const ours = new Set(stack.filter((f) => f.includes('dolake::')).map((f) => f.replace(/::h[0-9a-f]{16}$/, '')));
    for (const f of ours) inclusive.set(f, (inclusive.get(f) ?? 0) + 1);
  }
  const busy = total - idle;
  const pct = (n) => (busy ? (100 * n) / busy : 0).toFixed(1);
  const selfRows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)
    .map(([f, n]) => `| ${pct(n)} | \`${f.replace(/\|/g, '\\|').slice(0, 140)}\` |`);
  const stageRows = [...stage.entries()].map(([label, n]) => `| ${label} | ${pct(n)} |`);
  const inclusiveRows = [...inclusive.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)
    .map(([f, n]) => `| ${pct(n)} | \`${f.replace(/\|/g, '\\|').slice(0, 140)}\` |`);
  return { total, idle, busy, selfRows, stageRows, inclusiveRows };
}

const port = await freePort();
const stateDir = tempStateDir();
const server = await startDoLake({ stateDir, config: CONFIG, extraEnv: { INSPECTOR_PORT: String(port) }, logLevel: 'error' });
let report;
let workload;
try {
  const filled = mode === 'flush' ? await fill(server, flushEvents) : null;
  const targets = await withTimeout(fetch(`http://127.0.0.1:${port}/json`).then((r) => r.json()), 10_000, 'inspector targets');
  const target = targets.find((t) => /dolake/.test(t.id ?? '') || /dolake/.test(t.title ?? '') || /dolake/.test(t.webSocketDebuggerUrl ?? '')) ?? targets[0];
  if (!target) throw new Error(`no inspector target: ${JSON.stringify(targets)}`);
  const inspector = await cdp(target.webSocketDebuggerUrl.replace('localhost', '127.0.0.1'));
  await inspector.send('Profiler.enable');
  await inspector.send('Profiler.setSamplingInterval', { interval: 250 });
  await inspector.send('Profiler.start');
  if (mode === 'flush') {
    const seconds = await drain(server);
    workload = `flush of ${filled.eventsAcked} events (4 shards x 1,000-event batches, 200-byte rows, 3 tables) in ${seconds.toFixed(1)} s: ${Math.round(filled.eventsAcked / seconds)} events/s (profiling slows it)`;
  } else {
    const run = await runLoadgen(server.wsUrl, shards, batchSize, seconds);
    workload = `intake, cell ${shards}x${batchSize} for ${seconds} s: ${Math.round(run.eventsPerSecond)} events/s acked (${run.eventsAcked} events; profiling slows it)`;
  }
  const { profile } = await inspector.send('Profiler.stop');
  inspector.close();
  writeFileSync(path.join(outDir, `profile-${mode}.cpuprofile`), JSON.stringify(profile));
  report = analyse(profile);
} finally {
  await server.stop();
  removeDir(stateDir);
}

const machine = `${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown'})`;
const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root }).toString().trim();
const md = [
  `machine: ${machine}; commit ${commit}; ${workload}`,
  `samples: ${report.total} (every 250 us), idle ${report.idle}, busy ${report.busy}; shares below are of busy samples`,
  '',
  ...(mode === 'intake' ? ['| stage (anywhere on the stack) | % of busy |', '|---|---|', ...report.stageRows, ''] : []),
  `| % under it | DoLake function (top ${top}, inclusive) |`,
  '|---|---|',
  ...report.inclusiveRows,
  '',
  `| % self | function (top ${top}) |`,
  '|---|---|',
  ...report.selfRows,
].join('\n');
writeFileSync(path.join(outDir, `profile-${mode}.md`), md + '\n');
console.log(`${md}\n\nwritten: target/bench/profile-${mode}.md, target/bench/profile-${mode}.cpuprofile`);
