/**
 * CPU time of processes and threads from /proc, for benchmarks whose wall times a
 * shared, loaded machine distorts: CPU time a process consumed does not grow much
 * because others run beside it, so it bounds what no scheduling can beat.
 *
 * utime+stime of /proc/<pid>/stat are in clock ticks (getconf CLK_TCK, 100 here: 10 ms
 * granularity); the process-wide figure includes threads that have already exited, the
 * per-thread ones (/proc/<pid>/task/<tid>/stat) only live threads. Reading them costs this
 * process about a millisecond per sample.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';

const TICK_MS = 1000 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

/** Fields of a stat line after the command name, which may hold spaces and parentheses. */
function statFields(text: string): string[] {
  return text.slice(text.lastIndexOf(')') + 2).trim().split(' ');
}

export interface ProcCpu { userMs: number; sysMs: number; childrenMs: number; startTicks: number }

/** CPU of a process (or one thread, with a /proc/<pid>/task/<tid> path); undefined if it is gone. */
export function procCpu(path: string | number): ProcCpu | undefined {
  let text: string;
  try { text = readFileSync(typeof path === 'number' ? `/proc/${path}/stat` : `${path}/stat`, 'utf8'); } catch { return undefined; }
  // Index 0 is field 3 (state) of proc(5): utime 14, stime 15, cutime 16, cstime 17, starttime 22.
  const f = statFields(text).map(Number);
  return { userMs: f[11]! * TICK_MS, sysMs: f[12]! * TICK_MS, childrenMs: (f[13]! + f[14]!) * TICK_MS, startTicks: f[19]! };
}

export const totalMs = (c: ProcCpu | undefined): number => (c ? c.userMs + c.sysMs : 0);

/** CPU of each live thread of a process, ms by tid, and the process total (which also holds exited threads). */
export function threadsCpu(pid: number): { total: number; byTid: Map<number, number> } {
  const byTid = new Map<number, number>();
  let tids: string[] = [];
  try { tids = readdirSync(`/proc/${pid}/task`); } catch { /* gone */ }
  for (const tid of tids) {
    const c = procCpu(`/proc/${pid}/task/${tid}`);
    if (c) byTid.set(Number(tid), totalMs(c));
  }
  return { total: totalMs(procCpu(pid)), byTid };
}

/**
 * QEMU's threads by role. Started without `-name debug-threads=on`, every thread has the
 * process name, so the roles come from elsewhere: the main loop is the thread group
 * leader; under TCG the guest runs on the vCPU thread, by far the busiest of the others
 * (a perf profile confirms that it is the thread executing translated code, see
 * docs/performance.md); the rest are the RCU, monitor I/O and block worker threads, and
 * `exited` is pool workers that have already ended. Pass the vCPU tid found in an
 * earlier sample to keep the same thread.
 */
export function qemuRoles(pid: number, t: { total: number; byTid: Map<number, number> }, vcpuTid?: number):
  { main: number; vcpu: number; other: number; exited: number; vcpuTid: number | undefined } {
  let tid = vcpuTid;
  if (tid === undefined) {
    for (const [k, v] of t.byTid) if (k !== pid && (tid === undefined || v > t.byTid.get(tid)!)) tid = k;
  }
  const main = t.byTid.get(pid) ?? 0;
  const vcpu = tid === undefined ? 0 : t.byTid.get(tid) ?? 0;
  const live = [...t.byTid.values()].reduce((a, b) => a + b, 0);
  return { main, vcpu, other: live - main - vcpu, exited: Math.max(0, t.total - live), vcpuTid: tid };
}

/** Busy CPU time of the whole machine (all cores, everyone's), ms: /proc/stat less idle and iowait. */
export function machineBusyMs(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already in user).
  const busy = f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!;
  return busy * TICK_MS;
}

/** CPU of this process (hearthd in-process with the benchmark's SDK client), µs-precise, plus reaped children. */
export function selfCpuMs(): { ms: number; childrenMs: number } {
  const u = process.cpuUsage();
  return { ms: (u.user + u.system) / 1000, childrenMs: procCpu(process.pid)?.childrenMs ?? 0 };
}
