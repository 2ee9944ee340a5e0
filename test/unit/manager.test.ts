import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { SandboxManager } from '../../src/core/manager.js';
import { Store } from '../../src/store/store.js';
import type { SandboxRecord, SandboxState } from '../../src/core/types.js';
import { silentLogger } from '../../src/core/log.js';
import { AbortedError, CapacityError, ConflictError, HostFailureError, InvalidArgumentError, NotFoundError } from '../../src/core/errors.js';
import type { FaultPoint } from '../helpers/fakes.js';
import { managerFixture } from '../helpers/manager-fixture.js';

function setup(opts: { mapsSnapshotMemory?: boolean } = {}) {
  return managerFixture({ mapsSnapshotMemory: opts.mapsSnapshotMemory ?? false });
}

const signal = () => new AbortController().signal;

/** Puts a row in the state a crash would have left it in (bypassing the manager's transition table). */
function crashState(store: Store, id: string, state: SandboxState, patch: Partial<SandboxRecord> = {}): void {
  const rec = store.getSandbox(id)!;
  store.transitionSandbox({ ...rec, ...patch, state }, rec.state);
}

test('the first create builds the template\'s warm snapshot once; every create then restores it', async () => {
  const t = setup();
  try {
    const [a, b] = await Promise.all([t.m.create({ templateId: 'base' }, signal()), t.m.create({ templateId: 'base' }, signal())]);
    assert.equal(t.w.events.filter((e) => e.startsWith('boot')).length, 1, `one build boot: ${t.w.events.join(', ')}`);
    for (const s of [a, b]) {
      assert.equal(s.state, 'running');
      assert.ok(t.w.events.includes(`restore ${s.id}`));
      assert.deepEqual(s.timings?.steps.map(([n]) => n), ['slot', 'disk', 'memory', 'restore', 'agent', 'init']);
    }
    // The build VM was thrown away; its snapshot's agent holds the build's token, which the first /init presents.
    assert.equal(t.store.listSandboxes({ states: ['destroyed'] }).length, 1);
    const restores = t.w.tokens.slice(1);
    assert.ok(restores.every((x) => x.presented !== undefined && x.presented !== x.set));
    t.w.events.length = 0;
    const c = await t.m.create({ templateId: 'base', envVars: { A: '1' } }, signal());
    assert.deepEqual(t.w.events, ['slot+ 4', `disk+ ${c.id}`, `restore ${c.id}`, 'agent ready?', 'agent init (token presented)']);
    assert.deepEqual(t.store.listJournal(), []);
  } finally { t.done(); }
});

test('a template whose warm snapshot cannot be built still creates by cold boot', async () => {
  const t = setup();
  try {
    t.w.faults.add('snapshot');
    const s = await t.m.create({ templateId: 'base' }, signal());
    assert.equal(s.state, 'running');
    assert.deepEqual(s.timings?.steps.map(([n]) => n), ['slot', 'disk', 'boot', 'agent', 'init']);
    await t.m.settled();
    await t.m.destroy(s.id, signal());
    t.nothingLeft();
  } finally { t.done(); }
});

for (const fault of ['slot.acquire', 'disk.create', 'boot', 'agent.ready', 'agent.init'] as FaultPoint[]) {
  test(`create that fails at ${fault} releases everything in reverse order and keeps the sandbox as failed`, async () => {
    const t = setup();
    try {
      t.w.faults.add(fault);
      if (fault === 'boot') t.w.faults.add('restore');
      await assert.rejects(t.m.create({ templateId: 'base' }, signal()), HostFailureError);
      await t.m.settled();
      t.nothingLeft();
      const [rec] = t.store.listSandboxes().filter((x) => x.metadata['hearth.internal'] === undefined);
      assert.equal(rec?.state, 'failed');
      assert.match(rec?.endReason ?? '', /create failed at/);
      assert.equal(existsSync(join(t.dataDir, 'sandboxes', rec!.id)), false, 'sandbox dir left behind');
      const stopIdx = t.w.events.findIndex((e) => e.startsWith('stop'));
      const diskIdx = t.w.events.findIndex((e) => e.startsWith('disk-'));
      if (stopIdx >= 0 && diskIdx >= 0) assert.ok(stopIdx < diskIdx, `VMM must stop before its disk is removed: ${t.w.events.join(', ')}`);
    } finally { t.done(); }
  });
}

test('a cancelled create still cleans up everything it acquired', async () => {
  const t = setup();
  try {
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(t.m.create({ templateId: 'base' }, ac.signal), AbortedError);
    t.nothingLeft();
    // Cancelled in the middle: the client goes away while its VM is restored.
    await t.m.create({ templateId: 'base' }, signal()).then((s) => t.m.destroy(s.id, signal()));
    const mid = new AbortController();
    t.w.onPoint = (p) => { if (p === 'restore') mid.abort(); };
    await assert.rejects(t.m.create({ templateId: 'base' }, mid.signal), AbortedError);
    t.nothingLeft();
    assert.ok(t.w.events.some((e) => e.startsWith('stop')), 'the booted VM was not stopped');
  } finally { t.done(); }
});

test('create refuses bad input with the field named and unknown templates with 404', async () => {
  const t = setup();
  try {
    await assert.rejects(t.m.create({ templateId: 'nope' }, signal()), NotFoundError);
    await assert.rejects(t.m.create({ templateId: 'base', vcpus: 99 }, signal()), (e: unknown) => e instanceof InvalidArgumentError && e.field === 'cpuCount');
    await assert.rejects(t.m.create({ templateId: 'base', memoryMib: 1 }, signal()), (e: unknown) => e instanceof InvalidArgumentError && e.field === 'memoryMB');
    await assert.rejects(t.m.create({ templateId: 'base', timeoutSec: 0 }, signal()), InvalidArgumentError);
    assert.equal(t.store.listSandboxes().length, 0, 'bad input must not leave a half-made sandbox');
  } finally { t.done(); }
});

