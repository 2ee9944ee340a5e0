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
 * Beside wall times it records CPU time (bench/cpu.ts): of the sandbox's QEMU process (per
 * thread: the vCPU thread vs the main loop and I/O threads) and of hearthd (this process,
 * which also runs the SDK client) over create → first command and over the second command,
 * and the whole machine's busy time over the same intervals (the other load's share). From
 * them, `bound`: what no scheduling can beat on this machine (docs/performance.md).
 *
 * Runs as root (netns slots, loop mounts). Each daemon gets its own netns tag and range
 * so it coexists with other test runs; nothing else differs from `hearth up`.
 */
import { parseArgs } from 'node:util';
import { readFile, readdir, stat } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { cpus, loadavg } from 'node:os';
import { CapacityError, Sandbox } from '../src/sdk/index.js';
import { log, stats, timed, writeResults, type Stats } from './lib.js';
import { stopEnv, userDaemon, type Env } from './user-daemon.js';
import { machineBusyMs, procCpu, qemuRoles, selfCpuMs, threadsCpu, totalMs } from './cpu.js';

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

/** CPU time (ms) over create → first command and over the second command. */
interface CpuSample {
  qemu: number; qemuUser: number; qemuSys: number; vcpu: number; threads: Roles;
  hearthd: number; hearthdChildren: number; machineBusy: number;
  qemu2: number; vcpu2: number; threads2: Roles; hearthd2: number; machineBusy2: number;
}
interface Sample { createMs: number; firstMs: number; secondMs: number; totalMs: number; steps: Record<string, number>; cpu: CpuSample | undefined }

/** QEMU CPU by thread role (bench/cpu.ts qemuRoles), ms. */
interface Roles { main: number; vcpu: number; other: number; exited: number }
const rolesDelta = (a: Roles, b: Roles): Roles => ({ main: b.main - a.main, vcpu: b.vcpu - a.vcpu, other: b.other - a.other, exited: b.exited - a.exited });
const vmmPid = (e: Env, id: string): number | undefined => e.d.manager.get(id).vmm?.pid;
const r1 = (x: number): number => Math.round(x * 10) / 10;

/** After a kill: until the VM's process is reaped, so its CPU does not land in the next sample's children time. */
async function reaped(pid: number | undefined): Promise<void> {
  for (let i = 0; pid !== undefined && i < 100 && procCpu(pid) !== undefined; i++) await new Promise((r) => setTimeout(r, 50));
}

/**
 * Until admission lets a create in: on this shared machine the load average often crosses the
 * default CPU floor (8 per CPU) while others' suites run. The configuration stays the default;
 * a refused attempt is not a sample.
 */
async function admitted(e: Env): Promise<void> {
  for (let i = 0; ; i++) {
    const [l1] = loadavg();
    if (l1! < 0.95 * e.cfg.admissionMaxLoadPerCpu * cpus().length || i >= 120) return;
    if (i % 6 === 0) log(`  waiting for admission: load ${l1!.toFixed(1)}`);
    await new Promise((r) => setTimeout(r, 5000));
  }
}

async function oneCreate(e: Env, opts: { keep?: boolean } = {}): Promise<[Sample, Sandbox]> {
  await admitted(e);
  const m0 = machineBusyMs();
  const h0 = selfCpuMs();
  const [s, createMs] = await timed(() => Sandbox.create({ url: e.d.url }));
  const [, firstMs] = await timed(() => s.commands.run('true'));
  // The QEMU process started inside create (no pre-started VMs), so its whole CPU time is this interval's.
  const pid = vmmPid(e, s.id);
  const q1 = pid === undefined ? undefined : procCpu(pid);
  const t1 = pid === undefined ? undefined : qemuRoles(pid, threadsCpu(pid));
  const h1 = selfCpuMs();
  const m1 = machineBusyMs();
  const [, secondMs] = await timed(() => s.commands.run('true'));
  const q2 = pid === undefined ? undefined : procCpu(pid);
  const t2 = pid === undefined ? undefined : qemuRoles(pid, threadsCpu(pid), t1?.vcpuTid);
  const h2 = selfCpuMs();
  const m2 = machineBusyMs();
  const steps = Object.fromEntries(s.info.timings!.steps.map((x) => [x.step, x.ms]));
  if (!opts.keep) { await s.kill(); await reaped(pid); }
  const cpu: CpuSample | undefined = q1 && q2 && t1 && t2 ? {
    qemu: totalMs(q1), qemuUser: q1.userMs, qemuSys: q1.sysMs, vcpu: t1.vcpu, threads: t1,
    hearthd: h1.ms - h0.ms, hearthdChildren: h1.childrenMs - h0.childrenMs, machineBusy: m1 - m0,
    qemu2: totalMs(q2) - totalMs(q1), vcpu2: t2.vcpu - t1.vcpu, threads2: rolesDelta(t1, t2), hearthd2: h2.ms - h1.ms, machineBusy2: m2 - m1,
  } : undefined;
  return [{ createMs, firstMs, secondMs, totalMs: createMs + firstMs, steps, cpu }, s];
}

