/**
 * From a VmConfig to Firecracker API bodies (pure functions, unit tested).
 *
 * Paths in every body are *relative* names inside the VM's root directory,
 * which is Firecracker's working directory: `<runDir>/fc` (direct spawn,
 * optionally bind-mounted at a constant path in a private mount namespace)
 * or the jailer's chroot. A snapshot records these names ("rootfs",
 * "v.sock"), so a restore in any other root, direct or jailed, finds its own
 * files under the same names (docs/firecracker.md, "Restoring" and "Jailer").
 */
import { createHash } from 'node:crypto';
import { ConfigError, ConflictError, InternalError } from '../../core/errors.js';
import type { VmConfig } from '../types.js';
import type {
  BootSource, Drive, EntropyDevice, Logger, MachineConfiguration, Metrics, MmdsConfig, MmdsContents, NetworkInterface,
  NetworkOverride, SnapshotCreateParams, SnapshotLoadParams, Vsock, VsockOverride,
} from './api-types.js';
import type { FirecrackerFeatures } from './version.js';

/** Names inside the VM root (Firecracker's cwd). */
export const ROOT = {
  apiSocket: 'api.sock',
  kernel: 'vmlinux',
  initrd: 'initrd',
  rootfs: 'rootfs',
  vsock: 'v.sock',
  uffdSocket: 'uffd.sock',
  log: 'firecracker.log',
  metrics: 'metrics.json',
  /** Jailer: snapshot files to load are linked in here. */
  snapshotIn: 'snapshot-in',
  /** Jailer: snapshots are written here, then moved out. */
  snapshotOut: 'snapshot-out',
} as const;

/** API ids: [A-Za-z0-9_], no hyphens (docs/firecracker.md, "API transport"). */
export const ROOT_DRIVE_ID = 'rootfs';
export const NET_IFACE_ID = 'eth0';

/** Extra, Firecracker-only inputs the manager may add to a VmConfig. */
export interface FirecrackerVmConfig extends VmConfig {
  /** MMDS data store (V2, on eth0). Default: { instanceID: sandboxId }. See `sandboxMmds`. */
  mmds?: MmdsContents;
}

/** MMDS contents for a sandbox: its id and the SHA-256 of the agent's access token (never the token). */
export function sandboxMmds(sandboxId: string, accessToken?: string, extra: MmdsContents = {}): MmdsContents {
  return {
    ...extra,
    instanceID: sandboxId,
    ...(accessToken ? { accessTokenHash: createHash('sha256').update(accessToken).digest('hex') } : {}),
  };
}

export interface FirecrackerBootOptions {
  features: FirecrackerFeatures;
  /** Dirty-page tracking, needed for Diff snapshots. */
  trackDirtyPages: boolean;
  hugePages: 'None' | '2M';
  driveCache: 'Unsafe' | 'Writeback';
  ioEngine: 'Sync' | 'Async';
  guestCid: number;
  entropy: boolean;
  mmds: boolean;
  logLevel: NonNullable<Logger['level']>;
  metrics: boolean;
  /** Boot without a NIC when the VM has no tap (agent over vsock only). */
  allowNoNetwork: boolean;
  enablePci: boolean;
}

/**
 * Kernel command line. `boot_args` replaces Firecracker's default entirely,
 * so the essentials are put first unless the caller set them: the serial
 * console, `reboot=k` (a guest reboot ends the process), `panic=1`, and the
 * i8042 flags that save probing time (and avoid a PVM stall). Firecracker
 * itself appends `pci=off` (without --enable-pci) and `root=/dev/vda rw`.
 */
export function bootArgs(kernelArgs: string): string {
  const user = kernelArgs.trim().split(/\s+/).filter(Boolean);
  const has = (key: string) => user.some((a) => a === key || a.startsWith(`${key}=`));
  const parts: string[] = [];
  if (!has('console')) parts.push('console=ttyS0');
  if (!has('reboot')) parts.push('reboot=k');
  if (!has('panic')) parts.push('panic=1');
  for (const f of ['i8042.noaux', 'i8042.nomux', 'i8042.nopnp', 'i8042.dumbkbd']) if (!has(f)) parts.push(f);
  return [...parts, ...user].join(' ');
}

export interface BootPlan {
  logger: Logger;
  metrics?: Metrics;
  machine: MachineConfiguration;
  bootSource: BootSource;
  drives: Drive[];
  nets: NetworkInterface[];
  vsock: Vsock;
  entropy?: EntropyDevice;
  mmdsConfig?: MmdsConfig;
  mmds?: MmdsContents;
}

const MAC = /^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/;
const TAP = /^[A-Za-z0-9_.-]{1,15}$/;

