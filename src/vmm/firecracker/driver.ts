/**
 * The Firecracker VmmDriver: resolves options into settings (binary version
 * probe, isolation mode, jailer), creates FirecrackerVmm instances, and
 * adopts VMs left running by an earlier daemon.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, InternalError } from '../../core/errors.js';
import { killAndWait } from '../exit.js';
import { readProcCmdline, readProcStat } from '../qemu/process.js';
import type { VmmDriver, VmmHandle } from '../types.js';
import { MOUNTNS_ROOT_DEFAULT, idFromArgv, type Isolation, type JailerSettings } from './layout.js';
import { detectFirecrackerVersion, parseFirecrackerVersion } from './version.js';
import { FirecrackerVmm, type FirecrackerSettings, type FirecrackerVmRecord, type MemoryBackendKind } from './vmm.js';

export interface FirecrackerJailerOptions {
  /** Default 'jailer' (from PATH). Use the jailer of the same release as Firecracker. */
  binary?: string;
  uid: number;
  gid: number;
  /** Default /srv/jailer. Keep it on the data dir's filesystem: files are hard-linked into jails. */
  chrootBaseDir?: string;
  /** Default 2. */
  cgroupVersion?: 1 | 2;
  parentCgroup?: string;
  /** cpu.max / memory.max from the VM size (cgroup v2; default true). */
  cgroupLimits?: boolean;
  memoryOverheadMib?: number;
  newPidNs?: boolean;
  resourceLimits?: { fsize?: number; noFile?: number };
  cgroupRoot?: string;
}

export interface FirecrackerDriverOptions {
  /** Default 'firecracker' (from PATH); with the jailer, the static binary it copies into each jail. */
  firecrackerBinary?: string;
  /** Spawn through the jailer (production). */
  jailer?: FirecrackerJailerOptions;
  /** Without the jailer: 'mountns' (default when running as root) or 'none'. */
  isolation?: 'mountns' | 'none';
  /** The constant path the VM root is mounted at in 'mountns' mode (default /run/hearth/fc-vm). */
  mountnsRoot?: string;
  /** How restores get their memory: 'file' (default; mmap of the snapshot) or 'uffd' (page server). */
  memoryBackend?: MemoryBackendKind;
  uffd?: Partial<FirecrackerSettings['uffd']>;
  /** Dirty-page tracking, so `snapshot(dir, 'diff')` writes a Diff (developer preview in Firecracker). */
  diffSnapshots?: boolean;
  hugePages?: 'None' | '2M';
  driveCache?: 'Unsafe' | 'Writeback';
  ioEngine?: 'Sync' | 'Async';
  guestCid?: number;
  entropy?: boolean;
  /** MMDS V2 on eth0 with the sandbox's data (default true). */
  mmds?: boolean;
  logLevel?: FirecrackerSettings['logLevel'];
  metrics?: boolean;
  allowNoNetwork?: boolean;
  enablePci?: boolean;
  agentVsockPort?: number;
  apiTimeoutMs?: number;
  startTimeoutMs?: number;
  snapshotTimeoutMs?: number;
  restoreTimeoutMs?: number;
  stopCtrlAltDelMs?: number;
  stopTermMs?: number;
  stopKillMs?: number;
  netnsDir?: string;
  /** Skip the `--version` probe (tests, or a known binary). */
  version?: string;
  onStep?: FirecrackerSettings['onStep'];
  log?: FirecrackerSettings['log'];
}

export class FirecrackerDriver implements VmmDriver {
  readonly kind = 'firecracker' as const;
  /** Restores map the snapshot's memory file MAP_PRIVATE (File backend) or serve it read-only (Uffd). */
  readonly restoreMapsSnapshotMemory = true;
  readonly settings: FirecrackerSettings;

