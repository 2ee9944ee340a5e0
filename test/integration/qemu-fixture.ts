/**
 * Fixture for the QEMU driver's integration tests: Debian's cloud kernel (via
 * ensureKernel, or apt-get download as a fallback) and a tiny busybox
 * initramfs whose /init loads the virtio modules, prints a marker to the serial
 * console, serves a page on port 80 (busybox httpd) and prints an incrementing
 * counter every 200 ms.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rename, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { VmConfig } from '../../src/vmm/types.js';
import type { QemuVmm } from '../../src/vmm/qemu/vmm.js';

const execFileP = promisify(execFile);
export const CACHE_DIR = '/var/cache/hearth-test';
const FALLBACK_KERNEL_PKG = 'linux-image-6.1.0-56-cloud-amd64';
export const MARKER = 'HEARTH-TEST-BOOTED';
export const GUEST_PAGE = 'hearth-guest-ok';

/** Modules in load order (virtio_ring before virtio, which Debian's cloud kernel needs: docs/images.md). */
const MODULES = [
  'kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/virtio/virtio.ko',
  'kernel/drivers/virtio/virtio_mmio.ko',
  'kernel/drivers/virtio/virtio_pci_legacy_dev.ko',
  'kernel/drivers/virtio/virtio_pci_modern_dev.ko',
  'kernel/drivers/virtio/virtio_pci.ko',
  'kernel/drivers/block/virtio_blk.ko',
  'kernel/net/core/failover.ko',
  'kernel/drivers/net/net_failover.ko',
  'kernel/drivers/net/virtio_net.ko',
  'kernel/drivers/char/hw_random/virtio-rng.ko',
];

const INIT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /www
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin
for m in ${MODULES.map((m) => path.basename(m)).join(' ')}; do insmod /lib/modules/$m 2>/dev/null; done
echo "${MARKER}" > /dev/ttyS0
if [ -b /dev/vda ]; then echo "HEARTH-TEST-DISK sectors=$(cat /sys/block/vda/size)" > /dev/ttyS0; fi
if ip link set eth0 up 2>/dev/null; then
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
  echo "${GUEST_PAGE}" > /www/index.html
  httpd -p 80 -h /www
  echo "HEARTH-TEST-NET up" > /dev/ttyS0
fi
if grep -q hearth.test=dd /proc/cmdline && [ -b /dev/vda ]; then
  t0=$(cut -d' ' -f1 /proc/uptime)
  dd if=/dev/urandom of=/dev/vda bs=1M count=32 conv=fsync 2>/dev/null
  t1=$(cut -d' ' -f1 /proc/uptime)
  echo 3 > /proc/sys/vm/drop_caches
  dd if=/dev/vda of=/dev/null bs=1M count=32 2>/dev/null
  t2=$(cut -d' ' -f1 /proc/uptime)
  echo "HEARTH-TEST-DD write=$t0..$t1 read=$t1..$t2" > /dev/ttyS0
fi
i=0
while true; do
  echo "counter $i" > /dev/ttyS0
  i=$((i+1))
  usleep 200000
