/**
 * Moving a paused sandbox's files from node to node (docs/cluster.md, "Moving
 * a paused sandbox"): one byte stream that carries a manifest and then each
 * file, sparse (runs of zeros are not sent: a 2 GiB disk with 90 MiB written
 * moves as 90 MiB) and checksummed per file.
 *
 * Why not tar: the receiver would have to trust member names, links and modes
 * from another host and check them after the fact. This format can only say
 * "bytes at this offset of the file named in the manifest"; names are checked
 * before a file is created (O_EXCL, in a directory the receiver just made).
 *
 * Frames (integers big-endian):
 *   'M' u32 len, JSON          the manifest (first, once)
 *   'F' u16 len, name, u64 size  a file begins
 *   'D' u64 offset, u32 len, bytes  data at offset (zeros elsewhere)
 *   'E' 32 bytes               the file ends: SHA-256 over its size and every
 *                              D frame's offset, length and bytes, in order
 *   'Z'                        end of stream
 * The checksum covers exactly what the file's content is made of (data at
 * offsets, zeros elsewhere, its size), so equal checksums mean equal files.
 */
import { createHash, type Hash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';

/** Data frames carry at most this much; runs of zeros of this size are holes. */
export const CHUNK = 1 << 20;
const MAX_MANIFEST = 1 << 20;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export class TransferError extends Error {}

/** Names a transfer may carry: plain file names, never a path. */
export function validName(name: string): boolean {
  return NAME.test(name) && name !== '.' && name !== '..';
}

function sizeHash(size: number): Hash {
  const h = createHash('sha256');
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(size));
  return h.update(b);
}

function dataHeader(offset: number, len: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeBigUInt64BE(BigInt(offset), 0);
  b.writeUInt32BE(len, 8);
  return b;
}

/** The stream a sender writes: the manifest, then each file of `dir` named in `files`. */
export function encodeTransfer(manifest: unknown, dir: string, files: readonly string[]): Readable {
  return Readable.from(frames(manifest, dir, files), { objectMode: false });
}

async function* frames(manifest: unknown, dir: string, files: readonly string[]): AsyncGenerator<Buffer> {
  const json = Buffer.from(JSON.stringify(manifest), 'utf8');
  if (json.length > MAX_MANIFEST) throw new TransferError('manifest too large');
  const m = Buffer.alloc(5);
  m.write('M', 0, 'latin1');
  m.writeUInt32BE(json.length, 1);
  yield Buffer.concat([m, json]);
  const zero = Buffer.alloc(CHUNK);
  for (const name of files) {
    if (!validName(name)) throw new TransferError(`not a plain file name: ${JSON.stringify(name)}`);
    const fh = await open(join(dir, name), 'r');
    try {
      const { size } = await fh.stat();
      const nameBuf = Buffer.from(name, 'utf8');
      const f = Buffer.alloc(1 + 2 + nameBuf.length + 8);
      f.write('F', 0, 'latin1');
      f.writeUInt16BE(nameBuf.length, 1);
      nameBuf.copy(f, 3);
      f.writeBigUInt64BE(BigInt(size), 3 + nameBuf.length);
      yield f;
      const hash = sizeHash(size);
      // Holes are read into one scratch buffer; only data gets a buffer of its own (it is queued for sending).
      const scratch = Buffer.allocUnsafe(CHUNK);
      for (let offset = 0; offset < size; offset += CHUNK) {
        const len = Math.min(CHUNK, size - offset);
        const { bytesRead } = await fh.read(scratch, 0, len, offset);
        if (bytesRead !== len) throw new TransferError(`${name} shrank while it was sent`);
        if (scratch.subarray(0, len).equals(zero.subarray(0, len))) continue;
        const buf = Buffer.from(scratch.subarray(0, len));
        const head = dataHeader(offset, buf.length);
        hash.update(head).update(buf);
        yield Buffer.concat([Buffer.from('D', 'latin1'), head]);
        yield buf;
      }
      yield Buffer.concat([Buffer.from('E', 'latin1'), hash.digest()]);
    } finally {
      await fh.close();
    }
  }
  yield Buffer.from('Z', 'latin1');
}

/** Reads exactly n bytes at a time from a byte stream. */
class ByteReader {
  private buf = Buffer.alloc(0);
  private readonly it: AsyncIterator<Buffer | string>;
  constructor(src: AsyncIterable<Buffer | string>) { this.it = src[Symbol.asyncIterator](); }

