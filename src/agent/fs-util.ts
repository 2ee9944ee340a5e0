import { promises as fsp } from 'node:fs';
import path from 'node:path';

/**
 * `mkdir -p` where each directory that did not exist is created with mode 0755 and chowned to
 * uid:gid (envd's EnsureDirs). Throws ENOTDIR-style errors if a component is a file.
 */
export async function ensureDirs(dir: string, uid: number, gid: number): Promise<void> {
  const parts: string[] = [];
  let cur = path.resolve(dir);
  for (;;) {
    parts.push(cur);
    const parent = path.dirname(cur);
    if (parent === cur) break;
    cur = parent;
  }
  parts.reverse();
  for (const p of parts) {
    let st;
    try {
      st = await fsp.stat(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      try {
        await fsp.mkdir(p, 0o755);
      } catch (me) {
        if ((me as NodeJS.ErrnoException).code !== 'EEXIST') throw me;
        continue;
      }
      await chownIfRoot(p, uid, gid);
      continue;
    }
    if (!st.isDirectory()) {
      const err = new Error(`path is a file: ${p}`) as NodeJS.ErrnoException;
      err.code = 'ENOTDIR';
      throw err;
    }
  }
}

/** chown that is a no-op when the agent is not root (host tests as an ordinary user). */
export async function chownIfRoot(p: string, uid: number, gid: number): Promise<void> {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return;
  await fsp.chown(p, uid, gid);
}

/** Filesystem magic numbers of network/FUSE mounts (linux/magic.h), refused by WatchDir unless allowed. */
const NETWORK_FS_MAGIC = new Set([0x6969, 0xff534d42, 0x517b, 0xfe534d42, 0x65735546]);

export async function isNetworkMount(p: string): Promise<boolean> {
  const statfs = (fsp as unknown as { statfs?: (p: string) => Promise<{ type: number }> }).statfs;
  if (!statfs) return false;
  const st = await statfs(p);
  return NETWORK_FS_MAGIC.has(st.type >>> 0);
}
