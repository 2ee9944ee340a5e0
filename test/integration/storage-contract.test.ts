/**
 * The RootfsBackend contract (test/helpers/rootfs-contract.ts) against every
 * backend this host can run for real:
 *  - copy: in a temp dir;
 *  - reflink: on an XFS (reflink=1) image created, loop-mounted and torn down
 *    here (skipped with a message without mkfs.xfs or root);
 *  - dm: only where /dev/mapper/control exists (skipped elsewhere; the dm
 *    backend's logic is covered through the fake runner in test/unit/storage-dm-*).
 * Run: node --import tsx --test test/integration/storage-contract.test.ts
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileRootfsBackend } from '../../src/storage/file/file-backend.js';
import { supportsReflink } from '../../src/storage/select.js';
import { initReflinkDataDir, type ReflinkMount } from '../../src/storage/xfs-loop.js';
import { createDmBackend, deviceMapperAvailable } from '../../src/storage/dm/index.js';
import { detachLoop, listLoops } from '../../src/storage/loop/losetup.js';
import { rootfsBackendContract, safeRun } from '../helpers/rootfs-contract.js';

const isRoot = process.getuid?.() === 0;

async function which(cmd: string): Promise<boolean> {
  return (await safeRun('sh', ['-c', `command -v ${cmd}`], { allowFailure: true })).code === 0;
}

/** Unmount (a few tries: a just-closed file can keep it busy for a moment), then detach our loop only. */
async function unmountXfs(m: ReflinkMount): Promise<void> {
  for (let i = 0; i < 5; i++) {
    const r = await safeRun('umount', [m.mountpoint], { allowFailure: true });
    if (r.code === 0 || /not mounted/.test(r.stderr)) break;
    await new Promise((res) => setTimeout(res, 200 * (i + 1)));
  }
  await detachLoop(safeRun, m.loopDevice, m.image);
}

rootfsBackendContract('copy', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'hearth-contract-copy-'));
  const sandboxesDir = join(dir, 'sandboxes');
  return {
    backend: new FileRootfsBackend('copy', sandboxesDir, safeRun),
    workDir: join(dir, 'work'),
    sandboxesDir,
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
});

const xfsSkip = !isRoot
  ? 'reflink suite skipped: needs root (losetup, mount)'
  : !(await which('mkfs.xfs'))
    ? 'reflink suite skipped: mkfs.xfs not found (install xfsprogs)'
    : false;

rootfsBackendContract('reflink (XFS reflink=1 on a loop device)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'hearth-contract-xfs-'));
  const mnt = join(dir, 'mnt');
  let m: ReflinkMount | null = null;
  try {
    m = await initReflinkDataDir(mnt, { sizeGiB: 2, image: join(dir, 'xfs.img'), run: safeRun });
    assert.ok(m?.created, 'an XFS was created and mounted');
    assert.equal(await supportsReflink(mnt), true, 'FICLONE works on the XFS mount');
    const sandboxesDir = join(mnt, 'sandboxes');
    await mkdir(sandboxesDir, { recursive: true });
    const mounted = m;
    return {
      backend: new FileRootfsBackend('reflink', sandboxesDir, safeRun),
      workDir: join(mnt, 'work'),
      sandboxesDir,
      cleanup: async () => { try { await unmountXfs(mounted); } finally { await rm(dir, { recursive: true, force: true }); } },
    };
  } catch (err) {
    if (m) await unmountXfs(m).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}, { skip: xfsSkip });

const dmSkip = !deviceMapperAvailable()
  ? 'dm suite skipped: this kernel has no device-mapper (no "device-mapper" in /proc/misc, or no /dev/mapper/control); the dm backend is tested through the fake runner in test/unit/storage-dm-*.test.ts'
  : !isRoot ? 'dm suite skipped: needs root' : false;

rootfsBackendContract('dm-snapshot', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'hearth-contract-dm-'));
  const backend = createDmBackend({ dataDir: dir, run: safeRun });
  const sandboxesDir = join(dir, 'sandboxes');
  const ours = async (): Promise<Array<{ device: string; backingFile: string }>> => (await listLoops(safeRun)).filter((l) => l.backingFile.startsWith(`${dir}/`));
  return {
    backend,
    workDir: join(dir, 'work'),
    sandboxesDir,
    assertGone: async (d) => {
      assert.equal(await backend.dm.exists(backend.deviceName(d.sandboxId)), false, 'dm device removed');
      const left = (await ours()).filter((l) => d.files.includes(l.backingFile));
      assert.deepEqual(left, [], 'CoW loop detached');
    },
    cleanup: async () => {
      try {
        const left = await ours();
        for (const l of left) await detachLoop(safeRun, l.device, l.backingFile);
        assert.deepEqual(left, [], 'no loop leaked (the last release detached the origin too)');
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
}, { skip: dmSkip });
