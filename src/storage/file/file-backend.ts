import { constants } from 'node:fs';
import { copyFile, mkdir, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { throwIfAborted } from '../../core/errors.js';
import { allocatedBytes, exists } from '../../util/fs.js';
import { runCommand, type CommandRunner } from '../../util/exec.js';
import type { BaseImage, DetachedDisk, RootDisk, RootfsBackend } from '../types.js';

const DISK_FILE = 'rootfs.ext4';

/**
 * Backends where a sandbox's disk is one regular file in its directory:
 *  - reflink: FICLONE copy (O(1), shared extents) on XFS or btrfs;
 *  - copy: full sparse copy; the fallback and the benchmark baseline.
 * The disk's size is the base image's size, so a guest that fills it gets
 * ENOSPC inside its own filesystem; the host only ever sees blocks up to that size.
 */
export class FileRootfsBackend implements RootfsBackend {
  /** A disk is a standalone file: its base can go once it is made. */
  readonly readsBase = false;

  constructor(
    readonly kind: 'reflink' | 'copy',
    private readonly sandboxesDir: string,
    private readonly run: CommandRunner = runCommand,
  ) {}

  private diskPath(sandboxId: string): string {
    return join(this.sandboxesDir, sandboxId, DISK_FILE);
  }

  async create(sandboxId: string, base: BaseImage, signal: AbortSignal): Promise<RootDisk> {
    throwIfAborted(signal);
    const path = this.diskPath(sandboxId);
    await mkdir(join(this.sandboxesDir, sandboxId), { recursive: true });
    try {
      await cloneFile(this.kind, base.path, path, signal, this.run);
    } catch (err) {
      await unlink(path).catch(() => undefined);
      throw err;
    }
    return { sandboxId, backend: this.kind, devicePath: path, files: [path], base };
  }

  async detach(disk: RootDisk, intoDir: string, signal: AbortSignal): Promise<DetachedDisk> {
    throwIfAborted(signal);
    await mkdir(intoDir, { recursive: true });
    const dst = join(intoDir, DISK_FILE);
    // Idempotent: a disk already moved (a retried or recovered pause) is not an error.
    if (disk.devicePath !== dst && (await exists(disk.devicePath) || !(await exists(dst)))) await rename(disk.devicePath, dst);
    return { sandboxId: disk.sandboxId, backend: this.kind, base: disk.base, dir: intoDir, files: [dst] };
  }

  async attach(token: DetachedDisk, signal: AbortSignal): Promise<RootDisk> {
    throwIfAborted(signal);
    const path = this.diskPath(token.sandboxId);
    await mkdir(join(this.sandboxesDir, token.sandboxId), { recursive: true });
    const src = join(token.dir, DISK_FILE);
    if (src !== path) await rename(src, path);
    return { sandboxId: token.sandboxId, backend: this.kind, devicePath: path, files: [path], base: token.base };
  }

  async reclaim(token: DetachedDisk, signal: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    const path = this.diskPath(token.sandboxId);
    const dst = join(token.dir, DISK_FILE);
    if (path === dst || !(await exists(path))) return;
    await mkdir(token.dir, { recursive: true });
    await rename(path, dst);
  }

  async flatten(disk: RootDisk, outPath: string, signal: AbortSignal): Promise<void> {
    await cloneFile(this.kind, disk.devicePath, outPath, signal, this.run);
  }

  async remove(disk: RootDisk): Promise<void> {
    for (const f of disk.files) await unlink(f).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  async usage(disk: RootDisk): Promise<{ allocatedBytes: number }> {
    let total = 0;
    for (const f of disk.files) total += await allocatedBytes(f);
    return { allocatedBytes: total };
  }

  /** For tests and doctor: does the disk file exist? */
  async present(disk: RootDisk): Promise<boolean> { return exists(disk.devicePath); }
}

/** FICLONE when reflinking (fails rather than silently copying), sparse `cp` when copying. */
export async function cloneFile(kind: 'reflink' | 'copy', src: string, dst: string, signal: AbortSignal, run: CommandRunner = runCommand): Promise<void> {
  throwIfAborted(signal);
  if (kind === 'reflink') {
    await copyFile(src, dst, constants.COPYFILE_FICLONE_FORCE);
    return;
  }
  // Node's copyFile may fill holes; cp keeps the image sparse.
  await run('cp', ['--sparse=always', '--reflink=never', src, dst], { signal });
}
