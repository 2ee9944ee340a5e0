import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { Sandbox } from '../../src/sdk/index.js';
import { alive, startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/** Starts a counter loop that survives its command (setsid) and returns its pid. */
async function startCounter(sbx: Sandbox): Promise<number> {
  const r = await sbx.commands.run(`setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done' >/dev/null 2>&1 < /dev/null & echo $!`);
  return Number(r.stdout.trim());
}
const counter = async (sbx: Sandbox): Promise<number> => Number((await sbx.commands.run('cat /tmp/counter')).stdout.trim());

describe('memory snapshots under QEMU', () => {
  let d: TestDaemon;
  const url = () => d.url;

  before(async () => {
    d = await startTestDaemon();
    // The daemon warms the default template in the background; wait for it so timings below are warm.
    await d.manager.settled();
  });
  after(async () => { await d?.stop(); });

  test('creating from a warm template restores a snapshot instead of booting', async () => {
    const t0 = Date.now();
    const sbx = await Sandbox.create({ url: url() });
    const ms = Date.now() - t0;
    const steps = sbx.info.timings!.steps.map((s) => s.step);
    assert.deepEqual(steps, ['slot', 'disk', 'memory', 'restore', 'agent', 'init']);
    assert.equal((await sbx.commands.run('echo ok')).stdout, 'ok\n');
    process.stderr.write(`# warm create: ${ms} ms (${sbx.info.timings!.steps.map((s) => `${s.step} ${s.ms}`).join(', ')})\n`);
    await sbx.kill();
  });

  test('restored sandboxes get the host clock and their own randomness', async () => {
    const [a, b] = await Promise.all([Sandbox.create({ url: url() }), Sandbox.create({ url: url() })]);
    try {
      for (const s of [a, b]) {
        const guest = Number((await s.commands.run('date +%s')).stdout.trim());
        assert.ok(Math.abs(guest - Date.now() / 1000) < 5, `guest clock is off by ${guest - Date.now() / 1000} s`);
      }
      const cmd = 'head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo; cat /proc/sys/kernel/random/uuid; python3 -c "import uuid; print(uuid.uuid4())" 2>/dev/null || true';
      const [ra, rb] = await Promise.all([a.commands.run(cmd), b.commands.run(cmd)]);
      const la = ra.stdout.trim().split('\n');
      const lb = rb.stdout.trim().split('\n');
      assert.notEqual(la[0], lb[0], 'two clones read the same /dev/urandom bytes');
      assert.notEqual(la[1], lb[1], 'two clones made the same UUID');
    } finally {
      await Promise.all([a.kill(), b.kill()]);
    }
  });

  test('pause stops the VM; resume continues every process where it was, across a daemon restart', async () => {
    const sbx = await Sandbox.create({ url: url() });
    const pid = await startCounter(sbx);
    await new Promise((r) => setTimeout(r, 1000));
    const before = await counter(sbx);
    assert.ok(before > 0);
    const vmPid = (await sbx.getInfo()).vmm!.pid;
    await sbx.pause();
    const paused = await sbx.getInfo();
    assert.equal(paused.state, 'paused');
    assert.equal(paused.vmm, null);
    assert.equal(alive(vmPid), false, 'no VMM process while paused');
    assert.ok((paused.diskUsageBytes ?? 0) > 0, 'paused usage is reported from allocated blocks');
    const health = await fetch(`${url()}/sandboxes/${sbx.id}/envd/health`);
    assert.equal(health.status, 502, 'a paused sandbox is not reachable');

    d = await d.restart();
    assert.equal((await Sandbox.getInfo(sbx.id, { url: url() })).state, 'paused', 'paused survives a daemon restart');

    const again = await Sandbox.connect(sbx.id, { url: url(), resume: false });
    assert.equal(again.info.state, 'paused');
    await again.resume();
    const after = await counter(again);
    assert.ok(after >= before, `counter went back: ${before} → ${after}`);
    assert.ok(after < before + 50, `counter restarted or ran while paused: ${before} → ${after}`);
    const ps = await again.commands.run(`kill -0 ${pid} && echo alive`);
    assert.equal(ps.stdout, 'alive\n', 'the background process kept its pid');
    await new Promise((r) => setTimeout(r, 1000));
    assert.ok(await counter(again) > after, 'the loop runs again after resume');
    const guest = Number((await again.commands.run('date +%s')).stdout.trim());
    assert.ok(Math.abs(guest - Date.now() / 1000) < 5, 'clock is right after resume');
    await again.kill();
  });

  test('a named snapshot starts new sandboxes with its memory and disk; the source keeps running', async () => {
    const src = await Sandbox.create({ url: url(), envs: { FROM: 'source' } });
    await src.files.write('/home/user/state.txt', 'on disk');
    const pid = await startCounter(src);
    const snap = await src.snapshot('it-snap');
    assert.equal((await src.getInfo()).state, 'running');
    assert.ok(snap.sizeBytes > 0);
    await src.files.write('/home/user/state.txt', 'changed after the snapshot');

    const child = await Sandbox.create({ url: url(), snapshot: 'it-snap' });
    assert.equal(await child.files.read('/home/user/state.txt'), 'on disk');
    assert.equal((await child.commands.run(`kill -0 ${pid} && echo alive`)).stdout, 'alive\n');
    assert.equal((await child.commands.run('echo $FROM')).stdout, 'source\n');
    assert.equal(await src.files.read('/home/user/state.txt'), 'changed after the snapshot');
    assert.ok((await Sandbox.listSnapshots({ url: url() })).some((s) => s.snapshotID === snap.snapshotID));

    await Sandbox.deleteSnapshot('it-snap', { url: url() });
    assert.equal((await child.commands.run('echo still here')).stdout, 'still here\n');
    await Promise.all([src.kill(), child.kill()]);
  });

  test('fork gives independent copies of a running sandbox', async () => {
    const parent = await Sandbox.create({ url: url() });
    await parent.files.write('/tmp/shared.txt', 'before fork');
    const t0 = Date.now();
    const forks = await parent.fork(2);
    process.stderr.write(`# fork of 2: ${Date.now() - t0} ms\n`);
    assert.equal(forks.length, 2);
    await forks[0]!.files.write('/tmp/shared.txt', 'fork 0');
    assert.equal(await forks[1]!.files.read('/tmp/shared.txt'), 'before fork');
    assert.equal(await parent.files.read('/tmp/shared.txt'), 'before fork');
    assert.equal((await Sandbox.listSnapshots({ url: url() })).length, 0, 'the fork snapshot is gone');
    await Promise.all([parent.kill(), ...forks.map((f) => f.kill())]);
  });

  test('pause and resume are refused in the wrong state with 409', async () => {
    const sbx = await Sandbox.create({ url: url() });
    await assert.rejects(sbx.resume(), /already running/);
    await sbx.pause();
    await assert.rejects(sbx.pause(), /already paused/);
    await assert.rejects(sbx.snapshot('x'), /only a running sandbox/);
    await sbx.kill();
    assert.equal(existsSync(`${d.cfg.dataDir}/sandboxes/${sbx.id}`), false, 'destroying a paused sandbox removes its files');
  });
});
