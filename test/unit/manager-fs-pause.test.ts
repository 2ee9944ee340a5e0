/**
 * Filesystem-only pause and its resume by boot (docs/snapshots.md,
 * "Filesystem-only pause"), the lifecycle fields that ask for it at the
 * timeout, and `endAt` counted from when a sandbox runs, on the fakes
 * (test/helpers/fakes.ts): the order of host actions, every failure path, and
 * recovery after the daemon dies in the middle.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { SandboxManager } from '../../src/core/manager.js';
import { AbortedError, ConflictError, HostFailureError, InvalidArgumentError } from '../../src/core/errors.js';
import type { AgentControlApi } from '../../src/core/flows/context.js';
import type { FaultPoint } from '../helpers/fakes.js';
import { managerFixture } from '../helpers/manager-fixture.js';

function setup(opts: { mapsSnapshotMemory?: boolean; agentDelayMs?: number } = {}) {
  // A slow start: the agent answers only after `agentDelayMs` (a create that takes a while).
  const slow = (base: (e: unknown, token: string | undefined) => AgentControlApi) => (e: unknown, token: string | undefined): AgentControlApi => {
    const a = base(e, token);
    return { ...a, waitUntilReady: async (o) => { await new Promise((r) => setTimeout(r, opts.agentDelayMs ?? 0)); return a.waitUntilReady(o); } };
  };
  return managerFixture({ prefix: 'hearth-fspause-', mapsSnapshotMemory: opts.mapsSnapshotMemory ?? false, ...(opts.agentDelayMs ? { agent: slow } : {}) });
}
type T = ReturnType<typeof setup>;

const signal = () => new AbortController().signal;

async function running(t: T, input: Parameters<SandboxManager['create']>[0] = { templateId: 'base', envVars: { K: 'v' } }) {
  const s = await t.m.create(input, signal());
  await t.m.settled();
  t.w.events.length = 0;
  return s;
}

const sandboxFile = (t: T, id: string, ...p: string[]) => join(t.dataDir, 'sandboxes', id, ...p);
/** rootfs.ext4, memory, vmstate, meta.json in paused/. */
const pausedFiles = (t: T, id: string) => ['rootfs.ext4', 'memory', 'vmstate', 'meta.json'].map((f) => existsSync(sandboxFile(t, id, 'paused', f)));
const kinds = (t: T, id: string) => t.store.listHoldings(id).map((r) => r.kind);

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 400 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(cond(), what);
}

test('filesystem-only pause: sync through the agent → stop → detach the disk → meta.json; no memory or device state kept', async () => {
  const t = setup();
  try {
    const s = await running(t);
    assert.ok(existsSync(sandboxFile(t, s.id, 'memory')), 'the running VM has its memory file');
    const p = await t.m.pause(s.id, signal(), { memory: false });
    assert.equal(p.state, 'paused');
    assert.deepEqual(t.w.events.map((e) => e.split(' ').slice(0, 2).join(' ')), ['agent sync', `stop ${s.vmm!.pid}`, `detach ${s.id}`, `slot- ${t.w.events.at(-1)!.split(' ')[1]}`]);
    assert.ok(t.w.events[0]!.includes('token presented'), 'the sync is sent with the sandbox\'s token');
    assert.deepEqual(pausedFiles(t, s.id), [true, false, false, true], 'the disk and meta.json only');
    assert.equal(existsSync(sandboxFile(t, s.id, 'memory')), false, 'the VM\'s memory file is gone');
    const meta = JSON.parse(readFileSync(sandboxFile(t, s.id, 'paused', 'meta.json'), 'utf8')) as { memory: boolean; disk: unknown };
    assert.equal(meta.memory, false);
    assert.ok(meta.disk, 'meta.json carries the disk token');
    assert.deepEqual(kinds(t, s.id), ['dir', 'paused']);
    assert.equal(t.m.pausedWithMemory(s.id), false);
    assert.deepEqual(p.timings, { op: 'pause (filesystem)', steps: p.timings!.steps });
    assert.deepEqual(p.timings!.steps.map(([n]) => n), ['sync', 'stop', 'detach', 'meta', 'release']);
    assert.deepEqual([...t.w.liveVms], []);
    assert.deepEqual([...t.w.slots], []);
    assert.deepEqual(t.store.listJournal(), []);
    await assert.rejects(t.m.pause(s.id, signal(), { memory: false }), ConflictError, 'already paused');
  } finally { t.done(); }
});

