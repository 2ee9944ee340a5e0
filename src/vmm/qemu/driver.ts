/**
 * The QEMU VmmDriver: creates QemuVmm instances with host-derived settings
 * (accelerator from a real probe, TSC rate for TCG) and adopts VMs left running
 * by an earlier daemon.
 */
import { InternalError } from '../../core/errors.js';
import { DEFAULT_QEMU_BINARY, hostTscKhz, probeAccelerator, probeQemu, type Accel } from '../probe.js';
import type { VmmDriver, VmmHandle } from '../types.js';
import { killAndWait } from '../exit.js';
import { cpuModel, memoryPathFromArgv, parseQemuArgv, type DriveAio, type DriveCache, type QemuMachine } from './cmdline.js';
import { identifyQemu, QemuVmm, type QemuSettings } from './vmm.js';
import { listHearthQemuProcesses, type HearthQemuProcess } from './process.js';
import { resolvePrivilege, VmIdAllocator, type QemuPrivilege, type QemuPrivilegeOptions } from './privilege.js';

export interface QemuDriverOptions {
  /** Default qemu-system-x86_64 (from PATH). */
  qemuBinary?: string;
  /** Force an accelerator; default: the (cached) result of probeAccelerator(). */
  accel?: Accel;
  /** Default 'microvm'. */
  machine?: QemuMachine;
  /** Host TSC kHz for `tsc_early_khz=` under TCG; default from /proc/cpuinfo. */
  tscKhz?: number;
  driveCache?: DriveCache;
  driveAio?: DriveAio;
  /** Seccomp sandbox (`-sandbox on,...,spawn=deny`); default true. `privilege.seccomp` wins if both are set. */
  seccomp?: boolean;
  /**
   * Least privilege (issue #8): by default, when hearthd is root, each QEMU drops to a uid/gid of its
   * own (`-runas`), chroots into an empty `<runDir>/vmroot` and runs under seccomp. See privilege.ts.
   */
  privilege?: QemuPrivilegeOptions;
  /** Where the driver reports how QEMU is confined ('info') or why it cannot be ('warn'). Default: warnings to stderr. */
  log?: (level: 'info' | 'warn', message: string) => void;
  startTimeoutMs?: number;
  snapshotTimeoutMs?: number;
  restoreTimeoutMs?: number;
  stopQuitMs?: number;
  stopTermMs?: number;
  stopKillMs?: number;
  /** Default /run/netns (where `ip netns add` puts namespaces). */
  netnsDir?: string;
  onStep?: QemuSettings['onStep'];
}

export class QemuDriver implements VmmDriver {
  readonly kind = 'qemu' as const;
  private readonly settings: QemuSettings;
  private tsc: Promise<number | undefined> | undefined;
  private privilegeP: Promise<QemuPrivilege> | undefined;
  private ids: VmIdAllocator | undefined;

  constructor(private readonly opts: QemuDriverOptions = {}) {
    const qemuBinary = opts.qemuBinary ?? DEFAULT_QEMU_BINARY;
    const seccomp = opts.privilege?.seccomp ?? opts.seccomp ?? true;
    this.settings = {
      qemuBinary,
      resolveCmdlineOptions: async (signal) => {
        const accel = opts.accel ?? (await probeAccelerator({ qemuBinary, signal })).accel;
        const tscKhz = accel === 'tcg' ? opts.tscKhz ?? await (this.tsc ??= hostTscKhz()) : undefined;
        return {
          accel,
          machine: opts.machine ?? 'microvm',
          tscKhz,
          driveCache: opts.driveCache ?? 'writeback',
          driveAio: opts.driveAio ?? 'threads',
          seccomp,
        };
      },
      privilegeFor: async (sandboxId) => {
        const p = await this.privilege();
        if (p.mode === 'user') return { uid: p.uid!, gid: p.gid!, chroot: p.chroot, release: () => {} };
        if (p.mode === 'per-vm') {
          this.ids ??= new VmIdAllocator(p.idRange);
          const id = await this.ids.acquire(sandboxId);
          return { ...id, chroot: p.chroot };
        }
        return undefined;
      },
      startTimeoutMs: opts.startTimeoutMs ?? 10_000,
      snapshotTimeoutMs: opts.snapshotTimeoutMs ?? 60_000,
      restoreTimeoutMs: opts.restoreTimeoutMs ?? 60_000,
      stopQuitMs: opts.stopQuitMs ?? 2_000,
      stopTermMs: opts.stopTermMs ?? 3_000,
      stopKillMs: opts.stopKillMs ?? 5_000,
      netnsDir: opts.netnsDir ?? '/run/netns',
      onStep: opts.onStep,
    };
  }

