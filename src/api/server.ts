import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import swagger from '@fastify/swagger';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import type { SandboxManager } from '../core/manager.js';
import type { Store } from '../store/store.js';
import { errorBody, handleError } from './errors.js';
import { envdTarget, proxyTargetOf, proxyToSandbox, type ProxyTarget } from './proxy.js';
import { sandboxPortProxy } from './port-proxy.js';
import { StreamRegistry } from '../util/stream-registry.js';
import { InflightRequests } from '../util/inflight.js';
import { sandboxRoutes } from './routes/sandboxes.js';
import { templateRoutes } from './routes/templates.js';
import type { TemplateBuilder } from '../templates/builder.js';
import { apiKeyRoutes } from './keys.js';
import { snapshotRoutes } from './routes/snapshots.js';
import { serveDashboardFallback, webRoutes } from './routes/web.js'; // dashboard (docs/dashboard.md)
import { ErrorSchema, SandboxIdParams } from './schemas.js';
import { isLoopback, isPublicPath, sandboxOfSignedFilesUrl, sandboxTokenPresented } from './auth.js';
import { SqliteKeyStore, type ApiKeyStore } from './key-store.js';
import { AGENT_PORT } from '../agent/protocol.js';
import { MetricsSampler } from './metrics.js';
import { Observability } from '../observability/hub.js';
import { actors, type Actor } from '../observability/actor.js';
import { countAdmissionRefusals, observeRoutes } from './routes/observe.js';
import type { ClusterGateway } from '../cluster/gateway.js';
import { sandboxOfApiPath } from '../cluster/forward.js';
import { IMPORT_PATH, MOVE_CONTENT_TYPE } from '../cluster/move.js';

/** Routes that resume a paused sandbox: in cluster mode a full owner moves it first (docs/cluster.md). */
const RESUME_ROUTES = new Set(['/sandboxes/:sandboxID/resume', '/sandboxes/:sandboxID/connect', '/v2/sandboxes/:sandboxID/connect']);
import type { RegistryResult } from '../cluster/registry-api.js';
import {
  applyConnectionLimits, checkTarget, clientErrorAnswer, csrfRefusal, DEFAULT_EDGE_LIMITS, hostAllowList, hostnameOf, rawJsonError, type EdgeLimits,
} from './edge.js';

/** How long close() lets requests in flight finish before it cuts their connections. */
const CLOSE_GRACE_MS = 1000;

/** The dashboard's own pages and assets (the data it shows comes from the API, which checks keys). */
function isDashboardPath(path: string): boolean {
  return path === '/' || path === '/ui' || path.startsWith('/ui/') || path.startsWith('/assets/');
}

export interface ApiDeps {
  manager: SandboxManager;
  store: Store;
  /** Template builds (POST /templates); absent: those routes answer 503. */
  builder?: TemplateBuilder;
  /** Cap on POST /templates bodies (default 64 MiB). */
  templateContextMaxBytes?: number;
  log: FastifyBaseLogger;
  /** What `hearth doctor` prints: host capabilities and the drivers chosen. */
  doctor: () => Promise<unknown>;
  version: string;
  /** Require X-API-Key on API routes (always on a non-loopback listener). */
  requireApiKey: boolean;
  /** Where API keys are checked, listed and made: the cluster's (src/cluster/keys.ts) in cluster mode; default: this node's SQLite. */
  keys?: ApiKeyStore;
  /** Host form of the port proxy, `<port>-<id>.<proxyDomain>`; null/absent: path form only. */
  proxyDomain?: string | null;
  /** The address hearthd listens on (default loopback): decides the default Host allow-list. */
  listenHost?: string;
  /** Extra Host names the API answers to (beyond loopback names and the listen address). */
  allowedHosts?: readonly string[];
  /** Connection limits (timeouts, per-address cap); defaults in DEFAULT_EDGE_LIMITS. */
  limits?: Partial<EdgeLimits>;
  /**
   * The sandbox domain announced in each sandbox's `domain` field (E2B's SDKs build
   * `<port>-<id>.<domain>` from it), e.g. `localhost:3030`; asked per answer because the
   * port is known only once hearthd listens. Absent or null: `domain` is null.
   */
  sandboxDomain?: () => string | null;
  /** Seconds a connect without `timeout` keeps a sandbox alive (E2B's default: 300). */
  defaultTimeoutSec?: number;
  /** How often running sandboxes' metrics are sampled for GET /sandboxes/{id}/metrics (ms; 0: only on request). */
  metricsIntervalMs?: number;
  /** Events, logs, Prometheus metrics and the access log (docs/observability.md); absent: an in-memory one of the API's own. */
  observability?: Observability;
  /** Cluster mode (docs/cluster.md): forwarding to owner nodes, placement of creates, the cluster-wide list, GET /nodes. */
  cluster?: ClusterGateway;
}

