/**
 * Reliability (issue #8): what survives a daemon SIGKILL, and what one sandbox's
 * abuse does to the others. Real hearthd processes, real QEMU VMs.
 *
 *   node --import tsx --test --test-timeout=900000 test/integration/reliability.test.ts
 *
 * The SIGKILL suite runs the built daemon (`dist/daemon/main.js`, so run `npm run
 * build` first) as a child process on its own data dir; the default image is the
 * one `testImage()` built or reused, hard-linked (or copied) into that data dir so
 * the child finds it instead of building it again.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import Database from 'better-sqlite3';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Sandbox, CommandExitError } from '../../src/sdk/index.js';
import { qemuPidsUnder, startTestDaemon, testImage, type TestDaemon } from '../helpers/daemon.js';
import { DAEMON_MAIN, running, seedImage, sigkill, sigterm, spawnHearthd, type ChildDaemon } from '../helpers/child-daemon.js';
import { freePort } from '../helpers/postgres.js';
import { chooseNetwork } from '../../src/network/netns/index.js';
import { freeTestRange, randomTag, sweep } from '../helpers/netns.js';

// The child daemons run sandboxes as hearthd does by default here (netns slots), with this test's
// own tag and range; their slots outlive them by design, so the after-hook sweeps the tag.
const netTag = randomTag();
const netEnv: Record<string, string> = (await chooseNetwork()).kind === 'netns'
  ? { HEARTH_NETWORK: 'netns', HEARTH_NETWORK_TAG: netTag, HEARTH_NETWORK_RANGE: await freeTestRange(), HEARTH_NETWORK_POOL_SIZE: '2' }
  : { HEARTH_NETWORK: 'user' };

// ───────────────────────────── helpers ─────────────────────────────

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs: number, everyMs = 250): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(everyMs);
  }
}

const started: ChildDaemon[] = [];

/** A hearthd child process (the real entry point, as `hearth up` starts it) on a free port. */
async function spawnDaemon(dataDir: string, logPath: string): Promise<ChildDaemon> {
  const d = await spawnHearthd({
    dataDir, port: await freePort(), logPath,
    env: {
      ...netEnv,
      HEARTH_CACHE_DIR: process.env['HEARTH_IMAGE_CACHE'] ?? '/var/cache/hearth',
      HEARTH_BOOT_TIMEOUT_MS: '120000',
      HEARTH_LOG_LEVEL: 'info',
      // Host-headroom admission off: tests assert behaviour, not the CI machine's load.
      HEARTH_ADMISSION_MAX_LOAD_PER_CPU: '0', HEARTH_ADMISSION_MIN_FREE_MEMORY_MIB: '0', HEARTH_ADMISSION_MIN_FREE_DISK_MIB: '0',
    },
  });
  started.push(d);
  return d;
}

async function api<T>(url: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  const r = await fetch(`${url}${path}`, {
    method,
    headers: body !== undefined ? { 'content-type': 'application/json' } : {},
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    signal: AbortSignal.timeout(180_000),
  });
  const text = await r.text();
  return { status: r.status, body: (text ? JSON.parse(text) : undefined) as T };
}

interface Listed { sandboxID: string; state: string }

const COUNTER = `setsid sh -c 'echo $$ > /tmp/c.pid; i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 0.2; done' </dev/null >/dev/null 2>&1 &
sleep 0.5; cat /tmp/c.pid`;

async function counter(s: Sandbox): Promise<{ pid: number; n: number; alive: boolean }> {
  const r = await s.commands.run('p=$(cat /tmp/c.pid); echo "$p $(cat /tmp/c) $(kill -0 $p 2>/dev/null && echo up || echo down)"', { timeoutMs: 60_000 });
  const [pid, n, up] = r.stdout.trim().split(' ');
  return { pid: Number(pid), n: Number(n), alive: up === 'up' };
}

function testRoot(): string {
  return process.env['HEARTH_TEST_TMP'] ?? tmpdir();
}

// ───────────────────────── daemon SIGKILL ─────────────────────────

