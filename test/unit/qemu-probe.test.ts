import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HostFailureError } from '../../src/core/errors.js';
import { PROBE_SUCCESS_STATUS, parseTscKhz, probeAccelerator, probeStubImage } from '../../src/vmm/probe.js';

/**
 * The accelerator probe against fake QEMU binaries (shell scripts that behave
 * like QEMU would for the probe guest): no real VM is started here.
 */
describe('accelerator probe', () => {
  let dir: string;
  let fakeKvm: string;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'hearth-probe-test-'));
    fakeKvm = path.join(dir, 'kvm');
    await writeFile(fakeKvm, '');
  });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  /** A fake qemu: `kvm` and `tcg` are shell snippets run for `-accel kvm` / `-accel tcg`. */
  async function fakeQemu(name: string, kvm: string, tcg: string): Promise<string> {
    const p = path.join(dir, name);
    await writeFile(p, `#!/bin/sh\ncase "$*" in\n  *"-accel kvm"*) ${kvm} ;;\n  *) ${tcg} ;;\nesac\n`);
    await chmod(p, 0o755);
    return p;
  }

  it('the probe guest is a 64 KiB firmware image with a far jump at the reset vector', () => {
    const img = probeStubImage();
    assert.equal(img.length, 65536);
    assert.deepEqual([...img.subarray(0xfff0, 0xfff5)], [0xea, 0x00, 0x00, 0x00, 0xf0]);
    assert.equal(img[0], 0xfa); // cli
    assert.equal(PROBE_SUCCESS_STATUS, (0x21 << 1) | 1);
  });

  it('chooses KVM only when the probe guest exits through isa-debug-exit', async () => {
    const q = await fakeQemu('ok', 'exit 67', 'exit 67');
    const r = await probeAccelerator({ qemuBinary: q, kvmDevice: fakeKvm });
    assert.equal(r.accel, 'kvm');
    assert.match(r.reason, /KVM ran the long-mode probe guest/);
  });

  it('falls back to TCG when QEMU aborts under KVM, and says why', async () => {
    const q = await fakeQemu('abort', 'echo "error: failed to set MSR 0x10a" >&2; kill -ABRT $$', 'exit 67');
    const r = await probeAccelerator({ qemuBinary: q, kvmDevice: fakeKvm });
    assert.equal(r.accel, 'tcg');
    assert.match(r.reason, /exists but KVM cannot run ordinary guests: QEMU was killed by SIGABRT: error: failed to set MSR 0x10a/);
  });

  it('falls back to TCG when the guest crawls under KVM (deadline), killing the probe', async () => {
    const q = await fakeQemu('slow', 'exec sleep 30', 'exit 67');
    const t = Date.now();
    const r = await probeAccelerator({ qemuBinary: q, kvmDevice: fakeKvm, timeoutMs: 300 });
    assert.ok(Date.now() - t < 5000);
    assert.equal(r.accel, 'tcg');
    assert.match(r.reason, /did not finish within 300 ms/);
  });

  it('does not try KVM without a usable device node', async () => {
    const q = await fakeQemu('nokvm', 'exit 67', 'exit 67');
    const r = await probeAccelerator({ qemuBinary: q, kvmDevice: path.join(dir, 'missing') });
    assert.equal(r.accel, 'tcg');
    assert.match(r.reason, /is not usable \(.*ENOENT/);
  });

  it('fails loudly when TCG cannot run the probe guest either', async () => {
    const q = await fakeQemu('broken', 'exit 1', 'echo "qemu: broken" >&2; exit 1');
    await assert.rejects(probeAccelerator({ qemuBinary: q, kvmDevice: fakeKvm }), (err: unknown) =>
      err instanceof HostFailureError && /TCG either: QEMU exited with status 1: qemu: broken/.test(err.message));
    await assert.rejects(probeAccelerator({ qemuBinary: path.join(dir, 'no-such-qemu'), kvmDevice: path.join(dir, 'missing') }), HostFailureError);
  });

  it('caches the result per binary unless asked to refresh', async () => {
    const counter = path.join(dir, 'count');
    const q = await fakeQemu('counting', `echo x >> ${counter}; exit 67`, 'exit 67');
    const a = await probeAccelerator({ qemuBinary: q, kvmDevice: fakeKvm });
    const b = await probeAccelerator({ qemuBinary: q, kvmDevice: fakeKvm });
    assert.equal(a, b);
    await probeAccelerator({ qemuBinary: q, kvmDevice: fakeKvm, refresh: true });
    const { readFile } = await import('node:fs/promises');
    assert.equal((await readFile(counter, 'utf8')).trim().split('\n').length, 2);
  });
});

describe('host TSC rate', () => {
  it('uses cpu MHz inside a VM and the nominal GHz of an Intel model on bare metal', () => {
    const vm = 'processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.126\nflags\t\t: fpu tsc constant_tsc hypervisor\n\nprocessor\t: 1\ncpu MHz\t\t: 1.0\n';
    assert.equal(parseTscKhz(vm), 2596126);
    const intel = 'processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz\ncpu MHz\t\t: 3100.000\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n';
    assert.equal(parseTscKhz(intel), 2400000);
    assert.equal(parseTscKhz('processor\t: 0\n'), undefined);
  });
});