test('destroy stops the VMM before removing its disk, and is idempotent', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base' }, signal());
    t.w.events.length = 0;
    await t.m.destroy(s.id, signal());
    assert.deepEqual(t.w.events.map((e) => e.split(' ')[0]), ['stop', 'disk-', 'slot-']);
    await t.m.settled();
    t.nothingLeft();
    const rec = t.m.get(s.id);
    assert.equal(rec.state, 'destroyed');
    assert.equal(rec.endReason, 'destroyed by request');
    await t.m.destroy(s.id, signal());
    await assert.rejects(t.m.destroy('inope', signal()), NotFoundError);
  } finally { t.done(); }
});

test('destroy whose disk removal fails still releases the rest, reports a hard error, and can be retried', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base' }, signal());
    t.w.faults.add('disk.remove');
    await assert.rejects(t.m.destroy(s.id, signal()), /could not release everything/);
    const rec = t.m.get(s.id);
    assert.equal(rec.state, 'failed');
    assert.match(rec.endReason ?? '', /injected disk.remove failure/);
    assert.deepEqual([...t.w.liveVms], []);
    assert.deepEqual([...t.w.slots], []);
    t.w.faults.clear();
    await t.m.destroy(s.id, signal());
    assert.equal(t.m.get(s.id).state, 'destroyed');
    t.nothingLeft();
  } finally { t.done(); }
});

test('a VMM that dies on its own fails the sandbox and releases its resources', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base' }, signal());
    t.driver.vms.find((v) => v.pid === s.vmm!.pid)!.crash();
    for (let i = 0; i < 50 && t.m.get(s.id).state !== 'failed'; i++) await new Promise((r) => setTimeout(r, 10));
    const rec = t.m.get(s.id);
    assert.equal(rec.state, 'failed');
    assert.match(rec.endReason ?? '', /VMM exited unexpectedly/);
    t.nothingLeft();
  } finally { t.done(); }
});

test('recovery adopts a running sandbox whose VM is alive and fails one whose VM is gone', async () => {
  const t = setup();
  try {
    const alive = await t.m.create({ templateId: 'base' }, signal());
    const gone = await t.m.create({ templateId: 'base' }, signal());
    t.m.close();
    // The second VM vanished while no daemon was watching.
    t.w.liveVms.delete(t.m.get(gone.id).vmm!.pid);
    const fresh = new SandboxManager(t.deps);
    const res = await fresh.recover(signal());
    assert.deepEqual(res.adopted, [alive.id]);
    assert.deepEqual(res.failed, [gone.id]);
    assert.equal(fresh.get(gone.id).state, 'failed');
    assert.match(fresh.get(gone.id).endReason ?? '', /VM of this running sandbox was gone/);
    await fresh.destroy(alive.id, signal());
    assert.equal(fresh.get(alive.id).state, 'destroyed');
    fresh.close();
  } finally { t.done(); }
});

test('recovery kills a VM that is ours but cannot be controlled (through the driver\'s forceKill) before its slot and disk are released', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base' }, signal());
    t.m.close();
    const rec = t.store.getSandbox(s.id)!;
    const pid = rec.vmm!.pid;
    // Its control socket no longer answers: adopt throws, so only a kill can get rid of it.
    t.driver.adopt = async (h) => { if (h.pid === pid) throw new HostFailureError('QMP socket does not answer'); return null; };
    t.w.events.length = 0;
    const fresh = new SandboxManager(t.deps);
    const res = await fresh.recover(signal());
    assert.deepEqual(res.failed, [s.id]);
    assert.ok(!t.w.liveVms.has(pid), 'the VM was killed');
    const kill = t.w.events.indexOf(`kill ${pid}`);
    const slot = t.w.events.findIndex((e) => e.startsWith('slot- '));
    const disk = t.w.events.indexOf(`disk- ${s.id}`);
    assert.ok(kill >= 0 && kill < slot && kill < disk, `the VM is killed before its slot and disk are released: ${t.w.events.join(', ')}`);
    assert.deepEqual(t.store.listHoldings(s.id), [], 'everything was released');
    fresh.close();
    t.nothingLeft();
  } finally { t.done(); }
});

test('a VM that cannot be controlled and that the driver does not own (forceKill: false) keeps its holding and the error', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base' }, signal());
    t.m.close();
    const pid = t.store.getSandbox(s.id)!.vmm!.pid;
    t.driver.adopt = async () => { throw new HostFailureError('QMP socket does not answer'); };
    // The pid is not this driver's VM any more (e.g. reused): nothing is killed.
    t.driver.forceKill = async (h) => { t.w.events.push(`kill? ${h.pid}`); return false; };
    const fresh = new SandboxManager(t.deps);
    const res = await fresh.recover(signal());
    assert.deepEqual(res.failed, [s.id]);
    assert.ok(t.w.events.includes(`kill? ${pid}`));
    assert.ok(t.w.liveVms.has(pid), 'nothing was killed');
    assert.match(t.store.getSandbox(s.id)!.endReason ?? '', /vmm: QMP socket does not answer/);
    assert.deepEqual(t.store.listHoldings(s.id).map((h) => h.kind), ['vmm'], 'the VMM holding stays for the next destroy');
    fresh.close();
  } finally { t.done(); }
});

test('timeouts destroy running sandboxes once endAt passes', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base' }, signal());
    t.m.setTimeout(s.id, 0);
    t.m.startExpiry(20);
    for (let i = 0; i < 100 && t.m.get(s.id).state !== 'destroyed'; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(t.m.get(s.id).state, 'destroyed');
    assert.match(t.m.get(s.id).endReason ?? '', /timeout reached/);
    t.nothingLeft();
  } finally { t.done(); }
});

// ---------------------------------------------------------------- pause, resume, snapshots, forks

async function running(t: ReturnType<typeof setup>) {
  const s = await t.m.create({ templateId: 'base', envVars: { K: 'v' } }, signal());
  await t.m.settled();
  t.w.events.length = 0;
  return s;
}

