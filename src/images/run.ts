/**
 * The one way src/images runs external commands: `spawn` with an argument
 * array (never a shell string), stderr captured into the error message, and
 * the AbortSignal honoured by killing the child (SIGTERM, then SIGKILL).
 */
import { spawn } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { access } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { AbortedError, HostFailureError } from '../core/errors.js';

export interface RunOptions {
  signal?: AbortSignal;
  cwd?: string;
  /** Extra environment variables (merged over process.env with a fixed C locale). */
  env?: Record<string, string | undefined>;
  /** Bytes written to the child's stdin (stdin is closed afterwards). */
  input?: string | Buffer;
  /** Called with each complete stdout/stderr line (e.g. to feed Progress.info). */
  onLine?: (line: string, stream: 'stdout' | 'stderr') => void;
  /** Keep at most this many bytes of stdout in the result (default 64 MiB). */
  maxStdout?: number;
  /** Exit codes that count as success (default [0]). */
  okCodes?: number[];
  /** Grace period between SIGTERM and SIGKILL on abort (default 3000 ms). */
  killGraceMs?: number;
  /** Send stdout (binary) to this file instead of capturing it. */
  stdoutPath?: string;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

const STDERR_KEEP = 16 * 1024;

/** Quote an argument for display in error messages only (never executed). */
function displayArg(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`;
}

export function formatCommand(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map(displayArg).join(' ');
}

/** Injected into builders so tests can replace it (fault injection through a seam). */
export type Runner = (cmd: string, args: readonly string[], opts?: RunOptions) => Promise<RunResult>;

export const run: Runner = (cmd, args, opts = {}) => {
  const { signal } = opts;
  if (signal?.aborted) return Promise.reject(abortedError(cmd, signal));
  return new Promise<RunResult>((resolve, reject) => {
    const outFd = opts.stdoutPath !== undefined ? openSync(opts.stdoutPath, 'w', 0o644) : undefined;
    const child = spawn(cmd, [...args], {
      cwd: opts.cwd,
      env: { ...process.env, PATH: withSbin(process.env.PATH), LC_ALL: 'C', LANG: 'C', ...opts.env } as NodeJS.ProcessEnv,
      stdio: [opts.input !== undefined ? 'pipe' : 'ignore', outFd ?? 'pipe', 'pipe'],
    });
    if (outFd !== undefined) closeSync(outFd); // the child has its own copy
    const maxStdout = opts.maxStdout ?? 64 * 1024 * 1024;
    const out: Buffer[] = [];
    let outLen = 0;
    let errTail = '';
    const partial = { stdout: '', stderr: '' };
    const feed = (stream: 'stdout' | 'stderr', chunk: Buffer) => {
      if (!opts.onLine) return;
      const text = partial[stream] + chunk.toString('utf8');
      const lines = text.split(/\r?\n|\r/);
      partial[stream] = lines.pop() ?? '';
      for (const l of lines) if (l.trim()) opts.onLine(l, stream);
    };
    child.stdout?.on('data', (c: Buffer) => {
      if (outLen < maxStdout) {
        out.push(c);
        outLen += c.length;
      }
      feed('stdout', c);
    });
    child.stderr!.on('data', (c: Buffer) => {
      errTail = (errTail + c.toString('utf8')).slice(-STDERR_KEEP);
      feed('stderr', c);
    });
    if (opts.input !== undefined) {
      child.stdin!.on('error', () => {}); // EPIPE if the child exits early; reported through its exit code
      child.stdin!.end(opts.input);
    }

    let killTimer: NodeJS.Timeout | undefined;
    const onAbort = () => {
      child.kill('SIGTERM');
      killTimer = setTimeout(() => child.kill('SIGKILL'), opts.killGraceMs ?? 3000);
      killTimer.unref();
    };
    signal?.addEventListener('abort', onAbort, { once: true });

    child.on('error', (err) => {
      signal?.removeEventListener('abort', onAbort);
      if (killTimer) clearTimeout(killTimer);
      reject(new HostFailureError(`cannot run ${cmd}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, sig) => {
      signal?.removeEventListener('abort', onAbort);
      if (killTimer) clearTimeout(killTimer);
      for (const s of ['stdout', 'stderr'] as const) {
        if (opts.onLine && partial[s].trim()) opts.onLine(partial[s], s);
      }
      const stdout = Buffer.concat(out).toString('utf8');
      if (signal?.aborted) return reject(abortedError(cmd, signal));
      const ok = opts.okCodes ?? [0];
      if (code !== null && ok.includes(code)) return resolve({ code, stdout, stderr: errTail });
      const how = code !== null ? `exit code ${code}` : `signal ${sig}`;
      const tail = errTail.trim().split('\n').slice(-20).join('\n');
      reject(new HostFailureError(`${formatCommand(cmd, args)} failed (${how})${tail ? `:\n${tail}` : ''}`));
    });
  });
};

/** Root tools (debootstrap, mkfs.ext4, …) live in sbin, which a non-login PATH may lack. */
export function withSbin(path: string | undefined): string {
  const parts = (path ?? '/usr/local/bin:/usr/bin:/bin').split(':').filter(Boolean);
  for (const d of ['/usr/local/sbin', '/usr/sbin', '/sbin']) if (!parts.includes(d)) parts.push(d);
  return parts.join(':');
}

function abortedError(cmd: string, signal: AbortSignal): AbortedError {
  const e = new AbortedError(`${cmd} was cancelled`);
  (e as { cause?: unknown }).cause = signal.reason;
  return e;
}

/** True if `cmd` can be found on PATH (plus the sbin directories) or is an existing absolute path. */
export async function haveCommand(cmd: string): Promise<boolean> {
  const dirs = cmd.includes('/') ? [''] : withSbin(process.env.PATH).split(delimiter);
  for (const d of dirs) {
    try {
      await access(d ? join(d, cmd) : cmd, constants.X_OK);
      return true;
    } catch {
      /* next */
    }
  }
  return false;
}