/** Request bodies above this are refused with 413 (envd file uploads stream through the proxy, unlimited). */
const BODY_LIMIT = 1 << 20;

export async function buildApi(deps: ApiDeps): Promise<FastifyInstance> {
  const keys = deps.keys ?? new SqliteKeyStore(deps.store);
  const limits: EdgeLimits = { ...DEFAULT_EDGE_LIMITS, ...(deps.limits ?? {}) };
  const listenHost = deps.listenHost ?? '127.0.0.1';
  // `api.<proxyDomain>` is where E2B's SDKs look for the API when only E2B_DOMAIN is set.
  const apiHost = deps.proxyDomain && (isLoopback(listenHost) || (deps.allowedHosts ?? []).length > 0) ? [`api.${deps.proxyDomain}`] : [];
  const hostAllowed = hostAllowList(listenHost, isLoopback(listenHost), [...(deps.allowedHosts ?? []), ...apiHost]);
  // Sandbox ports (/sandboxes/<id>/ports/<port>/…, <port>-<id>.<domain>): streamed, and
  // authorised by the sandbox's traffic token, not API keys. WebSockets arrive as upgrades.
  const ports = sandboxPortProxy(deps.manager, deps.proxyDomain ?? null, deps.log);
  /** Host-form port traffic, whose path is the guest's own (port 49983 is the agent: envd traffic, normalised like the other envd forms). */
  const isHostForm = (headers: IncomingMessage['headers']): boolean => {
    const t = ports.target({ url: '/', headers });
    return t?.form === 'host' && t.port !== AGENT_PORT;
  };
  // Targets refused by the normaliser, answered by the first hook (rewriteUrl cannot answer).
  const badTargets = new WeakMap<IncomingMessage, { status: number; message: string }>();

  const app = Fastify({
    loggerInstance: deps.log,
    bodyLimit: BODY_LIMIT,
    // Per-request access logs off: lifecycle operations log their own steps.
    logController: new LogController({ disableRequestLogging: true }),
    // Bodies are bounded by an idle timeout, not a total one (see applyConnectionLimits): envd
    // traffic is long-lived streaming and large uploads must not be cut while they progress.
    requestTimeout: 0,
    connectionTimeout: 0,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    // Node checks the header timeout only every connectionsCheckingInterval (30 s by default).
    http: { headersTimeout: limits.headersTimeoutMs, requestTimeout: 0, connectionsCheckingInterval: Math.max(250, Math.min(1000, Math.floor(limits.headersTimeoutMs / 2))) },
    // The one place a request target is normalised, before routing: everything after sees the canonical path.
    rewriteUrl: (req) => {
      const checked = checkTarget(req.url ?? '/', isHostForm(req.headers));
      if (checked.ok) return checked.url;
      badTargets.set(req, checked);
      return '/';
    },
    clientErrorHandler: (err, socket) => {
      const a = clientErrorAnswer(err);
      rawJsonError(socket, a.status, a.reason, a.message, a.errorCode);
    },
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  }).withTypeProvider<TypeBoxTypeProvider>();
  applyConnectionLimits(app.server, limits, (addr) => deps.log.warn({ addr, limit: limits.maxConnectionsPerAddress }, 'connection refused: per-address cap'));
  // Observability (docs/observability.md): the daemon's, or one in memory for an API alone (tests).
  const obs = deps.observability ?? new Observability({ store: deps.store, manager: deps.manager, log: deps.log, dataDir: null, tailIntervalMs: 0, build: { version: deps.version } });
  if (!deps.observability) app.addHook('onClose', async () => obs.close());
  /** Who an API request is (for lifecycle events): entered around its handler. */
  const requestActors = new WeakMap<IncomingMessage, Actor>();

  await app.register(swagger, {
    openapi: {
      info: { title: 'Hearth API', version: deps.version, description: 'Sandboxes (microVMs) for untrusted code. envd traffic for a sandbox goes to /sandboxes/{id}/envd/* (see docs/api.md).' },
    },
  });
  app.addSchema(ErrorSchema);

  /** Null if the request's Host may reach this listener (DNS rebinding), else the refusal. */
  const hostRefusal = (headers: IncomingMessage['headers']): string | null => {
    if (!hostAllowed) return null;
    const name = hostnameOf(headers.host);
    if (name !== null && hostAllowed(name)) return null;
    return `host ${JSON.stringify(headers.host ?? '')} is not served here (allowed: loopback names and the listen address; add more with allowedHosts)`;
  };

  app.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => undefined);
    const hostForm = isHostForm(req.headers);
    const checked = checkTarget(req.url ?? '/', hostForm);
    if (!checked.ok) { rawJsonError(socket, checked.status, checked.status === 414 ? 'URI Too Long' : 'Bad Request', checked.message, 'invalid_argument'); return; }
    req.url = checked.url;
    const hostTarget = ports.target(req);
    if (hostTarget?.form === 'host' && hostTarget.port === AGENT_PORT) { rawJsonError(socket, 404, 'Not Found', 'the agent (envd) takes no upgrades', 'not_found'); return; }
    const fromNode = deps.cluster?.admit(req).fromNode ?? false;
    const refused = hostForm || fromNode ? null : hostRefusal(req.headers);
    if (refused) { rawJsonError(socket, 403, 'Forbidden', refused, 'forbidden'); return; }
    // Cluster mode: an upgrade for a sandbox another node owns is spliced to that node (never re-forwarded).
    if (deps.cluster && !fromNode && hostTarget) {
      void deps.cluster.upgrade(req, socket, head, hostTarget.sandboxId).then((forwarded) => { if (!forwarded) upgradeHere(req, socket, head); });
      return;
    }
    upgradeHere(req, socket, head);
  });
  const upgradeHere = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const proxied = ports.handleUpgrade(req, socket, head);
    obs.metrics.upgrades.inc({ outcome: proxied ? 'proxied' : 'refused' });
    if (!proxied) rawJsonError(socket, 404, 'Not Found', `no upgrade route ${(req.url ?? '/').split('?')[0]}`, 'not_found');
  };
  // A sandbox whose VM went away (paused, destroyed, failed): its streams end now, not when TCP gives up.
  const envdStreams = new StreamRegistry();
  // A pause lets short envd requests in flight finish (up to 2 s) before it freezes the guest.
  const envdInflight = new InflightRequests();
  const offBeforePause = deps.manager.onBeforePause((id) => envdInflight.drain(id, 2000));
  const onVmGone = (id: string): void => { ports.cut(id); envdStreams.cut(id); };
  deps.manager.events.on('vm-gone', onVmGone);
  app.addHook('onClose', async () => { ports.close(); deps.manager.events.off('vm-gone', onVmGone); offBeforePause(); });

  // Shutdown must not wait for long-lived streams (a background command's output, a terminal, a
  // WebSocket through the port proxy): they would hold close() for as long as they live. Requests
  // in flight get a short grace; then every connection still open is cut. Guest processes keep running.
  const sockets = new Set<Socket>();
  app.server.on('connection', (s: Socket) => { sockets.add(s); s.once('close', () => sockets.delete(s)); });
  app.addHook('preClose', (done) => {
    setTimeout(() => { for (const s of sockets) s.destroy(); }, CLOSE_GRACE_MS).unref();
    done();
  });

  /** envd traffic in a key-required deployment: the API key (`keyId`: verified), or the sandbox's own token (header or signed /files URL). */
  const envdAuthorised = (req: IncomingMessage, target: ProxyTarget, keyId: string | null): boolean => {
    if (deps.cluster?.info(req).keyId) return true; // forwarded by a node that verified an API key
    if (keyId) return true;
    return sandboxTokenPresented(deps.manager, req, target);
  };

  // The one decision per request, on the canonical target: which class it is and what it must present.
  app.addHook('onRequest', (req, reply, done) => {
    const track = obs.beginRequest(req.raw, reply.raw); // access log line and HTTP metrics, when the answer ends
    track.route = req.routeOptions.url ?? 'unmatched';
    // Cluster mode: cluster headers verified (or stripped) before anything reads the request.
    const node = deps.cluster ? deps.cluster.admit(req.raw, reply.raw) : null;
    const fromNode = node?.fromNode ?? false;
    const bad = badTargets.get(req.raw);
    if (bad) { track.cls = 'refused'; void reply.status(bad.status).send(errorBody(bad.status, bad.message, 'invalid_argument')); return; }
    let port = ports.target(req.raw);
    const refused = port?.form === 'host' || fromNode ? null : hostRefusal(req.headers);
    if (refused) { track.cls = 'refused'; void reply.status(403).send(errorBody(403, refused, 'forbidden')); return; }
    // The client's API key, checked once for the whole decision. In cluster mode the store may have to
    // ask PostgreSQL about a key its copy does not have (rate-limited: src/cluster/keys.ts).
    const apiKey = req.headers['x-api-key'];
    if (fromNode || typeof apiKey !== 'string' || !apiKey) { decide(null); return; }
    keys.verify(apiKey).then(decide, (err: unknown) => {
      req.log.error({ err: err instanceof Error ? err.message : String(err) }, 'API key check failed');
      decide(null);
    }).catch((err: unknown) => { if (!reply.sent) done(err instanceof Error ? err : new Error(String(err))); });
    function decide(keyId: string | null): void {
    // A sandbox this node does not own goes to the node that does (docs/cluster.md, "Forwarding"). API
    // requests are authenticated here first; envd and port traffic by the owner (token checks need the sandbox).
    if (deps.cluster && !fromNode) {
      const target = port?.sandboxId ?? proxyTargetOf(req.url, req.headers)?.sandboxId ?? sandboxOfApiPath(req.url);
      if (target && !deps.cluster.owns(target)) {
        const isApi = !port && !proxyTargetOf(req.url, req.headers);
        // The owner skips its CSRF check for a node's request: this node makes it, as for a local API request.
        const forged = isApi ? csrfRefusal(req.raw, (originHost) => originHost === (req.headers.host ?? '').toLowerCase()) : null;
        if (forged) { track.cls = 'refused'; void reply.status(403).send(errorBody(403, forged, 'forbidden')); return; }
        if (!(isApi && deps.requireApiKey && !keyId)) {
          void deps.cluster.route(req.raw, reply.raw, target, keyId, () => { track.cls = 'forwarded'; void reply.hijack(); }).then((r) => {
            if (r === 'local') local(keyId);
          });
          return;
        }
      }
    }
    local(keyId);
    }
    function local(keyId: string | null): void {
    // Host form for the agent's port, `49983-<id>.<domain>` (E2B's SDKs without E2B_SANDBOX_URL): envd traffic.
    let envd: ProxyTarget | null = null;
    if (port?.form === 'host' && port.port === AGENT_PORT) {
      const named = req.headers['e2b-sandbox-id'];
      if (typeof named === 'string' && named !== port.sandboxId) {
        void reply.status(400).send(errorBody(400, `E2b-Sandbox-Id ${JSON.stringify(named)} does not match the sandbox in Host (${port.sandboxId})`, 'invalid_argument'));
        return;
      }
      envd = envdTarget(port.sandboxId, AGENT_PORT, req.url);
      port = null;
    }
    if (port) {
      track.cls = 'port';
      track.route = 'port';
      void reply.hijack();
      ports.handleRequest(req.raw, reply.raw);
      return;
    }
    // envd traffic bypasses Fastify's body parsing: it is streamed to the guest as is.
    envd ??= proxyTargetOf(req.url, req.headers);
    if (!envd) {
      // A signed /files URL (uploadUrl/downloadUrl on E2B_SANDBOX_URL) names no sandbox: its signature does.
      const q = req.url.indexOf('?');
      if ((q === -1 ? req.url : req.url.slice(0, q)) === '/files') {
        const query = q === -1 ? '' : req.url.slice(q + 1);
        const id = sandboxOfSignedFilesUrl(deps.manager, req.method, query);
        if (!id) {
          const signed = new URLSearchParams(query).has('signature');
          void reply.status(signed ? 401 : 400).send(errorBody(signed ? 401 : 400, signed
            ? 'the signature of this /files URL matches no running or paused sandbox'
            : '/files needs the sandbox: send E2b-Sandbox-Id (and X-Access-Token), use /sandboxes/<id>/envd/files, or a signed URL', signed ? 'unauthenticated' : 'invalid_argument'));
          return;
        }
        envd = envdTarget(id, AGENT_PORT, req.url);
      }
    }
    if (envd) {
      track.cls = 'envd';
      track.route = 'envd';
      if (deps.requireApiKey && !envdAuthorised(req.raw, envd, keyId)) {
        void reply.status(401).send(errorBody(401, 'missing or invalid credentials: send X-API-Key, or the sandbox\'s X-Access-Token (or a signed /files URL)', 'unauthenticated'));
        return;
      }
      void reply.hijack();
      proxyToSandbox(deps.manager, req.log, envd, req.raw, reply.raw, envdStreams, envdInflight).catch((err: unknown) => {
        req.log.error({ err }, 'proxy failed');
        if (!reply.raw.headersSent) reply.raw.writeHead(502, { 'content-type': 'application/json' });
        reply.raw.end(JSON.stringify(errorBody(502, `proxy error: ${String(err)}`, 'host_failure')));
      });
      return;
    }
    const path = req.url.split('?')[0] ?? '/';
    if (isPublicPath(path) || isDashboardPath(path)) { track.cls = isPublicPath(path) ? 'public' : 'dashboard'; done(); return; }
    // The key's id (never the key) names who caused what: access log, events.
    track.keyId = fromNode ? node?.keyId ?? null : keyId;
    requestActors.set(req.raw, { keyId: track.keyId, method: req.method, route: track.route });
    // A request another node forwards was authenticated there (its cluster token is verified above).
    if (deps.requireApiKey && !fromNode) {
      if (!track.keyId) {
        void reply.status(401).send(errorBody(401, 'missing or invalid API key: send X-API-Key (create one with `hearth keys create`)', 'unauthenticated'));
        return;
      }
    }
    const forged = fromNode ? null : csrfRefusal(req.raw, (originHost) => originHost === (req.headers.host ?? '').toLowerCase());
    if (forged) { void reply.status(403).send(errorBody(403, forged, 'forbidden')); return; }
    done();
    }
  });

  // The handler of an API request runs as its actor (lifecycle events read it: src/observability/actor.ts).
  app.addHook('preHandler', (req, _reply, done) => {
    const actor = requestActors.get(req.raw);
    if (actor) actors.run(actor, done); else done();
  });
  countAdmissionRefusals(app, obs);

  // Cluster mode: a client's create is placed on a node, a client's list gathered from every node (docs/cluster.md).
  const cluster = deps.cluster;
  const registryNodes = new WeakMap<IncomingMessage, string[]>();
  if (cluster) {
    app.addHook('preHandler', async (req, reply) => {
      const info = cluster.info(req.raw);
      const route = req.routeOptions.url;
      const keyId = requestActors.get(req.raw)?.keyId ?? null;
      if (req.method === 'POST' && route !== undefined && RESUME_ROUTES.has(route)) {
        // Forwarded or not: the owner decides whether it has room, and moves the sandbox if not.
        const id = (req.params as { sandboxID: string }).sandboxID;
        let hijacked = false;
        const r = await cluster.resumeElsewhere(req.raw, reply.raw, id, req.body, keyId, () => { hijacked = true; void reply.hijack(); });
        if (r === 'handled' && !hijacked) void reply.hijack();
        return;
      }
      if (info.fromNode) return;
      if (req.method === 'POST' && (route === '/sandboxes' || route === '/v2/sandboxes')) {
        const body = (req.body ?? {}) as { templateID?: string; memoryMB?: number };
        let hijacked = false;
        const r = await cluster.placeCreate(req.raw, reply.raw, body, keyId, () => { hijacked = true; void reply.hijack(); });
        if (r === 'handled' && !hijacked) void reply.hijack();
      } else if (req.method === 'GET' && route === '/sandboxes') {
        void reply.hijack();
        await cluster.list(req.raw, reply.raw, keyId);
      } else if (req.method === 'GET' && route === '/v2/sandboxes') {
        void reply.hijack();
        await cluster.listPaged(req.raw, reply.raw, keyId);
      } else if (route === '/templates' || route === '/snapshots' || route === '/templates/:templateID' || route === '/snapshots/:snapshotID') {
        // Templates and snapshots over the cluster (docs/cluster.md, "Templates and snapshots").
        const reg = cluster.registry;
        const params = req.params as { templateID?: string; snapshotID?: string };
        let r: RegistryResult | null = null;
        if (req.method === 'GET' && route === '/templates') r = { local: false, answer: await reg.listTemplates(req.raw, keyId) };
        else if (req.method === 'GET' && route === '/snapshots') r = { local: false, answer: await reg.listSnapshots(req.raw, keyId, req.query as Record<string, string>) };
        else if (req.method === 'GET' && params.templateID !== undefined) r = await reg.getTemplate(req.raw, keyId, params.templateID);
        else if (req.method === 'GET' && params.snapshotID !== undefined) r = await reg.getSnapshot(req.raw, keyId, params.snapshotID);
        else if (req.method === 'DELETE' && params.templateID !== undefined) r = await reg.deleteTemplate(req.raw, keyId, params.templateID);
        else if (req.method === 'DELETE' && params.snapshotID !== undefined) r = await reg.deleteSnapshot(req.raw, keyId, params.snapshotID);
        if (r?.local) { if (r.nodes) registryNodes.set(req.raw, r.nodes); return; }
        if (r) {
          const a = r.answer;
          void reply.status(a.status).headers(a.headers ?? {});
          // JSON text: the route's response schema would drop `nodes` and `partial`.
          if (a.status === 204) return reply.send();
          return reply.type('application/json; charset=utf-8').send(JSON.stringify(a.body));
        }
      }
    });
    // A template or snapshot this node answers for itself: the nodes that hold it are added to its 200.
    app.addHook('onSend', async (req, reply, payload) => {
      const nodes = registryNodes.get(req.raw);
      if (!nodes || reply.statusCode !== 200 || typeof payload !== 'string') return payload;
      try {
        const body = JSON.parse(payload) as unknown;
        if (body && typeof body === 'object' && !Array.isArray(body)) return JSON.stringify({ ...body, nodes });
      } catch { /* not JSON: as is */ }
      return payload;
    });
    // Moving a paused sandbox (docs/cluster.md, "Moving a paused sandbox"). The transfer is a stream: never parsed or buffered.
    app.addContentTypeParser(MOVE_CONTENT_TYPE, (_req, payload, done) => { done(null, payload); });
    app.post(IMPORT_PATH, { schema: { hide: true } }, async (req, reply) => {
      if (!cluster.info(req.raw).fromNode) return reply.status(403).send(errorBody(403, 'only cluster nodes may send sandboxes here', 'forbidden'));
      if (req.headers['content-type'] !== MOVE_CONTENT_TYPE) return reply.status(415).send(errorBody(415, `send ${MOVE_CONTENT_TYPE}`, 'invalid_argument'));
      return cluster.mover.receive(req.raw);
    });
    // Pulling a template (docs/cluster.md, "Pulling a template"): what a holder serves to other nodes, and the pull itself.
    const fromNode = (req: FastifyRequest): boolean => cluster.info(req.raw).fromNode;
    const NOT_A_NODE = errorBody(403, 'only cluster nodes may read this', 'forbidden');
    const TemplateParams = Type.Object({ templateID: Type.String({ minLength: 1, maxLength: 128 }) });
    app.get('/cluster/templates/:templateID/export', { schema: { hide: true, params: TemplateParams } }, async (req, reply) => {
      if (!fromNode(req)) return reply.status(403).send(NOT_A_NODE);
      return reply.type(MOVE_CONTENT_TYPE).send(await cluster.puller.exportTemplate((req.params as { templateID: string }).templateID));
    });
    app.get('/cluster/templates/:templateID/warm', { schema: { hide: true, params: TemplateParams } }, async (req, reply) => {
      if (!fromNode(req)) return reply.status(403).send(NOT_A_NODE);
      return cluster.puller.warmList((req.params as { templateID: string }).templateID, AbortSignal.timeout(30_000));
    });
    app.get('/cluster/templates/:templateID/warm/:snapshotID/export', { schema: { hide: true } }, async (req, reply) => {
      if (!fromNode(req)) return reply.status(403).send(NOT_A_NODE);
      const p = req.params as { templateID: string; snapshotID: string };
      return reply.type(MOVE_CONTENT_TYPE).send(await cluster.puller.exportWarm(p.templateID, p.snapshotID, AbortSignal.timeout(30_000)));
    });
    app.post('/templates/:templateID/pull', {
      schema: {
        summary: 'Copy a custom template (its disk and warm snapshots) to this node from `from` or a node that holds it (cluster mode)',
        tags: ['templates'], params: TemplateParams,
        body: Type.Optional(Type.Object({ from: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })) }, { additionalProperties: false })),
      },
    }, async (req) => {
      const { templateID } = req.params as { templateID: string };
      return cluster.puller.pull(templateID, { from: (req.body as { from?: string } | undefined)?.from, signal: AbortSignal.timeout(600_000) });
    });
    app.post('/sandboxes/:sandboxID/move', {
      schema: {
        summary: 'Move a paused sandbox to another node (cluster mode): to `node`, or where placement chooses; it stays paused there',
        tags: ['sandboxes'], params: SandboxIdParams,
        body: Type.Optional(Type.Object({ node: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })) }, { additionalProperties: false })),
      },
    }, async (req) => {
      const { sandboxID } = req.params as { sandboxID: string };
      return cluster.mover.moveOut(sandboxID, { to: (req.body as { node?: string } | undefined)?.node, signal: AbortSignal.timeout(600_000) });
    });
    app.get('/nodes', { schema: { summary: 'The cluster\'s nodes: address, state (up/down), capacity, last heartbeat (cluster mode)', tags: ['host'] } },
      async () => cluster.node.nodes());
    app.get('/cluster', { schema: { summary: 'This node\'s view of the cluster: its id and address, whether PostgreSQL answers, queued changes (cluster mode)', tags: ['host'] } },
      async () => cluster.node.status());
  }

  app.setErrorHandler(handleError);
  app.setNotFoundHandler(async (req, reply) => {
    if (await serveDashboardFallback(req, reply)) return reply; // dashboard: unknown non-API HTML GETs get the SPA
    return reply.status(404).send(errorBody(404, `no route ${req.method} ${req.url.split('?')[0]}`, 'not_found'));
  });

  app.get('/health', { schema: { summary: 'Daemon liveness', tags: ['host'], response: { 200: Type.Object({ status: Type.String(), version: Type.String() }) } } },
    async () => ({ status: 'ok', version: deps.version }));

  app.get('/admin/reconcile', { schema: { summary: 'The last reconciliation report (orphans reaped, sandboxes adopted or failed at start)', tags: ['host'] } },
    async () => deps.manager.lastReconcileReport() ?? { at: null });
  app.post('/admin/reconcile', { schema: { summary: 'Reconcile now', tags: ['host'] } }, async () => deps.manager.reconcile());

  app.get('/doctor', { schema: { summary: 'Host capabilities and the drivers in use', tags: ['host'] } }, async () => deps.doctor());

  const metrics = new MetricsSampler(deps.manager, deps.log, deps.metricsIntervalMs, {
    host: (r) => obs.hostFields(r), onSample: () => obs.onSample(true), ...(obs.sampleSink() ? { files: obs.sampleSink()! } : {}),
  });
  metrics.start();
  app.addHook('onClose', async () => metrics.close());
  const compat = { metrics, ...(deps.sandboxDomain ? { sandboxDomain: deps.sandboxDomain } : {}), ...(deps.defaultTimeoutSec !== undefined ? { defaultTimeoutSec: deps.defaultTimeoutSec } : {}) };
  templateRoutes(app, deps.manager, deps.store, deps.builder ?? null, deps.templateContextMaxBytes);
  apiKeyRoutes(app, keys); // /api-keys: the dashboard's key page
  sandboxRoutes(app, deps.manager, deps.store, deps.proxyDomain ?? null, compat);
  snapshotRoutes(app, deps.manager, deps.store, deps.proxyDomain ?? null, compat);
  observeRoutes(app, deps.manager, obs); // /metrics, /events, /sandboxes/{id}/logs (docs/observability.md)
  webRoutes(app); // dashboard at / and /ui/* (docs/dashboard.md)

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  await app.ready();
  return app;
}
