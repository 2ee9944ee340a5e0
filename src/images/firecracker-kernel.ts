/**
 * A guest kernel for Firecracker, built from Debian's `linux-source` package:
 * an uncompressed ELF `vmlinux` (what Firecracker boots on x86_64) with every
 * driver the VM needs built in (no modules, no initramfs); what Firecracker
 * needs is in docs/firecracker.md, "What Firecracker needs from the kernel".
 *
 *   x86_64_defconfig  →  + FIRECRACKER_KERNEL_FRAGMENT (merge)  →  make olddefconfig
 *   →  check that every REQUIRED_Y option survived as =y  →  make vmlinux
 *
 * Debian's cloud kernel (kernel.ts, used by QEMU) keeps virtio and vsock as
 * modules loaded from an initramfs; Firecracker appends `root=/dev/vda` and
 * boots the root disk directly, so here they are built in. Cached under
 * `<cacheDir>/kernels/firecracker_<source>_<version>_<fragment hash>/`
 * (`vmlinux`, `config`, `kernel.json` written last). A build takes tens of
 * minutes on 2 cores; `hearth image kernel --firecracker` runs it on demand.
 */
import { copyFile, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { HostFailureError, throwIfAborted } from '../core/errors.js';
import { atomicWriteFile, exists, publishDir, readJson, reapStaleTemps, sha256, tempSibling } from './fsutil.js';
import { candidateVersion } from './kernel.js';
import { silentProgress, type Progress } from './progress.js';
import { haveCommand, run as defaultRun, type Runner } from './run.js';

/**
 * Options merged over x86_64_defconfig. Comments name the reason (docs/firecracker.md,
 * "What Firecracker needs from the kernel").
 */
export const FIRECRACKER_KERNEL_FRAGMENT: readonly string[] = [
  '# Everything built in: Firecracker boots the root disk without an initramfs',
  '# CONFIG_MODULES is not set',
  '# virtio over MMIO, devices described on the command line (Firecracker appends virtio_mmio.device=…) and by ACPI',
  'CONFIG_VIRTIO=y',
  'CONFIG_VIRTIO_MENU=y',
  'CONFIG_VIRTIO_MMIO=y',
  'CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y',
  'CONFIG_VIRTIO_BLK=y',
  'CONFIG_VIRTIO_NET=y',
  'CONFIG_VSOCKETS=y',
  'CONFIG_VIRTIO_VSOCKETS=y',
  'CONFIG_HW_RANDOM=y',
  'CONFIG_HW_RANDOM_VIRTIO=y',
  'CONFIG_MEMORY_BALLOON=y',
  'CONFIG_VIRTIO_BALLOON=y',
  'CONFIG_PAGE_REPORTING=y',
  '# PCI transport for --enable-pci (harmless with pci=off)',
  'CONFIG_PCI=y',
  'CONFIG_PCI_MSI=y',
  'CONFIG_VIRTIO_PCI=y',
  '# x86 paravirt: kvm-clock, PVH entry (no decompressor)',
  'CONFIG_HYPERVISOR_GUEST=y',
  'CONFIG_PARAVIRT=y',
  'CONFIG_KVM_GUEST=y',
  'CONFIG_PVH=y',
  '# ACPI needs PCI for its init even without PCI devices',
  'CONFIG_ACPI=y',
  '# Serial console',
  'CONFIG_SERIAL_8250=y',
  'CONFIG_SERIAL_8250_CONSOLE=y',
  'CONFIG_PRINTK=y',
  '# SendCtrlAltDel (clean shutdown on x86)',
  'CONFIG_SERIO=y',
  'CONFIG_SERIO_I8042=y',
  'CONFIG_KEYBOARD_ATKBD=y',
  'CONFIG_INPUT_KEYBOARD=y',
  '# Time and entropy after a restore',
  'CONFIG_PTP_1588_CLOCK=y',
  'CONFIG_PTP_1588_CLOCK_KVM=y',
  'CONFIG_VIRT_DRIVERS=y',
  'CONFIG_VMGENID=y',
  'CONFIG_RANDOM_TRUST_CPU=y',
  '# Root filesystem and what hearth-init mounts',
  'CONFIG_BLK_DEV_INITRD=y',
  'CONFIG_MSDOS_PARTITION=y',
  'CONFIG_EXT4_FS=y',
  'CONFIG_DEVTMPFS=y',
  'CONFIG_DEVTMPFS_MOUNT=y',
  'CONFIG_TMPFS=y',
  'CONFIG_TMPFS_POSIX_ACL=y',
  'CONFIG_UNIX98_PTYS=y',
  'CONFIG_OVERLAY_FS=y',
  'CONFIG_SQUASHFS=y',
  'CONFIG_FUSE_FS=y',
  'CONFIG_INOTIFY_USER=y',
  '# cgroup v2 with the controllers the agent uses for user processes',
  'CONFIG_CGROUPS=y',
  'CONFIG_MEMCG=y',
  'CONFIG_CGROUP_PIDS=y',
  'CONFIG_CGROUP_SCHED=y',
  'CONFIG_FAIR_GROUP_SCHED=y',
  'CONFIG_CFS_BANDWIDTH=y',
  'CONFIG_CPUSETS=y',
  'CONFIG_CGROUP_FREEZER=y',
  '# Networking from the command line (ip=) and what the agent needs',
  'CONFIG_NET=y',
  'CONFIG_INET=y',
  'CONFIG_UNIX=y',
  'CONFIG_PACKET=y',
  'CONFIG_IP_PNP=y',
  '# Smaller, faster build',
  'CONFIG_DEBUG_INFO_NONE=y',
  '# CONFIG_DEBUG_INFO is not set',
  '# CONFIG_DEBUG_INFO_BTF is not set',
  '# CONFIG_SOUND is not set',
  '# CONFIG_DRM is not set',
  '# CONFIG_USB_SUPPORT is not set',
  '# CONFIG_WIRELESS is not set',
  '# CONFIG_WLAN is not set',
];

/** Options that must be `=y` after `make olddefconfig` (a dependency can silently drop one). */
export const REQUIRED_Y: readonly string[] = [
  'VIRTIO_MMIO', 'VIRTIO_MMIO_CMDLINE_DEVICES', 'VIRTIO_BLK', 'VIRTIO_NET', 'VSOCKETS', 'VIRTIO_VSOCKETS',
  'HW_RANDOM_VIRTIO', 'VIRTIO_BALLOON', 'KVM_GUEST', 'PARAVIRT', 'PVH', 'ACPI', 'PCI',
  'SERIAL_8250_CONSOLE', 'SERIO_I8042', 'KEYBOARD_ATKBD', 'EXT4_FS', 'DEVTMPFS', 'CGROUPS', 'MEMCG',
  'UNIX', 'INET', 'BLK_DEV_INITRD', 'VMGENID', 'PTP_1588_CLOCK_KVM',
];

/** Must not be set: everything is built in. */
export const REQUIRED_OFF: readonly string[] = ['MODULES'];

type ConfigValue = string | null; // null: "is not set"

/** A .config (or fragment) as name → value, in file order; comments other than "is not set" are dropped. */
export function parseKernelConfig(text: string): Map<string, ConfigValue> {
  const out = new Map<string, ConfigValue>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    let m = /^CONFIG_([A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (m) { out.set(m[1]!, m[2]!); continue; }
    m = /^# CONFIG_([A-Za-z0-9_]+) is not set$/.exec(line);
    if (m) out.set(m[1]!, null);
  }
  return out;
}

function render(name: string, v: ConfigValue): string {
  return v === null ? `# CONFIG_${name} is not set` : `CONFIG_${name}=${v}`;
}

/**
 * Applies a fragment to a .config like scripts/kconfig/merge_config.sh: each
 * fragment option replaces the base's line in place, new ones are appended.
 * `make olddefconfig` then resolves dependencies.
 */
export function mergeKernelConfig(base: string, fragment: string | readonly string[]): string {
  const frag = parseKernelConfig(Array.isArray(fragment) ? fragment.join('\n') : (fragment as string));
  const seen = new Set<string>();
  const lines = base.split('\n').map((raw) => {
    const line = raw.trim();
    const m = /^CONFIG_([A-Za-z0-9_]+)=/.exec(line) ?? /^# CONFIG_([A-Za-z0-9_]+) is not set$/.exec(line);
    if (!m || !frag.has(m[1]!)) return raw;
    seen.add(m[1]!);
    return render(m[1]!, frag.get(m[1]!)!);
  });
  while (lines.length && lines[lines.length - 1] === '') lines.pop();
  const added = [...frag].filter(([k]) => !seen.has(k)).map(([k, v]) => render(k, v));
  return [...lines, ...(added.length ? ['', '# Hearth: Firecracker guest', ...added] : []), ''].join('\n');
}

/** What the final .config lacks: options not `=y` that must be, and options set that must not be. */
export function checkKernelConfig(text: string, requiredY: readonly string[] = REQUIRED_Y, requiredOff: readonly string[] = REQUIRED_OFF): { missing: string[]; unwanted: string[] } {
  const cfg = parseKernelConfig(text);
  return {
    missing: requiredY.filter((k) => cfg.get(k) !== 'y'),
    unwanted: requiredOff.filter((k) => { const v = cfg.get(k); return v !== undefined && v !== null && v !== 'n'; }),
  };
}

export interface EnsureFirecrackerKernelOptions {
  cacheDir: string;
  signal?: AbortSignal;
  progress?: Progress;
  /** Default 'linux-source' (resolved to linux-source-<x.y> through apt-cache depends). */
  sourcePackage?: string;
  /** More fragment lines (e.g. CONFIG_PVM_GUEST=y for a virt-pvm source tree). */
  extraFragment?: readonly string[];
  /** make -j (default: the number of CPUs). */
  jobs?: number;
  run?: Runner;
  /** Keep the source tree after the build (default false: it is several GB). */
  keepBuildTree?: boolean;
  /** Check that the build tools are installed first (default true; tests with a fake runner turn it off). */
  checkTools?: boolean;
}

export interface FirecrackerKernelInfo {
  vmlinuxPath: string;
  configPath: string;
  /** e.g. linux-source-6.1 */
  sourcePackage: string;
  packageVersion: string;
  /** Kernel release (`make kernelrelease`). */
  release: string;
  fragmentHash: string;
  dir: string;
}

interface Manifest {
  format: 1;
  sourcePackage: string;
  packageVersion: string;
  release: string;
  fragmentHash: string;
  createdAt: string;
}

const MANIFEST = 'kernel.json';
export const BUILD_TOOLS = ['make', 'gcc', 'bc', 'bison', 'flex', 'perl', 'tar', 'xz'] as const;
export const BUILD_PACKAGES = 'build-essential bc bison flex libelf-dev libssl-dev xz-utils';

async function resolveSourcePackage(meta: string, run: Runner, signal?: AbortSignal): Promise<string> {
  if (/^linux-source-\d/.test(meta)) return meta;
  const { stdout } = await run('apt-cache', ['depends', meta], { signal });
  const m = /^\s*\|?Depends:\s*(linux-source-\d\S*)/m.exec(stdout);
  if (!m) throw new HostFailureError(`apt-cache depends ${meta} names no linux-source-<version> package (run apt-get update?)`);
  return m[1]!;
}

async function loadCached(dir: string): Promise<FirecrackerKernelInfo | undefined> {
  const m = await readJson<Manifest>(join(dir, MANIFEST));
  if (!m || m.format !== 1 || !(await exists(join(dir, 'vmlinux')))) return undefined;
  return {
    vmlinuxPath: join(dir, 'vmlinux'), configPath: join(dir, 'config'), sourcePackage: m.sourcePackage,
    packageVersion: m.packageVersion, release: m.release, fragmentHash: m.fragmentHash, dir,
  };
}

/** Builds (or finds in the cache) the Firecracker guest kernel. */
/**
 * A Firecracker kernel `ensureFirecrackerKernel` built earlier with the current
 * config fragment (any source version), without building or asking apt: what
 * hearthd uses at start. Newest first; undefined when there is none.
 */
export async function findFirecrackerKernel(cacheDir: string, extraFragment: readonly string[] = []): Promise<FirecrackerKernelInfo | undefined> {
  const fragmentHash = sha256([...FIRECRACKER_KERNEL_FRAGMENT, ...extraFragment].join('\n')).slice(0, 12);
  const kernelsDir = join(cacheDir, 'kernels');
  const names = (await readdir(kernelsDir).catch(() => [] as string[])).filter((n) => n.startsWith('firecracker_') && n.endsWith(`_${fragmentHash}`));
  const found: FirecrackerKernelInfo[] = [];
  for (const n of names) {
    const k = await loadCached(join(kernelsDir, n));
    if (k) found.push(k);
  }
  return found.sort((a, b) => b.packageVersion.localeCompare(a.packageVersion))[0];
}

export async function ensureFirecrackerKernel(opts: EnsureFirecrackerKernelOptions): Promise<FirecrackerKernelInfo> {
  const { cacheDir, signal } = opts;
  const progress = opts.progress ?? silentProgress;
  const run = opts.run ?? defaultRun;
  const fragment = [...FIRECRACKER_KERNEL_FRAGMENT, ...(opts.extraFragment ?? [])];
  const fragmentHash = sha256(fragment.join('\n')).slice(0, 12);
  const kernelsDir = join(cacheDir, 'kernels');
  await mkdir(kernelsDir, { recursive: true });

  progress.stage('firecracker kernel: resolve source');
  const pkg = await resolveSourcePackage(opts.sourcePackage ?? 'linux-source', run, signal);
  const version = await candidateVersion(pkg, run, signal);
  progress.info(`${pkg} ${version}, config fragment ${fragmentHash}`);
  const finalDir = join(kernelsDir, `firecracker_${pkg}_${version}_${fragmentHash}`.replace(/[^\w.+~-]/g, '_'));
  const cached = await loadCached(finalDir);
  if (cached) { progress.info(`cached in ${finalDir}`); return cached; }

  const missingTools: string[] = [];
  if (opts.checkTools ?? true) for (const t of BUILD_TOOLS) if (!(await haveCommand(t))) missingTools.push(t);
  if (missingTools.length) {
    throw new HostFailureError(`building the Firecracker kernel needs ${missingTools.join(', ')}: apt-get install ${BUILD_PACKAGES}`);
  }

  await reapStaleTemps(kernelsDir, run);
  const tmp = tempSibling(finalDir, 'build');
  const src = join(tmp, 'src');
  const out = join(tmp, 'out');
  await mkdir(src, { recursive: true });
  await mkdir(out, { recursive: true });
  try {
    progress.stage(`firecracker kernel: download ${pkg}`);
    const dl = join(tmp, 'deb');
    await mkdir(dl, { recursive: true });
    await run('apt-get', ['-q', '-o', 'APT::Sandbox::User=root', 'download', `${pkg}=${version}`], { cwd: dl, signal });
    const debs = (await readdir(dl)).filter((f) => f.endsWith('.deb'));
    if (debs.length !== 1) throw new HostFailureError(`apt-get download ${pkg} produced ${debs.length} .deb files`);
    await run('dpkg-deb', ['-x', join(dl, debs[0]!), join(tmp, 'pkg')], { signal });
    const usrSrc = join(tmp, 'pkg', 'usr', 'src');
    const tarball = (await readdir(usrSrc)).find((f) => /^linux-source-.*\.tar\.(xz|bz2|gz)$/.test(f));
    if (!tarball) throw new HostFailureError(`${pkg} contains no usr/src/linux-source-*.tar.*`);
    progress.stage('firecracker kernel: unpack sources');
    await run('tar', ['-xf', join(usrSrc, tarball), '-C', src, '--strip-components=1'], { signal });
    await rm(join(tmp, 'pkg'), { recursive: true, force: true });
    await rm(dl, { recursive: true, force: true });

    progress.stage('firecracker kernel: configure');
    await run('make', ['-C', src, 'x86_64_defconfig'], { signal });
    const configPath = join(src, '.config');
    await writeFile(configPath, mergeKernelConfig(await readFile(configPath, 'utf8'), fragment));
    await run('make', ['-C', src, 'olddefconfig'], { signal });
    const final = await readFile(configPath, 'utf8');
    const { missing, unwanted } = checkKernelConfig(final);
    if (missing.length || unwanted.length) {
      throw new HostFailureError(`kernel config: after olddefconfig ${missing.length ? `not =y: ${missing.map((k) => `CONFIG_${k}`).join(', ')}` : ''}${unwanted.length ? ` still set: ${unwanted.map((k) => `CONFIG_${k}`).join(', ')}` : ''} (a dependency is missing from the fragment)`);
    }
    throwIfAborted(signal);

    const jobs = opts.jobs ?? Math.max(1, cpus().length);
    progress.stage(`firecracker kernel: make -j${jobs} vmlinux (this takes a while)`);
    await run('make', ['-C', src, `-j${jobs}`, 'vmlinux'], {
      signal,
      maxStdout: 1 << 20,
      onLine: (l) => { if (/^\s*(LD|AR)\s/.test(l)) progress.info(l.trim()); },
    });
    const { stdout: rel } = await run('make', ['-s', '-C', src, 'kernelrelease'], { signal });
    const release = rel.trim().split('\n').pop() ?? '';
    await copyFile(join(src, 'vmlinux'), join(out, 'vmlinux'));
    await copyFile(configPath, join(out, 'config'));
    const manifest: Manifest = { format: 1, sourcePackage: pkg, packageVersion: version, release, fragmentHash, createdAt: new Date().toISOString() };
    await atomicWriteFile(join(out, MANIFEST), JSON.stringify(manifest, null, 2) + '\n');
    if (opts.keepBuildTree) progress.info(`source tree kept in ${src}`);
    else await rm(src, { recursive: true, force: true });
    await publishDir(out, finalDir, async (d) => (await loadCached(d)) !== undefined);
  } finally {
    if (!opts.keepBuildTree) await rm(tmp, { recursive: true, force: true });
  }
  const info = await loadCached(finalDir);
  if (!info) throw new HostFailureError(`the Firecracker kernel build finished but ${finalDir} is incomplete`);
  return info;
}
