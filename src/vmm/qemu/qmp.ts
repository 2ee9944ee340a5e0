/**
 * A small QMP client (QEMU Machine Protocol) over a Unix socket.
 *
 * Protocol: the server sends a greeting `{"QMP": {...}}`; the client must send
 * `qmp_capabilities` before anything else. Each command is a JSON object
 * `{"execute", "arguments", "id"}`; the reply carries the same `id` and either
 * `return` or `error: {class, desc}`. Asynchronous events (`{"event", "data",
 * "timestamp"}`) can arrive at any time, interleaved with replies. Messages are
 * separated by CRLF.
 *
 * This client matches replies by id, bounds every command by a timeout, honours
 * an AbortSignal per command, and rejects every pending command when the socket
 * closes (QEMU exited or was killed mid-command).
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { AbortedError, HostFailureError, TimeoutError } from '../../core/errors.js';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package?: string };
  capabilities: string[];
}

export interface QmpCallOptions {
  signal?: AbortSignal;
  /** Bound for this command, in ms (default: the client's `commandTimeoutMs`). */
  timeoutMs?: number;
}

export interface QmpConnectOptions {
  signal?: AbortSignal;
  /** Bound for connect + greeting + capabilities negotiation (default 5000 ms). */
  timeoutMs?: number;
  /** Default bound for each command (default 10000 ms). */
  commandTimeoutMs?: number;
}

