/**
 * Port exposure (docs/networking.md, "Port proxy"): HTTP and WebSocket traffic to a TCP port a
 * sandbox listens on, through hearthd. Two URL forms:
 *
 *   path form   http://<hearthd>/sandboxes/<id>/ports/<port>/<rest>   → guest GET /<rest>
 *   host form   http://<port>-<id>.<domain>/<path>                    → guest GET /<path>
 *
 * Independent of Fastify: plain Node `(req, res)` and `(req, socket, head)`
 * handlers that return false for requests that are not theirs, and a resolver
 * `(sandboxId, port) → {host, port} | null` (the sandbox slot's guestAddress).
 * Bodies stream in both directions with backpressure (pipe), never buffered.
 */
import { Agent, request as httpRequest, STATUS_CODES, type IncomingMessage, type ServerResponse, type OutgoingHttpHeaders } from 'node:http';
import net, { type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { timingSafeEqual } from 'node:crypto';
import { LeaseAgent, type LeasedRequestArgs } from '../../util/lease-agent.js';
import { StreamRegistry } from '../../util/stream-registry.js';

export interface PortEndpoint {
  host: string;
  port: number;
  /** The VM incarnation behind the address: pooled connections are reused only within one (see LeaseAgent). */
  lease?: string;
}

/** An answer the resolver gives instead of an endpoint (e.g. 502 "port forwarding needs netns networking"). */
export interface PortRefusal { status: number; message: string }

/**
 * Where a sandbox's guest port is reached from the host; null if the sandbox
 * is not running here (502 "not found"), or a refusal to send as is. May be
 * async (e.g. to resume a paused sandbox first).
 */
export type PortResolver = (sandboxId: string, port: number) => PortEndpoint | PortRefusal | null | Promise<PortEndpoint | PortRefusal | null>;

export interface PortTarget {
  sandboxId: string;
  port: number;
  /** Path and query as the guest sees them. */
  path: string;
  form: 'path' | 'host';
  /** Path form: the prefix that was stripped (sent as X-Forwarded-Prefix). */
  prefix?: string;
}

export interface PortProxyOptions {
  resolve: PortResolver;
  /** Enables the host form `<port>-<id>.<domain>` (e.g. "sandbox.example.com"). */
  domain?: string;
  /** Path form prefix; default "/sandboxes" (`/sandboxes/<id>/ports/<port>/…`). Null disables the path form. */
  pathPrefix?: string | null;
  /**
   * The sandbox's traffic access token, or null/undefined when its ports are
   * public. When set, requests must carry it in `tokenHeader`.
   */
  accessToken?: (sandboxId: string) => string | null | undefined | Promise<string | null | undefined>;
  /** Default "e2b-traffic-access-token" (E2B's header; its SDKs send it). */
  tokenHeader?: string;
  /** Ports never proxied (403); default [49983]: the agent has its own authenticated route. */
  reservedPorts?: readonly number[];
  /** Bound on connecting to the guest port (ms); default 10 000. */
  connectTimeoutMs?: number;
  /** Called with errors after a response started (the client connection is then cut). */
  onError?: (err: Error, target: PortTarget) => void;
}

export interface PortProxy {
  /** Which sandbox port a request is for, or null if it is not a port-proxy request. */
  target(req: Pick<IncomingMessage, 'url' | 'headers'>): PortTarget | null;
  /** Handles a request (true) or leaves it to the caller (false). */
  handleRequest(req: IncomingMessage, res: ServerResponse): boolean;
  /** Handles an HTTP upgrade (WebSocket) (true) or leaves it to the caller (false). */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean;
  /** Cuts every connection in flight to a sandbox (its VM is gone). */
  cut(sandboxId: string): number;
  /** Closes idle upstream connections. */
  close(): void;
}

const ID = '[a-z0-9]{1,64}';
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'proxy-authorization', 'proxy-authenticate']);
/**
 * Credentials of hearthd's own API never reach a guest: the API key and the
 * sandbox's envd token on any form, and the API origin's cookies on the path form
 * (host-form cookies belong to the sandbox's own origin).
 */
const HEARTH_CREDENTIALS = new Set(['x-api-key', 'x-access-token', 'x-hearth-cluster-token', 'x-hearth-cluster-scope', 'x-hearth-forwarded-by', 'x-hearth-forwarded-key-id']);
/**
 * A guest's answer served on the API's origin (path form) runs in an opaque
 * origin: `sandbox` without allow-same-origin, so its scripts cannot read the
 * dashboard's storage or call the API as it. Browsers enforce every CSP header
 * they get, so the guest's own cannot loosen this one.
 */
