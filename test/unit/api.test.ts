import { IMAGE_TEMPLATE_FIELDS } from '../../src/core/types.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../src/api/server.js';
import { createApiKey } from '../../src/api/auth.js';
import { SandboxManager } from '../../src/core/manager.js';
import { Store } from '../../src/store/store.js';
import { silentLogger } from '../../src/core/log.js';
import { FakeDriver, FakeSlots, FakeStorage, World, fakeAgent, fakeCloner } from '../helpers/fakes.js';

async function setup(opts: { requireApiKey?: boolean } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'hearth-api-'));
  const w = new World();
  const store = new Store(':memory:');
  store.upsertTemplate({ ...IMAGE_TEMPLATE_FIELDS, id: 'base', imageHash: 'h', kernelPath: '/k', initrdPath: null, rootfsPath: '/r', rootfsSizeBytes: 1 << 30, kernelArgs: '', vcpus: 1, memoryMib: 256, createdAt: new Date().toISOString() });
  const manager = new SandboxManager({
    store, log: silentLogger(), vmm: new FakeDriver(w), storage: new FakeStorage(w), network: new FakeSlots(w), agent: fakeAgent(w), cloneFile: fakeCloner(w),
    config: { dataDir, agentPort: 49983, defaultTimeoutSec: 60, maxTimeoutSec: 3600, bootTimeoutMs: 1000, restoreTimeoutMs: 1000, maxConcurrentStarts: 2, warmTemplates: true,
      limits: { maxVcpus: 4, maxMemoryMib: 4096, minMemoryMib: 128, maxForks: 5 }, capacityMemoryMib: 1 << 20 },
  });
  const app = await buildApi({ manager, store, log: silentLogger(), doctor: async () => ({}), version: 'test', requireApiKey: opts.requireApiKey ?? false, proxyDomain: 'localhost' });
  return { app, store, manager, w, done: async () => { await manager.settled(); await app.close(); rmSync(dataDir, { recursive: true, force: true }); } };
}

const post = (app: FastifyInstance, url: string, body: unknown, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url, payload: JSON.stringify(body), headers: { 'content-type': 'application/json', ...headers } });

test('API keys: required when configured, compared against stored hashes; health stays open', async () => {
  const t = await setup({ requireApiKey: true });
  try {
    const { key } = createApiKey(t.store, 'ci');
    assert.match(key, /^e2b_[0-9a-f]{40}$/);
    assert.ok(!JSON.stringify(t.store.listApiKeys()).includes(key), 'the key itself is never stored');
    assert.equal((await t.app.inject({ url: '/health' })).statusCode, 200);
    const denied = await t.app.inject({ url: '/sandboxes' });
    assert.equal(denied.statusCode, 401);
    assert.match(denied.json<{ message: string }>().message, /X-API-Key/);
    assert.equal((await t.app.inject({ url: '/sandboxes', headers: { 'x-api-key': `${key}0` } })).statusCode, 401);
    assert.equal((await t.app.inject({ url: '/sandboxes', headers: { 'x-api-key': key } })).statusCode, 200);
  } finally { await t.done(); }
});

test('create with an idempotency key twice makes one sandbox', async () => {
  const t = await setup();
  try {
    const [a, b] = await Promise.all([
      post(t.app, '/sandboxes', { templateID: 'base' }, { 'idempotency-key': 'k1' }),
      post(t.app, '/sandboxes', { templateID: 'base' }, { 'idempotency-key': 'k1' }),
    ]);
    assert.equal(a.statusCode, 201);
    assert.equal(b.statusCode, 201);
    assert.equal(a.json<{ sandboxID: string }>().sandboxID, b.json<{ sandboxID: string }>().sandboxID);
    assert.equal(t.manager.list(['running']).filter((s) => !s.metadata['hearth.internal']).length, 1);
  } finally { await t.done(); }
});

test('errors are JSON with the HTTP status as code: 400 names the field, 404, 409', async () => {
  const t = await setup();
  try {
    const bad = await post(t.app, '/sandboxes', { templateID: 'base', cpuCount: 'two' });
    assert.equal(bad.statusCode, 400);
    assert.deepEqual(Object.keys(bad.json()).sort(), ['code', 'error_code', 'message']);
    assert.match(bad.json<{ message: string }>().message, /cpuCount/);
    assert.equal((await post(t.app, '/sandboxes', { templateID: '../../etc' })).statusCode, 400, 'path-like ids are refused');
    assert.equal((await t.app.inject({ url: '/sandboxes/..%2F..%2Fetc' })).statusCode, 400);
    const nf = await t.app.inject({ url: '/sandboxes/inope' });
    assert.equal(nf.statusCode, 404);
    assert.equal(nf.json<{ code: number }>().code, 404);
    const created = (await post(t.app, '/sandboxes', { templateID: 'base' })).json<{ sandboxID: string }>();
    assert.equal((await post(t.app, `/sandboxes/${created.sandboxID}/resume`, {})).statusCode, 409);
    assert.equal((await post(t.app, `/sandboxes/${created.sandboxID}/pause`, {})).statusCode, 204);
    assert.equal((await post(t.app, `/sandboxes/${created.sandboxID}/pause`, {})).statusCode, 409);
    assert.equal((await post(t.app, `/sandboxes/${created.sandboxID}/pause`, { memory: false })).statusCode, 409, 'a filesystem-only pause of a paused sandbox is a 409 too');
    const big = await post(t.app, '/sandboxes', { templateID: 'base', metadata: { x: 'y'.repeat(2 << 20) } });
    assert.equal(big.statusCode, 413, 'request size limit');
  } finally { await t.done(); }
});