/** p50 per thread role over samples. */
function threadsP50(list: Roles[]): Record<keyof Roles, number> {
  const p = (k: keyof Roles): number => stats(list.map((t) => t[k])).p50;
  return { main: p('main'), vcpu: p('vcpu'), other: p('other'), exited: p('exited') };
}

function summariseCpu(samples: Sample[]): Record<string, unknown> | undefined {
  const c = samples.flatMap((s) => (s.cpu ? [{ ...s.cpu, wall: s.totalMs, wall2: s.secondMs }] : []));
  if (c.length === 0) return undefined;
  const st = (f: (x: (typeof c)[number]) => number): Stats => stats(c.map(f));
  return {
    n: c.length,
    qemuMsCreateToFirst: st((x) => x.qemu),
    qemuUserMsCreateToFirst: st((x) => x.qemuUser),
    qemuSysMsCreateToFirst: st((x) => x.qemuSys),
    vcpuThreadMsCreateToFirst: st((x) => x.vcpu),
    qemuThreadsMsCreateToFirstP50: threadsP50(c.map((x) => x.threads)),
    hearthdMsCreateToFirst: st((x) => x.hearthd),
    hearthdChildrenMsCreateToFirst: st((x) => x.hearthdChildren),
    machineBusyMsCreateToFirst: st((x) => x.machineBusy),
    vcpuOverWallCreateToFirst: st((x) => x.vcpu / x.wall),
    secondCommandQemuMs: st((x) => x.qemu2),
    secondCommandVcpuThreadMs: st((x) => x.vcpu2),
    secondCommandQemuThreadsMsP50: threadsP50(c.map((x) => x.threads2)),
    secondCommandHearthdMs: st((x) => x.hearthd2),
    secondCommandMachineBusyMs: st((x) => x.machineBusy2),
    vcpuOverWallSecond: st((x) => x.vcpu2 / x.wall2),
  };
}

function summarise(samples: Sample[]): Record<string, unknown> {
  const st = (k: keyof Omit<Sample, 'steps' | 'cpu'>): Stats => stats(samples.map((s) => s[k]));
  const stepNames = [...new Set(samples.flatMap((s) => Object.keys(s.steps)))];
  return {
    createToFirstCommandMs: st('totalMs'),
    createMs: st('createMs'),
    firstCommandMs: st('firstMs'),
    secondCommandMs: st('secondMs'),
    firstOverSecond: Math.round((stats(samples.map((s) => s.firstMs)).p50 / stats(samples.map((s) => s.secondMs)).p50) * 100) / 100,
    stepsP50: Object.fromEntries(stepNames.map((n) => [n, stats(samples.map((s) => s.steps[n] ?? 0)).p50])),
    cpu: summariseCpu(samples),
    samples: samples.map((s) => ({
      create: Math.round(s.createMs), first: Math.round(s.firstMs), second: Math.round(s.secondMs), steps: s.steps,
      ...(s.cpu ? { cpu: { qemu: r1(s.cpu.qemu), vcpu: r1(s.cpu.vcpu), hearthd: r1(s.cpu.hearthd), qemu2: r1(s.cpu.qemu2), vcpu2: r1(s.cpu.vcpu2), hearthd2: r1(s.cpu.hearthd2) } } : {}),
    })),
  };
}

