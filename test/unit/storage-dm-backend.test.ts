/**
 * DmRootfsBackend through the fake block host (this machine has no
 * device-mapper): exact commands, release ordering, stale devices, half-way
 * failures, restart recovery. Real files (base image, CoW files, paused dirs)
 * live in a temp dir; loop and dm devices are the fake's.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeSync, closeSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AbortedError, ConfigError, ConflictError, HostFailureError, InternalError, NotFoundError } from '../../src/core/errors.js';
import { COW_FILE, DmDeviceStuckError, DmRootfsBackend, fullCowBytes, type DmRootfsBackendOptions } from '../../src/storage/dm/dm-backend.js';
import { deviceMapperAvailable } from '../../src/storage/dm/index.js';
import { DM_MESSAGES, FakeBlockHost } from '../../src/storage/dm/testing.js';
import { LoopRegistry } from '../../src/storage/loop/registry.js';
import type { BaseImage, DetachedDisk } from '../../src/storage/types.js';

const MiB = 1024 * 1024;
const sig = (): AbortSignal => new AbortController().signal;

interface Lab {
  dir: string;
  base: BaseImage;
  host: FakeBlockHost;
  loops: LoopRegistry;
  backend: DmRootfsBackend;
  sandboxes: string;
  /** A new registry + backend on the same host: what a restarted daemon sees. */
  restart(): { loops: LoopRegistry; backend: DmRootfsBackend };
  cow(id: string): string;
  done(): void;
}

