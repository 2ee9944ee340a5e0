import type { IncomingMessage, ServerResponse } from 'node:http';
import { forwardUpstream } from '../util/upstream-request.js';
import { LeaseAgent, type LeasedRequestArgs } from '../util/lease-agent.js';
import type { StreamRegistry } from '../util/stream-registry.js';
import type { InflightRequests } from '../util/inflight.js';
import type { FastifyBaseLogger } from 'fastify';
import type { SandboxManager } from '../core/manager.js';
import { HearthError } from '../core/errors.js';
import { AGENT_PORT } from '../agent/protocol.js';
import { isControlPlanePath, normaliseTarget } from '../util/request-target.js';
import { CLUSTER_REQUEST_HEADERS } from '../cluster/credential.js';

/** Hop-by-hop headers are connection-specific and must not be forwarded (RFC 9110 §7.6.1). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'host']);

/**
 * Pooled connections to agents, kept for 30 s (well inside the agent's 640 s
 * idle limit): a new TCP connection into an emulated guest costs tens of ms. A
 * request that meets one the guest closed anyway is retried
 * (src/util/upstream-request.ts).
 */
const upstreamAgent = new LeaseAgent({ keepAlive: true, maxSockets: 256, timeout: 30_000 });

/** hearthd's own credentials (the API key, the cluster's node headers) and the API origin's cookies never cross into a guest. */
const NOT_FOR_GUEST = new Set(['x-api-key', 'cookie', ...CLUSTER_REQUEST_HEADERS]);
/** What a guest may not set on the API's origin. */
const GUEST_MAY_NOT_SET = new Set(['set-cookie', 'service-worker-allowed', 'content-security-policy', 'access-control-allow-credentials']);

/**
 * `path` is the envd target (path and query) in its canonical form
 * (src/util/request-target.ts), exactly what is forwarded to the agent; when the
 * target was refused, `invalid` says why and the request is answered 400.
 */
export interface ProxyTarget { sandboxId: string; port: number; path: string; invalid?: string }

/** `/sandboxes/<id>/envd`, followed by the envd target (or nothing, meaning `/`). */
const ENVD_PATH_FORM = /^\/sandboxes\/([a-z0-9]{1,64})\/envd(?=[/?#]|$)/;

/** The canonical envd target of a raw one; `invalid` set when it is refused. */
export function envdTarget(sandboxId: string, port: number, raw: string): ProxyTarget {
  const n = normaliseTarget(raw);
  return n.ok ? { sandboxId, port, path: n.path + n.query } : { sandboxId, port, path: raw, invalid: n.message };
}

/**
 * Which requests are envd traffic for a sandbox:
 *  - path form  `/sandboxes/<id>/envd/<rest>` (what Hearth's SDK, CLI and dashboard use);
 *  - header form `E2b-Sandbox-Id` + `E2b-Sandbox-Port` on any path (E2B SDKs with E2B_SANDBOX_URL=<hearthd>).
 * The envd target (`<rest>`, or the whole target in the header form) is normalised here,
 * whether or not the caller already normalised the URL: hearthd and the agent must decide
 * on the same string, and the agent routes on this normalised form.
 */
export function proxyTargetOf(url: string, headers: IncomingMessage['headers']): ProxyTarget | null {
  const m = ENVD_PATH_FORM.exec(url);
  if (m) {
    const rest = url.slice(m[0].length); // '', or starting with '/', '?' or '#'
    return envdTarget(m[1]!, AGENT_PORT, rest.startsWith('/') ? rest : '/' + rest);
  }
  const id = headers['e2b-sandbox-id'];
  if (typeof id === 'string' && id.length > 0) {
    const portHeader = headers['e2b-sandbox-port'];
    const port = typeof portHeader === 'string' && /^\d+$/.test(portHeader) ? Number(portHeader) : AGENT_PORT;
    return envdTarget(id, port, url);
  }
  return null;
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) { res.destroy(); return; }
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(data) });
  res.end(data);
}

/**
 * Streams a request to the sandbox's agent and the answer back, unbuffered
 * (pipe keeps backpressure both ways, so a 200 MB output never sits in hearthd's
 * memory). If the upstream breaks mid-answer the client socket is destroyed, not
 * ended cleanly: E2B's SDK reads that as "sandbox killed while running".
 */
