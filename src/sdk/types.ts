/**
 * The shapes hearthd's API answers with, as plain interfaces (the SDK depends on nothing of the
 * daemon's; they mirror src/api/schemas.ts, and test/unit/sdk-types.test.ts checks that they
 * describe every field of its answers).
 */

/** A sandbox's egress, as E2B names it; deny wins over allow. */
export interface NetworkPolicy {
  allow_internet_access: boolean;
  allowOut: string[];
  denyOut: string[];
}

/** A sandbox as `GET /sandboxes` lists it. */
export interface SandboxSummary {
  sandboxID: string;
  templateID: string;
  /** Always "6532622b" (E2B compatibility). */
  clientID: string;
  envdVersion: string;
  /** creating | running | pausing | paused | resuming | destroying | destroyed | failed */
  state: string;
  cpuCount: number;
  memoryMB: number;
  diskSizeMB: number;
  metadata: Record<string, string>;
  createdAt: string;
  startedAt: string;
  /** When its timeout ends it (meaningless while paused: paused sandboxes do not expire). */
  endAt: string;
  endedAt: string | null;
  endReason: string | null;
  /** E2B's SDKs reach port P of the sandbox at `<P>-<sandboxID>.<domain>`; null without a proxy domain. */
  domain: string | null;
}

export interface Timing { op: string; steps: { step: string; ms: number }[] }

/** A sandbox as `GET /sandboxes/{id}` shows it. */
export interface SandboxInfo extends SandboxSummary {
  /** X-Access-Token for the sandbox's agent (envd); "" once it has ended. */
  envdAccessToken: string;
  envVars: Record<string, string>;
  lifecycle: { onTimeout: string; keepMemory?: boolean; autoResume: boolean; autoExtend: boolean };
  /** While paused: whether memory was kept (a resume continues every process); null otherwise. */
  pausedWithMemory?: boolean | null;
  vmm: { kind: string; pid: number } | null;
  /** Allocated blocks of the root disk. */
  diskUsageBytes: number | null;
  timings: Timing | null;
  /** Egress in force (null once ended). */
  network: NetworkPolicy | null;
  /** E2B's name for network.allow_internet_access (null once ended). */
  allowInternetAccess?: boolean | null;
  allowPublicTraffic: boolean;
  trafficAccessToken: string | null;
  /** Ports are served at `<port>-<id>.<portDomain>` on the API port; null: path form only. */
  portDomain: string | null;
}

export interface SnapshotInfo {
  snapshotID: string;
  names: string[];
  sandboxID: string | null;
  templateID: string;
  cpuCount: number;
  memoryMB: number;
  createdAt: string;
  sizeBytes: number;
}

/** One sample of a sandbox's resource use (E2B's `SandboxMetrics`). */
export interface SandboxMetrics {
  timestamp: Date;
  /** CPU use across all vCPUs, 0–100. */
  cpuUsedPct: number;
  cpuCount: number;
  /** Bytes. */
  memUsed: number;
  memTotal: number;
  memCache?: number;
  diskUsed: number;
  diskTotal: number;
  /** Hearth: the VMM process's CPU use seen from the host, % of the sandbox's vCPUs (null: not known yet). */
  hostCpuUsedPct?: number | null;
  /** Hearth: the VMM process's resident memory on the host (bytes). */
  hostMemRss?: number | null;
  /** Hearth: blocks the sandbox's disk takes in the data dir (bytes). */
  hostDiskUsed?: number | null;
}

// ---------- custom templates (docs/templates.md) ----------
// The recipe mirrors src/templates/types.ts (the SDK package holds nothing of the daemon's);
// test/unit/sdk-templates.test.ts checks that both describe the same objects.

/** A command that runs in the build sandbox. `user` defaults to the recipe's current user (root at the start). */
export interface RunStep { run: string; user?: string }
/**
 * Files from the build context (what the client uploaded) into the image. `src`: context-relative
 * ("." = all of it); `dest`: absolute, or relative to the workdir; a `dest` ending in "/" receives `src` inside it.
 */
export interface CopyStep { copy: { src: string; dest: string; owner?: string; mode?: string } }
/** Variables for later steps and for every sandbox from the template. */
export interface EnvStep { env: Record<string, string> }
/** The working directory of later steps and of every sandbox's commands (created if missing). */
export interface WorkdirStep { workdir: string }
/** The user later steps run as, and the sandboxes' default user. */
export interface UserStep { user: string }
/** Debian packages, resolved and downloaded by the host and installed offline: no guest egress needed. */
export interface AptStep { apt: string[] }
/** Python packages: `python3 -m pip install` in the guest (needs egress to the index, or local paths). */
export interface PipStep { pip: string[] }

export type RecipeStep = RunStep | CopyStep | EnvStep | WorkdirStep | UserStep | AptStep | PipStep;

/** When the start command counts as ready: a command exiting 0, or a TCP port accepting connections. */
export type ReadyCheck = { command: string } | { port: number };

export interface StartSpec {
  /** A long-running service started in every sandbox (before the warm snapshot, so restores have it running). */
  command: string;
  ready?: ReadyCheck;
  /** How long the ready check may take (default 60). */
  timeoutSec?: number;
}

export interface RecipeResources {
  cpuCount?: number;
  memoryMB?: number;
  /** The root disk's size; larger than the base grows the filesystem (never smaller). */
  diskSizeMB?: number;
}

/** What `hearth.template.json` holds and `TemplateBuilder.toRecipe()` returns. */
export interface Recipe {
  /** A template id or alias to build on (default "base"). */
  from?: string;
  steps: RecipeStep[];
  start?: StartSpec;
  resources?: RecipeResources;
}

/** A template as `GET /templates/{id}` shows it. Fields after `createdAt` are those of built templates (absent or null for `base`). */
export interface TemplateInfo {
  templateID: string;
  aliases?: string[];
  /** image (base), build (a recipe or Dockerfile), sandbox or snapshot (made from one). */
  source?: 'image' | 'build' | 'sandbox' | 'snapshot';
  cpuCount: number;
  memoryMB: number;
  diskSizeMB: number;
  imageHash: string;
  createdAt: string;
  buildID?: string | null;
  from?: string | null;
  envVars?: Record<string, string>;
  user?: string | null;
  workdir?: string | null;
  startCommand?: string | null;
  readyCheck?: ReadyCheck | null;
  layers?: { key: string; step: string; sizeBytes: number }[];
}

/** One step of a build. */
export interface TemplateBuildStep {
  index: number;
  description: string;
  key: string;
  /** skipped: an env or user step, which changes no disk. */
  status: 'pending' | 'cached' | 'running' | 'done' | 'failed' | 'cancelled' | 'skipped';
  cached: boolean;
  durationMs: number | null;
  exitCode: number | null;
}

/** A template build (`POST /templates`, `GET /templates/{id}/builds/{buildID}`). */
export interface TemplateBuild {
  buildID: string;
  templateID: string;
  status: 'building' | 'ready' | 'failed' | 'cancelled';
  createdAt: string;
  finishedAt: string | null;
  durationMs: number | null;
  /** A failed build's error: the step, its exit code and its last log lines. */
  error: string | null;
  /** steps → snapshot (the warm snapshot and start command) → done. */
  phase: 'steps' | 'snapshot' | 'done';
  steps: TemplateBuildStep[];
}

/** One line of a build's log. `step` is null for the builder's own lines (`stream: "hearth"`). */
export interface TemplateBuildLogEntry {
  timestamp: string;
  step: number | null;
  stream: 'stdout' | 'stderr' | 'hearth';
  line: string;
}
