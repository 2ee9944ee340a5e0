import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseVmm, type VmmProbes } from '../../src/daemon/vmm.js';

const kvmHost = (over: Partial<VmmProbes> = {}): VmmProbes => ({
  accel: async () => ({ accel: 'kvm', reason: 'a guest ran under KVM' }),
  firecrackerVersion: async () => '1.16.1',
  firecrackerKernel: async () => '/var/cache/hearth/kernels/firecracker_x/vmlinux',
  ...over,
});
const cfg = { vmm: 'auto' as const, firecrackerBinary: 'firecracker', firecrackerKernel: null, cacheDir: '/var/cache/hearth' };

test('auto picks Firecracker only when the binary, KVM, netns and a guest kernel are all there', async () => {
  const fc = await chooseVmm(cfg, 'netns', kvmHost());
  assert.equal(fc.kind, 'firecracker');
  assert.equal(fc.firecrackerKernel, '/var/cache/hearth/kernels/firecracker_x/vmlinux');
  assert.match(fc.reason, /Firecracker 1\.16\.1 on KVM/);

  const cases: [string, VmmProbes, 'netns' | 'user', RegExp][] = [
    ['no binary', kvmHost({ firecrackerVersion: async () => { throw new Error('cannot run firecracker --version: ENOENT'); } }), 'netns', /firecracker: cannot run firecracker --version: ENOENT/],
    ['TCG only', kvmHost({ accel: async () => ({ accel: 'tcg', reason: 'KVM cannot run the probe guest' }) }), 'netns', /kvm: KVM cannot run the probe guest/],
    ['user-mode networking', kvmHost(), 'user', /netns: Firecracker has no user-mode networking/],
    ['no kernel', kvmHost({ firecrackerKernel: async () => null }), 'netns', /hearth image kernel --firecracker/],
  ];
  for (const [what, probes, net, why] of cases) {
    const c = await chooseVmm(cfg, net, probes);
    assert.equal(c.kind, 'qemu', what);
    assert.match(c.reason, why, what);
    assert.equal(c.firecrackerKernel, null);
  }
});

test('a configured Firecracker that cannot run is an error naming what is missing; a configured QEMU is never second-guessed', async () => {
  await assert.rejects(chooseVmm({ ...cfg, vmm: 'firecracker' }, 'netns', kvmHost({ accel: async () => ({ accel: 'tcg', reason: 'no vmx/svm' }) })),
    /vmm: firecracker was configured but cannot run here \(kvm: no vmx\/svm\)/);
  let asked = false;
  const q = await chooseVmm({ ...cfg, vmm: 'qemu' }, 'netns', kvmHost({ firecrackerVersion: async () => { asked = true; return '1.16.1'; } }));
  assert.equal(q.kind, 'qemu');
  assert.equal(asked, false);
  const explicit = await chooseVmm({ ...cfg, firecrackerKernel: '/k/vmlinux' }, 'netns', kvmHost({ firecrackerKernel: async () => null }));
  assert.equal(explicit.firecrackerKernel, '/k/vmlinux', 'a configured kernel is used as is');
});

test('on this kind of host (no Firecracker binary, KVM that cannot run ordinary guests) the real probes choose QEMU and say why', { timeout: 60_000 }, async () => {
  const c = await chooseVmm({ ...cfg, firecrackerBinary: 'firecracker-not-installed-here' }, 'netns');
  assert.equal(c.kind, 'qemu');
  assert.match(c.reason, /Firecracker needs firecracker: /);
});
