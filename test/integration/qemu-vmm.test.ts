/**
 * The QEMU driver against real QEMU: boot, pause/resume, snapshot/restore with
 * x-ignore-shared, stop, failures and cancellation, adoption.
 * Run: node --import tsx --test test/integration/qemu-vmm.test.ts
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readFile, readdir, readlink, stat, truncate, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { AbortedError, ConflictError, HostFailureError } from '../../src/core/errors.js';
import { probeAccelerator } from '../../src/vmm/probe.js';
import { QemuDriver } from '../../src/vmm/qemu/driver.js';
import { runFiles } from '../../src/vmm/qemu/cmdline.js';
import { listHearthQemuProcesses } from '../../src/vmm/qemu/process.js';
import {
  GUEST_PAGE, MARKER, VmLab, counters, fileSize, held, lastCounter, measurements, pidAlive, sleep, waitForConsole,
} from './qemu-fixture.js';

const sig = () => new AbortController().signal;
const execFileP = promisify(execFile);

async function assertGone(pid: number, runDir: string): Promise<void> {
  assert.equal(await pidAlive(pid), false, `pid ${pid} is still alive`);
  const f = runFiles(runDir);
  assert.equal(existsSync(f.qmpSocket), false, 'QMP socket left behind');
  assert.equal(existsSync(f.pidFile), false, 'pid file left behind');
}

/** Identity and confinement of a process, from /proc/<pid>/status and /proc/<pid>/root. */
async function confinement(pid: number): Promise<{ uid: number[]; gid: number[]; groups: number[]; seccomp: number; noNewPrivs: number; capEff: string; root: string }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => (new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1] ?? '').trim();
  const nums = (name: string) => field(name).split(/\s+/).filter(Boolean).map(Number);
  return {
    uid: nums('Uid'), gid: nums('Gid'), groups: nums('Groups'),
    seccomp: Number(field('Seccomp')), noNewPrivs: Number(field('NoNewPrivs')), capEff: field('CapEff'),
    root: await readlink(`/proc/${pid}/root`),
  };
}

