import { IMAGE_TEMPLATE_FIELDS } from '../../src/core/types.js';
/**
 * The E2B-compatible parts of the API (docs/e2b-compat.md) on fakes: v2 create
 * and list (filters, order, pages), connect with and without a timeout, 404
 * for destroyed sandboxes (and the record route that keeps their history),
 * metrics samples, snapshot name filter, and envd routing by Host
 * (`49983-<id>.<domain>`) and by the signature of a /files URL.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, request as httpRequest, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../src/api/server.js';
import { createApiKey } from '../../src/api/auth.js';
import { filesSignature } from '../../src/agent/auth.js';
import { SandboxManager } from '../../src/core/manager.js';
import { Store } from '../../src/store/store.js';
import { silentLogger } from '../../src/core/log.js';
import { FakeDriver, FakeSlots, FakeStorage, World, fakeAgent, fakeCloner } from '../helpers/fakes.js';

async function setup(opts: { requireApiKey?: boolean } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'hearth-e2b-'));
  const w = new World();
  const store = new Store(':memory:');
  store.upsertTemplate({ ...IMAGE_TEMPLATE_FIELDS, id: 'base', imageHash: 'h', kernelPath: '/k', initrdPath: null, rootfsPath: '/r', rootfsSizeBytes: 1 << 30, kernelArgs: '', vcpus: 1, memoryMib: 256, createdAt: new Date().toISOString() });
  const manager = new SandboxManager({
    store, log: silentLogger(), vmm: new FakeDriver(w), storage: new FakeStorage(w), network: new FakeSlots(w), agent: fakeAgent(w), cloneFile: fakeCloner(w),
    config: { dataDir, agentPort: 49983, defaultTimeoutSec: 60, maxTimeoutSec: 3600, bootTimeoutMs: 1000, restoreTimeoutMs: 1000, maxConcurrentStarts: 2, warmTemplates: true,
      limits: { maxVcpus: 4, maxMemoryMib: 4096, minMemoryMib: 128, maxForks: 5 }, capacityMemoryMib: 1 << 20 },
  });
  // A stand-in agent: answers every envd request with what it received.
  const seen: { sandbox: string; method: string; url: string; token: string | undefined }[] = [];
  const agentServer = createServer((req: IncomingMessage, res) => {
    const sandbox = String(req.headers['x-test-sandbox'] ?? '');
    if (req.url === '/metrics') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ ts: 1, cpu_count: 2, cpu_used_pct: 12.5, mem_total: 512 << 20, mem_used: 100 << 20, mem_cache: 10 << 20, mem_total_mib: 512, mem_used_mib: 100, disk_used: 1 << 30, disk_total: 2 << 30 }));
      return;
    }
    seen.push({ sandbox, method: req.method ?? '', url: req.url ?? '', token: req.headers['x-access-token'] as string | undefined });
    req.resume();
    res.end('agent');
  });
  await new Promise<void>((r) => agentServer.listen(0, '127.0.0.1', r));
  const agentPort = (agentServer.address() as AddressInfo).port;
  manager.reachable = async (id) => ({ endpoint: { host: '127.0.0.1', port: agentPort }, token: manager.get(id).agentToken, lease: id });
  manager.agentEndpoint = (id) => ({ endpoint: { host: '127.0.0.1', port: agentPort }, token: manager.get(id).agentToken, lease: id });
  const app = await buildApi({
    manager, store, log: silentLogger(), doctor: async () => ({}), version: 'test', requireApiKey: opts.requireApiKey ?? false, proxyDomain: 'localhost',
    sandboxDomain: () => 'localhost:3030', defaultTimeoutSec: 300, metricsIntervalMs: 0,
  });
  return {
    app, store, manager, w, seen,
    done: async () => { await manager.settled(); await app.close(); agentServer.close(); rmSync(dataDir, { recursive: true, force: true }); },
  };
}

const post = (app: FastifyInstance, url: string, body: unknown, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url, payload: JSON.stringify(body), headers: { 'content-type': 'application/json', ...headers } });

type Listed = { sandboxID: string; state: string; metadata: Record<string, string>; startedAt: string; domain: string | null };

test('POST /v2/sandboxes creates like POST /sandboxes; answers carry the sandbox domain', async () => {
  const t = await setup();
  try {
    const v2 = await post(t.app, '/v2/sandboxes', { templateID: 'base', metadata: { a: '1' }, autoPause: false, mcp: null, volumeMounts: [] });
    assert.equal(v2.statusCode, 201, v2.body);
    const b = v2.json<{ sandboxID: string; domain: string; envdAccessToken: string; envdVersion: string; state: string; allowInternetAccess: boolean | null }>();
    assert.equal(b.domain, 'localhost:3030');
    assert.equal(b.state, 'running');
    assert.ok(b.envdAccessToken.length > 0);
    const v1 = await post(t.app, '/sandboxes', { templateID: 'base' });
    assert.equal(v1.statusCode, 201);
    assert.equal(v1.json<{ domain: string }>().domain, 'localhost:3030');
    const got = await t.app.inject({ url: `/sandboxes/${b.sandboxID}` });
    assert.equal(got.json<{ domain: string }>().domain, 'localhost:3030');
  } finally { await t.done(); }
});

test('GET /v2/sandboxes: running and paused by default, metadata and state filters, order, pages with X-Next-Token', async () => {
  const t = await setup();
  try {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await post(t.app, '/v2/sandboxes', { templateID: 'base', metadata: { team: i % 2 ? 'odd' : 'even', 'k y': 'v&=%' } });
      ids.push(r.json<{ sandboxID: string }>().sandboxID);
      await new Promise((res) => setTimeout(res, 5)); // distinct start times
    }
    assert.equal((await post(t.app, `/sandboxes/${ids[1]}/pause`, {})).statusCode, 204);
    assert.equal((await t.app.inject({ method: 'DELETE', url: `/sandboxes/${ids[4]}` })).statusCode, 204);
    const all = (await t.app.inject({ url: '/v2/sandboxes' })).json<Listed[]>();
    assert.deepEqual(all.map((s) => s.sandboxID), [ids[3], ids[2], ids[1], ids[0]], 'newest first; the destroyed one is not listed');
    assert.deepEqual((await t.app.inject({ url: '/v2/sandboxes?order=asc' })).json<Listed[]>().map((s) => s.sandboxID), [ids[0], ids[1], ids[2], ids[3]]);
    assert.deepEqual((await t.app.inject({ url: '/v2/sandboxes?state=paused' })).json<Listed[]>().map((s) => s.sandboxID), [ids[1]]);
    assert.equal((await t.app.inject({ url: '/v2/sandboxes?state=running,paused' })).json<Listed[]>().length, 4);
    assert.equal((await t.app.inject({ url: '/v2/sandboxes?state=running&state=paused' })).json<Listed[]>().length, 4);
    // The SDK's encoding: each key and value URL-encoded, joined as a query string, then encoded as one parameter.
    const meta = new URLSearchParams({ [encodeURIComponent('k y')]: encodeURIComponent('v&=%'), team: 'odd' }).toString();
    const odd = (await t.app.inject({ url: `/v2/sandboxes?metadata=${encodeURIComponent(meta)}` })).json<Listed[]>();
    assert.deepEqual(odd.map((s) => s.sandboxID).sort(), [ids[1], ids[3]].sort());
    assert.deepEqual((await t.app.inject({ url: `/sandboxes?metadata=${encodeURIComponent('team=even')}` })).json<Listed[]>().map((s) => s.sandboxID).sort(), [ids[0], ids[2]].sort(), 'the v1 list filters too');
    // Pages of 3: the cursor is in X-Next-Token, absent on the last page.
    const p1 = await t.app.inject({ url: '/v2/sandboxes?limit=3' });
    const token = p1.headers['x-next-token'];
    assert.equal(typeof token, 'string');
    const p2 = await t.app.inject({ url: `/v2/sandboxes?limit=3&nextToken=${encodeURIComponent(String(token))}` });
    assert.equal(p2.headers['x-next-token'], undefined);
    assert.deepEqual([...p1.json<Listed[]>(), ...p2.json<Listed[]>()].map((s) => s.sandboxID), all.map((s) => s.sandboxID));
    assert.equal((await t.app.inject({ url: `/v2/sandboxes?startedAfter=${encodeURIComponent(all[0]!.startedAt)}` })).json<Listed[]>().length, 1);
    for (const bad of ['state=destroyed', 'limit=0', 'limit=101', 'nextToken=zzz', 'order=up', 'startedAfter=yesterday']) {
      const r = await t.app.inject({ url: `/v2/sandboxes?${bad}` });
      assert.equal(r.statusCode, 400, bad);
      assert.deepEqual(Object.keys(r.json()).sort(), ['code', 'error_code', 'message']);
    }
  } finally { await t.done(); }
});

test('connect (v1 and v2 paths): no body or no timeout works; a paused sandbox resumes (201); destroyed or unknown is 404', async () => {
  const t = await setup();
  try {
    const id = (await post(t.app, '/v2/sandboxes', { templateID: 'base', timeout: 10 })).json<{ sandboxID: string }>().sandboxID;
    const before = Date.parse(t.manager.get(id).endAt);
    const c1 = await t.app.inject({ method: 'POST', url: `/v2/sandboxes/${id}/connect`, headers: { 'content-type': 'application/json' }, payload: '{}' });
    assert.equal(c1.statusCode, 200, c1.body);
    assert.ok(Date.parse(t.manager.get(id).endAt) > before + 200_000, 'no timeout: the default (300 s) applies');
    assert.equal((await post(t.app, `/sandboxes/${id}/connect`, { timeout: 30 })).statusCode, 200);
    assert.equal((await post(t.app, `/sandboxes/${id}/connect`, { memory: false })).statusCode, 200, 'memory: false only matters for a paused sandbox');
    assert.equal((await post(t.app, `/sandboxes/${id}/pause`, {})).statusCode, 204);
    const resumed = await post(t.app, `/v2/sandboxes/${id}/connect`, {});
    assert.equal(resumed.statusCode, 201);
    assert.equal(resumed.json<{ state: string }>().state, 'running');
    assert.equal((await t.app.inject({ method: 'DELETE', url: `/sandboxes/${id}` })).statusCode, 204);
    assert.equal((await post(t.app, `/v2/sandboxes/${id}/connect`, {})).statusCode, 404);
    assert.equal((await post(t.app, '/v2/sandboxes/inope/connect', {})).statusCode, 404);
  } finally { await t.done(); }
});

test('a destroyed sandbox is a 404 everywhere (GET, DELETE, timeout, pause, fork, snapshot, metrics); its record stays at /record', async () => {
  const t = await setup();
  try {
    const id = (await post(t.app, '/v2/sandboxes', { templateID: 'base' })).json<{ sandboxID: string }>().sandboxID;
    assert.equal((await t.app.inject({ method: 'DELETE', url: `/sandboxes/${id}` })).statusCode, 204);
    const get = await t.app.inject({ url: `/sandboxes/${id}` });
    assert.equal(get.statusCode, 404);
    assert.deepEqual(get.json<{ code: number; error_code: string }>().code, 404);
    assert.match(get.json<{ message: string }>().message, /record/);
    assert.equal((await t.app.inject({ method: 'DELETE', url: `/sandboxes/${id}` })).statusCode, 404, 'E2B: kill of a killed sandbox is a 404 (the SDK returns false)');
    for (const [path, body] of [['timeout', { timeout: 10 }], ['pause', {}], ['fork', { count: 1 }], ['snapshots', {}], ['resume', {}]] as const) {
      assert.equal((await post(t.app, `/sandboxes/${id}/${path}`, body)).statusCode, 404, path);
    }
    assert.equal((await t.app.inject({ url: `/sandboxes/${id}/metrics` })).statusCode, 404);
    assert.equal((await t.app.inject({ url: `/sandboxes/${id}/network` })).statusCode, 404);
    const rec = await t.app.inject({ url: `/sandboxes/${id}/record` });
    assert.equal(rec.statusCode, 200);
    assert.equal(rec.json<{ state: string; endReason: string }>().state, 'destroyed');
    assert.ok((await t.app.inject({ url: '/sandboxes?state=destroyed' })).json<Listed[]>().some((s) => s.sandboxID === id));
  } finally { await t.done(); }
});

test('GET /sandboxes/{id}/metrics: E2B\'s samples from the agent, filtered by start/end', async () => {
  const t = await setup();
  try {
    const id = (await post(t.app, '/v2/sandboxes', { templateID: 'base' })).json<{ sandboxID: string }>().sandboxID;
    const r = await t.app.inject({ url: `/sandboxes/${id}/metrics` });
    assert.equal(r.statusCode, 200, r.body);
    const [m] = r.json<Record<string, unknown>[]>();
    // E2B's fields, and the host's view of the sandbox (Hearth's, docs/observability.md).
    assert.deepEqual(Object.keys(m!).sort(), ['cpuCount', 'cpuUsedPct', 'diskTotal', 'diskUsed', 'hostCpuUsedPct', 'hostDiskUsed', 'hostMemRss', 'memCache', 'memTotal', 'memUsed', 'timestamp', 'timestampUnix']);
    assert.equal(m!.cpuUsedPct, 12.5);
    assert.equal(m!.memTotal, 512 << 20);
    assert.equal(typeof m!.timestamp, 'string');
    const future = Math.floor(Date.now() / 1000) + 3600;
    assert.deepEqual((await t.app.inject({ url: `/sandboxes/${id}/metrics?start=${future}` })).json(), []);
    assert.equal((await t.app.inject({ url: `/sandboxes/${id}/metrics?start=x` })).statusCode, 400);
  } finally { await t.done(); }
});

test('GET /snapshots?name= filters by name or id; pages with X-Next-Token', async () => {
  const t = await setup();
  try {
    const id = (await post(t.app, '/v2/sandboxes', { templateID: 'base' })).json<{ sandboxID: string }>().sandboxID;
    const a = (await post(t.app, `/sandboxes/${id}/snapshots`, { name: 'alpha' })).json<{ snapshotID: string }>();
    await post(t.app, `/sandboxes/${id}/snapshots`, { name: 'beta' });
    const byName = (await t.app.inject({ url: '/snapshots?name=alpha' })).json<{ snapshotID: string; names: string[] }[]>();
    assert.deepEqual(byName.map((s) => s.names), [['alpha']]);
    assert.deepEqual((await t.app.inject({ url: `/snapshots?name=${a.snapshotID}` })).json<{ snapshotID: string }[]>().map((s) => s.snapshotID), [a.snapshotID]);
    assert.deepEqual((await t.app.inject({ url: '/snapshots?name=nope' })).json(), []);
    const p1 = await t.app.inject({ url: '/snapshots?limit=1' });
    assert.equal(p1.json<unknown[]>().length, 1);
    const p2 = await t.app.inject({ url: `/snapshots?limit=1&nextToken=${String(p1.headers['x-next-token'])}` });
    assert.equal(p2.json<unknown[]>().length, 1);
    assert.equal(p2.headers['x-next-token'], undefined);
  } finally { await t.done(); }
});

/** A raw request to hearthd's listener with a Host of our choice. */
function rawRequest(url: string, path: string, headers: Record<string, string>, method = 'GET'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const q = httpRequest(`${url}${path}`, { method, headers }, (r) => {
      let b = ''; r.setEncoding('utf8').on('data', (c: string) => { b += c; }).on('end', () => resolve({ status: r.statusCode ?? 0, body: b }));
    });
    q.on('error', reject).end();
  });
}

