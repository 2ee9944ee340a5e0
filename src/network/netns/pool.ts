/**
 * NetnsSlots: the production network backend (docs/networking.md). A pool of
 * pre-created slots, each a network namespace holding the guest's tap (same
 * name, addresses and MACs in every slot, so one memory snapshot restores in
 * any slot), a veth pair to the host with a per-slot /30, and an nftables
 * table with NAT and the sandbox's policy. A background filler keeps
 * `poolSize` slots ready, so `acquire()` takes one without waiting for set-up;
 * `release()` resets a slot (new connection generation, default policy,
 * conntrack flushed where the tool exists) and returns it to the pool.
 *
 * Life cycle in hearthd: `await start()` (load rows, reap leftovers, host
 * table, reset free slots) → `manager.recover()` (calls restore() for every
 * adopted VM, release(restore()) for the rest) → `await finishRecovery()`
 * (frees used slots nobody claimed) → … → `close()` (slots stay for the next
 * start; VMs keep running). `destroyAll()` removes everything (tests, uninstall).
 */
import { existsSync } from 'node:fs';
import { CapacityError, ConfigError, HostFailureError, InternalError, InvalidArgumentError, errorMessage, throwIfAborted } from '../../core/errors.js';
import type { Logger } from '../../core/log.js';
import type { CommandRunner } from '../../util/exec.js';
import { netRunner } from './run.js';
import type { VmNetwork } from '../../vmm/types.js';
import type { NetworkSlots, Slot } from '../types.js';
import {
  AddressPlan, DEFAULT_HOST_RANGE, GUEST_MAC, SlotNames, TAP_NAME, cidrsOverlap, ipToInt, parseCidr, tapGuestKernelArgs, type SlotAddresses,
} from './addressing.js';
import { SlotHost } from './host.js';
import {
  DEFAULT_ALWAYS_DENY, DEFAULT_EGRESS, normalizeEgress, normalizeExposure, type EgressPolicy, type Exposure, type SlotPolicy,
} from './policy.js';
import { deleteTableScript, hostRuleset, slotRuleset } from './rules.js';
import type { SlotRow, SlotStore } from './store.js';

export const DEFAULT_AGENT_PORT = 49983;

export interface NetnsSlotsOptions {
  store: SlotStore;
  runner?: CommandRunner;
  log?: Logger;
  /** Guest port of the agent: always exposed. Default 49983. */
  agentPort?: number;
  /** Private range for the per-slot veth /30s. Default 10.201.0.0/16 (16384 slots). */
  hostRange?: string;
  /** Free slots kept ready ahead of demand. Default 4. */
  poolSize?: number;
  /** Free slots beyond which a released slot is removed instead of kept. Default 2 × poolSize. */
  maxIdle?: number;
  /** Upper bound on slots (free + used). Default min(range capacity, 1024). */
  maxSlots?: number;
  /**
   * The host interface where NATed sandbox traffic leaves (named by the
   * operator). Default null: no sandbox reaches anything beyond the host.
   */
  egressInterface?: string | null;
  /** Policy a fresh or reset slot gets. Default internet on, no lists. */
  defaultEgress?: Partial<EgressPolicy>;
  /** Guest ports the host may reach. Default 'all' (any port a sandbox listens on can be proxied). */
  defaultExposure?: Exposure;
  /** Operator-level deny list, on top of the slot range itself. Default DEFAULT_ALWAYS_DENY. */
  alwaysDeny?: readonly string[];
  /** Resolvers for the guest (hearth.dns=); they must be reachable under the egress policy. */
  dns?: readonly string[];
  /** Name tag, for pools that share a host (tests). Default ''. */
  tag?: string;
  netnsDir?: string;
  /** File existence check (tests inject one). */
  exists?: (path: string) => boolean;
  /** Pause after a failed background set-up before the filler retries. Default 1000 ms. */
  fillRetryMs?: number;
}

