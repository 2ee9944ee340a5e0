import { mkdir, readFile, readdir, open, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { runCommand, type CommandRunner } from '../util/exec.js';
import { supportsReflink } from './select.js';
import { HostFailureError } from '../core/errors.js';

/**
 * `hearth storage init`: where the data dir's filesystem has no reflinks
 * (ext4), create a sparse XFS image with reflink=1 beside it, attach it to a
 * loop device and mount it on the data dir. Then sandbox disks and memory
 * files are FICLONE copies (milliseconds) instead of full copies.
 */
export interface ReflinkMount {
  image: string;
  mountpoint: string;
  loopDevice: string;
  /** False when the data dir already supported reflinks or was already mounted. */
  created: boolean;
}

async function mountedDevice(mountpoint: string): Promise<string | null> {
  const mounts = await readFile('/proc/self/mounts', 'utf8');
  for (const line of mounts.split('\n')) {
    const [dev, mnt] = line.split(' ');
    if (mnt === mountpoint) return dev ?? null;
  }
  return null;
}

/**
 * XFS copy-on-write extent size hint for files created under the data dir (bytes). XFS's
 * default (32 blocks, 128 KiB) allocates 128 KiB for every 4 KiB page a freshly restored
 * guest writes into its reflinked memory file (and disk): ~92-115 MiB of new blocks per
 * sandbox measured right after create. One block allocates only what is written
 * (docs/performance.md). Directories pass the hint on to what is created in them.
 */
export const COW_EXTENT_HINT_BYTES = 4096;

/**
 * Set the CoW extent size hint on `dataDir` and its direct subdirectories, so every sandbox,
 * snapshot and template directory created from now on (and their files) inherits it. Best
 * effort: false (and no error) where the filesystem or xfs_io cannot.
 */
export async function setCowExtentHint(dataDir: string, opts: { bytes?: number; run?: CommandRunner } = {}): Promise<boolean> {
  const run = opts.run ?? runCommand;
  const dirs = [dataDir];
  for (const e of await readdir(dataDir, { withFileTypes: true }).catch(() => [])) if (e.isDirectory()) dirs.push(`${dataDir.replace(/\/+$/, '')}/${e.name}`);
  try {
    for (const d of dirs) await run('xfs_io', ['-c', `cowextsize ${opts.bytes ?? COW_EXTENT_HINT_BYTES}`, d]);
    return true;
  } catch {
    return false;
  }
}

export async function initReflinkDataDir(dataDir: string, opts: { sizeGiB?: number; image?: string; run?: CommandRunner } = {}): Promise<ReflinkMount | null> {
  const run = opts.run ?? runCommand;
  const image = opts.image ?? `${dataDir.replace(/\/+$/, '')}.xfs.img`;
  await mkdir(dataDir, { recursive: true });
  const dev = await mountedDevice(dataDir);
  if (dev) {
    // Also for data dirs mounted by an earlier `hearth storage init` (every start.sh run passes here).
    await setCowExtentHint(dataDir, { run });
    return { image, mountpoint: dataDir, loopDevice: dev, created: false };
  }
  if (await supportsReflink(dataDir)) return null;
  if ((await readdir(dataDir)).length > 0 && !existsSync(image)) {
    throw new HostFailureError(`${dataDir} is not empty and has no reflink support; move its contents away (or choose another --data-dir) before \`hearth storage init\` mounts an XFS filesystem on it`);
  }
  if (!existsSync(image)) {
    const fh = await open(image, 'w', 0o600);
    await fh.truncate((opts.sizeGiB ?? 64) * 1024 ** 3);
    await fh.close();
    await run('mkfs.xfs', ['-q', '-m', 'reflink=1', '-L', 'hearth', image]);
  }
  const { stdout } = await run('losetup', ['--find', '--show', image]);
  const loop = stdout.trim();
  try {
    await run('mount', ['-t', 'xfs', '-o', 'noatime', loop, dataDir]);
  } catch (err) {
    await run('losetup', ['-d', loop], { allowFailure: true });
    throw err;
  }
  await setCowExtentHint(dataDir, { run });
  return { image, mountpoint: dataDir, loopDevice: loop, created: true };
}

/** Undo initReflinkDataDir (tests): unmount, detach the loop device, optionally delete the image. */
export async function teardownReflinkDataDir(m: ReflinkMount, opts: { deleteImage?: boolean; run?: CommandRunner } = {}): Promise<void> {
  const run = opts.run ?? runCommand;
  await run('umount', [m.mountpoint]);
  await run('losetup', ['-d', m.loopDevice], { allowFailure: true });
  if (opts.deleteImage) await rm(m.image, { force: true });
}

