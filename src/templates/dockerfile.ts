/**
 * The Dockerfile subset: a translation to the same Recipe a hand-written
 * `hearth.template.json` gives, so both share layer keys and the cache.
 * Whatever the subset cannot reproduce faithfully is an error naming its line,
 * never an approximation (docs/templates.md).
 */
import { posix } from 'node:path';
import { parseRecipe, RecipeError } from './recipe.js';
import type { Recipe, ReadyCheck, RecipeStep, StartSpec } from './types.js';

export class DockerfileError extends RecipeError {
  /** `line`: the 1-based line where the offending instruction starts. */
  constructor(readonly line: number, problem: string, field?: string) {
    super(`Dockerfile line ${line}: ${problem}`, field);
  }
}

const SUPPORTED = 'FROM, RUN, COPY, ENV, WORKDIR, USER, CMD, ENTRYPOINT, EXPOSE, HEALTHCHECK CMD, LABEL';

interface Instruction {
  line: number;
  /** Upper-cased: instructions are case-insensitive. */
  name: string;
  /** Everything after the instruction word, continuation lines joined. */
  args: string;
  flags: string[];
}

/** A CMD or ENTRYPOINT: shell form runs through /bin/sh -c, exec form is an argv. */
type Command = { line: number; shell: string } | { line: number; argv: string[] };

interface State {
  from?: { line: number; name: string };
  steps: RecipeStep[];
  /** The line of each step, for mapping recipe validation errors back to the Dockerfile. */
  stepLines: number[];
  workdir: string;
  cmd?: Command;
  entrypoint?: Command;
  healthcheck?: { line: number; command: string };
  expose?: { line: number; port: number };
}

// ---- lines -------------------------------------------------------------------

const CONTINUATION = /\\[ \t]*$/;

function isBlankOrComment(line: string): boolean {
  const t = line.trim();
  return t === '' || t.startsWith('#');
}

/**
 * The escape directive would make "`" the continuation and escape character;
 * reading such a file with "\" instead would silently change its meaning.
 */
function rejectEscapeDirective(lines: string[]): void {
  for (const [i, line] of lines.entries()) {
    const directive = /^#\s*([A-Za-z][A-Za-z0-9]*)\s*=/.exec(line);
    if (directive === null) return;
    if (directive[1]?.toLowerCase() === 'escape') {
      throw new DockerfileError(i + 1, 'the escape parser directive is not supported (the escape character is always "\\")');
    }
  }
}

/** Logical lines: comments and blank lines dropped, continuations joined with one space. */
function logicalLines(text: string): { line: number; text: string }[] {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  rejectEscapeDirective(lines);
  const result: { line: number; text: string }[] = [];
  let i = 0;
  while (i < lines.length) {
    const first = lines[i] ?? '';
    const start = ++i;
    if (isBlankOrComment(first)) continue;
    const pieces: string[] = [];
    let current: string | undefined = first;
    while (current !== undefined) {
      const continues = CONTINUATION.test(current);
      pieces.push(current.replace(CONTINUATION, '').trim());
      if (!continues) break;
      while (i < lines.length && isBlankOrComment(lines[i] ?? '')) i++;
      current = lines[i];
      if (current !== undefined) i++;
    }
    result.push({ line: start, text: pieces.filter((p) => p !== '').join(' ') });
  }
  return result;
}

/** Leading `--name[=value]` words, as Docker extracts them before any instruction's arguments. */
function splitFlags(args: string): { flags: string[]; rest: string } {
  const flags: string[] = [];
  let rest = args;
  for (let m = /^(--\S*)\s*/.exec(rest); m !== null; m = /^(--\S*)\s*/.exec(rest)) {
    flags.push(m[1] ?? '');
    rest = rest.slice(m[0].length);
  }
  return { flags, rest };
}

function instructions(text: string): Instruction[] {
  return logicalLines(text).map(({ line, text: t }) => {
    const m = /^(\S+)\s*([\s\S]*)$/.exec(t);
    const { flags, rest } = splitFlags(m?.[2] ?? '');
    return { line, name: (m?.[1] ?? '').toUpperCase(), args: rest, flags };
  });
}

