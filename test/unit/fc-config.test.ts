/** Pure parts of the Firecracker driver: request bodies, version gates, layout and launch commands. */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { bootArgs, planBoot, planLoad, planSnapshot, sandboxMmds, ROOT, type FirecrackerBootOptions } from '../../src/vmm/firecracker/config.js';
import { launchCommand, vmLayout, idFromArgv, firecrackerId, MOUNTNS_SCRIPT, type JailerSettings } from '../../src/vmm/firecracker/layout.js';
import { atLeast, checkSupported, featuresOf, parseFirecrackerVersion, snapshotCompatible } from '../../src/vmm/firecracker/version.js';
import type { VmConfig } from '../../src/vmm/types.js';
import { FirecrackerSpec } from '../fixtures/fc/spec.js';

const spec = new FirecrackerSpec();
const json = { 'content-length': '1', 'content-type': 'application/json' };
/** Asserts that a body is what the spec accepts for this call (unknown fields included). */
function valid(method: string, path: string, body: unknown): void {
  assert.deepEqual(spec.check(method, path, json, JSON.stringify(body)).violations, [], `${method} ${path} ${JSON.stringify(body)}`);
}

const v1161 = parseFirecrackerVersion('Firecracker v1.16.1\n\nSupported snapshot version: v10.0.0');
const cfg: VmConfig = {
  sandboxId: 'iabc123', vcpus: 2, memoryMib: 512, kernelPath: '/k/vmlinux', kernelArgs: 'quiet ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off',
  rootfsPath: '/d/rootfs', memoryFilePath: '/r/memory', runDir: '/r', consoleLogPath: '/r/console.log',
  network: { kind: 'tap', netnsName: 'hearth-slot3', tapName: 'tap0', mac: '06:00:AC:10:00:02' },
};
const opts = (over: Partial<FirecrackerBootOptions> = {}): FirecrackerBootOptions => ({
  features: featuresOf(v1161), trackDirtyPages: false, hugePages: 'None', driveCache: 'Unsafe', ioEngine: 'Sync', guestCid: 3,
  entropy: true, mmds: true, logLevel: 'Warning', metrics: true, allowNoNetwork: false, enablePci: false, ...over,
});

test('version parsing and the version gates of docs/firecracker.md', () => {
  assert.deepEqual(v1161, { major: 1, minor: 16, patch: 1, text: '1.16.1' });
  assert.equal(parseFirecrackerVersion('Firecracker v1.17.0-dev').text, '1.17.0-dev');
  assert.throws(() => parseFirecrackerVersion('nothing here'), /cannot find a version/);
  const f11 = featuresOf(parseFirecrackerVersion('v1.11.2'));
  assert.equal(f11.networkOverrides, false);
  assert.equal(f11.trackDirtyPagesOnLoad, false);
  const f12 = featuresOf(parseFirecrackerVersion('v1.12.0'));
  assert.equal(f12.networkOverrides, true);
  assert.equal(f12.uffdPageSize, true);
  assert.equal(featuresOf(parseFirecrackerVersion('v1.13.0')).trackDirtyPagesOnLoad, true);
  assert.equal(featuresOf(parseFirecrackerVersion('v1.14.0')).createsLogFiles, true);
  assert.equal(featuresOf(parseFirecrackerVersion('v1.15.9')).vsockOverride, false);
  assert.equal(featuresOf(parseFirecrackerVersion('v1.16.0')).vsockOverride, true);
  assert.equal(featuresOf(parseFirecrackerVersion('v1.16.0')).reliableVsockAfterRestore, false);
  assert.equal(featuresOf(v1161).reliableVsockAfterRestore, true);
  assert.ok(atLeast(v1161, 1, 16, 1) && !atLeast(v1161, 1, 17));
  assert.throws(() => checkSupported(parseFirecrackerVersion('v1.9.1')), /too old/);
  assert.ok(snapshotCompatible('1.16.0', v1161));
  assert.ok(!snapshotCompatible('1.15.1', v1161));
});