/** A netns slot: what the VMM attaches to and where the host reaches the guest. */
export class NetnsSlot implements Slot {
  readonly vmNetwork: VmNetwork;
  /**
   * Kernel command-line parameters that configure the guest's eth0 (the same for
   * every slot; the manager appends them to the template's arguments on boot).
   */
  readonly guestKernelArgs: string;

  constructor(
    readonly id: number,
    readonly netnsName: string,
    readonly hostIf: string,
    readonly hostAddr: string,
    readonly nsAddr: string,
    dns: readonly string[] = [],
  ) {
    this.vmNetwork = { kind: 'tap', netnsName, tapName: TAP_NAME, mac: GUEST_MAC };
    this.guestKernelArgs = tapGuestKernelArgs(dns);
  }

  /** Every guest TCP port is reached at the slot namespace's veth address (DNAT to the guest). */
  guestAddress(guestPort: number): { host: string; port: number } {
    if (!Number.isInteger(guestPort) || guestPort < 1 || guestPort > 65535) throw new InvalidArgumentError(`port ${guestPort} is not 1..65535`, 'port');
    return { host: this.nsAddr, port: guestPort };
  }
}

export interface PoolStats {
  free: number;
  used: number;
  /** Used rows from before a restart that no VM has claimed yet. */
  pendingRecovery: number;
  creating: number;
  resetting: number;
  total: number;
  poolSize: number;
  maxSlots: number;
}

export interface StartReport {
  reaped: { netns: string[]; links: string[] };
  /** Free slots found and reset. */
  reused: number;
  /** Rows whose host objects were missing or stale, removed. */
  dropped: number[];
  /** Used slots waiting for restore() or finishRecovery(). */
  pending: number[];
}

/** Which host objects a pool would reap: its own names whose slot number no row owns. */
export function reapPlan(names: SlotNames, owned: ReadonlySet<number>, netns: readonly string[], links: readonly string[]): { netns: string[]; links: string[] } {
  return {
    links: links.filter((l) => { const n = names.slotOfHostIf(l); return n !== undefined && !owned.has(n); }),
    netns: netns.filter((s) => { const n = names.slotOfNetns(s); return n !== undefined && !owned.has(n); }),
  };
}

const noopLog: Logger = {
  info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined,
  child: () => noopLog,
} as unknown as Logger;

export class NetnsSlots implements NetworkSlots {
  readonly kind = 'netns' as const;
  readonly names: SlotNames;
  readonly plan: AddressPlan;
  readonly host: SlotHost;
  readonly poolSize: number;
  readonly maxIdle: number;
  readonly maxSlots: number;
  readonly egressInterface: string | null;
  readonly agentPort: number;
  readonly defaultEgress: EgressPolicy;
  readonly defaultExposure: Exposure;
  readonly alwaysDeny: readonly string[];
  readonly dns: readonly string[];

  private readonly store: SlotStore;
  private readonly log: Logger;
  private readonly exists: (path: string) => boolean;
  private readonly fillRetryMs: number;

  private readonly rows = new Map<number, SlotRow>();
  private loaded = false;
  private started = false;
  private closed = false;
  private readonly closing = new AbortController();
  private readonly free: number[] = [];
  private readonly used = new Set<number>();
  private readonly pending = new Set<number>();
  private readonly reserving = new Set<number>();
  private readonly resetting = new Set<number>();
  private readonly chains = new Map<number, Promise<unknown>>();
  private filler: Promise<void> | undefined;
  private fillerCreating = 0;
  /** Released slots being reset that will return to the free list. */
  private returning = 0;
  private egressForwardingBefore: string | null = null;

