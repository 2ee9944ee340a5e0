/**
 * Where API keys live: the node's SQLite on a single host, PostgreSQL in cluster
 * mode (src/cluster/keys.ts; docs/cluster.md, "API keys"). The API routes, the
 * request hook, the daemon and `hearth keys` all go through this seam, so none
 * of them needs to know which store it has.
 */
import type { Store } from '../store/store.js';
import { createApiKey, verifyApiKey } from './auth.js';

/** A key as listed: never its value, never its hash. */
export interface ApiKeyInfo {
  id: string;
  name: string;
  createdAt: string;
  lastUsedAt: string | null;
}

export interface ApiKeyStore {
  /** A new key; `key` is the only copy of its value (only its SHA-256 is stored). */
  create(name: string): Promise<ApiKeyInfo & { key: string }>;
  list(): Promise<ApiKeyInfo[]>;
  /** False: no such key. */
  delete(id: string): Promise<boolean>;
  /** The id of the key presented, or null (wrong, revoked or none). */
  verify(presented: string | undefined): Promise<string | null>;
  /** How many keys there are, or null when the store cannot say right now (daemon start-up warning). */
  count(): Promise<number | null>;
}

/** The cluster store cannot be reached: the API answers 503, the CLI exits 1. */
export class KeyStoreUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KeyStoreUnavailableError';
  }
}

/** Keys in the node's own SQLite (a single host): every check reads the table, so a delete revokes at once. */
export class SqliteKeyStore implements ApiKeyStore {
  constructor(private readonly store: Store) {}

  async create(name: string): Promise<ApiKeyInfo & { key: string }> {
    const k = createApiKey(this.store, name);
    const row = this.store.listApiKeys().find((x) => x.id === k.id);
    return { id: k.id, key: k.key, name, createdAt: row?.createdAt ?? new Date().toISOString(), lastUsedAt: null };
  }

  async list(): Promise<ApiKeyInfo[]> {
    return this.store.listApiKeys().map(({ id, name, createdAt, lastUsedAt }) => ({ id, name, createdAt, lastUsedAt }));
  }

  async delete(id: string): Promise<boolean> {
    return this.store.deleteApiKey(id);
  }

  async verify(presented: string | undefined): Promise<string | null> {
    return verifyApiKey(this.store, presented);
  }

  async count(): Promise<number> {
    return this.store.listApiKeys().length;
  }
}