  async read(n: number): Promise<Buffer> {
    if (this.buf.length < n) {
      // Gather chunks first and concatenate once: a 1 MiB frame arrives in many small chunks.
      const parts: Buffer[] = [this.buf];
      let have = this.buf.length;
      while (have < n) {
        const next = await this.it.next();
        if (next.done) throw new TransferError('the stream ended early');
        const chunk = typeof next.value === 'string' ? Buffer.from(next.value) : next.value;
        parts.push(chunk);
        have += chunk.length;
      }
      this.buf = Buffer.concat(parts, have);
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  async end(): Promise<void> {
    if (this.buf.length) throw new TransferError('bytes after the end of the transfer');
    const next = await this.it.next();
    if (!next.done) throw new TransferError('bytes after the end of the transfer');
  }
}

export interface ReceivedFile { name: string; size: number; sha256: string }

/**
 * The receiving side, in two steps: the manifest first (the receiver decides
 * whether it wants the files, and where they go), then the files into `dir`
 * (an empty directory the receiver made). Throws TransferError on anything but
 * every announced file at its announced size with its checksum verified; the
 * caller removes `dir` then.
 */
export class TransferReader {
  private readonly r: ByteReader;
  constructor(src: AsyncIterable<Buffer | string>) { this.r = new ByteReader(src); }

  async manifest(): Promise<unknown> {
    const r = this.r;
    if ((await r.read(1)).toString('latin1') !== 'M') throw new TransferError('the transfer does not start with a manifest');
    const len = (await r.read(4)).readUInt32BE(0);
    if (len > MAX_MANIFEST) throw new TransferError('manifest too large');
    try { return JSON.parse((await r.read(len)).toString('utf8')) as unknown; } catch { throw new TransferError('the manifest is not JSON'); }
  }

  /** `expected`: name → size, as the manifest announced them. */
  async files(dir: string, expected: ReadonlyMap<string, number>): Promise<ReceivedFile[]> {
    const r = this.r;
    const files: ReceivedFile[] = [];
    for (;;) {
      const kind = (await r.read(1)).toString('latin1');
      if (kind === 'Z') break;
      if (kind !== 'F') throw new TransferError(`unexpected frame ${JSON.stringify(kind)} where a file should begin`);
      const name = (await r.read((await r.read(2)).readUInt16BE(0))).toString('utf8');
      const size = Number((await r.read(8)).readBigUInt64BE(0));
      if (!validName(name) || expected.get(name) !== size) throw new TransferError(`file ${JSON.stringify(name)} of ${size} bytes is not in the manifest`);
      if (files.some((f) => f.name === name)) throw new TransferError(`file ${name} sent twice`);
      files.push({ name, size, sha256: await receiveFile(r, join(dir, name), size) });
    }
    await r.end();
    const missing = [...expected.keys()].filter((n) => !files.some((f) => f.name === n));
    if (missing.length) throw new TransferError(`files announced but not sent: ${missing.join(', ')}`);
    return files;
  }
}

async function receiveFile(r: ByteReader, path: string, size: number): Promise<string> {
  const fh = await open(path, 'wx', 0o600);
  try {
    const hash = sizeHash(size);
    let next = 0; // data frames come in order and never overlap
    for (;;) {
      const kind = (await r.read(1)).toString('latin1');
      if (kind === 'E') {
        const sent = await r.read(32);
        const got = hash.digest();
        if (!got.equals(sent)) throw new TransferError(`${path}: checksum mismatch`);
        await fh.truncate(size); // the tail after the last data frame is a hole
        await fh.sync();
        return got.toString('hex');
      }
      if (kind !== 'D') throw new TransferError(`unexpected frame ${JSON.stringify(kind)} inside a file`);
      const head = await r.read(12);
      const offset = Number(head.readBigUInt64BE(0));
      const len = head.readUInt32BE(8);
      if (len === 0 || len > CHUNK || offset < next || offset + len > size) throw new TransferError(`${path}: data frame at ${offset}+${len} outside the file or out of order`);
      const data = await r.read(len);
      hash.update(head).update(data);
      await fh.write(data, 0, len, offset);
      next = offset + len;
    }
  } finally {
    await fh.close();
  }
}
