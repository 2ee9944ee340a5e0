import { Readable } from 'node:stream';
import { Code, ConnectError } from '@connectrpc/connect';
import { EventType, FileType, type EntryInfo, type WatchDirResponse } from '../gen/filesystem/filesystem_pb.js';
import { errorFromResponse, SandboxGoneError, SandboxPausedError } from './errors.js';
import type { SandboxMetrics } from './types.js';
import { mapConnectError, type EnvdClients, type EnvdTarget } from './envd.js';

export interface FileEntry {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'unknown';
  size: number;
  mode: number;
  permissions: string;
  owner: string;
  group: string;
  modifiedTime: Date | undefined;
  symlinkTarget?: string;
}

function entryOf(e: EntryInfo): FileEntry {
  const type = e.type === FileType.FILE ? 'file' : e.type === FileType.DIRECTORY ? 'dir' : e.type === FileType.SYMLINK ? 'symlink' : 'unknown';
  return {
    name: e.name, path: e.path, type, size: Number(e.size), mode: e.mode, permissions: e.permissions, owner: e.owner, group: e.group,
    modifiedTime: e.modifiedTime ? new Date(Number(e.modifiedTime.seconds) * 1000 + Math.floor(e.modifiedTime.nanos / 1e6)) : undefined,
    ...(e.symlinkTarget !== undefined ? { symlinkTarget: e.symlinkTarget } : {}),
  };
}

type FetchBody = NonNullable<RequestInit['body']>;

/** What happened to an entry of a watched directory (E2B's FilesystemEventType values). */
export type FilesystemEventType = 'create' | 'write' | 'remove' | 'rename' | 'chmod';

export interface FilesystemEvent {
  /** Path relative to the watched directory, e.g. "sub/file.txt". */
  name: string;
  type: FilesystemEventType;
}

export interface WatchOptions {
  /** Watch subdirectories too (default false). */
  recursive?: boolean;
  /** Stop watching after this long; default 0: until stop(). */
  timeoutMs?: number;
  /** Called once when the watch ends: with no error after stop() or its timeout, else with why. */
  onExit?: (err?: Error) => unknown;
  signal?: AbortSignal;
}

/** A running directory watch. */
export interface WatchHandle {
  /** Stops watching; resolves once the stream is closed. */
  stop(): Promise<void>;
}

const EVENT_TYPES: Partial<Record<EventType, FilesystemEventType>> = {
  [EventType.CREATE]: 'create', [EventType.WRITE]: 'write', [EventType.REMOVE]: 'remove', [EventType.RENAME]: 'rename', [EventType.CHMOD]: 'chmod',
};

/** Connect call options carrying an optional AbortSignal. */
function sig(signal: AbortSignal | undefined): { signal?: AbortSignal } { return signal ? { signal } : {}; }

export type WriteData = string | Uint8Array | NodeJS.ReadableStream | ReadableStream<Uint8Array>;

export class Files {
  constructor(private readonly clients: EnvdClients, private readonly target: EnvdTarget, private readonly user?: string) {}

  private filesUrl(path: string, user?: string): string {
    const q = new URLSearchParams({ path });
    const u = user ?? this.user;
    if (u) q.set('username', u);
    return `${this.target.baseUrl}/files?${q.toString()}`;
  }

  private async filesFetch(method: 'GET' | 'POST', path: string, init: RequestInit & { duplex?: 'half' } = {}, user?: string): Promise<Response> {
    const res = await fetch(this.filesUrl(path, user), {
      ...init, method, headers: { 'x-access-token': this.target.accessToken, ...(init.headers as Record<string, string> | undefined) },
    });
    if (!res.ok) {
      const text = await res.text();
      let body: { message?: string } | undefined;
      try { body = JSON.parse(text) as { message?: string }; } catch { body = { message: text || res.statusText }; }
      if (res.status === 502) {
        // The envd proxy's answer for a sandbox that is not running: paused, or gone?
        const state = await this.target.state?.().catch(() => undefined);
        if (state === 'paused' || state === 'pausing' || state === 'resuming') {
          throw new SandboxPausedError(`the sandbox is ${state}: resume it (sandbox.resume() or Sandbox.connect(id)) to reach its files`, 409, 'paused');
        }
        throw new SandboxGoneError(`the sandbox is not running${state ? ` (it is ${state})` : ''}: ${body?.message ?? text}`, 502, 'unavailable');
      }
      throw errorFromResponse(res.status, body, `${method} ${path}: HTTP ${res.status}`);
    }
    return res;
  }

  /** Read a file as text (default), bytes, or a stream (for large files: nothing is buffered). */
  async read(path: string, opts?: { format?: 'text'; user?: string; signal?: AbortSignal }): Promise<string>;
  async read(path: string, opts: { format: 'bytes'; user?: string; signal?: AbortSignal }): Promise<Uint8Array>;
  async read(path: string, opts: { format: 'stream'; user?: string; signal?: AbortSignal }): Promise<Readable>;
  async read(path: string, opts: { format?: 'text' | 'bytes' | 'stream'; user?: string; signal?: AbortSignal } = {}): Promise<string | Uint8Array | Readable> {
    const res = await this.filesFetch('GET', path, opts.signal ? { signal: opts.signal } : {}, opts.user);
    if (opts.format === 'stream') return res.body ? Readable.fromWeb(res.body as import('node:stream/web').ReadableStream) : Readable.from([]);
    if (opts.format === 'bytes') return new Uint8Array(await res.arrayBuffer());
    return res.text();
  }