/** Base image: 64 MiB + 1000 bytes (131073 whole sectors), sparse, a marker at 1 MiB. */
function lab(opts: Partial<DmRootfsBackendOptions> = {}): Lab {
  const dir = mkdtempSync(join(tmpdir(), 'hearth-dm-'));
  const basePath = join(dir, 'templates', 'base', 'rootfs.ext4');
  mkdirSync(join(dir, 'templates', 'base'), { recursive: true });
  const fd = openSync(basePath, 'w');
  ftruncateSync(fd, 64 * MiB + 1000);
  writeSync(fd, Buffer.from('base-marker'), 0, 11, MiB);
  closeSync(fd);
  const host = new FakeBlockHost();
  const sandboxes = join(dir, 'sandboxes');
  const make = (): { loops: LoopRegistry; backend: DmRootfsBackend } => {
    const loops = new LoopRegistry({ run: host.run, holders: host.holderNames, owns: (p) => p.startsWith(`${dir}/`) });
    const backend = new DmRootfsBackend({ sandboxesDir: sandboxes, loops, run: host.run, removeRetry: { maxAttempts: 4, initialDelayMs: 1, maxDelayMs: 4 }, ...opts });
    return { loops, backend };
  };
  const first = make();
  return {
    dir, host, sandboxes, ...first,
    base: { id: 'base', path: basePath, sizeBytes: 64 * MiB + 1000 },
    restart: make,
    cow: (id) => join(sandboxes, id, COW_FILE),
    done: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** The token a pause of sb1 into `dir` would have returned. */
function tokenOf(l: Lab, dir: string): DetachedDisk {
  return { sandboxId: 'sb1', backend: 'dm', base: l.base, dir, files: [join(dir, COW_FILE)] };
}

/** The commands that change host state, in order (listing and info queries left out). */
function mutations(h: FakeBlockHost): string[] {
  return h.calls.filter((c) => /^(losetup (--find|-d)|dmsetup (create|remove)|blockdev|cp)/.test(c));
}

test('dm create: exact commands, table from the image size, a sparse CoW that cannot overflow', async () => {
  const l = lab();
  try {
    const disk = await l.backend.create('sb1', l.base, sig());
    const cow = l.cow('sb1');
    assert.deepEqual(l.host.calls, [
      `losetup --find --show --read-only ${l.base.path}`,
      'blockdev --getsz /dev/loop0',
      `losetup --find --show ${cow}`,
      'dmsetup create hearth-sb1 --table 0 131073 snapshot /dev/loop0 /dev/loop1 P 8',
    ]);
    assert.deepEqual(disk, { sandboxId: 'sb1', backend: 'dm', devicePath: '/dev/mapper/hearth-sb1', files: [cow], base: l.base });
    // 16385 data chunks of 4 KiB, 65 metadata chunks (256 exceptions each), header, slack.
    assert.equal(fullCowBytes(131073, 8), (1 + 65 + 16385 + 8) * 4096);
    const st = statSync(cow);
    assert.equal(st.size, fullCowBytes(131073, 8));
    assert.ok(st.size > l.base.sizeBytes, 'room for a full overwrite plus metadata');
    assert.equal(st.blocks, 0, 'sparse: nothing allocated yet');
    assert.deepEqual(await l.backend.usage(disk), { allocatedBytes: 0 });
    assert.equal(l.host.loops.get('/dev/loop0')?.readOnly, true);
    assert.equal(l.host.loops.get('/dev/loop1')?.readOnly, false);
    await l.backend.remove(disk, sig());
  } finally { l.done(); }
});

test('dm create: chunk size and CoW size are configurable; bad values are refused', async () => {
  const l = lab({ chunkSectors: 16, cowSizeBytes: 8 * MiB });
  try {
    const disk = await l.backend.create('sb1', l.base, sig());
    assert.ok(l.host.calls.includes('dmsetup create hearth-sb1 --table 0 131073 snapshot /dev/loop0 /dev/loop1 P 16'));
    assert.equal(statSync(l.cow('sb1')).size, 8 * MiB);
    await l.backend.remove(disk, sig());
    for (const chunkSectors of [4, 12, 4096]) {
      assert.throws(() => new DmRootfsBackend({ sandboxesDir: l.sandboxes, loops: l.loops, chunkSectors }), ConfigError);
    }
    assert.throws(() => new DmRootfsBackend({ sandboxesDir: l.sandboxes, loops: l.loops, cowSizeBytes: 1000 }), ConfigError);
    await assert.rejects(l.backend.create('bad/id', l.base, sig()), InternalError);
  } finally { l.done(); }
});

test('dm: sandboxes of one template share one read-only origin loop until the last one goes', async () => {
  const l = lab();
  try {
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((id) => l.backend.create(id, l.base, sig())));
    assert.equal(l.host.count('losetup --find --show --read-only'), 1);
    for (const id of ['a', 'b', 'c']) assert.equal(l.host.dm.get(`hearth-${id}`)?.origin, '/dev/loop0');
    assert.deepEqual(l.loops.list().map((e) => e.refs), [3]);
    await l.backend.remove(a!, sig());
    await l.backend.remove(b!, sig());
    assert.ok(l.host.loops.has('/dev/loop0'));
    await l.backend.remove(c!, sig());
    assert.equal(l.host.loops.size, 0);
    assert.equal(l.host.dm.size, 0);
    assert.deepEqual(l.host.violations, []);
  } finally { l.done(); }
});

test('dm detach (pause): remove dm → detach CoW loop → move the CoW file → release the origin', async () => {
  const l = lab();
  try {
    const disk = await l.backend.create('sb1', l.base, sig());
    const paused = join(l.dir, 'paused', 'sb1');
    const seen: Record<string, { atSandbox: boolean; atPaused: boolean }> = {};
    l.host.onCommand = (line) => {
      if (/^(dmsetup remove|losetup -d)/.test(line)) seen[line] = { atSandbox: existsSync(l.cow('sb1')), atPaused: existsSync(join(paused, COW_FILE)) };
    };
    const before = l.host.calls.length;
    await l.backend.detach(disk, paused, sig());
    assert.deepEqual(mutations(l.host).slice(4), ['dmsetup remove hearth-sb1', 'losetup -d /dev/loop1', 'losetup -d /dev/loop0']);
    assert.ok(l.host.calls.length > before);
    assert.deepEqual(seen['losetup -d /dev/loop1'], { atSandbox: true, atPaused: false }, 'the CoW loop is detached before the file moves');
    assert.deepEqual(seen['losetup -d /dev/loop0'], { atSandbox: false, atPaused: true }, 'the origin is released after the move');
    assert.equal(l.host.loops.size, 0);
    assert.equal(l.host.dm.size, 0);
    assert.deepEqual(l.host.violations, []);
  } finally { l.done(); }
});

test('dm detach: when dmsetup remove stays busy, the origin ref, the CoW loop and the file are kept; remove() finishes later', async () => {
  const l = lab();
  try {
    const disk = await l.backend.create('sb1', l.base, sig());
    const paused = join(l.dir, 'paused', 'sb1');
    l.host.fail('dmsetup remove hearth-sb1', DM_MESSAGES.busy('hearth-sb1'), { times: 4 });
    const err = await l.backend.detach(disk, paused, sig()).then(() => null, (e: unknown) => e);
    assert.ok(err instanceof DmDeviceStuckError, String(err));
    assert.equal(err.code, 'host_failure');
    assert.match(err.message, /still busy after 4 attempts.*still references CoW loop \/dev\/loop1 and origin loop \/dev\/loop0/);
    assert.equal(l.host.count('dmsetup remove'), 4);
    assert.equal(l.host.count('losetup -d'), 0, 'no loop detached while the stale device references them');
    assert.deepEqual(l.loops.list().map((e) => [e.device, e.refs]), [['/dev/loop0', 1]], 'origin ref kept');
    assert.ok(existsSync(l.cow('sb1')), 'the CoW file stays with its loop');
    assert.equal(existsSync(join(paused, COW_FILE)), false);
    // The manager's cleanup then removes the disk; this time the device goes.
    await l.backend.remove(disk, sig());
    assert.equal(l.host.loops.size, 0);
    assert.equal(l.host.dm.size, 0);
    assert.equal(existsSync(l.cow('sb1')), false);
    assert.deepEqual(l.host.violations, []);
  } finally { l.done(); }
});

test('dm detach: a non-busy dmsetup error (permission denied) fails at once and keeps the origin ref', async () => {
  const l = lab();
  try {
    const disk = await l.backend.create('sb1', l.base, sig());
    l.host.fail('dmsetup remove', DM_MESSAGES.permission());
    await assert.rejects(l.backend.detach(disk, join(l.dir, 'paused'), sig()), (e: unknown) => e instanceof DmDeviceStuckError && /Permission denied/.test(e.message));
    assert.equal(l.host.count('dmsetup remove'), 1);
    assert.equal(l.loops.list()[0]?.refs, 1);
    assert.equal(l.host.count('losetup -d'), 0);
    await l.backend.remove(disk, sig());
    assert.equal(l.host.loops.size, 0);
  } finally { l.done(); }
});

test('dm detach: aborting during the busy backoff stops at once and keeps everything', async () => {
  const l = lab({ removeRetry: { maxAttempts: 10, initialDelayMs: 5_000, maxDelayMs: 5_000 } });
  try {
    const disk = await l.backend.create('sb1', l.base, sig());
    l.host.fail('dmsetup remove', DM_MESSAGES.busy('hearth-sb1'), { times: 1 });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 20);
    const t0 = performance.now();
    await assert.rejects(l.backend.detach(disk, join(l.dir, 'paused'), ac.signal), AbortedError);
    assert.ok(performance.now() - t0 < 1_000);
    assert.equal(l.host.count('losetup -d'), 0);
    await l.backend.remove(disk, sig()); // cleanup with a fresh signal succeeds
    assert.equal(l.host.loops.size, 0);
  } finally { l.done(); }
});

