import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KeyedLock } from '../../src/core/lock.js';
import { canTransition, assertTransition } from '../../src/core/state.js';
import { newSandboxId, randomId, SANDBOX_ID_PATTERN } from '../../src/core/ids.js';
import { ConflictError } from '../../src/core/errors.js';

test('keyed lock serializes operations on one key and not across keys', async () => {
  const lock = new KeyedLock();
  const log: string[] = [];
  const slow = (tag: string, ms: number) => async () => { log.push(`${tag}+`); await new Promise((r) => setTimeout(r, ms)); log.push(`${tag}-`); };
  await Promise.all([lock.run('a', 'x', slow('a1', 30)), lock.run('a', 'y', slow('a2', 1)), lock.run('b', 'z', slow('b1', 1))]);
  assert.ok(log.indexOf('a1-') < log.indexOf('a2+'), `a2 started before a1 finished: ${log.join(',')}`);
  assert.ok(log.indexOf('b1+') < log.indexOf('a1-'), 'b waited for a');
  assert.equal(lock.isBusy('a'), false);
});

test('keyed lock tryRun refuses with a conflict while busy', async () => {
  const lock = new KeyedLock();
  let release!: () => void;
  const p = lock.run('a', 'pause', () => new Promise<void>((r) => { release = r; }));
  await assert.rejects(lock.tryRun('a', 'resume', async () => 1), (e: unknown) => e instanceof ConflictError && /pause in progress/.test(e.message));
  release();
  await p;
  assert.equal(await lock.tryRun('a', 'resume', async () => 1), 1);
});

test('state machine allows the lifecycle of docs/ARCHITECTURE.md and nothing else', () => {
  assert.ok(canTransition('creating', 'running'));
  assert.ok(canTransition('running', 'pausing'));
  assert.ok(canTransition('pausing', 'running'), 'a failed pause returns to running');
  assert.ok(canTransition('resuming', 'paused'), 'a failed resume returns to paused');
  assert.ok(canTransition('failed', 'destroying'));
  assert.ok(!canTransition('destroyed', 'running'));
  assert.ok(!canTransition('paused', 'running'), 'must go through resuming');
  assert.throws(() => assertTransition('x', 'destroyed', 'destroying'), ConflictError);
});

test('sandbox ids are [a-z0-9], start with i, and do not repeat', () => {
  const seen = new Set<string>();
  for (let i = 0; i < 2000; i++) {
    const id = newSandboxId();
    assert.match(id, /^i[a-z0-9]{20}$/);
    assert.match(id, SANDBOX_ID_PATTERN);
    seen.add(id);
  }
  assert.equal(seen.size, 2000);
  assert.equal(randomId(7).length, 7);
});

test('transition() checks the state table, persists the state with its patch, and refuses a row that moved on', async () => {
  const { Store } = await import('../../src/store/store.js');
  const { transition } = await import('../../src/core/state.js');
  const store = new Store(':memory:');
  const rec = {
    id: 'itr', templateId: 'base', state: 'creating' as const, vcpus: 1, memoryMib: 256, envVars: {}, metadata: {}, createdAt: new Date().toISOString(),
    startedAt: null, endAt: new Date().toISOString(), endedAt: null, endReason: null, agentToken: 't', agent: null, vmm: null, disk: null, network: null,
    timings: null, snapshotId: null, pausedAt: null, lifecycle: { onTimeout: 'kill' as const, keepMemory: true, autoResume: false, autoExtend: false, timeoutSec: 60 },
    netPolicy: { egress: null, trafficToken: null },
  };
  store.insertSandbox(rec);
  const r = { ...rec } as import('../../src/core/types.js').SandboxRecord;
  transition(store, r, 'running', { startedAt: '2026-01-01T00:00:00.000Z' });
  assert.equal(r.state, 'running');
  assert.equal(store.getSandbox('itr')!.state, 'running');
  assert.equal(store.getSandbox('itr')!.startedAt, '2026-01-01T00:00:00.000Z');
  assert.throws(() => transition(store, r, 'resuming'), ConflictError, 'running → resuming is not in the table');
  assert.equal(store.getSandbox('itr')!.state, 'running');
  const stale = { ...r, state: 'creating' as const };
  assert.throws(() => transition(store, stale, 'running'), /is not creating/, 'the row is no longer in the state the caller saw');
  store.close();
});

test('only transition() changes a sandbox\'s state: no other source file calls transitionSandbox', async () => {
  const { readdir, readFile } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const offenders: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) { if (e.name !== 'node_modules' && e.name !== 'gen') await walk(p); continue; }
      if (!p.endsWith('.ts') || p.endsWith('src/core/state.ts') || p.endsWith('src/store/store.ts')) continue;
      if ((await readFile(p, 'utf8')).includes('transitionSandbox(')) offenders.push(p);
    }
  };
  await walk('src');
  assert.deepEqual(offenders, []);
});
