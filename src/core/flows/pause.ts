import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { basename } from 'node:path';
import type { HoldingRow, Holdings, Releaser } from '../holdings.js';
import { ConflictError, HostFailureError, errorMessage } from '../errors.js';
import { compatDifferences } from '../compat.js';
import type { StepTimer } from '../steps.js';
import type { SandboxRecord, Template } from '../types.js';
import type { DetachedDisk } from '../../storage/types.js';
import type { VmConfig } from '../../vmm/types.js';
import { exists, removeTree, writeFileAtomic } from '../../util/fs.js';
import { pausedAt, placeSnapshotFiles } from '../layout.js';
import { startTemplateService } from './service.js';
import { snapshotFilesAt } from './capture.js';
import { initBody, layoutOf, slotOptions, vmConfig, type LiveSandbox, type ManagerDeps } from './context.js';
import { waitForAgent } from './launch.js';

/** What a paused directory holds; written last and atomically, so its presence means "complete". */
export interface PausedMeta {
  sandboxId: string;
  templateId: string;
  vcpus: number;
  memoryMib: number;
  pausedAt: string;
  /** The detached disk (with its base), as storage's detach returned it; resume attaches exactly this. */
  disk?: DetachedDisk;
  /** false: a filesystem-only pause (no memory or device state; the resume boots). Absent: memory was kept. */
  memory?: boolean;
  /**
   * The VMM's snapshot-compatibility key at the pause (memory captures): a
   * resume under another key is refused with a 409 and the sandbox stays
   * paused. Absent in captures written before it was recorded.
   */
  compat?: string;
  /** The files the VMM reported for the capture, as placed in the paused dir (names). */
  vmmFiles?: string[];
}

/** What a pause keeps: memory and disk (the default), or the disk alone (`memory: false`). */
export interface PauseOptions { memory: boolean }

async function fsyncFile(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  try { await fh.sync(); } finally { await fh.close(); }
}

export type PauseOutcome =
  | { ok: true }
  /** The VM runs on (its vCPUs were resumed, or never stopped) and stays usable; the error says why the pause failed. */
  | { ok: false; resumed: true; error: Error }
  /** Resources are released and the sandbox must be marked failed with `reason`. */
  | { ok: false; resumed: false; reason: string; error: Error };

/**
 * Pause (docs/ARCHITECTURE.md, "Pause order"): freeze vCPUs → write device
 * state (memory already lives in the sandbox's memory file) and flush memory; on
 * failure resume the vCPUs → stop the VMM and wait for its exit → detach the disk
 * into the paused dir → move memory + state there, write metadata atomically →
 * release the slot. The paused capture is a holding of its own in the ledger
 * (its disk token recorded as the disk is detached), so a daemon that dies on
 * the way finds it. After the VMM stopped, any failure releases every holding
 * and fails the sandbox: nothing stays half-alive.
 *
 * Filesystem-only (`memory: false`; docs/snapshots.md, "Filesystem-only
 * pause"): instead of the snapshot, the guest writes its dirty data to disk
 * (`sync` through the agent; if that fails the VM was never touched and runs
 * on) → stop → detach the disk → meta.json (`memory: false`), the VM's memory
 * file deleted → release the slot. The capture is the disk alone.
 */