  constructor(opts: NetnsSlotsOptions) {
    this.store = opts.store;
    this.log = opts.log ?? noopLog;
    this.names = new SlotNames(opts.tag ?? '');
    this.plan = new AddressPlan(opts.hostRange ?? DEFAULT_HOST_RANGE);
    this.agentPort = opts.agentPort ?? DEFAULT_AGENT_PORT;
    this.poolSize = opts.poolSize ?? 4;
    this.maxIdle = opts.maxIdle ?? this.poolSize * 2;
    this.maxSlots = opts.maxSlots ?? Math.min(this.plan.capacity, 1024);
    if (!Number.isInteger(this.poolSize) || this.poolSize < 0) throw new ConfigError(`poolSize must be an integer >= 0`, 'network.poolSize');
    if (!Number.isInteger(this.maxIdle) || this.maxIdle < this.poolSize) throw new ConfigError(`maxIdle must be an integer >= poolSize`, 'network.maxIdle');
    if (!Number.isInteger(this.maxSlots) || this.maxSlots < 1 || this.maxSlots > this.plan.capacity) {
      throw new ConfigError(`maxSlots must be 1..${this.plan.capacity} (the host range ${this.plan.rangeText} holds that many /30s)`, 'network.maxSlots');
    }
    this.egressInterface = opts.egressInterface ?? null;
    if (this.egressInterface !== null && !/^[A-Za-z0-9_.:-]{1,15}$/.test(this.egressInterface)) {
      throw new ConfigError(`egressInterface ${JSON.stringify(this.egressInterface)} is not an interface name`, 'network.egressInterface');
    }
    if (this.egressInterface !== null && (this.names.slotOfHostIf(this.egressInterface) !== undefined)) {
      throw new ConfigError(`egressInterface ${this.egressInterface} is one of the pool's own veths`, 'network.egressInterface');
    }
    this.defaultEgress = normalizeEgress(opts.defaultEgress, DEFAULT_EGRESS);
    this.defaultExposure = normalizeExposure(opts.defaultExposure, this.agentPort);
    // The slot range is always denied: it holds the host ends and other sandboxes.
    this.alwaysDeny = normalizeEgress({ internet: false, deny: [...(opts.alwaysDeny ?? DEFAULT_ALWAYS_DENY), this.plan.rangeText] }).deny;
    this.dns = [...(opts.dns ?? [])];
    for (const d of this.dns) ipToInt(d);
    this.exists = opts.exists ?? existsSync;
    this.fillRetryMs = opts.fillRetryMs ?? 1000;
    this.host = new SlotHost({
      runner: opts.runner ?? netRunner,
      names: this.names,
      forwarding: this.egressInterface !== null,
      ...(opts.netnsDir ? { netnsDir: opts.netnsDir } : {}),
    });
  }

  // ---------------------------------------------------------------- queries

  /** Kernel command-line parameters for guests on these slots (the same for every slot). */
  guestKernelArgs(): string {
    return tapGuestKernelArgs(this.dns);
  }

  stats(): PoolStats {
    return {
      free: this.free.length,
      used: this.used.size,
      pendingRecovery: this.pending.size,
      creating: this.reserving.size,
      resetting: this.resetting.size,
      total: this.rows.size + this.reserving.size,
      poolSize: this.poolSize,
      maxSlots: this.maxSlots,
    };
  }

  /** The policy in force in a slot. */
  policyOf(slot: Slot | number): SlotPolicy {
    const row = this.rows.get(typeof slot === 'number' ? slot : slot.id);
    if (!row) throw new InternalError(`network slot ${typeof slot === 'number' ? slot : slot.id} is not known`);
    return row.policy ?? this.defaultPolicy();
  }

  /** The egress policy in force in a slot. */
  egressOf(slot: Slot | number): EgressPolicy {
    return this.policyOf(slot).egress;
  }

  /** Validate and complete a requested egress policy (fields not given take the pool's default). */
  checkEgress(egress: Partial<EgressPolicy>): EgressPolicy {
    return normalizeEgress(egress, this.defaultEgress);
  }