const pausedFiles = (t: ReturnType<typeof setup>, id: string) => ['rootfs.ext4', 'memory', 'vmstate', 'meta.json'].map((f) => existsSync(join(t.dataDir, 'sandboxes', id, 'paused', f)));

test('pause follows the hard-won order: snapshot → stop → detach disk → move files → release slot', async () => {
  const t = setup();
  try {
    const s = await running(t);
    const p = await t.m.pause(s.id, signal());
    assert.equal(p.state, 'paused');
    assert.deepEqual(t.w.events.map((e) => e.split(' ')[0]), ['snapshot', 'stop', 'detach', 'slot-']);
    assert.deepEqual(pausedFiles(t, s.id), [true, true, true, true]);
    assert.deepEqual([...t.w.liveVms], [], 'a paused sandbox has no VMM process');
    assert.deepEqual([...t.w.slots], []);
    await assert.rejects(t.m.pause(s.id, signal()), /already paused/);
  } finally { t.done(); }
});

test('a failed snapshot write resumes the vCPUs: the sandbox stays running and usable', async () => {
  const t = setup();
  try {
    const s = await running(t);
    t.w.faults.add('snapshot');
    await assert.rejects(t.m.pause(s.id, signal()), /resumed and is still running/);
    const vm = t.driver.vms.find((v) => v.pid === s.vmm!.pid)!;
    assert.equal(vm.paused, false, 'vCPUs must be running again');
    assert.equal(t.m.get(s.id).state, 'running');
    assert.ok(t.w.liveVms.has(vm.pid));
    t.w.faults.clear();
    assert.equal((await t.m.pause(s.id, signal())).state, 'paused', 'a later pause works');
  } finally { t.done(); }
});

for (const fault of ['stop', 'disk.detach'] as FaultPoint[]) {
  test(`a pause whose ${fault} fails is a hard error: everything released, sandbox failed with the reason`, async () => {
    const t = setup();
    try {
      const s = await running(t);
      t.w.faults.add(fault);
      await assert.rejects(t.m.pause(s.id, signal()), HostFailureError);
      const rec = t.m.get(s.id);
      assert.equal(rec.state, 'failed');
      assert.match(rec.endReason ?? '', new RegExp(`injected ${fault.replace('.', '\\.')} failure`));
      assert.deepEqual([...t.w.slots], [], 'slot released');
      assert.deepEqual([...t.w.disks], [], 'disk released');
      assert.equal(existsSync(join(t.dataDir, 'sandboxes', s.id)), false, 'no files left');
      assert.deepEqual(t.store.listJournal(), []);
    } finally { t.done(); }
  });
}

test('resume restores from the paused files, re-inits the agent, and removes the paused copy', async () => {
  const t = setup();
  try {
    const s = await running(t);
    await t.m.pause(s.id, signal());
    t.w.events.length = 0;
    const r = await t.m.resume(s.id, signal());
    assert.equal(r.state, 'running');
    assert.deepEqual(t.w.events.map((e) => e.split(' ')[0]), ['slot+', 'attach', 'restore', 'agent', 'agent']);
    assert.equal(existsSync(join(t.dataDir, 'sandboxes', s.id, 'paused')), false);
    assert.equal(t.w.tokens.at(-1)?.presented, s.agentToken, 'resume presents the sandbox\'s own token');
    await assert.rejects(t.m.resume(s.id, signal()), /already running/);
  } finally { t.done(); }
});

test('a resume that fails waiting for the agent stops the VMM, moves the disk back, keeps it paused; the retry works', async () => {
  const t = setup();
  try {
    const s = await running(t);
    await t.m.pause(s.id, signal());
    t.w.faults.add('agent.ready');
    await assert.rejects(t.m.resume(s.id, signal()), /still paused/);
    assert.equal(t.m.get(s.id).state, 'paused');
    assert.deepEqual(pausedFiles(t, s.id), [true, true, true, true], 'paused files intact');
    assert.deepEqual([...t.w.liveVms], []);
    assert.deepEqual([...t.w.slots], []);
    assert.deepEqual(t.store.listJournal(), []);
    t.w.faults.clear();
    assert.equal((await t.m.resume(s.id, signal())).state, 'running');
  } finally { t.done(); }
});

test('a cancelled resume never skips cleanup', async () => {
  const t = setup();
  try {
    const s = await running(t);
    await t.m.pause(s.id, signal());
    const ac = new AbortController();
    t.w.onPoint = (p) => { if (p === 'restore') ac.abort(); };
    await assert.rejects(t.m.resume(s.id, ac.signal), AbortedError);
    t.w.onPoint = () => undefined;
    assert.equal(t.m.get(s.id).state, 'paused');
    assert.deepEqual([...t.w.liveVms], []);
    assert.deepEqual([...t.w.slots], []);
    assert.equal((await t.m.resume(s.id, signal())).state, 'running');
  } finally { t.done(); }
});

test('a named snapshot captures a running sandbox that keeps running; sandboxes start from it by id or name', async () => {
  const t = setup();
  try {
    const s = await running(t);
    const snap = await t.m.snapshot(s.id, 'my-snap', signal());
    assert.equal(t.m.get(s.id).state, 'running');
    assert.ok(t.w.events.includes('resume'), 'the parent is resumed after the freeze');
    for (const f of ['vmstate', 'memory', 'rootfs.ext4']) assert.ok(existsSync(join(snap.dir, f)), f);
    const child = await t.m.create({ templateId: 'my-snap' }, signal());
    assert.equal(child.snapshotId, snap.id);
    assert.deepEqual(child.envVars, { K: 'v' }, 'env vars come with the snapshot');
    assert.equal(t.w.tokens.at(-1)?.presented, s.agentToken, 'the snapshot\'s agent holds the parent\'s token');
    assert.notEqual(child.agentToken, s.agentToken);
    await assert.rejects(t.m.create({ templateId: 'my-snap', memoryMib: 1024 }, signal()), InvalidArgumentError);
    await t.m.deleteSnapshot(snap.id);
    assert.equal(existsSync(snap.dir), false);
    await assert.rejects(t.m.create({ templateId: 'my-snap' }, signal()), NotFoundError);
    assert.equal(t.m.get(child.id).state, 'running', 'a sandbox started from a deleted snapshot is unaffected');
  } finally { t.done(); }
});

