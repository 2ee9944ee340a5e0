import { IMAGE_TEMPLATE_FIELDS } from '../../src/core/types.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InflightRequests } from '../../src/util/inflight.js';
import { SandboxManager } from '../../src/core/manager.js';
import { Store } from '../../src/store/store.js';
import { silentLogger } from '../../src/core/log.js';
import { FakeDriver, FakeSlots, FakeStorage, World, fakeAgent, fakeCloner } from '../helpers/fakes.js';

test('drain waits for every request of a key, and only that key', async () => {
  const r = new InflightRequests();
  const endA1 = r.begin('a');
  const endA2 = r.begin('a');
  r.begin('b');
  let drained = false;
  const d = r.drain('a', 5_000).then((ok) => { drained = ok; });
  endA1();
  endA1(); // idempotent: the second call must not count for endA2
  await new Promise((res) => setTimeout(res, 20));
  assert.equal(drained, false, 'one request of a is still in flight');
  endA2();
  await d;
  assert.equal(drained, true);
  assert.equal(r.count('b'), 1);
  assert.equal(await r.drain('nothing', 10), true);
});

test('drain gives up after its timeout', async () => {
  const r = new InflightRequests();
  r.begin('a');
  const t0 = Date.now();
  assert.equal(await r.drain('a', 50), false);
  assert.ok(Date.now() - t0 < 1_000);
});

test('a pause runs its quiescers after the sandbox stops taking work (pausing) and before the VM is touched', async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'hearth-quiesce-'));
  const w = new World();
  const store = new Store(':memory:');
  store.upsertTemplate({ ...IMAGE_TEMPLATE_FIELDS,
    id: 'base', imageHash: 'h', kernelPath: '/k', initrdPath: null, rootfsPath: '/r', rootfsSizeBytes: 1 << 30,
    kernelArgs: 'console=ttyS0', vcpus: 1, memoryMib: 256, createdAt: new Date().toISOString(),
  });
  const m = new SandboxManager({
    store, log: silentLogger(), vmm: new FakeDriver(w, false), storage: new FakeStorage(w), network: new FakeSlots(w), agent: fakeAgent(w), cloneFile: fakeCloner(w),
    config: { dataDir, agentPort: 49983, defaultTimeoutSec: 60, maxTimeoutSec: 3600, bootTimeoutMs: 1000, restoreTimeoutMs: 1000, maxConcurrentStarts: 2, warmTemplates: false,
      limits: { maxVcpus: 4, maxMemoryMib: 4096, minMemoryMib: 128, maxForks: 10 }, capacityMemoryMib: 4096 },
  });
  try {
    const s = await m.create({ templateId: 'base' }, new AbortController().signal);
    const seen: string[] = [];
    const off = m.onBeforePause(async (id) => {
      seen.push(`${id} ${m.get(id).state} vm-events-before=${w.events.filter((e) => e.startsWith('snapshot') || e.startsWith('stop')).length}`);
      throw new Error('a failing quiescer does not stop the pause');
    });
    await m.pause(s.id, new AbortController().signal);
    assert.deepEqual(seen, [`${s.id} pausing vm-events-before=0`]);
    assert.equal(m.get(s.id).state, 'paused');
    off();
    await m.resume(s.id, new AbortController().signal);
    await m.pause(s.id, new AbortController().signal);
    assert.equal(seen.length, 1, 'an unregistered quiescer is not called');
    await m.destroy(s.id, new AbortController().signal);
  } finally {
    m.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
