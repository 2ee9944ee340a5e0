/**
 * Host probes against the real QEMU and /dev/kvm of this machine.
 * Run: node --import tsx --test test/integration/qemu-probe.test.ts
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { HostFailureError } from '../../src/core/errors.js';
import { probeAccelerator, probeQemu } from '../../src/vmm/probe.js';
import { QemuDriver } from '../../src/vmm/qemu/driver.js';
import { runFiles } from '../../src/vmm/qemu/cmdline.js';
import { MARKER, VmLab, held, pidAlive, waitForConsole } from './qemu-fixture.js';

describe('QEMU host probes (real QEMU)', { timeout: 300_000 }, () => {
  let lab: VmLab;
  before(async () => { lab = await VmLab.create(); });
  after(async () => { await lab?.cleanup(); });

  it('probeQemu reports the version and the capabilities the driver relies on', async () => {
    const info = await probeQemu({ refresh: true });
    assert.match(info.version, /^\d+\.\d+\.\d+$/);
    assert.ok(info.major >= 7, `QEMU ${info.version} is older than 7`);
    assert.equal(info.ignoreShared, true, 'x-ignore-shared migration capability');
    assert.equal(info.seccompSandbox, true, '-sandbox (seccomp)');
    assert.equal(info.microvm, true, 'microvm machine');
  });

  it('probeAccelerator decides by running guest code, and the choice boots a real guest', async () => {
    const r = await probeAccelerator({ refresh: true });
    console.log(`accelerator: ${r.accel} — ${r.reason}`);
    assert.ok(r.accel === 'kvm' || r.accel === 'tcg');
    assert.ok(r.reason.length > 10);
    if (process.env['HEARTH_EXPECT_ACCEL']) assert.equal(r.accel, process.env['HEARTH_EXPECT_ACCEL']);
    if (!existsSync('/dev/kvm')) assert.equal(r.accel, 'tcg');
    const cfg = await lab.config('probe-boot');
    const vm = lab.track(new QemuDriver({ accel: r.accel }).create());
    await vm.boot(cfg, new AbortController().signal);
    await waitForConsole(cfg.consoleLogPath, new RegExp(MARKER));
    await vm.stop(new AbortController().signal);
  });

  it('forcing KVM where the probe refused it fails the boot with QEMU\'s reason and leaves nothing', async (t) => {
    const r = await probeAccelerator();
    if (r.accel === 'kvm' || !existsSync('/dev/kvm')) { t.skip('KVM works here (or is absent)'); return; }
    const cfg = await lab.config('force-kvm');
    const vm = lab.track(new QemuDriver({ accel: 'kvm' }).create());
    let failed: unknown;
    try {
      await vm.boot(cfg, new AbortController().signal);
      // Some broken KVMs start but never run the guest: that is the probe's point.
      await waitForConsole(cfg.consoleLogPath, new RegExp(MARKER), 5000);
    } catch (err) {
      failed = err;
    }
    assert.ok(failed, 'a KVM guest booted although the probe said KVM cannot run guests');
    if (failed instanceof HostFailureError) console.log(`forced KVM: ${failed.message.split('\n')[0]}`);
    await vm.stop(new AbortController().signal);
    await held(vm.exited);
    assert.equal(await pidAlive(vm.pid), false);
    assert.equal(existsSync(runFiles(cfg.runDir).qmpSocket), false);
  });
});
