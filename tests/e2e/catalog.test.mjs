// The Iceberg REST catalog (issue 13): tables written by two DoLake instances
// (`?table=` routing) are listed by the one catalog instance, and pyiceberg's
// RestCatalog and DuckDB's iceberg ATTACH read every row through it. The
// warehouse location is a file:// URI of the exported lake, so the engines
// read the files DoLake wrote, locally.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { exportLake, getJson, QUIET, removeDir, Shard, startDoLake, tempStateDir } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const TOKEN = 'catalog-test-token';
const auth = { authorization: `Bearer ${TOKEN}` };

function python(args, ms) {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(root, '.tools/venv/bin/python'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`timed out:\n${out}`)); }, ms);
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code, out }); });
  });
}

test('REST catalog: pyiceberg and DuckDB attach by URL, list every instance\'s tables, read exact rows', { timeout: 5 * 60_000 }, async () => {
  const stateDir = tempStateDir();
  const warehouse = path.join(stateDir, 'export', 'warehouse');
  mkdirSync(warehouse, { recursive: true });
  const config = { ...QUIET, warehouseLocation: `file://${warehouse}` };
  const server = await startDoLake({ stateDir, config, authToken: TOKEN });
  try {
    // Before any table: the config answers, the namespace list is empty.
    let res = await getJson(`${server.url}/v1/config`, { headers: auth });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.ok(res.body.endpoints.includes('GET /v1/{prefix}/namespaces/{namespace}/tables/{table}'));
    res = await getJson(`${server.url}/v1/namespaces`, { headers: auth });
    assert.deepEqual(res.body.namespaces, []);
    // Authentication: the same token, the REST error shape.
    res = await getJson(`${server.url}/v1/namespaces`);
    assert.equal(res.status, 401);
    assert.equal(res.body.error.type, 'NotAuthorizedException');

    // Two instances (lakehouse-users, lakehouse-orders), two tables each
    // (change log and current state), over the WebSocket and over HTTP.
    const events = [];
    const users = new Shard(server.wsUrl, { sourceDoId: 'shard-users', path: '/ws?table=users', headers: auth });
    await users.open();
    await users.connect();
    for (let b = 0; b < 3; b++) {
      const batch = users.makeEvents(20, ['users']);
      const ack = await users.send(users.batchMessage(batch));
      assert.equal(ack.type, 'ack', JSON.stringify(ack));
      events.push(...batch.map((e) => ({ ...e, sourceDoId: 'shard-users' })));
    }
    await users.close();
    const orders = new Shard(server.wsUrl, { sourceDoId: 'shard-orders' });
    for (let b = 0; b < 2; b++) {
      const batch = orders.makeEvents(15, ['orders']);
      const body = JSON.stringify(orders.batchMessage(batch));
      const r = await getJson(`${server.url}/lakehouse/cdc?table=orders`, { method: 'POST', body, headers: { ...auth, 'content-type': 'application/json' } });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      events.push(...batch.map((e) => ({ ...e, sourceDoId: 'shard-orders' })));
    }
    for (const table of ['users', 'orders']) {
      const f = await getJson(`${server.url}/lakehouse/flush?table=${table}`, { method: 'POST', headers: auth });
      assert.equal(f.status, 200, JSON.stringify(f.body));
    }

    res = await getJson(`${server.url}/v1/namespaces`, { headers: auth });
    assert.deepEqual(res.body.namespaces, [['default'], ['default_current']]);
    res = await getJson(`${server.url}/v1/namespaces/default/tables?pageSize=1`, { headers: auth });
    assert.equal(res.body.identifiers.length, 1);
    assert.ok(res.body['next-page-token'], JSON.stringify(res.body));
    const second = await getJson(`${server.url}/v1/namespaces/default/tables?pageSize=1&pageToken=${encodeURIComponent(res.body['next-page-token'])}`, { headers: auth });
    assert.deepEqual([...res.body.identifiers, ...second.body.identifiers].map((i) => i.name).sort(), ['orders', 'users']);
    assert.equal(second.body['next-page-token'], null);
    res = await getJson(`${server.url}/v1/namespaces/default/tables/users`, { headers: auth });
    assert.equal(res.status, 200);
    assert.match(res.body['metadata-location'], /^file:\/\/.*\/default\/users\/metadata\/v\d+\.metadata\.json$/);
    assert.equal(res.body.metadata['format-version'], 2);
    assert.deepEqual(res.body.config, {});
    // Existence checks, 404s with the spec's types, writes refused.
    let head = await fetch(`${server.url}/v1/namespaces/default/tables/orders`, { method: 'HEAD', headers: auth });
    assert.equal(head.status, 204);
    head = await fetch(`${server.url}/v1/namespaces/default/tables/nope`, { method: 'HEAD', headers: auth });
    assert.equal(head.status, 404);
    head = await fetch(`${server.url}/v1/namespaces/default_current`, { method: 'HEAD', headers: auth });
    assert.equal(head.status, 204);
    res = await getJson(`${server.url}/v1/namespaces/default/tables/nope`, { headers: auth });
    assert.equal(res.status, 404);
    assert.equal(res.body.error.type, 'NoSuchTableException');
    res = await getJson(`${server.url}/v1/namespaces/nope/tables`, { headers: auth });
    assert.equal(res.body.error.type, 'NoSuchNamespaceException');
    res = await getJson(`${server.url}/v1/namespaces/default/tables`, { method: 'POST', body: '{"name":"t"}', headers: { ...auth, 'content-type': 'application/json' } });
    assert.equal(res.status, 406);
    assert.equal(res.body.error.type, 'UnsupportedOperationException');
    // The registration path is not reachable from outside.
    res = await getJson(`${server.url}/_catalog/register`, { method: 'POST', body: '{"tables":[]}', headers: auth });
    assert.equal(res.status, 404);

    // The engines read through the catalog; the files are the exported lake.
    await exportLake(server, warehouse);
    const expected = path.join(stateDir, 'expected.jsonl');
    writeFileSync(expected, events.map((e) => JSON.stringify(e)).join('\n') + '\n');
    const check = await python([
      path.join(here, 'verify_catalog.py'), '--uri', server.url, '--token', TOKEN,
      '--namespace', 'default', '--current-state', 'default_current', '--expected', expected,
    ], 180_000);
    assert.equal(check.code, 0, check.out);
    assert.match(check.out, /default\.users: 60 rows \(pyiceberg\), 60 rows \(duckdb\)/);
    assert.match(check.out, /default\.orders: 30 rows/);

    // A table in the lake that no instance registered (its registration
    // failed) is still loaded by name, and listed from then on.
    res = await getJson(`${server.url}/v1/namespaces/nope/tables/users`, { headers: auth });
    assert.equal(res.body.error.type, 'NoSuchNamespaceException');
    const { body: keys } = await getJson(`${server.inspector}/list`);
    for (const key of keys.filter((k) => k.startsWith('warehouse/default/orders/metadata/') && (k.endsWith('.metadata.json') || k.endsWith('version-hint.text')))) {
      const bytes = Buffer.from(await (await fetch(`${server.inspector}/get?key=${encodeURIComponent(key)}`)).arrayBuffer());
      const put = await fetch(`${server.inspector}/put?key=${encodeURIComponent(key.replace('/orders/', '/planted/'))}`, { method: 'POST', body: bytes });
      assert.equal(put.status, 200);
    }
    res = await getJson(`${server.url}/v1/namespaces/default/tables/planted`, { headers: auth });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.metadata['format-version'], 2);
    res = await getJson(`${server.url}/v1/namespaces/default/tables`, { headers: auth });
    assert.deepEqual(res.body.identifiers.map((i) => i.name).sort(), ['orders', 'planted', 'users']);
  } finally {
    await server.stop();
    removeDir(stateDir);
  }
});
