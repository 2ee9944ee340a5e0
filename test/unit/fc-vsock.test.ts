/** The hybrid-vsock agent path: CONNECT/OK handshake, HTTP on top, reconnects after a transport reset. */
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { VsockHttpClient, VsockNotReadyError, vsockConnect } from '../../src/vmm/firecracker/vsock.js';
import { TimeoutError } from '../../src/core/errors.js';

let dir: string;
let uds: string;
let server: net.Server;
const conns = new Set<net.Socket>();
let listening = new Set<number>([52]);
let connects = 0;
let earlyBytes = '';
const agent = http.createServer((req, res) => {
  if (req.url === '/health') { res.writeHead(204).end(); return; }
  res.writeHead(200, { 'content-type': 'text/plain' }).end(`hello ${req.method} ${req.url}`);
});

/** Firecracker's side of host-initiated connections (docs/firecracker.md, "Hybrid vsock"). */
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hearth-vsock-'));
  uds = join(dir, 'v.sock');
  server = net.createServer((s) => {
    conns.add(s);
    s.on('close', () => conns.delete(s));
    s.on('error', () => {});
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString('latin1');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      s.off('data', onData);
      connects++;
      const port = Number(/^CONNECT (\d+)$/.exec(buf.slice(0, nl))?.[1]);
      if (!listening.has(port)) { s.destroy(); return; } // guest RST: closed without OK
      s.write(`OK ${1073741824 + connects}\n${earlyBytes}`);
      if (port === 52) agent.emit('connection', s);
    };
    s.on('data', onData);
  });
  await new Promise<void>((r) => server.listen(uds, r));
});
after(async () => {
  for (const s of conns) s.destroy();
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

test('CONNECT <port> → OK <host port>, and bytes after the OK line are kept', async () => {
  listening = new Set([52, 7000]);
  earlyBytes = 'early-guest-bytes';
  const c = await vsockConnect(uds, 7000);
  assert.ok(c.hostPort >= 1073741824);
  const first = await new Promise<Buffer>((r) => c.socket.once('data', r));
  assert.equal(first.toString(), 'early-guest-bytes');
  c.socket.destroy();
  earlyBytes = '';
});

test('a port nobody listens on: closed before OK (retriable), and a missing socket file', async () => {
  await assert.rejects(vsockConnect(uds, 9999), VsockNotReadyError);
  await assert.rejects(vsockConnect(join(dir, 'none.sock'), 52), (e: unknown) => e instanceof VsockNotReadyError && /ENOENT/.test((e as Error).message));
});

test('HTTP over vsock, keep-alive, and reconnection after a transport reset', async () => {
  listening = new Set([52]);
  const client = new VsockHttpClient(uds, 52);
  const r1 = await client.request({ path: '/a' });
  assert.equal(r1.body.toString(), 'hello GET /a');
  const r2 = await client.request({ method: 'POST', path: '/b', body: 'x' });
  assert.equal(r2.body.toString(), 'hello POST /b');
  const before = connects;
  // A snapshot: the guest resets every connection; Firecracker closes the host ends.
  for (const s of conns) s.destroy();
  await new Promise((r) => setTimeout(r, 20));
  const r3 = await client.request({ path: '/c' });
  assert.equal(r3.body.toString(), 'hello GET /c');
  assert.ok(connects > before, 'a new CONNECT was made');
  client.reset();
  assert.equal(await client.health(AbortSignal.timeout(2000)), true);
  client.close();
});

test('waits while the guest is not listening yet (right after boot/restore), with a bound', async () => {
  listening = new Set();
  const client = new VsockHttpClient(uds, 52);
  setTimeout(() => { listening = new Set([52]); }, 150);
  const ms = await client.waitUntilReady({ signal: AbortSignal.timeout(5000), timeoutMs: 3000 });
  assert.ok(ms >= 100, `ready after ${ms} ms`);
  listening = new Set();
  client.reset(); // pooled connections would still work: established streams do not need a listener
  await assert.rejects(client.request({ path: '/x', timeoutMs: 300 }), TimeoutError);
  listening = new Set([52]);
  client.close();
});
