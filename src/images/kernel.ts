/**
 * The guest kernel: Debian's cloud kernel, fetched with `apt-get download`
 * and unpacked with `dpkg-deb -x` into a cache directory.
 *
 * Layout: `<cacheDir>/kernels/<package>_<version>/` holding the package's
 * tree (`boot/vmlinuz-<release>`, `lib/modules/<release>/`, with a generated
 * `modules.dep`) and `kernel.json`, written last: a directory without it is an
 * incomplete leftover and is rebuilt.
 */
import { chmod, mkdir, open, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';
import { HostFailureError, throwIfAborted } from '../core/errors.js';
import { atomicWriteFile, exists, publishDir, readJson, reapStaleTemps, tempSibling } from './fsutil.js';
import { generateModulesDep } from './modules.js';
import { silentProgress, type Progress } from './progress.js';
import { run as defaultRun, type Runner } from './run.js';

/** The Debian meta package whose dependency is the real kernel package. */
export const DEFAULT_KERNEL_META_PACKAGE = 'linux-image-cloud-amd64';

export interface EnsureKernelOptions {
  /** Cache root; the kernel goes to `<cacheDir>/kernels/…`. */
  cacheDir: string;
  signal?: AbortSignal;
  progress?: Progress;
  /** A meta package (resolved through `apt-cache depends`) or a real linux-image package. */
  packageName?: string;
  /** Command runner seam (tests). */
  run?: Runner;
}

export interface KernelInfo {
  /** Kernel release, as `uname -r` prints it in the guest (e.g. 6.1.0-56-cloud-amd64). */
  version: string;
  /** Compressed bzImage (works with QEMU `-kernel`, but its decompression costs ~1.3 s under TCG). */
  vmlinuzPath: string;
  /**
   * The uncompressed ELF kernel extracted from the bzImage. It has a PVH entry
   * note (CONFIG_PVH=y), so QEMU `-kernel` boots it directly (no decompression)
   * and it is the format Firecracker requires.
   */
  vmlinuxPath: string;
  /** `lib/modules/<release>` inside the cache, with a modules.dep. */
  modulesDir: string;
  /** The Debian package it came from, e.g. linux-image-6.1.0-56-cloud-amd64. */
  packageName: string;
  /** The Debian package version, e.g. 6.1.192-2. */
  packageVersion: string;
  /** The cache directory holding the unpacked package. */
  dir: string;
}

interface KernelManifest {
  format: number;
  packageName: string;
  packageVersion: string;
  version: string;
  vmlinuz: string;
  vmlinux: string;
  modules: string;
  createdAt: string;
}

const MANIFEST = 'kernel.json';
/** Bump when the cache directory's content changes (older directories are rebuilt). */
const KERNEL_CACHE_FORMAT = 2;

/** Resolve a meta package to the real kernel package (`apt-cache depends`). */
export async function resolveKernelPackage(meta: string, run: Runner, signal?: AbortSignal): Promise<string> {
  const { stdout } = await run('apt-cache', ['depends', meta], { signal });
  for (const line of stdout.split('\n')) {
    const m = /^\s*\|?Depends:\s*(linux-image-\S+)/.exec(line);
    if (m && m[1] !== meta && !m[1]!.includes('<')) return m[1]!;
  }
  if (/^linux-image-\d/.test(meta)) return meta; // already a real package
  throw new HostFailureError(`apt-cache depends ${meta} names no linux-image package (run apt-get update?)`);
}

/** The candidate version apt would download for `pkg`. */
export async function candidateVersion(pkg: string, run: Runner, signal?: AbortSignal): Promise<string> {
  const { stdout } = await run('apt-cache', ['policy', pkg], { signal });
  const m = /^\s*Candidate:\s*(\S+)/m.exec(stdout);
  if (!m || m[1] === '(none)') throw new HostFailureError(`apt has no candidate version for ${pkg} (run apt-get update?)`);
  return m[1]!;
}

async function loadCached(dir: string): Promise<KernelInfo | undefined> {
  const m = await readJson<KernelManifest>(join(dir, MANIFEST));
  if (!m || m.format !== KERNEL_CACHE_FORMAT) return undefined;
  const info: KernelInfo = {
    version: m.version,
    vmlinuzPath: join(dir, m.vmlinuz),
    vmlinuxPath: join(dir, m.vmlinux),
    modulesDir: join(dir, m.modules),
    packageName: m.packageName,
    packageVersion: m.packageVersion,
    dir,
  };
  return (await exists(info.vmlinuzPath)) && (await exists(info.vmlinuxPath)) ? info : undefined;
}

/** The most recently built complete kernel in the cache (offline fallback). */
async function newestCached(kernelsDir: string): Promise<KernelInfo | undefined> {
  let best: { info: KernelInfo; mtime: number } | undefined;
  let names: string[] = [];
  try {
    names = await readdir(kernelsDir);
  } catch {
    return undefined;
  }
  for (const n of names) {
    if (n.startsWith('.')) continue;
    const info = await loadCached(join(kernelsDir, n));
    if (!info) continue;
    const mtime = (await stat(join(kernelsDir, n, MANIFEST))).mtimeMs;
    if (!best || mtime > best.mtime) best = { info, mtime };
  }
  return best?.info;
}

/**
 * Make sure the Debian cloud kernel is unpacked in the cache and return its
 * paths. Cached per package version; without apt metadata (offline) the newest
 * cached kernel is used.
 */
export async function ensureKernel(opts: EnsureKernelOptions): Promise<KernelInfo> {
  const { cacheDir, signal } = opts;
  const progress = opts.progress ?? silentProgress;
  const run = opts.run ?? defaultRun;
  const kernelsDir = join(cacheDir, 'kernels');
  await mkdir(kernelsDir, { recursive: true });

  progress.stage('kernel: resolve package');
  let pkg: string;
  let version: string;
  try {
    pkg = await resolveKernelPackage(opts.packageName ?? DEFAULT_KERNEL_META_PACKAGE, run, signal);
    version = await candidateVersion(pkg, run, signal);
  } catch (err) {
    throwIfAborted(signal);
    const cached = await newestCached(kernelsDir);
    if (!cached) throw err;
    progress.info(`apt metadata unavailable (${(err as Error).message.split('\n')[0]}); using cached ${cached.packageName} ${cached.packageVersion}`);
    return cached;
  }
  progress.info(`${pkg} ${version}`);

  const finalDir = join(kernelsDir, `${pkg}_${version}`.replace(/[^\w.+~-]/g, '_'));
  const cached = await loadCached(finalDir);
  if (cached) {
    progress.info(`cached in ${finalDir}`);
    return cached;
  }

  progress.stage(`kernel: download ${pkg}`);
  await reapStaleTemps(kernelsDir, run);
  const tmp = tempSibling(finalDir, 'build');
  await mkdir(tmp, { recursive: true });
  try {
    const dl = tempSibling(join(kernelsDir, 'download'), 'tmp');
    await mkdir(dl, { recursive: true });
    let deb: string;
    try {
      await chmod(dl, 0o755);
      // Root + the _apt sandbox user cannot write into our temp dir; download as root quietly.
      await run('apt-get', ['-q', '-o', 'APT::Sandbox::User=root', 'download', `${pkg}=${version}`], { cwd: dl, signal });
      const debs = (await readdir(dl)).filter((f) => f.endsWith('.deb'));
      if (debs.length !== 1) throw new HostFailureError(`apt-get download ${pkg} produced ${debs.length} .deb files`);
      deb = join(dl, debs[0]!);
      progress.stage('kernel: unpack');
      await run('dpkg-deb', ['-x', deb, tmp], { signal });
    } finally {
      await rm(dl, { recursive: true, force: true });
    }

    const releases = await readdir(join(tmp, 'lib', 'modules')).catch(() => [] as string[]);
    const boots = (await readdir(join(tmp, 'boot')).catch(() => [] as string[])).filter((f) => f.startsWith('vmlinuz-'));
    const release = releases.length === 1 ? releases[0]! : boots[0]?.slice('vmlinuz-'.length);
    if (!release || !boots.includes(`vmlinuz-${release}`)) {
      throw new HostFailureError(`${pkg}: expected boot/vmlinuz-<release> and lib/modules/<release>, found ${boots.join(',') || 'no vmlinuz'}`);
    }
    const modules = join('lib', 'modules', release);
    await mkdir(join(tmp, modules), { recursive: true });
    if (!(await exists(join(tmp, modules, 'modules.dep')))) {
      progress.info('generating modules.dep from .modinfo');
      await writeFile(join(tmp, modules, 'modules.dep'), await generateModulesDep(join(tmp, modules)));
    }
    progress.info('extracting the uncompressed vmlinux');
    const vmlinux = join('boot', `vmlinux-${release}`);
    await extractVmlinux(join(tmp, 'boot', `vmlinuz-${release}`), join(tmp, vmlinux), run, signal);
    throwIfAborted(signal);
    const manifest: KernelManifest = {
      format: KERNEL_CACHE_FORMAT,
      packageName: pkg,
      packageVersion: version,
      version: release,
      vmlinuz: join('boot', `vmlinuz-${release}`),
      vmlinux,
      modules,
      createdAt: new Date().toISOString(),
    };
    await atomicWriteFile(join(tmp, MANIFEST), JSON.stringify(manifest, null, 2) + '\n');
    await publishDir(tmp, finalDir, async (d) => (await loadCached(d)) !== undefined);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  const info = await loadCached(finalDir);
  if (!info) throw new HostFailureError(`kernel cache ${finalDir} is incomplete after build`);
  progress.info(`${info.version} ready`);
  return info;
}

/** Where the compressed kernel sits inside a bzImage, and how it is compressed. */
export function bzImagePayload(bz: Buffer): { data: Buffer; format: 'gzip' | 'xz' | 'zstd' | 'lz4' | 'lzma' | 'bzip2' | 'lzo'; size: number } {
  if (bz.length < 0x260 || bz.toString('latin1', 0x202, 0x206) !== 'HdrS') throw new HostFailureError('not a bzImage (no HdrS header)');
  const protocol = bz.readUInt16LE(0x206);
  if (protocol < 0x208) throw new HostFailureError(`bzImage boot protocol ${protocol.toString(16)} has no payload fields`);
  const setupSects = bz[0x1f1] || 4;
  const offset = (setupSects + 1) * 512 + bz.readUInt32LE(0x248);
  const length = bz.readUInt32LE(0x24c);
  if (offset + length > bz.length || length < 8) throw new HostFailureError('bzImage payload is out of bounds');
  const payload = bz.subarray(offset, offset + length);
  // The build appends the uncompressed size (le32) after the compressed stream.
  const size = payload.readUInt32LE(length - 4);
  const data = payload.subarray(0, length - 4);
  const hex = data.subarray(0, 6).toString('hex');
  const format = hex.startsWith('1f8b')
    ? 'gzip'
    : hex === 'fd377a585a00'
      ? 'xz'
      : hex.startsWith('28b52ffd')
        ? 'zstd'
        : hex.startsWith('02214c18')
          ? 'lz4'
          : hex.startsWith('5d00')
            ? 'lzma'
            : hex.startsWith('425a68')
              ? 'bzip2'
              : hex.startsWith('894c5a')
                ? 'lzo'
                : undefined;
  if (!format) throw new HostFailureError(`unknown bzImage payload compression (magic ${hex})`);
  return { data, format, size };
}

/**
 * Write the uncompressed ELF vmlinux contained in a bzImage (what the kernel's
 * scripts/extract-vmlinux does). gzip is done in-process; other formats use
 * the host's xz / zstd / lz4 / bzip2 / lzop.
 */
export async function extractVmlinux(bzImagePath: string, outPath: string, run: Runner, signal?: AbortSignal): Promise<void> {
  const { data, format, size } = bzImagePayload(await readFile(bzImagePath));
  const tools: Record<typeof format, [string, string[]] | undefined> = {
    gzip: undefined,
    xz: ['xz', ['-dc']],
    lzma: ['xz', ['--format=lzma', '-dc']],
    zstd: ['zstd', ['-dcq']],
    lz4: ['lz4', ['-dcq']],
    bzip2: ['bzip2', ['-dc']],
    lzo: ['lzop', ['-dc']],
  };
  const tool = tools[format];
  if (!tool) {
    await writeFile(outPath, gunzipSync(data));
  } else {
    await run(tool[0], tool[1], { input: data, stdoutPath: outPath, signal }).catch((err: Error) => {
      throw new HostFailureError(`cannot decompress the ${format} kernel with ${tool[0]} (install it?): ${err.message}`);
    });
  }
  const st = await stat(outPath);
  const head = Buffer.alloc(4);
  const fh = await open(outPath, 'r');
  try {
    await fh.read(head, 0, 4, 0);
  } finally {
    await fh.close();
  }
  if (head.readUInt32BE(0) !== 0x7f454c46 || st.size !== size) {
    throw new HostFailureError(`extracted vmlinux is not the expected ELF of ${size} bytes (${st.size} bytes)`);
  }
}