describe('hearthd SIGKILL: running VMs survive and are adopted', () => {
  let dataDir = '';
  let logPath = '';
  let current: ChildDaemon | undefined;
  const seenQemu = new Set<number>();

  before(async () => {
    if (!existsSync(DAEMON_MAIN)) throw new Error(`${DAEMON_MAIN} missing: run npm run build first`);
    dataDir = await mkdtemp(join(testRoot(), 'hearth-rel-'));
    logPath = `${dataDir}.log`;
    await seedImage(dataDir);
  });

  after(async () => {
    // Whatever happened: stop our daemon, destroy every sandbox through a daemon we start,
    // then kill only the QEMU processes our daemons started, and remove the data dir.
    if (current) await sigkill(current).catch(() => undefined);
    if (dataDir && existsSync(join(dataDir, 'hearth.db'))) {
      let d: ChildDaemon | undefined;
      try {
        d = await spawnDaemon(dataDir, logPath);
        const list = await api<Listed[]>(d.url, 'GET', '/sandboxes');
        for (const s of list.body) await api(d.url, 'DELETE', `/sandboxes/${s.sandboxID}`).catch(() => undefined);
      } catch (e) {
        process.stderr.write(`reliability cleanup: ${String(e)}\n`);
      } finally {
        if (d) await sigterm(d).catch(() => undefined);
      }
    }
    for (const pid of [...seenQemu, ...qemuPidsUnder(dataDir || '/nonexistent')]) {
      if (running(pid)) { process.stderr.write(`reliability cleanup: killing leftover QEMU ${pid}\n`); try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
    }
    for (const d of started) await sigkill(d).catch(() => undefined);
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
    if (logPath) await rm(logPath, { force: true });
    if (netEnv['HEARTH_NETWORK_TAG']) await sweep(netTag);
  });

  test('5 running sandboxes survive a SIGKILL of hearthd; the next daemon adopts them; destroy leaves nothing', async () => {
    const t0 = Date.now();
    current = await spawnDaemon(dataDir, logPath);
    const url = current.url;
    const boxes = await Promise.all(Array.from({ length: 5 }, (_, i) => Sandbox.create({ url, timeoutMs: 3_600_000, metadata: { n: String(i) } })));
    const before = new Map<string, { qemu: number; pid: number; n: number }>();
    for (const s of boxes) {
      const started = await s.commands.run(COUNTER, { timeoutMs: 60_000 });
      const pid = Number(started.stdout.trim());
      assert.ok(pid > 1, `counter pid: ${started.stdout}`);
      const info = await s.getInfo();
      assert.ok(info.vmm, 'a running sandbox has a VMM');
      seenQemu.add(info.vmm.pid);
      before.set(s.id, { qemu: info.vmm.pid, pid, n: 0 });
    }
    for (const s of boxes) {
      const c = await counter(s);
      assert.equal(c.pid, before.get(s.id)!.pid);
      before.get(s.id)!.n = c.n;
    }
    const created = Date.now();

    await sigkill(current);
    current = undefined;
    const qemu = [...before.values()].map((b) => b.qemu).sort((a, b) => a - b);
    for (const pid of qemu) assert.ok(running(pid), `QEMU ${pid} must outlive hearthd's SIGKILL`);
    assert.deepEqual(qemuPidsUnder(dataDir), qemu, 'exactly our 5 QEMU processes run under the data dir');
    await sleep(1500); // the guests keep counting with no daemon at all

    current = await spawnDaemon(dataDir, logPath);
    const restarted = Date.now();
    const list = await api<Listed[]>(current.url, 'GET', '/sandboxes');
    assert.equal(list.status, 200);
    assert.deepEqual(list.body.map((s) => s.sandboxID).sort(), [...before.keys()].sort(), 'all 5 are listed');
    for (const s of list.body) assert.equal(s.state, 'running', `${s.sandboxID} is adopted as running`);
    for (const [id, b] of before) {
      const s = await Sandbox.connect(id, { url: current.url });
      const info = await s.getInfo();
      assert.equal(info.vmm?.pid, b.qemu, 'the same QEMU process, adopted (not a new boot)');
      const c = await counter(s);
      assert.equal(c.pid, b.pid, 'the same counter process in the guest');
      assert.ok(c.alive, 'the counter process is alive');
      assert.ok(c.n > b.n + 5, `the counter kept increasing (${b.n} → ${c.n})`);
      const r = await s.commands.run('echo adopted-$((6*7))', { timeoutMs: 60_000 });
      assert.equal(r.stdout, 'adopted-42\n');
      await sleep(500);
      assert.ok((await counter(s)).n > c.n, 'and keeps counting');
    }

    for (const id of before.keys()) await Sandbox.kill(id, { url: current.url });
    const destroyed = Date.now();
    for (const pid of qemu) assert.equal(running(pid), false, `QEMU ${pid} is gone after destroy`);
    assert.deepEqual(qemuPidsUnder(dataDir), [], 'no QEMU process under the data dir');
    const dirs = existsSync(join(dataDir, 'sandboxes')) ? await readdir(join(dataDir, 'sandboxes')) : [];
    assert.deepEqual(dirs, [], 'no sandbox directory left');
    assert.deepEqual((await api<Listed[]>(current.url, 'GET', '/sandboxes')).body, [], 'nothing listed');
    const rec = await api<Record<string, unknown[]>>(current.url, 'GET', '/admin/reconcile');
    if (rec.status === 200) for (const [k, v] of Object.entries(rec.body)) if (Array.isArray(v)) assert.deepEqual(v, [], `reconcile found nothing to do (${k})`);
    process.stderr.write(`sigkill-adopt: create+counters ${created - t0} ms, restart ${restarted - created} ms, checks ${destroyed - restarted} ms (incl. destroy)\n`);
  });

  // recover() resumes and adopts a VM caught in pause's snapshot/flush steps (frozen, not stopped).
  test('SIGKILL while a pause is in flight: the sandbox is never lost and no QEMU is stray', async () => {
    current ??= await spawnDaemon(dataDir, logPath);
    const s = await Sandbox.create({ url: current.url, timeoutMs: 3_600_000 });
    const pid = Number((await s.commands.run(COUNTER, { timeoutMs: 60_000 })).stdout.trim());
    const qemu = (await s.getInfo()).vmm!.pid;
    seenQemu.add(qemu);

    const pausing = fetch(`${current.url}/sandboxes/${s.id}/pause`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
      .then((r) => r.status, (e: unknown) => `error: ${String(e)}`);
    await sleep(50);
    await sigkill(current);
    current = undefined;
    const pauseOutcome = await pausing;
    process.stderr.write(`pause-kill: the pause request ended with ${pauseOutcome}; QEMU ${qemu} ${running(qemu) ? 'still alive' : 'exited'} after the kill\n`);

    current = await spawnDaemon(dataDir, logPath);
    const url = current.url;
    const info = await Sandbox.getInfo(s.id, { url });
    process.stderr.write(`pause-kill: after restart the sandbox is ${info.state}${info.endReason ? ` (${info.endReason})` : ''}\n`);
    const live = info.state === 'running' && info.vmm ? [info.vmm.pid] : [];
    assert.deepEqual(qemuPidsUnder(dataDir), live, 'no stray QEMU: only a running sandbox has one');
    if (info.state !== 'running' && info.state !== 'paused') await Sandbox.kill(s.id, { url }).catch(() => undefined);
    assert.ok(info.state === 'running' || info.state === 'paused', `the sandbox must be running or paused after the restart, not ${info.state} (${info.endReason ?? ''})`);
    if (info.state === 'paused') {
      const r = await api(url, 'POST', `/sandboxes/${s.id}/resume`, {});
      assert.ok(r.status >= 200 && r.status < 300, `resume: ${r.status} ${JSON.stringify(r.body)}`);
    }
    const again = await Sandbox.connect(s.id, { url });
    assert.equal((await again.getInfo()).state, 'running');
    const c = await counter(again);
    assert.equal(c.pid, pid, 'the guest kept its processes');
    assert.ok(c.alive);
    for (const q of qemuPidsUnder(dataDir)) seenQemu.add(q);
    assert.equal((await again.commands.run('echo ok')).stdout, 'ok\n');

    await again.kill();
    assert.deepEqual(qemuPidsUnder(dataDir), []);
    const dirs = existsSync(join(dataDir, 'sandboxes')) ? await readdir(join(dataDir, 'sandboxes')) : [];
    assert.deepEqual(dirs, [], 'no sandbox directory left');
    await sigterm(current);
    current = undefined;
    assert.deepEqual(qemuPidsUnder(dataDir), []);
  });

  // The ledger records every step of a resume as it is taken; recovery releases what the resume took and puts
  // the disk back into the paused capture, so the sandbox is paused again and the next resume works.
  test('SIGKILL mid-resume: the sandbox is paused again with its disk in place, and the next resume continues every process', async () => {
    current ??= await spawnDaemon(dataDir, logPath);
    const s = await Sandbox.create({ url: current.url, timeoutMs: 3_600_000 });
    const pid = Number((await s.commands.run(COUNTER, { timeoutMs: 60_000 })).stdout.trim());
    seenQemu.add((await s.getInfo()).vmm!.pid);
    const paused = await api(current.url, 'POST', `/sandboxes/${s.id}/pause`, {});
    assert.ok(paused.status >= 200 && paused.status < 300, `pause: ${paused.status}`);

    // Kill the daemon once its journal says the resume is past the disk attach (the disk has left paused/).
    const db = new Database(join(dataDir, 'hearth.db'), { readonly: true, fileMustExist: true });
    const resuming = fetch(`${current.url}/sandboxes/${s.id}/resume`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
      .then((r) => r.status, (e: unknown) => `error: ${String(e)}`);
    let step = '';
    try {
      step = await waitFor('the resume to pass its disk attach', () => {
        const row = db.prepare(`SELECT step FROM journal WHERE sandbox_id = ? AND op = 'resume'`).get(s.id) as { step: string } | undefined;
        return row && ['memory', 'restore', 'agent', 'init'].includes(row.step) ? row.step : undefined;
      }, 60_000, 5);
    } finally {
      db.close();
    }
    await sigkill(current);
    current = undefined;
    process.stderr.write(`resume-kill: killed at step ${step}; the request ended with ${await resuming}\n`);
    for (const q of qemuPidsUnder(dataDir)) seenQemu.add(q);

    current = await spawnDaemon(dataDir, logPath);
    const url = current.url;
    const info = await Sandbox.getInfo(s.id, { url });
    assert.equal(info.state, 'paused', `after the restart the sandbox is paused again (${info.endReason ?? ''})`);
    assert.deepEqual(qemuPidsUnder(dataDir), [], 'the VM the interrupted resume started is gone');
    assert.ok(readdirSync(join(dataDir, 'sandboxes', s.id, 'paused')).includes('meta.json'), 'the paused capture is intact');
    const r = await api(url, 'POST', `/sandboxes/${s.id}/resume`, {});
    assert.ok(r.status >= 200 && r.status < 300, `the next resume works: ${r.status} ${JSON.stringify(r.body)}`);
    const again = await Sandbox.connect(s.id, { url });
    for (const q of qemuPidsUnder(dataDir)) seenQemu.add(q);
    const c = await counter(again);
    assert.equal(c.pid, pid, 'the guest kept its processes');
    assert.ok(c.alive);
    assert.equal((await again.commands.run('echo ok')).stdout, 'ok\n');
    await again.kill();
    assert.deepEqual(qemuPidsUnder(dataDir), []);
    await sigterm(current);
    current = undefined;
  });
});

// ───────────────────────── isolation under abuse ─────────────────────────

/**
 * Create, retried once when the agent's /init timed out: on this 2-core TCG host, with other
 * VM suites running, /init's fixed 10 s deadline is sometimes missed. That is not what these
 * tests are about, so it is logged (and reported in docs/reliability.md), not hidden.
 */
async function createForAbuse(opts: Parameters<typeof Sandbox.create>[0]): Promise<Sandbox> {
  try {
    return await Sandbox.create(opts);
  } catch (e) {
    if (!/create failed at init: timed out/.test(String(e))) throw e;
    process.stderr.write(`isolation: create retried after ${String(e)}\n`);
    return Sandbox.create(opts);
  }
}

describe('isolation: one sandbox abusing CPU, processes, memory or its disk does not hurt the others', () => {
  let d: TestDaemon;

  before(async () => { d = await startTestDaemon(); });
  after(async () => { await d?.stop(); });

  test('a fork bomb in A: B still answers exec within seconds, the API answers, A is destroyed cleanly', async () => {
    const [a, b] = await Promise.all([createForAbuse({ url: d.url }), createForAbuse({ url: d.url })]);
    const qemuA = (await a.getInfo()).vmm!.pid;
    assert.equal((await b.commands.run('echo b')).stdout, 'b\n');
    // The classic bomb, detached from the agent's process group so the exec returns.
    await a.commands.run(`setsid bash -c ':(){ :|:& };:' </dev/null >/dev/null 2>&1 & echo started`, { timeoutMs: 30_000 });
    await sleep(3000); // let it grow
    const execMs: number[] = [];
    const apiMs: number[] = [];
    const end = Date.now() + 20_000;
    while (Date.now() < end) {
      let t = Date.now();
      const r = await b.commands.run('echo $((40+2))', { timeoutMs: 30_000 });
      execMs.push(Date.now() - t);
      assert.equal(r.stdout, '42\n');
      t = Date.now();
      const l = await fetch(`${d.url}/sandboxes`, { signal: AbortSignal.timeout(10_000) });
      assert.equal(l.status, 200);
      apiMs.push(Date.now() - t);
      await sleep(500);
    }
    process.stderr.write(`fork bomb: B exec ms ${JSON.stringify(execMs)}; API ms ${JSON.stringify(apiMs)}\n`);
    assert.ok(Math.max(...execMs) < 5000, `B answered every exec within 5 s (max ${Math.max(...execMs)} ms)`);
    assert.ok(Math.max(...apiMs) < 2000, `the API answered within 2 s (max ${Math.max(...apiMs)} ms)`);
    const t = Date.now();
    await a.kill(AbortSignal.timeout(60_000));
    process.stderr.write(`fork bomb: destroying A took ${Date.now() - t} ms\n`);
    assert.equal(running(qemuA), false, 'A\'s QEMU is gone');
    assert.equal((await a.getInfo()).state, 'destroyed');
    assert.equal(existsSync(join(d.cfg.dataDir, 'sandboxes', a.id)), false, 'A\'s directory is gone');
    assert.equal((await b.commands.run('echo still')).stdout, 'still\n');
    await b.kill();
  });

  test('a memory hog in A is OOM-killed inside the guest; QEMU\'s RSS stays bounded; A still answers', async () => {
    const memoryMb = 512;
    const a = await createForAbuse({ url: d.url, memoryMb });
    const qemu = (await a.getInfo()).vmm!.pid;
    const oomKills = async (): Promise<number> => {
      const r = await a.commands.run('cat /sys/fs/cgroup/hearth/user/memory.events 2>/dev/null || true');
      const m = /oom_kill (\d+)/.exec(r.stdout);
      return m ? Number(m[1]) : -1;
    };
    const k0 = await oomKills();
    let peak = rssMiB(qemu);
    const sampler = setInterval(() => { try { peak = Math.max(peak, rssMiB(qemu)); } catch { /* exited */ } }, 100);
    const t = Date.now();
    let hog: { exitCode: number; errorText?: string | undefined };
    try {
      // Touch every byte (b'x' * n fills the buffer), 16 MiB at a time, well past 512 MiB.
      const r = await a.commands.run(['python3', '-c', 'a=[]\nwhile len(a) < 256: a.append(b"x" * (16 << 20))\nprint("survived")'], { timeoutMs: 60_000 });
      hog = { exitCode: r.exitCode };
    } catch (e) {
      if (!(e instanceof CommandExitError)) throw e;
      hog = { exitCode: e.exitCode, errorText: e.errorText };
    } finally {
      clearInterval(sampler);
    }
    const k1 = await oomKills();
    process.stderr.write(`memory hog: ended after ${Date.now() - t} ms with exit ${hog.exitCode} (${hog.errorText ?? ''}); oom_kill ${k0} → ${k1}; QEMU RSS peak ${Math.round(peak)} MiB for a ${memoryMb} MiB guest\n`);
    assert.notEqual(hog.exitCode, 0, 'the hog did not survive');
    assert.ok(hog.exitCode === 137 || hog.exitCode === -1 || /kill/i.test(hog.errorText ?? ''), `killed by a signal: exit ${hog.exitCode} ${hog.errorText ?? ''}`);
    if (k0 >= 0) assert.ok(k1 > k0, `the guest's OOM killer acted in the user cgroup (oom_kill ${k0} → ${k1})`);
    assert.ok(peak < memoryMb + 384, `QEMU RSS peak ${Math.round(peak)} MiB stays within the guest's ${memoryMb} MiB + 384 MiB overhead`);
    assert.ok(running(qemu), 'the VM is still running');
    assert.equal((await a.commands.run('echo alive')).stdout, 'alive\n', 'A still answers');
    const f = await a.commands.run('free -m | head -2');
    assert.match(f.stdout, /Mem:/);
    await a.kill();
    assert.equal(running(qemu), false);
  });

  test('rm -rf / in A: B and the template image are untouched, and A is destroyed cleanly', async () => {
    const [a, b] = await Promise.all([createForAbuse({ url: d.url }), createForAbuse({ url: d.url })]);
    const image = (await testImage()).rootfsPath;
    const before = statSync(image);
    await b.files.write('/home/user/keep.txt', 'b is fine');
    // Detached so the exec returns; the agent (already in memory) may lose its own files.
    await a.commands.run('setsid sh -c "rm -rf --no-preserve-root / >/dev/null 2>&1" </dev/null >/dev/null 2>&1 & echo started', { timeoutMs: 30_000 });
    await sleep(8000);
    assert.equal(await b.files.read('/home/user/keep.txt'), 'b is fine');
    assert.equal((await b.commands.run('ls /usr/bin | wc -l')).stdout.trim() !== '0', true, 'B still has its files');
    const after = statSync(image);
    assert.equal(after.mtimeMs, before.mtimeMs, 'the template image was not written');
    assert.equal(after.ctimeMs, before.ctimeMs, 'nor its inode changed');
    const qemuA = (await a.getInfo()).vmm!.pid;
    await a.kill();
    assert.equal(running(qemuA), false);
    await b.kill();
  });
});
