/**
 * The port proxy (src/network/proxy) bound to the manager: a sandbox's guest
 * port resolves through its slot (resuming it first with autoResume), and its
 * traffic token, when it has one, is required.
 */
import type { FastifyBaseLogger } from 'fastify';
import type { SandboxManager } from '../core/manager.js';
import { HearthError } from '../core/errors.js';
import { createPortProxy, type PortProxy } from '../network/proxy/index.js';
import { AGENT_PORT } from '../agent/protocol.js';

export function sandboxPortProxy(manager: SandboxManager, domain: string | null, log: FastifyBaseLogger): PortProxy {
  return createPortProxy({
    ...(domain ? { domain } : {}),
    reservedPorts: [AGENT_PORT],
    accessToken: (id) => {
      try { return manager.get(id).netPolicy.trafficToken; } catch { return null; }
    },
    resolve: async (id, port) => {
      try {
        const ep = await manager.portEndpoint(id, port, AbortSignal.timeout(120_000));
        return { host: ep.host, port: ep.port, lease: ep.lease };
      } catch (err) {
        if (err instanceof HearthError && (err.code === 'not_found' || err.code === 'conflict')) return null;
        // User-mode networking forwards only the agent port.
        return { status: 502, message: `The sandbox port could not be reached: ${err instanceof Error ? err.message : String(err)}` };
      }
    },
    onError: (err, t) => log.warn({ sandbox: t.sandboxId, port: t.port, err: err.message }, 'port proxy: connection cut'),
  });
}
