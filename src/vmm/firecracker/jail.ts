/**
 * Putting files into a VM root (layout.ts) under their constant names.
 *
 * Direct spawns (`none`, `mountns`) use symlinks: Firecracker runs in the
 * host's filesystem and follows them. The jailer's chroot cannot see outside
 * itself, so there files are hard links (same filesystem), device nodes
 * (block devices: same major/minor), copies (small read-only files) or bind
 * mounts (large files on another filesystem; unmounted by `unstage`). Files
 * the jailed process writes are chowned to the jail's uid/gid.
 */
import { constants as fsConstants } from 'node:fs';
import { chmod, chown, copyFile, link, lstat, mkdir, open, rename, rm, stat, symlink, unlink } from 'node:fs/promises';
import path from 'node:path';
import { HostFailureError, errorMessage } from '../../core/errors.js';
import { run } from '../../images/run.js';
import { dataExtents } from '../../memory/memory-file.js';
import type { JailerSettings, VmLayout } from './layout.js';

export interface StageRequest {
  /** Name inside the root (config.ts ROOT). */
  name: string;
  source: string;
  /** Large files (disks, memory) are never copied. */
  large: boolean;
  /** The jailed process writes it (chown to the jail user). */
  writable: boolean;
}

/** Stages one file; returns the bind mount it made (jailer, cross-filesystem), if any. */
export async function stageFile(layout: VmLayout, jailer: JailerSettings | undefined, req: StageRequest): Promise<string | undefined> {
  const target = path.join(layout.root, req.name);
  await mkdir(path.dirname(target), { recursive: true });
  await rm(target, { force: true });
  if (layout.mode !== 'jailer') {
    await symlink(req.source, target);
    return undefined;
  }
  const j = jailer!;
  let st;
  try { st = await stat(req.source); } catch (err) {
    throw new HostFailureError(`cannot stage ${req.source} into the jail: ${errorMessage(err)}`, { cause: err });
  }
  if (st.isBlockDevice()) {
    const rdev = st.rdev;
    const major = Math.floor(rdev / 256) & 0xfff | (Math.floor(rdev / 2 ** 32) & ~0xfff);
    const minor = (rdev & 0xff) | (Math.floor(rdev / 4096) & ~0xff);
    await run('mknod', ['-m', req.writable ? '0660' : '0440', target, 'b', String(major), String(minor)]);
    await chown(target, j.uid, j.gid);
    return undefined;
  }
  if (!st.isFile()) throw new HostFailureError(`${req.source} is neither a regular file nor a block device`);
  if (req.writable) await chown(req.source, j.uid, j.gid);
  try {
    await link(req.source, target);
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EXDEV' && code !== 'EPERM' && code !== 'EMLINK') throw err;
  }
  if (!req.large) {
    await copyFile(req.source, target, fsConstants.COPYFILE_FICLONE);
    await chown(target, j.uid, j.gid);
    await chmod(target, req.writable ? 0o600 : 0o400);
    return undefined;
  }
  const fh = await open(target, 'w', 0o600);
  await fh.close();
  await run('mount', ['--bind', req.source, target]);
  return target;
}

/** Undoes bind mounts made by stageFile (lazy unmount: a dying process may still hold them). */
export async function unstage(mounts: string[]): Promise<string[]> {
  const errors: string[] = [];
  for (const m of [...mounts].reverse()) {
    try { await run('umount', ['-l', m]); } catch (err) {
      if (!/not mounted|no mount point|not found/i.test(errorMessage(err))) errors.push(`umount ${m}: ${errorMessage(err)}`);
    }
  }
  return errors;
}

/** Moves a file out of the jail: rename, or (another filesystem) a copy that keeps holes. */
export async function moveOut(src: string, dst: string): Promise<void> {
  try {
    await rename(src, dst);
    return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
  }
  await copySparse(src, dst);
  await unlink(src);
}

/** Copies only the data extents of `src` (holes stay holes: a Diff memory file must keep them). */
export async function copySparse(src: string, dst: string): Promise<void> {
  const { size } = await stat(src);
  const tmp = `${dst}.tmp-${process.pid}`;
  const out = await open(tmp, 'w', 0o600);
  const inp = await open(src, 'r');
  try {
    await out.truncate(size);
    const buf = Buffer.allocUnsafe(4 << 20);
    for (const e of dataExtents(src)) {
      for (let pos = e.offset; pos < e.offset + e.length;) {
        const { bytesRead } = await inp.read(buf, 0, Math.min(buf.length, e.offset + e.length - pos), pos);
        if (bytesRead <= 0) break;
        await out.write(buf, 0, bytesRead, pos);
        pos += bytesRead;
      }
    }
    await out.sync();
  } finally {
    await inp.close();
    await out.close();
  }
  await rename(tmp, dst);
}

/** Is `p` a symlink/file/dir that exists (lstat)? */
export async function present(p: string): Promise<boolean> {
  try { await lstat(p); return true; } catch { return false; }
}
