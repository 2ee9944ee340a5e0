/**
 * Cluster mode (docs/cluster.md) with every node a real hearthd process: one
 * PostgreSQL from Debian's packages and three children running the built
 * daemon (`dist/daemon/main.js`; run `npm run build` first), each on its own
 * data dir, config.json, port, netns tag and slot range. What only separate
 * processes show: placement by each node's own admitted memory, and a SIGKILL
 * of a node's process (its VMs outlive it, the others report its sandboxes
 * `unknown`, a new process on the same data dir adopts them).
 *
 * Capacity is set per node with `memoryOvercommit` (admitted guest memory =
 * host RAM × it): node A admits 7 sandboxes of 384 MiB, node C 3, node B none,
 * so ten creates through A must end 7 / 0 / 3 whatever order ties break in.
 * The creates go one at a time (each placement then sees the last in its node's
 * heartbeat) and use warm templates, as hearthd does by default: each node boots
 * once for its snapshot and restores the rest in seconds. All but three of the
 * ten are destroyed before the kill.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { Sandbox } from '../../src/sdk/index.js';
import type { HearthConfig } from '../../src/daemon/config.js';
import type { NodeInfo } from '../../src/cluster/types.js';
import { chooseNetwork } from '../../src/network/netns/index.js';
import { qemuPidsUnder } from '../helpers/daemon.js';
import { DAEMON_MAIN, running, seedImage, sigkill, sigterm, spawnHearthd, tail, type ChildDaemon } from '../helpers/child-daemon.js';
import { until } from '../helpers/cluster.js';
import { freePort, postgresAvailable, startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { freeTestRange, randomTag, sweep, tagged } from '../helpers/netns.js';

const TOKEN = randomBytes(24).toString('hex');
const NODE_AUTH = { 'x-hearth-cluster-token': TOKEN, 'x-hearth-cluster-scope': 'local' };
const MIB = 384;
/** Sandboxes of MIB each that a node admits; its admitted memory is that plus half a sandbox (never room for one more). */
const ROOM: Record<string, number> = { a: 7, b: 0, c: 3 };
const admittedMib = (id: string): number => ROOM[id]! * MIB + MIB / 2;
const HOST_MIB = totalmem() / 1048576;

interface ProcNode {
  id: string;
  nodeId: string;
  dataDir: string;
  logPath: string;
  port: number;
  url: string;
  networkTag: string | null;
  daemon: ChildDaemon | null;
}

interface Listed { sandboxID: string; state: string; node?: string; lastKnownState?: string }

async function json<T>(url: string, init?: RequestInit): Promise<{ status: number; node: string | null; body: T }> {
  const r = await fetch(url, { signal: AbortSignal.timeout(180_000), ...init });
  const text = await r.text();
  return { status: r.status, node: r.headers.get('x-hearth-node'), body: (text ? JSON.parse(text) : null) as T };
}

