import assert from 'node:assert/strict';
import { posix } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InvalidArgumentError } from '../../src/core/errors.js';
import {
  changesDisk, describeStep, MAX_STEPS, normaliseContextPath, parseRecipe, RecipeError, recipeFromJsonText,
} from '../../src/templates/recipe.js';
import type { Recipe, RecipeStep } from '../../src/templates/types.js';

/** Asserts that `input` is refused with a RecipeError naming `path` (and matching `problem`, when given). */
function refuses(input: unknown, path: string, problem?: RegExp): void {
  assert.throws(() => parseRecipe(input), (e: unknown) => {
    assert.ok(e instanceof RecipeError, `not a RecipeError: ${String(e)}`);
    assert.equal(e.field, path);
    assert.ok(e.message.startsWith(`${path}: `), e.message);
    if (problem !== undefined) assert.match(e.message, problem);
    return true;
  });
}

const step = (s: unknown): unknown => ({ steps: [s] });
const oneStep = (s: unknown): RecipeStep => {
  const [only] = parseRecipe(step(s)).steps;
  assert.ok(only !== undefined);
  return only;
};

const docsExample = {
  from: 'base',
  steps: [
    { apt: ['python3-numpy', 'python3-pandas'] },
    { copy: { src: 'app/', dest: '/home/user/app', owner: 'user' } },
    { env: { MPLBACKEND: 'Agg' } },
    { workdir: '/home/user/app' },
    { user: 'user' },
    { run: 'python3 -m venv /home/user/venv' },
  ],
  start: { command: 'python3 -m http.server 8000', ready: { port: 8000 }, timeoutSec: 60 },
  resources: { cpuCount: 2, memoryMB: 1024, diskSizeMB: 4096 },
};

describe('parseRecipe: the whole recipe', () => {
  it('accepts the docs example unchanged', () => {
    assert.deepEqual(parseRecipe(docsExample), docsExample);
  });

  it('keeps absent optional fields absent and defaults steps to []', () => {
    assert.deepEqual(parseRecipe({}), { steps: [] });
    assert.deepEqual(parseRecipe({ from: 'py-data' }), { from: 'py-data', steps: [] });
  });

  it('returns a deep copy that shares nothing with the input', () => {
    const input = structuredClone(docsExample);
    const out = parseRecipe(input);
    (input.steps[0] as { apt: string[] }).apt.push('evil');
    (input.steps[1] as { copy: { src: string } }).copy.src = 'other';
    (input.steps[2] as { env: Record<string, string> }).env.X = 'y';
    input.start.ready.port = 1;
    input.resources.cpuCount = 64;
    assert.deepEqual(out, docsExample);
    assert.notEqual(out.steps, input.steps);
    assert.notEqual(out.start, input.start);
    assert.notEqual(out.resources, input.resources);
  });

  it('is a 400-kind error: RecipeError is an InvalidArgumentError with the path as field', () => {
    assert.throws(() => parseRecipe({ steps: [{ run: '' }] }), (e: unknown) =>
      e instanceof InvalidArgumentError && e.code === 'invalid_argument' && e.field === 'steps[0].run');
  });

  it('refuses a non-object, an array, null and a class instance', () => {
    for (const v of ['x', 1, null, [], new Map()]) refuses(v, 'recipe', /must be an object/);
  });

  it('refuses unknown top-level keys (typos are not ignored)', () => {
    refuses({ step: [] }, 'step', /unknown key/);
    refuses({ steps: [], resource: {} }, 'resource', /unknown key/);
  });

  it('from: a template id or alias', () => {
    for (const ok of ['base', 'py-data', 'a', '0.x_y-z', 'a'.repeat(63)]) assert.equal(parseRecipe({ from: ok }).from, ok);
    for (const bad of ['', 'Base', '-x', '.x', 'a'.repeat(64), 'a/b', 'a:tag', 'a b']) refuses({ from: bad }, 'from', /template id or alias/);
    refuses({ from: 1 }, 'from', /must be a string/);
  });

  it('steps: an array of at most 200 objects', () => {
    assert.equal(parseRecipe({ steps: Array.from({ length: MAX_STEPS }, () => ({ run: 'true' })) }).steps.length, 200);
    refuses({ steps: Array.from({ length: MAX_STEPS + 1 }, () => ({ run: 'true' })) }, 'steps', /at most 200/);
    refuses({ steps: {} }, 'steps', /must be an array/);
    refuses({ steps: ['run ls'] }, 'steps[0]', /must be an object/);
  });
});