  /** The Slot of slot number `n` (known to this pool). */
  slot(n: number): NetnsSlot {
    const row = this.rows.get(n);
    if (!row) throw new InternalError(`network slot ${n} is not known`);
    return new NetnsSlot(n, row.netns, row.hostIf, row.hostAddr, row.nsAddr, this.dns);
  }

  /** The slot a recorded VmNetwork names, if it is one of this pool's (no state change; for policy calls and the port proxy). */
  slotFor(net: VmNetwork): NetnsSlot | undefined {
    if (net.kind !== 'tap') return undefined;
    const n = this.names.slotOfNetns(net.netnsName);
    return n === undefined || !this.rows.has(n) ? undefined : this.slot(n);
  }

  /** Resolves when the background filler has nothing left to do. */
  async whenFilled(): Promise<void> {
    while (this.filler) await this.filler;
  }

  // ---------------------------------------------------------------- start-up

  private loadRows(): void {
    if (this.loaded) return;
    for (const r of this.store.load()) this.rows.set(r.n, r);
    this.loaded = true;
  }

  /**
   * Loads the persisted slots, reaps host objects with this pool's names that no
   * row owns, (re)writes the host table, resets free slots (dropping broken or
   * stale ones) and starts filling the pool. Used slots wait for restore().
   */
  async start(signal?: AbortSignal): Promise<StartReport> {
    if (this.started) throw new InternalError('the network slot pool is already started');
    this.loadRows();
    const [netns, links, routes] = await Promise.all([this.host.listNetns(), this.host.listLinks(), this.host.listRoutes()]);
    // The range must be Hearth's alone: a route into it that is not one of our veths (a LAN,
    // a VPN, another tool's bridge) would be shadowed for the host by the slots' /30s.
    for (const r of routes) {
      if (r.dst === 'default' || this.names.slotOfHostIf(r.dev) !== undefined) continue;
      let dst: ReturnType<typeof parseCidr>;
      try { dst = parseCidr(r.dst); } catch { continue; }
      if (cidrsOverlap(dst, this.plan.range)) {
        throw new ConfigError(`the slot range ${this.plan.rangeText} overlaps the host route ${r.dst} dev ${r.dev}; choose another range (network.hostRange)`, 'network.hostRange');
      }
    }
    const reaped = await this.reapWith(netns, links);
    if (this.egressInterface) {
      if (!links.includes(this.egressInterface)) {
        this.log.warn({ egressInterface: this.egressInterface }, `network: egress interface ${this.egressInterface} does not exist (yet); sandboxes have no internet until it does`);
      }
      const key = `net.ipv4.conf.${this.egressInterface}.forwarding`;
      this.egressForwardingBefore = await this.host.readSysctl(key);
      if (this.egressForwardingBefore !== null && this.egressForwardingBefore !== '1') await this.host.writeSysctl(key, '1');
    }
    await this.host.applyHostRules(this.hostRules());
    const dropped: number[] = [];
    let reused = 0;
    for (const row of [...this.rows.values()].sort((a, b) => a.n - b.n)) {
      throwIfAborted(signal);
      const present = netns.includes(row.netns) && links.includes(row.hostIf);
      const planned = this.plan.addresses(row.n);
      const stale = row.hostAddr !== planned.hostAddr || row.nsAddr !== planned.nsAddr || row.netns !== this.names.netns(row.n) || row.hostIf !== this.names.hostIf(row.n);
      if (this.used.has(row.n)) continue; // restored before start()
      if (row.state === 'used') {
        // A VM may still run in it; recover() decides (restore or release).
        this.pending.add(row.n);
        continue;
      }
      if (!present || stale) {
        await this.teardown(row.n).catch((err: unknown) => this.log.error({ slot: row.n, err: errorMessage(err) }, 'network: could not remove a stale slot'));
        dropped.push(row.n);
        continue;
      }
      try {
        await this.reset(row.n);
        this.free.push(row.n);
        reused++;
      } catch (err) {
        this.log.warn({ slot: row.n, err: errorMessage(err) }, 'network: a free slot could not be reset; removing it');
        await this.teardown(row.n).catch(() => undefined);
        dropped.push(row.n);
      }
    }
    this.started = true;
    this.log.info({ reaped, reused, dropped, pending: [...this.pending], egressInterface: this.egressInterface, range: this.plan.rangeText },
      `network: netns slots ready (${reused} free reused, ${this.pending.size} in use before the restart, pool target ${this.poolSize})`);
    this.kick();
    return { reaped, reused, dropped, pending: [...this.pending] };
  }