describe('cluster mode: three hearthd processes on one PostgreSQL', { skip: !postgresAvailable() && 'PostgreSQL 15 (Debian) is not installed' }, () => {
  let pg: TestPostgres | undefined;
  let root = '';
  const nodes: Record<string, ProcNode> = {};
  const started: ChildDaemon[] = [];
  const owner: Record<string, string> = {}; // sandbox id → node id, as X-Hearth-Node named it
  const t0 = Date.now();
  const lap = (what: string): void => { process.stderr.write(`cluster-process.test: ${what} at ${((Date.now() - t0) / 1000).toFixed(1)} s\n`); };

  const start = async (n: ProcNode): Promise<ChildDaemon> => {
    // config.json alone configures the node (the test's HEARTH_* variables are not passed on),
    // so a restart is the same command on the same data dir.
    const d = await spawnHearthd({ dataDir: n.dataDir, port: n.port, logPath: n.logPath, isolateEnv: true, env: { HEARTH_LOG_LEVEL: 'info' } });
    started.push(d);
    n.daemon = d;
    return d;
  };
  const url = (id: string): string => nodes[id]!.url;
  const on = (nodeId: string): string[] => Object.keys(owner).filter((s) => owner[s] === nodeId);

  before(async () => {
    if (!existsSync(DAEMON_MAIN)) throw new Error(`${DAEMON_MAIN} missing: run npm run build first`);
    pg = await startPostgres();
    root = await mkdtemp(join(process.env['HEARTH_TEST_TMP'] ?? tmpdir(), 'hearth-cproc-'));
    const netns = (await chooseNetwork()).kind === 'netns';
    const ranges = new Set<string>();
    const tags = new Set<string>();
    for (const id of ['a', 'b', 'c']) {
      const dataDir = join(root, id);
      await mkdir(dataDir);
      const port = await freePort();
      let net: Partial<HearthConfig> = { network: 'user' };
      if (netns) {
        let tag = randomTag();
        while (tags.has(tag)) tag = randomTag();
        let range = await freeTestRange();
        while (ranges.has(range)) range = await freeTestRange();
        tags.add(tag);
        ranges.add(range);
        net = { network: 'netns', networkTag: tag, networkRange: range, networkPoolSize: 2, egressInterface: null };
      }
      const cfg: Partial<HearthConfig> = {
        host: '127.0.0.1', port,
        cacheDir: process.env['HEARTH_IMAGE_CACHE'] ?? '/var/cache/hearth',
        databaseUrl: pg.url, nodeId: `node-${id}`, clusterToken: TOKEN, clusterHeartbeatMs: 500, clusterNodeExpiryMs: 4000,
        warmTemplates: true, warmOnStart: false, defaultMemoryMib: MIB, bootTimeoutMs: 120_000,
        memoryOvercommit: admittedMib(id) / HOST_MIB,
        // Host-headroom admission off, as for every test daemon: tests assert behaviour, not the CI machine's load.
        admissionMaxLoadPerCpu: 0, admissionMinFreeMemoryMib: 0, admissionMinFreeDiskMib: 0,
        ...net,
      };
      await writeFile(join(dataDir, 'config.json'), JSON.stringify(cfg, null, 2));
      await seedImage(dataDir);
      nodes[id] = { id, nodeId: `node-${id}`, dataDir, logPath: `${dataDir}.log`, port, url: `http://127.0.0.1:${port}`, networkTag: net.networkTag ?? null, daemon: null };
    }
    await Promise.all(Object.values(nodes).map(start));
    lap(`3 hearthd processes up (data dirs ${root}/{a,b,c}, netns tags ${Object.values(nodes).map((n) => n.networkTag ?? 'none').join(', ')})`);
  });

  after(async () => {
    const problems: string[] = [];
    // Every node with a data dir is running again (a killed one is started on its data dir and
    // adopts its VMs); each destroys its own sandboxes (node credential, scope local: no PostgreSQL needed).
    for (const n of Object.values(nodes)) {
      if (!existsSync(join(n.dataDir, 'hearth.db'))) continue;
      try {
        const d = n.daemon?.running() ? n.daemon : await start(n);
        const list = await json<Listed[]>(`${d.url}/sandboxes`, { headers: NODE_AUTH });
        for (const s of list.body) {
          const r = await fetch(`${d.url}/sandboxes/${s.sandboxID}`, { method: 'DELETE', headers: NODE_AUTH, signal: AbortSignal.timeout(120_000) });
          if (r.status !== 204 && r.status !== 404) problems.push(`destroy ${s.sandboxID} on ${n.nodeId}: ${r.status}`);
        }
      } catch (err) {
        problems.push(`cleanup of ${n.nodeId}: ${String(err)}\n${tail(n.logPath)}`);
      }
    }
    for (const n of Object.values(nodes)) if (n.daemon) await sigterm(n.daemon).catch(() => undefined);
    for (const d of started) await sigkill(d).catch(() => undefined);
    // Last resort: QEMU processes our nodes started (their command lines name the data dir), by PID.
    for (const n of Object.values(nodes)) {
      for (const pid of qemuPidsUnder(n.dataDir)) {
        if (!running(pid)) continue;
        problems.push(`QEMU ${pid} of ${n.nodeId} left running`);
        try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      }
    }
    // Netns slots outlive a daemon by design (the next start reuses them); the test's go with it.
    for (const n of Object.values(nodes)) {
      if (!n.networkTag) continue;
      await sweep(n.networkTag);
      const t = await tagged(n.networkTag);
      const left = [...t.netns, ...t.links, ...t.tables];
      if (left.length) problems.push(`network objects of ${n.nodeId} left after the sweep: ${left.join(', ')}`);
    }
    if (root) await rm(root, { recursive: true, force: true });
    await pg?.stop();
    if (problems.length) throw new Error(`cleanup:\n${problems.join('\n')}`);
  });

  test('three processes register; GET /nodes shows each one\'s admitted memory', async () => {
    const pids = Object.values(nodes).map((n) => n.daemon!.pid);
    assert.equal(new Set([...pids, process.pid]).size, 4, 'three processes, none of them this one');
    const list = await until('3 nodes up', async () => {
      const r = await json<NodeInfo[]>(`${url('b')}/nodes`);
      return r.body.filter((n) => n.state === 'up').length === 3 ? r.body : null;
    });
    assert.deepEqual(list.map((n) => n.id), ['node-a', 'node-b', 'node-c']);
    for (const n of list) {
      const id = n.id.slice(5);
      assert.equal(n.address, url(id));
      assert.ok(Math.abs(n.memoryTotalMib - admittedMib(id)) <= 1, `${n.id} admits ${n.memoryTotalMib} MiB, configured ${admittedMib(id)}`);
      assert.equal(n.memoryUsedMib, 0);
      // Placement counts min(admitted − used, MemAvailable): below this the host, not the configuration, would decide.
      assert.ok(n.memoryAvailableMib >= admittedMib('a'), `the host has ${n.memoryAvailableMib} MiB available, less than node A admits (${admittedMib('a')})`);
    }
  });

  test('ten creates through node A are placed by capacity: 7 on A, none on B (no room), 3 on C', async () => {
    // One at a time: each placement then sees the previous sandbox in its node's heartbeat.
    for (let i = 0; i < 10; i++) {
      const r = await json<{ sandboxID: string; state: string; memoryMB: number }>(`${url('a')}/sandboxes`, {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ templateID: 'base', timeout: 1800, memoryMB: MIB, metadata: { n: String(i) } }),
      });
      assert.equal(r.status, 201, `create ${i}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.state, 'running');
      assert.equal(r.body.memoryMB, MIB);
      assert.ok(r.node, 'X-Hearth-Node names the node');
      if (i === 0) assert.equal(r.node, 'node-a', 'the first create goes to the node with the most room');
      owner[r.body.sandboxID] = r.node;
      lap(`create ${i} on ${r.node}`);
    }
    assert.deepEqual([on('node-a').length, on('node-b').length, on('node-c').length], [7, 0, 3]);

    // Every node's list agrees with the X-Hearth-Node of the creates.
    const list = await json<Listed[]>(`${url('b')}/sandboxes`);
    assert.equal(list.status, 200);
    assert.deepEqual(Object.fromEntries(list.body.map((s) => [s.sandboxID, s.node])), owner);
    for (const id of ['a', 'c']) {
      const own = await json<Listed[]>(`${url(id)}/sandboxes`, { headers: NODE_AUTH });
      assert.deepEqual(own.body.map((s) => s.sandboxID).sort(), on(`node-${id}`).sort(), `node-${id}'s own list`);
    }
    const used = await until('heartbeats report the sandboxes', async () => {
      const r = await json<NodeInfo[]>(`${url('c')}/nodes`);
      const by = Object.fromEntries(r.body.map((n) => [n.id, n]));
      return by['node-a']?.sandboxes === 7 && by['node-c']?.sandboxes === 3 ? by : null;
    }, 10_000);
    assert.equal(used['node-a']!.memoryUsedMib, 7 * MIB);
    assert.equal(used['node-b']!.memoryUsedMib, 0);
    assert.equal(used['node-c']!.memoryUsedMib, 3 * MIB);

    // The cluster is full: the entry node tries itself and its own admission refuses.
    const full = await json<{ message: string }>(`${url('b')}/sandboxes`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ templateID: 'base', memoryMB: MIB }),
    });
    assert.equal(full.status, 503, JSON.stringify(full.body));
    assert.equal(full.node, 'node-b');

    // Keep one sandbox on A and two on C for what follows; the rest go (through node B: forwarded).
    const extra = [...on('node-a').slice(1), ...on('node-c').slice(2)];
    await Promise.all(extra.map(async (s) => {
      const r = await fetch(`${url('b')}/sandboxes/${s}`, { method: 'DELETE', signal: AbortSignal.timeout(120_000) });
      assert.equal(r.status, 204, `destroy ${s}`);
      delete owner[s];
    }));
    assert.deepEqual([on('node-a').length, on('node-c').length], [1, 2]);
    lap('10 placed, 7 destroyed');
  });

  test('SIGKILL of node C\'s process: its sandboxes are unknown; a new process on its data dir adopts them, processes and files intact', async () => {
    const [s1, s2] = on('node-c');
    assert.ok(s1 && s2);
    const before1 = await Sandbox.connect(s1, { url: url('a') });
    const marker = randomBytes(16).toString('hex');
    await before1.files.write('/tmp/before-kill.txt', marker);
    const bg = await before1.commands.run('setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!');
    const sleepPid = Number(bg.stdout.trim());
    assert.ok(sleepPid > 1, bg.stdout);
    const c = nodes['c']!;
    const vms = qemuPidsUnder(c.dataDir);
    assert.equal(vms.length, 2, 'node C runs two VMs');
    const oldPid = c.daemon!.pid;

    await sigkill(c.daemon!);
    assert.equal(c.daemon!.proc.signalCode, 'SIGKILL');
    lap('node C killed');
    for (const pid of vms) assert.ok(running(pid), `QEMU ${pid} outlives hearthd's SIGKILL`);

    await until('node C marked down', async () => {
      const r = await json<NodeInfo[]>(`${url('a')}/nodes`);
      return r.body.find((n) => n.id === 'node-c')?.state === 'down';
    }, 30_000);
    lap('node C seen down');
    const list = await json<Listed[]>(`${url('a')}/sandboxes`);
    assert.equal(list.status, 200);
    const by = Object.fromEntries(list.body.map((s) => [s.sandboxID, s]));
    assert.equal(list.body.length, 3, 'listed, not dropped');
    for (const s of [s1, s2]) {
      assert.equal(by[s]?.state, 'unknown');
      assert.equal(by[s]?.lastKnownState, 'running');
      assert.equal(by[s]?.node, 'node-c');
    }
    assert.equal(by[on('node-a')[0]!]?.state, 'running');
    for (const via of ['a', 'b']) {
      const got: { status: number; body: { state: string; node: string; lastKnownState: string } } = await json(`${url(via)}/sandboxes/${s1}`);
      assert.equal(got.status, 503, `GET through node-${via}`);
      assert.deepEqual([got.body.state, got.body.node, got.body.lastKnownState], ['unknown', 'node-c', 'running']);
    }
    // A command for it through A (the envd proxy) is refused the same way, not hung.
    const cmd = await fetch(`${url('a')}/sandboxes/${s2}/envd/process.Process/Start`, { method: 'POST', signal: AbortSignal.timeout(30_000) });
    assert.equal(cmd.status, 503);
    assert.equal(((await cmd.json()) as { state: string }).state, 'unknown');

    const d = await start(c);
    assert.notEqual(d.pid, oldPid, 'a new process');
    lap('node C restarted');
    for (const s of [s1, s2]) {
      await until(`${s} running through node A`, async () => {
        const r = await json<{ state: string }>(`${url('a')}/sandboxes/${s}`);
        return r.status === 200 && r.body.state === 'running';
      }, 60_000);
    }
    const after1 = await Sandbox.connect(s1, { url: url('a') });
    const check = await after1.commands.run(`cat /proc/${sleepPid}/comm; cat /tmp/before-kill.txt`);
    assert.equal(check.stdout, `sleep\n${marker}`, 'the same background process and the same file');
    const after2 = await Sandbox.connect(s2, { url: url('a') });
    assert.equal((await after2.commands.run('echo adopted')).stdout, 'adopted\n');
    assert.deepEqual(qemuPidsUnder(c.dataDir), vms, 'the same QEMU processes, adopted');
    const up = await until('all nodes up', async () => {
      const r = await json<NodeInfo[]>(`${url('b')}/nodes`);
      return r.body.every((n) => n.state === 'up') ? r.body : null;
    }, 20_000);
    assert.equal(up.length, 3);
    lap('node C adopted its sandboxes');
  });

  test('a template made on node A is pulled by node C with its warm snapshot; a create there restores from it', async () => {
    const src = on('node-a')[0]!;
    const marker = randomBytes(16).toString('hex');
    const sbx = await Sandbox.connect(src, { url: url('a') });
    await sbx.files.write('/home/user/pulled.txt', marker);
    const started = await json<{ templateID: string; buildID: string }>(`${url('a')}/templates`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'pulled-tpl', fromSandbox: src }),
    });
    assert.equal(started.status, 202, JSON.stringify(started.body));
    const built = await until('the template built on A (disk and warm snapshot)', async () => {
      const b = await json<{ status: string; error: string | null }>(`${url('a')}/templates/pulled-tpl/builds/${started.body.buildID}`);
      if (b.body.status === 'failed') throw new Error(`build failed: ${b.body.error}`);
      return b.body.status === 'ready' ? b.body : null;
    }, 300_000);
    assert.equal(built.status, 'ready');
    await until('A published it', async () => (await json<{ nodes: string[] }>(`${url('c')}/templates/pulled-tpl`)).body.nodes?.includes('node-a'), 20_000);
    lap('template built on A');

    const pulled = await json<{ from: string; pulled: string[]; warmSnapshots: number; bytes: number }>(`${url('c')}/templates/pulled-tpl/pull`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}',
    });
    assert.equal(pulled.status, 200, JSON.stringify(pulled.body));
    assert.equal(pulled.body.from, 'node-a');
    assert.deepEqual(pulled.body.pulled, ['pulled-tpl']);
    assert.ok(pulled.body.warmSnapshots >= 1, 'its warm snapshot came too');
    assert.ok(pulled.body.bytes > 1 << 20, `${pulled.body.bytes} bytes`);
    lap('template pulled by C');

    // A create pinned to C (sent as a node): restored from the copied warm snapshot, the template's disk inside.
    const made = await json<{ sandboxID: string; timings: { op: string } | null }>(`${url('c')}/sandboxes`, {
      method: 'POST', headers: { 'content-type': 'application/json', ...NODE_AUTH }, body: JSON.stringify({ templateID: 'pulled-tpl', timeout: 600 }),
    });
    assert.equal(made.status, 201, JSON.stringify(made.body));
    assert.equal(made.node, 'node-c');
    owner[made.body.sandboxID] = 'node-c';
    assert.equal(made.body.timings?.op, 'create (restore)', 'no cold boot: the warm snapshot was copied');
    const there = await Sandbox.connect(made.body.sandboxID, { url: url('b') });
    assert.equal((await there.commands.run('cat /home/user/pulled.txt')).stdout, marker);
    await until('both holders listed', async () => {
      const t = await json<{ nodes: string[] }>(`${url('b')}/templates/pulled-tpl`);
      return JSON.stringify(t.body.nodes) === JSON.stringify(['node-a', 'node-c']);
    }, 20_000);
    lap('sandbox from the pulled template on C');
  });

  test('destroys through node A end every VM of every node', async () => {
    await Promise.all(Object.keys(owner).map(async (s) => {
      const r = await fetch(`${url('a')}/sandboxes/${s}`, { method: 'DELETE', signal: AbortSignal.timeout(120_000) });
      assert.equal(r.status, 204, `destroy ${s}`);
    }));
    const list = await json<Listed[]>(`${url('b')}/sandboxes`);
    assert.deepEqual(list.body, []);
    for (const n of Object.values(nodes)) {
      await until(`no QEMU of ${n.nodeId}`, async () => qemuPidsUnder(n.dataDir).filter(running).length === 0, 30_000);
    }
    lap('all destroyed');
  });
});
