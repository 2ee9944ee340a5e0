/**
 * Cluster mode (docs/cluster.md): the records nodes share in PostgreSQL.
 * A node's own sandboxes stay in its SQLite; these are the cluster's view.
 */
import type { SandboxState } from '../core/types.js';

export type NodeState = 'up' | 'down';

/** One hearthd of the cluster, as its last heartbeat described it. */
export interface NodeInfo {
  id: string;
  /** Base URL other nodes forward to (`http://10.0.0.5:3030`). */
  address: string;
  state: NodeState;
  /** Guest memory the node admits (host RAM × memoryOvercommit), MiB. */
  memoryTotalMib: number;
  /** Guest memory of its sandboxes that hold memory (creating, running, pausing, resuming), plus reservations of placed creates, MiB. */
  memoryUsedMib: number;
  /** The host's MemAvailable, MiB. */
  memoryAvailableMib: number;
  /** Free space on the node's data dir, MiB. */
  diskFreeMib: number;
  /** 1-minute load average divided by the CPU count. */
  loadPerCpu: number;
  cpus: number;
  /** Its sandboxes that are not ended. */
  sandboxes: number;
  /** Templates with a warm snapshot on this node (placement prefers them). */
  warmTemplates: string[];
  version: string;
  heartbeatAt: string;
  /** When another node (or this one) marked it down; null while up. */
  downSince: string | null;
}

/** A placement's state: the owner's sandbox state, or `unknown` while its node is down. */
export type PlacementState = SandboxState | 'unknown';

/** Where a sandbox lives, mirrored from its owner node's SQLite. */
export interface Placement {
  sandboxId: string;
  nodeId: string;
  state: PlacementState;
  /** The last state the owner published (kept while `state` is unknown). */
  lastKnownState: SandboxState;
  templateId: string;
  memoryMib: number;
  vcpus: number;
  metadata: Record<string, string>;
  createdAt: string;
  updatedAt: string;
}

/** What a node publishes about one of its sandboxes. */
export type PlacementUpdate = Omit<Placement, 'nodeId' | 'state' | 'lastKnownState' | 'updatedAt'> & { state: SandboxState };

/** What a node publishes about itself on each heartbeat. */
export type NodeReport = Omit<NodeInfo, 'state' | 'heartbeatAt' | 'downSince'>;
