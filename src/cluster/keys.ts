/**
 * API keys in cluster mode (docs/cluster.md, "API keys"): one set for the whole
 * cluster, in PostgreSQL's `api_keys`, checked against an in-memory copy of the
 * hashes on each node, so a request never waits on PostgreSQL for a key the
 * node already knows, and known keys keep working while PostgreSQL is down.
 *
 * - The copy is replaced on every heartbeat (src/cluster/node.ts) and updated
 *   at once by this node's own creates and deletes: a delete made on another
 *   node is refused here within one heartbeat.
 * - A key the copy does not have makes the node read the table again (a key just
 *   created on another node works at once), but at most one such read runs per
 *   `missIntervalMs`, shared by every request that missed meanwhile: a stranger
 *   spraying random keys costs PostgreSQL one query per interval, not one per
 *   request. A hash that is still unknown after a read made after it was first
 *   presented is remembered as bad (a key's value is random and exists only
 *   once it is created, so a bad one cannot become good later).
 * - Last-use times are collected in memory and written in one statement per heartbeat.
 * - The copy is kept in a file in the data dir (hashes only), so a node that
 *   starts while PostgreSQL is down still accepts the keys it knew.
 */
import { readFileSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { hashKey, matchDigest, newApiKey } from '../api/auth.js';
import { KeyStoreUnavailableError, type ApiKeyInfo, type ApiKeyStore } from '../api/key-store.js';
import type { Store } from '../store/store.js';

/** A key as the cache holds it: its id and the SHA-256 of its value (hex). */
export interface KeyHash { id: string; hash: string }

/** A key as a node's SQLite has it (what is imported at join). */
export interface LocalKey extends KeyHash { name: string; createdAt: string; lastUsedAt: string | null }

/** What the cache needs from the table (PgKeyTable; a fake in unit tests). */
export interface KeySource {
  /** Every live (not deleted) key's id and hash. */
  hashes(): Promise<KeyHash[]>;
  list(): Promise<ApiKeyInfo[]>;
  insert(k: { id: string; name: string; hash: string }): Promise<ApiKeyInfo>;
  /** Marks it deleted; false when there is no live key with that id. */
  delete(id: string): Promise<boolean>;
  /** Last-use times (ms since the epoch), one statement for all. */
  touch(uses: ReadonlyMap<string, number>): Promise<void>;
}

interface KeyRow { id: string; name: string; created_at: Date; last_used_at: Date | null }

const infoOf = (r: KeyRow): ApiKeyInfo => ({ id: r.id, name: r.name, createdAt: r.created_at.toISOString(), lastUsedAt: r.last_used_at ? r.last_used_at.toISOString() : null });

/** The `api_keys` table (migration in src/cluster/pg-store.ts). A deleted key keeps its row with `deleted_at` set. */
export class PgKeyTable implements KeySource {
  constructor(private readonly pool: pg.Pool, private readonly nodeId: string) {}

  async hashes(): Promise<KeyHash[]> {
    return (await this.pool.query<KeyHash>('SELECT id, hash FROM api_keys WHERE deleted_at IS NULL')).rows;
  }

  async list(): Promise<ApiKeyInfo[]> {
    const r = await this.pool.query<KeyRow>('SELECT id, name, created_at, last_used_at FROM api_keys WHERE deleted_at IS NULL ORDER BY created_at, id');
    return r.rows.map(infoOf);
  }

  async insert(k: { id: string; name: string; hash: string }): Promise<ApiKeyInfo> {
    const r = await this.pool.query<KeyRow>(
      'INSERT INTO api_keys (id, name, hash, created_on) VALUES ($1, $2, $3, $4) RETURNING id, name, created_at, last_used_at', [k.id, k.name, k.hash, this.nodeId]);
    return infoOf(r.rows[0]!);
  }

  async delete(id: string): Promise<boolean> {
    return ((await this.pool.query('UPDATE api_keys SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL', [id])).rowCount ?? 0) === 1;
  }

  async touch(uses: ReadonlyMap<string, number>): Promise<void> {
    if (uses.size === 0) return;
    const ids = [...uses.keys()];
    const at = ids.map((id) => new Date(uses.get(id)!));
    await this.pool.query(`
      UPDATE api_keys k SET last_used_at = GREATEST(COALESCE(k.last_used_at, u.at), u.at)
      FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at) WHERE k.id = u.id`, [ids, at]);
  }

  /**
   * A node's SQLite keys, copied in when it joins (every time it reaches
   * PostgreSQL: idempotent, by id). A key already there, live or deleted, is
   * left as it is, so a key revoked in the cluster stays revoked. Returns how
   * many were new.
   */
  async importKeys(keys: readonly LocalKey[]): Promise<number> {
    if (keys.length === 0) return 0;
    const r = await this.pool.query(`
      INSERT INTO api_keys (id, name, hash, created_at, last_used_at, created_on)
      SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[])
      ON CONFLICT (id) DO NOTHING`,
    [keys.map((k) => k.id), keys.map((k) => k.name), keys.map((k) => k.hash), keys.map((k) => k.createdAt), keys.map((k) => k.lastUsedAt), keys.map(() => this.nodeId)]);
    return r.rowCount ?? 0;
  }
}

/** The keys of a node's SQLite, in the form importKeys takes. */
export function localKeys(store: Store): LocalKey[] {
  return store.listApiKeys().map(({ id, name, hash, createdAt, lastUsedAt }) => ({ id, name, hash, createdAt, lastUsedAt }));
}

export interface ClusterKeyStoreOptions {
  /** At most one read of the table per this many ms for keys the copy does not have. */
  missIntervalMs: number;
  /** Where the copy is kept between starts (hashes only); null: memory only (the CLI, tests). */
  cacheFile: string | null;
  /** The copy to start from when there is no cache file yet (the node's SQLite keys, about to be imported). */
  seed?: () => KeyHash[];
  /** Told when the cache file cannot be written (the copy still works in memory). */
  onCacheFileError?: (err: unknown) => void;
}

/** Forget bad hashes past this many (a spray of random keys must not grow memory without bound). */
const MAX_BAD = 10_000;

interface Entry { id: string; hash: Buffer }

export class ClusterKeyStore implements ApiKeyStore {
  private entries: Entry[] = [];
  /** Hashes (hex) known bad for the current set of keys. */
  private readonly bad = new Set<string>();
  private readonly uses = new Map<string, number>();
  /** The next read for misses, not yet started: every miss until it starts joins it. */
  private scheduled: Promise<boolean> | null = null;
  private lastReadStart = -Infinity;
  /** Reads are numbered as they start; an older read that finishes late is not installed over a newer one. */
  private readSeq = 0;
  /** Reads numbered up to this one are not installed (already installed, or older than a create or delete here). */
  private installedSeq = 0;
  private inflight: Promise<unknown> = Promise.resolve();
  private persisted = '';
  /** Reads of the table made for misses (tests and GET /cluster). */
  missReads = 0;
  /** Whether the copy has come from PostgreSQL at least once since start. */
  fresh = false;

  constructor(private readonly source: KeySource, private readonly o: ClusterKeyStoreOptions) {
    const saved = o.cacheFile ? readCacheFile(o.cacheFile) : null;
    if (saved) this.persisted = serialise(saved);
    const start = saved ?? o.seed?.() ?? [];
    this.entries = start.map(entryOf);
  }

  /** Keys the copy holds (ids). */
  cachedIds(): string[] { return this.entries.map((e) => e.id); }

  async verify(presented: string | undefined): Promise<string | null> {
    if (!presented) return null;
    const hex = hashKey(presented);
    const digest = Buffer.from(hex, 'hex');
    const hit = matchDigest(digest, this.entries);
    if (hit) { this.uses.set(hit, Date.now()); return hit; }
    if (this.bad.has(hex)) return null;
    let installed: boolean;
    try {
      installed = await this.readForMiss();
    } catch {
      return null; // PostgreSQL does not answer: only the keys the copy has are accepted
    }
    const now = matchDigest(digest, this.entries);
    if (now) { this.uses.set(now, Date.now()); return now; }
    if (installed) {
      if (this.bad.size >= MAX_BAD) this.bad.clear();
      this.bad.add(hex);
    }
    return null;
  }

  /** A read that starts after this call, at most one per missIntervalMs and one at a time, shared by all who wait for it. */
  private readForMiss(): Promise<boolean> {
    if (this.scheduled) return this.scheduled;
    const job = (async (): Promise<boolean> => {
      const wait = this.lastReadStart + this.o.missIntervalMs - performance.now();
      if (wait > 0) await sleep(wait);
      await this.inflight.catch(() => undefined);
      this.scheduled = null; // misses from now on need a read that starts later than this one
      this.missReads++;
      return this.refresh();
    })();
    this.scheduled = job;
    return job;
  }

  /**
   * Reads every live key's hash from PostgreSQL and replaces the copy. False when
   * the read was overtaken (a newer read, or a create or delete here, came after
   * it started) and so not installed.
   */
  async refresh(): Promise<boolean> {
    const seq = ++this.readSeq;
    this.lastReadStart = performance.now();
    const read = this.source.hashes();
    this.inflight = read;
    const rows = await read;
    if (seq <= this.installedSeq) return false;
    this.installedSeq = seq;
    this.install(rows);
    return true;
  }

  /** The heartbeat's part (src/cluster/node.ts): last-use times out, the table in. */
  async sync(): Promise<void> {
    await this.flushUses();
    await this.refresh();
  }

  /** Writes the collected last-use times in one statement; on failure they are kept for the next try. */
  async flushUses(): Promise<void> {
    if (this.uses.size === 0) return;
    const batch = new Map(this.uses);
    this.uses.clear();
    try {
      await this.source.touch(batch);
    } catch (err) {
      for (const [id, at] of batch) if ((this.uses.get(id) ?? 0) < at) this.uses.set(id, at);
      throw err;
    }
  }

  private install(rows: readonly KeyHash[]): void {
    const known = new Set(this.entries.map((e) => e.id));
    // New keys: the hashes remembered as bad were bad for the old set (a node's imported keys can arrive late).
    if (rows.some((r) => !known.has(r.id))) this.bad.clear();
    this.entries = rows.map(entryOf);
    this.fresh = true;
    void this.persist(rows);
  }

  private async persist(rows: readonly KeyHash[]): Promise<void> {
    if (!this.o.cacheFile) return;
    const text = serialise(rows);
    if (text === this.persisted) return;
    this.persisted = text;
    const tmp = `${this.o.cacheFile}.tmp`;
    try {
      await writeFile(tmp, text, { mode: 0o600 });
      await rename(tmp, this.o.cacheFile);
    } catch (err) {
      this.persisted = '';
      this.o.onCacheFileError?.(err);
    }
  }

  async create(name: string): Promise<ApiKeyInfo & { key: string }> {
    const k = newApiKey();
    const info = await this.unavailable(() => this.source.insert({ id: k.id, name, hash: k.hash }));
    this.installedSeq = this.readSeq; // a read that started before the insert must not drop the key again
    this.entries = [...this.entries, entryOf(k)];
    return { ...info, key: k.key };
  }

  async delete(id: string): Promise<boolean> {
    const gone = await this.unavailable(() => this.source.delete(id));
    this.installedSeq = this.readSeq; // a read that started before the delete must not bring the key back
    this.entries = this.entries.filter((e) => e.id !== id);
    this.uses.delete(id);
    return gone;
  }

  list(): Promise<ApiKeyInfo[]> {
    return this.unavailable(() => this.source.list());
  }

  /** From PostgreSQL; while it does not answer, the copy's count once it has been read at least once, else null. */
  async count(): Promise<number | null> {
    try {
      return (await this.source.hashes()).length;
    } catch {
      return this.fresh ? this.entries.length : null;
    }
  }

  private async unavailable<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw new KeyStoreUnavailableError(`the cluster database does not answer: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
  }
}

function entryOf(k: KeyHash): Entry {
  return { id: k.id, hash: Buffer.from(k.hash, 'hex') };
}

function serialise(rows: readonly KeyHash[]): string {
  return `${JSON.stringify({ keys: [...rows].sort((a, b) => a.id.localeCompare(b.id)).map(({ id, hash }) => ({ id, hash })) })}\n`;
}

/** The saved copy, or null when there is none (or it is unreadable: then PostgreSQL is the only source). */
function readCacheFile(path: string): KeyHash[] | null {
  try {
    const v = JSON.parse(readFileSync(path, 'utf8')) as { keys?: unknown };
    if (!Array.isArray(v.keys)) return null;
    return v.keys.filter((k): k is KeyHash => typeof k === 'object' && k !== null
      && typeof (k as KeyHash).id === 'string' && typeof (k as KeyHash).hash === 'string' && /^[0-9a-f]{64}$/.test((k as KeyHash).hash));
  } catch {
    return null;
  }
}
