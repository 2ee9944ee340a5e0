/**
 * One behavioural suite for every RootfsBackend (docs/ARCHITECTURE.md, "Seams"): whatever the
 * mechanism (full copy, reflink, dm-snapshot), a sandbox's disk must behave
 * the same. Disks are raw images, so content is checked by reading and
 * writing the device or file directly at byte offsets; no mounting.
 *
 *   rootfsBackendContract('copy', async () => ({ backend, workDir, cleanup }), { skip: false });
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rm, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AbortedError } from '../../src/core/errors.js';
import { runCommand, type CommandRunner } from '../../src/util/exec.js';
import type { BaseImage, RootDisk, RootfsBackend } from '../../src/storage/types.js';

const MiB = 1024 * 1024;

/** The shared runner (kept under this name for the storage suites). */
export const safeRun: CommandRunner = runCommand;

// ------------------------------------------------------------ raw image I/O

export async function readAt(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return buf.subarray(0, done);
  } finally { await fh.close(); }
}

/** Write and fsync (so st_blocks and other readers see it). Works on files and block devices. */
export async function writeAt(path: string, offset: number, data: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(data, 0, data.length, offset);
    await fh.sync();
  } finally { await fh.close(); }
}

/** Apparent size of a file, or the size of a block device. */
export async function sizeOf(path: string): Promise<number> {
  const st = await stat(path);
  if (!st.isBlockDevice()) return st.size;
  return Number((await safeRun('blockdev', ['--getsize64', path])).stdout.trim());
}

export async function allocated(path: string): Promise<number> { return (await stat(path)).blocks * 512; }

/** SHA-256 of a whole file or device, read in 1 MiB blocks. */
export async function digest(path: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(MiB);
    for (let off = 0; ; ) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, off);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      off += bytesRead;
    }
  } finally { await fh.close(); }
  return h.digest('hex');
}

/** A sparse raw image of `size` bytes with `data` written at its offsets. */
export async function makeImage(path: string, size: number, data: Array<[number, Buffer]>): Promise<void> {
  const fh = await open(path, 'w', 0o644);
  try {
    await fh.truncate(size);
    for (const [off, buf] of data) await fh.write(buf, 0, buf.length, off);
    await fh.sync();
  } finally { await fh.close(); }
}

// ------------------------------------------------------------ the contract

export interface ContractSubject {
  backend: RootfsBackend;
  /** A dir on the same filesystem as the backend's own files: base image, paused dirs, flatten outputs. */
  workDir: string;
  /** The backend's per-sandbox root (`<sandboxesDir>/<id>/`). */
  sandboxesDir: string;
  /** Backend-specific proof that nothing of a removed disk is left on the host (dm: no device, no loops). */
  assertGone?(disk: RootDisk): Promise<void>;
  /** Unmount, detach, delete: runs even when tests failed. */
  cleanup(): Promise<void>;
}

export interface ContractOptions {
  /** A reason to skip the whole suite (printed), or false. */
  skip?: string | false;
  /** Base image size; default 64 MiB. */
  baseSizeBytes?: number;
  timeoutMs?: number;
}

const fresh = (): AbortSignal => AbortSignal.timeout(60_000);
const newId = (): string => `c${randomBytes(5).toString('hex')}`;

/**
 * The behaviour every backend must have. `makeBackend` runs once per suite;
 * `cleanup` runs at the end even if tests failed, after every disk a test
 * created was removed.
 */
