/** Output helpers: tables for people, JSON for scripts (`--json`). */
import { Transform } from 'node:stream';

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function printTable(rows: Record<string, string | number | null | undefined>[], columns: string[]): void {
  if (rows.length === 0) { process.stdout.write('(none)\n'); return; }
  const cell = (v: unknown): string => (v === null || v === undefined ? '-' : String(v));
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]): string => vals.map((v, i) => v.padEnd(widths[i]!)).join('  ').trimEnd();
  process.stdout.write(`${line(columns.map((c) => c.toUpperCase()))}\n`);
  for (const r of rows) process.stdout.write(`${line(columns.map((c) => cell(r[c])))}\n`);
}

export function age(iso: string | null | undefined): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** An error that the CLI prints as is (no stack) and exits with `exitCode`. */
export class UsageError extends Error {
  constructor(message: string, readonly exitCode = 2) { super(message); }
}

/** Parses repeated `KEY=VALUE` flags. */
export function parseKeyValues(values: string[] | undefined, flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values ?? []) {
    const i = v.indexOf('=');
    if (i <= 0) throw new UsageError(`${flag} expects KEY=VALUE, got "${v}"`);
    out[v.slice(0, i)] = v.slice(i + 1);
  }
  return out;
}

// ---------- errors in the user's words ----------

/** API field names → the CLI flags that set them. */
const FIELD_FLAGS: Record<string, string> = {
  cpuCount: '--cpu', memoryMB: '--memory', timeout: '--timeout', envVars: '--env', metadata: '--meta', templateID: '--template',
  allow_internet_access: '--internet', allowOut: '--allow-out', denyOut: '--deny-out', name: '--name', count: '--count',
};
const COMPARE: Record<string, string> = { '<=': 'at most', '>=': 'at least', '<': 'less than', '>': 'more than' };

/**
 * hearthd's validation messages (`body/cpuCount must be <= 64`) in the CLI's terms
 * (`--cpu must be at most 64`); other messages pass unchanged.
 */
export function humanize(message: string): string {
  return message
    .replace(/\b(?:body|querystring|params)\/(?:network\/)?(\w+)(?:\/[\w/]*)? must be (<=|>=|<|>) (\d+)/g, (_m, field: string, op: string, n: string) => `${FIELD_FLAGS[field] ?? field} must be ${COMPARE[op]} ${n}`)
    .replace(/\b(?:body|querystring|params)\/(?:network\/)?(\w+)(?:\/[\w/]*)? must be integer/g, (_m, field: string) => `${FIELD_FLAGS[field] ?? field} must be a whole number`)
    .replace(/\b(?:body|querystring|params)\/(?:network\/)?(\w+)/g, (_m, field: string) => FIELD_FLAGS[field] ?? field)
    // The SDK's advice, as CLI commands.
    .replace(/\(sandbox\.resume\(\) or Sandbox\.connect\(id\)\)/g, '(`hearth sandbox resume <id>`)')
    // hearthd's own limits (src/core/manager.ts): "cpuCount must be an integer from 1 to 8"
    .replace(/^(cpuCount|memoryMB|timeout|count) must be an integer(?: number of seconds)? from/, (_m, field: string) => `${FIELD_FLAGS[field] ?? field} must be a whole number from`);
}

/** An error as the CLI reports it under --json: one JSON object on stderr. */
export function jsonError(err: unknown, exitCode: number): string {
  const e = err as { message?: string; status?: number; code?: string; name?: string };
  return JSON.stringify({ error: { message: humanize(e.message ?? String(err)), type: e.name ?? 'Error', ...(e.code ? { code: e.code } : {}), ...(e.status ? { status: e.status } : {}), exitCode } });
}

// ---------- progress on a terminal ----------

export function fmtBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0; let v = n;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(1)} ${u[i]}`;
}

/** Progress lines go to stderr, only when it is a terminal and JSON was not asked for. */
export function showProgress(json: boolean | undefined): boolean {
  return !json && process.stderr.isTTY === true;
}

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/** A one-line spinner with elapsed time on stderr: `⠙ pausing i3kz… 2.4 s`. */
export class Spinner {
  private timer: NodeJS.Timeout | undefined;
  private frame = 0;
  private readonly t0 = performance.now();
  constructor(private label: string, private readonly enabled: boolean) {
    if (!enabled) return;
    this.draw();
    this.timer = setInterval(() => this.draw(), 100);
    this.timer.unref();
  }
  private draw(): void {
    process.stderr.write(`\r\x1b[K${FRAMES[this.frame++ % FRAMES.length]} ${this.label} ${((performance.now() - this.t0) / 1000).toFixed(1)} s`);
  }
  set(label: string): void { this.label = label; }
  elapsedMs(): number { return Math.round(performance.now() - this.t0); }
  /** Clears the line; prints `done` (with the elapsed time) when given. */
  stop(done?: string): void {
    if (this.timer) clearInterval(this.timer);
    if (!this.enabled) return;
    process.stderr.write(`\r\x1b[K${done ? `${done} in ${(this.elapsedMs() / 1000).toFixed(1)} s\n` : ''}`);
  }
}

/** Runs `fn` under a spinner (when progress is shown). */
export async function withSpinner<T>(label: string, json: boolean | undefined, fn: () => Promise<T>, done?: (r: T) => string): Promise<T> {
  const s = new Spinner(label, showProgress(json));
  try {
    const r = await fn();
    s.stop(done?.(r));
    return r;
  } catch (err) {
    s.stop();
    throw err;
  }
}

/**
 * Counts bytes passing through (a Transform for pipelines) and shows `name 12.0 MiB / 40.0 MiB
 * (30%) 5.1 MiB/s` on stderr while they do.
 */
export function transferProgress(label: string, total: number | undefined, enabled: boolean): { stream: Transform; done: () => void; bytes: () => number } {
  const t0 = performance.now();
  let bytes = 0;
  let last = 0;
  const draw = (final: boolean): void => {
    if (!enabled) return;
    const secs = Math.max(0.001, (performance.now() - t0) / 1000);
    const pct = total ? ` (${Math.floor((100 * bytes) / total)}%)` : '';
    process.stderr.write(`\r\x1b[K${label} ${fmtBytes(bytes)}${total !== undefined ? ` / ${fmtBytes(total)}` : ''}${pct} ${fmtBytes(bytes / secs)}/s${final ? ` in ${secs.toFixed(1)} s\n` : ''}`);
  };
  const stream = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      bytes += chunk.length;
      const now = performance.now();
      if (now - last > 100) { last = now; draw(false); }
      cb(null, chunk);
    },
  });
  return { stream, done: () => draw(true), bytes: () => bytes };
}
