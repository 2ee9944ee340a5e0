/**
 * The template and snapshot registry of cluster mode (docs/cluster.md,
 * "Templates and snapshots"), with one real PostgreSQL and three in-process
 * hearthd nodes, and no VM: template and snapshot records are written into
 * one node's own SQLite (their files need not exist: no create is attempted
 * on them), and the test proves they are published, listed cluster-wide with
 * their nodes, fetched and deleted through any node, and that placement sends
 * a create for them only to the nodes that hold them (ClusterNode.decideCreate,
 * the decision the gateway acts on).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { daemonOn, type TestDaemon } from '../helpers/daemon.js';
import { startClusterNode, until } from '../helpers/cluster.js';
import { postgresAvailable, startPostgres, type TestPostgres } from '../helpers/postgres.js';
import type { NodeInfo } from '../../src/cluster/types.js';
import type { CreateDecision } from '../../src/cluster/node.js';
import type { Template } from '../../src/core/types.js';

const TOKEN = randomBytes(24).toString('hex');
const HOUR = 3_600_000;

async function json<T>(url: string, init?: RequestInit): Promise<{ status: number; node: string | null; headers: Headers; body: T }> {
  const r = await fetch(url, init);
  const text = await r.text();
  return { status: r.status, node: r.headers.get('x-hearth-node'), headers: r.headers, body: (text ? JSON.parse(text) : null) as T };
}

interface TemplateItem { templateID: string; imageHash: string; aliases: string[]; source: string; nodes: string[]; partial?: boolean }
interface SnapshotItem { snapshotID: string; names: string[]; nodes: string[]; partial?: boolean }

describe('cluster mode: templates and snapshots across three nodes', { skip: !postgresAvailable() && 'PostgreSQL 15 (Debian) is not installed' }, () => {
  let pg: TestPostgres;
  const nodes: Record<string, TestDaemon> = {};
  const closed = new Set<string>();
  const n = (id: string): TestDaemon => nodes[id]!;

  /** A custom template record on `node` (files borrowed from its base template; never started). */
  function addTemplate(node: string, id: string, imageHash: string, over: Partial<Template> = {}): void {
    const base = n(node).store.getTemplate('base')!;
    n(node).store.upsertTemplate({ ...base, id, imageHash, source: 'build', aliases: [], parentId: 'base', buildId: null, layers: [], runtime: null, createdAt: new Date().toISOString(), ...over });
  }

  /** A named snapshot record on `node` (no files: never restored). */
  function addSnapshot(node: string, id: string, name: string, createdAt: string): void {
    const d = n(node);
    d.store.insertSnapshot({
      id, name, kind: 'named', sandboxId: 'sbxregistry', templateId: 'base', imageHash: d.store.getTemplate('base')!.imageHash, dir: join(d.cfg.dataDir, 'snapshots', id),
      vcpus: 1, memoryMib: 384, agentToken: randomBytes(16).toString('hex'), envVars: {}, createdAt, compat: null,
    });
  }

  const decide = (via: string, name: string, memoryMB?: number): Promise<CreateDecision> => n(via).cluster!.decideCreate(name, memoryMB, 0);
  const target = (d: CreateDecision): string => (d.kind === 'forward' ? d.node.id : d.kind === 'local' ? 'local' : `refuse ${d.status}`);

  before(async () => {
    pg = await startPostgres();
    for (const id of ['a', 'b', 'c']) nodes[id] = await startClusterNode(pg.url, id, TOKEN);
    const now = Date.now();
    addTemplate('b', 'reg-tpl', 'hash-reg', { aliases: ['reg-alias'] });
    // One id in two versions: the newer on B and C (same image hash), an older one on A.
    addTemplate('b', 'twin-tpl', 'hash-twin-new');
    addTemplate('c', 'twin-tpl', 'hash-twin-new');
    addTemplate('a', 'twin-tpl', 'hash-twin-old', { createdAt: new Date(now - 24 * HOUR).toISOString() });
    addSnapshot('c', 'snapregtest1', 'reg-snap', new Date(now - HOUR).toISOString());
    addSnapshot('a', 'snapregtest0', 'reg-snap-old', new Date(now - 2 * HOUR).toISOString());
  });

  after(async () => {
    for (const [id, d] of Object.entries(nodes)) {
      const live = closed.has(id) ? await daemonOn(d.cfg).catch(() => null) : d;
      await (live ?? d).stop().catch((err: unknown) => process.stderr.write(`stop ${id}: ${String(err)}\n`));
    }
    await pg?.stop();
  });

  test('each node publishes its templates and named snapshots into PostgreSQL on its next heartbeat', async () => {
    const reg = await until('the records published', async () => {
      const r = await n('a').cluster!.registry();
      return r.templates.filter((t) => t.templateId === 'twin-tpl').length === 3 && r.snapshots.length === 2 ? r : null;
    }, 20_000);
    const where = (id: string): string[] => reg.templates.filter((t) => t.templateId === id).map((t) => `${t.nodeId}:${t.imageHash}`).sort();
    assert.deepEqual(where('reg-tpl'), ['node-b:hash-reg']);
    assert.deepEqual(where('twin-tpl'), ['node-a:hash-twin-old', 'node-b:hash-twin-new', 'node-c:hash-twin-new']);
    assert.deepEqual(reg.templates.filter((t) => t.templateId === 'base').map((t) => t.nodeId).sort(), ['node-a', 'node-b', 'node-c']);
    assert.deepEqual(reg.templates.find((t) => t.templateId === 'reg-tpl')?.aliases, ['reg-alias']);
    assert.deepEqual(reg.snapshots.map((s) => `${s.nodeId}:${s.snapshotId}:${s.name}`), ['node-c:snapregtest1:reg-snap', 'node-a:snapregtest0:reg-snap-old'], 'newest first');
  });

  test('GET /templates on any node lists every node\'s templates, each with the nodes that hold it', async () => {
    const r = await json<TemplateItem[]>(`${n('a').url}/templates`);
    assert.equal(r.status, 200);
    const item = (id: string, hash?: string): TemplateItem | undefined => r.body.find((t) => t.templateID === id && (!hash || t.imageHash === hash));
    assert.deepEqual(item('base')?.nodes, ['node-a', 'node-b', 'node-c'], 'one default image everywhere: one item');
    assert.deepEqual(item('reg-tpl')?.nodes, ['node-b']);
    assert.equal(item('reg-tpl')?.partial, undefined, 'B answered: its full record');
    assert.deepEqual(item('reg-tpl')?.aliases, ['reg-alias']);
    assert.deepEqual(item('twin-tpl', 'hash-twin-new')?.nodes, ['node-b', 'node-c'], 'same id and image hash: one item on both');
    assert.deepEqual(item('twin-tpl', 'hash-twin-old')?.nodes, ['node-a'], 'another version: its own item');
    assert.equal(r.headers.get('x-hearth-missing-nodes'), null);
  });

  test('GET /templates/{id} of a template another node holds: answered by that node, with its nodes', async () => {
    const byAlias = await json<TemplateItem>(`${n('a').url}/templates/reg-alias`);
    assert.equal(byAlias.status, 200);
    assert.equal(byAlias.node, 'node-b');
    assert.deepEqual([byAlias.body.templateID, byAlias.body.nodes], ['reg-tpl', ['node-b']]);
    const twin = await json<TemplateItem>(`${n('a').url}/templates/twin-tpl`);
    assert.equal(twin.status, 200);
    assert.deepEqual([twin.body.imageHash, twin.body.nodes], ['hash-twin-new', ['node-b', 'node-c']], 'the newest version, as placement resolves it (A\'s own is older)');
    const base = await json<TemplateItem>(`${n('c').url}/templates/base`);
    assert.equal(base.node, 'node-c', 'held here: answered here');
    assert.deepEqual(base.body.nodes, ['node-a', 'node-b', 'node-c']);
    assert.equal((await json<unknown>(`${n('a').url}/templates/nope`)).status, 404);
  });

  test('GET /snapshots on any node: every node\'s named snapshots, newest first, paged across nodes; GET /snapshots/{name} from its node', async () => {
    const all = await json<SnapshotItem[]>(`${n('b').url}/snapshots`);
    assert.equal(all.status, 200);
    assert.deepEqual(all.body.map((s) => [s.snapshotID, s.nodes]), [['snapregtest1', ['node-c']], ['snapregtest0', ['node-a']]]);
    const p1 = await json<SnapshotItem[]>(`${n('b').url}/snapshots?limit=1`);
    assert.deepEqual(p1.body.map((s) => s.snapshotID), ['snapregtest1']);
    const token = p1.headers.get('x-next-token');
    assert.ok(token, 'a next page');
    const p2 = await json<SnapshotItem[]>(`${n('b').url}/snapshots?limit=1&nextToken=${encodeURIComponent(token)}`);
    assert.deepEqual(p2.body.map((s) => s.snapshotID), ['snapregtest0']);
    assert.equal(p2.headers.get('x-next-token'), null, 'the last page');
    const named = await json<SnapshotItem[]>(`${n('a').url}/snapshots?name=reg-snap`);
    assert.deepEqual(named.body.map((s) => s.snapshotID), ['snapregtest1']);
    const one = await json<SnapshotItem>(`${n('a').url}/snapshots/reg-snap`);
    assert.equal(one.status, 200);
    assert.equal(one.node, 'node-c');
    assert.deepEqual([one.body.snapshotID, one.body.names, one.body.nodes], ['snapregtest1', ['reg-snap'], ['node-c']]);
  });

  test('placement: a create for a template or snapshot held by some nodes goes only to them; one nobody holds is a 404', async () => {
    for (let i = 0; i < 4; i++) {
      assert.equal(target(await decide('a', 'reg-tpl', 384)), 'node-b');
      assert.equal(target(await decide('c', 'reg-alias', 384)), 'node-b', 'by alias');
      assert.equal(target(await decide('b', 'reg-tpl', 384)), 'local', 'the holder itself');
      assert.equal(target(await decide('a', 'reg-snap')), 'node-c', 'a named snapshot by name');
      assert.equal(target(await decide('b', 'snapregtest0')), 'node-a', 'by id');
    }
    const twins = new Set<string>();
    for (let i = 0; i < 6; i++) twins.add(target(await decide('a', 'twin-tpl', 384)));
    assert.ok([...twins].every((t) => t === 'node-b' || t === 'node-c'), `the newer version's nodes only, never A's old one: ${[...twins].join(', ')}`);
    const base = await decide('a', 'base', 384);
    assert.notEqual(base.kind, 'refuse', 'the default image\'s template goes anywhere');
    const nope = await decide('a', 'no-such-template');
    assert.equal(target(nope), 'refuse 404');
    const r = await json<{ code: number; error_code: string; message: string }>(`${n('a').url}/sandboxes`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ templateID: 'no-such-template', memoryMB: 384 }),
    });
    assert.equal(r.status, 404);
    assert.equal(r.node, 'node-a');
    assert.match(r.body.message, /no-such-template does not exist on any node of the cluster/);
  });

  test('placement: when no holder of a template has room, another node is chosen and told to pull it from a holder first', async () => {
    // B holds reg-tpl; its row says it is full until its next heartbeat (400 ms) writes its real numbers.
    let d: CreateDecision | null = null;
    for (let i = 0; i < 20 && !(d && d.kind !== 'refuse' && d.pull); i++) {
      await n('a').cluster!.db.pool.query(`UPDATE nodes SET memory_used_mib = memory_total_mib WHERE id = 'node-b'`);
      d = await decide('a', 'reg-tpl', 384);
    }
    assert.ok(d && d.kind !== 'refuse' && d.pull, `a pull decision: ${JSON.stringify(d)}`);
    assert.deepEqual(d.pull, { templateId: 'reg-tpl', from: 'node-b' });
    assert.notEqual(target(d), 'node-b');
  });

  test('a holder that is down: creates for its template are 404 (no up node has it), its records are listed from the registry, a delete is refused', async () => {
    const b = n('b');
    await b.manager.settled();
    await b.close(); // as if hearthd were killed: the node row stays up until it expires
    closed.add('b');
    await until('node B marked down', async () => (await json<NodeInfo[]>(`${n('a').url}/nodes`)).body.find((x) => x.id === 'node-b')?.state === 'down', 20_000);
    const d = await decide('a', 'reg-tpl', 384);
    assert.equal(target(d), 'refuse 404');
    assert.match(d.kind === 'refuse' ? d.message : '', /exists only on node node-b, which is down/);
    const created = await json<{ message: string }>(`${n('c').url}/sandboxes`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ templateID: 'reg-tpl', memoryMB: 384 }),
    });
    assert.equal(created.status, 404, JSON.stringify(created.body));
    assert.equal(target(await decide('a', 'twin-tpl', 384)), 'node-c', 'the other holder of the same version');
    const list = await json<TemplateItem[]>(`${n('a').url}/templates`);
    const reg = list.body.find((t) => t.templateID === 'reg-tpl');
    assert.deepEqual([reg?.nodes, reg?.partial], [['node-b'], true], 'listed from the registry, marked partial');
    const twin = list.body.find((t) => t.templateID === 'twin-tpl' && t.imageHash === 'hash-twin-new');
    assert.deepEqual([twin?.nodes, twin?.partial], [['node-b', 'node-c'], undefined], 'C\'s full record; B named from the registry');
    const single = await json<TemplateItem>(`${n('c').url}/templates/reg-tpl`);
    assert.deepEqual([single.status, single.body.partial, single.body.nodes], [200, true, ['node-b']]);
    const del = await json<{ message: string }>(`${n('a').url}/templates/twin-tpl`, { method: 'DELETE' });
    assert.equal(del.status, 503);
    assert.match(del.body.message, /node-b, which is down; nothing was deleted/);
    assert.ok(n('a').store.getTemplate('twin-tpl') && n('c').store.getTemplate('twin-tpl'), 'nothing deleted');

    nodes['b'] = await daemonOn(b.cfg);
    closed.delete('b');
    await until('node B up again', async () => (await json<NodeInfo[]>(`${n('a').url}/nodes`)).body.every((x) => x.state === 'up'), 20_000);
    await until('reg-tpl placed on B again', async () => target(await decide('a', 'reg-tpl', 384)) === 'node-b', 20_000);
  });

  test('a record a node no longer has leaves the registry on its next heartbeat', async () => {
    n('b').store.deleteTemplate('reg-tpl');
    await until('reg-tpl gone from the registry', async () => !(await n('a').cluster!.registry()).templates.some((t) => t.templateId === 'reg-tpl'), 20_000);
    assert.equal(target(await decide('a', 'reg-tpl', 384)), 'refuse 404');
  });

  test('DELETE through any node: a snapshot on its node; a template on every node that holds it; E2B\'s DELETE /templates/{snapshot}', async () => {
    const snap = await fetch(`${n('a').url}/snapshots/reg-snap`, { method: 'DELETE' });
    assert.equal(snap.status, 204);
    assert.equal(n('c').store.getSnapshot('snapregtest1'), undefined, 'deleted on C');
    assert.equal((await json<unknown>(`${n('a').url}/snapshots/reg-snap`)).status, 404);

    const twin = await fetch(`${n('b').url}/templates/twin-tpl`, { method: 'DELETE' });
    assert.equal(twin.status, 204, await twin.text());
    assert.equal(twin.headers.get('x-hearth-deleted-on'), 'node-b,node-a,node-c', 'this node first, then by id');
    for (const id of ['a', 'b', 'c']) assert.equal(n(id).store.getTemplate('twin-tpl'), undefined, `gone on ${id}`);

    const e2b = await fetch(`${n('b').url}/templates/snapregtest0`, { method: 'DELETE' });
    assert.equal(e2b.status, 204);
    assert.equal(n('a').store.getSnapshot('snapregtest0'), undefined, 'deleted on A');
    await until('the registry has no snapshots left', async () => (await n('c').cluster!.registry()).snapshots.length === 0, 20_000);
    const left = await json<SnapshotItem[]>(`${n('c').url}/snapshots`);
    assert.deepEqual(left.body, []);
  });
});
