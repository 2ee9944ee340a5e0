/**
 * Storage benchmark: how long a sandbox's root disk takes to create, and how
 * much disk 10 sandboxes of one template really use, for each backend side by
 * side in one run:
 *   - copy     full sparse copy (cp --sparse=always)
 *   - reflink  FICLONE copy
 *   - dm       dm-snapshot over a shared read-only loop (only where the kernel has device-mapper)
 * all on one loop-mounted XFS (reflink=1) created here, for 1 GiB and 8 GiB
 * templates: sparse images with 200 MB of random data at scattered offsets.
 *
 *   node --import tsx bench/storage.ts
 *
 * Env: HEARTH_BENCH_SANDBOXES (default 10), HEARTH_BENCH_DATA_MB (default 200),
 * HEARTH_BENCH_SIZES_GIB (default "1,8"). Writes bench/results/storage.json.
 * Mounts, loop devices and files are cleaned up at the end, also on failure or Ctrl-C.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { cpus, release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FileRootfsBackend } from '../src/storage/file/file-backend.js';
import { initReflinkDataDir, type ReflinkMount } from '../src/storage/xfs-loop.js';
import { createDmBackend, deviceMapperAvailable } from '../src/storage/dm/index.js';
import { detachLoop, listLoops } from '../src/storage/loop/losetup.js';
import type { BaseImage, RootDisk, RootfsBackend } from '../src/storage/types.js';
import { safeRun as run } from '../test/helpers/rootfs-contract.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const SANDBOXES = Number(process.env['HEARTH_BENCH_SANDBOXES'] ?? 10);
const DATA_MB = Number(process.env['HEARTH_BENCH_DATA_MB'] ?? 200);
const SIZES_GIB = (process.env['HEARTH_BENCH_SIZES_GIB'] ?? '1,8').split(',').map(Number);
const RESULTS = join(dirname(fileURLToPath(import.meta.url)), 'results', 'storage.json');

interface BackendResult {
  backend: string;
  /** Wall time of create(): what a sandbox start waits for. */
  createMs: { min: number; median: number; max: number; all: number[] };
  /** create() plus `sync -f` of the filesystem: the I/O the create really caused. */
  createAndFlushMsMedian: number;
  removeMsMedian: number;
  /** Sum over the sandboxes of usage() = st_blocks*512 of each disk's own files. */
  perDiskAllocatedBytes: number;
  /** What the filesystem really lost (statfs before/after): shared reflink extents counted once. */
  filesystemUsedBytes: number;
}
interface TemplateResult { sizeBytes: number; dataBytes: number; templateAllocatedBytes: number; results: BackendResult[]; skipped: Array<{ backend: string; reason: string }> }

const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;
const median = (xs: number[]): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]!; };
const round = (x: number): number => Math.round(x * 100) / 100;

async function fsUsed(path: string): Promise<number> {
  const s = await statfs(path);
  return (s.blocks - s.bfree) * s.bsize;
}

/** A sparse template: `dataMb` MB of random data in 2 MiB pieces at evenly spread offsets. */
async function makeTemplate(path: string, size: number, dataMb: number): Promise<void> {
  const piece = 2 * MiB;
  const pieces = Math.ceil((dataMb * 1e6) / piece);
  const stride = Math.floor(size / pieces / 4096) * 4096;
  const fh = await open(path, 'w', 0o644);
  try {
    await fh.truncate(size);
    for (let i = 0; i < pieces; i++) {
      const jitter = Math.floor(Math.random() * Math.max(1, (stride - piece) / 4096)) * 4096;
      await fh.write(randomBytes(piece), 0, piece, Math.min(i * stride + jitter, size - piece));
    }
    await fh.sync();
  } finally { await fh.close(); }
}

async function benchBackend(name: string, backend: RootfsBackend, base: BaseImage, fsRoot: string): Promise<BackendResult> {
  const disks: RootDisk[] = [];
  const times: number[] = [];
  const flushed: number[] = [];
  await run('sync', ['-f', fsRoot]);
  const before = await fsUsed(fsRoot);
  try {
    for (let i = 0; i < SANDBOXES; i++) {
      const id = `b${name.replace(/\W/g, '')}${i}`;
      const t0 = process.hrtime.bigint();
      disks.push(await backend.create(id, base, AbortSignal.timeout(600_000)));
      times.push(ms(t0));
      // Flush before the next one, so no create pays for the previous one's writeback.
      await run('sync', ['-f', fsRoot]);
      flushed.push(ms(t0));
    }
    await run('sync', ['-f', fsRoot]);
    const after = await fsUsed(fsRoot);
    let perDisk = 0;
    for (const d of disks) perDisk += (await backend.usage(d)).allocatedBytes;
    const removeTimes: number[] = [];
    while (disks.length) {
      const d = disks.pop()!;
      const t0 = process.hrtime.bigint();
      await backend.remove(d, AbortSignal.timeout(60_000));
      removeTimes.push(ms(t0));
    }
    return {
      backend: name,
      createMs: { min: round(Math.min(...times)), median: round(median(times)), max: round(Math.max(...times)), all: times.map(round) },
      createAndFlushMsMedian: round(median(flushed)),
      removeMsMedian: round(median(removeTimes)),
      perDiskAllocatedBytes: perDisk,
      filesystemUsedBytes: Math.max(0, after - before),
    };
  } finally {
    for (const d of disks) await backend.remove(d, AbortSignal.timeout(60_000)).catch((err: unknown) => console.error(`cleanup: ${String(err)}`));
  }
}

