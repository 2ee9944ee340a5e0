import { EventEmitter } from 'node:events';
import { appendFile, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { createHash } from 'node:crypto';
import type { AgentControl } from '../client/agent-rest.js';
import type { FileCloner } from '../core/flows/context.js';
import { ConflictError, InvalidArgumentError, NotFoundError, errorMessage, throwIfAborted } from '../core/errors.js';
import { abortError } from '../util/abort.js';
import { randomId } from '../core/ids.js';
import { DataLayout, snapshotAt } from '../core/layout.js';
import type { Logger } from '../core/log.js';
import type { SandboxManager } from '../core/manager.js';
import { LIVE_STATES, type AgentEndpoint, type Template } from '../core/types.js';
import { run } from '../images/run.js';
import type { Store } from '../store/store.js';
import { removeTree } from '../util/fs.js';
import { fetchDebs } from './apt.js';
import type { BuildRequestSummary, BuildRow, BuildStepRow } from './build-record.js';
import { LayerStore } from './layers.js';
import { planBuild, resolveIn, type BuildPlan, type PlannedStep } from './plan.js';
import type { Recipe, RecipeResources } from './types.js';

/** A build's log line (docs/templates.md, "API"). */
export interface BuildLogEntry { timestamp: string; step: number | null; stream: 'stdout' | 'stderr' | 'hearth'; line: string }

export type BuildEvent =
  | { type: 'log'; entry: BuildLogEntry }
  | { type: 'step'; step: BuildStepRow }
  | { type: 'end'; build: BuildRow };

export interface BuildRequest {
  name: string;
  aliases: string[];
  kind: NonNullable<BuildRequestSummary['kind']>;
  recipe?: Recipe;
  fromSandbox?: string;
  fromSnapshot?: string;
  /** The build context: context-relative path → bytes (paths already normalised by the API). */
  files: Map<string, Buffer>;
  /** The API's cpuCount/memoryMB/diskSizeMB, over the recipe's resources. */
  resources: RecipeResources;
}

export interface BuilderDeps {
  store: Store;
  manager: SandboxManager;
  log: Logger;
  dataDir: string;
  cacheDir: string;
  agent: (endpoint: AgentEndpoint, token: string) => AgentControl;
  /** How a disk file is copied (the manager's: a reflink where the data dir has them, else a sparse copy). */
  cloneFile: FileCloner;
  /** Whether hearthd keeps warm snapshots (a build then ends with its template's). */
  warmTemplates: boolean;
}

const MAX_LOG_LINES = 100_000;
const MAX_LINE = 8192;
/** Build sandboxes get at least this much memory (apt and compilers need it), whatever the template's shape. */
const BUILD_MIN_MEMORY_MIB = 1024;
const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;

interface ActiveBuild {
  row: BuildRow;
  ac: AbortController;
  events: EventEmitter;
  logLines: number;
  /** The log while it runs (also appended to log.jsonl, what is read once it ended). */
  entries: BuildLogEntry[];
  /** A recipe build's steps and keys (planned when it was accepted). */
  plan: BuildPlan | null;
  done: Promise<void>;
}

/**
 * Template builds (docs/templates.md): plan the layer keys, reuse the cached
 * prefix, run the rest in one build sandbox capturing a layer after each step
 * that changes the disk, register the template, take its warm snapshot.
 * Whatever happens, the build sandbox and staged layers go; finished layers stay.
 */
export class TemplateBuilder {
  readonly layers: LayerStore;
  private readonly active = new Map<string, ActiveBuild>();
  private readonly root: string;

  constructor(private readonly deps: BuilderDeps) {
    const layout = new DataLayout(deps.dataDir);
    this.layers = new LayerStore(layout.layersDir);
    this.root = layout.buildsDir;
  }

  /**
   * After a restart: builds that were running are failed (their process is
   * gone), their build sandboxes destroyed, staging leftovers removed.
   */
  async reconcile(signal: AbortSignal): Promise<void> {
    await this.layers.sweep();
    for (const b of this.deps.store.listBuilds()) {
      if (b.status !== 'building') continue;
      b.status = 'failed';
      b.error = 'hearthd stopped during the build';
      b.finishedAt = new Date().toISOString();
      for (const s of b.steps) if (s.status === 'running' || s.status === 'pending') s.status = 'cancelled';
      this.deps.store.updateBuild(b);
      await removeTree(this.contextDir(b.id));
    }
    for (const s of this.deps.store.listSandboxes({ states: LIVE_STATES })) {
      if (s.metadata['hearth.build'] && !this.active.has(s.metadata['hearth.build'])) {
        await this.deps.manager.destroy(s.id, signal, 'its template build ended with hearthd').catch((err: unknown) =>
          this.deps.log.warn({ sandbox: s.id, err: errorMessage(err) }, 'could not destroy a stale build sandbox'));
      }
    }
  }

  /** Start a build (validated; its work runs in the background). */
  async start(req: BuildRequest): Promise<BuildRow> {
    if (!NAME_RE.test(req.name)) throw new InvalidArgumentError(`name: "${req.name}" must match ${NAME_RE.source}`);
    for (const a of req.aliases) if (!NAME_RE.test(a)) throw new InvalidArgumentError(`aliases: "${a}" must match ${NAME_RE.source}`);
    if (req.name === 'base') throw new ConflictError('"base" is the default image\'s template; choose another name');
    for (const a of req.aliases) {
      const owner = this.deps.store.getTemplate(a);
      if (owner && owner.id !== req.name) throw new ConflictError(`alias "${a}" already names template ${owner.id}`);
    }
    const existing = this.deps.store.getTemplate(req.name);
    if (existing && existing.id !== req.name) throw new ConflictError(`"${req.name}" is an alias of template ${existing.id}`);
    if ([...this.active.values()].some((b) => b.row.templateId === req.name)) throw new ConflictError(`template ${req.name} is being built already; cancel that build or wait for it`);
    if (req.recipe) {
      const from = req.recipe.from ?? 'base';
      const base = this.deps.store.getTemplate(from);
      if (!base) throw new NotFoundError(`from: template ${from} does not exist`);
      if (base.id === req.name) throw new InvalidArgumentError(`from: a template cannot be built on itself (${from})`);
    }
    if (req.fromSandbox) this.deps.manager.get(req.fromSandbox);
    if (req.fromSnapshot && this.deps.store.findSnapshot(req.fromSnapshot)?.kind !== 'named') throw new NotFoundError(`snapshot ${req.fromSnapshot} does not exist`);
    const id = `b${randomId(16)}`;
    const row: BuildRow = {
      id, templateId: req.name, status: 'building', phase: 'steps', steps: [], error: null, createdAt: new Date().toISOString(), finishedAt: null,
      request: {
        kind: req.kind, aliases: req.aliases, files: req.files.size, contextBytes: [...req.files.values()].reduce((n, b) => n + b.length, 0),
        ...(req.recipe ? { from: req.recipe.from ?? 'base' } : {}),
        ...(req.fromSandbox ? { fromSandbox: req.fromSandbox } : {}),
        ...(req.fromSnapshot ? { fromSnapshot: req.fromSnapshot } : {}),
      },
    };
    await mkdir(this.buildDir(id), { recursive: true });
    let plan: BuildPlan | null = null;
    try {
      await this.writeContext(id, req.files).catch((err: unknown) => {
        // e.g. "a" and "a/b" both sent as files: the client's context is inconsistent.
        throw new InvalidArgumentError(`files: the build context cannot be laid out: a path is both a file and a directory (${(err as NodeJS.ErrnoException).code ?? "error"})`);
      });
      // Planned now: a copy of a file the context lacks is a 400, and the 202 lists every step.
      if (req.recipe) plan = await this.plan(id, req, req.recipe);
    } catch (err) {
      await removeTree(this.buildDir(id));
      throw err;
    }
    if (plan) row.steps = plan.steps.map((p) => ({ index: p.index, description: p.description, key: p.key, status: 'pending', cached: false, durationMs: null, exitCode: null }));
    this.deps.store.insertBuild(row);
    const b: ActiveBuild = { row, plan, ac: new AbortController(), events: new EventEmitter(), logLines: 0, entries: [], done: Promise.resolve() };
    b.events.setMaxListeners(0);
    this.active.set(id, b);
    b.done = this.runBuild(b, req).finally(() => { this.active.delete(id); });
    return structuredClone(row);
  }

  get(templateId: string, buildId: string): BuildRow {
    const row = this.active.get(buildId)?.row ?? this.deps.store.getBuild(buildId);
    if (!row || row.templateId !== templateId) throw new NotFoundError(`template ${templateId} has no build ${buildId}`);
    return structuredClone(row);
  }

  list(templateId: string): BuildRow[] {
    return this.deps.store.listBuilds(templateId).map((r) => structuredClone(this.active.get(r.id)?.row ?? r));
  }

  cancel(templateId: string, buildId: string): void {
    const row = this.get(templateId, buildId);
    const b = this.active.get(buildId);
    if (!b || row.status !== 'building') throw new ConflictError(`build ${buildId} already ended (${row.status})`);
    b.ac.abort(new Error('the build was cancelled'));
  }

  /**
   * The log so far and, while the build runs, a subscription to what follows
   * (call `off` when done). A running build's lines are served from memory and
   * the subscription is taken in the same tick, so none falls between.
   */
  async follow(templateId: string, buildId: string, listener: (ev: BuildEvent) => void): Promise<{ entries: BuildLogEntry[]; off: () => void; running: boolean }> {
    this.get(templateId, buildId);
    const b = this.active.get(buildId);
    // Ended (its end event may already be out while it is still in `active`): no subscription, the whole log.
    if (!b || b.row.finishedAt !== null) return { entries: b ? b.entries.slice() : await this.readLog(buildId), off: () => undefined, running: false };
    b.events.on('event', listener);
    return { entries: b.entries.slice(), off: () => { b.events.off('event', listener); }, running: true };
  }

  /** A build's log as JSON (GET …/logs without follow). */
  async readLogOf(templateId: string, buildId: string): Promise<BuildLogEntry[]> {
    this.get(templateId, buildId);
    return this.active.get(buildId)?.entries.slice() ?? this.readLog(buildId);
  }

  async readLog(buildId: string): Promise<BuildLogEntry[]> {
    const text = await readFile(join(this.buildDir(buildId), 'log.jsonl'), 'utf8').catch(() => '');
    return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as BuildLogEntry);
  }

  /**
   * Delete a template: refused while sandboxes (running or paused), user
   * snapshots, other templates or a build depend on it; then its warm
   * snapshots, builds and the layers no other template uses go.
   */
  async deleteTemplate(idOrAlias: string): Promise<void> {
    const t = this.deps.store.getTemplate(idOrAlias);
    if (!t) throw new NotFoundError(`template ${idOrAlias} does not exist`);
    if (t.source === 'image') throw new ConflictError(`template ${t.id} is the default image's; it cannot be deleted`);
    const users = this.deps.store.listSandboxes({ states: LIVE_STATES }).filter((s) => s.templateId === t.id && !s.metadata['hearth.internal']);
    if (users.length) throw new ConflictError(`template ${t.id} is used by ${users.length} sandbox${users.length === 1 ? '' : 'es'} (${users.slice(0, 5).map((s) => s.id).join(', ')}); destroy ${users.length === 1 ? 'it' : 'them'} first`);
    const snaps = this.deps.store.listSnapshots({ kind: 'named', templateId: t.id });
    if (snaps.length) throw new ConflictError(`template ${t.id} is used by ${snaps.length} snapshot${snaps.length === 1 ? '' : 's'} (${snaps.slice(0, 5).map((s) => s.name ?? s.id).join(', ')}); delete ${snaps.length === 1 ? 'it' : 'them'} first`);
    const children = this.deps.store.listTemplates().filter((c) => c.parentId === t.id);
    if (children.length) throw new ConflictError(`templates ${children.map((c) => c.id).join(', ')} are built on ${t.id}; delete them first`);
    if ([...this.active.values()].some((b) => b.row.templateId === t.id || b.row.request.from === t.id)) throw new ConflictError(`a build of or on template ${t.id} is running; cancel it first`);
    await this.deps.manager.dropTemplateSnapshots(t.id);
    this.deps.store.deleteTemplate(t.id);
    for (const b of this.deps.store.listBuilds(t.id)) await removeTree(this.buildDir(b.id));
    this.deps.store.deleteBuilds(t.id);
    await this.collectLayers();
  }

  /** Remove layers no template's chain names (none is in use by a build: builds hold their chain in a template only at the end). */
  async collectLayers(): Promise<void> {
    const kept = new Set(this.deps.store.listTemplates().flatMap((t) => t.layers));
    const building = [...this.active.values()].length > 0;
    if (building) return;
    for (const key of await this.layers.keys()) {
      // On device-mapper a sandbox's disk reads its base: a layer under a running sandbox of an older build stays.
      if (kept.has(key) || this.deps.manager.diskBaseUsers(dirname(this.layers.diskPath(key))).length > 0) continue;
      await this.layers.remove(key);
    }
  }

  /** Layers of a template with their step labels and sizes (the API's `layers`). */
  async layerInfo(t: Template): Promise<{ key: string; step: string; sizeBytes: number }[]> {
    return Promise.all(t.layers.map(async (key) => ({ key, step: (await this.layers.meta(key))?.step ?? '', sizeBytes: await this.layers.sizeBytes(key) })));
  }

  /** Stop every running build and wait for them to clean up (hearthd shutdown). */
  async close(): Promise<void> {
    for (const b of this.active.values()) b.ac.abort(new Error('hearthd is stopping'));
    await Promise.all([...this.active.values()].map((b) => b.done.catch(() => undefined)));
  }

  // ---------------------------------------------------------------- the build itself

  private async runBuild(b: ActiveBuild, req: BuildRequest): Promise<void> {
    const t0 = performance.now();
    const signal = b.ac.signal;
    try {
      let template: Template;
      if (req.recipe) template = await this.buildRecipe(b, req, req.recipe, signal);
      else template = await this.fromExisting(b, req, signal);
      b.row.phase = 'snapshot';
      this.save(b);
      if (this.deps.warmTemplates) {
        this.hearth(b, template.runtime?.start ? `starting "${template.runtime.start.command}" and taking the warm snapshot` : 'taking the warm snapshot');
        const ts = performance.now();
        await this.deps.manager.templateSnapshot(template, template.vcpus, template.memoryMib, signal);
        this.hearth(b, `warm snapshot ready in ${Math.round(performance.now() - ts)} ms`);
      }
      throwIfAborted(signal);
      this.deps.store.upsertTemplate(template);
      await this.deps.manager.pruneTemplateSnapshots().catch(() => undefined);
      b.row.status = 'ready';
      b.row.phase = 'done';
      this.hearth(b, `template ${template.id} ready in ${Math.round(performance.now() - t0)} ms (${b.row.steps.filter((s) => s.cached).length} of ${b.row.steps.filter((s) => s.status !== 'skipped').length} steps cached)`);
    } catch (err) {
      const cancelled = signal.aborted;
      b.row.status = cancelled ? 'cancelled' : 'failed';
      b.row.error = b.row.error ?? (cancelled ? errorMessage(signal.reason) : errorMessage(err));
      for (const s of b.row.steps) if (s.status === 'running' || s.status === 'pending') s.status = cancelled ? 'cancelled' : s.status === 'running' ? 'failed' : 'cancelled';
      this.hearth(b, `build ${b.row.status}: ${b.row.error}`);
      this.deps.log.warn({ build: b.row.id, template: b.row.templateId, err: b.row.error }, `template build ${b.row.status}`);
    } finally {
      b.row.finishedAt = new Date().toISOString();
      this.save(b);
      await removeTree(this.contextDir(b.row.id)).catch(() => undefined);
      await this.appendQueue;
      b.events.emit('event', { type: 'end', build: structuredClone(b.row) } satisfies BuildEvent);
    }
  }

  private async buildRecipe(b: ActiveBuild, req: BuildRequest, recipe: Recipe, signal: AbortSignal): Promise<Template> {
    const base = this.deps.store.getTemplate(recipe.from ?? 'base');
    if (!base) throw new NotFoundError(`from: template ${recipe.from ?? 'base'} does not exist`);
    const resources = { ...recipe.resources, ...req.resources };
    const plan = b.plan ?? await this.plan(b.row.id, req, recipe);

    // The cached prefix: every layer up to the first missing one.
    let firstMissing = plan.steps.length;
    for (const p of plan.steps) if (p.layer && !(await this.layers.has(p.key))) { firstMissing = p.index; break; }
    for (const p of plan.steps.slice(0, firstMissing)) this.setStep(b, p.index, p.layer ? { status: 'cached', cached: true } : { status: 'skipped' });
    const hits = plan.steps.slice(0, firstMissing).filter((p) => p.layer).length;
    this.hearth(b, `${plan.steps.length} step${plan.steps.length === 1 ? '' : 's'}, ${hits} layer${hits === 1 ? '' : 's'} cached`);

    const layerBefore = (i: number): string | null => plan.steps.slice(0, i).reverse().find((p) => p.layer)?.key ?? null;
    const rest = plan.steps.slice(firstMissing);
    if (rest.some((p) => p.layer)) {
      const from = layerBefore(rest[0]!.index);
      const fromPath = from ? this.layers.diskPath(from) : base.rootfsPath;
      if (rest[0]!.step === null) {
        // A larger disk: the host only makes the file bigger (it never parses a filesystem a guest
        // wrote); the build sandbox boots on it and grows its ext4 online, as its first step.
        const grown = await this.layers.stage();
        try {
          await this.deps.cloneFile(fromPath, grown.disk, signal);
          await run('truncate', ['-s', `${rest[0]!.resizeMib}M`, grown.disk], { signal });
          await this.runInSandbox(b, base, grown.disk, from ?? base.layers.at(-1) ?? null, `a ${rest[0]!.resizeMib} MiB copy of ${from ? `layer ${from.slice(0, 12)}` : `template ${base.id}`}`, rest, resources, signal);
        } finally {
          await this.layers.discard(grown);
        }
      } else {
        await this.runInSandbox(b, base, fromPath, from ?? base.layers.at(-1) ?? null, from ? `layer ${from.slice(0, 12)}` : `template ${base.id}`, rest, resources, signal);
      }
    } else {
      for (const p of rest) this.setStep(b, p.index, { status: 'skipped' });
    }
    const finalLayer = layerBefore(plan.steps.length);
    const rootfsPath = finalLayer ? this.layers.diskPath(finalLayer) : base.rootfsPath;
    return this.templateFrom(req, base, plan, rootfsPath, finalLayer, resources);
  }

  private async plan(buildId: string, req: BuildRequest, recipe: Recipe): Promise<BuildPlan> {
    const base = this.deps.store.getTemplate(recipe.from ?? 'base');
    if (!base) throw new NotFoundError(`from: template ${recipe.from ?? 'base'} does not exist`);
    const baseKey = base.layers.at(-1) ?? `image:${base.imageHash}`;
    const resources = { ...recipe.resources, ...req.resources };
    return planBuild({ ...recipe, resources }, baseKey, { sizeMib: Math.floor(base.rootfsSizeBytes / 1048576), runtime: base.runtime }, this.contextDir(buildId));
  }

  private async templateFrom(req: BuildRequest, base: Template, plan: BuildPlan, rootfsPath: string, finalLayer: string | null, resources: RecipeResources): Promise<Template> {
    const layers = [...base.layers, ...plan.steps.filter((p) => p.layer).map((p) => p.key)];
    return {
      ...base,
      id: req.name,
      // The disk and what every sandbox gets: another of either is another warm snapshot.
      imageHash: createHash('sha256').update(`${finalLayer ?? base.imageHash}\n${JSON.stringify(plan.runtime)}`).digest('hex'),
      rootfsPath,
      rootfsSizeBytes: (await stat(rootfsPath)).size,
      vcpus: resources.cpuCount ?? base.vcpus,
      memoryMib: resources.memoryMB ?? base.memoryMib,
      createdAt: new Date().toISOString(),
      source: 'build',
      runtime: plan.runtime,
      aliases: req.aliases,
      parentId: base.id,
      buildId: null,
      layers,
    };
  }

  /** A template from a sandbox's or snapshot's disk as it is: one layer, no steps; the parent's runtime. */
  private async fromExisting(b: ActiveBuild, req: BuildRequest, signal: AbortSignal): Promise<Template> {
    const step: BuildStepRow = { index: 0, description: req.fromSandbox ? `DISK of sandbox ${req.fromSandbox}` : `DISK of snapshot ${req.fromSnapshot}`, key: '', status: 'running', cached: false, durationMs: null, exitCode: null };
    b.row.steps = [step];
    this.save(b);
    const t0 = performance.now();
    const staged = await this.layers.stage();
    try {
      let parent: Template | undefined;
      if (req.fromSandbox) {
        const rec = this.deps.manager.get(req.fromSandbox);
        parent = this.deps.store.getTemplate(rec.templateId);
        if (rec.state !== 'running') throw new ConflictError(`sandbox ${rec.id} is ${rec.state}: only a running sandbox's disk can become a template (resume it, or snapshot it and use fromSnapshot)`);
        await this.deps.manager.captureDisk(rec.id, staged.disk, signal);
      } else {
        const snap = this.deps.store.findSnapshot(req.fromSnapshot!);
        if (snap?.kind !== 'named') throw new NotFoundError(`snapshot ${req.fromSnapshot} does not exist`);
        parent = this.deps.store.getTemplate(snap.templateId);
        await this.deps.cloneFile(snapshotAt(snap.dir).rootfs, staged.disk, signal);
      }
      if (!parent) throw new NotFoundError('the template it was made from no longer exists');
      const key = createHash('sha256').update(`${req.fromSandbox ?? req.fromSnapshot}\n${b.row.id}`).digest('hex');
      await this.layers.commit(staged, { key, parent: parent.layers.at(-1) ?? null, step: step.description, buildId: b.row.id, createdAt: new Date().toISOString() });
      Object.assign(step, { key, status: 'done', durationMs: Math.round(performance.now() - t0) });
      this.emitStep(b, step);
      const rootfsPath = this.layers.diskPath(key);
      return {
        ...parent,
        id: req.name,
        imageHash: createHash('sha256').update(`${key}\n${JSON.stringify(parent.runtime)}`).digest('hex'),
        rootfsPath,
        rootfsSizeBytes: (await stat(rootfsPath)).size,
        vcpus: req.resources.cpuCount ?? parent.vcpus,
        memoryMib: req.resources.memoryMB ?? parent.memoryMib,
        createdAt: new Date().toISOString(),
        source: req.fromSandbox ? 'sandbox' : 'snapshot',
        aliases: req.aliases,
        parentId: parent.id,
        buildId: b.row.id,
        layers: [...parent.layers, key],
      };
    } catch (err) {
      await this.layers.discard(staged);
      throw err;
    }
  }

  /** One build sandbox from `fromLayer` (null: the base's disk) running `steps`, a layer captured after each that changes the disk. */
  private async runInSandbox(b: ActiveBuild, base: Template, rootfsPath: string, parentKey: string | null, what: string, steps: PlannedStep[], resources: RecipeResources, signal: AbortSignal): Promise<void> {
    const bootFrom: Template = { ...base, rootfsPath, rootfsSizeBytes: (await stat(rootfsPath)).size, runtime: null };
    const shape = { vcpus: resources.cpuCount ?? base.vcpus, memoryMib: Math.max(resources.memoryMB ?? base.memoryMib, BUILD_MIN_MEMORY_MIB) };
    this.hearth(b, `booting a build sandbox (${shape.vcpus} vCPU, ${shape.memoryMib} MiB) from ${what}`);
    const ts = performance.now();
    const sandbox = await this.deps.manager.startBuildSandbox(bootFrom, shape, b.row.id, signal);
    try {
      this.hearth(b, `build sandbox ${sandbox.id} running after ${Math.round(performance.now() - ts)} ms`);
      const { endpoint, token } = this.deps.manager.agentOf(sandbox.id);
      const agent = this.deps.agent(endpoint, token);
      let parent = parentKey;
      for (const p of steps) {
        throwIfAborted(signal);
        if (!p.layer) { this.setStep(b, p.index, { status: 'skipped' }); continue; }
        await this.runTimed(b, p, async () => {
          await this.runStep(b, agent, p, signal);
          const staged = await this.layers.stage();
          try {
            await this.deps.manager.captureDisk(sandbox.id, staged.disk, signal);
            await this.layers.commit(staged, { key: p.key, parent, step: p.description, buildId: b.row.id, createdAt: new Date().toISOString() });
          } catch (err) {
            await this.layers.discard(staged);
            throw err;
          }
        });
        parent = p.key;
      }
    } finally {
      await this.deps.manager.destroy(sandbox.id, AbortSignal.timeout(120_000), `template build ${b.row.id} finished`).catch((err: unknown) =>
        this.deps.log.error({ sandbox: sandbox.id, err: errorMessage(err) }, 'could not destroy a build sandbox'));
    }
  }

  private async runTimed(b: ActiveBuild, p: PlannedStep, fn: () => Promise<void>): Promise<void> {
    const t0 = performance.now();
    this.setStep(b, p.index, { status: 'running' });
    this.hearth(b, `step ${p.index + 1}/${b.row.steps.length}: ${p.description}`, p.index);
    try {
      await fn();
      this.setStep(b, p.index, { status: 'done', durationMs: Math.round(performance.now() - t0) });
    } catch (err) {
      this.setStep(b, p.index, { status: b.ac.signal.aborted ? 'cancelled' : 'failed', durationMs: Math.round(performance.now() - t0) });
      throw err;
    }
  }

  private async runStep(b: ActiveBuild, agent: AgentControl, p: PlannedStep, signal: AbortSignal): Promise<void> {
    if (p.step === null) {
      await this.exec(b, p, agent, { cmd: '/bin/sh', args: ['-c', 'resize2fs "$(findmnt -no SOURCE /)"'], envs: {} }, signal);
      return;
    }
    const step = p.step;
    const { state } = p;
    const cwd = state.workdir ?? undefined;
    if ('run' in step) {
      await this.exec(b, p, agent, { cmd: '/bin/sh', args: ['-c', step.run], user: step.user ?? state.user, ...(cwd ? { cwd } : {}), envs: state.env }, signal);
    } else if ('workdir' in step) {
      await this.exec(b, p, agent, { cmd: '/bin/mkdir', args: ['-p', '--', resolveIn(state.workdir, step.workdir)], envs: {} }, signal);
    } else if ('copy' in step) {
      const tar = join(this.buildDir(b.row.id), 'copy.tar');
      await run('tar', ['-cf', tar, '-C', this.contextDir(b.row.id), '--', step.copy.src], { signal });
      await agent.writeFile('/tmp/.hearth-copy.tar', await readFile(tar), signal);
      await rm(tar, { force: true });
      const dest = resolveIn(state.workdir, step.copy.dest);
      await this.exec(b, p, agent, { cmd: '/bin/sh', args: ['-c', COPY_SCRIPT], envs: { SRC: step.copy.src, DEST: dest, OWNER: step.copy.owner ?? '', MODE: step.copy.mode ?? '' } }, signal);
    } else if ('apt' in step) {
      const status = await agent.readFile('/var/lib/dpkg/status', signal);
      const archives = join(this.deps.cacheDir, 'apt-archives');
      const debs = await fetchDebs(status, step.apt, archives, signal, (l) => this.line(b, p.index, 'hearth', l));
      if (debs.length === 0) { this.line(b, p.index, 'hearth', 'apt: everything is installed already'); return; }
      const tar = join(this.buildDir(b.row.id), 'apt.tar');
      await run('tar', ['-cf', tar, '-C', archives, '--', ...debs.map((d) => basename(d))], { signal });
      await agent.writeFile('/tmp/.hearth-apt.tar', await readFile(tar), signal);
      await rm(tar, { force: true });
      await this.exec(b, p, agent, { cmd: '/bin/sh', args: ['-c', APT_SCRIPT], envs: { DEBIAN_FRONTEND: 'noninteractive', DEBS: debs.map((f) => basename(f)).join(' ') } }, signal);
    } else if ('pip' in step) {
      await this.exec(b, p, agent, {
        cmd: '/usr/bin/python3', args: ['-m', 'pip', 'install', '--break-system-packages', '--no-input', '--progress-bar', 'off', '--', ...step.pip],
        user: state.user, ...(cwd ? { cwd } : {}), envs: state.env,
      }, signal);
    }
  }

  private async exec(b: ActiveBuild, p: PlannedStep, agent: AgentControl, req: Parameters<AgentControl['exec']>[0], signal: AbortSignal): Promise<void> {
    const partial: Record<'stdout' | 'stderr', string> = { stdout: '', stderr: '' };
    const tail: string[] = [];
    const out = (stream: 'stdout' | 'stderr', text: string): void => {
      const lines = (partial[stream] + text).split(/\r?\n/);
      partial[stream] = lines.pop() ?? '';
      for (const l of lines) { this.line(b, p.index, stream, l); tail.push(l); if (tail.length > 10) tail.shift(); }
    };
    const decoder = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    const res = await agent.exec(req, signal, (stream, chunk) => out(stream, decoder[stream].decode(chunk, { stream: true })));
    for (const s of ['stdout', 'stderr'] as const) if (partial[s]) { this.line(b, p.index, s, partial[s]); tail.push(partial[s]); }
    if (signal.aborted) throw abortError(signal);
    if (res.exitCode !== 0) {
      this.setStep(b, p.index, { exitCode: res.exitCode });
      b.row.error = `step ${p.index + 1} (${p.description}) failed with exit code ${res.exitCode}${tail.length ? `; last lines: ${tail.slice(-5).join(' | ')}` : ''}`;
      throw new Error(b.row.error);
    }
    this.setStep(b, p.index, { exitCode: 0 });
  }



  // ---------------------------------------------------------------- record, log, events

  private buildDir(id: string): string { return join(this.root, id); }
  private contextDir(id: string): string { return join(this.buildDir(id), 'context'); }

  private async writeContext(id: string, files: Map<string, Buffer>): Promise<void> {
    const dir = this.contextDir(id);
    await mkdir(dir, { recursive: true });
    for (const [rel, data] of files) {
      if (rel.endsWith('/')) { await mkdir(join(dir, rel), { recursive: true }); continue; }
      await mkdir(dirname(join(dir, rel)), { recursive: true });
      await writeFile(join(dir, rel), data);
    }
  }

  private save(b: ActiveBuild): void { this.deps.store.updateBuild(b.row); }

  private setStep(b: ActiveBuild, index: number, patch: Partial<BuildStepRow>): void {
    const s = b.row.steps[index];
    if (!s) return;
    Object.assign(s, patch);
    this.save(b);
    this.emitStep(b, s);
  }

  private emitStep(b: ActiveBuild, s: BuildStepRow): void { b.events.emit('event', { type: 'step', step: { ...s } } satisfies BuildEvent); }

  private hearth(b: ActiveBuild, line: string, step: number | null = null): void { this.line(b, step, 'hearth', line); }

  private line(b: ActiveBuild, step: number | null, stream: BuildLogEntry['stream'], line: string): void {
    if (b.logLines >= MAX_LOG_LINES) return;
    b.logLines++;
    const entry: BuildLogEntry = { timestamp: new Date().toISOString(), step, stream, line: b.logLines === MAX_LOG_LINES ? `(log truncated at ${MAX_LOG_LINES} lines)` : line.slice(0, MAX_LINE) };
    // Appends are queued in order on one promise chain; readers see whole lines.
    this.appendQueue = this.appendQueue.then(() => appendFile(join(this.buildDir(b.row.id), 'log.jsonl'), `${JSON.stringify(entry)}\n`)).catch(() => undefined);
    b.entries.push(entry);
    b.events.emit('event', { type: 'log', entry } satisfies BuildEvent);
  }

  private appendQueue: Promise<void> = Promise.resolve();
}

