import { copyFileSync, existsSync, renameSync, rmSync, statSync, truncateSync } from 'node:fs';

/**
 * hearthd's own log file when `hearth up` runs it in the background
 * (`<dataDir>/hearthd.log`, opened O_APPEND by hearthd's stdout and stderr):
 * rotated by copy and truncate once past `maxBytes`, keeping `keep` old files
 * (`hearthd.log.1` newest). Copy-truncate because hearthd's stdout and stderr
 * are file descriptors it inherited; with O_APPEND the next write lands at the
 * start of the emptied file. Lines written between the copy and the truncate
 * (microseconds) can be lost. As a service, hearthd logs to journald instead,
 * which rotates on its own.
 */
export const DEFAULT_DAEMON_LOG_BYTES = 32 << 20;
export const DEFAULT_DAEMON_LOG_KEEP = 3;

export function rotateLogFile(file: string, maxBytes = DEFAULT_DAEMON_LOG_BYTES, keep = DEFAULT_DAEMON_LOG_KEEP): boolean {
  let size: number;
  try { size = statSync(file).size; } catch { return false; }
  if (size <= maxBytes) return false;
  rmSync(`${file}.${keep}`, { force: true });
  for (let i = keep - 1; i >= 1; i--) if (existsSync(`${file}.${i}`)) renameSync(`${file}.${i}`, `${file}.${i + 1}`);
  if (keep >= 1) copyFileSync(file, `${file}.1`);
  truncateSync(file, 0);
  return true;
}

/** Checks the file every `intervalMs` and rotates it when due; returns the stop function. */
export function startLogRotation(file: string, opts: { maxBytes?: number; keep?: number; intervalMs?: number; onRotate?: () => void } = {}): () => void {
  const check = (): void => {
    try { if (rotateLogFile(file, opts.maxBytes, opts.keep)) opts.onRotate?.(); } catch { /* next time */ }
  };
  check();
  const t = setInterval(check, opts.intervalMs ?? 30_000);
  t.unref();
  return () => clearInterval(t);
}
