/**
 * Custom templates (docs/templates.md): a builder for recipes, the build context read from a
 * directory, and the `/templates` API (start a build, follow its log, wait for it, list,
 * inspect, cancel, delete).
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { HearthApi, type ConnectionOptions } from './api.js';
import { ConflictError, InvalidArgumentError, SandboxError } from './errors.js';
import { sse } from './observe.js';
import type {
  Recipe, RecipeResources, RecipeStep, StartSpec, TemplateBuild, TemplateBuildLogEntry, TemplateBuildStep, TemplateInfo,
} from './types.js';

export type { Recipe, RecipeResources, RecipeStep, StartSpec, TemplateBuild, TemplateBuildLogEntry, TemplateBuildStep, TemplateInfo };

// ---------- the recipe builder ----------

/**
 * A recipe in TypeScript, step by step; `toRecipe()` gives the object `hearth.template.json` holds:
 *
 *     new TemplateBuilder().from('base').apt('python3-numpy').copy('app/', '/home/user/app', { owner: 'user' })
 *       .workdir('/home/user/app').user('user').start('python3 -m http.server 8000', { port: 8000 }).toRecipe()
 *
 * The builder checks only what it must to build the object; hearthd validates the recipe.
 */
export class TemplateBuilder {
  private base: string | undefined;
  private readonly steps: RecipeStep[] = [];
  private startSpec: StartSpec | undefined;
  private res: RecipeResources | undefined;

  /** The template (id or alias) to build on (default "base"). */
  from(template: string): this { this.base = template; return this; }

  /** A shell command line (`/bin/sh -c`); a non-zero exit fails the build. */
  run(command: string, opts: { user?: string } = {}): this {
    this.steps.push({ run: command, ...(opts.user !== undefined ? { user: opts.user } : {}) });
    return this;
  }

  /** Files from the build context (`src` context-relative, "." = all) to `dest` (a `dest` ending in "/" receives `src` inside it). */
  copy(src: string, dest: string, opts: { owner?: string; mode?: string } = {}): this {
    this.steps.push({ copy: { src, dest, ...(opts.owner !== undefined ? { owner: opts.owner } : {}), ...(opts.mode !== undefined ? { mode: opts.mode } : {}) } });
    return this;
  }

  /** Variables for later steps and for every sandbox's commands. */
  env(vars: Record<string, string>): this { this.steps.push({ env: { ...vars } }); return this; }

  /** The working directory of later steps and of every sandbox (created). */
  workdir(path: string): this { this.steps.push({ workdir: path }); return this; }

  /** The user later steps run as, and the sandboxes' default user. */
  user(name: string): this { this.steps.push({ user: name }); return this; }

  /** Debian packages (installed without guest network access). */
  apt(...packages: string[]): this {
    if (packages.length === 0) throw new InvalidArgumentError('apt(): name at least one package');
    this.steps.push({ apt: [...packages] });
    return this;
  }

  /** Python packages (`pip install` in the guest: needs egress to the index, or local paths copied in earlier). */
  pip(...specs: string[]): this {
    if (specs.length === 0) throw new InvalidArgumentError('pip(): name at least one package');
    this.steps.push({ pip: [...specs] });
    return this;
  }

  /**
   * The start command, running in every sandbox. Ready when `port` accepts TCP connections or
   * `command` exits 0 (one of them, or neither), polled for `timeoutSec` (default 60).
   */
  start(command: string, opts: { port?: number; command?: string; timeoutSec?: number } = {}): this {
    if (opts.port !== undefined && opts.command !== undefined) throw new InvalidArgumentError('start(): the ready check is a port or a command, not both');
    this.startSpec = {
      command,
      ...(opts.port !== undefined ? { ready: { port: opts.port } } : opts.command !== undefined ? { ready: { command: opts.command } } : {}),
      ...(opts.timeoutSec !== undefined ? { timeoutSec: opts.timeoutSec } : {}),
    };
    return this;
  }

  /** The template's default shape and disk size (merged with earlier calls). */
  resources(r: RecipeResources): this { this.res = { ...this.res, ...r }; return this; }

  /** The recipe (a copy: changing it does not change the builder). */
  toRecipe(): Recipe {
    return structuredClone({
      ...(this.base !== undefined ? { from: this.base } : {}),
      steps: this.steps,
      ...(this.startSpec ? { start: this.startSpec } : {}),
      ...(this.res ? { resources: this.res } : {}),
    });
  }
}

// ---------- the build context ----------

/** Names never part of a build context, at any depth. */
const ALWAYS_SKIPPED = new Set(['.git', 'node_modules']);

