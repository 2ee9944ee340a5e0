import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Store } from '../store/store.js';
import { randomId } from '../core/ids.js';

/**
 * API keys: shown once at creation, stored as SHA-256 hashes, compared in
 * constant time. Keys look like E2B's (`e2b_<hex>`) so E2B's SDKs accept them
 * without E2B_VALIDATE_API_KEY=false.
 */
export function hashKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

export function createApiKey(store: Store, name: string): { id: string; key: string } {
  const key = `e2b_${randomBytes(20).toString('hex')}`;
  const id = `k${randomId(11)}`;
  store.insertApiKey({ id, name, hash: hashKey(key) });
  return { id, key };
}

/** The id of the key that matches, or null. Every stored hash is compared, in constant time each. */
export function verifyApiKey(store: Store, presented: string | undefined): string | null {
  if (!presented) return null;
  const digest = Buffer.from(hashKey(presented), 'hex');
  let match: string | null = null;
  for (const k of store.listApiKeys()) {
    if (timingSafeEqual(digest, Buffer.from(k.hash, 'hex')) && match === null) match = k.id;
  }
  if (match) store.touchApiKey(match);
  return match;
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

/** Paths that never need a key: liveness, the schema, and envd traffic (authenticated by the sandbox token). */
export function isPublicPath(url: string): boolean {
  const path = url.split('?')[0] ?? '';
  return path === '/health' || path === '/openapi.json';
}
