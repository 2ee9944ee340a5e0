import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import {
  CreateWatcherResponseSchema,
  EventType,
  Filesystem,
  FilesystemEventSchema,
  GetWatcherEventsResponseSchema,
  ListDirResponseSchema,
  MakeDirResponseSchema,
  MoveResponseSchema,
  RemoveResponseSchema,
  RemoveWatcherResponseSchema,
  StatResponseSchema,
  WatchDirResponseSchema,
  type EntryInfo,
  type FilesystemEvent,
  type WatchDirResponse,
} from '../gen/filesystem/filesystem_pb.js';
import { entryInfo, isNotFound } from './fs-entry.js';
import { ensureDirs, isNetworkMount } from './fs-util.js';
import { errorMessage, log } from './log.js';
import { PathError, expandAndResolve } from './paths.js';
import { DEFAULT_KEEPALIVE_SECONDS, HEADER_KEEPALIVE_PING_INTERVAL } from './protocol.js';
import { EventQueue, keepaliveMs } from './queue.js';
import { rpcUser } from './rpc-user.js';
import type { AgentState } from './state.js';
import type { UserInfo } from './users.js';
import { DirWatcher, type WatchEvent } from './watcher.js';
import { readMetadata, xattrTools } from './xattr.js';

/** Events buffered per stream / polling watcher before further events are dropped. */
const MAX_BUFFERED_EVENTS = 100_000;

function resolvePath(p: string, user: UserInfo, state: AgentState): string {
  try {
    return expandAndResolve(p, user, state.defaultWorkdir);
  } catch (e) {
    if (e instanceof PathError) throw new ConnectError(e.message, Code.InvalidArgument);
    throw e;
  }
}

function internal(what: string, e: unknown): ConnectError {
  return new ConnectError(`${what}: ${errorMessage(e)}`, Code.Internal);
}

/** EntryInfo with xattr metadata when available. */
async function entryWithMetadata(p: string): Promise<EntryInfo> {
  const info = await entryInfo(p);
  if (xattrTools()) info.metadata = (await readMetadata([p])).get(p) ?? {};
  return info;
}

/** Byte-wise name order, as Go's os.ReadDir sorts. */
function byteCompare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** filepath.WalkDir order (lexical, depth-first, pre-order), entries up to `depth` levels. */
async function walk(root: string, depth: number): Promise<EntryInfo[]> {
  const out: EntryInfo[] = [];
  const visit = async (dir: string, level: number): Promise<void> => {
    let names: string[];
    try {
      names = await fsp.readdir(dir);
    } catch (e) {
      if (level === 1) throw e;
      log.warn('ListDir: cannot read directory', { dir, error: errorMessage(e) });
      return;
    }
    names.sort(byteCompare);
    for (const name of names) {
      const full = path.join(dir, name);
      let st;
      try {
        st = await fsp.lstat(full, { bigint: true });
      } catch (e) {
        if (isNotFound(e)) continue; // vanished during the walk
        throw e;
      }
      out.push(await entryInfo(full, st));
      if (st.isDirectory() && level < depth) await visit(full, level + 1);
    }
  };
  await visit(root, 1);
  return out;
}

async function validateWatchDir(p: string, allowNetworkMounts: boolean): Promise<void> {
  let st;
  try {
    st = await fsp.stat(p);
  } catch (e) {
    if (isNotFound(e)) throw new ConnectError(`path ${p} not found`, Code.NotFound);
    throw internal(`error statting path ${p}`, e);
  }
  if (!st.isDirectory()) throw new ConnectError(`path ${p} not a directory`, Code.InvalidArgument);
  let network = false;
  try {
    network = await isNetworkMount(p);
  } catch (e) {
    throw internal('error checking mount status', e);
  }
  if (network && !allowNetworkMounts) {
    throw new ConnectError(`cannot watch path on network filesystem: ${p}`, Code.InvalidArgument);
  }
}

