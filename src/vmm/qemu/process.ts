/**
 * Host-process helpers for QEMU VMs: identify a pid by /proc, watch a process
 * that is not our child (after adoption), find Hearth's QEMU processes.
 */
import { open, readFile, readdir } from 'node:fs/promises';
import { parseQemuArgv } from './cmdline.js';

/** argv of a process, or undefined if it is gone (or a kernel thread). */
export async function readProcCmdline(pid: number, procRoot = '/proc'): Promise<string[] | undefined> {
  try {
    const raw = await readFile(`${procRoot}/${pid}/cmdline`, 'utf8');
    if (!raw) return undefined;
    return raw.replace(/\0$/, '').split('\0');
  } catch {
    return undefined;
  }
}

/** State letter and start time (clock ticks since boot) from /proc/<pid>/stat. */
export async function readProcStat(pid: number, procRoot = '/proc'): Promise<{ state: string; startTime: string } | undefined> {
  try {
    const raw = await readFile(`${procRoot}/${pid}/stat`, 'utf8');
    // comm may contain spaces and parentheses: fields resume after the last ')'.
    const rest = raw.slice(raw.lastIndexOf(')') + 2).split(' ');
    const state = rest[0];
    const startTime = rest[19]; // field 22 overall
    if (!state || !startTime) return undefined;
    return { state, startTime };
  } catch {
    return undefined;
  }
}

/** True while the process exists and is not a zombie. */
export async function isProcessAlive(pid: number): Promise<boolean> {
  const st = await readProcStat(pid);
  return st !== undefined && st.state !== 'Z' && st.state !== 'X';
}

/**
 * Resolves when `pid` (started at `startTime`) has exited, by polling /proc.
 * Used for processes that are not our children (adopted after a daemon
 * restart): their exit status is not observable, only their disappearance. The
 * start time guards against pid reuse. The timer is unref'd.
 */
export function watchPidExit(pid: number, startTime: string, pollMs = 100): { done: Promise<void>; cancel(): void } {
  let timer: NodeJS.Timeout | undefined;
  let cancelled = false;
  const done = new Promise<void>((resolve) => {
    const tick = async () => {
      if (cancelled) return;
      const st = await readProcStat(pid);
      if (!st || st.startTime !== startTime || st.state === 'Z' || st.state === 'X') { resolve(); return; }
      timer = setTimeout(() => { void tick(); }, pollMs);
      timer.unref();
    };
    void tick();
  });
  return { done, cancel() { cancelled = true; if (timer) clearTimeout(timer); } };
}

export interface HearthQemuProcess {
  pid: number;
  sandboxId: string;
  runDir?: string;
}

/** Every live QEMU on this host whose -name marks it as a Hearth VM (for reconciliation). */
export async function listHearthQemuProcesses(procRoot = '/proc'): Promise<HearthQemuProcess[]> {
  const out: HearthQemuProcess[] = [];
  let entries: string[];
  try { entries = await readdir(procRoot); } catch { return out; }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    const pid = Number(e);
    const argv = await readProcCmdline(pid, procRoot);
    if (!argv || !argv[0] || !/qemu-system/.test(argv[0])) continue;
    const id = parseQemuArgv(argv);
    if (!id) continue;
    const st = await readProcStat(pid, procRoot);
    if (!st || st.state === 'Z') continue;
    out.push({ pid, ...id });
  }
  return out;
}

/** The last `bytes` of a text file (for error messages); '' if unreadable. */
export async function tailFile(path: string, bytes = 2048): Promise<string> {
  let fh;
  try {
    fh = await open(path, 'r');
    const { size } = await fh.stat();
    const start = Math.max(0, size - bytes);
    const buf = Buffer.alloc(size - start);
    await fh.read(buf, 0, buf.length, start);
    return buf.toString('utf8');
  } catch {
    return '';
  } finally {
    await fh?.close();
  }
}

/** Effective uid and gid of a process (from /proc/<pid>/status), or undefined if it is gone. */
export async function readProcIds(pid: number, procRoot = '/proc'): Promise<{ uid: number; gid: number } | undefined> {
  try {
    const raw = await readFile(`${procRoot}/${pid}/status`, 'utf8');
    const field = (name: string) => {
      const m = new RegExp(`^${name}:\\s+(\\d+)\\s+(\\d+)`, 'm').exec(raw);
      return m ? Number(m[2]) : undefined;
    };
    const uid = field('Uid');
    const gid = field('Gid');
    return uid === undefined || gid === undefined ? undefined : { uid, gid };
  } catch {
    return undefined;
  }
}
