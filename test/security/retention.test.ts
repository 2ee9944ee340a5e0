import { IMAGE_TEMPLATE_FIELDS } from '../../src/core/types.js';
/**
 * Retention of ended sandboxes: secrets go as a sandbox ends (destroy, failed
 * create, a VM that dies, a failed destroy), rows go after endedRetentionHours,
 * running and paused sandboxes are never touched. A real SQLite file in a temp
 * dir, the manager on fake drivers (test/helpers/fakes.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { SandboxManager } from '../../src/core/manager.js';
import { Store } from '../../src/store/store.js';
import { silentLogger } from '../../src/core/log.js';
import { NotFoundError } from '../../src/core/errors.js';
import { presentDetail } from '../../src/api/present.js';
import { loadConfig } from '../../src/daemon/config.js';
import type { SandboxRecord } from '../../src/core/types.js';
import { FakeDriver, FakeSlots, FakeStorage, World, fakeAgent, fakeCloner } from '../helpers/fakes.js';

const HOUR = 3_600_000;

async function setup() {
  const dataDir = mkdtempSync(join(tmpdir(), 'hearth-retention-'));
  const dbPath = join(dataDir, 'hearth.db');
  const w = new World();
  const store = new Store(dbPath);
  store.upsertTemplate({ ...IMAGE_TEMPLATE_FIELDS,
    id: 'base', imageHash: 'h', kernelPath: '/k', initrdPath: null, rootfsPath: '/r', rootfsSizeBytes: 1 << 30,
    kernelArgs: 'console=ttyS0', vcpus: 1, memoryMib: 256, createdAt: new Date().toISOString(),
  });
  const driver = new FakeDriver(w);
  const m = new SandboxManager({
    store, log: silentLogger(), vmm: driver, storage: new FakeStorage(w), network: new FakeSlots(w), agent: fakeAgent(w), cloneFile: fakeCloner(w),
    config: { dataDir, agentPort: 49983, defaultTimeoutSec: 60, maxTimeoutSec: 3600, bootTimeoutMs: 1000, restoreTimeoutMs: 1000, maxConcurrentStarts: 2, warmTemplates: true,
      limits: { maxVcpus: 4, maxMemoryMib: 4096, minMemoryMib: 128, maxForks: 10 }, capacityMemoryMib: 4096 },
  });
  // The template's warm snapshot first, and without the row of the VM that built it: each test sees only its own sandboxes.
  await m.templateSnapshot(store.getTemplate('base')!, 1, 256, new AbortController().signal);
  store.db.prepare(`DELETE FROM sandboxes WHERE metadata LIKE '%template-build%'`).run();
  /** Every byte SQLite keeps on disk for this database, after a checkpoint. */
  const dbBytes = (): string => {
    store.db.pragma('wal_checkpoint(TRUNCATE)');
    return [dbPath, `${dbPath}-wal`, `${dbPath}-journal`].filter((p) => existsSync(p)).map((p) => readFileSync(p).toString('latin1')).join('');
  };
  const endedHoursAgo = (id: string, hours: number): void => {
    store.db.prepare('UPDATE sandboxes SET ended_at = ? WHERE id = ?').run(new Date(Date.now() - hours * HOUR).toISOString(), id);
  };
  const idempotencyRows = (id: string): number =>
    (store.db.prepare('SELECT COUNT(*) AS n FROM idempotency WHERE sandbox_id = ?').get(id) as { n: number }).n;
  const journalRows = (id: string): number => store.listJournal().filter((j) => j.sandboxId === id).length;
  return {
    w, store, m, driver, dbBytes, endedHoursAgo, idempotencyRows, journalRows,
    done: () => { m.close(); store.close(); rmSync(dataDir, { recursive: true, force: true }); },
  };
}

const signal = () => new AbortController().signal;
const secret = (what: string) => `${what}-${randomBytes(12).toString('hex')}`;

function assertNoSecrets(rec: SandboxRecord): void {
  assert.equal(rec.agentToken, '', 'the agent token is gone');
  assert.deepEqual(rec.envVars, {}, 'env vars are gone');
  assert.ok(!rec.netPolicy.trafficToken, 'the traffic token is gone');
}