test('a filesystem-only pause resumes by booting the template\'s kernel on its disk: /init as after a create (own token, env), endAt from now', async () => {
  const t = setup();
  try {
    const s = await running(t, { templateId: 'base', envVars: { K: 'v' }, timeoutSec: 120 });
    await t.m.pause(s.id, signal(), { memory: false });
    t.w.events.length = 0;
    const before = t.w.tokens.length;
    const r = await t.m.resume(s.id, signal());
    assert.equal(r.state, 'running');
    assert.deepEqual(t.w.events.map((e) => e.split(' ')[0]), ['slot+', 'attach', 'boot', 'agent', 'agent']);
    assert.ok(t.w.events.includes(`boot ${s.id}`), 'a boot, not a restore');
    assert.ok(!t.w.events.some((e) => e.startsWith('restore')));
    assert.deepEqual(t.w.tokens.slice(before), [{ presented: undefined, set: s.agentToken }], 'a booted agent has no token; /init gives it the sandbox\'s own');
    assert.deepEqual(r.timings?.op, 'resume (boot)');
    assert.deepEqual(r.timings?.steps.map(([n]) => n), ['slot', 'attach', 'boot', 'agent', 'init']);
    assert.ok(Math.abs(Date.parse(r.endAt) - (Date.now() + 120_000)) < 2000, 'endAt counts from the resume');
    assert.equal(existsSync(sandboxFile(t, s.id, 'paused')), false, 'the paused dir is gone');
    assert.equal(t.m.pausedWithMemory(s.id), null);
    assert.deepEqual(kinds(t, s.id).sort(), ['dir', 'disk', 'memory', 'slot', 'vmm']);
    // It runs as any sandbox: a memory pause and resume next, then a filesystem-only one again, then destroy.
    assert.equal((await t.m.pause(s.id, signal())).state, 'paused');
    assert.equal(t.m.pausedWithMemory(s.id), true);
    assert.deepEqual(pausedFiles(t, s.id), [true, true, true, true]);
    t.w.events.length = 0;
    await t.m.resume(s.id, signal());
    assert.ok(t.w.events.includes(`restore ${s.id}`), 'a memory pause restores');
    await t.m.pause(s.id, signal(), { memory: false });
    await t.m.resume(s.id, signal());
    await t.m.destroy(s.id, signal());
    t.nothingLeft();
    assert.equal(existsSync(sandboxFile(t, s.id)), false);
  } finally { t.done(); }
});

test('a sync that fails leaves the sandbox running and untouched; the next pause (either kind) works', async () => {
  const t = setup();
  try {
    const s = await running(t);
    t.w.faults.add('agent.sync');
    await assert.rejects(t.m.pause(s.id, signal(), { memory: false }), /pause of .* failed; the sandbox is still running: injected agent\.sync failure/);
    assert.deepEqual(t.w.events, ['agent sync (token presented)'], 'nothing was frozen or stopped');
    const rec = t.m.get(s.id);
    assert.equal(rec.state, 'running');
    assert.ok(t.w.liveVms.has(rec.vmm!.pid));
    assert.ok(existsSync(sandboxFile(t, s.id, 'memory')));
    assert.equal(existsSync(sandboxFile(t, s.id, 'paused')), false);
    assert.deepEqual(kinds(t, s.id).sort(), ['dir', 'disk', 'memory', 'slot', 'vmm']);
    assert.deepEqual(t.store.listJournal(), []);
    // A cancelled one too.
    t.w.faults.clear();
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(t.m.pause(s.id, ac.signal, { memory: false }));
    assert.equal(t.m.get(s.id).state, 'running');
    assert.equal((await t.m.pause(s.id, signal(), { memory: false })).state, 'paused');
  } finally { t.done(); }
});

