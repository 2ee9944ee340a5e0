import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { planBuild, resolveIn } from '../../src/templates/plan.js';
import { LayerStore } from '../../src/templates/layers.js';
import { decodeContext } from '../../src/api/routes/templates.js';
import type { Recipe } from '../../src/templates/types.js';

const dirs: string[] = [];
after(async () => { for (const d of dirs) await rm(d, { recursive: true, force: true }); });

async function context(files: Record<string, string>): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'hearth-plan-'));
  dirs.push(d);
  for (const [p, v] of Object.entries(files)) {
    await mkdir(join(d, p, '..'), { recursive: true });
    await writeFile(join(d, p), v);
  }
  return d;
}

const BASE = { sizeMib: 2048, runtime: null };
const KEY0 = 'image:abc';

describe('layer keys (planBuild)', () => {
  const recipe: Recipe = {
    steps: [
      { run: 'echo one' },
      { env: { A: '1' } },
      { copy: { src: 'app/', dest: '/opt/app/' } },
      { user: 'user' },
      { run: 'echo two' },
    ],
  };

  test('an unchanged prefix keeps its keys; a changed step changes its key and every later one', async () => {
    const ctx = await context({ 'app/a.txt': 'a' });
    const a = await planBuild(recipe, KEY0, BASE, ctx);
    const changed = await planBuild({ steps: [...recipe.steps.slice(0, 4), { run: 'echo TWO' }] }, KEY0, BASE, ctx);
    assert.deepEqual(changed.steps.slice(0, 4).map((s) => s.key), a.steps.slice(0, 4).map((s) => s.key));
    assert.notEqual(changed.steps[4]!.key, a.steps[4]!.key);
    const first = await planBuild({ steps: [{ run: 'echo ONE' }, ...recipe.steps.slice(1)] }, KEY0, BASE, ctx);
    for (const i of [0, 2, 4]) assert.notEqual(first.steps[i]!.key, a.steps[i]!.key, `step ${i}`);
  });

  test('env and user steps make no layer but change the keys of the steps after them', async () => {
    const ctx = await context({ 'app/a.txt': 'a' });
    const a = await planBuild(recipe, KEY0, BASE, ctx);
    assert.deepEqual(a.steps.map((s) => s.layer), [true, false, true, false, true]);
    assert.equal(a.steps[1]!.key, a.steps[0]!.key);
    const otherEnv = await planBuild({ steps: [recipe.steps[0]!, { env: { A: '2' } }, ...recipe.steps.slice(2)] }, KEY0, BASE, ctx);
    assert.equal(otherEnv.steps[0]!.key, a.steps[0]!.key);
    assert.notEqual(otherEnv.steps[2]!.key, a.steps[2]!.key);
    assert.deepEqual(a.runtime, { env: { A: '1' }, user: 'user', workdir: null, start: null });
  });

  test('copy keys follow the copied content, not the rest of the context', async () => {
    const a = await planBuild(recipe, KEY0, BASE, await context({ 'app/a.txt': 'a', 'other.txt': 'x' }));
    const b = await planBuild(recipe, KEY0, BASE, await context({ 'app/a.txt': 'a', 'other.txt': 'y' }));
    const c = await planBuild(recipe, KEY0, BASE, await context({ 'app/a.txt': 'changed', 'other.txt': 'x' }));
    assert.equal(b.steps[2]!.key, a.steps[2]!.key);
    assert.notEqual(c.steps[2]!.key, a.steps[2]!.key);
    await assert.rejects(planBuild({ steps: [{ copy: { src: 'missing', dest: '/x' } }] }, KEY0, BASE, await context({})), /not in the build context/);
  });

  test('a larger disk is a first layer of its own; the same or a smaller size is none', async () => {
    const ctx = await context({ 'app/a.txt': 'a' });
    const grown = await planBuild({ ...recipe, resources: { diskSizeMB: 4096 } }, KEY0, BASE, ctx);
    assert.equal(grown.steps[0]!.step, null);
    assert.equal(grown.steps[0]!.resizeMib, 4096);
    assert.equal(grown.steps.length, recipe.steps.length + 1);
    const same = await planBuild({ ...recipe, resources: { diskSizeMB: 2048 } }, KEY0, BASE, ctx);
    assert.equal(same.steps.length, recipe.steps.length);
    assert.notEqual(grown.steps[1]!.key, same.steps[0]!.key);
  });

  test('the base template\'s runtime is where the state starts; the recipe\'s start replaces it', async () => {
    const ctx = await context({});
    const base = { sizeMib: 2048, runtime: { env: { B: 'x' }, user: 'user', workdir: '/w', start: { command: 'svc' } } };
    const p = await planBuild({ steps: [{ workdir: 'sub' }, { env: { C: 'y' } }] }, KEY0, base, ctx);
    assert.deepEqual(p.runtime, { env: { B: 'x', C: 'y' }, user: 'user', workdir: '/w/sub', start: { command: 'svc' } });
    const q = await planBuild({ steps: [], start: { command: 'other' } }, KEY0, base, ctx);
    assert.equal(q.runtime.start?.command, 'other');
  });

  test('resolveIn keeps a trailing slash (a directory destination)', () => {
    assert.equal(resolveIn(null, 'a/'), '/a/');
    assert.equal(resolveIn('/w', '../x'), '/x');
    assert.equal(resolveIn('/w', '/abs'), '/abs');
  });
});

describe('build context (decodeContext)', () => {
  test('relative paths only, normalised once; strict base64', () => {
    const m = decodeContext({ 'a/./b.txt': Buffer.from('hi').toString('base64'), 'empty/': '' });
    assert.deepEqual([...m.keys()], ['a/b.txt', 'empty/']);
    assert.equal(m.get('a/b.txt')!.toString(), 'hi');
    for (const bad of ['../x', '/etc/passwd', 'a/../../x', '.', 'a\\b', 'x\0y', '']) {
      assert.throws(() => decodeContext({ [bad]: '' }), /relative path/, JSON.stringify(bad));
    }
    assert.throws(() => decodeContext({ 'a.txt': 'not base64!' }), /base64/);
  });
});

describe('layer store', () => {
  test('commit renames a complete layer into place; sweep removes staging a dead build left', async () => {
    const root = await mkdtemp(join(tmpdir(), 'hearth-layers-'));
    dirs.push(root);
    const store = new LayerStore(root);
    const key = 'a'.repeat(64);
    assert.equal(await store.has(key), false);
    const st = await store.stage();
    await writeFile(st.disk, 'disk');
    await store.commit(st, { key, parent: null, step: 'RUN x', buildId: 'b1', createdAt: new Date().toISOString() });
    assert.equal(await store.has(key), true);
    assert.equal((await store.meta(key))?.step, 'RUN x');
    await mkdir(join(root, '.staging-999999999-abc'), { recursive: true });
    const mine = await store.stage();
    await store.sweep();
    const names = await readdir(root);
    assert.deepEqual(names.sort(), [mine.dir.split('/').at(-1)!, key].sort());
    assert.deepEqual(await store.keys(), [key]);
    assert.throws(() => store.diskPath('../etc'), /bad layer key/);
  });
});
