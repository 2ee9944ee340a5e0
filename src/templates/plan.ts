import { createHash } from 'node:crypto';
import { lstat, readdir, readFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { canonicalJson } from '../images/recipe.js';
import { RecipeError, changesDisk, describeStep } from './recipe.js';
import type { Recipe, RecipeStep, TemplateRuntime } from './types.js';

/** The env, user and workdir in force at a step (what `env`, `user`, `workdir` steps change). */
export interface StepState { env: Record<string, string>; user: string; workdir: string | null }

/** One entry of a build: a recipe step (or the disk resize), its layer key, and the state it runs in. */
export interface PlannedStep {
  index: number;
  description: string;
  /** null: the host-side disk resize that precedes the recipe's steps. */
  step: RecipeStep | null;
  state: StepState;
  /** The layer after this step; for a step that changes no disk, the key it inherits. */
  key: string;
  /** Makes a layer (changes the disk). */
  layer: boolean;
  /** Size in MiB for the resize entry. */
  resizeMib?: number;
}

export interface BuildPlan {
  steps: PlannedStep[];
  /** The last layer's key, or the base's when no step changes the disk. */
  finalKey: string;
  runtime: TemplateRuntime;
}

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

/**
 * Every step's layer key: sha256 over the previous key, the step, the state
 * it runs in and (copy) the content it copies, so an unchanged prefix keeps
 * its keys and a changed step changes its own and every later one.
 * `baseKey` identifies the base template's disk; `baseSizeMib` its size.
 */
export async function planBuild(recipe: Recipe, baseKey: string, base: { sizeMib: number; runtime: TemplateRuntime | null }, contextDir: string): Promise<BuildPlan> {
  const steps: PlannedStep[] = [];
  let key = baseKey;
  const state: StepState = { env: { ...(base.runtime?.env ?? {}) }, user: base.runtime?.user ?? 'root', workdir: base.runtime?.workdir ?? null };
  const want = recipe.resources?.diskSizeMB;
  if (want !== undefined && want > base.sizeMib) {
    key = sha(canonicalJson({ prev: key, resizeMib: want }));
    steps.push({ index: 0, description: `DISK ${want} MiB (grow from ${base.sizeMib} MiB)`, step: null, state: snapshotState(state), key, layer: true, resizeMib: want });
  }
  for (const step of recipe.steps) {
    const before = snapshotState(state);
    const layer = changesDisk(step);
    if (layer) {
      const content = 'copy' in step ? await contentHash(contextDir, step.copy.src) : null;
      key = sha(canonicalJson({ prev: key, step, state: before, content }));
    }
    if ('env' in step) Object.assign(state.env, step.env);
    if ('user' in step && !('run' in step)) state.user = step.user;
    if ('workdir' in step) state.workdir = resolveIn(state.workdir, step.workdir);
    steps.push({ index: steps.length, description: describeStep(step), step, state: before, key, layer });
  }
  const runtime: TemplateRuntime = {
    env: state.env,
    user: state.user,
    workdir: state.workdir,
    start: recipe.start ?? base.runtime?.start ?? null,
  };
  return { steps, finalKey: key, runtime };
}

function snapshotState(s: StepState): StepState { return { env: { ...s.env }, user: s.user, workdir: s.workdir }; }

/** A guest path against the workdir in force ("/" when none). */
export function resolveIn(workdir: string | null, p: string): string {
  const out = posix.resolve(workdir ?? '/', p);
  return p.endsWith('/') && out !== '/' ? `${out}/` : out;
}

/** sha256 over a context file's or directory's entries: relative path, kind, mode, content. */
export async function contentHash(contextDir: string, src: string): Promise<string> {
  const root = src === '.' ? contextDir : join(contextDir, src);
  const h = createHash('sha256');
  const walk = async (abs: string, rel: string): Promise<void> => {
    const st = await lstat(abs).catch(() => null);
    if (!st) throw new RecipeError(`copy: "${src}" is not in the build context`);
    if (st.isDirectory()) {
      h.update(`d ${rel} ${st.mode & 0o7777}\n`);
      for (const name of (await readdir(abs)).sort()) await walk(join(abs, name), rel ? `${rel}/${name}` : name);
    } else if (st.isFile()) {
      h.update(`f ${rel} ${st.mode & 0o7777} ${createHash('sha256').update(await readFile(abs)).digest('hex')}\n`);
    } else {
      throw new RecipeError(`copy: "${rel || src}" in the build context is neither a file nor a directory`);
    }
  };
  await walk(root, '');
  return h.digest('hex');
}
