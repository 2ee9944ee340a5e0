import { readFileSync, statfsSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';

/**
 * What the host can see of a sandbox and of itself, without the guest's help:
 * a VMM process's CPU time and resident memory (/proc/<pid>/stat and status),
 * the data dir's filesystem (statfs), host memory (/proc/meminfo).
 */

/** USER_HZ: the unit of /proc/<pid>/stat's times (100 on every Linux architecture Hearth runs on). */
const USER_HZ = 100;

export interface ProcStats { cpuSeconds: number; rssBytes: number }

/** CPU seconds (user + system, all threads) and resident bytes of a process; null if it is gone. */
export function procStats(pid: number): ProcStats | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces and parentheses): the last ')'.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const cpuSeconds = (Number(f[11]) + Number(f[12])) / USER_HZ; // utime, stime: fields 14 and 15
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    return { cpuSeconds, rssBytes: m ? Number(m[1]) * 1024 : 0 };
  } catch {
    return null;
  }
}

/**
 * CPU use of a VMM process between two calls, in percent of the sandbox's
 * vCPUs (100 = every vCPU busy; emulation threads can push it past 100 under TCG).
 */
export class ProcCpuMeter {
  private readonly last = new Map<number, { cpu: number; at: number }>();

  /** null on the first call for a pid (no interval yet) or when the process is gone. */
  percent(pid: number, vcpus: number, stats: ProcStats | null, at: number = performance.now()): number | null {
    if (!stats) { this.last.delete(pid); return null; }
    const prev = this.last.get(pid);
    this.last.set(pid, { cpu: stats.cpuSeconds, at });
    if (!prev || at <= prev.at) return null;
    const pct = (100 * (stats.cpuSeconds - prev.cpu)) / (((at - prev.at) / 1000) * Math.max(1, vcpus));
    return Math.max(0, Math.round(pct * 100) / 100);
  }

  forget(pid: number): void { this.last.delete(pid); }

  forgetExcept(pids: ReadonlySet<number>): void {
    for (const pid of this.last.keys()) if (!pids.has(pid)) this.last.delete(pid);
  }
}

export interface HostCapacity {
  cpus: number;
  memoryTotalBytes: number;
  memoryAvailableBytes: number;
  dataDirTotalBytes: number | null;
  dataDirFreeBytes: number | null;
}

export function hostCapacity(dataDir: string | null): HostCapacity {
  let available = 0;
  try {
    const m = /^MemAvailable:\s+(\d+)\s+kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
    available = m ? Number(m[1]) * 1024 : 0;
  } catch { /* not Linux */ }
  let total: number | null = null;
  let free: number | null = null;
  if (dataDir) {
    try {
      const s = statfsSync(dataDir);
      total = s.blocks * s.bsize;
      free = s.bavail * s.bsize;
    } catch { /* gone */ }
  }
  return { cpus: cpus().length, memoryTotalBytes: totalmem(), memoryAvailableBytes: available, dataDirTotalBytes: total, dataDirFreeBytes: free };
}