export function validateVmConfig(cfg: VmConfig, opts: Pick<FirecrackerBootOptions, 'allowNoNetwork' | 'hugePages'>): void {
  if (!Number.isInteger(cfg.vcpus) || cfg.vcpus < 1 || cfg.vcpus > 32) throw new InternalError(`Firecracker supports 1..32 vCPUs, got ${cfg.vcpus}`);
  if (cfg.vcpus > 1 && cfg.vcpus % 2 !== 0) {
    // Only with SMT; the driver never enables it, so any count is fine. Kept as documentation.
  }
  if (!Number.isInteger(cfg.memoryMib) || cfg.memoryMib < 64) throw new InternalError(`memoryMib must be an integer >= 64, got ${cfg.memoryMib}`);
  if (opts.hugePages === '2M' && cfg.memoryMib % 2 !== 0) throw new InternalError('with 2M huge pages, memoryMib must be even');
  for (const [field, value] of [['kernelPath', cfg.kernelPath], ['rootfsPath', cfg.rootfsPath], ['runDir', cfg.runDir], ['consoleLogPath', cfg.consoleLogPath]] as const) {
    if (!value || !value.startsWith('/')) throw new InternalError(`${field} must be an absolute path, got ${JSON.stringify(value)}`);
  }
  if (cfg.initrdPath !== undefined && !cfg.initrdPath.startsWith('/')) throw new InternalError('initrdPath must be an absolute path');
  const n = cfg.network;
  if (n.kind === 'user') {
    if (!opts.allowNoNetwork) {
      throw new ConfigError('Firecracker has no user-mode networking: give the VM a tap in a network namespace (netns slots), or enable allowNoNetwork to reach the agent over vsock only', 'network');
    }
  } else {
    if (!TAP.test(n.tapName)) throw new InternalError(`bad tap name ${JSON.stringify(n.tapName)}`);
    if (!MAC.test(n.mac)) throw new InternalError(`bad MAC ${JSON.stringify(n.mac)}`);
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(n.netnsName)) throw new InternalError(`bad netns name ${JSON.stringify(n.netnsName)}`);
  }
}

/** Everything `boot()` sends, in order (docs/firecracker.md, "Lifecycle" and "API lifecycle"). */
export function planBoot(cfg: FirecrackerVmConfig, o: FirecrackerBootOptions): BootPlan {
  validateVmConfig(cfg, o);
  const logger: Logger = { log_path: ROOT.log, level: o.logLevel, show_level: true, show_log_origin: false };
  const machine: MachineConfiguration = { vcpu_count: cfg.vcpus, mem_size_mib: cfg.memoryMib, smt: false, track_dirty_pages: o.trackDirtyPages };
  if (o.hugePages !== 'None') machine.huge_pages = o.hugePages;
  const bootSource: BootSource = { kernel_image_path: ROOT.kernel, boot_args: bootArgs(cfg.kernelArgs) };
  if (cfg.initrdPath) bootSource.initrd_path = ROOT.initrd;
  const drive: Drive = {
    drive_id: ROOT_DRIVE_ID, path_on_host: ROOT.rootfs, is_root_device: true, is_read_only: false,
    cache_type: o.driveCache, io_engine: o.ioEngine,
  };
  const nets: NetworkInterface[] = [];
  if (cfg.network.kind === 'tap') {
    nets.push({ iface_id: NET_IFACE_ID, host_dev_name: cfg.network.tapName, guest_mac: cfg.network.mac });
  }
  const plan: BootPlan = {
    logger,
    machine,
    bootSource,
    drives: [drive],
    nets,
    vsock: { guest_cid: o.guestCid, uds_path: ROOT.vsock },
  };
  if (o.metrics) plan.metrics = { metrics_path: ROOT.metrics };
  if (o.entropy) plan.entropy = {};
  if (o.mmds && nets.length > 0) {
    plan.mmdsConfig = { network_interfaces: [NET_IFACE_ID], version: 'V2' };
    plan.mmds = cfg.mmds ?? sandboxMmds(cfg.sandboxId);
  }
  return plan;
}

/** What a snapshot recorded about the VM's devices (the sidecar's view, see snapshot-meta.ts). */
export interface RecordedDevices {
  tapName?: string;
  vsockPath?: string;
}

export interface LoadOptions {
  features: FirecrackerFeatures;
  snapshotPath: string;
  backend: { type: 'File' | 'Uffd'; path: string };
  trackDirtyPages: boolean;
  /** The tap of the new VM, if it differs from the snapshot's. */
  recorded: RecordedDevices;
  tapName?: string;
  resume: boolean;
}

/** The /snapshot/load body for this binary: no field it does not know. */
export function planLoad(o: LoadOptions): SnapshotLoadParams {
  const body: SnapshotLoadParams = {
    snapshot_path: o.snapshotPath,
    mem_backend: { backend_type: o.backend.type, backend_path: o.backend.path },
    resume_vm: o.resume,
  };
  if (o.trackDirtyPages) {
    if (o.features.trackDirtyPagesOnLoad) body.track_dirty_pages = true;
    else body.enable_diff_snapshots = true;
  }
  if (o.tapName && o.recorded.tapName && o.tapName !== o.recorded.tapName) {
    if (!o.features.networkOverrides) {
      throw new ConflictError(`the snapshot's tap is ${o.recorded.tapName} but this VM's is ${o.tapName}, and this Firecracker cannot override it (needs 1.12)`);
    }
    const override: NetworkOverride = { iface_id: NET_IFACE_ID, host_dev_name: o.tapName };
    body.network_overrides = [override];
  }
  if (o.recorded.vsockPath !== undefined && o.recorded.vsockPath !== ROOT.vsock) {
    if (!o.features.vsockOverride) {
      throw new ConflictError(`the snapshot's vsock socket is ${o.recorded.vsockPath}; moving it needs Firecracker 1.16`);
    }
    const vo: VsockOverride = { uds_path: ROOT.vsock };
    body.vsock_override = vo;
  }
  return body;
}

export function planSnapshot(kind: 'Full' | 'Diff', snapshotPath: string, memPath: string): SnapshotCreateParams {
  return { snapshot_type: kind, snapshot_path: snapshotPath, mem_file_path: memPath };
}