for (const fault of ['stop', 'disk.detach'] as FaultPoint[]) {
  test(`a filesystem-only pause whose ${fault} fails is a hard error: everything released, sandbox failed with the reason`, async () => {
    const t = setup();
    try {
      const s = await running(t);
      t.w.faults.add(fault);
      await assert.rejects(t.m.pause(s.id, signal(), { memory: false }), HostFailureError);
      const rec = t.m.get(s.id);
      assert.equal(rec.state, 'failed');
      assert.match(rec.endReason ?? '', new RegExp(`pause failed after the VM stopped: injected ${fault.replace('.', '\\.')} failure`));
      t.w.faults.clear();
      assert.deepEqual([...t.w.slots], [], 'slot released');
      assert.deepEqual([...t.w.disks], [], 'disk released');
      assert.equal(existsSync(sandboxFile(t, s.id)), false, 'no files left');
      assert.deepEqual(t.store.listJournal(), []);
      if (fault === 'stop') assert.deepEqual(kinds(t, s.id), ['vmm'], 'the VMM that would not stop stays in the ledger for the next destroy');
      else assert.deepEqual(kinds(t, s.id), []);
      await t.m.destroy(s.id, signal());
      t.nothingLeft();
    } finally { t.done(); }
  });
}

for (const fault of ['slot.acquire', 'disk.attach', 'boot', 'agent.ready', 'agent.init'] as FaultPoint[]) {
  test(`a boot resume that fails at ${fault} stops the VMM, puts the disk back into paused/, deletes its memory file, stays paused; the retry works`, async () => {
    const t = setup();
    try {
      const s = await running(t);
      await t.m.pause(s.id, signal(), { memory: false });
      t.w.events.length = 0;
      t.w.faults.add(fault);
      await assert.rejects(t.m.resume(s.id, signal()), /still paused and can be resumed again/);
      const rec = t.m.get(s.id);
      assert.equal(rec.state, 'paused');
      assert.equal(rec.timings?.op, 'resume (boot)');
      assert.deepEqual(pausedFiles(t, s.id), [true, false, false, true], 'the disk is back with meta.json');
      assert.equal(existsSync(sandboxFile(t, s.id, 'memory')), false, 'no memory file left by the boot');
      assert.deepEqual(kinds(t, s.id), ['dir', 'paused']);
      assert.deepEqual([...t.w.liveVms], []);
      assert.deepEqual([...t.w.slots], []);
      assert.deepEqual([...t.w.disks], []);
      assert.deepEqual(t.store.listJournal(), []);
      const stop = t.w.events.findIndex((e) => e.startsWith('stop'));
      const reclaim = t.w.events.findIndex((e) => e.startsWith('reclaim'));
      if (stop >= 0) assert.ok(stop < reclaim, `the VMM stops before its disk goes back: ${t.w.events.join(', ')}`);
      t.w.faults.clear();
      assert.equal((await t.m.resume(s.id, signal())).state, 'running');
      await t.m.destroy(s.id, signal());
      t.nothingLeft();
    } finally { t.done(); }
  });
}

test('a cancelled boot resume never skips cleanup', async () => {
  const t = setup();
  try {
    const s = await running(t);
    await t.m.pause(s.id, signal(), { memory: false });
    const ac = new AbortController();
    t.w.onPoint = (p) => { if (p === 'boot') ac.abort(); };
    await assert.rejects(t.m.resume(s.id, ac.signal), AbortedError);
    t.w.onPoint = () => undefined;
    assert.equal(t.m.get(s.id).state, 'paused');
    assert.deepEqual([...t.w.liveVms], []);
    assert.deepEqual([...t.w.slots], []);
    assert.deepEqual(pausedFiles(t, s.id), [true, false, false, true]);
    assert.equal((await t.m.resume(s.id, signal())).state, 'running');
  } finally { t.done(); }
});

