import { parseArgs } from 'node:util';
import { readFile, stat } from 'node:fs/promises';
import { basename, extname, join, resolve } from 'node:path';
import {
  contextSize, HearthApi, readContextDir, TemplateBuildError, Templates,
  type ConnectionOptions, type Recipe, type TemplateBuild, type TemplateBuildLogEntry, type TemplateBuildStep, type TemplateInfo,
} from '../../sdk/index.js';
import { age, fmtBytes, jsonError, printJson, printTable, UsageError, withSpinner } from '../output.js';
import { resolveSandboxId } from '../resolve.js';

interface TemplateSnapshotInfo {
  snapshotID: string; templateID: string; cpuCount: number; memoryMB: number; sizeBytes: number;
  createdAt: string; lastUsedAt: string; current: boolean; inUse: number;
}

const path = (...parts: string[]): string => `/${parts.map(encodeURIComponent).join('/')}`;

/** `hearth template`: templates, their builds (docs/templates.md) and their warm snapshots. */
export async function templateCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'ls': case 'list': return list(rest);
    case 'get': case 'inspect': return get(rest);
    case 'rm': case 'delete': case 'remove': return rm(rest);
    case 'build': return build(rest);
    case 'create': return create(rest);
    case 'builds': return builds(rest);
    case 'logs': return logs(rest);
    case 'snapshots': case 'snapshot': return snapshots(rest);
    case undefined: throw new UsageError('usage: hearth template ls|get|rm|build|create|builds|logs|snapshots; `hearth template --help` says more');
    default: throw new UsageError(`unknown command "template ${sub}"; \`hearth template --help\` lists them`);
  }
}

async function list(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } } });
  if (positionals.length) throw new UsageError('usage: hearth template ls [--json]');
  const items = await Templates.list();
  if (values.json) { printJson(items); return 0; }
  printTable(items.map((t) => ({
    id: t.templateID, aliases: t.aliases?.join(',') || '-', source: t.source ?? '-', shape: `${t.cpuCount}c/${t.memoryMB}M`, disk: `${t.diskSizeMB}M`,
    image: t.imageHash ? t.imageHash.slice(0, 12) : '-', age: age(t.createdAt),
  })), ['id', 'aliases', 'source', 'shape', 'disk', 'image', 'age']);
  return 0;
}

async function snapshots(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } } });
  const api = new HearthApi();
  if (positionals[0] === 'rm' || positionals[0] === 'delete') {
    const [, template, ...snaps] = positionals;
    if (!template || snaps.length === 0) throw new UsageError('usage: hearth template snapshots rm <template> <snapshot>...');
    for (const snap of snaps) await api.request<void>('DELETE', path('templates', template, 'snapshots', snap));
    if (values.json) printJson(snaps.map((s) => ({ template, snapshot: s, deleted: true })));
    return 0;
  }
  const [template] = positionals;
  if (!template || positionals.length > 1) throw new UsageError('usage: hearth template snapshots <template> | hearth template snapshots rm <template> <snapshot>...');
  const items = await api.request<TemplateSnapshotInfo[]>('GET', path('templates', template, 'snapshots'));
  if (values.json) { printJson(items); return 0; }
  printTable(items.map((s) => ({
    id: s.snapshotID, shape: `${s.cpuCount}c/${s.memoryMB}M`, size: `${Math.round(s.sizeBytes / 1048576)}M`, age: age(s.createdAt),
    used: `${age(s.lastUsedAt)} ago`, state: !s.current ? 'outdated' : s.inUse > 0 ? `in use (${s.inUse})` : 'ready',
  })), ['id', 'shape', 'size', 'age', 'used', 'state']);
  return 0;
}

// ---------- get, rm, builds ----------