test('envd by Host (49983-<id>.<domain>): normalised, control paths refused, key-or-token rule; never the open port proxy', async () => {
  const t = await setup({ requireApiKey: true });
  try {
    const { key } = createApiKey(t.store, 'ci');
    const s = (await post(t.app, '/v2/sandboxes', { templateID: 'base' }, { 'x-api-key': key })).json<{ sandboxID: string; envdAccessToken: string }>();
    const url = await t.app.listen({ host: '127.0.0.1', port: 0 });
    const host = `49983-${s.sandboxID}.localhost:3030`;
    const ok = await rawRequest(url, '/./health?x=1', { host, 'x-access-token': s.envdAccessToken });
    assert.equal(ok.status, 200, ok.body);
    assert.equal(t.seen.at(-1)!.url, '/health?x=1', 'the agent gets the canonical path');
    assert.equal((await rawRequest(url, '/health', { host })).status, 401, 'neither key nor token where keys are required');
    assert.equal((await rawRequest(url, '/health', { host, 'x-api-key': key })).status, 200, 'or the API key');
    for (const p of ['/init', '/./init', '/%2e/init', '/x/../init', '//init']) {
      const r = await rawRequest(url, p, { host, 'x-access-token': s.envdAccessToken }, 'POST');
      assert.equal(r.status, 404, p);
    }
    assert.ok(!t.seen.some((x) => x.url.includes('init')), 'no spelling of /init reached the agent');
    const mismatch = await rawRequest(url, '/health', { host, 'x-access-token': s.envdAccessToken, 'e2b-sandbox-id': 'other' });
    assert.equal(mismatch.status, 400);
    assert.equal((await rawRequest(url, '/health', { host: `49983-inope.localhost:3030`, 'x-api-key': key })).status, 502);
  } finally { await t.done(); }
});

