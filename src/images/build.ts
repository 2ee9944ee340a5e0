/**
 * Orchestration: the default guest image = kernel + initramfs + rootfs.ext4,
 * content-addressed by the recipe hash.
 *
 *   <dataDir>/images/<hash16>/{vmlinuz, initramfs.cpio, rootfs.ext4, manifest.json}
 *   <cacheDir>/{kernels, initramfs, debootstrap}/…   (default cacheDir: <dataDir>/cache)
 *
 * An image directory is published by renaming a fully built temporary
 * directory whose manifest.json was written (atomically) last; a directory
 * without a valid manifest is an incomplete leftover and is rebuilt. Concurrent
 * builders race harmlessly: the first rename wins, the others delete theirs.
 */
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { HostFailureError, throwIfAborted } from '../core/errors.js';
import { atomicWriteFile, exists, publishDir, readJson, reapStaleTemps, removeTree, sha256, tempSibling } from './fsutil.js';
import { GUEST_DIR, hashGuestFiles } from './guest-files.js';
import { ensureInitramfs } from './initramfs.js';
import { kernelArgsFor } from './kernel-args.js';
import { ensureKernel } from './kernel.js';
import { hostNodeRuntime } from './node-runtime.js';
import { silentProgress, type Progress } from './progress.js';
import { compilePtyHelper, ptyHelperRecipe } from './pty-helper.js';
import { IMAGE_BUILDER_VERSION, recipeHash, uuidFromHash, type ImageRecipe } from './recipe.js';
import {
  DEFAULT_HOSTNAME,
  DEFAULT_PACKAGES,
  DEFAULT_SUITE,
  buildRootfs,
  ensureDebootstrapBase,
  hostDebianMirror,
  linkOrCopy,
  normaliseBaseSpec,
} from './rootfs.js';
import { run as defaultRun, type Runner } from './run.js';
import { hostTscKhz } from './tsc.js';
import { DataLayout } from '../core/layout.js';

export const DEFAULT_ROOTFS_SIZE_MIB = 2048;

export interface EnsureDefaultImageOptions {
  /** Hearth's data dir (default /var/lib/hearth in the daemon). */
  dataDir: string;
  /** The bundled guest agent (a single .cjs file), installed at /usr/local/lib/hearth/hearth-agent.cjs. */
  agentBundlePath: string;
  signal?: AbortSignal;
  progress?: Progress;
  /** Size of rootfs.ext4 (a sparse file). Default 2048. */
  rootfsSizeMiB?: number;
  /** Kernel, initramfs and debootstrap caches; default `<dataDir>/cache`. */
  cacheDir?: string;
  /** Debian mirror for debootstrap; default: the host's apt mirror, else deb.debian.org. */
  mirror?: string;
  suite?: string;
  packages?: readonly string[];
  /** Kernel meta or real package (default linux-image-cloud-amd64). */
  kernelPackage?: string;
  hostname?: string;
  /**
   * 'host' (default): copy the Node running Hearth (with npm/corepack) into the
   * guest's /usr/local, which starts ~4x faster there than Debian's node 18;
   * 'debian': only the Debian nodejs package.
   */
  guestNode?: 'host' | 'debian';
  /** Override scripts/guest (tests). */
  guestDir?: string;
  run?: Runner;
}

export interface ImageInfo {
  /** `default-<hash16>`. */
  id: string;
  /** Full sha256 of the recipe. */
  hash: string;
  kernelPath: string;
  initrdPath: string;
  rootfsPath: string;
  /** Base kernel command line for this host (includes tsc_early_khz when known). */
  kernelArgs: string;
  /** The image directory. */
  dir: string;
  /** Kernel release inside the image (uname -r). */
  kernelVersion: string;
  /** True when this call built the image, false when it was reused. */
  built: boolean;
}

export interface ImageManifest {
  id: string;
  hash: string;
  createdAt: string;
  files: { kernel: string; initrd: string; rootfs: string };
  /** Kernel args without the host-specific tsc_early_khz. */
  kernelArgsBase: string;
  kernelVersion: string;
  recipe: ImageRecipe;
  initramfsModules: string[];
  packageVersions: string[];
  buildSeconds: number;
}

const MANIFEST = 'manifest.json';
const FILES = { kernel: 'vmlinux', initrd: 'initramfs.cpio', rootfs: 'rootfs.ext4' } as const;

/** A manifest that parses and whose files exist: the directory is a complete image. */
export async function loadImage(dir: string): Promise<ImageManifest | undefined> {
  const m = await readJson<ImageManifest>(join(dir, MANIFEST));
  if (!m || typeof m.hash !== 'string' || !m.files) return undefined;
  for (const f of Object.values(m.files)) if (!(await exists(join(dir, f)))) return undefined;
  return m;
}

async function toInfo(dir: string, m: ImageManifest, built: boolean): Promise<ImageInfo> {
  return {
    id: m.id,
    hash: m.hash,
    kernelPath: join(dir, m.files.kernel),
    initrdPath: join(dir, m.files.initrd),
    rootfsPath: join(dir, m.files.rootfs),
    kernelArgs: kernelArgsFor(await hostTscKhz()),
    dir,
    kernelVersion: m.kernelVersion,
    built,
  };
}

/**
 * Build (or reuse) the default guest image. Only what changed is redone: the
 * kernel, initramfs and debootstrap base are cached separately, so a new agent
 * bundle costs a staging copy and mkfs (tens of seconds), not a debootstrap.
 */