describe('parseRecipe: step shape', () => {
  it('refuses a step with no step key, two step keys, or an unknown key', () => {
    refuses(step({}), 'steps[0]', /exactly one of run, copy, env, workdir, user, apt, pip.*found none/);
    refuses(step({ copy: { src: '.', dest: '/' }, env: { A: '1' } }), 'steps[0]', /found copy, env/);
    refuses(step({ run: 'ls', workdir: '/x' }), 'steps[0]', /found run, workdir/);
    refuses(step({ run: 'ls', user: 'u', copy: { src: '.', dest: '/' } }), 'steps[0]', /found run, copy, user/);
    refuses(step({ run: 'ls', usr: 'x' }), 'steps[0].usr', /unknown key/);
    refuses({ steps: [{ run: 'ls' }, { runn: 'ls' }] }, 'steps[1].runn', /unknown key/);
  });

  it('accepts run with user, and user alone', () => {
    assert.deepEqual(oneStep({ run: 'id', user: 'user' }), { run: 'id', user: 'user' });
    assert.deepEqual(oneStep({ user: 'user' }), { user: 'user' });
    refuses(step({ run: 'id', user: 'Root' }), 'steps[0].user', /user name/);
  });
});

describe('parseRecipe: run', () => {
  it('accepts any non-blank command up to 64 KiB (multi-line included)', () => {
    assert.deepEqual(oneStep({ run: 'set -e\napt-get update' }), { run: 'set -e\napt-get update' });
    assert.equal((oneStep({ run: 'x'.repeat(65536) }) as { run: string }).run.length, 65536);
  });

  it('refuses empty, blank, NUL, oversized (in bytes) and non-string commands', () => {
    refuses(step({ run: '' }), 'steps[0].run', /empty/);
    refuses(step({ run: ' \n\t' }), 'steps[0].run', /blank/);
    refuses(step({ run: 'ls\0' }), 'steps[0].run', /NUL/);
    refuses(step({ run: 'x'.repeat(65537) }), 'steps[0].run', /65536 bytes/);
    refuses(step({ run: 'é'.repeat(32769) }), 'steps[0].run', /65536 bytes/);
    refuses(step({ run: ['ls'] }), 'steps[0].run', /string/);
  });
});

