/**
 * hearthd's edge: what happens to a request before any route sees it. One
 * place decides, in this order (docs/security.md):
 *
 *  1. the connection: a per-address cap, a header timeout, a body idle timeout;
 *  2. the request target, normalised once (src/util/request-target.ts): dot
 *     segments, encodings and absolute-form are resolved to one canonical path,
 *     and everything after (routing, keys, the envd and port proxies, the
 *     agent) sees only that path. Host-form port traffic is the guest's own
 *     URL space and passes through untouched;
 *  3. the class of the request (port traffic, envd traffic, dashboard page,
 *     public path, API) and what each class must present.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { normaliseTarget } from '../util/request-target.js';
import { errorBody } from './errors.js';

/** Limits on what one client can hold open (docs/security.md, "Connections"). */
export interface EdgeLimits {
  /** A request's headers must be complete within this (slowloris). */
  headersTimeoutMs: number;
  /** A request body that sends nothing for this long is cut (408). */
  bodyIdleTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: number;
  /** Connections one client address may hold at once; more are refused (503). */
  maxConnectionsPerAddress: number;
}

export const DEFAULT_EDGE_LIMITS: EdgeLimits = {
  headersTimeoutMs: 20_000,
  bodyIdleTimeoutMs: 60_000,
  keepAliveTimeoutMs: 65_000,
  maxConnectionsPerAddress: 512,
};

/** Request targets longer than this get 414 (Node's header limit would answer 431 with no body). */
export const MAX_URL_LENGTH = 8192;

export function sendJsonError(res: ServerResponse, status: number, message: string, errorCode: string, extra: Record<string, string> = {}): void {
  if (res.headersSent) { res.destroy(); return; }
  const text = JSON.stringify(errorBody(status, message, errorCode));
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), ...extra });
  res.end(text);
}

