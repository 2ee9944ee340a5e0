/**
 * Firecracker integration: real microVMs. Runs only where a `firecracker`
 * binary exists and KVM runs ordinary guests (a PVM /dev/kvm, as on Hearth's
 * development machine, does not: skipped there with the reason).
 *
 * Guest: the Firecracker kernel from the recipe (src/images/firecracker-kernel.ts,
 * built once into the test cache; or HEARTH_FC_KERNEL=<vmlinux>) and the QEMU
 * tests' busybox initramfs, which prints a marker and a counter every 200 ms
 * on the serial console — enough to see a VM boot, freeze, snapshot and
 * continue after a restore (File and Uffd backends).
 */
import assert from 'node:assert/strict';
import { constants, existsSync, readFileSync } from 'node:fs';
import { access, mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ensureFirecrackerKernel } from '../../src/images/firecracker-kernel.js';
import { lineProgress } from '../../src/images/progress.js';
import { FirecrackerDriver } from '../../src/vmm/firecracker/driver.js';
import type { FirecrackerVmm } from '../../src/vmm/firecracker/vmm.js';
import type { VmConfig } from '../../src/vmm/types.js';
import { uffdAddonAvailable } from '../../src/memory/uffd/native.js';
import { MARKER, counters, held, lastCounter, sleep, testAssets, waitForConsole } from './qemu-fixture.js';

function findFirecracker(): string | undefined {
  if (process.env.HEARTH_FIRECRACKER) return process.env.HEARTH_FIRECRACKER;
  for (const d of (process.env.PATH ?? '').split(delimiter)) if (d && existsSync(join(d, 'firecracker'))) return join(d, 'firecracker');
  return undefined;
}

function skipReason(): string | false {
  const fc = findFirecracker();
  if (!fc) return 'no firecracker binary on PATH (or HEARTH_FIRECRACKER)';
  if (!existsSync('/dev/kvm')) return 'no /dev/kvm';
  if (process.env.HEARTH_FC_KVM !== '1') {
    const flags = readFileSync('/proc/cpuinfo', 'utf8');
    if (!/\b(vmx|svm)\b/.test(flags)) {
      return '/dev/kvm exists but the CPU has no vmx/svm: a PVM (or other paravirtual) KVM cannot run ordinary Firecracker guests; set HEARTH_FC_KVM=1 to try anyway';
    }
  }
  return false;
}

const skip = skipReason();
const CACHE = process.env.HEARTH_TEST_CACHE ?? '/var/cache/hearth-test';

describe('Firecracker microVMs', { skip, timeout: 3_600_000 }, () => {
  let dir: string;
  let kernelPath: string;
  let initrdPath: string;
  const vms: FirecrackerVmm[] = [];
  const results: Record<string, number> = {};

  before(async () => {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
    dir = await mkdtemp(join(tmpdir(), 'hearth-fc-it-'));
    kernelPath = process.env.HEARTH_FC_KERNEL ?? (await ensureFirecrackerKernel({ cacheDir: CACHE, progress: lineProgress() })).vmlinuxPath;
    initrdPath = (await testAssets()).initrdPath;
  });
  after(async () => {
    for (const v of vms) await v.stop().catch(() => {});
    if (dir) await rm(dir, { recursive: true, force: true });
    console.log('firecracker measurements (ms):', results);
  });

  async function cfg(name: string): Promise<VmConfig> {
    const runDir = join(dir, name);
    await mkdir(runDir, { recursive: true });
    const rootfs = join(runDir, 'disk.img');
    await writeFile(rootfs, '');
    await truncate(rootfs, 64 << 20);
    return {
      sandboxId: name, vcpus: 1, memoryMib: 256, kernelPath, initrdPath, kernelArgs: 'quiet', rootfsPath: rootfs,
      memoryFilePath: join(runDir, 'memory'), runDir, consoleLogPath: join(runDir, 'console.log'),
      network: { kind: 'user', forwards: [], guestCidr: '10.0.2.0/24', gateway: '10.0.2.2' },
    };
  }
  const driver = (o: ConstructorParameters<typeof FirecrackerDriver>[0] = {}) =>
    new FirecrackerDriver({ firecrackerBinary: findFirecracker()!, allowNoNetwork: true, ...o });

  test('boot, pause, snapshot, restore (File), restore (Uffd)', async () => {
    const c = await cfg('fcit1');
    const vm = driver().create();
    vms.push(vm);
    let t = performance.now();
    await vm.boot(c, AbortSignal.timeout(60_000));
    await waitForConsole(c.consoleLogPath, new RegExp(MARKER), 30_000);
    results.bootToMarker = Math.round(performance.now() - t);
    await waitForConsole(c.consoleLogPath, /counter 3/, 10_000);
    await vm.pause(AbortSignal.timeout(10_000));
    const frozen = await lastCounter(c.consoleLogPath);
    await sleep(600);
    assert.ok((await lastCounter(c.consoleLogPath)) <= frozen + 1, 'paused: the counter stops');
    await vm.resume(AbortSignal.timeout(10_000));
    await waitForConsole(c.consoleLogPath, new RegExp(`counter ${frozen + 3}`), 10_000);
    t = performance.now();
    const snap = await vm.snapshot(join(dir, 'snap1'), 'full', AbortSignal.timeout(120_000));
    results.snapshotFull256MiB = Math.round(performance.now() - t);
    const atSnapshot = await lastCounter(c.consoleLogPath);
    await vm.stop(AbortSignal.timeout(30_000));
    await held(vm.exited);

    for (const backend of ['file', 'uffd'] as const) {
      if (backend === 'uffd' && !uffdAddonAvailable()) continue;
      const rc = await cfg(`fcit-${backend}`);
      const r = driver({ memoryBackend: backend }).create();
      vms.push(r);
      t = performance.now();
      await r.restore(snap, rc, AbortSignal.timeout(60_000));
      results[`restore${backend}`] = Math.round(performance.now() - t);
      await waitForConsole(rc.consoleLogPath, /counter \d+/, 10_000);
      results[`restore${backend}ToConsole`] = Math.round(performance.now() - t);
      const seen = await counters(rc.consoleLogPath);
      assert.ok(seen[0]! >= atSnapshot - 1, `the restored guest continues from its snapshot (${seen[0]} vs ${atSnapshot})`);
      if (backend === 'uffd') {
        const st = r.pageServerStats()!;
        assert.ok(st.faults > 0, 'guest memory came through the page server');
        results.uffdFaultsToFirstCounter = st.faults;
        await r.markReady();
      }
      await r.stop(AbortSignal.timeout(30_000));
    }
  });
});
