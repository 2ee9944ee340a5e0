/** The move transfer format (src/cluster/transfer.ts): sparse, checksummed, names checked before anything is written. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { CHUNK, encodeTransfer, TransferError, TransferReader } from '../../src/cluster/transfer.js';

async function collect(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Feeds `data` in small uneven chunks, as a socket would. */
function chunked(data: Buffer): AsyncIterable<Buffer> {
  return (async function* () { for (let i = 0; i < data.length; i += 7919) yield data.subarray(i, i + 7919); })();
}

async function withDirs(fn: (src: string, dst: string) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'hearth-transfer-'));
  try {
    const src = join(root, 'src');
    const dst = join(root, 'dst');
    await mkdir(src);
    await mkdir(dst);
    await fn(src, dst);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

/** A 64 MiB sparse file with data in three places (one at the very end). */
async function sparseFile(path: string): Promise<void> {
  const fh = await open(path, 'w');
  await fh.truncate(64 * CHUNK);
  await fh.write(Buffer.alloc(5000, 1), 0, 5000, 3 * CHUNK + 17);
  await fh.write(Buffer.from('hello'), 0, 5, 40 * CHUNK);
  await fh.write(Buffer.from('end'), 0, 3, 64 * CHUNK - 3);
  await fh.close();
}

test('a sparse file arrives identical, its holes are not sent, and the manifest comes first', async () => {
  await withDirs(async (src, dst) => {
    await sparseFile(join(src, 'rootfs.ext4'));
    await writeFile(join(src, 'meta.json'), '{"a":1}');
    const stream = await collect(encodeTransfer({ hello: 'node' }, src, ['rootfs.ext4', 'meta.json']));
    assert.ok(stream.length < 4 * CHUNK, `sent ${stream.length} bytes for a 64 MiB file with 3 small extents`);
    const reader = new TransferReader(chunked(stream));
    assert.deepEqual(await reader.manifest(), { hello: 'node' });
    const files = await reader.files(dst, new Map([['rootfs.ext4', 64 * CHUNK], ['meta.json', 7]]));
    assert.deepEqual(files.map((f) => f.name), ['rootfs.ext4', 'meta.json']);
    assert.ok((await readFile(join(dst, 'rootfs.ext4'))).equals(await readFile(join(src, 'rootfs.ext4'))));
    assert.equal(await readFile(join(dst, 'meta.json'), 'utf8'), '{"a":1}');
    const st = await stat(join(dst, 'rootfs.ext4'));
    assert.equal(st.size, 64 * CHUNK);
    assert.ok(st.blocks * 512 < 8 * CHUNK, `the received file stays sparse (${st.blocks * 512} bytes allocated)`);
  });
});

test('a flipped byte in transit fails the checksum', async () => {
  await withDirs(async (src, dst) => {
    await writeFile(join(src, 'memory'), Buffer.alloc(3 * CHUNK, 7));
    const stream = await collect(encodeTransfer({}, src, ['memory']));
    stream.writeUInt8(stream.readUInt8(stream.length - 100) ^ 0xff, stream.length - 100); // inside the last data frame
    const reader = new TransferReader(chunked(stream));
    await reader.manifest();
    await assert.rejects(reader.files(dst, new Map([['memory', 3 * CHUNK]])), (e: Error) => e instanceof TransferError && /checksum/.test(e.message));
  });
});

test('a file the manifest did not announce, or at another size, is refused before it is created', async () => {
  await withDirs(async (src, dst) => {
    await writeFile(join(src, 'vmstate'), 'state');
    const stream = await collect(encodeTransfer({}, src, ['vmstate']));
    for (const expected of [new Map([['memory', 5]]), new Map([['vmstate', 6]])]) {
      const reader = new TransferReader(chunked(stream));
      await reader.manifest();
      await assert.rejects(reader.files(dst, expected), /not in the manifest/);
      assert.deepEqual(await readdir(dst), []);
    }
  });
});

test('a path for a name, a missing file, a cut stream and trailing bytes are refused', async () => {
  await withDirs(async (src, dst) => {
    await writeFile(join(src, 'meta.json'), '{}');
    await assert.rejects(collect(encodeTransfer({}, src, ['../meta.json'])), /not a plain file name/);
    const stream = await collect(encodeTransfer({}, src, ['meta.json']));
    const missing = new TransferReader(chunked(stream));
    await missing.manifest();
    await assert.rejects(missing.files(dst, new Map([['meta.json', 2], ['memory', 1]])), /announced but not sent: memory/);
    await rm(join(dst, 'meta.json'), { force: true });
    const cut = new TransferReader(chunked(stream.subarray(0, stream.length - 20)));
    await cut.manifest();
    await assert.rejects(cut.files(dst, new Map([['meta.json', 2]])), /ended early/);
    await rm(join(dst, 'meta.json'), { force: true });
    const extra = new TransferReader(chunked(Buffer.concat([stream, Buffer.from('x')])));
    await extra.manifest();
    await assert.rejects(extra.files(dst, new Map([['meta.json', 2]])), /after the end/);
  });
});

test('a stream that does not start with a manifest is refused', async () => {
  await assert.rejects(new TransferReader(chunked(Buffer.from('Fxyz'))).manifest(), /does not start with a manifest/);
  await assert.rejects(new TransferReader(Readable.from([])).manifest(), /ended early/);
});
