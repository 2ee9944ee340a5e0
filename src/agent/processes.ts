import { promises as fsp } from 'node:fs';
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import {
  CloseStdinResponseSchema,
  ConnectResponseSchema,
  ListResponseSchema,
  Process,
  ProcessConfigSchema,
  ProcessEventSchema,
  ProcessEvent_EndEventSchema,
  ProcessInfoSchema,
  SendInputResponseSchema,
  SendSignalResponseSchema,
  Signal,
  StartResponseSchema,
  UpdateResponseSchema,
  type ConnectResponse,
  type ProcessConfig,
  type ProcessEvent,
  type ProcessEvent_EndEvent,
  type ProcessSelector,
  type StartResponse,
} from '../gen/process/process_pb.js';
import { errorMessage, log } from './log.js';
import { PathError, expandAndResolve } from './paths.js';
import type { ExitStatus, OutputKind, ProcessBackend, SpawnSpec, SpawnedProcess } from './process-backend.js';
import {
  DEFAULT_KEEPALIVE_SECONDS,
  EXIT_RETENTION_MS,
  HEADER_KEEPALIVE_PING_INTERVAL,
  PTY_CHUNK_BYTES,
  STD_CHUNK_BYTES,
} from './protocol.js';
import { EventQueue, keepaliveMs } from './queue.js';
import { rpcUser } from './rpc-user.js';
import type { AgentState } from './state.js';

/**
 * Backpressure: a subscriber (one response stream) may have at most HIGH_WATER bytes of output
 * queued; above that the process's output streams are paused (the pipe fills and the child blocks
 * in write), and they resume when every subscriber is back under LOW_WATER.
 */
const HIGH_WATER = 512 * 1024;
const LOW_WATER = 128 * 1024;
/** After exit, how long output may stay open without progress before it is cut (orphans holding the pipe). */
const EXIT_DRAIN_GRACE_MS = 200;
/** How long SendSignal(SIGKILL) waits for the process to be reaped, so `kill -0 <pid>` fails afterwards. */
const KILL_REAP_WAIT_MS = 2000;

/** Go's syscall.Signal.String() for the signals a status line may show. */
const GO_SIGNAL_NAMES: Record<string, string> = {
  SIGHUP: 'hangup',
  SIGINT: 'interrupt',
  SIGQUIT: 'quit',
  SIGILL: 'illegal instruction',
  SIGTRAP: 'trace/breakpoint trap',
  SIGABRT: 'aborted',
  SIGBUS: 'bus error',
  SIGFPE: 'floating point exception',
  SIGKILL: 'killed',
  SIGUSR1: 'user defined signal 1',
  SIGSEGV: 'segmentation fault',
  SIGUSR2: 'user defined signal 2',
  SIGPIPE: 'broken pipe',
  SIGALRM: 'alarm clock',
  SIGTERM: 'terminated',
  SIGSTKFLT: 'stack fault',
  SIGCHLD: 'child exited',
  SIGCONT: 'continued',
  SIGSTOP: 'stopped (signal)',
  SIGTSTP: 'stopped',
  SIGTTIN: 'stopped (tty input)',
  SIGTTOU: 'stopped (tty output)',
  SIGURG: 'urgent I/O condition',
  SIGXCPU: 'CPU time limit exceeded',
  SIGXFSZ: 'file size limit exceeded',
  SIGVTALRM: 'virtual timer expired',
  SIGPROF: 'profiling timer expired',
  SIGWINCH: 'window changed',
  SIGIO: 'I/O possible',
  SIGPWR: 'power failure',
  SIGSYS: 'bad system call',
};