/**
 * COPY into the guest as root, Docker's rules: a directory's contents go into
 * DEST; a file goes to DEST, or inside it when DEST ends in "/" or is a
 * directory. OWNER/MODE apply to what was copied only (and OWNER to the
 * destination directory when the copy created it). Arguments arrive as
 * environment variables, never spliced into the script.
 */
const COPY_SCRIPT = `set -eu
t=$(mktemp -d /tmp/.hearth-copy.XXXXXX)
tar -xf /tmp/.hearth-copy.tar -C "$t"
rm -f /tmp/.hearth-copy.tar
s="$t/$SRC"
list="$t.list"
: > "$list"
if [ -d "$s" ]; then
  if [ ! -e "$DEST" ]; then mkdir -p "$DEST"; printf '%s\\n' "$DEST" >> "$list.dir"; fi
  for e in "$s"/* "$s"/.[!.]* "$s"/..?*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    cp -a "$e" "$DEST/"
    printf '%s\\n' "$DEST/$(basename "$e")" >> "$list"
  done
else
  case "$DEST" in
    */) mkdir -p "$DEST"; target="$DEST$(basename "$s")" ;;
    *) if [ -d "$DEST" ]; then target="$DEST/$(basename "$s")"; else mkdir -p "$(dirname "$DEST")"; target="$DEST"; fi ;;
  esac
  cp -a "$s" "$target"
  printf '%s\\n' "$target" >> "$list"
fi
while IFS= read -r p; do
  if [ -n "$OWNER" ]; then chown -R "$OWNER" "$p"; fi
  if [ -n "$MODE" ]; then chmod -R "$MODE" "$p"; fi
done < "$list"
if [ -n "$OWNER" ] && [ -s "$list.dir" ]; then chown "$OWNER" "$(cat "$list.dir")"; fi
rm -rf "$t" "$list" "$list.dir"
`;

/**
 * Install the .deb files the host fetched with dpkg, in the order apt chose
 * (DEBS, space separated: .deb names have no blanks or glob characters; the
 * order respects Pre-Depends), from the local files
 * only: the guest needs no network, and has no apt lists to resolve with.
 */
const APT_SCRIPT = `set -eu
d=$(mktemp -d /tmp/.hearth-apt.XXXXXX)
tar -xf /tmp/.hearth-apt.tar -C "$d"
rm -f /tmp/.hearth-apt.tar
set --
for f in $DEBS; do set -- "$@" "$d/$f"; done
dpkg -i --force-confdef --force-confold "$@"
rm -rf "$d"
`;