  constructor(opts: FirecrackerDriverOptions = {}) {
    const firecrackerBinary = opts.firecrackerBinary ?? 'firecracker';
    let isolation: Isolation = opts.jailer ? 'jailer' : opts.isolation ?? (process.getuid?.() === 0 ? 'mountns' : 'none');
    if (opts.jailer && opts.isolation) throw new ConfigError('isolation is chosen by the jailer when one is configured', 'isolation');
    let jailer: JailerSettings | undefined;
    if (opts.jailer) {
      const j = opts.jailer;
      if (!Number.isInteger(j.uid) || !Number.isInteger(j.gid) || j.uid < 0 || j.gid < 0) throw new ConfigError('jailer uid/gid must be non-negative integers', 'jailer');
      jailer = {
        binary: j.binary ?? 'jailer',
        uid: j.uid,
        gid: j.gid,
        chrootBaseDir: j.chrootBaseDir ?? '/srv/jailer',
        cgroupVersion: j.cgroupVersion ?? 2,
        parentCgroup: j.parentCgroup,
        cgroupLimits: j.cgroupLimits ?? true,
        memoryOverheadMib: j.memoryOverheadMib ?? 128,
        newPidNs: j.newPidNs ?? false,
        resourceLimits: j.resourceLimits,
        cgroupRoot: j.cgroupRoot ?? '/sys/fs/cgroup',
      };
      isolation = 'jailer';
    }
    const fixed = opts.version ? parseFirecrackerVersion(`v${opts.version}`) : undefined;
    const timeout = opts.apiTimeoutMs ?? 5000;
    this.settings = {
      firecrackerBinary,
      isolation,
      mountnsRoot: opts.mountnsRoot ?? MOUNTNS_ROOT_DEFAULT,
      jailer,
      netnsDir: opts.netnsDir ?? '/run/netns',
      enablePci: opts.enablePci ?? false,
      resolveVersion: async () => fixed ?? detectFirecrackerVersion(firecrackerBinary),
      memoryBackend: opts.memoryBackend ?? 'file',
      uffd: {
        acceptTimeoutMs: opts.uffd?.acceptTimeoutMs ?? 10_000,
        populate: opts.uffd?.populate ?? 'on-demand',
        detachWhenPopulated: opts.uffd?.detachWhenPopulated ?? true,
        recordWorkingSet: opts.uffd?.recordWorkingSet ?? true,
        recordMaxMs: opts.uffd?.recordMaxMs ?? 15_000,
        zeroPages: opts.uffd?.zeroPages ?? 'holes',
      },
      diffSnapshots: opts.diffSnapshots ?? false,
      hugePages: opts.hugePages ?? 'None',
      driveCache: opts.driveCache ?? 'Unsafe',
      ioEngine: opts.ioEngine ?? 'Sync',
      guestCid: opts.guestCid ?? 3,
      entropy: opts.entropy ?? true,
      mmds: opts.mmds ?? true,
      logLevel: opts.logLevel ?? 'Warning',
      metrics: opts.metrics ?? true,
      allowNoNetwork: opts.allowNoNetwork ?? false,
      agentVsockPort: opts.agentVsockPort ?? 49983,
      apiTimeoutMs: timeout,
      startTimeoutMs: opts.startTimeoutMs ?? 5000,
      snapshotTimeoutMs: opts.snapshotTimeoutMs ?? 120_000,
      restoreTimeoutMs: opts.restoreTimeoutMs ?? 60_000,
      stopCtrlAltDelMs: opts.stopCtrlAltDelMs ?? 0,
      stopTermMs: opts.stopTermMs ?? 3000,
      stopKillMs: opts.stopKillMs ?? 5000,
      onStep: opts.onStep,
      log: opts.log,
    };
    if (this.settings.guestCid < 3) throw new ConfigError('guestCid must be >= 3', 'guestCid');
  }

  /** Firecracker loads snapshots only within one release line (major.minor). */
  async snapshotCompat(signal: AbortSignal): Promise<string> {
    const v = await this.settings.resolveVersion(signal);
    return `firecracker=${v.major}.${v.minor}`;
  }

  create(): FirecrackerVmm {
    return new FirecrackerVmm(this.settings);
  }

  /**
   * Re-attaches to a Firecracker started by an earlier daemon, from
   * <runDir>/firecracker.json: the pid must be alive with the recorded start
   * time and `--id`, and the API socket must answer with that id; otherwise
   * the VM is gone and the result is null. A Uffd-restored VM whose page
   * server was not detached lost its page server with the old daemon: it
   * would hang on its next fault, so it is killed (and cleaned up) and the
   * result is null. Throws HostFailureError if the process is ours but its
   * API does not answer (the caller decides whether to kill it).
   */
  async adopt(handle: VmmHandle): Promise<FirecrackerVmm | null> {
    if (handle.kind !== 'firecracker') throw new InternalError(`FirecrackerDriver cannot adopt a ${handle.kind} VM`);
    const found = await this.identify(handle);
    if (!found) return null;
    const { rec, startTime } = found;
    const vmm = new FirecrackerVmm(this.settings);
    await vmm.attach(rec, startTime, handle.runDir);
    if (rec.memoryBackend === 'uffd' && !rec.uffdDetached) {
      await vmm.killAdopted(`sandbox ${rec.sandboxId}: its userfaultfd page server ended with the previous daemon; the VM would hang on its next page fault`);
      return null;
    }
    return vmm;
  }

  /**
   * SIGKILL a Firecracker of `handle` whose API no longer answers and wait
   * until it is gone, then release what it held on the host (mounts, jail,
   * cgroup, sockets): only if the pid is still the one its record in
   * `handle.runDir` names (start time and `--id`), never a reused pid.
   */
  async forceKill(handle: VmmHandle, signal: AbortSignal): Promise<boolean> {
    if (handle.kind !== 'firecracker') return false;
    const found = await this.identify(handle);
    if (!found) return false;
    const vmm = new FirecrackerVmm(this.settings);
    vmm.bind(found.rec, found.startTime, handle.runDir);
    await killAndWait(found.rec.pid, found.startTime, signal);
    await vmm.killAdopted(`sandbox ${found.rec.sandboxId}: its Firecracker could not be controlled and was killed`);
    return true;
  }

  /** The driver's record of the VM in `handle.runDir`, if its pid is still that Firecracker (start time, `--id`). */
  private async identify(handle: VmmHandle): Promise<{ rec: FirecrackerVmRecord; startTime: string } | null> {
    let rec: FirecrackerVmRecord;
    try {
      rec = JSON.parse(await readFile(path.join(handle.runDir, 'firecracker.json'), 'utf8')) as FirecrackerVmRecord;
    } catch {
      return null;
    }
    if (rec.format !== 1 || rec.pid !== handle.pid || !Number.isInteger(rec.pid) || rec.pid <= 0) return null;
    const st = await readProcStat(rec.pid);
    const argv = await readProcCmdline(rec.pid);
    if (!st || st.state === 'Z' || st.state === 'X' || !argv) return null;
    if (rec.startTime && st.startTime !== rec.startTime) return null;
    if (idFromArgv(argv) !== rec.id) return null;
    return { rec, startTime: st.startTime };
  }

  static handleOf(vmm: FirecrackerVmm): VmmHandle {
    if (!vmm.runDir || vmm.pid <= 0) throw new InternalError('the VM has not been started');
    return { kind: 'firecracker', pid: vmm.pid, runDir: vmm.runDir };
  }
}
