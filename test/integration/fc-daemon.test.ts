/**
 * The whole sandbox lifecycle through hearthd on Firecracker: runs where
 * hearthd would choose Firecracker by itself (a `firecracker` ≥ 1.10 on PATH or
 * HEARTH_FIRECRACKER, KVM that runs ordinary guests, netns networking, a
 * Firecracker guest kernel built by `hearth image kernel --firecracker`).
 * Skipped elsewhere with the probe's reason (on the development machine: no
 * binary, and /dev/kvm is PVM-only).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseNetwork } from '../../src/network/netns/index.js';
import { chooseVmm } from '../../src/daemon/vmm.js';
import { loadConfig } from '../../src/daemon/config.js';
import { Sandbox } from '../../src/sdk/index.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

const cfg = loadConfig({ cacheDir: process.env['HEARTH_IMAGE_CACHE'] ?? '/var/cache/hearth' });
const choice = await chooseVmm({ ...cfg, vmm: 'auto' }, (await chooseNetwork()).kind);
const skip = choice.kind === 'firecracker' ? false : `hearthd would not choose Firecracker here: ${choice.reason}`;

describe('hearthd on Firecracker: the sandbox lifecycle', { skip }, () => {
  let d: TestDaemon;
  before(async () => { d = await startTestDaemon({ vmm: 'firecracker', cacheDir: cfg.cacheDir }); });
  after(async () => { await d?.stop(); });

  test('create from the warm template, exec, files, pause/resume where it was, snapshot, start from it, fork, destroy', async () => {
    const s = await Sandbox.create({ url: d.url });
    assert.equal(s.info.vmm?.kind, 'firecracker');
    assert.equal(s.info.timings?.op, 'create (restore)');
    assert.ok(!s.info.timings!.steps.some((x) => x.step === 'memory'), 'Firecracker maps the snapshot memory: no copy');
    assert.equal((await s.commands.run('echo hi')).stdout, 'hi\n');
    await s.files.write('/tmp/f', 'data');
    assert.equal(await s.files.read('/tmp/f'), 'data');
    const pid = (await s.commands.run("sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/n.t; mv /tmp/n.t /tmp/n; sleep 0.2; done' >/dev/null 2>&1 & echo $!")).stdout.trim();
    await new Promise((r) => setTimeout(r, 600));
    await s.pause();
    await s.resume();
    assert.equal((await s.commands.run(`kill -0 ${pid} && echo alive`)).stdout, 'alive\n', 'the loop kept its pid');
    const snap = await s.snapshot('fc-it');
    const fromSnap = await Sandbox.create({ url: d.url, snapshot: snap.snapshotID });
    assert.equal(await fromSnap.files.read('/tmp/f'), 'data');
    const [fork] = await s.fork(1);
    assert.equal(await fork!.files.read('/tmp/f'), 'data');
    await Promise.all([s.kill(), fromSnap.kill(), fork!.kill()]);
    await Sandbox.deleteSnapshot(snap.snapshotID, { url: d.url });
  });
});
