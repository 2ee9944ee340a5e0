/** Memory-file helpers: sparse extents, the zero-page bitmap, punching zero pages, merging a Diff, copies. */
import assert from 'node:assert/strict';
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cloneFile, dataBitmap, dataExtents, punchZeroPages, rebaseMemory } from '../../src/memory/memory-file.js';
import { uffdAddonAvailable } from '../../src/memory/uffd/native.js';
import { copySparse } from '../../src/vmm/firecracker/jail.js';
import { makeMemoryFile, tempDir } from '../fixtures/uffd/helpers.js';

const skip = uffdAddonAvailable() ? false : 'the hearth_uffd addon is not built (npm run build:native)';
const MiB = 1024 * 1024;

/** Does this filesystem keep holes (tmpfs and ext4 do; some overlay setups do not)? */
async function sparseSupported(dir: string): Promise<boolean> {
  const p = join(dir, 'probe');
  const fh = await open(p, 'w');
  await fh.truncate(4 * MiB);
  await fh.write(Buffer.from('x'), 0, 1, 2 * MiB);
  await fh.close();
  return dataExtents(p).length === 1 && (await stat(p)).blocks * 512 < 4 * MiB;
}

describe('memory files', { skip }, () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let sparse = true;
  before(async () => { ({ dir, cleanup } = await tempDir('hearth-memfile-')); sparse = await sparseSupported(dir); });
  after(() => cleanup());

  test('data extents and the page bitmap of a sparse file', async (t) => {
    if (!sparse) { t.skip('the temp filesystem does not keep holes'); return; }
    const p = join(dir, 'a.mem');
    const holes = new Set([0, 1, 2, 10, 11, 255]);
    await makeMemoryFile(p, MiB, { holes });
    const ex = dataExtents(p);
    const covered = ex.reduce((a, e) => a + e.length, 0);
    assert.equal(covered, MiB - holes.size * 4096);
    const bm = dataBitmap(p, 4096, MiB);
    assert.equal(bm.pages, 256);
    assert.equal(bm.dataPages, 256 - holes.size);
    for (let i = 0; i < 256; i++) assert.equal(!!(bm.bitmap[i >> 3]! & (1 << (i & 7))), !holes.has(i), `page ${i}`);
    assert.throws(() => dataBitmap(p, 4096, MiB + 1), /whole number/);
  });

  test('punching zero pages keeps the bytes and frees the blocks (Full snapshots)', async (t) => {
    if (!sparse) { t.skip('the temp filesystem does not keep holes'); return; }
    const p = join(dir, 'b.mem');
    const buf = Buffer.alloc(2 * MiB);
    for (let i = 0; i < 512; i += 3) buf.write(`page ${i}`, i * 4096); // 171 pages with data, the rest zero but allocated
    await writeFile(p, buf);
    const before = await stat(p);
    const r = await punchZeroPages(p);
    assert.equal(r.scannedBytes, 2 * MiB);
    assert.equal(r.punchedBytes, (512 - 171) * 4096);
    assert.ok((await readFile(p)).equals(buf), 'contents unchanged');
    assert.ok((await stat(p)).blocks < before.blocks);
    assert.equal(dataBitmap(p, 4096, 2 * MiB).dataPages, 171);
  });

  test('rebase: a Diff layer merged onto its base; sparse copies keep the holes', async (t) => {
    if (!sparse) { t.skip('the temp filesystem does not keep holes'); return; }
    const base = join(dir, 'base.mem');
    const diff = join(dir, 'diff.mem');
    const baseBuf = await makeMemoryFile(base, MiB, { seed: 1 });
    const fh = await open(diff, 'w');
    await fh.truncate(MiB);
    const dirty = [5, 6, 200];
    for (const p of dirty) await fh.write(Buffer.alloc(4096, 0xab), 0, 4096, p * 4096);
    await fh.write(Buffer.alloc(4096, 0), 0, 4096, 100 * 4096); // a dirty page that is all zeros: must be copied too
    await fh.close();
    const copied = join(dir, 'diff-copy.mem');
    await copySparse(diff, copied);
    assert.deepEqual(dataExtents(copied), dataExtents(diff));
    const r = await rebaseMemory(base, copied);
    assert.equal(r.copiedBytes, 4 * 4096);
    const merged = await readFile(base);
    for (let p = 0; p < 256; p++) {
      const want = dirty.includes(p) ? Buffer.alloc(4096, 0xab) : p === 100 ? Buffer.alloc(4096) : baseBuf.subarray(p * 4096, (p + 1) * 4096);
      assert.ok(merged.subarray(p * 4096, (p + 1) * 4096).equals(want), `page ${p}`);
    }
    await writeFile(join(dir, 'small.mem'), Buffer.alloc(4096));
    await assert.rejects(rebaseMemory(base, join(dir, 'small.mem')), /has 4096 bytes/);
  });

  test('cloneFile: reflink where possible, else a copy; same bytes', async () => {
    const src = join(dir, 'c.mem');
    const buf = await makeMemoryFile(src, MiB);
    const how = await cloneFile(src, join(dir, 'c2.mem'));
    assert.ok(how === 'reflink' || how === 'copy');
    assert.ok((await readFile(join(dir, 'c2.mem'))).equals(buf));
  });
});
