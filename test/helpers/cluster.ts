/**
 * Cluster nodes for tests and bench/cluster.ts: an in-process hearthd joined to
 * a PostgreSQL (test/helpers/postgres.ts) with its own data dir, port, netns tag
 * and slot range, heartbeating fast so up/down is seen within seconds.
 */
import type { HearthConfig } from '../../src/daemon/config.js';
import { startTestDaemon, type TestDaemon } from './daemon.js';

/** Node `id` (its node id is `node-<id>`) on `databaseUrl` with the shared `token`; `over` wins. */
export function startClusterNode(databaseUrl: string, id: string, token: string, over: Partial<HearthConfig> = {}): Promise<TestDaemon> {
  return startTestDaemon({
    databaseUrl, nodeId: `node-${id}`, clusterToken: token, clusterHeartbeatMs: 400, clusterNodeExpiryMs: 2000,
    warmTemplates: false, warmOnStart: false, defaultMemoryMib: 384,
    ...over,
  });
}

/** Polls `fn` every 250 ms until it gives a truthy value (errors count as not yet). */
export async function until<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try { const v = await fn(); if (v) return v; } catch (err) { last = err; }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