test('fuzz: random and malformed requests never get a 5xx', async () => {
  const t = await setup();
  try {
    const json = fc.jsonValue({ maxDepth: 3 });
    const body = fc.oneof(
      json.map((v) => JSON.stringify(v)),
      fc.record({ templateID: fc.oneof(fc.string(), fc.constant('base')), cpuCount: fc.oneof(fc.integer(), fc.string(), fc.constant(null)),
        memoryMB: fc.oneof(fc.integer({ min: -10, max: 1 << 22 }), fc.double()), timeout: fc.oneof(fc.integer(), fc.string()),
        envVars: fc.oneof(fc.dictionary(fc.string(), fc.string()), json), metadata: json }, { requiredKeys: [] }).map((v) => JSON.stringify(v)),
      fc.string(),
    );
    const path = fc.oneof(
      fc.constantFrom('/%5C', '/ui/..%2F..%2Fetc%2Fpasswd', '/ui/%00', '/sandboxes/inope/envd/%2E%2E/init', '/sandboxes', '/sandboxes/inope', '/sandboxes/inope/pause', '/sandboxes/inope/resume', '/sandboxes/inope/fork', '/sandboxes/inope/snapshots', '/sandboxes/inope/timeout', '/snapshots', '/snapshots/x', '/templates/base'),
      fc.string().map((s) => `/sandboxes/${encodeURIComponent(s)}`),
      // Random paths as a client would send them (percent-encoded), e.g. `/%5C`.
      fc.string().map((s) => `/${encodeURIComponent(s).replace(/%2F/g, '/')}`),
    );
    await fc.assert(fc.asyncProperty(fc.constantFrom('GET', 'POST', 'DELETE', 'PUT'), path, body, async (method, url, payload) => {
      const res = await t.app.inject({ method: method as 'GET', url, payload: method === 'GET' ? undefined : payload, headers: { 'content-type': 'application/json' } });
      assert.ok(res.statusCode < 500, `${method} ${url} ${payload.slice(0, 100)} → ${res.statusCode} ${res.body.slice(0, 200)}`);
    }), { numRuns: 300 });
  } finally { await t.done(); }
});

test('network: create with E2B\'s egress fields, read it back, replace it; bad lists are 400s naming the field', async () => {
  const t = await setup();
  try {
    const res = await post(t.app, '/sandboxes', { templateID: 'base', allow_internet_access: false, network: { allowOut: ['198.51.100.0/24'], denyOut: ['198.51.100.7'], allowPublicTraffic: false } });
    assert.equal(res.statusCode, 201, res.body);
    const s = res.json<{ sandboxID: string; network: unknown; allowPublicTraffic: boolean; trafficAccessToken: string | null }>();
    assert.deepEqual(s.network, { allow_internet_access: false, allowOut: ['198.51.100.0/24'], denyOut: ['198.51.100.7'] });
    assert.equal(s.allowPublicTraffic, false);
    assert.ok(s.trafficAccessToken);
    const put = await t.app.inject({ method: 'PUT', url: `/sandboxes/${s.sandboxID}/network`, payload: { allow_internet_access: true }, headers: { 'content-type': 'application/json' } });
    assert.equal(put.statusCode, 200, put.body);
    assert.deepEqual(put.json(), { allow_internet_access: true, allowOut: [], denyOut: [] });
    assert.deepEqual((await t.app.inject({ url: `/sandboxes/${s.sandboxID}/network` })).json(), { allow_internet_access: true, allowOut: [], denyOut: [] });
    const bad = await t.app.inject({ method: 'PUT', url: `/sandboxes/${s.sandboxID}/network`, payload: { allowOut: [42] }, headers: { 'content-type': 'application/json' } });
    assert.equal(bad.statusCode, 400);
    assert.match(bad.json<{ message: string }>().message, /allowOut/);
    const unknown = await post(t.app, '/sandboxes', { templateID: 'base', network: { allowOutt: [] } });
    assert.equal(unknown.statusCode, 400);
    assert.equal((await t.app.inject({ method: 'PUT', url: '/sandboxes/inope/network', payload: {}, headers: { 'content-type': 'application/json' } })).statusCode, 404);
  } finally { await t.done(); }
});

