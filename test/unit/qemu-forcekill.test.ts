/**
 * QemuDriver.forceKill (the VmmDriver seam's kill of a VM that cannot be
 * adopted): a real process that looks like Hearth's QEMU to /proc (argv[0]
 * named qemu-system-*, `-name hearth-<id>`, `-pidfile <runDir>/qemu.pid`)
 * stands in for a QEMU whose QMP socket is gone.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { QemuDriver } from '../../src/vmm/qemu/driver.js';
import { isProcessAlive } from '../../src/vmm/qemu/process.js';

let dir: string;
const children: ChildProcess[] = [];
const sig = () => AbortSignal.timeout(10_000);

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'hearth-qemu-kill-'));
  // A "QEMU" binary: node under a qemu-system-* name.
  symlinkSync(process.execPath, join(dir, 'qemu-system-x86_64'));
});

after(() => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

/** A process whose /proc/<pid>/cmdline is a Hearth QEMU's of `runDir`. */
async function fakeQemu(argv0: string, runDir: string): Promise<ChildProcess> {
  const child = spawn(argv0, ['-e', 'setInterval(() => {}, 1000)', '--', '-name', 'guest=hearth-kill1', '-pidfile', join(runDir, 'qemu.pid')], { stdio: 'ignore' });
  children.push(child);
  await new Promise<void>((resolve, reject) => { child.once('spawn', resolve); child.once('error', reject); });
  return child;
}

test('forceKill kills a QEMU of the handle\'s run dir and waits until it is gone', async () => {
  const runDir = join(dir, 'sandboxes', 'kill1');
  const child = await fakeQemu(join(dir, 'qemu-system-x86_64'), runDir);
  const pid = child.pid!;
  const drv = new QemuDriver();
  assert.ok((await drv.list()).some((v) => v.pid === pid && v.runDir === runDir), 'the driver lists it as a Hearth VM');
  assert.equal(await drv.forceKill({ kind: 'qemu', pid, runDir }, sig()), true);
  assert.equal(await isProcessAlive(pid), false, 'gone (or a zombie) when forceKill returns');
  await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(undefined) : child.once('exit', r)));
  assert.equal(child.signalCode, 'SIGKILL');
});

test('forceKill leaves alone a pid that is not QEMU of that run dir (another run dir, not QEMU, gone, another kind)', async () => {
  const runDir = join(dir, 'sandboxes', 'kill2');
  const child = await fakeQemu(join(dir, 'qemu-system-x86_64'), runDir);
  const pid = child.pid!;
  const drv = new QemuDriver();
  assert.equal(await drv.forceKill({ kind: 'qemu', pid, runDir: join(dir, 'sandboxes', 'other') }, sig()), false);
  assert.equal(await drv.forceKill({ kind: 'firecracker', pid, runDir }, sig()), false);
  assert.equal(await drv.forceKill({ kind: 'qemu', pid: 0, runDir }, sig()), false);
  // Not QEMU at all (this test runner): never signalled.
  assert.equal(await drv.forceKill({ kind: 'qemu', pid: process.pid, runDir }, sig()), false);
  assert.equal(await isProcessAlive(pid), true, 'nothing was killed');
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  assert.equal(await drv.forceKill({ kind: 'qemu', pid, runDir }, sig()), false, 'a pid that is gone');
});