export function describeTemplate(t: TemplateInfo): string {
  const ready = t.readyCheck ? ` (ready: ${'port' in t.readyCheck ? `port ${t.readyCheck.port}` : `\`${t.readyCheck.command}\` exits 0`})` : '';
  const env = Object.keys(t.envVars ?? {});
  const rows: [string, string][] = [
    ['id', t.templateID],
    ['aliases', t.aliases?.length ? t.aliases.join(' ') : '-'],
    ['source', `${t.source ?? '-'}${t.from ? ` (from ${t.from})` : ''}`],
    ['resources', `${t.cpuCount} vCPU, ${t.memoryMB} MB memory, ${t.diskSizeMB} MB disk`],
    ['created', `${t.createdAt} (${age(t.createdAt)} ago)`],
    ['build', t.buildID ?? '-'],
    ['user', t.user ?? '-'],
    ['workdir', t.workdir ?? '-'],
    ['env vars', env.length ? `${env.join('  ')}  (values hidden; --json shows them)` : '-'],
    ['start', t.startCommand ? `${t.startCommand}${ready}` : '-'],
    ['image', t.imageHash || '-'],
  ];
  return rows.map(([k, v]) => `${k.padEnd(12)}${v}`).join('\n');
}

async function get(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } } });
  if (positionals.length !== 1) throw new UsageError('usage: hearth template get <id> [--json]');
  const t = await Templates.get(positionals[0]!);
  if (values.json) { printJson(t); return 0; }
  process.stdout.write(`${describeTemplate(t)}\n`);
  if (t.layers?.length) {
    process.stdout.write('\nlayers:\n');
    printTable(t.layers.map((l, i) => ({ '#': i + 1, step: l.step.length > 70 ? `${l.step.slice(0, 69)}…` : l.step, key: l.key.slice(0, 16), size: fmtBytes(l.sizeBytes) })), ['#', 'step', 'key', 'size']);
  }
  return 0;
}

async function rm(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } } });
  if (positionals.length === 0) throw new UsageError('usage: hearth template rm <id>...');
  const results: { id: string; ok: boolean; error?: string }[] = [];
  for (const id of positionals) {
    try {
      await Templates.delete(id);
      results.push({ id, ok: true });
    } catch (err) { results.push({ id, ok: false, error: (err as Error).message }); }
  }
  if (values.json) printJson(results);
  else for (const r of results) process[r.ok ? 'stdout' : 'stderr'].write(r.ok ? `${r.id} deleted\n` : `${r.id}: ${r.error}\n`);
  return results.every((r) => r.ok) ? 0 : 1;
}

async function builds(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } } });
  if (positionals.length !== 1) throw new UsageError('usage: hearth template builds <id> [--json]');
  const items = await Templates.listBuilds(positionals[0]!);
  if (values.json) { printJson(items); return 0; }
  printTable(items.map((b) => {
    const err = b.error?.split('\n')[0] ?? '';
    return {
      build: b.buildID, status: b.status === 'building' ? `building (${b.phase})` : b.status,
      steps: `${b.steps.length} (${b.steps.filter((s) => s.cached).length} cached)`,
      took: b.durationMs !== null ? fmtDuration(b.durationMs) : '-', age: age(b.createdAt), error: err ? (err.length > 60 ? `${err.slice(0, 59)}…` : err) : '-',
    };
  }), ['build', 'status', 'steps', 'took', 'age', 'error']);
  return 0;
}

// ---------- build progress ----------

export function fmtDuration(ms: number): string {
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
}

/** Where progress goes: a stream (stderr) and whether it is a terminal. */
export interface ProgressSink { write(s: string): unknown; columns?: number }

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const TERMINAL: ReadonlySet<TemplateBuildStep['status']> = new Set(['cached', 'done', 'failed', 'cancelled', 'skipped']);

/**
 * A build's progress as it happens. On a terminal (`fancy`): one line per step as it ends
 * (cached, done with its duration, failed), the running step on a spinner line at the bottom,
 * the steps' log lines dimmed above it. Otherwise plain lines: each step as it starts or ends,
 * and each log line prefixed with its step's number (`[2] …`; the builder's own: `[hearth] …`).
 */
export class BuildProgress {
  private readonly steps = new Map<number, TemplateBuildStep>();
  /** How many steps the build has (0: not known, the labels then show no total). */
  private total: number;
  private running: { step: TemplateBuildStep; since: number } | null = null;
  private timer: NodeJS.Timeout | undefined;
  private frame = 0;
  private readonly t0 = performance.now();
  private readonly color: boolean;

  constructor(private readonly out: ProgressSink, private readonly fancy: boolean, initial?: TemplateBuild) {
    this.total = initial?.steps.length ?? 0;
    this.color = fancy && !process.env['NO_COLOR'];
    if (fancy) {
      this.timer = setInterval(() => this.draw(), 100);
      this.timer.unref();
      this.draw();
    }
  }

  private paint(code: string, s: string): string { return this.color ? `\x1b[${code}m${s}\x1b[0m` : s; }
  private label(s: TemplateBuildStep): string { return `[${s.index + 1}${this.total ? `/${this.total}` : ''}] ${s.description}`; }

  private statusLine(): string {
    const f = FRAMES[this.frame++ % FRAMES.length];
    if (this.running) return `${f} ${this.label(this.running.step)} ${this.paint('2', fmtDuration(performance.now() - this.running.since))}`;
    const all = [...this.steps.values()];
    const what = this.total > 0 && all.length >= this.total && all.every((s) => TERMINAL.has(s.status)) ? 'warm snapshot…' : 'building…';
    return `${f} ${what} ${this.paint('2', fmtDuration(performance.now() - this.t0))}`;
  }

  private draw(): void {
    if (!this.fancy) return;
    const line = this.statusLine();
    const width = this.out.columns ?? 0;
    this.out.write(`\r\x1b[K${width > 10 && line.length > width - 1 ? `${line.slice(0, width - 2)}…` : line}`);
  }

  /** A permanent line (above the spinner line on a terminal). */
  private line(text: string): void {
    if (this.fancy) { this.out.write(`\r\x1b[K${text}\n`); this.draw(); } else this.out.write(`${text}\n`);
  }

  step(s: TemplateBuildStep): void {
    this.steps.set(s.index, s);
    if (this.total > 0 && s.index + 1 > this.total) this.total = s.index + 1;
    if (this.running?.step.index === s.index && s.status !== 'running') this.running = null;
    const took = s.durationMs !== null ? fmtDuration(s.durationMs) : '';
    const ok = this.paint('32', '✓');
    const bad = this.paint('31', '✗');
    switch (s.status) {
      case 'running':
        this.running = { step: s, since: performance.now() };
        if (this.fancy) this.draw(); else this.line(this.label(s));
        return;
      case 'cached': this.line(this.fancy ? `${ok} ${this.label(s)} ${this.paint('2', 'cached')}` : `${this.label(s)}: cached`); return;
      case 'skipped': this.line(this.fancy ? `${ok} ${this.label(s)} ${this.paint('2', '(no layer)')}` : `${this.label(s)}: no layer`); return;
      case 'done': this.line(this.fancy ? `${ok} ${this.label(s)} ${this.paint('2', took)}` : `${this.label(s)}: done${took ? ` in ${took}` : ''}`); return;
      case 'failed': {
        const why = `failed${s.exitCode !== null ? ` (exit ${s.exitCode})` : ''}${took ? ` after ${took}` : ''}`;
        this.line(this.fancy ? `${bad} ${this.label(s)} ${this.paint('31', why)}` : `${this.label(s)}: ${why}`);
        return;
      }
      case 'cancelled': this.line(this.fancy ? `${bad} ${this.label(s)} ${this.paint('2', 'cancelled')}` : `${this.label(s)}: cancelled`); return;
      case 'pending': return;
    }
  }

  log(e: TemplateBuildLogEntry): void {
    if (this.fancy) this.line(e.step === null ? `  ${e.line}` : this.paint('2', `  ${e.line}`));
    else this.line(`${e.step === null ? '[hearth]' : `[${e.step + 1}]`} ${e.line}`);
  }

  /** Stops the spinner and clears its line. */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.fancy) this.out.write('\r\x1b[K');
  }

  elapsedMs(): number { return Math.round(performance.now() - this.t0); }
}

/** The one-line result of a build: what it made, how long it took, how much came from the cache. */
export function buildSummary(b: TemplateBuild, elapsedMs: number): string {
  const took = fmtDuration(b.durationMs ?? elapsedMs);
  const cached = b.steps.filter((s) => s.cached).length;
  const steps = `${cached} of ${b.steps.length} step${b.steps.length === 1 ? '' : 's'} cached`;
  if (b.status === 'ready') return `template ${b.templateID} ready in ${took} (${steps}; build ${b.buildID})`;
  return `build ${b.buildID} of template ${b.templateID} ${b.status} after ${took} (${steps})`;
}

/**
 * Follows a build to its end with progress on stderr. 0 when ready; 1 when it failed or was
 * cancelled elsewhere (the error on stderr); 130 when `signal` aborts (Ctrl-C), after cancelling
 * the build.
 */
export async function watchBuild(
  build: TemplateBuild,
  opts: { json?: boolean | undefined; signal: AbortSignal; err?: ProgressSink; fancy?: boolean; connection?: ConnectionOptions },
): Promise<number> {
  const err: ProgressSink = opts.err ?? process.stderr;
  const progress = new BuildProgress(err, opts.fancy ?? process.stderr.isTTY === true, build);
  let final: TemplateBuild | undefined;
  try {
    for await (const e of Templates.followBuild(build.templateID, build.buildID, { ...opts.connection, build, signal: opts.signal })) {
      if (e.type === 'log') progress.log(e.entry);
      else if (e.type === 'step') progress.step(e.step);
      else final = e.build;
    }
  } finally {
    progress.stop();
  }
  if (!final) {
    if (!opts.signal.aborted) throw new Error(`the log stream of build ${build.buildID} ended before the build did`);
    err.write(`cancelling build ${build.buildID} of template ${build.templateID}…\n`);
    const cancelled = await Templates.cancelBuild(build.templateID, build.buildID, { ...opts.connection });
    err.write(cancelled ? 'cancelled\n' : 'it had already ended\n');
    return 130;
  }
  const summary = buildSummary(final, progress.elapsedMs());
  if (opts.json) printJson(final);
  if (final.status === 'ready') {
    if (opts.json) err.write(`${summary}\n`); else process.stdout.write(`${summary}\n`);
    return 0;
  }
  err.write(`${summary}\n`);
  const e = new TemplateBuildError(final);
  err.write(opts.json ? `${jsonError(e, 1)}\n` : `error: ${e.message}\n`);
  return 1;
}

/** Runs `fn` with an AbortSignal that Ctrl-C aborts (once; a second Ctrl-C ends the process as usual). */
async function onCtrlC<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const abort = (): void => ac.abort();
  process.once('SIGINT', abort);
  try { return await fn(ac.signal); } finally { process.off('SIGINT', abort); }
}

// ---------- build, create, logs ----------

function int(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new UsageError(`${flag} expects a whole number, got "${v}"`);
  return Number(v);
}

const SHAPE_OPTIONS = {
  alias: { type: 'string', multiple: true }, cpu: { type: 'string' }, memory: { type: 'string' }, disk: { type: 'string' },
  json: { type: 'boolean' }, 'no-follow': { type: 'boolean' },
} as const;

function shape(values: { alias?: string[] | undefined; cpu?: string | undefined; memory?: string | undefined; disk?: string | undefined }): { aliases?: string[]; cpuCount?: number; memoryMB?: number; diskSizeMB?: number } {
  const cpuCount = int(values.cpu, '--cpu');
  const memoryMB = int(values.memory, '--memory');
  const diskSizeMB = int(values.disk, '--disk');
  return {
    ...(values.alias?.length ? { aliases: values.alias } : {}),
    ...(cpuCount !== undefined ? { cpuCount } : {}), ...(memoryMB !== undefined ? { memoryMB } : {}), ...(diskSizeMB !== undefined ? { diskSizeMB } : {}),
  };
}

/** The recipe file of a context directory: `--file`, else `hearth.template.json`, else `Dockerfile`. */
export async function findRecipeFile(dir: string, file: string | undefined): Promise<string> {
  if (file !== undefined) return resolve(file);
  for (const name of ['hearth.template.json', 'Dockerfile']) {
    const p = join(dir, name);
    if ((await stat(p).catch(() => null))?.isFile()) return p;
  }
  throw new UsageError(`${dir} has no hearth.template.json and no Dockerfile; --file names the recipe or Dockerfile`);
}

/** A recipe file (JSON: `*.json`, or text starting with `{`) or a Dockerfile. */
export function readRecipeText(file: string, text: string): { recipe: Recipe } | { dockerfile: string } {
  if (extname(file) !== '.json' && !text.trimStart().startsWith('{')) return { dockerfile: text };
  try {
    return { recipe: JSON.parse(text) as Recipe };
  } catch (err) {
    throw new UsageError(`${file}: not valid JSON (${(err as Error).message})`, 1);
  }
}

/** A template name from a directory's name: `My App` → `my-app`. */
export function nameFromDir(dir: string): string {
  return basename(resolve(dir)).toLowerCase().replace(/[^a-z0-9_-]+/g, '-').replace(/^[-_]+|[-_]+$/g, '');
}

function started(b: TemplateBuild, json: boolean | undefined): number {
  if (json) printJson(b);
  else process.stdout.write(`build ${b.buildID} of template ${b.templateID} started; follow it with \`hearth template logs ${b.templateID} ${b.buildID} -f\`\n`);
  return 0;
}

async function build(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { ...SHAPE_OPTIONS, name: { type: 'string' }, file: { type: 'string', short: 'f' } } });
  if (positionals.length !== 1) throw new UsageError('usage: hearth template build <dir> [--name N] [--file F] [--alias A]... [--cpu N] [--memory MB] [--disk MB] [--json] [--no-follow]\nSee `hearth template build --help`.');
  const dir = positionals[0]!;
  if (!(await stat(dir).catch(() => null))?.isDirectory()) throw new UsageError(`${dir} is not a directory`, 1);
  const name = values.name ?? nameFromDir(dir);
  if (!name) throw new UsageError('--name is required (the directory\'s name makes no template name)');
  const file = await findRecipeFile(dir, values.file);
  const source = readRecipeText(file, await readFile(file, 'utf8'));
  const files = await readContextDir(dir);
  const count = Object.keys(files).length;
  const label = `${count} file${count === 1 ? '' : 's'}, ${fmtBytes(contextSize(files))}`;
  const b = await withSpinner(`uploading the build context (${label})…`, values.json, () => Templates.build({ name, ...source, files, ...shape(values) }),
    (r) => `build ${r.buildID} of template ${r.templateID}: context of ${label} uploaded`);
  if (values['no-follow']) return started(b, values.json);
  return onCtrlC((signal) => watchBuild(b, { json: values.json, signal }));
}

async function create(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { ...SHAPE_OPTIONS, 'from-sandbox': { type: 'string' }, 'from-snapshot': { type: 'string' } } });
  const from = [values['from-sandbox'], values['from-snapshot']].filter((v) => v !== undefined);
  if (positionals.length !== 1 || from.length !== 1) throw new UsageError('usage: hearth template create <name> --from-sandbox <id> | --from-snapshot <id> [--alias A]... [--cpu N] [--memory MB] [--disk MB] [--json] [--no-follow]');
  const source = values['from-sandbox'] !== undefined ? { fromSandbox: await resolveSandboxId(values['from-sandbox']) } : { fromSnapshot: values['from-snapshot']! };
  const b = await withSpinner(`starting the build of ${positionals[0]}…`, values.json, () => Templates.build({ name: positionals[0]!, ...source, ...shape(values) }));
  if (values['no-follow']) return started(b, values.json);
  return onCtrlC((signal) => watchBuild(b, { json: values.json, signal }));
}

function plainLog(e: TemplateBuildLogEntry): string {
  return `${e.timestamp.replace('T', ' ').slice(0, 23)} ${e.step === null ? '[hearth]' : `[${e.step + 1}]`} ${e.line}\n`;
}

async function logs(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { follow: { type: 'boolean', short: 'f' }, json: { type: 'boolean' } } });
  if (positionals.length !== 2) throw new UsageError('usage: hearth template logs <id> <build-id> [-f] [--json]\n`hearth template builds <id>` lists the builds.');
  const [id, buildID] = positionals as [string, string];
  if (!values.follow) {
    const entries = await Templates.buildLogs(id, buildID);
    if (values.json) printJson(entries); else for (const e of entries) process.stdout.write(plainLog(e));
    return 0;
  }
  return onCtrlC(async (signal) => {
    for await (const e of Templates.followBuild(id, buildID, { signal })) {
      if (values.json) process.stdout.write(`${JSON.stringify(e)}\n`);
      else if (e.type === 'log') process.stdout.write(plainLog(e.entry));
      else if (e.type === 'end') process.stdout.write(`${buildSummary(e.build, 0)}${e.build.error ? `: ${e.build.error}` : ''}\n`);
    }
    return 0;
  });
}
