/**
 * The cluster's API key cache (src/cluster/keys.ts) over a fake table: hits never
 * touch the table, misses read it at most once per interval however many arrive,
 * a key created elsewhere works at once, deletes propagate on refresh (and a read
 * that started before a local delete cannot bring the key back), known keys keep
 * working while the table is unreachable, last uses are written in one batch,
 * and the copy survives a restart in its file. The real table: test/integration/cluster-keys.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hashKey, newApiKey } from '../../src/api/auth.js';
import { KeyStoreUnavailableError, type ApiKeyInfo } from '../../src/api/key-store.js';
import { ClusterKeyStore, type KeyHash, type KeySource } from '../../src/cluster/keys.js';

/** An in-memory `api_keys` that counts reads and can be made unreachable or slow. */
class FakeTable implements KeySource {
  rows: (KeyHash & { name: string; deleted: boolean; lastUsed: number | null })[] = [];
  reads = 0;
  touches: Map<string, number>[] = [];
  down = false;
  /** When set, hashes() waits for it (a read in flight). */
  gate: Promise<void> | null = null;

  private check(): void { if (this.down) throw new Error('connect ECONNREFUSED 127.0.0.1:5432'); }

  /** A key made on "another node": only the table has it. */
  addElsewhere(name = 'elsewhere'): { id: string; key: string } {
    const k = newApiKey();
    this.rows.push({ id: k.id, hash: k.hash, name, deleted: false, lastUsed: null });
    return k;
  }

  async hashes(): Promise<KeyHash[]> {
    this.reads++;
    const snapshot = this.rows.filter((r) => !r.deleted).map(({ id, hash }) => ({ id, hash }));
    if (this.gate) await this.gate;
    this.check();
    return snapshot;
  }

  async list(): Promise<ApiKeyInfo[]> {
    this.check();
    return this.rows.filter((r) => !r.deleted).map((r) => ({ id: r.id, name: r.name, createdAt: new Date(0).toISOString(), lastUsedAt: r.lastUsed ? new Date(r.lastUsed).toISOString() : null }));
  }

  async insert(k: { id: string; name: string; hash: string }): Promise<ApiKeyInfo> {
    this.check();
    this.rows.push({ ...k, deleted: false, lastUsed: null });
    return { id: k.id, name: k.name, createdAt: new Date().toISOString(), lastUsedAt: null };
  }

  async delete(id: string): Promise<boolean> {
    this.check();
    const r = this.rows.find((x) => x.id === id && !x.deleted);
    if (r) r.deleted = true;
    return Boolean(r);
  }

  async touch(uses: ReadonlyMap<string, number>): Promise<void> {
    this.check();
    this.touches.push(new Map(uses));
    for (const [id, at] of uses) { const r = this.rows.find((x) => x.id === id); if (r) r.lastUsed = at; }
  }
}

const wrongKey = (): string => newApiKey().key;

test('a known key is checked in memory: no read per request, last uses written in one batch per sync', async () => {
  const t = new FakeTable();
  const keys = new ClusterKeyStore(t, { missIntervalMs: 200, cacheFile: null });
  const a = await keys.create('a');
  const b = t.addElsewhere('b');
  await keys.sync();
  const reads = t.reads;
  for (let i = 0; i < 200; i++) {
    assert.equal(await keys.verify(a.key), a.id);
    assert.equal(await keys.verify(b.key), b.id);
  }
  assert.equal(t.reads, reads, 'no table read for keys the copy has');
  assert.equal(t.touches.length, 0, 'no write per request');
  await keys.sync();
  assert.equal(t.touches.length, 1, 'one batched write');
  assert.deepEqual([...t.touches[0]!.keys()].sort(), [a.id, b.id].sort());
  await keys.sync();
  assert.equal(t.touches.length, 1, 'nothing used since: nothing written');
  assert.equal(await keys.verify(undefined), null);
  assert.equal(await keys.verify(''), null);
});

test('a key created on another node works at once (one read); a spray of wrong keys costs one read per interval', async () => {
  const t = new FakeTable();
  const interval = 100;
  const keys = new ClusterKeyStore(t, { missIntervalMs: interval, cacheFile: null });
  await keys.sync();
  const fresh = t.addElsewhere();
  const before = t.reads;
  assert.equal(await keys.verify(fresh.key), fresh.id, 'found by one read for the miss');
  assert.equal(t.reads, before + 1);

  // 300 distinct wrong keys at once, then 20 more one after the other (each waits for its read).
  const start = performance.now();
  const readsBefore = t.reads;
  const burst = await Promise.all(Array.from({ length: 300 }, () => keys.verify(wrongKey())));
  assert.ok(burst.every((x) => x === null));
  for (let i = 0; i < 20; i++) {
    assert.equal(await keys.verify(wrongKey()), null);
    await new Promise((r) => setTimeout(r, 10));
  }
  const elapsed = performance.now() - start;
  const reads = t.reads - readsBefore;
  assert.ok(reads <= Math.ceil(elapsed / interval) + 1, `${reads} reads for 320 wrong keys in ${Math.round(elapsed)} ms (interval ${interval} ms)`);
  assert.ok(reads >= 1);
  assert.equal(keys.missReads, t.reads - 1, 'every read after the first sync was for a miss');

  // The same wrong key again: known bad, answered without waiting for a read.
  const bad = wrongKey();
  assert.equal(await keys.verify(bad), null);
  const r0 = t.reads;
  const t0 = performance.now();
  for (let i = 0; i < 50; i++) assert.equal(await keys.verify(bad), null);
  assert.equal(t.reads, r0, 'a key already found wrong is not looked up again');
  assert.ok(performance.now() - t0 < interval, 'and not made to wait');
});