test('connect or resume with memory: false boots a memory-paused sandbox from its disk (E2B\'s "reboot"); its memory capture goes', async () => {
  const t = setup();
  try {
    const s = await running(t);
    await t.m.pause(s.id, signal());
    assert.deepEqual(pausedFiles(t, s.id), [true, true, true, true]);
    t.w.events.length = 0;
    const { rec, resumed } = await t.m.connect(s.id, 30, signal(), { memory: false });
    assert.ok(resumed);
    assert.equal(rec.state, 'running');
    assert.ok(t.w.events.includes(`boot ${s.id}`) && !t.w.events.some((e) => e.startsWith('restore')), t.w.events.join(', '));
    assert.equal(existsSync(sandboxFile(t, s.id, 'paused')), false);
    assert.ok(Math.abs(Date.parse(rec.endAt) - (Date.now() + 30_000)) < 2000);
    // memory: false on a running sandbox is nothing to do.
    t.w.events.length = 0;
    assert.equal((await t.m.connect(s.id, 30, signal(), { memory: false })).resumed, false);
    assert.equal(t.w.events.length, 0, 'nothing happens on the host');
    // A memory pause resumed the ordinary way still restores.
    await t.m.pause(s.id, signal());
    t.w.events.length = 0;
    await t.m.resume(s.id, signal(), undefined, { memory: true });
    assert.ok(t.w.events.includes(`restore ${s.id}`));
  } finally { t.done(); }
});

test('a filesystem-only pause is not resumed by traffic (autoResume), as in E2B; snapshot and fork of a paused sandbox are 409s', async () => {
  const t = setup();
  try {
    const s = await running(t, { templateId: 'base', lifecycle: { autoResume: true } });
    await t.m.pause(s.id, signal(), { memory: false });
    await assert.rejects(t.m.reachable(s.id, signal()), /is paused, not running/);
    assert.equal(t.m.get(s.id).state, 'paused');
    await assert.rejects(t.m.snapshot(s.id, 'x', signal()), ConflictError);
    await assert.rejects(t.m.fork(s.id, 1, undefined, signal()), ConflictError);
    assert.equal(t.m.get(s.id).state, 'paused');
    assert.deepEqual(t.m.listSnapshots(), []);
    await t.m.resume(s.id, signal());
    await t.m.pause(s.id, signal());
    await t.m.reachable(s.id, signal());
    assert.equal(t.m.get(s.id).state, 'running', 'a memory pause is resumed by traffic');
  } finally { t.done(); }
});

test('recovery: a daemon that died during the sync finds the VM running and adopts it', async () => {
  const t = setup();
  try {
    const s = await running(t);
    t.w.hangs.add('agent.sync');
    void t.m.pause(s.id, signal(), { memory: false });
    await until(() => t.store.listJournal().some((j) => j.op === 'pause' && j.step === 'sync'), 'the pause reached its sync');
    t.m.close();
    t.w.hangs.clear();
    assert.equal(t.store.getSandbox(s.id)!.state, 'pausing');
    const fresh = new SandboxManager(t.deps);
    const res = await fresh.recover(signal());
    assert.deepEqual(res.adopted, [s.id]);
    assert.equal(fresh.get(s.id).state, 'running');
    assert.deepEqual(t.store.listJournal(), []);
    assert.equal((await fresh.pause(s.id, signal(), { memory: false })).state, 'paused');
    await fresh.destroy(s.id, signal());
    fresh.close();
    t.nothingLeft();
  } finally { t.done(); }
});

