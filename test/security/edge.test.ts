/**
 * hearthd's edge against hostile clients, on a real hearthd (no VM needed):
 * connection caps and timeouts (slowloris), malformed targets and error
 * bodies, Host (DNS rebinding) and cross-site checks on the key-less loopback
 * API. Traffic goes to loopback only.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { rawExchange, rawRequest } from './helpers.js';

const CAP = 6;

function openSocket(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => resolve(s));
    s.on('error', reject);
  });
}

/** Resolves with what arrived before the server closed the connection, and when. */
function untilClosed(s: net.Socket): Promise<{ data: string; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    let data = '';
    s.on('data', (c: Buffer) => { data += c.toString('latin1'); });
    s.on('close', () => resolve({ data, ms: Date.now() - t0 }));
  });
}

describe('hearthd edge: connections, targets, Host, CSRF (loopback, no key)', () => {
  let d: TestDaemon;
  let port: number;

  before(async () => {
    d = await startTestDaemon({ warmOnStart: false, headersTimeoutMs: 1000, bodyIdleTimeoutMs: 1500, keepAliveTimeoutMs: 2000, maxConnectionsPerAddress: CAP });
    port = Number(new URL(d.url).port);
  });
  after(async () => { await d?.stop(); });

  test('6. a client holds at most maxConnectionsPerAddress connections; half-sent heads and bodies are cut', async () => {
    const held: net.Socket[] = [];
    try {
      for (let i = 0; i < CAP; i++) held.push(await openSocket(port));
      const extra = await openSocket(port);
      const refused = await untilClosed(extra);
      assert.match(refused.data, /^HTTP\/1\.1 503 /, 'the connection over the cap is refused');
      assert.match(refused.data, /"error_code":"capacity"/);
    } finally { for (const s of held) s.destroy(); }
    await new Promise((r) => setTimeout(r, 200));
    // Slowloris: a head that never ends is cut after headersTimeoutMs.
    const slowHead = await openSocket(port);
    slowHead.write('GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ');
    const headCut = await untilClosed(slowHead);
    assert.ok(headCut.ms < 5_000, `a never-ending head is cut (${headCut.ms} ms)`);
    assert.match(headCut.data, /^HTTP\/1\.1 408 /);
    assert.match(headCut.data, /"error_code":"timeout"/);
    // A body that stops arriving is cut after bodyIdleTimeoutMs, with 408.
    const slowBody = await openSocket(port);
    slowBody.write('POST /sandboxes HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"templ');
    const bodyCut = await untilClosed(slowBody);
    assert.ok(bodyCut.ms < 6_000, `a stalled body is cut (${bodyCut.ms} ms)`);
    assert.match(bodyCut.data, /^HTTP\/1\.1 408 /);
    // Many held connections are all released: a fresh client is served.
    const ok = await rawRequest(port, 'GET', '/health');
    assert.equal(ok.status, 200);
  });

  test('10. malformed targets and oversized requests get the documented JSON error body', async () => {
    const cases: [string, number][] = [
      ['GET /init#frag HTTP/1.1', 400], ['GET /a/%2fb HTTP/1.1', 400], ['GET /../../etc/passwd HTTP/1.1', 400],
      ['GET /a\\b HTTP/1.1', 400], ['GET * HTTP/1.1', 400], [`GET /${'a'.repeat(9000)} HTTP/1.1`, 414],
    ];
    for (const [line, status] of cases) {
      const r = await rawExchange(port, `${line}\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n`);
      assert.equal(r.status, status, `${line.slice(0, 40)} → ${r.status} ${r.body}`);
      const body = JSON.parse(r.body) as { code: number; message: string; error_code: string };
      assert.equal(body.code, status);
      assert.ok(body.message.length > 0 && typeof body.error_code === 'string');
    }
    const huge = await rawExchange(port, `GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: ${'b'.repeat(20_000)}\r\n\r\n`);
    assert.equal(huge.status, 431);
    assert.equal((JSON.parse(huge.body) as { code: number }).code, 431);
    const garbage = await rawExchange(port, 'HELLO\r\n\r\n');
    assert.equal(garbage.status, 400);
    assert.equal((JSON.parse(garbage.body) as { error_code: string }).error_code, 'invalid_argument');
  });

  test('7. the key-less loopback API checks Host (DNS rebinding) and refuses cross-site writes', async () => {
    for (const host of ['127.0.0.1', 'localhost', `127.0.0.1:${port}`, `localhost:${port}`]) {
      assert.equal((await rawRequest(port, 'GET', '/sandboxes', { host })).status, 200, `Host ${host}`);
    }
    for (const host of [`rebind.example:${port}`, 'evil.example', '', '10.0.0.1']) {
      const r = await rawRequest(port, 'GET', '/sandboxes', { host });
      assert.ok(host === '' ? r.status === 400 || r.status === 403 : r.status === 403, `Host ${JSON.stringify(host)}: ${r.status} ${r.body}`);
    }
    // A forged form or no-cors fetch: text/plain body, another site's Origin, Sec-Fetch-Site.
    const forged: Record<string, string>[] = [
      { 'content-type': 'text/plain' },
      { 'content-type': 'application/x-www-form-urlencoded' },
      { 'content-type': 'application/json', origin: 'http://evil.example' },
      { 'content-type': 'application/json', origin: 'null' },
      { 'content-type': 'application/json', 'sec-fetch-site': 'cross-site' },
    ];
    for (const headers of forged) {
      const r = await rawRequest(port, 'POST', '/admin/reconcile', headers, '{}');
      assert.equal(r.status, 403, `${JSON.stringify(headers)}: ${r.status} ${r.body}`);
    }
    const same = await rawRequest(port, 'POST', '/admin/reconcile', { 'content-type': 'application/json', origin: `http://127.0.0.1:${port}` }, '{}');
    assert.equal(same.status, 200, 'the dashboard (same origin) still works');
    const cli = await rawRequest(port, 'POST', '/admin/reconcile', {}, '');
    assert.equal(cli.status, 200, 'a non-browser client with no body still works');
  });
});