test('dm attach (resume): round trip through the paused dir; the persistent CoW comes back as is', async () => {
  const l = lab();
  try {
    const disk = await l.backend.create('sb1', l.base, sig());
    // Stand-in for guest writes: bytes in the CoW file.
    const fd = openSync(l.cow('sb1'), 'r+'); writeSync(fd, Buffer.from('cow-data'), 0, 8, 8192); closeSync(fd);
    const paused = join(l.dir, 'paused', 'sb1');
    const token = await l.backend.detach(disk, paused, sig());
    assert.deepEqual(token, { sandboxId: 'sb1', backend: 'dm', base: l.base, dir: paused, files: [join(paused, COW_FILE)] });
    assert.ok(existsSync(join(paused, COW_FILE)));
    const n = l.host.calls.length;
    const again = await l.backend.attach(token, sig());
    assert.deepEqual(l.host.calls.slice(n), [
      'dmsetup info hearth-sb1',
      `losetup --find --show --read-only ${l.base.path}`,
      'blockdev --getsz /dev/loop0',
      `losetup --find --show ${l.cow('sb1')}`,
      'dmsetup create hearth-sb1 --table 0 131073 snapshot /dev/loop0 /dev/loop1 P 8',
    ]);
    assert.deepEqual(again, disk);
    assert.equal(existsSync(join(paused, COW_FILE)), false);
    assert.equal(readFileSync(l.cow('sb1')).subarray(8192, 8200).toString(), 'cow-data');
    await l.backend.remove(again, sig());
  } finally { l.done(); }
});