test('signed /files URLs without sandbox headers go to the sandbox whose token signed them', async () => {
  const t = await setup({ requireApiKey: true });
  try {
    const { key } = createApiKey(t.store, 'ci');
    const a = (await post(t.app, '/v2/sandboxes', { templateID: 'base' }, { 'x-api-key': key })).json<{ sandboxID: string; envdAccessToken: string }>();
    const b = (await post(t.app, '/v2/sandboxes', { templateID: 'base' }, { 'x-api-key': key })).json<{ sandboxID: string; envdAccessToken: string }>();
    const url = await t.app.listen({ host: '127.0.0.1', port: 0 });
    let routedTo = '';
    t.manager.reachable = async (id) => { routedTo = id; return { endpoint: { host: '127.0.0.1', port: 1 }, token: '', lease: id }; };
    const sig = filesSignature('/home/user/f.txt', 'read', 'user', b.envdAccessToken, undefined);
    const r = await fetch(`${url}/files?path=${encodeURIComponent('/home/user/f.txt')}&username=user&signature=${encodeURIComponent(sig)}`);
    assert.equal(routedTo, b.sandboxID, `routed by signature (status ${r.status} ${await r.text()})`);
    const exp = String(Math.floor(Date.now() / 1000) + 60);
    const sigA = encodeURIComponent(filesSignature('/tmp/up', 'write', 'root', a.envdAccessToken, exp));
    await fetch(`${url}/files?path=%2Ftmp%2Fup&username=root&signature=${sigA}&signature_expiration=${exp}`, { method: 'POST', body: 'x' });
    assert.equal(routedTo, a.sandboxID, 'an upload URL with an expiration');
    const wrongOp = await fetch(`${url}/files?path=%2Ftmp%2Fup&username=root&signature=${sigA}&signature_expiration=${exp}`);
    assert.equal(wrongOp.status, 401, 'a write signature does not read');
    const forged = await fetch(`${url}/files?path=%2Fetc%2Fshadow&username=root&signature=v1_forged`);
    assert.equal(forged.status, 401);
    assert.deepEqual(Object.keys(await forged.json() as object).sort(), ['code', 'error_code', 'message']);
    const unsigned = await fetch(`${url}/files?path=%2Fetc%2Fhostname`);
    assert.equal(unsigned.status, 400);
  } finally { await t.done(); }
});

