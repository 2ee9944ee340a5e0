/**
 * Contract tests of the Firecracker driver: real processes (a fake
 * `firecracker` executable serving a spec-validating stand-in API on
 * --api-sock), real sockets, real files, real userfaultfd for Uffd restores.
 * Every request the driver sends is validated against the API spec; every
 * test ends with no spec violation, and every failure leaves no process and
 * no socket behind.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ConflictError, HostFailureError, TimeoutError } from '../../src/core/errors.js';
import { FirecrackerDriver, type FirecrackerDriverOptions } from '../../src/vmm/firecracker/driver.js';
import { FirecrackerVmm } from '../../src/vmm/firecracker/vmm.js';
import { sandboxMmds, type FirecrackerVmConfig } from '../../src/vmm/firecracker/config.js';
import { uffdAddonAvailable } from '../../src/memory/uffd/native.js';
import { readWorkingSet, WORKING_SET_FILE } from '../../src/memory/uffd/working-set.js';
import type { SnapshotFiles, VmNetwork } from '../../src/vmm/types.js';
import { alive, makeFakeFirecracker, makeFakeJailer, type FakeFirecracker } from '../fixtures/fc/harness.js';

const MiB = 1024 * 1024;
const isRoot = process.getuid?.() === 0;
const noUffd = uffdAddonAvailable() ? false : 'the hearth_uffd addon is not built (npm run build:native)';

let dir: string;
let kernel: string;
const vmms: FirecrackerVmm[] = [];
const pids = new Set<number>();
const sig = () => AbortSignal.timeout(30_000);

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hearth-fc-contract-'));
  kernel = join(dir, 'vmlinux');
  await writeFile(kernel, 'not really a kernel');
});

after(async () => {
  for (const v of vmms) await v.stop().catch(() => {});
  for (const pid of pids) if (await alive(pid)) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  await rm(dir, { recursive: true, force: true });
});

/** Tap networking through a namespace path that exists (this process's own netns) when root; else no NIC. */
function network(tapName = 'tap0'): VmNetwork {
  return isRoot
    ? { kind: 'tap', netnsName: 'net', tapName, mac: '06:00:AC:10:00:02' }
    : { kind: 'user', forwards: [], guestCidr: '10.0.2.0/24', gateway: '10.0.2.2' };
}

async function config(name: string, over: Partial<FirecrackerVmConfig> = {}): Promise<FirecrackerVmConfig> {
  const runDir = join(dir, 'sandboxes', name);
  await mkdir(runDir, { recursive: true });
  const rootfs = join(runDir, 'rootfs.ext4');
  if (!existsSync(rootfs)) await writeFile(rootfs, Buffer.alloc(MiB));
  return {
    sandboxId: name, vcpus: 1, memoryMib: 64, kernelPath: kernel, kernelArgs: 'quiet', rootfsPath: rootfs,
    memoryFilePath: join(runDir, 'memory'), runDir, consoleLogPath: join(runDir, 'console.log'), network: network(), ...over,
  };
}

function driver(fake: FakeFirecracker, over: FirecrackerDriverOptions = {}): FirecrackerDriver {
  return new FirecrackerDriver({
    firecrackerBinary: fake.binary,
    version: '1.16.1',
    isolation: isRoot ? 'mountns' : 'none',
    mountnsRoot: join(dir, 'fc-vm-mnt'),
    netnsDir: `/proc/${process.pid}/ns`,
    allowNoNetwork: !isRoot,
    startTimeoutMs: 10_000,
    stopTermMs: 2000,
    ...over,
  });
}

function track(v: FirecrackerVmm): FirecrackerVmm {
  vmms.push(v);
  return v;
}

/** No process, no socket, no record left by a VM that failed or stopped. */
async function assertClean(v: FirecrackerVmm, runDir: string): Promise<void> {
  if (v.pid > 0) assert.equal(await alive(v.pid), false, `process ${v.pid} is gone`);
  const root = v.rootDir ?? join(runDir, 'fc');
  const left = existsSync(root) ? await readdir(root) : [];
  const sockets = left.filter((n) => n.endsWith('.sock') || n.includes('.sock_'));
  assert.deepEqual(sockets, [], `no sockets left in ${root}`);
  assert.equal(existsSync(join(runDir, 'firecracker.json')), false, 'no VM record left');
}

async function noViolations(fake: FakeFirecracker): Promise<void> {
  assert.deepEqual(await fake.violations(), []);
}

function sha(b: Buffer): string { return createHash('sha256').update(b).digest('hex'); }