test('dm attach: a stale device of the same name (left by a crashed daemon) is removed first, with its loops', async () => {
  const l = lab();
  try {
    // Previous daemon: paused sb1 into paused/, but a stale hearth-sb1 survived, holding a CoW loop and the origin loop.
    const paused = join(l.dir, 'paused', 'sb1');
    mkdirSync(paused, { recursive: true });
    mkdirSync(join(l.sandboxes, 'sb1'), { recursive: true });
    const fd = openSync(join(paused, COW_FILE), 'w'); ftruncateSync(fd, fullCowBytes(131073, 8)); writeSync(fd, Buffer.from('paused'), 0, 6, 4096); closeSync(fd);
    closeSync(openSync(l.cow('sb1'), 'w'));
    l.host.addStaleDevice('hearth-sb1', l.base.path, l.cow('sb1'), 131073);
    const { backend, loops } = l.restart();
    const disk = await backend.attach(tokenOf(l, paused), sig());
    assert.deepEqual(mutations(l.host), [
      'dmsetup remove hearth-sb1',
      'losetup -d /dev/loop1',
      'losetup -d /dev/loop0',
      `losetup --find --show --read-only ${l.base.path}`,
      'blockdev --getsz /dev/loop0',
      `losetup --find --show ${l.cow('sb1')}`,
      'dmsetup create hearth-sb1 --table 0 131073 snapshot /dev/loop0 /dev/loop1 P 8',
    ]);
    const i = l.host.calls.indexOf('dmsetup remove hearth-sb1');
    assert.deepEqual(l.host.calls.slice(0, 2), ['dmsetup info hearth-sb1', 'dmsetup table hearth-sb1']);
    assert.ok(i > 1);
    assert.equal(readFileSync(l.cow('sb1')).subarray(4096, 4102).toString(), 'paused', 'the paused CoW, not the leftover');
    assert.deepEqual(l.host.violations, []);
    assert.deepEqual(loops.list().map((e) => e.refs), [1]);
    await backend.remove(disk, sig());
    assert.equal(l.host.loops.size, 0);
  } finally { l.done(); }
});

test('dm attach: if the stale device cannot be removed, nothing is created and the CoW file stays paused', async () => {
  const l = lab();
  try {
    const paused = join(l.dir, 'paused', 'sb1');
    mkdirSync(paused, { recursive: true });
    closeSync(openSync(join(paused, COW_FILE), 'w'));
    closeSync(openSync(join(l.dir, 'leftover.img'), 'w'));
    l.host.addStaleDevice('hearth-sb1', l.base.path, join(l.dir, 'leftover.img'), 131073);
    l.host.fail('dmsetup remove', DM_MESSAGES.busy('hearth-sb1'), { times: 10 });
    await assert.rejects(l.backend.attach(tokenOf(l, paused), sig()), DmDeviceStuckError);
    assert.equal(l.host.count('dmsetup remove'), 4);
    assert.equal(l.host.count('dmsetup create'), 0);
    assert.equal(l.host.count('losetup -d'), 0);
    assert.ok(existsSync(join(paused, COW_FILE)));
  } finally { l.done(); }
});

test('dm attach: a failure half-way moves the CoW file back into the paused dir (never deletes it)', async () => {
  const l = lab();
  try {
    const disk = await l.backend.create('sb1', l.base, sig());
    const paused = join(l.dir, 'paused', 'sb1');
    const token = await l.backend.detach(disk, paused, sig());
    l.host.fail('dmsetup create', DM_MESSAGES.createFailed('hearth-sb1'));
    await assert.rejects(l.backend.attach(token, sig()), /reload ioctl/);
    assert.ok(existsSync(join(paused, COW_FILE)));
    assert.equal(existsSync(l.cow('sb1')), false);
    assert.equal(l.host.loops.size, 0);
    assert.deepEqual(l.loops.list(), []);
    await assert.rejects(l.backend.attach({ ...token, dir: join(l.dir, 'nowhere') }, sig()), NotFoundError);
  } finally { l.done(); }
});

