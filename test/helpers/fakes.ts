/**
 * Small in-process stand-ins for the seams (VMM, storage, network, agent) so
 * the manager's ordering and failure handling can be tested with injected
 * faults. Integration tests use the real drivers.
 */
import type { ExitInfo, SnapshotFiles, SnapshotWritten, VmConfig, Vmm, VmmDriver, VmmHandle, VmNetwork } from '../../src/vmm/types.js';
import type { BaseImage, DetachedDisk, RootDisk, RootfsBackend } from '../../src/storage/types.js';
import type { EgressPolicy, NetworkSlots, Slot, SlotOptions } from '../../src/network/types.js';
import type { AgentControlApi } from '../../src/core/manager.js';
import { HostFailureError, TimeoutError, throwIfAborted } from '../../src/core/errors.js';
import { copyFile, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';

export type FaultPoint = 'boot' | 'restore' | 'stop' | 'snapshot' | 'resume' | 'disk.create' | 'disk.remove' | 'disk.detach' | 'disk.attach' | 'disk.flatten' | 'clone' | 'slot.acquire' | 'slot.setEgress' | 'agent.ready' | 'agent.init' | 'agent.sync';

/** Records every host action in order and fails the ones named in `faults`. */
export class World {
  readonly events: string[] = [];
  readonly faults = new Set<FaultPoint>();
  readonly liveVms = new Set<number>();
  readonly disks = new Set<string>();
  readonly slots = new Set<number>();
  nextPid = 1000;
  /** Every /init: the token presented and the token set. */
  readonly tokens: { presented: string | undefined; set: string | undefined }[] = [];
  /** Called for every fault point reached, before the fault check (tests abort requests here). */
  onPoint: (point: FaultPoint) => void = () => undefined;
  /** The error a fault throws, when not the default HostFailureError (e.g. an ENOSPC from the file system). */
  readonly errors = new Map<FaultPoint, () => Error>();
  /** Fault points that never return (a daemon "dies" while an operation waits there). */
  readonly hangs = new Set<FaultPoint>();
  /** Waits forever at a point in `hangs`. */
  async gate(point: FaultPoint): Promise<void> {
    if (this.hangs.has(point)) await new Promise<never>(() => undefined);
  }
  fail(point: FaultPoint): void {
    this.onPoint(point);
    if (this.faults.has(point)) throw this.errors.get(point)?.() ?? new HostFailureError(`injected ${point} failure`);
  }
}

export class FakeVmm implements Vmm {
  readonly kind = 'qemu' as const;
  pid = 0;
  paused = false;
  cfg: VmConfig | undefined;
  /** Firecracker-like: restores map the snapshot's memory (never the config's file); snapshots write memory into their dir. */
  private ram = '';
  private resolveExit!: (i: ExitInfo) => void;
  readonly exited = new Promise<ExitInfo>((r) => { this.resolveExit = r; });
  constructor(private readonly w: World, private readonly mapsSnapshotMemory = false) {}
  private async start(cfg: VmConfig, how: 'boot' | 'restore'): Promise<void> {
    this.cfg = cfg;
    this.pid = this.w.nextPid++;
    this.w.liveVms.add(this.pid);
    this.w.events.push(`${how} ${cfg.sandboxId}`);
    this.w.fail(how);
    if (how === 'boot' && !this.mapsSnapshotMemory) await writeFile(cfg.memoryFilePath, 'RAM');
    if (how === 'boot') this.ram = 'RAM';
  }
  async boot(cfg: VmConfig): Promise<void> { await this.start(cfg, 'boot'); }
  async restore(s: SnapshotFiles, cfg: VmConfig): Promise<void> {
    // Like QEMU: the caller must have placed the memory file, and the state must exist.
    // Like Firecracker: the snapshot's own memory file is read, the config's is never used.
    if (this.mapsSnapshotMemory) {
      this.ram = await readFile(s.memoryPath, 'utf8');
      this.w.events.push(`map ${s.memoryPath.split('/').slice(-2).join('/')}`);
    } else {
      await readFile(cfg.memoryFilePath);
    }
    await readFile(s.statePath);
    await this.start(cfg, 'restore');
  }
  async markReady(): Promise<void> { if (this.mapsSnapshotMemory) this.w.events.push(`ready ${this.pid}`); }
  async pause(): Promise<void> { this.w.events.push('pause'); this.paused = true; }
  async resume(): Promise<void> { this.w.events.push('resume'); this.w.fail('resume'); this.paused = false; }
  /**
   * Writes its state under a name of its own (`fake.state`, not the core's `vmstate`) with a metadata
   * file beside it, and a scratch file it does not report: the core must move exactly what is reported.
   */
  async snapshot(dir: string): Promise<SnapshotWritten> {
    this.paused = true;
    this.w.events.push('snapshot');
    this.w.fail('snapshot');
    await writeFile(`${dir}/fake.state`, 'STATE');
    await writeFile(`${dir}/fake-scratch.tmp`, 'not part of the snapshot');
    if (this.mapsSnapshotMemory) {
      await writeFile(`${dir}/fake.mem`, this.ram);
      await writeFile(`${dir}/firecracker.json`, '{}');
      return { dir, statePath: `${dir}/fake.state`, memoryPath: `${dir}/fake.mem`, files: [`${dir}/fake.state`, `${dir}/fake.mem`, `${dir}/firecracker.json`] };
    }
    await writeFile(`${dir}/fake-layout.json`, '{}');
    return { dir, statePath: `${dir}/fake.state`, memoryPath: this.cfg!.memoryFilePath, files: [`${dir}/fake.state`, this.cfg!.memoryFilePath, `${dir}/fake-layout.json`] };
  }
  async stop(signal: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    this.w.events.push(`stop ${this.pid}`);
    this.w.fail('stop');
    this.w.liveVms.delete(this.pid);
    this.resolveExit({ code: 0, signal: null });
  }
  /** Simulate the VMM dying on its own. */
  crash(): void { this.w.liveVms.delete(this.pid); this.resolveExit({ code: null, signal: 'SIGKILL' }); }
}

export class FakeDriver implements VmmDriver {
  readonly kind = 'qemu' as const;
  readonly vms: FakeVmm[] = [];
  constructor(private readonly w: World, readonly restoreMapsSnapshotMemory = false) {}
  /** What a snapshot made here must match (tests change it to play a KVM/TCG switch or a VMM upgrade). */
  compat = 'fake=1 accel=tcg cpu=max';
  async snapshotCompat(signal: AbortSignal): Promise<string> { throwIfAborted(signal); return this.compat; }
  create(): Vmm { const v = new FakeVmm(this.w, this.restoreMapsSnapshotMemory); this.vms.push(v); return v; }
  list?: () => Promise<{ sandboxId: string; pid: number; runDir?: string }[]>;
  async adopt(h: VmmHandle): Promise<Vmm | null> {
    const v = this.vms.find((x) => x.pid === h.pid && this.w.liveVms.has(h.pid));
    return v ?? null;
  }
  /** Kills a live fake VM by pid (recorded as `kill <pid>`); false for a pid that is not a live VM. */
  async forceKill(h: VmmHandle, signal: AbortSignal): Promise<boolean> {
    this.w.events.push(`kill ${h.pid}`);
    if (!this.w.liveVms.has(h.pid)) return false;
    throwIfAborted(signal);
    this.w.liveVms.delete(h.pid);
    this.vms.find((x) => x.pid === h.pid)?.crash();
    return true;
  }
}

export class FakeStorage implements RootfsBackend {
  readonly kind = 'copy' as const;
  readonly readsBase = false;
  /** The base image each live disk was made or attached on. */
  readonly bases = new Map<string, string>();
  constructor(private readonly w: World) {}
  async create(sandboxId: string, base: BaseImage, signal: AbortSignal): Promise<RootDisk> {
    throwIfAborted(signal);
    this.w.fail('disk.create');
    this.w.disks.add(sandboxId);
    this.bases.set(sandboxId, base.path);
    this.w.events.push(`disk+ ${sandboxId}`);
    return { sandboxId, backend: 'copy', devicePath: `/fake/${sandboxId}`, files: [], base };
  }
  async detach(d: RootDisk, intoDir: string, signal: AbortSignal): Promise<DetachedDisk> {
    throwIfAborted(signal);
    this.w.events.push(`detach ${d.sandboxId}`);
    this.w.fail('disk.detach');
    this.w.disks.delete(d.sandboxId);
    this.bases.delete(d.sandboxId);
    // A disk attached from a paused dir is a real file (see attach): it moves; a created one is written.
    if (d.devicePath.startsWith('/fake/')) await writeFile(`${intoDir}/rootfs.ext4`, 'DISK');
    else await rename(d.devicePath, `${intoDir}/rootfs.ext4`).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'ENOENT') throw e; });
    return { sandboxId: d.sandboxId, backend: 'copy', base: d.base, dir: intoDir, files: [`${intoDir}/rootfs.ext4`] };
  }
  async attach(token: DetachedDisk, signal: AbortSignal): Promise<RootDisk> {
    throwIfAborted(signal);
    this.w.events.push(`attach ${token.sandboxId}`);
    this.w.fail('disk.attach');
    // Like the real backends, the disk moves out of the paused dir (next to it, in the sandbox dir).
    const live = `${dirname(token.dir)}/rootfs.ext4`;
    await rename(`${token.dir}/rootfs.ext4`, live);
    this.w.disks.add(token.sandboxId);
    this.bases.set(token.sandboxId, token.base.path);
    return { sandboxId: token.sandboxId, backend: 'copy', devicePath: live, files: [live], base: token.base };
  }
  async reclaim(token: DetachedDisk, signal: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    this.w.events.push(`reclaim ${token.sandboxId}`);
    this.w.disks.delete(token.sandboxId);
    this.bases.delete(token.sandboxId);
    await rename(`${dirname(token.dir)}/rootfs.ext4`, `${token.dir}/rootfs.ext4`).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'ENOENT') throw e; });
  }
  async flatten(_d: RootDisk, out: string, signal: AbortSignal): Promise<void> { throwIfAborted(signal); this.w.fail('disk.flatten'); await writeFile(out, 'DISK'); }
  async remove(d: RootDisk, signal: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    this.w.events.push(`disk- ${d.sandboxId}`);
    await this.w.gate('disk.remove');
    this.w.fail('disk.remove');
    if (!d.devicePath.startsWith('/fake/') && d.devicePath) await unlink(d.devicePath).catch(() => undefined);
    this.w.disks.delete(d.sandboxId);
    this.bases.delete(d.sandboxId);
  }
  async usage(): Promise<{ allocatedBytes: number }> { return { allocatedBytes: 4096 }; }
}

