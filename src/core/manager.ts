import { mkdir, readdir, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Holdings, legacyHoldings, type Holding, type Releaser } from './holdings.js';
import {
  CapacityError, ConfigError, ConflictError, HearthError, HostFailureError, InvalidArgumentError, NotFoundError, errorMessage, throwIfAborted, type ErrorCode,
} from './errors.js';
import { newAgentToken, newSandboxId, newTrafficToken, randomId } from './ids.js';
import { KeyedLock } from './lock.js';
import type { Logger } from './log.js';
import { assertTransition, transition } from './state.js';
import { StepTimer } from './steps.js';
import { headroomRefusal, type HostHeadroom } from './headroom.js';
import { Semaphore } from './semaphore.js';
import type { AgentEndpoint, Lifecycle, SandboxRecord, SandboxState, SnapshotRecord, Template } from './types.js';
import { withoutSecrets, type Store } from '../store/store.js';
import type { Vmm, VmmKind } from '../vmm/types.js';
import type { Slot } from '../network/types.js';
import type { BaseImage, DetachedDisk, RootDisk } from '../storage/types.js';
import type { EgressPolicy } from '../network/types.js';
import { exists, regularFiles, removeTree } from '../util/fs.js';
import { abortError, abortable } from '../util/abort.js';
import { layoutOf, type LiveSandbox, type ManagerDeps } from './flows/context.js';
import { isStagingName, isWarmDirName, pausedAt, type DataLayout } from './layout.js';
import { compatDifferences } from './compat.js';
import { launch, type LaunchSource } from './flows/launch.js';
import { beyondPaused, captureKeptMemory, commitResume, pauseSandbox, pausedDisk, resumeSandbox } from './flows/pause.js';
import { captureSnapshot, newSnapshotId, removeSnapshotFiles, snapshotComplete } from './flows/capture.js';
import { adoptPaused, describePaused, forgetRows, importRefusal, type PausedExport } from './flows/move.js';

export type { AgentControlApi, ManagerConfig, ManagerDeps, FileCloner } from './flows/context.js';

export interface CreateSandboxInput {
  /** A template id, or a named snapshot's id or name (E2B: a snapshot id is usable as templateID). */
  templateId: string;
  vcpus?: number;
  memoryMib?: number;
  envVars?: Record<string, string>;
  metadata?: Record<string, string>;
  timeoutSec?: number;
  lifecycle?: Partial<Pick<Lifecycle, 'onTimeout' | 'keepMemory' | 'autoResume' | 'autoExtend'>>;
  /**
   * A retried create with the same key (and the same request) gets the first
   * one's outcome instead of making another sandbox; see `createSandbox`.
   */
  idempotencyKey?: string;
  /** Whose key it is (the API key's id); keys of different owners never meet. Default ''. */
  idempotencyScope?: string;
  /** Hash of the canonical request the key came with (the API hashes its body); default: of this input. */
  requestHash?: string;
  network?: {
    /** Egress policy; fields not given take the host's default. */
    egress?: Partial<EgressPolicy>;
    /** false: the port proxy serves the sandbox only with its traffic token (default true). */
    publicTraffic?: boolean;
  };
}

export interface ReconcileReport {
  at: string;
  recovered?: { adopted: string[]; paused: string[]; failed: string[] };
  killedVms: { sandboxId: string; pid: number }[];
  removedSandboxDirs: string[];
  removedSnapshotDirs: string[];
  errors: string[];
}

export interface ForkResult { sandbox?: SandboxRecord; error?: { code: string; message: string } }

/** Settings of the manager beyond ManagerConfig's; each has a default. */
export interface ManagerSettings {
  /** Most warm snapshots (distinct shapes) kept per template, builds in flight included (default 4). */
  warmShapesPerTemplate?: number;
  /** Admission on the host's real memory, disk and CPU headroom (src/core/headroom.ts); none: guest memory only. */
  headroom?: HostHeadroom;
}

export type SandboxManagerDeps = ManagerDeps & { config: ManagerDeps['config'] & ManagerSettings };

export const DEFAULT_WARM_SHAPES_PER_TEMPLATE = 4;

/** An idempotency key is forgotten this long after its first use. */
export const IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000;

/** The idempotency key was first used with another request (the API answers 422). */
export class IdempotencyMismatchError extends InvalidArgumentError {
  constructor(readonly key: string) {
    super(`Idempotency-Key ${JSON.stringify(key)} was first used with a different request; send the same request to get its outcome, or use a new key`, 'idempotency-key');
  }
}

/** A template's warm snapshot as the API lists it. */
export interface TemplateSnapshotInfo {
  snapshot: SnapshotRecord;
  lastUsedAt: string;
  /** Allocated bytes of its files. */
  sizeBytes: number;
  /** Made from the template's current image, kernel, network backend and VMM (else never used again, and dropped first). */
  current: boolean;
  /** Creates restoring from it right now. */
  inUse: number;
}

/** A create's hold on a warm snapshot while it restores from it: such a snapshot is never removed. */
interface WarmLease { snapshot: SnapshotRecord; release(): void }

/** A warm-snapshot build shared by the creates that wait for it; aborted when the last one leaves. */
interface WarmBuild {
  templateId: string;
  ac: AbortController;
  waiters: Set<{ lease: WarmLease | null }>;
  promise: Promise<SnapshotRecord>;
}

/** An idempotency key claimed by a create in flight. */
interface KeyClaim { scope: string; key: string; sandboxId: string; done(): void }

/** Pause steps during which the VMM still runs (src/core/flows/pause.ts): an interrupted pause there is undone. */
const BEFORE_STOP = new Set(['start', 'snapshot', 'flush', 'sync']);

/** States in which a sandbox holds (or may hold) host resources and is not paused. */
/** What a warm snapshot was made under, beyond its template's image: another node reuses it only under the same. */
export interface WarmSetup { kernelArgs: string; network: string; vmm: string; compat: string }

/** A warm snapshot as another node copies it: its record (no local path), its set-up, its files. */
export interface WarmExport { snapshot: SnapshotRecord; setup: WarmSetup; files: { name: string; size: number }[] }

const ACTIVE_STATES: readonly SandboxState[] = ['creating', 'running', 'pausing', 'resuming', 'destroying'];

/**
 * The sandbox manager: the sandbox state machine. Every operation takes
 * the sandbox's lock, journals its steps, registers a compensation for each
 * resource it acquires, and runs cleanup with a fresh signal on failure. The
 * flows themselves live in ./flows; drivers are reached only through the Vmm,
 * RootfsBackend and NetworkSlots seams.
 */
export class SandboxManager {
  private readonly live = new Map<string, LiveSandbox>();
  /** 'vm-gone' (sandboxId): its VM stopped for good or was paused; streams to it can be cut at once. */
  readonly events = new EventEmitter<{ 'vm-gone': [string] }>();
  /**
   * Run before a pause takes a sandbox's VM away, after the sandbox stopped taking
   * new work (state `pausing`): the API lets short requests in flight finish
   * (bounded) rather than freeze them inside the guest. Failures are ignored.
   */
  private readonly pauseQuiescers: Array<(id: string) => Promise<unknown>> = [];

  onBeforePause(fn: (id: string) => Promise<unknown>): () => void {
    this.pauseQuiescers.push(fn);
    return () => { const i = this.pauseQuiescers.indexOf(fn); if (i !== -1) this.pauseQuiescers.splice(i, 1); };
  }
  private closed = false;
  private readonly lock = new KeyedLock();
  private readonly starts: Semaphore;
  /** Warm-snapshot builds in flight, by template/warm key/shape. */
  private readonly warming = new Map<string, WarmBuild>();
  /** Creates restoring from each template snapshot right now (by snapshot id). */
  private readonly warmUses = new Map<string, number>();
  /** Idempotency keys whose create is in flight here, and how to wait for it. */
  private readonly keysInFlight = new Map<string, Promise<void>>();
  /** Builds and file removals running in the background (settled() waits for them). */
  private readonly background = new Set<Promise<void>>();
  private readonly log: Logger;
  private expiryTimer: NodeJS.Timeout | undefined;
  private reconcileTimer: NodeJS.Timeout | undefined;
  private lastReconcile: ReconcileReport | null = null;
  /** How long ended sandboxes stay (ms); null: until purged by hand (setEndedRetention not called). */
  private endedRetentionMs: number | null = null;

  /** The VMM's snapshot-compatibility key, once asked (vmmCompat). */
  private compatKey: string | null = null;
  /** What each sandbox holds on the host, durably (src/core/holdings.ts). */
  private readonly ledger: Holdings;

  constructor(private readonly deps: SandboxManagerDeps) {
    this.log = deps.log;
    this.ledger = new Holdings(deps.store);
    this.starts = new Semaphore(deps.config.maxConcurrentStarts);
  }

  private get store(): Store { return this.deps.store; }
  /** Every path under the data dir (src/core/layout.ts). */
  private get layout(): DataLayout { return layoutOf(this.config); }
  private get config(): SandboxManagerDeps['config'] { return this.deps.config; }

  // ---------------------------------------------------------------- queries

  get(id: string): SandboxRecord {
    const s = this.store.getSandbox(id);
    if (!s) throw new NotFoundError(`sandbox ${id} does not exist`);
    return s;
  }

