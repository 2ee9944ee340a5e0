import { HostFailureError } from '../core/errors.js';
import { readProcStat } from './qemu/process.js';
import type { ExitInfo } from './types.js';

/** Whether `exited` settles within `ms` (the stop ladders of both drivers wait like this between steps). */
export async function exitedWithin(exited: Promise<ExitInfo>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const ok = await Promise.race([
    exited.then(() => true),
    new Promise<boolean>((r) => { timer = setTimeout(() => r(false), ms); }),
  ]);
  clearTimeout(timer);
  return ok;
}

/**
 * SIGKILL a process that is not our child (a VM of an earlier daemon) and wait
 * until it is gone or a zombie, polling /proc; `startTime` (from
 * /proc/<pid>/stat) guards against a reused pid: a process that started at
 * another time is left alone. Gives up with a HostFailureError when `signal`
 * ends the wait (the caller's bound). The caller has checked that the pid is its VM.
 */
export async function killAndWait(pid: number, startTime: string, signal: AbortSignal): Promise<void> {
  const st = await readProcStat(pid);
  if (!st || st.startTime !== startTime) return;
  try { process.kill(pid, 'SIGKILL'); } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return;
    throw new HostFailureError(`cannot kill VM process ${pid}: ${(err as Error).message}`, { cause: err });
  }
  for (;;) {
    const now = await readProcStat(pid);
    if (!now || now.startTime !== startTime || now.state === 'Z' || now.state === 'X') return;
    if (signal.aborted) throw new HostFailureError(`VM process ${pid} did not exit after SIGKILL`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
