import { lstatSync, readdirSync, watch, type BigIntStats, type Dirent, type FSWatcher } from 'node:fs';
import path from 'node:path';
import { EventType } from '../gen/filesystem/filesystem_pb.js';
import { log } from './log.js';

/** One filesystem event, `name` relative to the watched root (e.g. "sub/file.txt"). */
export interface WatchEvent {
  name: string;
  type: EventType;
  /** Absolute path, for callers that stat the entry (include_entry). */
  fullPath: string;
}

interface RawEvent {
  dir: string;
  kind: 'rename' | 'change';
  filename: string;
}

interface DirState {
  watcher: FSWatcher;
  /** Names believed present in the directory; decides create vs remove for 'rename' events. */
  children: Set<string>;
}

function lstatOrNull(p: string): BigIntStats | null {
  try {
    return lstatSync(p, { bigint: true });
  } catch {
    return null;
  }
}

/**
 * inotify-style directory watcher on top of node:fs `watch`, which on Linux is a thin inotify
 * wrapper but reports only "rename" and "change", and (on Node 18) has no recursive mode.
 *
 * - Recursion: every subdirectory gets its own non-recursive watch, including directories
 *   created later (watched as soon as their CREATE is seen).
 * - "rename" → CREATE / REMOVE by tracking each directory's children; a disappearance directly
 *   followed (same inotify read) by an appearance elsewhere is reported as RENAME of the old name.
 * - "change" → WRITE, or CHMOD when ctime is newer than mtime (attribute-only change).
 * Events of one inotify read are processed together after the read (setImmediate), so ordering is
 * kept across directories: libuv uses one inotify descriptor for all watches.
 */
export class DirWatcher {
  private readonly dirs = new Map<string, DirState>();
  private batch: RawEvent[] = [];
  private flushScheduled = false;
  private closed = false;

  constructor(
    private readonly root: string,
    private readonly recursive: boolean,
    private readonly onEvent: (ev: WatchEvent) => void,
    private readonly onError: (err: Error) => void,
  ) {}

  /** Sets up the watches; throws if the root cannot be watched. */
  start(): void {
    this.addDir(this.root, true);
  }

  close(): void {
    this.closed = true;
    for (const st of this.dirs.values()) {
      try {
        st.watcher.close();
      } catch {
        // already closed
      }
    }
    this.dirs.clear();
    this.batch = [];
  }

  get watchedDirCount(): number {
    return this.dirs.size;
  }

  private addDir(dir: string, isRoot: boolean): void {
    if (this.dirs.has(dir) || this.closed) return;
    let watcher: FSWatcher;
    try {
      watcher = watch(dir, { persistent: false }, (kind, filename) => {
        if (filename === null || filename === undefined) return;
        this.batch.push({ dir, kind: kind === 'change' ? 'change' : 'rename', filename: String(filename) });
        if (!this.flushScheduled) {
          this.flushScheduled = true;
          setImmediate(() => this.flush());
        }
      });
    } catch (e) {
      if (isRoot) throw e;
      log.warn('watch: cannot watch subdirectory', { dir, error: String(e) });
      return;
    }
    watcher.on('error', (err) => {
      this.removeDir(dir);
      if (dir === this.root && !this.closed) this.onError(err);
    });
    const children = new Set<string>();
    this.dirs.set(dir, { watcher, children });
    let entries: Dirent[] = [];
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch (e) {
      if (isRoot) throw e;
    }
    for (const ent of entries) {
      children.add(ent.name);
      if (this.recursive && ent.isDirectory()) this.addDir(path.join(dir, ent.name), false);
    }
  }

  /** Stops watching `dir` and everything below it. */
  private removeDir(dir: string): void {
    const prefix = dir + '/';
    for (const [d, st] of this.dirs) {
      if (d === dir || d.startsWith(prefix)) {
        try {
          st.watcher.close();
        } catch {
          // ignore
        }
        this.dirs.delete(d);
      }
    }
  }

  private rel(full: string): string {
    return path.relative(this.root, full);
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.closed) return;
    const batch = this.batch;
    this.batch = [];
    let pendingVanish: string | undefined;
    const emit = (type: EventType, full: string) => {
      this.onEvent({ name: this.rel(full), type, fullPath: full });
    };
    const settlePending = (renamed: boolean) => {
      if (pendingVanish !== undefined) emit(renamed ? EventType.RENAME : EventType.REMOVE, pendingVanish);
      pendingVanish = undefined;
    };

    for (let i = 0; i < batch.length; i++) {
      const ev = batch[i]!;
      const st = this.dirs.get(ev.dir);
      if (!st) continue; // directory no longer watched
      const full = path.join(ev.dir, ev.filename);
      const cur = lstatOrNull(full);

      // IN_DELETE_SELF / IN_MOVE_SELF / IN_ATTRIB on the watched directory itself arrive with the
      // directory's own basename; the parent's watch reports the change, so drop them here.
      if (ev.filename === path.basename(ev.dir) && lstatOrNull(ev.dir) === null) {
        this.removeDir(ev.dir);
        continue;
      }

      if (ev.kind === 'change') {
        if (cur === null) continue;
        st.children.add(ev.filename);
        settlePending(false);
        emit(cur.ctimeNs > cur.mtimeNs ? EventType.CHMOD : EventType.WRITE, full);
        continue;
      }

      // 'rename': the name appeared or disappeared.
      const known = st.children.has(ev.filename);
      let appeared: boolean;
      if (!known) {
        appeared = true;
      } else if (cur === null) {
        appeared = false;
      } else {
        // Present and known: either replaced by a rename onto it (one event), or removed and
        // re-created within this batch (another event for the same name follows).
        const again = batch.slice(i + 1).some((b) => b.kind === 'rename' && b.dir === ev.dir && b.filename === ev.filename);
        appeared = !again;
      }

      if (appeared) {
        st.children.add(ev.filename);
        settlePending(pendingVanish !== undefined && pendingVanish !== full);
        emit(EventType.CREATE, full);
        if (this.recursive && cur !== null && cur.isDirectory()) {
          this.removeDir(full);
          this.addDir(full, false);
        }
      } else {
        st.children.delete(ev.filename);
        settlePending(false);
        pendingVanish = full;
        if (this.dirs.has(full)) this.removeDir(full);
      }
    }
    settlePending(false);
  }
}
