/**
 * Sandbox lifecycle benchmark (issue: memory snapshots), real QEMU VMs:
 *  - create → first exec: warm template (snapshot restore) vs cold boot, same run;
 *  - pause, and resume → first exec, for 256 MiB and 1 GiB guests with memory dirtied;
 *  - fork of 5 → all answering.
 * `node --import tsx bench/lifecycle.ts [--rounds N]` → bench/results/lifecycle.json
 */
import { parseArgs } from 'node:util';
import { Sandbox } from '../src/sdk/index.js';
import { startTestDaemon, type TestDaemon } from '../test/helpers/daemon.js';
import { log, stats, timed, writeResults } from './lib.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' } } });
const rounds = Number(values.rounds);

async function createToFirstExec(d: TestDaemon, opts: { memoryMb?: number } = {}): Promise<[Sandbox, number]> {
  return timed(async () => {
    const s = await Sandbox.create({ url: d.url, ...opts });
    await s.commands.run('true');
    return s;
  });
}

async function createBench(warm: boolean): Promise<{ createToFirstExecMs: ReturnType<typeof stats>; steps: Record<string, number>[] }> {
  const d = await startTestDaemon({ warmTemplates: warm });
  try {
    if (warm) {
      await d.manager.settled();
      // The first create also waits for the warm build if it is still running: not measured.
      const s = await Sandbox.create({ url: d.url });
      await s.kill();
    }
    const samples: number[] = [];
    const steps: Record<string, number>[] = [];
    for (let i = 0; i < rounds; i++) {
      const [s, ms] = await createToFirstExec(d);
      samples.push(ms);
      steps.push(Object.fromEntries(s.info.timings!.steps.map((x) => [x.step, x.ms])));
      log(`  ${warm ? 'warm' : 'cold'} create #${i + 1}: ${Math.round(ms)} ms`);
      await s.kill();
    }
    return { createToFirstExecMs: stats(samples), steps };
  } finally {
    await d.stop();
  }
}

async function pauseBench(memoryMb: number, dirtyMb: number): Promise<Record<string, unknown>> {
  const d = await startTestDaemon({ defaultMemoryMib: memoryMb });
  try {
    await d.manager.settled();
    const s = await Sandbox.create({ url: d.url, memoryMb });
    const pauses: number[] = [];
    const resumes: number[] = [];
    for (let i = 0; i < rounds; i++) {
      // Dirty memory: random data in a tmpfs lives in guest RAM.
      await s.commands.run(`head -c ${dirtyMb}M /dev/urandom > /dev/shm/dirty`, { timeoutMs: 300_000 });
      const [, p] = await timed(() => s.pause());
      const [, r] = await timed(async () => { await s.resume(); await s.commands.run('true'); });
      pauses.push(p);
      resumes.push(r);
      log(`  ${memoryMb} MiB (${dirtyMb} MiB dirtied): pause ${Math.round(p)} ms, resume → first exec ${Math.round(r)} ms`);
    }
    await s.kill();
    return { memoryMb, dirtyMb, pauseMs: stats(pauses), resumeToFirstExecMs: stats(resumes) };
  } finally {
    await d.stop();
  }
}

async function forkBench(count: number): Promise<Record<string, unknown>> {
  const d = await startTestDaemon();
  try {
    await d.manager.settled();
    const parent = await Sandbox.create({ url: d.url });
    const samples: number[] = [];
    for (let i = 0; i < Math.max(1, Math.floor(rounds / 2)); i++) {
      const [forks, ms] = await timed(async () => {
        const f = await parent.fork(count);
        await Promise.all(f.map((x) => x.commands.run('true')));
        return f;
      });
      samples.push(ms);
      log(`  fork of ${count} → all answering: ${Math.round(ms)} ms`);
      await Promise.all(forks.map((f) => f.kill()));
    }
    await parent.kill();
    return { count, forkToAllAnsweringMs: stats(samples) };
  } finally {
    await d.stop();
  }
}

log('create → first exec: cold boot (baseline)');
const cold = await createBench(false);
log('create → first exec: warm template (snapshot restore)');
const warm = await createBench(true);
log('pause / resume');
const pause256 = await pauseBench(256, 80);
const pause1g = await pauseBench(1024, 400);
log('fork');
const fork5 = await forkBench(5);
const path = writeResults('lifecycle', {
  rounds,
  create: { coldBoot: cold, warmTemplate: warm, speedup: Math.round((cold.createToFirstExecMs.p50 / warm.createToFirstExecMs.p50) * 10) / 10 },
  pauseResume: [pause256, pause1g],
  fork: fork5,
});
log(`wrote ${path}`);
