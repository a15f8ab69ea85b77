// Runs the built DoLake worker in real workerd through Miniflare 4, with DO
// storage, R2 and KV persisted under STATE_DIR. Prints `READY <url>` once it
// answers. Started by harness.mjs in its own process group so that tests can
// SIGKILL the whole runtime (node and workerd) to simulate a crash.
import { Miniflare } from 'miniflare';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const stateDir = process.env.STATE_DIR;
if (!stateDir) throw new Error('STATE_DIR is required');

const bindings = {};
if (process.env.DOLAKE_CONFIG !== undefined) bindings.DOLAKE_CONFIG = process.env.DOLAKE_CONFIG;

const mf = new Miniflare({
  rootPath: root,
  scriptPath: path.join(root, 'build/index.js'),
  modules: true,
  modulesRoot: root,
  modulesRules: [{ type: 'CompiledWasm', include: ['**/*.wasm'] }],
  compatibilityDate: '2026-07-21',
  cf: false,
  host: '127.0.0.1',
  port: Number(process.env.PORT ?? 0),
  bindings,
  durableObjects: { DOLAKE: { className: 'DoLake', useSQLite: true } },
  r2Buckets: ['LAKEHOUSE_BUCKET'],
  kvNamespaces: ['LAKEHOUSE_KV'],
  durableObjectsPersist: path.join(stateDir, 'do'),
  r2Persist: path.join(stateDir, 'r2'),
  kvPersist: path.join(stateDir, 'kv'),
});
const url = await mf.ready;
process.stdout.write(`READY ${url.href}\n`);

const stop = async () => {
  await mf.dispose().catch(() => {});
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