  /**
   * Removes host objects with this pool's names that no persisted slot owns
   * (namespaces and host veths; the tables inside a namespace go with it).
   */
  async reap(): Promise<{ netns: string[]; links: string[] }> {
    this.loadRows();
    const [netns, links] = await Promise.all([this.host.listNetns(), this.host.listLinks()]);
    return this.reapWith(netns, links);
  }

  private async reapWith(netns: readonly string[], links: readonly string[]): Promise<{ netns: string[]; links: string[] }> {
    const owned = new Set([...this.rows.keys(), ...this.reserving]);
    const plan = reapPlan(this.names, owned, netns, links);
    for (const l of plan.links) {
      await this.host.destroy(this.names.netns(this.names.slotOfHostIf(l)!), l).catch((err: unknown) => this.log.error({ link: l, err: errorMessage(err) }, 'network: reap failed'));
    }
    for (const ns of plan.netns) {
      await this.host.destroy(ns, this.names.hostIf(this.names.slotOfNetns(ns)!)).catch((err: unknown) => this.log.error({ netns: ns, err: errorMessage(err) }, 'network: reap failed'));
    }
    if (plan.links.length || plan.netns.length) this.log.info(plan, `network: reaped ${plan.netns.length} namespaces and ${plan.links.length} veths no slot owns`);
    return plan;
  }

  /** After recovery: used slots that no adopted VM claimed are reset and freed. */
  async finishRecovery(): Promise<number[]> {
    const freed = [...this.pending];
    for (const n of freed) await this.release(this.slot(n));
    return freed;
  }

  // ---------------------------------------------------------------- the seam

  /**
   * A slot for a new VM. Takes a ready one from the pool without waiting; sets
   * one up on demand only when none is free. `opts` applies a non-default policy.
   */
  async acquire(signal: AbortSignal, opts: { egress?: Partial<EgressPolicy>; exposure?: Exposure } = {}): Promise<NetnsSlot> {
    throwIfAborted(signal);
    this.assertStarted();
    const policy = opts.egress || opts.exposure ? this.validatePolicy(opts) : null;
    let n = this.takeFree();
    while (n === undefined) {
      if (this.rows.size + this.reserving.size < this.maxSlots) {
        n = this.allocateNumber();
        await this.createSlot(n, signal);
      } else if (this.filler || this.resetting.size > 0) {
        // At the limit but a slot is on its way (filler set-up or a reset): wait for it.
        await Promise.race([this.filler ?? Promise.resolve(), ...[...this.chains.values()].map((p) => p.catch(() => undefined))]);
        throwIfAborted(signal);
        n = this.takeFree();
      } else {
        throw new CapacityError(`all ${this.maxSlots} network slots are in use`);
      }
    }
    const row = this.rows.get(n)!;
    row.state = 'used';
    this.used.add(n);
    this.store.save(row);
    this.kick();
    const slot = this.slot(n);
    if (policy) {
      try {
        await this.applyPolicy(n, policy);
      } catch (err) {
        await this.release(slot).catch(() => undefined);
        throw err;
      }
    }
    return slot;
  }

