import { IMAGE_TEMPLATE_FIELDS } from '../../src/core/types.js';
/**
 * Create admission and warm shapes: a create is validated and admitted before
 * anything costly happens (a warm snapshot build included); shape builds are
 * bounded per template, cancelled when nobody waits for them, and listable and
 * removable; idempotency keys at the manager (the API's answers are in
 * api-create.test.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IdempotencyMismatchError, SandboxManager } from '../../src/core/manager.js';
import { Store } from '../../src/store/store.js';
import { silentLogger } from '../../src/core/log.js';
import { AbortedError, CapacityError, ConflictError, HostFailureError, InvalidArgumentError } from '../../src/core/errors.js';
import { FakeDriver, FakeSlots, FakeStorage, World, fakeAgent, fakeCloner } from '../helpers/fakes.js';

function setup(opts: { warmShapesPerTemplate?: number; capacityMemoryMib?: number } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'hearth-admit-'));
  const w = new World();
  const store = new Store(':memory:');
  store.upsertTemplate({ ...IMAGE_TEMPLATE_FIELDS,
    id: 'base', imageHash: 'h', kernelPath: '/k', initrdPath: null, rootfsPath: '/r', rootfsSizeBytes: 1 << 30,
    kernelArgs: 'console=ttyS0', vcpus: 1, memoryMib: 256, createdAt: new Date().toISOString(),
  });
  const driver = new FakeDriver(w);
  const deps = {
    store, log: silentLogger(), vmm: driver, storage: new FakeStorage(w), network: new FakeSlots(w), agent: fakeAgent(w), cloneFile: fakeCloner(w),
    config: {
      dataDir, agentPort: 49983, defaultTimeoutSec: 60, maxTimeoutSec: 3600, bootTimeoutMs: 1000, restoreTimeoutMs: 1000, maxConcurrentStarts: 2, warmTemplates: true,
      limits: { maxVcpus: 4, maxMemoryMib: 4096, minMemoryMib: 128, maxForks: 10 }, capacityMemoryMib: opts.capacityMemoryMib ?? 8192,
      ...(opts.warmShapesPerTemplate !== undefined ? { warmShapesPerTemplate: opts.warmShapesPerTemplate } : {}),
    },
  };
  const m = new SandboxManager(deps);
  const warmDir = join(dataDir, 'templates', 'base');
  const warmDirs = (): string[] => (existsSync(warmDir) ? readdirSync(warmDir).sort() : []);
  const shapes = (): string[] => store.listSnapshots({ kind: 'template', templateId: 'base' }).map((s) => `${s.vcpus}c/${s.memoryMib}m`).sort();
  const boots = (): string[] => w.events.filter((e) => e.startsWith('boot '));
  const users = () => store.listSandboxes().filter((s) => s.metadata['hearth.internal'] === undefined);
  const nothingLeft = async (): Promise<void> => {
    await m.settled();
    assert.deepEqual([...w.liveVms], [], 'a VM is still running');
    assert.deepEqual([...w.disks], [], 'a disk is left');
    assert.deepEqual([...w.slots], [], 'a slot is still held');
    assert.deepEqual(store.listJournal(), [], 'a journal row is left');
  };
  const destroyAll = async (): Promise<void> => {
    for (const s of m.list()) if (s.state !== 'destroyed') await m.destroy(s.id, signal());
  };
  return {
    w, store, m, deps, driver, dataDir, warmDirs, shapes, boots, users, nothingLeft, destroyAll,
    done: async () => { await m.settled(); m.close(); rmSync(dataDir, { recursive: true, force: true }); },
  };
}

const signal = () => new AbortController().signal;

/** Holds every restore until `open()`: creates restoring from a warm snapshot stay in flight. */
function gateRestores(t: ReturnType<typeof setup>): { open(): void } {
  let open!: () => void;
  const gate = new Promise<void>((r) => { open = r; });
  const create = t.driver.create.bind(t.driver);
  t.driver.create = () => {
    const vm = create();
    const restore = vm.restore.bind(vm);
    vm.restore = async (s, cfg, sig) => { await gate; return restore(s, cfg, sig); };
    return vm;
  };
  return { open };
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 2));
  assert.ok(cond(), `timed out waiting for ${what}`);
}

