/** Domain types shared by the manager, store and API. */
import type { RootDisk } from '../storage/types.js';
import type { VmmKind, VmNetwork } from '../vmm/types.js';

/**
 * Lifecycle (DESIGN §3): creating → running ⇄ paused (via pausing/resuming),
 * any → destroying → destroyed, and failed (terminal; resources released, reason kept).
 */
export type SandboxState =
  | 'creating'
  | 'running'
  | 'pausing'
  | 'paused'
  | 'resuming'
  | 'destroying'
  | 'destroyed'
  | 'failed';

export const LIVE_STATES: readonly SandboxState[] = ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying'];

export interface Template {
  id: string;
  /** Image content hash: a changed recipe gives a new template version. */
  imageHash: string;
  kernelPath: string;
  initrdPath: string | null;
  rootfsPath: string;
  rootfsSizeBytes: number;
  kernelArgs: string;
  vcpus: number;
  memoryMib: number;
  createdAt: string;
}

export interface AgentEndpoint {
  host: string;
  port: number;
}

export interface SandboxRecord {
  id: string;
  templateId: string;
  state: SandboxState;
  vcpus: number;
  memoryMib: number;
  envVars: Record<string, string>;
  metadata: Record<string, string>;
  createdAt: string;
  startedAt: string | null;
  /** When the sandbox is due to end (its timeout). */
  endAt: string;
  /** When it really ended (destroyed or failed), and why. */
  endedAt: string | null;
  endReason: string | null;
  agentToken: string;
  agent: AgentEndpoint | null;
  vmm: { kind: VmmKind; pid: number; runDir: string } | null;
  disk: RootDisk | null;
  /** The sandbox's network attachment, so a restarted daemon can restore its slot. */
  network: VmNetwork | null;
  /** Step durations of the last lifecycle operation, in ms, in order. */
  timings: { op: string; steps: [string, number][] } | null;
}
