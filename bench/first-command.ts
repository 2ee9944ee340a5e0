/**
 * What a user feels (issue #14): through the SDK, `Sandbox.create()` → the first
 * `commands.run('true')` and the second one; cold boot and warm restore in the same
 * run; 20 concurrent creates; host memory (PSS) and data-dir blocks per sandbox; the
 * density figure. The daemon runs the configuration `scripts/start.sh` gives users:
 * every default of `src/daemon/config.ts`, and a data dir on XFS with reflinks (what
 * `hearth storage init` mounts), not the test harness's ext4 temp dir.
 *
 *   node --import tsx bench/first-command.ts [--rounds N] [--concurrent N] [--density N] [--only warm|cold|all]
 *     → bench/results/first-command.json
 *
 * Runs as root (netns slots, loop mounts). Each daemon gets its own netns tag and range
 * so it coexists with other test runs; nothing else differs from `hearth up`.
 */
import { parseArgs } from 'node:util';
import { readFile, readdir, stat } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { Sandbox } from '../src/sdk/index.js';
import { log, stats, timed, writeResults, type Stats } from './lib.js';
import { stopEnv, userDaemon, type Env } from './user-daemon.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '10' },
    concurrent: { type: 'string', default: '20' },
    density: { type: 'string', default: '10' },
    only: { type: 'string', default: 'all' },
  },
});
const rounds = Number(values.rounds);
const concurrent = Number(values.concurrent);
const densityCount = Number(values.density);

interface Sample { createMs: number; firstMs: number; secondMs: number; totalMs: number; steps: Record<string, number> }

async function oneCreate(e: Env, opts: { keep?: boolean } = {}): Promise<[Sample, Sandbox]> {
  const [s, createMs] = await timed(() => Sandbox.create({ url: e.d.url }));
  const [, firstMs] = await timed(() => s.commands.run('true'));
  const [, secondMs] = await timed(() => s.commands.run('true'));
  const steps = Object.fromEntries(s.info.timings!.steps.map((x) => [x.step, x.ms]));
  if (!opts.keep) await s.kill();
  return [{ createMs, firstMs, secondMs, totalMs: createMs + firstMs, steps }, s];
}

function summarise(samples: Sample[]): Record<string, unknown> {
  const st = (k: keyof Omit<Sample, 'steps'>): Stats => stats(samples.map((s) => s[k]));
  const stepNames = [...new Set(samples.flatMap((s) => Object.keys(s.steps)))];
  return {
    createToFirstCommandMs: st('totalMs'),
    createMs: st('createMs'),
    firstCommandMs: st('firstMs'),
    secondCommandMs: st('secondMs'),
    firstOverSecond: Math.round((stats(samples.map((s) => s.firstMs)).p50 / stats(samples.map((s) => s.secondMs)).p50) * 100) / 100,
    stepsP50: Object.fromEntries(stepNames.map((n) => [n, stats(samples.map((s) => s.steps[n] ?? 0)).p50])),
    samples: samples.map((s) => ({ create: Math.round(s.createMs), first: Math.round(s.firstMs), second: Math.round(s.secondMs), steps: s.steps })),
  };
}

async function sequential(e: Env, label: string, n: number): Promise<Record<string, unknown>> {
  const samples: Sample[] = [];
  for (let i = 0; i < n; i++) {
    const [x] = await oneCreate(e);
    samples.push(x);
    log(`  ${label} #${i + 1}: create ${Math.round(x.createMs)} ms, first ${Math.round(x.firstMs)} ms, second ${Math.round(x.secondMs)} ms  ${JSON.stringify(x.steps)}`);
  }
  return summarise(samples);
}

/** PSS of a process in KiB (smaps_rollup), and its RSS split. */
async function memoryOf(pid: number): Promise<{ pssKiB: number; rssKiB: number; anonKiB: number }> {
  const text = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
  return { pssKiB: field('Pss'), rssKiB: field('Rss'), anonKiB: field('Anonymous') };
}

/** Real blocks used on the data dir's filesystem (df), KiB. */
function fsUsedKiB(dir: string): number {
  execFileSync('sync', ['-f', dir]);
  const out = execFileSync('df', ['--output=used', '-k', dir], { encoding: 'utf8' });
  return Number(out.trim().split('\n').at(-1));
}

/** Extents of a reflinked file that are no longer shared (filefrag -v), merged into MiB ranges. */
function unsharedRanges(file: string): { totalMiB: number; ranges: string[] } {
  execFileSync('sync', ['-f', file]);
  const out = execFileSync('filefrag', ['-v', '-b4096', file], { encoding: 'utf8' });
  const ranges: [number, number][] = [];
  for (const line of out.split('\n')) {
    const m = /^\s*\d+:\s+(\d+)\.\.\s*(\d+):.*?(\S*)$/.exec(line);
    if (!m || /shared/.test(line)) continue;
    const a = Number(m[1]) * 4096 / 1048576;
    const b = (Number(m[2]) + 1) * 4096 / 1048576;
    const last = ranges.at(-1);
    if (last && a - last[1] < 1) last[1] = b; else ranges.push([a, b]);
  }
  return { totalMiB: Math.round(ranges.reduce((t, [a, b]) => t + b - a, 0) * 10) / 10, ranges: ranges.slice(0, 12).map(([a, b]) => `${a.toFixed(1)}-${b.toFixed(1)}`) };
}

async function dirBlocksKiB(dir: string): Promise<number> {
  let sum = 0;
  for (const name of await readdir(dir, { recursive: true })) {
    const st = await stat(join(dir, name)).catch(() => null);
    if (st?.isFile()) sum += st.blocks * 512;
  }
  return Math.round(sum / 1024);
}