test('boot plan: every body is valid against the spec, paths are root-relative', () => {
  const plan = planBoot({ ...cfg, mmds: sandboxMmds('iabc123', 'secret-token') }, opts());
  valid('PUT', '/logger', plan.logger);
  valid('PUT', '/metrics', plan.metrics);
  valid('PUT', '/machine-config', plan.machine);
  valid('PUT', '/boot-source', plan.bootSource);
  for (const d of plan.drives) valid('PUT', `/drives/${d.drive_id}`, d);
  for (const n of plan.nets) valid('PUT', `/network-interfaces/${n.iface_id}`, n);
  valid('PUT', '/vsock', plan.vsock);
  valid('PUT', '/entropy', plan.entropy);
  valid('PUT', '/mmds/config', plan.mmdsConfig);
  valid('PUT', '/mmds', plan.mmds);
  assert.deepEqual(plan.machine, { vcpu_count: 2, mem_size_mib: 512, smt: false, track_dirty_pages: false });
  assert.equal(plan.bootSource.kernel_image_path, ROOT.kernel);
  assert.equal(plan.drives[0]!.path_on_host, 'rootfs');
  assert.equal(plan.drives[0]!.is_read_only, false);
  assert.deepEqual(plan.nets, [{ iface_id: 'eth0', host_dev_name: 'tap0', guest_mac: '06:00:AC:10:00:02' }]);
  assert.deepEqual(plan.vsock, { guest_cid: 3, uds_path: 'v.sock' });
  assert.deepEqual(plan.mmdsConfig, { network_interfaces: ['eth0'], version: 'V2' });
  assert.equal((plan.mmds as { accessTokenHash: string }).accessTokenHash, createHash('sha256').update('secret-token').digest('hex'));
  assert.ok(!JSON.stringify(plan.mmds).includes('secret-token'), 'the token itself never goes into MMDS');
  const huge = planBoot(cfg, opts({ hugePages: '2M', trackDirtyPages: true, mmds: false, entropy: false, metrics: false }));
  assert.equal(huge.machine.huge_pages, '2M');
  assert.equal(huge.machine.track_dirty_pages, true);
  assert.equal(huge.mmds, undefined);
  assert.equal(huge.entropy, undefined);
  assert.equal(huge.metrics, undefined);
});

test('boot args: essentials first unless given, user args kept', () => {
  assert.equal(bootArgs('quiet'), 'console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet');
  assert.equal(bootArgs('console=hvc0 panic=5 init=/sbin/hearth-init'), 'reboot=k i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd console=hvc0 panic=5 init=/sbin/hearth-init');
});

test('bad VM configs are refused before anything starts', () => {
  assert.throws(() => planBoot({ ...cfg, vcpus: 33 }, opts()), /1\.\.32 vCPUs/);
  assert.throws(() => planBoot({ ...cfg, memoryMib: 63 }, opts()), /memoryMib/);
  assert.throws(() => planBoot({ ...cfg, memoryMib: 513 }, opts({ hugePages: '2M' })), /even/);
  assert.throws(() => planBoot({ ...cfg, kernelPath: 'vmlinux' }, opts()), /absolute/);
  assert.throws(() => planBoot({ ...cfg, network: { kind: 'user', forwards: [], guestCidr: '10.0.2.0/24', gateway: '10.0.2.2' } }, opts()), /no user-mode networking/);
  const noNet = planBoot({ ...cfg, network: { kind: 'user', forwards: [], guestCidr: '10.0.2.0/24', gateway: '10.0.2.2' } }, opts({ allowNoNetwork: true }));
  assert.deepEqual(noNet.nets, []);
  assert.equal(noNet.mmdsConfig, undefined, 'MMDS needs a network interface');
  assert.throws(() => planBoot({ ...cfg, network: { kind: 'tap', netnsName: 'x', tapName: 'tap0', mac: 'zz' } }, opts()), /MAC/);
});

test('load plan: backends, dirty tracking per version, overrides only when needed and supported', () => {
  const base = { snapshotPath: '/s/vmstate', backend: { type: 'File' as const, path: '/s/memory' }, recorded: { tapName: 'tap0', vsockPath: 'v.sock' }, resume: true };
  const same = planLoad({ ...base, features: featuresOf(v1161), trackDirtyPages: false, tapName: 'tap0' });
  valid('PUT', '/snapshot/load', same);
  assert.deepEqual(same, { snapshot_path: '/s/vmstate', mem_backend: { backend_type: 'File', backend_path: '/s/memory' }, resume_vm: true });
  const moved = planLoad({ ...base, backend: { type: 'Uffd', path: 'uffd.sock' }, features: featuresOf(v1161), trackDirtyPages: true, tapName: 'tap7' });
  valid('PUT', '/snapshot/load', moved);
  assert.deepEqual(moved.network_overrides, [{ iface_id: 'eth0', host_dev_name: 'tap7' }]);
  assert.equal(moved.track_dirty_pages, true);
  assert.equal(moved.enable_diff_snapshots, undefined);
  const old = planLoad({ ...base, features: featuresOf(parseFirecrackerVersion('v1.12.1')), trackDirtyPages: true, tapName: 'tap0' });
  assert.equal(old.enable_diff_snapshots, true, 'before 1.13 only enable_diff_snapshots exists');
  assert.equal(old.track_dirty_pages, undefined);
  assert.throws(() => planLoad({ ...base, features: featuresOf(parseFirecrackerVersion('v1.11.0')), trackDirtyPages: false, tapName: 'tap9' }), /needs 1\.12/);
  const vs = planLoad({ ...base, recorded: { tapName: 'tap0', vsockPath: '/old/v.sock' }, features: featuresOf(v1161), trackDirtyPages: false, tapName: 'tap0' });
  assert.deepEqual(vs.vsock_override, { uds_path: 'v.sock' });
  assert.throws(() => planLoad({ ...base, recorded: { vsockPath: '/old/v.sock' }, features: featuresOf(parseFirecrackerVersion('v1.15.0')), trackDirtyPages: false }), /1\.16/);
  valid('PUT', '/snapshot/create', planSnapshot('Diff', 'vmstate', 'memory'));
});