/** End event as envd builds it from Go's ProcessState (exit code -1 when signalled). */
export function endEventFor(status: ExitStatus): ProcessEvent_EndEvent {
  if (status.signal !== null) {
    const text = `signal: ${GO_SIGNAL_NAMES[status.signal] ?? status.signal}`;
    return create(ProcessEvent_EndEventSchema, { exitCode: -1, exited: false, status: text, error: text });
  }
  const code = status.code ?? 0;
  const text = `exit status ${code}`;
  return create(ProcessEvent_EndEventSchema, {
    exitCode: code,
    exited: true,
    status: text,
    error: code !== 0 ? text : undefined,
  });
}

function dataEvent(kind: OutputKind, bytes: Uint8Array): ProcessEvent {
  return create(ProcessEventSchema, { event: { case: 'data', value: { output: { case: kind, value: bytes } } } });
}

function dataSize(ev: ProcessEvent): number {
  return ev.event.case === 'data' ? (ev.event.value.output.value?.length ?? 0) : 0;
}

/** One response stream's view of a process. */
class Subscriber {
  readonly queue = new EventQueue<ProcessEvent>();
  queuedBytes = 0;
}

/** A process the agent started, with its subscribers and (after exit) its end event. */
export class ManagedProcess {
  private readonly subscribers = new Set<Subscriber>();
  private paused = false;
  private outputStopped = false;
  private openOutputs: number;
  private exitStatus: ExitStatus | undefined;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private drainTimer: NodeJS.Timeout | undefined;
  end: ProcessEvent_EndEvent | undefined;
  readonly finished: Promise<void>;
  private resolveFinished!: () => void;

  constructor(
    readonly handle: SpawnedProcess,
    readonly config: ProcessConfig,
    readonly tag: string | undefined,
  ) {
    this.finished = new Promise((r) => (this.resolveFinished = r));
    this.openOutputs = handle.outputs.length;
    const chunk = handle.isPty ? PTY_CHUNK_BYTES : STD_CHUNK_BYTES;
    for (const { kind, stream } of handle.outputs) {
      let closed = false;
      const onClosed = () => {
        if (closed) return;
        closed = true;
        this.openOutputs--;
        this.maybeFinish();
      };
      stream.on('data', (buf: Buffer) => this.onData(kind, buf, chunk));
      stream.on('end', onClosed);
      stream.on('close', onClosed);
      stream.on('error', onClosed);
    }
    void handle.exited.then((status) => {
      this.exitStatus = status;
      if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
      this.maybeFinish();
    });
  }

  get pid(): number {
    return this.handle.pid;
  }

  get running(): boolean {
    return this.end === undefined;
  }

  private onData(kind: OutputKind, buf: Buffer, chunk: number): void {
    if (this.outputStopped || this.subscribers.size === 0) return;
    for (let off = 0; off < buf.length; off += chunk) {
      const piece = buf.subarray(off, Math.min(off + chunk, buf.length));
      const ev = dataEvent(kind, piece);
      for (const sub of this.subscribers) {
        sub.queue.push(ev);
        sub.queuedBytes += piece.length;
      }
    }
    if (!this.paused) {
      for (const sub of this.subscribers) {
        if (sub.queuedBytes > HIGH_WATER) {
          this.setPaused(true);
          break;
        }
      }
    }
  }

  private setPaused(paused: boolean): void {
    if (this.paused === paused) return;
    this.paused = paused;
    for (const { stream } of this.handle.outputs) {
      if (paused) stream.pause();
      else stream.resume();
    }
  }

  private maybeResume(): void {
    if (!this.paused) return;
    for (const sub of this.subscribers) if (sub.queuedBytes > LOW_WATER) return;
    this.setPaused(false);
  }

  /** New subscriber; its first event is start{pid}; a finished process also gets its end event. */
  subscribe(): Subscriber {
    const sub = new Subscriber();
    sub.queue.push(create(ProcessEventSchema, { event: { case: 'start', value: { pid: this.pid } } }));
    if (this.end) {
      sub.queue.push(create(ProcessEventSchema, { event: { case: 'end', value: this.end } }));
      sub.queue.close();
      return sub;
    }
    this.subscribers.add(sub);
    return sub;
  }