// ---------------------------------------------------------------- validate and admit before any work

test('a create refused for its input or for capacity builds nothing for its new shape: no boot, no snapshot, no record', async () => {
  const t = setup({ capacityMemoryMib: 1024 });
  try {
    const newShape = { templateId: 'base', vcpus: 2, memoryMib: 512 };
    const refusals: [string, Parameters<typeof t.m.create>[0], new (...a: never[]) => Error][] = [
      ['an env var name with "="', { ...newShape, envVars: { 'A=B': '1' } }, InvalidArgumentError],
      ['an empty env var name', { ...newShape, envVars: { '': '1' } }, InvalidArgumentError],
      ['a NUL in an env var value', { ...newShape, envVars: { A: 'x\0y' } }, InvalidArgumentError],
      ['a reserved metadata key', { ...newShape, metadata: { 'hearth.internal': 'template-build' } }, InvalidArgumentError],
      ['a bad lifecycle', { ...newShape, lifecycle: { onTimeout: 'explode' as 'kill' } }, InvalidArgumentError],
      ['a bad timeout', { ...newShape, timeoutSec: 0 }, InvalidArgumentError],
      ['more memory than the host has room for', { templateId: 'base', vcpus: 2, memoryMib: 2048 }, CapacityError],
    ];
    for (const [what, input, Err] of refusals) {
      await assert.rejects(t.m.create(input, signal()), Err, what);
    }
    // A network policy the host cannot honour, checked by the network backend.
    t.deps.network.checkEgress = () => { throw new InvalidArgumentError('this host runs sandboxes on user-mode networking, which has no egress', 'network'); };
    await assert.rejects(t.m.create({ ...newShape, network: { egress: { internet: true } } }, signal()), InvalidArgumentError);
    await t.m.settled();
    assert.deepEqual(t.boots(), [], `nothing booted: ${t.w.events.join(', ')}`);
    assert.equal(t.driver.vms.length, 0, 'no VMM was even made');
    assert.deepEqual(t.shapes(), [], 'no warm snapshot row');
    assert.deepEqual(t.warmDirs(), [], 'no warm snapshot directory');
    assert.deepEqual(t.store.listSandboxes(), [], 'no record, not even a build\'s or a failed one');
    await t.nothingLeft();
  } finally { await t.done(); }
});

test('capacity is checked before a new shape is built: a create that would overcommit gets 503 with nothing started', async () => {
  const t = setup({ capacityMemoryMib: 1024 });
  try {
    const a = await t.m.create({ templateId: 'base', memoryMib: 768 }, signal());
    await t.m.settled();
    const before = t.boots().length;
    await assert.rejects(t.m.create({ templateId: 'base', vcpus: 3, memoryMib: 512 }, signal()), CapacityError);
    await t.m.settled();
    assert.equal(t.boots().length, before, 'no build boot for the refused shape');
    assert.deepEqual(t.shapes(), ['1c/768m']);
    await t.m.destroy(a.id, signal());
    await t.nothingLeft();
  } finally { await t.done(); }
});

// ---------------------------------------------------------------- cancellable shape builds

