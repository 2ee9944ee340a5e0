/**
 * API keys in cluster mode (docs/cluster.md, "API keys") with real parts and no
 * VMs: one PostgreSQL from Debian's packages and two hearthd nodes in this
 * process that require keys. A key made through one node works on the other at
 * once; a delete on one is refused on the other within a heartbeat; wrong keys
 * cost PostgreSQL about one query per interval, not one per request; with
 * PostgreSQL stopped known keys still work and unknown ones get 401; a node's
 * SQLite keys join the cluster's when it joins (and a key revoked in the cluster
 * stays revoked when they are imported again); `hearth keys` works on the
 * cluster's keys; a forwarded request carries the verified key's id.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { createApiKey, newApiKey } from '../../src/api/auth.js';
import { Store } from '../../src/store/store.js';
import { DataLayout } from '../../src/core/layout.js';
import { daemonOn, type TestDaemon } from '../helpers/daemon.js';
import { startClusterNode, until } from '../helpers/cluster.js';
import { runCli } from '../helpers/cli.js';
import { postgresAvailable, startPostgres, type TestPostgres } from '../helpers/postgres.js';

const TOKEN = randomBytes(24).toString('hex');
const HEARTBEAT_MS = 400;

async function call(base: string, path: string, key: string | null, init: RequestInit = {}): Promise<{ status: number; node: string | null; body: unknown }> {
  const headers: Record<string, string> = { ...(init.body ? { 'content-type': 'application/json' } : {}), ...(key ? { 'x-api-key': key } : {}) };
  const r = await fetch(`${base}${path}`, { ...init, headers });
  const text = await r.text();
  return { status: r.status, node: r.headers.get('x-hearth-node'), body: text ? JSON.parse(text) as unknown : null };
}

/** Counts the queries a node's pool sends that touch api_keys (the pool is the real one; only counted). */
function countKeyQueries(p: pg.Pool): { n: number; stop(): void } {
  const target = p as unknown as { query: (...args: unknown[]) => unknown };
  const original = target.query;
  const counter = { n: 0, stop: () => { target.query = original; } };
  target.query = function (this: unknown, ...args: unknown[]) {
    const text = typeof args[0] === 'string' ? args[0] : (args[0] as { text?: string } | undefined)?.text;
    if (text?.includes('api_keys')) counter.n++;
    return original.apply(this, args);
  };
  return counter;
}