  unsubscribe(sub: Subscriber): void {
    if (this.subscribers.delete(sub)) this.maybeResume();
  }

  /** Called by the stream after it took `ev` off `sub`'s queue. */
  consumed(sub: Subscriber, ev: ProcessEvent): void {
    const n = dataSize(ev);
    if (n === 0) return;
    sub.queuedBytes -= n;
    if (sub.queuedBytes <= LOW_WATER) this.maybeResume();
  }

  /** Kills the process when the Start request's deadline (Connect-Timeout-Ms) passes. */
  setDeadline(ms: number): void {
    if (this.end || this.exitStatus) return;
    const delay = Math.max(0, Math.min(ms, 2_147_000_000));
    this.deadlineTimer = setTimeout(() => {
      log.info('process deadline reached, killing', { pid: this.pid });
      this.kill('SIGKILL');
    }, delay);
  }

  /** SIGKILL/SIGTERM: stop forwarding output at once (like envd), then signal the process group. */
  kill(sig: 'SIGKILL' | 'SIGTERM'): void {
    this.outputStopped = true;
    for (const sub of this.subscribers) {
      sub.queue.filter((ev) => ev.event.case !== 'data');
      sub.queuedBytes = 0;
    }
    this.setPaused(false);
    this.handle.signal(sig);
  }

  private maybeFinish(): void {
    if (this.end || !this.exitStatus) return;
    if (this.openOutputs <= 0) {
      this.finish();
      return;
    }
    // Exited but output still open: normally the last bytes are about to arrive. A background
    // child holding the pipe would keep it open forever, so cut it after a grace period that only
    // counts while output is flowing (not while paused for a slow reader).
    if (this.drainTimer) return;
    let unpausedMs = 0;
    this.drainTimer = setInterval(() => {
      if (this.openOutputs <= 0 || this.end) return this.finish();
      if (this.paused) return;
      unpausedMs += 50;
      if (unpausedMs >= EXIT_DRAIN_GRACE_MS) {
        for (const { stream } of this.handle.outputs) stream.destroy();
        this.finish();
      }
    }, 50);
  }

  private finish(): void {
    if (this.drainTimer) clearInterval(this.drainTimer);
    this.drainTimer = undefined;
    if (this.end) return;
    this.end = endEventFor(this.exitStatus!);
    const endEv = create(ProcessEventSchema, { event: { case: 'end', value: this.end } });
    for (const sub of this.subscribers) {
      sub.queue.push(endEv);
      sub.queue.close();
    }
    this.subscribers.clear();
    try {
      this.handle.closeStdin();
    } catch {
      // PTY or already closed
    }
    this.resolveFinished();
  }

  dispose(): void {
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    if (this.drainTimer) clearInterval(this.drainTimer);
  }
}

export interface ProcessServiceDeps {
  state: AgentState;
  pipeBackend: ProcessBackend;
  ptyBackend: ProcessBackend;
}

/** Tracks processes by pid; finished ones stay for EXIT_RETENTION_MS so Connect can still report their end. */
export class ProcessManager {
  private readonly byPid = new Map<number, ManagedProcess>();
  private readonly retention = new Set<NodeJS.Timeout>();

  add(proc: ManagedProcess): void {
    this.byPid.set(proc.pid, proc);
    void proc.finished.then(() => {
      const t = setTimeout(() => {
        this.retention.delete(t);
        if (this.byPid.get(proc.pid) === proc) this.byPid.delete(proc.pid);
        proc.dispose();
      }, EXIT_RETENTION_MS);
      t.unref?.();
      this.retention.add(t);
    });
  }

  find(selector: ProcessSelector | undefined): ManagedProcess | undefined {
    const sel = selector?.selector;
    if (!sel || sel.case === undefined) return undefined;
    if (sel.case === 'pid') return this.byPid.get(sel.value);
    let fallback: ManagedProcess | undefined;
    for (const p of this.byPid.values()) {
      if (p.tag !== sel.value) continue;
      if (p.running) return p;
      fallback ??= p;
    }
    return fallback;
  }