/** Asserts QEMU runs unprivileged: one non-root uid=gid (real, effective, saved, fs), no capabilities, seccomp filter mode, chrooted. */
async function assertUnprivileged(pid: number, runDir: string): Promise<number> {
  const c = await confinement(pid);
  const uid = c.uid[0]!;
  assert.ok(uid >= 1_900_000_000 && uid < 1_900_065_536, `QEMU uid ${uid} is not a per-VM id`);
  assert.deepEqual(c.uid, [uid, uid, uid, uid], 'real/effective/saved/fs uid');
  assert.deepEqual(c.gid, [uid, uid, uid, uid], 'real/effective/saved/fs gid');
  assert.deepEqual(c.groups, [uid], 'supplementary groups');
  assert.equal(c.seccomp, 2, 'seccomp filter mode');
  assert.equal(c.noNewPrivs, 1);
  assert.equal(c.capEff, '0000000000000000', 'no effective capabilities');
  assert.equal(c.root, runFiles(runDir).vmRoot, 'chrooted into <runDir>/vmroot');
  return uid;
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

function httpGet(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', timeout: 3000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve(body));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

describe('QEMU driver (real VMs)', { timeout: 600_000 }, () => {
  let lab: VmLab;
  const driver = new QemuDriver();

  before(async () => {
    lab = await VmLab.create();
    const accel = await probeAccelerator();
    measurements['accelerator'] = `${accel.accel} (${accel.reason})`;
  });

  after(async () => {
    await lab?.cleanup();
    console.log('QEMU driver measurements:\n' + Object.entries(measurements).map(([k, v]) => `  ${k}: ${v}`).join('\n'));
  });

  it('boots: the console shows the marker, the root disk is attached, the process is detached and named', async () => {
    const cfg = await lab.config('boot1');
    const vm = lab.track(driver.create());
    const t0 = performance.now();
    await vm.boot(cfg, sig());
    measurements['boot: QMP up (ms)'] = Math.round(performance.now() - t0);
    await waitForConsole(cfg.consoleLogPath, new RegExp(MARKER));
    measurements['boot: to console marker (ms)'] = Math.round(performance.now() - t0);
    const disk = await waitForConsole(cfg.consoleLogPath, /HEARTH-TEST-DISK sectors=(\d+)/);
    assert.equal(Number(disk[1]), (64 * 1024 * 1024) / 512, 'virtio-blk root disk visible through ACPI');
    // detached: its own session
    const procStat = await readFile(`/proc/${vm.pid}/stat`, 'utf8');
    const fields = procStat.slice(procStat.lastIndexOf(')') + 2).split(' ');
    assert.equal(Number(fields[3]), vm.pid, 'QEMU leads its own session');
    assert.equal(Number((await readFile(runFiles(cfg.runDir).pidFile, 'utf8')).trim()), vm.pid);
    const argv = (await readFile(`/proc/${vm.pid}/cmdline`, 'utf8')).split('\0');
    assert.ok(argv.includes('-name') && argv[argv.indexOf('-name') + 1]!.startsWith('hearth-boot1'));
    const listed = await listHearthQemuProcesses();
    assert.ok(listed.some((p) => p.pid === vm.pid && p.sandboxId === 'boot1' && p.runDir === cfg.runDir));
    // least privilege (issue #8): per-VM uid/gid, no capabilities, seccomp, chroot
    assert.equal((await driver.privilege()).mode, 'per-vm');
    await assertUnprivileged(vm.pid, cfg.runDir);
    assert.ok(argv.includes('-runas') && argv.includes('-chroot'));
    assert.ok(argv.includes('-S'), 'starts paused; `cont` comes over QMP, i.e. after the drop');
    assert.equal((await vm.status()).status, 'running');
    assert.equal(argv[argv.indexOf('-sandbox') + 1], 'on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny');
    const vmRoot = await stat(runFiles(cfg.runDir).vmRoot);
    assert.equal(vmRoot.mode & 0o7777, 0o710);
    assert.equal(vmRoot.uid, 0);
    const t1 = performance.now();
    await vm.stop(sig());
    measurements['stop (ms)'] = Math.round(performance.now() - t1);
    assert.deepEqual(await held(vm.exited), { code: 0, signal: null });
    await assertGone(vm.pid, cfg.runDir);
    await vm.stop(sig()); // idempotent
  });

  it('pause freezes the guest (counter stops); resume continues it', async () => {
    const cfg = await lab.config('pause1');
    const vm = lab.track(driver.create());
    await vm.boot(cfg, sig());
    await assertUnprivileged(vm.pid, cfg.runDir);
    await waitForConsole(cfg.consoleLogPath, /counter 2\b/);
    await vm.pause(sig());
    assert.equal((await vm.status()).status, 'paused');
    const c = await lastCounter(cfg.consoleLogPath);
    await sleep(800);
    assert.equal(await lastCounter(cfg.consoleLogPath), c, 'counter advanced while paused');
    await vm.resume(sig());
    await waitForConsole(cfg.consoleLogPath, new RegExp(`counter ${c + 2}\\b`), 5000);
    await vm.stop(sig());
    await assertGone(vm.pid, cfg.runDir);
  });

  it('snapshot writes only device state; a restore from a copy of the memory file continues the counter', async () => {
    const cfg = await lab.config('snap1');
    await chmod(cfg.rootfsPath, 0o600); // root's alone: QEMU opens it before dropping privileges
    const vm = lab.track(driver.create());
    await vm.boot(cfg, sig());
    const uids = new Set([await assertUnprivileged(vm.pid, cfg.runDir)]);
    for (const f of [cfg.memoryFilePath, cfg.rootfsPath]) {
      const st = await stat(f);
      assert.equal(st.uid, 0, `${f} stays root's`);
      assert.equal(st.mode & 0o077, 0, `${f} is not accessible to others`);
    }
    await waitForConsole(cfg.consoleLogPath, /counter 3\b/);
    await vm.pause(sig());
    const c = await lastCounter(cfg.consoleLogPath);
    const snapDir = `${lab.dir}/snap1.snapshot`;
    let t = performance.now();
    const snap = await vm.snapshot(snapDir, 'full', sig());
    measurements['snapshot: device state (ms)'] = Math.round(performance.now() - t);
    const size = await fileSize(snap.statePath);
    measurements['snapshot: vmstate size (bytes, 256 MiB guest)'] = size;
    assert.ok(size > 0 && size < 4 * 1024 * 1024, `vmstate is ${size} bytes: x-ignore-shared should keep RAM out`);
    assert.equal(snap.memoryPath, cfg.memoryFilePath);
    assert.equal(snap.statePath, `${snapDir}/vmstate`);
    // Every file the driver wrote, reported: the state, the VM's own memory file and the layout beside the state.
    assert.deepEqual(snap.files, [`${snapDir}/vmstate`, cfg.memoryFilePath, `${snapDir}/vmstate.json`]);
    assert.deepEqual((await readdir(snapDir)).sort(), ['vmstate', 'vmstate.json']);
    assert.equal((await vm.status()).running, false, 'VM stays paused after snapshot');
    t = performance.now();
    await vm.stop(sig());
    measurements['stop after snapshot (ms)'] = Math.round(performance.now() - t);
    await assertGone(vm.pid, cfg.runDir);

    // Fork: two sandboxes from the one snapshot, each with its own copy of the memory file.
    for (const id of ['rest1', 'rest2']) {
      const rcfg = await lab.config(id, { rootfsPath: cfg.rootfsPath.replace('snap1', id) });
      await copyFile(snap.memoryPath, rcfg.memoryFilePath);
      const r = lab.track(driver.create());
      t = performance.now();
      await r.restore(snap, rcfg, sig());
      const toRunning = Math.round(performance.now() - t);
      uids.add(await assertUnprivileged(r.pid, rcfg.runDir));
      assert.equal((await r.status()).status, 'running');
      await waitForConsole(rcfg.consoleLogPath, /counter \d+/, 5000);
      const toCounter = Math.round(performance.now() - t);
      if (id === 'rest1') {
        measurements['restore: to running (ms)'] = toRunning;
        measurements['restore: to first guest output (ms)'] = toCounter;
        Object.assign(measurements, Object.fromEntries(Object.entries(r.timings).map(([k, v]) => [`restore step ${k} (ms)`, v])));
      }
      await waitForConsole(rcfg.consoleLogPath, new RegExp(`counter ${c + 3}\\b`), 5000);
      const seen = await counters(rcfg.consoleLogPath);
      assert.ok(seen[0]! >= c && seen[0]! <= c + 2, `restored guest continued from ${seen[0]}, paused at ${c}`);
      if (id === 'rest2') assert.equal(uids.size, 3, 'every VM has a uid of its own');
      await r.stop(sig());
      await assertGone(r.pid, rcfg.runDir);
    }
  });

  it('a restore refuses a different VM layout, and a corrupt vmstate fails with QEMU\'s words; neither leaves a process', async () => {
    const cfg = await lab.config('lay1');
    const vm = lab.track(driver.create());
    await vm.boot(cfg, sig());
    await waitForConsole(cfg.consoleLogPath, /counter 0\b/);
    const snap = await vm.snapshot(`${lab.dir}/lay1.snapshot`, 'full', sig());
    await vm.stop(sig());
    const layout = JSON.parse(await readFile(`${snap.dir}/vmstate.json`, 'utf8')) as Record<string, unknown>;
    assert.equal(layout['memoryMib'], 256);
    assert.equal(layout['machine'], 'microvm');

    const big = await lab.config('lay2', { memoryMib: 320 });
    await writeFile(big.memoryFilePath, '');
    await truncate(big.memoryFilePath, 320 * 1024 * 1024);
    const r1 = lab.track(driver.create());
    await assert.rejects(r1.restore(snap, big, sig()), (err: unknown) => err instanceof ConflictError && /memoryMib 256 → 320/.test(err.message));
    assert.equal(r1.pid, 0);

    const bad = await lab.config('lay3');
    await copyFile(snap.memoryPath, bad.memoryFilePath);
    const corrupt = { ...snap, statePath: `${lab.dir}/corrupt.vmstate` };
    await writeFile(corrupt.statePath, Buffer.alloc(4096, 0x5a));
    const r2 = lab.track(driver.create());
    await assert.rejects(r2.restore(corrupt, bad, sig()), (err: unknown) => {
      assert.ok(err instanceof HostFailureError, String(err));
      assert.match(err.message, /restore of sandbox lay3 .*QEMU exited with status 1 while loading the snapshot: .*Not a migration stream/s);
      return true;
    });
    await held(r2.exited);
    await assertGone(r2.pid, bad.runDir);
  });

  it('a failed snapshot leaves the VM paused, and resume makes it usable again', async () => {
    const cfg = await lab.config('snapfail');
    const vm = lab.track(driver.create());
    await vm.boot(cfg, sig());
    await waitForConsole(cfg.consoleLogPath, /counter 1\b/);
    await vm.pause(sig());
    const dir = `${lab.dir}/snapfail.snapshot`;
    await mkdir(`${dir}/vmstate.tmp`, { recursive: true }); // the stream cannot be written
    await assert.rejects(vm.snapshot(dir, 'full', sig()), (err: unknown) => err instanceof HostFailureError && /snapshot of sandbox snapfail/.test(err.message));
    assert.equal((await vm.status()).running, false, 'VM must stay paused after a failed snapshot');
    const c = await lastCounter(cfg.consoleLogPath);
    await vm.resume(sig());
    await waitForConsole(cfg.consoleLogPath, new RegExp(`counter ${c + 2}\\b`), 5000);
    await vm.stop(sig());
  });

  it('a snapshot can be taken again after resuming from one (the VM keeps working)', async () => {
    const cfg = await lab.config('snap2');
    const vm = lab.track(driver.create());
    await vm.boot(cfg, sig());
    await waitForConsole(cfg.consoleLogPath, /counter 1\b/);
    await vm.snapshot(`${lab.dir}/snap2.a`, 'full', sig()); // pauses a running VM itself
    assert.equal((await vm.status()).running, false);
    await vm.resume(sig());
    const c = await lastCounter(cfg.consoleLogPath);
    await waitForConsole(cfg.consoleLogPath, new RegExp(`counter ${c + 2}\\b`), 5000);
    const snap = await vm.snapshot(`${lab.dir}/snap2.b`, 'diff', sig());
    assert.ok((await fileSize(snap.statePath)) > 0);
    await vm.stop(sig());
  });

  it('user networking forwards a loopback port to the guest', async () => {
    const port = await freePort();
    const cfg = await lab.config('net1', { network: { kind: 'user', forwards: [{ hostPort: port, guestPort: 80 }], guestCidr: '10.0.2.15/24', gateway: '10.0.2.2' } });
    const vm = lab.track(driver.create());
    await vm.boot(cfg, sig());
    await waitForConsole(cfg.consoleLogPath, /HEARTH-TEST-NET up/);
    let body = '';
    for (let i = 0; i < 50 && !body.includes(GUEST_PAGE); i++) {
      body = await httpGet(port).catch(() => '');
      if (!body.includes(GUEST_PAGE)) await sleep(100);
    }
    assert.match(body, new RegExp(GUEST_PAGE));
    await vm.stop(sig());
  });

  it('tap networking: QEMU runs inside the slot\'s network namespace and the guest answers there', async (t) => {
    const ns = `hq-test-${process.pid}`;
    try {
      await execFileP('ip', ['netns', 'add', ns]);
    } catch (err) {
      t.skip(`cannot create a network namespace: ${(err as Error).message}`);
      return;
    }
    try {
      await execFileP('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      await execFileP('ip', ['-n', ns, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap']);
      await execFileP('ip', ['-n', ns, 'link', 'set', 'tap0', 'up']);
      await execFileP('ip', ['-n', ns, 'addr', 'add', '10.0.2.2/24', 'dev', 'tap0']);
      const cfg = await lab.config('tap1', { network: { kind: 'tap', netnsName: ns, tapName: 'tap0', mac: '02:fc:00:00:00:01' } });
      const vm = lab.track(driver.create());
      await vm.boot(cfg, sig());
      assert.equal(Number((await readFile(runFiles(cfg.runDir).pidFile, 'utf8')).trim()), vm.pid, 'nsenter execs QEMU: same pid');
      assert.equal((await stat(`/proc/${vm.pid}/ns/net`)).ino, (await stat(`/run/netns/${ns}`)).ino, 'QEMU is in the slot namespace');
      await assertUnprivileged(vm.pid, cfg.runDir);
      await waitForConsole(cfg.consoleLogPath, /HEARTH-TEST-NET up/);
      let body = '';
      for (let i = 0; i < 50 && !body.includes(GUEST_PAGE); i++) {
        body = await execFileP('nsenter', [`--net=/run/netns/${ns}`, '--', 'curl', '-sS', '-m', '2', 'http://10.0.2.15/'])
          .then((r) => r.stdout, () => '');
        if (!body.includes(GUEST_PAGE)) await sleep(100);
      }
      assert.match(body, new RegExp(GUEST_PAGE));
      // snapshot and restore in the same slot: the state fd passes through nsenter, the tap is reattached
      const snap = await vm.snapshot(`${lab.dir}/tap1.snapshot`, 'full', sig());
      await vm.stop(sig());
      await assertGone(vm.pid, cfg.runDir);
      const rcfg = await lab.config('tap2', { rootfsPath: cfg.rootfsPath, network: cfg.network });
      await copyFile(snap.memoryPath, rcfg.memoryFilePath);
      const r = lab.track(driver.create());
      await r.restore(snap, rcfg, sig());
      await assertUnprivileged(r.pid, rcfg.runDir);
      const again = await execFileP('nsenter', [`--net=/run/netns/${ns}`, '--', 'curl', '-sS', '-m', '5', 'http://10.0.2.15/']).then((x) => x.stdout, (e: Error) => e.message);
      assert.match(again, new RegExp(GUEST_PAGE));
      await r.stop(sig());
      await assertGone(r.pid, rcfg.runDir);
    } finally {
      await execFileP('ip', ['netns', 'del', ns]).catch(() => {});
    }
  });

  it('a tap in a namespace that does not exist fails clearly without starting QEMU', async () => {
    const cfg = await lab.config('tapgone', { network: { kind: 'tap', netnsName: 'hq-no-such-ns', tapName: 'tap0', mac: '02:fc:00:00:00:02' } });
    const vm = lab.track(driver.create());
    await assert.rejects(vm.boot(cfg, sig()), (err: unknown) => err instanceof HostFailureError && /network namespace .*hq-no-such-ns/.test(err.message));
    assert.equal(vm.pid, 0);
  });

  it('a missing kernel fails clearly before starting anything', async () => {
    const cfg = await lab.config('badk1', { kernelPath: `${lab.dir}/no-such-kernel` });
    const vm = lab.track(driver.create());
    await assert.rejects(vm.boot(cfg, sig()), (err: unknown) => err instanceof HostFailureError && /kernel .*no-such-kernel.*ENOENT/.test(err.message));
    assert.equal(vm.pid, 0);
    await held(vm.exited);
  });

  it('a kernel QEMU cannot load fails with QEMU\'s message and leaves no process or socket', async () => {
    const bogus = `${lab.dir}/bogus-kernel`;
    await copyFile('/etc/hostname', bogus).catch(async () => { await mkdir(lab.dir, { recursive: true }); });
    const cfg = await lab.config('badk2', { kernelPath: bogus });
    const vm = lab.track(driver.create());
    await assert.rejects(vm.boot(cfg, sig()), (err: unknown) => {
      assert.ok(err instanceof HostFailureError, String(err));
      assert.match(err.message, /boot of sandbox badk2: QEMU exited with status 1 during start/);
      return true;
    });
    assert.ok(vm.pid > 0);
    await held(vm.exited);
    await assertGone(vm.pid, cfg.runDir);
  });

  it('aborting mid-boot kills QEMU and leaves no process or socket', async () => {
    const ac = new AbortController();
    const d = new QemuDriver({ onStep: (_id, op, step) => { if (op === 'boot' && step === 'spawn') ac.abort(new Error('client went away')); } });
    const cfg = await lab.config('abort1');
    const vm = lab.track(d.create());
    await assert.rejects(vm.boot(cfg, ac.signal), AbortedError);
    assert.ok(vm.pid > 0, 'QEMU was spawned before the abort');
    await held(vm.exited);
    await assertGone(vm.pid, cfg.runDir);
    // stop() on the failed VM is a no-op that still resolves
    await vm.stop(ac.signal);
  });

  it('stop completes even when given an aborted signal', async () => {
    const cfg = await lab.config('stopab');
    const vm = lab.track(driver.create());
    await vm.boot(cfg, sig());
    const ac = new AbortController();
    ac.abort();
    await vm.stop(ac.signal);
    await assertGone(vm.pid, cfg.runDir);
  });

  it('adopt re-attaches to a running VM by pid and runDir; a gone or foreign pid gives null', async () => {
    const cfg = await lab.config('adopt1');
    const vm = lab.track(driver.create());
    await vm.boot(cfg, sig());
    await waitForConsole(cfg.consoleLogPath, /counter 1\b/);
    const handle = QemuDriver.handleOf(vm);
    // the first daemon "dies": its QMP connection goes away
    (vm as unknown as { qmp?: { close(): void } }).qmp?.close();
    const other = new QemuDriver();
    assert.equal(await other.adopt({ ...handle, runDir: `${lab.dir}/elsewhere` }), null);
    assert.equal(await other.adopt({ ...handle, pid: process.pid }), null);
    assert.equal(await other.adopt({ ...handle, pid: 999_999_999 }), null);
    const adopted = await other.adopt(handle);
    assert.ok(adopted);
    lab.track(adopted);
    assert.equal(adopted.pid, vm.pid);
    assert.equal(adopted.sandboxId, 'adopt1');
    assert.equal(adopted.memoryFilePath, cfg.memoryFilePath);
    await adopted.pause(sig());
    const c = await lastCounter(cfg.consoleLogPath);
    await sleep(500);
    assert.equal(await lastCounter(cfg.consoleLogPath), c);
    await adopted.resume(sig());
    await waitForConsole(cfg.consoleLogPath, new RegExp(`counter ${c + 2}\\b`), 5000);
    // the adopted, unprivileged QEMU can still write a snapshot (the socket goes to its uid)
    await assertUnprivileged(adopted.pid, cfg.runDir);
    const snap = await adopted.snapshot(`${lab.dir}/adopt1.snapshot`, 'full', sig());
    assert.ok((await fileSize(snap.statePath)) > 0);
    await adopted.resume(sig());
    await adopted.stop(sig());
    await held(adopted.exited);
    await held(vm.exited);
    await assertGone(vm.pid, cfg.runDir);
    assert.equal(await other.adopt(handle), null);
  });

  it('a loop-device root disk (root:disk 0660) works unprivileged, across a snapshot and resume', async (t) => {
    const cfg0 = await lab.config('loop1');
    let dev: string;
    try {
      dev = (await execFileP('losetup', ['--find', '--show', cfg0.rootfsPath])).stdout.trim();
    } catch (err) {
      t.skip(`no loop device: ${(err as Error).message}`);
      return;
    }
    try {
      const cfg = { ...cfg0, rootfsPath: dev };
      const vm = lab.track(driver.create());
      await vm.boot(cfg, sig());
      await assertUnprivileged(vm.pid, cfg.runDir);
      const disk = await waitForConsole(cfg.consoleLogPath, /HEARTH-TEST-DISK sectors=(\d+)/);
      assert.equal(Number(disk[1]), (64 * 1024 * 1024) / 512);
      await waitForConsole(cfg.consoleLogPath, /counter 1\b/);
      await vm.snapshot(`${lab.dir}/loop1.snapshot`, 'full', sig());
      const c = await lastCounter(cfg.consoleLogPath);
      await vm.resume(sig()); // re-activates the block device: must not need to reopen /dev/loopN
      await waitForConsole(cfg.consoleLogPath, new RegExp(`counter ${c + 2}\\b`), 5000);
      await vm.stop(sig());
      await assertGone(vm.pid, cfg.runDir);
    } finally {
      await execFileP('losetup', ['-d', dev]).catch(() => {});
    }
  });

  it('privilege dropping can be turned off (QEMU stays root, still under seccomp); boot time with and without', async () => {
    const legacy = new QemuDriver({ privilege: { user: 'root' }, log: () => {} });
    assert.equal((await legacy.privilege()).mode, 'none');
    const times: Record<'dropped' | 'root', number[]> = { dropped: [], root: [] };
    for (let i = 0; i < 3; i++) {
      for (const [kind, d] of [['dropped', driver], ['root', legacy]] as const) {
        const cfg = await lab.config(`bt-${kind}-${i}`);
        const vm = lab.track(d.create());
        const t0 = performance.now();
        await vm.boot(cfg, sig());
        await waitForConsole(cfg.consoleLogPath, new RegExp(MARKER));
        times[kind].push(Math.round(performance.now() - t0));
        const c = await confinement(vm.pid);
        assert.equal(c.seccomp, 2);
        if (kind === 'root') {
          assert.deepEqual(c.uid, [0, 0, 0, 0]);
          assert.equal(c.root, '/');
          // and the snapshot path for a root QEMU (absolute socket path in runDir) still works
          if (i === 0) assert.ok((await fileSize((await vm.snapshot(`${lab.dir}/bt-root.snapshot`, 'full', sig())).statePath)) > 0);
        } else {
          await assertUnprivileged(vm.pid, cfg.runDir);
        }
        await vm.stop(sig());
        await assertGone(vm.pid, cfg.runDir);
      }
    }
    const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
    measurements['boot to marker, privileges dropped (median ms, runs)'] = `${median(times.dropped)} (${times.dropped.join(', ')})`;
    measurements['boot to marker, QEMU as root (median ms, runs)'] = `${median(times.root)} (${times.root.join(', ')})`;
  });
});