test('filesystem-only pause and lifecycle over E2B\'s API: pause {memory:false}, connect boots it, onResume "reboot", autoPause + autoPauseMemory at create', async () => {
  const t = await setup();
  try {
    type Detail = { sandboxID: string; state: string; pausedWithMemory: boolean | null; timings: { op: string } | null; lifecycle: { onTimeout: string; keepMemory: boolean; autoResume: boolean } };
    const get = async (id: string) => (await t.app.inject({ url: `/sandboxes/${id}` })).json<Detail>();
    const c = await post(t.app, '/v2/sandboxes', { templateID: 'base', autoPause: true, autoPauseMemory: false });
    assert.equal(c.statusCode, 201, c.body);
    const id = c.json<Detail>().sandboxID;
    assert.deepEqual(c.json<Detail>().lifecycle, { onTimeout: 'pause', keepMemory: false, autoResume: false, autoExtend: false });
    assert.equal(c.json<Detail>().pausedWithMemory, null);
    assert.equal((await post(t.app, `/sandboxes/${id}/pause`, { memory: false })).statusCode, 204);
    let d = await get(id);
    assert.equal(d.state, 'paused');
    assert.equal(d.pausedWithMemory, false);
    assert.equal(d.timings?.op, 'pause (filesystem)');
    const resumed = await post(t.app, `/v2/sandboxes/${id}/connect`, { timeout: 60 });
    assert.equal(resumed.statusCode, 201, resumed.body);
    assert.equal(resumed.json<Detail>().timings?.op, 'resume (boot)', 'a filesystem-only pause always boots');
    // A memory pause, then connect with memory: false (the SDK's onResume: 'reboot') boots too; v1 connect and resume take it as well.
    assert.equal((await post(t.app, `/sandboxes/${id}/pause`, { memory: true })).statusCode, 204);
    assert.equal((await get(id)).pausedWithMemory, true);
    d = (await post(t.app, `/v2/sandboxes/${id}/connect`, { memory: false })).json<Detail>();
    assert.equal(d.timings?.op, 'resume (boot)');
    assert.equal((await post(t.app, `/sandboxes/${id}/pause`, {})).statusCode, 204);
    assert.equal((await post(t.app, `/sandboxes/${id}/connect`, { memory: false })).json<Detail>().timings?.op, 'resume (boot)');
    assert.equal((await post(t.app, `/sandboxes/${id}/pause`, {})).statusCode, 204);
    assert.equal((await post(t.app, `/sandboxes/${id}/resume`, { memory: false })).json<Detail>().timings?.op, 'resume (boot)');
    assert.equal((await post(t.app, `/sandboxes/${id}/pause`, {})).statusCode, 204);
    assert.equal((await post(t.app, `/sandboxes/${id}/resume`, {})).json<Detail>().timings?.op, 'resume');
    // E2B's rules for the lifecycle fields, as 400s naming the field; Hearth's own spelling works the same.
    const noPause = await post(t.app, '/v2/sandboxes', { templateID: 'base', autoPauseMemory: false });
    assert.equal(noPause.statusCode, 400);
    assert.match(noPause.json<{ message: string }>().message, /keepMemory \(autoPauseMemory\)/);
    assert.equal((await post(t.app, '/v2/sandboxes', { templateID: 'base', autoPause: true, autoPauseMemory: false, autoResume: { enabled: true } })).statusCode, 400);
    const own = await post(t.app, '/sandboxes', { templateID: 'base', lifecycle: { onTimeout: 'pause', keepMemory: false } });
    assert.equal(own.statusCode, 201);
    assert.equal(own.json<Detail>().lifecycle.keepMemory, false);
    const dflt = await post(t.app, '/sandboxes', { templateID: 'base', autoPause: true, autoResume: { enabled: true } });
    assert.deepEqual(dflt.json<Detail>().lifecycle, { onTimeout: 'pause', keepMemory: true, autoResume: true, autoExtend: false });
  } finally { await t.done(); }
});
