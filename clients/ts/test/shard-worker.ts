// A DoSQL-like shard written against the `dolake` package: a TypeScript
// Durable Object that streams its changes to DoLake DO to DO through
// DoLakeClient. Used by tests/e2e/ts_client.test.mjs (bundled by esbuild).
import { connectThroughStub, DoLakeClient } from '../src/index.js';
// @ts-ignore -- plain JS module shared with the test
import { changeFor } from './changes.mjs';

interface Env {
  DOLAKE: { idFromName(name: string): unknown; get(id: unknown): any };
  SHARD: { idFromName(name: string): unknown; get(id: unknown): any };
}

const json = (body: unknown, status = 200) => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });

export class TestShard {
  private client: Promise<DoLakeClient> | null = null;
  constructor(private ctx: any, private env: Env) {}

  private get sourceDoId(): string {
    return `ts-shard-${this.ctx.id.toString().slice(0, 12)}`;
  }

  private open(): Promise<DoLakeClient> {
    if (!this.client) {
      const stub = this.env.DOLAKE.get(this.env.DOLAKE.idFromName('default'));
      this.client = DoLakeClient.open({
        connect: connectThroughStub(stub),
        storage: this.ctx.storage,
        sourceDoId: this.sourceDoId,
        sourceShardName: 'ts-shard',
        batchSize: 25,
        batchTimeoutMs: 50,
        heartbeatIntervalMs: 1_000,
        ackTimeoutMs: 10_000,
        reconnectDelayMs: 100,
        maxReconnectDelayMs: 1_000,
      });
    }
    return this.client;
  }

  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const client = await this.open();
    const state = () => ({ sourceDoId: this.sourceDoId, nextSequence: client.nextSequence, pending: client.pendingBatches, stats: client.stats });
    try {
      if (url.pathname === '/write') {
        const n = Number(url.searchParams.get('n') ?? '0');
        const persisted = [];
        for (let i = 0; i < n; i++) persisted.push(client.append(changeFor(client.nextSequence)));
        await client.flush();
        await Promise.all(persisted);
        if (url.searchParams.get('wait') !== '0') await client.waitForAcks(60_000);
        return json(state());
      }
      if (url.pathname === '/wait') {
        await client.waitForAcks(Number(url.searchParams.get('ms') ?? '60000'));
        return json(state());
      }
      if (url.pathname === '/state') return json(state());
      return json({ error: `no route ${url.pathname}` }, 404);
    } catch (e) {
      return json({ error: String(e), ...state() }, 500);
    }
  }
}

export default {
  fetch(request: Request, env: Env): Promise<Response> {
    const name = new URL(request.url).searchParams.get('shard') ?? 'a';
    return env.SHARD.get(env.SHARD.idFromName(name)).fetch(request);
  },
};