describe('parseRecipe: copy', () => {
  const copy = (c: Record<string, unknown>): unknown => step({ copy: { src: 'app', dest: '/app', ...c } });
  const src = (s: string): string => (oneStep({ copy: { src: s, dest: '/d' } }) as { copy: { src: string } }).copy.src;

  it('normalises src once: "./" stripped, "." for the whole context, inner ".." resolved', () => {
    assert.equal(src('./app'), 'app');
    assert.equal(src('app/'), 'app/');
    assert.equal(src('.'), '.');
    assert.equal(src('./'), '.');
    assert.equal(src('a/../'), '.');
    assert.equal(src('a//b/./c'), 'a/b/c');
    assert.equal(src('a/../b'), 'b');
    assert.equal(src('..a/b..'), '..a/b..');
  });

  it('refuses a src outside the context', () => {
    for (const bad of ['/etc/passwd', '/', '..', '../x', 'a/../../x', './..', 'a/b/../../..']) {
      refuses(copy({ src: bad }), 'steps[0].copy.src', /^steps\[0\]\.copy\.src: must be a relative path inside the build context \(no "\.\.", not absolute\)$/);
    }
  });

  it('refuses an empty src, NUL and backslash in src', () => {
    refuses(copy({ src: '' }), 'steps[0].copy.src', /empty/);
    refuses(copy({ src: 'a\0b' }), 'steps[0].copy.src', /NUL/);
    refuses(copy({ src: '..\\x' }), 'steps[0].copy.src', /backslash/);
    refuses(copy({ src: 3 }), 'steps[0].copy.src', /string/);
  });

  it('keeps dest absolute or relative, posix-normalised, trailing "/" kept', () => {
    const dest = (d: string): string => (oneStep({ copy: { src: 'a', dest: d } }) as { copy: { dest: string } }).copy.dest;
    assert.equal(dest('/home//user/./app/'), '/home/user/app/');
    assert.equal(dest('./sub'), 'sub');
    assert.equal(dest('sub/'), 'sub/');
    assert.equal(dest('../up'), '../up');
    refuses(copy({ dest: '' }), 'steps[0].copy.dest', /empty/);
    refuses(copy({ dest: '/a\0' }), 'steps[0].copy.dest', /NUL/);
    refuses({ steps: [{ copy: { src: 'a' } }] }, 'steps[0].copy.dest', /string/);
  });

  it('owner: user or user:group, names or ids', () => {
    for (const ok of ['user', 'user:user', '1000', '1000:1000', 'www-data:_grp']) {
      assert.equal((oneStep({ copy: { src: 'a', dest: '/b', owner: ok } }) as { copy: { owner?: string } }).copy.owner, ok);
    }
    for (const bad of ['', 'User', 'a:b:c', ':g', 'u:', '-x', 'a b', 1000]) refuses(copy({ owner: bad }), 'steps[0].copy.owner');
  });

  it('mode: an octal string of 3 or 4 digits', () => {
    for (const ok of ['755', '0644', '4755']) assert.equal((oneStep({ copy: { src: 'a', dest: '/b', mode: ok } }) as { copy: { mode?: string } }).copy.mode, ok);
    for (const bad of ['75', '75555', '788', 'rwx', 755, '+x']) refuses(copy({ mode: bad }), 'steps[0].copy.mode', /octal/);
  });

  it('refuses unknown keys in copy', () => {
    refuses(copy({ chown: 'user' }), 'steps[0].copy.chown', /unknown key/);
    refuses(step({ copy: 'a /b' }), 'steps[0].copy', /must be an object/);
  });

  it('property: accepted src paths are fixed points and never leave the context', () => {
    const segment = fc.constantFrom('a', 'b', '.', '..', '', '...', '..a', 'a..', '\\', '\0', ' ');
    const pathArb = fc.array(segment, { maxLength: 8 }).chain((segs) =>
      fc.boolean().map((abs) => (abs ? '/' : '') + segs.join('/')));
    fc.assert(fc.property(fc.oneof(pathArb, fc.string()), (raw) => {
      const once = normaliseContextPath(raw);
      if (typeof once !== 'string') return;
      assert.equal(normaliseContextPath(once), once, `not idempotent for ${JSON.stringify(raw)}`);
      const resolved = posix.resolve('/ctx', once);
      assert.ok(resolved === '/ctx' || resolved.startsWith('/ctx/'), `${JSON.stringify(raw)} → ${once} escapes`);
      assert.ok(!once.startsWith('/') && !once.split('/').includes('..'));
      assert.equal((oneStep({ copy: { src: raw, dest: '/d' } }) as { copy: { src: string } }).copy.src, once);
    }), { numRuns: 2000 });
  });
});

describe('parseRecipe: env', () => {
  it('accepts variable names and string values, empty ones included', () => {
    assert.deepEqual(oneStep({ env: { A: '1', _b2: '', PATH: '/usr/bin:/bin' } }), { env: { A: '1', _b2: '', PATH: '/usr/bin:/bin' } });
  });

  it('refuses bad names, non-string values, NUL, an empty object and __proto__', () => {
    for (const bad of ['1A', 'A-B', 'A B', 'É']) refuses(step({ env: { [bad]: 'x' } }), `steps[0].env[${JSON.stringify(bad)}]`, /variable name/);
    refuses(step({ env: { '': 'x' } }), 'steps[0].env[""]', /variable name/);
    refuses(step({ env: { A: 1 } }), 'steps[0].env.A', /string/);
    refuses(step({ env: { A: 'x\0' } }), 'steps[0].env.A', /NUL/);
    refuses(step({ env: {} }), 'steps[0].env', /at least one/);
    refuses(step({ env: ['A=1'] }), 'steps[0].env', /object/);
    refuses(step({ env: JSON.parse('{"__proto__": "x"}') }), 'steps[0].env.__proto__', /reserved/);
  });

  it('bounds one step\'s env to 64 KiB in all', () => {
    const half = 'x'.repeat(32 * 1024);
    assert.ok(oneStep({ env: { A: half.slice(2), B: half.slice(2) } }));
    refuses(step({ env: { A: half, B: half } }), 'steps[0].env', /65536 bytes/);
  });
});

describe('parseRecipe: workdir and user', () => {
  it('workdir: absolute after normalisation, trailing "/" dropped', () => {
    assert.deepEqual(oneStep({ workdir: '/home/user/app/' }), { workdir: '/home/user/app' });
    assert.deepEqual(oneStep({ workdir: '//a/./b/../c' }), { workdir: '/a/c' });
    assert.deepEqual(oneStep({ workdir: '/' }), { workdir: '/' });
    for (const bad of ['app', './app', '../x', '.']) refuses(step({ workdir: bad }), 'steps[0].workdir', /absolute/);
    refuses(step({ workdir: '' }), 'steps[0].workdir', /empty/);
    refuses(step({ workdir: '/a\0' }), 'steps[0].workdir', /NUL/);
  });

  it('user: a name or a numeric uid', () => {
    for (const ok of ['user', 'root', '_svc', 'www-data', 'a'.repeat(32), '0', '1000', '4294967295']) assert.deepEqual(oneStep({ user: ok }), { user: ok });
    for (const bad of ['', 'User', '1abc', '-x', 'a'.repeat(33), 'a:b', '12345678901', 'a b', 0]) refuses(step({ user: bad }), 'steps[0].user');
  });
});

