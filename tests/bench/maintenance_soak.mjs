// The maintenance soak in real workerd (issue 10), compressed: thousands of
// small flushes, maintenance every 25 flushes (POST /lakehouse/maintenance,
// so that the exports below never race a run) with a small policy, and at
// each checkpoint the tables' shape (/lakehouse/status), the objects in R2,
// and the time DuckDB (iceberg extension) takes to scan the exported lake.
// At the end pyiceberg and DuckDB compare every row (verify_lake.py).
// Usage: node tests/bench/maintenance_soak.mjs [flushes=2000] [every=250] [off]
// (`off`: no maintenance, the baseline the figures compare against).
// Prints one JSON line per checkpoint, then the verdict. Loopback only.
import { mkdirSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { exportLake, getJson, removeDir, Shard, startDoLake, tempStateDir, verifyLake, withTimeout } from '../e2e/harness.mjs';

const flushes = Number(process.argv[2] ?? 2000);
const every = Number(process.argv[3] ?? 250);
const maintain = process.argv[4] !== 'off';
const config = {
  flushThresholdEvents: 1_000_000_000,
  flushThresholdBytes: 50_000_000,
  flushThresholdMs: 3_600_000,
  flushIntervalMs: 3_600_000,
  maintenance: {
    intervalMs: 3_600_000,
    snapshotMaxAgeMs: 0,
    minSnapshotsToKeep: 20,
    maxSnapshotsToKeep: 50,
    manifestMergeMinCount: 10,
    targetFileBytes: 1_048_576,
    orphanMinAgeMs: 60_000,
  },
};
const stateDir = tempStateDir();
mkdirSync(stateDir, { recursive: true });
const python = path.resolve('.tools/venv/bin/python');
const server = await startDoLake({ stateDir, config });
const status = async () => (await getJson(`${server.url}/lakehouse/status`)).body;

/** Seconds DuckDB takes to count the rows of `table` (median of 3 scans). */
function duckdbScan(warehouse, table) {
  const script = `
import json, sys, time
sys.path.insert(0, sys.argv[2])
from verify_lake import duckdb_connection  # the extensions come from PyPI wheels
con = duckdb_connection()
con.execute("SET unsafe_enable_version_guessing = true")
import glob, re
# The newest metadata file exported (the hint may name a commit that landed
# after the export listed the bucket).
loc = sys.argv[1]
version = max(int(re.search(r"v(\\d+)\\.metadata", p).group(1)) for p in glob.glob(loc + "/metadata/v*.metadata.json"))
times = []
for _ in range(3):
    t = time.perf_counter()
    n = con.execute(f"SELECT count(*) FROM iceberg_scan('{loc}', allow_moved_paths = true, version = '{version}')").fetchone()[0]
    times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"rows": n, "seconds": times[1]}))
`;
  const r = spawnSync(python, ['-c', script, path.join(warehouse, 'default', table), path.resolve('tests/e2e')], { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`duckdb: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1));
}

try {
  const shard = await new Shard(server.wsUrl, { sourceDoId: 'soak' }).open();
  const acked = [];
  const start = Date.now();
  for (let i = 1; i <= flushes; i++) {
    const events = shard.makeEvents(10, ['users', 'orders']);
    const ack = await shard.send(shard.batchMessage(events), 60_000);
    if (ack.status !== 'ok') throw new Error(JSON.stringify(ack));
    acked.push(...events.map((e) => ({ sourceDoId: shard.sourceDoId, ...e })));
    const f = await withTimeout(fetch(`${server.url}/lakehouse/flush`, { method: 'POST' }), 60_000, 'flush');
    await f.arrayBuffer();
    if (maintain && i % 25 === 0) {
      const m = await getJson(`${server.url}/lakehouse/maintenance`, { method: 'POST' });
      if (m.status !== 200) throw new Error(JSON.stringify(m.body));
    }
    if (i % every === 0) {
      const s = await status();
      const keys = (await getJson(`${server.inspector}/list`)).body.filter((k) => k.includes('/users/'));
      const warehouse = path.join(stateDir, 'export', 'warehouse');
      rmSync(path.join(stateDir, 'export'), { recursive: true, force: true });
      mkdirSync(warehouse, { recursive: true });
      await exportLake(server, warehouse);
      const scan = duckdbScan(warehouse, 'users');
      const t = s.tables.users;
      console.log(JSON.stringify({
        flushes: i,
        seconds: Math.round((Date.now() - start) / 1000),
        maintenance: maintain,
        maintenanceRuns: s.maintenance.runs,
        snapshots: t.snapshots,
        manifests: t.manifests,
        dataFiles: t.dataFiles,
        meanFileBytes: t.meanFileBytes,
        metadataBytes: t.metadataBytes,
        r2ObjectsOfUsers: keys.length,
        duckdbRows: scan.rows,
        duckdbScanMs: Math.round(scan.seconds * 1000),
      }));
    }
  }
  if (maintain) {
    const r = await getJson(`${server.url}/lakehouse/maintenance`, { method: 'POST' });
    if (r.status !== 200) throw new Error(JSON.stringify(r.body));
  }
  const warehouse = path.join(stateDir, 'final', 'warehouse');
  mkdirSync(warehouse, { recursive: true });
  await exportLake(server, warehouse);
  const { code, out } = await verifyLake({ warehouse, events: acked });
  console.log(out.trim());
  if (code !== 0) throw new Error('the lake does not hold every acked event exactly once');
  await shard.close();
} catch (e) {
  console.error(e);
  console.error(server.logs.slice(-30).join('\n'));
  process.exitCode = 1;
} finally {
  await server.stop();
  removeDir(stateDir);
}