test('a shape build runs while one create waits for it and is cancelled when the last one leaves; nothing of it is left', async () => {
  const t = setup();
  try {
    const first = new AbortController();
    const second = new AbortController();
    // The first client leaves while the build VM boots; the second while it is being snapshotted.
    t.w.onPoint = (p) => {
      if (p === 'boot') first.abort();
      if (p === 'snapshot') second.abort();
    };
    const shape = { templateId: 'base', vcpus: 2, memoryMib: 512 };
    const [a, b] = await Promise.allSettled([t.m.create(shape, first.signal), t.m.create(shape, second.signal)]);
    t.w.onPoint = () => undefined;
    assert.ok(a.status === 'rejected' && a.reason instanceof AbortedError, String(a.status === 'rejected' ? a.reason : a.value));
    assert.ok(b.status === 'rejected' && b.reason instanceof AbortedError, String(b.status === 'rejected' ? b.reason : b.value));
    await t.m.settled();
    assert.equal(t.boots().length, 1, 'one shared build');
    assert.ok(t.w.events.includes('snapshot'), 'the build went on after the first create left: the second still waited');
    assert.deepEqual(t.shapes(), [], 'no snapshot row');
    assert.deepEqual(t.warmDirs(), [], 'no snapshot directory, not even a staging one');
    assert.deepEqual(t.store.listSandboxes().filter((s) => s.metadata['hearth.internal'] === 'template-build'), [], 'no build row');
    assert.deepEqual(t.users().map((s) => s.state), ['failed', 'failed'], 'the cancelled creates are failed');
    await t.nothingLeft();
    // The shape can be asked for again: a fresh build, which now completes.
    const c = await t.m.create(shape, signal());
    assert.equal(c.state, 'running');
    assert.deepEqual(t.shapes(), ['2c/512m']);
    await t.destroyAll();
    await t.nothingLeft();
  } finally { await t.done(); }
});

test('a create that leaves while the build boots cancels it at once; a create of another shape is unaffected', async () => {
  const t = setup();
  try {
    const ac = new AbortController();
    t.w.onPoint = (p) => { if (p === 'boot') ac.abort(); };
    await assert.rejects(t.m.create({ templateId: 'base', vcpus: 2, memoryMib: 512 }, ac.signal), AbortedError);
    t.w.onPoint = () => undefined;
    await t.m.settled();
    assert.ok(!t.w.events.includes('snapshot'), 'the build stopped before its snapshot');
    assert.deepEqual(t.shapes(), []);
    assert.deepEqual(t.warmDirs(), []);
    assert.equal(t.store.listSandboxes().filter((s) => s.metadata['hearth.internal']).length, 0);
    const s = await t.m.create({ templateId: 'base' }, signal());
    assert.equal(s.state, 'running');
    await t.destroyAll();
    await t.nothingLeft();
  } finally { await t.done(); }
});

// ---------------------------------------------------------------- bounded shapes, LRU

test('beyond warmShapesPerTemplate the least recently used shape no create uses is removed (files and row); the template\'s own shape stays', async () => {
  const t = setup({ warmShapesPerTemplate: 3 });
  try {
    const make = async (vcpus: number, memoryMib: number) => {
      const s = await t.m.create({ templateId: 'base', vcpus, memoryMib }, signal());
      await t.m.destroy(s.id, signal());
      await t.m.settled();
    };
    await make(1, 256); // the template's own shape
    await make(2, 256);
    await make(1, 512);
    assert.deepEqual(t.shapes(), ['1c/256m', '1c/512m', '2c/256m']);
    const byShape = (v: number, mem: number) => t.store.listSnapshots({ kind: 'template', templateId: 'base' }).find((s) => s.vcpus === v && s.memoryMib === mem)!;
    // Used order, oldest first: the template's shape, then 1c/512m, then 2c/256m (not the order they were made in).
    t.store.touchSnapshot(byShape(1, 256).id, '2000-01-01T00:00:00.000Z');
    t.store.touchSnapshot(byShape(1, 512).id, '2000-01-02T00:00:00.000Z');
    t.store.touchSnapshot(byShape(2, 256).id, '2000-01-03T00:00:00.000Z');
    const victim = byShape(1, 512);
    await make(2, 512);
    assert.deepEqual(t.shapes(), ['1c/256m', '2c/256m', '2c/512m'], 'the least recently used shape went; the template\'s own stayed though older');
    assert.equal(existsSync(victim.dir), false, 'its files are gone');
    assert.equal(t.warmDirs().length, 3, `one directory per kept shape: ${t.warmDirs().join(', ')}`);
    // Using a shape makes it recent: the one touched now survives the next new shape.
    t.w.events.length = 0;
    await make(2, 256);
    assert.deepEqual(t.boots(), [], 'a kept shape is restored, not built');
    await make(3, 256);
    assert.deepEqual(t.shapes(), ['1c/256m', '2c/256m', '3c/256m']);
    await t.nothingLeft();
  } finally { await t.done(); }
});

