/**
 * Cluster mode (docs/cluster.md) with real parts: one PostgreSQL from Debian's
 * packages and three hearthd nodes in this process (own data dir, port, netns
 * tag and slot range each), three real QEMU sandboxes in all (the PTY and
 * exec tests reuse the one on node C).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { totalmem } from 'node:os';
import { join } from 'node:path';
import { Sandbox } from '../../src/sdk/index.js';
import { daemonOn, type TestDaemon } from '../helpers/daemon.js';
import { startClusterNode, until } from '../helpers/cluster.js';
import { Screen } from '../helpers/screen.js';
import { postgresAvailable, startPostgres, type TestPostgres } from '../helpers/postgres.js';
import type { NodeInfo, Placement } from '../../src/cluster/types.js';

const TOKEN = randomBytes(24).toString('hex');
const POST_JSON = { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' };
/** Node C's guest memory after its restart: one 384 MiB sandbox fits, two do not. */
const SMALL_NODE_MIB = 600;

async function json<T>(url: string, init?: RequestInit): Promise<{ status: number; node: string | null; body: T }> {
  const r = await fetch(url, init);
  const text = await r.text();
  return { status: r.status, node: r.headers.get('x-hearth-node'), body: (text ? JSON.parse(text) : null) as T };
}

describe('cluster mode: three nodes on one PostgreSQL', { skip: !postgresAvailable() && 'PostgreSQL 15 (Debian) is not installed' }, () => {
  let pg: TestPostgres;
  const nodes: Record<string, TestDaemon> = {};
  const owner: Record<string, string> = {}; // sandbox id → node id
  const closed = new Set<string>();
  const t0 = Date.now();
  const lap = (what: string): void => { process.stderr.write(`cluster.test: ${what} at ${((Date.now() - t0) / 1000).toFixed(1)} s\n`); };

  before(async () => {
    pg = await startPostgres();
    for (const id of ['a', 'b', 'c']) {
      nodes[id] = await startClusterNode(pg.url, id, TOKEN);
    }
    lap('3 nodes up');
  });

  after(async () => {
    for (const [id, d] of Object.entries(nodes)) {
      // A node a failed test left closed is started again on its data dir, so its sandboxes are destroyed too.
      const live = closed.has(id) ? await daemonOn(d.cfg).catch(() => null) : d;
      await (live ?? d).stop().catch((err: unknown) => process.stderr.write(`stop ${id}: ${String(err)}\n`));
    }
    await pg?.stop();
  });

  test('every node registers with its capacity; GET /nodes on any node lists them', async () => {
    const list = await until('3 nodes up', async () => {
      const r = await json<NodeInfo[]>(`${nodes['b']!.url}/nodes`);
      return r.body.filter((n) => n.state === 'up').length === 3 ? r.body : null;
    });
    assert.deepEqual(list.map((n) => n.id), ['node-a', 'node-b', 'node-c']);
    for (const n of list) {
      assert.ok(n.memoryTotalMib > 0 && n.cpus > 0 && n.diskFreeMib > 0, `capacity of ${n.id}`);
      assert.equal(n.address, nodes[n.id.slice(5)]!.url);
    }
  });

  test('creates through node A are placed by free capacity: one on each node', async () => {
    const made = await Promise.all([0, 1, 2].map(() => json<{ sandboxID: string; state: string }>(`${nodes['a']!.url}/sandboxes`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ templateID: 'base', timeout: 1800 }),
    })));
    for (const m of made) {
      assert.equal(m.status, 201, JSON.stringify(m.body));
      assert.equal(m.body.state, 'running');
      owner[m.body.sandboxID] = m.node!;
    }
    assert.deepEqual(Object.values(owner).sort(), ['node-a', 'node-b', 'node-c'], 'spread over the nodes');
    for (const [id, n] of Object.entries(owner)) assert.ok(nodes[n.slice(5)]!.store.getSandbox(id), `${id} is in ${n}'s own SQLite`);
    lap('3 sandboxes created');
  });

  const onNode = (n: string): string => Object.entries(owner).find(([, o]) => o === n)![0];

  test('GET /sandboxes on any node lists the cluster\'s sandboxes with their node', async () => {
    const r = await json<{ sandboxID: string; node: string; state: string }[]>(`${nodes['b']!.url}/sandboxes`);
    assert.equal(r.status, 200);
    assert.deepEqual(Object.fromEntries(r.body.map((s) => [s.sandboxID, s.node])), owner);
    assert.ok(r.body.every((s) => s.state === 'running'));
  });

  test('GET /v2/sandboxes (E2B\'s paged list) on any node pages through the whole cluster in start order', async () => {
    const seen: { sandboxID: string; startedAt: string }[] = [];
    let token: string | null = null;
    for (let i = 0; i < 5; i++) {
      const r = await fetch(`${nodes['b']!.url}/v2/sandboxes?limit=1&order=asc${token ? `&nextToken=${token}` : ''}`);
      assert.equal(r.status, 200);
      const page = await r.json() as { sandboxID: string; startedAt: string }[];
      assert.equal(page.length, 1);
      seen.push(...page);
      token = r.headers.get('x-next-token');
      if (!token) break;
    }
    assert.deepEqual(seen.map((s) => s.sandboxID).sort(), Object.keys(owner).sort(), 'every sandbox once, from all three nodes');
    assert.deepEqual(seen.map((s) => s.startedAt), seen.map((s) => s.startedAt).sort(), 'in start order across nodes');
    const bad = await fetch(`${nodes['a']!.url}/v2/sandboxes?nextToken=garbage`);
    assert.equal(bad.status, 400);
  });

  test('exec and files through node B into the sandbox on node C (SDK, unchanged)', async () => {
    const id = onNode('node-c');
    const sbx = await Sandbox.connect(id, { url: nodes['b']!.url });
    const r = await sbx.commands.run('echo "hello from $(hostname)"; cat /proc/1/comm');
    assert.equal(r.exitCode, 0);
    assert.match(r.stdout, /^hello from /);
    const data = randomBytes(3 << 20);
    await sbx.files.write('/tmp/through-b.bin', data);
    const back = await sbx.files.read('/tmp/through-b.bin', { format: 'bytes' });
    assert.ok(Buffer.from(back).equals(data), '3 MiB round trip through two nodes');
    const streamed: string[] = [];
    await sbx.commands.run('for i in 1 2 3; do echo line$i; sleep 0.2; done', { onStdout: (d) => { streamed.push(d); } });
    assert.equal(streamed.join(''), 'line1\nline2\nline3\n');
    const info = await json<{ sandboxID: string }>(`${nodes['b']!.url}/sandboxes/${id}`);
    assert.equal(info.node, 'node-c', 'answered by the owner');
    lap('exec and files through B');
  });

  test('a PTY through node A into the sandbox on node C: type, read, resize, kill (SDK, unchanged)', async () => {
    const id = onNode('node-c');
    const sbx = await Sandbox.connect(id, { url: nodes['a']!.url });
    const screen = new Screen();
    const term = await sbx.pty.create({ cols: 80, rows: 24, onData: screen.onData });
    assert.ok(term.pid > 0);
    let mark = screen.text.length;
    await term.sendInput('echo hel""lo-from-$(hostname | wc -c); tput cols\n');
    await screen.waitFor(/(^|[\r\n])hello-from-\d+\r\n80\r\n/, mark);
    await term.resize({ cols: 100, rows: 30 });
    mark = screen.text.length;
    await term.sendInput('stty size\n');
    await screen.waitFor(/(^|[\r\n])30 100\r\n/, mark);
    assert.equal(await term.kill(), true);
    assert.equal((await term.wait())?.exitCode, -1, 'killed: the end event came back through node A');
    assert.equal(await sbx.pty.kill(term.pid), false, 'gone');
    lap('PTY through A');
  });

  test('cluster headers from a client are stripped; a wrong token is not a node credential', async () => {
    const id = onNode('node-c');
    // A client claiming to be a node with a wrong token: stripped, so A forwards it as any client request.
    const r = await json<unknown>(`${nodes['a']!.url}/sandboxes/${id}`, { headers: { 'x-hearth-cluster-token': 'x'.repeat(48), 'x-hearth-cluster-scope': 'local' } });
    assert.equal(r.status, 200);
    assert.equal(r.node, 'node-c', 'scope local ignored: forwarded to the owner');
    const list = await json<unknown[]>(`${nodes['a']!.url}/sandboxes`, { headers: { 'x-hearth-cluster-token': 'nope', 'x-hearth-cluster-scope': 'local' } });
    assert.equal(list.body.length, 3, 'the whole cluster, not node A alone');
  });

  test('node-only routes (a sandbox sent here, a template\'s files) refuse clients, forged or encoded', async () => {
    const forged = { 'x-hearth-cluster-token': 'x'.repeat(48), 'x-hearth-forwarded-by': 'node-b' };
    // A client pushing a "moved" sandbox into node A: refused before a byte is read, nothing written.
    const push = await fetch(`${nodes['a']!.url}/cluster/imports`, {
      method: 'POST', headers: { 'content-type': 'application/vnd.hearth.move', ...forged }, body: Buffer.from('M\0\0\0\x02{}'),
    });
    assert.equal(push.status, 403);
    // Reading a template's disk or warm snapshots: forged token, none, and an encoded path.
    for (const path of ['/cluster/templates/base/export', '/cluster/templates/base/warm', '/cluster/templates/base/warm/x/export', '/cluster/templates/..%2F..%2Fetc/export', '/%63luster/templates/base/export']) {
      for (const headers of [forged, {}]) {
        const r = await fetch(`${nodes['a']!.url}${path}`, { headers });
        assert.ok(r.status === 403 || r.status === 404 || r.status === 400, `${path}: ${r.status}`);
        assert.notEqual(r.headers.get('content-type'), 'application/vnd.hearth.move', `${path} sent a transfer to a client`);
      }
    }
    assert.equal((await fetch(`${nodes['a']!.url}/cluster/templates/base/export`, { headers: forged })).status, 403);
    // Moving or pulling as a client is an API call (a key where keys are required), never a node credential.
    const mv = await json<{ message: string }>(`${nodes['a']!.url}/sandboxes/${onNode('node-c')}/move`, { method: 'POST', headers: { 'content-type': 'application/json', ...forged }, body: JSON.stringify({ node: 'node-c' }) });
    assert.equal(mv.status, 409, 'forwarded to the owner as a client request, which refuses a move to itself');
  });

  test('a node stopped without cleanup: its sandboxes become unknown on the others; its restart adopts them', async () => {
    const id = onNode('node-c');
    const c = nodes['c']!;
    await c.manager.settled();
    await c.close(); // VMs keep running, the node row is left as it was: as if hearthd were killed
    closed.add('c');
    lap('node C closed');
    await until('node C marked down', async () => {
      const r = await json<NodeInfo[]>(`${nodes['a']!.url}/nodes`);
      return r.body.find((n) => n.id === 'node-c')?.state === 'down';
    }, 20_000);
    const gone = await json<{ state: string; lastKnownState: string }>(`${nodes['a']!.url}/sandboxes/${id}`);
    assert.equal(gone.status, 503);
    assert.equal(gone.body.state, 'unknown');
    assert.equal(gone.body.lastKnownState, 'running');
    const list = await json<{ sandboxID: string; state: string }[]>(`${nodes['b']!.url}/sandboxes`);
    assert.equal(list.body.find((s) => s.sandboxID === id)?.state, 'unknown', 'listed, not dropped');
    assert.equal(list.body.length, 3);
    lap('node C seen down');

    // Back with room for one 384 MiB sandbox only: the move test below fills it.
    nodes['c'] = await daemonOn({ ...c.cfg, memoryOvercommit: SMALL_NODE_MIB / (totalmem() / 1048576) });
    closed.delete('c');
    await until('node C up with its sandbox running again', async () => {
      const r = await json<{ state: string }>(`${nodes['a']!.url}/sandboxes/${id}`);
      return r.status === 200 && r.body.state === 'running';
    }, 30_000);
    const sbx = await Sandbox.connect(id, { url: nodes['a']!.url });
    assert.equal((await sbx.commands.run('cat /tmp/through-b.bin | wc -c')).stdout.trim(), String(3 << 20), 'the same VM, adopted');
    lap('node C back, sandbox adopted');
  });

  test('a paused sandbox on a full node resumes on another node with its processes intact; a move no node can take leaves it paused', async () => {
    const id = onNode('node-c');
    const c = nodes['c']!;
    const sbx = await Sandbox.connect(id, { url: nodes['a']!.url });
    const pid = (await sbx.commands.run('setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!')).stdout.trim();
    await sbx.files.write('/tmp/moved.txt', 'before the move');
    const bootId = (await sbx.commands.run('cat /proc/sys/kernel/random/boot_id')).stdout;
    assert.equal((await fetch(`${nodes['a']!.url}/sandboxes/${id}/pause`, POST_JSON)).status, 204);
    // Node C fills up: a create pinned there (sent as a node, so it is not placed elsewhere).
    const filler = await json<{ sandboxID: string }>(`${c.url}/sandboxes`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-hearth-cluster-token': TOKEN }, body: JSON.stringify({ templateID: 'base', timeout: 600 }),
    });
    assert.equal(filler.status, 201, JSON.stringify(filler.body));
    assert.equal(filler.node, 'node-c');
    assert.match(c.manager.admissionRefusal(384) ?? '', /capacity/, 'node C has no room left for the paused sandbox');
    lap('sandbox on C paused, C full');

    // A move to the full node is refused, and the sandbox stays paused where it is.
    const refused = await json<{ message: string }>(`${nodes['b']!.url}/sandboxes/${id}/move`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ node: 'node-c' }) });
    assert.equal(refused.status, 409, JSON.stringify(refused.body));
    assert.match(refused.body.message, /already on node node-c/);

    // Resume through node A: C has no room, so the sandbox moves to the node with the most free memory, and resumes there.
    const t0 = Date.now();
    const resumed = await json<{ state: string }>(`${nodes['a']!.url}/sandboxes/${id}/resume`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    assert.equal(resumed.status, 201, JSON.stringify(resumed.body));
    assert.equal(resumed.body.state, 'running');
    const to = resumed.node!;
    assert.ok(to === 'node-a' || to === 'node-b', `resumed on ${to}`);
    lap(`moved C → ${to} and resumed in ${Date.now() - t0} ms`);
    assert.equal(c.store.getSandbox(id), undefined, 'nothing of it left in C\'s SQLite');
    assert.equal(existsSync(join(c.cfg.dataDir, 'sandboxes', id)), false, 'nor in C\'s data dir');
    assert.equal(nodes[to.slice(5)]!.store.getSandbox(id)?.state, 'running');
    assert.equal((await nodes['b']!.cluster!.placement(id))?.nodeId, to, 'the cluster places it on its new node');
    const moved = await Sandbox.connect(id, { url: nodes['b']!.url });
    assert.equal((await moved.commands.run(`kill -0 ${pid} && cat /tmp/moved.txt && cat /proc/sys/kernel/random/boot_id`)).stdout, `before the move${bootId}`, 'same process, same file, same boot');
    owner[id] = to;

    // An explicit move (an operator draining a node) of a paused sandbox to the third node, then a resume there.
    const other = to === 'node-a' ? 'node-b' : 'node-a';
    assert.equal((await fetch(`${c.url}/sandboxes/${id}/pause`, POST_JSON)).status, 204);
    const mv = await json<{ node: string; from: string; bytes: number }>(`${c.url}/sandboxes/${id}/move`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ node: other }) });
    assert.equal(mv.status, 200, JSON.stringify(mv.body));
    assert.equal(mv.body.node, other);
    assert.equal(mv.body.from, to);
    assert.ok(mv.body.bytes > 1 << 20 && mv.body.bytes < 1 << 30, `${mv.body.bytes} bytes sent: the written parts only`);
    const again = await json<{ state: string }>(`${c.url}/sandboxes/${id}/resume`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    assert.equal(again.status, 201, JSON.stringify(again.body));
    assert.equal(again.node, other);
    assert.equal((await moved.commands.run(`kill -0 ${pid} && cat /tmp/moved.txt`)).stdout, 'before the move');
    owner[id] = other;
    assert.equal((await fetch(`${c.url}/sandboxes/${filler.body.sandboxID}`, { method: 'DELETE' })).status, 204);
    lap('explicit move and resume');
  });

  test('PostgreSQL restarted mid-run: local operations go on, nothing is lost', async () => {
    const idB = onNode('node-b');
    const idA = onNode('node-a');
    await pg.halt();
    lap('PostgreSQL stopped');
    // A lifecycle operation on B while PostgreSQL is down: not blocked, not failed.
    const del = await fetch(`${nodes['b']!.url}/sandboxes/${idB}`, { method: 'DELETE' });
    assert.equal(del.status, 204);
    // A's own sandboxes still answer through A.
    const sbx = await Sandbox.connect(idA, { url: nodes['a']!.url });
    assert.equal((await sbx.commands.run('echo still')).stdout, 'still\n');
    await until('B notices', async () => (await json<{ databaseReachable: boolean }>(`${nodes['b']!.url}/cluster`)).body.databaseReachable === false, 10_000);
    await pg.start();
    lap('PostgreSQL started again');
    const placements = await until('B re-published its change', async () => {
      const ps = await nodes['a']!.cluster!.placements();
      return ps.find((p) => p.sandboxId === idB)?.state === 'destroyed' ? ps : null;
    }, 30_000);
    const by = Object.fromEntries(placements.map((p: Placement) => [p.sandboxId, p]));
    for (const id of Object.keys(owner)) if (id !== idB) assert.equal(by[id]?.state, 'running', `${id} kept its state`);
    assert.equal(by[idA]?.nodeId, 'node-a');
    const up = await until('all nodes up again', async () => {
      const r = await json<NodeInfo[]>(`${nodes['c']!.url}/nodes`);
      return r.body.every((n) => n.state === 'up') ? r.body : null;
    }, 20_000);
    assert.equal(up.length, 3);
    lap('after PostgreSQL restart');
  });
});