/** QEMU answered a command with `error`: keeps QMP's class and description. */
export class QmpCommandError extends HostFailureError {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QMP ${command} failed: ${desc} (${errorClass})`);
  }
}

/** The QMP connection closed (QEMU exited, crashed, or close() was called). */
export class QmpClosedError extends HostFailureError {
  constructor(message: string, options?: { cause?: unknown }) { super(message, options); }
}

interface Pending {
  command: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
  cleanup(): void;
}

/**
 * Events: `'event'` (QmpEvent) for every asynchronous event, and `'close'`
 * (Error | undefined) once, when the connection ends.
 */
export class QmpClient extends EventEmitter {
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closeError: Error | undefined;
  private isClosed = false;
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  readonly commandTimeoutMs: number;
  greeting: QmpGreeting | undefined;
  private greetingWaiter: { resolve(g: QmpGreeting): void; reject(e: Error): void } | undefined;

  private constructor(private readonly socket: net.Socket, readonly path: string, commandTimeoutMs: number) {
    super();
    this.commandTimeoutMs = commandTimeoutMs;
    this.closed = new Promise((r) => { this.resolveClosed = r; });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.shutdown(new QmpClosedError(`QMP socket ${path}: ${err.message}`, { cause: err })));
    socket.on('close', () => this.shutdown(new QmpClosedError(`QMP connection to ${path} closed`)));
  }

  /** Connects, reads the greeting and negotiates capabilities. */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 5000;
    const signal = opts.signal;
    if (signal?.aborted) throw aborted(signal);
    const socket = net.createConnection({ path });
    const client = new QmpClient(socket, path, opts.commandTimeoutMs ?? 10_000);
    const deadline = setTimeout(() => {
      client.shutdown(new TimeoutError(`QMP handshake on ${path} took longer than ${timeoutMs} ms`));
    }, timeoutMs);
    const onAbort = () => client.shutdown(aborted(signal!));
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const greeting = await new Promise<QmpGreeting>((resolve, reject) => {
        if (client.isClosed) { reject(client.closeError!); return; }
        client.greetingWaiter = { resolve, reject };
      });
      client.greeting = greeting;
      await client.execute('qmp_capabilities', undefined, { timeoutMs, signal });
      return client;
    } catch (err) {
      client.close();
      throw err;
    } finally {
      clearTimeout(deadline);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  get isOpen(): boolean { return !this.isClosed; }

  /** Runs a command; resolves with its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QmpCallOptions = {}): Promise<T> {
    const { signal } = opts;
    if (signal?.aborted) return Promise.reject(aborted(signal));
    if (this.isClosed) {
      return Promise.reject(new QmpClosedError(`QMP ${command}: connection already closed (${this.closeError?.message ?? 'closed'})`));
    }
    const id = `h${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        cleanup();
        reject(new TimeoutError(`QMP ${command} got no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      const onAbort = () => {
        this.pending.delete(id);
        cleanup();
        reject(aborted(signal!));
      };
      const cleanup = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, cleanup });
      const msg: Record<string, unknown> = { execute: command, id };
      if (args !== undefined) msg['arguments'] = args;
      this.socket.write(JSON.stringify(msg) + '\r\n');
    });
  }

  /**
   * Resolves with the first event named `name` (and matching `filter`) received
   * after this call. Subscribe *before* sending the command that causes it.
   */
  waitForEvent(name: string, opts: QmpCallOptions & { filter?: (ev: QmpEvent) => boolean } = {}): Promise<QmpEvent> {
    const { signal } = opts;
    if (signal?.aborted) return Promise.reject(aborted(signal));
    if (this.isClosed) return Promise.reject(new QmpClosedError(`waiting for QMP event ${name}: connection closed`));
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<QmpEvent>((resolve, reject) => {
      const onEvent = (ev: QmpEvent) => {
        if (ev.event !== name || (opts.filter && !opts.filter(ev))) return;
        done();
        resolve(ev);
      };
      const onClose = (err?: Error) => { done(); reject(new QmpClosedError(`waiting for QMP event ${name}: ${err?.message ?? 'connection closed'}`)); };
      const onAbort = () => { done(); reject(aborted(signal!)); };
      const timer = setTimeout(() => { done(); reject(new TimeoutError(`QMP event ${name} did not arrive within ${timeoutMs} ms`)); }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
        signal?.removeEventListener('abort', onAbort);
      };
      this.on('event', onEvent);
      this.on('close', onClose);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Async iteration over events until the connection closes or `signal` aborts. */
  async *events(signal?: AbortSignal): AsyncGenerator<QmpEvent> {
    const queue: QmpEvent[] = [];
    let wake: (() => void) | undefined;
    let ended = this.isClosed;
    const onEvent = (ev: QmpEvent) => { queue.push(ev); wake?.(); };
    const onEnd = () => { ended = true; wake?.(); };
    this.on('event', onEvent);
    this.on('close', onEnd);
    signal?.addEventListener('abort', onEnd, { once: true });
    try {
      for (;;) {
        const ev = queue.shift();
        if (ev) { yield ev; continue; }
        if (ended) return;
        await new Promise<void>((r) => { wake = r; });
        wake = undefined;
      }
    } finally {
      this.off('event', onEvent);
      this.off('close', onEnd);
      signal?.removeEventListener('abort', onEnd);
    }
  }

  /** Closes the connection; pending commands are rejected. Idempotent. */
  close(): void {
    this.shutdown(new QmpClosedError(`QMP connection to ${this.path} closed by the client`));
  }

  private shutdown(err: Error): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeError = err;
    this.socket.destroy();
    this.greetingWaiter?.reject(err);
    this.greetingWaiter = undefined;
    for (const p of this.pending.values()) {
      p.cleanup();
      p.reject(err instanceof QmpClosedError
        ? new QmpClosedError(`QMP ${p.command}: ${err.message}`, { cause: err })
        : err);
    }
    this.pending.clear();
    this.emit('close', err);
    this.resolveClosed();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line) this.onMessage(line);
      if (this.isClosed) return;
    }
    if (this.buffer.length > 16 * 1024 * 1024) {
      this.shutdown(new QmpClosedError(`QMP ${this.path}: message larger than 16 MiB without a newline`));
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch (err) {
      this.shutdown(new QmpClosedError(`QMP ${this.path}: unparsable message ${JSON.stringify(line.slice(0, 200))}`, { cause: err }));
      return;
    }
    if ('QMP' in msg) {
      const g = msg['QMP'] as QmpGreeting;
      this.greetingWaiter?.resolve(g);
      this.greetingWaiter = undefined;
      return;
    }
    if (typeof msg['event'] === 'string') {
      this.emit('event', msg as unknown as QmpEvent);
      return;
    }
    if ('return' in msg || 'error' in msg) {
      const id = typeof msg['id'] === 'string' ? msg['id'] : undefined;
      // Replies without an id (e.g. to a malformed request) go to the oldest pending command.
      const key = id ?? this.pending.keys().next().value;
      if (key === undefined) return;
      const p = this.pending.get(key);
      if (!p) return; // a late reply to a command that timed out or was aborted
      this.pending.delete(key);
      p.cleanup();
      if ('error' in msg) {
        const e = (msg['error'] ?? {}) as { class?: string; desc?: string };
        p.reject(new QmpCommandError(p.command, e.class ?? 'GenericError', e.desc ?? 'unknown error'));
      } else {
        p.resolve(msg['return']);
      }
    }
  }
}

function aborted(signal: AbortSignal): AbortedError {
  const e = new AbortedError();
  (e as { cause?: unknown }).cause = signal.reason;
  return e;
}
