/**
 * Host capability probes for the QEMU driver and `hearth doctor`.
 *
 * `probeAccelerator()` decides between KVM and TCG by *running guest code*:
 * the existence of /dev/kvm proves nothing (on a PVM host /dev/kvm opens and
 * KVM_CREATE_VM succeeds, yet QEMU aborts on `-cpu host` and ordinary guests
 * crawl). The probe boots a 64 KiB firmware stub (source: qemu/probe-stub.S)
 * that switches to long mode, writes 256 MiB of RAM and exits through
 * isa-debug-exit; KVM is chosen only if that finishes, with the CPU model the
 * driver uses (`-cpu host`), within a deadline.
 */
import { spawn } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { access, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AbortedError, HostFailureError, errorMessage, throwIfAborted } from '../core/errors.js';
import { QmpClient } from './qemu/qmp.js';

export type Accel = 'kvm' | 'tcg';

export interface AcceleratorProbe {
  accel: Accel;
  /** Human-readable: why this accelerator was chosen (printed by `hearth doctor`). */
  reason: string;
}

export interface ProbeOptions {
  qemuBinary?: string;
  signal?: AbortSignal;
  /** Deadline for one probe guest run (default 4000 ms). */
  timeoutMs?: number;
  /** Ignore the cached result and probe again. */
  refresh?: boolean;
  /** Device node to check first (default /dev/kvm); tests point it elsewhere. */
  kvmDevice?: string;
}

export const DEFAULT_QEMU_BINARY = 'qemu-system-x86_64';

/** Exit status of QEMU when the stub writes 0x21 to isa-debug-exit: (0x21 << 1) | 1. */
export const PROBE_SUCCESS_STATUS = 67;

// Assembled from qemu/probe-stub.S: code at offset 0, reset vector at 0xFFF0.
const STUB_CODE =
  'faea060000f031c08ed88ec066b80320000066a3001066c70604100000000066b80330000066a3002066c706042000000000' +
  '66b88300000066a3003066c706043000000000b800f08ed8660f0116f80031c08ed80f20e06683c8200f22e066b800100000' +
  '0f22d866b9800000c00f32660d000100000f300f20c0660d010000800f22c066ea8b000f00080066b810008ed8b901000000' +
  '4889c848c1e015480d83000000488904cd00300000ffc181f90002000075e10f20d80f22d8ba0400000048c7c70000200048' +
  'c7c1000080004889d0f348abffca75e8b021e6f4f4ebfd900000000000000000ffff0000009aaf00ffff00000092cf001700' +
  'e0000f00';
const STUB_RESET = 'ea000000f0';

/** The 64 KiB probe firmware image. */
export function probeStubImage(): Buffer {
  const img = Buffer.alloc(0x10000, 0xf4); // hlt everywhere else
  Buffer.from(STUB_CODE, 'hex').copy(img, 0);
  Buffer.from(STUB_RESET, 'hex').copy(img, 0xfff0);
  return img;
}

export interface QemuRunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  durationMs: number;
  stderr: string;
}

/** Runs a short-lived QEMU (not detached), killing it (by pid) at the deadline or on abort. */
export async function runQemuOnce(binary: string, args: string[], timeoutMs: number, signal?: AbortSignal): Promise<QemuRunResult> {
  throwIfAborted(signal);
  const started = performance.now();
  const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => { if (stderr.length < 64 * 1024) stderr += d; });
  let timedOut = false;
  let abortedRun = false;
  const kill = () => { if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); };
  const timer = setTimeout(() => { timedOut = true; kill(); }, timeoutMs);
  const onAbort = () => { abortedRun = true; kill(); };
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const [code, sig] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (c, s) => resolve([c, s]));
    });
    if (abortedRun) throw new AbortedError('QEMU probe cancelled');
    return { code, signal: sig, timedOut, durationMs: Math.round(performance.now() - started), stderr };
  } catch (err) {
    if (err instanceof AbortedError) throw err;
    throw new HostFailureError(`cannot run ${binary}: ${errorMessage(err)}`, { cause: err });
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
}

