import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { errorMessage, log } from './log.js';

/** A request the helper did not answer in time is failed (the caller falls back). */
const REQUEST_TIMEOUT_MS = 5000;

/**
 * The long-lived `hearth-pty --sys` process (native/pty/hearth-pty.c): sets the clock and
 * reseeds the CRNG for `/init` without a fork+exec per call. Started once when the agent
 * starts (so it is in every snapshot), as root only. Requests are one line each and answered
 * in order; `/init` serialises its calls, so at most one is in flight in practice, but the
 * queue keeps concurrent callers correct anyway. When the helper is missing, not root, or
 * dies, `available` turns false and `/init` falls back to spawning `date` and perl.
 */
export class SysHelper {
  private child: ChildProcess | undefined;
  private buffered = '';
  private readonly waiting: { resolve: () => void; reject: (e: Error) => void; timer: NodeJS.Timeout }[] = [];

  constructor(path: string) {
    if (path === '' || process.getuid?.() !== 0 || !existsSync(path)) return;
    try {
      const child = spawn(path, ['--sys'], { stdio: ['pipe', 'pipe', 'inherit'] });
      this.child = child;
      child.stdout!.setEncoding('utf8');
      child.stdout!.on('data', (d: string) => this.onData(d));
      child.on('error', (e) => this.fail(`sys helper ${path}: ${errorMessage(e)}`));
      child.on('exit', (code, signal) => this.fail(`sys helper ${path} exited (${signal ?? `code ${code}`})`));
      child.stdin!.on('error', () => undefined);
      // The helper must never keep the agent alive on its own.
      child.unref();
      (child.stdin as unknown as { unref?: () => void }).unref?.();
      (child.stdout as unknown as { unref?: () => void }).unref?.();
    } catch (e) {
      log.warn('cannot start the sys helper', { path, error: errorMessage(e) });
      this.child = undefined;
    }
  }

  get available(): boolean { return this.child !== undefined; }

  /** clock_settime(CLOCK_REALTIME) to `ms` since the epoch. */
  setClock(ms: number): Promise<void> {
    const sec = Math.floor(ms / 1000);
    const nsec = Math.round((ms - sec * 1000) * 1e6);
    return this.request(`clock ${sec} ${Math.min(nsec, 999_999_999)}`);
  }

  /** Mix `bytes` into /dev/urandom's pool and reseed the CRNG (RNDRESEEDCRNG). */
  seed(bytes: Uint8Array): Promise<void> {
    return this.request(`seed ${Buffer.from(bytes.subarray(0, 512)).toString('hex')}`);
  }

  close(): void {
    this.child?.stdin?.end();
    this.child = undefined;
  }

  private request(line: string): Promise<void> {
    const child = this.child;
    if (!child?.stdin) return Promise.reject(new Error('sys helper not running'));
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => this.fail(`sys helper did not answer within ${REQUEST_TIMEOUT_MS} ms`), REQUEST_TIMEOUT_MS);
      this.waiting.push({ resolve, reject, timer });
      child.stdin!.write(`${line}\n`);
    });
  }

  private onData(d: string): void {
    this.buffered += d;
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl);
      this.buffered = this.buffered.slice(nl + 1);
      const w = this.waiting.shift();
      if (!w) continue;
      clearTimeout(w.timer);
      if (line === 'ok') w.resolve();
      else w.reject(new Error(line.replace(/^err \d+ /, '') || 'sys helper: empty answer'));
    }
  }

  private fail(reason: string): void {
    if (this.child) {
      log.warn('sys helper gone; /init falls back to spawning processes', { reason });
      const c = this.child;
      this.child = undefined;
      try { c.kill('SIGKILL'); } catch { /* gone */ }
    }
    for (const w of this.waiting.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new Error(reason));
    }
  }
}
