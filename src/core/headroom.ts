import { readFileSync, statfsSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';

/**
 * Admission on what the host really has left (issue #14), beside the guest-memory ratio
 * (`memoryOvercommit`): available memory, free space on the data dir, and CPU load. A create,
 * resume or fork that would leave less than the configured floor gets a 503 naming which one
 * and by how much. Every threshold is configurable (src/daemon/config.ts) and shown by
 * `hearth doctor`; 0 turns a check off.
 */
export interface AdmissionThresholds {
  /** MemAvailable must stay at least this (MiB) after the new sandboxes' estimated cost. */
  minFreeMemoryMib: number;
  /**
   * Host memory a new sandbox is counted at (MiB), at most its guest memory: what an idle one
   * really costs (QEMU's PSS, measured ~175-215 MiB for a 512 MiB guest under TCG; docs/performance.md).
   */
  memoryPerSandboxMib: number;
  /** Free space on the data dir must stay at least this (MiB) after the new sandboxes' reserve. */
  minFreeDiskMib: number;
  /**
   * Disk reserved per new sandbox beyond its memory file (MiB): what its root disk's
   * copy-on-write may soon take. The memory file can be written back in full, so its size counts too.
   */
  diskPerSandboxMib: number;
  /** Refuse while the 1-minute load average per host CPU is above this (0: never). */
  maxLoadPerCpu: number;
}

export const DEFAULT_ADMISSION: AdmissionThresholds = {
  minFreeMemoryMib: 1024,
  memoryPerSandboxMib: 256,
  minFreeDiskMib: 2048,
  diskPerSandboxMib: 512,
  maxLoadPerCpu: 8,
};

/** One reading of the host. */
export interface HostSample {
  availableMemoryMib: number;
  freeDiskMib: number;
  load1: number;
  cpus: number;
}

/** What admission reads: thresholds and a way to sample the host (tests inject both). */
export interface HostHeadroom {
  thresholds: AdmissionThresholds;
  sample(): HostSample;
}

/** The reason to refuse `count` new sandboxes of `memoryMib`, or null when they fit. */
export function headroomRefusal(s: HostSample, t: AdmissionThresholds, memoryMib: number, count = 1): string | null {
  if (t.minFreeMemoryMib > 0) {
    const need = Math.min(memoryMib, t.memoryPerSandboxMib) * count;
    if (s.availableMemoryMib - need < t.minFreeMemoryMib) {
      return `host memory: ${Math.round(s.availableMemoryMib)} MiB available, ${need} MiB more would leave less than the ${t.minFreeMemoryMib} MiB floor (admissionMinFreeMemoryMib)`;
    }
  }
  if (t.minFreeDiskMib > 0) {
    const need = (memoryMib + t.diskPerSandboxMib) * count;
    if (s.freeDiskMib - need < t.minFreeDiskMib) {
      return `data dir disk: ${Math.round(s.freeDiskMib)} MiB free, reserving ${need} MiB would leave less than the ${t.minFreeDiskMib} MiB floor (admissionMinFreeDiskMib)`;
    }
  }
  if (t.maxLoadPerCpu > 0 && s.cpus > 0 && s.load1 / s.cpus > t.maxLoadPerCpu) {
    return `host CPU: load ${s.load1.toFixed(1)} on ${s.cpus} CPUs is above ${t.maxLoadPerCpu} per CPU (admissionMaxLoadPerCpu)`;
  }
  return null;
}

/** The real host: MemAvailable, statfs of the data dir, loadavg. */
export function hostHeadroom(dataDir: string, thresholds: AdmissionThresholds): HostHeadroom {
  return {
    thresholds,
    sample(): HostSample {
      const meminfo = readFileSync('/proc/meminfo', 'utf8');
      const kib = Number(/^MemAvailable:\s+(\d+)/m.exec(meminfo)?.[1] ?? /^MemFree:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0);
      const fs = statfsSync(dataDir);
      return {
        availableMemoryMib: kib / 1024,
        freeDiskMib: (Number(fs.bavail) * Number(fs.bsize)) / 1048576,
        load1: loadavg()[0] ?? 0,
        cpus: cpus().length,
      };
    },
  };
}