test('recovery: a daemon that died mid boot-resume releases what the resume took, puts the disk back and keeps the sandbox paused (filesystem-only)', async () => {
  const t = setup();
  try {
    const s = await running(t);
    await t.m.pause(s.id, signal(), { memory: false });
    t.w.hangs.add('agent.ready');
    void t.m.resume(s.id, signal());
    await until(() => t.store.listJournal().some((j) => j.op === 'resume' && j.step === 'agent'), 'the resume reached its agent wait');
    t.m.close();
    t.w.hangs.clear();
    assert.equal(t.store.getSandbox(s.id)!.state, 'resuming');
    assert.equal(pausedFiles(t, s.id)[0], false, 'mid-resume, the disk was out of paused/');
    assert.ok(existsSync(sandboxFile(t, s.id, 'memory')), 'the booted VM\'s memory file exists');
    const fresh = new SandboxManager(t.deps);
    const res = await fresh.recover(signal());
    assert.deepEqual(res.paused, [s.id]);
    assert.equal(fresh.get(s.id).state, 'paused');
    assert.equal(fresh.pausedWithMemory(s.id), false, 'still a filesystem-only capture');
    assert.deepEqual(pausedFiles(t, s.id), [true, false, false, true]);
    assert.equal(existsSync(sandboxFile(t, s.id, 'memory')), false, 'the boot\'s memory file was deleted');
    assert.deepEqual(kinds(t, s.id), ['dir', 'paused']);
    assert.deepEqual([...t.w.liveVms], [], 'the booted VM was stopped');
    assert.deepEqual([...t.w.slots], []);
    assert.deepEqual([...t.w.disks], []);
    t.w.events.length = 0;
    assert.equal((await fresh.resume(s.id, signal())).state, 'running', 'and the next resume works');
    assert.ok(t.w.events.includes(`boot ${s.id}`));
    await fresh.destroy(s.id, signal());
    fresh.close();
    t.nothingLeft();
  } finally { t.done(); }
});

test('recovery: a filesystem-only pause interrupted after its capture was complete is paused; one without meta.json is failed and released', async () => {
  const t = setup();
  try {
    const a = await running(t);
    const b = await running(t);
    await t.m.pause(a.id, signal(), { memory: false });
    await t.m.pause(b.id, signal(), { memory: false });
    t.m.close();
    // a: the daemon "died" in the pause's release step (its capture complete); b: before meta.json was written.
    for (const id of [a.id, b.id]) {
      const rec = t.store.getSandbox(id)!;
      t.store.transitionSandbox({ ...rec, state: 'pausing' }, 'paused');
    }
    t.store.journalStep(t.store.journalBegin(a.id, 'pause', 'start'), 'release');
    t.store.journalStep(t.store.journalBegin(b.id, 'pause', 'start'), 'meta');
    rmSync(sandboxFile(t, b.id, 'paused', 'meta.json'));
    const fresh = new SandboxManager(t.deps);
    const res = await fresh.recover(signal());
    assert.deepEqual(res.paused, [a.id]);
    assert.deepEqual(res.failed, [b.id]);
    assert.match(fresh.get(b.id).endReason ?? '', /daemon stopped during pause \(step meta\)/);
    assert.equal(existsSync(sandboxFile(t, b.id)), false);
    assert.equal((await fresh.resume(a.id, signal())).state, 'running');
    await fresh.destroy(a.id, signal());
    fresh.close();
    t.nothingLeft();
  } finally { t.done(); }
});

test('a VMM that maps snapshot memory (Firecracker) pauses filesystem-only and boots back the same way', async () => {
  const t = setup({ mapsSnapshotMemory: true });
  try {
    const s = await running(t);
    await t.m.pause(s.id, signal(), { memory: false });
    assert.deepEqual(pausedFiles(t, s.id), [true, false, false, true]);
    assert.deepEqual(kinds(t, s.id), ['dir', 'paused']);
    const r = await t.m.resume(s.id, signal());
    assert.equal(r.state, 'running');
    assert.deepEqual(kinds(t, s.id).sort(), ['dir', 'disk', 'slot', 'vmm'], 'no memory file is held');
    await t.m.destroy(s.id, signal());
    t.nothingLeft();
  } finally { t.done(); }
});

// ---------------------------------------------------------------- lifecycle at create

test('lifecycle: onTimeout pause with keepMemory false pauses filesystem-only at the timeout; a connect boots it back', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base', timeoutSec: 60, lifecycle: { onTimeout: 'pause', keepMemory: false } }, signal());
    assert.deepEqual(s.lifecycle, { onTimeout: 'pause', keepMemory: false, autoResume: false, autoExtend: false, timeoutSec: 60 });
    await t.m.settled();
    t.m.setTimeout(s.id, 0);
    t.m.startExpiry(20);
    await until(() => t.m.get(s.id).state === 'paused', 'paused at the timeout');
    assert.equal(t.m.get(s.id).endReason, null);
    assert.equal(t.m.pausedWithMemory(s.id), false);
    assert.equal(t.m.get(s.id).timings?.op, 'pause (filesystem)');
    const { rec, resumed } = await t.m.connect(s.id, 60, signal());
    assert.ok(resumed);
    assert.equal(rec.timings?.op, 'resume (boot)');
    // The default keeps memory.
    const d = await t.m.create({ templateId: 'base', lifecycle: { onTimeout: 'pause' } }, signal());
    assert.equal(d.lifecycle.keepMemory, true);
    t.m.setTimeout(d.id, 0);
    await until(() => t.m.get(d.id).state === 'paused', 'paused at the timeout');
    assert.equal(t.m.pausedWithMemory(d.id), true);
  } finally { t.done(); }
});

