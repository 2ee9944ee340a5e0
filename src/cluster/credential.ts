/**
 * The node-to-node credential (docs/cluster.md, "Forwarding"; docs/security.md):
 * a shared cluster token in one header, compared in constant time. Clients never
 * get to send it: every cluster header is stripped from a request whose token
 * does not verify, before anything reads it.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';

/** The cluster token a forwarding node presents. */
export const CLUSTER_TOKEN_HEADER = 'x-hearth-cluster-token';
/** `local`: answer from this node only (no placement, no fan-out, no forwarding). */
export const CLUSTER_SCOPE_HEADER = 'x-hearth-cluster-scope';
/** The node that forwarded the request. */
export const FORWARDED_BY_HEADER = 'x-hearth-forwarded-by';
/** The id (never the key) of the API key the forwarding node verified; absent when none was. */
export const FORWARDED_KEY_HEADER = 'x-hearth-forwarded-key-id';
/** On a resume a node forwards after moving the sandbox: the new owner resumes it where it is (no second move). */
export const MOVED_HEADER = 'x-hearth-cluster-moved';
/** Set on every answer in cluster mode: the node that answered. */
export const NODE_HEADER = 'x-hearth-node';

/** Every request header that only nodes may send. */
export const CLUSTER_REQUEST_HEADERS: readonly string[] = [CLUSTER_TOKEN_HEADER, CLUSTER_SCOPE_HEADER, FORWARDED_BY_HEADER, FORWARDED_KEY_HEADER, MOVED_HEADER];

/** Shortest cluster token accepted (config validation). */
export const MIN_CLUSTER_TOKEN_LENGTH = 32;

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/** Constant-time comparison of a presented token with the configured one (hashed first, so lengths leak nothing). */
export function clusterTokenMatches(expected: string | null, presented: string | string[] | undefined): boolean {
  if (!expected || typeof presented !== 'string' || presented.length === 0) return false;
  return timingSafeEqual(digest(expected), digest(presented));
}

/**
 * Decides whether a request comes from another node, and removes every cluster
 * header from it when it does not (a client that sends them gets a plain client
 * request). Mutates `headers`.
 */
export function admitClusterHeaders(headers: IncomingHttpHeaders, expected: string | null): { fromNode: boolean; scopeLocal: boolean; keyId: string | null; by: string | null } {
  const fromNode = clusterTokenMatches(expected, headers[CLUSTER_TOKEN_HEADER]);
  if (!fromNode) {
    for (const h of CLUSTER_REQUEST_HEADERS) delete headers[h];
    return { fromNode: false, scopeLocal: false, keyId: null, by: null };
  }
  const one = (v: string | string[] | undefined): string | null => (typeof v === 'string' && v.length > 0 ? v : null);
  return { fromNode: true, scopeLocal: headers[CLUSTER_SCOPE_HEADER] === 'local', keyId: one(headers[FORWARDED_KEY_HEADER]), by: one(headers[FORWARDED_BY_HEADER]) };
}

/** The credential a node presents to another node (every node-to-node request carries it). */
export function nodeCredential(token: string, self: string): Record<string, string> {
  return { [CLUSTER_TOKEN_HEADER]: token, [FORWARDED_BY_HEADER]: self };
}

/** The message of another node's error answer (its JSON `message`, else the text as it came). */
export function answerMessage(text: string): string {
  try { return (JSON.parse(text) as { message?: string }).message ?? text; } catch { return text; }
}

/** Headers a forwarding node sends: the client's, minus the client's API key and any cluster header, plus its own credential. */
export function forwardedHeaders(headers: IncomingHttpHeaders, token: string, self: string, keyId: string | null, scopeLocal: boolean): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined || k === 'x-api-key' || CLUSTER_REQUEST_HEADERS.includes(k)) continue;
    out[k] = v;
  }
  Object.assign(out, nodeCredential(token, self));
  if (keyId) out[FORWARDED_KEY_HEADER] = keyId;
  if (scopeLocal) out[CLUSTER_SCOPE_HEADER] = 'local';
  return out;
}
