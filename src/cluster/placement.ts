/**
 * Where a create goes (docs/cluster.md, "Placement"): pure, so the rule is
 * tested on its own; the PostgreSQL store applies it under row locks.
 */
import type { NodeInfo } from './types.js';

/** Free memory within this many MiB counts as a tie (then warm snapshots, then load decide). */
export const PLACEMENT_TIE_MIB = 256;

export interface PlacementRequest {
  templateId: string;
  memoryMib: number;
  /** Nodes with less free disk than this are not candidates (MiB; 0: any). */
  minFreeDiskMib: number;
  /**
   * Only these nodes may take the create (the nodes holding its custom template
   * or named snapshot: src/cluster/registry.ts); absent or null: any node.
   */
  nodes?: readonly string[] | null;
}

/** Free guest memory a node can still give: its admission budget left, bounded by what the host really has. */
export function freeMemoryMib(n: Pick<NodeInfo, 'memoryTotalMib' | 'memoryUsedMib' | 'memoryAvailableMib'>): number {
  return Math.max(0, Math.min(n.memoryTotalMib - n.memoryUsedMib, n.memoryAvailableMib));
}

/**
 * The node for a create, or null when no up node has room (among `req.nodes`,
 * when the create's template or snapshot is only on some): the most free real
 * memory (within PLACEMENT_TIE_MIB counts as equal); on a tie the node that
 * already has the template's warm snapshot, then the lowest load per CPU, then
 * the fewest sandboxes, then the node id (so every node decides the same).
 */
export function chooseNode(nodes: readonly NodeInfo[], req: PlacementRequest): NodeInfo | null {
  const candidates = nodes.filter((n) => n.state === 'up' && freeMemoryMib(n) >= req.memoryMib && n.diskFreeMib >= req.minFreeDiskMib
    && (!req.nodes || req.nodes.includes(n.id)));
  if (candidates.length === 0) return null;
  const bucket = (n: NodeInfo): number => Math.floor(freeMemoryMib(n) / PLACEMENT_TIE_MIB);
  const warm = (n: NodeInfo): number => (n.warmTemplates.includes(req.templateId) ? 1 : 0);
  const sorted = [...candidates].sort((a, b) => bucket(b) - bucket(a)
    || warm(b) - warm(a)
    || Math.round(a.loadPerCpu * 10) - Math.round(b.loadPerCpu * 10)
    || a.sandboxes - b.sandboxes
    || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return sorted[0]!;
}

/** Has this node's heartbeat expired at `now` (ms)? */
export function heartbeatExpired(n: Pick<NodeInfo, 'heartbeatAt'>, now: number, expiryMs: number): boolean {
  return now - Date.parse(n.heartbeatAt) > expiryMs;
}