test('a failed snapshot leaves no directory and the sandbox running', async () => {
  const t = setup();
  try {
    const s = await running(t);
    t.w.faults.add('disk.flatten');
    await assert.rejects(t.m.snapshot(s.id, 'x', signal()), /disk.flatten/);
    assert.equal(t.m.get(s.id).state, 'running');
    assert.ok(t.w.events.includes('resume'));
    assert.deepEqual(t.m.listSnapshots(), []);
    assert.equal(existsSync(join(t.dataDir, 'snapshots')) ? readdirSync(join(t.dataDir, 'snapshots')).length : 0, 0);
  } finally { t.done(); }
});

test('fork makes N independent sandboxes and removes its temporary snapshot', async () => {
  const t = setup();
  try {
    const s = await running(t);
    const results = await t.m.fork(s.id, 3, undefined, signal());
    assert.equal(results.length, 3);
    assert.ok(results.every((r) => r.sandbox?.state === 'running'));
    assert.equal(new Set(results.map((r) => r.sandbox!.id)).size, 3);
    assert.equal(t.m.get(s.id).state, 'running');
    assert.equal(t.store.listSnapshots({ kind: 'fork' }).length, 0);
    await assert.rejects(t.m.fork(s.id, 0, undefined, signal()), InvalidArgumentError);
  } finally { t.done(); }
});

test('recovery keeps paused sandboxes whose files are complete and fails those whose files are gone', async () => {
  const t = setup();
  try {
    const a = await running(t);
    const b = await running(t);
    await t.m.pause(a.id, signal());
    await t.m.pause(b.id, signal());
    rmSync(join(t.dataDir, 'sandboxes', b.id, 'paused', 'meta.json'));
    t.m.close();
    const fresh = new SandboxManager(t.deps);
    const res = await fresh.recover(signal());
    assert.deepEqual(res.paused, [a.id]);
    assert.deepEqual(res.failed, [b.id]);
    assert.equal((await fresh.resume(a.id, signal())).state, 'running');
    fresh.close();
  } finally { t.done(); }
});

test('onTimeout: pause pauses at the timeout instead of destroying; autoResume resumes on the next request', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base', timeoutSec: 60, lifecycle: { onTimeout: 'pause', autoResume: true } }, signal());
    await t.m.settled();
    t.m.setTimeout(s.id, 0);
    t.m.startExpiry(20);
    for (let i = 0; i < 100 && t.m.get(s.id).state !== 'paused'; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(t.m.get(s.id).state, 'paused');
    assert.equal(t.m.get(s.id).endReason, null);
    const { endpoint } = await t.m.reachable(s.id, signal());
    assert.equal(t.m.get(s.id).state, 'running');
    assert.ok(endpoint.port > 0);
    assert.ok(Date.parse(t.m.get(s.id).endAt) > Date.now() + 50_000, 'a resumed sandbox gets its timeout again');
  } finally { t.done(); }
});

test('without autoResume a paused sandbox is not reachable; autoExtend pushes the end on activity', async () => {
  const t = setup();
  try {
    const a = await t.m.create({ templateId: 'base', timeoutSec: 100 }, signal());
    await t.m.pause(a.id, signal());
    await assert.rejects(t.m.reachable(a.id, signal()), /not running/);
    const b = await t.m.create({ templateId: 'base', timeoutSec: 100, lifecycle: { autoExtend: true } }, signal());
    t.m.setTimeout(b.id, 5);
    await t.m.reachable(b.id, signal());
    assert.ok(Date.parse(t.m.get(b.id).endAt) > Date.now() + 90_000, 'activity extended the end');
  } finally { t.done(); }
});

test('creates beyond host capacity are refused with a clear message; paused sandboxes free capacity', async () => {
  const t = setup();
  try {
    const a = await t.m.create({ templateId: 'base', memoryMib: 2048 }, signal());
    await t.m.create({ templateId: 'base', memoryMib: 2048 }, signal());
    await assert.rejects(t.m.create({ templateId: 'base', memoryMib: 256 }, signal()), (e: unknown) => e instanceof CapacityError && /host capacity reached/.test(e.message));
    await assert.rejects(t.m.fork(a.id, 2, undefined, signal()), CapacityError);
    await t.m.pause(a.id, signal());
    assert.equal((await t.m.create({ templateId: 'base', memoryMib: 256 }, signal())).state, 'running');
    await assert.rejects(t.m.resume(a.id, signal()), CapacityError);
    assert.equal(t.m.get(a.id).state, 'paused');
  } finally { t.done(); }
});

