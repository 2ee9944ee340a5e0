/** The Firecracker API client against an in-process stand-in that checks the transport rules (docs/firecracker.md, "API transport") on every request. */
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { FirecrackerApiError, FirecrackerClient, FirecrackerUnreachableError } from '../../src/vmm/firecracker/client.js';
import { HostFailureError, TimeoutError, AbortedError } from '../../src/core/errors.js';
import { FirecrackerSpec } from '../fixtures/fc/spec.js';

const spec = new FirecrackerSpec();
let dir: string;
let sock: string;
let server: http.Server;
const seen: { method: string; url: string; headers: http.IncomingHttpHeaders; body: string; violations: string[] }[] = [];
let behaviour: (req: http.IncomingMessage, res: http.ServerResponse, body: string) => void;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hearth-fc-client-'));
  sock = join(dir, 'api.sock');
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const { violations } = spec.check(req.method!, req.url!, req.headers, body);
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body, violations });
      behaviour(req, res, body);
    });
  });
  await new Promise<void>((r) => server.listen(sock, r));
});
after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

function answer(status: number, body?: unknown, headers: Record<string, string> = {}) {
  behaviour = (_req, res) => {
    const s = body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, { ...headers, ...(s ? { 'Content-Type': 'application/json' } : {}), 'Content-Length': Buffer.byteLength(s) }).end(s);
  };
}

test('every request carries Content-Length, exact JSON headers and a one-piece body', async () => {
  const c = new FirecrackerClient(sock);
  answer(204);
  seen.length = 0;
  await c.request('put', '/drives/{drive_id}', { drive_id: 'rootfs' }, { drive_id: 'rootfs', path_on_host: 'rootfs', is_root_device: true, is_read_only: false });
  await c.request('put', '/actions', undefined, { action_type: 'InstanceStart' });
  await c.request('patch', '/vm', undefined, { state: 'Paused' });
  answer(200, { id: 'x', state: 'Paused', vmm_version: '1.16.1', app_name: 'Firecracker' });
  const info = await c.describe();
  assert.equal(info.state, 'Paused');
  for (const r of seen) {
    assert.deepEqual(r.violations, [], `${r.method} ${r.url}`);
    assert.equal(r.headers['content-length'], String(Buffer.byteLength(r.body)));
    assert.equal(r.headers['transfer-encoding'], undefined);
    assert.equal(r.headers.accept, 'application/json');
    if (r.body) assert.equal(r.headers['content-type'], 'application/json');
  }
  assert.equal(seen[3]!.headers['content-length'], '0', 'GET sends Content-Length: 0');
  c.close();
});

test('fault_message answers become FirecrackerApiError (a HostFailureError) with Firecracker\'s text', async () => {
  const c = new FirecrackerClient(sock);
  answer(400, { fault_message: 'The requested operation is not supported after starting the microVM.' });
  const err = await c.request('put', '/boot-source', undefined, { kernel_image_path: 'vmlinux' }).catch((e: unknown) => e);
  assert.ok(err instanceof FirecrackerApiError);
  assert.ok(err instanceof HostFailureError);
  assert.equal(err.status, 400);
  assert.equal(err.faultMessage, 'The requested operation is not supported after starting the microVM.');
  assert.match(err.message, /PUT \/boot-source failed \(400\): The requested operation is not supported after/);
  answer(413, { fault_message: 'MMDS data store limit exceeded' });
  await assert.rejects(c.request('put', '/mmds', undefined, { a: 1 }), (e: unknown) => e instanceof FirecrackerApiError && e.status === 413);
  behaviour = (_q, res) => res.writeHead(500, { 'Content-Length': 4 }).end('oops');
  await assert.rejects(c.request('get', '/version', undefined, undefined), /\(500\): oops/);
  c.close();
});

test('ids with hyphens are refused before sending (Firecracker would 400)', async () => {
  const c = new FirecrackerClient(sock);
  await assert.rejects(c.request('put', '/drives/{drive_id}', { drive_id: 'root-fs' }, { drive_id: 'root-fs', is_root_device: true }), /no hyphens/);
  c.close();
});

test('per-request timeout, abort, and an unreachable socket', async () => {
  const c = new FirecrackerClient(sock, { timeoutMs: 150 });
  behaviour = () => { /* never answers */ };
  const t0 = Date.now();
  await assert.rejects(c.request('put', '/snapshot/create', undefined, { snapshot_path: 's', mem_file_path: 'm' }), TimeoutError);
  assert.ok(Date.now() - t0 < 2000);
  const ac = new AbortController();
  const p = c.request('patch', '/vm', undefined, { state: 'Resumed' }, { signal: ac.signal, timeoutMs: 5000 });
  setTimeout(() => ac.abort(), 20);
  await assert.rejects(p, AbortedError);
  c.close();
  const gone = new FirecrackerClient(join(dir, 'nobody.sock'));
  await assert.rejects(gone.describe(), FirecrackerUnreachableError);
  gone.close();
});

test('a Deprecation header is reported', async () => {
  const flagged: string[] = [];
  const c = new FirecrackerClient(sock, { onDeprecation: (m, p) => flagged.push(`${m} ${p}`) });
  answer(204, undefined, { Deprecation: 'true' });
  await c.request('put', '/snapshot/load', undefined, { snapshot_path: 's', mem_file_path: 'm' });
  assert.deepEqual(flagged, ['PUT /snapshot/load']);
  c.close();
});
