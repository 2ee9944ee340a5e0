import { access, constants, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { probeAccelerator, probeQemu } from '../vmm/probe.js';
import { chooseRootfsBackend } from '../storage/select.js';
import { chooseNetwork } from '../network/netns/index.js';
import { chooseVmm } from './vmm.js';
import { resolvePrivilege } from '../vmm/qemu/index.js';
import { admissionThresholds, type HearthConfig } from './config.js';
import { hostHeadroom, type AdmissionThresholds, type HostSample } from '../core/headroom.js';

const execFileP = promisify(execFile);

export interface DoctorReport {
  host: { kernel: string; cpus: number; memoryMib: number; root: boolean };
  kvm: { device: boolean; runsGuests: boolean; detail: string };
  qemu: { found: boolean; version: string | null; ignoreShared: boolean; detail: string; privilege: string };
  firecracker: { found: boolean; version: string | null };
  storage: { dataDir: string; deviceMapper: boolean; reflink: boolean };
  userfaultfd: boolean;
  netns: { available: boolean; detail: string };
  chosen: { vmm: string; vmmReason: string; accel: string; storage: string; storageReason: string; network: string; networkReason: string };
  /** Whether sandboxes can reach anything beyond the host at all, whatever their policy says. */
  egress: { possible: boolean; interface: string | null; why: string };
  /** Admission thresholds (configuration) and the host's headroom now (src/core/headroom.ts). */
  admission?: { thresholds: AdmissionThresholds; now: HostSample; guestMemoryLimitMib: number };
}

async function versionOf(cmd: string, args: string[]): Promise<string | null> {
  try {
    const { stdout } = await execFileP(cmd, args, { timeout: 5000 });
    return stdout.split('\n')[0]?.trim() ?? null;
  } catch {
    return null;
  }
}

/** What the host can do and what Hearth will use; every answer comes from a real probe. */
export async function runDoctor(cfg: HearthConfig): Promise<DoctorReport> {
  const [accel, qemu, fc, storage, meminfo, kernel, network] = await Promise.all([
    probeAccelerator(),
    probeQemu().then((q) => ({ found: true as const, ...q, detail: `${q.binary} ${q.version}` }), (e: unknown) => ({ found: false as const, version: null, ignoreShared: false, detail: String(e) })),
    versionOf('firecracker', ['--version']),
    chooseRootfsBackend(cfg.dataDir, cfg.storage),
    readFile('/proc/meminfo', 'utf8'),
    readFile('/proc/sys/kernel/osrelease', 'utf8'),
    chooseNetwork({ prefer: cfg.network }),
  ]);
  // 'auto' here even when Firecracker is forced: the doctor reports what is missing instead of failing.
  const privilege = await resolvePrivilege({ user: cfg.qemuUser });
  const vmm = await chooseVmm({ ...cfg, vmm: cfg.vmm === 'qemu' ? 'qemu' : 'auto' }, network.kind);
  const memKb = Number(/MemTotal:\s+(\d+)/.exec(meminfo)?.[1] ?? 0);
  const root = process.getuid?.() === 0;
  const uffd = existsSync('/dev/userfaultfd') || await access('/proc/sys/vm/unprivileged_userfaultfd', constants.R_OK).then(() => true, () => false);
  const thresholds = admissionThresholds(cfg);
  return {
    admission: { thresholds, now: hostHeadroom(cfg.dataDir, thresholds).sample(), guestMemoryLimitMib: Math.floor((memKb / 1024) * cfg.memoryOvercommit) },
    host: { kernel: kernel.trim(), cpus: (await import('node:os')).cpus().length, memoryMib: Math.round(memKb / 1024), root },
    kvm: { device: existsSync('/dev/kvm'), runsGuests: accel.accel === 'kvm', detail: accel.reason },
    qemu: { found: qemu.found, version: qemu.version, ignoreShared: qemu.ignoreShared, detail: qemu.detail, privilege: privilege.reason },
    firecracker: { found: fc !== null, version: fc },
    storage: { dataDir: cfg.dataDir, deviceMapper: storage.deviceMapper, reflink: storage.reflink },
    userfaultfd: uffd,
    netns: {
      available: network.checks.every((c) => c.ok),
      detail: network.checks.map((c) => `${c.name} ${c.ok ? 'ok' : 'missing'}`).join(', ') + (network.conntrack ? ', conntrack ok' : ', conntrack tool absent (optional)'),
    },
    chosen: {
      vmm: vmm.kind,
      vmmReason: cfg.vmm === 'firecracker' && vmm.kind !== 'firecracker' ? `configured firecracker cannot start: ${vmm.reason}` : vmm.reason,
      accel: accel.accel,
      storage: storage.chosen,
      storageReason: storage.reason,
      network: network.kind,
      networkReason: network.kind === 'netns'
        ? `${network.reason}; slots in ${cfg.networkRange}, egress ${cfg.egressInterface ? `via ${cfg.egressInterface}` : 'off (no egressInterface configured)'}`
        : network.reason,
    },
    egress: network.kind !== 'netns'
      ? { possible: false, interface: null, why: 'user-mode networking (hearthd is not root or lacks iproute2/nftables): sandboxes have no egress at all' }
      : cfg.egressInterface
        ? { possible: true, interface: cfg.egressInterface, why: `NAT via ${cfg.egressInterface}` }
        : { possible: false, interface: null, why: 'no egress interface configured (egressInterface / HEARTH_EGRESS_INTERFACE): sandboxes reach nothing beyond the host' },
  };
}
