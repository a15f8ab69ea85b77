// Runs the built DoLake worker in real workerd through Miniflare 4, with DO
// storage and R2 persisted under STATE_DIR. Prints `READY <url>` once it
// answers. Started by harness.mjs in its own process group so that tests can
// SIGKILL the whole runtime (node and workerd) to simulate a crash.
import { Miniflare } from 'miniflare';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const stateDir = process.env.STATE_DIR;
if (!stateDir) throw new Error('STATE_DIR is required');

const bindings = {};
if (process.env.DOLAKE_CONFIG !== undefined) bindings.DOLAKE_CONFIG = process.env.DOLAKE_CONFIG;
if (process.env.DOLAKE_TEST_HOOKS) bindings.DOLAKE_TEST_HOOKS = process.env.DOLAKE_TEST_HOOKS;
if (process.env.DOLAKE_AUTH_TOKEN) bindings.DOLAKE_AUTH_TOKEN = process.env.DOLAKE_AUTH_TOKEN;
if (process.env.DOLAKE_LOG_LEVEL) bindings.DOLAKE_LOG_LEVEL = process.env.DOLAKE_LOG_LEVEL;

// BASELINE_SCRIPT: serve another worker in DoLake's place (the benchmark's
// minimal store-then-ack object, class `Baseline`, bound as DOLAKE).
const baseline = process.env.BASELINE_SCRIPT;
const dolake = {
  name: 'dolake',
  rootPath: root,
  scriptPath: baseline ?? path.join(root, 'build/index.js'),
  modules: true,
  modulesRoot: root,
  modulesRules: [{ type: 'CompiledWasm', include: ['**/*.wasm'] }],
  compatibilityDate: '2026-07-21',
  bindings,
  durableObjects: { DOLAKE: { className: baseline ? 'Baseline' : 'DoLake', useSQLite: true } },
  r2Buckets: ['LAKEHOUSE_BUCKET'],
  // INSPECTOR_PORT (benchmarks only): the V8 inspector of DoLake's isolate.
  ...(process.env.INSPECTOR_PORT ? { unsafeInspectorProxy: true } : {}),
};
const shared = {
  cf: false,
  host: '127.0.0.1',
  port: Number(process.env.PORT ?? 0),
  ...(process.env.INSPECTOR_PORT ? { inspectorPort: Number(process.env.INSPECTOR_PORT) } : {}),
  durableObjectsPersist: path.join(stateDir, 'do'),
  r2Persist: path.join(stateDir, 'r2'),
};
// SHARD_SCRIPT: a second worker (a bundled ES module) whose Durable Object
// class `TestShard` (binding SHARD) streams to DoLake DO to DO: its DOLAKE
// binding is the DoLake class of the first worker, bound by script name.
const shardScript = process.env.SHARD_SCRIPT;
const mf = new Miniflare(shardScript ? {
  ...shared,
  workers: [dolake, {
    name: 'shard',
    modules: true,
    scriptPath: shardScript,
    compatibilityDate: '2026-07-21',
    durableObjects: {
      SHARD: { className: 'TestShard', useSQLite: true },
      DOLAKE: { className: 'DoLake', scriptName: 'dolake', useSQLite: true },
    },
  }],
} : { ...shared, ...dolake });
const url = await mf.ready;

// Test-only view of the local R2 bucket, on loopback: GET /list, GET /get?key=,
// POST /put?key= (to plant objects other tools would have written).
const bucket = await mf.getR2Bucket('LAKEHOUSE_BUCKET');
const inspector = http.createServer(async (req, res) => {
  try {
    const u = new URL(req.url, 'http://127.0.0.1');
    if (u.pathname === '/list') {
      const keys = [];
      let cursor;
      do {
        const page = await bucket.list({ cursor, limit: 1000 });
        keys.push(...page.objects.map((o) => o.key));
        cursor = page.truncated ? page.cursor : undefined;
      } while (cursor);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(keys));
    } else if (u.pathname === '/get') {
      const object = await bucket.get(u.searchParams.get('key'));
      if (!object) return res.writeHead(404).end();
      const body = Buffer.from(await object.arrayBuffer());
      res.writeHead(200).end(body);
    } else if (u.pathname === '/put' && req.method === 'POST') {
      const chunks = [];
      for await (const chunk of req) chunks.push(chunk);
      await bucket.put(u.searchParams.get('key'), Buffer.concat(chunks));
      res.writeHead(200).end();
    } else if (u.pathname.startsWith('/shard/') && shardScript) {
      // The second worker, which has no port of its own.
      const worker = await mf.getWorker('shard');
      const r = await worker.fetch(`http://shard${u.pathname.slice('/shard'.length)}${u.search}`, { method: req.method });
      res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'text/plain' }).end(Buffer.from(await r.arrayBuffer()));
    } else {
      res.writeHead(404).end();
    }
  } catch (e) {
    if (!res.headersSent) res.writeHead(500);
    res.end(String(e));
  }
});
await new Promise((resolve) => inspector.listen(0, '127.0.0.1', resolve));
process.stdout.write(`READY ${url.href} http://127.0.0.1:${inspector.address().port}\n`);

const stop = async () => {
  await mf.dispose().catch(() => {});
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