test('when every kept shape is in use, a create of a new shape cold-boots and keeps no snapshot', async () => {
  const t = setup({ warmShapesPerTemplate: 2 });
  try {
    const a = await t.m.create({ templateId: 'base', vcpus: 2, memoryMib: 256 }, signal());
    const b = await t.m.create({ templateId: 'base' }, signal());
    await t.m.settled();
    assert.deepEqual(t.shapes(), ['1c/256m', '2c/256m']);
    // A create restoring the 2c shape is in flight: that shape cannot go; the template's own never goes by LRU.
    const gate = gateRestores(t);
    const inFlight = t.m.create({ templateId: 'base', vcpus: 2, memoryMib: 256 }, signal());
    const twoC = t.store.listSnapshots({ kind: 'template', templateId: 'base' }).find((s) => s.vcpus === 2)!;
    await until(() => t.driver.vms.length === 5, 'the gated restore (two builds, two sandboxes, then this one)');
    assert.equal((await t.m.listTemplateSnapshots('base')).find((s) => s.snapshot.id === twoC.id)?.inUse, 1, 'listed as in use');
    t.w.events.length = 0;
    const c = await t.m.create({ templateId: 'base', vcpus: 3, memoryMib: 256 }, signal());
    assert.equal(c.state, 'running');
    assert.deepEqual(c.timings?.steps.map(([n]) => n), ['slot', 'disk', 'boot', 'agent', 'init'], 'a cold boot');
    assert.ok(!t.w.events.includes('snapshot'), 'no snapshot was taken');
    assert.deepEqual(t.shapes(), ['1c/256m', '2c/256m'], 'nothing was added or removed');
    // And an explicit removal of the shape in use is refused until its restore is done.
    await assert.rejects(t.m.deleteTemplateSnapshot('base', twoC.id), ConflictError);
    gate.open();
    assert.equal((await inFlight).state, 'running');
    await t.m.deleteTemplateSnapshot('base', twoC.id);
    assert.deepEqual(t.shapes(), ['1c/256m']);
    assert.equal(existsSync(twoC.dir), false);
    for (const s of [a, b, c]) await t.m.destroy(s.id, signal());
    await t.destroyAll();
    await t.nothingLeft();
  } finally { await t.done(); }
});

test('template snapshots are listed with shape, size, creation and last use; removal is 404 for what is not one of the template\'s', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base', vcpus: 2, memoryMib: 512 }, signal());
    await t.m.settled();
    const [info] = await t.m.listTemplateSnapshots('base');
    assert.ok(info);
    assert.equal(info.snapshot.vcpus, 2);
    assert.equal(info.snapshot.memoryMib, 512);
    assert.ok(info.sizeBytes > 0, 'its files take space');
    assert.equal(info.current, true);
    assert.equal(info.inUse, 0);
    assert.ok(Date.parse(info.lastUsedAt) >= Date.parse(info.snapshot.createdAt));
    await assert.rejects(t.m.listTemplateSnapshots('nope'), /template nope does not exist/);
    await assert.rejects(t.m.deleteTemplateSnapshot('base', 'snope'), /has no warm snapshot/);
    const named = await t.m.snapshot(s.id, 'mine', signal());
    await assert.rejects(t.m.deleteTemplateSnapshot('base', named.id), /has no warm snapshot/, 'a named snapshot is not removed this way');
    await t.m.deleteTemplateSnapshot('base', info.snapshot.id);
    assert.deepEqual(await t.m.listTemplateSnapshots('base'), []);
    assert.equal(existsSync(info.snapshot.dir), false);
    await t.m.deleteSnapshot(named.id);
    await t.destroyAll();
    await t.nothingLeft();
  } finally { await t.done(); }
});