describe('Firecracker driver against the stand-in API', () => {
  test('boot, agent over vsock, pause/resume, full snapshot, stop, restore elsewhere with another tap', async () => {
    const fake = await makeFakeFirecracker(dir, 'fc-life');
    const drv = driver(fake);
    const cfg = await config('ilife1', { mmds: sandboxMmds('ilife1', 'tok-123') });
    const vm = track(drv.create());
    await vm.boot(cfg, sig());
    pids.add(vm.pid);
    assert.equal(vm.state, 'Running');
    const bootCalls = await fake.calls();
    const nic = isRoot ? ['PUT /network-interfaces/eth0'] : [];
    const mmds = isRoot ? ['PUT /mmds/config', 'PUT /mmds'] : [];
    assert.deepEqual(bootCalls, ['GET /', 'PUT /logger', 'PUT /metrics', 'PUT /machine-config', 'PUT /boot-source', 'PUT /drives/rootfs', ...nic, 'PUT /vsock', 'PUT /entropy', ...mmds, 'PUT /actions']);
    const reqs = await fake.requests();
    if (isRoot) {
      const body = reqs.find((r) => r.path === '/mmds')!.body as Record<string, string>;
      assert.equal(body.accessTokenHash, sha(Buffer.from('tok-123')));
      const start = (await fake.entries()).find((e) => e.kind === 'start')!;
      assert.equal(start.cwd, join(dir, 'fc-vm-mnt'), 'Firecracker runs in the constant mount-namespace path');
    }
    assert.deepEqual(reqs.find((r) => r.path === '/drives/rootfs')!.body, { drive_id: 'rootfs', path_on_host: 'rootfs', is_root_device: true, is_read_only: false, cache_type: 'Unsafe', io_engine: 'Sync' });
    const record = JSON.parse(await readFile(join(cfg.runDir, 'firecracker.json'), 'utf8')) as { pid: number; id: string };
    assert.equal(record.pid, vm.pid);
    assert.equal(record.id, 'hearth-ilife1');

    const agent = vm.agentClient();
    assert.equal(await agent.health(sig()), true);
    assert.equal((await agent.request({ path: '/whoami' })).body.toString(), 'hearth-ilife1 gen 1');
    await vm.pause(sig());
    assert.equal((await vm.describe()).state, 'Paused');
    await vm.resume(sig());
    assert.equal((await agent.request({ path: '/whoami' })).body.toString(), 'hearth-ilife1 gen 2');

    const snapDir = join(dir, 'snaps', 'life');
    const snap = await vm.snapshot(snapDir, 'full', sig());
    // The driver reports every file it wrote: the core moves exactly these.
    assert.deepEqual(snap, {
      dir: snapDir, statePath: join(snapDir, 'vmstate'), memoryPath: join(snapDir, 'memory'),
      files: [join(snapDir, 'vmstate'), join(snapDir, 'memory'), join(snapDir, 'firecracker.json')],
    });
    assert.deepEqual((await readdir(snapDir)).sort(), ['firecracker.json', 'memory', 'vmstate']);
    assert.equal((await stat(snap.memoryPath)).size, 64 * MiB);
    const meta = JSON.parse(await readFile(join(snapDir, 'firecracker.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(meta.snapshotType, 'Full');
    assert.equal(meta.firecrackerVersion, '1.16.1');
    assert.equal(vm.state, 'Paused', 'a snapshot leaves the VM paused');
    assert.deepEqual((await fake.calls()).slice(-3), ['GET /', 'PATCH /vm', 'PUT /snapshot/create'], 'state, pause, create');
    // The snapshot reset every vsock connection; after resume the client reconnects.
    await vm.resume(sig());
    assert.equal((await agent.request({ path: '/whoami' })).body.toString(), 'hearth-ilife1 gen 3');
    const connects = (await fake.entries()).filter((e) => e.kind === 'vsock-connect').length;
    assert.ok(connects >= 2, `reconnected after the transport reset (${connects} CONNECTs)`);
    await vm.stop(sig());
    assert.equal((await vm.exited).signal, 'SIGTERM');
    await assertClean(vm, cfg.runDir);

    // Restore as another sandbox, in another root, with another tap.
    const fake2 = await makeFakeFirecracker(dir, 'fc-life2');
    const cfg2 = await config('ilife2', { network: network('tap1'), mmds: sandboxMmds('ilife2', 'tok-456') });
    const vm2 = track(driver(fake2).create());
    await vm2.restore(snap, cfg2, sig());
    pids.add(vm2.pid);
    assert.deepEqual(await fake2.calls(), ['GET /', 'PUT /logger', 'PUT /metrics', 'PUT /snapshot/load', ...(isRoot ? ['PUT /mmds'] : [])]);
    const load = (await fake2.requests()).find((r) => r.path === '/snapshot/load')!.body as Record<string, unknown>;
    assert.deepEqual(load.mem_backend, { backend_type: 'File', backend_path: snap.memoryPath });
    assert.equal(load.snapshot_path, snap.statePath);
    assert.equal(load.resume_vm, true);
    if (isRoot) assert.deepEqual(load.network_overrides, [{ iface_id: 'eth0', host_dev_name: 'tap1' }]);
    assert.equal((await vm2.agentClient().request({ path: '/whoami' })).body.toString(), 'hearth-ilife2 gen 3', 'the restored guest resumes from generation 2');
    await vm2.stop(sig());
    await assertClean(vm2, cfg2.runDir);
    await noViolations(fake);
    await noViolations(fake2);
  });

  test('Uffd restore: memory is served by the page server; a snapshot of it faults everything in', { skip: noUffd }, async () => {
    const fake = await makeFakeFirecracker(dir, 'fc-uffd');
    const cfg = await config('iuffd0');
    const vm = track(driver(fake).create());
    await vm.boot(cfg, sig());
    pids.add(vm.pid);
    const s1 = await vm.snapshot(join(dir, 'snaps', 'uffd1'), 'full', sig());
    await vm.stop(sig());
    const mem1 = await readFile(s1.memoryPath);

    const udrv = driver(fake, { memoryBackend: 'uffd' });
    const cfgA = await config('iuffda');
    const a = track(udrv.create());
    await a.restore(s1, cfgA, sig());
    pids.add(a.pid);
    const load = (await fake.requests()).filter((r) => r.path === '/snapshot/load').at(-1)!.body as { mem_backend: { backend_type: string; backend_path: string } };
    assert.equal(load.mem_backend.backend_type, 'Uffd');
    assert.equal(load.mem_backend.backend_path, join(a.rootDir!, 'uffd.sock'));
    const touched = (await fake.entries()).filter((e) => e.kind === 'uffd-touched').at(-1)!;
    assert.equal(touched.sha256, sha(mem1.subarray(0, 16 * 4096)), 'pages faulted during the load come from the memory file');
    let st = a.pageServerStats()!;
    assert.equal(st.state, 'serving');
    assert.ok(st.faults >= 16, `faults: ${st.faults}`);
    assert.equal(st.peerPid, a.pid);
    // Ready: the working set is saved beside the snapshot.
    await a.markReady();
    const ws = await readWorkingSet(join(s1.dir, WORKING_SET_FILE));
    assert.ok(ws && ws.pages.length >= 16, 'working set recorded');
    const s2 = await a.snapshot(join(dir, 'snaps', 'uffd2'), 'full', sig());
    for (let i = 0; i < 200 && (st = a.pageServerStats()!).copiedPages + st.zeroPages < 64 * MiB / 4096; i++) await new Promise((r) => setTimeout(r, 5));
    assert.equal(st.copiedPages + st.zeroPages, 64 * MiB / 4096, 'the full snapshot faulted every page in');
    const mem2 = await readFile(s2.memoryPath);
    let differing = 0;
    for (let p = 0; p < mem1.length / 4096; p++) {
      const x = mem1.subarray(p * 4096, (p + 1) * 4096);
      const y = mem2.subarray(p * 4096, (p + 1) * 4096);
      if (!x.equals(y)) { differing++; assert.match(y.toString('latin1', 0, 40), /^gen \d+ page/); }
    }
    assert.ok(differing > 0 && differing <= 8, `only the pages the guest wrote differ (${differing})`);
    await a.stop(sig());
    assert.equal(a.pageServerStats()!.state, 'exited');
    await assertClean(a, cfgA.runDir);

    // The next restore prefetches the working set.
    const cfgB = await config('iuffdb');
    const b = track(udrv.create());
    await b.restore(s1, cfgB, sig());
    pids.add(b.pid);
    const stB = b.pageServerStats()!;
    assert.ok(stB.prefetchTotal >= 16, `prefetch list: ${stB.prefetchTotal}`);
    await b.stop(sig());
    await assertClean(b, cfgB.runDir);
    await noViolations(fake);
  });

  test('Diff snapshots become complete memory files; without dirty tracking "diff" writes a Full', async () => {
    const fake = await makeFakeFirecracker(dir, 'fc-diff');
    const drv = driver(fake, { diffSnapshots: true });
    const cfg = await config('idiff1');
    const vm = track(drv.create());
    await vm.boot(cfg, sig());
    pids.add(vm.pid);
    assert.equal(((await fake.requests()).find((r) => r.path === '/machine-config')!.body as Record<string, unknown>).track_dirty_pages, true);
    const d1 = await vm.snapshot(join(dir, 'snaps', 'd1'), 'diff', sig());
    const d1Stat = await stat(d1.memoryPath);
    assert.equal(d1Stat.size, 64 * MiB);
    assert.ok(d1Stat.blocks * 512 < 8 * MiB, 'the first diff after boot is sparse');
    await vm.resume(sig());
    const d2 = await vm.snapshot(join(dir, 'snaps', 'd2'), 'diff', sig());
    const creates = (await fake.requests()).filter((r) => r.path === '/snapshot/create').map((r) => (r.body as { snapshot_type: string }).snapshot_type);
    assert.deepEqual(creates, ['Diff', 'Diff']);
    const text = (await readFile(d2.memoryPath)).toString('latin1');
    assert.ok(text.includes('gen 1 page') && text.includes('gen 2 page'), 'the second diff holds the first one\'s pages (written onto a copy of it)');
    await vm.stop(sig());
    const cfg2 = await config('idiff2');
    const vm2 = track(drv.create());
    await vm2.restore(d2, cfg2, sig());
    pids.add(vm2.pid);
    const load = (await fake.requests()).filter((r) => r.path === '/snapshot/load').at(-1)!.body as Record<string, unknown>;
    assert.equal(load.track_dirty_pages, true);
    assert.equal((await vm2.agentClient().request({ path: '/whoami' })).body.toString(), 'hearth-idiff2 gen 3');
    await vm2.stop(sig());

    const plain = driver(fake);
    const vm3 = track(plain.create());
    const cfg3 = await config('idiff3');
    await vm3.boot(cfg3, sig());
    pids.add(vm3.pid);
    await vm3.snapshot(join(dir, 'snaps', 'd3'), 'diff', sig());
    assert.equal((JSON.parse(await readFile(join(dir, 'snaps', 'd3', 'firecracker.json'), 'utf8')) as { snapshotType: string }).snapshotType, 'Full');
    await vm3.stop(sig());
    await noViolations(fake);
  });

  test('a failure at each boot step: the error carries fault_message, no process or socket is left', async () => {
    const steps = ['PUT /logger', 'PUT /metrics', 'PUT /machine-config', 'PUT /boot-source', 'PUT /drives/rootfs', 'PUT /vsock', 'PUT /entropy', 'PUT /actions'];
    if (isRoot) steps.push('PUT /network-interfaces/eth0', 'PUT /mmds/config', 'PUT /mmds');
    for (const [i, step] of steps.entries()) {
      const fake = await makeFakeFirecracker(dir, `fc-fail-${i}`, { FAKE_FC_FAIL: step });
      const cfg = await config(`ifail${i}`);
      const vm = track(driver(fake).create());
      const err = await vm.boot(cfg, sig()).catch((e: unknown) => e);
      if (vm.pid > 0) pids.add(vm.pid);
      assert.ok(err instanceof HostFailureError, `${step}: ${String(err)}`);
      assert.match((err as Error).message, new RegExp(`injected failure of ${step.replace('/', '\\/')}`));
      assert.match((err as Error).message, /^boot of sandbox ifail/);
      await assertClean(vm, cfg.runDir);
      assert.equal((await vm.exited).signal, 'SIGKILL');
      await noViolations(fake);
    }
  });

  test('a crash during configuration and a hung call are reported; nothing is left', async () => {
    const crash = await makeFakeFirecracker(dir, 'fc-crash', { FAKE_FC_CRASH: 'PUT /boot-source' });
    const cfg = await config('icrash');
    const vm = track(driver(crash).create());
    const err = await vm.boot(cfg, sig()).then(() => new Error('expected a failure'), (e: unknown) => e as Error);
    pids.add(vm.pid);
    assert.ok(err instanceof HostFailureError);
    assert.equal((await vm.exited).code, 1);
    await assertClean(vm, cfg.runDir);

    const hang = await makeFakeFirecracker(dir, 'fc-hang', { FAKE_FC_HANG: 'PUT /vsock' });
    const cfg2 = await config('ihang');
    const vm2 = track(driver(hang, { apiTimeoutMs: 600 }).create());
    const err2 = await vm2.boot(cfg2, sig()).then(() => new Error('expected a failure'), (e: unknown) => e as Error);
    pids.add(vm2.pid);
    assert.ok(err2 instanceof TimeoutError, String(err2));
    assert.match(err2.message, /PUT \/vsock did not answer within 600 ms/);
    await assertClean(vm2, cfg2.runDir);
  });

  test('start failures: exit at start, no API socket, missing binary; a stale socket is removed first', async () => {
    const exits = await makeFakeFirecracker(dir, 'fc-exit', { FAKE_FC_EXIT_AT_START: '1' });
    const c1 = await config('iexit');
    const v1 = track(driver(exits).create());
    const e1 = await v1.boot(c1, sig()).then(() => new Error('expected a failure'), (e: unknown) => e as Error);
    assert.match(e1.message, /exited with status 1 \(generic error\) during start: .*\/dev\/kvm: permission denied/s);
    await assertClean(v1, c1.runDir);

    const silent = await makeFakeFirecracker(dir, 'fc-silent', { FAKE_FC_NO_SOCKET: '1' });
    const c2 = await config('isilent');
    const v2 = track(driver(silent, { startTimeoutMs: 1500 }).create());
    const e2 = await v2.boot(c2, sig()).then(() => new Error('expected a failure'), (e: unknown) => e as Error);
    pids.add(v2.pid);
    assert.ok(e2 instanceof TimeoutError);
    assert.match(e2.message, /did not answer on .*api\.sock within 1500 ms/);
    await assertClean(v2, c2.runDir);

    const c3 = await config('inobin');
    const v3 = track(new FirecrackerDriver({ firecrackerBinary: join(dir, 'no-such-firecracker'), version: '1.16.1', isolation: 'none', allowNoNetwork: true, netnsDir: `/proc/${process.pid}/ns` }).create());
    await assert.rejects(v3.boot(c3, sig()), /cannot start .*no-such-firecracker|no-such-firecracker: No such file/);
    await assertClean(v3, c3.runDir);

    const ok = await makeFakeFirecracker(dir, 'fc-stale');
    const c4 = await config('istale');
    await mkdir(join(c4.runDir, 'fc'), { recursive: true });
    await writeFile(join(c4.runDir, 'fc', 'api.sock'), 'stale');
    await writeFile(join(c4.runDir, 'fc', 'v.sock'), 'stale');
    const v4 = track(driver(ok).create());
    await v4.boot(c4, sig());
    pids.add(v4.pid);
    await v4.stop(sig());
    await assertClean(v4, c4.runDir);
  });

  test('restore failures: a rejected load (the process exits), wrong size, wrong release, damaged state', async () => {
    const fake = await makeFakeFirecracker(dir, 'fc-rsrc');
    const cfg = await config('irsrc');
    const src = track(driver(fake).create());
    await src.boot(cfg, sig());
    pids.add(src.pid);
    const snap = await src.snapshot(join(dir, 'snaps', 'rfail'), 'full', sig());
    await src.stop(sig());

    const failing = await makeFakeFirecracker(dir, 'fc-rfail', { FAKE_FC_FAIL: 'PUT /snapshot/load' });
    const c1 = await config('irfail1');
    const v1 = track(driver(failing).create());
    await assert.rejects(v1.restore(snap, c1, sig()), /restore of sandbox irfail1 from .*injected failure of PUT \/snapshot\/load/);
    pids.add(v1.pid);
    await assertClean(v1, c1.runDir);

    const c2 = await config('irfail2', { memoryMib: 128 });
    const v2 = track(driver(fake).create());
    await assert.rejects(v2.restore(snap, c2, sig()), ConflictError, 'a snapshot of another shape is a conflict (409), not bad input');
    assert.equal(v2.pid, 0, 'refused before spawning');

    const odd: SnapshotFiles = { dir: join(dir, 'snaps', 'rfail-old'), statePath: '', memoryPath: '' };
    await mkdir(odd.dir, { recursive: true });
    for (const f of ['vmstate', 'memory']) await writeFile(join(odd.dir, f), await readFile(join(snap.dir, f)));
    odd.statePath = join(odd.dir, 'vmstate');
    odd.memoryPath = join(odd.dir, 'memory');
    const meta = JSON.parse(await readFile(join(snap.dir, 'firecracker.json'), 'utf8')) as Record<string, unknown>;
    await writeFile(join(odd.dir, 'firecracker.json'), JSON.stringify({ ...meta, firecrackerVersion: '1.15.1' }));
    const v3 = track(driver(fake).create());
    await assert.rejects(v3.restore(odd, await config('irfail3'), sig()), /written by Firecracker 1\.15\.1/);
    assert.equal(v3.pid, 0);

    await writeFile(join(odd.dir, 'firecracker.json'), JSON.stringify(meta));
    await writeFile(odd.statePath, 'garbage');
    const c4 = await config('irfail4');
    const v4 = track(driver(fake).create());
    const e4 = await v4.restore(odd, c4, sig()).then(() => new Error('expected a failure'), (e: unknown) => e as Error);
    pids.add(v4.pid);
    assert.match(e4.message, /Load snapshot error: Cannot open snapshot file/);
    await assertClean(v4, c4.runDir);
    await noViolations(fake);
    await noViolations(failing);
  });

  test('a failure at each restore step (File and Uffd): no process, no socket, no page server left', async () => {
    const fake = await makeFakeFirecracker(dir, 'fc-rsteps-src');
    const c0 = await config('irsteps0');
    const src = track(driver(fake).create());
    await src.boot(c0, sig());
    pids.add(src.pid);
    const snap = await src.snapshot(join(dir, 'snaps', 'rsteps'), 'full', sig());
    await src.stop(sig());
    const backends = noUffd ? ['file' as const] : ['file' as const, 'uffd' as const];
    const steps = ['PUT /logger', 'PUT /metrics', 'PUT /snapshot/load', ...(isRoot ? ['PUT /mmds'] : [])];
    let n = 0;
    for (const backend of backends) {
      for (const step of steps) {
        const f = await makeFakeFirecracker(dir, `fc-rstep-${n}`, { FAKE_FC_FAIL: step });
        const c = await config(`irstep${n++}`);
        const v = track(driver(f, { memoryBackend: backend, uffd: { recordWorkingSet: false, acceptTimeoutMs: 2000 } }).create());
        const err = await v.restore(snap, c, sig()).then(() => new Error('expected a failure'), (e: unknown) => e as Error);
        if (v.pid > 0) pids.add(v.pid);
        assert.match(err.message, new RegExp(`injected failure of ${step.replace('/', '\\/')}`), `${backend} ${step}`);
        await assertClean(v, c.runDir);
        if (backend === 'uffd') assert.notEqual(v.pageServerStats()?.state, 'serving', 'the page server is stopped');
        await noViolations(f);
      }
    }
  });

  test('Uffd: a handshake the page server rejects fails the restore and kills Firecracker', { skip: noUffd }, async () => {
    const fake = await makeFakeFirecracker(dir, 'fc-uffdbad');
    const c0 = await config('iuffdbad0');
    const src = track(driver(fake).create());
    await src.boot(c0, sig());
    pids.add(src.pid);
    const snap = await src.snapshot(join(dir, 'snaps', 'uffdbad'), 'full', sig());
    await src.stop(sig());
    // The VM state says 128 MiB, the memory file (and the sidecar) 64 MiB: the regions Firecracker sends do not fit the file.
    const state = JSON.parse(await readFile(snap.statePath, 'utf8')) as { machine: Record<string, unknown> };
    state.machine.mem_size_mib = 128;
    await writeFile(snap.statePath, JSON.stringify(state));
    const c = await config('iuffdbad');
    const v = track(driver(fake, { memoryBackend: 'uffd', uffd: { recordWorkingSet: false } }).create());
    const err = await v.restore(snap, c, sig()).then(() => new Error('expected a failure'), (e: unknown) => e as Error);
    if (v.pid > 0) pids.add(v.pid);
    assert.match(err.message, /handshake failed: uffd handshake: the regions total 134217728 bytes but the memory file has 67108864/);
    await assertClean(v, c.runDir);
  });

  test('pause and snapshot failures keep the VM usable; a hung snapshot times out', async () => {
    const fake = await makeFakeFirecracker(dir, 'fc-pfail', { FAKE_FC_FAIL: 'PATCH /vm' });
    const cfg = await config('ipfail');
    const vm = track(driver(fake).create());
    await vm.boot(cfg, sig());
    pids.add(vm.pid);
    await assert.rejects(vm.pause(sig()), /pause of sandbox ipfail: .*injected failure of PATCH \/vm/);
    assert.equal((await vm.describe()).state, 'Running');
    await vm.stop(sig());
    await assertClean(vm, cfg.runDir);

    const sfake = await makeFakeFirecracker(dir, 'fc-sfail', { FAKE_FC_FAIL: 'PUT /snapshot/create' });
    const c2 = await config('isfail');
    const v2 = track(driver(sfake).create());
    await v2.boot(c2, sig());
    pids.add(v2.pid);
    const sdir = join(dir, 'snaps', 'sfail');
    await assert.rejects(v2.snapshot(sdir, 'full', sig()), /injected failure of PUT \/snapshot\/create/);
    assert.deepEqual(await readdir(sdir), [], 'no partial snapshot files');
    assert.equal((await v2.describe()).state, 'Paused');
    await v2.resume(sig());
    assert.equal((await v2.agentClient().request({ path: '/whoami' })).status, 200);
    await v2.stop(sig());
    await assertClean(v2, c2.runDir);

    const hfake = await makeFakeFirecracker(dir, 'fc-shang', { FAKE_FC_HANG: 'PUT /snapshot/create' });
    const c3 = await config('ishang');
    const v3 = track(driver(hfake, { snapshotTimeoutMs: 700 }).create());
    await v3.boot(c3, sig());
    pids.add(v3.pid);
    await assert.rejects(v3.snapshot(join(dir, 'snaps', 'shang'), 'full', sig()), TimeoutError);
    await v3.stop(sig());
    await assertClean(v3, c3.runDir);
    for (const f of [fake, sfake, hfake]) await noViolations(f);
  });

  test('stop: SIGTERM then SIGKILL after the bound; SendCtrlAltDel when enabled', async () => {
    const stubborn = await makeFakeFirecracker(dir, 'fc-stubborn', { FAKE_FC_IGNORE_SIGTERM: '1' });
    const cfg = await config('istub');
    const vm = track(driver(stubborn, { stopTermMs: 300 }).create());
    await vm.boot(cfg, sig());
    pids.add(vm.pid);
    const t0 = Date.now();
    await vm.stop(sig());
    assert.ok(Date.now() - t0 >= 300);
    assert.equal((await vm.exited).signal, 'SIGKILL');
    await assertClean(vm, cfg.runDir);

    const polite = await makeFakeFirecracker(dir, 'fc-cad');
    const c2 = await config('icad');
    const v2 = track(driver(polite, { stopCtrlAltDelMs: 3000 }).create());
    await v2.boot(c2, sig());
    pids.add(v2.pid);
    await v2.stop(sig());
    assert.deepEqual(await v2.exited, { code: 0, signal: null });
    assert.ok((await polite.calls()).includes('PUT /actions'));
    await assertClean(v2, c2.runDir);
    await v2.stop(sig()); // idempotent
  });

  test('a dead page server is reported and its VM is killed', { skip: noUffd }, async () => {
    const fake = await makeFakeFirecracker(dir, 'fc-psdead');
    const cfg = await config('ipsd0');
    const src = track(driver(fake).create());
    await src.boot(cfg, sig());
    pids.add(src.pid);
    const snap = await src.snapshot(join(dir, 'snaps', 'psdead'), 'full', sig());
    await src.stop(sig());
    const c1 = await config('ipsd1');
    const vm = track(driver(fake, { memoryBackend: 'uffd', uffd: { recordWorkingSet: false } }).create());
    await vm.restore(snap, c1, sig());
    pids.add(vm.pid);
    (vm as unknown as { pageServer: { debugCrash(): void } }).pageServer.debugCrash();
    const exit = await Promise.race([vm.exited, new Promise((r) => setTimeout(() => r('timeout'), 5000))]);
    assert.deepEqual(exit, { code: null, signal: 'SIGKILL' });
    assert.match(vm.failure!.message, /page server of sandbox ipsd1 failed: .*injected crash/);
    await vm.stop(sig());
    await assertClean(vm, c1.runDir);
  });

  test('adopt: a later daemon re-attaches by pid and API socket; gone or unusable VMs give null', async () => {
    const fake = await makeFakeFirecracker(dir, 'fc-adopt');
    const cfg = await config('iadopt');
    const first = track(driver(fake).create());
    await first.boot(cfg, sig());
    pids.add(first.pid);
    const handle = FirecrackerDriver.handleOf(first);
    const later = driver(fake);
    assert.equal(await later.adopt({ ...handle, pid: handle.pid + 100000 }), null, 'another pid: not ours');
    const adopted = await later.adopt(handle);
    assert.ok(adopted);
    track(adopted);
    assert.equal(adopted.pid, first.pid);
    assert.equal((await adopted.describe()).state, 'Running');
    await adopted.pause(sig());
    await adopted.resume(sig());
    await adopted.stop(sig());
    assert.equal(await alive(first.pid), false);
    await assertClean(adopted, cfg.runDir);
    assert.equal(await later.adopt(handle), null, 'after stop');

    if (!noUffd) {
      const c2 = await config('iadoptu0');
      const src = track(driver(fake).create());
      await src.boot(c2, sig());
      pids.add(src.pid);
      const snap = await src.snapshot(join(dir, 'snaps', 'adoptu'), 'full', sig());
      await src.stop(sig());
      const c3 = await config('iadoptu');
      const u = track(driver(fake, { memoryBackend: 'uffd', uffd: { recordWorkingSet: false } }).create());
      await u.restore(snap, c3, sig());
      pids.add(u.pid);
      // The page server lives in this process; a restarted daemon would not have it.
      assert.equal(await driver(fake, { memoryBackend: 'uffd' }).adopt(FirecrackerDriver.handleOf(u)), null);
      assert.equal(await alive(u.pid), false, 'an adopted VM without its page server is killed, not left to hang');
      await u.stop(sig());
    }
    await noViolations(fake);
  });

  test('forceKill: a VM whose API no longer answers is killed by pid and its host files released; a pid that is not ours is left alone', async () => {
    const fake = await makeFakeFirecracker(dir, 'fc-kill');
    const cfg = await config('ikill');
    const first = track(driver(fake).create());
    await first.boot(cfg, sig());
    pids.add(first.pid);
    const handle = FirecrackerDriver.handleOf(first);
    const later = driver(fake);
    assert.equal(await later.forceKill({ ...handle, pid: handle.pid + 100000 }, sig()), false, 'another pid: not ours, nothing killed');
    assert.equal(await later.forceKill({ ...handle, kind: 'qemu' }, sig()), false, 'another kind');
    // A Firecracker that cannot answer its API (stopped): adopt refuses it, only a kill gets rid of it.
    process.kill(first.pid, 'SIGSTOP');
    await assert.rejects(later.adopt(handle), HostFailureError);
    assert.equal(await later.forceKill(handle, sig()), true);
    assert.equal(await alive(first.pid), false, 'the process is gone');
    assert.equal(existsSync(join(cfg.runDir, 'firecracker.json')), false, 'its record is released');
    assert.equal(await later.forceKill(handle, sig()), false, 'nothing left to kill');
  });

  test('jailer: chroot layout, hard links, uid/gid/netns/cgroup flags, snapshot out of the jail, cleanup', { skip: isRoot ? false : 'needs root (chown, mknod)' }, async () => {
    const fake = await makeFakeFirecracker(join(dir, 'jbin'), 'firecracker');
    const jailer = await makeFakeJailer(dir);
    const base = join(dir, 'jails');
    const drv = driver(fake, { isolation: undefined, jailer: { binary: jailer.binary, uid: 4242, gid: 4343, chrootBaseDir: base, parentCgroup: 'hearth-test', cgroupRoot: join(dir, 'cgroup') } });
    const cfg = await config('ijail');
    const vm = track(drv.create());
    await vm.boot(cfg, sig());
    pids.add(vm.pid);
    const root = join(base, 'firecracker', 'hearth-ijail', 'root');
    assert.equal(vm.rootDir, root);
    const [k1, k2, r1, r2] = await Promise.all([stat(kernel), stat(join(root, 'vmlinux')), stat(cfg.rootfsPath), stat(join(root, 'rootfs'))]);
    assert.equal(k1.ino, k2.ino, 'kernel hard-linked into the jail');
    assert.equal(r1.ino, r2.ino, 'disk hard-linked into the jail');
    assert.equal(r1.uid, 4242, 'the disk belongs to the jail user');
    const jlog = await readFile(jailer.logPath, 'utf8');
    for (const flag of ['--uid 4242', '--gid 4343', `--chroot-base-dir ${base}`, '--cgroup-version 2', '--parent-cgroup hearth-test', `--netns /proc/${process.pid}/ns/net`, '-- --api-sock /api.sock --id hearth-ijail']) {
      assert.ok(jlog.includes(flag), `jailer argv has ${flag}: ${jlog}`);
    }
    assert.match(jlog, /--cgroup cpu\.max=100000 100000 --cgroup memory\.max=201326592/);
    const snap = await vm.snapshot(join(dir, 'snaps', 'jail'), 'full', sig());
    const create = (await fake.requests()).find((r) => r.path === '/snapshot/create')!.body as Record<string, string>;
    assert.deepEqual(create, { snapshot_type: 'Full', snapshot_path: 'snapshot-out/vmstate', mem_file_path: 'snapshot-out/memory' });
    assert.equal((await stat(snap.memoryPath)).size, 64 * MiB, 'moved out of the jail');
    await vm.stop(sig());
    assert.equal(existsSync(join(base, 'firecracker', 'hearth-ijail')), false, 'the jail is removed');
    assert.ok(existsSync(join(cfg.runDir, 'firecracker.log')), 'Firecracker\'s log is kept');

    const c2 = await config('ijail2');
    const v2 = track(drv.create());
    await v2.restore(snap, c2, sig());
    pids.add(v2.pid);
    const load = (await fake.requests()).find((r) => r.path === '/snapshot/load')!.body as Record<string, unknown>;
    assert.equal(load.snapshot_path, 'snapshot-in/vmstate');
    assert.deepEqual(load.mem_backend, { backend_type: 'File', backend_path: 'snapshot-in/memory' });
    assert.equal((await v2.agentClient().request({ path: '/whoami' })).body.toString(), 'hearth-ijail2 gen 2');
    await v2.stop(sig());
    assert.equal(existsSync(join(base, 'firecracker', 'hearth-ijail2')), false);
    await noViolations(fake);
  });

  test('jailer --new-pid-ns: the driver follows the forked Firecracker through the pid file', { skip: isRoot ? false : 'needs root (chown, mknod)' }, async () => {
    const fake = await makeFakeFirecracker(join(dir, 'jbin2'), 'firecracker');
    const jailer = await makeFakeJailer(join(dir, 'jbin2'));
    const base = join(dir, 'jails2');
    const drv = driver(fake, { isolation: undefined, jailer: { binary: jailer.binary, uid: 4242, gid: 4343, chrootBaseDir: base, newPidNs: true, cgroupLimits: false } });
    const cfg = await config('ijailpid');
    const vm = track(drv.create());
    await vm.boot(cfg, sig());
    pids.add(vm.pid);
    const pidFile = join(base, 'firecracker', 'hearth-ijailpid', 'root', 'firecracker.pid');
    assert.equal(vm.pid, Number((await readFile(pidFile, 'utf8')).trim()), 'the pid is Firecracker\'s, from the pid file');
    assert.match(await readFile(jailer.logPath, 'utf8'), /--new-pid-ns/);
    assert.equal((await vm.describe()).state, 'Running');
    assert.equal(await alive(vm.pid), true);
    await vm.stop(sig());
    assert.equal(await alive(vm.pid), false);
    await assertClean(vm, cfg.runDir);
    assert.equal(existsSync(join(base, 'firecracker', 'hearth-ijailpid')), false);
  });

  test('version gates: the probe, too old, and 1.12 bodies', async () => {
    const old = await makeFakeFirecracker(dir, 'fc-old', { FAKE_FC_VERSION: '1.9.1' });
    const c0 = await config('iold');
    const v0 = track(driver(old, { version: undefined }).create());
    await assert.rejects(v0.boot(c0, sig()), /Firecracker 1\.9\.1 is too old/);
    assert.equal(v0.pid, 0);

    const f12 = await makeFakeFirecracker(dir, 'fc-112', { FAKE_FC_VERSION: '1.12.0' });
    const drv = driver(f12, { version: undefined, diffSnapshots: true });
    const c1 = await config('iv112');
    const v1 = track(drv.create());
    await v1.boot(c1, sig());
    pids.add(v1.pid);
    assert.equal(v1.firecrackerVersion, '1.12.0');
    const snap = await v1.snapshot(join(dir, 'snaps', 'v112'), 'full', sig());
    await v1.stop(sig());
    const v2 = track(drv.create());
    const c2 = await config('iv112b');
    await v2.restore(snap, c2, sig());
    pids.add(v2.pid);
    const load = (await f12.requests()).find((r) => r.path === '/snapshot/load')!.body as Record<string, unknown>;
    assert.equal(load.enable_diff_snapshots, true);
    assert.equal(load.track_dirty_pages, undefined);
    await v2.stop(sig());
    await noViolations(f12);
  });
});