export async function pauseSandbox(
  deps: ManagerDeps, ledger: Holdings, release: Releaser, rec: SandboxRecord, live: LiveSandbox, steps: StepTimer, signal: AbortSignal,
  opts: PauseOptions = { memory: true },
): Promise<PauseOutcome> {
  const sandboxPaths = layoutOf(deps.config).sandbox(rec.id);
  const { pauseStaging: staging, paused: pausedPaths } = sandboxPaths;
  const paused = pausedPaths.dir;
  /** The VMM's snapshot files and where each goes in the paused dir; its compatibility key. */
  let placed: { from: string; to: string }[] = [];
  let compat: string | undefined;
  if (!opts.memory) {
    try {
      const endpoint = live.slot.guestAddress(deps.config.agentPort);
      await steps.run('sync', () => deps.agent(endpoint, rec.agentToken).sync(signal), signal);
    } catch (err) {
      // Nothing was stopped or frozen: the sandbox runs on as it was.
      return { ok: false, resumed: true, error: err as Error };
    }
  } else {
    try {
      await removeTree(staging);
      await mkdir(staging, { recursive: true });
      // What the capture must be loaded under, asked before the vCPUs freeze.
      compat = await deps.vmm.snapshotCompat(signal);
      const written = await steps.run('snapshot', () => live.vmm.snapshot(staging, 'full', signal), signal);
      // Exactly what the VMM reported goes into the capture (QEMU's memory is the VM's own file, outside staging).
      placed = placeSnapshotFiles(paused, written);
      // Durable before the VMM goes away: a paused sandbox must survive a host reboot.
      await steps.run('flush', async () => { for (const f of placed) await fsyncFile(f.from); }, signal);
    } catch (err) {
      // Step 2 failed: the sandbox must stay usable, never a frozen zombie. A fresh signal: this must happen.
      try {
        await live.vmm.resume(AbortSignal.timeout(10_000));
      } catch (resumeErr) {
        return { ok: false, resumed: false, reason: `pause failed (${errorMessage(err)}) and the VM could not be resumed (${errorMessage(resumeErr)})`, error: err as Error };
      }
      await removeTree(staging).catch(() => undefined);
      return { ok: false, resumed: true, error: err as Error };
    }
  }

  // From here on the VM is gone or going: failures release everything and fail the sandbox.
  try {
    const vmmRow = ledger.find(rec.id, 'vmm');
    await steps.run('stop', async () => {
      live.stopping = true;
      await live.vmm.stop(AbortSignal.timeout(30_000));
      if (vmmRow) ledger.forget(rec, vmmRow.id);
    });
    await mkdir(paused, { recursive: true });
    const pausedRow = ledger.record(rec, { kind: 'paused', dir: paused, disk: null, complete: false, memory: opts.memory });
    const detached = await steps.run('detach', async () => {
      const diskRow = ledger.find(rec.id, 'disk');
      const token = await deps.storage.detach(live.disk, paused, AbortSignal.timeout(60_000));
      // The disk is now part of the paused capture.
      ledger.update(rec, pausedRow, { kind: 'paused', dir: paused, disk: token, complete: false, memory: opts.memory });
      if (diskRow) ledger.forget(rec, diskRow.id);
      return token;
    });
    if (!opts.memory) {
      await steps.run('meta', async () => {
        // Guest RAM is not kept: the VM's memory file (and a copy made for a restore) goes before the capture is marked complete.
        await rm(sandboxPaths.memory, { force: true });
        for (const m of ledger.list(rec.id)) {
          if (m.holding.kind !== 'memory') continue;
          await rm(m.holding.path, { force: true });
          ledger.forget(rec, m.id);
        }
        const meta: PausedMeta = { sandboxId: rec.id, templateId: rec.templateId, vcpus: rec.vcpus, memoryMib: rec.memoryMib, pausedAt: new Date().toISOString(), disk: detached, memory: false };
        await writeFileAtomic(pausedPaths.meta, JSON.stringify(meta, null, 2));
        ledger.update(rec, pausedRow, { kind: 'paused', dir: paused, disk: detached, complete: true, memory: false });
      });
    } else {
      await steps.run('move', async () => {
        // Memory, device state and the VMM's metadata (e.g. Firecracker's firecracker.json): what it reported, nothing else.
        for (const f of placed) await rename(f.from, f.to);
        const meta: PausedMeta = {
          sandboxId: rec.id, templateId: rec.templateId, vcpus: rec.vcpus, memoryMib: rec.memoryMib, pausedAt: new Date().toISOString(), disk: detached, memory: true,
          compat, vmmFiles: placed.map((f) => basename(f.to)),
        };
        await writeFileAtomic(pausedPaths.meta, JSON.stringify(meta, null, 2));
        await removeTree(staging);
        ledger.update(rec, pausedRow, { kind: 'paused', dir: paused, disk: detached, complete: true, memory: true });
        // A memory file cloned for a restore moved into the capture with the rest.
        for (const m of ledger.list(rec.id).filter((r) => r.holding.kind === 'memory')) ledger.forget(rec, m.id);
      });
    }
    await steps.run('release', async () => {
      const errs = await ledger.release(rec, release, { which: (r) => r.holding.kind === 'slot' });
      if (errs.length) throw new HostFailureError(errs.join('; '));
    });
    return { ok: true };
  } catch (err) {
    const errs = await ledger.release(rec, release);
    const reason = `pause failed after the VM stopped: ${errorMessage(err)}${errs.length ? `; cleanup: ${errs.join('; ')}` : ''}`;
    return { ok: false, resumed: false, reason, error: err as Error };
  }
}

