import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import type { ProcessEvent } from '../gen/process/process_pb.js';
import { Signal, StartRequestSchema } from '../gen/process/process_pb.js';
import { mapConnectError, openStream, type EnvdClients } from './envd.js';
import { reattachAfter, reattachVia, type Reattach } from './commands.js';

export interface PtySize {
  cols: number;
  rows: number;
}

export interface PtyResult {
  /** −1 when the shell was killed by a signal. */
  exitCode: number;
  /** The agent's error text for a non-zero exit (e.g. "exit status 2", "signal: killed"). */
  error?: string;
}

export interface PtyCreateOptions extends PtySize {
  cwd?: string;
  /** Added to TERM=xterm-256color, LANG/LC_ALL=C.UTF-8 (E2B's defaults); yours win. */
  envs?: Record<string, string>;
  user?: string;
  /** Terminal output, raw bytes as they arrive; awaited (a slow consumer slows the shell). */
  onData?: (bytes: Uint8Array) => unknown; // awaited when it returns a promise
  /** Kills the shell after this long; default 0: no limit (E2B's default is 60 s). */
  timeoutMs?: number;
  /** Program to run instead of `/bin/bash -i -l`. */
  cmd?: string;
  args?: string[];
  /** Aborting disconnects (like disconnect()); it does not kill the shell. */
  signal?: AbortSignal;
}

export interface PtyConnectOptions {
  onData?: (bytes: Uint8Array) => unknown; // awaited when it returns a promise
  signal?: AbortSignal;
}

/**
 * An interactive terminal in the sandbox. Output goes to `onData`; `disconnect()` stops
 * receiving it while the shell keeps running (reattach with `sandbox.pty.connect(pid)`).
 */
export class PtyHandle {
  private readonly done: Promise<PtyResult | undefined>;

  constructor(
    readonly pid: number,
    private readonly clients: EnvdClients,
    private readonly events: AsyncIterator<ProcessEvent | undefined>,
    private readonly abort: AbortController,
    private readonly onData?: (bytes: Uint8Array) => unknown,
    private readonly reattach?: Reattach,
  ) {
    this.done = this.pump();
    this.done.catch(() => undefined);
  }

  private async pump(): Promise<PtyResult | undefined> {
    let events = this.events;
    for (;;) {
      const current = events; // finally below releases this stream, not one a reattach opens
      try {
        for (;;) {
          const next = await events.next();
          if (next.done) throw new ConnectError('the terminal stream ended without an end event', Code.Aborted);
          const ev = next.value?.event;
          if (!ev) continue;
          if (ev.case === 'data' && ev.value.output.case === 'pty') await this.onData?.(ev.value.output.value);
          else if (ev.case === 'end') return { exitCode: ev.value.exitCode, ...(ev.value.error ? { error: ev.value.error } : {}) };
        }
      } catch (err) {
        if (this.abort.signal.aborted) return undefined;
        // A pause cuts the stream; the shell was frozen with the VM: follow it after the resume.
        const again = await reattachAfter(err, this.reattach, this.pid, this.abort.signal);
        if (this.abort.signal.aborted) return undefined;
        if (!again) throw mapConnectError(err);
        events = again;
      } finally {
        void current.return?.().catch(() => undefined);
      }
    }
  }

  /**
   * Resolves when the shell exits (whatever the exit code), or with `undefined` after
   * disconnect(). Rejects if the connection fails.
   */
  wait(): Promise<PtyResult | undefined> {
    return this.done;
  }

  /** Types into the terminal (keystrokes, control characters such as "\x03" for Ctrl-C). */
  async sendInput(data: string | Uint8Array): Promise<void> {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    await this.clients.process
      .sendInput({ process: { selector: { case: 'pid', value: this.pid } }, input: { input: { case: 'pty', value: bytes } } })
      .catch((e: unknown) => { throw mapConnectError(e); });
  }

  /** New window size (TIOCSWINSZ; the shell gets SIGWINCH). */
  async resize(size: PtySize): Promise<void> {
    await this.clients.process
      .update({ process: { selector: { case: 'pid', value: this.pid } }, pty: { size: { cols: size.cols, rows: size.rows } } })
      .catch((e: unknown) => { throw mapConnectError(e); });
  }

  /** SIGKILL; false if it was already gone. */
  async kill(): Promise<boolean> {
    return killPid(this.clients, this.pid);
  }

  /** Stops receiving output; the shell keeps running. */
  disconnect(): void {
    this.abort.abort();
  }
}

async function killPid(clients: EnvdClients, pid: number): Promise<boolean> {
  try {
    await clients.process.sendSignal({ process: { selector: { case: 'pid', value: pid } }, signal: Signal.SIGKILL });
    return true;
  } catch (err) {
    const e = mapConnectError(err);
    if (e.name === 'NotFoundError') return false;
    throw e;
  }
}

function linkAbort(outer: AbortSignal | undefined, inner: AbortController): void {
  if (!outer) return;
  if (outer.aborted) inner.abort();
  else outer.addEventListener('abort', () => inner.abort(), { once: true });
}

export class Pty {
  /** `userClients(user)` gives clients authenticating as another user (for `create({ user })`). */
  constructor(
    private readonly clients: EnvdClients,
    private readonly userClients?: (user: string) => EnvdClients,
    /** The sandbox's state from the API: lets terminals follow their shell across a pause. */
    private readonly state?: () => Promise<string | undefined>,
  ) {}

  /** Starts an interactive login shell (`/bin/bash -i -l`) on a new terminal. */
  async create(opts: PtyCreateOptions): Promise<PtyHandle> {
    const clients = opts.user && this.userClients ? this.userClients(opts.user) : this.clients;
    const req = create(StartRequestSchema, {
      process: {
        cmd: opts.cmd ?? '/bin/bash',
        args: opts.args ?? ['-i', '-l'],
        envs: { TERM: 'xterm-256color', LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8', ...opts.envs },
        ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
      },
      pty: { size: { cols: opts.cols, rows: opts.rows } },
    });
    const abort = new AbortController();
    linkAbort(opts.signal, abort);
    const timeoutMs = opts.timeoutMs ?? 0;
    const stream = clients.process.start(req, { signal: abort.signal, ...(timeoutMs > 0 ? { timeoutMs } : {}) });
    const { pid, events } = await openStream(stream);
    return new PtyHandle(pid, clients, events, abort, opts.onData, this.state ? reattachVia(clients, this.state) : undefined);
  }

  /** Reattaches to a running terminal by pid (output produced meanwhile is not replayed). */
  async connect(pid: number, opts: PtyConnectOptions = {}): Promise<PtyHandle> {
    const abort = new AbortController();
    linkAbort(opts.signal, abort);
    const stream = this.clients.process.connect({ process: { selector: { case: 'pid', value: pid } } }, { signal: abort.signal });
    const { pid: got, events } = await openStream(stream);
    return new PtyHandle(got, this.clients, events, abort, opts.onData, this.state ? reattachVia(this.clients, this.state) : undefined);
  }

  /** SIGKILL by pid; false if it was already gone. */
  kill(pid: number): Promise<boolean> {
    return killPid(this.clients, pid);
  }
}
