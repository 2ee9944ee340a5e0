import { IMAGE_TEMPLATE_FIELDS } from '../../src/core/types.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteSlotStore } from '../../src/store/slot-store.js';
import { Store } from '../../src/store/store.js';
import type { SandboxRecord, Template } from '../../src/core/types.js';
import { MIGRATIONS } from '../../src/store/migrations.js';

const template: Template = { ...IMAGE_TEMPLATE_FIELDS,
  id: 'base', imageHash: 'abc', kernelPath: '/k', initrdPath: '/i', rootfsPath: '/r', rootfsSizeBytes: 1 << 30,
  kernelArgs: 'console=ttyS0', vcpus: 1, memoryMib: 512, createdAt: new Date(0).toISOString(),
};

function sandbox(id: string, over: Partial<SandboxRecord> = {}): SandboxRecord {
  return {
    id, templateId: 'base', state: 'creating', vcpus: 1, memoryMib: 512, envVars: { A: '1' }, metadata: { who: 'test' },
    createdAt: new Date().toISOString(), startedAt: null, endAt: new Date(Date.now() + 1000).toISOString(), endedAt: null,
    endReason: null, agentToken: 'tok', agent: null, vmm: null, disk: null, network: null, timings: null,
    snapshotId: null, pausedAt: null, lifecycle: { onTimeout: 'kill', keepMemory: true, autoResume: false, autoExtend: false, timeoutSec: 60 },
    netPolicy: { egress: null, trafficToken: null }, ...over,
  };
}

test('store migrates a new database to the latest schema, in WAL mode, and reopens it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hearth-store-'));
  try {
    const path = join(dir, 'hearth.db');
    const s = new Store(path);
    assert.equal(s.schemaVersion(), MIGRATIONS.length);
    assert.equal(s.db.pragma('journal_mode', { simple: true }), 'wal');
    s.upsertTemplate(template);
    s.close();
    const again = new Store(path);
    assert.deepEqual(again.getTemplate('base'), template);
    again.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('store round-trips sandbox records including JSON columns', () => {
  const s = new Store(':memory:');
  const rec = sandbox('iaaa', {
    agent: { host: '127.0.0.1', port: 4000 }, vmm: { kind: 'qemu', pid: 42, runDir: '/run/x' },
    disk: { sandboxId: 'iaaa', backend: 'copy', devicePath: '/d', files: ['/d'], base: { id: 't', path: '/t/rootfs.ext4', sizeBytes: 1 } },
    network: { kind: 'user', forwards: [{ hostPort: 4000, guestPort: 49983 }], guestCidr: '10.0.2.15/24', gateway: '10.0.2.2' },
    timings: { op: 'create', steps: [['boot', 12]] },
  });
  s.insertSandbox(rec);
  assert.deepEqual(s.getSandbox('iaaa'), rec);
  const from = rec.state;
  // updateSandbox writes every field but the state: states change only through transitionSandbox.
  s.updateSandbox({ ...rec, state: 'running', endReason: 'x' });
  assert.equal(s.getSandbox('iaaa')!.state, from);
  assert.equal(s.getSandbox('iaaa')!.endReason, 'x');
  s.transitionSandbox({ ...rec, state: 'running' }, from);
  assert.equal(s.getSandbox('iaaa')!.state, 'running');
  assert.throws(() => s.transitionSandbox({ ...rec, state: 'paused' }, from), /is not creating/, 'a compare-and-set: the row moved on');
  assert.throws(() => s.updateSandbox(sandbox('nope')), /does not exist/);
});

test('store lists sandboxes by state, newest first', async () => {
  const s = new Store(':memory:');
  s.insertSandbox(sandbox('i1', { state: 'running', createdAt: '2026-01-01T00:00:00.000Z' }));
  s.insertSandbox(sandbox('i2', { state: 'destroyed', createdAt: '2026-01-02T00:00:00.000Z' }));
  s.insertSandbox(sandbox('i3', { state: 'running', createdAt: '2026-01-03T00:00:00.000Z' }));
  assert.deepEqual(s.listSandboxes({ states: ['running'] }).map((x) => x.id), ['i3', 'i1']);
  assert.deepEqual(s.listSandboxes().map((x) => x.id), ['i3', 'i2', 'i1']);
});

test('journal rows record the current step and disappear at the end', () => {
  const s = new Store(':memory:');
  const j = s.journalBegin('i1', 'create', 'slot');
  s.journalStep(j, 'boot');
  assert.deepEqual(s.listJournal().map((x) => [x.sandboxId, x.op, x.step]), [['i1', 'create', 'boot']]);
  s.journalEnd(j);
  assert.deepEqual(s.listJournal(), []);
});

test('sandbox network settings and the netns pool\'s slot rows persist in SQLite', () => {
  const s = new Store(':memory:');
  s.upsertTemplate(template);
  const egress = { internet: false, allow: ['198.51.100.0/24'], deny: ['198.51.100.7/32'] };
  s.insertSandbox(sandbox('inet', { netPolicy: { egress, trafficToken: 'tt' } }));
  assert.deepEqual(s.getSandbox('inet')!.netPolicy, { egress, trafficToken: 'tt' });

  const slots = new SqliteSlotStore(s);
  const row = { n: 3, netns: 'hearth-s3', hostIf: 'hths3', hostAddr: '10.201.0.13', nsAddr: '10.201.0.14', state: 'free' as const, generation: 2, policy: null };
  slots.save(row);
  slots.save({ ...row, n: 1, netns: 'hearth-s1', hostIf: 'hths1' });
  slots.save({ ...row, state: 'used', generation: 5, policy: { egress, exposure: [8080] } });
  assert.deepEqual(slots.load().map((r) => r.n), [1, 3]);
  assert.deepEqual(slots.load()[1], { ...row, state: 'used', generation: 5, policy: { egress, exposure: [8080] } });
  slots.delete(1);
  assert.deepEqual(slots.load().map((r) => r.n), [3]);
  s.close();
});