  running(): ManagedProcess[] {
    return [...this.byPid.values()].filter((p) => p.running);
  }

  close(): void {
    for (const t of this.retention) clearTimeout(t);
    this.retention.clear();
    for (const p of this.byPid.values()) p.dispose();
  }
}

function selectorText(sel: ProcessSelector | undefined): string {
  const s = sel?.selector;
  if (!s || s.case === undefined) return 'no selector';
  return s.case === 'pid' ? `pid ${s.value}` : `tag '${s.value}'`;
}

/** Streams a subscriber's events until the end event; keepalives when idle; unsubscribes on exit. */
async function* pump<T>(
  proc: ManagedProcess,
  sub: Subscriber,
  ctx: HandlerContext,
  wrap: (ev: ProcessEvent) => T,
): AsyncGenerator<T> {
  const keepalive = keepaliveMs(ctx.requestHeader.get(HEADER_KEEPALIVE_PING_INTERVAL), DEFAULT_KEEPALIVE_SECONDS);
  try {
    for (;;) {
      const w = await sub.queue.next(ctx.signal, keepalive);
      if (w.kind === 'timeout') {
        yield wrap(create(ProcessEventSchema, { event: { case: 'keepalive', value: {} } }));
        continue;
      }
      if (w.kind === 'closed') return;
      proc.consumed(sub, w.item);
      yield wrap(w.item);
      if (w.item.event.case === 'end') return;
    }
  } finally {
    proc.unsubscribe(sub);
  }
}