/** Selects what a resume (or an interrupted pause) took beyond the paused capture and the sandbox dir. */
export const beyondPaused = (r: HoldingRow): boolean => r.holding.kind !== 'paused' && r.holding.kind !== 'dir';

/**
 * Resume (docs/ARCHITECTURE.md, "Resume order"): slot → the disk attached from
 * the paused capture's token (on the base it was made from) → a copy of the
 * memory file (the paused one stays intact, so a failed attempt can be
 * retried) → restore → agent ready → /init (clock, entropy). Each step is
 * recorded in the ledger as it is taken, so a daemon that dies mid-resume
 * leaves a list recovery can put back. If anything fails, everything beyond the
 * paused capture is released (the VMM stopped, the disk put back into the
 * paused dir, never deleted) and the sandbox stays paused. On success the
 * caller makes it running and calls `commitResume`.
 *
 * A filesystem-only capture, or `boot: true` (E2B's `memory: false`, "reboot",
 * on a memory capture: its memory is ignored), resumes by a cold boot of the
 * template's kernel on the sandbox's disk instead of a restore: slot → attach →
 * boot → agent ready → /init (as after a create: the agent starts with no
 * token). Failures are handled the same way.
 */
export async function resumeSandbox(
  deps: ManagerDeps, ledger: Holdings, release: Releaser, rec: SandboxRecord, template: Template, steps: StepTimer, signal: AbortSignal,
  opts: { boot?: boolean } = {},
): Promise<LiveSandbox> {
  const sandboxPaths = layoutOf(deps.config).sandbox(rec.id);
  const capture = ledger.find(rec.id, 'paused');
  const capturePaths = pausedAt(capture?.holding.dir ?? sandboxPaths.paused.dir);
  if (!capture || !(await exists(capturePaths.meta))) {
    throw new HostFailureError(`sandbox ${rec.id} is paused but its paused files are incomplete (no ${capturePaths.meta})`);
  }
  const token = capture.holding.disk ?? await pausedDisk(capture.holding.dir, rec, template);
  const boot = opts.boot === true || capture.holding.memory === false;
  // A memory capture loads only under the VMM set-up it was made with: refused before anything is acquired.
  if (!boot) await checkPausedCompat(deps, rec, capturePaths.meta, signal);
  try {
    const slot = await steps.run('slot', () => deps.network.acquire(signal, slotOptions(rec)), signal);
    ledger.record(rec, { kind: 'slot', network: slot.vmNetwork });
    const diskRow = ledger.record(rec, { kind: 'disk', disk: null, from: token });
    const disk = await steps.run('attach', () => deps.storage.attach(token, signal), signal);
    ledger.update(rec, diskRow, { kind: 'disk', disk, from: token });
    const vmm = deps.vmm.create();
    const cfg = vmConfig(deps.config, rec, template, slot, disk);
    if (boot) return await bootFromDisk(deps, ledger, rec, template, cfg, { vmm, slot, disk, stopping: false }, steps, signal);
    // A VMM that writes guest memory into its file runs on a copy: the paused memory is never
    // consumed, so a failed resume can be retried. One that maps the file privately reads it as is.
    if (!deps.vmm.restoreMapsSnapshotMemory) {
      ledger.record(rec, { kind: 'memory', path: cfg.memoryFilePath });
      await steps.run('memory', () => deps.cloneFile(capturePaths.memory, cfg.memoryFilePath, signal), signal);
    }
    const live: LiveSandbox = { vmm, slot, disk, stopping: false };
    const runDir = sandboxPaths.dir;
    const vmmRow = ledger.record(rec, { kind: 'vmm', runDir, handle: null }, live);
    const snap = snapshotFilesAt(capturePaths.dir);
    await steps.run('restore', () => vmm.restore(snap, cfg, signal), signal);
    ledger.update(rec, vmmRow, { kind: 'vmm', runDir, handle: { kind: vmm.kind, pid: vmm.pid, runDir } });
    const endpoint = slot.guestAddress(deps.config.agentPort);
    await steps.run('agent', () => waitForAgent(deps, endpoint, rec.agentToken, live, cfg.consoleLogPath, deps.config.restoreTimeoutMs, signal), signal);
    await vmm.markReady?.();
    await steps.run('init', () => deps.agent(endpoint, rec.agentToken).init(initBody(rec, template), signal), signal);
    rec.agent = endpoint;
    return live;
  } catch (err) {
    const errs = await ledger.release(rec, release, { which: beyondPaused });
    if (errs.length) {
      throw new HostFailureError(`resume of ${rec.id} failed (${errorMessage(err)}) and cleanup failed too: ${errs.join('; ')}`, { cause: err });
    }
    throw err;
  }
}

