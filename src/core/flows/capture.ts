import { mkdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { errorMessage, HostFailureError } from '../errors.js';
import type { StepTimer } from '../steps.js';
import type { SandboxRecord, SnapshotKind, SnapshotRecord, Template } from '../types.js';
import { exists, removeTree } from '../../util/fs.js';
import { randomId } from '../ids.js';
import { FILES, snapshotsDir, type LiveSandbox, type ManagerDeps } from './context.js';

export function newSnapshotId(): string { return `s${randomId(20)}`; }

/**
 * Capture a running sandbox into a snapshot directory while it keeps running
 * after a short freeze: pause vCPUs → device state → a copy of the memory file
 * (reflink where possible) → the disk flattened to a standalone image → resume.
 * The VM is resumed whatever happens (fresh signal); a failed capture leaves no
 * directory behind. Returns the record; the caller stores it.
 */
export async function captureSnapshot(
  deps: ManagerDeps, rec: SandboxRecord, template: Template, live: LiveSandbox,
  opts: { kind: SnapshotKind; name: string | null; dir?: string }, steps: StepTimer, signal: AbortSignal,
): Promise<SnapshotRecord> {
  const id = newSnapshotId();
  const finalDir = opts.dir ?? join(snapshotsDir(deps.config), id);
  const staging = `${finalDir}.staging`;
  await removeTree(staging);
  await mkdir(staging, { recursive: true });
  let resumeError: unknown;
  try {
    try {
      const files = await steps.run('freeze+state', () => live.vmm.snapshot(staging, 'full', signal), signal);
      // QEMU leaves guest memory in the VM's own file (cloned here); Firecracker writes it into the snapshot dir.
      if (files.memoryPath !== join(staging, FILES.memory)) {
        await steps.run('memory', () => deps.cloneFile(files.memoryPath, join(staging, FILES.memory), signal), signal);
      }
      await steps.run('disk', () => deps.storage.flatten(live.disk, join(staging, FILES.rootfs), signal), signal);
    } finally {
      try {
        await steps.run('resume', () => live.vmm.resume(AbortSignal.timeout(10_000)));
      } catch (err) {
        resumeError = err;
      }
    }
    if (resumeError) throw new HostFailureError(`the VM of ${rec.id} could not be resumed after the snapshot: ${errorMessage(resumeError)}`);
    await removeTree(finalDir);
    await rename(staging, finalDir);
  } catch (err) {
    await removeTree(staging).catch(() => undefined);
    throw err;
  }
  return {
    id,
    name: opts.name,
    kind: opts.kind,
    sandboxId: rec.id,
    templateId: template.id,
    imageHash: template.imageHash,
    dir: finalDir,
    vcpus: rec.vcpus,
    memoryMib: rec.memoryMib,
    agentToken: rec.agentToken,
    envVars: rec.envVars,
    createdAt: new Date().toISOString(),
    compat: await deps.vmm.snapshotCompat(AbortSignal.timeout(30_000)),
  };
}

/** Remove a snapshot's files (its row is the caller's). */
export async function removeSnapshotFiles(snap: SnapshotRecord): Promise<void> {
  await removeTree(snap.dir);
  await removeTree(`${snap.dir}.staging`);
}

export async function snapshotComplete(snap: SnapshotRecord): Promise<boolean> {
  for (const f of [FILES.vmstate, FILES.memory, FILES.rootfs]) if (!(await exists(join(snap.dir, f)))) return false;
  return true;
}