function human(bytes: number): string {
  if (bytes >= GiB) return `${(bytes / GiB).toFixed(2)} GiB`;
  if (bytes >= MiB) return `${(bytes / MiB).toFixed(1)} MiB`;
  return `${(bytes / 1024).toFixed(0)} KiB`;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('run as root: the benchmark creates a loop-mounted XFS');
  const work = await mkdtemp(join(tmpdir(), 'hearth-bench-storage-'));
  const mnt = join(work, 'xfs');
  let mount: ReflinkMount | null = null;
  let dm: ReturnType<typeof createDmBackend> | null = null;
  const cleanup = async (): Promise<void> => {
    if (mount) {
      for (let i = 0; i < 5; i++) {
        const r = await run('umount', [mount.mountpoint], { allowFailure: true });
        if (r.code === 0 || /not mounted/.test(r.stderr)) break;
        await new Promise((res) => setTimeout(res, 300 * (i + 1)));
      }
      await detachLoop(run, mount.loopDevice, mount.image).catch((err: unknown) => console.error(`cleanup: ${String(err)}`));
      mount = null;
    }
    // Any loop still backed by our files (a dm run interrupted half-way): detach those, and only those.
    for (const l of (await listLoops(run).catch(() => [])).filter((x) => x.backingFile.startsWith(`${work}/`))) {
      await detachLoop(run, l.device, l.backingFile).catch(() => undefined);
    }
    await rm(work, { recursive: true, force: true });
  };
  let interrupted = false;
  const onSignal = (): void => {
    if (interrupted) return;
    interrupted = true;
    console.error('interrupted: cleaning up');
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const maxSize = Math.max(...SIZES_GIB) * GiB;
    const imgGiB = Math.ceil((maxSize + (SANDBOXES + 2) * DATA_MB * 1e6) / GiB) + 4;
    mount = await initReflinkDataDir(mnt, { sizeGiB: imgGiB, image: join(work, 'xfs.img'), run });
    if (!mount?.created) throw new Error(`could not create an XFS mount at ${mnt}`);
    const sandboxes = join(mnt, 'sandboxes');
    await mkdir(sandboxes, { recursive: true });
    const backends: Array<[string, RootfsBackend]> = [
      ['copy', new FileRootfsBackend('copy', join(sandboxes, 'copy'), run)],
      ['reflink', new FileRootfsBackend('reflink', join(sandboxes, 'reflink'), run)],
    ];
    const dmReason = deviceMapperAvailable() ? null : 'this kernel has no device-mapper (no "device-mapper" in /proc/misc)';
    if (!dmReason) {
      dm = createDmBackend({ dataDir: mnt, run, sandboxesDir: join(sandboxes, 'dm') });
      backends.push(['dm', dm]);
    }
    const templates: TemplateResult[] = [];
    for (const gib of SIZES_GIB) {
      const path = join(mnt, 'templates', `t${gib}g`, 'rootfs.ext4');
      await mkdir(dirname(path), { recursive: true });
      const t0 = process.hrtime.bigint();
      await makeTemplate(path, gib * GiB, DATA_MB);
      const st = await stat(path);
      console.log(`template ${gib} GiB: ${DATA_MB} MB of data written in ${ms(t0).toFixed(0)} ms`);
      const base: BaseImage = { id: `t${gib}g`, path, sizeBytes: gib * GiB };
      const tr: TemplateResult = { sizeBytes: gib * GiB, dataBytes: DATA_MB * 1e6, templateAllocatedBytes: st.blocks * 512, results: [], skipped: [] };
      if (dmReason) tr.skipped.push({ backend: 'dm', reason: dmReason });
      for (const [name, backend] of backends) {
        const r = await benchBackend(name, backend, base, mnt);
        tr.results.push(r);
        console.log(`  ${name.padEnd(8)} create median ${String(r.createMs.median).padStart(8)} ms (min ${r.createMs.min}, max ${r.createMs.max}; +flush ${r.createAndFlushMsMedian} ms)  ` +
          `${SANDBOXES} sandboxes: fs used ${human(r.filesystemUsedBytes).padStart(10)}, per-disk st_blocks sum ${human(r.perDiskAllocatedBytes)}`);
      }
      templates.push(tr);
      await rm(dirname(path), { recursive: true, force: true });
    }
    if (dmReason) console.log(`  dm       skipped: ${dmReason}`);
    const out = {
      benchmark: 'storage',
      date: new Date().toISOString(),
      host: { kernel: release(), cpus: cpus().length, cpuModel: cpus()[0]?.model ?? '', filesystem: `XFS (reflink=1) on a loop device over ${(await run('findmnt', ['-n', '-o', 'FSTYPE', '-T', tmpdir()])).stdout.trim()}`, deviceMapper: !dmReason },
      params: { sandboxes: SANDBOXES, templateSizesGiB: SIZES_GIB, dataMB: DATA_MB, pageCache: 'warm (template just written; caches not dropped)' },
      notes: [
        'createMs: wall time of RootfsBackend.create (the template already exists); the filesystem is synced between creates.',
        'createAndFlushMsMedian: create plus `sync -f` of the filesystem, i.e. including the writeback of what the create wrote.',
        'filesystemUsedBytes: statfs used-blocks delta after creating all sandboxes (after sync): what the sandboxes really cost on disk.',
        'perDiskAllocatedBytes: sum of usage() (st_blocks*512 of each disk\'s files). For reflink this counts shared extents once per file, so it overstates the real cost; for dm it is the CoW files only.',
      ],
      templates,
    };
    await mkdir(dirname(RESULTS), { recursive: true });
    await writeFile(RESULTS, `${JSON.stringify(out, null, 2)}\n`);
    console.log(`results: ${RESULTS}`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (!interrupted) await cleanup();
  }
}

await main();