  /**
   * Returns a slot to the pool: default policy, new connection generation,
   * conntrack flushed. Beyond `maxIdle` free slots (or when the reset fails)
   * the slot is removed instead. Idempotent.
   */
  async release(slot: Slot): Promise<void> {
    const n = slot.id;
    if (!this.used.has(n) && !this.pending.has(n)) return;
    this.used.delete(n);
    this.pending.delete(n);
    const row = this.rows.get(n);
    if (!row) return;
    const planned = this.plan.addresses(n);
    const stale = row.hostAddr !== planned.hostAddr || row.nsAddr !== planned.nsAddr;
    // Decided now, before any await: concurrent releases must not all see room in the pool.
    const keep = !this.closed && !stale && this.free.length + this.returning + this.fillerCreating < this.maxIdle;
    if (keep) this.returning++;
    this.resetting.add(n);
    try {
      await this.serial(n, async () => {
        if (!keep) {
          await this.teardown(n);
          return;
        }
        try {
          await this.reset(n);
        } catch (err) {
          this.log.warn({ slot: n, err: errorMessage(err) }, 'network: reset failed; removing the slot');
          await this.teardown(n);
          return;
        }
        this.free.push(n);
      });
    } finally {
      if (keep) this.returning--;
      this.resetting.delete(n);
      this.kick();
    }
  }

  /** The Slot of a VM that already runs (daemon restart), from what was recorded. */
  restore(net: VmNetwork): NetnsSlot {
    if (net.kind !== 'tap') throw new InternalError(`netns slots cannot restore a ${net.kind} network`);
    const n = this.names.slotOfNetns(net.netnsName);
    if (n === undefined) throw new InternalError(`network namespace ${net.netnsName} is not one of this pool's slots`);
    this.loadRows();
    let row = this.rows.get(n);
    if (!row) {
      // The row was lost: rebuild it from the plan (a later release removes the slot if it is broken).
      const a = this.plan.addresses(n);
      row = { n, netns: net.netnsName, hostIf: this.names.hostIf(n), hostAddr: a.hostAddr, nsAddr: a.nsAddr, state: 'used', generation: 0, policy: null };
      this.rows.set(n, row);
    }
    const i = this.free.indexOf(n);
    if (i >= 0) this.free.splice(i, 1);
    this.pending.delete(n);
    this.used.add(n);
    row.state = 'used';
    this.store.save(row);
    return this.slot(n);
  }

  // ---------------------------------------------------------------- policy

  /** Replaces a running sandbox's egress policy (atomically; takes effect on the next packet, also of open flows). */
  async setEgress(slot: Slot | number, egress: Partial<EgressPolicy>): Promise<EgressPolicy> {
    const n = typeof slot === 'number' ? slot : slot.id;
    const current = this.policyOf(n);
    const policy: SlotPolicy = { egress: normalizeEgress(egress, this.defaultEgress), exposure: current.exposure };
    this.assertHeld(n);
    await this.applyPolicy(n, policy);
    return policy.egress;
  }

  /** Which guest ports the host may reach ('all' or a list; the agent port is always included). */
  async setExposure(slot: Slot | number, exposure: Exposure): Promise<Exposure> {
    const n = typeof slot === 'number' ? slot : slot.id;
    const current = this.policyOf(n);
    const policy: SlotPolicy = { egress: current.egress, exposure: normalizeExposure(exposure, this.agentPort) };
    this.assertHeld(n);
    await this.applyPolicy(n, policy);
    return policy.exposure;
  }

  private validatePolicy(opts: { egress?: Partial<EgressPolicy>; exposure?: Exposure }): SlotPolicy {
    return {
      egress: normalizeEgress(opts.egress, this.defaultEgress),
      exposure: opts.exposure === undefined ? this.defaultExposure : normalizeExposure(opts.exposure, this.agentPort),
    };
  }

  private assertHeld(n: number): void {
    if (!this.used.has(n) && !this.pending.has(n)) throw new InternalError(`network slot ${n} is not in use`);
  }

