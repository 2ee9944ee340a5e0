import { spawn } from 'node:child_process';
import { AbortedError, HostFailureError } from '../core/errors.js';

export interface RunResult { stdout: string; stderr: string; code: number }

/**
 * The one way Hearth runs host commands: an argument array (never a shell
 * string), stderr kept for the error message, the child killed on abort.
 * Tests inject their own `CommandRunner` to simulate failures.
 */
export type CommandRunner = (cmd: string, args: readonly string[], opts?: { signal?: AbortSignal; input?: string; allowFailure?: boolean }) => Promise<RunResult>;

export const runCommand: CommandRunner = (cmd, args, opts = {}) =>
  new Promise((resolve, reject) => {
    if (opts.signal?.aborted) { reject(new AbortedError(`${cmd} not started: cancelled`)); return; }
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
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
    // A child that exits before reading its stdin makes this write fail with EPIPE: not our error to raise.
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