async function sequential(e: Env, label: string, n: number): Promise<Record<string, unknown>> {
  const samples: Sample[] = [];
  for (let i = 0; i < n; i++) {
    let x: Sample | undefined;
    for (let attempt = 0; !x; attempt++) {
      try { [x] = await oneCreate(e); } catch (err) {
        // Refused by admission between the wait and the create (the load moved): wait again.
        if (!(err instanceof CapacityError) || attempt >= 20) throw err;
      }
    }
    samples.push(x);
    const cpu = x.cpu ? `  cpu: qemu ${Math.round(x.cpu.qemu)} (vcpu ${Math.round(x.cpu.vcpu)}) hearthd ${Math.round(x.cpu.hearthd)}; second qemu ${Math.round(x.cpu.qemu2)} hearthd ${Math.round(x.cpu.hearthd2)}` : '';
    log(`  ${label} #${i + 1}: create ${Math.round(x.createMs)} ms, first ${Math.round(x.firstMs)} ms, second ${Math.round(x.secondMs)} ms  ${JSON.stringify(x.steps)}${cpu}`);
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
  const m0 = machineBusyMs();
  const h0 = selfCpuMs();
  const [res, wallMs] = await timed(() => Promise.allSettled(Array.from({ length: n }, () => timed(async () => {
    const s = await Sandbox.create({ url: e.d.url });
    await s.commands.run('true');
    // This VM's CPU up to its first command, contention included (its process started inside create).
    const pid = vmmPid(e, s.id);
    const t = pid === undefined ? undefined : threadsCpu(pid);
    return { s, pid, qemu: t ? t.total : NaN, vcpu: pid !== undefined && t ? qemuRoles(pid, t).vcpu : NaN };
  }))));
  const h1 = selfCpuMs();
  const m1 = machineBusyMs();
  const ok = res.filter((r): r is PromiseFulfilledResult<[{ s: Sandbox; pid: number | undefined; qemu: number; vcpu: number }, number]> => r.status === 'fulfilled');
  const failed = res.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => String(r.reason).slice(0, 200));
  const vms = ok.map((r) => r.value[0]);
  // VMs that answered early idle (timer ticks under TCG) while the others start: their CPU until now.
  const qemuAtEnd = vms.reduce((t, v) => t + (v.pid === undefined ? 0 : totalMs(procCpu(v.pid))), 0);
  await Promise.all(vms.map((v) => v.s.kill().catch(() => undefined)));
  await Promise.all(vms.map((v) => reaped(v.pid)));
  const qemuToFirst = vms.reduce((t, v) => t + v.qemu, 0);
  const hearthd = h1.ms - h0.ms;
  const hearthdChildren = h1.childrenMs - h0.childrenMs;
  const ours = qemuAtEnd + hearthd + hearthdChildren;
  const cores = cpus().length;
  return {
    count: n, succeeded: ok.length, failed, wallMs: Math.round(wallMs),
    eachMs: stats(ok.map((r) => r.value[1])),
    singleCreateToFirstCommandMs: Math.round(single),
    wallOverSingle: Math.round((wallMs / single) * 10) / 10,
    cpu: {
      qemuMsPerCreateToFirst: stats(vms.map((v) => v.qemu)),
      vcpuThreadMsPerCreateToFirst: stats(vms.map((v) => v.vcpu)),
      qemuMsSumToFirst: Math.round(qemuToFirst),
      qemuMsSumIdleAfterFirst: Math.round(qemuAtEnd - qemuToFirst),
      hearthdMs: Math.round(hearthd),
      hearthdChildrenMs: Math.round(hearthdChildren),
      machineBusyMs: Math.round(m1 - m0),
      otherLoadMs: Math.round(m1 - m0 - ours),
      machineBusyShare: Math.round(((m1 - m0) / (wallMs * cores)) * 100) / 100,
      // No schedule finishes sooner than all the CPU this run's own processes used, spread over every core.
      floorMs: Math.round(ours / cores),
      floorOverSingle: r1(ours / cores / single),
    },
  };
}

