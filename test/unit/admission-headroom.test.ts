import { IMAGE_TEMPLATE_FIELDS } from '../../src/core/types.js';
/**
 * Admission on the host's real headroom (issue #14): memory available, free space on the data
 * dir, CPU load. A create that would cross a configured floor is refused (CapacityError, the
 * API's 503) with the reason, before anything is acquired; 0 turns a check off; the thresholds
 * come from the configuration (defaults, env) and `hearth doctor` reports them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SandboxManager } from '../../src/core/manager.js';
import { Store } from '../../src/store/store.js';
import { silentLogger } from '../../src/core/log.js';
import { CapacityError } from '../../src/core/errors.js';
import { DEFAULT_ADMISSION, headroomRefusal, hostHeadroom, type AdmissionThresholds, type HostSample } from '../../src/core/headroom.js';
import { admissionThresholds, loadConfig } from '../../src/daemon/config.js';
import { FakeDriver, FakeSlots, FakeStorage, World, fakeAgent, fakeCloner } from '../helpers/fakes.js';

const roomy: HostSample = { availableMemoryMib: 20_000, freeDiskMib: 60_000, load1: 0.5, cpus: 2 };
const t: AdmissionThresholds = { minFreeMemoryMib: 1024, memoryPerSandboxMib: 256, minFreeDiskMib: 2048, diskPerSandboxMib: 512, maxLoadPerCpu: 8 };

test('headroomRefusal: room → null; each floor refuses with the number and the setting to change', () => {
  assert.equal(headroomRefusal(roomy, t, 512), null);
  // Memory: counted at min(guest, memoryPerSandboxMib) per sandbox.
  assert.equal(headroomRefusal({ ...roomy, availableMemoryMib: 1024 + 256 }, t, 512), null);
  assert.match(headroomRefusal({ ...roomy, availableMemoryMib: 1024 + 255 }, t, 512)!, /host memory: 1279 MiB available.*admissionMinFreeMemoryMib/);
  assert.equal(headroomRefusal({ ...roomy, availableMemoryMib: 1024 + 128 }, t, 128), null, 'a small guest counts at its own size');
  // Disk: memory file + disk reserve per sandbox, times the count (forks).
  assert.equal(headroomRefusal({ ...roomy, freeDiskMib: 2048 + 1024 }, t, 512), null);
  assert.match(headroomRefusal({ ...roomy, freeDiskMib: 2048 + 1024 }, t, 512, 2)!, /data dir disk: 3072 MiB free, reserving 2048 MiB.*admissionMinFreeDiskMib/);
  // CPU: 1-minute load per CPU.
  assert.equal(headroomRefusal({ ...roomy, load1: 16 }, t, 512), null);
  assert.match(headroomRefusal({ ...roomy, load1: 16.2 }, t, 512)!, /host CPU: load 16\.2 on 2 CPUs is above 8 per CPU.*admissionMaxLoadPerCpu/);
  // 0 turns each check off.
  const off: AdmissionThresholds = { ...t, minFreeMemoryMib: 0, minFreeDiskMib: 0, maxLoadPerCpu: 0 };
  assert.equal(headroomRefusal({ availableMemoryMib: 0, freeDiskMib: 0, load1: 999, cpus: 2 }, off, 512), null);
});

test('hostHeadroom samples this host (MemAvailable, statfs of the data dir, loadavg)', () => {
  const s = hostHeadroom(tmpdir(), DEFAULT_ADMISSION).sample();
  assert.ok(s.availableMemoryMib > 0 && s.freeDiskMib > 0 && s.cpus >= 1 && s.load1 >= 0, JSON.stringify(s));
});

test('configuration: defaults, HEARTH_ADMISSION_* from the environment, negatives refused', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'hearth-adm-cfg-'));
  try {
    assert.deepEqual(admissionThresholds(loadConfig({ dataDir }, {})), DEFAULT_ADMISSION);
    const c = loadConfig({ dataDir }, { HEARTH_ADMISSION_MIN_FREE_MEMORY_MIB: '4096', HEARTH_ADMISSION_MAX_LOAD_PER_CPU: '0', HEARTH_ADMISSION_MIN_FREE_DISK_MIB: '100', HEARTH_ADMISSION_DISK_PER_SANDBOX_MIB: '2048', HEARTH_ADMISSION_MEMORY_PER_SANDBOX_MIB: '300' });
    assert.deepEqual(admissionThresholds(c), { minFreeMemoryMib: 4096, memoryPerSandboxMib: 300, minFreeDiskMib: 100, diskPerSandboxMib: 2048, maxLoadPerCpu: 0 });
    assert.throws(() => loadConfig({ dataDir, admissionMinFreeDiskMib: -1 }, {}), /admissionMinFreeDiskMib must be a number >= 0/);
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test('the manager refuses a create past a floor with CapacityError naming it, acquiring nothing; it admits again once there is room', async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'hearth-adm-'));
  const w = new World();
  const store = new Store(':memory:');
  store.upsertTemplate({ ...IMAGE_TEMPLATE_FIELDS,
    id: 'base', imageHash: 'h', kernelPath: '/k', initrdPath: null, rootfsPath: '/r', rootfsSizeBytes: 1 << 30,
    kernelArgs: 'console=ttyS0', vcpus: 1, memoryMib: 256, createdAt: new Date().toISOString(),
  });
  let now: HostSample = { ...roomy, availableMemoryMib: 1100 };
  const m = new SandboxManager({
    store, log: silentLogger(), vmm: new FakeDriver(w), storage: new FakeStorage(w), network: new FakeSlots(w), agent: fakeAgent(w), cloneFile: fakeCloner(w),
    config: {
      dataDir, agentPort: 49983, defaultTimeoutSec: 60, maxTimeoutSec: 3600, bootTimeoutMs: 1000, restoreTimeoutMs: 1000, maxConcurrentStarts: 2, warmTemplates: false,
      limits: { maxVcpus: 4, maxMemoryMib: 4096, minMemoryMib: 128, maxForks: 10 }, capacityMemoryMib: 1 << 20,
      headroom: { thresholds: t, sample: () => now },
    },
  });
  const signal = new AbortController().signal;
  try {
    await assert.rejects(m.create({ templateId: 'base' }, signal), (e: unknown) => e instanceof CapacityError && /host memory: 1100 MiB available/.test(e.message));
    assert.deepEqual(store.listSandboxes(), [], 'a refused create leaves no row');
    assert.deepEqual([...w.slots], []);
    assert.deepEqual([...w.disks], []);
    now = { ...roomy, load1: 40 };
    await assert.rejects(m.create({ templateId: 'base' }, signal), /host CPU: load 40\.0/);
    now = roomy;
    const s = await m.create({ templateId: 'base' }, signal);
    assert.equal(s.state, 'running');
    await m.destroy(s.id, signal);
  } finally {
    await m.settled();
    m.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