async function toProtoEvent(ev: WatchEvent, includeEntry: boolean): Promise<FilesystemEvent> {
  let entry: EntryInfo | undefined;
  if (includeEntry && (ev.type === EventType.CREATE || ev.type === EventType.WRITE || ev.type === EventType.CHMOD)) {
    try {
      entry = await entryInfo(ev.fullPath);
    } catch {
      entry = undefined;
    }
  }
  return create(FilesystemEventSchema, { name: ev.name, type: ev.type, entry });
}

interface PollingWatcher {
  watcher: DirWatcher;
  events: FilesystemEvent[];
  /** Serializes entry lookups so events keep their order. */
  chain: Promise<void>;
  error: Error | undefined;
}

export function createFilesystemService(state: AgentState): {
  impl: ServiceImpl<typeof Filesystem>;
  close(): void;
} {
  const watchers = new Map<string, PollingWatcher>();

  const impl: ServiceImpl<typeof Filesystem> = {
    async stat(req, ctx) {
      const p = resolvePath(req.path, rpcUser(ctx, state), state);
      try {
        return create(StatResponseSchema, { entry: await entryWithMetadata(p) });
      } catch (e) {
        if (isNotFound(e)) throw new ConnectError(`file not found: ${p}`, Code.NotFound);
        throw internal('error getting file info', e);
      }
    },

    async makeDir(req, ctx) {
      const user = rpcUser(ctx, state);
      const p = resolvePath(req.path, user, state);
      let st;
      try {
        st = await fsp.stat(p);
      } catch (e) {
        if (!isNotFound(e)) throw internal('error getting file info', e);
      }
      if (st) {
        if (st.isDirectory()) throw new ConnectError(`directory already exists: ${p}`, Code.AlreadyExists);
        throw new ConnectError(`path already exists but it is not a directory: ${p}`, Code.InvalidArgument);
      }
      try {
        await ensureDirs(p, user.uid, user.gid);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOTDIR') throw new ConnectError(errorMessage(e), Code.InvalidArgument);
        throw internal('error creating directory', e);
      }
      return create(MakeDirResponseSchema, { entry: await entryInfo(p) });
    },

    async move(req, ctx) {
      const user = rpcUser(ctx, state);
      const src = resolvePath(req.source, user, state);
      const dst = resolvePath(req.destination, user, state);
      try {
        await fsp.lstat(src);
      } catch (e) {
        if (isNotFound(e)) throw new ConnectError(`source file not found: ${src}`, Code.NotFound);
        throw internal('error getting source file info', e);
      }
      try {
        await ensureDirs(path.dirname(dst), user.uid, user.gid);
      } catch (e) {
        throw internal('error creating destination directory', e);
      }
      try {
        await fsp.rename(src, dst);
      } catch (e) {
        if (isNotFound(e)) throw new ConnectError(`source file not found: ${src}`, Code.NotFound);
        throw internal('error renaming', e);
      }
      return create(MoveResponseSchema, { entry: await entryWithMetadata(dst) });
    },

    async listDir(req, ctx) {
      const depth = req.depth === 0 ? 1 : req.depth;
      const p = resolvePath(req.path, rpcUser(ctx, state), state);
      let st;
      try {
        st = await fsp.stat(p); // follows a top-level symlink
      } catch (e) {
        if (isNotFound(e)) throw new ConnectError(`path not found: ${p}`, Code.NotFound);
        if ((e as NodeJS.ErrnoException).code === 'ELOOP') {
          throw new ConnectError(`cyclic symlink or chain >255 links at "${p}"`, Code.FailedPrecondition);
        }
        throw internal('error resolving path', e);
      }
      if (!st.isDirectory()) throw new ConnectError(`path is not a directory: ${p}`, Code.InvalidArgument);
      let entries: EntryInfo[];
      try {
        entries = await walk(p, depth);
      } catch (e) {
        throw internal(`error reading directory ${p}`, e);
      }
      if (xattrTools() && entries.length > 0) {
        const md = await readMetadata(entries.map((e) => e.path));
        for (const e of entries) e.metadata = md.get(e.path) ?? {};
      }
      return create(ListDirResponseSchema, { entries });
    },

    async remove(req, ctx) {
      const p = resolvePath(req.path, rpcUser(ctx, state), state);
      try {
        await fsp.rm(p, { recursive: true, force: true });
      } catch (e) {
        throw internal('error removing file or directory', e);
      }
      return create(RemoveResponseSchema, {});
    },

    async *watchDir(req, ctx: HandlerContext): AsyncGenerator<WatchDirResponse> {
      const p = resolvePath(req.path, rpcUser(ctx, state), state);
      await validateWatchDir(p, req.allowNetworkMounts);
      const queue = new EventQueue<WatchEvent>();
      let failure: Error | undefined;
      const watcher = new DirWatcher(
        p,
        req.recursive,
        (ev) => {
          if (queue.length < MAX_BUFFERED_EVENTS) queue.push(ev);
        },
        (err) => {
          failure = err;
          queue.close();
        },
      );
      try {
        watcher.start();
      } catch (e) {
        throw internal(`error adding path ${p} to watcher`, e);
      }
      const keepalive = keepaliveMs(ctx.requestHeader.get(HEADER_KEEPALIVE_PING_INTERVAL), DEFAULT_KEEPALIVE_SECONDS);
      try {
        yield create(WatchDirResponseSchema, { event: { case: 'start', value: {} } });
        for (;;) {
          const w = await queue.next(ctx.signal, keepalive);
          if (w.kind === 'timeout') {
            yield create(WatchDirResponseSchema, { event: { case: 'keepalive', value: {} } });
            continue;
          }
          if (w.kind === 'closed') {
            if (failure) throw internal('watcher error', failure);
            return;
          }
          const fsEvent = await toProtoEvent(w.item, req.includeEntry);
          yield create(WatchDirResponseSchema, { event: { case: 'filesystem', value: fsEvent } });
        }
      } finally {
        watcher.close();
      }
    },

    async createWatcher(req, ctx) {
      const p = resolvePath(req.path, rpcUser(ctx, state), state);
      await validateWatchDir(p, req.allowNetworkMounts);
      const id = 'w' + randomBytes(12).toString('hex');
      const entry: PollingWatcher = {
        watcher: undefined as unknown as DirWatcher,
        events: [],
        chain: Promise.resolve(),
        error: undefined,
      };
      entry.watcher = new DirWatcher(
        p,
        req.recursive,
        (ev) => {
          entry.chain = entry.chain.then(async () => {
            if (entry.events.length >= MAX_BUFFERED_EVENTS) return;
            entry.events.push(await toProtoEvent(ev, req.includeEntry));
          });
        },
        (err) => {
          entry.error = err;
        },
      );
      try {
        entry.watcher.start();
      } catch (e) {
        throw internal(`error adding path ${p} to watcher`, e);
      }
      watchers.set(id, entry);
      return create(CreateWatcherResponseSchema, { watcherId: id });
    },

    async getWatcherEvents(req) {
      const entry = watchers.get(req.watcherId);
      if (!entry) throw new ConnectError(`watcher with id ${req.watcherId} not found`, Code.NotFound);
      await entry.chain;
      if (entry.error && entry.events.length === 0) {
        throw internal('watcher error', entry.error);
      }
      const events = entry.events;
      entry.events = [];
      return create(GetWatcherEventsResponseSchema, { events });
    },

    async removeWatcher(req) {
      const entry = watchers.get(req.watcherId);
      if (!entry) throw new ConnectError(`watcher with id ${req.watcherId} not found`, Code.NotFound);
      entry.watcher.close();
      watchers.delete(req.watcherId);
      return create(RemoveWatcherResponseSchema, {});
    },
  };

  return {
    impl,
    close() {
      for (const w of watchers.values()) w.watcher.close();
      watchers.clear();
    },
  };
}
