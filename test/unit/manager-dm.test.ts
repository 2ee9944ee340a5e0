import { IMAGE_TEMPLATE_FIELDS } from '../../src/core/types.js';
/**
 * The SandboxManager on the device-mapper backend over the fake block host
 * (src/storage/dm/testing.ts): the manager's flows drive the real
 * DmRootfsBackend and LoopRegistry, so what a production host would get
 * (which image sits under a sandbox's CoW layer) can be asserted here.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, existsSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SandboxManager } from '../../src/core/manager.js';
import { Store } from '../../src/store/store.js';
import { silentLogger } from '../../src/core/log.js';
import { DmRootfsBackend } from '../../src/storage/dm/dm-backend.js';
import { FakeBlockHost } from '../../src/storage/dm/testing.js';
import { LoopRegistry } from '../../src/storage/loop/registry.js';
import { FakeDriver, FakeSlots, World, fakeAgent, fakeCloner } from '../helpers/fakes.js';

function setup() {
  const dataDir = mkdtempSync(join(tmpdir(), 'hearth-mgr-dm-'));
  const tdir = join(dataDir, 'images', 'base');
  mkdirSync(tdir, { recursive: true });
  const rootfsPath = join(tdir, 'rootfs.ext4');
  const fd = openSync(rootfsPath, 'w'); ftruncateSync(fd, 4 * 1024 * 1024); closeSync(fd);
  const w = new World();
  const host = new FakeBlockHost();
  const store = new Store(':memory:');
  store.upsertTemplate({ ...IMAGE_TEMPLATE_FIELDS,
    id: 'base', imageHash: 'h', kernelPath: '/k', initrdPath: null, rootfsPath, rootfsSizeBytes: 4 * 1024 * 1024,
    kernelArgs: 'console=ttyS0', vcpus: 2, memoryMib: 256, createdAt: new Date().toISOString(),
  });
  const loops = new LoopRegistry({ run: host.run, holders: host.holderNames, owns: (p) => p.startsWith(`${dataDir}/`) });
  const storage = new DmRootfsBackend({ sandboxesDir: join(dataDir, 'sandboxes'), loops, run: host.run, removeRetry: { maxAttempts: 2, initialDelayMs: 1, maxDelayMs: 1 } });
  const driver = new FakeDriver(w);
  const deps = {
    store, log: silentLogger(), vmm: driver, storage, network: new FakeSlots(w), agent: fakeAgent(w), cloneFile: fakeCloner(w),
    config: { dataDir, agentPort: 49983, defaultTimeoutSec: 60, maxTimeoutSec: 3600, bootTimeoutMs: 1000, restoreTimeoutMs: 1000, maxConcurrentStarts: 2, warmTemplates: true,
      limits: { maxVcpus: 4, maxMemoryMib: 4096, minMemoryMib: 128, maxForks: 10 }, capacityMemoryMib: 4096 },
  };
  const m = new SandboxManager(deps);
  /** The image under a sandbox's CoW layer: the file behind its dm device's origin loop. */
  const originOf = (id: string): string | undefined => {
    const d = host.dm.get(`hearth-${id}`);
    return d ? host.loops.get(d.origin)?.file : undefined;
  };
  return { w, host, store, m, deps, driver, dataDir, rootfsPath, originOf, done: () => { m.close(); rmSync(dataDir, { recursive: true, force: true }); } };
}

const signal = () => new AbortController().signal;

test('dm: a sandbox restored from the warm template keeps the snapshot\'s image under its CoW layer across pause and resume', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base' }, signal());
    await t.m.settled();
    const [warm] = t.store.listSnapshots({ kind: 'template' });
    assert.ok(warm, 'the warm snapshot was built');
    const snapImage = realpathSync(join(warm.dir, 'rootfs.ext4'));
    assert.equal(t.originOf(s.id), snapImage, 'created on the snapshot\'s disk image');
    await t.m.pause(s.id, signal());
    assert.equal(t.host.dm.has(`hearth-${s.id}`), false, 'a paused sandbox holds no dm device');
    const r = await t.m.resume(s.id, signal());
    assert.equal(r.state, 'running');
    assert.equal(r.vcpus, 2, 'resume keeps the sandbox\'s vCPU count');
    assert.equal(t.originOf(s.id), snapImage, 'after resume the CoW layer sits on the image it was written against, not the template\'s');
    assert.notEqual(t.originOf(s.id), realpathSync(t.rootfsPath));
    // Twice, for good measure: the base travels with the disk, not with the caller.
    await t.m.pause(s.id, signal());
    await t.m.resume(s.id, signal());
    assert.equal(t.originOf(s.id), snapImage);
    await t.m.destroy(s.id, signal());
    assert.deepEqual(t.host.violations, []);
    assert.equal(t.host.dm.size, 0);
  } finally { t.done(); }
});

test('dm: a sandbox started from a named snapshot resumes on that snapshot\'s image', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base' }, signal());
    const snap = await t.m.snapshot(s.id, 'named', signal());
    const child = await t.m.create({ templateId: 'named' }, signal());
    const image = realpathSync(join(snap.dir, 'rootfs.ext4'));
    assert.equal(t.originOf(child.id), image);
    await t.m.pause(child.id, signal());
    await t.m.resume(child.id, signal());
    assert.equal(t.originOf(child.id), image);
    await assert.rejects(t.m.deleteSnapshot(snap.id), /origin/, 'the dm backend reads the snapshot\'s image: it cannot be deleted under a sandbox');
    for (const x of t.m.list()) if (x.state !== 'destroyed') await t.m.destroy(x.id, signal());
    await t.m.deleteSnapshot(snap.id);
    assert.equal(t.host.dm.size, 0);
    assert.deepEqual(t.host.violations, []);
  } finally { t.done(); }
});

test('dm: a resume that fails after the attach puts the CoW file back into the paused dir and leaves no device; the retry works', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base' }, signal());
    await t.m.settled();
    const image = t.originOf(s.id);
    await t.m.pause(s.id, signal());
    const cowPaused = join(t.dataDir, 'sandboxes', s.id, 'paused', 'cow.img');
    assert.ok(existsSync(cowPaused));
    t.w.faults.add('agent.ready');
    await assert.rejects(t.m.resume(s.id, signal()), /still paused/);
    t.w.faults.clear();
    assert.equal(t.m.get(s.id).state, 'paused');
    assert.ok(existsSync(cowPaused), 'the CoW file is back in the paused dir');
    assert.equal(existsSync(join(t.dataDir, 'sandboxes', s.id, 'cow.img')), false, 'and not left beside it');
    assert.equal(t.host.dm.has(`hearth-${s.id}`), false, 'no dm device left');
    assert.equal([...t.host.loops.values()].some((l) => l.file.endsWith('/cow.img')), false, 'no CoW loop left');
    assert.equal((await t.m.resume(s.id, signal())).state, 'running');
    assert.equal(t.originOf(s.id), image);
    await t.m.destroy(s.id, signal());
    assert.deepEqual(t.host.violations, []);
  } finally { t.done(); }
});