/** N idle sandboxes: per-sandbox PSS of its VMM and data-dir blocks, and what fits in this host's RAM. */
async function density(e: Env, n: number): Promise<Record<string, unknown>> {
  const before = fsUsedKiB(e.cfg.dataDir);
  const boxes: Sandbox[] = [];
  const perBox: { pssKiB: number; rssKiB: number; anonKiB: number; dirKiB: number }[] = [];
  const afterCreate: number[] = [];
  let hint = '';
  let unshared: { totalMiB: number; ranges: string[] } = { totalMiB: 0, ranges: [] };
  for (let i = 0; i < n; i++) {
    const u0 = fsUsedKiB(e.cfg.dataDir);
    const s = await Sandbox.create({ url: e.d.url });
    afterCreate.push((fsUsedKiB(e.cfg.dataDir) - u0) / 1024);
    hint ||= execFileSync('xfs_io', ['-c', 'stat', join(e.cfg.dataDir, 'sandboxes', s.id, 'memory')], { encoding: 'utf8' }).split('\n').find((l) => l.includes('cowextsize'))?.trim() ?? '';
    if (i === 0) unshared = unsharedRanges(join(e.cfg.dataDir, 'sandboxes', s.id, 'memory'));
    await s.commands.run('true');
    await s.commands.run('true');
    boxes.push(s);
  }
  // Idle: let the guests settle after their first commands.
  await new Promise((r) => setTimeout(r, 5000));
  for (const s of boxes) {
    const pid = e.d.manager.get(s.id).vmm?.pid;
    if (!pid) continue;
    const m = await memoryOf(pid);
    perBox.push({ ...m, dirKiB: await dirBlocksKiB(join(e.cfg.dataDir, 'sandboxes', s.id)) });
  }
  const after = fsUsedKiB(e.cfg.dataDir);
  await Promise.all(boxes.map((s) => s.kill()));
  const pss = stats(perBox.map((p) => p.pssKiB / 1024));
  const memTotalMiB = Number(/MemTotal:\s+(\d+)/.exec(await readFile('/proc/meminfo', 'utf8'))?.[1] ?? 0) / 1024;
  return {
    count: n,
    pssMiB: pss,
    rssMiB: stats(perBox.map((p) => p.rssKiB / 1024)),
    anonMiB: stats(perBox.map((p) => p.anonKiB / 1024)),
    sandboxDirBlocksMiB: stats(perBox.map((p) => p.dirKiB / 1024)),
    dataDirGrowthPerSandboxMiB: Math.round(((after - before) / n / 1024) * 10) / 10,
    dataDirGrowthRightAfterCreateMiB: stats(afterCreate),
    memoryFileHint: hint,
    memoryFileUnsharedRightAfterCreate: unshared,
    hostMemoryMiB: Math.round(memTotalMiB),
    idleSandboxesIn24GiB: Math.floor((24 * 1024) / pss.p50),
  };
}

async function concurrentCreates(e: Env, n: number, single: number): Promise<Record<string, unknown>> {
  const [res, wallMs] = await timed(() => Promise.allSettled(Array.from({ length: n }, () => timed(async () => {
    const s = await Sandbox.create({ url: e.d.url });
    await s.commands.run('true');
    return s;
  }))));
  const ok = res.filter((r): r is PromiseFulfilledResult<[Sandbox, number]> => r.status === 'fulfilled');
  const failed = res.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => String(r.reason).slice(0, 200));
  await Promise.all(ok.map((r) => r.value[0].kill().catch(() => undefined)));
  return {
    count: n, succeeded: ok.length, failed, wallMs: Math.round(wallMs),
    eachMs: stats(ok.map((r) => r.value[1])),
    singleCreateToFirstCommandMs: Math.round(single),
    wallOverSingle: Math.round((wallMs / single) * 10) / 10,
  };
}

const results: Record<string, unknown> = { rounds, config: 'scripts/start.sh defaults (src/daemon/config.ts), XFS reflink data dir' };
if (values.only === 'all' || values.only === 'cold') {
  log('cold boot (warmTemplates: false), same configuration otherwise');
  const e = await userDaemon({ warmTemplates: false, warmOnStart: false });
  try { results['coldBoot'] = await sequential(e, 'cold', Math.max(2, Math.floor(rounds / 3))); } finally { await stopEnv(e); }
}
if (values.only === 'all' || values.only === 'warm') {
  log('warm restore (the default)');
  const e = await userDaemon();
  try {
    await e.d.manager.settled();
    await oneCreate(e); // waits for the warm build if it still runs: not measured
    const warm = await sequential(e, 'warm', rounds);
    results['warmRestore'] = warm;
    const single = (warm['createToFirstCommandMs'] as Stats).p50;
    if (concurrent > 0) {
      log(`${concurrent} concurrent creates → first command`);
      results['concurrent'] = await concurrentCreates(e, concurrent, single);
      log(`  ${JSON.stringify(results['concurrent'])}`);
    }
    if (densityCount > 0) {
      log(`density: ${densityCount} idle sandboxes`);
      // Admission may refuse on a loaded host (503 with the reason): recorded, not fatal.
      results['density'] = await density(e, densityCount).catch((err: unknown) => ({ refused: String(err).slice(0, 300) }));
      log(`  ${JSON.stringify(results['density'])}`);
    }
  } finally { await stopEnv(e); }
}
const path = writeResults(values.only === 'all' ? 'first-command' : `first-command-${values.only}`, results);
log(`wrote ${path}`);
