import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { Code, ConnectError } from '@connectrpc/connect';
import type { UserCgroup } from './cgroup.js';
import { errorMessage } from './log.js';
import type { ExitStatus, ProcessBackend, SpawnSpec, SpawnedProcess } from './process-backend.js';

/**
 * Raises the user process's OOM score (the agent protects itself with a negative one, which
 * children would inherit), then execs the real command, keeping the pid. Same idea as envd.
 */
const OOM_WRAPPER = '{ echo 100 > /proc/$$/oom_score_adj; } 2>/dev/null; exec "$@"';

function findExecutable(candidates: string[]): string | undefined {
  return candidates.find((c) => existsSync(c));
}

export interface PipeBackendOptions {
  cgroup: UserCgroup;
}

/** Runs processes with stdin/stdout/stderr pipes, in their own session and process group. */
export class PipeBackend implements ProcessBackend {
  private readonly sh = findExecutable(['/bin/sh', '/usr/bin/sh']);
  private readonly setpriv = findExecutable(['/usr/bin/setpriv', '/bin/setpriv']);
  private readonly isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

  constructor(private readonly opts: PipeBackendOptions) {}

  /** argv and spawn credentials for `spec`, switching user with setpriv (keeps supplementary groups) when possible. */
  private command(spec: SpawnSpec): { file: string; argv: string[]; uid?: number; gid?: number } {
    let file = spec.cmd;
    let argv = spec.args;
    if (this.sh) {
      argv = ['-c', OOM_WRAPPER, '--', file, ...argv];
      file = this.sh;
    }
    if (!this.isRoot || spec.user.uid === 0) return { file, argv };
    if (this.setpriv) {
      return {
        file: this.setpriv,
        argv: ['--reuid', String(spec.user.uid), '--regid', String(spec.user.gid), '--init-groups', '--', file, ...argv],
      };
    }
    // libuv's setuid path drops supplementary groups; acceptable fallback.
    return { file, argv, uid: spec.user.uid, gid: spec.user.gid };
  }

  async spawn(spec: SpawnSpec): Promise<SpawnedProcess> {
    if (spec.pty) throw new ConnectError('pipe backend cannot run a PTY', Code.Internal);
    const { file, argv, uid, gid } = this.command(spec);
    let child: ChildProcess;
    try {
      child = spawn(file, argv, {
        cwd: spec.cwd,
        env: spec.env,
        stdio: [spec.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
        detached: true, // own session + process group, so signals can reach the whole command
        uid,
        gid,
        windowsHide: true,
      });
    } catch (e) {
      throw new ConnectError(`error starting process '${spec.cmd}': ${errorMessage(e)}`, Code.InvalidArgument);
    }
    if (child.pid === undefined) {
      const err = await new Promise<Error>((resolve) => child.once('error', resolve));
      throw new ConnectError(`error starting process '${spec.cmd}': ${errorMessage(err)}`, Code.InvalidArgument);
    }
    this.opts.cgroup.add(child.pid);
    return new PipeProcess(child, child.pid);
  }
}

class PipeProcess implements SpawnedProcess {
  readonly isPty = false;
  readonly outputs;
  readonly exited: Promise<ExitStatus>;
  private stdinOpen: boolean;
  private hasExited = false;

  constructor(
    private readonly child: ChildProcess,
    readonly pid: number,
  ) {
    this.outputs = [
      { kind: 'stdout' as const, stream: child.stdout! },
      { kind: 'stderr' as const, stream: child.stderr! },
    ];
    this.stdinOpen = child.stdin !== null;
    // EPIPE after the process exits must not crash the agent; writes report it through callbacks.
    child.stdin?.on('error', () => {
      this.stdinOpen = false;
    });
    child.on('error', () => {
      // 'error' after a successful spawn: failed kill()/send(); nothing to do.
    });
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.hasExited = true;
        resolve({ code, signal });
      });
    });
  }

  get inputOpen(): boolean {
    return this.stdinOpen && !this.hasExited;
  }

  write(data: Uint8Array): Promise<void> {
    const stdin = this.child.stdin;
    if (!stdin || !this.stdinOpen) return Promise.reject(new Error('stdin not enabled or closed'));
    if (data.length === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      stdin.write(data, (err) => {
        if (err) reject(new Error(`error writing to stdin of process '${this.pid}': ${err.message}`));
        else resolve();
      });
    });
  }

  closeStdin(): void {
    if (!this.child.stdin || !this.stdinOpen) return;
    this.stdinOpen = false;
    this.child.stdin.end();
  }

  resize(): void {
    throw new Error('tty not assigned to process');
  }

  signal(sig: NodeJS.Signals): void {
    if (this.hasExited) return;
    try {
      process.kill(-this.pid, sig);
    } catch {
      try {
        process.kill(this.pid, sig);
      } catch {
        // already gone
      }
    }
  }
}
