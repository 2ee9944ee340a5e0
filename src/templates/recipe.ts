/**
 * Validation of `hearth.template.json` (and of whatever the SDK and the
 * Dockerfile subset hand over): the one gate between user input and the
 * builder, which passes these strings to the guest's shell and, for `apt`, to
 * the host's apt-get argv. docs/templates.md describes the format.
 */
import { posix } from 'node:path';
import { InvalidArgumentError } from '../core/errors.js';
import type { Recipe, ReadyCheck, RecipeResources, RecipeStep, StartSpec } from './types.js';

/** A recipe the builder must not run; the message names the JSON path. The API answers 400. */
export class RecipeError extends InvalidArgumentError {}

export const MAX_STEPS = 200;
/** Bound on a command line and on one step's env: large enough for any script, small enough for a log line and the store. */
export const MAX_TEXT_BYTES = 64 * 1024;
export const MAX_PACKAGES_PER_STEP = 500;

const TEMPLATE_REF = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const USER_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;
const NUMERIC_ID = /^[0-9]{1,10}$/;
const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
const OCTAL_MODE = /^[0-7]{3,4}$/;
// The first character is [a-z0-9], so a package can never be read as an apt-get option.
const APT_PACKAGE = /^[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?$/;

export const STEP_KEYS = ['run', 'copy', 'env', 'workdir', 'user', 'apt', 'pip'] as const;
export type StepKind = (typeof STEP_KEYS)[number];

type JsonObject = Record<string, unknown>;

function fail(path: string, problem: string): never {
  throw new RecipeError(`${path}: ${problem}`, path);
}

function isPlainObject(v: unknown): v is JsonObject {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto: unknown = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function objectAt(v: unknown, path: string): JsonObject {
  if (!isPlainObject(v)) fail(path, 'must be an object');
  return v;
}

/** Typos must fail loudly: a misspelt `owner` would otherwise build a root-owned tree. */
function onlyKeys(obj: JsonObject, path: string, allowed: readonly string[]): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) fail(childPath(path, key), `unknown key (expected one of ${allowed.join(', ')})`);
  }
}