test('destroy drops the agent token, env vars and traffic token: not in the row, the API, nor the database file', async () => {
  const t = await setup();
  try {
    const envValue = secret('env-value');
    const s = await t.m.create({ templateId: 'base', envVars: { API_KEY: envValue }, metadata: { team: 'qa' }, network: { publicTraffic: false } }, signal());
    const token = s.agentToken;
    const traffic = s.netPolicy.trafficToken!;
    assert.ok(token.length >= 16 && traffic.length >= 16);
    // Before destroy they are there (so the checks below can see them).
    assert.ok(t.dbBytes().includes(token) && t.dbBytes().includes(envValue) && t.dbBytes().includes(traffic));

    await t.m.destroy(s.id, signal());
    const rec = t.m.get(s.id);
    assert.equal(rec.state, 'destroyed');
    assertNoSecrets(rec);
    assert.equal(rec.netPolicy.trafficToken, '', 'the record still says its traffic was not public');
    assert.deepEqual(rec.metadata, { team: 'qa' }, 'metadata (labels) stays for the history');
    const shown = presentDetail(rec, undefined, null, null);
    assert.equal(shown.envdAccessToken, '');
    assert.deepEqual(shown.envVars, {});
    assert.equal(shown.trafficAccessToken, null);
    assert.equal(shown.allowPublicTraffic, false);

    const bytes = t.dbBytes();
    assert.ok(!bytes.includes(token), 'the agent token is still in the database file');
    assert.ok(!bytes.includes(envValue), 'an env value is still in the database file');
    assert.ok(!bytes.includes(traffic), 'the traffic token is still in the database file');
  } finally { t.done(); }
});

