import { mkdir, readdir, rename } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { errorMessage, HostFailureError } from '../errors.js';
import type { StepTimer } from '../steps.js';
import type { SandboxRecord, SnapshotKind, SnapshotRecord, Template } from '../types.js';
import { exists, removeTree } from '../../util/fs.js';
import { randomId } from '../ids.js';
import { placeSnapshotFiles, snapshotAt } from '../layout.js';
import type { SnapshotFiles, SnapshotWritten } from '../../vmm/types.js';
import { layoutOf, type LiveSandbox, type ManagerDeps } from './context.js';

export function newSnapshotId(): string { return `s${randomId(20)}`; }

/**
 * Capture a running sandbox into a snapshot directory while it keeps running
 * after a short freeze: pause vCPUs → device state → a copy of the memory file
 * (reflink where possible) → the disk flattened to a standalone image → resume.
 * The directory holds exactly the files the VMM reported (state and memory
 * under the layout's names, its metadata under its own) and the disk.
 * The VM is resumed whatever happens (fresh signal); a failed capture leaves no
 * directory behind. Returns the record; the caller stores it.
 */
export async function captureSnapshot(
  deps: ManagerDeps, rec: SandboxRecord, template: Template, live: LiveSandbox,
  opts: { kind: SnapshotKind; name: string | null; dir?: string }, steps: StepTimer, signal: AbortSignal,
): Promise<SnapshotRecord> {
  const id = newSnapshotId();
  const finalDir = opts.dir ?? layoutOf(deps.config).snapshot(id).dir;
  const { staging } = snapshotAt(finalDir);
  const inStaging = snapshotAt(staging);
  await removeTree(staging);
  await mkdir(staging, { recursive: true });
  let resumeError: unknown;
  let written: SnapshotWritten | undefined;
  try {
    try {
      written = await steps.run('freeze+state', () => live.vmm.snapshot(staging, 'full', signal), signal);
      // Exactly the files the VMM reported, under the layout's names: one in the snapshot dir is renamed
      // in place; one elsewhere (QEMU's guest RAM is the VM's own file, which it keeps running on) is cloned.
      const outside: { from: string; to: string }[] = [];
      for (const f of placeSnapshotFiles(staging, written)) {
        if (dirname(f.from) !== staging) outside.push(f);
        else if (f.from !== f.to) await rename(f.from, f.to);
      }
      if (outside.length) {
        await steps.run('memory', async () => { for (const f of outside) await deps.cloneFile(f.from, f.to, signal); }, signal);
      }
      await steps.run('disk', () => deps.storage.flatten(live.disk, inStaging.rootfs, signal), signal);
    } finally {
      try {
        await steps.run('resume', () => live.vmm.resume(AbortSignal.timeout(10_000)));
      } catch (err) {
        resumeError = err;
      }
    }
    if (resumeError) throw new HostFailureError(`the VM of ${rec.id} could not be resumed after the snapshot: ${errorMessage(resumeError)}`);
    // Whatever else the VMM left in the snapshot dir is not part of the snapshot.
    await removeUnlisted(staging, new Set([...placeSnapshotFiles(staging, written!).map((f) => f.to), inStaging.rootfs]));
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
  const paths = snapshotAt(snap.dir);
  await removeTree(paths.dir);
  await removeTree(paths.staging);
}

export async function snapshotComplete(snap: SnapshotRecord): Promise<boolean> {
  const paths = snapshotAt(snap.dir);
  for (const f of [paths.state, paths.memory, paths.rootfs]) if (!(await exists(f))) return false;
  return true;
}

/** The files a restore of a snapshot (or paused capture) in `dir` hands the VMM. */
export function snapshotFilesAt(dir: string): SnapshotFiles {
  const paths = snapshotAt(dir);
  return { dir, statePath: paths.state, memoryPath: paths.memory };
}

/** Remove the entries of `dir` not in `keep` (absolute paths). */
async function removeUnlisted(dir: string, keep: ReadonlySet<string>): Promise<void> {
  for (const name of await readdir(dir)) if (!keep.has(join(dir, name))) await removeTree(join(dir, name));
}