describe('parseRecipe: apt', () => {
  it('accepts package names with an optional :arch and =version', () => {
    const names = ['python3-numpy', 'g++', 'libc6:amd64', 'python3=3.11.2-1+b1', 'libfoo1:i386=1:2.0~rc1-3', '0ad'];
    assert.deepEqual(oneStep({ apt: names }), { apt: names });
  });

  it('never lets a package be read as an apt-get option', () => {
    for (const bad of ['-y', '--allow-unauthenticated', '-o=APT::Get::AllowUnauthenticated=1', ' -y']) {
      refuses(step({ apt: ['curl', bad] }), 'steps[0].apt[1]', /Debian package name/);
    }
  });

  it('refuses other malformed names and lists', () => {
    for (const bad of ['', 'Curl', 'a b', 'a;b', 'a/b', 'curl=', 'curl:', 'curl=1 2']) refuses(step({ apt: [bad] }), 'steps[0].apt[0]');
    refuses(step({ apt: [] }), 'steps[0].apt', /at least one/);
    refuses(step({ apt: Array.from({ length: 501 }, () => 'curl') }), 'steps[0].apt', /at most 500/);
    refuses(step({ apt: 'curl' }), 'steps[0].apt', /array/);
    refuses(step({ apt: [1] }), 'steps[0].apt[0]', /string/);
    assert.equal((oneStep({ apt: Array.from({ length: 500 }, () => 'curl') }) as { apt: string[] }).apt.length, 500);
  });
});

describe('parseRecipe: pip', () => {
  it('accepts requirement specifiers and local paths', () => {
    const specs = ['requests', 'numpy>=1.26,<2', 'pkg[extra]==1.0', 'pkg; python_version >= "3.8"', './wheels/x.whl'];
    assert.deepEqual(oneStep({ pip: specs }), { pip: specs });
  });

  it('refuses options, newlines, NUL and empty specs', () => {
    for (const bad of ['-r', '--index-url=https://evil', '-e .', ' --pre']) refuses(step({ pip: ['ok', bad] }), 'steps[0].pip[1]', /must not start with "-"/);
    refuses(step({ pip: ['a\nb'] }), 'steps[0].pip[0]', /newline/);
    refuses(step({ pip: ['a\rb'] }), 'steps[0].pip[0]', /newline/);
    refuses(step({ pip: ['a\0'] }), 'steps[0].pip[0]', /NUL/);
    refuses(step({ pip: [''] }), 'steps[0].pip[0]', /empty/);
    refuses(step({ pip: [] }), 'steps[0].pip', /at least one/);
    refuses(step({ pip: Array.from({ length: 501 }, () => 'x') }), 'steps[0].pip', /at most 500/);
  });
});

