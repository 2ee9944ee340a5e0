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
