/**
 * LoopRegistry against this machine's real loop devices (root required).
 * Every image lives in a fresh temp dir and the registry only adopts files
 * under it, so loop devices of other users of the host are never touched.
 * Run: node --import tsx --test test/integration/storage-loop.test.ts
 */
import assert from 'node:assert/strict';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { safeRun } from '../helpers/rootfs-contract.js';
import { listLoops } from '../../src/storage/loop/losetup.js';
import { LoopRegistry } from '../../src/storage/loop/registry.js';

const MiB = 1024 * 1024;
const canRun = process.getuid?.() === 0 && existsSync('/dev/loop-control');
const sig = (): AbortSignal => new AbortController().signal;

function sys(device: string, file: string): string | null {
  try { return readFileSync(join('/sys/block', basename(device), file), 'utf8').trim(); } catch { return null; }
}

/** Loop devices (of anyone) backed by files under `dir`. */
async function loopsUnder(dir: string): Promise<Array<{ device: string; backingFile: string; readOnly: boolean }>> {
  return (await listLoops(safeRun)).filter((l) => l.backingFile.startsWith(`${dir}/`));
}

describe('LoopRegistry on real loop devices', { skip: canRun ? false : 'needs root and /dev/loop-control', timeout: 120_000 }, () => {
  let dir = '';
  const image = (name: string, marker: string): string => {
    const p = join(dir, name);
    const fd = openSync(p, 'w');
    ftruncateSync(fd, 4 * MiB);
    writeSync(fd, Buffer.from(marker), 0, marker.length, MiB);
    closeSync(fd);
    return p;
  };
  const registry = (): LoopRegistry => new LoopRegistry({ run: safeRun, owns: (p) => p.startsWith(`${dir}/`) });

  before(() => { dir = mkdtempSync(join(tmpdir(), 'hearth-loop-it-')); });
  after(async () => {
    // Even after a failure: detach every loop backed by our files (and only those).
    for (const l of await loopsUnder(dir).catch(() => [])) {
      await safeRun('losetup', ['-d', l.device], { allowFailure: true });
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('acquire attaches read-only (sysfs backing_file and ro), the last release detaches', async () => {
    const reg = registry();
    const img = image('base-a.ext4', 'hello-a');
    const ref = await reg.acquire(img, sig());
    assert.match(ref.device, /^\/dev\/loop\d+$/);
    assert.equal(sys(ref.device, 'loop/backing_file'), img);
    assert.equal(sys(ref.device, 'ro'), '1');
    const fd = openSync(ref.device, 'r');
    const buf = Buffer.alloc(7);
    readSync(fd, buf, 0, 7, MiB);
    closeSync(fd);
    assert.equal(buf.toString(), 'hello-a', 'the device shows the image');
    const wfd = openSync(ref.device, 'r+');
    try {
      assert.throws(() => writeSync(wfd, Buffer.from('x'), 0, 1, 0), /EPERM|EROFS|EACCES/, 'not writable');
    } finally { closeSync(wfd); }
    await ref.release();
    assert.deepEqual(await loopsUnder(dir), []);
    assert.notEqual(sys(ref.device, 'loop/backing_file'), img);
  });

  it('concurrent acquires of one image share one device; different images get their own', async () => {
    const reg = registry();
    const a = image('base-b.ext4', 'b');
    const c = image('base-c.ext4', 'c');
    const refs = await Promise.all([a, a, c, a, c].map((p) => reg.acquire(p, sig())));
    const byImage = new Map<string, Set<string>>();
    for (const r of refs) byImage.set(r.imagePath, (byImage.get(r.imagePath) ?? new Set()).add(r.device));
    assert.equal(byImage.get(a)?.size, 1);
    assert.equal(byImage.get(c)?.size, 1);
    assert.notDeepEqual([...byImage.get(a)!], [...byImage.get(c)!]);
    assert.equal((await loopsUnder(dir)).length, 2, 'two loops for two images, not five');
    for (const r of refs.slice(0, 4)) await r.release();
    assert.deepEqual((await loopsUnder(dir)).map((l) => l.backingFile), [c]);
    await refs[4]!.release();
    assert.deepEqual(await loopsUnder(dir), []);
  });

  it('attachFile gives a private writable device; writes reach the file', async () => {
    const reg = registry();
    const f = image('cow.img', 'x');
    const w1 = await reg.attachFile(f, sig());
    const w2 = await reg.attachFile(f, sig());
    assert.notEqual(w1.device, w2.device, 'never shared');
    await w2.detach();
    assert.equal(sys(w1.device, 'ro'), '0');
    const fd = openSync(w1.device, 'r+');
    writeSync(fd, Buffer.from('through-the-loop'), 0, 16, 2 * MiB);
    closeSync(fd);
    await w1.detach();
    assert.equal(readFileSync(f).subarray(2 * MiB, 2 * MiB + 16).toString(), 'through-the-loop');
    assert.deepEqual(await loopsUnder(dir), []);
  });

  it('a restarted registry adopts the existing devices of its images and reaps the unclaimed', async () => {
    const old = registry();
    const a = image('base-d.ext4', 'd');
    const b = image('base-e.ext4', 'e');
    const ra = await old.acquire(a, sig());
    await old.acquire(b, sig());
    // A duplicate of `a` (as a crash between attach and bookkeeping could leave).
    const dup = (await safeRun('losetup', ['--find', '--show', '--read-only', a])).stdout.trim();
    // "Restart": the old registry is gone without releasing anything.
    const reg = registry();
    const { adopted, duplicates } = await reg.adoptExisting(sig());
    assert.deepEqual(adopted.map((x) => x.backingFile).sort(), [a, b].sort());
    assert.deepEqual(duplicates.map((x) => x.backingFile), [a]);
    const kept = adopted.find((x) => x.backingFile === a)!.device;
    assert.ok(kept === ra.device || kept === dup);
    const again = await reg.acquire(a, sig());
    assert.equal(again.device, kept, 'adopted, not attached anew');
    const reaped = await reg.reapIdle();
    assert.equal(reaped.length, 2, 'the unclaimed base-e device and the duplicate');
    assert.deepEqual((await loopsUnder(dir)).map((l) => l.device), [kept]);
    await again.release();
    assert.deepEqual(await loopsUnder(dir), []);
  });

  it('leaves no loop device behind', async () => {
    assert.deepEqual(await loopsUnder(dir), []);
  });
});