const jailer: JailerSettings = {
  binary: '/usr/bin/jailer', uid: 123, gid: 100, chrootBaseDir: '/srv/jailer', cgroupVersion: 2, parentCgroup: 'hearth',
  cgroupLimits: true, memoryOverheadMib: 128, newPidNs: false, resourceLimits: { noFile: 4096 }, cgroupRoot: '/sys/fs/cgroup',
};

test('layouts and launch commands for the three isolation modes', () => {
  const ls = { firecrackerBinary: '/usr/bin/firecracker', mountnsRoot: '/run/hearth/fc-vm', netnsDir: '/run/netns', enablePci: false, jailer };
  const none = vmLayout('iabc', '/var/lib/hearth/sandboxes/iabc', '/c.log', { isolation: 'none', mountnsRoot: ls.mountnsRoot, firecrackerBinary: ls.firecrackerBinary });
  assert.equal(none.root, '/var/lib/hearth/sandboxes/iabc/fc');
  assert.equal(none.apiSocket, '/var/lib/hearth/sandboxes/iabc/fc/api.sock');
  assert.deepEqual(launchCommand(none, ls, cfg.network, cfg), {
    file: 'nsenter', args: ['--net=/run/netns/hearth-slot3', '--', '/usr/bin/firecracker', '--api-sock', none.apiSocket, '--id', 'hearth-iabc'], cwd: none.root,
  });
  const mns = vmLayout('iabc', '/r', '/c.log', { isolation: 'mountns', mountnsRoot: ls.mountnsRoot, firecrackerBinary: ls.firecrackerBinary });
  assert.equal(mns.rootInside, '/run/hearth/fc-vm');
  const m = launchCommand(mns, ls, { kind: 'user', forwards: [], guestCidr: '', gateway: '' }, cfg);
  assert.deepEqual([m.file, ...m.args], ['unshare', '--mount', '--propagation', 'private', '--', '/bin/sh', '-c', MOUNTNS_SCRIPT, 'hearth-fc', '/r/fc', '/run/hearth/fc-vm', '/usr/bin/firecracker', '--api-sock', '/r/fc/api.sock', '--id', 'hearth-iabc']);
  const jl = vmLayout('iabc', '/r', '/c.log', { isolation: 'jailer', mountnsRoot: '', firecrackerBinary: '/usr/bin/firecracker', jailer });
  assert.equal(jl.root, '/srv/jailer/firecracker/hearth-iabc/root');
  assert.equal(jl.apiSocket, '/srv/jailer/firecracker/hearth-iabc/root/api.sock');
  assert.equal(jl.apiSocketArg, '/api.sock');
  assert.equal(jl.pidFile, '/srv/jailer/firecracker/hearth-iabc/root/firecracker.pid');
  assert.equal(jl.cgroupDir, '/sys/fs/cgroup/hearth/hearth-iabc');
  const j = launchCommand(jl, ls, cfg.network, cfg);
  assert.equal(j.file, '/usr/bin/jailer');
  assert.deepEqual(j.args, [
    '--id', 'hearth-iabc', '--exec-file', '/usr/bin/firecracker', '--uid', '123', '--gid', '100', '--chroot-base-dir', '/srv/jailer',
    '--cgroup-version', '2', '--parent-cgroup', 'hearth', '--cgroup', 'cpu.max=200000 100000', '--cgroup', `memory.max=${640 * 1024 * 1024}`,
    '--netns', '/run/netns/hearth-slot3', '--resource-limit', 'no-file=4096', '--', '--api-sock', '/api.sock', '--id', 'hearth-iabc',
  ]);
  assert.equal(idFromArgv(['./firecracker', '--id=hearth-iabc', '--start-time-us=1']), 'hearth-iabc');
  assert.equal(idFromArgv(['firecracker', '--api-sock', 'x', '--id', 'hearth-q']), 'hearth-q');
  assert.throws(() => firecrackerId('bad_id'), /Firecracker id/);
  assert.throws(() => vmLayout('iabc', `/${'x'.repeat(100)}`, '/c', { isolation: 'none', mountnsRoot: '', firecrackerBinary: 'firecracker' }), /longer than 107/);
});
