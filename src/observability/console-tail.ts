import { closeSync, fstatSync, openSync, readFileSync, readSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import type { LogEntry, LogLevel, SandboxLogStore } from './logs.js';

/**
 * Copies each sandbox's serial console (`<dataDir>/sandboxes/<id>/console.log`,
 * written by the VMM, append-only: docs/ARCHITECTURE.md, "Storage") into its
 * log store, line by line, secrets redacted, and keeps that file bounded: once
 * everything in it has been copied and it is past `consoleMaxBytes`, it is
 * truncated (the VMM opened it O_APPEND, so its next write lands at the new end).
 * The read offset is kept beside the logs (`console.offset`), so a restarted
 * hearthd goes on where it stopped.
 */
export interface ConsoleSource {
  id: string;
  /** Secrets to redact from its lines (its tokens, env values). */
  redact: (line: string) => string;
}

export const DEFAULT_CONSOLE_MAX_BYTES = 1 << 20;
/** Bytes read per sandbox per pass at most (a guest printing flat out cannot stall hearthd). */
const READ_CHUNK = 256 * 1024;

interface TailState { offset: number; decoder: StringDecoder; partial: string }

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]/g;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/g;

/** One console line as a log entry: the agent's JSON lines become `agent` entries with their level. */
export function consoleEntry(raw: string, now: Date): LogEntry | null {
  const text = raw.replace(ANSI, '').replace(CONTROL, '').trimEnd();
  if (!text) return null;
  if (text.startsWith('{')) {
    try {
      const j = JSON.parse(text) as Record<string, unknown>;
      if (typeof j['msg'] === 'string' && typeof j['level'] === 'string') {
        const { t, level, msg, ...rest } = j;
        const lv = (['debug', 'info', 'warn', 'error'] as const).includes(level as LogLevel) ? level as LogLevel : 'info';
        const fields = Object.keys(rest).length ? ` ${JSON.stringify(rest)}` : '';
        const ts = typeof t === 'string' && !Number.isNaN(Date.parse(t)) ? new Date(t).toISOString() : now.toISOString();
        return { timestamp: ts, source: 'agent', level: lv, line: `${msg as string}${fields}` };
      }
    } catch { /* not the agent's */ }
  }
  return { timestamp: now.toISOString(), source: 'console', level: 'info', line: text };
}

export class ConsoleTailer {
  private readonly state = new Map<string, TailState>();
  bytesRead = 0;
  truncations = 0;

  constructor(
    private readonly sandboxesDir: string,
    private readonly logs: SandboxLogStore,
    private readonly consoleMaxBytes = DEFAULT_CONSOLE_MAX_BYTES,
  ) {}

  consolePath(id: string): string { return join(this.sandboxesDir, id, 'console.log'); }

  private offsetFile(id: string): string | null {
    const d = this.logs.dirOf(id);
    return d ? join(d, 'console.offset') : null;
  }

  private stateOf(id: string): TailState {
    let s = this.state.get(id);
    if (!s) {
      let offset = 0;
      const f = this.offsetFile(id);
      if (f) { try { offset = Number(readFileSync(f, 'utf8')) || 0; } catch { /* none yet */ } }
      s = { offset, decoder: new StringDecoder('utf8'), partial: '' };
      this.state.set(id, s);
    }
    return s;
  }

  /** Copies what the console gained since the last pass (synchronous: small reads, in order). */
  drain(src: ConsoleSource, final = false): number {
    const path = this.consolePath(src.id);
    let fd: number;
    try { fd = openSync(path, 'r'); } catch { return 0; }
    const s = this.stateOf(src.id);
    const entries: LogEntry[] = [];
    const now = new Date();
    let total = 0;
    try {
      let size = fstatSync(fd).size;
      if (size < s.offset) { s.offset = 0; s.partial = ''; } // truncated or replaced
      const buf = Buffer.alloc(Math.min(READ_CHUNK, Math.max(0, size - s.offset)));
      while (s.offset < size && total < READ_CHUNK) {
        const n = readSync(fd, buf, 0, Math.min(buf.length, size - s.offset), s.offset);
        if (n <= 0) break;
        s.offset += n;
        total += n;
        const text = s.partial + s.decoder.write(buf.subarray(0, n));
        const lines = text.split('\n');
        s.partial = lines.pop() ?? '';
        if (s.partial.length > 4096) { lines.push(s.partial); s.partial = ''; }
        for (const l of lines) { const e = consoleEntry(src.redact(l), now); if (e) entries.push(e); }
      }
      if (final && s.partial) { const e = consoleEntry(src.redact(s.partial), now); if (e) entries.push(e); s.partial = ''; }
      // Everything copied and the file is large: start it again (the VMM appends, O_APPEND).
      size = fstatSync(fd).size;
      if (s.offset === size && size > this.consoleMaxBytes) {
        truncateSync(path, 0);
        s.offset = 0;
        this.truncations++;
      }
    } finally {
      closeSync(fd);
    }
    this.bytesRead += total;
    this.logs.append(src.id, entries);
    if (total > 0) {
      const f = this.offsetFile(src.id);
      if (f) { try { writeFileSync(f, String(s.offset)); } catch { /* the logs dir went away */ } }
    }
    return total;
  }

  /** The sandbox ended: its last lines are in, forget its state. */
  forget(id: string): void { this.state.delete(id); }

  /** Whether the console file exists (for tests). */
  has(id: string): boolean { try { statSync(this.consolePath(id)); return true; } catch { return false; } }
}