test('port proxy on the API listener: path and host forms, traffic token enforced, no API key needed, 502 for unknown sandboxes', async () => {
  const t = await setup({ requireApiKey: true });
  const upstream = createServer((req, res) => res.end(`guest ${req.url}`));
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  try {
    const { key } = createApiKey(t.store, 'ci');
    const created = await post(t.app, '/sandboxes', { templateID: 'base', network: { allowPublicTraffic: false } }, { 'x-api-key': key });
    const s = created.json<{ sandboxID: string; trafficAccessToken: string }>();
    const upstreamPort = (upstream.address() as AddressInfo).port;
    t.manager.portEndpoint = async (id) => ({ host: '127.0.0.1', port: upstreamPort, trafficToken: t.manager.get(id).netPolicy.trafficToken, lease: id });
    const url = await t.app.listen({ host: '127.0.0.1', port: 0 });
    const path = `${url}/sandboxes/${s.sandboxID}/ports/8080/hi?x=1`;
    assert.equal((await fetch(path)).status, 403, 'no token');
    assert.equal((await fetch(path, { headers: { 'e2b-traffic-access-token': 'nope' } })).status, 403, 'wrong token');
    const ok = await fetch(path, { headers: { 'e2b-traffic-access-token': s.trafficAccessToken } });
    assert.equal(ok.status, 200);
    assert.equal(await ok.text(), 'guest /hi?x=1');
    const viaHost = await new Promise<string>((resolve, reject) => {
      const q = httpRequest(`${url}/y`, { headers: { host: `8080-${s.sandboxID}.localhost`, 'e2b-traffic-access-token': s.trafficAccessToken } }, (r) => {
        let b = ''; r.setEncoding('utf8').on('data', (c: string) => { b += c; }).on('end', () => resolve(b));
      });
      q.on('error', reject).end();
    });
    assert.equal(viaHost, 'guest /y', 'host form under the default domain "localhost"');
    const missing = await fetch(`${url}/sandboxes/inope/ports/8080/`);
    assert.equal(missing.status, 502);
    assert.match((await missing.json() as { message: string }).message, /not found/);
    assert.equal((await fetch(`${url}/sandboxes/${s.sandboxID}/ports/49983/`)).status, 403, 'the agent port has its own authenticated route');
    assert.equal((await fetch(`${url}/sandboxes`)).status, 401, 'API routes still need the key');
  } finally {
    upstream.close();
    await t.done();
  }
});

/** A sandbox whose port 8080 streams `tick` and never ends, read through hearthd's port proxy. */
async function endlessStream(t: Awaited<ReturnType<typeof setup>>): Promise<{ id: string; reader: ReadableStreamDefaultReader<Uint8Array>; close(): void }> {
  const upstream = createServer((_req, res) => { res.writeHead(200); res.write('tick\n'); /* never ends */ });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  const created = await post(t.app, '/sandboxes', { templateID: 'base' });
  const id = created.json<{ sandboxID: string }>().sandboxID;
  const upstreamPort = (upstream.address() as AddressInfo).port;
  t.manager.portEndpoint = async () => ({ host: '127.0.0.1', port: upstreamPort, trafficToken: null, lease: id });
  const url = await t.app.listen({ host: '127.0.0.1', port: 0 });
  const reader = (await fetch(`${url}/sandboxes/${id}/ports/8080/stream`)).body!.getReader();
  assert.equal(new TextDecoder().decode((await reader.read()).value), 'tick\n');
  return { id, reader, close: () => { upstream.closeAllConnections(); upstream.close(); } };
}

test('close() does not wait for long-lived streams: an endless proxied response is cut after a short grace', { timeout: 15_000 }, async () => {
  const t = await setup();
  const s = await endlessStream(t);
  try {
    const t0 = performance.now();
    await t.manager.settled();
    await t.app.close();
    const ms = performance.now() - t0;
    assert.ok(ms < 5000, `close took ${Math.round(ms)} ms`);
    await assert.rejects(s.reader.read(), 'the client stream was cut');
  } finally {
    s.close();
    await t.done().catch(() => undefined);
  }
});

test('destroying a sandbox ends the streams proxied to it at once', { timeout: 15_000 }, async () => {
  const t = await setup();
  const s = await endlessStream(t);
  try {
    const t0 = performance.now();
    await t.manager.destroy(s.id, AbortSignal.timeout(10_000));
    await assert.rejects(s.reader.read());
    assert.ok(performance.now() - t0 < 2000, 'cut at once');
  } finally {
    s.close();
    await t.done();
  }
});