/** The file in a context directory that lists what to leave out. */
export const IGNORE_FILE = '.hearthignore';

interface IgnoreRule { re: RegExp; dirOnly: boolean }

function globBody(glob: string): string {
  let out = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*' && glob[i + 1] === '*') {
      const atStart = i === 0 || glob[i - 1] === '/';
      if (atStart && glob[i + 2] === '/') { out += '(?:.*/)?'; i += 2; } // "**/": any number of directories, also none
      else { out += '.*'; i += 1; } // "/**" (everything inside) or "**" elsewhere
    } else if (c === '*') out += '[^/]*';
    else if (c === '?') out += '[^/]';
    else out += c.replace(/[\\^$.*+?()[\]{}|/]/g, '\\$&');
  }
  return out;
}

/**
 * Compiles `.hearthignore` text: one pattern a line; blank lines and `#` comments skipped.
 * `*` matches within a name, `**` across directories, `?` one character; a trailing `/` matches
 * directories only; a pattern with a `/` (other than trailing) is relative to the context root,
 * one without matches the name at any depth. An ignored directory leaves out all it holds.
 * `!` (re-including) is not supported and is an error.
 */
export function parseIgnore(text: string): (path: string, isDir: boolean) => boolean {
  const rules: IgnoreRule[] = [];
  text.split(/\r?\n/).forEach((raw, n) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    if (line.startsWith('!')) throw new InvalidArgumentError(`${IGNORE_FILE} line ${n + 1}: "!" (re-including a path) is not supported`);
    const dirOnly = line.endsWith('/');
    let pat = line.replace(/\/+$/, '');
    const anchored = pat.includes('/');
    pat = pat.replace(/^\/+/, '');
    if (!pat) return;
    rules.push({ re: new RegExp(`^${anchored ? '' : '(?:.*/)?'}${globBody(pat)}$`), dirOnly });
  });
  return (path, isDir) => rules.some((r) => (isDir || !r.dirOnly) && r.re.test(path));
}

/**
 * A directory as a build context: every file (by its `/`-separated relative path) with its
 * content, and every empty directory as `"<path>/"` with empty content. Left out: `.git` and
 * `node_modules` at any depth, what `.hearthignore` (in `dir`, see `parseIgnore`) matches,
 * symbolic links to directories and broken ones, and anything but files and directories.
 * A symbolic link to a file is read as the file it points to.
 */