test('a sandbox\'s egress policy is applied to its slot, kept across pause/resume, inherited by forks, and changeable while running or paused', async () => {
  const t = setup();
  try {
    const net = t.deps.network;
    const a = await t.m.create({ templateId: 'base', network: { egress: { internet: false, allow: ['198.51.100.0/24'] }, publicTraffic: false } }, signal());
    const want = { internet: false, allow: ['198.51.100.0/24'], deny: [] };
    assert.deepEqual(t.m.egressOf(a.id), want, 'the slot got the policy at acquire');
    assert.match(a.netPolicy.trafficToken ?? '', /^[A-Za-z0-9_-]{32}$/, 'allowPublicTraffic=false gives a traffic token');
    const ep = await t.m.portEndpoint(a.id, 8080, signal());
    assert.equal(ep.trafficToken, a.netPolicy.trafficToken);

    assert.deepEqual(await t.m.setEgress(a.id, { internet: true }, signal()), { internet: true, allow: [], deny: [] });
    assert.ok(t.w.events.some((e) => /^slot egress \d+ internet=true$/.test(e)));
    await t.m.pause(a.id, signal());
    assert.deepEqual(t.m.egressOf(a.id), { internet: true, allow: [], deny: [] }, 'the recorded policy while paused');
    await t.m.setEgress(a.id, { internet: false, deny: ['198.51.100.7'] }, signal());
    const resumed = await t.m.resume(a.id, signal());
    assert.deepEqual(t.m.egressOf(resumed.id), { internet: false, allow: [], deny: ['198.51.100.7'] }, 'the new slot got the policy set while paused');

    const [child] = await t.m.fork(a.id, 1, undefined, signal());
    assert.deepEqual(t.m.egressOf(child!.sandbox!.id), t.m.egressOf(a.id), 'a fork keeps its parent\'s egress');
    assert.ok(child!.sandbox!.netPolicy.trafficToken && child!.sandbox!.netPolicy.trafficToken !== a.netPolicy.trafficToken, 'and gets its own traffic token');

    // A failed policy change leaves the old policy in force and recorded.
    t.w.faults.add('slot.setEgress');
    await assert.rejects(t.m.setEgress(a.id, { internet: true }, signal()), HostFailureError);
    t.w.faults.delete('slot.setEgress');
    assert.deepEqual(t.store.getSandbox(a.id)!.netPolicy.egress, { internet: false, allow: [], deny: ['198.51.100.7'] });
    assert.equal(net.egress.size, 2);

    for (const s of t.m.list()) if (s.state !== 'destroyed') await t.m.destroy(s.id, signal());
    await assert.rejects(t.m.setEgress(a.id, {}, signal()), /destroyed; its network can change while it runs or is paused/);
    t.nothingLeft();
  } finally { t.done(); }
});

test('a policy the network backend can\'t honour is refused before any sandbox exists', async () => {
  const t = setup();
  try {
    t.deps.network.checkEgress = () => { throw new InvalidArgumentError('this host runs sandboxes on user-mode networking, which has no egress', 'network'); };
    await assert.rejects(t.m.create({ templateId: 'base', network: { egress: { internet: true } } }, signal()), InvalidArgumentError);
    await t.m.settled();
    assert.deepEqual(t.store.listSandboxes({}), [], 'no record, not even a failed one or a warm-snapshot build\'s');
    assert.deepEqual(t.w.events, [], 'nothing was booted for it, not even the template\'s warm snapshot');
    t.nothingLeft();
  } finally { t.done(); }
});

test('a VMM that maps snapshot memory privately (Firecracker) gets the snapshot\'s file as is: no copies on create, resume or snapshot', async () => {
  const t = setup({ mapsSnapshotMemory: true });
  try {
    // Memory clones are counted where the fake cloner reaches its fault point (it logs no event).
    let clones = 0;
    t.w.onPoint = (p) => { if (p === 'clone') clones++; };
    const a = await t.m.create({ templateId: 'base' }, signal());
    assert.equal(clones, 0, 'no memory clone on create');
    assert.ok(t.w.events.some((e) => /^map [0-9a-f]{16}-1c-256m-[a-z0-9]{8}\/memory$/.test(e)), `restored from the template snapshot's file: ${t.w.events.join(', ')}`);
    assert.ok(t.w.events.some((e) => e.startsWith('ready ')), 'the VMM was told the guest is ready');
    t.w.events.length = 0;
    await t.m.pause(a.id, signal());
    const pausedFiles = readdirSync(join(t.dataDir, 'sandboxes', a.id, 'paused')).sort();
    assert.deepEqual(pausedFiles, ['firecracker.json', 'memory', 'meta.json', 'rootfs.ext4', 'vmstate'], 'everything the VMM wrote moved into the paused dir');
    await t.m.resume(a.id, signal());
    assert.ok(t.w.events.includes('map paused/memory'), t.w.events.join(', '));
    const snap = await t.m.snapshot(a.id, 'fc-named', signal());
    assert.deepEqual(readdirSync(snap.dir).sort(), ['firecracker.json', 'memory', 'rootfs.ext4', 'vmstate']);
    const b = await t.m.create({ templateId: 'fc-named' }, signal());
    assert.equal(b.state, 'running');
    assert.equal(clones, 0, 'memory was never copied');
    for (const s of t.m.list()) if (s.state !== 'destroyed') await t.m.destroy(s.id, signal());
    await t.m.deleteSnapshot(snap.id);
    t.nothingLeft();
  } finally { t.done(); }
});

test('recovery undoes a pause or snapshot the daemon died in before the VMM was stopped: vCPUs resumed, sandbox adopted running', async () => {
  const t = setup();
  try {
    const a = await t.m.create({ templateId: 'base' }, signal());
    const b = await t.m.create({ templateId: 'base' }, signal());
    const c = await t.m.create({ templateId: 'base' }, signal());
    t.m.close();
    // a: died in pause's flush (vCPUs frozen); b: died in a snapshot's capture; c: died after pause stopped the VMM.
    const vmOf = (id: string) => t.driver.vms.find((v) => v.pid === t.store.getSandbox(id)!.vmm!.pid)!;
    crashState(t.store, a.id, 'pausing');
    t.store.journalStep(t.store.journalBegin(a.id, 'pause', 'start'), 'flush');
    vmOf(a.id).paused = true;
    t.store.journalStep(t.store.journalBegin(b.id, 'snapshot', 'start'), 'freeze+state');
    vmOf(b.id).paused = true;
    crashState(t.store, c.id, 'pausing');
    t.store.journalStep(t.store.journalBegin(c.id, 'pause', 'start'), 'detach');
    const fresh = new SandboxManager(t.deps);
    const res = await fresh.recover(signal());
    assert.deepEqual(res.adopted.sort(), [a.id, b.id].sort());
    assert.deepEqual(res.failed, [c.id], 'a pause past its stop step has no VM to go back to');
    for (const id of [a.id, b.id]) {
      assert.equal(fresh.get(id).state, 'running');
      assert.equal(vmOf(id).paused, false, 'its vCPUs run again');
    }
    assert.deepEqual(t.store.listJournal(), []);
    for (const s of fresh.list()) if (s.state !== 'destroyed') await fresh.destroy(s.id, signal());
    fresh.close();
    t.nothingLeft();
  } finally { t.done(); }
});

