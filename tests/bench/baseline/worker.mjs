// The baseline of `make bench`'s intake comparison (issue 12): a minimal
// Durable Object that does only what any durable store-then-ack sink must do
// with the guide's protocol: accept hibernatable WebSockets, parse each
// cdc_batch, store it as one SQLite row (durable before the ack, deduplicated
// by source and sequence number), then ack. No rate limits, no schema, no
// lake. DoLake's intake is measured against it, same runtime, same client.
export class Baseline {
  constructor(ctx) {
    this.ctx = ctx;
    this.sql = ctx.storage.sql;
    this.sql.exec('CREATE TABLE IF NOT EXISTS batches (source TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (source, seq))');
  }

  async fetch(request) {
    if (request.headers.get('Upgrade') !== 'websocket') {
      const [{ n }] = this.sql.exec('SELECT count(*) AS n FROM batches').toArray();
      return Response.json({ buffer: { batchCount: n } });
    }
    const pair = new WebSocketPair();
    this.ctx.acceptWebSocket(pair[1]);
    return new Response(null, { status: 101, webSocket: pair[0] });
  }

  webSocketMessage(ws, text) {
    const now = Date.now();
    let m;
    try { m = JSON.parse(text); } catch { ws.send(JSON.stringify({ type: 'nack', timestamp: now, reason: 'invalid_format', errorMessage: 'malformed JSON', shouldRetry: false })); return; }
    if (m.type === 'cdc_batch') {
      if (!Array.isArray(m.events) || typeof m.sourceDoId !== 'string' || !Number.isInteger(m.sequenceNumber)) {
        ws.send(JSON.stringify({ type: 'nack', timestamp: now, sequenceNumber: m.sequenceNumber, reason: 'invalid_format', errorMessage: 'bad batch', shouldRetry: false }));
        return;
      }
      const inserted = this.sql.exec('INSERT INTO batches (source, seq, body) VALUES (?, ?, ?) ON CONFLICT DO NOTHING', m.sourceDoId, m.sequenceNumber, text).rowsWritten;
      ws.send(JSON.stringify({ type: 'ack', timestamp: now, correlationId: m.correlationId, sequenceNumber: m.sequenceNumber, status: inserted ? 'buffered' : 'duplicate', details: { eventsProcessed: m.events.length, bufferUtilization: 0 } }));
    } else if (m.type === 'connect') {
      ws.send(JSON.stringify({ type: 'status', timestamp: now, state: 'receiving', buffer: { batchCount: 0, eventCount: 0, totalSizeBytes: 0, utilization: 0 }, connectedSources: 1 }));
    } else if (m.type === 'heartbeat') {
      ws.send(JSON.stringify({ type: 'pong', timestamp: m.timestamp, serverTime: now }));
    }
  }
}

export default {
  fetch(request, env) {
    return env.DOLAKE.get(env.DOLAKE.idFromName('default')).fetch(request);
  },
};
