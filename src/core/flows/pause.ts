import { mkdir, open, readFile, readdir, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Cleanup } from '../cleanup.js';
import { HostFailureError, errorMessage } from '../errors.js';
import type { StepTimer } from '../steps.js';
import type { SandboxRecord, Template } from '../types.js';
import type { DetachedDisk } from '../../storage/types.js';
import { exists, removeTree, writeFileAtomic } from '../../util/fs.js';
import { FILES, initBody, pausedDir, slotOptions, sandboxDir, vmConfig, type LiveSandbox, type ManagerDeps } from './context.js';
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
}

async function fsyncFile(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  try { await fh.sync(); } finally { await fh.close(); }
}

export type PauseOutcome =
  | { ok: true }
  /** The VM was resumed and stays usable; the error says why the pause failed. */
  | { ok: false; resumed: true; error: Error }
  /** Resources are released and the sandbox must be marked failed with `reason`. */
  | { ok: false; resumed: false; reason: string; error: Error };

/**
 * Pause (docs/ARCHITECTURE.md, "Pause order"): freeze vCPUs → write device
 * state (memory already lives in the sandbox's memory file) and flush memory; on
 * failure resume the vCPUs → stop the VMM and wait for its exit → detach the disk
 * into the paused dir → move memory + state there, write metadata atomically →
 * release the slot. After the VMM stopped, any failure still releases every host
 * resource and fails the sandbox: nothing stays half-alive.
 */
