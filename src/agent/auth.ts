import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { FILES_SIGNATURE_PREFIX, HEADER_ACCESS_TOKEN } from './protocol.js';

/** Constant-time string equality (lengths leak, contents don't). */
export function safeEqual(a: string, b: string): boolean {
  const ab = Buffer.from(a);
  const bb = Buffer.from(b);
  if (ab.length !== bb.length) return false;
  return timingSafeEqual(ab, bb);
}

export function headerValue(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  if (Array.isArray(v)) return v[0];
  return v;
}

/**
 * Routes exempt from the X-Access-Token check; `pathname` is the normalised path
 * (src/util/request-target.ts). `/files` does its own check (token or URL signature).
 * `/init` is not exempt: once a token is set, every `/init` must present it, whatever
 * its body (it sets the env, default user, workdir and clock), and the init handler
 * checks again under its lock. Before the first token (a cold boot) it is open.
 */
export function isExemptRoute(method: string, pathname: string): boolean {
  if (pathname === '/health') return method === 'GET' || method === 'HEAD';
  if (pathname === '/files') return method === 'GET' || method === 'POST' || method === 'HEAD';
  return false;
}

/** True when the request may proceed under the global token rule. */
export function tokenAccepted(req: IncomingMessage, token: string | undefined): boolean {
  if (token === undefined) return true;
  const given = headerValue(req, HEADER_ACCESS_TOKEN);
  return given !== undefined && safeEqual(given, token);
}

/** envd's /files URL signature: "v1_" + base64 (no padding) of sha256("<path>:<op>:<user>:<token>[:<exp>]"). */
export function filesSignature(
  path: string,
  op: 'read' | 'write',
  username: string,
  token: string,
  expiration?: string,
): string {
  let payload = `${path}:${op}:${username}:${token}`;
  if (expiration !== undefined) payload += `:${expiration}`;
  const digest = createHash('sha256').update(payload).digest('base64').replace(/=+$/, '');
  return FILES_SIGNATURE_PREFIX + digest;
}

/**
 * envd's validateSigning for /files. Returns an error message for a 401, or undefined when allowed.
 * `path` and `username` are the query values as the client sent them (decoded), not the resolved path.
 */
export function checkFilesAccess(
  req: IncomingMessage,
  query: URLSearchParams,
  op: 'read' | 'write',
  token: string | undefined,
  nowSeconds: number = Math.floor(Date.now() / 1000),
): string | undefined {
  if (token === undefined) return undefined;
  const header = headerValue(req, HEADER_ACCESS_TOKEN);
  if (header !== undefined) {
    return safeEqual(header, token) ? undefined : 'access token present in header but does not match';
  }
  const signature = query.get('signature');
  if (signature === null || signature === '') return 'missing signature query parameter';
  const expiration = query.get('signature_expiration') ?? undefined;
  const expected = filesSignature(query.get('path') ?? '', op, query.get('username') ?? '', token, expiration);
  if (!safeEqual(signature, expected)) return 'invalid signature';
  if (expiration !== undefined) {
    const exp = Number(expiration);
    if (!Number.isFinite(exp) || exp < nowSeconds) return 'signature is already expired';
  }
  return undefined;
}

/** The user named in `Authorization: Basic base64("<user>:")`, if any. */
export function basicAuthUser(authorization: string | null | undefined): string | undefined {
  if (!authorization) return undefined;
  const m = /^\s*basic\s+(\S+)\s*$/i.exec(authorization);
  if (!m) return undefined;
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  const name = colon === -1 ? decoded : decoded.slice(0, colon);
  return name === '' ? undefined : name;
}