test('lifecycle: keepMemory false is refused without a timeout pause or with autoResume (E2B\'s rules); a non-boolean is refused', async () => {
  const t = setup();
  try {
    await assert.rejects(t.m.create({ templateId: 'base', lifecycle: { keepMemory: false } }, signal()), /only allowed when the timeout pauses/);
    await assert.rejects(t.m.create({ templateId: 'base', lifecycle: { onTimeout: 'kill', keepMemory: false } }, signal()), InvalidArgumentError);
    await assert.rejects(t.m.create({ templateId: 'base', lifecycle: { onTimeout: 'pause', keepMemory: false, autoResume: true } }, signal()), /autoResume cannot be true/);
    await assert.rejects(t.m.create({ templateId: 'base', lifecycle: { onTimeout: 'pause', keepMemory: 'no' as unknown as boolean } }, signal()), /keepMemory must be a boolean/);
    assert.deepEqual(t.store.listSandboxes().filter((s) => !s.metadata['hearth.internal']), [], 'nothing was created');
    // keepMemory true goes with anything.
    const s = await t.m.create({ templateId: 'base', lifecycle: { onTimeout: 'kill', keepMemory: true, autoResume: true } }, signal());
    assert.equal(s.state, 'running');
  } finally { t.done(); }
});

test('a record written before keepMemory existed reads as keepMemory true', async () => {
  const t = setup();
  try {
    const s = await running(t, { templateId: 'base', lifecycle: { onTimeout: 'pause' } });
    const rec = t.store.getSandbox(s.id)!;
    const { keepMemory: _k, ...old } = rec.lifecycle;
    t.store.updateSandbox({ ...rec, lifecycle: old as typeof rec.lifecycle });
    assert.equal(t.store.getSandbox(s.id)!.lifecycle.keepMemory, true);
  } finally { t.done(); }
});

// ---------------------------------------------------------------- endAt counts from running

test('the timeout counts from when the sandbox runs: a create that takes 1.5 s with timeout 2 still gets 2 s of running time', async () => {
  const t = setup({ agentDelayMs: 1500 });
  try {
    t.deps.config.warmTemplates = false;
    const t0 = Date.now();
    const s = await t.m.create({ templateId: 'base', timeoutSec: 2 }, signal());
    const took = Date.now() - t0;
    assert.ok(took >= 1400, `the create took ${took} ms`);
    assert.equal(Date.parse(s.endAt) - Date.parse(s.startedAt!), 2000, 'endAt = running since + timeout');
    assert.ok(Date.parse(s.endAt) >= Date.now() + 1800, 'close to the whole timeout is left when create answers');
    assert.equal(t.store.getSandbox(s.id)!.endAt, s.endAt, 'stored');
    // It is not ended before its running time is up.
    t.m.startExpiry(20);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(t.m.get(s.id).state, 'running');
    await until(() => t.m.get(s.id).state === 'destroyed', 'destroyed once its running time is up');
    // A resume (and a connect) count from when it runs again, too.
    const p = await t.m.create({ templateId: 'base', timeoutSec: 2 }, signal());
    await t.m.pause(p.id, signal(), { memory: false });
    const r = await t.m.resume(p.id, signal(), 5);
    assert.ok(Math.abs(Date.parse(r.endAt) - (Date.now() + 5000)) < 300, 'resume: endAt = now + timeout, after the 1.5 s boot');
  } finally { t.done(); }
});