  list(states?: readonly SandboxState[]): SandboxRecord[] {
    return this.store.listSandboxes({ states: states ?? ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying', 'failed'] });
  }

  /** Where to reach a running sandbox's agent (for the envd proxy). */
  agentEndpoint(id: string): { endpoint: AgentEndpoint; token: string; lease: string } {
    const s = this.get(id);
    if (s.state !== 'running' || !s.agent) throw new ConflictError(`sandbox ${id} is ${s.state}, not running`);
    return { endpoint: s.agent, token: s.agentToken, lease: leaseOf(s) };
  }

  /**
   * For the proxies: the agent address of a running sandbox; a paused one with
   * `autoResume` is resumed first; activity extends `endAt` when `autoExtend`.
   */
  async reachable(id: string, signal: AbortSignal): Promise<{ endpoint: AgentEndpoint; token: string; lease: string }> {
    let s = this.get(id);
    // A filesystem-only pause is not resumed by traffic (its resume reboots the guest), as in E2B.
    if (s.state === 'paused' && s.lifecycle.autoResume && captureKeptMemory(this.ledger, id) !== false) s = await this.resume(id, signal).catch((err: unknown) => {
      // Another request may have resumed it meanwhile.
      if (err instanceof ConflictError && this.get(id).state === 'running') return this.get(id);
      throw err;
    });
    if (s.state === 'running' && s.lifecycle.autoExtend) this.extend(s, s.lifecycle.timeoutSec);
    return this.agentEndpoint(id);
  }

  /**
   * For the port proxy: where a guest port of a sandbox is reached (resuming
   * it first when `autoResume`), and the traffic token it requires, if any.
   */
  async portEndpoint(id: string, port: number, signal: AbortSignal): Promise<{ host: string; port: number; trafficToken: string | null; lease: string }> {
    const { lease } = await this.reachable(id, signal);
    const live = this.live.get(id);
    if (!live) throw new ConflictError(`sandbox ${id} is ${this.get(id).state}, not running`);
    return { ...live.slot.guestAddress(port), trafficToken: this.get(id).netPolicy.trafficToken, lease };
  }

  /** The egress policy a sandbox has (its slot's while running, its recorded one while paused). */
  egressOf(id: string): EgressPolicy {
    const rec = this.get(id);
    const live = this.live.get(id);
    if (live) return this.deps.network.egressOf(live.slot);
    return rec.netPolicy.egress ?? this.deps.network.checkEgress({});
  }

  /**
   * Replace a sandbox's egress policy: at once in its slot while it runs (open
   * flows included), recorded for the next resume while paused.
   */
  async setEgress(id: string, egress: Partial<EgressPolicy>, signal: AbortSignal): Promise<EgressPolicy> {
    this.get(id);
    return this.lock.tryRun(id, 'network', async () => {
      throwIfAborted(signal);
      const rec = this.get(id);
      const next = this.deps.network.checkEgress(egress);
      const live = this.live.get(id);
      if (rec.state === 'running' && live) {
        rec.netPolicy = { ...rec.netPolicy, egress: await this.deps.network.setEgress(live.slot, next) };
      } else if (rec.state === 'paused') {
        rec.netPolicy = { ...rec.netPolicy, egress: next };
      } else {
        throw new ConflictError(`sandbox ${id} is ${rec.state}; its network can change while it runs or is paused`);
      }
      this.store.updateSandbox(rec);
      return rec.netPolicy.egress!;
    });
  }

  /** endAt = max(endAt, now + seconds). */
  private extend(rec: SandboxRecord, seconds: number): void {
    const wanted = Date.now() + seconds * 1000;
    if (Date.parse(rec.endAt) < wanted - 1000) {
      rec.endAt = new Date(wanted).toISOString();
      this.store.updateSandbox(rec);
    }
  }

  /** While paused: whether its capture kept memory (false: filesystem-only, the resume boots); null when not paused. */
  pausedWithMemory(id: string): boolean | null {
    return this.store.getSandbox(id)?.state === 'paused' ? captureKeptMemory(this.ledger, id) : null;
  }

  /** Allocated bytes of the sandbox's disk (and memory file when paused), from st_blocks. */
  async diskUsage(id: string): Promise<number | null> {
    const live = this.live.get(id);
    if (live) return (await this.deps.storage.usage(live.disk)).allocatedBytes;
    const rec = this.store.getSandbox(id);
    if (rec?.state === 'paused') return dirUsage(this.layout.sandbox(id).paused.dir);
    return null;
  }

  template(id: string): Template {
    const t = this.store.getTemplate(id);
    if (!t) throw new NotFoundError(`template ${id} does not exist`);
    return t;
  }

  getSnapshot(id: string): SnapshotRecord {
    const s = this.store.getSnapshot(id) ?? this.store.findSnapshot(id);
    if (!s || s.kind !== 'named') throw new NotFoundError(`snapshot ${id} does not exist`);
    return s;
  }

  listSnapshots(filter: { sandboxId?: string } = {}): SnapshotRecord[] {
    return this.store.listSnapshots({ kind: 'named', ...filter });
  }

  async snapshotUsage(id: string): Promise<number> { return dirUsage(this.getSnapshot(id).dir); }

  // ---------------------------------------------------------------- create

  private resolveSource(input: CreateSandboxInput): { template: Template; snapshot: SnapshotRecord | null } {
    if (typeof input.templateId !== 'string' || input.templateId === '') throw new InvalidArgumentError('templateID must be a non-empty string', 'templateID');
    const template = this.store.getTemplate(input.templateId);
    if (template) return { template, snapshot: null };
    const snapshot = this.store.findSnapshot(input.templateId);
    if (snapshot) return { template: this.template(snapshot.templateId), snapshot };
    throw new NotFoundError(`template or snapshot ${input.templateId} does not exist`);
  }

  private validateShape(template: Template, snapshot: SnapshotRecord | null, input: CreateSandboxInput): { vcpus: number; memoryMib: number; timeoutSec: number } {
    const { limits, defaultTimeoutSec, maxTimeoutSec } = this.config;
    const vcpus = input.vcpus ?? snapshot?.vcpus ?? template.vcpus;
    const memoryMib = input.memoryMib ?? snapshot?.memoryMib ?? template.memoryMib;
    if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > limits.maxVcpus) {
      throw new InvalidArgumentError(`cpuCount must be an integer from 1 to ${limits.maxVcpus}`, 'cpuCount');
    }
    if (!Number.isInteger(memoryMib) || memoryMib < limits.minMemoryMib || memoryMib > limits.maxMemoryMib) {
      throw new InvalidArgumentError(`memoryMB must be an integer from ${limits.minMemoryMib} to ${limits.maxMemoryMib}`, 'memoryMB');
    }
    if (snapshot && (vcpus !== snapshot.vcpus || memoryMib !== snapshot.memoryMib)) {
      throw new InvalidArgumentError(`snapshot ${snapshot.id} was taken with ${snapshot.vcpus} vCPU and ${snapshot.memoryMib} MiB; a sandbox started from it has the same shape`, 'memoryMB');
    }
    const timeoutSec = input.timeoutSec ?? defaultTimeoutSec;
    if (!Number.isInteger(timeoutSec) || timeoutSec < 1 || timeoutSec > maxTimeoutSec) {
      throw new InvalidArgumentError(`timeout must be an integer number of seconds from 1 to ${maxTimeoutSec}`, 'timeout');
    }
    return { vcpus, memoryMib, timeoutSec };
  }

  private newRecord(template: Template, snapshot: SnapshotRecord | null, shape: { vcpus: number; memoryMib: number; timeoutSec: number }, input: CreateSandboxInput): SandboxRecord {
    const now = new Date();
    return {
      id: newSandboxId(),
      templateId: template.id,
      state: 'creating',
      vcpus: shape.vcpus,
      memoryMib: shape.memoryMib,
      envVars: input.envVars ?? snapshot?.envVars ?? {},
      metadata: input.metadata ?? {},
      createdAt: now.toISOString(),
      startedAt: null,
      endAt: new Date(now.getTime() + shape.timeoutSec * 1000).toISOString(),
      endedAt: null,
      endReason: null,
      agentToken: newAgentToken(),
      agent: null,
      vmm: null,
      disk: null,
      network: null,
      timings: null,
      snapshotId: snapshot?.id ?? null,
      pausedAt: null,
      lifecycle: {
        onTimeout: input.lifecycle?.onTimeout ?? 'kill',
        keepMemory: input.lifecycle?.keepMemory ?? true,
        autoResume: input.lifecycle?.autoResume ?? false,
        autoExtend: input.lifecycle?.autoExtend ?? false,
        timeoutSec: shape.timeoutSec,
      },
      netPolicy: {
        // Validated here, before the record exists: a policy this host can't honour is a 400, not a failed sandbox.
        egress: input.network?.egress ? this.deps.network.checkEgress(input.network.egress) : null,
        trafficToken: input.network?.publicTraffic === false ? newTrafficToken() : null,
      },
    };
  }

  /**
   * Create a running sandbox. From a template: restore its warm snapshot for
   * this shape (built on first use, and by the daemon at start) — never a boot
   * on the user's time when a snapshot can be had; from a named snapshot: restore it.
   */
  async create(input: CreateSandboxInput, signal: AbortSignal): Promise<SandboxRecord> {
    return (await this.createSandbox(input, signal)).sandbox;
  }

  /**
   * create(), and whether the answer replays an earlier request's. In three
   * phases, cheapest first, so that a request that will be refused costs
   * nothing: validate everything (source, shape, timeout, env, metadata,
   * lifecycle, network policy: the record is built, not stored); admit it (the
   * idempotency key, then host capacity); only then work (a warm snapshot for
   * a new shape, the VM).
   *
   * Idempotency (`idempotencyKey`, per `idempotencyScope`, for 24 h): a replay
   * with the same request gets the first create's sandbox (replayed: true), or
   * its failure as the same error; one with another request is refused
   * (IdempotencyMismatchError); one that arrives while the first is in flight
   * waits for it. A create refused before it started (bad input, no capacity)
   * or cancelled by its caller gives its key back, so a retry creates.
   */
  async createSandbox(input: CreateSandboxInput, signal: AbortSignal): Promise<{ sandbox: SandboxRecord; replayed: boolean }> {
    throwIfAborted(signal);
    // 1. Validate: no side effects.
    const { template, snapshot } = this.resolveSource(input);
    const shape = this.validateShape(template, snapshot, input);
    validateCreateInput(input);
    if (snapshot) await this.checkSnapshotCompat(snapshot, signal);
    const rec = this.newRecord(template, snapshot, shape, input);
    // 2. Admit: the key first (a replay must not need capacity), then capacity.
    let claim: KeyClaim | null = null;
    if (input.idempotencyKey !== undefined) {
      const held = await this.claimKey(input, rec.id, signal);
      if ('replay' in held) return { sandbox: held.replay, replayed: true };
      claim = held.claim;
    }
    try {
      this.checkCapacity(shape.memoryMib);
      throwIfAborted(signal);
      this.store.insertSandbox(rec);
    } catch (err) {
      if (claim) this.finishKey(claim, null);
      throw err;
    }
    // 3. Work. The sandbox's lock is held from here, while a warm snapshot is built too.
    try {
      const sandbox = await this.lock.run(rec.id, 'create', () => this.startSandbox(rec, template, snapshot, signal));
      if (claim) this.finishKey(claim, { state: 'created' });
      return { sandbox, replayed: false };
    } catch (err) {
      if (claim) {
        const code = err instanceof HearthError ? err.code : 'internal';
        this.finishKey(claim, code === 'aborted' ? null : { state: 'failed', errorCode: code, errorMessage: errorMessage(err) });
      }
      throw err;
    }
  }

  /** Where the VM of a stored, admitted create comes from, then the launch itself. */
  private async startSandbox(rec: SandboxRecord, template: Template, snapshot: SnapshotRecord | null, signal: AbortSignal): Promise<SandboxRecord> {
    let lease: WarmLease | null = null;
    try {
      let source: LaunchSource;
      if (snapshot) {
        source = { kind: 'restore', template, snapshot };
      } else if (!this.config.warmTemplates) {
        source = { kind: 'boot', template };
      } else {
        try {
          lease = await this.warmLease(template, rec.vcpus, rec.memoryMib, signal);
          if (!lease) this.log.info({ template: template.id, vcpus: rec.vcpus, memoryMib: rec.memoryMib }, `template ${template.id} keeps ${this.warmCap()} warm shapes, all in use: this create cold-boots and keeps no snapshot`);
        } catch (err) {
          if (signal.aborted) {
            this.markFailed(rec, 'create cancelled while waiting for the template\'s warm snapshot');
            throw abortError(signal);
          }
          this.log.warn({ template: template.id, err: errorMessage(err) }, 'no warm snapshot; cold boot');
        }
        source = lease ? { kind: 'restore', template, snapshot: lease.snapshot } : { kind: 'boot', template };
      }
      return await this.starts.run(() => this.doCreate(rec, source, signal));
    } finally {
      lease?.release();
    }
  }

  /**
   * A user's snapshot taken under another VMM set-up (accelerator, CPU model,
   * VMM release) cannot be loaded here: a 409 naming the difference, before
   * anything is acquired (never a 400, never a restore that fails half-way).
   */
  private async checkSnapshotCompat(snapshot: SnapshotRecord, signal: AbortSignal): Promise<void> {
    if (snapshot.compat === null) return;
    const here = await this.vmmCompat(signal);
    if (snapshot.compat === here) return;
    const diffs = compatDifferences(snapshot.compat, here);
    throw new ConflictError(`snapshot ${snapshot.id}${snapshot.name ? ` (${snapshot.name})` : ''} cannot be restored on this host: it was taken with ${diffs.join(', ')}; take a new snapshot here`);
  }

  /** Refuse (503) rather than overcommit host memory past the configured ratio. Paused sandboxes use none. */
  private checkCapacity(memoryMib: number, count = 1): void {
    const used = this.store.listSandboxes({ states: ACTIVE_STATES }).reduce((sum, s) => sum + s.memoryMib, 0);
    const cap = this.config.capacityMemoryMib;
    if (used + memoryMib * count > cap) {
      throw new CapacityError(`host capacity reached: running sandboxes use ${used} MiB of guest memory and this needs ${memoryMib * count} MiB more; the limit is ${cap} MiB (host RAM × overcommit ratio). Pause or destroy sandboxes, or raise memoryOvercommit`);
    }
    // What the host really has left: available memory, data-dir space, CPU load (issue #14).
    const h = this.config.headroom;
    const why = h ? headroomRefusal(h.sample(), h.thresholds, memoryMib, count) : null;
    if (why) throw new CapacityError(`host capacity reached: ${why}. Pause or destroy sandboxes, or change the admission thresholds`);
  }

  private async doCreate(rec: SandboxRecord, source: LaunchSource, signal: AbortSignal): Promise<SandboxRecord> {
    const journal = this.store.journalBegin(rec.id, 'create', 'start');
    const steps = new StepTimer(source.kind === 'boot' ? 'create (boot)' : 'create (restore)', (step) => this.store.journalStep(journal, step));
    try {
      const live = await launch(this.deps, this.ledger, rec, source, steps, signal);
      // The timeout counts from here, not from the request: a slow start does not eat into it.
      const now = Date.now();
      transition(this.store, rec, 'running', {
        startedAt: new Date(now).toISOString(), endAt: new Date(now + rec.lifecycle.timeoutSec * 1000).toISOString(), timings: { op: steps.op, steps: steps.steps },
      });
      this.live.set(rec.id, live);
      this.watchExit(rec.id, live);
      steps.log(this.log, rec.id, 'ok');
      return rec;
    } catch (err) {
      steps.log(this.log, rec.id, 'failed');
      const failedAt = steps.steps.at(-1)?.[0] ?? 'start';
      const cleanupErrors = await this.ledger.release(rec, this.releaseHolding);
      const reason = `create failed at ${failedAt}: ${errorMessage(err)}` +
        (cleanupErrors.length ? `; cleanup: ${cleanupErrors.join('; ')}` : '');
      this.markFailed(rec, reason);
      this.log.error({ sandbox: rec.id, err: errorMessage(err), cleanupErrors }, reason);
      // Bad input and cancellation keep their own error; host trouble is reported with the sandbox id and step.
      if (err instanceof HearthError && err.code !== 'host_failure') throw err;
      throw new HostFailureError(`sandbox ${rec.id}: ${reason}`, { cause: err });
    } finally {
      this.store.journalEnd(journal);
    }
  }

  // ---------------------------------------------------------------- idempotency keys

  /**
   * Claim the create's idempotency key, or answer from the create that holds
   * it: its sandbox (a replay), its failure, a 422 for another request, or
   * (while it runs here) wait for it and look again.
   */
  private async claimKey(input: CreateSandboxInput, sandboxId: string, signal: AbortSignal): Promise<{ claim: KeyClaim } | { replay: SandboxRecord }> {
    const key = input.idempotencyKey!;
    const scope = input.idempotencyScope ?? '';
    const requestHash = input.requestHash ?? hashCreateInput(input);
    const id = `${scope}\0${key}`;
    for (;;) {
      throwIfAborted(signal);
      const held = this.store.claimIdempotencyKey({ scope, key, requestHash, sandboxId }, new Date(Date.now() - IDEMPOTENCY_TTL_MS).toISOString());
      if (!held) {
        let resolve!: () => void;
        const inFlight = new Promise<void>((r) => { resolve = r; });
        this.keysInFlight.set(id, inFlight);
        return { claim: { scope, key, sandboxId, done: () => { if (this.keysInFlight.get(id) === inFlight) this.keysInFlight.delete(id); resolve(); } } };
      }
      if (held.requestHash !== null && held.requestHash !== requestHash) throw new IdempotencyMismatchError(key);
      const inFlight = this.keysInFlight.get(id);
      if (held.state === 'pending' && inFlight) { await abortable(inFlight, signal); continue; }
      const first = this.store.getSandbox(held.sandboxId);
      // Its sandbox is gone (purged, or a key burned by an older daemon): the key is free again.
      if (!first) { this.store.releaseIdempotencyKey(scope, key, held.sandboxId); continue; }
      const replayNote = `(the create first sent with Idempotency-Key ${JSON.stringify(key)} failed; a new key tries again)`;
      if (held.state === 'failed') {
        const code = (held.errorCode ?? 'internal') as ErrorCode;
        throw new HearthError(ERROR_CODES.has(code) ? code : 'internal', `${held.errorMessage ?? 'create failed'} ${replayNote}`);
      }
      // Settled before outcomes were recorded, or interrupted by a restart: the sandbox says how it went.
      if (first.state === 'failed' && first.startedAt === null) throw new HostFailureError(`sandbox ${first.id}: ${first.endReason ?? 'create failed'} ${replayNote}`);
      if (first.state === 'creating') throw new ConflictError(`the create first sent with Idempotency-Key ${JSON.stringify(key)} (sandbox ${first.id}) is still in progress; retry later`);
      return { replay: first };
    }
  }

  /** The create that claimed a key ended: record its outcome, or (null) give the key back; then wake who waits. */
  private finishKey(claim: KeyClaim, outcome: { state: 'created' } | { state: 'failed'; errorCode: string; errorMessage: string } | null): void {
    try {
      if (outcome) this.store.settleIdempotencyKey(claim.scope, claim.key, claim.sandboxId, outcome);
      else this.store.releaseIdempotencyKey(claim.scope, claim.key, claim.sandboxId);
    } finally {
      claim.done();
    }
  }

  // ---------------------------------------------------------------- template builds

  /**
   * A sandbox for a template build (src/templates/builder.ts): a cold boot of
   * `base` (a template record that may not be stored: a layer to build on), at
   * the given shape, with the host's default network policy; internal, so it
   * is not listed. Capacity is checked as for any create. The caller destroys it.
   */
  async startBuildSandbox(base: Template, shape: { vcpus: number; memoryMib: number }, buildId: string, signal: AbortSignal): Promise<SandboxRecord> {
    throwIfAborted(signal);
    const rec = this.newRecord(base, null, { ...shape, timeoutSec: this.config.maxTimeoutSec },
      { templateId: base.id, metadata: { 'hearth.internal': 'template-build', 'hearth.build': buildId } });
    this.checkCapacity(shape.memoryMib);
    this.store.insertSandbox(rec);
    return this.lock.run(rec.id, 'create', () => this.starts.run(() => this.doCreate(rec, { kind: 'boot', template: base }, signal)));
  }

  /**
   * Flush the guest's writes and copy a running sandbox's disk to a standalone
   * image at `outPath` (a reflink where the data dir has them): a template
   * layer, taken between build steps while nothing runs in the guest.
   */
  async captureDisk(id: string, outPath: string, signal: AbortSignal): Promise<void> {
    await this.lock.run(id, 'snapshot', async () => {
      const rec = this.get(id);
      const live = this.mustLive(id);
      if (!rec.agent) throw new ConflictError(`sandbox ${id} has no agent`);
      await this.deps.agent(rec.agent, rec.agentToken).sync(signal);
      await this.deps.storage.flatten(live.disk, outPath, signal);
    });
  }

  /** The agent endpoint and token of a running sandbox (the template builder talks to its build sandbox directly). */
  agentOf(id: string): { endpoint: AgentEndpoint; token: string } {
    const rec = this.get(id);
    if (rec.state !== 'running' || !rec.agent) throw new ConflictError(`sandbox ${id} is ${rec.state}, not running`);
    return { endpoint: rec.agent, token: rec.agentToken };
  }

  // ---------------------------------------------------------------- warm templates

  private warmCap(): number { return this.config.warmShapesPerTemplate ?? DEFAULT_WARM_SHAPES_PER_TEMPLATE; }

  /**
   * The template's warm snapshot for a VM shape: boot once, wait for the agent,
   * snapshot, throw the build VM away. Concurrent callers share one build. For
   * the daemon's warm-up at start; creates hold a lease instead (warmLease).
   */
  async templateSnapshot(template: Template, vcpus: number, memoryMib: number, signal: AbortSignal): Promise<SnapshotRecord> {
    const lease = await this.warmLease(template, vcpus, memoryMib, signal);
    if (!lease) throw new ConflictError(`template ${template.id} keeps ${this.warmCap()} warm shapes and every one is in use; ${vcpus} vCPU / ${memoryMib} MiB is not kept`);
    lease.release();
    return lease.snapshot;
  }

  /**
   * A hold on the template's warm snapshot for this shape (found, or built and
   * shared by every caller that waits for it), or null when the template
   * already keeps as many shapes as allowed and none of them can go.
   */
  private async warmLease(template: Template, vcpus: number, memoryMib: number, signal: AbortSignal): Promise<WarmLease | null> {
    if (signal.aborted) throw abortError(signal);
    await this.vmmCompat(signal);
    if (signal.aborted) throw abortError(signal);
    const warmKey = this.warmKey(template);
    const found = this.store.findTemplateSnapshot(template.id, warmKey, vcpus, memoryMib);
    if (found) {
      this.store.touchSnapshot(found.id);
      return Promise.resolve(this.holdWarm(found));
    }
    const key = `${template.id}/${warmKey}/${vcpus}/${memoryMib}`;
    let build = this.warming.get(key);
    if (!build) {
      if (!this.makeRoom(template, warmKey)) return Promise.resolve(null);
      build = this.startBuild(key, template, vcpus, memoryMib);
    }
    return this.waitForBuild(build, signal);
  }

  private holdWarm(snapshot: SnapshotRecord): WarmLease {
    this.warmUses.set(snapshot.id, (this.warmUses.get(snapshot.id) ?? 0) + 1);
    let held = true;
    return {
      snapshot,
      release: () => {
        if (!held) return;
        held = false;
        const n = (this.warmUses.get(snapshot.id) ?? 1) - 1;
        if (n > 0) this.warmUses.set(snapshot.id, n); else this.warmUses.delete(snapshot.id);
      },
    };
  }

  /**
   * Room for one more shape of `template` within warmShapesPerTemplate (builds
   * in flight count): remove the least recently used snapshots that no create
   * is restoring from (other images' first). The template's own shape (the one
   * the daemon warms at start) is never removed this way. False: none can go.
   */
  private makeRoom(template: Template, warmKey: string): boolean {
    const rows = this.store.listTemplateSnapshots(template.id);
    const building = [...this.warming.values()].filter((b) => b.templateId === template.id).length;
    const excess = rows.length + building + 1 - this.warmCap();
    if (excess <= 0) return true;
    const isDefault = (s: SnapshotRecord): boolean => s.imageHash === warmKey && s.vcpus === template.vcpus && s.memoryMib === template.memoryMib;
    const candidates = rows
      .filter((s) => !this.warmUses.has(s.id) && !isDefault(s) && this.baseUsers(s.dir).length === 0)
      .sort((a, b) => Number(a.imageHash === warmKey) - Number(b.imageHash === warmKey));
    if (candidates.length < excess) return false;
    for (const s of candidates.slice(0, excess)) {
      this.log.info({ template: template.id, snapshot: s.id, vcpus: s.vcpus, memoryMib: s.memoryMib, lastUsedAt: s.lastUsedAt }, `template ${template.id}: dropping the least recently used warm shape (${s.vcpus} vCPU, ${s.memoryMib} MiB) to keep ${this.warmCap()}`);
      this.dropTemplateSnapshotNow(s);
    }
    return true;
  }

  /** The row goes at once (no create finds it any more), the files in the background. */
  private dropTemplateSnapshotNow(s: SnapshotRecord): Promise<void> {
    this.store.deleteSnapshot(s.id);
    const removal = removeSnapshotFiles(s).catch((err: unknown) => this.log.error({ snapshot: s.id, dir: s.dir, err: errorMessage(err) }, 'could not remove a warm snapshot\'s files'));
    this.inBackground(removal);
    return removal;
  }

  private inBackground(p: Promise<void>): void {
    this.background.add(p);
    void p.finally(() => this.background.delete(p));
  }

  private startBuild(key: string, template: Template, vcpus: number, memoryMib: number): WarmBuild {
    const build: WarmBuild = { templateId: template.id, ac: new AbortController(), waiters: new Set(), promise: Promise.resolve(null as unknown as SnapshotRecord) };
    // An abandoned build stops being the one new callers join at once (its cleanup may take a while).
    const forget = (): void => { if (this.warming.get(key) === build) this.warming.delete(key); };
    build.ac.signal.addEventListener('abort', forget, { once: true });
    this.warming.set(key, build);
    build.promise = this.buildTemplateSnapshot(template, vcpus, memoryMib, build);
    this.inBackground(build.promise.then(forget, forget));
    return build;
  }

  /**
   * Wait for a shared build on this caller's signal. The build runs while at
   * least one caller waits; when the last one leaves, it is aborted (and
   * removes everything it made). Callers still waiting when it finishes are
   * each handed a lease before any other code runs, so the new snapshot cannot
   * be removed between its making and their restores.
   */
  private waitForBuild(build: WarmBuild, signal: AbortSignal): Promise<WarmLease> {
    const waiter: { lease: WarmLease | null } = { lease: null };
    build.waiters.add(waiter);
    return new Promise<WarmLease>((resolve, reject) => {
      const leave = (): void => {
        // Already handed a lease: this caller gets it (and releases it) whatever its signal says.
        if (!build.waiters.delete(waiter)) return;
        reject(abortError(signal));
        if (build.waiters.size === 0) build.ac.abort(new Error('every create waiting for this warm snapshot went away'));
      };
      signal.addEventListener('abort', leave, { once: true });
      build.promise.then((snap) => {
        signal.removeEventListener('abort', leave);
        if (waiter.lease) resolve(waiter.lease);
        // Joined after the hand-over (its row was removed meanwhile): nothing to restore from.
        else if (build.waiters.delete(waiter)) reject(new ConflictError(`warm snapshot ${snap.id} was removed as it was made`));
      }, (err: unknown) => {
        signal.removeEventListener('abort', leave);
        waiter.lease?.release();
        if (build.waiters.delete(waiter) || waiter.lease) reject(err);
      });
      if (signal.aborted) leave();
    });
  }

  /**
   * Boot a build VM, capture it into a directory of its own, record it, and
   * destroy the VM. Cancelled (every waiting create left): the VM, its disk and
   * slot, the partial snapshot and the build's sandbox row go. Too slow or
   * failed: cleaned up like any failed create (its failed row stays, for the reason).
   */
  private async buildTemplateSnapshot(template: Template, vcpus: number, memoryMib: number, build: WarmBuild): Promise<SnapshotRecord> {
    const t0 = performance.now();
    const cancelled = build.ac.signal;
    const signal = AbortSignal.any([cancelled, AbortSignal.timeout(this.config.bootTimeoutMs + 60_000)]);
    const warmKey = this.warmKey(template);
    const rec = this.newRecord(template, null, { vcpus, memoryMib, timeoutSec: 600 }, { templateId: template.id, metadata: { 'hearth.internal': 'template-build' } });
    this.store.insertSandbox(rec);
    let booted = false;
    try {
      // Cancelled while waiting for a start slot: doCreate stops at its first step and fails the row.
      await this.lock.run(rec.id, 'create', () => this.starts.run(() => this.doCreate(rec, { kind: 'boot', template, warm: true }, signal)));
      booted = true;
      const snap = await this.lock.run(rec.id, 'snapshot', async () => {
        const live = this.mustLive(rec.id);
        // A directory per build: a rebuilt shape never reuses a removed one's path (loop devices are shared by path).
        const dir = this.layout.warmSnapshot(template.id, warmKey, vcpus, memoryMib, randomId(8)).dir;
        return captureSnapshot(this.deps, rec, template, live, { kind: 'template', name: null, dir }, new StepTimer('template snapshot'), signal);
      });
      if (cancelled.aborted) {
        await removeSnapshotFiles(snap);
        throw abortError(cancelled);
      }
      // Recorded under the warm key: a changed image, kernel arguments or network backend makes a new one.
      const made: SnapshotRecord = { ...snap, sandboxId: null, imageHash: warmKey };
      this.store.insertSnapshot(made);
      for (const w of build.waiters) w.lease = this.holdWarm(made);
      build.waiters.clear();
      this.log.info({ template: template.id, vcpus, memoryMib, ms: Math.round(performance.now() - t0) }, `template ${template.id} warm snapshot ready (${vcpus} vCPU, ${memoryMib} MiB)`);
      return made;
    } catch (err) {
      if (cancelled.aborted) this.log.info({ template: template.id, vcpus, memoryMib }, `template ${template.id}: warm snapshot build (${vcpus} vCPU, ${memoryMib} MiB) cancelled: no create waits for it any more`);
      throw err;
    } finally {
      if (booted) await this.destroy(rec.id, AbortSignal.timeout(60_000), 'template build finished').catch((err: unknown) => this.log.error({ err: errorMessage(err) }, 'template build VM cleanup failed'));
      if (cancelled.aborted) this.forgetBuildRecord(rec.id);
    }
  }

  /** A cancelled build leaves no row either, once nothing of it is left on the host. */
  private forgetBuildRecord(id: string): void {
    const r = this.store.getSandbox(id);
    if (!r || this.lock.isBusy(id) || (r.state !== 'destroyed' && r.state !== 'failed') || this.ledger.list(id).length > 0) return;
    if (/; (cleanup|release failed): /.test(r.endReason ?? '')) return;
    this.store.deleteSandbox(id);
  }

  /**
   * What a template snapshot depends on beyond its shape: the image, the kernel
   * and its arguments, the network backend (a guest booted on user-mode
   * networking has another NIC set-up and address than one booted in a netns
   * slot), the VMM (QEMU and Firecracker snapshots are not interchangeable) and
   * what that VMM checks before it loads one (its snapshot-compatibility key:
   * accelerator, CPU model, version), so a host whose KVM/TCG choice or VMM
   * release changed builds new warm snapshots instead of failing every create.
   * Needs vmmCompat() resolved first.
   */
  private warmKey(template: Template): string {
    if (this.compatKey === null) throw new Error('warmKey before vmmCompat() resolved');
    return createHash('sha256')
      .update(`${template.imageHash}\n${template.kernelPath}\n${template.kernelArgs}\n${this.deps.network.kind}\n${this.deps.vmm.kind}\n${this.compatKey}`)
      .digest('hex');
  }

  /** The VMM driver's snapshot-compatibility key (asked once; it does not change while hearthd runs). */
  private async vmmCompat(signal: AbortSignal): Promise<string> {
    this.compatKey ??= await this.deps.vmm.snapshotCompat(signal);
    return this.compatKey;
  }

  /** Resolves when no warm-template build or snapshot removal is in flight (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.background.size > 0) await Promise.allSettled([...this.background]);
  }

  /** A template's warm snapshots, most recently used first. */
  async listTemplateSnapshots(templateId: string): Promise<TemplateSnapshotInfo[]> {
    const template = this.template(templateId);
    await this.vmmCompat(AbortSignal.timeout(30_000));
    const warmKey = this.warmKey(template);
    const rows = this.store.listTemplateSnapshots(template.id).reverse();
    return Promise.all(rows.map(async ({ lastUsedAt, ...snapshot }) => ({
      snapshot, lastUsedAt, sizeBytes: await dirUsage(snapshot.dir), current: snapshot.imageHash === warmKey, inUse: this.warmUses.get(snapshot.id) ?? 0,
    })));
  }

  /** Remove every warm snapshot of a template being deleted (409 while a create restores from one or one is being built). */
  async dropTemplateSnapshots(templateId: string): Promise<void> {
    if ([...this.warming.values()].some((b) => b.templateId === templateId)) throw new ConflictError(`a warm snapshot of template ${templateId} is being built; retry when it is done`);
    const rows = this.store.listTemplateSnapshots(templateId);
    const busy = rows.filter((s) => (this.warmUses.get(s.id) ?? 0) > 0);
    if (busy.length) throw new ConflictError(`template ${templateId}'s warm snapshot ${busy[0]!.id} is in use by a create; retry when it finishes`);
    for (const s of rows) await this.dropTemplateSnapshotNow(s);
  }

  /** Remove one of a template's warm snapshots (409 while a create restores from it). The next create of its shape builds it again. */
  async deleteTemplateSnapshot(templateId: string, snapshotId: string): Promise<void> {
    const template = this.template(templateId);
    const snap = this.store.getSnapshot(snapshotId);
    if (!snap || snap.kind !== 'template' || snap.templateId !== template.id) throw new NotFoundError(`template ${template.id} has no warm snapshot ${snapshotId}`);
    const users = this.warmUses.get(snap.id) ?? 0;
    if (users > 0) throw new ConflictError(`warm snapshot ${snap.id} is in use by ${users} create${users === 1 ? '' : 's'} restoring from it; retry when they finish`);
    await this.dropTemplateSnapshotNow(snap);
  }

  /**
   * Drop template snapshots made from an older image (their disks no longer
   * match the template) or incomplete, and warm-snapshot directories no row
   * names (a build the daemon stopped in the middle). At start, before any build.
   */
  async pruneTemplateSnapshots(): Promise<void> {
    await this.vmmCompat(AbortSignal.timeout(30_000));
    for (const s of this.store.listSnapshots({ kind: 'template' })) {
      const t = this.store.getTemplate(s.templateId);
      if ((!t || this.warmKey(t) !== s.imageHash || !(await snapshotComplete(s))) && this.baseUsers(s.dir).length === 0) {
        await removeSnapshotFiles(s);
        this.store.deleteSnapshot(s.id);
      }
    }
    if (this.warming.size > 0) return;
    const known = new Set(this.store.listSnapshots({ kind: 'template' }).map((s) => s.dir));
    const root = this.layout.templatesDir;
    for (const t of await readdir(root).catch(() => [] as string[])) {
      for (const name of await readdir(this.layout.templateDir(t)).catch(() => [] as string[])) {
        const dir = join(this.layout.templateDir(t), name);
        if (!isWarmDirName(name) || known.has(dir)) continue;
        await removeTree(dir).catch((err: unknown) => this.log.warn({ dir, err: errorMessage(err) }, 'could not remove a stray warm snapshot directory'));
      }
    }
  }

  // ---------------------------------------------------------------- pause / resume

  /**
   * Pause a running sandbox: memory and disk kept (the default; resume
   * continues every process), or with `memory: false` the disk alone (a
   * filesystem-only pause: the guest syncs, the VM stops; resume boots from the disk).
   */
  async pause(id: string, signal: AbortSignal, opts: { memory?: boolean } = {}): Promise<SandboxRecord> {
    const memory = opts.memory !== false;
    this.get(id);
    return this.lock.tryRun(id, 'pause', async () => {
      const rec = this.get(id);
      if (rec.state === 'paused') throw new ConflictError(`sandbox ${id} is already paused`);
      assertTransition(id, rec.state, 'pausing');
      const live = this.mustLive(id);
      transition(this.store, rec, 'pausing');
      for (const quiesce of this.pauseQuiescers) await quiesce(id).catch(() => undefined);
      const journal = this.store.journalBegin(id, 'pause', 'start');
      const steps = new StepTimer(memory ? 'pause' : 'pause (filesystem)', (s) => this.store.journalStep(journal, s));
      try {
        const out = await pauseSandbox(this.deps, this.ledger, this.releaseHolding, rec, live, steps, signal, { memory });
        if (out.ok) {
          this.dropLive(id);
          transition(this.store, rec, 'paused', { pausedAt: new Date().toISOString(), agent: null, timings: { op: steps.op, steps: steps.steps } });
          steps.log(this.log, id, 'ok');
          return rec;
        }
        steps.log(this.log, id, 'failed');
        if (out.resumed) {
          transition(this.store, rec, 'running');
          const how = memory ? 'the sandbox was resumed and is still running' : 'the sandbox is still running';
          throw new HostFailureError(`pause of ${id} failed; ${how}: ${errorMessage(out.error)}`, { cause: out.error });
        }
        this.dropLive(id);
        rec.timings = { op: steps.op, steps: steps.steps };
        this.markFailed(rec, out.reason);
        throw new HostFailureError(`sandbox ${id}: ${out.reason}`, { cause: out.error });
      } finally {
        this.store.journalEnd(journal);
      }
    });
  }

  /**
   * Resume a paused sandbox: a restore of its memory capture, or a cold boot
   * from its disk when the pause was filesystem-only or `memory: false` asks
   * for one (E2B's "reboot": the memory capture is ignored). `endAt` counts
   * from the moment it runs again.
   */
  async resume(id: string, signal: AbortSignal, timeoutSec?: number, opts: { memory?: boolean } = {}): Promise<SandboxRecord> {
    this.get(id);
    return this.lock.tryRun(id, 'resume', async () => {
      const rec = this.get(id);
      if (rec.state === 'running') throw new ConflictError(`sandbox ${id} is already running`);
      assertTransition(id, rec.state, 'resuming');
      this.checkCapacity(rec.memoryMib);
      const template = this.template(rec.templateId);
      transition(this.store, rec, 'resuming');
      const journal = this.store.journalBegin(id, 'resume', 'start');
      const boot = opts.memory === false || captureKeptMemory(this.ledger, id) === false;
      const steps = new StepTimer(boot ? 'resume (boot)' : 'resume', (s) => this.store.journalStep(journal, s));
      try {
        const live = await this.starts.run(() => resumeSandbox(this.deps, this.ledger, this.releaseHolding, rec, template, steps, signal, { boot }));
        this.store.atomically(() => {
          transition(this.store, rec, 'running', {
            pausedAt: null, endAt: new Date(Date.now() + (timeoutSec ?? rec.lifecycle.timeoutSec) * 1000).toISOString(), timings: { op: steps.op, steps: steps.steps },
          });
          commitResume(this.ledger, rec);
        });
        await removeTree(this.layout.sandbox(id).paused.dir).catch((err: unknown) => this.log.warn({ sandbox: id, err: errorMessage(err) }, 'could not remove the paused files of a resumed sandbox'));
        this.live.set(id, live);
        this.watchExit(id, live);
        steps.log(this.log, id, 'ok');
        return rec;
      } catch (err) {
        steps.log(this.log, id, 'failed');
        transition(this.store, rec, 'paused', { agent: null, timings: { op: steps.op, steps: steps.steps } });
        if (err instanceof HearthError && err.code !== 'host_failure') throw err;
        throw new HostFailureError(`resume of ${id} failed; the sandbox is still paused and can be resumed again: ${errorMessage(err)}`, { cause: err });
      } finally {
        this.store.journalEnd(journal);
      }
    });
  }

  /**
   * E2B's connect: resume if paused (`memory: false`: by a boot from the disk,
   * E2B's "reboot"), and make sure the sandbox lives at least `timeoutSec` more.
   */
  async connect(id: string, timeoutSec: number, signal: AbortSignal, opts: { memory?: boolean } = {}): Promise<{ rec: SandboxRecord; resumed: boolean }> {
    const rec = this.get(id);
    if (rec.state === 'paused') return { rec: await this.resume(id, signal, timeoutSec, opts), resumed: true };
    if (rec.state !== 'running') throw new NotFoundError(`sandbox ${id} is ${rec.state}`);
    this.extend(rec, timeoutSec);
    return { rec, resumed: false };
  }

  // ---------------------------------------------------------------- snapshots and forks

  async snapshot(id: string, name: string | null, signal: AbortSignal): Promise<SnapshotRecord> {
    this.get(id);
    return this.lock.tryRun(id, 'snapshot', async () => {
      const rec = this.get(id);
      if (rec.state !== 'running') throw new ConflictError(`sandbox ${id} is ${rec.state}; only a running sandbox can be snapshotted`);
      return this.capture(rec, 'named', name, signal);
    });
  }

  private async capture(rec: SandboxRecord, kind: 'named' | 'fork', name: string | null, signal: AbortSignal): Promise<SnapshotRecord> {
    const journal = this.store.journalBegin(rec.id, 'snapshot', 'start');
    const steps = new StepTimer('snapshot', (s) => this.store.journalStep(journal, s));
    try {
      const snap = await captureSnapshot(this.deps, rec, this.template(rec.templateId), this.mustLive(rec.id), { kind, name }, steps, signal);
      this.store.insertSnapshot(snap);
      steps.log(this.log, `${rec.id} → ${snap.id}`, 'ok');
      return snap;
    } catch (err) {
      steps.log(this.log, rec.id, 'failed');
      throw err;
    } finally {
      this.store.journalEnd(journal);
    }
  }

  /**
   * Snapshots are standalone copies (the file backends clone them into each
   * sandbox), so deleting one never breaks a sandbox started from it.
   */
  async deleteSnapshot(id: string): Promise<void> {
    const snap = this.getSnapshot(id);
    const users = this.baseUsers(snap.dir);
    if (users.length) throw new ConflictError(`snapshot ${snap.id} is the origin of sandboxes whose disks read its image: ${users.join(', ')}; destroy them first`);
    this.store.deleteSnapshot(snap.id);
    await removeSnapshotFiles(snap);
  }

  /** N new sandboxes from the current state of a running one; the parent only freezes for the capture. */
  async fork(id: string, count: number, timeoutSec: number | undefined, signal: AbortSignal): Promise<ForkResult[]> {
    if (!Number.isInteger(count) || count < 1 || count > this.config.limits.maxForks) {
      throw new InvalidArgumentError(`count must be an integer from 1 to ${this.config.limits.maxForks}`, 'count');
    }
    this.checkCapacity(this.get(id).memoryMib, count);
    const snap = await this.lock.tryRun(id, 'fork', async () => {
      const rec = this.get(id);
      if (rec.state !== 'running') throw new ConflictError(`sandbox ${id} is ${rec.state}; only a running sandbox can be forked`);
      return this.capture(rec, 'fork', null, signal);
    });
    try {
      const template = this.template(snap.templateId);
      const parent = this.get(id);
      return await Promise.all(Array.from({ length: count }, async (): Promise<ForkResult> => {
        const rec = this.newRecord(template, snap, { vcpus: snap.vcpus, memoryMib: snap.memoryMib, timeoutSec: timeoutSec ?? this.config.defaultTimeoutSec },
          {
            templateId: template.id, envVars: parent.envVars, metadata: { ...parent.metadata, 'hearth.forkOf': id },
            // Children keep the parent's egress; each gets its own traffic token if the parent had one.
            network: { ...(parent.netPolicy.egress ? { egress: parent.netPolicy.egress } : {}), publicTraffic: parent.netPolicy.trafficToken === null },
          });
        rec.snapshotId = null;
        this.store.insertSandbox(rec);
        try {
          return { sandbox: await this.lock.run(rec.id, 'create', () => this.starts.run(() => this.doCreate(rec, { kind: 'restore', template, snapshot: snap }, signal))) };
        } catch (err) {
          return { error: { code: err instanceof HearthError ? err.code : 'internal', message: errorMessage(err) } };
        }
      }));
    } finally {
      this.store.deleteSnapshot(snap.id);
      await removeSnapshotFiles(snap);
    }
  }

  // ---------------------------------------------------------------- moves between cluster nodes

  /**
   * Why this host would refuse to start (create or resume) a sandbox of this
   * much memory right now (the admission of create and resume), or null.
   */
  admissionRefusal(memoryMib: number): string | null {
    try { this.checkCapacity(memoryMib); return null; } catch (err) { return errorMessage(err); }
  }

  /**
   * Hands a paused sandbox to another node (cluster mode, src/cluster/move.ts):
   * `send` streams its capture there and returns once that node owns it (the
   * cluster's placement says so); then nothing of it stays here. If `send`
   * fails, nothing here changed: it is still paused on this node. Holds the
   * sandbox's lock throughout, so it cannot be resumed or destroyed mid-move.
   */
  async moveOut(id: string, send: (exp: PausedExport, dir: string) => Promise<void>): Promise<void> {
    this.get(id);
    await this.lock.tryRun(id, 'move', async () => {
      const rec = this.get(id);
      if (rec.state !== 'paused') throw new ConflictError(`sandbox ${id} is ${rec.state}; only a paused sandbox can move to another node`);
      const { exp, dir } = await describePaused(this.ledger, rec, this.template(rec.templateId));
      await send(exp, dir);
      await this.forgetMoved(rec, dir);
    });
  }

  /**
   * Drops this node's copy of paused sandboxes the cluster places on another
   * node: a move committed there whose last step (forgetting it here) a crash
   * cut short. Only paused copies: a move never takes any other.
   */
  async dropMovedAway(ids: readonly string[]): Promise<string[]> {
    const dropped: string[] = [];
    for (const id of ids) {
      await this.lock.tryRun(id, 'move', async () => {
        const rec = this.store.getSandbox(id);
        if (rec?.state !== 'paused') return;
        await this.forgetMoved(rec, this.ledger.find(id, 'paused')?.holding.dir ?? null);
        dropped.push(id);
      }).catch((err: unknown) => this.log.warn({ sandbox: id, err: errorMessage(err) }, 'could not drop the copy of a sandbox that moved away'));
    }
    return dropped;
  }

  private async forgetMoved(rec: SandboxRecord, capture: string | null): Promise<void> {
    forgetRows(this.store, this.ledger, rec);
    this.log.info({ sandbox: rec.id }, 'sandbox moved to another node; its files here are removed');
    // Its rows are gone, so no request reaches it here; files a failed removal leaves are the reconciler's (no record).
    for (const dir of [capture, this.layout.sandbox(rec.id).dir]) {
      if (dir) await removeTree(dir).catch((err: unknown) => this.log.warn({ sandbox: rec.id, dir, err: errorMessage(err) }, 'could not remove the files of a sandbox that moved away'));
    }
  }

  /**
   * Takes a paused sandbox from another node: refuses (409/503) what this host
   * cannot resume (another image, an incompatible disk backend, no room), then
   * `receive` writes its capture into the paused dir, the record and holdings
   * are written, and `commit` makes this node its owner in the cluster. Any
   * failure removes what was received and written: the sandbox stays where it was.
   */
  async importPaused(exp: PausedExport, receive: (pausedDir: string) => Promise<void>, commit: () => Promise<void>): Promise<SandboxRecord> {
    const id = exp.record.id;
    // The lock also keeps the reconciler away from the directory while it fills.
    return this.lock.tryRun(id, 'import', async () => {
      if (this.store.getSandbox(id)) throw new ConflictError(`sandbox ${id} already exists on this node`);
      const template = this.store.getTemplate(exp.template.id);
      const refused = importRefusal(exp, template, this.deps.storage.kind);
      if (refused || !template) throw new ConflictError(refused ?? `no template ${exp.template.id}`);
      this.checkCapacity(exp.record.memoryMib);
      const paths = this.layout.sandbox(id);
      let rec: SandboxRecord | null = null;
      try {
        await mkdir(paths.paused.dir, { recursive: true });
        await receive(paths.paused.dir);
        rec = await adoptPaused(this.store, this.ledger, exp, template, paths.dir, paths.paused.dir);
        await commit();
        this.log.info({ sandbox: id }, 'sandbox moved here from another node');
        return rec;
      } catch (err) {
        if (rec) forgetRows(this.store, this.ledger, rec);
        await removeTree(paths.dir).catch(() => undefined);
        throw err;
      }
    });
  }

  /**
   * A template's warm snapshots for another node to copy (cluster mode,
   * src/cluster/pull.ts), with the set-up they were made under: a node reuses
   * one only under the same VMM set-up, network backend and kernel arguments.
   */
  async warmExports(templateId: string, signal: AbortSignal): Promise<WarmExport[]> {
    const template = this.template(templateId);
    await this.vmmCompat(signal);
    const warmKey = this.warmKey(template);
    const out: WarmExport[] = [];
    for (const snap of this.store.listTemplateSnapshots(template.id)) {
      if (snap.imageHash !== warmKey || !(await snapshotComplete(snap))) continue;
      const { files } = await regularFiles(snap.dir);
      out.push({ snapshot: { ...snap, dir: '' }, setup: this.warmSetup(template), files });
    }
    return out;
  }

  /** The directory of one of a template's warm snapshots (an export reads it). */
  warmDir(templateId: string, snapshotId: string): string {
    const snap = this.store.getSnapshot(snapshotId);
    if (snap?.kind !== 'template' || snap.templateId !== templateId) throw new NotFoundError(`no warm snapshot ${snapshotId} of template ${templateId}`);
    return snap.dir;
  }

  /**
   * Stores a warm snapshot copied from another node: refused (409) unless it
   * was made under this host's set-up; skipped when this node already has one
   * of that shape. `receive` writes its files into a staging directory, renamed
   * into place before the record is written, so a half-received copy is never used.
   */
  async importWarm(exp: WarmExport, receive: (dir: string) => Promise<void>, signal: AbortSignal): Promise<SnapshotRecord | null> {
    const template = this.template(exp.snapshot.templateId);
    await this.vmmCompat(signal);
    const mine = this.warmSetup(template);
    const diffs = (Object.keys(mine) as (keyof WarmSetup)[]).filter((k) => mine[k] !== exp.setup[k]);
    if (diffs.length) throw new ConflictError(`the warm snapshot of ${template.id} was made under another set-up (${diffs.join(', ')}); this node builds its own`);
    const warmKey = this.warmKey(template);
    const { vcpus, memoryMib } = exp.snapshot;
    if (this.store.findTemplateSnapshot(template.id, warmKey, vcpus, memoryMib)) return null;
    const paths = this.layout.warmSnapshot(template.id, warmKey, vcpus, memoryMib, randomId(8));
    await mkdir(paths.staging, { recursive: true });
    try {
      await receive(paths.staging);
      await rename(paths.staging, paths.dir);
    } catch (err) {
      await removeTree(paths.staging).catch(() => undefined);
      throw err;
    }
    // Under this node's warm key: its kernel path differs, the kernel (the same image) does not.
    const snap: SnapshotRecord = { ...exp.snapshot, id: newSnapshotId(), sandboxId: null, imageHash: warmKey, dir: paths.dir, createdAt: new Date().toISOString(), compat: this.compatKey };
    this.store.insertSnapshot(snap);
    this.log.info({ template: template.id, vcpus, memoryMib }, `template ${template.id}: warm snapshot copied from another node`);
    return snap;
  }

  /** What a warm snapshot depends on beyond the template's image (the warm key's parts, the kernel's path aside). */
  private warmSetup(template: Template): WarmSetup {
    return { kernelArgs: template.kernelArgs, network: this.deps.network.kind, vmm: this.deps.vmm.kind, compat: this.compatKey ?? '' };
  }

  // ---------------------------------------------------------------- destroy

  /** Idempotent; works on any state, including failed, paused and half-created. */
  async destroy(id: string, signal: AbortSignal, reason = 'destroyed by request'): Promise<void> {
    this.get(id);
    await this.lock.run(id, 'destroy', async () => {
      throwIfAborted(signal);
      const rec = this.get(id);
      if (rec.state === 'destroyed') return;
      const prior = rec.state === 'failed' ? rec.endReason : null;
      transition(this.store, rec, 'destroying');
      const journal = this.store.journalBegin(id, 'destroy', 'start');
      const steps = new StepTimer('destroy', (s) => this.store.journalStep(journal, s));
      this.adoptLegacy(rec);
      const errors = await this.ledger.release(rec, this.releaseHolding, { steps });
      if (errors.length === 0) this.dropLive(id);
      this.store.journalEnd(journal);
      steps.log(this.log, id, errors.length ? 'failed' : 'ok');
      rec.timings = { op: 'destroy', steps: steps.steps };
      if (errors.length) {
        this.markFailed(rec, `${reason}; release failed: ${errors.join('; ')}`);
        throw new HostFailureError(`sandbox ${id}: could not release everything: ${errors.join('; ')}`);
      }
      transition(this.store, rec, 'destroyed', { ...withoutSecrets(rec), endedAt: new Date().toISOString(), endReason: prior ? `${prior}; then ${reason}` : reason, agent: null });
      this.purgeIfDue(rec.id);
    });
  }

  /**
   * How each kind of holding is released (src/core/holdings.ts calls this in
   * reverse recorded order, each on a signal of its own). Works from this
   * process's objects (a live VMM, a slot) or from the ledger alone (after a
   * restart).
   */
  private readonly releaseHolding: Releaser = async (h: Holding, { sandboxId, signal, inMemory }) => {
    switch (h.kind) {
      case 'vmm': {
        const live = inMemory as LiveSandbox | undefined;
        if (live) { live.stopping = true; await live.vmm.stop(signal); return; }
        if (h.handle) { await this.stopRecorded(h.handle); return; }
        // An intent: the daemon died around the spawn. Whatever runs from this run dir is the VM it started.
        for (const vm of (await this.deps.vmm.list?.()) ?? []) {
          if (vm.runDir === h.runDir) await this.stopRecorded({ kind: this.deps.vmm.kind, pid: vm.pid, runDir: h.runDir });
        }
        return;
      }
      case 'memory':
        await unlink(h.path).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err; });
        return;
      case 'disk':
        // Attached from a paused capture: it goes back there, never deleted.
        if (h.from) { await this.deps.storage.reclaim(h.from, signal); return; }
        await this.deps.storage.remove(h.disk ?? this.intendedDisk(sandboxId, h.base), signal);
        return;
      case 'slot':
        await this.deps.network.release((inMemory as Slot | undefined) ?? this.deps.network.restore(h.network));
        return;
      case 'paused':
        await removeTree(h.dir);
        return;
      case 'dir':
        await removeTree(h.path);
        return;
    }
  };

  /** The disk a create meant to make (an intent the daemon died in): what `remove` needs to find it on the host. */
  private intendedDisk(sandboxId: string, base: BaseImage | undefined): RootDisk {
    return { sandboxId, backend: this.deps.storage.kind, devicePath: '', files: [], base: base ?? { id: '', path: '', sizeBytes: 0 } };
  }

  /**
   * A sandbox recorded before the holdings ledger existed: its record's fields
   * (and a complete paused capture) become its holdings, so it is released the same way.
   */
  private adoptLegacy(rec: SandboxRecord, pausedToken: DetachedDisk | null = null): void {
    if (this.ledger.list(rec.id).length > 0 || (!rec.vmm && !rec.disk && !rec.network && !pausedToken && !ACTIVE_STATES.includes(rec.state))) return;
    const paths = this.layout.sandbox(rec.id);
    for (const h of legacyHoldings(rec, paths.dir, paths.paused.dir, pausedToken)) this.ledger.record(rec, h);
  }

  /** Live sandboxes whose disks read an image in `dir` (only backends that keep reading their base). */
  /** Sandboxes whose disk reads a base image under `dir` (dm only; empty where disks are standalone copies). */
  diskBaseUsers(dir: string): string[] { return this.baseUsers(dir); }

  private baseUsers(dir: string): string[] {
    if (!this.deps.storage.readsBase) return [];
    const inside = (p: string | undefined): boolean => p !== undefined && p.startsWith(`${dir}/`);
    return this.store.listSandboxes({ states: [...ACTIVE_STATES, 'paused', 'failed'] }).filter((s) => this.ledger.list(s.id).some(({ holding: h }) =>
      (h.kind === 'disk' && (inside(h.disk?.base?.path) || inside(h.base?.path) || inside(h.from?.base.path))) || (h.kind === 'paused' && inside(h.disk?.base.path)))).map((s) => s.id);
  }

  /** The VM of a sandbox is gone (paused, destroyed, failed): connections to it are dead, tell the proxies. */
  private dropLive(id: string): void {
    if (this.live.delete(id)) this.events.emit('vm-gone', id);
  }

  private mustLive(id: string): LiveSandbox {
    const live = this.live.get(id);
    if (!live) throw new ConflictError(`sandbox ${id} has no running VM in this daemon`);
    return live;
  }

  /** A VMM that exits on its own (guest panic, OOM kill) fails the sandbox and releases its resources. */
  private watchExit(id: string, live: LiveSandbox): void {
    void live.vmm.exited.then(async (info) => {
      if (this.closed || live.stopping || this.live.get(id) !== live) return;
      const reason = `VMM exited unexpectedly (code ${info.code}, signal ${info.signal})`;
      this.log.warn({ sandbox: id, ...info }, reason);
      await this.lock.run(id, 'reap', async () => {
        if (this.live.get(id) !== live) return;
        const rec = this.get(id);
        const errors = await this.ledger.release(rec, this.releaseHolding, { steps: new StepTimer('reap') });
        this.dropLive(id);
        this.markFailed(rec, errors.length ? `${reason}; release failed: ${errors.join('; ')}` : reason);
      });
    });
  }

  /**
   * A failed sandbox never runs again (it can only be destroyed): its secrets
   * go now, even if releasing its resources failed and their handles stay.
   */
  private markFailed(rec: SandboxRecord, reason: string): void {
    transition(this.store, rec, 'failed', { ...withoutSecrets(rec), endReason: reason, endedAt: new Date().toISOString(), agent: null });
    this.purgeIfDue(rec.id);
  }

  // ---------------------------------------------------------------- retention

  /**
   * Keep ended sandboxes (destroyed, or failed with nothing left on the host)
   * this long after they end, then purge them (purgeEnded). 0: an ended
   * sandbox's rows are deleted as it ends.
   */
  setEndedRetention(hours: number): void {
    if (!Number.isFinite(hours) || hours < 0) throw new ConfigError(`ended sandbox retention must be a number of hours >= 0, got ${hours}`, 'endedRetentionHours');
    this.endedRetentionMs = hours * 3_600_000;
  }

  /**
   * Delete the ended sandboxes whose retention passed, with their journal and
   * idempotency rows (named snapshots taken from them stay), skipping any that
   * an operation holds. Returns their ids; nothing before setEndedRetention.
   */
  purgeEnded(now = Date.now()): string[] {
    if (this.endedRetentionMs === null) return [];
    const cutoff = new Date(now - this.endedRetentionMs).toISOString();
    const { purged, scrubbed } = this.store.purgeEndedSandboxes(cutoff, (id) => this.lock.isBusy(id));
    if (scrubbed) this.log.warn({ scrubbed }, `retention: dropped the secrets still kept by ${scrubbed} ended sandboxes`);
    return purged;
  }

  /** Retention 0: the sandbox that just ended goes at once (it stays if it still holds host resources). */
  private purgeIfDue(id: string): void {
    if (this.endedRetentionMs === 0) this.store.purgeEndedSandbox(id);
  }

  // ---------------------------------------------------------------- timeouts

  /** Sets endAt = now + timeout (may shorten, as E2B's setTimeout does). */
  setTimeout(id: string, timeoutSec: number): SandboxRecord {
    const { maxTimeoutSec } = this.config;
    if (!Number.isInteger(timeoutSec) || timeoutSec < 0 || timeoutSec > maxTimeoutSec) {
      throw new InvalidArgumentError(`timeout must be an integer number of seconds from 0 to ${maxTimeoutSec}`, 'timeout');
    }
    const rec = this.get(id);
    if (rec.state !== 'running') throw new ConflictError(`sandbox ${id} is ${rec.state}, not running`);
    rec.endAt = new Date(Date.now() + timeoutSec * 1000).toISOString();
    this.store.updateSandbox(rec);
    return rec;
  }

  /** Destroy running sandboxes whose timeout passed (checked every second). Paused ones don't expire. */
  startExpiry(intervalMs = 1000): void {
    this.expiryTimer = setInterval(() => {
      const now = Date.now();
      for (const s of this.store.listSandboxes({ states: ['running'] })) {
        if (Date.parse(s.endAt) > now || this.lock.isBusy(s.id)) continue;
        if (s.lifecycle.onTimeout === 'pause') {
          this.log.info({ sandbox: s.id, keepMemory: s.lifecycle.keepMemory }, `timeout reached; pausing (onTimeout: pause${s.lifecycle.keepMemory ? '' : ', filesystem only'})`);
          this.pause(s.id, AbortSignal.timeout(300_000), { memory: s.lifecycle.keepMemory })
            .catch((err: unknown) => this.log.error({ sandbox: s.id, err: errorMessage(err) }, 'timeout pause failed'));
        } else {
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
   * After a daemon (re)start: adopt every running sandbox whose VMM is alive and
   * whose agent answers; keep paused sandboxes whose files are complete; release
   * and fail the rest. Operations caught half-way (a journal row left) are undone.
   */
  async recover(signal: AbortSignal): Promise<{ adopted: string[]; paused: string[]; failed: string[] }> {
    const adopted: string[] = [];
    const paused: string[] = [];
    const failed: string[] = [];
    const interrupted = new Map(this.store.listJournal().map((j) => [j.sandboxId, j]));
    for (const rec of this.store.listSandboxes({ states: [...ACTIVE_STATES, 'paused'] })) {
      const j = interrupted.get(rec.id);
      const template = this.store.getTemplate(rec.templateId);
      const pausedPaths = this.layout.sandbox(rec.id).paused;
      const legacyPaused = rec.state === 'paused' && template && await exists(pausedPaths.meta)
        ? await pausedDisk(pausedPaths.dir, rec, template) : null;
      this.adoptLegacy(rec, legacyPaused);
      const rows = this.ledger.list(rec.id);
      const vmmRow = rows.findLast((r) => r.holding.kind === 'vmm');
      const vmmHandle = vmmRow?.holding.kind === 'vmm' ? vmmRow.holding.handle : null;
      const slotH = rows.findLast((r) => r.holding.kind === 'slot')?.holding;
      const diskH = rows.findLast((r) => r.holding.kind === 'disk')?.holding;
      // A pause or snapshot interrupted before the VMM was stopped: the VM is whole, only its vCPUs may be frozen.
      const frozen = j !== undefined && ((j.op === 'pause' && rec.state === 'pausing' && BEFORE_STOP.has(j.step)) || (j.op === 'snapshot' && rec.state === 'running'));
      if ((rec.state === 'running' || frozen) && (!j || frozen) && vmmRow && vmmHandle && slotH?.kind === 'slot' && diskH?.kind === 'disk' && diskH.disk && !diskH.from && rec.agent) {
        const vmm = await this.deps.vmm.adopt(vmmHandle).catch(() => null);
        if (vmm && frozen) {
          await vmm.resume(AbortSignal.timeout(10_000)).catch((err: unknown) => this.log.warn({ sandbox: rec.id, err: errorMessage(err) }, 'recovery: resuming the vCPUs failed'));
          await removeTree(this.layout.sandbox(rec.id).pauseStaging).catch(() => undefined);
          // A paused capture the pause had begun (it cannot have: the VMM was not stopped yet) is dropped.
          await this.ledger.release(rec, this.releaseHolding, { which: (r) => r.holding.kind === 'paused' });
        }
        if (vmm && await this.deps.agent(rec.agent, rec.agentToken).health(signal)) {
          if (frozen) {
            if (rec.state !== 'running') transition(this.store, rec, 'running');
            this.log.warn({ sandbox: rec.id, op: j.op, step: j.step }, `recovery: the daemon stopped during ${j.op} (step ${j.step}) before the VM was stopped; resumed and adopted it`);
          }
          const live: LiveSandbox = { vmm, slot: this.deps.network.restore(slotH.network), disk: diskH.disk, stopping: false };
          this.ledger.attach(vmmRow.id, live);
          this.live.set(rec.id, live);
          this.watchExit(rec.id, live);
          adopted.push(rec.id);
          continue;
        }
      }
      // A complete paused capture: whatever was taken beyond it (a resume's VMM, slot, attached disk, memory
      // copy; a pause's slot) is released and the disk put back into it, so the sandbox can be resumed again.
      const capture = rows.findLast((r) => r.holding.kind === 'paused')?.holding;
      const complete = capture?.kind === 'paused' && capture.disk !== null && await exists(pausedAt(capture.dir).meta);
      if ((rec.state === 'paused' || rec.state === 'pausing' || rec.state === 'resuming') && complete) {
        const errors = await this.ledger.release(rec, this.releaseHolding, { which: beyondPaused });
        if (errors.length === 0) {
          const row = this.ledger.find(rec.id, 'paused')!;
          if (!row.holding.complete) this.ledger.update(rec, row.id, { ...row.holding, complete: true });
          if (rec.state !== 'paused') {
            transition(this.store, rec, 'paused', { agent: null });
            this.log.warn({ sandbox: rec.id, op: j?.op, step: j?.step }, `recovery: the daemon stopped during ${j?.op ?? rec.state} (step ${j?.step ?? '?'}); what it had taken was released and the sandbox is paused again`);
          }
          paused.push(rec.id);
          continue;
        }
        this.log.error({ sandbox: rec.id, errors }, 'recovery: could not put a paused sandbox back; it is failed');
      }
      const why = j ? `daemon stopped during ${j.op} (step ${j.step})`
        : rec.state === 'paused' ? 'paused files are missing or incomplete'
          : `daemon restarted and the VM of this ${rec.state} sandbox was gone`;
      const errors = await this.ledger.release(rec, this.releaseHolding, { steps: new StepTimer('recover') });
      this.markFailed(rec, errors.length ? `${why}; release failed: ${errors.join('; ')}` : why);
      failed.push(rec.id);
    }
    for (const j of interrupted.values()) this.store.journalEnd(j.id);
    await this.pruneTemplateSnapshots();
    this.log.info({ adopted, paused, failed }, `recovery: adopted ${adopted.length}, paused ${paused.length}, failed ${failed.length}`);
    return { adopted, paused, failed };
  }

  /**
   * Compare the host with the store and remove what has no owner: Hearth VMs
   * under this data dir that no live sandbox holds, sandbox directories of
   * sandboxes that ended, snapshot directories without a row, staging leftovers.
   * Runs after recover() at start and then periodically; the last report is kept.
   */
  async reconcile(): Promise<ReconcileReport> {
    const report: ReconcileReport = { at: new Date().toISOString(), killedVms: [], removedSandboxDirs: [], removedSnapshotDirs: [], errors: [] };
    const sandboxesRoot = this.layout.sandboxesDir;
    const mine = (runDir: string | undefined): boolean => this.layout.ownsRunDir(runDir);
    for (const vm of (await this.deps.vmm.list?.()) ?? []) {
      if (!mine(vm.runDir) || this.live.has(vm.sandboxId) || this.lock.isBusy(vm.sandboxId)) continue;
      const rec = this.store.getSandbox(vm.sandboxId);
      if (rec && ACTIVE_STATES.includes(rec.state) && rec.vmm?.pid === vm.pid) continue;
      try {
        await this.stopRecorded({ kind: this.deps.vmm.kind, pid: vm.pid, runDir: vm.runDir! });
        report.killedVms.push({ sandboxId: vm.sandboxId, pid: vm.pid });
      } catch (err) {
        report.errors.push(`vm ${vm.pid}: ${errorMessage(err)}`);
      }
    }
    for (const id of await readdir(sandboxesRoot).catch(() => [] as string[])) {
      if (this.live.has(id) || this.lock.isBusy(id)) continue;
      const rec = this.store.getSandbox(id);
      if (rec && rec.state !== 'destroyed' && rec.state !== 'failed') continue;
      await removeTree(this.layout.sandbox(id).dir).then(() => report.removedSandboxDirs.push(id), (err: unknown) => report.errors.push(`dir ${id}: ${errorMessage(err)}`));
    }
    const known = new Set(this.store.listSnapshots().map((s) => s.dir));
    const snapRoot = this.layout.snapshotsDir;
    for (const name of await readdir(snapRoot).catch(() => [] as string[])) {
      const dir = join(snapRoot, name);
      const staging = isStagingName(name);
      // A staging dir belongs to a capture in flight only while its sandbox's lock is held.
      if (known.has(dir) || (staging && [...this.live.keys()].some((id) => this.lock.isBusy(id)))) continue;
      await removeTree(dir).then(() => report.removedSnapshotDirs.push(name), (err: unknown) => report.errors.push(`snapshot dir ${name}: ${errorMessage(err)}`));
    }
    this.lastReconcile = report;
    if (report.killedVms.length || report.removedSandboxDirs.length || report.removedSnapshotDirs.length || report.errors.length) {
      this.log.warn(report, `reconcile: killed ${report.killedVms.length} orphan VMs, removed ${report.removedSandboxDirs.length} sandbox dirs and ${report.removedSnapshotDirs.length} snapshot dirs`);
    }
    return report;
  }

  lastReconcileReport(): ReconcileReport | null { return this.lastReconcile; }

  /**
   * Stop a VM known only from a record (restart, cleanup). One that is ours but
   * cannot be controlled (its control socket is gone) is killed by pid: its
   * slot and disk are released next, and must never be handed to another VM
   * while it still holds them (a tap stays busy, a disk stays written).
   */
  private async stopRecorded(handle: { kind: VmmKind; pid: number; runDir: string }): Promise<void> {
    let vmm: Vmm | null;
    try {
      vmm = await this.deps.vmm.adopt(handle);
    } catch (err) {
      // The driver checks the pid is still its VM of this run dir before it kills anything.
      if (!(await this.deps.vmm.forceKill(handle, AbortSignal.timeout(10_000)))) throw err;
      this.log.warn({ pid: handle.pid, err: errorMessage(err) }, 'a VM that could not be controlled was killed');
      return;
    }
    await vmm?.stop(AbortSignal.timeout(30_000));
  }

  startReconciler(intervalMs = 60_000): void {
    this.reconcileTimer = setInterval(() => {
      this.reconcile().catch((err: unknown) => this.log.error({ err: errorMessage(err) }, 'reconcile failed'));
    }, intervalMs);
    this.reconcileTimer.unref();
  }

  /** Stop background work. Running VMs are left running: a restarted daemon adopts them. */
  /**
   * Stop the timers and let go of every VM without stopping it: the next daemon
   * adopts them. A VM that exits afterwards is that daemon's business, not this one's.
   */
  close(): void {
    if (this.expiryTimer) clearInterval(this.expiryTimer);
    if (this.reconcileTimer) clearInterval(this.reconcileTimer);
    this.closed = true;
    for (const live of this.live.values()) live.vmm.detach?.();
    this.live.clear();
  }
}

async function dirUsage(dir: string): Promise<number> {
  let total = 0;
  try {
    for (const f of await readdir(dir)) total += (await stat(join(dir, f))).blocks * 512;
  } catch { /* gone */ }
  return total;
}

/**
 * One incarnation of a sandbox's VM: proxies key pooled connections by it, so a
 * keep-alive socket never outlives the VM (and slot) it was opened to.
 */
function leaseOf(rec: SandboxRecord): string {
  return `${rec.id}/${rec.vmm?.pid ?? 0}`;
}

const ERROR_CODES: ReadonlySet<string> = new Set<ErrorCode>(['not_found', 'invalid_argument', 'conflict', 'capacity', 'timeout', 'unauthenticated', 'aborted', 'host_failure', 'internal']);

/** Limits of a create's string maps (the API's schema has the same). */
const MAP_LIMITS = { entries: 256, keyLength: 256, valueLength: 16384 };

/**
 * The parts of a create the record does not check: env vars (as the agent
 * accepts them: a name without '=' or NUL, a value without NUL), metadata
 * ('hearth.' keys are the daemon's), lifecycle and the idempotency key. Pure.
 */
function validateCreateInput(input: CreateSandboxInput): void {
  checkStringMap(input.envVars, 'envVars', (k, v) => (k === '' || k.includes('=') || k.includes('\0') || v.includes('\0')
    ? `envVars: ${JSON.stringify(k)} is not a valid environment variable (a name is non-empty, without "=" or NUL; a value has no NUL)` : null));
  checkStringMap(input.metadata, 'metadata', (k) => (k.startsWith('hearth.') ? `metadata: keys starting with "hearth." are reserved (${JSON.stringify(k)})` : null));
  const l = input.lifecycle as unknown;
  if (l !== undefined) {
    if (l === null || typeof l !== 'object') throw new InvalidArgumentError('lifecycle must be an object', 'lifecycle');
    const { onTimeout, keepMemory, autoResume, autoExtend } = l as Record<string, unknown>;
    if (onTimeout !== undefined && onTimeout !== 'kill' && onTimeout !== 'pause') throw new InvalidArgumentError('lifecycle.onTimeout must be "kill" or "pause"', 'lifecycle.onTimeout');
    if (keepMemory !== undefined && typeof keepMemory !== 'boolean') throw new InvalidArgumentError('lifecycle.keepMemory must be a boolean', 'lifecycle.keepMemory');
    // As E2B: a filesystem-only pause is something to ask for, not a reaction to traffic (its resume reboots).
    if (keepMemory === false && onTimeout !== 'pause') throw new InvalidArgumentError('lifecycle.keepMemory (autoPauseMemory) false is only allowed when the timeout pauses (autoPause: true, lifecycle.onTimeout "pause")', 'lifecycle.keepMemory');
    if (keepMemory === false && autoResume === true) throw new InvalidArgumentError('lifecycle.autoResume cannot be true with keepMemory (autoPauseMemory) false: a filesystem-only pause reboots on resume and is resumed explicitly (connect or resume)', 'lifecycle.autoResume');
    if (autoResume !== undefined && typeof autoResume !== 'boolean') throw new InvalidArgumentError('lifecycle.autoResume must be a boolean', 'lifecycle.autoResume');
    if (autoExtend !== undefined && typeof autoExtend !== 'boolean') throw new InvalidArgumentError('lifecycle.autoExtend must be a boolean', 'lifecycle.autoExtend');
  }
  const publicTraffic = input.network?.publicTraffic as unknown;
  if (publicTraffic !== undefined && typeof publicTraffic !== 'boolean') throw new InvalidArgumentError('network.allowPublicTraffic must be a boolean', 'network.allowPublicTraffic');
  const key = input.idempotencyKey as unknown;
  if (key !== undefined && (typeof key !== 'string' || key.length < 1 || key.length > 200)) throw new InvalidArgumentError('the idempotency key must be 1 to 200 characters', 'idempotency-key');
}

function checkStringMap(m: Record<string, string> | undefined, field: string, bad: (k: string, v: string) => string | null): void {
  const value = m as unknown;
  if (value === undefined) return;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new InvalidArgumentError(`${field} must be an object of strings`, field);
  const entries = Object.entries(value as Record<string, unknown>);
  if (entries.length > MAP_LIMITS.entries) throw new InvalidArgumentError(`${field} may have at most ${MAP_LIMITS.entries} entries`, field);
  for (const [k, v] of entries) {
    if (typeof v !== 'string') throw new InvalidArgumentError(`${field}.${k} must be a string`, field);
    if (k.length > MAP_LIMITS.keyLength || v.length > MAP_LIMITS.valueLength) throw new InvalidArgumentError(`${field}: keys may have ${MAP_LIMITS.keyLength} characters and values ${MAP_LIMITS.valueLength}`, field);
    const why = bad(k, v);
    if (why) throw new InvalidArgumentError(why, field);
  }
}

/** JSON with object keys sorted at every level: equal values give equal text. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map((x: unknown) => canonicalJson(x === undefined ? null : x)).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonicalJson(x)}`).join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

/** SHA-256 of a request's canonical JSON: what an idempotency key is bound to. */
export function requestHashOf(body: unknown): string {
  return createHash('sha256').update(canonicalJson(body)).digest('hex');
}

function hashCreateInput(input: CreateSandboxInput): string {
  const { idempotencyKey: _k, idempotencyScope: _s, requestHash: _h, ...request } = input;
  return requestHashOf(request);
}