  /**
   * How QEMU processes are confined on this host (resolved once: options, euid, user lookup).
   * The reason is logged once: as a warning when a requested drop is not possible.
   */
  privilege(): Promise<QemuPrivilege> {
    this.privilegeP ??= resolvePrivilege({ ...this.opts.privilege, seccomp: this.opts.privilege?.seccomp ?? this.opts.seccomp }).then((p) => {
      const requested = this.opts.privilege?.user ?? 'per-vm';
      const degraded = (p.mode === 'none' && requested !== 'root' && requested !== 'none')
        || (p.mode === 'per-vm' && requested !== 'per-vm');
      const log = this.opts.log ?? ((level, message) => { if (level === 'warn') console.warn(`hearth qemu: ${message}`); });
      log(degraded ? 'warn' : 'info', `QEMU privilege: ${p.reason}${p.seccomp ? '; seccomp on' : '; seccomp OFF'}`);
      return p;
    });
    return this.privilegeP;
  }

  /** QEMU loads a migration stream from its own version, with the same accelerator, CPU model and machine. */
  async snapshotCompat(signal: AbortSignal): Promise<string> {
    const o = await this.settings.resolveCmdlineOptions(signal);
    const q = await probeQemu({ qemuBinary: this.settings.qemuBinary, signal });
    return `qemu=${q.version} accel=${o.accel} cpu=${cpuModel(o.accel)} machine=${o.machine ?? 'microvm'}`;
  }

  /** Hearth's QEMU processes on this host (by `-name hearth-<id>`), for reconciliation. */
  list(): Promise<HearthQemuProcess[]> {
    return listHearthQemuProcesses();
  }

  create(): QemuVmm {
    return new QemuVmm(this.settings);
  }

  /**
   * Re-attaches to a QEMU started by an earlier daemon. The pid must be alive
   * and be QEMU whose `-pidfile` is in `handle.runDir` and whose `-name` is a
   * Hearth name; otherwise the VM is gone (the pid may have been reused) and
   * the result is null. Throws HostFailureError if the process is ours but its
   * QMP socket does not answer (the caller decides whether to kill it).
   */
  async adopt(handle: VmmHandle): Promise<QemuVmm | null> {
    if (handle.kind !== 'qemu') throw new InternalError(`QemuDriver cannot adopt a ${handle.kind} VM`);
    if (!Number.isInteger(handle.pid) || handle.pid <= 0) return null;
    const found = await identifyQemu(handle.pid, handle.runDir);
    if (!found) return null;
    const ident = parseQemuArgv(found.argv);
    const memoryFilePath = memoryPathFromArgv(found.argv);
    if (!ident || !memoryFilePath) return null;
    const vmm = new QemuVmm(this.settings);
    await vmm.attach(handle.pid, found.startTime, ident.sandboxId, handle.runDir, memoryFilePath);
    return vmm;
  }

  /**
   * SIGKILL a QEMU of `handle` that cannot be adopted (its QMP socket is gone),
   * and wait until it is gone: only if the pid is still QEMU with its pid file
   * in `handle.runDir` (identifyQemu), never a process that reused the pid.
   */
  async forceKill(handle: VmmHandle, signal: AbortSignal): Promise<boolean> {
    if (handle.kind !== 'qemu' || !Number.isInteger(handle.pid) || handle.pid <= 0) return false;
    const found = await identifyQemu(handle.pid, handle.runDir);
    if (!found) return false;
    await killAndWait(handle.pid, found.startTime, signal);
    return true;
  }

  /** The handle to persist for a running VM (VmmHandle). */
  static handleOf(vmm: QemuVmm): VmmHandle {
    if (!vmm.runDir || vmm.pid <= 0) throw new InternalError('the VM has not been started');
    return { kind: 'qemu', pid: vmm.pid, runDir: vmm.runDir };
  }
}
