import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SandboxManager } from '../../src/core/manager.js';
import { Store } from '../../src/store/store.js';
import { silentLogger } from '../../src/core/log.js';
import { AbortedError, HostFailureError, InvalidArgumentError, NotFoundError } from '../../src/core/errors.js';
import { FakeDriver, FakeSlots, FakeStorage, World, fakeAgent, type FaultPoint } from '../helpers/fakes.js';

function setup() {
  const dataDir = mkdtempSync(join(tmpdir(), 'hearth-mgr-'));
  const w = new World();
  const store = new Store(':memory:');
  store.upsertTemplate({
    id: 'base', imageHash: 'h', kernelPath: '/k', initrdPath: null, rootfsPath: '/r', rootfsSizeBytes: 1 << 30,
    kernelArgs: 'console=ttyS0', vcpus: 1, memoryMib: 256, createdAt: new Date().toISOString(),
  });
  const driver = new FakeDriver(w);
  const deps = {
    store, log: silentLogger(), vmm: driver, storage: new FakeStorage(w), network: new FakeSlots(w), agent: fakeAgent(w),
    config: { dataDir, agentPort: 49983, defaultTimeoutSec: 60, maxTimeoutSec: 3600, bootTimeoutMs: 1000, limits: { maxVcpus: 4, maxMemoryMib: 4096, minMemoryMib: 128 } },
  };
  const m = new SandboxManager(deps);
  const nothingLeft = () => {
    assert.deepEqual([...w.liveVms], [], 'a VM is still running');
    assert.deepEqual([...w.disks], [], 'a disk is left');
    assert.deepEqual([...w.slots], [], 'a slot is still held');
    assert.deepEqual(store.listJournal(), [], 'a journal row is left');
  };
  return { w, store, m, deps, driver, dataDir, nothingLeft, done: () => { m.close(); rmSync(dataDir, { recursive: true, force: true }); } };
}

const signal = () => new AbortController().signal;

test('create boots after slot and disk, then waits for the agent and inits it', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base', envVars: { A: '1' } }, signal());
    assert.equal(s.state, 'running');
    assert.deepEqual(t.w.events, ['slot+ 1', `disk+ ${s.id}`, `boot ${s.id}`, 'agent ready?', 'agent init']);
    assert.deepEqual(s.timings?.steps.map(([n]) => n), ['slot', 'disk', 'boot', 'agent', 'init']);
    assert.equal(t.store.getSandbox(s.id)?.state, 'running');
    assert.deepEqual(t.store.listJournal(), []);
  } finally { t.done(); }
});

for (const fault of ['slot.acquire', 'disk.create', 'boot', 'agent.ready', 'agent.init'] as FaultPoint[]) {
  test(`create that fails at ${fault} releases everything in reverse order and keeps the sandbox as failed`, async () => {
    const t = setup();
    try {
      t.w.faults.add(fault);
      await assert.rejects(t.m.create({ templateId: 'base' }, signal()), HostFailureError);
      t.nothingLeft();
      const [rec] = t.store.listSandboxes();
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
    // Cancelled in the middle: the client goes away while the VM boots.
    const mid = new AbortController();
    t.w.onPoint = (p) => { if (p === 'boot') mid.abort(); };
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
    t.nothingLeft();
    const rec = t.m.get(s.id);
    assert.equal(rec.state, 'destroyed');
    assert.equal(rec.endReason, 'destroyed by request');
    await t.m.destroy(s.id, signal());
    await assert.rejects(t.m.destroy('inope', signal()), NotFoundError);
  } finally { t.done(); }
});

test('destroy whose VMM stop fails still releases the rest, reports a hard error, and can be retried', async () => {
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
    t.driver.vms[0]!.crash();
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
