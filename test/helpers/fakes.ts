/**
 * Small in-process stand-ins for the seams (VMM, storage, network, agent) so
 * the manager's ordering and failure handling can be tested with injected
 * faults. Integration tests use the real drivers.
 */
import type { ExitInfo, SnapshotFiles, VmConfig, Vmm, VmmDriver, VmmHandle, VmNetwork } from '../../src/vmm/types.js';
import type { BaseImage, RootDisk, RootfsBackend } from '../../src/storage/types.js';
import type { NetworkSlots, Slot } from '../../src/network/types.js';
import type { AgentControlApi } from '../../src/core/manager.js';
import { HostFailureError, TimeoutError } from '../../src/core/errors.js';

export type FaultPoint = 'boot' | 'stop' | 'disk.create' | 'disk.remove' | 'slot.acquire' | 'agent.ready' | 'agent.init';

/** Records every host action in order and fails the ones named in `faults`. */
export class World {
  readonly events: string[] = [];
  readonly faults = new Set<FaultPoint>();
  readonly liveVms = new Set<number>();
  readonly disks = new Set<string>();
  readonly slots = new Set<number>();
  nextPid = 1000;
  /** Called for every fault point reached, before the fault check (tests abort requests here). */
  onPoint: (point: FaultPoint) => void = () => undefined;
  fail(point: FaultPoint): void {
    this.onPoint(point);
    if (this.faults.has(point)) throw new HostFailureError(`injected ${point} failure`);
  }
}

class FakeVmm implements Vmm {
  readonly kind = 'qemu' as const;
  pid = 0;
  private resolveExit!: (i: ExitInfo) => void;
  readonly exited = new Promise<ExitInfo>((r) => { this.resolveExit = r; });
  constructor(private readonly w: World) {}
  async boot(cfg: VmConfig): Promise<void> {
    this.pid = this.w.nextPid++;
    this.w.liveVms.add(this.pid);
    this.w.events.push(`boot ${cfg.sandboxId}`);
    this.w.fail('boot');
  }
  async restore(_s: SnapshotFiles, cfg: VmConfig): Promise<void> { await this.boot(cfg); }
  async pause(): Promise<void> { this.w.events.push('pause'); }
  async resume(): Promise<void> { this.w.events.push('resume'); }
  async snapshot(dir: string): Promise<SnapshotFiles> { return { dir, statePath: `${dir}/vmstate`, memoryPath: `${dir}/memory` }; }
  async stop(): Promise<void> {
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
  constructor(private readonly w: World) {}
  create(): Vmm { const v = new FakeVmm(this.w); this.vms.push(v); return v; }
  async adopt(h: VmmHandle): Promise<Vmm | null> {
    const v = this.vms.find((x) => x.pid === h.pid && this.w.liveVms.has(h.pid));
    return v ?? null;
  }
}

export class FakeStorage implements RootfsBackend {
  readonly kind = 'copy' as const;
  constructor(private readonly w: World) {}
  async create(sandboxId: string, _b: BaseImage): Promise<RootDisk> {
    this.w.fail('disk.create');
    this.w.disks.add(sandboxId);
    this.w.events.push(`disk+ ${sandboxId}`);
    return { sandboxId, backend: 'copy', devicePath: `/fake/${sandboxId}`, files: [] };
  }
  async detach(): Promise<void> {}
  async attach(sandboxId: string): Promise<RootDisk> { return { sandboxId, backend: 'copy', devicePath: `/fake/${sandboxId}`, files: [] }; }
  async flatten(): Promise<void> {}
  async remove(d: RootDisk): Promise<void> {
    this.w.events.push(`disk- ${d.sandboxId}`);
    this.w.fail('disk.remove');
    this.w.disks.delete(d.sandboxId);
  }
  async usage(): Promise<{ allocatedBytes: number }> { return { allocatedBytes: 4096 }; }
}

export class FakeSlots implements NetworkSlots {
  readonly kind = 'user' as const;
  private next = 1;
  constructor(private readonly w: World) {}
  async acquire(): Promise<Slot> {
    this.w.fail('slot.acquire');
    const id = this.next++;
    this.w.slots.add(id);
    this.w.events.push(`slot+ ${id}`);
    return this.restore({ kind: 'user', forwards: [{ hostPort: id, guestPort: 49983 }], guestCidr: '10.0.2.15/24', gateway: '10.0.2.2' });
  }
  async release(s: Slot): Promise<void> { this.w.events.push(`slot- ${s.id}`); this.w.slots.delete(s.id); }
  restore(net: VmNetwork): Slot {
    const id = net.kind === 'user' ? net.forwards[0]!.hostPort : 0;
    this.w.slots.add(id);
    return { id, vmNetwork: net, guestAddress: (port) => ({ host: '127.0.0.1', port: port + id }) };
  }
}

export function fakeAgent(w: World): () => AgentControlApi {
  return () => ({
    async waitUntilReady() {
      w.events.push('agent ready?');
      if (w.faults.has('agent.ready')) throw new TimeoutError('injected: agent did not answer');
      return 1;
    },
    async init() { w.events.push('agent init'); w.fail('agent.init'); },
    async health() { return !w.faults.has('agent.ready'); },
  });
}
