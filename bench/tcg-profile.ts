/**
 * Where a warm-restored sandbox's QEMU spends its CPU under TCG (issue #14): a sampling
 * profile (`perf record -a -e cpu-clock`, 1 sample per ms of CPU) over SDK create → first
 * `commands.run('true')` and over the second command, restricted afterwards to the
 * sandbox's QEMU process and split by thread (vCPU, main loop, others) and by what ran:
 *
 * - `guestCode`: code TCG generated (anonymous executable memory, perf's `[JIT]`);
 * - `translation`: TCG's translator and code generator;
 * - `tbLookupAndDispatch`: finding the next translated block, the execution loop;
 * - `otherQemu`: softmmu helpers, TLB fills and guest page walks, device emulation;
 * - `kernel`: page faults (first touches and copy-on-write of the memory file), syscalls;
 * - `libraries`: libc, glib.
 *
 * Debian's QEMU is stripped but exports its global functions (.dynsym); a sample in a
 * static function is given to the compilation unit of the nearest exported function before
 * or after it, which is how `translation` also covers translate.c's and optimize.c's static
 * code. The split is therefore this build's and approximate; the totals are exact counts.
 *
 *   node --import tsx bench/tcg-profile.ts [--rounds N] → bench/results/tcg-profile.json
 *
 * Runs as root with perf installed (linux-perf); the daemon is the one first-command.ts uses.
 */
import { parseArgs } from 'node:util';
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { promisify } from 'node:util';
import { cpus, loadavg } from 'node:os';
import { CapacityError, Sandbox } from '../src/sdk/index.js';
import { log, stats, writeResults } from './lib.js';
import { stopEnv, userDaemon } from './user-daemon.js';
import { qemuRoles, threadsCpu } from './cpu.js';

const execFileP = promisify(execFile);
const { values } = parseArgs({ options: { rounds: { type: 'string', default: '3' } } });
const rounds = Number(values.rounds);
const QEMU = execFileSync('sh', ['-c', 'command -v qemu-system-x86_64'], { encoding: 'utf8' }).trim();

type Bucket = 'guestCode' | 'translation' | 'tbLookupAndDispatch' | 'otherQemu' | 'kernel' | 'libraries';
const BUCKETS: Bucket[] = ['guestCode', 'translation', 'tbLookupAndDispatch', 'otherQemu', 'kernel', 'libraries'];
type Role = 'vcpu' | 'main' | 'other';
type Counts = Record<Role, Record<Bucket, number>>;

/** Exported text symbols of the QEMU binary, sorted by address. */
const symbols: { addr: number; name: string }[] = execFileSync('nm', ['-D', '--defined-only', '-n', QEMU], { encoding: 'utf8', maxBuffer: 64 << 20 })
  .split('\n').map((l) => l.split(' ')).filter((f) => f.length === 3 && /^[Tt]$/.test(f[1]!)).map((f) => ({ addr: parseInt(f[0]!, 16), name: f[2]! }));

const TRANSLATOR = /^(tcg_(?!exec|cpus|flush|register_thread)|gen_|translator_|tb_gen_code|plugin_gen_)/;
const DISPATCH = /^(cpu_exec|curr_cflags|cpu_loop_exit|qht_|tb_lookup|tb_htable|tb_set_jmp_target|helper_lookup_tb_ptr)/;

/** The exported functions before and after a file address of the binary. */
function neighbours(addr: number): [string, string] {
  let lo = 0;
  let hi = symbols.length - 1;
  while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (symbols[mid]!.addr <= addr) lo = mid; else hi = mid - 1; }
  return [symbols[lo]?.name ?? '', symbols[lo + 1]?.name ?? ''];
}

function qemuBucket(addr: number): [Bucket, string] {
  const [before, after] = neighbours(addr);
  if (TRANSLATOR.test(before) || TRANSLATOR.test(after)) return ['translation', before];
  if (DISPATCH.test(before) || DISPATCH.test(after)) return ['tbLookupAndDispatch', before];
  return ['otherQemu', before];
}