export const PATH_FORM_CSP = 'sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads';
/** Response headers a guest may not set on the API's origin (cookies, service-worker scope). */
const PATH_FORM_DROPPED_RESPONSE = new Set(['set-cookie', 'service-worker-allowed']);
const NOT_OPEN = 'The sandbox is running but port is not open';
const NOT_FOUND = 'The sandbox was not found';
/** Errors that mean "nothing answers on that port" (before any response). */
const CONNECT_ERRORS = new Set(['ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'EPIPE', 'ECONNABORTED']);

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function errBody(status: number, body: Record<string, unknown>): { status: number; text: string } {
  return { status, text: JSON.stringify({ ...body, code: status }) };
}

export function createPortProxy(opts: PortProxyOptions): PortProxy {
  const tokenHeader = (opts.tokenHeader ?? 'e2b-traffic-access-token').toLowerCase();
  const reserved = new Set(opts.reservedPorts ?? [49983]);
  const connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
  const prefix = opts.pathPrefix === undefined ? '/sandboxes' : opts.pathPrefix;
  const pathRe = prefix === null ? null : new RegExp(`^${escapeRe(prefix.replace(/\/+$/, ''))}/(${ID})/ports/(\\d{1,5})(/[^?]*)?(\\?.*)?$`);
  const hostRe = opts.domain ? new RegExp(`^(\\d{1,5})-(${ID})\\.${escapeRe(opts.domain.toLowerCase().replace(/^\.+|\.+$/g, ''))}$`) : null;
  const agent = new LeaseAgent({ keepAlive: true, maxSockets: 512, maxFreeSockets: 64, timeout: 60_000 });
  // Requests with a body cannot be retried once it is streamed: they never take a pooled
  // connection that the guest may have closed a moment ago (bodiless ones are retried).
  const unpooled = new Agent({ keepAlive: false });
  const inflight = new StreamRegistry();

  function target(req: Pick<IncomingMessage, 'url' | 'headers'>): PortTarget | null {
    const url = req.url ?? '/';
    if (hostRe) {
      const rawHost = (req.headers[':authority'] as string | undefined) ?? req.headers.host ?? '';
      const host = rawHost.toLowerCase().replace(/:\d+$/, '');
      const m = hostRe.exec(host);
      if (m) return { sandboxId: m[2]!, port: Number(m[1]), path: url.startsWith('/') ? url : `/${url}`, form: 'host' };
    }
    if (pathRe) {
      const m = pathRe.exec(url);
      if (m) {
        const stripped = `${prefix!.replace(/\/+$/, '')}/${m[1]}/ports/${m[2]}`;
        return { sandboxId: m[1]!, port: Number(m[2]), path: (m[3] ?? '') + (m[4] ?? ''), form: 'path', prefix: stripped };
      }
    }
    return null;
  }

  /** Checks port, token and sandbox; the endpoint, or an error to send. */
  async function admit(t: PortTarget, headers: IncomingMessage['headers']): Promise<PortEndpoint | { status: number; text: string; extra?: Record<string, string> }> {
    if (t.port < 1 || t.port > 65535) return errBody(400, { sandboxId: t.sandboxId, message: `port ${t.port} is not 1..65535`, port: t.port });
    if (reserved.has(t.port)) return errBody(403, { sandboxId: t.sandboxId, message: `port ${t.port} is reserved and cannot be reached through the port proxy`, port: t.port });
    if (t.form === 'path' && t.path === '') {
      // `/ports/8080` → `/ports/8080/`: relative links in the guest's pages then resolve under the prefix.
      return { status: 308, text: '', extra: { location: `${t.prefix}/` } };
    }
    if (opts.accessToken) {
      const want = await opts.accessToken(t.sandboxId);
      if (want) {
        const got = headers[tokenHeader];
        if (typeof got !== 'string' || got.length === 0) {
          return errBody(403, { sandboxId: t.sandboxId, message: `Sandbox is secured with traffic access token. Token header '${tokenHeader}' is missing` });
        }
        const a = Buffer.from(got);
        const b = Buffer.from(want);
        if (a.length !== b.length || !timingSafeEqual(a, b)) {
          return errBody(403, { sandboxId: t.sandboxId, message: `Sandbox is secured with traffic access token. Token header '${tokenHeader}' is invalid` });
        }
      }
    }
    const ep = await opts.resolve(t.sandboxId, t.port);
    if (!ep) return errBody(502, { sandboxId: t.sandboxId, message: NOT_FOUND });
    if ('message' in ep) return errBody(ep.status, { sandboxId: t.sandboxId, message: ep.message, port: t.port });
    return ep;
  }

  function forwardedHeaders(req: IncomingMessage, t: PortTarget): Record<string, string> {
    const prior = req.headers['x-forwarded-for'];
    const client = req.socket.remoteAddress ?? '';
    const out: Record<string, string> = {
      'x-forwarded-for': prior ? `${Array.isArray(prior) ? prior.join(', ') : prior}, ${client}` : client,
      'x-forwarded-proto': (req.headers['x-forwarded-proto'] as string | undefined) ?? 'http',
    };
    if (req.headers.host) out['x-forwarded-host'] = (req.headers['x-forwarded-host'] as string | undefined) ?? req.headers.host;
    if (t.form === 'path' && t.prefix) out['x-forwarded-prefix'] = t.prefix;
    return out;
  }

  function sendError(res: ServerResponse, e: { status: number; text: string; extra?: Record<string, string> }): void {
    if (res.headersSent) { res.destroy(); return; }
    const headers: OutgoingHttpHeaders = { ...(e.extra ?? {}) };
    if (e.text) { headers['content-type'] = 'application/json; charset=utf-8'; headers['content-length'] = Buffer.byteLength(e.text); } else headers['content-length'] = 0;
    res.writeHead(e.status, headers);
    res.end(e.text);
  }

  function proxyRequest(req: IncomingMessage, res: ServerResponse, t: PortTarget, ep: PortEndpoint, retry: boolean): void {
    const headers: OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (v === undefined || HOP_BY_HOP.has(k) || k === tokenHeader || k.startsWith(':') || !forwardable(k, t)) continue;
      headers[k] = v;
    }
    // Request bodies keep their framing: chunked stays chunked, a length stays a length.
    if (req.headers['transfer-encoding']) headers['transfer-encoding'] = req.headers['transfer-encoding'];
    Object.assign(headers, forwardedHeaders(req, t));
    const args: LeasedRequestArgs = { host: ep.host, port: ep.port, method: req.method, path: t.path, headers, agent: hasBody(req) ? unpooled : agent, timeout: connectTimeoutMs, ...(ep.lease ? { lease: ep.lease } : {}) };
    const up = httpRequest(args);
    inflight.add(t.sandboxId, res, (fn) => res.once('close', fn));
    let responded = false;
    const onConnectTimeout = (): void => { if (!responded) up.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' })); };
    up.once('socket', (s: Socket) => {
      if (s.connecting) s.once('connect', () => up.setTimeout(0)); else up.setTimeout(0);
    });
    up.on('timeout', onConnectTimeout);
    up.on('response', (upRes) => {
      responded = true;
      const out: OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(upRes.headers)) {
        if (v !== undefined && !HOP_BY_HOP.has(k) && !(t.form === 'path' && PATH_FORM_DROPPED_RESPONSE.has(k))) out[k] = v;
      }
      if (t.form === 'path') addPathFormPolicy(out);
      if (upRes.headers['transfer-encoding'] === undefined && upRes.headers['content-length'] === undefined && req.httpVersion === '1.0') out['connection'] = 'close';
      res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage || STATUS_CODES[upRes.statusCode ?? 502], out);
      res.flushHeaders();
      upRes.pipe(res);
      upRes.on('error', (err) => { opts.onError?.(err, t); res.destroy(); });
      upRes.on('aborted', () => res.destroy());
    });
    up.on('error', (err: NodeJS.ErrnoException) => {
      if (responded) { opts.onError?.(err, t); res.destroy(); return; }
      // A keep-alive socket the guest closed meanwhile (ECONNRESET, EPIPE…): retry once on a fresh
      // connection. Only bodiless requests: a body may already be partly consumed.
      if (retry && up.reusedSocket && !hasBody(req)) {
        proxyRequest(req, res, t, ep, false);
        return;
      }
      if (res.headersSent || res.destroyed) { res.destroy(); return; }
      if (CONNECT_ERRORS.has(err.code ?? '')) sendError(res, errBody(502, { sandboxId: t.sandboxId, message: NOT_OPEN, port: t.port }));
      else sendError(res, errBody(502, { sandboxId: t.sandboxId, message: `proxy error: ${err.message}`, port: t.port }));
    });
    // The client went away: stop the upstream request too.
    res.on('close', () => { if (!res.writableFinished) up.destroy(); });
    if (hasBody(req)) req.pipe(up); else up.end();
  }

  function handleRequest(req: IncomingMessage, res: ServerResponse): boolean {
    const t = target(req);
    if (!t) return false;
    admit(t, req.headers).then((r) => {
      if ('text' in r) { req.resume(); sendError(res, r); return; }
      proxyRequest(req, res, t, r, true);
    }, (err: Error) => {
      req.resume();
      sendError(res, errBody(500, { sandboxId: t.sandboxId, message: `port proxy: ${err.message}` }));
    });
    return true;
  }

  function handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
    const t = target(req);
    if (!t) return false;
    socket.on('error', () => undefined);
    const fail = (e: { status: number; text: string; extra?: Record<string, string> }): void => {
      const lines = [`HTTP/1.1 ${e.status} ${STATUS_CODES[e.status] ?? ''}`, 'connection: close', `content-length: ${Buffer.byteLength(e.text)}`];
      if (e.text) lines.push('content-type: application/json; charset=utf-8');
      for (const [k, v] of Object.entries(e.extra ?? {})) lines.push(`${k}: ${v}`);
      socket.end(`${lines.join('\r\n')}\r\n\r\n${e.text}`);
    };
    admit(t, req.headers).then((r) => {
      if ('text' in r) { fail(r); return; }
      const up = net.connect({ host: r.host, port: r.port });
      inflight.add(t.sandboxId, socket, (fn) => socket.once('close', fn));
      let connected = false;
      up.setTimeout(connectTimeoutMs, () => { if (!connected) up.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' })); });
      up.on('connect', () => {
        connected = true;
        up.setTimeout(0);
        up.setNoDelay(true);
        if ('setNoDelay' in socket && typeof (socket as Socket).setNoDelay === 'function') (socket as Socket).setNoDelay(true);
        // Re-send the request head as received (raw header names and order), minus the token.
        const lines = [`${req.method} ${t.path} HTTP/${req.httpVersion}`];
        const raw = req.rawHeaders;
        for (let i = 0; i < raw.length; i += 2) {
          const name = raw[i]!;
          const lower = name.toLowerCase();
          if (lower === tokenHeader || lower.startsWith('x-forwarded-') || !forwardable(lower, t)) continue;
          lines.push(`${name}: ${raw[i + 1]}`);
        }
        for (const [k, v] of Object.entries(forwardedHeaders(req, t))) lines.push(`${k}: ${v}`);
        up.write(`${lines.join('\r\n')}\r\n\r\n`);
        if (head.length) up.write(head);
        up.pipe(socket);
        socket.pipe(up);
      });
      up.on('error', (err: NodeJS.ErrnoException) => {
        if (!connected) {
          fail(CONNECT_ERRORS.has(err.code ?? '') ? errBody(502, { sandboxId: t.sandboxId, message: NOT_OPEN, port: t.port })
            : errBody(502, { sandboxId: t.sandboxId, message: `proxy error: ${err.message}`, port: t.port }));
          return;
        }
        opts.onError?.(err, t);
        socket.destroy();
      });
      // Ends propagate through pipe (after buffered data is flushed); errors cut both sides.
      up.on('close', (hadError) => { if (hadError) socket.destroy(); });
      socket.on('close', () => up.destroy());
    }, (err: Error) => fail(errBody(500, { sandboxId: t.sandboxId, message: `port proxy: ${err.message}` })));
    return true;
  }

  return { target, handleRequest, handleUpgrade, cut: (id) => inflight.cut(id), close: () => agent.destroy() };
}

/** Whether a request header may go to the guest (see HEARTH_CREDENTIALS). */
function forwardable(lowerName: string, t: PortTarget): boolean {
  if (HEARTH_CREDENTIALS.has(lowerName)) return false;
  return !(t.form === 'path' && lowerName === 'cookie');
}

/** The opaque-origin policy on a path-form answer (see PATH_FORM_CSP). */
function addPathFormPolicy(out: OutgoingHttpHeaders): void {
  const guest = out['content-security-policy'];
  // A comma joins policies into a list; each one is enforced (the guest's cannot widen ours).
  out['content-security-policy'] = guest === undefined ? PATH_FORM_CSP : `${PATH_FORM_CSP}, ${[guest].flat().join(', ')}`;
  out['x-content-type-options'] = 'nosniff';
}

/** Whether a request carries a body (RFC 9112 §6.3: a length or chunked framing). */
function hasBody(req: IncomingMessage): boolean {
  const len = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (len !== undefined && len !== '0');
}
