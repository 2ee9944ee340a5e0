/** The Firecracker guest-kernel recipe: config fragment merge and the build orchestration (no real build). */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  FIRECRACKER_KERNEL_FRAGMENT, REQUIRED_Y, checkKernelConfig, ensureFirecrackerKernel, mergeKernelConfig, parseKernelConfig,
} from '../../src/images/firecracker-kernel.js';
import type { Runner } from '../../src/images/run.js';

/** A slice of a real x86_64_defconfig: virtio off or modular, modules on. */
const DEFCONFIG = [
  '#',
  '# Automatically generated file; DO NOT EDIT.',
  '#',
  'CONFIG_MODULES=y',
  'CONFIG_PCI=y',
  'CONFIG_ACPI=y',
  '# CONFIG_VIRTIO_MMIO is not set',
  'CONFIG_VIRTIO_BLK=m',
  'CONFIG_VIRTIO_NET=m',
  '# CONFIG_VSOCKETS is not set',
  'CONFIG_SERIAL_8250=y',
  'CONFIG_SERIAL_8250_CONSOLE=y',
  'CONFIG_EXT4_FS=y',
  'CONFIG_DEBUG_INFO=y',
  'CONFIG_LOCALVERSION=""',
  '',
].join('\n');

test('the fragment turns the Firecracker essentials into =y and modules off, in place', () => {
  const merged = mergeKernelConfig(DEFCONFIG, FIRECRACKER_KERNEL_FRAGMENT);
  const cfg = parseKernelConfig(merged);
  for (const k of REQUIRED_Y) assert.equal(cfg.get(k), 'y', `CONFIG_${k}=y`);
  assert.equal(cfg.get('MODULES'), null, 'modules disabled');
  assert.equal(cfg.get('DEBUG_INFO'), null);
  assert.equal(cfg.get('LOCALVERSION'), '""', 'untouched options stay');
  const lines = merged.split('\n');
  assert.equal(lines.indexOf('CONFIG_VIRTIO_BLK=y'), DEFCONFIG.split('\n').indexOf('CONFIG_VIRTIO_BLK=m'), 'replaced where it was');
  assert.ok(lines.includes('CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y'));
  assert.ok(lines.includes('CONFIG_KVM_GUEST=y') && lines.includes('CONFIG_PVH=y') && lines.includes('CONFIG_VIRTIO_VSOCKETS=y'));
  assert.deepEqual(checkKernelConfig(merged), { missing: [], unwanted: [] });
  // Merging twice changes nothing.
  assert.equal(mergeKernelConfig(merged, FIRECRACKER_KERNEL_FRAGMENT), merged);
});

test('a config where olddefconfig dropped an option is caught', () => {
  const broken = mergeKernelConfig(DEFCONFIG, FIRECRACKER_KERNEL_FRAGMENT).replace('CONFIG_VIRTIO_VSOCKETS=y', '# CONFIG_VIRTIO_VSOCKETS is not set').replace('# CONFIG_MODULES is not set', 'CONFIG_MODULES=y');
  assert.deepEqual(checkKernelConfig(broken), { missing: ['VIRTIO_VSOCKETS'], unwanted: ['MODULES'] });
});

test('ensureFirecrackerKernel: download, unpack, configure, check, build, cache (fake runner)', async () => {
  const cacheDir = await mkdtemp(join(tmpdir(), 'hearth-fckernel-'));
  try {
    const calls: string[] = [];
    let srcDir = '';
    const run: Runner = async (cmd, args, opts = {}) => {
      calls.push([cmd, ...args].join(' '));
      const ok = (stdout = '') => ({ code: 0, stdout, stderr: '' });
      if (cmd === 'apt-cache' && args[0] === 'depends') return ok('linux-source\n  Depends: linux-source-6.1\n');
      if (cmd === 'apt-cache' && args[0] === 'policy') return ok('linux-source-6.1:\n  Installed: (none)\n  Candidate: 6.1.192-2\n');
      if (cmd === 'apt-get') { await writeFile(join(opts.cwd!, 'linux-source-6.1_6.1.192-2_all.deb'), 'deb'); return ok(); }
      if (cmd === 'dpkg-deb') { await mkdir(join(args[2]!, 'usr', 'src'), { recursive: true }); await writeFile(join(args[2]!, 'usr', 'src', 'linux-source-6.1.tar.xz'), 'xz'); return ok(); }
      if (cmd === 'tar') { srcDir = args[args.indexOf('-C') + 1]!; await writeFile(join(srcDir, 'Makefile'), '# kernel'); return ok(); }
      if (cmd === 'make' && args.includes('x86_64_defconfig')) { await writeFile(join(srcDir, '.config'), DEFCONFIG); return ok(); }
      if (cmd === 'make' && args.includes('olddefconfig')) return ok();
      if (cmd === 'make' && args.includes('vmlinux')) { await writeFile(join(srcDir, 'vmlinux'), '\x7fELF fake vmlinux'); return ok(); }
      if (cmd === 'make' && args.includes('kernelrelease')) return ok('6.1.192\n');
      throw new Error(`unexpected command ${cmd} ${args.join(' ')}`);
    };
    const info = await ensureFirecrackerKernel({ cacheDir, run, jobs: 2, checkTools: false });
    assert.equal(info.sourcePackage, 'linux-source-6.1');
    assert.equal(info.packageVersion, '6.1.192-2');
    assert.equal(info.release, '6.1.192');
    assert.equal(await readFile(info.vmlinuxPath, 'utf8'), '\x7fELF fake vmlinux');
    assert.deepEqual(checkKernelConfig(await readFile(info.configPath, 'utf8')), { missing: [], unwanted: [] });
    assert.ok(calls.some((c) => /^make -C .*\/src -j2 vmlinux$/.test(c)));
    assert.ok(calls.indexOf(calls.find((c) => c.includes('olddefconfig'))!) < calls.indexOf(calls.find((c) => c.includes('vmlinux'))!));
    // Cached: only the apt lookups run again.
    calls.length = 0;
    const again = await ensureFirecrackerKernel({ cacheDir, run, checkTools: false });
    assert.equal(again.dir, info.dir);
    assert.deepEqual(calls.map((c) => c.split(' ')[0]), ['apt-cache', 'apt-cache']);
  } finally {
    await rm(cacheDir, { recursive: true, force: true });
  }
});