/**
 * The boot half of a resume from a filesystem-only capture: the VM's memory
 * file (QEMU makes one as it boots) is a holding, so a failed or interrupted
 * resume deletes it; the VMM is an intent before it is spawned, as in a create.
 */
async function bootFromDisk(
  deps: ManagerDeps, ledger: Holdings, rec: SandboxRecord, template: Template, cfg: VmConfig, live: LiveSandbox, steps: StepTimer, signal: AbortSignal,
): Promise<LiveSandbox> {
  if (!deps.vmm.restoreMapsSnapshotMemory) ledger.record(rec, { kind: 'memory', path: cfg.memoryFilePath });
  const vmmRow = ledger.record(rec, { kind: 'vmm', runDir: cfg.runDir, handle: null }, live);
  await steps.run('boot', () => live.vmm.boot(cfg, signal), signal);
  ledger.update(rec, vmmRow, { kind: 'vmm', runDir: cfg.runDir, handle: { kind: live.vmm.kind, pid: live.vmm.pid, runDir: cfg.runDir } });
  const endpoint = live.slot.guestAddress(deps.config.agentPort);
  await steps.run('agent', () => waitForAgent(deps, endpoint, undefined, live, cfg.consoleLogPath, deps.config.bootTimeoutMs, signal), signal);
  await live.vmm.markReady?.();
  // A booted agent holds no token yet: /init gives it the sandbox's own (and its env vars), as after a create.
  await steps.run('init', () => deps.agent(endpoint, undefined).init(initBody(rec, template), signal), signal);
  // A fresh boot: the template's service is not running yet (a memory resume has it).
  if (template.runtime?.start) await steps.run('start', () => startTemplateService(deps.agent(endpoint, rec.agentToken), template, signal), signal);
  rec.agent = endpoint;
  return live;
}

/** Whether a paused sandbox's capture kept memory (false: filesystem-only); null when it has no capture. */
export function captureKeptMemory(ledger: Holdings, id: string): boolean | null {
  const capture = ledger.find(id, 'paused');
  return capture ? capture.holding.memory !== false : null;
}

/**
 * A resumed sandbox owns its disk outright: the disk no longer goes back to the
 * paused capture, and the capture is no longer held (its files are removed by
 * the caller, best effort: the sandbox dir holding covers them).
 */
export function commitResume(ledger: Holdings, rec: SandboxRecord): void {
  const disk = ledger.find(rec.id, 'disk');
  if (disk?.holding.disk) ledger.update(rec, disk.id, { kind: 'disk', disk: disk.holding.disk });
  for (const r of ledger.list(rec.id)) if (r.holding.kind === 'paused') ledger.forget(rec, r.id);
}

/**
 * A paused memory capture made under another VMM set-up (accelerator, CPU
 * model, QEMU or Firecracker release) cannot be restored here: a 409 naming
 * each difference. The sandbox stays paused with its files untouched, so the
 * resume works once the host runs the VMM it was paused under again.
 */
async function checkPausedCompat(deps: ManagerDeps, rec: SandboxRecord, metaPath: string, signal: AbortSignal): Promise<void> {
  const meta = JSON.parse(await readFile(metaPath, 'utf8')) as PausedMeta;
  if (meta.compat === undefined) return;
  const diffs = compatDifferences(meta.compat, await deps.vmm.snapshotCompat(signal));
  if (diffs.length === 0) return;
  throw new ConflictError(`sandbox ${rec.id} was paused under another VMM set-up and cannot be resumed on this host as it is now: ${diffs.join(', ')}; it stays paused, and resumes once the host runs the VMM it was paused under again`);
}

/** The token of a paused sandbox's disk, from its meta.json (older pauses wrote none: their base was the template's). */
export async function pausedDisk(paused: string, rec: SandboxRecord, template: Template): Promise<DetachedDisk> {
  const meta = JSON.parse(await readFile(pausedAt(paused).meta, 'utf8')) as PausedMeta;
  if (meta.disk) return meta.disk;
  return {
    sandboxId: rec.id, backend: 'copy', dir: paused, files: [],
    base: { id: template.id, path: template.rootfsPath, sizeBytes: template.rootfsSizeBytes },
  };
}