describe('parseRecipe: start and resources', () => {
  it('start: a command, an optional ready check and timeout', () => {
    assert.deepEqual(parseRecipe({ start: { command: 'srv' } }).start, { command: 'srv' });
    assert.deepEqual(parseRecipe({ start: { command: 'srv', ready: { command: 'curl -f localhost' }, timeoutSec: 3600 } }).start,
      { command: 'srv', ready: { command: 'curl -f localhost' }, timeoutSec: 3600 });
    for (const port of [1, 65535]) assert.deepEqual(parseRecipe({ start: { command: 's', ready: { port } } }).start?.ready, { port });
  });

  it('start: refuses a missing or empty command and unknown keys', () => {
    refuses({ start: {} }, 'start.command', /required/);
    refuses({ start: { command: '' } }, 'start.command', /empty/);
    refuses({ start: { command: 'x\0' } }, 'start.command', /NUL/);
    refuses({ start: { command: 's', timeout: 5 } }, 'start.timeout', /unknown key/);
    refuses({ start: 'srv' }, 'start', /object/);
  });

  it('start.ready: exactly one of command or port, port 1..65535', () => {
    refuses({ start: { command: 's', ready: {} } }, 'start.ready', /exactly/);
    refuses({ start: { command: 's', ready: { command: 'x', port: 80 } } }, 'start.ready', /exactly/);
    refuses({ start: { command: 's', ready: { http: '/' } } }, 'start.ready.http', /unknown key/);
    for (const port of [0, 65536, 80.5, '80', -1]) refuses({ start: { command: 's', ready: { port } } }, 'start.ready.port', /1 to 65535/);
    refuses({ start: { command: 's', ready: { command: '' } } }, 'start.ready.command', /empty/);
  });

  it('start.timeoutSec: an integer 1..3600', () => {
    assert.equal(parseRecipe({ start: { command: 's', timeoutSec: 1 } }).start?.timeoutSec, 1);
    for (const t of [0, 3601, 1.5, '60']) refuses({ start: { command: 's', timeoutSec: t } }, 'start.timeoutSec', /1 to 3600/);
  });

  it('resources: integer ranges at both ends', () => {
    const ranges = { cpuCount: [1, 64], memoryMB: [128, 262144], diskSizeMB: [256, 1048576] } as const;
    for (const [key, [min, max]] of Object.entries(ranges)) {
      assert.deepEqual(parseRecipe({ resources: { [key]: min } }).resources, { [key]: min });
      assert.deepEqual(parseRecipe({ resources: { [key]: max } }).resources, { [key]: max });
      for (const bad of [min - 1, max + 1, min + 0.5, String(min), null]) refuses({ resources: { [key]: bad } }, `resources.${key}`, new RegExp(`from ${min} to ${max}`));
    }
    refuses({ resources: { cpus: 2 } }, 'resources.cpus', /unknown key/);
  });
});

describe('recipeFromJsonText', () => {
  it('parses and validates JSON text', () => {
    assert.deepEqual(recipeFromJsonText(JSON.stringify(docsExample)), docsExample);
    assert.throws(() => recipeFromJsonText('{"steps": [{"run": ""}]}'), /^RecipeError: steps\[0\]\.run: must not be empty$/);
  });

  it('names the file on a syntax error', () => {
    assert.throws(() => recipeFromJsonText('{"steps": [,]}'), (e: unknown) =>
      e instanceof RecipeError && /^hearth\.template\.json: not JSON: .+/.test(e.message));
  });
});

describe('describeStep and changesDisk', () => {
  const cases: [RecipeStep, string, boolean][] = [
    [{ run: 'apt-get update' }, 'RUN apt-get update', true],
    [{ run: 'make', user: 'user' }, 'RUN (as user) make', true],
    [{ copy: { src: 'app/', dest: '/home/user/app' } }, 'COPY app/ → /home/user/app', true],
    [{ copy: { src: '.', dest: 'x/', owner: 'user', mode: '755' } }, 'COPY --chown=user --chmod=755 . → x/', true],
    [{ env: { FOO: 'secret', BAR: 'x' } }, 'ENV FOO=… BAR=…', false],
    [{ workdir: '/x' }, 'WORKDIR /x', true],
    [{ user: 'user' }, 'USER user', false],
    [{ apt: ['python3-numpy', 'python3-pandas'] }, 'APT python3-numpy python3-pandas', true],
    [{ pip: ['requests'] }, 'PIP requests', true],
  ];
  for (const [s, label, disk] of cases) {
    it(`${label}: changes disk ${String(disk)}`, () => {
      assert.equal(describeStep(s), label);
      assert.equal(changesDisk(s), disk);
    });
  }

  it('keeps labels on one line of at most 80 characters, and never shows env values', () => {
    const label = describeStep({ run: `apt-get install -y \\\n  ${'pkg '.repeat(40)}` });
    assert.equal(label.length, 80);
    assert.ok(label.startsWith('RUN apt-get install -y \\ pkg pkg'));
    assert.ok(label.endsWith('…'));
    assert.ok(!label.includes('\n'));
    assert.ok(describeStep({ apt: Array.from({ length: 50 }, (_, i) => `pkg${i}`) }).length <= 80);
    assert.ok(!describeStep({ env: { TOKEN: 'hunter2' } }).includes('hunter2'));
  });

  it('labels every step of a parsed recipe', () => {
    const recipe: Recipe = parseRecipe(docsExample);
    assert.deepEqual(recipe.steps.map(describeStep), [
      'APT python3-numpy python3-pandas', 'COPY --chown=user app/ → /home/user/app', 'ENV MPLBACKEND=…',
      'WORKDIR /home/user/app', 'USER user', 'RUN python3 -m venv /home/user/venv',
    ]);
  });
});
