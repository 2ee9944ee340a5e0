import { create } from '@bufbuild/protobuf';
import type { ProcessEvent } from '../gen/process/process_pb.js';
import { Signal, StartRequestSchema } from '../gen/process/process_pb.js';
import { Code, ConnectError } from '@connectrpc/connect';
import { CommandExitError } from './errors.js';
import { mapConnectError, openStream, type EnvdClients } from './envd.js';

/**
 * How a handle finds its process again when its stream breaks: the sandbox's state from the
 * API, and a Process/Connect stream by pid.
 */
export interface Reattach {
  state: () => Promise<string | undefined>;
  connect: (pid: number, signal?: AbortSignal) => Promise<AsyncIterator<ProcessEvent | undefined>>;
}

const PAUSED = new Set(['pausing', 'paused', 'resuming']);
const REATTACH_CODES = new Set([Code.Unavailable, Code.Aborted, Code.Unknown, Code.Internal]);
const sleep = (ms: number, signal?: AbortSignal) => new Promise<void>((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

/**
 * A process's stream broke: when the sandbox was paused (the VM stops and its connections with
 * it), wait for it to run again and reconnect to the process, which was frozen with it. Not
 * after the command's own timeout, the caller's abort, an error thrown by a callback, or when
 * the sandbox is gone (then undefined: the caller reports the original error).
 */
export async function reattachAfter(err: unknown, reattach: Reattach | undefined, pid: number, signal?: AbortSignal): Promise<AsyncIterator<ProcessEvent | undefined> | undefined> {
  if (!reattach || signal?.aborted) return undefined;
  if (!(err instanceof ConnectError) || !REATTACH_CODES.has(err.code)) return undefined;
  let wait = 500;
  let tries = 0;
  for (;;) {
    const state = await reattach.state().catch(() => undefined);
    if (signal?.aborted) return undefined;
    if (state && PAUSED.has(state)) { await sleep(wait, signal); wait = Math.min(wait * 2, 1000); continue; }
    if (state !== 'running' || ++tries > 3) return undefined;
    try {
      return await reattach.connect(pid, signal);
    } catch (e) {
      if (mapConnectError(e).name === 'NotFoundError') return undefined; // the process is gone
      await sleep(500, signal);
    }
  }
}

/** A Reattach over these clients: Process/Connect by pid. */
export function reattachVia(clients: EnvdClients, state: () => Promise<string | undefined>): Reattach {
  return {
    state,
    connect: async (pid, signal) => (await openStream(clients.process.connect({ process: { selector: { case: 'pid', value: pid } } }, signal ? { signal } : {}))).events,
  };
}

/** Output callbacks and collection for `commands.connect(pid)`. */
export type ConnectOptions = Pick<RunOptions, 'onStdout' | 'onStderr' | 'onData' | 'collect' | 'signal'>;

export interface CommandResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  /** The agent's error text for a non-zero exit (e.g. "exit status 2"). */
  error?: string;
}

export interface RunOptions {
  envs?: Record<string, string>;
  cwd?: string;
  user?: string;
  /** Kills the command after this long; default 60 000 ms; 0 means no limit. */
  timeoutMs?: number;
  onStdout?: (text: string) => unknown; // awaited when it returns a promise
  onStderr?: (text: string) => unknown; // awaited when it returns a promise
  /** Raw bytes as they arrive; awaited, so a slow consumer slows the command (backpressure). */
  onData?: (stream: 'stdout' | 'stderr', bytes: Uint8Array) => unknown; // awaited when it returns a promise
  /** Keep a stdin pipe open for sendStdin/closeStdin (default false: stdin is /dev/null). */
  stdin?: boolean;
  /** Return a handle once started instead of waiting for the end. */
  background?: boolean;
  /** Accumulate stdout/stderr in the result (default true; turn off for huge outputs). */
  collect?: boolean;
  tag?: string;
  signal?: AbortSignal;
}

/** A started command: wait for it, feed it, or kill it. */
export class CommandHandle {
  private stdout = '';
  private stderr = '';
  private readonly done: Promise<CommandResult>;

  constructor(
    readonly pid: number,
    private readonly clients: EnvdClients,
    events: AsyncIterator<ProcessEvent | undefined>,
    private readonly opts: RunOptions,
    private readonly reattach?: Reattach,
  ) {
    this.done = this.pump(events);
    this.done.catch(() => undefined);
  }

  private async pump(first: AsyncIterator<ProcessEvent | undefined>): Promise<CommandResult> {
    const collect = this.opts.collect !== false;
    const dec = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    let events = first;
    for (;;) {
      const current = events; // finally below must release this stream, not the one a reattach opens
      try {
        for (;;) {
          const next = await events.next();
          if (next.done) throw new ConnectError('the command stream ended without an end event', Code.Aborted);
          const ev = next.value?.event;
          if (!ev) continue;
          if (ev.case === 'data') {
            const out = ev.value.output;
            if (out.case !== 'stdout' && out.case !== 'stderr') continue;
            const stream = out.case;
            await this.opts.onData?.(stream, out.value);
            if (collect || (stream === 'stdout' ? this.opts.onStdout : this.opts.onStderr)) {
              const text = dec[stream].decode(out.value, { stream: true });
              if (collect) { if (stream === 'stdout') this.stdout += text; else this.stderr += text; }
              await (stream === 'stdout' ? this.opts.onStdout : this.opts.onStderr)?.(text);
            }
          } else if (ev.case === 'end') {
            return { exitCode: ev.value.exitCode, stdout: this.stdout, stderr: this.stderr, ...(ev.value.error ? { error: ev.value.error } : {}) };
          }
        }
      } catch (err) {
        const again = await reattachAfter(err, this.reattach, this.pid, this.opts.signal);
        if (!again) throw mapConnectError(err);
        events = again;
      } finally {
        // The end event is the last thing a command sends: finish the call (and its timers) in the background.
        void current.return?.().catch(() => undefined);
      }
    }
  }

  /** Resolves with the result; rejects with CommandExitError on a non-zero exit. */
  async wait(): Promise<CommandResult> {
    const r = await this.done;
    if (r.exitCode !== 0) throw new CommandExitError(r.exitCode, r.stdout, r.stderr, r.error);
    return r;
  }

  /** The result whatever the exit code. */
  result(): Promise<CommandResult> { return this.done; }

  async sendStdin(data: string | Uint8Array): Promise<void> {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    await this.clients.process.sendInput({ process: { selector: { case: 'pid', value: this.pid } }, input: { input: { case: 'stdin', value: bytes } } })
      .catch((e: unknown) => { throw mapConnectError(e); });
  }

  async closeStdin(): Promise<void> {
    await this.clients.process.closeStdin({ process: { selector: { case: 'pid', value: this.pid } } }).catch((e: unknown) => { throw mapConnectError(e); });
  }

  /** SIGKILL; false if the process was already gone. */
  async kill(signal: 'SIGKILL' | 'SIGTERM' = 'SIGKILL'): Promise<boolean> {
    try {
      await this.clients.process.sendSignal({ process: { selector: { case: 'pid', value: this.pid } }, signal: signal === 'SIGKILL' ? Signal.SIGKILL : Signal.SIGTERM });
      return true;
    } catch (err) {
      const e = mapConnectError(err);
      if (e.name === 'NotFoundError') return false;
      throw e;
    }
  }
}

export class Commands {
  /** `state` (the sandbox's state from the API) lets handles reattach across a pause. */
  constructor(private readonly clients: EnvdClients, private readonly state?: () => Promise<string | undefined>) {}

  private reattach(): Reattach | undefined {
    return this.state ? reattachVia(this.clients, this.state) : undefined;
  }

  /**
   * Attach to a running process by pid (one started in the background, by another client, or
   * before a pause): its output from now on, and its result. Output it produced before is not
   * replayed. Rejects with NotFoundError when no such process runs.
   */
  async connect(pid: number, opts: ConnectOptions = {}): Promise<CommandHandle> {
    const stream = this.clients.process.connect({ process: { selector: { case: 'pid', value: pid } } }, opts.signal ? { signal: opts.signal } : {});
    const { pid: got, events } = await openStream(stream);
    return new CommandHandle(got, this.clients, events, opts, this.reattach());
  }

  /**
   * Run a command. A string runs under `/bin/bash -l -c` (as E2B does); an
   * array runs that program with those arguments, no shell.
   */
  async run(cmd: string | string[], opts: RunOptions & { background: true }): Promise<CommandHandle>;
  async run(cmd: string | string[], opts?: RunOptions): Promise<CommandResult>;
  async run(cmd: string | string[], opts: RunOptions = {}): Promise<CommandResult | CommandHandle> {
    const [bin, args] = typeof cmd === 'string' ? ['/bin/bash', ['-l', '-c', cmd]] : [cmd[0] ?? '', cmd.slice(1)];
    const req = create(StartRequestSchema, {
      process: { cmd: bin, args, envs: opts.envs ?? {}, ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}) },
      stdin: opts.stdin ?? false,
      ...(opts.tag !== undefined ? { tag: opts.tag } : {}),
    });
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const stream = this.clients.process.start(req, { ...(timeoutMs > 0 ? { timeoutMs } : {}), ...(opts.signal ? { signal: opts.signal } : {}) });
    const { pid, events } = await openStream(stream);
    const handle = new CommandHandle(pid, this.clients, events, opts, this.reattach());
    if (opts.background) return handle;
    return handle.wait();
  }

  async list(signal?: AbortSignal): Promise<{ pid: number; cmd: string; args: string[]; tag?: string }[]> {
    const res = await this.clients.process.list({}, signal ? { signal } : {}).catch((e: unknown) => { throw mapConnectError(e); });
    return res.processes.map((p) => ({ pid: p.pid, cmd: p.config?.cmd ?? '', args: p.config?.args ?? [], ...(p.tag !== undefined ? { tag: p.tag } : {}) }));
  }

  async kill(pid: number, signal?: AbortSignal): Promise<boolean> {
    try {
      await this.clients.process.sendSignal({ process: { selector: { case: 'pid', value: pid } }, signal: Signal.SIGKILL }, signal ? { signal } : {});
      return true;
    } catch (err) {
      const e = mapConnectError(err);
      if (e.name === 'NotFoundError') return false;
      throw e;
    }
  }
}