test('recovery removes warm snapshot directories no row names (a build the daemon stopped in the middle)', async () => {
  const t = setup();
  try {
    const s = await t.m.create({ templateId: 'base' }, signal());
    await t.m.settled();
    const kept = t.warmDirs();
    const { mkdirSync, writeFileSync } = await import('node:fs');
    const stray = join(t.dataDir, 'templates', 'base', 'abcdef0123456789-2c-512m-zzzzzzzz.staging');
    mkdirSync(stray, { recursive: true });
    writeFileSync(join(stray, 'vmstate'), 'x');
    const other = join(t.dataDir, 'templates', 'base', 'rootfs.ext4');
    writeFileSync(other, 'not a warm snapshot');
    t.m.close();
    const fresh = new SandboxManager(t.deps);
    await fresh.recover(signal());
    assert.equal(existsSync(stray), false, 'the stray build directory went');
    assert.ok(existsSync(other), 'a file that is not a warm snapshot directory is left alone');
    assert.deepEqual(t.warmDirs().filter((d) => d !== 'rootfs.ext4'), kept);
    await fresh.destroy(s.id, signal());
    fresh.close();
  } finally { await t.done(); }
});

// ---------------------------------------------------------------- idempotency keys (manager)

test('idempotency: same request gives the same sandbox; another request under the key is refused', async () => {
  const t = setup();
  try {
    const a = await t.m.createSandbox({ templateId: 'base', envVars: { A: '1' }, idempotencyKey: 'k' }, signal());
    assert.equal(a.replayed, false);
    const again = await t.m.createSandbox({ envVars: { A: '1' }, idempotencyKey: 'k', templateId: 'base' }, signal());
    assert.equal(again.replayed, true);
    assert.equal(again.sandbox.id, a.sandbox.id);
    await assert.rejects(t.m.create({ templateId: 'base', envVars: { A: '2' }, idempotencyKey: 'k' }, signal()),
      (e: unknown) => e instanceof IdempotencyMismatchError && /Idempotency-Key "k"/.test(e.message));
    // Another owner's key of the same name is another key.
    const other = await t.m.createSandbox({ templateId: 'base', envVars: { A: '2' }, idempotencyKey: 'k', idempotencyScope: 'kother' }, signal());
    assert.equal(other.replayed, false);
    assert.notEqual(other.sandbox.id, a.sandbox.id);
    assert.equal(t.users().length, 2);
    await t.destroyAll();
    await t.nothingLeft();
  } finally { await t.done(); }
});

test('idempotency: a create refused for capacity or cancelled by its caller gives its key back; a failed one answers replays with its failure', async () => {
  const t = setup({ capacityMemoryMib: 1024 });
  try {
    const big = await t.m.create({ templateId: 'base', memoryMib: 768 }, signal());
    await assert.rejects(t.m.create({ templateId: 'base', memoryMib: 512, idempotencyKey: 'cap' }, signal()), CapacityError);
    await t.m.destroy(big.id, signal());
    const retried = await t.m.createSandbox({ templateId: 'base', memoryMib: 512, idempotencyKey: 'cap' }, signal());
    assert.equal(retried.replayed, false);
    assert.equal(retried.sandbox.state, 'running', 'the retry after a 503 creates');

    const ac = new AbortController();
    t.w.onPoint = (p) => { if (p === 'restore') ac.abort(); };
    await assert.rejects(t.m.create({ templateId: 'base', idempotencyKey: 'gone' }, ac.signal), AbortedError);
    t.w.onPoint = () => undefined;
    const afterCancel = await t.m.createSandbox({ templateId: 'base', idempotencyKey: 'gone' }, signal());
    assert.equal(afterCancel.replayed, false);
    assert.equal(afterCancel.sandbox.state, 'running', 'the retry after a cancelled create creates');

    t.w.faults.add('agent.init');
    await assert.rejects(t.m.create({ templateId: 'base', vcpus: 1, memoryMib: 128, idempotencyKey: 'bad' }, signal()), HostFailureError);
    t.w.faults.clear();
    await assert.rejects(t.m.create({ templateId: 'base', vcpus: 1, memoryMib: 128, idempotencyKey: 'bad' }, signal()),
      (e: unknown) => e instanceof Error && (e as { code?: string }).code === 'host_failure' && /create failed at/.test(e.message) && /Idempotency-Key "bad" failed/.test(e.message));
    await t.destroyAll();
    await t.nothingLeft();
  } finally { await t.done(); }
});