export function rootfsBackendContract(name: string, makeBackend: () => Promise<ContractSubject>, opts: ContractOptions = {}): void {
  const size = opts.baseSizeBytes ?? 64 * MiB;
  describe(`RootfsBackend contract: ${name}`, { skip: opts.skip || false, timeout: opts.timeoutMs ?? 300_000 }, () => {
    let s: ContractSubject | undefined;
    let base: BaseImage;
    let baseDigest = '';
    const live = new Set<RootDisk>();
    // Base content: 256 KiB random blocks at scattered offsets, holes elsewhere.
    const blocks: Array<[number, Buffer]> = [0, 3 * MiB, 17 * MiB + 4096, 40 * MiB, size - 256 * 1024].map((o) => [o, randomBytes(256 * 1024)]);
    const HOLE = 10 * MiB;

    const subject = (): ContractSubject => { assert.ok(s, 'backend was not set up'); return s; };
    const create = async (): Promise<RootDisk> => {
      const d = await subject().backend.create(newId(), base, fresh());
      live.add(d);
      return d;
    };
    const remove = async (d: RootDisk): Promise<void> => { await subject().backend.remove(d, fresh()); live.delete(d); };

    before(async () => {
      s = await makeBackend();
      await mkdir(s.workDir, { recursive: true });
      const path = join(s.workDir, 'base.img');
      await makeImage(path, size, blocks);
      base = { id: 'contract-base', path, sizeBytes: size };
      baseDigest = await digest(path);
    });

    after(async () => {
      if (!s) return;
      try {
        for (const d of live) await s.backend.remove(d, fresh()).catch((err: unknown) => { console.error(`contract cleanup: ${String(err)}`); });
      } finally {
        await s.cleanup();
      }
    });

    it('create gives a disk of the base size with the base content', async () => {
      const d = await create();
      try {
        assert.equal(d.backend, subject().backend.kind);
        assert.equal(await sizeOf(d.devicePath), size);
        for (const [off, buf] of blocks) assert.ok((await readAt(d.devicePath, off, buf.length)).equals(buf), `base data at ${off}`);
        assert.ok((await readAt(d.devicePath, HOLE, 4096)).equals(Buffer.alloc(4096)), 'holes read as zeros');
      } finally { await remove(d); }
    });

    it('writes to one sandbox\'s disk show neither in another\'s nor in the base', async () => {
      const a = await create();
      const b = await create();
      try {
        const over = randomBytes(64 * 1024);
        const fresh1 = randomBytes(64 * 1024);
        await writeAt(a.devicePath, 3 * MiB + 4096, over);       // over base data
        await writeAt(a.devicePath, HOLE, fresh1);               // into a hole
        assert.ok((await readAt(a.devicePath, 3 * MiB + 4096, over.length)).equals(over));
        assert.ok((await readAt(a.devicePath, HOLE, fresh1.length)).equals(fresh1));
        assert.ok((await readAt(b.devicePath, 3 * MiB + 4096, over.length)).equals(blocks[1]![1].subarray(4096, 4096 + over.length)), 'b still has the base data');
        assert.ok((await readAt(b.devicePath, HOLE, 4096)).equals(Buffer.alloc(4096)), 'b still has the hole');
        assert.equal(await digest(base.path), baseDigest, 'the base image is untouched');
      } finally { await remove(a); await remove(b); }
    });

    it('detach then attach round-trips the content', async () => {
      const d = await create();
      const paused = join(subject().workDir, 'paused', d.sandboxId);
      let back: RootDisk | undefined;
      try {
        const data = randomBytes(128 * 1024);
        await writeAt(d.devicePath, 40 * MiB + 8192, data);
        const token = await subject().backend.detach(d, paused, fresh());
        assert.ok((await readdir(paused)).length > 0, 'the disk\'s files are in the paused dir');
        for (const f of d.files) assert.equal(existsSync(f), false, `${f} moved away`);
        assert.deepEqual(token.base, base, 'the token carries the disk\'s base');
        assert.deepEqual(await subject().backend.detach(d, paused, fresh()), token, 'a second detach is idempotent');
        back = await subject().backend.attach(token, fresh());
        assert.deepEqual(back.base, base);
        live.delete(d);
        live.add(back);
        assert.equal(await sizeOf(back.devicePath), size);
        assert.ok((await readAt(back.devicePath, 40 * MiB + 8192, data.length)).equals(data), 'written data came back');
        assert.ok((await readAt(back.devicePath, 0, blocks[0]![1].length)).equals(blocks[0]![1]), 'base data intact');
      } finally {
        if (back) await remove(back);
        else await remove(d);
        await rm(paused, { recursive: true, force: true });
      }
    });

    it('flatten writes the merged content to a standalone sparse image', async () => {
      const d = await create();
      const out = join(subject().workDir, `flat-${d.sandboxId}.img`);
      try {
        await writeAt(d.devicePath, 17 * MiB, randomBytes(300 * 1024));
        await writeAt(d.devicePath, HOLE + MiB, randomBytes(64 * 1024));
        await subject().backend.flatten(d, out, fresh());
        assert.equal((await stat(out)).size, size);
        assert.equal(await digest(out), await digest(d.devicePath), 'flattened image == merged disk');
        assert.ok(await allocated(out) < size / 4, `sparse: ${await allocated(out)} bytes allocated of ${size}`);
        // Standalone: removing the disk does not change it.
        const before = await digest(out);
        await remove(d);
        assert.equal(await digest(out), before);
      } finally {
        if (live.has(d)) await remove(d);
        await rm(out, { force: true });
      }
    });

    it('remove leaves nothing behind, and removing again is fine', async () => {
      const d = await create();
      await writeAt(d.devicePath, HOLE, randomBytes(4096));
      await remove(d);
      for (const f of d.files) assert.equal(existsSync(f), false, `${f} deleted`);
      assert.equal(existsSync(d.devicePath), false, `${d.devicePath} gone`);
      await subject().assertGone?.(d);
      await subject().backend.remove(d, fresh());
      assert.equal(await digest(base.path), baseDigest);
    });

    it('usage counts allocated blocks: small for a fresh disk, growing with writes', async () => {
      const d = await create();
      try {
        const first = (await subject().backend.usage(d)).allocatedBytes;
        assert.ok(first < size / 4, `fresh disk uses ${first} bytes of ${size}`);
        await writeAt(d.devicePath, HOLE, randomBytes(4 * MiB));
        const later = (await subject().backend.usage(d)).allocatedBytes;
        assert.ok(later - first >= 4 * MiB * 0.9, `4 MiB written: ${first} → ${later}`);
        assert.ok(later < size / 2, `still far below the size: ${later}`);
      } finally { await remove(d); }
    });

    it('create with a cancelled signal fails and leaves nothing', async () => {
      const id = newId();
      await assert.rejects(subject().backend.create(id, base, AbortSignal.abort()), AbortedError);
      const left = await readdir(join(subject().sandboxesDir, id)).catch(() => []);
      assert.deepEqual(left, []);
    });
  });
}
