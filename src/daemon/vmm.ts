/**
 * hearthd's VMM: Firecracker where it can run (a `firecracker` ≥ 1.10, KVM that
 * runs ordinary guests, netns networking, and a Firecracker guest kernel built
 * by `hearth image kernel --firecracker`), else QEMU. Every condition comes from
 * a probe; `hearth doctor` prints the reasons.
 */
import { probeAccelerator, type AcceleratorProbe } from '../vmm/probe.js';
import { checkSupported, detectFirecrackerVersion } from '../vmm/firecracker/version.js';
import { findFirecrackerKernel } from '../images/firecracker-kernel.js';
import { errorMessage } from '../core/errors.js';
import type { HearthConfig } from './config.js';

export interface VmmCheck { name: string; ok: boolean; detail: string }

export interface VmmChoice {
  kind: 'qemu' | 'firecracker';
  reason: string;
  accel: AcceleratorProbe;
  /** The Firecracker guest kernel (when Firecracker is chosen). */
  firecrackerKernel: string | null;
  checks: VmmCheck[];
}

export interface VmmProbes {
  accel(): Promise<AcceleratorProbe>;
  /** `firecracker --version` (throws when missing or unsupported). */
  firecrackerVersion(binary: string): Promise<string>;
  /** A built Firecracker kernel in the cache, or null. */
  firecrackerKernel(cacheDir: string): Promise<string | null>;
}

export const hostVmmProbes: VmmProbes = {
  accel: () => probeAccelerator(),
  firecrackerVersion: async (binary) => {
    const v = await detectFirecrackerVersion(binary);
    checkSupported(v);
    return v.text;
  },
  firecrackerKernel: async (cacheDir) => (await findFirecrackerKernel(cacheDir))?.vmlinuxPath ?? null,
};

/**
 * Decide the VMM. `vmm: 'firecracker'` that cannot run is an error naming what
 * is missing; 'auto' falls back to QEMU with those reasons.
 */
export async function chooseVmm(cfg: Pick<HearthConfig, 'vmm' | 'firecrackerBinary' | 'firecrackerKernel' | 'cacheDir'>, network: 'netns' | 'user', probes: VmmProbes = hostVmmProbes): Promise<VmmChoice> {
  const accel = await probes.accel();
  if (cfg.vmm === 'qemu') {
    return { kind: 'qemu', reason: `QEMU with ${accel.accel} (configured)`, accel, firecrackerKernel: null, checks: [] };
  }
  const version = await probes.firecrackerVersion(cfg.firecrackerBinary).then((v) => ({ ok: true, detail: v }), (err: unknown) => ({ ok: false, detail: errorMessage(err) }));
  const kernel = cfg.firecrackerKernel ?? await probes.firecrackerKernel(cfg.cacheDir);
  const checks: VmmCheck[] = [
    { name: 'firecracker', ok: version.ok, detail: version.ok ? `${cfg.firecrackerBinary} ${version.detail}` : version.detail },
    { name: 'kvm', ok: accel.accel === 'kvm', detail: accel.reason },
    { name: 'netns', ok: network === 'netns', detail: network === 'netns' ? 'netns slots' : 'Firecracker has no user-mode networking; it needs netns slots (root, iproute2, nftables)' },
    { name: 'kernel', ok: kernel !== null, detail: kernel ?? 'no Firecracker guest kernel: run `hearth image kernel --firecracker` or set firecrackerKernel' },
  ];
  const missing = checks.filter((c) => !c.ok);
  if (missing.length === 0) {
    return { kind: 'firecracker', reason: `Firecracker ${version.detail} on KVM`, accel, firecrackerKernel: kernel, checks };
  }
  const why = missing.map((c) => `${c.name}: ${c.detail}`).join('; ');
  if (cfg.vmm === 'firecracker') throw new Error(`vmm: firecracker was configured but cannot run here (${why})`);
  return { kind: 'qemu', reason: `QEMU with ${accel.accel}; Firecracker needs ${why}`, accel, firecrackerKernel: null, checks };
}