// ---------------------------------------------------------------- fault matrix gaps (docs/reliability.md)

const enospc = (): Error => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });

test('fault matrix: ENOSPC at create, pause and snapshot fails the step cleanly, says so, and leaves the sandbox as defined', async () => {
  const t = setup();
  try {
    t.w.errors.set('disk.create', enospc);
    t.w.faults.add('disk.create');
    await assert.rejects(t.m.create({ templateId: 'base' }, signal()), /no space left on device/);
    t.w.faults.clear();
    t.nothingLeft();
    const s = await running(t);
    t.w.errors.set('snapshot', enospc);
    t.w.faults.add('snapshot');
    await assert.rejects(t.m.pause(s.id, signal()), /still running: ENOSPC/);
    assert.equal(t.m.get(s.id).state, 'running', 'a pause that cannot write its snapshot leaves a running sandbox');
    assert.equal(existsSync(join(t.dataDir, 'sandboxes', s.id, 'pause-staging')), false);
    await assert.rejects(t.m.snapshot(s.id, 'full-disk', signal()), /ENOSPC/);
    assert.equal(t.m.get(s.id).state, 'running');
    assert.deepEqual(t.store.listSnapshots({ kind: 'named' }), []);
    assert.deepEqual(readdirSync(join(t.dataDir, 'snapshots')), [], 'no half snapshot directory');
    t.w.faults.clear();
    await t.m.destroy(s.id, signal());
    t.nothingLeft();
  } finally { t.done(); }
});

test('fault matrix: a VMM that will not stop during destroy is a hard error; disk and slot are still released and a retry finishes', async () => {
  const t = setup();
  try {
    const s = await running(t);
    t.w.faults.add('stop');
    await assert.rejects(t.m.destroy(s.id, signal()), /could not release everything/);
    assert.equal(t.m.get(s.id).state, 'failed');
    assert.match(t.m.get(s.id).endReason ?? '', /injected stop failure/);
    assert.deepEqual([...t.w.disks], [], 'the disk was still removed');
    assert.deepEqual([...t.w.slots], [], 'the slot was still released');
    t.w.faults.clear();
    await t.m.destroy(s.id, signal());
    assert.equal(t.m.get(s.id).state, 'destroyed');
    t.nothingLeft();
  } finally { t.done(); }
});

test('fault matrix: a fork whose capture fails, or is cancelled, leaves the source running and no temporary snapshot', async () => {
  const t = setup();
  try {
    const s = await running(t);
    t.w.faults.add('snapshot');
    await assert.rejects(t.m.fork(s.id, 2, undefined, signal()));
    t.w.faults.clear();
    assert.equal(t.m.get(s.id).state, 'running');
    assert.ok(t.w.events.includes('resume'), 'the source was resumed');
    const ac = new AbortController();
    t.w.onPoint = (p) => { if (p === 'snapshot') ac.abort(); };
    await assert.rejects(t.m.fork(s.id, 2, undefined, ac.signal));
    t.w.onPoint = () => undefined;
    assert.equal(t.m.get(s.id).state, 'running');
    assert.equal(t.store.listSnapshots({ kind: 'fork' }).length, 0);
    assert.deepEqual(readdirSync(join(t.dataDir, 'snapshots')), []);
    assert.equal(t.m.list(['running']).filter((x) => !x.metadata['hearth.internal']).length, 1, 'no child was made');
    await t.m.destroy(s.id, signal());
    t.nothingLeft();
  } finally { t.done(); }
});

test('fault matrix: hearthd killed mid-create, mid-resume and mid-destroy: after recovery every sandbox is in a defined state and nothing is held', async () => {
  const t = setup();
  try {
    const resuming = await running(t);
    const destroying = await running(t);
    await t.m.pause(resuming.id, signal());
    // The daemon "dies" while three operations wait: its process is gone, what they wrote to the store stays.
    t.w.hangs.add('agent.ready');
    void t.m.create({ templateId: 'base' }, signal());
    void t.m.resume(resuming.id, signal());
    const journalAt = async (op: string, step: string) => {
      for (let i = 0; i < 200 && !t.store.listJournal().some((j) => j.op === op && j.step === step); i++) await new Promise((r) => setTimeout(r, 5));
      assert.ok(t.store.listJournal().some((j) => j.op === op && j.step === step), `${op} reached ${step}`);
    };
    await journalAt('create', 'agent');
    await journalAt('resume', 'agent');
    t.w.hangs.add('disk.remove');
    void t.m.destroy(destroying.id, signal());
    await journalAt('destroy', 'disk');
    t.m.close();
    t.w.hangs.clear();
    const creating = t.store.listSandboxes({ states: ['creating'] })[0]!;
    assert.equal(t.store.getSandbox(resuming.id)!.state, 'resuming');
    assert.equal(pausedFiles(t, resuming.id)[0], false, 'mid-resume, the disk was already moved out of paused/');

    const fresh = new SandboxManager(t.deps);
    const res = await fresh.recover(signal());
    await fresh.reconcile();
    assert.deepEqual(res.paused, [resuming.id], 'the interrupted resume is paused again');
    assert.deepEqual(pausedFiles(t, resuming.id), [true, true, true, true], 'its disk is back in paused/ with the rest');
    assert.deepEqual(res.failed.sort(), [creating.id, destroying.id].sort());
    assert.match(fresh.get(creating.id).endReason ?? '', /daemon stopped during create \(step agent\)/);
    assert.deepEqual([...t.w.liveVms], [], 'no VM left running');
    assert.deepEqual([...t.w.slots], [], 'no slot held');
    assert.deepEqual([...t.w.disks], [], 'no live disk: the resumed one went back into its dir');
    assert.deepEqual(t.store.listJournal(), []);
    await fresh.destroy(destroying.id, signal());
    assert.equal(fresh.get(destroying.id).state, 'destroyed', 'a destroy interrupted by the crash finishes on the next call');
    assert.equal((await fresh.resume(resuming.id, signal())).state, 'running', 'and the paused one resumes');
    for (const s of fresh.list()) if (s.state !== 'destroyed') await fresh.destroy(s.id, signal());
    fresh.close();
    t.nothingLeft();
  } finally { t.done(); }
});