  private async applyPolicy(n: number, policy: SlotPolicy): Promise<void> {
    await this.serial(n, async () => {
      const row = this.rows.get(n);
      if (!row) throw new InternalError(`network slot ${n} is not known`);
      await this.host.applyRules(row.netns, this.slotRules(row, row.generation, policy));
      row.policy = isDefault(policy, this.defaultPolicy()) ? null : policy;
      this.store.save(row);
    });
  }

  private defaultPolicy(): SlotPolicy {
    return { egress: this.defaultEgress, exposure: this.defaultExposure };
  }

  /** The ruleset text for a slot (exported through this method for tests and docs). */
  slotRules(row: Pick<SlotRow, 'nsAddr'>, generation: number, policy: SlotPolicy = this.defaultPolicy()): string {
    return slotRuleset({
      table: this.names.slotTable,
      nsAddr: row.nsAddr,
      agentPort: this.agentPort,
      egress: policy.egress,
      exposure: policy.exposure,
      alwaysDeny: this.alwaysDeny,
      generation,
    });
  }

  hostRules(): string {
    return hostRuleset({ table: this.names.hostTable, hostIfGlob: this.names.hostIfGlob, range: this.plan.rangeText, egressInterface: this.egressInterface });
  }

  // ---------------------------------------------------------------- slots on the host

  private assertStarted(): void {
    if (this.closed) throw new InternalError('the network slot pool is closed');
    if (!this.started) throw new InternalError('the network slot pool is not started (call start() first)');
  }

  /** Pops a ready slot whose namespace still exists (one that vanished is dropped). */
  private takeFree(): number | undefined {
    while (this.free.length) {
      const n = this.free.shift()!;
      const row = this.rows.get(n);
      if (row && this.exists(this.host.netnsPath(row.netns))) return n;
      this.log.warn({ slot: n }, 'network: a free slot lost its namespace; removing it');
      void this.teardown(n).catch(() => undefined);
    }
    return undefined;
  }

  /** Lowest slot number no row or set-up holds. */
  private allocateNumber(): number {
    for (let n = 0; n < this.plan.capacity; n++) {
      if (!this.rows.has(n) && !this.reserving.has(n)) return n;
    }
    throw new CapacityError(`the host range ${this.plan.rangeText} has no free /30 left`);
  }

  /** Sets up slot `n` from scratch and persists it as free; removes what it made on failure. */
  private async createSlot(n: number, signal?: AbortSignal): Promise<void> {
    this.reserving.add(n);
    const a: SlotAddresses = this.plan.addresses(n);
    const row: SlotRow = { n, netns: this.names.netns(n), hostIf: this.names.hostIf(n), hostAddr: a.hostAddr, nsAddr: a.nsAddr, state: 'free', generation: 1, policy: null };
    const t0 = performance.now();
    try {
      try {
        await this.host.create(n, a, signal);
      } catch (err) {
        if (!/File exists/i.test(errorMessage(err))) throw err;
        // Left over from a crash after start-up's reap: remove and try once more.
        await this.host.destroy(row.netns, row.hostIf);
        await this.host.create(n, a, signal);
      }
      await this.host.applyRules(row.netns, this.slotRules(row, row.generation), signal);
      this.rows.set(n, row);
      this.store.save(row);
      this.log.debug({ slot: n, ms: Math.round(performance.now() - t0) }, 'network: slot set up');
    } catch (err) {
      await this.host.destroy(row.netns, row.hostIf).catch(() => undefined);
      throw err;
    } finally {
      this.reserving.delete(n);
    }
  }

  /** Default policy, a new connection generation, conntrack flushed. */
  private async reset(n: number): Promise<void> {
    const row = this.rows.get(n)!;
    const generation = (row.generation + 1) % 0x100000000;
    await this.host.applyRules(row.netns, this.slotRules(row, generation));
    await this.host.flushConntrack(row.netns);
    row.generation = generation;
    row.policy = null;
    row.state = 'free';
    this.store.save(row);
  }

