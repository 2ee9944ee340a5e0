/**
 * The initramfs: busybox-static, the virtio/vsock modules the cloud kernel has
 * as modules (in dependency order), and `scripts/guest/initramfs-init` as
 * /init. Written as a reproducible newc cpio (see cpio.ts), uncompressed by
 * default: it is ~3 MiB, and skipping decompression saves emulated CPU under TCG.
 *
 * Cached at `<cacheDir>/initramfs/<key>.cpio`, the key covering everything
 * that goes in (kernel package, module list, busybox binary, init script).
 */
import { readFile, mkdir } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { HostFailureError, throwIfAborted } from '../core/errors.js';
import { buildCpio, type CpioEntry } from './cpio.js';
import { atomicWriteFile, exists, sha256 } from './fsutil.js';
import { INITRAMFS_INIT, readGuestFile } from './guest-files.js';
import type { KernelInfo } from './kernel.js';
import { parseModulesBuiltin, parseModulesDep, planModuleLoad, type LoadPlan } from './modules.js';
import { silentProgress, type Progress } from './progress.js';

/** Bump when the archive layout changes (invalidates cached initramfs files). */
export const INITRAMFS_FORMAT_VERSION = 1;

/**
 * Drivers the guest needs before its root filesystem is mounted, or that
 * hearth-init relies on (network, vsock, entropy). Dependencies (virtio_ring,
 * virtio, failover, …) are added and ordered from modules.dep.
 */
export const INITRAMFS_MODULES: readonly string[] = [
  'virtio_ring',
  'virtio',
  'virtio_mmio',
  'virtio_pci',
  'virtio_blk',
  'virtio_net',
  'vsock',
  'vmw_vsock_virtio_transport_common',
  'vmw_vsock_virtio_transport',
  'virtio_rng',
];

/** Busybox applets /init uses (symlinks in /bin). */
const APPLETS = [
  'sh', 'mount', 'umount', 'mkdir', 'ln', 'insmod', 'switch_root', 'sleep', 'cat', 'echo', 'ls', 'tr',
  'findfs', 'sync', 'poweroff', 'reboot', 'test', '[',
];

export interface EnsureInitramfsOptions {
  cacheDir: string;
  kernel: KernelInfo;
  signal?: AbortSignal;
  progress?: Progress;
  /** Static busybox to embed (default /bin/busybox from busybox-static). */
  busyboxPath?: string;
  /** Modules to load (default INITRAMFS_MODULES). */
  modules?: readonly string[];
  /** 'none' (default) or 'gzip'. */
  compression?: 'none' | 'gzip';
  /** Override scripts/guest (tests). */
  guestDir?: string;
}

export interface InitramfsInfo {
  path: string;
  /** sha256 of the archive's inputs (not of the file). */
  key: string;
  /** Module files in load order (paths relative to the kernel's modules dir). */
  modules: string[];
  /** Wanted modules that were not found as modules (built in, or absent). */
  skipped: string[];
  /** The busybox binary embedded (host path) and its sha256. */
  busyboxPath: string;
  busyboxSha256: string;
}

/** Fail early if busybox would not run in an initramfs (it must be static). */
export function assertStaticElf(bin: Buffer, what: string): void {
  if (bin.length < 64 || bin.readUInt32BE(0) !== 0x7f454c46 || bin[4] !== 2) {
    throw new HostFailureError(`${what} is not a 64-bit ELF executable`);
  }
  const phoff = Number(bin.readBigUInt64LE(0x20));
  const phentsize = bin.readUInt16LE(0x36);
  const phnum = bin.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    if (bin.readUInt32LE(phoff + i * phentsize) === 3 /* PT_INTERP */) {
      throw new HostFailureError(`${what} is dynamically linked; install busybox-static`);
    }
  }
}