function stubArgs(accel: Accel, stubPath: string): string[] {
  return [
    '-accel', accel,
    '-cpu', accel === 'kvm' ? 'host' : 'max',
    '-machine', 'microvm',
    '-m', '128',
    '-nodefaults', '-no-user-config', '-display', 'none',
    '-bios', stubPath,
    '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04',
  ];
}

function describeRun(r: QemuRunResult, timeoutMs: number): string {
  if (r.timedOut) return `the probe guest did not finish within ${timeoutMs} ms`;
  const lastLine = r.stderr.split('\n').map((l) => l.trim()).filter((l) => l && !/warning: host doesn't support/.test(l)).slice(-2).join(' / ');
  const how = r.signal ? `was killed by ${r.signal}` : `exited with status ${r.code}`;
  return `QEMU ${how}${lastLine ? `: ${lastLine}` : ''}`;
}

const accelCache = new Map<string, Promise<AcceleratorProbe>>();

/** Decides KVM vs TCG by running guest code (cached per binary and device). */
export function probeAccelerator(opts: ProbeOptions = {}): Promise<AcceleratorProbe> {
  const binary = opts.qemuBinary ?? DEFAULT_QEMU_BINARY;
  const key = `${binary}\0${opts.kvmDevice ?? '/dev/kvm'}`;
  const cached = accelCache.get(key);
  if (cached && !opts.refresh) return cached;
  const p = doProbeAccelerator(binary, opts);
  accelCache.set(key, p);
  p.catch(() => { if (accelCache.get(key) === p) accelCache.delete(key); });
  return p;
}

async function doProbeAccelerator(binary: string, opts: ProbeOptions): Promise<AcceleratorProbe> {
  const timeoutMs = opts.timeoutMs ?? 4000;
  const kvmDevice = opts.kvmDevice ?? '/dev/kvm';
  const dir = await mkdtemp(path.join(tmpdir(), 'hearth-probe-'));
  try {
    const stub = path.join(dir, 'probe-stub.bin');
    await writeFile(stub, probeStubImage());
    let kvmReason: string;
    try {
      await access(kvmDevice, fsConstants.R_OK | fsConstants.W_OK);
      const r = await runQemuOnce(binary, stubArgs('kvm', stub), timeoutMs, opts.signal);
      if (r.code === PROBE_SUCCESS_STATUS && !r.timedOut) {
        return { accel: 'kvm', reason: `KVM ran the long-mode probe guest (-cpu host) in ${r.durationMs} ms` };
      }
      kvmReason = `${kvmDevice} exists but KVM cannot run ordinary guests: ${describeRun(r, timeoutMs)}`;
    } catch (err) {
      if (err instanceof AbortedError || err instanceof HostFailureError) throw err;
      kvmReason = `${kvmDevice} is not usable (${errorMessage(err)})`;
    }
    // Make sure TCG itself works before promising it.
    const t = await runQemuOnce(binary, stubArgs('tcg', stub), Math.max(timeoutMs, 10_000), opts.signal);
    if (t.code !== PROBE_SUCCESS_STATUS || t.timedOut) {
      throw new HostFailureError(`QEMU cannot run the probe guest under TCG either: ${describeRun(t, timeoutMs)}; ${kvmReason}`);
    }
    return { accel: 'tcg', reason: `${kvmReason}; TCG ran the probe guest in ${t.durationMs} ms` };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface QemuInfo {
  binary: string;
  /** e.g. "7.2.22" */
  version: string;
  major: number;
  minor: number;
  micro: number;
  package: string;
  /** The `x-ignore-shared` migration capability (device-state-only snapshots). */
  ignoreShared: boolean;
  /** `-sandbox` (seccomp) is compiled in. */
  seccompSandbox: boolean;
  /** The `microvm` machine type exists. */
  microvm: boolean;
}

const infoCache = new Map<string, Promise<QemuInfo>>();

/** Version and capabilities of the QEMU binary (for `hearth doctor`); cached. */
export function probeQemu(opts: { qemuBinary?: string; signal?: AbortSignal; refresh?: boolean } = {}): Promise<QemuInfo> {
  const binary = opts.qemuBinary ?? DEFAULT_QEMU_BINARY;
  const cached = infoCache.get(binary);
  if (cached && !opts.refresh) return cached;
  const p = doProbeQemu(binary, opts.signal);
  infoCache.set(binary, p);
  p.catch(() => { if (infoCache.get(binary) === p) infoCache.delete(binary); });
  return p;
}

async function doProbeQemu(binary: string, signal?: AbortSignal): Promise<QemuInfo> {
  throwIfAborted(signal);
  const dir = await mkdtemp(path.join(tmpdir(), 'hearth-qinfo-'));
  const sock = path.join(dir, 'qmp.sock');
  const child = spawn(binary, [
    '-machine', 'none', '-S', '-nodefaults', '-no-user-config', '-display', 'none',
    '-qmp', `unix:${sock},server=on,wait=off`,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => { stderr += d; });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  let spawnError: Error | undefined;
  child.once('error', (e) => { spawnError = e; });
  let qmp: QmpClient | undefined;
  try {
    const deadline = Date.now() + 10_000;
    for (;;) {
      throwIfAborted(signal);
      if (spawnError) throw new HostFailureError(`cannot run ${binary}: ${spawnError.message}`, { cause: spawnError });
      if (child.exitCode !== null) throw new HostFailureError(`${binary} exited with status ${child.exitCode}: ${stderr.trim()}`);
      try {
        qmp = await QmpClient.connect(sock, { signal, timeoutMs: 5000 });
        break;
      } catch (err) {
        if (err instanceof AbortedError) throw err;
        if (Date.now() > deadline) throw new HostFailureError(`${binary}: QMP did not come up: ${errorMessage(err)}`, { cause: err });
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    const v = await qmp.execute<{ qemu: { major: number; minor: number; micro: number }; package: string }>('query-version', undefined, { signal });
    const caps = await qmp.execute<{ capability: string }[]>('query-migrate-capabilities', undefined, { signal });
    const opts = await qmp.execute<{ option: string }[]>('query-command-line-options', undefined, { signal });
    const machines = await qmp.execute<{ name: string }[]>('query-machines', undefined, { signal });
    return {
      binary,
      version: `${v.qemu.major}.${v.qemu.minor}.${v.qemu.micro}`,
      major: v.qemu.major,
      minor: v.qemu.minor,
      micro: v.qemu.micro,
      package: (v.package ?? '').trim(),
      ignoreShared: caps.some((c) => c.capability === 'x-ignore-shared'),
      seccompSandbox: opts.some((o) => o.option === 'sandbox'),
      microvm: machines.some((m) => m.name === 'microvm'),
    };
  } finally {
    qmp?.close();
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) child.kill('SIGKILL');
    if (!spawnError) await exited;
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The host's TSC frequency in kHz, for `tsc_early_khz=` under TCG (where the
 * guest TSC runs at the host's rate and a microvm guest has no PIT/HPET to
 * calibrate against). Order: the "@ x.xxGHz" of an Intel model name (its
 * nominal frequency is the TSC rate), else "cpu MHz" (exact inside a VM, where
 * it is the TSC rate; approximate on bare metal with frequency scaling).
 * Returns undefined when neither is found.
 */
export async function hostTscKhz(cpuinfoPath = '/proc/cpuinfo'): Promise<number | undefined> {
  let text: string;
  try { text = await readFile(cpuinfoPath, 'utf8'); } catch { return undefined; }
  return parseTscKhz(text);
}

export function parseTscKhz(cpuinfo: string): number | undefined {
  const first = cpuinfo.split(/\n\s*\n/)[0] ?? '';
  const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm').exec(first)?.[1]?.trim();
  const flags = (field('flags') ?? '').split(/\s+/);
  const model = field('model name') ?? '';
  const mhz = Number(field('cpu MHz'));
  const ghz = /@\s*([\d.]+)\s*GHz/i.exec(model);
  if (!flags.includes('hypervisor') && ghz && /intel/i.test(field('vendor_id') ?? model)) {
    return Math.round(Number(ghz[1]) * 1_000_000);
  }
  if (Number.isFinite(mhz) && mhz > 0) return Math.round(mhz * 1000);
  if (ghz) return Math.round(Number(ghz[1]) * 1_000_000);
  return undefined;
}
