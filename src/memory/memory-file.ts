/**
 * Snapshot memory files (docs/firecracker.md, "What a snapshot holds"): raw guest RAM, all regions
 * back to back. These helpers work on their sparseness, which Node cannot see
 * by itself (SEEK_DATA/SEEK_HOLE and PUNCH_HOLE come from the uffd addon):
 *
 *  - `dataBitmap`: which pages hold data; the page server answers faults on
 *    the others with zero pages instead of reading the file;
 *  - `punchZeroPages`: turns all-zero pages of a Full snapshot into holes
 *    (smaller files, faster UFFD restores). Never use it on a Diff layer
 *    that is still to be merged: a dirty page that happens to be zero would
 *    be lost (docs/firecracker.md, "Diff snapshots");
 *  - `rebaseMemory`: merges a Diff layer into its base (the extents of the
 *    diff copied over the base at the same offsets), like
 *    `snapshot-editor edit-memory rebase`;
 *  - `cloneFile`: a reflink copy where the filesystem can, else a full copy.
 */
import { constants as fsConstants } from 'node:fs';
import { copyFile, open, stat } from 'node:fs/promises';
import { HostFailureError, errorMessage } from '../core/errors.js';
import { loadUffdAddon } from './uffd/native.js';

export interface Extent { offset: number; length: number }

export function dataExtents(path: string): Extent[] {
  let raw: Float64Array;
  try { raw = loadUffdAddon().dataExtents(path); } catch (err) {
    throw new HostFailureError(`cannot read the data extents of ${path}: ${errorMessage(err)}`, { cause: err });
  }
  const out: Extent[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) out.push({ offset: raw[i]!, length: raw[i + 1]! });
  return out;
}

export interface DataBitmap {
  /** Bit i (LSB first) set = page i overlaps a data extent. */
  bitmap: Uint8Array;
  pages: number;
  dataPages: number;
}

/** Page bitmap of a memory file's data; a page partly covered by data counts as data. */
export function dataBitmap(path: string, pageSize: number, fileBytes: number): DataBitmap {
  if (fileBytes % pageSize !== 0) throw new HostFailureError(`memory file ${path} (${fileBytes} bytes) is not a whole number of ${pageSize}-byte pages`);
  const pages = fileBytes / pageSize;
  const bitmap = new Uint8Array(Math.ceil(pages / 8));
  let dataPages = 0;
  for (const e of dataExtents(path)) {
    const first = Math.floor(e.offset / pageSize);
    const last = Math.min(pages, Math.ceil((e.offset + e.length) / pageSize));
    for (let p = first; p < last; p++) {
      const bit = 1 << (p & 7);
      if (!(bitmap[p >> 3]! & bit)) { bitmap[p >> 3]! |= bit; dataPages++; }
    }
  }
  return { bitmap, pages, dataPages };
}

/** Punches holes where whole pages are zero; returns the bytes freed. For Full snapshots only. */
export async function punchZeroPages(path: string, pageSize = 4096): Promise<{ punchedBytes: number; scannedBytes: number }> {
  try {
    return await loadUffdAddon().punchZeroPages(path, pageSize);
  } catch (err) {
    throw new HostFailureError(`cannot punch zero pages in ${path}: ${errorMessage(err)}`, { cause: err });
  }
}

/**
 * Merges a Diff memory file into its base in place: each data extent of
 * `diffPath` is copied to the same offset of `basePath`. Both must have the
 * guest's memory size. The diff's holes must be exactly its clean pages: do
 * not pass a diff whose zero pages were punched or that was copied with a
 * tool that makes holes.
 */
export async function rebaseMemory(basePath: string, diffPath: string): Promise<{ copiedBytes: number }> {
  const [b, d] = await Promise.all([stat(basePath), stat(diffPath)]);
  if (b.size !== d.size) throw new HostFailureError(`cannot rebase: ${diffPath} has ${d.size} bytes but its base ${basePath} has ${b.size}`);
  const src = await open(diffPath, 'r');
  const dst = await open(basePath, 'r+');
  let copied = 0;
  try {
    const buf = Buffer.allocUnsafe(4 << 20);
    for (const e of dataExtents(diffPath)) {
      for (let pos = e.offset; pos < e.offset + e.length;) {
        const n = Math.min(buf.length, e.offset + e.length - pos);
        const { bytesRead } = await src.read(buf, 0, n, pos);
        if (bytesRead <= 0) throw new HostFailureError(`unexpected end of ${diffPath} at ${pos}`);
        await dst.write(buf, 0, bytesRead, pos);
        pos += bytesRead;
        copied += bytesRead;
      }
    }
    await dst.sync();
  } finally {
    await src.close();
    await dst.close();
  }
  return { copiedBytes: copied };
}

/** Copies `src` to `dst` as a reflink where the filesystem supports it (O(1)), else byte by byte. */
export async function cloneFile(src: string, dst: string): Promise<'reflink' | 'copy'> {
  try {
    await copyFile(src, dst, fsConstants.COPYFILE_FICLONE_FORCE);
    return 'reflink';
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EOPNOTSUPP' && code !== 'ENOTSUP' && code !== 'EXDEV' && code !== 'EINVAL' && code !== 'ENOSYS') throw err;
  }
  await copyFile(src, dst);
  return 'copy';
}
