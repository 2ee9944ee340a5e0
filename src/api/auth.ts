import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Store } from '../store/store.js';
import type { SandboxManager } from '../core/manager.js';
import { checkFilesAccess, safeEqual } from '../agent/auth.js';
import { HEADER_ACCESS_TOKEN, PATH_FILES } from '../agent/protocol.js';
import { randomId } from '../core/ids.js';

/**
 * API keys: shown once at creation, stored as SHA-256 hashes, compared in
 * constant time. Keys look like E2B's (`e2b_<hex>`) so E2B's SDKs accept them
 * without E2B_VALIDATE_API_KEY=false.
 */
export function hashKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** A fresh key, its id and its hash (what is stored). */
export function newApiKey(): { id: string; key: string; hash: string } {
  const key = `e2b_${randomBytes(20).toString('hex')}`;
  return { id: `k${randomId(11)}`, key, hash: hashKey(key) };
}

export function createApiKey(store: Store, name: string): { id: string; key: string } {
  const { id, key, hash } = newApiKey();
  store.insertApiKey({ id, name, hash });
  return { id, key };
}

/**
 * The id of the entry whose hash equals `digest` (32 bytes), or null. Every entry is
 * compared, each in constant time, so the time taken says nothing about which matched.
 */
export function matchDigest(digest: Buffer, entries: Iterable<{ id: string; hash: Buffer }>): string | null {
  let match: string | null = null;
  for (const k of entries) {
    if (k.hash.length === digest.length && timingSafeEqual(digest, k.hash) && match === null) match = k.id;
  }
  return match;
}

/** The id of the key that matches, or null. Every stored hash is compared, in constant time each. */
export function verifyApiKey(store: Store, presented: string | undefined): string | null {
  if (!presented) return null;
  const digest = Buffer.from(hashKey(presented), 'hex');
  const match = matchDigest(digest, store.listApiKeys().map((k) => ({ id: k.id, hash: Buffer.from(k.hash, 'hex') })));
  if (match) store.touchApiKey(match);
  return match;
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

/** Paths that never need a key: liveness and the schema. */
export function isPublicPath(path: string): boolean {
  return path === '/health' || path === '/openapi.json';
}

/**
 * Whether an envd request carries the sandbox's own credential: its access
 * token in X-Access-Token, or, for `/files`, a URL signed with that token (the
 * agent checks the same again; hearthd checks here so that a key-required
 * deployment lets nobody without one of the two reach a guest).
 */
export function sandboxTokenPresented(manager: Pick<SandboxManager, 'get'>, req: IncomingMessage, target: { sandboxId: string; path: string }): boolean {
  let token: string | null;
  try { token = manager.get(target.sandboxId).agentToken; } catch { return false; }
  if (!token) return false;
  const given = req.headers[HEADER_ACCESS_TOKEN];
  if (typeof given === 'string') return safeEqual(given, token);
  const q = target.path.indexOf('?');
  const path = q === -1 ? target.path : target.path.slice(0, q);
  if (path !== PATH_FILES) return false;
  const method = (req.method ?? 'GET').toUpperCase();
  const op = method === 'POST' ? 'write' : method === 'GET' || method === 'HEAD' ? 'read' : null;
  if (!op) return false;
  return checkFilesAccess(req, new URLSearchParams(q === -1 ? '' : target.path.slice(q + 1)), op, token) === undefined;
}

/**
 * A signed `/files` URL (the E2B SDK's `uploadUrl`/`downloadUrl` built on
 * E2B_SANDBOX_URL) carries no sandbox id: the sandbox is the one whose token
 * the signature was made with. Returns its id, or null. The expiration is not
 * checked here (the agent checks the whole signature again and answers an
 * expired one with its own error).
 */
export function sandboxOfSignedFilesUrl(manager: Pick<SandboxManager, 'list'>, method: string | undefined, query: string): string | null {
  const params = new URLSearchParams(query);
  const signature = params.get('signature');
  if (!signature) return null;
  const m = (method ?? 'GET').toUpperCase();
  const op = m === 'POST' ? 'write' : m === 'GET' || m === 'HEAD' ? 'read' : null;
  if (!op) return null;
  const noHeaders = { headers: {} } as IncomingMessage;
  for (const s of manager.list(['running', 'paused', 'resuming'])) {
    if (s.agentToken && checkFilesAccess(noHeaders, params, op, s.agentToken, 0) === undefined) return s.id;
  }
  return null;
}
