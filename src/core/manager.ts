import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Cleanup } from './cleanup.js';
import {
  ConflictError, HearthError, HostFailureError, InvalidArgumentError, NotFoundError, errorMessage, throwIfAborted,
} from './errors.js';
import { newAgentToken, newSandboxId } from './ids.js';
import { KeyedLock } from './lock.js';
import type { Logger } from './log.js';
import { assertTransition } from './state.js';
import { StepTimer } from './steps.js';
import { LIVE_STATES, type AgentEndpoint, type SandboxRecord, type SandboxState, type Template } from './types.js';
import type { Store } from '../store/store.js';
import type { BaseImage, RootDisk, RootfsBackend } from '../storage/types.js';
import type { NetworkSlots, Slot } from '../network/types.js';
import type { Vmm, VmConfig, VmmDriver, VmNetwork } from '../vmm/types.js';
import type { AgentInit } from '../client/agent-rest.js';
import { removeTree } from '../util/fs.js';

/** The agent control calls the manager needs; an interface so tests can inject faults. */
export interface AgentControlApi {
  waitUntilReady(opts: { signal: AbortSignal; timeoutMs: number; giveUp?: Promise<never> }): Promise<number>;
  init(body: AgentInit, signal: AbortSignal): Promise<void>;
  health(signal: AbortSignal): Promise<boolean>;
}

export interface ManagerConfig {
  dataDir: string;
  agentPort: number;
  defaultTimeoutSec: number;
  maxTimeoutSec: number;
  /** Bound on boot → agent answering. */
  bootTimeoutMs: number;
  limits: { maxVcpus: number; maxMemoryMib: number; minMemoryMib: number };
}

export interface ManagerDeps {
  store: Store;
  log: Logger;
  vmm: VmmDriver;
  storage: RootfsBackend;
  network: NetworkSlots;
  agent: (endpoint: AgentEndpoint, token: string | undefined) => AgentControlApi;
  config: ManagerConfig;
}

export interface CreateSandboxInput {
  templateId: string;
  vcpus?: number;
  memoryMib?: number;
  envVars?: Record<string, string>;
  metadata?: Record<string, string>;
  timeoutSec?: number;
}

/** What a running sandbox holds on the host, in memory. */
interface LiveSandbox {
  vmm: Vmm;
  slot: Slot;
  disk: RootDisk;
  /** Set while the manager itself stops the VMM, so its exit isn't reported as a crash. */
  stopping: boolean;
}

/**
 * The sandbox manager: the state machine of DESIGN §3. Every operation takes
 * the sandbox's lock, journals its steps, registers a compensation for each
 * resource it acquires, and runs cleanup with a fresh signal on failure.
 * It knows drivers only through the Vmm, RootfsBackend and NetworkSlots seams.
 */
export class SandboxManager {
  private readonly live = new Map<string, LiveSandbox>();
  private readonly lock = new KeyedLock();
  private readonly log: Logger;
  private expiryTimer: NodeJS.Timeout | undefined;

  constructor(private readonly deps: ManagerDeps) {
    this.log = deps.log;
  }

  private get store(): Store { return this.deps.store; }
  private sandboxDir(id: string): string { return join(this.deps.config.dataDir, 'sandboxes', id); }

  // ---------------------------------------------------------------- queries

  get(id: string): SandboxRecord {
    const s = this.store.getSandbox(id);
    if (!s) throw new NotFoundError(`sandbox ${id} does not exist`);
    return s;
  }

  list(states?: readonly SandboxState[]): SandboxRecord[] {
    return this.store.listSandboxes({ states: states ?? LIVE_STATES.concat('failed') });
  }

  /** Where to reach a running sandbox's agent (for the envd proxy). */
  agentEndpoint(id: string): { endpoint: AgentEndpoint; token: string } {
    const s = this.get(id);
    if (s.state !== 'running' || !s.agent) throw new ConflictError(`sandbox ${id} is ${s.state}, not running`);
    return { endpoint: s.agent, token: s.agentToken };
  }

  async diskUsage(id: string): Promise<number | null> {
    const live = this.live.get(id);
    if (!live) return null;
    return (await this.deps.storage.usage(live.disk)).allocatedBytes;
  }

  // ---------------------------------------------------------------- create