  /** Write (create or truncate) a file; streams are sent as they are read, never buffered whole. */
  async write(path: string, data: WriteData, opts: { user?: string; signal?: AbortSignal } = {}): Promise<{ path: string; name: string }> {
    let body: FetchBody;
    if (typeof data === 'string' || data instanceof Uint8Array) body = data as FetchBody;
    else if (typeof (data as ReadableStream).getReader === 'function') body = data as ReadableStream<Uint8Array> as FetchBody;
    else body = Readable.toWeb(data as Readable) as unknown as FetchBody;
    const res = await this.filesFetch('POST', path, {
      body, duplex: 'half', headers: { 'content-type': 'application/octet-stream' }, ...(opts.signal ? { signal: opts.signal } : {}),
    }, opts.user);
    const [info] = (await res.json()) as { path: string; name: string }[];
    if (!info) throw new Error('upload answered with no entry');
    return info;
  }

  async list(path: string, opts: { depth?: number; signal?: AbortSignal } = {}): Promise<FileEntry[]> {
    const res = await this.clients.filesystem.listDir({ path, depth: opts.depth ?? 1 }, sig(opts.signal)).catch((e: unknown) => { throw mapConnectError(e); });
    return res.entries.map(entryOf);
  }

  async stat(path: string, signal?: AbortSignal): Promise<FileEntry> {
    const res = await this.clients.filesystem.stat({ path }, sig(signal)).catch((e: unknown) => { throw mapConnectError(e); });
    if (!res.entry) throw new Error('stat answered with no entry');
    return entryOf(res.entry);
  }

  async exists(path: string, signal?: AbortSignal): Promise<boolean> {
    try { await this.stat(path, signal); return true; } catch (err) { if ((err as Error).name === 'NotFoundError') return false; throw err; }
  }

  /** mkdir -p; false if it already existed. */
  async makeDir(path: string, signal?: AbortSignal): Promise<boolean> {
    try {
      await this.clients.filesystem.makeDir({ path }, sig(signal));
      return true;
    } catch (err) {
      const e = mapConnectError(err);
      if (e.name === 'ConflictError') return false;
      throw e;
    }
  }

  async remove(path: string, signal?: AbortSignal): Promise<void> {
    await this.clients.filesystem.remove({ path }, sig(signal)).catch((e: unknown) => { throw mapConnectError(e); });
  }

  async rename(from: string, to: string, signal?: AbortSignal): Promise<FileEntry> {
    const res = await this.clients.filesystem.move({ source: from, destination: to }, sig(signal)).catch((e: unknown) => { throw mapConnectError(e); });
    if (!res.entry) throw new Error('move answered with no entry');
    return entryOf(res.entry);
  }

  /** The agent's own metrics (`GET /metrics`): one sample, now. */
  async agentMetrics(signal?: AbortSignal): Promise<SandboxMetrics> {
    const res = await fetch(`${this.target.baseUrl}/metrics`, { headers: { 'x-access-token': this.target.accessToken }, ...(signal ? { signal } : {}) });
    if (!res.ok) throw errorFromResponse(res.status, undefined, `GET /metrics: HTTP ${res.status}`);
    const m = await res.json() as { ts: number; cpu_count: number; cpu_used_pct: number; mem_total: number; mem_used: number; mem_cache?: number; disk_used: number; disk_total: number };
    return {
      timestamp: new Date(m.ts * 1000), cpuUsedPct: m.cpu_used_pct, cpuCount: m.cpu_count, memUsed: m.mem_used, memTotal: m.mem_total,
      ...(m.mem_cache !== undefined ? { memCache: m.mem_cache } : {}), diskUsed: m.disk_used, diskTotal: m.disk_total,
    };
  }

  /**
   * Watch a directory: `onEvent` gets each change as it happens (awaited, in order) until
   * `stop()`, the timeout, or the sandbox going away (then `onExit(err)`). Resolves once the
   * watch is in place, so changes made after it are seen.
   */
  async watchDir(path: string, onEvent: (e: FilesystemEvent) => unknown, opts: WatchOptions = {}): Promise<WatchHandle> {
    const ac = new AbortController();
    if (opts.signal) {
      if (opts.signal.aborted) ac.abort();
      else opts.signal.addEventListener('abort', () => ac.abort(), { once: true });
    }
    const stream = this.clients.filesystem.watchDir({ path, recursive: opts.recursive ?? false }, {
      signal: ac.signal, ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}),
    });
    const it = stream[Symbol.asyncIterator]();
    try {
      const first = await it.next();
      if (first.done || first.value.event.case !== 'start') throw new Error('the watch stream did not start');
    } catch (err) {
      ac.abort();
      throw mapConnectError(err);
    }
    let stopped = false;
    const pump = (async () => {
      try {
        for (let n = await it.next(); !n.done; n = await it.next()) {
          const ev = (n.value as WatchDirResponse).event;
          if (ev.case !== 'filesystem') continue;
          const type = EVENT_TYPES[ev.value.type];
          if (type) await onEvent({ name: ev.value.name, type });
        }
        await opts.onExit?.();
      } catch (err) {
        const quiet = stopped || (err instanceof ConnectError && (err.code === Code.Canceled || err.code === Code.DeadlineExceeded));
        await opts.onExit?.(quiet ? undefined : mapConnectError(err));
      }
    })();
    return {
      stop: async () => {
        stopped = true;
        ac.abort();
        await pump;
      },
    };
  }
}
