import { constants as C, promises as fsp, type BigIntStats } from 'node:fs';
import path from 'node:path';
import { create } from '@bufbuild/protobuf';
import { TimestampSchema } from '@bufbuild/protobuf/wkt';
import { EntryInfoSchema, FileType, type EntryInfo } from '../gen/filesystem/filesystem_pb.js';
import { groupNameForGid, userNameForUid } from './users.js';

/**
 * Go's `os.FileMode.String()` for a Unix st_mode: type letters from "dalTLDpSugct?" (only those
 * that apply; "-" if none), then rwxrwxrwx. E.g. "-rw-r--r--", "drwxr-xr-x", "Lrwxrwxrwx",
 * "dtrwxrwxrwx" (sticky dir), "Dcrw-rw-rw-" (char device).
 */
export function goFileModeString(mode: number): string {
  const fmt = mode & C.S_IFMT;
  let t = '';
  if (fmt === C.S_IFDIR) t += 'd';
  if (fmt === C.S_IFLNK) t += 'L';
  if (fmt === C.S_IFBLK || fmt === C.S_IFCHR) t += 'D';
  if (fmt === C.S_IFIFO) t += 'p';
  if (fmt === C.S_IFSOCK) t += 'S';
  if (mode & 0o4000) t += 'u'; // S_ISUID
  if (mode & 0o2000) t += 'g'; // S_ISGID
  if (fmt === C.S_IFCHR) t += 'c';
  if (mode & 0o1000) t += 't'; // S_ISVTX
  if (t === '') t = '-';
  const rwx = 'rwxrwxrwx';
  let perm = '';
  for (let i = 0; i < 9; i++) perm += mode & (1 << (8 - i)) ? rwx[i] : '-';
  return t + perm;
}

function fileTypeOf(mode: number): FileType {
  const fmt = mode & C.S_IFMT;
  if (fmt === C.S_IFREG) return FileType.FILE;
  if (fmt === C.S_IFDIR) return FileType.DIRECTORY;
  return FileType.UNSPECIFIED;
}

export function isNotFound(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/**
 * EntryInfo for `p` from lstat, like envd: for a symlink, `symlinkTarget` is the fully resolved
 * absolute target and `type`/`mode` describe the target; a dangling symlink has type UNSPECIFIED
 * and no target. `permissions` always describes the entry itself (a symlink gives "Lrwxrwxrwx").
 * Throws the lstat error (ENOENT etc.) for the caller to map.
 */
export async function entryInfo(p: string, st?: BigIntStats, metadata?: Record<string, string>): Promise<EntryInfo> {
  const lst = st ?? (await fsp.lstat(p, { bigint: true }));
  const mode = Number(lst.mode);
  let type = fileTypeOf(mode);
  let perm = mode & 0o777;
  let symlinkTarget: string | undefined;
  if ((mode & C.S_IFMT) === C.S_IFLNK) {
    try {
      symlinkTarget = await fsp.realpath(p);
      const target = await fsp.stat(symlinkTarget);
      type = fileTypeOf(target.mode);
      perm = target.mode & 0o777;
    } catch {
      symlinkTarget = undefined;
      type = FileType.UNSPECIFIED;
    }
  }
  const ns = lst.mtimeNs;
  return create(EntryInfoSchema, {
    name: path.basename(p),
    type,
    path: p,
    size: lst.size,
    mode: perm,
    permissions: goFileModeString(mode),
    owner: userNameForUid(Number(lst.uid)),
    group: groupNameForGid(Number(lst.gid)),
    modifiedTime: create(TimestampSchema, { seconds: ns / 1_000_000_000n, nanos: Number(ns % 1_000_000_000n) }),
    symlinkTarget,
    metadata: metadata ?? {},
  });
}