export async function readContextDir(dir: string): Promise<Record<string, Uint8Array>> {
  let ignoreText = '';
  try { ignoreText = await readFile(join(dir, IGNORE_FILE), 'utf8'); } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const ignored = parseIgnore(ignoreText);
  if (!(await stat(dir)).isDirectory()) throw new InvalidArgumentError(`${dir} is not a directory`);
  const out: Record<string, Uint8Array> = {};
  const walk = async (rel: string): Promise<number> => {
    const entries = (await readdir(rel ? join(dir, rel) : dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    let added = 0;
    for (const e of entries) {
      if (ALWAYS_SKIPPED.has(e.name)) continue;
      const p = rel ? `${rel}/${e.name}` : e.name;
      const abs = join(dir, p);
      let isFile = e.isFile();
      if (e.isSymbolicLink()) {
        const target = await stat(abs).catch(() => null);
        isFile = target?.isFile() === true;
        if (!isFile) continue;
      }
      if (e.isDirectory()) {
        if (ignored(p, true)) continue;
        if ((await walk(p)) === 0) out[`${p}/`] = new Uint8Array(0);
        added++;
      } else if (isFile) {
        if (ignored(p, false)) continue;
        out[p] = new Uint8Array(await readFile(abs));
        added++;
      }
    }
    return added;
  };
  await walk('');
  return out;
}

/** The total size of a context's contents, in bytes. */
export function contextSize(files: Record<string, Uint8Array | string>): number {
  let n = 0;
  for (const v of Object.values(files)) n += typeof v === 'string' ? Buffer.byteLength(v) : v.byteLength;
  return n;
}

// ---------- the API ----------

/** What `Templates.build` starts: exactly one of `recipe`, `dockerfile`, `fromSandbox`, `fromSnapshot`. */
export interface TemplateBuildSpec {
  /** The template's id (a build of an existing name replaces it once it succeeds). */
  name: string;
  recipe?: Recipe | TemplateBuilder;
  /** A Dockerfile's text (Hearth's subset, docs/templates.md). */
  dockerfile?: string;
  /** A sandbox whose disk, as it is, becomes the template. */
  fromSandbox?: string;
  /** A named snapshot whose disk becomes the template. */
  fromSnapshot?: string;
  /** The build context: relative path → content (a string is UTF-8 text); `"dir/": ""` is an empty directory. Wins over `contextDir`. */
  files?: Record<string, Uint8Array | string>;
  /** A directory read into the build context (see `readContextDir`). */
  contextDir?: string;
  aliases?: string[];
  cpuCount?: number;
  memoryMB?: number;
  diskSizeMB?: number;
}

/** One event of a build's log stream. */
export type TemplateBuildEvent =
  | { type: 'log'; entry: TemplateBuildLogEntry }
  | { type: 'step'; step: TemplateBuildStep }
  | { type: 'end'; build: TemplateBuild };

export interface FollowBuildOptions extends ConnectionOptions {
  /** The build as last seen (e.g. `Templates.build`'s answer): its steps are reported first. */
  build?: TemplateBuild;
}

export interface WaitForBuildOptions extends FollowBuildOptions {
  onLog?: (entry: TemplateBuildLogEntry) => void;
  /** Each step as its status changes (pending → cached | running → done | failed …). */
  onStep?: (step: TemplateBuildStep) => void;
}

/** A build that ended without a template: failed (`build.error` says why) or cancelled. */
export class TemplateBuildError extends SandboxError {
  constructor(readonly build: TemplateBuild) {
    super(build.status === 'failed' ? (build.error ?? `build ${build.buildID} of template ${build.templateID} failed`) : `build ${build.buildID} of template ${build.templateID} was ${build.status}`);
  }
}

const seg = (...parts: string[]): string => `/${parts.map(encodeURIComponent).join('/')}`;
const STREAM_RETRIES = 3;

function toBase64(v: Uint8Array | string): string {
  return typeof v === 'string' ? Buffer.from(v, 'utf8').toString('base64') : Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');
}

/** The `/templates` API. Every call takes the connection options last (URL, API key, signal). */
export class Templates {
  /** Starts a build (`POST /templates`) and returns it at once; `waitForBuild` follows it. */
  static async build(spec: TemplateBuildSpec, opts: ConnectionOptions = {}): Promise<TemplateBuild> {
    const sources = (['recipe', 'dockerfile', 'fromSandbox', 'fromSnapshot'] as const).filter((k) => spec[k] !== undefined);
    if (sources.length !== 1) throw new InvalidArgumentError(`a template build takes exactly one of recipe, dockerfile, fromSandbox, fromSnapshot (got ${sources.length ? sources.join(', ') : 'none'})`);
    const fromVm = spec.fromSandbox !== undefined || spec.fromSnapshot !== undefined;
    if (fromVm && (spec.files || spec.contextDir !== undefined)) throw new InvalidArgumentError('files and contextDir go with a recipe or a Dockerfile, not with fromSandbox or fromSnapshot');
    let files: Record<string, Uint8Array | string> | undefined;
    if (spec.contextDir !== undefined || spec.files) files = { ...(spec.contextDir !== undefined ? await readContextDir(spec.contextDir) : {}), ...spec.files };
    const recipe = spec.recipe instanceof TemplateBuilder ? spec.recipe.toRecipe() : spec.recipe;
    const body = {
      name: spec.name,
      ...(recipe !== undefined ? { recipe } : {}),
      ...(spec.dockerfile !== undefined ? { dockerfile: spec.dockerfile } : {}),
      ...(spec.fromSandbox !== undefined ? { fromSandbox: spec.fromSandbox } : {}),
      ...(spec.fromSnapshot !== undefined ? { fromSnapshot: spec.fromSnapshot } : {}),
      ...(files ? { files: Object.fromEntries(Object.entries(files).map(([k, v]) => [k, toBase64(v)])) } : {}),
      ...(spec.aliases?.length ? { aliases: spec.aliases } : {}),
      ...(spec.cpuCount !== undefined ? { cpuCount: spec.cpuCount } : {}),
      ...(spec.memoryMB !== undefined ? { memoryMB: spec.memoryMB } : {}),
      ...(spec.diskSizeMB !== undefined ? { diskSizeMB: spec.diskSizeMB } : {}),
    };
    return new HearthApi(opts).request<TemplateBuild>('POST', '/templates', body, opts.signal);
  }

  /**
   * A build's log as it is written (`GET …/logs?follow=true`): the lines so far, then each new
   * one and each step as it changes, then `end` with the final build. A step is reported once per
   * status. A stream that breaks off before `end` is reopened (its lines are not repeated). Ends
   * without `end` when `signal` aborts.
   */
  static async *followBuild(templateID: string, buildID: string, opts: FollowBuildOptions = {}): AsyncGenerator<TemplateBuildEvent> {
    const api = new HearthApi(opts);
    const known = new Map<number, string>();
    function* changed(steps: TemplateBuildStep[]): Generator<TemplateBuildEvent> {
      for (const s of steps) {
        if (known.get(s.index) === s.status) continue;
        known.set(s.index, s.status);
        yield { type: 'step', step: s };
      }
    }
    if (opts.build) yield* changed(opts.build.steps);
    let logs = 0;
    for (let attempt = 0; ; attempt++) {
      let skip = logs;
      try {
        for await (const m of sse(api, `${seg('templates', templateID, 'builds', buildID, 'logs')}?follow=true`, opts.signal)) {
          if (m.event === 'end') {
            const build = m.data as TemplateBuild;
            yield* changed(build.steps ?? []);
            yield { type: 'end', build };
            return;
          }
          if (m.event === 'step') yield* changed([m.data as TemplateBuildStep]);
          else if (m.event === 'log' || m.event === 'message') {
            if (skip > 0) { skip--; continue; }
            logs++;
            yield { type: 'log', entry: m.data as TemplateBuildLogEntry };
          }
        }
      } catch (err) {
        if (opts.signal?.aborted) return;
        if (err instanceof SandboxError || attempt >= STREAM_RETRIES) throw err;
      }
      if (opts.signal?.aborted) return;
      if (attempt >= STREAM_RETRIES) throw new SandboxError(`the log stream of build ${buildID} (template ${templateID}) ended ${attempt + 1} times before the build did`);
      await new Promise((r) => setTimeout(r, 250 * (attempt + 1)));
    }
  }

  /**
   * Follows a build to its end: resolves to the final build when it is ready, rejects with a
   * `TemplateBuildError` (carrying the build and its error) when it failed or was cancelled.
   * Aborting `signal` stops following (the build goes on: `cancelBuild` stops it).
   */
  static async waitForBuild(templateID: string, buildID: string, opts: WaitForBuildOptions = {}): Promise<TemplateBuild> {
    for await (const e of Templates.followBuild(templateID, buildID, opts)) {
      if (e.type === 'log') opts.onLog?.(e.entry);
      else if (e.type === 'step') opts.onStep?.(e.step);
      else {
        if (e.build.status === 'ready') return e.build;
        throw new TemplateBuildError(e.build);
      }
    }
    if (opts.signal?.aborted) throw opts.signal.reason instanceof Error ? opts.signal.reason : new Error('waitForBuild: aborted');
    throw new SandboxError(`the log stream of build ${buildID} ended before the build did`);
  }

  /** One template (id or alias). */
  static async get(templateID: string, opts: ConnectionOptions = {}): Promise<TemplateInfo> {
    return new HearthApi(opts).request<TemplateInfo>('GET', seg('templates', templateID), undefined, opts.signal);
  }

  static async list(opts: ConnectionOptions = {}): Promise<TemplateInfo[]> {
    return new HearthApi(opts).request<TemplateInfo[]>('GET', '/templates', undefined, opts.signal);
  }

  /** Deletes a template and the layers no other template needs (a ConflictError while sandboxes, snapshots or templates use it). */
  static async delete(templateID: string, opts: ConnectionOptions = {}): Promise<void> {
    await new HearthApi(opts).request<void>('DELETE', seg('templates', templateID), undefined, opts.signal);
  }

  /** A template's builds, newest first. */
  static async listBuilds(templateID: string, opts: ConnectionOptions = {}): Promise<TemplateBuild[]> {
    return new HearthApi(opts).request<TemplateBuild[]>('GET', seg('templates', templateID, 'builds'), undefined, opts.signal);
  }

  static async getBuild(templateID: string, buildID: string, opts: ConnectionOptions = {}): Promise<TemplateBuild> {
    return new HearthApi(opts).request<TemplateBuild>('GET', seg('templates', templateID, 'builds', buildID), undefined, opts.signal);
  }

  /** Cancels a running build: true when it was cancelled, false when it had already ended. */
  static async cancelBuild(templateID: string, buildID: string, opts: ConnectionOptions = {}): Promise<boolean> {
    try {
      await new HearthApi(opts).request<void>('DELETE', seg('templates', templateID, 'builds', buildID), undefined, opts.signal);
      return true;
    } catch (err) {
      if (err instanceof ConflictError) return false;
      throw err;
    }
  }

  /** A build's log so far. */
  static async buildLogs(templateID: string, buildID: string, opts: ConnectionOptions = {}): Promise<TemplateBuildLogEntry[]> {
    const r = await new HearthApi(opts).request<{ entries: TemplateBuildLogEntry[] }>('GET', seg('templates', templateID, 'builds', buildID, 'logs'), undefined, opts.signal);
    return r.entries;
  }
}
