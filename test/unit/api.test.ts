import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
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
  store.upsertTemplate({ id: 'base', imageHash: 'h', kernelPath: '/k', initrdPath: null, rootfsPath: '/r', rootfsSizeBytes: 1 << 30, kernelArgs: '', vcpus: 1, memoryMib: 256, createdAt: new Date().toISOString() });
  const manager = new SandboxManager({
    store, log: silentLogger(), vmm: new FakeDriver(w), storage: new FakeStorage(w), network: new FakeSlots(w), agent: fakeAgent(w), cloneFile: fakeCloner(w),
    config: { dataDir, agentPort: 49983, defaultTimeoutSec: 60, maxTimeoutSec: 3600, bootTimeoutMs: 1000, restoreTimeoutMs: 1000, maxConcurrentStarts: 2, warmTemplates: true,
      limits: { maxVcpus: 4, maxMemoryMib: 4096, minMemoryMib: 128, maxForks: 5 }, capacityMemoryMib: 1 << 20 },
  });
  const app = await buildApi({ manager, store, log: silentLogger(), doctor: async () => ({}), version: 'test', requireApiKey: opts.requireApiKey ?? false });
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
    assert.equal((await post(t.app, `/sandboxes/${created.sandboxID}/pause`, { memory: false })).statusCode, 400);
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