  private async teardown(n: number): Promise<void> {
    const row = this.rows.get(n);
    const netns = row?.netns ?? this.names.netns(n);
    const hostIf = row?.hostIf ?? this.names.hostIf(n);
    await this.host.destroy(netns, hostIf);
    this.rows.delete(n);
    this.store.delete(n);
    const i = this.free.indexOf(n);
    if (i >= 0) this.free.splice(i, 1);
  }

  /** Runs ruleset changes of one slot one after another. */
  private serial<T>(n: number, fn: () => Promise<T>): Promise<T> {
    const prev = this.chains.get(n) ?? Promise.resolve();
    const next = prev.catch(() => undefined).then(fn);
    const tail = next.catch(() => undefined);
    this.chains.set(n, tail);
    void tail.then(() => { if (this.chains.get(n) === tail) this.chains.delete(n); });
    return next;
  }

  // ---------------------------------------------------------------- the filler

  private needsFill(): boolean {
    // Slots being reset count as coming back: no set-up for a slot that is about to return.
    return this.free.length + this.fillerCreating + this.returning < this.poolSize && this.rows.size + this.reserving.size < this.maxSlots;
  }

  /** Starts the background filler if the pool is short. */
  private kick(): void {
    if (this.filler || this.closed || !this.started || !this.needsFill()) return;
    this.filler = this.fillLoop().finally(() => { this.filler = undefined; });
  }

  private async fillLoop(): Promise<void> {
    let failures = 0;
    while (!this.closed && this.needsFill()) {
      const n = this.allocateNumber();
      this.fillerCreating++;
      try {
        await this.createSlot(n, this.closing.signal);
        if (this.closed) { await this.teardown(n).catch(() => undefined); break; }
        this.free.push(n);
        failures = 0;
      } catch (err) {
        if (this.closed) break;
        failures++;
        this.log.error({ slot: n, err: errorMessage(err), failures }, 'network: background slot set-up failed');
        if (failures >= 3) break; // the next acquire/release kicks it again
        await pause(this.fillRetryMs, this.closing.signal);
      } finally {
        this.fillerCreating--;
      }
    }
  }

  // ---------------------------------------------------------------- shutdown

  /** Stops the filler and waits for it. Slots stay (persisted) for the next start; VMs keep running. */
  async close(): Promise<void> {
    this.closed = true;
    this.closing.abort();
    await this.whenFilled();
    await Promise.all([...this.chains.values()]);
  }

  /**
   * Removes every slot of this pool (free, used and pending), the host table,
   * and restores the egress interface's forwarding sysctl. For tests and
   * uninstall; VMs still attached lose their network.
   */
  async destroyAll(): Promise<void> {
    await this.close();
    this.loadRows();
    const errors: string[] = [];
    for (const n of [...this.rows.keys()]) {
      await this.teardown(n).catch((err: unknown) => errors.push(errorMessage(err)));
    }
    this.free.length = 0;
    this.used.clear();
    this.pending.clear();
    await this.reap().catch((err: unknown) => errors.push(errorMessage(err)));
    await this.host.applyHostRules(deleteTableScript('inet', this.names.hostTable)).catch((err: unknown) => errors.push(errorMessage(err)));
    if (this.egressInterface && this.egressForwardingBefore !== null && this.egressForwardingBefore !== '1') {
      await this.host.writeSysctl(`net.ipv4.conf.${this.egressInterface}.forwarding`, this.egressForwardingBefore).catch(() => undefined);
    }
    if (errors.length) throw new HostFailureError(`network: could not remove everything: ${errors.join('; ')}`);
  }
}

/** Waits `ms`, or less if the signal aborts (close() must not wait for a back-off). */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) { resolve(); return; }
    const t = setTimeout(done, ms);
    function done(): void { clearTimeout(t); signal.removeEventListener('abort', done); resolve(); }
    signal.addEventListener('abort', done, { once: true });
  });
}

function isDefault(a: SlotPolicy, b: SlotPolicy): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
