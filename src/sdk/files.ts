import { Readable } from 'node:stream';
import { FileType, type EntryInfo } from '../gen/filesystem/filesystem_pb.js';
import { errorFromResponse } from './errors.js';
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
}
