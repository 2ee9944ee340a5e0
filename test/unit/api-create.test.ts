import { IMAGE_TEMPLATE_FIELDS } from '../../src/core/types.js';
/**
 * POST /sandboxes admission and idempotency as clients see them, and the
 * template warm-snapshot routes, on the fakes (no VMs).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../src/api/server.js';
import { createApiKey } from '../../src/api/auth.js';
import { SandboxManager } from '../../src/core/manager.js';
import { Store } from '../../src/store/store.js';
import { silentLogger } from '../../src/core/log.js';
import { FakeDriver, FakeSlots, FakeStorage, World, fakeAgent, fakeCloner } from '../helpers/fakes.js';

async function setup(opts: { requireApiKey?: boolean; capacityMemoryMib?: number } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'hearth-api-create-'));
  const w = new World();
  const store = new Store(':memory:');
  store.upsertTemplate({ ...IMAGE_TEMPLATE_FIELDS, id: 'base', imageHash: 'h', kernelPath: '/k', initrdPath: null, rootfsPath: '/r', rootfsSizeBytes: 1 << 30, kernelArgs: '', vcpus: 1, memoryMib: 256, createdAt: new Date().toISOString() });
  const driver = new FakeDriver(w);
  const manager = new SandboxManager({
    store, log: silentLogger(), vmm: driver, storage: new FakeStorage(w), network: new FakeSlots(w), agent: fakeAgent(w), cloneFile: fakeCloner(w),
    config: { dataDir, agentPort: 49983, defaultTimeoutSec: 60, maxTimeoutSec: 3600, bootTimeoutMs: 1000, restoreTimeoutMs: 1000, maxConcurrentStarts: 2, warmTemplates: true,
      limits: { maxVcpus: 4, maxMemoryMib: 4096, minMemoryMib: 128, maxForks: 5 }, capacityMemoryMib: opts.capacityMemoryMib ?? 1 << 20 },
  });
  const app = await buildApi({ manager, store, log: silentLogger(), doctor: async () => ({}), version: 'test', requireApiKey: opts.requireApiKey ?? false, proxyDomain: 'localhost' });
  const users = () => manager.list().filter((s) => !s.metadata['hearth.internal']);
  return {
    app, store, manager, w, driver, dataDir, users,
    done: async () => { await manager.settled(); await app.close(); manager.close(); rmSync(dataDir, { recursive: true, force: true }); },
  };
}

const post = (app: FastifyInstance, url: string, body: unknown, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url, payload: JSON.stringify(body), headers: { 'content-type': 'application/json', ...headers } });

type Err = { code: number; message: string; error_code: string };

test('POST /sandboxes: a body the daemon refuses gets its 4xx before a new shape is built', async () => {
  const t = await setup();
  try {
    for (const body of [
      { templateID: 'base', cpuCount: 2, memoryMB: 512, envVars: { 'A=B': '1' } },
      { templateID: 'base', cpuCount: 2, memoryMB: 512, metadata: { 'hearth.internal': 'x' } },
      { templateID: 'base', cpuCount: 2, memoryMB: 512, timeout: 999999 },
      { templateID: 'nope', cpuCount: 2, memoryMB: 512 },
    ]) {
      const res = await post(t.app, '/sandboxes', body);
      assert.ok(res.statusCode === 400 || res.statusCode === 404, `${JSON.stringify(body)} → ${res.statusCode} ${res.body}`);
      assert.deepEqual(Object.keys(res.json()).sort(), ['code', 'error_code', 'message']);
    }
    await t.manager.settled();
    assert.deepEqual(t.w.events, [], 'nothing was booted, acquired or snapshotted');
    assert.deepEqual(t.store.listSnapshots(), []);
    assert.equal(existsSync(join(t.dataDir, 'templates')), false);
  } finally { await t.done(); }
});

test('idempotency: the same body (keys in any order) replays the first sandbox with 201 and says so; another body is a 422 naming the key', async () => {
  const t = await setup();
  try {
    const first = await post(t.app, '/sandboxes', { templateID: 'base', envVars: { A: '1', B: '2' }, timeout: 120 }, { 'idempotency-key': 'order-1' });
    assert.equal(first.statusCode, 201, first.body);
    assert.equal(first.headers['idempotent-replayed'], undefined);
    const replay = await post(t.app, '/sandboxes', { timeout: 120, envVars: { B: '2', A: '1' }, templateID: 'base' }, { 'idempotency-key': 'order-1' });
    assert.equal(replay.statusCode, 201, 'a replay answers as the original did');
    assert.equal(replay.headers['idempotent-replayed'], 'true');
    assert.equal(replay.json<{ sandboxID: string }>().sandboxID, first.json<{ sandboxID: string }>().sandboxID);
    const other = await post(t.app, '/sandboxes', { templateID: 'base', envVars: { A: '1', B: '3' }, timeout: 120 }, { 'idempotency-key': 'order-1' });
    assert.equal(other.statusCode, 422, other.body);
    const e = other.json<Err>();
    assert.equal(e.code, 422);
    assert.equal(e.error_code, 'invalid_argument');
    assert.match(e.message, /Idempotency-Key "order-1"/);
    assert.equal(t.users().length, 1, 'one sandbox for the key');
  } finally { await t.done(); }
});

test('idempotency: a 503 for capacity does not keep the key; the retry creates the sandbox', async () => {
  const t = await setup({ capacityMemoryMib: 1024 });
  try {
    const hog = await post(t.app, '/sandboxes', { templateID: 'base', memoryMB: 768 });
    assert.equal(hog.statusCode, 201);
    const refused = await post(t.app, '/sandboxes', { templateID: 'base', memoryMB: 512 }, { 'idempotency-key': 'cap-1' });
    assert.equal(refused.statusCode, 503, refused.body);
    await t.app.inject({ method: 'DELETE', url: `/sandboxes/${hog.json<{ sandboxID: string }>().sandboxID}` });
    const retry = await post(t.app, '/sandboxes', { templateID: 'base', memoryMB: 512 }, { 'idempotency-key': 'cap-1' });
    assert.equal(retry.statusCode, 201, retry.body);
    assert.equal(retry.headers['idempotent-replayed'], undefined, 'a new create, not a replay');
    assert.equal(retry.json<{ state: string }>().state, 'running');
  } finally { await t.done(); }
});

test('idempotency: the replay of a create that failed is the failure again, not a 201', async () => {
  const t = await setup();
  try {
    t.w.faults.add('agent.init');
    const failed = await post(t.app, '/sandboxes', { templateID: 'base' }, { 'idempotency-key': 'fails-1' });
    assert.equal(failed.statusCode, 500, failed.body);
    t.w.faults.clear();
    const replay = await post(t.app, '/sandboxes', { templateID: 'base' }, { 'idempotency-key': 'fails-1' });
    assert.equal(replay.statusCode, 500, replay.body);
    const e = replay.json<Err>();
    assert.equal(e.error_code, 'host_failure');
    assert.match(e.message, /create failed at init/);
    assert.match(e.message, /Idempotency-Key "fails-1" failed; a new key tries again/);
    assert.equal(t.users().filter((s) => s.state === 'running').length, 0, 'the replay made no sandbox');
    const fresh = await post(t.app, '/sandboxes', { templateID: 'base' }, { 'idempotency-key': 'fails-2' });
    assert.equal(fresh.statusCode, 201);
  } finally { await t.done(); }
});

test('idempotency: keys belong to the API key that sent them', async () => {
  const t = await setup({ requireApiKey: true });
  try {
    const alice = createApiKey(t.store, 'alice').key;
    const bob = createApiKey(t.store, 'bob').key;
    const a = await post(t.app, '/sandboxes', { templateID: 'base' }, { 'idempotency-key': 'shared', 'x-api-key': alice });
    const b = await post(t.app, '/sandboxes', { templateID: 'base', envVars: { WHO: 'bob' } }, { 'idempotency-key': 'shared', 'x-api-key': bob });
    assert.equal(a.statusCode, 201);
    assert.equal(b.statusCode, 201, 'not a 422: another owner\'s key');
    assert.notEqual(a.json<{ sandboxID: string }>().sandboxID, b.json<{ sandboxID: string }>().sandboxID);
    const again = await post(t.app, '/sandboxes', { templateID: 'base' }, { 'idempotency-key': 'shared', 'x-api-key': alice });
    assert.equal(again.json<{ sandboxID: string }>().sandboxID, a.json<{ sandboxID: string }>().sandboxID);
  } finally { await t.done(); }
});

test('GET and DELETE /templates/{id}/snapshots: the warm shapes a template keeps, and their removal', async () => {
  const t = await setup();
  try {
    const s = await post(t.app, '/sandboxes', { templateID: 'base', cpuCount: 2, memoryMB: 512 });
    assert.equal(s.statusCode, 201);
    await t.manager.settled();
    const list = await t.app.inject({ url: '/templates/base/snapshots' });
    assert.equal(list.statusCode, 200, list.body);
    const items = list.json<{ snapshotID: string; templateID: string; cpuCount: number; memoryMB: number; sizeBytes: number; createdAt: string; lastUsedAt: string; current: boolean; inUse: number }[]>();
    assert.equal(items.length, 1);
    const [snap] = items;
    assert.deepEqual({ templateID: snap!.templateID, cpuCount: snap!.cpuCount, memoryMB: snap!.memoryMB, current: snap!.current, inUse: snap!.inUse }, { templateID: 'base', cpuCount: 2, memoryMB: 512, current: true, inUse: 0 });
    assert.ok(snap!.sizeBytes > 0);
    assert.ok(Date.parse(snap!.lastUsedAt) >= Date.parse(snap!.createdAt));
    assert.equal((await t.app.inject({ url: '/templates/nope/snapshots' })).statusCode, 404);
    assert.equal((await t.app.inject({ method: 'DELETE', url: '/templates/base/snapshots/snope' })).statusCode, 404);
    const del = await t.app.inject({ method: 'DELETE', url: `/templates/base/snapshots/${snap!.snapshotID}` });
    assert.equal(del.statusCode, 204, del.body);
    assert.deepEqual((await t.app.inject({ url: '/templates/base/snapshots' })).json(), []);
    assert.deepEqual(readdirSync(join(t.dataDir, 'templates', 'base')), [], 'its files are gone');
    assert.equal((await t.app.inject({ url: '/templates' })).statusCode, 200, 'the template routes moved along');
    assert.equal((await t.app.inject({ url: '/templates/base' })).json<{ templateID: string }>().templateID, 'base');
  } finally { await t.done(); }
});
