/** Small filesystem helpers shared by the image builders. */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { HostFailureError } from '../core/errors.js';
import { run as defaultRun, type Runner } from './run.js';

/** Write a file atomically: temp file in the same directory, fsync, rename, fsync the directory. */
export async function atomicWriteFile(path: string, data: string | Buffer, mode = 0o644): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  const fh = await open(tmp, 'w', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await fsyncDir(dir);
}

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } catch {
    /* some filesystems refuse fsync on directories; the rename is still atomic */
  } finally {
    await fh.close();
  }
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

export async function readJson<T>(path: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** A unique sibling path for building `final` in, so that a rename publishes it. */
export function tempSibling(final: string, tag = 'tmp'): string {
  return join(dirname(final), `.${basename(final)}.${tag}-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/**
 * Publish a fully built directory `tmpDir` at `finalDir` by rename. If another
 * builder won the race (finalDir exists and `isComplete(finalDir)`), keep theirs
 * and delete ours; if finalDir is an incomplete leftover, replace it.
 */
export async function publishDir(
  tmpDir: string,
  finalDir: string,
  isComplete: (dir: string) => Promise<boolean>,
): Promise<void> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await rename(tmpDir, finalDir);
      await fsyncDir(dirname(finalDir));
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
      if (await isComplete(finalDir)) {
        await rm(tmpDir, { recursive: true, force: true });
        return;
      }
      // An incomplete leftover (crashed build): move it aside, then delete it.
      const stale = tempSibling(finalDir, 'stale');
      try {
        await rename(finalDir, stale);
      } catch {
        /* someone else moved it; retry */
      }
      await rm(stale, { recursive: true, force: true });
    }
  }
  throw new Error(`could not publish ${tmpDir} at ${finalDir}`);
}

/** Mount points at or below `dir`, deepest first (from /proc/self/mounts). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const text = await readFile('/proc/self/mounts', 'utf8').catch(() => '');
  const decode = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const prefix = dir.replace(/\/+$/, '');
  return text
    .split('\n')
    .map((l) => l.split(' ')[1])
    .filter((m): m is string => !!m)
    .map(decode)
    .filter((m) => m === prefix || m.startsWith(prefix + '/'))
    .sort((a, b) => b.length - a.length);
}

/** Remove a directory tree that may still have mounts in it (an aborted debootstrap leaves proc/sys). */
export async function removeTree(dir: string, run: Runner = defaultRun): Promise<void> {
  for (const m of await mountsUnder(dir)) {
    await run('umount', ['-l', m]).catch(() => undefined);
  }
  if ((await mountsUnder(dir)).length) throw new HostFailureError(`cannot unmount everything under ${dir}; not deleting it`);
  await rm(dir, { recursive: true, force: true });
}

/** Remove `.name.build-<pid>-xxxx` leftovers of builds whose process is gone. */
export async function reapStaleTemps(dir: string, run: Runner = defaultRun): Promise<void> {
  for (const n of await readdir(dir).catch(() => [] as string[])) {
    const m = /^\..+\.(build|tmp|stale)-(\d+)-[0-9a-f]{8}$/.exec(n);
    if (!m) continue;
    const pid = Number(m[2]);
    if (pid !== process.pid && pidAlive(pid)) continue;
    if (pid === process.pid) continue; // ours, in progress
    await removeTree(join(dir, n), run).catch(() => undefined);
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
