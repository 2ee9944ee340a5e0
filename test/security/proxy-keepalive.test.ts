/**
 * Attack 8: a proxied request must never be lost to a stale pooled socket.
 * The upstream here answers the first request on each connection and resets
 * the connection when a second one arrives on it: exactly what a pooled
 * keep-alive socket looks like when the guest closed it a moment before it was
 * reused. A control request shows the plain pooled request does fail against it.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { LeaseAgent } from '../../src/util/lease-agent.js';
import { forwardUpstream } from '../../src/util/upstream-request.js';

describe('proxied requests survive stale keep-alive sockets', () => {
  let upstream: net.Server;
  let upPort: number;
  let front: http.Server;
  let frontPort: number;
  const agent = new LeaseAgent({ keepAlive: true, maxSockets: 4 });

  before(async () => {
    upstream = net.createServer((s) => {
      let served = 0;
      let buf = '';
      s.on('data', (c: Buffer) => {
        buf += c.toString('latin1');
        const headEnd = buf.indexOf('\r\n\r\n');
        if (headEnd === -1) return;
        if (served > 0) { s.resetAndDestroy(); return; }
        const len = Number(/content-length: (\d+)/i.exec(buf.slice(0, headEnd))?.[1] ?? 0);
        if (buf.length < headEnd + 4 + len) return;
        const body = `got ${len}`;
        served++;
        buf = '';
        s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\nconnection: keep-alive\r\n\r\n${body}`);
      });
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    upPort = (upstream.address() as AddressInfo).port;
    front = http.createServer((req, res) => {
      const headers: Record<string, string> = {};
      if (req.headers['content-length']) headers['content-length'] = req.headers['content-length'];
      const u = forwardUpstream(req, { host: '127.0.0.1', port: upPort, method: req.method, path: req.url, headers, agent, lease: 'l1' }, {
        onResponse: (up) => { res.writeHead(up.statusCode ?? 502); up.pipe(res); },
        onError: (err) => { res.writeHead(502); res.end(`lost: ${err.message}`); },
      });
      res.on('close', () => { if (!res.writableFinished) u.abort(); });
    });
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
    frontPort = (front.address() as AddressInfo).port;
  });

  after(async () => {
    agent.destroy();
    await new Promise((r) => front.close(r));
    await new Promise((r) => upstream.close(r));
  });

  async function call(method: string, body?: string): Promise<{ status: number; text: string }> {
    const r = await fetch(`http://127.0.0.1:${frontPort}/x`, { method, ...(body !== undefined ? { body } : {}) });
    return { status: r.status, text: await r.text() };
  }

  test('control: a plain pooled request on the reused socket is lost', async () => {
    const plain = (): Promise<string> => new Promise((resolve) => {
      const r = http.request({ host: '127.0.0.1', port: upPort, path: '/', agent, lease: 'control' } as http.RequestOptions, (res) => { res.resume(); res.on('end', () => resolve('ok')); });
      r.on('error', (e) => resolve(`error reused=${r.reusedSocket}: ${e.message}`));
      r.end();
    });
    assert.equal(await plain(), 'ok');
    assert.match(await plain(), /^error reused=true/);
  });

  test('bodiless and small-body requests are retried on a fresh connection; large bodies never use a pooled one', async () => {
    for (let i = 0; i < 4; i++) {
      assert.deepEqual(await call('GET'), { status: 200, text: 'got 0' }, `GET ${i}`);
      assert.deepEqual(await call('POST', 'x'.repeat(100)), { status: 200, text: 'got 100' }, `small POST ${i}`);
      assert.deepEqual(await call('POST', 'y'.repeat(200_000)), { status: 200, text: 'got 200000' }, `large POST ${i}`);
    }
  });
});