test('fault matrix: reconcile reaps orphans it finds: a VM under the data dir nobody owns, sandbox and snapshot directories without a row', async () => {
  const t = setup();
  try {
    const s = await running(t);
    const orphanVm = t.driver.create();
    const orphanDir = join(t.dataDir, 'sandboxes', 'iorphan');
    mkdirSync(orphanDir, { recursive: true });
    await orphanVm.boot({
      sandboxId: 'iorphan', vcpus: 1, memoryMib: 256, kernelPath: '/k', kernelArgs: '', rootfsPath: '/d', memoryFilePath: join(orphanDir, 'memory'),
      runDir: orphanDir, consoleLogPath: '/dev/null', network: { kind: 'user', forwards: [], guestCidr: '10.0.2.15/24', gateway: '10.0.2.2' },
    }, signal());
    t.driver.list = async () => [
      { sandboxId: s.id, pid: t.m.get(s.id).vmm!.pid, runDir: join(t.dataDir, 'sandboxes', s.id) },
      { sandboxId: 'iorphan', pid: orphanVm.pid, runDir: orphanDir },
      { sandboxId: 'iforeign', pid: 99999, runDir: '/elsewhere/sandboxes/iforeign' },
    ];
    mkdirSync(join(t.dataDir, 'snapshots', 'sorphan'), { recursive: true });
    const report = await t.m.reconcile();
    assert.deepEqual(report.killedVms, [{ sandboxId: 'iorphan', pid: orphanVm.pid }]);
    assert.ok(!t.w.liveVms.has(orphanVm.pid));
    assert.ok(t.w.liveVms.has(t.m.get(s.id).vmm!.pid), 'an owned VM is untouched');
    assert.deepEqual(report.removedSandboxDirs, ['iorphan']);
    assert.deepEqual(report.removedSnapshotDirs, ['sorphan']);
    assert.equal(t.m.lastReconcileReport(), report);
    await t.m.destroy(s.id, signal());
    t.nothingLeft();
  } finally { t.done(); }
});

test('fault matrix: a pause cancelled mid-snapshot leaves a running sandbox; a VMM that crashes after its snapshot was written still pauses, and resumes', async () => {
  const t = setup();
  try {
    const s = await running(t);
    const ac = new AbortController();
    t.w.onPoint = (p) => { if (p === 'snapshot') ac.abort(); };
    await assert.rejects(t.m.pause(s.id, ac.signal));
    t.w.onPoint = () => undefined;
    assert.equal(t.m.get(s.id).state, 'running');
    assert.equal(existsSync(join(t.dataDir, 'sandboxes', s.id, 'pause-staging')), false);
    // The VMM dies on its own between the (flushed) snapshot and the stop step.
    const vm = t.driver.vms.find((v) => v.pid === t.m.get(s.id).vmm!.pid)!;
    t.w.onPoint = (p) => { if (p === 'stop') vm.crash(); };
    await t.m.pause(s.id, signal());
    t.w.onPoint = () => undefined;
    assert.equal(t.m.get(s.id).state, 'paused', 'the capture was complete: nothing is lost');
    assert.deepEqual(pausedFiles(t, s.id), [true, true, true, true]);
    assert.equal((await t.m.resume(s.id, signal())).state, 'running');
    await t.m.destroy(s.id, signal());
    t.nothingLeft();
  } finally { t.done(); }
});

// ---------------------------------------------------------------- snapshot compatibility (issue #12, defect 3)

test('a changed VMM compatibility key (KVM/TCG, VMM release) rebuilds the warm snapshot instead of failing creates', async () => {
  const t = setup();
  try {
    const a = await running(t);
    const [old] = t.store.listSnapshots({ kind: 'template' });
    assert.equal(old?.compat, 'fake=1 accel=tcg cpu=max', 'the warm snapshot records the key it was taken with');
    await t.m.destroy(a.id, signal());
    t.m.close();
    t.driver.compat = 'fake=1 accel=kvm cpu=host';
    const fresh = new SandboxManager(t.deps);
    await fresh.recover(signal());
    assert.deepEqual(t.store.listSnapshots({ kind: 'template' }), [], 'a warm snapshot of another key is dropped at start');
    t.w.events.length = 0;
    const b = await fresh.create({ templateId: 'base' }, signal());
    assert.equal(b.state, 'running');
    assert.equal(t.w.events.filter((e) => e.startsWith('boot')).length, 1, 'one build boot for the new key');
    const [now] = t.store.listSnapshots({ kind: 'template' });
    assert.equal(now?.compat, 'fake=1 accel=kvm cpu=host');
    await fresh.destroy(b.id, signal());
    await fresh.settled();
    fresh.close();
    t.nothingLeft();
  } finally { t.done(); }
});

test('a user snapshot the VMM cannot load here is a 409 naming the mismatch, before anything is acquired', async () => {
  const t = setup();
  try {
    const s = await running(t);
    await t.m.snapshot(s.id, 'before-upgrade', signal());
    t.m.close();
    t.driver.compat = 'fake=2 accel=kvm cpu=max';
    const fresh = new SandboxManager(t.deps);
    await fresh.recover(signal());
    const before = t.store.listSandboxes().length;
    t.w.events.length = 0;
    await assert.rejects(fresh.create({ templateId: 'before-upgrade' }, signal()),
      (e: unknown) => e instanceof ConflictError && /fake 1 → 2/.test(e.message) && /accel tcg → kvm/.test(e.message) && !/cpu/.test(e.message));
    assert.equal(t.store.listSandboxes().length, before, 'no sandbox row for a refused create');
    assert.deepEqual(t.w.events, [], 'nothing was acquired');
    for (const x of fresh.list()) if (x.state !== 'destroyed') await fresh.destroy(x.id, signal());
    fresh.close();
    t.nothingLeft();
  } finally { t.done(); }
});

