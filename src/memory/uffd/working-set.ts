/**
 * The working set of a snapshot: the memory-file pages a restore touched
 * until its guest was ready, in first-touch order. The first UFFD restore of
 * a snapshot records it; later restores copy those pages in before the guest
 * asks for them (prefetch), and add what they still had to fault.
 *
 * File format (JSON, written atomically): {format, pageSize, memoryBytes,
 * pages: base64 of little-endian u32 page indices, recordedAt, restores}.
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export interface WorkingSet {
  pageSize: number;
  memoryBytes: number;
  /** Memory-file page indices (units of pageSize), first touch first. */
  pages: Uint32Array;
  recordedAt: string;
  /** How many restores contributed. */
  restores: number;
}

interface WorkingSetFile {
  format: 1;
  pageSize: number;
  memoryBytes: number;
  pages: string;
  recordedAt: string;
  restores: number;
}

export const WORKING_SET_FILE = 'uffd-working-set.json';

function toLE(pages: Uint32Array): Buffer {
  const b = Buffer.alloc(pages.length * 4);
  for (let i = 0; i < pages.length; i++) b.writeUInt32LE(pages[i]!, i * 4);
  return b;
}

function fromLE(b: Buffer): Uint32Array {
  const out = new Uint32Array(Math.floor(b.length / 4));
  for (let i = 0; i < out.length; i++) out[i] = b.readUInt32LE(i * 4);
  return out;
}

/** The working set at `path`, or undefined if there is none or it does not fit this memory layout. */
export async function readWorkingSet(path: string, expect?: { pageSize: number; memoryBytes: number }): Promise<WorkingSet | undefined> {
  let f: WorkingSetFile;
  try { f = JSON.parse(await readFile(path, 'utf8')) as WorkingSetFile; } catch { return undefined; }
  if (f.format !== 1 || typeof f.pages !== 'string' || !Number.isInteger(f.pageSize) || !Number.isInteger(f.memoryBytes)) return undefined;
  if (expect && (f.pageSize !== expect.pageSize || f.memoryBytes !== expect.memoryBytes)) return undefined;
  const pages = fromLE(Buffer.from(f.pages, 'base64'));
  const max = f.memoryBytes / f.pageSize;
  if (pages.some((p) => p >= max)) return undefined;
  return { pageSize: f.pageSize, memoryBytes: f.memoryBytes, pages, recordedAt: f.recordedAt, restores: f.restores ?? 1 };
}

export async function writeWorkingSet(path: string, ws: WorkingSet): Promise<void> {
  const body: WorkingSetFile = {
    format: 1, pageSize: ws.pageSize, memoryBytes: ws.memoryBytes, pages: toLE(ws.pages).toString('base64'),
    recordedAt: ws.recordedAt, restores: ws.restores,
  };
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(JSON.stringify(body) + '\n');
    await fh.sync();
  } finally {
    await fh.close();
  }
  try { await rename(tmp, path); } catch (err) { await rm(tmp, { force: true }); throw err; }
}

/** `base` followed by the pages of `more` it lacks (order kept). */
export function mergeWorkingSet(base: Uint32Array | undefined, more: Uint32Array): Uint32Array {
  if (!base || base.length === 0) return Uint32Array.from(new Set(more));
  const seen = new Set(base);
  const extra: number[] = [];
  for (const p of more) if (!seen.has(p)) { seen.add(p); extra.push(p); }
  if (extra.length === 0) return base;
  const out = new Uint32Array(base.length + extra.length);
  out.set(base);
  out.set(extra, base.length);
  return out;
}
