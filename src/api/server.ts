import type { Socket } from 'node:net';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import type { SandboxManager } from '../core/manager.js';
import type { Store } from '../store/store.js';
import { errorBody, handleError } from './errors.js';
import { proxyTargetOf, proxyToSandbox } from './proxy.js';
import { sandboxPortProxy } from './port-proxy.js';
import { StreamRegistry } from '../util/stream-registry.js';
import { sandboxRoutes } from './routes/sandboxes.js';
import { templateRoutes } from './routes/templates.js';
import { snapshotRoutes } from './routes/snapshots.js';
import { serveDashboardFallback, webRoutes } from './routes/web.js'; // dashboard (docs/dashboard.md)
import { ErrorSchema } from './schemas.js';
import { isPublicPath, verifyApiKey } from './auth.js';

/** How long close() lets requests in flight finish before it cuts their connections. */
const CLOSE_GRACE_MS = 1000;

/** The dashboard's own pages and assets (the data it shows comes from the API, which checks keys). */
function isDashboardPath(url: string): boolean {
  const path = url.split('?')[0] ?? '';
  return path === '/' || path.startsWith('/ui') || path.startsWith('/assets/');
}

export interface ApiDeps {
  manager: SandboxManager;
  store: Store;
  log: FastifyBaseLogger;
  /** What `hearth doctor` prints: host capabilities and the drivers chosen. */
  doctor: () => Promise<unknown>;
  version: string;
  /** Require X-API-Key on API routes (always on a non-loopback listener). */
  requireApiKey: boolean;
  /** Host form of the port proxy, `<port>-<id>.<proxyDomain>`; null/absent: path form only. */
  proxyDomain?: string | null;
}

/** Request bodies above this are refused with 413 (envd file uploads stream through the proxy, unlimited). */
const BODY_LIMIT = 1 << 20;

export async function buildApi(deps: ApiDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.log,
    bodyLimit: BODY_LIMIT,
    // Per-request access logs off: lifecycle operations log their own steps.
    logController: new LogController({ disableRequestLogging: true }),
    // envd traffic is long-lived streaming; don't cut it (envd's own idle timeout is 640 s).
    requestTimeout: 0,
    connectionTimeout: 0,
    keepAliveTimeout: 65_000,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  }).withTypeProvider<TypeBoxTypeProvider>();

  await app.register(swagger, {
    openapi: {
      info: { title: 'Hearth API', version: deps.version, description: 'Sandboxes (microVMs) for untrusted code. envd traffic for a sandbox goes to /sandboxes/{id}/envd/* (see docs/api.md).' },
    },
  });
  app.addSchema(ErrorSchema);

  // Sandbox ports (/sandboxes/<id>/ports/<port>/…, <port>-<id>.<domain>): streamed, and
  // authorised by the sandbox's traffic token, not API keys. WebSockets arrive as upgrades.
  const ports = sandboxPortProxy(deps.manager, deps.proxyDomain ?? null, deps.log);
  app.addHook('onRequest', (req, reply, done) => {
    if (!ports.target(req.raw)) { done(); return; }
    void reply.hijack();
    ports.handleRequest(req.raw, reply.raw);
  });
  app.server.on('upgrade', (req, socket, head: Buffer) => {
    if (!ports.handleUpgrade(req, socket, head)) socket.end('HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
  });
  // A sandbox whose VM went away (paused, destroyed, failed): its streams end now, not when TCP gives up.
  const envdStreams = new StreamRegistry();
  const onVmGone = (id: string): void => { ports.cut(id); envdStreams.cut(id); };
  deps.manager.events.on('vm-gone', onVmGone);
  app.addHook('onClose', async () => { ports.close(); deps.manager.events.off('vm-gone', onVmGone); });

  // Shutdown must not wait for long-lived streams (a background command's output, a terminal, a
  // WebSocket through the port proxy): they would hold close() for as long as they live. Requests
  // in flight get a short grace; then every connection still open is cut. Guest processes keep running.
  const sockets = new Set<Socket>();
  app.server.on('connection', (s: Socket) => { sockets.add(s); s.once('close', () => sockets.delete(s)); });
  app.addHook('preClose', (done) => {
    setTimeout(() => { for (const s of sockets) s.destroy(); }, CLOSE_GRACE_MS).unref();
    done();
  });

  // envd traffic bypasses Fastify's body parsing: it is streamed to the guest as is.
  app.addHook('onRequest', (req, reply, done) => {
    const target = proxyTargetOf(req.url, req.headers);
    if (!target) { done(); return; }
    void reply.hijack();
    proxyToSandbox(deps.manager, req.log, target, req.raw, reply.raw, envdStreams).catch((err: unknown) => {
      req.log.error({ err }, 'proxy failed');
      if (!reply.raw.headersSent) reply.raw.writeHead(502, { 'content-type': 'application/json' });
      reply.raw.end(JSON.stringify(errorBody(502, `proxy error: ${String(err)}`, 'host_failure')));
    });
  });

  // API keys (envd traffic was routed above: it is authenticated by the sandbox's token).
  app.addHook('onRequest', (req, reply, done) => {
    if (!deps.requireApiKey || isPublicPath(req.url) || !req.url.startsWith('/') || isDashboardPath(req.url)) { done(); return; }
    const key = req.headers['x-api-key'];
    if (verifyApiKey(deps.store, typeof key === 'string' ? key : undefined)) { done(); return; }
    void reply.status(401).send(errorBody(401, 'missing or invalid API key: send X-API-Key (create one with `hearth keys create`)', 'unauthenticated'));
  });

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

  templateRoutes(app, deps.manager, deps.store);
  sandboxRoutes(app, deps.manager, deps.store);
  snapshotRoutes(app, deps.manager, deps.store);
  webRoutes(app); // dashboard at / and /ui/* (docs/dashboard.md)

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  await app.ready();
  return app;
}