function childPath(path: string, key: string): string {
  const member = /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`;
  return path === '' ? member.replace(/^\./, '') : `${path}${member}`;
}

function stringAt(v: unknown, path: string): string {
  if (typeof v !== 'string') fail(path, 'must be a string');
  if (v.includes('\0')) fail(path, 'must not contain NUL');
  return v;
}

function nonEmptyStringAt(v: unknown, path: string): string {
  const s = stringAt(v, path);
  if (s === '') fail(path, 'must not be empty');
  return s;
}

function integerAt(v: unknown, path: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) fail(path, `must be an integer from ${min} to ${max}`);
  return v;
}

function byteLength(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

/** A shell command line: run steps, the start command and a ready command. */
function commandAt(v: unknown, path: string): string {
  const s = nonEmptyStringAt(v, path);
  if (s.trim() === '') fail(path, 'must not be blank');
  if (byteLength(s) > MAX_TEXT_BYTES) fail(path, `must be at most ${MAX_TEXT_BYTES} bytes`);
  return s;
}

function userAt(v: unknown, path: string): string {
  const s = stringAt(v, path);
  if (!USER_NAME.test(s) && !NUMERIC_ID.test(s)) fail(path, `must be a user name (${USER_NAME.source}) or a numeric uid`);
  return s;
}

function ownerAt(v: unknown, path: string): string {
  const s = stringAt(v, path);
  const parts = s.split(':');
  const ok = parts.length <= 2 && parts.every((p) => USER_NAME.test(p) || NUMERIC_ID.test(p));
  if (!ok) fail(path, 'must be "user" or "user:group" (names or numeric ids)');
  return s;
}

/**
 * The one normalisation of a context path. Checks run on its result, so no
 * later normalisation can turn an accepted path into one that leaves the
 * context.
 */
export function normaliseContextPath(src: string): string | { problem: string } {
  const outside = { problem: 'must be a relative path inside the build context (no "..", not absolute)' };
  if (src === '') return { problem: 'must not be empty' };
  if (src.includes('\0') || src.includes('\\')) return { problem: 'must not contain NUL or backslash' };
  if (src.startsWith('/')) return outside;
  const normalised = posix.normalize(src);
  if (normalised.startsWith('/') || normalised.split('/').includes('..')) return outside;
  // posix.normalize keeps "./" for a path that collapses to the context itself; "." is its one spelling.
  return normalised === './' ? '.' : normalised;
}

function contextPathAt(v: unknown, path: string): string {
  if (typeof v !== 'string') fail(path, 'must be a string');
  const result = normaliseContextPath(v);
  if (typeof result !== 'string') fail(path, result.problem);
  return result;
}

function copyAt(v: unknown, path: string): RecipeStep {
  const obj = objectAt(v, path);
  onlyKeys(obj, path, ['src', 'dest', 'owner', 'mode']);
  const copy: { src: string; dest: string; owner?: string; mode?: string } = {
    src: contextPathAt(obj.src, `${path}.src`),
    // Relative dests resolve against the workdir at build time, so only their spelling is normalised here.
    dest: posix.normalize(nonEmptyStringAt(obj.dest, `${path}.dest`)),
  };
  if (obj.owner !== undefined) copy.owner = ownerAt(obj.owner, `${path}.owner`);
  if (obj.mode !== undefined) {
    if (typeof obj.mode !== 'string' || !OCTAL_MODE.test(obj.mode)) fail(`${path}.mode`, 'must be an octal string like "755" or "0644"');
    copy.mode = obj.mode;
  }
  return { copy };
}

function envAt(v: unknown, path: string): RecipeStep {
  const obj = objectAt(v, path);
  const keys = Object.keys(obj);
  if (keys.length === 0) fail(path, 'must set at least one variable');
  const env: Record<string, string> = {};
  let total = 0;
  for (const key of keys) {
    const keyPath = childPath(path, key);
    if (!ENV_KEY.test(key)) fail(keyPath, `is not a variable name (${ENV_KEY.source})`);
    // Assigning "__proto__" on a plain object changes its prototype instead of adding a variable.
    if (key === '__proto__') fail(keyPath, 'is reserved');
    const value = stringAt(obj[key], keyPath);
    total += byteLength(key) + 1 + byteLength(value);
    env[key] = value;
  }
  if (total > MAX_TEXT_BYTES) fail(path, `must be at most ${MAX_TEXT_BYTES} bytes in all`);
  return { env };
}

function workdirAt(v: unknown, path: string): string {
  const s = nonEmptyStringAt(v, path);
  const normalised = posix.normalize(s);
  if (!normalised.startsWith('/')) fail(path, 'must be an absolute path');
  return normalised.length > 1 ? normalised.replace(/\/+$/, '') : normalised;
}

function listAt(v: unknown, path: string): unknown[] {
  if (!Array.isArray(v)) fail(path, 'must be an array');
  if (v.length === 0) fail(path, 'must name at least one package');
  if (v.length > MAX_PACKAGES_PER_STEP) fail(path, `must name at most ${MAX_PACKAGES_PER_STEP} packages`);
  return v;
}

function aptAt(v: unknown, path: string): RecipeStep {
  const apt = listAt(v, path).map((item, i) => {
    const s = stringAt(item, `${path}[${i}]`);
    if (!APT_PACKAGE.test(s)) fail(`${path}[${i}]`, `must be a Debian package name, optionally :arch and =version (${APT_PACKAGE.source})`);
    return s;
  });
  return { apt };
}

function pipAt(v: unknown, path: string): RecipeStep {
  const pip = listAt(v, path).map((item, i) => {
    const s = nonEmptyStringAt(item, `${path}[${i}]`);
    if (/[\r\n]/.test(s)) fail(`${path}[${i}]`, 'must not contain a newline');
    // pip reads " -e x" as an option too once the shell or a requirements file strips the space.
    if (s.trimStart().startsWith('-')) fail(`${path}[${i}]`, 'must not start with "-" (pip options are not allowed)');
    return s;
  });
  return { pip };
}

/** The kind a step object declares; `run` may carry `user`, every other kind is alone. */
function declaredKind(obj: JsonObject, path: string): StepKind {
  onlyKeys(obj, path, STEP_KEYS);
  const present = STEP_KEYS.filter((k) => Object.hasOwn(obj, k));
  const isRunAs = present.length === 2 && present.includes('run') && present.includes('user');
  const kind = present[0];
  if (isRunAs) return 'run';
  if (present.length !== 1 || kind === undefined) {
    fail(path, `must have exactly one of ${STEP_KEYS.join(', ')} (run may add user); found ${present.length === 0 ? 'none' : present.join(', ')}`);
  }
  return kind;
}

function stepAt(v: unknown, path: string): RecipeStep {
  const obj = objectAt(v, path);
  const kind = declaredKind(obj, path);
  const at = `${path}.${kind}`;
  switch (kind) {
    case 'run': {
      const run = commandAt(obj.run, at);
      return obj.user === undefined ? { run } : { run, user: userAt(obj.user, `${path}.user`) };
    }
    case 'copy': return copyAt(obj.copy, at);
    case 'env': return envAt(obj.env, at);
    case 'workdir': return { workdir: workdirAt(obj.workdir, at) };
    case 'user': return { user: userAt(obj.user, at) };
    case 'apt': return aptAt(obj.apt, at);
    case 'pip': return pipAt(obj.pip, at);
  }
}

function stepsAt(v: unknown): RecipeStep[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) fail('steps', 'must be an array');
  if (v.length > MAX_STEPS) fail('steps', `must have at most ${MAX_STEPS} steps (found ${v.length})`);
  return v.map((step, i) => stepAt(step, `steps[${i}]`));
}

function readyAt(v: unknown, path: string): ReadyCheck {
  const obj = objectAt(v, path);
  onlyKeys(obj, path, ['command', 'port']);
  const hasCommand = Object.hasOwn(obj, 'command');
  if (hasCommand === Object.hasOwn(obj, 'port')) fail(path, 'must be exactly {"command": "…"} or {"port": N}');
  return hasCommand ? { command: commandAt(obj.command, `${path}.command`) } : { port: integerAt(obj.port, `${path}.port`, 1, 65535) };
}

function startAt(v: unknown): StartSpec {
  const obj = objectAt(v, 'start');
  onlyKeys(obj, 'start', ['command', 'ready', 'timeoutSec']);
  if (obj.command === undefined) fail('start.command', 'is required');
  const start: StartSpec = { command: commandAt(obj.command, 'start.command') };
  if (obj.ready !== undefined) start.ready = readyAt(obj.ready, 'start.ready');
  if (obj.timeoutSec !== undefined) start.timeoutSec = integerAt(obj.timeoutSec, 'start.timeoutSec', 1, 3600);
  return start;
}

const RESOURCE_RANGES = {
  cpuCount: [1, 64],
  memoryMB: [128, 262144],
  diskSizeMB: [256, 1048576],
} as const satisfies Record<keyof RecipeResources, readonly [number, number]>;

function resourcesAt(v: unknown): RecipeResources {
  const obj = objectAt(v, 'resources');
  onlyKeys(obj, 'resources', Object.keys(RESOURCE_RANGES));
  const resources: RecipeResources = {};
  for (const key of Object.keys(RESOURCE_RANGES) as (keyof RecipeResources)[]) {
    const [min, max] = RESOURCE_RANGES[key];
    if (obj[key] !== undefined) resources[key] = integerAt(obj[key], `resources.${key}`, min, max);
  }
  return resources;
}

/**
 * A validated, normalised copy of a parsed `hearth.template.json`. Absent
 * optional fields stay absent (no defaults are filled in), `steps` is always
 * present, and nothing in the result is shared with `input`.
 */
export function parseRecipe(input: unknown): Recipe {
  const obj = objectAt(input, 'recipe');
  onlyKeys(obj, '', ['from', 'steps', 'start', 'resources']);
  const recipe: Recipe = { steps: stepsAt(obj.steps) };
  if (obj.from !== undefined) {
    const from = stringAt(obj.from, 'from');
    if (!TEMPLATE_REF.test(from)) fail('from', `must be a template id or alias (${TEMPLATE_REF.source})`);
    recipe.from = from;
  }
  if (obj.start !== undefined) recipe.start = startAt(obj.start);
  if (obj.resources !== undefined) recipe.resources = resourcesAt(obj.resources);
  return recipe;
}

export function recipeFromJsonText(text: string): Recipe {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new RecipeError(`hearth.template.json: not JSON: ${err instanceof Error ? err.message : String(err)}`, 'hearth.template.json');
  }
  return parseRecipe(parsed);
}

export function stepKind(step: RecipeStep): StepKind {
  if ('run' in step) return 'run';
  if ('copy' in step) return 'copy';
  if ('env' in step) return 'env';
  if ('workdir' in step) return 'workdir';
  if ('apt' in step) return 'apt';
  if ('pip' in step) return 'pip';
  return 'user';
}

const LABEL_MAX = 80;

function oneLine(label: string): string {
  const flat = label.replace(/\s+/g, ' ').trim();
  return flat.length <= LABEL_MAX ? flat : `${flat.slice(0, LABEL_MAX - 1)}…`;
}

function copyLabel(copy: { src: string; dest: string; owner?: string; mode?: string }): string {
  const flags = [copy.owner === undefined ? '' : `--chown=${copy.owner} `, copy.mode === undefined ? '' : `--chmod=${copy.mode} `].join('');
  return `COPY ${flags}${copy.src} → ${copy.dest}`;
}

/**
 * A one-line label (at most 80 characters) for logs, build records and the
 * dashboard. ENV values are left out: they are often credentials.
 */
export function describeStep(step: RecipeStep): string {
  if ('run' in step) return oneLine(`RUN ${step.user === undefined ? '' : `(as ${step.user}) `}${step.run}`);
  if ('copy' in step) return oneLine(copyLabel(step.copy));
  if ('env' in step) return oneLine(`ENV ${Object.keys(step.env).map((k) => `${k}=…`).join(' ')}`);
  if ('workdir' in step) return oneLine(`WORKDIR ${step.workdir}`);
  if ('apt' in step) return oneLine(`APT ${step.apt.join(' ')}`);
  if ('pip' in step) return oneLine(`PIP ${step.pip.join(' ')}`);
  return oneLine(`USER ${step.user}`);
}

/** Whether the builder must capture a layer after the step: env and user only change what later steps see. */
export function changesDisk(step: RecipeStep): boolean {
  const kind = stepKind(step);
  return kind !== 'env' && kind !== 'user';
}