test('idempotency: concurrent requests with one key wait for the first and get its outcome; keys expire after 24 h', async () => {
  const t = setup();
  try {
    const results = await Promise.all([1, 2, 3].map(() => t.m.createSandbox({ templateId: 'base', idempotencyKey: 'same' }, signal())));
    assert.equal(new Set(results.map((r) => r.sandbox.id)).size, 1);
    assert.deepEqual(results.map((r) => r.replayed).sort(), [false, true, true]);
    // A key first used more than 24 h ago is forgotten: another request may use it.
    t.store.db.prepare('UPDATE idempotency SET created_at = ?').run(new Date(Date.now() - 25 * 3600 * 1000).toISOString());
    const later = await t.m.createSandbox({ templateId: 'base', envVars: { NEW: '1' }, idempotencyKey: 'same' }, signal());
    assert.equal(later.replayed, false);
    assert.notEqual(later.sandbox.id, results[0]!.sandbox.id);
    await t.destroyAll();
    await t.nothingLeft();
  } finally { await t.done(); }
});

test('migration 5: legacy idempotency keys keep working (any body replays; a key burned by a 503 is free); snapshots get a last use', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'hearth-mig5-'));
  try {
    const path = join(dir, 'hearth.db');
    const Database = (await import('better-sqlite3')).default;
    const { MIGRATIONS } = await import('../../src/store/migrations.js');
    const old = new Database(path);
    for (const sql of MIGRATIONS.slice(0, 4)) old.exec(sql);
    old.pragma('user_version = 4');
    const at = '2099-01-01T00:00:00.000Z'; // not expired when the test runs
    old.prepare("INSERT INTO idempotency (key, sandbox_id, created_at) VALUES ('burned', 'inever', ?)").run(at);
    old.prepare(`INSERT INTO snapshots (id, name, kind, sandbox_id, template_id, image_hash, dir, vcpus, memory_mib, agent_token, env_vars, created_at)
      VALUES ('sold', NULL, 'template', NULL, 'base', 'x', '/nowhere', 1, 256, 't', '{}', ?)`).run(at);
    old.close();
    const store = new Store(path);
    assert.equal(store.schemaVersion(), MIGRATIONS.length);
    assert.deepEqual(store.getIdempotencyKey('', 'burned'), {
      scope: '', key: 'burned', requestHash: null, sandboxId: 'inever', state: 'created', errorCode: null, errorMessage: null, createdAt: at,
    });
    assert.equal(store.listTemplateSnapshots('base')[0]?.lastUsedAt, at);
    store.deleteSnapshot('sold');
    store.close();
    // A manager on the migrated store: the key whose sandbox never got a row creates now.
    const t = setup();
    try {
      t.store.close();
      const migrated = new Store(path);
      migrated.upsertTemplate({ ...IMAGE_TEMPLATE_FIELDS,
        id: 'base', imageHash: 'h', kernelPath: '/k', initrdPath: null, rootfsPath: '/r', rootfsSizeBytes: 1 << 30,
        kernelArgs: 'console=ttyS0', vcpus: 1, memoryMib: 256, createdAt: new Date().toISOString(),
      });
      const m = new SandboxManager({ ...t.deps, store: migrated });
      const s = await m.createSandbox({ templateId: 'base', idempotencyKey: 'burned' }, signal());
      assert.equal(s.replayed, false);
      assert.equal(s.sandbox.state, 'running');
      const again = await m.createSandbox({ templateId: 'base', idempotencyKey: 'burned' }, signal());
      assert.equal(again.sandbox.id, s.sandbox.id);
      await m.destroy(s.sandbox.id, signal());
      await m.settled();
      m.close();
      migrated.close();
    } finally { rmSync(t.dataDir, { recursive: true, force: true }); }
  } finally { rmSync(dir, { recursive: true, force: true }); }
});
