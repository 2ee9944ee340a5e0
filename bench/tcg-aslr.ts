/**
 * A lead for issue #14, not a product change: under TCG, QEMU 7.2 keys a translated block
 * by the guest's virtual address, so a program that the guest's ASLR maps somewhere new at
 * every exec (ld.so, libc, the program) is translated again each time. This measures the
 * sandbox QEMU's CPU time (bench/cpu.ts) for ten execs of `id` in one command, with ASLR as
 * the guest has it and under `setarch -R` (no randomisation for that process tree), run
 * alternately in the same sandbox after two warm-up commands.
 *
 *   node --import tsx bench/tcg-aslr.ts [--rounds N] → bench/results/tcg-aslr.json
 */
import { parseArgs } from 'node:util';
import { loadavg } from 'node:os';
import { Sandbox } from '../src/sdk/index.js';
import { log, stats, writeResults } from './lib.js';
import { stopEnv, userDaemon } from './user-daemon.js';
import { procCpu, totalMs } from './cpu.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '3' } } });
const rounds = Number(values.rounds);
const LOOP = 'for i in 1 2 3 4 5 6 7 8 9 10; do /usr/bin/id >/dev/null; done';
const aslr: number[] = [];
const noAslr: number[] = [];
const e = await userDaemon();
try {
  await e.d.manager.settled();
  const w = await Sandbox.create({ url: e.d.url }); // waits for the warm build: not measured
  await w.kill();
  for (let r = 0; r < rounds; r++) {
    const s = await Sandbox.create({ url: e.d.url });
    try {
      const pid = e.d.manager.get(s.id).vmm!.pid;
      const cpuOf = async (cmd: string): Promise<number> => {
        const c0 = totalMs(procCpu(pid));
        await s.commands.run(cmd);
        return totalMs(procCpu(pid)) - c0;
      };
      await cpuOf('true');
      await cpuOf('true');
      for (let k = 0; k < 4; k++) {
        aslr.push(await cpuOf(LOOP));
        noAslr.push(await cpuOf(`setarch x86_64 -R sh -c '${LOOP}'`));
      }
      log(`  round ${r + 1}: ASLR ${JSON.stringify(aslr.slice(-4))} ms, setarch -R ${JSON.stringify(noAslr.slice(-4))} ms`);
    } finally { await s.kill(); }
  }
} finally { await stopEnv(e); }
const path = writeResults('tcg-aslr', {
  rounds, command: LOOP, loadAverage: loadavg().map((x) => Math.round(x * 100) / 100),
  qemuCpuMsWithAslr: stats(aslr), qemuCpuMsSetarchR: stats(noAslr), samplesWithAslr: aslr, samplesSetarchR: noAslr,
});
log(`wrote ${path}`);
