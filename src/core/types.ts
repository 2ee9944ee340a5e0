/** Domain types shared by the manager, store and API. */
import type { TemplateRuntime } from '../templates/types.js';
import type { RootDisk } from '../storage/types.js';
import type { VmmKind, VmNetwork } from '../vmm/types.js';
import type { EgressPolicy } from '../network/types.js';

/**
 * Lifecycle (docs/ARCHITECTURE.md, "Lifecycle states"): creating → running ⇄ paused (via pausing/resuming),
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
  /** image: the default image; build: a recipe or Dockerfile; sandbox/snapshot: made from one's disk. */
  source: TemplateSource;
  /** What every sandbox from it gets (env, user, workdir, start command); null for the image. */
  runtime: TemplateRuntime | null;
  /** Other names a create may use for it. */
  aliases: string[];
  /** The template it was built on (null for the image). */
  parentId: string | null;
  /** The build that made it (source build/sandbox/snapshot). */
  buildId: string | null;
  /** Its disk's layer chain, oldest first (keys under <dataDir>/layers); empty for the image. */
  layers: string[];
}

export type TemplateSource = 'image' | 'build' | 'sandbox' | 'snapshot';

/** A sandbox's own network settings; its slot comes and goes with pause/resume. */
export interface SandboxNetPolicy {
  /** Egress; null = the host's default policy. */
  egress: EgressPolicy | null;
  /**
   * When set, the port proxy serves this sandbox only to requests carrying it
   * (header e2b-traffic-access-token, as E2B's allowPublicTraffic=false).
   */
  trafficToken: string | null;
}

export interface Lifecycle {
  /** At `endAt`: destroy (default) or pause. */
  onTimeout: 'kill' | 'pause';
  /**
   * What a pause at `endAt` keeps: memory and disk (true, the default), or
   * only the disk (false: a filesystem-only pause; the resume boots). E2B's `autoPauseMemory`.
   */
  keepMemory: boolean;
  /** A request through the envd/port proxy resumes a paused sandbox first. */
  autoResume: boolean;
  /** Activity (proxied requests) pushes `endAt` to at least now + timeoutSec. */
  autoExtend: boolean;
  /** The sandbox's timeout, kept for resumes and auto-extension. */
  timeoutSec: number;
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
  /** What happens at the timeout and on traffic. */
  lifecycle: Lifecycle;
  /** Network settings that outlive a slot (reapplied on resume and after a restart). */
  netPolicy: SandboxNetPolicy;
  /** The named snapshot it was started from, if any. */
  snapshotId: string | null;
  /** When it was last paused (while paused). */
  pausedAt: string | null;
  /** Step durations of the last lifecycle operation, in ms, in order. */
  timings: { op: string; steps: [string, number][] } | null;
}

/**
 * A durable capture of a VM: device state + memory + disk, in `dir`
 * (vmstate, memory, rootfs.ext4). `template` snapshots are a template's warm
 * start (one per vCPU/memory shape); `named` ones are users'; `fork` ones live
 * only for the duration of a fork.
 */
export type SnapshotKind = 'named' | 'template' | 'fork';

export interface SnapshotRecord {
  id: string;
  name: string | null;
  kind: SnapshotKind;
  /** The sandbox it was taken from (null for template snapshots' build VMs once gone). */
  sandboxId: string | null;
  templateId: string;
  /** The template image it descends from: a rebuilt image invalidates template snapshots. */
  imageHash: string;
  dir: string;
  vcpus: number;
  memoryMib: number;
  /** The agent inside the snapshot holds this token; the first /init after restore must present it. */
  agentToken: string;
  envVars: Record<string, string>;
  createdAt: string;
  /**
   * The VMM's snapshot-compatibility key when it was taken (VmmDriver.snapshotCompat);
   * null for snapshots older than the key.
   */
  compat: string | null;
}

/** The custom-template fields of a template made from the default image (none of them apply). */
export const IMAGE_TEMPLATE_FIELDS: Pick<Template, 'source' | 'runtime' | 'aliases' | 'parentId' | 'buildId' | 'layers'> = Object.freeze({
  source: 'image', runtime: null, aliases: [], parentId: null, buildId: null, layers: [],
});