export class FakeSlots implements NetworkSlots {
  readonly kind = 'user' as const;
  private next = 1;
  /** Egress per slot, as a netns pool would hold it. */
  readonly egress = new Map<number, EgressPolicy>();
  constructor(private readonly w: World) {}
  async acquire(_signal: AbortSignal, opts: SlotOptions = {}): Promise<Slot> {
    this.w.fail('slot.acquire');
    const id = this.next++;
    this.w.slots.add(id);
    this.egress.set(id, { internet: true, allow: [], deny: [], ...opts.egress });
    this.w.events.push(`slot+ ${id}`);
    return this.restore({ kind: 'user', forwards: [{ hostPort: id, guestPort: 49983 }], guestCidr: '10.0.2.15/24', gateway: '10.0.2.2' });
  }
  async release(s: Slot): Promise<void> { this.w.events.push(`slot- ${s.id}`); this.w.slots.delete(s.id); this.egress.delete(s.id); }
  async setEgress(s: Slot, egress: Partial<EgressPolicy>): Promise<EgressPolicy> {
    this.w.fail('slot.setEgress');
    const next = { ...this.egressOf(s), ...egress };
    this.egress.set(s.id, next);
    this.w.events.push(`slot egress ${s.id} internet=${next.internet}`);
    return next;
  }
  checkEgress(egress: Partial<EgressPolicy>): EgressPolicy { return { internet: true, allow: [], deny: [], ...egress }; }
  egressOf(s: Slot): EgressPolicy { return this.egress.get(s.id) ?? { internet: true, allow: [], deny: [] }; }
  restore(net: VmNetwork): Slot {
    const id = net.kind === 'user' ? net.forwards[0]!.hostPort : 0;
    this.w.slots.add(id);
    return { id, vmNetwork: net, guestKernelArgs: 'hearth.ip=10.0.2.15/24 hearth.gw=10.0.2.2', guestAddress: (port) => ({ host: '127.0.0.1', port: port + id }) };
  }
}

/** Copies files for real (the manager clones memory files with it). */
export function fakeCloner(w: World): (src: string, dst: string) => Promise<void> {
  return async (src, dst) => { w.fail('clone'); await copyFile(src, dst); };
}

export function fakeAgent(w: World): (endpoint: unknown, token: string | undefined) => AgentControlApi {
  return (_e, token) => ({
    async waitUntilReady() {
      w.events.push('agent ready?');
      await w.gate('agent.ready');
      if (w.faults.has('agent.ready')) throw new TimeoutError('injected: agent did not answer');
      return 1;
    },
    async init(body, signal) {
      w.events.push(`agent init${token ? ' (token presented)' : ''}`);
      w.fail('agent.init');
      throwIfAborted(signal);
      w.tokens.push({ presented: token, set: body.accessToken });
    },
    async health() { return !w.faults.has('agent.ready'); },
    async sync(signal) {
      w.events.push(`agent sync${token ? ' (token presented)' : ''}`);
      await w.gate('agent.sync');
      throwIfAborted(signal);
      w.fail('agent.sync');
    },
    async exec(req, signal) {
      w.events.push(`agent exec ${req.cmd}`);
      throwIfAborted(signal);
      return { exitCode: 0, status: 'exit status 0' };
    },
  });
}
