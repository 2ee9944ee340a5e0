import { open, readdir, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';

/** Write temp, fsync, rename, fsync dir: a reader sees the old or the new content, never half. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = join(dirname(path), `.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  const dir = await open(dirname(path), 'r');
  try { await dir.sync(); } finally { await dir.close(); }
}

/** Real allocated bytes of a file (st_blocks * 512), 0 if it doesn't exist. */
export async function allocatedBytes(path: string): Promise<number> {
  try {
    const st = await stat(path);
    return st.blocks * 512;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
}

export async function exists(path: string): Promise<boolean> {
  try { await stat(path); return true; } catch { return false; }
}

export async function removeTree(path: string): Promise<void> {
  await rm(path, { recursive: true, force: true });
}

/** A directory's regular files with their sizes, and the names of whatever else it holds (directories, links…). */
export async function regularFiles(dir: string): Promise<{ files: { name: string; size: number }[]; others: string[] }> {
  const files: { name: string; size: number }[] = [];
  const others: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (e.isFile()) files.push({ name: e.name, size: (await stat(join(dir, e.name))).size });
    else others.push(e.name);
  }
  return { files, others };
}

export { writeFile };