export async function pauseSandbox(deps: ManagerDeps, rec: SandboxRecord, live: LiveSandbox, steps: StepTimer, signal: AbortSignal): Promise<PauseOutcome> {
  const dir = sandboxDir(deps.config, rec.id);
  const staging = join(dir, 'pause-staging');
  const paused = pausedDir(deps.config, rec.id);
  // QEMU: guest memory is the VM's own file; Firecracker writes it into the staging dir.
  let memoryPath = join(dir, FILES.memory);
  try {
    await removeTree(staging);
    await mkdir(staging, { recursive: true });
    memoryPath = (await steps.run('snapshot', () => live.vmm.snapshot(staging, 'full', signal), signal)).memoryPath;
    // Durable before the VMM goes away: a paused sandbox must survive a host reboot.
    await steps.run('flush', async () => { await fsyncFile(memoryPath); await fsyncFile(join(staging, FILES.vmstate)); }, signal);
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

  // From here on the VM is gone or going: failures release everything and fail the sandbox.
  const cleanup = new Cleanup();
  cleanup.add('network slot', () => deps.network.release(live.slot));
  let diskDetached = false;
  let detached: DetachedDisk | undefined;
  try {
    live.stopping = true;
    await steps.run('stop', () => live.vmm.stop(AbortSignal.timeout(30_000)));
    await mkdir(paused, { recursive: true });
    detached = await steps.run('detach', () => deps.storage.detach(live.disk, paused, AbortSignal.timeout(60_000)));
    diskDetached = true;
    await steps.run('move', async () => {
      await rename(memoryPath, join(paused, FILES.memory));
      // The device state and whatever else the VMM wrote beside it (e.g. Firecracker's firecracker.json).
      for (const f of await readdir(staging)) await rename(join(staging, f), join(paused, f));
      const meta: PausedMeta = { sandboxId: rec.id, templateId: rec.templateId, vcpus: rec.vcpus, memoryMib: rec.memoryMib, pausedAt: new Date().toISOString(), disk: detached };
      await writeFileAtomic(join(paused, FILES.meta), JSON.stringify(meta, null, 2));
      await removeTree(staging);
    });
    await steps.run('release', () => cleanup.run().then((errs) => { if (errs.length) throw errs[0]; }));
    return { ok: true };
  } catch (err) {
    if (!diskDetached) cleanup.add('root disk', () => deps.storage.remove(live.disk, AbortSignal.timeout(60_000)));
    const errs = await cleanup.run();
    const reason = `pause failed after the VM stopped: ${errorMessage(err)}${errs.length ? `; cleanup: ${errs.map((e) => e.message).join('; ')}` : ''}`;
    return { ok: false, resumed: false, reason, error: err as Error };
  }
}

/**
 * Resume (docs/ARCHITECTURE.md, "Resume order"): slot → disk back from the paused dir → a copy of the
 * memory file (the paused one stays intact, so a failed attempt can be retried)
 * → restore → agent ready → /init (clock, entropy). If anything fails the VMM is
 * stopped, the disk is moved back into the paused dir (never deleted) and the
 * sandbox stays paused.
 */
export async function resumeSandbox(deps: ManagerDeps, rec: SandboxRecord, template: Template, steps: StepTimer, signal: AbortSignal): Promise<LiveSandbox> {
  const paused = pausedDir(deps.config, rec.id);
  if (!(await exists(join(paused, FILES.meta)))) {
    throw new HostFailureError(`sandbox ${rec.id} is paused but its paused files are incomplete (no ${FILES.meta} in ${paused})`);
  }
  const cleanup = new Cleanup();
  try {
    const slot = await steps.run('slot', () => deps.network.acquire(signal, slotOptions(rec)), signal);
    cleanup.add('network slot', () => deps.network.release(slot));
    const token = await pausedDisk(paused, rec, template);
    const disk = await steps.run('attach', () => deps.storage.attach(token, signal), signal);
    cleanup.add('root disk back to the paused dir', () => deps.storage.detach(disk, paused, AbortSignal.timeout(60_000)).then(() => undefined));
    const vmm = deps.vmm.create();
    const cfg = vmConfig(deps.config, rec, template, slot, disk);
    // A VMM that writes guest memory into its file runs on a copy: the paused memory is never
    // consumed, so a failed resume can be retried. One that maps the file privately reads it as is.
    if (!deps.vmm.restoreMapsSnapshotMemory) {
      await steps.run('memory', () => deps.cloneFile(join(paused, FILES.memory), cfg.memoryFilePath, signal), signal);
      cleanup.add('memory copy', () => unlink(cfg.memoryFilePath).catch(() => undefined));
    }
    const live: LiveSandbox = { vmm, slot, disk, stopping: false };
    cleanup.addPriority('vmm', async () => { live.stopping = true; await vmm.stop(AbortSignal.timeout(30_000)); });
    const snap = { dir: paused, statePath: join(paused, FILES.vmstate), memoryPath: join(paused, FILES.memory) };
    await steps.run('restore', () => vmm.restore(snap, cfg, signal), signal);
    rec.vmm = { kind: vmm.kind, pid: vmm.pid, runDir: sandboxDir(deps.config, rec.id) };
    const endpoint = slot.guestAddress(deps.config.agentPort);
    await steps.run('agent', () => waitForAgent(deps, endpoint, rec.agentToken, live, cfg.consoleLogPath, deps.config.restoreTimeoutMs, signal), signal);
    await vmm.markReady?.();
    await steps.run('init', () => deps.agent(endpoint, rec.agentToken).init(initBody(rec), signal), signal);
    cleanup.commit();
    rec.agent = endpoint;
    rec.network = slot.vmNetwork;
    rec.disk = disk;
    await removeTree(paused);
    return live;
  } catch (err) {
    const errs = await cleanup.run();
    if (errs.length) {
      throw new HostFailureError(`resume of ${rec.id} failed (${errorMessage(err)}) and cleanup failed too: ${errs.map((e) => e.message).join('; ')}`, { cause: err });
    }
    throw err;
  }
}

/** The token of a paused sandbox's disk, from its meta.json (older pauses wrote none: their base was the template's). */
async function pausedDisk(paused: string, rec: SandboxRecord, template: Template): Promise<DetachedDisk> {
  const meta = JSON.parse(await readFile(join(paused, FILES.meta), 'utf8')) as PausedMeta;
  if (meta.disk) return meta.disk;
  return {
    sandboxId: rec.id, backend: 'copy', dir: paused, files: [],
    base: { id: template.id, path: template.rootfsPath, sizeBytes: template.rootfsSizeBytes },
  };
}
