import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import type { Socket } from 'node:net';
import { Code, ConnectError } from '@connectrpc/connect';
import { errorMessage, log } from './log.js';
import type { ExitStatus, ProcessBackend, SpawnSpec, SpawnedProcess } from './process-backend.js';

/**
 * PTY sessions through the static `hearth-pty` helper (native/pty/hearth-pty.c, installed in the
 * image at /usr/local/lib/hearth/hearth-pty). Node has no openpty and the agent takes no native
 * npm modules, so the helper owns the terminal: it opens a PTY, runs the command on it in a new
 * session, and relays the master over its stdin/stdout pipes. fd 3 is a control channel (a
 * socketpair from libuv) carrying newline-terminated text messages:
 *
 *   agent → helper: `resize <cols> <rows>` (TIOCSWINSZ; the kernel sends SIGWINCH)
 *   helper → agent: `pid <pid>` (exec'd) | `error <errno> <text>` | `exit <code>` | `signal <signo>`
 *
 * The pid the agent reports (and signals, as a process group) is the command's, not the helper's.
 */
/** Same OOM wrapper as the pipe backend (process-pipe.ts): raise the user process's OOM score, exec the command. */
const OOM_WRAPPER = '{ echo 100 > /proc/$$/oom_score_adj; } 2>/dev/null; exec "$@"';
/** How long the helper may take to report the command's pid. */
const START_TIMEOUT_MS = 10_000;

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(
  Object.entries(osConstants.signals).map(([name, num]) => [num, name as NodeJS.Signals]),
);

function findExecutable(candidates: string[]): string | undefined {
  return candidates.find((c) => existsSync(c));
}

export interface PtyBackendOptions {
  /** Path of the hearth-pty helper binary. */
  helperPath: string;
  /** cgroup (v2) directory for user processes; the helper moves itself there before forking. '' = none. */
  userCgroupDir: string;
}

export class PtyBackend implements ProcessBackend {
  private readonly sh = findExecutable(['/bin/sh', '/usr/bin/sh']);
  private readonly setpriv = findExecutable(['/usr/bin/setpriv', '/bin/setpriv']);
  private readonly isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

  constructor(private readonly opts: PtyBackendOptions) {}

  /** The helper's argv after its options: OOM wrapper, then setpriv to the user when running as root. */
  private command(spec: SpawnSpec): string[] {
    let argv = [spec.cmd, ...spec.args];
    if (this.sh) argv = [this.sh, '-c', OOM_WRAPPER, '--', ...argv];
    if (!this.isRoot || spec.user.uid === 0) return argv;
    if (!this.setpriv) {
      throw new ConnectError('PTY sessions for other users need setpriv (util-linux)', Code.InvalidArgument);
    }
    return [this.setpriv, '--reuid', String(spec.user.uid), '--regid', String(spec.user.gid), '--init-groups', '--', ...argv];
  }

  async spawn(spec: SpawnSpec): Promise<SpawnedProcess> {
    if (!spec.pty) throw new ConnectError('pty backend needs a pty size', Code.Internal);
    const helper = this.opts.helperPath;
    if (!helper || !existsSync(helper)) {
      throw new ConnectError(`PTY sessions are not supported: helper ${helper || '(none)'} not found`, Code.Unimplemented);
    }
    const cols = Math.max(1, Math.min(65535, Math.floor(spec.pty.cols) || 80));
    const rows = Math.max(1, Math.min(65535, Math.floor(spec.pty.rows) || 24));
    const args = ['-c', String(cols), '-r', String(rows)];
    if (this.isRoot && spec.user.uid !== 0) args.push('-u', String(spec.user.uid));
    const cg = this.opts.userCgroupDir;
    if (cg && existsSync(cg)) args.push('-C', path.join(cg, 'cgroup.procs'));
    args.push('--', ...this.command(spec));
    let child: ChildProcess;
    try {
      child = spawn(helper, args, {
        cwd: spec.cwd,
        env: spec.env,
        stdio: ['pipe', 'pipe', 'pipe', 'pipe'],
        detached: true,
        windowsHide: true,
      });
    } catch (e) {
      throw new ConnectError(`error starting pty for '${spec.cmd}': ${errorMessage(e)}`, Code.InvalidArgument);
    }
    const proc = new PtyProcess(child);
    try {
      await proc.started;
    } catch (e) {
      throw new ConnectError(`error starting pty for '${spec.cmd}': ${errorMessage(e)}`, Code.InvalidArgument);
    }
    return proc;
  }
}

