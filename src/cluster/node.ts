/**
 * This hearthd as a cluster node (docs/cluster.md): registers and heartbeats
 * with its capacity, marks expired nodes down, mirrors every state change
 * of its own sandboxes into PostgreSQL, and refreshes its copy of the
 * cluster's API keys (src/cluster/keys.ts) on each heartbeat. PostgreSQL being unreachable never
 * blocks or fails a local operation: changes wait in a queue (the latest state
 * per sandbox) and everything is re-published once it answers again.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import type { Logger as PinoLogger } from 'pino';
import { TRANSITION_CHANNEL, type TransitionMessage } from '../core/state.js';
import type { SandboxRecord, SandboxState } from '../core/types.js';
import type { Store } from '../store/store.js';
import type { HostHeadroom } from '../core/headroom.js';
import { ClusterStore } from './pg-store.js';
import { ClusterKeyStore, localKeys, PgKeyTable } from './keys.js';
import type { NodeInfo, NodeReport, Placement, PlacementUpdate } from './types.js';
import type { PlacementRequest } from './placement.js';
import { localRegistry, registryFingerprint, sourceOfCreate, withLocal, type NodeRegistry } from './registry.js';

/** States whose guest memory is in use (paused sandboxes hold disk, not RAM). */
const MEMORY_STATES: readonly SandboxState[] = ['creating', 'running', 'pausing', 'resuming'];

export interface ClusterNodeOptions {
  nodeId: string;
  /** Empty until setAddress, when it comes from the listener. */
  address: string;
  databaseUrl: string;
  heartbeatMs: number;
  expiryMs: number;
  store: Store;
  log: PinoLogger;
  headroom: HostHeadroom;
  memoryTotalMib: number;
  version: string;
  /**
   * Paused sandboxes this node still has that the cluster places elsewhere (a
   * move committed on the other node, then this node died before forgetting
   * its copy): found after each re-publish, handed here to be dropped.
   */
  onMovedAway?: (ids: string[]) => Promise<unknown>;
  /** Where the node keeps its copy of the cluster's key hashes between starts (src/cluster/keys.ts); null: memory only. */
  keyCacheFile?: string | null;
  /** At most one read of the key table per this many ms for keys the copy does not have (default 250). */
  keyMissIntervalMs?: number;
}

export interface ClusterStatus {
  nodeId: string;
  address: string;
  /** Did the last PostgreSQL call succeed? */
  databaseReachable: boolean;
  lastHeartbeatAt: string | null;
  lastError: string | null;
  /** State changes waiting to be published. */
  pending: number;
  /** API keys this node accepts without asking PostgreSQL (its copy of the cluster's keys). */
  cachedKeys: number;
}

/**
 * Where a client's create goes (docs/cluster.md, "Placement"): this node, another
 * node, or nowhere (an answer for the client). `local` also when PostgreSQL does
 * not answer (creates then stay on the node asked), and when no node has room
 * but this node may take the create (its own admission answers 503).
 */
/** A template the chosen node must pull first (no node that holds it has room): from which node. */
export interface PullFirst { templateId: string; from: string }

export type CreateDecision =
  | { kind: 'local'; reason: 'chosen' | 'no-room' | 'database'; pull?: PullFirst }
  | { kind: 'forward'; node: NodeInfo; pull?: PullFirst }
  | { kind: 'refuse'; status: 404 | 503; errorCode: 'not_found' | 'capacity'; message: string };

export function placementUpdateOf(r: SandboxRecord): PlacementUpdate {
  return { sandboxId: r.id, state: r.state, templateId: r.templateId, memoryMib: r.memoryMib, vcpus: r.vcpus, metadata: { ...r.metadata }, createdAt: r.createdAt };
}

/** Default of ClusterNodeOptions.keyMissIntervalMs. */
export const KEY_MISS_INTERVAL_MS = 250;

