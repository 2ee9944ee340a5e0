import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { Store } from '../../store/store.js';
import type { RootfsBackend, RootDisk } from '../../storage/types.js';
import type { NetworkSlots, Slot, SlotOptions } from '../../network/types.js';
import type { Vmm, VmConfig, VmmDriver } from '../../vmm/types.js';
import type { AgentInit, GuestExec } from '../../client/agent-rest.js';
import type { Logger } from '../log.js';
import { DataLayout } from '../layout.js';
import type { AgentEndpoint, SandboxRecord, Template } from '../types.js';

/** The agent control calls the manager needs; an interface so tests can inject faults. */
export interface AgentControlApi {
  waitUntilReady(opts: { signal: AbortSignal; timeoutMs: number; giveUp?: Promise<never>; warm?: boolean }): Promise<number>;
  init(body: AgentInit, signal: AbortSignal): Promise<void>;
  health(signal: AbortSignal): Promise<boolean>;
  /** Write the guest's dirty data to disk (before a filesystem-only pause stops the VM). */
  sync(signal: AbortSignal): Promise<void>;
  /** Run a program in the guest to its end (a template's start command and ready check). */
  exec(req: GuestExec, signal: AbortSignal, onOutput?: (stream: 'stdout' | 'stderr', chunk: Uint8Array) => void): Promise<{ exitCode: number; status: string }>;
}

/** How memory files are copied for restores and snapshots: reflink (O(1)) or a sparse copy. */
export type FileCloner = (src: string, dst: string, signal: AbortSignal) => Promise<void>;

export interface ManagerConfig {
  dataDir: string;
  agentPort: number;
  defaultTimeoutSec: number;
  maxTimeoutSec: number;
  /** Bound on boot → agent answering. */
  bootTimeoutMs: number;
  /** Bound on restore → agent answering. */
  restoreTimeoutMs: number;
  /** Start sandboxes from a template's warm snapshot (false: always cold-boot; the benchmark baseline). */
  warmTemplates: boolean;
  /** Most sandboxes started at once (boots and restores); more wait their turn. */
  maxConcurrentStarts: number;
  limits: { maxVcpus: number; maxMemoryMib: number; minMemoryMib: number; maxForks: number };
  /** Guest memory of all running sandboxes may not exceed this many MiB (host RAM × overcommit ratio). */
  capacityMemoryMib: number;
}

export interface ManagerDeps {
  store: Store;
  log: Logger;
  vmm: VmmDriver;
  storage: RootfsBackend;
  network: NetworkSlots;
  cloneFile: FileCloner;
  agent: (endpoint: AgentEndpoint, token: string | undefined) => AgentControlApi;
  config: ManagerConfig;
}

/** What a running sandbox holds on the host, in memory. */
export interface LiveSandbox {
  vmm: Vmm;
  slot: Slot;
  disk: RootDisk;
  /** Set while the manager itself stops the VMM, so its exit isn't reported as a crash. */
  stopping: boolean;
}

/** The data dir's layout (src/core/layout.ts) of a manager's configuration. */
export function layoutOf(cfg: ManagerConfig): DataLayout { return new DataLayout(cfg.dataDir); }

/** The VM configuration of a sandbox in its slot, on its disk. */
export function vmConfig(cfg: ManagerConfig, rec: SandboxRecord, template: Template, slot: Slot, disk: RootDisk): VmConfig {
  const paths = layoutOf(cfg).sandbox(rec.id);
  return {
    sandboxId: rec.id,
    vcpus: rec.vcpus,
    memoryMib: rec.memoryMib,
    kernelPath: template.kernelPath,
    ...(template.initrdPath ? { initrdPath: template.initrdPath } : {}),
    kernelArgs: `${template.kernelArgs} ${slot.guestKernelArgs}`.trim(),
    rootfsPath: disk.devicePath,
    memoryFilePath: paths.memory,
    runDir: paths.dir,
    consoleLogPath: paths.console,
    network: slot.vmNetwork,
  };
}

/** The slot options that carry a sandbox's own network settings into a new slot. */
export function slotOptions(rec: SandboxRecord): SlotOptions {
  return rec.netPolicy.egress ? { egress: rec.netPolicy.egress } : {};
}

/**
 * The /init body after every create and restore: the sandbox's token and env,
 * the host's clock (a restored guest's clock is as old as its snapshot), and
 * fresh entropy (clones of one snapshot must not share random state).
 */
/**
 * The agent's /init for a sandbox: its token, its env vars over the template's, the template's
 * default user and workdir, the clock and fresh entropy (also after every restore and resume).
 */
export function initBody(rec: SandboxRecord, template: Template | undefined): AgentInit {
  const rt = template?.runtime;
  return {
    accessToken: rec.agentToken,
    envVars: rt ? { ...rt.env, ...rec.envVars } : rec.envVars,
    ...(rt?.user ? { defaultUser: rt.user } : {}),
    ...(rt?.workdir ? { defaultWorkdir: rt.workdir } : {}),
    timestamp: new Date().toISOString(),
    hearth: { sandboxId: rec.id, entropy: randomBytes(64).toString('base64') },
  };
}

export async function consoleTail(path: string, lines = 15): Promise<string> {
  try {
    const text = await readFile(path, 'utf8');
    return text.trimEnd().split('\n').slice(-lines).join(' | ') || '(empty)';
  } catch {
    return '(no console log)';
  }
}