  validateCreate(input: CreateSandboxInput): Required<Omit<CreateSandboxInput, 'templateId'>> & { template: Template } {
    const template = this.store.getTemplate(input.templateId);
    if (!template) throw new NotFoundError(`template ${input.templateId} does not exist`);
    const { limits, defaultTimeoutSec, maxTimeoutSec } = this.deps.config;
    const vcpus = input.vcpus ?? template.vcpus;
    const memoryMib = input.memoryMib ?? template.memoryMib;
    if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > limits.maxVcpus) {
      throw new InvalidArgumentError(`cpuCount must be an integer from 1 to ${limits.maxVcpus}`, 'cpuCount');
    }
    if (!Number.isInteger(memoryMib) || memoryMib < limits.minMemoryMib || memoryMib > limits.maxMemoryMib) {
      throw new InvalidArgumentError(`memoryMB must be an integer from ${limits.minMemoryMib} to ${limits.maxMemoryMib}`, 'memoryMB');
    }
    const timeoutSec = input.timeoutSec ?? defaultTimeoutSec;
    if (!Number.isInteger(timeoutSec) || timeoutSec < 1 || timeoutSec > maxTimeoutSec) {
      throw new InvalidArgumentError(`timeout must be an integer number of seconds from 1 to ${maxTimeoutSec}`, 'timeout');
    }
    return { template, vcpus, memoryMib, timeoutSec, envVars: input.envVars ?? {}, metadata: input.metadata ?? {} };
  }

  /**
   * Create (DESIGN §3): slot → disk → VMM boot → wait for the agent → /init → running.
   * On any failure every acquired resource is released in reverse order and the
   * sandbox is kept as `failed` with the reason.
   */
  async create(input: CreateSandboxInput, signal: AbortSignal): Promise<SandboxRecord> {
    const v = this.validateCreate(input);
    const now = new Date();
    const rec: SandboxRecord = {
      id: newSandboxId(),
      templateId: v.template.id,
      state: 'creating',
      vcpus: v.vcpus,
      memoryMib: v.memoryMib,
      envVars: v.envVars,
      metadata: v.metadata,
      createdAt: now.toISOString(),
      startedAt: null,
      endAt: new Date(now.getTime() + v.timeoutSec * 1000).toISOString(),
      endedAt: null,
      endReason: null,
      agentToken: newAgentToken(),
      agent: null,
      vmm: null,
      disk: null,
      network: null,
      timings: null,
    };
    this.store.insertSandbox(rec);
    return this.lock.run(rec.id, 'create', () => this.doCreate(rec, v.template, signal));
  }

  private async doCreate(rec: SandboxRecord, template: Template, signal: AbortSignal): Promise<SandboxRecord> {
    const { store, log } = this;
    const journal = store.journalBegin(rec.id, 'create', 'start');
    const steps = new StepTimer('create', (step) => store.journalStep(journal, step));
    const cleanup = new Cleanup();
    const dir = this.sandboxDir(rec.id);
    try {
      await mkdir(dir, { recursive: true });
      cleanup.add('sandbox dir', () => removeTree(dir));

      const slot = await steps.run('slot', () => this.deps.network.acquire(signal), signal);
      cleanup.add('network slot', () => this.deps.network.release(slot));
      rec.network = slot.vmNetwork;

      const disk = await steps.run('disk', () => this.deps.storage.create(rec.id, baseImageOf(template), signal), signal);
      cleanup.add('root disk', () => this.deps.storage.remove(disk, AbortSignal.timeout(60_000)));
      rec.disk = disk;

      const vmm = this.deps.vmm.create();
      const cfg = this.vmConfig(rec, template, slot, disk);
      const live: LiveSandbox = { vmm, slot, disk, stopping: false };
      // Registered before boot: a boot that fails half-way may still have left a process.
      cleanup.addPriority('vmm', () => this.stopVmm(live));
      await steps.run('boot', () => vmm.boot(cfg, signal), signal);
      rec.vmm = { kind: vmm.kind, pid: vmm.pid, runDir: dir };
      store.updateSandbox(rec);

      const endpoint = slot.guestAddress(this.deps.config.agentPort);
      await steps.run('agent', () => this.waitForAgent(rec, endpoint, vmm, cfg.consoleLogPath, signal), signal);
      await steps.run('init', () => this.deps.agent(endpoint, undefined).init(this.initBody(rec), signal), signal);

      rec.agent = endpoint;
      rec.state = 'running';
      rec.startedAt = new Date().toISOString();
      rec.timings = { op: 'create', steps: steps.steps };
      store.updateSandbox(rec);
      cleanup.commit();
      this.live.set(rec.id, live);
      this.watchExit(rec.id, live);
      store.journalEnd(journal);
      steps.log(log, rec.id, 'ok');
      return rec;
    } catch (err) {
      steps.log(log, rec.id, 'failed');
      const cleanupErrors = await cleanup.run();
      const reason = `create failed at ${steps.steps.at(-1)?.[0] ?? 'start'}: ${errorMessage(err)}` +
        (cleanupErrors.length ? `; cleanup: ${cleanupErrors.map((e) => e.message).join('; ')}` : '');
      this.markFailed(rec, reason);
      store.journalEnd(journal);
      log.error({ sandbox: rec.id, err: errorMessage(err), cleanupErrors: cleanupErrors.map((e) => e.message) }, reason);
      // Bad input and cancellation keep their own error; host trouble is reported with the sandbox id and step.
      if (err instanceof HearthError && err.code !== 'host_failure') throw err;
      throw new HostFailureError(`sandbox ${rec.id}: ${reason}`, { cause: err });
    }
  }

  private vmConfig(rec: SandboxRecord, template: Template, slot: Slot, disk: RootDisk): VmConfig {
    const dir = this.sandboxDir(rec.id);
    return {
      sandboxId: rec.id,
      vcpus: rec.vcpus,
      memoryMib: rec.memoryMib,
      kernelPath: template.kernelPath,
      ...(template.initrdPath ? { initrdPath: template.initrdPath } : {}),
      kernelArgs: `${template.kernelArgs} ${guestNetArgs(slot.vmNetwork)}`.trim(),
      rootfsPath: disk.devicePath,
      memoryFilePath: join(dir, 'memory'),
      runDir: dir,
      consoleLogPath: join(dir, 'console.log'),
      network: slot.vmNetwork,
    };
  }

  private initBody(rec: SandboxRecord): AgentInit {
    return {
      accessToken: rec.agentToken,
      envVars: rec.envVars,
      timestamp: new Date().toISOString(),
      hearth: { sandboxId: rec.id, entropy: randomBytes(64).toString('base64') },
    };
  }

  /** Wait for the agent, failing fast (with the console's last lines) if the VMM dies first. */
  private async waitForAgent(rec: SandboxRecord, endpoint: AgentEndpoint, vmm: Vmm, consoleLog: string, signal: AbortSignal): Promise<void> {
    const died = vmm.exited.then(async (info): Promise<never> => {
      throw new HostFailureError(`VMM exited during boot (code ${info.code}, signal ${info.signal}); console: ${await tail(consoleLog)}`);
    });
    died.catch(() => undefined);
    try {
      await this.deps.agent(endpoint, rec.agentToken).waitUntilReady({ signal, timeoutMs: this.deps.config.bootTimeoutMs, giveUp: died });
    } catch (err) {
      if (err instanceof HearthError && err.code === 'timeout') {
        throw new HostFailureError(`${err.message}; console: ${await tail(consoleLog)}`, { cause: err });
      }
      throw err;
    }
  }

  /** A VMM that exits on its own (guest panic, OOM kill) fails the sandbox and releases its resources. */
  private watchExit(id: string, live: LiveSandbox): void {
    void live.vmm.exited.then(async (info) => {
      if (live.stopping || this.live.get(id) !== live) return;
      const reason = `VMM exited unexpectedly (code ${info.code}, signal ${info.signal})`;
      this.log.warn({ sandbox: id, ...info }, reason);
      await this.lock.run(id, 'reap', async () => {
        if (this.live.get(id) !== live) return;
        await this.releaseAll(id, live, reason, 'failed').catch((err: unknown) => this.log.error({ sandbox: id, err: errorMessage(err) }, 'reap failed'));
      });
    });
  }

  // ---------------------------------------------------------------- destroy

  /** Idempotent; works on any state, including failed and half-created. */
  async destroy(id: string, signal: AbortSignal, reason = 'destroyed by request'): Promise<void> {
    this.get(id);
    await this.lock.run(id, 'destroy', async () => {
      throwIfAborted(signal);
      const rec = this.get(id);
      if (rec.state === 'destroyed') return;
      const live = this.live.get(id);
      if (live) {
        await this.releaseAll(id, live, reason, 'destroyed');
      } else {
        await this.releaseRecorded(rec, reason);
      }
    });
  }

  /**
   * Release every host resource of a sandbox in the order DESIGN §3 fixes:
   * stop the VMM (and wait for exit) → disk → slot → files. Every step runs even
   * if an earlier one failed; errors leave the sandbox `failed` with the reason.
   */
  private async releaseAll(id: string, live: LiveSandbox, reason: string, finalState: 'destroyed' | 'failed'): Promise<void> {
    const rec = this.get(id);
    if (rec.state !== 'destroying') {
      assertTransition(id, rec.state === 'creating' ? 'creating' : rec.state, 'destroying');
      rec.state = 'destroying';
      this.store.updateSandbox(rec);
    }
    const journal = this.store.journalBegin(id, 'destroy', 'vmm');
    const steps = new StepTimer('destroy', (step) => this.store.journalStep(journal, step));
    const cleanup = new Cleanup();
    cleanup.add('files', () => removeTree(this.sandboxDir(id)));
    cleanup.add('network slot', () => this.deps.network.release(live.slot));
    cleanup.add('root disk', () => this.deps.storage.remove(live.disk, AbortSignal.timeout(60_000)));
    cleanup.addPriority('vmm', () => steps.run('vmm', () => this.stopVmm(live)));
    const errors = await cleanup.run();
    this.live.delete(id);
    this.store.journalEnd(journal);
    steps.log(this.log, id, errors.length ? 'failed' : 'ok');
    const after = this.get(id);
    after.timings = { op: 'destroy', steps: steps.steps };
    after.agent = null;
    if (errors.length) {
      this.markFailed(after, `${reason}; release failed: ${errors.map((e) => e.message).join('; ')}`);
      throw new HostFailureError(`sandbox ${id}: could not release everything: ${errors.map((e) => e.message).join('; ')}`);
    }
    after.state = finalState;
    after.endedAt = new Date().toISOString();
    after.endReason = reason;
    after.vmm = null;
    after.disk = null;
    after.network = null;
    this.store.updateSandbox(after);
  }

  /** Destroy a sandbox this daemon holds nothing in memory for (failed, or left by a crash). */
  private async releaseRecorded(rec: SandboxRecord, reason: string, finalState: 'destroyed' | 'failed' = 'destroyed'): Promise<void> {
    const errors: string[] = [];
    if (rec.vmm) {
      const vmm = await this.deps.vmm.adopt({ kind: rec.vmm.kind, pid: rec.vmm.pid, runDir: rec.vmm.runDir }).catch(() => null);
      if (vmm) await vmm.stop(AbortSignal.timeout(30_000)).catch((e: unknown) => errors.push(`vmm: ${errorMessage(e)}`));
    }
    if (rec.disk) await this.deps.storage.remove(rec.disk, AbortSignal.timeout(60_000)).catch((e: unknown) => errors.push(`disk: ${errorMessage(e)}`));
    if (rec.network) await this.deps.network.release(this.deps.network.restore(rec.network)).catch((e: unknown) => errors.push(`slot: ${errorMessage(e)}`));
    await removeTree(this.sandboxDir(rec.id)).catch((e: unknown) => errors.push(`files: ${errorMessage(e)}`));
    if (errors.length) {
      this.markFailed(rec, `${reason}; release failed: ${errors.join('; ')}`);
      throw new HostFailureError(`sandbox ${rec.id}: could not release everything: ${errors.join('; ')}`);
    }
    const prior = rec.state === 'failed' ? rec.endReason : null;
    rec.state = finalState;
    rec.endedAt = new Date().toISOString();
    rec.endReason = prior ? `${prior}; then ${reason}` : reason;
    rec.vmm = null; rec.disk = null; rec.network = null; rec.agent = null;
    this.store.updateSandbox(rec);
  }

  private async stopVmm(live: LiveSandbox): Promise<void> {
    live.stopping = true;
    // A fresh signal: cleanup must finish even when the request was cancelled.
    await live.vmm.stop(AbortSignal.timeout(30_000));
  }

  private markFailed(rec: SandboxRecord, reason: string): void {
    rec.state = 'failed';
    rec.endReason = reason;
    rec.endedAt = new Date().toISOString();
    rec.agent = null;
    this.store.updateSandbox(rec);
  }

  // ---------------------------------------------------------------- timeouts

  /** Sets endAt = now + timeout (may shorten, as E2B's setTimeout does). */
  setTimeout(id: string, timeoutSec: number): SandboxRecord {
    const { maxTimeoutSec } = this.deps.config;
    if (!Number.isInteger(timeoutSec) || timeoutSec < 0 || timeoutSec > maxTimeoutSec) {
      throw new InvalidArgumentError(`timeout must be an integer number of seconds from 0 to ${maxTimeoutSec}`, 'timeout');
    }
    const rec = this.get(id);
    if (rec.state !== 'running') throw new ConflictError(`sandbox ${id} is ${rec.state}, not running`);
    rec.endAt = new Date(Date.now() + timeoutSec * 1000).toISOString();
    this.store.updateSandbox(rec);
    return rec;
  }

  /** Kill running sandboxes whose timeout passed (checked every second). */
  startExpiry(intervalMs = 1000): void {
    this.expiryTimer = setInterval(() => {
      const now = Date.now();
      for (const s of this.store.listSandboxes({ states: ['running'] })) {
        if (Date.parse(s.endAt) <= now && !this.lock.isBusy(s.id)) {
          this.log.info({ sandbox: s.id }, 'timeout reached; destroying');
          this.destroy(s.id, AbortSignal.timeout(60_000), `timeout reached at ${s.endAt}`)
            .catch((err: unknown) => this.log.error({ sandbox: s.id, err: errorMessage(err) }, 'timeout destroy failed'));
        }
      }
    }, intervalMs);
    this.expiryTimer.unref();
  }

  // ---------------------------------------------------------------- start-up

  /**
   * After a daemon (re)start: adopt every running sandbox whose VMM is alive
   * and whose agent answers; release and fail the rest. Half-done operations
   * (journal rows) are undone: their sandboxes are released.
   */
  async recover(signal: AbortSignal): Promise<{ adopted: string[]; failed: string[] }> {
    const adopted: string[] = [];
    const failed: string[] = [];
    const interrupted = new Map(this.store.listJournal().map((j) => [j.sandboxId, j]));
    for (const rec of this.store.listSandboxes({ states: LIVE_STATES })) {
      const j = interrupted.get(rec.id);
      if (rec.state === 'running' && !j && rec.vmm && rec.network && rec.disk && rec.agent) {
        const vmm = await this.deps.vmm.adopt({ kind: rec.vmm.kind, pid: rec.vmm.pid, runDir: rec.vmm.runDir }).catch(() => null);
        if (vmm && await this.deps.agent(rec.agent, rec.agentToken).health(signal)) {
          const live: LiveSandbox = { vmm, slot: this.deps.network.restore(rec.network), disk: rec.disk, stopping: false };
          this.live.set(rec.id, live);
          this.watchExit(rec.id, live);
          adopted.push(rec.id);
          continue;
        }
      }
      const why = j ? `daemon stopped during ${j.op} (step ${j.step})` : `daemon restarted and the VM of this ${rec.state} sandbox was gone`;
      try {
        await this.releaseRecorded(rec, why, 'failed');
      } catch (err) {
        this.log.error({ sandbox: rec.id, err: errorMessage(err) }, 'recovery release failed');
      }
      failed.push(rec.id);
    }
    for (const j of interrupted.values()) this.store.journalEnd(j.id);
    this.log.info({ adopted, failed }, `recovery: adopted ${adopted.length}, failed ${failed.length}`);
    return { adopted, failed };
  }

  /** Stop background work. Running VMs are left running: a restarted daemon adopts them. */
  close(): void {
    if (this.expiryTimer) clearInterval(this.expiryTimer);
  }
}

function baseImageOf(t: Template): BaseImage {
  return { id: t.id, path: t.rootfsPath, sizeBytes: t.rootfsSizeBytes };
}

/** Kernel command-line parameters the guest init reads to configure eth0. */
export function guestNetArgs(net: VmNetwork): string {
  if (net.kind === 'user') return `hearth.ip=${net.guestCidr} hearth.gw=${net.gateway}`;
  return '';
}

async function tail(path: string, lines = 15): Promise<string> {
  try {
    const text = await readFile(path, 'utf8');
    return text.trimEnd().split('\n').slice(-lines).join(' | ') || '(empty)';
  } catch {
    return '(no console log)';
  }
}