export async function ensureDefaultImage(opts: EnsureDefaultImageOptions): Promise<ImageInfo> {
  const { dataDir, signal } = opts;
  const progress = opts.progress ?? silentProgress;
  const run = opts.run ?? defaultRun;
  const cacheDir = opts.cacheDir ?? join(dataDir, 'cache');
  const sizeMiB = opts.rootfsSizeMiB ?? DEFAULT_ROOTFS_SIZE_MIB;
  const hostname = opts.hostname ?? DEFAULT_HOSTNAME;
  if (!Number.isInteger(sizeMiB) || sizeMiB < 256) throw new HostFailureError(`rootfsSizeMiB must be an integer ≥ 256, got ${sizeMiB}`);
  const t0 = Date.now();

  try {
    const agent = await readFile(opts.agentBundlePath).catch((err: Error) => {
      throw new HostFailureError(`cannot read the agent bundle ${opts.agentBundlePath}: ${err.message}`);
    });
    const kernel = await ensureKernel({ cacheDir, signal, progress, packageName: opts.kernelPackage, run });
    const initramfs = await ensureInitramfs({ cacheDir, kernel, signal, progress, guestDir: opts.guestDir });
    const spec = normaliseBaseSpec({
      suite: opts.suite ?? DEFAULT_SUITE,
      mirror: opts.mirror ?? (await hostDebianMirror()),
      packages: [...(opts.packages ?? DEFAULT_PACKAGES)],
    });
    const nodeRuntime = (opts.guestNode ?? 'host') === 'host' ? await hostNodeRuntime() : undefined;
    const recipe: ImageRecipe = {
      builderVersion: IMAGE_BUILDER_VERSION,
      kernel: { packageName: kernel.packageName, packageVersion: kernel.packageVersion, release: kernel.version },
      debootstrap: { suite: spec.suite, mirror: spec.mirror, arch: spec.arch, variant: spec.variant, packages: spec.packages },
      initramfs: { key: initramfs.key },
      busyboxSha256: initramfs.busyboxSha256,
      guestFiles: await hashGuestFiles(opts.guestDir ?? GUEST_DIR),
      agentSha256: sha256(agent),
      ptyHelper: await ptyHelperRecipe({ run, signal }),
      node: nodeRuntime
        ? { source: 'host', version: nodeRuntime.version, sha256: nodeRuntime.sha256, modules: nodeRuntime.modules.map((m) => `${m.name}@${m.version}`) }
        : { source: 'debian' },
      rootfsSizeMiB: sizeMiB,
      hostname,
    };
    const hash = recipeHash(recipe);
    const id = `default-${hash.slice(0, 16)}`;
    const imagesDir = new DataLayout(dataDir).imagesDir;
    const dir = join(imagesDir, hash.slice(0, 16));

    const existing = await loadImage(dir);
    if (existing && existing.hash === hash) {
      progress.info(`image ${id} is up to date`);
      progress.done(`image ${id} reused`);
      return toInfo(dir, existing, false);
    }

    await mkdir(imagesDir, { recursive: true });
    await reapStaleTemps(imagesDir, run);
    const base = await ensureDebootstrapBase({ cacheDir, spec, signal, progress, run });

    const tmp = tempSibling(dir, 'build');
    await mkdir(tmp, { recursive: true });
    try {
      progress.stage('image: kernel and initramfs');
      await linkOrCopy(kernel.vmlinuxPath, join(tmp, FILES.kernel));
      await linkOrCopy(initramfs.path, join(tmp, FILES.initrd));
      progress.stage('image: compile the PTY helper (gcc -static)');
      const ptyHelperPath = join(tmp, 'hearth-pty');
      await compilePtyHelper(ptyHelperPath, { run, signal });
      await buildRootfs({
        base,
        stagingDir: join(tmp, 'staging'),
        outPath: join(tmp, FILES.rootfs),
        agentBundlePath: opts.agentBundlePath,
        ptyHelperPath,
        sizeMiB,
        hostname,
        imageMeta: { id, hash, kernel: kernel.version, agentSha256: recipe.agentSha256 },
        uuid: uuidFromHash(hash),
        guestDir: opts.guestDir,
        nodeRuntime,
        busyboxPath: initramfs.busyboxPath,
        signal,
        progress,
        run,
      });
      await rm(ptyHelperPath, { force: true });
      throwIfAborted(signal);
      progress.stage('image: manifest');
      const manifest: ImageManifest = {
        id,
        hash,
        createdAt: new Date().toISOString(),
        files: { ...FILES },
        kernelArgsBase: kernelArgsFor(undefined),
        kernelVersion: kernel.version,
        recipe,
        initramfsModules: initramfs.modules,
        packageVersions: base.packageVersions,
        buildSeconds: Math.round((Date.now() - t0) / 100) / 10,
      };
      // Last: the manifest marks the directory complete.
      await atomicWriteFile(join(tmp, MANIFEST), JSON.stringify(manifest, null, 2) + '\n');
      await publishDir(tmp, dir, async (d) => (await loadImage(d))?.hash === hash);
    } catch (err) {
      await removeTree(tmp, run).catch(() => rm(tmp, { recursive: true, force: true }));
      throw err;
    }
    const m = await loadImage(dir);
    if (!m) throw new HostFailureError(`image ${dir} is incomplete after build`);
    const rootfsBytes = (await stat(join(dir, FILES.rootfs))).blocks * 512;
    progress.done(`image ${id} built in ${((Date.now() - t0) / 1000).toFixed(1)} s (rootfs ${(rootfsBytes / 2 ** 20).toFixed(0)} MiB allocated)`);
    return toInfo(dir, m, true);
  } catch (err) {
    progress.done(`image build failed: ${(err as Error).message.split('\n')[0]}`);
    throw err;
  }
}