// ---------------------------------------------------------------- the seed's rules, each guarded by a test

test('rule: a pause that fails moving memory/metadata releases slot and disk, removes its files, and drops the sandbox from the live map', async () => {
  const t = setup();
  try {
    const s = await running(t);
    const gone: string[] = [];
    t.m.events.on('vm-gone', (id) => gone.push(id));
    // The memory file vanishes between the snapshot and the move: the move step fails after the VMM stopped.
    t.w.onPoint = (p) => { if (p === 'stop') rmSync(join(t.dataDir, 'sandboxes', s.id, 'memory'), { force: true }); };
    await assert.rejects(t.m.pause(s.id, signal()), (e: unknown) => e instanceof HostFailureError && /pause failed after the VM stopped: ENOENT/.test(e.message));
    t.w.onPoint = () => undefined;
    const rec = t.m.get(s.id);
    assert.equal(rec.state, 'failed');
    assert.equal(rec.timings?.steps.at(-1)?.[0], 'move', 'it failed in the move step');
    assert.deepEqual([...t.w.slots], [], 'slot released');
    assert.deepEqual([...t.w.disks], [], 'disk released');
    assert.equal(existsSync(join(t.dataDir, 'sandboxes', s.id)), false, 'no files left');
    assert.deepEqual(gone, [s.id], 'the proxies were told the VM is gone');
    assert.equal(await t.m.diskUsage(s.id), null, 'the sandbox is no longer in the live map');
    await assert.rejects(t.m.portEndpoint(s.id, 8080, signal()), /not running/);
    assert.deepEqual(t.store.listHoldings(s.id), [], 'the ledger is empty');
    t.nothingLeft();
  } finally { t.done(); }
});

test('rule: resume keeps the sandbox\'s vCPU count and memory (a 2-vCPU sandbox restores with 2 vCPUs)', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base', vcpus: 2, memoryMib: 512 }, signal());
    await t.m.pause(s.id, signal());
    const r = await t.m.resume(s.id, signal());
    const vm = t.driver.vms.find((v) => v.pid === r.vmm!.pid)!;
    assert.equal(vm.cfg?.vcpus, 2, 'the restored VM has the sandbox\'s vCPUs, not the template\'s 1');
    assert.equal(vm.cfg?.memoryMib, 512);
    assert.equal(r.vcpus, 2);
    await t.m.destroy(s.id, signal());
  } finally { t.done(); }
});

test('rule: cleanup runs on signals the caller\'s abort cannot cancel (the fakes refuse aborted signals)', async () => {
  const t = setup();
  try {
    await running(t);
    // Create, cancelled once the VM runs: stop, memory, disk, slot and dir are released all the same.
    const ac = new AbortController();
    t.w.onPoint = (p) => { if (p === 'agent.init') ac.abort(); };
    await assert.rejects(t.m.create({ templateId: 'base' }, ac.signal), AbortedError);
    t.w.onPoint = () => undefined;
    const failed = t.store.listSandboxes({ states: ['failed'] })[0]!;
    assert.doesNotMatch(failed.endReason ?? '', /cleanup/, `cleanup had no error: ${failed.endReason}`);
    assert.deepEqual(t.store.listHoldings(failed.id), []);
    // Resume, cancelled after the restore: the VM stops and the disk goes back, though the request is gone.
    const s = t.m.list(['running'])[0]!;
    await t.m.pause(s.id, signal());
    const rc = new AbortController();
    t.w.onPoint = (p) => { if (p === 'agent.init') rc.abort(); };
    await assert.rejects(t.m.resume(s.id, rc.signal), AbortedError);
    t.w.onPoint = () => undefined;
    assert.equal(t.m.get(s.id).state, 'paused');
    assert.deepEqual(pausedFiles(t, s.id), [true, true, true, true]);
    for (const x of t.m.list()) if (x.state !== 'destroyed') await t.m.destroy(x.id, signal());
    t.nothingLeft();
  } finally { t.done(); }
});

test('rule: pause records its per-step timings on the sandbox and logs them on one line', async () => {
  const lines: { msg: string; obj: Record<string, unknown> }[] = [];
  const log = silentLogger();
  const capture = Object.assign(Object.create(log) as typeof log, {
    info: (obj: Record<string, unknown>, msg: string) => { lines.push({ obj, msg }); },
  });
  const t = setup();
  try {
    const m = new SandboxManager({ ...t.deps, log: capture });
    const s = await m.create({ templateId: 'base' }, signal());
    await m.settled();
    const p = await m.pause(s.id, signal());
    const names = ['snapshot', 'flush', 'stop', 'detach', 'move', 'release'];
    assert.deepEqual(p.timings?.op, 'pause');
    assert.deepEqual(p.timings?.steps.map(([n]) => n), names);
    assert.ok(p.timings!.steps.every(([, ms]) => Number.isInteger(ms) && ms >= 0));
    assert.deepEqual(t.store.getSandbox(s.id)!.timings, p.timings, 'stored with the sandbox');
    const line = lines.find((l) => l.obj['op'] === 'pause' && l.obj['outcome'] === 'ok');
    assert.ok(line, 'one log line for the pause');
    assert.match(line.msg, new RegExp(`^pause ${s.id} ok in \\d+ ms: ${names.map((n) => `${n} \\d+ ms`).join(', ')}$`));
    assert.deepEqual(Object.keys(line.obj['steps'] as object), names);
    m.close();
  } finally { t.done(); }
});