test('every other way a sandbox ends drops its secrets too: failed create, a VM that dies, a destroy that fails', async () => {
  const t = await setup();
  try {
    const env = { K: secret('v') };
    // A failed create.
    t.w.faults.add('agent.init');
    await assert.rejects(t.m.create({ templateId: 'base', envVars: env }, signal()));
    t.w.faults.clear();
    const failedCreate = t.store.listSandboxes({ states: ['failed'] });
    assert.equal(failedCreate.length, 1);
    assertNoSecrets(failedCreate[0]!);

    // A VM that exits on its own (reaped).
    const reaped = await t.m.create({ templateId: 'base', envVars: env }, signal());
    t.driver.vms.find((v) => v.pid === reaped.vmm!.pid)!.crash();
    for (let i = 0; i < 100 && t.m.get(reaped.id).state !== 'failed'; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(t.m.get(reaped.id).state, 'failed');
    assertNoSecrets(t.m.get(reaped.id));

    // A destroy whose release fails: failed, handles kept for the retry, secrets gone anyway.
    const stuck = await t.m.create({ templateId: 'base', envVars: env }, signal());
    t.w.faults.add('disk.remove');
    await assert.rejects(t.m.destroy(stuck.id, signal()), /could not release everything/);
    t.w.faults.clear();
    assert.equal(t.m.get(stuck.id).state, 'failed');
    assert.ok(t.m.get(stuck.id).disk, 'the disk handle stays for the next destroy');
    assertNoSecrets(t.m.get(stuck.id));

    const bytes = t.dbBytes();
    for (const s of [reaped, stuck]) assert.ok(!bytes.includes(s.agentToken), `the token of ${s.id} is still in the database file`);
    assert.ok(!bytes.includes(env.K), 'an env value is still in the database file');
  } finally { t.done(); }
});

test('ended sandboxes past the retention are purged with their journal and idempotency rows; newer ones and named snapshots stay', async () => {
  const t = await setup();
  try {
    t.m.setEndedRetention(24);
    const old = await t.m.create({ templateId: 'base', idempotencyKey: 'key-old' }, signal());
    const snap = await t.m.snapshot(old.id, 'keep-me', signal());
    await t.m.destroy(old.id, signal());
    const young = await t.m.create({ templateId: 'base', idempotencyKey: 'key-young' }, signal());
    await t.m.destroy(young.id, signal());
    t.endedHoursAgo(old.id, 25);
    t.endedHoursAgo(young.id, 23);
    // A journal row left behind by an interrupted operation.
    t.store.journalBegin(old.id, 'destroy', 'files');
    assert.equal(t.idempotencyRows(old.id), 1);

    assert.deepEqual(t.m.purgeEnded(), [old.id]);
    assert.throws(() => t.m.get(old.id), NotFoundError);
    assert.equal(t.journalRows(old.id), 0, 'its journal rows are gone');
    assert.equal(t.idempotencyRows(old.id), 0, 'its idempotency key is gone');
    assert.equal(t.m.get(young.id).state, 'destroyed', 'one that ended 23 h ago stays');
    assert.equal(t.idempotencyRows(young.id), 1);
    assert.equal(t.m.getSnapshot(snap.id).name, 'keep-me', 'the named snapshot taken from it stays');
    // A retry with the purged key makes a new sandbox instead of answering with a vanished one.
    const again = await t.m.create({ templateId: 'base', idempotencyKey: 'key-old' }, signal());
    assert.notEqual(again.id, old.id);
    assert.equal(again.state, 'running');
    // A later pass, 2 h on, takes the other one.
    assert.deepEqual(t.m.purgeEnded(Date.now() + 2 * HOUR), [young.id]);
  } finally { t.done(); }
});

test('running and paused sandboxes, and failed ones still holding host resources, are never purged', async () => {
  const t = await setup();
  try {
    t.m.setEndedRetention(0);
    const running = await t.m.create({ templateId: 'base' }, signal());
    const paused = await t.m.create({ templateId: 'base' }, signal());
    await t.m.pause(paused.id, signal());
    const stuck = await t.m.create({ templateId: 'base' }, signal());
    t.w.faults.add('disk.remove');
    await assert.rejects(t.m.destroy(stuck.id, signal()), /could not release everything/);
    t.w.faults.clear();
    // Old enough for anything: created a month ago.
    t.store.db.prepare('UPDATE sandboxes SET created_at = ?').run(new Date(Date.now() - 30 * 24 * HOUR).toISOString());
    t.endedHoursAgo(stuck.id, 30 * 24);

    assert.deepEqual(t.m.purgeEnded(Date.now() + 365 * 24 * HOUR), []);
    assert.equal(t.m.get(running.id).state, 'running');
    assert.ok(t.m.get(running.id).agentToken, 'a running sandbox keeps its token');
    assert.equal(t.m.get(paused.id).state, 'paused');
    assert.ok(t.m.get(paused.id).agentToken, 'a paused sandbox keeps its token (resume needs it)');
    assert.equal(t.m.get(stuck.id).state, 'failed');
    // Once its resources are released it goes (retention 0: as the destroy ends).
    await t.m.destroy(stuck.id, signal());
    assert.throws(() => t.m.get(stuck.id), NotFoundError);
  } finally { t.done(); }
});

test('retention 0 purges an ended sandbox at once; a retention not set purges nothing', async () => {
  const t = await setup();
  try {
    const kept = await t.m.create({ templateId: 'base', idempotencyKey: 'k1' }, signal());
    await t.m.destroy(kept.id, signal());
    assert.deepEqual(t.m.purgeEnded(Date.now() + 10_000 * HOUR), [], 'no retention set: nothing is purged');
    assert.equal(t.m.get(kept.id).state, 'destroyed');

    t.m.setEndedRetention(0);
    const s = await t.m.create({ templateId: 'base', idempotencyKey: 'k2' }, signal());
    await t.m.destroy(s.id, signal());
    assert.throws(() => t.m.get(s.id), NotFoundError, 'deleted as the destroy ended');
    assert.equal(t.idempotencyRows(s.id), 0);
    await assert.rejects(t.m.destroy(s.id, signal()), NotFoundError);
    t.w.faults.add('agent.init');
    await assert.rejects(t.m.create({ templateId: 'base' }, signal()));
    t.w.faults.clear();
    assert.deepEqual(t.store.listSandboxes({ states: ['failed'] }), [], 'a failed create is deleted as it fails');
    // The one that ended before the retention was set goes at the next pass.
    assert.deepEqual(t.m.purgeEnded(), [kept.id]);
    assert.ok(t.store.listJournal().length === 0);
  } finally { t.done(); }
});

test('a purge pass drops the secrets ended rows from an older hearthd still hold, and checks the retention setting', async () => {
  const t = await setup();
  try {
    t.m.setEndedRetention(24);
    const token = secret('legacy-token');
    const s = await t.m.create({ templateId: 'base' }, signal());
    await t.m.destroy(s.id, signal());
    // As a database written before secrets were dropped at the end would have it.
    t.store.db.prepare('UPDATE sandboxes SET agent_token = ?, env_vars = ?, net_policy = ? WHERE id = ?')
      .run(token, JSON.stringify({ K: 'legacy-env' }), JSON.stringify({ egress: null, trafficToken: 'legacy-traffic' }), s.id);
    assert.equal(t.store.getSandbox(s.id)!.agentToken, token);
    assert.deepEqual(t.m.purgeEnded(), [], 'it ended just now: kept');
    const rec = t.m.get(s.id);
    assertNoSecrets(rec);
    assert.ok(!t.dbBytes().includes(token));
    assert.throws(() => t.m.setEndedRetention(-1), /retention/);
  } finally { t.done(); }
});

test('endedRetentionHours: 24 by default, HEARTH_ENDED_RETENTION_HOURS sets it, negative is refused', () => {
  const dataDir = join(tmpdir(), `hearth-retention-cfg-${process.pid}`);
  assert.equal(loadConfig({ dataDir }, {}).endedRetentionHours, 24);
  assert.equal(loadConfig({ dataDir }, { HEARTH_ENDED_RETENTION_HOURS: '0' }).endedRetentionHours, 0);
  assert.equal(loadConfig({ dataDir }, { HEARTH_ENDED_RETENTION_HOURS: '1.5' }).endedRetentionHours, 1.5);
  assert.throws(() => loadConfig({ dataDir }, { HEARTH_ENDED_RETENTION_HOURS: '-1' }), /endedRetentionHours/);
});