// ---- words -------------------------------------------------------------------

function fail(ins: Instruction, problem: string): never {
  throw new DockerfileError(ins.line, problem);
}

/**
 * Docker expands variables in these instructions against the image's env,
 * which only the builder knows; a reference is refused rather than copied
 * literally into a path or a value.
 */
function rejectVariable(ins: Instruction, word: string, at: number): void {
  const next = word[at + 1];
  if (next !== undefined && /[A-Za-z0-9_{]/.test(next)) {
    const ref = /^\$(\{[^}]*\}?|[A-Za-z0-9_]+)/.exec(word.slice(at))?.[0] ?? '$';
    fail(ins, `${ins.name}: variable references (${ref}) are not expanded by Hearth's Dockerfile subset; write the value out, or escape the "$" as "\\$"`);
  }
}

/** Inside double quotes only \" \$ and \\ are escapes; any other backslash stays. */
function doubleQuoted(ins: Instruction, word: string, from: number): { text: string; end: number } {
  let text = '';
  let i = from;
  for (;;) {
    const ch = word[i];
    if (ch === undefined) fail(ins, `${ins.name}: unterminated double quote`);
    if (ch === '"') return { text, end: i + 1 };
    if (ch === '\\' && word[i + 1] !== undefined && '"$\\'.includes(word[i + 1] ?? '')) {
      text += word[i + 1];
      i += 2;
      continue;
    }
    if (ch === '$') rejectVariable(ins, word, i);
    text += ch;
    i++;
  }
}

/** Docker's word processing (quote removal, backslash escapes) without variable expansion. */
function expandWord(ins: Instruction, word: string): string {
  let out = '';
  let i = 0;
  while (i < word.length) {
    const ch = word[i] ?? '';
    if (ch === "'") {
      const close = word.indexOf("'", i + 1);
      if (close < 0) fail(ins, `${ins.name}: unterminated single quote`);
      out += word.slice(i + 1, close);
      i = close + 1;
    } else if (ch === '"') {
      const q = doubleQuoted(ins, word, i + 1);
      out += q.text;
      i = q.end;
    } else if (ch === '\\') {
      out += word[i + 1] ?? '';
      i += 2;
    } else {
      if (ch === '$') rejectVariable(ins, word, i);
      out += ch;
      i++;
    }
  }
  return out;
}

/** Docker's ENV/LABEL word split: whitespace outside quotes separates, quotes and escapes stay in the word. */
function splitWords(text: string): string[] {
  const words: string[] = [];
  let word = '';
  let quote: string | null = null;
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i] ?? '';
    if (quote === null && /\s/.test(ch)) {
      if (inWord) words.push(word);
      word = '';
      inWord = false;
      continue;
    }
    inWord = true;
    if (ch === '\\' && quote !== "'" && i + 1 < text.length) {
      word += ch + (text[i + 1] ?? '');
      i++;
      continue;
    }
    if (quote === null && (ch === '"' || ch === "'")) quote = ch;
    else if (ch === quote) quote = null;
    word += ch;
  }
  if (inWord) words.push(word);
  return words;
}

/** Exec form: a JSON array of strings. Anything else, even starting with "[", is shell form, as Docker. */
function execForm(args: string): string[] | undefined {
  if (!args.startsWith('[')) return undefined;
  try {
    const parsed: unknown = JSON.parse(args);
    if (Array.isArray(parsed) && parsed.every((a) => typeof a === 'string')) return parsed as string[];
  } catch {
    // Docker runs an unparsable "[…" as a shell command line.
  }
  return undefined;
}

