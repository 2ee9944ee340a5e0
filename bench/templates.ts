/**
 * Custom templates (issue #15), in one run on one daemon as users run it
 * (bench/user-daemon.ts):
 *   - build time of examples/templates/node-service and python-data (unless
 *     --skip-python): cold (nothing cached), cached (the same recipe again:
 *     every layer and the warm snapshot reused), and with the last step
 *     changed (the prefix reused; the step, the capture and a new warm
 *     snapshot run);
 *   - create → first `commands.run('true')` through the SDK from the custom
 *     template vs the default one, interleaved A/B so drift hits both alike.
 *
 *   node --import tsx bench/templates.ts [--rounds N] [--skip-python]
 *     → bench/results/templates.json
 */
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import { Sandbox, Templates, readContextDir, type Recipe, type TemplateBuild } from '../src/sdk/index.js';
import { recipeFromJsonText } from '../src/templates/recipe.js';
import { readFile } from 'node:fs/promises';
import { PACKAGE_ROOT } from '../src/paths.js';
import { log, stats, timed, writeResults } from './lib.js';
import { stopEnv, userDaemon, type Env } from './user-daemon.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '10' }, 'skip-python': { type: 'boolean', default: false } } });
const rounds = Number(values.rounds);

async function buildExample(e: Env, dir: string, name: string, edit?: (r: Recipe) => Recipe): Promise<{ ms: number; cachedSteps: number; steps: number; phaseMs: Record<string, number | null> }> {
  const abs = join(PACKAGE_ROOT, 'examples/templates', dir);
  let recipe = recipeFromJsonText(await readFile(join(abs, 'hearth.template.json'), 'utf8')) as Recipe;
  if (edit) recipe = edit(recipe);
  const files = await readContextDir(abs);
  const [final, ms] = await timed(async (): Promise<TemplateBuild> => {
    const b = await Templates.build({ name, recipe, files }, { url: e.d.url });
    return Templates.waitForBuild(name, b.buildID, { url: e.d.url });
  });
  const counted = final.steps.filter((s) => s.status !== 'skipped');
  const r = { ms: Math.round(ms), cachedSteps: counted.filter((s) => s.cached).length, steps: counted.length, phaseMs: Object.fromEntries(final.steps.map((s) => [s.description, s.durationMs])) };
  log(`  build ${name}${edit ? ' (edited)' : ''}: ${r.ms} ms, ${r.cachedSteps}/${r.steps} cached`);
  return r;
}

async function createToFirst(e: Env, template: string): Promise<number> {
  const [s, createMs] = await timed(() => Sandbox.create({ url: e.d.url, template }));
  const [, firstMs] = await timed(() => s.commands.run('true'));
  await s.kill();
  return createMs + firstMs;
}

const results: Record<string, unknown> = { rounds, config: 'scripts/start.sh defaults (src/daemon/config.ts), XFS reflink data dir' };
const e = await userDaemon();
try {
  await e.d.manager.settled();
  await createToFirst(e, 'base'); // the default warm snapshot exists before anything is measured
  log('node-service builds');
  const cold = await buildExample(e, 'node-service', 'node-service');
  const cached = await buildExample(e, 'node-service', 'node-service');
  const lastChanged = await buildExample(e, 'node-service', 'node-service-b', (r) => ({ ...r, steps: [...r.steps.slice(0, -1), { run: 'node --check server.js && echo changed' }] }));
  results['nodeServiceBuild'] = { cold, cached, lastStepChanged: lastChanged, coldOverCached: Math.round(cold.ms / Math.max(cached.ms, 1)), coldOverLastStepChanged: Math.round((cold.ms / lastChanged.ms) * 100) / 100 };
  if (!values['skip-python']) {
    log('python-data builds');
    const pc = await buildExample(e, 'python-data', 'python-data');
    const pk = await buildExample(e, 'python-data', 'python-data');
    const pe = await buildExample(e, 'python-data', 'python-data-b', (r) => ({ ...r, steps: [...r.steps.slice(0, -1), { run: 'python3 -c "import pandas; print(pandas.__version__)"' }] }));
    results['pythonDataBuild'] = { cold: pc, cached: pk, lastStepChanged: pe, coldOverCached: Math.round(pc.ms / Math.max(pk.ms, 1)), coldOverLastStepChanged: Math.round((pc.ms / pe.ms) * 100) / 100 };
  }
  log(`create → first command, node-service vs base, ${rounds} rounds interleaved`);
  await createToFirst(e, 'node-service');
  const custom: number[] = [];
  const base: number[] = [];
  for (let i = 0; i < rounds; i++) {
    base.push(await createToFirst(e, 'base'));
    custom.push(await createToFirst(e, 'node-service'));
    log(`  #${i + 1}: base ${Math.round(base.at(-1)!)} ms, node-service ${Math.round(custom.at(-1)!)} ms`);
  }
  const sb = stats(base);
  const sc = stats(custom);
  results['createToFirstCommandMs'] = { base: sb, nodeService: sc, customOverBaseP50: Math.round((sc.p50 / sb.p50) * 100) / 100 };
} finally {
  await stopEnv(e);
}
log(`wrote ${writeResults('templates', results)}`);
