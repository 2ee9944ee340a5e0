import { spawn } from 'node:child_process';
import { AbortedError, HostFailureError } from '../../core/errors.js';
import type { CommandRunner } from '../../util/exec.js';

/**
 * `runCommand` from src/util/exec.ts with one difference: an 'error' listener
 * on the child's stdin. Without it, a child that exits (closing its stdin)
 * before the parent's `stdin.end()` makes Node emit an unhandled EPIPE and
 * end the process; slot set-up and teardown run many short-lived `ip`
 * commands and hit that race (seen here in a teardown loop). Same contract
 * as runCommand otherwise; once exec.ts guards stdin this can go.
 */
export const netRunner: CommandRunner = (cmd, args, opts = {}) =>
  new Promise((resolve, reject) => {
    if (opts.signal?.aborted) { reject(new AbortedError(`${cmd} not started: cancelled`)); return; }
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdin.on('error', () => { /* EPIPE: the child closed stdin; its exit status tells the rest */ });
    child.stdout.setEncoding('utf8').on('data', (d: string) => { if (stdout.length < 1 << 20) stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { if (stderr.length < 1 << 16) stderr += d; });
    const onAbort = (): void => { child.kill('SIGKILL'); };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (err) => {
      opts.signal?.removeEventListener('abort', onAbort);
      reject(new HostFailureError(`${cmd}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, sig) => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (opts.signal?.aborted) { reject(new AbortedError(`${cmd} cancelled`)); return; }
      const rc = code ?? (sig ? 128 : 1);
      if (rc !== 0 && !opts.allowFailure) {
        reject(new HostFailureError(`${cmd} ${args.join(' ')} failed (exit ${rc}${sig ? `, ${sig}` : ''}): ${stderr.trim() || stdout.trim()}`));
        return;
      }
      resolve({ stdout, stderr, code: rc });
    });
    child.stdin.end(opts.input ?? '');
  });