test('dm create failing half-way releases what it took: CoW loop, CoW file, origin ref', async () => {
  for (const [point, prefix] of [['dmsetup create', 'dmsetup create'], ['CoW loop', 'losetup --find --show /'], ['blockdev', 'blockdev']] as const) {
    const l = lab();
    try {
      l.host.fail(prefix, prefix === 'dmsetup create' ? DM_MESSAGES.createFailed('hearth-sb1') : 'injected failure\n');
      await assert.rejects(l.backend.create('sb1', l.base, sig()), HostFailureError, point);
      assert.equal(l.host.loops.size, 0, `${point}: loops`);
      assert.deepEqual(l.loops.list(), [], `${point}: origin ref`);
      assert.equal(existsSync(l.cow('sb1')), false, `${point}: CoW file`);
      assert.equal(l.host.dm.size, 0);
      if (point === 'dmsetup create') {
        assert.deepEqual(mutations(l.host).slice(3), ['dmsetup create hearth-sb1 --table 0 131073 snapshot /dev/loop0 /dev/loop1 P 8', 'losetup -d /dev/loop1', 'losetup -d /dev/loop0']);
        assert.ok(l.host.calls.includes('dmsetup info hearth-sb1'), 'checks that the failed create left no device');
      }
      // The same sandbox id can be created afterwards.
      const disk = await l.backend.create('sb1', l.base, sig());
      await l.backend.remove(disk, sig());
    } finally { l.done(); }
  }
});

test('dm create cancelled half-way releases everything too', async () => {
  const l = lab();
  try {
    const ac = new AbortController();
    l.host.onCommand = (line) => { if (line.startsWith('losetup --find --show /')) ac.abort(); };
    await assert.rejects(l.backend.create('sb1', l.base, ac.signal), AbortedError);
    assert.equal(l.host.loops.size, 0);
    assert.equal(l.host.dm.size, 0);
    assert.equal(existsSync(l.cow('sb1')), false);
    assert.deepEqual(l.loops.list(), []);
  } finally { l.done(); }
});

test('dm remove is idempotent, and works after a daemon restart from what the host shows', async () => {
  const l = lab();
  try {
    const disk = await l.backend.create('sb1', l.base, sig());
    const other = await l.backend.create('sb2', l.base, sig());
    const { backend, loops } = l.restart();
    await loops.adoptExisting(sig());
    await backend.remove(disk, sig());
    assert.equal(l.host.dm.has('hearth-sb1'), false);
    assert.equal(existsSync(l.cow('sb1')), false);
    assert.ok(l.host.loops.has('/dev/loop0'), 'origin still used by sb2');
    assert.equal(l.host.loopOf(l.cow('sb1')), undefined, 'CoW loop detached');
    const n = mutations(l.host).length;
    await backend.remove(disk, sig());
    assert.equal(mutations(l.host).length, n, 'nothing left to change');
    await backend.remove(other, sig());
    assert.equal(l.host.loops.size, 0);
    assert.deepEqual(l.host.violations, []);
  } finally { l.done(); }
});

test('dm recover: keeps the devices of live sandboxes, reaps orphans and their loops, detaches idle origins', async () => {
  const l = lab();
  try {
    const a = await l.backend.create('a', l.base, sig());
    await l.backend.create('b', l.base, sig());
    const other = join(l.dir, 'templates', 'other.ext4');
    closeSync(openSync(other, 'w')); ftruncateSync(openSync(other, 'r+'), MiB);
    await l.backend.create('c', { id: 'other', path: other, sizeBytes: MiB }, sig());
    // A CoW loop with no device (crash between attach and dmsetup create).
    mkdirSync(join(l.sandboxes, 'd'), { recursive: true });
    closeSync(openSync(l.cow('d'), 'w'));
    await l.host.run('losetup', ['--find', '--show', l.cow('d')]);
    const { backend, loops } = l.restart();
    const r = await backend.recover(['a'], sig());
    assert.deepEqual(r.adopted, ['a']);
    assert.deepEqual(r.reaped.sort(), ['b', 'c']);
    assert.deepEqual([...l.host.dm.keys()], ['hearth-a']);
    assert.deepEqual([...l.host.loops.values()].map((x) => x.file).sort(), [l.base.path, l.cow('a')].sort());
    assert.deepEqual(loops.list().map((e) => [e.imagePath, e.refs]), [[l.base.path, 1]]);
    assert.ok(existsSync(l.cow('b')), 'files are the manager\'s to delete');
    await backend.remove(a, sig());
    assert.equal(l.host.loops.size, 0);
    assert.deepEqual(l.host.violations, []);
  } finally { l.done(); }
});

