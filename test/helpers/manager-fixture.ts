import { IMAGE_TEMPLATE_FIELDS } from '../../src/core/types.js';
/**
 * A SandboxManager on the fakes (test/helpers/fakes.ts) with a `base` template in
 * an in-memory store and a temp data dir: the set-up the manager's unit tests share.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SandboxManager } from '../../src/core/manager.js';
import { Store } from '../../src/store/store.js';
import { silentLogger } from '../../src/core/log.js';
import type { AgentControlApi } from '../../src/core/flows/context.js';
import { FakeDriver, FakeSlots, FakeStorage, World, fakeAgent, fakeCloner } from './fakes.js';

export interface ManagerFixtureOptions {
  /** Prefix of the temp data dir's name. */
  prefix?: string;
  mapsSnapshotMemory?: boolean;
  warmTemplates?: boolean;
  /** Wraps the fake agent (e.g. a slow start). */
  agent?: (base: (endpoint: unknown, token: string | undefined) => AgentControlApi) => (endpoint: unknown, token: string | undefined) => AgentControlApi;
}

export function managerFixture(opts: ManagerFixtureOptions = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), opts.prefix ?? 'hearth-mgr-'));
  const w = new World();
  const store = new Store(':memory:');
  store.upsertTemplate({ ...IMAGE_TEMPLATE_FIELDS,
    id: 'base', imageHash: 'h', kernelPath: '/k', initrdPath: null, rootfsPath: '/r', rootfsSizeBytes: 1 << 30,
    kernelArgs: 'console=ttyS0', vcpus: 1, memoryMib: 256, createdAt: new Date().toISOString(),
  });
  const driver = new FakeDriver(w, opts.mapsSnapshotMemory ?? false);
  const agent = fakeAgent(w);
  const deps = {
    store, log: silentLogger(), vmm: driver, storage: new FakeStorage(w), network: new FakeSlots(w), agent: opts.agent ? opts.agent(agent) : agent, cloneFile: fakeCloner(w),
    config: { dataDir, agentPort: 49983, defaultTimeoutSec: 60, maxTimeoutSec: 3600, bootTimeoutMs: 1000, restoreTimeoutMs: 1000, maxConcurrentStarts: 2, warmTemplates: opts.warmTemplates ?? true,
      limits: { maxVcpus: 4, maxMemoryMib: 4096, minMemoryMib: 128, maxForks: 10 }, capacityMemoryMib: 4096 },
  };
  const m = new SandboxManager(deps);
  const nothingLeft = (): void => {
    assert.deepEqual([...w.liveVms], [], 'a VM is still running');
    assert.deepEqual([...w.disks], [], 'a disk is left');
    assert.deepEqual([...w.slots], [], 'a slot is still held');
    assert.deepEqual(store.listJournal(), [], 'a journal row is left');
  };
  return { w, store, m, deps, driver, dataDir, nothingLeft, done: () => { m.close(); rmSync(dataDir, { recursive: true, force: true }); } };
}