/** A raw HTTP/1.1 error answer on a socket no request object owns (upgrades, parse errors, refused connections). */
export function rawJsonError(socket: Duplex, status: number, reason: string, message: string, errorCode: string): void {
  const text = JSON.stringify(errorBody(status, message, errorCode));
  if (!socket.writable) { socket.destroy(); return; }
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nconnection: close\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(text)}\r\n\r\n${text}`);
}

export type TargetCheck = { ok: true; url: string } | { ok: false; status: 400 | 414; message: string };

/**
 * The canonical form of a request target, or why it is refused. `passthrough`
 * (host-form port traffic) only turns absolute-form into origin-form: the
 * guest decides what its own paths mean.
 */
export function checkTarget(raw: string, passthrough: boolean): TargetCheck {
  if (raw.length > MAX_URL_LENGTH) return { ok: false, status: 414, message: `request target longer than ${MAX_URL_LENGTH} bytes` };
  if (passthrough) {
    if (raw.startsWith('/')) return { ok: true, url: raw };
    const n = normaliseTarget(raw);
    if (!n.ok) return { ok: false, status: 400, message: `bad request target: ${n.message}` };
    const at = raw.indexOf('/', raw.indexOf('//') + 2);
    return { ok: true, url: at === -1 ? '/' : raw.slice(at) };
  }
  const n = normaliseTarget(raw);
  if (!n.ok) return { ok: false, status: 400, message: `bad request target: ${n.message}` };
  return { ok: true, url: n.path + n.query };
}

/**
 * Applies the connection limits to a server: timeouts as server settings, the
 * per-address cap and the body idle timeout on each connection. Also answers
 * the client errors Node raises before a request exists (bad framing, header
 * overflow, header timeout) with the documented JSON error body.
 */
export function applyConnectionLimits(server: Server, limits: EdgeLimits, onRefused: (address: string) => void = () => undefined): void {
  server.headersTimeout = limits.headersTimeoutMs;
  server.requestTimeout = 0; // bodies are bounded by the idle timeout below, so long uploads and streams live
  server.keepAliveTimeout = limits.keepAliveTimeoutMs;
  server.timeout = 0;
  const perAddress = new Map<string, number>();
  server.on('connection', (socket: Socket) => {
    const addr = socket.remoteAddress ?? '?';
    const n = (perAddress.get(addr) ?? 0) + 1;
    perAddress.set(addr, n);
    socket.once('close', () => {
      const left = (perAddress.get(addr) ?? 1) - 1;
      if (left <= 0) perAddress.delete(addr); else perAddress.set(addr, left);
    });
    if (n > limits.maxConnectionsPerAddress) {
      onRefused(addr);
      rawJsonError(socket, 503, 'Service Unavailable', `too many connections from ${addr} (limit ${limits.maxConnectionsPerAddress})`, 'capacity');
      socket.once('finish', () => socket.destroy());
    }
  });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => watchBodyIdle(req, res, limits.bodyIdleTimeoutMs));
}

/** Cuts a request whose body stops arriving: 408 if nothing was answered yet, else the connection. */
function watchBodyIdle(req: IncomingMessage, res: ServerResponse, idleMs: number): void {
  const framed = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
  if (!framed || idleMs <= 0 || req.complete) return;
  // Socket inactivity while the body is being received. Node emits 'timeout' on the request
  // while it is incomplete (and then leaves the socket to us); once the body is complete the
  // timeout is cleared, before Node arms its own keep-alive timeout on the socket.
  req.setTimeout(idleMs, () => {
    if (req.complete) return;
    if (!res.headersSent) {
      sendJsonError(res, 408, `request body idle for more than ${idleMs} ms`, 'timeout', { connection: 'close' });
      res.once('finish', () => req.socket.destroy());
    } else req.socket.destroy();
  });
  req.once('end', () => req.socket.setTimeout(0));
}

/** Node's parse errors before a request exists, as the documented JSON error body. */
export function clientErrorAnswer(err: NodeJS.ErrnoException & { code?: string }): { status: number; reason: string; message: string; errorCode: string } {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW': return { status: 431, reason: 'Request Header Fields Too Large', message: 'request headers too large', errorCode: 'invalid_argument' };
    case 'HPE_URI_TOO_LONG': return { status: 414, reason: 'URI Too Long', message: 'request target too long', errorCode: 'invalid_argument' };
    case 'ERR_HTTP_REQUEST_TIMEOUT': return { status: 408, reason: 'Request Timeout', message: 'request headers not received in time', errorCode: 'timeout' };
    default: return { status: 400, reason: 'Bad Request', message: `malformed HTTP request${err.code ? ` (${err.code})` : ''}`, errorCode: 'invalid_argument' };
  }
}

// ---------------------------------------------------------------- Host and cross-site checks

/** Hostname of a Host header or an Origin, lower-cased, without port; null if unparseable. */
export function hostnameOf(hostHeader: string | undefined): string | null {
  if (!hostHeader) return null;
  const h = hostHeader.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    return end === -1 ? null : h.slice(0, end + 1);
  }
  const colon = h.lastIndexOf(':');
  const name = colon === -1 ? h : h.slice(0, colon);
  if (colon !== -1 && !/^\d{1,5}$/.test(h.slice(colon + 1))) return null;
  return name.length > 0 ? name : null;
}

/**
 * Which Host names the API answers to. A loopback listener answers only to
 * loopback names unless told more (a DNS-rebinding page's requests carry its
 * own domain in Host); a listener on another address answers to any name
 * unless `allowedHosts` is set (its clients need an API key anyway).
 */
export function hostAllowList(listenHost: string, loopback: boolean, allowedHosts: readonly string[]): ((hostname: string) => boolean) | null {
  const names = new Set(allowedHosts.map((h) => h.toLowerCase()));
  if (names.size === 0 && !loopback) return null;
  if (loopback) for (const n of ['localhost', '127.0.0.1', '[::1]']) names.add(n);
  const listen = listenHost.toLowerCase();
  if (listen && listen !== '0.0.0.0' && listen !== '::') names.add(listen.includes(':') && !listen.startsWith('[') ? `[${listen}]` : listen);
  return (hostname) => names.has(hostname) || (loopback && /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname));
}

/** Content types a browser sends cross-site without a preflight (the only ones a forged form or no-cors fetch can use). */
function isCorsSimpleType(contentType: string | undefined): boolean {
  const t = (contentType ?? '').split(';')[0]!.trim().toLowerCase();
  return t === 'application/x-www-form-urlencoded' || t === 'multipart/form-data' || t === 'text/plain';
}

/**
 * Cross-site request forgery against a state-changing API route: refused when
 * a browser says the request comes from another site (Origin or
 * Sec-Fetch-Site), or when it carries a body a cross-site form could forge (a
 * CORS-simple content type) without an API key. Returns the reason, or null.
 */
export function csrfRefusal(req: Pick<IncomingMessage, 'method' | 'headers'>, sameOrigin: (originHost: string) => boolean): string | null {
  const method = (req.method ?? 'GET').toUpperCase();
  if (method === 'GET' || method === 'HEAD' || method === 'OPTIONS') return null;
  const site = req.headers['sec-fetch-site'];
  if (site === 'cross-site' || site === 'same-site') return `cross-site ${method} refused (Sec-Fetch-Site: ${site})`;
  const origin = req.headers.origin;
  if (origin !== undefined) {
    let host: string | null = null;
    try { host = origin === 'null' ? null : new URL(origin).host.toLowerCase(); } catch { host = null; }
    if (host === null || !sameOrigin(host)) return `cross-origin ${method} refused (Origin: ${origin})`;
  }
  const hasBody = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
  if (hasBody && isCorsSimpleType(req.headers['content-type']) && req.headers['x-api-key'] === undefined) {
    return `${method} with content type ${req.headers['content-type']} refused: send application/json (or an X-API-Key)`;
  }
  return null;
}