describe('cluster mode: API keys for the whole cluster', { skip: !postgresAvailable() && 'PostgreSQL 15 (Debian) is not installed' }, () => {
  let pgsql: TestPostgres;
  const nodes: Record<string, TestDaemon> = {};
  let boot: { id: string; key: string };
  let cliHome = '';
  const over = { network: 'user' as const, requireApiKey: true, clusterHeartbeatMs: HEARTBEAT_MS };

  before(async () => {
    pgsql = await startPostgres();
    cliHome = await mkdtemp(join(process.env['HEARTH_TEST_TMP'] ?? tmpdir(), 'cluster-keys-cli-'));
    nodes['a'] = await startClusterNode(pgsql.url, 'a', TOKEN, over);
    nodes['b'] = await startClusterNode(pgsql.url, 'b', TOKEN, over);
    // The first key, as `hearth keys create` makes it (every route needs one here).
    boot = await nodes['a'].cluster!.keys.create('bootstrap');
  });

  after(async () => {
    for (const d of Object.values(nodes)) await d.stop().catch((err: unknown) => process.stderr.write(`stop: ${String(err)}\n`));
    await pgsql?.stop();
    if (cliHome) await rm(cliHome, { recursive: true, force: true });
  });

  const A = (): string => nodes['a']!.url;
  const B = (): string => nodes['b']!.url;

  test('a key created through node A\'s API authenticates on node B at once; deleted on B, it is refused on A within a heartbeat', async () => {
    assert.equal((await call(A(), '/api-keys', null)).status, 401);
    const made = await call(A(), '/api-keys', boot.key, { method: 'POST', body: JSON.stringify({ name: 'laptop' }) });
    assert.equal(made.status, 201, JSON.stringify(made.body));
    const k = made.body as { id: string; key: string };
    const onB = await call(B(), '/api-keys', k.key);
    assert.equal(onB.status, 200, 'B accepts a key made on A, before any heartbeat of B');
    assert.deepEqual((onB.body as { id: string }[]).map((x) => x.id).sort(), [boot.id, k.id].sort(), 'B lists the cluster\'s keys');

    assert.equal((await call(A(), '/templates', k.key)).status, 200, 'A knows it too');
    assert.equal((await call(B(), `/api-keys/${k.id}`, boot.key, { method: 'DELETE' })).status, 204);
    assert.equal((await call(B(), '/templates', k.key)).status, 401, 'refused at once on the node that deleted it');
    const t0 = Date.now();
    await until('A refuses the deleted key', async () => (await call(A(), '/templates', k.key)).status === 401, 10_000);
    const took = Date.now() - t0;
    assert.ok(took <= 2 * HEARTBEAT_MS + 1000, `refused on A after ${took} ms (heartbeat ${HEARTBEAT_MS} ms)`);
    assert.equal((await call(A(), `/api-keys/${k.id}`, boot.key, { method: 'DELETE' })).status, 404, 'deleted for the whole cluster');
  });

  test('wrong keys get 401 without a PostgreSQL query per request', async (t) => {
    const counter = countKeyQueries(nodes['b']!.cluster!.db.pool);
    try {
      const t0 = performance.now();
      let n = 0;
      for (let round = 0; round < 6; round++) {
        const answers = await Promise.all(Array.from({ length: 20 }, () => call(B(), '/templates', newApiKey().key)));
        for (const r of answers) assert.equal(r.status, 401);
        n += answers.length;
      }
      const elapsed = performance.now() - t0;
      // Heartbeat reads plus at most one read for misses per 250 ms.
      const bound = Math.ceil(elapsed / HEARTBEAT_MS) * 2 + Math.ceil(elapsed / 250) + 2;
      t.diagnostic(`${counter.n} api_keys queries (heartbeats included) for ${n} wrong keys in ${Math.round(elapsed)} ms`);
      assert.ok(counter.n <= bound && counter.n < n / 4, `${counter.n} api_keys queries for ${n} wrong keys in ${Math.round(elapsed)} ms (bound ${bound})`);
    } finally {
      counter.stop();
    }
    assert.equal((await call(B(), '/templates', boot.key)).status, 200, 'a right key still works meanwhile');
  });

  test('hearth keys (CLI) with databaseUrl in the configuration works on the cluster\'s keys', async () => {
    const dir = await mkdtemp(join(process.env['HEARTH_TEST_TMP'] ?? tmpdir(), 'cluster-keys-cfg-'));
    try {
      await writeFile(join(dir, 'config.json'), JSON.stringify({ databaseUrl: pgsql.url, clusterToken: TOKEN, nodeId: 'cli-host' }));
      const made = await runCli(A(), cliHome, ['keys', 'create', '--name', 'from-cli', '--data-dir', dir, '--json'], { timeoutMs: 120_000 });
      assert.equal(made.code, 0, made.stderr);
      const k = JSON.parse(made.stdout) as { id: string; key: string };
      assert.equal((await call(B(), '/templates', k.key)).status, 200, 'a key made by the CLI works on the nodes');
      const ls = await runCli(A(), cliHome, ['keys', 'ls', '--data-dir', dir, '--json'], { timeoutMs: 120_000 });
      assert.equal(ls.code, 0, ls.stderr);
      assert.ok((JSON.parse(ls.stdout) as { id: string }[]).some((x) => x.id === boot.id), 'the CLI lists the cluster\'s keys');
      const gone = await runCli(A(), cliHome, ['keys', 'rm', k.id, '--data-dir', dir], { timeoutMs: 120_000 });
      assert.equal(gone.code, 0, gone.stderr);
      await until('the nodes refuse the key the CLI deleted', async () => (await call(A(), '/templates', k.key)).status === 401
        && (await call(B(), '/templates', k.key)).status === 401, 10_000);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('a request forwarded to the owner carries the verified key\'s id; a wrong key is refused before forwarding', async () => {
    // A placement on node A for a sandbox A does not have: B forwards, A answers for its own SQLite (404).
    const id = `ifake${randomBytes(6).toString('hex')}`;
    await nodes['a']!.cluster!.db.publish('node-a', { sandboxId: id, state: 'running', templateId: 'base', memoryMib: 384, vcpus: 1, metadata: {}, createdAt: new Date().toISOString() });
    const ok = await call(B(), `/sandboxes/${id}`, boot.key);
    assert.equal(ok.node, 'node-a', 'answered by the owner');
    assert.equal(ok.status, 404, JSON.stringify(ok.body));
    const bad = await call(B(), `/sandboxes/${id}`, newApiKey().key);
    assert.equal(bad.status, 401);
    assert.equal(bad.node, 'node-b', 'refused by the entry node, never forwarded');
  });

  test('with PostgreSQL stopped a known key still works and an unknown key gets 401; key changes answer 503', async () => {
    const late = await call(A(), '/api-keys', boot.key, { method: 'POST', body: JSON.stringify({ name: 'late' }) });
    const lateKey = (late.body as { key: string }).key;
    await until('B has the key in its copy', async () => nodes['b']!.cluster!.keys.cachedIds().includes((late.body as { id: string }).id), 5000);
    await pgsql.halt();
    try {
      await until('both nodes see PostgreSQL down', async () => !nodes['a']!.cluster!.status().databaseReachable && !nodes['b']!.cluster!.status().databaseReachable, 15_000);
      for (const base of [A(), B()]) {
        assert.equal((await call(base, '/cluster', boot.key)).status, 200, `${base}: known key`);
        assert.equal((await call(base, '/cluster', lateKey)).status, 200, `${base}: known key (made just before)`);
        assert.equal((await call(base, '/cluster', newApiKey().key)).status, 401, `${base}: unknown key`);
      }
      assert.equal((await call(A(), '/api-keys', boot.key, { method: 'POST', body: JSON.stringify({ name: 'x' }) })).status, 503);
      assert.equal((await call(A(), '/api-keys', boot.key)).status, 503);
    } finally {
      await pgsql.start();
    }
    await until('both nodes reach PostgreSQL again', async () => nodes['a']!.cluster!.status().databaseReachable && nodes['b']!.cluster!.status().databaseReachable, 30_000);
    const list = await call(B(), '/api-keys', boot.key);
    assert.equal(list.status, 200);
    const used = (list.body as { id: string; lastUsedAt: string | null }[]).find((x) => x.id === (late.body as { id: string }).id);
    assert.ok(used?.lastUsedAt, 'uses while PostgreSQL was down are recorded once it is back (batched)');
  });

  test('a node\'s SQLite keys are imported when it joins; a key revoked in the cluster stays revoked', async () => {
    // Node B leaves; two keys appear in its own SQLite (as if made while it was a single host); it joins again.
    const b = nodes['b']!;
    await b.manager.settled();
    await b.close();
    const store = new Store(new DataLayout(b.cfg.dataDir).db);
    const kept = createApiKey(store, 'single-host');
    const revoked = createApiKey(store, 'single-host-revoked');
    store.close();
    nodes['b'] = await daemonOn(b.cfg);
    assert.equal((await call(A(), '/templates', kept.key)).status, 200, 'B\'s old key works on A');
    assert.equal((await call(nodes['b'].url, '/templates', kept.key)).status, 200, 'and on B');
    const listed = await call(A(), '/api-keys', boot.key);
    assert.ok((listed.body as { id: string }[]).some((x) => x.id === kept.id), 'imported by id');

    assert.equal((await call(A(), `/api-keys/${revoked.id}`, boot.key, { method: 'DELETE' })).status, 204);
    const again = nodes['b'];
    await again.manager.settled();
    await again.close();
    nodes['b'] = await daemonOn(again.cfg);
    // The import runs again at this join: the revoked key is still in B's SQLite, but stays revoked.
    assert.equal((await call(nodes['b'].url, '/templates', revoked.key)).status, 401);
    assert.equal((await call(A(), '/templates', revoked.key)).status, 401);
    assert.equal((await call(nodes['b'].url, '/templates', kept.key)).status, 200);
  });
});