/** Which modules to load and in what order, from the kernel's modules.dep / modules.builtin. */
export async function planInitramfsModules(kernel: KernelInfo, wanted: readonly string[] = INITRAMFS_MODULES): Promise<LoadPlan> {
  const depText = await readFile(join(kernel.modulesDir, 'modules.dep'), 'utf8').catch(() => '');
  const builtinText = await readFile(join(kernel.modulesDir, 'modules.builtin'), 'utf8').catch(() => '');
  return planModuleLoad(parseModulesDep(depText), wanted, parseModulesBuiltin(builtinText));
}

export async function ensureInitramfs(opts: EnsureInitramfsOptions): Promise<InitramfsInfo> {
  const { cacheDir, kernel, signal } = opts;
  const progress = opts.progress ?? silentProgress;
  const compression = opts.compression ?? 'none';
  progress.stage('initramfs');

  const busyboxPath = opts.busyboxPath ?? '/bin/busybox';
  const busybox = await readFile(busyboxPath).catch((err: Error) => {
    throw new HostFailureError(`cannot read ${busyboxPath} (apt-get install busybox-static): ${err.message}`);
  });
  assertStaticElf(busybox, busyboxPath);
  const busyboxSha256 = sha256(busybox);
  const init = await readGuestFile(INITRAMFS_INIT, opts.guestDir);
  const plan = await planInitramfsModules(kernel, opts.modules ?? INITRAMFS_MODULES);
  const skipped = [...plan.builtin, ...plan.missing];
  if (plan.missing.length) progress.info(`not found as modules (assumed built in): ${plan.missing.join(', ')}`);

  const key = sha256(
    JSON.stringify({
      v: INITRAMFS_FORMAT_VERSION,
      kernel: `${kernel.packageName}=${kernel.packageVersion}:${kernel.version}`,
      modules: plan.order.map((m) => m.path),
      busybox: busyboxSha256,
      init: sha256(init),
      compression,
    }),
  );
  const dir = join(cacheDir, 'initramfs');
  const path = join(dir, `${key.slice(0, 16)}.cpio${compression === 'gzip' ? '.gz' : ''}`);
  const modules = plan.order.map((m) => m.path);
  if (await exists(path)) {
    progress.info(`cached ${path}`);
    return { path, key, modules, skipped, busyboxPath, busyboxSha256 };
  }
  await mkdir(dir, { recursive: true });

  const entries: CpioEntry[] = [
    { type: 'dir', path: 'bin' },
    { type: 'dir', path: 'dev' },
    { type: 'char', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
    { type: 'char', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
    { type: 'dir', path: 'etc' },
    { type: 'dir', path: 'lib' },
    { type: 'dir', path: 'lib/modules' },
    { type: 'dir', path: 'newroot' },
    { type: 'dir', path: 'proc' },
    { type: 'dir', path: 'sys' },
    { type: 'file', path: 'bin/busybox', data: busybox, mode: 0o755 },
    ...APPLETS.map((a): CpioEntry => ({ type: 'symlink', path: `bin/${a}`, target: 'busybox' })),
    { type: 'file', path: 'init', data: init, mode: 0o755 },
  ];
  const names: string[] = [];
  for (const m of plan.order) {
    throwIfAborted(signal);
    const name = basename(m.path);
    if (names.includes(name)) throw new HostFailureError(`two modules named ${name} in the load plan`);
    names.push(name);
    entries.push({ type: 'file', path: `lib/modules/${name}`, data: await readFile(join(kernel.modulesDir, m.path)) });
  }
  entries.push({ type: 'file', path: 'etc/hearth-modules', data: Buffer.from(names.map((n) => n + '\n').join('')) });
  progress.info(`${names.length} modules: ${names.map((n) => n.replace(/\.ko$/, '')).join(' ')}`);

  let archive = buildCpio(entries);
  if (compression === 'gzip') archive = gzipSync(archive, { level: 9 });
  await atomicWriteFile(path, archive);
  progress.info(`${path} (${(archive.length / 1024 / 1024).toFixed(1)} MiB)`);
  return { path, key, modules, skipped, busyboxPath, busyboxSha256 };
}