function shellQuote(arg: string): string {
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

function quoteArgv(argv: string[]): string {
  return argv.map(shellQuote).join(' ');
}

// ---- instructions ------------------------------------------------------------

function noFlags(ins: Instruction): void {
  const flag = ins.flags[0];
  if (flag !== undefined) fail(ins, `${ins.name} ${flag.split('=')[0]} is not supported (${ins.name} takes no flags in Hearth's Dockerfile subset)`);
}

function requireArgs(ins: Instruction, what: string): void {
  if (ins.args.trim() === '') fail(ins, `${ins.name} needs ${what}`);
}

/** BuildKit reads `<<EOF` as a heredoc whose body follows on the next lines; those lines would parse as instructions here. */
function rejectHeredoc(ins: Instruction): void {
  if (/(^|\s)[0-9]*<<-?["']?[A-Za-z_]/.test(ins.args)) fail(ins, `${ins.name} with a heredoc (<<…) is not supported`);
}

function addStep(state: State, ins: Instruction, step: RecipeStep): void {
  state.steps.push(step);
  state.stepLines.push(ins.line);
}

function onFrom(ins: Instruction, state: State): void {
  if (state.from !== undefined) fail(ins, 'only one FROM is supported (multi-stage builds are not)');
  if (ins.flags.some((f) => f.startsWith('--platform'))) fail(ins, 'FROM --platform is not supported (a template builds on a Hearth template)');
  noFlags(ins);
  requireArgs(ins, 'a Hearth template id or alias');
  const words = ins.args.trim().split(/\s+/);
  if (words[1]?.toUpperCase() === 'AS') fail(ins, 'FROM … AS is not supported (multi-stage builds are not)');
  if (words.length !== 1) fail(ins, 'FROM takes exactly one Hearth template id or alias');
  const name = expandWord(ins, words[0] ?? '');
  if (name === 'scratch') fail(ins, 'FROM scratch is not supported: a template builds on a Hearth template (e.g. base)');
  if (/[:@]/.test(name)) fail(ins, `FROM ${name}: tags and digests are not supported; FROM names a Hearth template id or alias`);
  state.from = { line: ins.line, name };
}

function onRun(ins: Instruction, state: State): void {
  noFlags(ins);
  requireArgs(ins, 'a command');
  rejectHeredoc(ins);
  const argv = execForm(ins.args);
  if (argv !== undefined && argv.length === 0) fail(ins, 'RUN needs a command');
  addStep(state, ins, { run: argv === undefined ? ins.args : quoteArgv(argv) });
}

function copyFlags(ins: Instruction): { owner?: string; mode?: string } {
  const result: { owner?: string; mode?: string } = {};
  for (const flag of ins.flags) {
    const [name = '', ...rest] = flag.split('=');
    const value = rest.join('=');
    if (name === '--from') fail(ins, 'COPY --from is not supported (multi-stage builds are not)');
    if (name !== '--chown' && name !== '--chmod') fail(ins, `COPY ${name} is not supported (supported flags: --chown, --chmod)`);
    if (rest.length === 0 || value === '') fail(ins, `COPY ${name} needs a value (${name}=…)`);
    if (name === '--chown') result.owner = expandWord(ins, value);
    else result.mode = expandWord(ins, value);
  }
  return result;
}

function onCopy(ins: Instruction, state: State): void {
  const { owner, mode } = copyFlags(ins);
  rejectHeredoc(ins);
  const words = (execForm(ins.args) ?? ins.args.trim().split(/\s+/).filter((w) => w !== '')).map((w) => expandWord(ins, w));
  const dest = words.pop();
  if (dest === undefined || words.length === 0) fail(ins, 'COPY needs at least one source and a destination');
  if (words.length > 1 && !dest.endsWith('/')) fail(ins, 'COPY with several sources needs a destination ending in "/"');
  for (const src of words) {
    if (/[*?[]/.test(src)) fail(ins, `COPY ${src}: wildcards are not supported; name the files or directories`);
    addStep(state, ins, { copy: { src, dest, ...(owner === undefined ? {} : { owner }), ...(mode === undefined ? {} : { mode }) } });
  }
}

function envPairs(ins: Instruction): [string, string][] {
  const words = splitWords(ins.args);
  if (!(words[0] ?? '').includes('=')) {
    // The legacy `ENV KEY value with spaces` form: the rest of the line is the value.
    const m = /^(\S+)\s+([\s\S]+)$/.exec(ins.args.trim());
    if (m === null) fail(ins, 'ENV needs NAME=value (or the legacy NAME value)');
    return [[expandWord(ins, m[1] ?? ''), expandWord(ins, m[2] ?? '')]];
  }
  return words.map((word) => {
    const eq = word.indexOf('=');
    if (eq < 0) fail(ins, `ENV ${word}: expected NAME=value`);
    return [expandWord(ins, word.slice(0, eq)), expandWord(ins, word.slice(eq + 1))];
  });
}

function onEnv(ins: Instruction, state: State): void {
  noFlags(ins);
  requireArgs(ins, 'NAME=value');
  // fromEntries defines "__proto__" as a key (for parseRecipe to refuse) where assignment would drop it.
  addStep(state, ins, { env: Object.fromEntries(envPairs(ins)) });
}

function onWorkdir(ins: Instruction, state: State): void {
  noFlags(ins);
  requireArgs(ins, 'a path');
  const path = expandWord(ins, ins.args.trim());
  const resolved = posix.normalize(path.startsWith('/') ? path : posix.join(state.workdir, path));
  state.workdir = resolved.length > 1 ? resolved.replace(/\/+$/, '') : resolved;
  addStep(state, ins, { workdir: state.workdir });
}

function onUser(ins: Instruction, state: State): void {
  noFlags(ins);
  requireArgs(ins, 'a user name');
  const user = expandWord(ins, ins.args.trim());
  if (user.includes(':')) fail(ins, `USER ${user}: a group is not supported (steps and sandboxes run with the user's own groups); write USER name`);
  addStep(state, ins, { user });
}

function command(ins: Instruction): Command {
  noFlags(ins);
  requireArgs(ins, 'a command');
  const argv = execForm(ins.args);
  return argv === undefined ? { line: ins.line, shell: ins.args } : { line: ins.line, argv };
}

function onExpose(ins: Instruction, state: State): void {
  noFlags(ins);
  requireArgs(ins, 'a port');
  for (const word of ins.args.trim().split(/\s+/)) {
    const spec = expandWord(ins, word);
    const m = /^([0-9]+)(?:\/(tcp|udp))?$/i.exec(spec);
    if (m === null) fail(ins, `EXPOSE ${spec}: expected port or port/tcp (port ranges are not supported)`);
    if (m[2]?.toLowerCase() === 'udp') fail(ins, `EXPOSE ${spec}: UDP is not supported (the ready check connects over TCP)`);
    const port = Number(m[1]);
    if (port < 1 || port > 65535) fail(ins, `EXPOSE ${spec}: a port is 1 to 65535`);
    state.expose ??= { line: ins.line, port };
  }
}

function onHealthcheck(ins: Instruction, state: State): void {
  if (ins.flags.length > 0) fail(ins, 'HEALTHCHECK options (--interval, --timeout, …) are not supported; write HEALTHCHECK CMD <command>');
  const m = /^(\S+)\s*([\s\S]*)$/.exec(ins.args.trim());
  const kind = m?.[1]?.toUpperCase();
  if (kind === 'NONE') fail(ins, 'HEALTHCHECK NONE is not supported; leave HEALTHCHECK out');
  if (kind !== 'CMD') fail(ins, 'HEALTHCHECK takes CMD <command>');
  const rest = m?.[2] ?? '';
  const argv = execForm(rest);
  if (rest === '' || argv?.length === 0) fail(ins, 'HEALTHCHECK CMD needs a command');
  state.healthcheck = { line: ins.line, command: argv === undefined ? rest : quoteArgv(argv) };
}

type Handler = (ins: Instruction, state: State) => void;

const HANDLERS: Record<string, Handler> = {
  FROM: onFrom,
  RUN: onRun,
  COPY: onCopy,
  ENV: onEnv,
  WORKDIR: onWorkdir,
  USER: onUser,
  CMD: (ins, state) => { state.cmd = command(ins); },
  ENTRYPOINT: (ins, state) => { state.entrypoint = command(ins); },
  EXPOSE: onExpose,
  HEALTHCHECK: onHealthcheck,
  // Metadata only: a template has no labels, and dropping them changes nothing that runs.
  LABEL: () => {},
};

function dispatch(ins: Instruction, state: State): void {
  if (ins.name === 'ADD') fail(ins, 'ADD is not supported (no URLs, no archive extraction): use COPY for files from the build context');
  const handler = Object.hasOwn(HANDLERS, ins.name) ? HANDLERS[ins.name] : undefined;
  if (handler === undefined) fail(ins, `${ins.name} is not supported by Hearth's Dockerfile subset (supported: ${SUPPORTED})`);
  if (state.from === undefined && ins.name !== 'FROM') fail(ins, 'the first instruction must be FROM <template>');
  handler(ins, state);
}

// ---- the start command -------------------------------------------------------

function argvOf(c: Command): string[] {
  return 'argv' in c ? c.argv : ['/bin/sh', '-c', c.shell];
}

/**
 * Docker's combination: a shell-form ENTRYPOINT ignores CMD; an exec-form one
 * takes CMD's argv (a shell-form CMD as /bin/sh -c …) as its arguments.
 */
function startCommand(state: State): { command: string; line: number } | undefined {
  const { cmd, entrypoint } = state;
  if (entrypoint !== undefined && 'shell' in entrypoint) return { command: entrypoint.shell, line: entrypoint.line };
  if (entrypoint === undefined && cmd !== undefined && 'shell' in cmd) return { command: cmd.shell, line: cmd.line };
  const argv = [...(entrypoint === undefined ? [] : argvOf(entrypoint)), ...(cmd === undefined ? [] : argvOf(cmd))];
  const line = (entrypoint ?? cmd)?.line;
  return argv.length === 0 || line === undefined ? undefined : { command: quoteArgv(argv), line };
}

function start(state: State): { spec: StartSpec; line: number; readyLine?: number } | undefined {
  const cmd = startCommand(state);
  if (cmd === undefined) {
    if (state.healthcheck !== undefined) throw new DockerfileError(state.healthcheck.line, 'HEALTHCHECK needs a CMD or ENTRYPOINT (the start command it checks)');
    return undefined;
  }
  const ready: (ReadyCheck & { line: number }) | undefined = state.healthcheck ?? state.expose;
  if (ready === undefined) return { spec: { command: cmd.command }, line: cmd.line };
  const check: ReadyCheck = 'command' in ready ? { command: ready.command } : { port: ready.port };
  return { spec: { command: cmd.command, ready: check }, line: cmd.line, readyLine: ready.line };
}

// ---- the recipe --------------------------------------------------------------

interface Lines { from: number; steps: number[]; start?: number; ready?: number }

function lineOf(field: string | undefined, lines: Lines): number | undefined {
  const step = /^steps\[(\d+)\]/.exec(field ?? '');
  if (step !== null) return lines.steps[Number(step[1])];
  if (field === 'from') return lines.from;
  if (field?.startsWith('start.ready')) return lines.ready;
  if (field?.startsWith('start')) return lines.start;
  return undefined;
}

/** The recipe's own validation, its errors pointed at the line that produced the value. */
function validated(recipe: Recipe, lines: Lines): Recipe {
  try {
    return parseRecipe(recipe);
  } catch (err) {
    const line = err instanceof RecipeError ? lineOf(err.field, lines) : undefined;
    if (err instanceof RecipeError && line !== undefined) throw new DockerfileError(line, err.message, err.field);
    throw err;
  }
}

/** Translates a Dockerfile of the supported subset; never produces `resources` (the API takes them separately). */
export function dockerfileToRecipe(text: string): Recipe {
  const state: State = { steps: [], stepLines: [], workdir: '/' };
  for (const ins of instructions(text)) dispatch(ins, state);
  if (state.from === undefined) throw new DockerfileError(1, 'no FROM instruction (a Dockerfile starts with FROM <template>)');
  const s = start(state);
  const recipe: Recipe = { from: state.from.name, steps: state.steps, ...(s === undefined ? {} : { start: s.spec }) };
  return validated(recipe, { from: state.from.line, steps: state.stepLines, start: s?.line, ready: s?.readyLine });
}