export async function proxyToSandbox(
  manager: SandboxManager, log: FastifyBaseLogger, target: ProxyTarget, req: IncomingMessage, res: ServerResponse, streams?: StreamRegistry,
  inflight?: InflightRequests,
): Promise<void> {
  // Decide on the canonical form (again: a target built elsewhere may not be), and forward only that.
  const n = target.invalid === undefined ? normaliseTarget(target.path) : { ok: false as const, message: target.invalid };
  if (!n.ok) {
    sendJson(res, 400, { code: 400, message: `bad envd request target: ${n.message}`, error_code: 'invalid_argument' });
    return;
  }
  const pathOnly = n.path;
  const forwardPath = n.path + n.query;
  if (isControlPlanePath(pathOnly)) {
    sendJson(res, 404, { code: 404, path: pathOnly, message: 'This endpoint is reserved for the Hearth control plane and is not reachable through the sandbox URL' });
    return;
  }
  if (target.port !== AGENT_PORT) {
    sendJson(res, 502, { sandboxId: target.sandboxId, port: target.port, code: 502, message: 'Port forwarding to sandbox ports other than the agent is not available with this network backend' });
    return;
  }
  let endpoint: { host: string; port: number };
  let lease: string;
  try {
    // Resumes a paused sandbox with autoResume; the request body waits in the socket
    // meanwhile (paused; `pipe` below resumes it).
    req.pause();
    ({ endpoint, lease } = await manager.reachable(target.sandboxId, AbortSignal.timeout(120_000)));
  } catch (err) {
    if (err instanceof HearthError && (err.code === 'not_found' || err.code === 'conflict')) {
      sendJson(res, 502, { sandboxId: target.sandboxId, message: 'The sandbox was not found', code: 502 });
      return;
    }
    sendJson(res, 502, { sandboxId: target.sandboxId, message: `The sandbox could not be reached: ${err instanceof Error ? err.message : String(err)}`, code: 502 });
    return;
  }
  const headers: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(req.headers)) {
    if (v !== undefined && !HOP_BY_HOP.has(k) && !NOT_FOR_GUEST.has(k)) headers[k] = v;
  }
  if (req.headers['transfer-encoding']) headers['transfer-encoding'] = req.headers['transfer-encoding'];
  const args: LeasedRequestArgs = { host: endpoint.host, port: endpoint.port, method: req.method, path: forwardPath, headers, agent: upstreamAgent, lease };
  // Cut at once when the sandbox's VM goes away (see StreamRegistry).
  streams?.add(target.sandboxId, res, (fn) => res.once('close', fn));
  // Short requests (all but Connect streams) are waited for by a pause (see InflightRequests).
  if (inflight && !String(req.headers['content-type'] ?? '').startsWith('application/connect+')) res.once('close', inflight.begin(target.sandboxId));
  const up = forwardUpstream(req, args, {
    onResponse: (upRes) => {
      const out: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(upRes.headers)) {
        if (v !== undefined && !HOP_BY_HOP.has(k) && !GUEST_MAY_NOT_SET.has(k)) out[k] = v;
      }
      // A guest's file served on the API origin must not run there (a downloaded .html, an SVG).
      out['content-security-policy'] = 'sandbox';
      out['x-content-type-options'] = 'nosniff';
      res.writeHead(upRes.statusCode ?? 502, out);
      res.flushHeaders();
      upRes.pipe(res);
      upRes.on('aborted', () => res.destroy());
      upRes.on('error', () => res.destroy());
    },
    onError: (err, info) => {
      log.warn({ sandbox: target.sandboxId, path: pathOnly, reusedSocket: info.reusedSocket, err: err.message }, 'envd proxy: upstream error');
      if (res.headersSent) { res.destroy(); return; }
      sendJson(res, 502, { sandboxId: target.sandboxId, message: 'The sandbox is running but port is not open', port: target.port, code: 502 });
    },
    onLateError: () => res.destroy(),
  });
  res.on('close', () => { if (!res.writableFinished) up.abort(); });
}