/**
 * What no scheduling beats on this machine, from the sequential run's CPU p50s: N creates
 * need N × (QEMU + hearthd CPU per create) of CPU, so their wall is at least that ÷ cores;
 * a single create → first command is at least its vCPU thread's CPU (TCG runs a vCPU on
 * one thread, and the guest's work up to the first command runs on it).
 */
function bound(warm: Record<string, unknown>, n: number): Record<string, unknown> | undefined {
  const cpu = warm['cpu'] as Record<string, Stats> | undefined;
  if (!cpu) return undefined;
  const cores = cpus().length;
  const single = (warm['createToFirstCommandMs'] as Stats).p50;
  const perCreate = cpu['qemuMsCreateToFirst']!.p50 + cpu['hearthdMsCreateToFirst']!.p50 + cpu['hearthdChildrenMsCreateToFirst']!.p50;
  const concurrentFloor = (n * perCreate) / cores;
  return {
    cores,
    singleWallMs: single,
    cpuPerCreateToFirstMs: r1(perCreate),
    cpuPerCreateOverSingleWall: Math.round((perCreate / single) * 100) / 100,
    concurrentCount: n,
    concurrentFloorMs: Math.round(concurrentFloor),
    concurrentFloorOverSingle: r1(concurrentFloor / single),
    concurrentGoalOverSingle: 4,
    singleFloorMs: cpu['vcpuThreadMsCreateToFirst']!.p50,
    singleGoalMs: 600,
    secondCommandFloorMs: cpu['secondCommandVcpuThreadMs']!.p50,
  };
}

const load = (): number[] => loadavg().map((x) => Math.round(x * 100) / 100);

const results: Record<string, unknown> = {
  rounds, config: 'scripts/start.sh defaults (src/daemon/config.ts), XFS reflink data dir',
  // 1, 5 and 15 minute load averages when each part started and when the run ended (the machine is shared).
  loadAverage: { start: load() } as Record<string, number[]>,
};
const loadAt = (part: string): void => { (results['loadAverage'] as Record<string, number[]>)[part] = load(); };
if (values.only === 'all' || values.only === 'cold') {
  log('cold boot (warmTemplates: false), same configuration otherwise');
  const e = await userDaemon({ warmTemplates: false, warmOnStart: false });
  loadAt('coldBoot');
  try { results['coldBoot'] = await sequential(e, 'cold', Math.max(2, Math.floor(rounds / 3))); } finally { await stopEnv(e); }
}
if (values.only === 'all' || values.only === 'warm') {
  log('warm restore (the default)');
  const e = await userDaemon();
  try {
    await e.d.manager.settled();
    for (let attempt = 0; ; attempt++) { // waits for the warm build if it still runs: not measured
      try { await oneCreate(e); break; } catch (err) { if (!(err instanceof CapacityError) || attempt >= 20) throw err; }
    }
    loadAt('warmRestore');
    const warm = await sequential(e, 'warm', rounds);
    results['warmRestore'] = warm;
    const single = (warm['createToFirstCommandMs'] as Stats).p50;
    if (concurrent > 0) {
      log(`${concurrent} concurrent creates → first command`);
      await admitted(e);
      loadAt('concurrent');
      results['concurrent'] = await concurrentCreates(e, concurrent, single);
      log(`  ${JSON.stringify(results['concurrent'])}`);
    }
    results['bound'] = bound(warm, concurrent > 0 ? concurrent : 20);
    log(`  bound: ${JSON.stringify(results['bound'])}`);
    if (densityCount > 0) {
      log(`density: ${densityCount} idle sandboxes`);
      await admitted(e);
      loadAt('density');
      // Admission may refuse on a loaded host (503 with the reason): recorded, not fatal.
      results['density'] = await density(e, densityCount).catch((err: unknown) => ({ refused: String(err).slice(0, 300) }));
      log(`  ${JSON.stringify(results['density'])}`);
    }
  } finally { await stopEnv(e); }
}
loadAt('end');
const path = writeResults(values.only === 'all' ? 'first-command' : `first-command-${values.only}`, results);
log(`wrote ${path}`);