class PtyProcess implements SpawnedProcess {
  readonly isPty = true;
  readonly outputs;
  readonly exited: Promise<ExitStatus>;
  /** Resolves once the helper reported the command's pid; rejects if it could not start it. */
  readonly started: Promise<void>;
  private commandPid = 0;
  private stdinOpen = true;
  private hasExited = false;
  private helperStderr = '';
  private readonly ctl: Socket;

  constructor(private readonly child: ChildProcess) {
    this.ctl = child.stdio[3] as Socket;
    this.outputs = [{ kind: 'pty' as const, stream: child.stdout! }];
    child.stdin!.on('error', () => {
      this.stdinOpen = false;
    });
    this.ctl.on('error', () => undefined);
    child.on('error', () => undefined);
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      if (this.helperStderr.length < 4096) this.helperStderr += d;
    });

    let resolveExit!: (s: ExitStatus) => void;
    this.exited = new Promise((r) => (resolveExit = r));
    const exit = (s: ExitStatus): void => {
      if (this.hasExited) return;
      this.hasExited = true;
      resolveExit(s);
    };
    let resolveStart!: () => void;
    let rejectStart!: (e: Error) => void;
    this.started = new Promise((res, rej) => {
      resolveStart = res;
      rejectStart = rej;
    });
    const timer = setTimeout(() => {
      rejectStart(new Error('the pty helper did not start the command in time'));
      this.killHelper();
    }, START_TIMEOUT_MS);

    let buf = '';
    this.ctl.setEncoding('utf8');
    this.ctl.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const [word, a, ...rest] = line.split(' ');
        const n = Number(a);
        if (word === 'pid' && Number.isInteger(n) && n > 0) {
          this.commandPid = n;
          clearTimeout(timer);
          resolveStart();
        } else if (word === 'error') {
          clearTimeout(timer);
          rejectStart(new Error(rest.join(' ') || `errno ${a}`));
        } else if (word === 'exit' && Number.isInteger(n)) {
          exit({ code: n, signal: null });
        } else if (word === 'signal' && Number.isInteger(n)) {
          exit({ code: null, signal: SIGNAL_NAMES.get(n) ?? ('SIGKILL' as NodeJS.Signals) });
        }
      }
      if (buf.length > 4096) buf = '';
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      rejectStart(new Error(this.helperStderr.trim() || `the pty helper exited (${signal ?? code}) before starting the command`));
      // Normally the helper reported the command's status on fd 3 first; this is the fallback.
      if (!this.hasExited) {
        log.warn('pty helper exited without reporting a status', { pid: this.commandPid, code, signal });
        exit({ code: signal ? null : (code ?? 0), signal: signal ?? null });
      }
      this.ctl.destroy();
    });
  }

  get pid(): number {
    return this.commandPid;
  }

  get inputOpen(): boolean {
    return this.stdinOpen && !this.hasExited;
  }

  write(data: Uint8Array): Promise<void> {
    const stdin = this.child.stdin;
    if (!stdin || !this.inputOpen) return Promise.reject(new Error('pty is closed'));
    if (data.length === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      stdin.write(data, (err) => {
        if (err) reject(new Error(`error writing to pty of process '${this.pid}': ${err.message}`));
        else resolve();
      });
    });
  }

  /** Only called when the process finished (the service refuses CloseStdin for PTYs): release the pipes. */
  closeStdin(): void {
    if (this.stdinOpen) {
      this.stdinOpen = false;
      this.child.stdin?.end();
    }
    this.ctl.end();
  }

  resize(cols: number, rows: number): void {
    if (this.hasExited || this.ctl.destroyed || !this.ctl.writable) throw new Error('pty is closed');
    const c = Math.floor(cols);
    const r = Math.floor(rows);
    if (!(c >= 1 && c <= 65535 && r >= 1 && r <= 65535)) throw new Error(`invalid size ${cols}x${rows}`);
    this.ctl.write(`resize ${c} ${r}\n`);
  }

  signal(sig: NodeJS.Signals): void {
    if (this.hasExited || this.commandPid <= 0) return;
    try {
      process.kill(-this.commandPid, sig);
    } catch {
      try {
        process.kill(this.commandPid, sig);
      } catch {
        // already gone
      }
    }
  }

  private killHelper(): void {
    try {
      if (this.child.pid) process.kill(this.child.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
}
