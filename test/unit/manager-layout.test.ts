/**
 * The manager against the fakes (test/helpers/fakes.ts) where paths and VMM
 * files matter: pause and capture move or copy exactly the files the VMM
 * reported (the fake names its state `fake.state` and leaves an unreported
 * scratch file), into the places src/core/layout.ts names; a paused capture
 * records the VMM's compatibility key and a resume under another key is a 409
 * that leaves the sandbox paused and resumable.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConflictError } from '../../src/core/errors.js';
import { DataLayout } from '../../src/core/layout.js';
import { managerFixture } from '../helpers/manager-fixture.js';

function setup(opts: { mapsSnapshotMemory?: boolean } = {}) {
  const f = managerFixture({ prefix: 'hearth-layout-', mapsSnapshotMemory: opts.mapsSnapshotMemory ?? false });
  return { ...f, layout: new DataLayout(f.dataDir) };
}
type T = ReturnType<typeof setup>;

const signal = () => new AbortController().signal;

async function running(t: T) {
  const s = await t.m.create({ templateId: 'base' }, signal());
  await t.m.settled();
  t.w.events.length = 0;
  return s;
}

const ls = (dir: string): string[] => readdirSync(dir).sort();

for (const maps of [false, true]) {
  const vmm = maps ? 'Firecracker-like VMM (memory written into the snapshot dir)' : 'QEMU-like VMM (memory is the VM\'s own file)';
  test(`pause moves exactly the files the VMM reported into the paused dir, under the layout's names (${vmm})`, async () => {
    const t = setup({ mapsSnapshotMemory: maps });
    try {
      const s = await running(t);
      await t.m.pause(s.id, signal());
      const paths = t.layout.sandbox(s.id);
      const vmmFiles = maps ? ['firecracker.json', 'memory', 'vmstate'] : ['fake-layout.json', 'memory', 'vmstate'];
      assert.deepEqual(ls(paths.paused.dir), [...vmmFiles, 'meta.json', 'rootfs.ext4'].sort(), 'the reported files, the detached disk and meta.json; not the unreported scratch file');
      assert.equal(readFileSync(paths.paused.state, 'utf8'), 'STATE', 'the state the VMM wrote as fake.state is the capture\'s vmstate');
      assert.equal(existsSync(paths.pauseStaging), false, 'the staging dir is gone');
      assert.equal(existsSync(paths.memory), false, 'the VM\'s memory file moved into the capture');
      const meta = JSON.parse(readFileSync(paths.paused.meta, 'utf8')) as { compat?: string; vmmFiles?: string[] };
      assert.equal(meta.compat, t.driver.compat, 'the VMM\'s compatibility key is recorded with the pause');
      assert.deepEqual([...meta.vmmFiles!].sort(), vmmFiles);
      // The resume restores from the placed files and works.
      assert.equal((await t.m.resume(s.id, signal())).state, 'running');
      assert.ok(t.w.events.includes(`restore ${s.id}`));
    } finally { t.done(); }
  });

  test(`a named snapshot holds exactly the reported files, the disk, and nothing else (${vmm})`, async () => {
    const t = setup({ mapsSnapshotMemory: maps });
    try {
      const s = await running(t);
      const snap = await t.m.snapshot(s.id, 'keep', signal());
      assert.equal(snap.dir, t.layout.snapshot(snap.id).dir);
      assert.deepEqual(ls(snap.dir), (maps ? ['firecracker.json', 'memory', 'rootfs.ext4', 'vmstate'] : ['fake-layout.json', 'memory', 'rootfs.ext4', 'vmstate']));
      assert.equal(existsSync(t.layout.snapshot(snap.id).staging), false);
      if (!maps) assert.ok(existsSync(t.layout.sandbox(s.id).memory), 'QEMU\'s running memory file was copied, not moved');
      // A sandbox starts from it.
      const child = await t.m.create({ templateId: 'keep' }, signal());
      assert.equal(child.state, 'running');
    } finally { t.done(); }
  });
}

test('a warm template snapshot lives where the layout says', async () => {
  const t = setup();
  try {
    await running(t);
    const [warm] = t.store.listTemplateSnapshots('base');
    assert.ok(warm);
    assert.equal(join(warm.dir, '..'), t.layout.templateDir('base'));
    assert.match(warm.dir.split('/').at(-1)!, /^[0-9a-f]{16}-1c-256m-[a-z0-9]+$/);
  } finally { t.done(); }
});

test('a paused sandbox whose VMM set-up changed is not resumed: 409 naming the difference, still paused, nothing acquired; it resumes once the set-up is back', async () => {
  const t = setup();
  try {
    const s = await running(t);
    await t.m.pause(s.id, signal());
    const holdings = t.store.listHoldings(s.id).map((h) => h.kind);
    const was = t.driver.compat;
    t.driver.compat = 'fake=1 accel=kvm cpu=max';
    t.w.events.length = 0;
    await assert.rejects(t.m.resume(s.id, signal()), (err: unknown) => err instanceof ConflictError && /accel tcg → kvm/.test(err.message) && /stays paused/.test(err.message));
    const rec = t.m.get(s.id);
    assert.equal(rec.state, 'paused');
    assert.deepEqual(t.w.events, [], 'no slot, disk, memory or VMM was touched');
    assert.deepEqual([...t.w.slots], []);
    assert.deepEqual([...t.w.liveVms], []);
    assert.deepEqual(t.store.listHoldings(s.id).map((h) => h.kind), holdings, 'the paused capture is held as before');
    assert.ok(existsSync(t.layout.sandbox(s.id).paused.meta), 'the paused files are untouched');
    // A Firecracker release line is named the same way.
    t.driver.compat = 'firecracker=1.7';
    await assert.rejects(t.m.resume(s.id, signal()), /fake 1 → \(none\).*firecracker \(none\) → 1\.7/);
    // The operator restores the VMM: the same sandbox resumes.
    t.driver.compat = was;
    assert.equal((await t.m.resume(s.id, signal())).state, 'running');
  } finally { t.done(); }
});

test('a pause written before the key was recorded resumes without the check', async () => {
  const t = setup();
  try {
    const s = await running(t);
    await t.m.pause(s.id, signal());
    const metaPath = t.layout.sandbox(s.id).paused.meta;
    const { compat: _c, ...older } = JSON.parse(readFileSync(metaPath, 'utf8')) as Record<string, unknown>;
    writeFileSync(metaPath, JSON.stringify(older));
    t.driver.compat = 'fake=2';
    assert.equal((await t.m.resume(s.id, signal())).state, 'running');
  } finally { t.done(); }
});