export function createProcessService(deps: ProcessServiceDeps): {
  impl: ServiceImpl<typeof Process>;
  manager: ProcessManager;
} {
  const { state } = deps;
  const manager = new ProcessManager();

  /**
   * The selected process. Finished processes are kept for Connect only (exit info for 30 s); for
   * input, signals and resize they are gone, as in envd (so `commands.kill()` of a finished
   * command returns false).
   */
  const mustFind = (sel: ProcessSelector | undefined, includeFinished = false): ManagedProcess => {
    const p = manager.find(sel);
    if (!p || (!includeFinished && !p.running)) {
      throw new ConnectError(`process with ${selectorText(sel)} not found`, Code.NotFound);
    }
    return p;
  };

  const impl: ServiceImpl<typeof Process> = {
    async list() {
      return create(ListResponseSchema, {
        processes: manager.running().map((p) =>
          create(ProcessInfoSchema, { config: p.config, pid: p.pid, tag: p.tag }),
        ),
      });
    },

    async *start(req, ctx): AsyncGenerator<StartResponse> {
      const user = rpcUser(ctx, state);
      const cfg = req.process ?? create(ProcessConfigSchema, {});
      let cwd: string;
      try {
        cwd = expandAndResolve(cfg.cwd ?? '', user, state.defaultWorkdir);
      } catch (e) {
        if (e instanceof PathError) throw new ConnectError(e.message, Code.InvalidArgument);
        throw e;
      }
      try {
        const st = await fsp.stat(cwd);
        if (!st.isDirectory()) throw new ConnectError(`cwd '${cwd}' is not a directory`, Code.InvalidArgument);
      } catch (e) {
        if (e instanceof ConnectError) throw e;
        throw new ConnectError(`cwd '${cwd}' does not exist`, Code.InvalidArgument);
      }
      const env: Record<string, string> = {
        PATH: state.config.processPath,
        HOME: user.home,
        USER: user.name,
        LOGNAME: user.name,
        ...state.envVars,
        ...cfg.envs,
      };
      const spec: SpawnSpec = {
        cmd: cfg.cmd,
        args: [...cfg.args],
        env,
        cwd,
        user,
        stdin: req.stdin ?? true,
        pty: req.pty ? { cols: req.pty.size?.cols ?? 80, rows: req.pty.size?.rows ?? 24 } : undefined,
      };
      const backend = req.pty ? deps.ptyBackend : deps.pipeBackend;
      let handle: SpawnedProcess;
      try {
        handle = await backend.spawn(spec);
      } catch (e) {
        if (e instanceof ConnectError) throw e;
        throw new ConnectError(`error starting process: ${errorMessage(e)}`, Code.InvalidArgument);
      }
      // Subscribe before yielding to the event loop, so no output is missed.
      const proc = new ManagedProcess(handle, create(ProcessConfigSchema, cfg), req.tag);
      const sub = proc.subscribe();
      manager.add(proc);
      const timeout = ctx.timeoutMs();
      if (timeout !== undefined) proc.setDeadline(timeout);
      log.info('process started', { pid: proc.pid, cmd: cfg.cmd, user: user.name, timeoutMs: timeout });
      yield* pump(proc, sub, ctx, (event) => create(StartResponseSchema, { event }));
    },

    async *connect(req, ctx): AsyncGenerator<ConnectResponse> {
      const proc = mustFind(req.process, true);
      const sub = proc.subscribe();
      yield* pump(proc, sub, ctx, (event) => create(ConnectResponseSchema, { event }));
    },

    async update(req) {
      const proc = mustFind(req.process);
      if (!proc.handle.isPty) throw new ConnectError('tty not assigned to process', Code.Internal);
      if (req.pty?.size) {
        try {
          proc.handle.resize(req.pty.size.cols, req.pty.size.rows);
        } catch (e) {
          throw new ConnectError(`error resizing tty: ${errorMessage(e)}`, Code.Internal);
        }
      }
      return create(UpdateResponseSchema, {});
    },

    async streamInput() {
      throw new ConnectError('StreamInput is not implemented; use SendInput', Code.Unimplemented);
    },

    async sendInput(req) {
      const proc = mustFind(req.process);
      const input = req.input?.input;
      if (!input || input.case === undefined) return create(SendInputResponseSchema, {});
      if (input.case === 'stdin' && proc.handle.isPty) {
        throw new ConnectError('tty assigned to process — input should be written to the pty, not the stdin', Code.Internal);
      }
      if (input.case === 'pty' && !proc.handle.isPty) {
        throw new ConnectError('tty not assigned to process — input should be written to the stdin, not the tty', Code.Internal);
      }
      if (!proc.handle.inputOpen) {
        throw new ConnectError('stdin not enabled or closed', Code.Internal);
      }
      try {
        await proc.handle.write(input.value);
      } catch (e) {
        throw new ConnectError(errorMessage(e), Code.Internal);
      }
      return create(SendInputResponseSchema, {});
    },

    async closeStdin(req) {
      const proc = mustFind(req.process);
      if (proc.handle.isPty) {
        throw new ConnectError('cannot close stdin for PTY process — send Ctrl+D (0x04) instead', Code.Unknown);
      }
      proc.handle.closeStdin();
      return create(CloseStdinResponseSchema, {});
    },

    async sendSignal(req) {
      const proc = mustFind(req.process);
      let sig: 'SIGKILL' | 'SIGTERM';
      if (req.signal === Signal.SIGKILL) sig = 'SIGKILL';
      else if (req.signal === Signal.SIGTERM) sig = 'SIGTERM';
      else throw new ConnectError(`invalid signal: ${req.signal}`, Code.Unimplemented);
      proc.kill(sig);
      if (sig === 'SIGKILL') {
        // Wait until the kernel reaped it, so `kill -0 <pid>` right after fails.
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          proc.handle.exited,
          new Promise((r) => (timer = setTimeout(r, KILL_REAP_WAIT_MS))),
        ]);
        if (timer) clearTimeout(timer);
      }
      return create(SendSignalResponseSchema, {});
    },
  };

  return { impl, manager };
}