const zero = (): Record<Bucket, number> => Object.fromEntries(BUCKETS.map((b) => [b, 0])) as Record<Bucket, number>;
const zeroCounts = (): Counts => ({ vcpu: zero(), main: zero(), other: zero() });

interface Phase { counts: Counts; qemuSymbols: Map<string, number>; kernelSymbols: Map<string, number> }

/**
 * Reads `perf script` for one QEMU process: samples between t0 and t1 (CLOCK_MONOTONIC, s)
 * go to phase 0, between t1 and t2 to phase 1.
 */
async function classify(data: string, pid: number, vcpuTid: number, t: [number, number, number]): Promise<Phase[]> {
  const { stdout } = await execFileP('perf', ['script', '-i', data, '--show-mmap-events', '--pid', String(pid), '-F', 'tid,time,ip,sym,dso'], { maxBuffer: 256 << 20 });
  const phases: Phase[] = [0, 1].map(() => ({ counts: zeroCounts(), qemuSymbols: new Map(), kernelSymbols: new Map() }));
  let text: { start: number; pgoff: number } | undefined;
  for (const line of stdout.split('\n')) {
    // --pid filters samples, not mmap events: other processes' QEMUs (their own address layout) show too.
    const mm = /MMAP2? (\d+)\/\d+: \[0x([0-9a-f]+)\(0x[0-9a-f]+\) @ 0x([0-9a-f]+) .*r-xp (\S+)$/.exec(line);
    if (mm) { if (mm[4] === QEMU && Number(mm[1]) === pid) text = { start: parseInt(mm[2]!, 16), pgoff: parseInt(mm[3]!, 16) }; continue; }
    const m = /^\s*(\d+)\s+([\d.]+):\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$/.exec(line);
    if (!m) continue;
    const time = Number(m[2]);
    const phase = time >= t[0] && time < t[1] ? 0 : time >= t[1] && time < t[2] ? 1 : -1;
    if (phase < 0) continue;
    const tid = Number(m[1]);
    const role: Role = tid === vcpuTid ? 'vcpu' : tid === pid ? 'main' : 'other';
    const [sym, dso] = [m[4]!, m[5]!];
    const p = phases[phase]!;
    let bucket: Bucket;
    if (dso === QEMU && text) {
      // Text is mapped at its file offset's virtual address (p_vaddr == p_offset in this binary).
      const [b, near] = qemuBucket(parseInt(m[3]!, 16) - text.start + text.pgoff);
      bucket = b;
      if (role === 'vcpu') p.qemuSymbols.set(`${b}: ${near}`, (p.qemuSymbols.get(`${b}: ${near}`) ?? 0) + 1);
    } else if (dso.includes('kernel')) {
      bucket = 'kernel';
      if (role === 'vcpu') p.kernelSymbols.set(sym, (p.kernelSymbols.get(sym) ?? 0) + 1);
    } else if (/perf-\d+\.map|\[JIT\]|\[unknown\]/.test(dso)) bucket = 'guestCode';
    else bucket = 'libraries';
    p.counts[role][bucket]++;
  }
  return phases;
}

/** Ends perf (SIGINT makes it write its data) and waits, unless it has already exited. */
async function stopPerf(perf: ChildProcess): Promise<void> {
  if (perf.exitCode !== null || perf.signalCode !== null) return;
  const exited = new Promise((r) => perf.once('exit', r));
  perf.kill('SIGINT');
  await exited;
}

/** Sandbox.create, again after a pause while admission refuses it (the shared machine's load). */
async function create(url: string): Promise<Sandbox> {
  for (let attempt = 0; ; attempt++) {
    try { return await Sandbox.create({ url }); } catch (err) {
      if (!(err instanceof CapacityError) || attempt >= 60) throw err;
      await new Promise((r) => setTimeout(r, 5000));
    }
  }
}

const mono = (): number => Number(process.hrtime.bigint()) / 1e9;
const top = (m: Map<string, number>, n: number): Record<string, number> => Object.fromEntries([...m].sort((a, b) => b[1] - a[1]).slice(0, n));

const e = await userDaemon();
const perRound: { phases: Phase[]; wall: [number, number] }[] = [];
try {
  await e.d.manager.settled();
  const w = await create(e.d.url); // waits for the warm build: not measured
  await w.commands.run('true');
  await w.kill();
  for (let i = 0; i < rounds; i++) {
    const data = `/tmp/perf-cpu-tcg-profile-${process.pid}-${i}.data`;
    // 1 sample per ms of CPU on every core, timestamps on the clock process.hrtime reads.
    const perf = spawn('perf', ['record', '-a', '-q', '-e', 'cpu-clock', '-c', '1000000', '-k', 'CLOCK_MONOTONIC', '-o', data], { stdio: ['ignore', 'ignore', 'inherit'] });
    try {
      for (let k = 0; k < 50 && !existsSync(data); k++) await new Promise((r) => setTimeout(r, 100));
      await new Promise((r) => setTimeout(r, 500));
      // Admission first (not measured): a create refused for the load and retried would distort t0.
      while (loadavg()[0]! >= 0.95 * e.cfg.admissionMaxLoadPerCpu * cpus().length) await new Promise((r) => setTimeout(r, 5000));
      const t0 = mono();
      const s = await create(e.d.url);
      await s.commands.run('true');
      const t1 = mono();
      await s.commands.run('true');
      const t2 = mono();
      const pid = e.d.manager.get(s.id).vmm!.pid;
      const roles = qemuRoles(pid, threadsCpu(pid));
      await stopPerf(perf);
      await s.kill();
      const phases = await classify(data, pid, roles.vcpuTid ?? -1, [t0, t1, t2]);
      perRound.push({ phases, wall: [(t1 - t0) * 1000, (t2 - t1) * 1000] });
      log(`  round ${i + 1}: create → first ${Math.round((t1 - t0) * 1000)} ms, vCPU ${JSON.stringify(phases[0]!.counts.vcpu)}; second ${Math.round((t2 - t1) * 1000)} ms, vCPU ${JSON.stringify(phases[1]!.counts.vcpu)}`);
    } finally {
      await stopPerf(perf);
      rmSync(data, { force: true });
    }
  }
} finally { await stopEnv(e); }

/** p50 over rounds of each role × bucket, in ms (one sample = 1 ms of CPU). */
function summary(phase: 0 | 1): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const role of ['vcpu', 'main', 'other'] as Role[]) {
    out[`${role}Ms`] = Object.fromEntries(BUCKETS.map((b) => [b, stats(perRound.map((r) => r.phases[phase]!.counts[role][b])).p50]));
    out[`${role}TotalMs`] = stats(perRound.map((r) => BUCKETS.reduce((t, b) => t + r.phases[phase]!.counts[role][b], 0)));
  }
  const qemuSyms = new Map<string, number>();
  const kernelSyms = new Map<string, number>();
  for (const r of perRound) {
    for (const [k, v] of r.phases[phase]!.qemuSymbols) qemuSyms.set(k, (qemuSyms.get(k) ?? 0) + v);
    for (const [k, v] of r.phases[phase]!.kernelSymbols) kernelSyms.set(k, (kernelSyms.get(k) ?? 0) + v);
  }
  out['wallMs'] = stats(perRound.map((r) => r.wall[phase]));
  out['vcpuTopQemuFunctionsAllRounds'] = top(qemuSyms, 15);
  out['vcpuTopKernelFunctionsAllRounds'] = top(kernelSyms, 10);
  return out;
}

const path = writeResults('tcg-profile', {
  rounds,
  method: 'perf record -a -e cpu-clock -c 1000000 (1 sample = 1 ms of CPU), restricted to the sandbox QEMU process; buckets by DSO and by the nearest exported QEMU function (bench/tcg-profile.ts)',
  loadAverage: execFileSync('cat', ['/proc/loadavg'], { encoding: 'utf8' }).trim(),
  createToFirstCommand: summary(0),
  secondCommand: summary(1),
});
log(`wrote ${path}`);
