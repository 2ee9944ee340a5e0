import './polyfills.js'; // first: before @bufbuild/protobuf is evaluated
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ConnectRouter } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import { Filesystem } from '../gen/filesystem/filesystem_pb.js';
import { Process } from '../gen/process/process_pb.js';
import { normaliseTarget } from '../util/request-target.js';
import { isExemptRoute, tokenAccepted } from './auth.js';
import { UserCgroup } from './cgroup.js';
import { applyCors } from './cors.js';
import type { AgentConfig } from './config.js';
import { handleDownload, handleUpload } from './files.js';
import { createFilesystemService } from './filesystem.js';
import { sendError, sendJson } from './http-util.js';
import { createInitHandler } from './init.js';
import { errorMessage, log } from './log.js';
import { MetricsCollector } from './metrics.js';
import { PipeBackend } from './process-pipe.js';
import { createProcessService } from './processes.js';
import {
  PATH_ENVS,
  PATH_FILES,
  PATH_HEALTH,
  PATH_INIT,
  PATH_METRICS,
  UNAUTHORIZED_MESSAGE,
} from './protocol.js';
import { PtyBackend } from './pty.js';
import { AgentState } from './state.js';
import { SysHelper } from './sys-helper.js';
import { warmCommandPath } from './warmup.js';

/** envd's idle timeout for keep-alive connections (streams themselves have no timeout). */
const IDLE_TIMEOUT_MS = 640_000;

export interface Agent {
  readonly server: http.Server;
  readonly state: AgentState;
  /** Resolves with the bound address once listening. */
  listen(): Promise<AddressInfo>;
  close(): Promise<void>;
}

function methodNotAllowed(res: ServerResponse, allow: string): void {
  sendError(res, 405, 'method not allowed', { Allow: allow });
}

/**
 * The agent: one node:http server on which Connect-RPC (process.Process, filesystem.Filesystem)
 * and envd's REST routes (/health, /files, /init, /envs, /metrics) share the port.
 */
export function createAgent(config: AgentConfig): Agent {
  const state = new AgentState(config);
  const cgroup = new UserCgroup(config.userCgroupDir);
  if (cgroup.enabled) log.info('user processes go to cgroup', { dir: config.userCgroupDir });
  const processes = createProcessService({
    state,
    pipeBackend: new PipeBackend({ cgroup }),
    ptyBackend: new PtyBackend({ helperPath: config.ptyHelper, userCgroupDir: config.userCgroupDir }),
  });
  const filesystem = createFilesystemService(state);
  const metrics = new MetricsCollector();
  // Started now, before any snapshot, so /init never spawns a process for the clock or the CRNG.
  const sys = new SysHelper(config.sysHelper);
  const handleInit = createInitHandler(state, sys);
  /**
   * The command-path warm-up (docs/agent.md, "Starting it"): started by the first `/health?warm=1`
   * (hearthd asks only before it takes a template snapshot, so a user's cold-booted sandbox never
   * waits for it or shares the CPU with it); such polls get 503 until it ended. `warmed` once done.
   */
  let warming: Promise<void> | undefined;
  let warmed = !config.warmup;
  let listenPort = 0;
  const startWarmup = (): void => {
    if (warmed || warming) return;
    const t0 = performance.now();
    const w: Promise<void> = warmCommandPath(config.host, listenPort)
      .then(() => log.info('warm-up done', { ms: Math.round(performance.now() - t0) }))
      .catch((e: unknown) => log.warn('warm-up failed (first commands will be slower)', { error: errorMessage(e) }))
      .finally(() => { warmed = true; if (warming === w) warming = undefined; });
    warming = w;
  };

  const connectHandler = connectNodeAdapter({
    routes: (router: ConnectRouter) => {
      router.service(Process, processes.impl);
      router.service(Filesystem, filesystem.impl);
    },
  });

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const method = req.method ?? 'GET';
    // One canonical target (the same function hearthd's envd proxy decides on), set back on
    // req.url so every handler, the Connect adapter included, sees only that form. The URL is
    // built from it by concatenation: as a relative reference, `//init` would parse as a host.
    const target = normaliseTarget(req.url ?? '/');
    if (!target.ok) {
      sendError(res, 400, `bad request target: ${target.message}`);
      return;
    }
    req.url = target.path + target.query;
    const url = new URL('http://agent' + target.path + target.query);
    const pathname = target.path;

    if (applyCors(req, res)) return;
    if (!isExemptRoute(method, pathname) && !tokenAccepted(req, state.accessToken)) {
      sendJson(res, 401, { code: 401, message: UNAUTHORIZED_MESSAGE });
      return;
    }

    switch (pathname) {
      case PATH_HEALTH:
        if (method !== 'GET' && method !== 'HEAD') return methodNotAllowed(res, 'GET');
        if (url.searchParams.get('warm') === '1' && !warmed) {
          startWarmup();
          return sendJson(res, 503, { code: 503, message: 'agent warming up' });
        }
        res.writeHead(204, { 'Cache-Control': 'no-store' });
        res.end();
        return;
      case PATH_FILES:
        if (method === 'GET' || method === 'HEAD') return handleDownload(req, res, url.searchParams, state);
        if (method === 'POST') return handleUpload(req, res, url.searchParams, state);
        return methodNotAllowed(res, 'GET, POST');
      case PATH_INIT:
        if (method !== 'POST') return methodNotAllowed(res, 'POST');
        return handleInit(req, res);
      case PATH_ENVS:
        if (method !== 'GET') return methodNotAllowed(res, 'GET');
        sendJson(res, 200, state.envVars);
        return;
      case PATH_METRICS:
        if (method !== 'GET') return methodNotAllowed(res, 'GET');
        sendJson(res, 200, await metrics.collect());
        return;
      default:
        connectHandler(req, res);
    }
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((e) => {
      log.error('request failed', { url: req.url, error: errorMessage(e) });
      sendError(res, 500, errorMessage(e));
    });
  });
  // Streams (process output, watches, big uploads) are long-lived: no request/socket timeouts.
  server.requestTimeout = 0;
  server.timeout = 0;
  server.headersTimeout = 60_000;
  server.keepAliveTimeout = IDLE_TIMEOUT_MS;
  server.on('clientError', (err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy(err);
  });

  return {
    server,
    state,
    listen() {
      return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(config.port, config.host, () => {
          server.off('error', reject);
          const addr = server.address() as AddressInfo;
          listenPort = addr.port;
          resolve(addr);
        });
      });
    },
    async close() {
      sys.close();
      processes.manager.close();
      filesystem.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
      });
    },
  };
}