test('dm flatten copies the merged device sparsely to a temp name, then renames; failures leave nothing', async () => {
  const l = lab();
  try {
    const disk = await l.backend.create('sb1', l.base, sig());
    const out = join(l.dir, 'out', 'rootfs.ext4');
    mkdirSync(join(l.dir, 'out'));
    await l.backend.flatten(disk, out, sig());
    const cp = l.host.calls.find((c) => c.startsWith('cp '));
    assert.match(cp!, new RegExp(`^cp --sparse=always /dev/mapper/hearth-sb1 ${out}\\.partial-[0-9a-f]{8}$`));
    assert.deepEqual(readdirSync(join(l.dir, 'out')), ['rootfs.ext4']);
    assert.equal(statSync(out).size, l.base.sizeBytes);
    rmSync(out);
    l.host.fail('cp ', 'cp: error reading \'/dev/mapper/hearth-sb1\': Input/output error\n');
    await assert.rejects(l.backend.flatten(disk, out, sig()), /Input\/output error/);
    assert.deepEqual(readdirSync(join(l.dir, 'out')), []);
    await l.backend.detach(disk, join(l.dir, 'paused'), sig());
    await assert.rejects(l.backend.flatten(disk, out, sig()), ConflictError);
  } finally { l.done(); }
});

test('dm usage is the CoW file\'s allocated blocks; cowStatus reads the kernel\'s view', async () => {
  const l = lab();
  try {
    const disk = await l.backend.create('sb1', l.base, sig());
    assert.equal((await l.backend.usage(disk)).allocatedBytes, 0);
    const fd = openSync(l.cow('sb1'), 'r+'); writeSync(fd, Buffer.alloc(MiB, 1), 0, MiB, 4 * MiB); closeSync(fd);
    const used = (await l.backend.usage(disk)).allocatedBytes;
    assert.ok(used >= MiB && used < 2 * MiB, String(used));
    assert.deepEqual(await l.backend.cowStatus(disk, sig()), { state: 'valid', allocatedSectors: 16, totalSectors: 131073 + 64, metadataSectors: 16 });
    await l.backend.remove(disk, sig());
    assert.equal(await l.backend.cowStatus(disk, sig()), null);
    assert.deepEqual(await l.backend.usage(disk), { allocatedBytes: 0 });
  } finally { l.done(); }
});

test('dm on a kernel without device-mapper: create fails cleanly and releases its loops', async () => {
  const l = lab();
  try {
    l.host.fail('dmsetup', DM_MESSAGES.noDriver(), { times: 10 });
    await assert.rejects(l.backend.create('sb1', l.base, sig()), /Failure to communicate with kernel device-mapper driver/);
    assert.equal(l.host.loops.size, 0);
    assert.deepEqual(l.loops.list(), []);
    assert.equal(existsSync(l.cow('sb1')), false);
  } finally { l.done(); }
});

test('dm availability asks the kernel (/proc/misc), not /dev (dmsetup mknods the control node itself)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hearth-misc-'));
  try {
    const misc = join(dir, 'misc');
    writeFileSync(misc, '183 hw_random\n237 loop-control\n');
    assert.equal(deviceMapperAvailable(misc), false);
    assert.equal(deviceMapperAvailable(join(dir, 'missing')), false);
    writeFileSync(misc, '183 hw_random\n236 device-mapper\n');
    assert.equal(deviceMapperAvailable(misc), existsSync('/dev/mapper/control'));
  } finally { rmSync(dir, { recursive: true, force: true }); }
});

test('dm after a restart: flatten rebuilds the disk from the host once, and remove then releases it all', async () => {
  const l = lab();
  try {
    const disk = await l.backend.create('sb1', l.base, sig());
    const { backend, loops } = l.restart();
    await loops.adoptExisting(sig());
    const out = join(l.dir, 'flat.img');
    await backend.flatten(disk, out, sig());
    await backend.flatten(disk, out, sig());
    assert.deepEqual(loops.list().map((e) => e.refs), [1], 'one reference, not one per call');
    await backend.remove(disk, sig());
    assert.equal(l.host.loops.size, 0);
    assert.deepEqual(loops.list(), []);
    // An id whose disk is gone can be created again.
    await assert.rejects(backend.flatten(disk, out, sig()), ConflictError);
    const again = await backend.create('sb1', l.base, sig());
    await backend.remove(again, sig());
    assert.deepEqual(l.host.violations, []);
  } finally { l.done(); }
});
