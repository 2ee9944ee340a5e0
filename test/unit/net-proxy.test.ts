/**
 * The port-exposure proxy on loopback: a plain Node server mounts the
 * handlers; "sandbox ports" are local servers the resolver points at.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http, { type IncomingMessage, type Server } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { once } from 'node:events';
import { WebSocket, WebSocketServer } from 'ws';
import { createPortProxy, type PortProxy } from '../../src/network/proxy/index.js';

const port = (s: Server | net.Server) => (s.address() as AddressInfo).port;

async function freeClosedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const p = port(s);
  await new Promise((r) => s.close(r));
  return p;
}

interface Reply { status: number; headers: IncomingMessage['headers']; body: string }

function request(target: number, path: string, opts: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const r = http.request({ host: '127.0.0.1', port: target, path, method: opts.method ?? 'GET', headers: opts.headers ?? {}, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    r.on('error', reject);
    r.end(opts.body);
  });
}

describe('port proxy', () => {
  let upstream: Server;
  let wss: WebSocketServer;
  let proxyServer: Server;
  let proxy: PortProxy;
  let proxyPort: number;
  let closedPort: number;
  let releaseStream: () => void = () => undefined;
  const upstreamSockets = new Set<net.Socket>();

  before(async () => {
    upstream = http.createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname === '/echo-headers') {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ url: req.url, headers: req.headers }));
      } else if (url.pathname === '/echo') {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-upstream': 'yes' });
        req.pipe(res);
      } else if (url.pathname === '/stream') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('first;');
        releaseStream = () => res.end('second');
      } else if (url.pathname === '/big') {
        const mib = Number(url.searchParams.get('mib') ?? '1');
        const chunk = Buffer.alloc(1 << 20, 0x61);
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(mib << 20) });
        let sent = 0;
        const pump = (): void => {
          while (sent < mib) { sent++; if (!res.write(chunk)) { res.once('drain', pump); return; } }
          res.end();
        };
        pump();
      } else if (url.pathname === '/cut') {
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '1000' });
        res.write('partial');
        setTimeout(() => req.socket.destroy(), 20);
      } else if (url.pathname === '/status') {
        res.writeHead(418, 'I am a teapot', { 'set-cookie': ['a=1', 'b=2'] });
        res.end('tea');
      } else {
        res.end(`hello from ${url.pathname}`);
      }
    });
    upstream.on('connection', (s) => { upstreamSockets.add(s); s.on('close', () => upstreamSockets.delete(s)); });
    wss = new WebSocketServer({ server: upstream });
    wss.on('connection', (ws, req) => {
      ws.send(`hello ${req.url}`);
      ws.on('message', (m, isBinary) => ws.send(m, { binary: isBinary }));
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    closedPort = await freeClosedPort();
    proxy = createPortProxy({
      domain: 'sandbox.test',
      resolve: (id, p) => {
        if (id === 'sbxuser') return { status: 502, message: 'Port forwarding needs netns networking' };
        if (id !== 'sbxa' && id !== 'sbxsecure') return null;
        if (p === 8080) return { host: '127.0.0.1', port: port(upstream) };
        return { host: '127.0.0.1', port: closedPort };
      },
      accessToken: (id) => (id === 'sbxsecure' ? 'tok123' : null),
    });
    proxyServer = http.createServer((req, res) => {
      if (!proxy.handleRequest(req, res)) { res.writeHead(404); res.end('not a port request'); }
    });
    proxyServer.on('upgrade', (req, socket, head) => {
      if (!proxy.handleUpgrade(req, socket, head)) socket.destroy();
    });
    await new Promise<void>((r) => proxyServer.listen(0, '127.0.0.1', r));
    proxyPort = port(proxyServer);
  });

  after(async () => {
    proxy?.close();
    for (const c of wss?.clients ?? []) c.terminate();
    proxyServer?.closeAllConnections();
    upstream?.closeAllConnections();
    await Promise.all([new Promise((r) => proxyServer?.close(r)), new Promise((r) => wss?.close(r)), new Promise((r) => upstream?.close(r))]);
  });

  test('target(): path form, host form, and everything else is left alone', () => {
    const h = (host: string) => ({ host });
    assert.deepEqual(proxy.target({ url: '/sandboxes/sbxa/ports/8080/a/b?c=1', headers: {} }),
      { sandboxId: 'sbxa', port: 8080, path: '/a/b?c=1', form: 'path', prefix: '/sandboxes/sbxa/ports/8080' });
    assert.deepEqual(proxy.target({ url: '/x?y', headers: h('8080-sbxa.sandbox.test:3030') }), { sandboxId: 'sbxa', port: 8080, path: '/x?y', form: 'host' });
    assert.deepEqual(proxy.target({ url: '/', headers: h('8080-SBXA.Sandbox.Test') }), { sandboxId: 'sbxa', port: 8080, path: '/', form: 'host' });
    assert.equal(proxy.target({ url: '/sandboxes/sbxa/envd/health', headers: {} }), null);
    assert.equal(proxy.target({ url: '/sandboxes', headers: h('api.sandbox.test') }), null);
    assert.equal(proxy.target({ url: '/', headers: h('8080-sbxa.other.test') }), null);
    assert.equal(proxy.target({ url: '/sandboxes/sbx_a/ports/8080/', headers: {} }), null);
  });

  test('a GET reaches the sandbox port in path form with the prefix stripped', async () => {
    const r = await request(proxyPort, '/sandboxes/sbxa/ports/8080/some/page?q=1');
    assert.equal(r.status, 200);
    assert.equal(r.body, 'hello from /some/page');
  });

  test('the host form keeps the path and Host header; forwarding headers are added, hop-by-hop ones dropped', async () => {
    const r = await request(proxyPort, '/echo-headers?z=9', { headers: { host: '8080-sbxa.sandbox.test', 'x-custom': 'v', 'proxy-authorization': 'secret', 'keep-alive': 'timeout=5' } });
    assert.equal(r.status, 200);
    const got = JSON.parse(r.body) as { url: string; headers: Record<string, string> };
    assert.equal(got.url, '/echo-headers?z=9');
    assert.equal(got.headers['host'], '8080-sbxa.sandbox.test');
    assert.equal(got.headers['x-custom'], 'v');
    assert.equal(got.headers['x-forwarded-host'], '8080-sbxa.sandbox.test');
    assert.equal(got.headers['x-forwarded-proto'], 'http');
    assert.equal(got.headers['x-forwarded-for'], '127.0.0.1');
    assert.equal(got.headers['proxy-authorization'], undefined);
    const p = await request(proxyPort, '/sandboxes/sbxa/ports/8080/echo-headers');
    assert.equal((JSON.parse(p.body) as { headers: Record<string, string> }).headers['x-forwarded-prefix'], '/sandboxes/sbxa/ports/8080');
  });

  test('status, reason and repeated headers come back unchanged (host form: the guest\'s own origin)', async () => {
    const r = await request(proxyPort, '/status', { headers: { host: '8080-sbxa.sandbox.test' } });
    assert.equal(r.status, 418);
    assert.deepEqual(r.headers['set-cookie'], ['a=1', 'b=2']);
    assert.equal(r.headers['content-security-policy'], undefined);
    assert.equal(r.body, 'tea');
  });

  test('path form (the API origin): the answer runs in an opaque origin and may not set cookies', async () => {
    const r = await request(proxyPort, '/sandboxes/sbxa/ports/8080/status');
    assert.equal(r.status, 418);
    assert.equal(r.headers['set-cookie'], undefined);
    assert.match(String(r.headers['content-security-policy']), /^sandbox /);
    assert.doesNotMatch(String(r.headers['content-security-policy']), /allow-same-origin/);
    assert.equal(r.headers['x-content-type-options'], 'nosniff');
  });

  test('hearthd credentials never reach the guest; API-origin cookies only stay out of the path form', async () => {
    const creds = { 'x-api-key': 'e2b_secret', 'x-access-token': 'envd-secret', cookie: 'session=api' };
    const p = JSON.parse((await request(proxyPort, '/sandboxes/sbxa/ports/8080/echo-headers', { headers: creds })).body) as { headers: Record<string, string> };
    assert.equal(p.headers['x-api-key'], undefined);
    assert.equal(p.headers['x-access-token'], undefined);
    assert.equal(p.headers['cookie'], undefined);
    const h = JSON.parse((await request(proxyPort, '/echo-headers', { headers: { ...creds, host: '8080-sbxa.sandbox.test' } })).body) as { headers: Record<string, string> };
    assert.equal(h.headers['x-api-key'], undefined);
    assert.equal(h.headers['x-access-token'], undefined);
    assert.equal(h.headers['cookie'], 'session=api');
  });

  test('request bodies stream to the sandbox, both with a length and chunked', async () => {
    const body = Buffer.alloc(3 << 20, 0x62);
    const r = await request(proxyPort, '/sandboxes/sbxa/ports/8080/echo', { method: 'POST', body, headers: { 'content-length': String(body.length) } });
    assert.equal(r.status, 200);
    assert.equal(r.headers['x-upstream'], 'yes');
    assert.equal(r.body.length, body.length);
    const chunked = await new Promise<string>((resolve, reject) => {
      const q = http.request({ host: '127.0.0.1', port: proxyPort, path: '/sandboxes/sbxa/ports/8080/echo', method: 'PUT', agent: false }, (res) => {
        let s = '';
        res.setEncoding('utf8').on('data', (d: string) => { s += d; }).on('end', () => resolve(s));
      });
      q.on('error', reject);
      q.write('part1-');
      setTimeout(() => q.end('part2'), 30);
    });
    assert.equal(chunked, 'part1-part2');
  });

  test('responses stream: the first bytes arrive before the sandbox finished answering', async () => {
    const got = await new Promise<string>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: proxyPort, path: '/sandboxes/sbxa/ports/8080/stream', agent: false }, (res) => {
        let s = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          s += d;
          if (s === 'first;') releaseStream(); // only now does the upstream finish
        });
        res.on('end', () => resolve(s));
      }).on('error', reject);
    });
    assert.equal(got, 'first;second');
  });

  test('a large download passes through with backpressure', async () => {
    const t0 = performance.now();
    const total = await new Promise<number>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: proxyPort, path: '/sandboxes/sbxa/ports/8080/big?mib=64', agent: false }, (res) => {
        let n = 0;
        res.on('data', (d: Buffer) => { n += d.length; });
        res.on('end', () => resolve(n));
      }).on('error', reject);
    });
    assert.equal(total, 64 << 20);
    assert.ok(performance.now() - t0 < 20_000);
  });

  test('nothing listening on the port: 502 with E2B\'s message', async () => {
    const r = await request(proxyPort, '/sandboxes/sbxa/ports/8081/');
    assert.equal(r.status, 502);
    assert.match(r.headers['content-type'] ?? '', /application\/json/);
    assert.deepEqual(JSON.parse(r.body), { sandboxId: 'sbxa', message: 'The sandbox is running but port is not open', port: 8081, code: 502 });
    const h = await request(proxyPort, '/', { headers: { host: '8081-sbxa.sandbox.test' } });
    assert.equal(h.status, 502);
    assert.equal((JSON.parse(h.body) as { message: string }).message, 'The sandbox is running but port is not open');
  });

  test('an unknown sandbox: 502 "not found"; a resolver refusal is sent as is; a request that is not for a port is left to the caller', async () => {
    const r = await request(proxyPort, '/sandboxes/nosuch/ports/8080/');
    assert.equal(r.status, 502);
    assert.deepEqual(JSON.parse(r.body), { sandboxId: 'nosuch', message: 'The sandbox was not found', code: 502 });
    const refused = await request(proxyPort, '/sandboxes/sbxuser/ports/8080/');
    assert.equal(refused.status, 502);
    assert.deepEqual(JSON.parse(refused.body), { sandboxId: 'sbxuser', message: 'Port forwarding needs netns networking', port: 8080, code: 502 });
    const other = await request(proxyPort, '/sandboxes');
    assert.equal(other.status, 404);
    assert.equal(other.body, 'not a port request');
  });

  test('the agent port is reserved; a bare port path redirects to its trailing slash', async () => {
    const r = await request(proxyPort, '/sandboxes/sbxa/ports/49983/health');
    assert.equal(r.status, 403);
    assert.equal((JSON.parse(r.body) as { port: number }).port, 49983);
    const bad = await request(proxyPort, '/sandboxes/sbxa/ports/70000/');
    assert.equal(bad.status, 400);
    const redirect = await request(proxyPort, '/sandboxes/sbxa/ports/8080');
    assert.equal(redirect.status, 308);
    assert.equal(redirect.headers.location, '/sandboxes/sbxa/ports/8080/');
  });

  test('a sandbox with a traffic token: missing or wrong token 403, right token passes and is not forwarded', async () => {
    const missing = await request(proxyPort, '/sandboxes/sbxsecure/ports/8080/echo-headers');
    assert.equal(missing.status, 403);
    assert.deepEqual(JSON.parse(missing.body), { sandboxId: 'sbxsecure', message: "Sandbox is secured with traffic access token. Token header 'e2b-traffic-access-token' is missing", code: 403 });
    const wrong = await request(proxyPort, '/sandboxes/sbxsecure/ports/8080/echo-headers', { headers: { 'e2b-traffic-access-token': 'nope' } });
    assert.equal(wrong.status, 403);
    const ok = await request(proxyPort, '/sandboxes/sbxsecure/ports/8080/echo-headers', { headers: { 'e2b-traffic-access-token': 'tok123' } });
    assert.equal(ok.status, 200);
    assert.equal((JSON.parse(ok.body) as { headers: Record<string, string> }).headers['e2b-traffic-access-token'], undefined);
  });

  test('the sandbox cutting a response mid-way cuts the client\'s response too (no clean end)', async () => {
    const outcome = await new Promise<string>((resolve) => {
      http.get({ host: '127.0.0.1', port: proxyPort, path: '/sandboxes/sbxa/ports/8080/cut', agent: false }, (res) => {
        res.on('data', () => undefined);
        res.on('end', () => resolve('end'));
        res.on('error', () => resolve('error'));
        res.on('aborted', () => resolve('aborted'));
      }).on('error', () => resolve('error'));
    });
    assert.notEqual(outcome, 'end');
  });

  test('keep-alive upstream sockets closed by the sandbox are retried once for bodiless requests', async () => {
    assert.equal((await request(proxyPort, '/sandboxes/sbxa/ports/8080/one')).status, 200);
    for (const s of upstreamSockets) s.destroy(); // the guest server dropped its idle connections
    await new Promise((r) => setTimeout(r, 20));
    const r = await request(proxyPort, '/sandboxes/sbxa/ports/8080/two');
    assert.equal(r.status, 200);
    assert.equal(r.body, 'hello from /two');
  });

  test('WebSocket through the path form and the host form, text and binary', async () => {
    for (const [url, headers] of [
      [`ws://127.0.0.1:${proxyPort}/sandboxes/sbxa/ports/8080/chat?room=1`, {}],
      [`ws://127.0.0.1:${proxyPort}/chat?room=2`, { host: '8080-sbxa.sandbox.test' }],
    ] as const) {
      const ws = new WebSocket(url, { headers });
      const messages: string[] = [];
      ws.on('message', (m, isBinary) => messages.push(isBinary ? `bin:${(m as Buffer).length}` : m.toString()));
      await once(ws, 'open');
      ws.send('ping');
      ws.send(Buffer.alloc(100_000, 1));
      while (messages.length < 3) await new Promise((r) => setTimeout(r, 10));
      assert.deepEqual(messages, [`hello /chat?room=${url.includes('room=1') ? 1 : 2}`, 'ping', 'bin:100000']);
      ws.close();
      await once(ws, 'close');
    }
  });

  test('WebSocket to a closed port gets the 502 JSON; with a missing token the 403', async () => {
    for (const [path, status] of [['/sandboxes/sbxa/ports/8081/', 502], ['/sandboxes/sbxsecure/ports/8080/', 403]] as const) {
      const ws = new WebSocket(`ws://127.0.0.1:${proxyPort}${path}`);
      ws.on('error', () => undefined); // terminate() below reports "closed before established"
      const [, res] = await once(ws, 'unexpected-response') as [unknown, IncomingMessage];
      assert.equal(res.statusCode, status);
      let body = '';
      res.setEncoding('utf8');
      for await (const c of res) body += c as string;
      assert.equal((JSON.parse(body) as { code: number }).code, status);
      ws.terminate();
    }
  });

  test('a client that goes away mid-download releases the upstream request', async () => {
    const before = upstreamSockets.size;
    await new Promise<void>((resolve) => {
      const q = http.get({ host: '127.0.0.1', port: proxyPort, path: '/sandboxes/sbxa/ports/8080/big?mib=512', agent: false }, (res) => {
        res.once('data', () => { q.destroy(); resolve(); });
      });
      q.on('error', () => undefined);
    });
    for (let i = 0; i < 100 && upstreamSockets.size > before; i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(upstreamSockets.size <= before, `upstream sockets: ${upstreamSockets.size} (before ${before})`);
  });
});