export class ClusterNode {
  readonly db: ClusterStore;
  /** The cluster's API keys (PostgreSQL, with this node's copy of their hashes). */
  readonly keys: ClusterKeyStore;
  private readonly keyTable: PgKeyTable;
  private readonly pending = new Map<string, PlacementUpdate>();
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | null = null;
  private needResync = true;
  /** The fingerprint of the templates and snapshots last published (null: publish them all on the next tick). */
  private registryPublished: string | null = null;
  private reachable = false;
  private lastHeartbeatAt: string | null = null;
  private lastError: string | null = null;
  private closed = false;
  /** No expiring of other nodes before this (ms): after this node (re)connects, the others get one expiry period to heartbeat too. */
  private expireAfter = 0;
  private readonly onTransition = (msg: unknown): void => {
    const m = msg as TransitionMessage;
    if (m.store !== this.o.store) return; // another daemon in this process (tests)
    this.pending.set(m.rec.id, placementUpdateOf(m.rec));
    this.kick();
  };

  constructor(private readonly o: ClusterNodeOptions) {
    this.db = new ClusterStore(o.databaseUrl);
    this.keyTable = new PgKeyTable(this.db.pool, o.nodeId);
    this.keys = new ClusterKeyStore(this.keyTable, {
      missIntervalMs: o.keyMissIntervalMs ?? KEY_MISS_INTERVAL_MS,
      cacheFile: o.keyCacheFile ?? null,
      // Before PostgreSQL first answers (and with no saved copy), the node's own keys: they are about to be imported.
      seed: () => localKeys(o.store),
      onCacheFileError: (err) => o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'cluster: cannot save the copy of the API keys; it is kept in memory only'),
    });
  }

  /** Migrate, register and publish; if PostgreSQL does not answer yet, the node starts anyway and keeps trying. */
  async start(): Promise<void> {
    subscribe(TRANSITION_CHANNEL, this.onTransition);
    try {
      await this.db.migrate();
      await this.tick();
    } catch (err) {
      this.failed(err);
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => { void this.tick().catch((err: unknown) => this.failed(err)).finally(() => this.schedule()); }, this.o.heartbeatMs);
    this.timer.unref();
  }

  private failed(err: unknown): void {
    const msg = err instanceof Error ? err.message : String(err);
    if (this.reachable || this.lastError !== msg) this.o.log.warn({ err: msg, pending: this.pending.size }, 'cluster: PostgreSQL call failed; local operations go on, changes are queued');
    this.reachable = false;
    this.lastError = msg;
    this.needResync = true;
    this.registryPublished = null;
  }

  /** The node's own report: capacity from its SQLite and the host. */
  report(): NodeReport {
    const live = this.o.store.listSandboxes({ states: ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying'] });
    const h = this.o.headroom.sample();
    const warm = this.o.store.listTemplates().filter((t) => this.o.store.listTemplateSnapshots(t.id).length > 0).map((t) => t.id);
    return {
      id: this.o.nodeId, address: this.o.address, version: this.o.version,
      memoryTotalMib: this.o.memoryTotalMib,
      memoryUsedMib: live.filter((s) => MEMORY_STATES.includes(s.state)).reduce((n, s) => n + s.memoryMib, 0),
      memoryAvailableMib: h.availableMemoryMib, diskFreeMib: h.freeDiskMib, loadPerCpu: h.cpus > 0 ? h.load1 / h.cpus : 0, cpus: h.cpus,
      sandboxes: live.length, warmTemplates: warm,
    };
  }

  /** One heartbeat: register/refresh, re-publish everything if needed, flush queued changes, expire silent nodes. */
  private async tick(): Promise<void> {
    if (this.closed) return;
    const { wasUp } = await this.db.heartbeat(this.report());
    this.lastHeartbeatAt = new Date().toISOString();
    if (!wasUp) { this.needResync = true; this.registryPublished = null; }
    if (!this.reachable) {
      this.o.log.info({ node: this.o.nodeId, resync: this.needResync }, 'cluster: PostgreSQL reachable; node registered');
      // PostgreSQL may have been away for everyone: their old heartbeats say nothing about them yet.
      this.expireAfter = Date.now() + this.o.expiryMs;
      // This node's SQLite keys join the cluster's (by id; a key deleted in the cluster stays deleted).
      const added = await this.keyTable.importKeys(localKeys(this.o.store));
      if (added > 0) this.o.log.info({ node: this.o.nodeId, keys: added }, `cluster: imported ${added} API keys from this node's database`);
    }
    this.reachable = true;
    this.lastError = null;
    await this.keys.sync();
    await this.flush();
    await this.publishRegistry();
    if (Date.now() < this.expireAfter) return;
    const down = await this.db.expireNodes(this.o.expiryMs);
    for (const id of down) this.o.log.warn({ node: id, expiryMs: this.o.expiryMs }, `cluster: node ${id} missed its heartbeats; marked down, its sandboxes are unknown until it returns`);
  }

  private kick(): void {
    if (this.closed || !this.reachable || this.flushing) return;
    void this.flush().catch((err: unknown) => this.failed(err));
  }

  /** Publishes queued changes (or everything, after a failure or a re-registration); one flush at a time. */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    const run = async (): Promise<void> => {
      await Promise.resolve(); // never finish synchronously: `flushing` is set below first
      try {
        if (this.needResync) {
          // Everything the node has, ended sandboxes included (so a destroy while PostgreSQL was down is seen).
          const all = this.o.store.listSandboxes().map(placementUpdateOf);
          this.pending.clear();
          await this.db.resync(this.o.nodeId, all);
          this.needResync = false;
          this.o.log.info({ node: this.o.nodeId, sandboxes: all.length }, 'cluster: re-published this node\'s sandboxes');
          const paused = all.filter((p) => p.state === 'paused').map((p) => p.sandboxId);
          const away = await this.db.placedElsewhere(this.o.nodeId, paused);
          if (away.length) {
            this.o.log.warn({ node: this.o.nodeId, sandboxes: away }, 'cluster: paused sandboxes here are placed on other nodes (moved); dropping the copies here');
            await this.o.onMovedAway?.(away);
          }
        }
        while (this.pending.size > 0) {
          const [id, p] = this.pending.entries().next().value as [string, PlacementUpdate];
          await this.db.publish(this.o.nodeId, p);
          // A newer change of the same sandbox that arrived meanwhile stays queued.
          if (this.pending.get(id) === p) this.pending.delete(id);
        }
      } finally {
        this.flushing = null;
      }
    };
    this.flushing = run();
    return this.flushing;
  }

  /**
   * Publishes this node's templates and named snapshots when they differ from
   * what was last published (a diff of its SQLite on each heartbeat: the
   * template builder, the store and the manager need no hook), or all of them
   * after a resync; the node's rows its SQLite no longer has are deleted.
   */
  async publishRegistry(): Promise<void> {
    const r = localRegistry(this.o.store, this.o.nodeId);
    const fp = registryFingerprint(r);
    if (fp === this.registryPublished) return;
    await this.db.syncRegistry(this.o.nodeId, r);
    if (this.registryPublished === null) this.o.log.info({ node: this.o.nodeId, templates: r.templates.length, snapshots: r.snapshots.length }, 'cluster: published this node\'s templates and snapshots');
    this.registryPublished = fp;
  }

  /** This node's own templates and named snapshots, from its SQLite. */
  localRegistry(): NodeRegistry { return localRegistry(this.o.store, this.o.nodeId); }
  /** Every node's templates and named snapshots, as published. */
  registry(): Promise<NodeRegistry> { return this.db.registry(); }
  /** The published records a create's name can resolve to. */
  registryNamed(name: string): Promise<NodeRegistry> { return this.db.registryNamed(name); }

  /** Waits until queued changes are published (tests, shutdown); rejects if PostgreSQL fails. */
  async settle(): Promise<void> {
    await this.flush();
    if (this.pending.size > 0 || this.needResync) await this.flush();
  }

  status(): ClusterStatus {
    return {
      nodeId: this.o.nodeId, address: this.o.address, databaseReachable: this.reachable, lastHeartbeatAt: this.lastHeartbeatAt, lastError: this.lastError,
      pending: this.pending.size, cachedKeys: this.keys.cachedIds().length,
    };
  }

  nodes(): Promise<NodeInfo[]> { return this.db.nodes(); }
  placements(): Promise<Placement[]> { return this.db.placements(); }
  placement(id: string): ReturnType<ClusterStore['placement']> { return this.db.placement(id); }
  place(req: PlacementRequest): Promise<NodeInfo | null> { return this.db.place(req); }
  /** Makes this node the owner of a sandbox moved here from `from` (the move's commit point). */
  claim(rec: SandboxRecord, from: string): Promise<boolean> { return this.db.claim(placementUpdateOf(rec), from, this.o.nodeId); }

  /**
   * Places a create named `name` (a template by id or alias, or a named
   * snapshot): among the nodes holding it (the registry, with this node's own
   * records from its SQLite), by capacity (placement.ts); the default image's
   * template anywhere. The chosen node's memory is reserved until its next heartbeat.
   */
  async decideCreate(name: string, memoryMB: number | undefined, minFreeDiskMib: number): Promise<CreateDecision> {
    try {
      const src = sourceOfCreate(name, withLocal(await this.registryNamed(name), this.localRegistry(), this.o.nodeId));
      if (src.kind === 'missing') return { kind: 'refuse', status: 404, errorCode: 'not_found', message: `template or snapshot ${name} does not exist on any node of the cluster` };
      const memoryMib = memoryMB ?? src.memoryMib;
      const only = src.kind === 'nodes' ? src.nodes : null;
      const chosen = await this.place({ templateId: src.kind === 'nodes' ? src.id : src.templateId, memoryMib, minFreeDiskMib, nodes: only });
      if (chosen) return chosen.id === this.o.nodeId ? { kind: 'local', reason: 'chosen' } : { kind: 'forward', node: chosen };
      if (!only || only.includes(this.o.nodeId)) return { kind: 'local', reason: 'no-room' };
      const up = new Set((await this.nodes()).filter((n) => n.state === 'up').map((n) => n.id));
      const live = only.filter((id) => up.has(id));
      const what = src.kind === 'nodes' ? `${src.what} ${name}` : name;
      const on = (ids: string[]): string => `node${ids.length > 1 ? 's' : ''} ${ids.join(', ')}`;
      if (live.length === 0) return { kind: 'refuse', status: 404, errorCode: 'not_found', message: `${what} exists only on ${on(only)}, which ${only.length > 1 ? 'are' : 'is'} down; no up node has it` };
      if (src.kind === 'nodes' && src.what === 'template') {
        // No holder has room: a node that has it pulls the template (docs/cluster.md, "Pulling a template").
        const elsewhere = await this.place({ templateId: src.id, memoryMib, minFreeDiskMib, nodes: null });
        const pull = { templateId: src.id, from: live[0]! };
        if (elsewhere) return elsewhere.id === this.o.nodeId ? { kind: 'local', reason: 'chosen', pull } : { kind: 'forward', node: elsewhere, pull };
      }
      return { kind: 'refuse', status: 503, errorCode: 'capacity', message: `${what} exists only on ${on(live)}, and none of them has room for ${memoryMib} MiB now` };
    } catch (err) {
      this.o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'cluster: placement failed (PostgreSQL); creating on this node');
      return { kind: 'local', reason: 'database' };
    }
  }

  get nodeId(): string { return this.o.nodeId; }
  get address(): string { return this.o.address; }
  /** The address, once the listener is up (when nodeAddress is not configured). */
  setAddress(url: string): void { this.o.address = url; }

  /**
   * Stops heartbeats and mirroring. The node row stays `up` until its heartbeat
   * expires and another node marks it down: a stopped hearthd's VMs keep running.
   */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    unsubscribe(TRANSITION_CHANNEL, this.onTransition);
    await this.flushing?.catch(() => undefined);
    await this.keys.flushUses().catch(() => undefined);
    await this.db.close().catch(() => undefined);
  }
}