done
`;

/** newc cpio writer (enough for an initramfs: dirs, regular files). */
function cpio(entries: { name: string; mode: number; data?: Buffer }[]): Buffer {
  const out: Buffer[] = [];
  let ino = 1;
  const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const hex = (n: number) => n.toString(16).padStart(8, '0');
  const add = (name: string, mode: number, data: Buffer) => {
    const nameBuf = Buffer.from(name + '\0');
    const header = '070701' + [ino++, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, nameBuf.length, 0].map(hex).join('');
    out.push(Buffer.from(header), nameBuf, pad4(110 + nameBuf.length), data, pad4(data.length));
  };
  for (const e of entries) add(e.name, e.mode, e.data ?? Buffer.alloc(0));
  add('TRAILER!!!', 0, Buffer.alloc(0));
  return Buffer.concat(out);
}

async function kernel(): Promise<{ vmlinuzPath: string; modulesDir: string }> {
  try {
    const { ensureKernel } = await import('../../src/images/kernel.js');
    const k = await ensureKernel({ cacheDir: CACHE_DIR });
    return { vmlinuzPath: k.vmlinuzPath, modulesDir: k.modulesDir };
  } catch (err) {
    // Fallback: fetch the kernel ourselves (the images module may be in flux).
    const dir = path.join(CACHE_DIR, 'qemu-kernel');
    const release = FALLBACK_KERNEL_PKG.replace(/^linux-image-/, '');
    const vmlinuzPath = path.join(dir, 'boot', `vmlinuz-${release}`);
    if (!existsSync(vmlinuzPath)) {
      console.error(`ensureKernel failed (${(err as Error).message}); fetching ${FALLBACK_KERNEL_PKG}`);
      const dl = await mkdtemp(path.join(CACHE_DIR, '.dl-'));
      try {
        await execFileP('apt-get', ['-q', '-o', 'APT::Sandbox::User=root', 'download', FALLBACK_KERNEL_PKG], { cwd: dl });
        const deb = (await readdir(dl)).find((f) => f.endsWith('.deb'))!;
        await rm(dir, { recursive: true, force: true });
        await execFileP('dpkg-deb', ['-x', path.join(dl, deb), dir]);
      } finally {
        await rm(dl, { recursive: true, force: true });
      }
    }
    return { vmlinuzPath, modulesDir: path.join(dir, 'lib', 'modules', release) };
  }
}

let assets: Promise<{ kernelPath: string; initrdPath: string }> | undefined;

/** Kernel and initramfs paths (built once, cached under /var/cache/hearth-test). */
export function testAssets(): Promise<{ kernelPath: string; initrdPath: string }> {
  assets ??= (async () => {
    await mkdir(CACHE_DIR, { recursive: true });
    const k = await kernel();
    const initrdPath = path.join(CACHE_DIR, 'qemu-test-initrd.cpio');
    const entries: { name: string; mode: number; data?: Buffer }[] = [
      { name: 'bin', mode: 0o40755 }, { name: 'dev', mode: 0o40755 }, { name: 'proc', mode: 0o40755 },
      { name: 'sys', mode: 0o40755 }, { name: 'lib', mode: 0o40755 }, { name: 'lib/modules', mode: 0o40755 },
      { name: 'bin/busybox', mode: 0o100755, data: await readFile('/bin/busybox') },
      { name: 'init', mode: 0o100755, data: Buffer.from(INIT) },
    ];
    for (const m of MODULES) {
      entries.push({ name: `lib/modules/${path.basename(m)}`, mode: 0o100644, data: await readFile(path.join(k.modulesDir, m)) });
    }
    const tmp = `${initrdPath}.${process.pid}.tmp`;
    await writeFile(tmp, cpio(entries));
    await rename(tmp, initrdPath);
    return { kernelPath: k.vmlinuzPath, initrdPath };
  })();
  return assets;
}

/** A scratch directory for VMs plus a VmConfig factory; `cleanup()` stops VMs and removes files. */
export class VmLab {
  readonly vms: QemuVmm[] = [];
  private constructor(readonly dir: string, readonly kernelPath: string, readonly initrdPath: string) {}

  static async create(): Promise<VmLab> {
    const a = await testAssets();
    // Short path: the QMP socket path must fit in sun_path (108 bytes).
    const dir = await mkdtemp(path.join(tmpdir(), 'hq-'));
    return new VmLab(dir, a.kernelPath, a.initrdPath);
  }

  async config(id: string, over: Partial<VmConfig> = {}): Promise<VmConfig> {
    const rootfsPath = path.join(this.dir, `${id}.disk`);
    if (!existsSync(rootfsPath)) {
      await writeFile(rootfsPath, '');
      await truncate(rootfsPath, 64 * 1024 * 1024);
    }
    return {
      sandboxId: id,
      vcpus: 1,
      memoryMib: 256,
      kernelPath: this.kernelPath,
      initrdPath: this.initrdPath,
      kernelArgs: 'panic=-1 quiet',
      rootfsPath,
      memoryFilePath: path.join(this.dir, `${id}.mem`),
      runDir: path.join(this.dir, id),
      consoleLogPath: path.join(this.dir, `${id}.console`),
      network: { kind: 'user', forwards: [], guestCidr: '10.0.2.15/24', gateway: '10.0.2.2' },
      ...over,
    };
  }

  track<T extends QemuVmm>(vmm: T): T {
    if (this.vms.length === 0) process.once('exit', () => this.killAllSync());
    this.vms.push(vmm);
    return vmm;
  }

  /** Last resort if the test process ends without cleanup(): VMs are detached and would outlive it. */
  private killAllSync(): void {
    for (const vm of this.vms) {
      if (vm.pid > 0 && !vm.hasExited) {
        try { process.kill(vm.pid, 'SIGKILL'); } catch { /* gone */ }
      }
    }
  }

  /** Stops every VM (fresh signal), SIGKILLs any survivor by its pid, removes the directory. */
  async cleanup(): Promise<void> {
    for (const vm of this.vms) {
      try {
        await vm.stop(new AbortController().signal);
      } catch (err) {
        console.error(`cleanup: stop of pid ${vm.pid} failed: ${(err as Error).message}`);
      }
      if (vm.pid > 0 && !vm.hasExited && (await pidAlive(vm.pid))) {
        try { process.kill(vm.pid, 'SIGKILL'); } catch { /* gone */ }
      }
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}

export async function pidAlive(pid: number): Promise<boolean> {
  try {
    const st = await readFile(`/proc/${pid}/stat`, 'utf8');
    const state = st.slice(st.lastIndexOf(')') + 2).split(' ')[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export async function waitForConsole(file: string, re: RegExp, timeoutMs = 30_000): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await readFile(file, 'utf8').catch(() => '');
    const m = text.match(re);
    if (m) return m;
    if (Date.now() > deadline) throw new Error(`console ${file} did not show ${re} within ${timeoutMs} ms; tail: ${text.slice(-500)}`);
    await sleep(10);
  }
}

/** The last counter printed on the console (-1 if none). */
export async function lastCounter(file: string): Promise<number> {
  const text = await readFile(file, 'utf8').catch(() => '');
  const all = [...text.matchAll(/counter (\d+)/g)];
  return all.length ? Number(all[all.length - 1]![1]) : -1;
}

/** Every counter value printed, in order. */
export async function counters(file: string): Promise<number[]> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return [...text.matchAll(/counter (\d+)/g)].map((m) => Number(m[1]));
}

/**
 * Awaits `p` while keeping the event loop alive: QEMU children are unref'd (VMs
 * outlive the daemon) and adopted VMs are watched with an unref'd timer, so a
 * test that awaits only `exited` could otherwise end the loop and be cancelled.
 */
export async function held<T>(p: Promise<T>): Promise<T> {
  const timer = setInterval(() => {}, 1000);
  try { return await p; } finally { clearInterval(timer); }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function fileSize(p: string): Promise<number> {
  return (await stat(p)).size;
}

export { copyFile };

/** Results collected by the tests and printed at the end (the numbers in docs/vmm-qemu.md). */
export const measurements: Record<string, number | string> = {};
