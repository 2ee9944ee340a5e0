import { appendFileSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, readdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Per-sandbox logs: the guest's console (kernel and init lines), its agent's
 * lines (the agent writes JSON lines to the console) and hearthd's lifecycle
 * lines for the sandbox (state changes with their cause, each operation's step
 * timings). Kept as JSON lines under `<dataDir>/logs/<id>/`: `log.jsonl`,
 * rotated to `log.jsonl.1` … `.<keepFiles>` past `maxFileBytes`, so a sandbox
 * never holds more than (keepFiles + 1) × maxFileBytes on disk. They outlive
 * the sandbox and are deleted with its record (retention). Without a directory
 * (unit tests) the newest entries are kept in memory only.
 */
export type LogSource = 'console' | 'agent' | 'hearth';
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export const LOG_SOURCES: readonly LogSource[] = ['console', 'agent', 'hearth'];

export interface LogEntry {
  /** ISO time hearthd read (console) or wrote (hearth) the line; the agent's own time for agent lines. */
  timestamp: string;
  source: LogSource;
  level: LogLevel;
  line: string;
}

export interface LogQuery {
  /** Only entries at or after this time (ms since the epoch). Without it: the newest `limit`. */
  start?: number;
  limit?: number;
  sources?: readonly LogSource[];
}

export interface LogStoreOptions {
  /** `<dataDir>/logs`; null: memory only. */
  dir: string | null;
  maxFileBytes?: number;
  keepFiles?: number;
  /** Entries per sandbox kept in memory when there is no directory. */
  memoryEntries?: number;
}

export const DEFAULT_LOG_FILE_BYTES = 1 << 20;
export const DEFAULT_LOG_KEEP_FILES = 2;
/** Longer lines are cut (a guest can print anything to its console). */
export const MAX_LINE_CHARS = 8192;
export const DEFAULT_LOG_LIMIT = 1000;
export const MAX_LOG_LIMIT = 10_000;

const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/;
const CURRENT = 'log.jsonl';

export class SandboxLogStore {
  readonly dir: string | null;
  private readonly maxFileBytes: number;
  private readonly keepFiles: number;
  private readonly memoryEntries: number;
  private readonly sizes = new Map<string, number>();
  private readonly memory = new Map<string, LogEntry[]>();
  private readonly followers = new Map<string, Set<(e: LogEntry) => void>>();
  /** Entries and bytes written (for hearthd's own metrics). */
  written = 0;
  rotations = 0;

  constructor(opts: LogStoreOptions) {
    this.dir = opts.dir;
    this.maxFileBytes = Math.max(4096, opts.maxFileBytes ?? DEFAULT_LOG_FILE_BYTES);
    this.keepFiles = Math.max(0, opts.keepFiles ?? DEFAULT_LOG_KEEP_FILES);
    this.memoryEntries = opts.memoryEntries ?? 5000;
    if (this.dir) mkdirSync(this.dir, { recursive: true });
  }

  /** The sandbox's directory (null without a store directory or for an id that is not a safe name). */
  dirOf(id: string): string | null {
    return this.dir && SAFE_ID.test(id) ? join(this.dir, id) : null;
  }

  append(id: string, entries: readonly LogEntry[]): void {
    if (entries.length === 0) return;
    const clean = entries.map((e) => (e.line.length > MAX_LINE_CHARS ? { ...e, line: `${e.line.slice(0, MAX_LINE_CHARS)} … (cut at ${MAX_LINE_CHARS} characters)` } : e));
    const d = this.dirOf(id);
    if (d) {
      const text = clean.map((e) => JSON.stringify(e)).join('\n') + '\n';
      const bytes = Buffer.byteLength(text);
      const file = join(d, CURRENT);
      let size = this.sizes.get(id);
      if (size === undefined) {
        mkdirSync(d, { recursive: true });
        try { size = statSync(file).size; } catch { size = 0; }
      }
      if (size > 0 && size + bytes > this.maxFileBytes) { this.rotate(d); size = 0; }
      appendFileSync(file, text);
      this.sizes.set(id, size + bytes);
    } else {
      const list = this.memory.get(id) ?? [];
      list.push(...clean);
      if (list.length > this.memoryEntries) list.splice(0, list.length - this.memoryEntries);
      this.memory.set(id, list);
    }
    this.written += clean.length;
    const subs = this.followers.get(id);
    if (subs) for (const fn of [...subs]) for (const e of clean) { try { fn(e); } catch { /* the follower's problem */ } }
  }

  private rotate(d: string): void {
    const file = join(d, CURRENT);
    if (this.keepFiles === 0) { rmSync(file, { force: true }); this.rotations++; return; }
    rmSync(`${file}.${this.keepFiles}`, { force: true });
    for (let i = this.keepFiles - 1; i >= 1; i--) {
      if (existsSync(`${file}.${i}`)) renameSync(`${file}.${i}`, `${file}.${i + 1}`);
    }
    renameSync(file, `${file}.1`);
    this.rotations++;
  }

  /** Every entry kept, oldest first. */
  private all(id: string): LogEntry[] {
    const d = this.dirOf(id);
    if (!d) return [...(this.memory.get(id) ?? [])];
    const out: LogEntry[] = [];
    for (let i = this.keepFiles; i >= 0; i--) {
      let text: string;
      try { text = readFileSync(join(d, i === 0 ? CURRENT : `${CURRENT}.${i}`), 'utf8'); } catch { continue; }
      for (const line of text.split('\n')) {
        if (!line) continue;
        try { out.push(JSON.parse(line) as LogEntry); } catch { /* a torn last line after a crash */ }
      }
    }
    return out;
  }

  read(id: string, q: LogQuery = {}): LogEntry[] {
    const limit = Math.min(MAX_LOG_LIMIT, Math.max(1, q.limit ?? DEFAULT_LOG_LIMIT));
    const sources = q.sources && q.sources.length > 0 ? new Set(q.sources) : null;
    const kept = this.all(id).filter((e) => (!sources || sources.has(e.source)) && (q.start === undefined || Date.parse(e.timestamp) >= q.start));
    return q.start === undefined ? kept.slice(-limit) : kept.slice(0, limit);
  }

  /** Calls `fn` with each entry appended from now on. */
  follow(id: string, fn: (e: LogEntry) => void): () => void {
    let subs = this.followers.get(id);
    if (!subs) { subs = new Set(); this.followers.set(id, subs); }
    subs.add(fn);
    return () => {
      subs.delete(fn);
      if (subs.size === 0 && this.followers.get(id) === subs) this.followers.delete(id);
    };
  }

  get followerCount(): number {
    let n = 0;
    for (const s of this.followers.values()) n += s.size;
    return n;
  }

  /** Sandbox ids that have logs on disk (or in memory). */
  ids(): string[] {
    if (!this.dir) return [...this.memory.keys()];
    try { return readdirSync(this.dir).filter((n) => SAFE_ID.test(n)); } catch { return []; }
  }

  /** Drops a sandbox's logs (its record was purged). */
  remove(id: string): void {
    this.sizes.delete(id);
    this.memory.delete(id);
    const d = this.dirOf(id);
    if (d) rmSync(d, { recursive: true, force: true });
  }
}

/** Replaces each secret in a line with `[redacted]` (the sandbox's tokens and longer env values). */
export function redactor(secrets: readonly string[]): (line: string) => string {
  const list = [...new Set(secrets.filter((s) => s.length >= MIN_SECRET_CHARS))].sort((a, b) => b.length - a.length);
  if (list.length === 0) return (line) => line;
  return (line) => {
    let out = line;
    for (const s of list) if (out.includes(s)) out = out.split(s).join('[redacted]');
    return out;
  };
}

/** Env values shorter than this are not redacted (`1`, `true`, `prod` would blank out ordinary words). */
export const MIN_SECRET_CHARS = 8;