test('a delete on another node is refused after the next sync; a local delete at once, and a read already in flight cannot bring it back', async () => {
  const t = new FakeTable();
  const keys = new ClusterKeyStore(t, { missIntervalMs: 50, cacheFile: null });
  const a = await keys.create('a');
  const b = await keys.create('b');
  await keys.sync();
  // Deleted elsewhere: still accepted until this node reads the table again (its heartbeat).
  t.rows.find((r) => r.id === a.id)!.deleted = true;
  assert.equal(await keys.verify(a.key), a.id, 'the copy is at most a heartbeat old');
  await keys.sync();
  assert.equal(await keys.verify(a.key), null, 'refused once the copy is refreshed');

  // A heartbeat read that started before this node's own delete finishes after it.
  let open!: () => void;
  t.gate = new Promise((r) => { open = r; });
  const heartbeat = keys.refresh();
  await new Promise((r) => setImmediate(r));
  assert.equal(await keys.delete(b.id), true);
  assert.ok(!keys.cachedIds().includes(b.id), 'revoked here at once');
  t.gate = null;
  open();
  assert.equal(await heartbeat, false, 'the older read (which still had the key) is not installed');
  assert.ok(!keys.cachedIds().includes(b.id));
  assert.equal(await keys.verify(b.key), null, 'refused');
  assert.equal(await keys.delete(b.id), false, 'deleting twice: no such key');
});

test('with the table unreachable: known keys work, unknown keys are refused (not remembered as bad), writes fail as unavailable', async () => {
  const t = new FakeTable();
  const keys = new ClusterKeyStore(t, { missIntervalMs: 20, cacheFile: null });
  const a = await keys.create('a');
  await keys.sync();
  t.down = true;
  await assert.rejects(keys.sync());
  assert.equal(await keys.verify(a.key), a.id, 'known key accepted from the copy');
  const later = t.addElsewhere();
  assert.equal(await keys.verify(later.key), null, 'not in the copy and the table does not answer: refused');
  await assert.rejects(keys.create('x'), KeyStoreUnavailableError);
  await assert.rejects(keys.list(), KeyStoreUnavailableError);
  await assert.rejects(keys.delete(a.id), KeyStoreUnavailableError);
  assert.equal(await keys.count(), 1, 'the copy\'s count while the table is away');
  t.down = false;
  assert.equal(await keys.verify(later.key), later.id, 'a failed read does not mark a key bad: it works once the table answers');
  assert.equal(t.touches.length, 0);
  await keys.sync();
  assert.ok((t.touches.length as number) === 1 && t.touches[0]!.has(a.id) && t.touches[0]!.has(later.id), 'uses collected while down are written when it is back');
});

test('keys that arrive late (a node\'s import) clear what was remembered as bad', async () => {
  const t = new FakeTable();
  const keys = new ClusterKeyStore(t, { missIntervalMs: 10, cacheFile: null });
  await keys.sync();
  const k = newApiKey();
  assert.equal(await keys.verify(k.key), null, 'not there yet: remembered as bad');
  t.rows.push({ id: k.id, hash: k.hash, name: 'imported', deleted: false, lastUsed: null });
  await keys.sync();
  assert.equal(await keys.verify(k.key), k.id);
});

test('the copy is saved (hashes only, mode 0600) and used at the next start while the table is down; the seed when there is no copy yet', async () => {
  const dir = await mkdtemp(join(process.env['HEARTH_TEST_TMP'] ?? tmpdir(), 'cluster-keys-unit-'));
  try {
    const file = join(dir, 'cluster-keys.json');
    const t = new FakeTable();
    const seeded = newApiKey();
    const first = new ClusterKeyStore(t, { missIntervalMs: 10, cacheFile: file, seed: () => [{ id: seeded.id, hash: seeded.hash }] });
    t.down = true;
    assert.equal(await first.verify(seeded.key), seeded.id, 'no saved copy: the seed (the node\'s own keys) is accepted');
    t.down = false;
    const a = await first.create('a');
    await first.sync();
    await new Promise((r) => setTimeout(r, 50)); // the file is written in the background
    const text = await readFile(file, 'utf8');
    assert.ok(text.includes(hashKey(a.key)) && !text.includes(a.key), 'hashes, never keys');
    assert.ok(!text.includes(seeded.id), 'the seed is gone once the table has been read (it did not have it)');
    assert.equal((await stat(file)).mode & 0o777, 0o600);

    t.down = true;
    const second = new ClusterKeyStore(t, { missIntervalMs: 10, cacheFile: file, seed: () => [{ id: seeded.id, hash: seeded.hash }] });
    assert.equal(await second.verify(a.key), a.id, 'the saved copy is used while the table is down');
    assert.equal(await second.verify(seeded.key), null, 'the seed is only for a node without a saved copy');
    assert.equal(await second.count(), null, 'never read from the table since start: the count is unknown');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
