/**
 * hearthd as a child process: the built entry point (`dist/daemon/main.js`, as
 * `hearth up` starts it; run `npm run build` first) on its own data dir, for
 * tests that need what only a separate process gives (SIGKILL, a restart as a
 * new process). The default image is the one `testImage()` built or reused,
 * hard-linked (or copied) into the data dir so the child finds it instead of
 * building it again.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { copyFile, link, mkdir, readdir } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { alive, testImage } from './daemon.js';

export const DAEMON_MAIN = join(PACKAGE_ROOT, 'dist', 'daemon', 'main.js');

export interface ChildDaemon {
  proc: ChildProcess;
  pid: number;
  url: string;
  /** Resolves once the process has exited (its pipes are then dropped). */
  exited: Promise<void>;
  /** Has the process not exited yet? */
  running(): boolean;
}

export interface SpawnOptions {
  dataDir: string;
  /** The port it listens on, on 127.0.0.1 (`--port`). */
  port: number;
  /** stdout and stderr are appended here. */
  logPath: string;
  /** Extra environment; wins over the test's own. */
  env?: Record<string, string>;
  /**
   * Drop every HEARTH_* variable of the test's environment first, so the child
   * is configured by its config.json (and `env`) alone: the environment wins
   * over config.json, and a developer's HEARTH_PORT must not reach a test node.
   */
  isolateEnv?: boolean;
  readyTimeoutMs?: number;
}

/** Starts hearthd and waits until it answers GET /sandboxes; killed (SIGKILL) if it never does. */
export async function spawnHearthd(o: SpawnOptions): Promise<ChildDaemon> {
  const base = o.isolateEnv
    ? Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HEARTH_')))
    : process.env;
  const log = createWriteStream(o.logPath, { flags: 'a' });
  const proc = spawn(process.execPath, [DAEMON_MAIN, '--host', '127.0.0.1', '--port', String(o.port), '--data-dir', o.dataDir], {
    env: { ...base, ...o.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  proc.stdout!.pipe(log, { end: false });
  proc.stderr!.pipe(log, { end: false });
  // Once hearthd is gone, drop our ends of its pipes (a QEMU it started may hold the others) and the log.
  const exited = new Promise<void>((resolve) => proc.once('exit', () => {
    proc.stdout?.destroy();
    proc.stderr?.destroy();
    log.end();
    resolve();
  }));
  const running = (): boolean => proc.exitCode === null && proc.signalCode === null;
  const url = `http://127.0.0.1:${o.port}`;
  const end = Date.now() + (o.readyTimeoutMs ?? 240_000);
  for (;;) {
    if (!running()) throw new Error(`hearthd exited (${proc.exitCode ?? proc.signalCode}); log ${o.logPath}:\n${tail(o.logPath)}`);
    const ok = await fetch(`${url}/sandboxes`, { signal: AbortSignal.timeout(2000) }).then((r) => r.ok, () => false);
    if (ok) break;
    if (Date.now() > end) {
      proc.kill('SIGKILL');
      await exited;
      throw new Error(`hearthd did not answer within ${o.readyTimeoutMs ?? 240_000} ms; log ${o.logPath}:\n${tail(o.logPath)}`);
    }
    await sleep(300);
  }
  return { proc, pid: proc.pid!, url, exited, running };
}

/** The last lines of a log file ('' if unreadable). */
export function tail(path: string, lines = 40): string {
  try { return readFileSync(path, 'utf8').split('\n').slice(-lines).join('\n'); } catch { return ''; }
}

/** SIGKILL, by its PID, and wait for the exit. */
export async function sigkill(d: ChildDaemon): Promise<void> {
  if (!d.running()) return;
  process.kill(d.pid, 'SIGKILL');
  await d.exited;
}

/** SIGTERM (hearthd's normal stop: sandboxes keep running), SIGKILL after 30 s. */
export async function sigterm(d: ChildDaemon): Promise<void> {
  if (!d.running()) return;
  d.proc.kill('SIGTERM');
  const timer = setTimeout(() => { if (d.running()) d.proc.kill('SIGKILL'); }, 30_000);
  await d.exited;
  clearTimeout(timer);
}

/** Put the test image into `<dataDir>/images/<hash16>` so a child daemon reuses it. */
export async function seedImage(dataDir: string): Promise<void> {
  const image = await testImage();
  const dst = join(dataDir, 'images', basename(image.dir));
  await mkdir(dst, { recursive: true });
  for (const f of await readdir(image.dir)) {
    await link(join(image.dir, f), join(dst, f)).catch(() => copyFile(join(image.dir, f), join(dst, f)));
  }
}

/** Alive and not a zombie (an exited QEMU adopted from a killed daemon is reaped by init, later). */
export function running(pid: number): boolean {
  if (!alive(pid)) return false;
  try { return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return false; }
}
