import { errorMessage } from './errors.js';
import type { StepTimer } from './steps.js';
import type { SandboxRecord } from './types.js';
import type { Store } from '../store/store.js';
import type { DetachedDisk, RootDisk } from '../storage/types.js';
import type { VmmHandle, VmNetwork } from '../vmm/types.js';

/**
 * One thing a sandbox holds on the host. Recorded in the ledger at the moment
 * it is taken (before, as an intent, where taking it leaves something behind
 * even when it fails half-way: a VMM process, a dm device).
 */
export type Holding =
  /** The sandbox's directory (`layout.sandboxDir`); released by removing it. */
  | { kind: 'dir'; path: string }
  /** A network slot; released to its pool. */
  | { kind: 'slot'; network: VmNetwork }
  /**
   * A root disk. `disk` null: being created or attached (intent). `from`: it was
   * attached from a paused capture, and releasing it puts it back there (never deletes it).
   */
  | { kind: 'disk'; disk: RootDisk | null; base?: RootDisk['base']; from?: DetachedDisk }
  /** A memory file cloned for a restore; released by deleting it. */
  | { kind: 'memory'; path: string }
  /** A VMM process. `handle` null: about to be spawned (found by its run dir if it was). */
  | { kind: 'vmm'; runDir: string; handle: VmmHandle | null }
  /**
   * A paused capture in `dir` (memory, device state, the detached disk). Complete
   * once meta.json is written; released (destroy, failure) by removing `dir`.
   * `memory: false`: a filesystem-only capture (the disk alone; the resume boots
   * from it); absent means a memory capture (rows written before there was a choice).
   */
  | { kind: 'paused'; dir: string; disk: DetachedDisk | null; complete: boolean; memory?: boolean };

export type HoldingKind = Holding['kind'];

export interface HoldingRow<H extends Holding = Holding> {
  id: number;
  holding: H;
}

/** How one holding is released; given a signal the caller's abort cannot cancel. */
export type Releaser = (h: Holding, ctx: { sandboxId: string; signal: AbortSignal; inMemory: unknown }) => Promise<void>;

/** The step name a release of each kind is timed and reported under. */
const STEP: Record<HoldingKind, string> = { vmm: 'vmm', memory: 'memory', disk: 'disk', slot: 'slot', paused: 'paused', dir: 'files' };

/**
 * The holdings ledger: the durable form of a compensation list. Every
 * acquisition of a sandbox (create, resume, pause's paused capture) is a row,
 * in the order taken; destroy, reaping, a failed create, pause, resume and
 * recovery all release from this one list, in reverse recorded order, each
 * step on its own bounded signal (never the request's), keeping the rows whose
 * release failed so that a retry finishes the job.
 *
 * The record's `vmm`, `disk` and `network` fields are a projection of the
 * ledger (for the API and older readers), written only here, in the same
 * transaction as the ledger row.
 */
export class Holdings {
  /** In-memory objects of holdings taken by this process (a Vmm), by row id. */
  private readonly objects = new Map<number, unknown>();

  constructor(private readonly store: Store, private readonly releaseTimeoutMs = 60_000) {}

  list(sandboxId: string): HoldingRow[] {
    return this.store.listHoldings(sandboxId).map((r) => ({ id: r.id, holding: JSON.parse(r.detail) as Holding }));
  }

  find<K extends HoldingKind>(sandboxId: string, kind: K): HoldingRow<Extract<Holding, { kind: K }>> | undefined {
    return this.list(sandboxId).findLast((r) => r.holding.kind === kind) as HoldingRow<Extract<Holding, { kind: K }>> | undefined;
  }

  /** Record a holding as it is taken; `inMemory` (e.g. the Vmm) is kept for its release in this process. */
  record(rec: SandboxRecord, h: Holding, inMemory?: unknown): number {
    const id = this.store.atomically(() => {
      const n = this.store.insertHolding(rec.id, h.kind, JSON.stringify(h));
      this.project(rec);
      return n;
    });
    if (inMemory !== undefined) this.objects.set(id, inMemory);
    return id;
  }

  /** What a holding is now (an intent that was carried out, a paused capture completed). */
  update(rec: SandboxRecord, id: number, h: Holding): void {
    this.store.atomically(() => {
      this.store.updateHolding(id, JSON.stringify(h));
      this.project(rec);
    });
  }

  /** The holding is no longer the sandbox's (released, or handed over to another holding). */
  forget(rec: SandboxRecord, id: number): void {
    this.store.atomically(() => {
      this.store.deleteHolding(id);
      this.project(rec);
    });
    this.objects.delete(id);
  }

  inMemory(id: number): unknown { return this.objects.get(id); }

  /** Keep an in-memory object for a holding (a VM adopted after a restart). */
  attach(id: number, inMemory: unknown): void { this.objects.set(id, inMemory); }

  /** Forget this process's in-memory objects of a sandbox (daemon shutdown hands VMs over to the next one). */
  dropObjects(ids: Iterable<number>): void { for (const id of ids) this.objects.delete(id); }

  /**
   * Release holdings of a sandbox in reverse recorded order: all of them, or
   * those `which` selects. Each runs even if an earlier one failed; a released
   * row goes, a failed one stays (its error is returned) for the next attempt.
   */
  async release(rec: SandboxRecord, releaser: Releaser, opts: { which?: (r: HoldingRow) => boolean; steps?: StepTimer } = {}): Promise<string[]> {
    const errors: string[] = [];
    const rows = this.list(rec.id).filter(opts.which ?? (() => true)).reverse();
    for (const row of rows) {
      const name = STEP[row.holding.kind];
      const run = (): Promise<void> => releaser(row.holding, { sandboxId: rec.id, signal: AbortSignal.timeout(this.releaseTimeoutMs), inMemory: this.objects.get(row.id) });
      try {
        await (opts.steps ? opts.steps.run(name, run) : run());
        this.forget(rec, row.id);
      } catch (err) {
        errors.push(`${name}: ${errorMessage(err)}`);
      }
    }
    return errors;
  }

  /** The record's projection of the ledger: the VMM handle, disk and network it holds now. */
  private project(rec: SandboxRecord): void {
    const rows = this.list(rec.id).map((r) => r.holding);
    const vmm = rows.findLast((h): h is Extract<Holding, { kind: 'vmm' }> => h.kind === 'vmm');
    const disk = rows.findLast((h): h is Extract<Holding, { kind: 'disk' }> => h.kind === 'disk');
    const slot = rows.findLast((h): h is Extract<Holding, { kind: 'slot' }> => h.kind === 'slot');
    rec.vmm = vmm?.handle ?? null;
    rec.disk = disk?.disk ?? null;
    rec.network = slot?.network ?? null;
    this.store.updateSandbox(rec);
  }
}

/** Holdings of a record written before the ledger existed (its four fields), so recovery can release them. */
export function legacyHoldings(rec: SandboxRecord, sandboxDir: string, pausedDir: string, pausedDisk: DetachedDisk | null): Holding[] {
  const out: Holding[] = [{ kind: 'dir', path: sandboxDir }];
  if (rec.network) out.push({ kind: 'slot', network: rec.network });
  if (rec.disk) out.push({ kind: 'disk', disk: rec.disk });
  if (rec.vmm) out.push({ kind: 'vmm', runDir: rec.vmm.runDir, handle: rec.vmm });
  if (pausedDisk) out.push({ kind: 'paused', dir: pausedDir, disk: pausedDisk, complete: true });
  return out;
}
