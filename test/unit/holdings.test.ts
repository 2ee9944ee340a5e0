/**
 * The holdings ledger (src/core/holdings.ts), which replaced the in-memory
 * compensation list (the former src/core/cleanup.ts): releases run in reverse
 * recorded order, each on a signal of its own, every one even when another
 * fails; a released row goes, a failed one stays for the next attempt; the
 * record's vmm/disk/network are its projection.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Holdings, type Holding, type Releaser } from '../../src/core/holdings.js';
import { Store } from '../../src/store/store.js';
import type { SandboxRecord } from '../../src/core/types.js';

function setup() {
  const store = new Store(':memory:');
  const rec: SandboxRecord = {
    id: 'ihold', templateId: 'base', state: 'creating', vcpus: 1, memoryMib: 256, envVars: {}, metadata: {}, createdAt: new Date().toISOString(),
    startedAt: null, endAt: new Date().toISOString(), endedAt: null, endReason: null, agentToken: 't', agent: null, vmm: null, disk: null, network: null,
    timings: null, snapshotId: null, pausedAt: null, lifecycle: { onTimeout: 'kill', keepMemory: true, autoResume: false, autoExtend: false, timeoutSec: 60 },
    netPolicy: { egress: null, trafficToken: null },
  };
  store.insertSandbox(rec);
  return { store, rec, ledger: new Holdings(store, 1000) };
}

const slot: Holding = { kind: 'slot', network: { kind: 'user', forwards: [{ hostPort: 1, guestPort: 49983 }], guestCidr: '10.0.2.15/24', gateway: '10.0.2.2' } };
const disk: Holding = { kind: 'disk', disk: { sandboxId: 'ihold', backend: 'copy', devicePath: '/d', files: ['/d'], base: { id: 'b', path: '/b', sizeBytes: 1 } } };
const vmm: Holding = { kind: 'vmm', runDir: '/s/ihold', handle: { kind: 'qemu', pid: 42, runDir: '/s/ihold' } };

test('releases run in reverse recorded order (the VMM before the disk it holds), each on a fresh signal', async () => {
  const { store, rec, ledger } = setup();
  ledger.record(rec, { kind: 'dir', path: '/s/ihold' });
  ledger.record(rec, slot);
  ledger.record(rec, disk);
  ledger.record(rec, vmm, 'the live Vmm');
  const seen: string[] = [];
  const release: Releaser = async (h, ctx) => {
    assert.equal(ctx.signal.aborted, false, 'a signal of its own, bounded, not yet ended');
    seen.push(h.kind + (ctx.inMemory ? ` (${String(ctx.inMemory)})` : ''));
  };
  assert.deepEqual(await ledger.release(rec, release), []);
  assert.deepEqual(seen, ['vmm (the live Vmm)', 'disk', 'slot', 'dir']);
  assert.deepEqual(store.listHoldings(rec.id), []);
  assert.deepEqual([rec.vmm, rec.disk, rec.network], [null, null, null]);
});

test('every release runs even when some fail; failed rows stay for the next attempt with every error returned', async () => {
  const { store, rec, ledger } = setup();
  ledger.record(rec, slot);
  ledger.record(rec, disk);
  ledger.record(rec, vmm);
  const seen: string[] = [];
  let fail = new Set(['vmm', 'slot']);
  const release: Releaser = async (h) => {
    seen.push(h.kind);
    if (fail.has(h.kind)) throw new Error(`boom ${h.kind}`);
  };
  const errors = await ledger.release(rec, release);
  assert.deepEqual(seen, ['vmm', 'disk', 'slot']);
  assert.deepEqual(errors, ['vmm: boom vmm', 'slot: boom slot']);
  assert.deepEqual(store.listHoldings(rec.id).map((h) => h.kind), ['slot', 'vmm'], 'the failed ones stay, in their order');
  assert.equal(rec.vmm?.pid, 42, 'the record still shows the VMM it holds');
  assert.equal(rec.disk, null);
  fail = new Set();
  seen.length = 0;
  assert.deepEqual(await ledger.release(rec, release), []);
  assert.deepEqual(seen, ['vmm', 'slot'], 'a retry finishes the job');
  assert.deepEqual(store.listHoldings(rec.id), []);
});

test('a release can select rows; forget hands a holding over without releasing it', async () => {
  const { store, rec, ledger } = setup();
  ledger.record(rec, slot);
  const d = ledger.record(rec, disk);
  const seen: string[] = [];
  await ledger.release(rec, async (h) => { seen.push(h.kind); }, { which: (r) => r.holding.kind === 'slot' });
  assert.deepEqual(seen, ['slot']);
  assert.equal(ledger.find(rec.id, 'disk')?.id, d);
  ledger.forget(rec, d);
  assert.deepEqual(store.listHoldings(rec.id), []);
  assert.equal(rec.disk, null);
});
