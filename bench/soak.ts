/**
 * Soak (issue #8): a random mix of lifecycle operations against a real hearthd
 * (in-process, `startTestDaemon`) and real QEMU VMs for a while, each result
 * verified, then leak checks: daemon RSS growth, open fds, QEMU processes,
 * sandbox/snapshot directories, loop devices. Writes bench/results/soak.json and
 * exits 1 on any failed operation or leak.
 *
 *   npm run soak -- [--minutes 10] [--cycles N] [--seed S] [--max-live 3] [--network user|netns|auto]
 *
 * Like the integration tests: HEARTH_TEST_TMP (data dir parent; XFS gives reflink
 * disks), HEARTH_IMAGE_DIR/HEARTH_IMAGE_CACHE (the image).
 */
import { parseArgs } from 'node:util';
import { existsSync, readdirSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Sandbox } from '../src/sdk/index.js';
import { qemuPidsUnder, startTestDaemon } from '../test/helpers/daemon.js';
import { log, stats, writeResults, type Stats } from './lib.js';

const { values } = parseArgs({ options: {
  minutes: { type: 'string', default: '10' },
  cycles: { type: 'string' },
  seed: { type: 'string' },
  'max-live': { type: 'string', default: '3' },
  network: { type: 'string' },
} });
const minutes = Number(values.minutes);
const maxCycles = values.cycles !== undefined ? Number(values.cycles) : Infinity;
const maxLive = Number(values['max-live']);
let seed = values.seed !== undefined ? Number(values.seed) : Date.now() % 2 ** 31;
const seedUsed = seed;

/** mulberry32: a reproducible choice sequence for a given --seed. */
function rand(): number {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

// ───────────── host observations ─────────────

function fdCount(): number { return readdirSync('/proc/self/fd').length; }
function rssMiB(): number { return Math.round(process.memoryUsage().rss / 1048576 * 10) / 10; }

const gc: () => void = (() => {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
})();

/** Loop devices: all of them (`losetup -a` lines), and those backed by a file under `dir`. */
function loopDevices(dir: string): { total: number; underDataDir: string[] } {
  let lines: string[] = [];
  try { lines = execFileSync('losetup', ['-a'], { encoding: 'utf8' }).split('\n').filter(Boolean); } catch { /* no losetup */ }
  return { total: lines.length, underDataDir: lines.filter((l) => l.includes(dir)) };
}

function entries(dir: string): string[] { return existsSync(dir) ? readdirSync(dir) : []; }

// ───────────── the model the ops are checked against ─────────────

interface Live {
  sbx: Sandbox;
  state: 'running' | 'paused';
  /** What /home/user/marker (disk) and /dev/shm/marker (memory) hold. */
  marker: string;
}
interface Snap { name: string; marker: string }

const live = new Map<string, Live>();
const snaps: Snap[] = [];
let url = '';
let seq = 0;

type Kind = 'create' | 'exec' | 'file' | 'pause' | 'resume' | 'snapshot' | 'createFromSnapshot' | 'fork' | 'destroy';
const latency = new Map<Kind, number[]>();
const counts = new Map<Kind, { ok: number; failed: number }>();
const failures: { op: Kind; sandbox?: string; at: string; error: string }[] = [];

function pick<T>(xs: T[]): T | undefined { return xs.length ? xs[Math.floor(rand() * xs.length)] : undefined; }
function ofState(s: 'running' | 'paused'): [string, Live][] { return [...live].filter(([, l]) => l.state === s); }

const SANDBOX_TIMEOUT_MS = 3 * 3600_000;

async function setMarker(l: Live): Promise<void> {
  l.marker = `m${++seq}-${randomBytes(6).toString('hex')}`;
  await l.sbx.commands.run(`echo ${l.marker} > /home/user/marker && echo ${l.marker} > /dev/shm/marker && sync`);
}

async function checkMarker(l: Live, expect: string, what: string): Promise<void> {
  const r = await l.sbx.commands.run('cat /home/user/marker /dev/shm/marker');
  if (r.stdout !== `${expect}\n${expect}\n`) throw new Error(`${what}: marker (disk, memory) is ${JSON.stringify(r.stdout)}, expected ${expect} twice`);
}

async function adopt(sbx: Sandbox, marker: string, what: string): Promise<void> {
  const l: Live = { sbx, state: 'running', marker };
  live.set(sbx.id, l);
  if ((await sbx.getInfo()).state !== 'running') throw new Error(`${what}: not running`);
  if (marker) await checkMarker(l, marker, what);
  else await setMarker(l);
}

/** The ops: each returns undefined when its precondition does not hold (not counted). */
const OPS: Record<Kind, { weight: number; run: () => Promise<string | undefined> | undefined }> = {
  create: { weight: 3, run: () => live.size >= maxLive ? undefined : (async () => {
    const sbx = await Sandbox.create({ url, timeoutMs: SANDBOX_TIMEOUT_MS, metadata: { soak: '1' } });
    await adopt(sbx, '', 'create');
    return sbx.id;
  })() },
  exec: { weight: 5, run: () => {
    const e = pick(ofState('running'));
    if (!e) return undefined;
    return (async () => {
      const a = Math.floor(rand() * 1000);
      const r = await e[1].sbx.commands.run(`echo $((${a} * 3)); cat /proc/loadavg >/dev/null`);
      if (r.stdout !== `${a * 3}\n`) throw new Error(`exec: got ${JSON.stringify(r.stdout)}`);
      return e[0];
    })();
  } },
  file: { weight: 4, run: () => {
    const e = pick(ofState('running'));
    if (!e) return undefined;
    return (async () => {
      const body = randomBytes(64 * 1024 + Math.floor(rand() * 512 * 1024));
      const path = `/home/user/soak-${++seq}.bin`;
      await e[1].sbx.files.write(path, new Uint8Array(body));
      const back = await e[1].sbx.files.read(path, { format: 'bytes' });
      if (Buffer.compare(Buffer.from(back), body) !== 0) throw new Error(`file: ${path} read back ${back.length} bytes differ from the ${body.length} written`);
      await e[1].sbx.commands.run(`rm ${path}`);
      await setMarker(e[1]);
      return e[0];
    })();
  } },
  pause: { weight: 2, run: () => {
    const e = pick(ofState('running'));
    if (!e) return undefined;
    return (async () => {
      await e[1].sbx.pause();
      e[1].state = 'paused';
      const st = (await e[1].sbx.getInfo()).state;
      if (st !== 'paused') throw new Error(`pause: state is ${st}`);
      return e[0];
    })();
  } },
  resume: { weight: 2, run: () => {
    const e = pick(ofState('paused'));
    if (!e) return undefined;
    return (async () => {
      await e[1].sbx.resume({ timeoutMs: SANDBOX_TIMEOUT_MS });
      e[1].state = 'running';
      await checkMarker(e[1], e[1].marker, 'resume');
      return e[0];
    })();
  } },
  snapshot: { weight: 1, run: () => {
    const e = pick(ofState('running'));
    if (!e) return undefined;
    return (async () => {
      const name = `soak-${++seq}`;
      await e[1].sbx.snapshot(name);
      snaps.push({ name, marker: e[1].marker });
      while (snaps.length > 2) await Sandbox.deleteSnapshot(snaps.shift()!.name, { url });
      await checkMarker(e[1], e[1].marker, 'snapshot (source keeps running)');
      return e[0];
    })();
  } },
  createFromSnapshot: { weight: 1, run: () => {
    const s = pick(snaps);
    if (!s || live.size >= maxLive) return undefined;
    return (async () => {
      const sbx = await Sandbox.create({ url, snapshot: s.name, timeoutMs: SANDBOX_TIMEOUT_MS });
      await adopt(sbx, s.marker, `create from snapshot ${s.name}`);
      return sbx.id;
    })();
  } },
  fork: { weight: 1, run: () => {
    const e = pick(ofState('running'));
    if (!e || live.size >= maxLive) return undefined;
    return (async () => {
      const [child] = await e[1].sbx.fork(1, { timeoutMs: SANDBOX_TIMEOUT_MS });
      await adopt(child!, e[1].marker, 'fork');
      await checkMarker(e[1], e[1].marker, 'fork (parent keeps running)');
      return child!.id;
    })();
  } },
  destroy: { weight: 2, run: () => {
    const e = pick([...live]);
    if (!e || live.size < 2) return undefined;
    return (async () => {
      live.delete(e[0]);
      await e[1].sbx.kill();
      const info = await e[1].sbx.getInfo();
      if (info.state !== 'destroyed') throw new Error(`destroy: state is ${info.state}`);
      return e[0];
    })();
  } },
};

async function step(): Promise<boolean> {
  const kinds = Object.keys(OPS) as Kind[];
  const total = kinds.reduce((a, k) => a + OPS[k].weight, 0);
  for (let attempt = 0; attempt < 20; attempt++) {
    let r = rand() * total;
    const kind = kinds.find((k) => (r -= OPS[k].weight) < 0) ?? 'exec';
    const t0 = performance.now();
    const p = OPS[kind].run();
    if (!p) continue;
    const c = counts.get(kind) ?? { ok: 0, failed: 0 };
    counts.set(kind, c);
    try {
      await p;
      c.ok++;
      (latency.get(kind) ?? latency.set(kind, []).get(kind)!).push(performance.now() - t0);
    } catch (e) {
      c.failed++;
      failures.push({ op: kind, at: new Date().toISOString(), error: e instanceof Error ? e.message : String(e) });
      log(`soak: ${kind} FAILED: ${e instanceof Error ? e.message : String(e)}`);
      // Re-sync the model with the daemon: drop sandboxes that are not running/paused any more.
      for (const [id, l] of [...live]) {
        const info = await l.sbx.getInfo().catch(() => undefined);
        if (!info || (info.state !== 'running' && info.state !== 'paused')) {
          live.delete(id);
          await l.sbx.kill().catch(() => undefined);
        } else l.state = info.state;
      }
    }
    return true;
  }
  return false;
}

async function main(): Promise<void> {
  const loops0 = loopDevices('/nonexistent').total;
  const network = values.network as 'user' | 'netns' | 'auto' | undefined;
  const d = await startTestDaemon(network ? { network } : {});
  url = d.url;
  const storage = await fetch(`${url}/doctor`).then(async (r) => ((await r.json()) as { chosen?: { storage?: string } }).chosen?.storage ?? null, () => null);
  const dataDir = d.cfg.dataDir;
  log(`soak: ${minutes} min${Number.isFinite(maxCycles) ? `, at most ${maxCycles} ops` : ''}, seed ${seedUsed}, ≤${maxLive} live sandboxes, data dir ${dataDir}`);
  const t0 = Date.now();
  const end = t0 + minutes * 60_000;
  const samples: { tSec: number; rssMiB: number; fds: number; live: number }[] = [];
  let baseline: { rssMiB: number; fds: number } | undefined;
  let ops = 0;
  let lastSample = 0;
  while (Date.now() < end && ops < maxCycles) {
    if (await step()) ops++;
    // Baseline once the daemon has warmed up (template snapshot built, first VMs and snapshots done).
    if (!baseline && ops >= 15) { gc(); baseline = { rssMiB: rssMiB(), fds: fdCount() }; }
    if (Date.now() - lastSample > 15_000) {
      lastSample = Date.now();
      samples.push({ tSec: Math.round((Date.now() - t0) / 1000), rssMiB: rssMiB(), fds: fdCount(), live: live.size });
      log(`soak: ${Math.round((Date.now() - t0) / 1000)} s, ${ops} ops, ${failures.length} failed, ${live.size} live, rss ${rssMiB()} MiB, fds ${fdCount()}`);
    }
  }
  const durationSec = Math.round((Date.now() - t0) / 1000);

  // Tear down through the API, as a user would, then look for anything left.
  for (const [id, l] of [...live]) { live.delete(id); await l.sbx.kill().catch((e: unknown) => failures.push({ op: 'destroy', sandbox: id, at: new Date().toISOString(), error: String(e) })); }
  for (const s of snaps.splice(0)) await Sandbox.deleteSnapshot(s.name, { url }).catch(() => undefined);
  await d.manager.settled();
  await new Promise((r) => setTimeout(r, 1000));
  gc();
  const final = { rssMiB: rssMiB(), fds: fdCount() };
  baseline ??= final;
  // A failed sandbox keeps its row (with the reason) but must hold no host resource: its
  // directory, QEMU and loop devices are checked below like everyone else's.
  const rows = await Sandbox.list({ url }).all();
  const failedRows = rows.filter((s) => s.state === 'failed').map((s) => s.sandboxID);
  const listed = rows.filter((s) => s.state !== 'failed').map((s) => `${s.sandboxID}:${s.state}`);
  const leaks = {
    rssGrowthMiB: Math.round((final.rssMiB - baseline.rssMiB) * 10) / 10,
    fdGrowth: final.fds - baseline.fds,
    qemuProcesses: qemuPidsUnder(dataDir),
    sandboxDirs: entries(join(dataDir, 'sandboxes')),
    snapshotDirs: entries(join(dataDir, 'snapshots')),
    listedSandboxes: listed,
    loopDevices: { before: loops0, after: loopDevices(dataDir).total, underDataDir: loopDevices(dataDir).underDataDir },
  };
  const limits = { rssGrowthMiB: 150, fdGrowth: 10 };
  const leakProblems: string[] = [];
  if (leaks.rssGrowthMiB > limits.rssGrowthMiB) leakProblems.push(`daemon RSS grew ${leaks.rssGrowthMiB} MiB (limit ${limits.rssGrowthMiB})`);
  if (leaks.fdGrowth > limits.fdGrowth) leakProblems.push(`open fds grew by ${leaks.fdGrowth} (limit ${limits.fdGrowth})`);
  if (leaks.qemuProcesses.length) leakProblems.push(`QEMU processes left: ${leaks.qemuProcesses.join(', ')}`);
  if (leaks.sandboxDirs.length) leakProblems.push(`sandbox dirs left: ${leaks.sandboxDirs.join(', ')}`);
  if (leaks.snapshotDirs.length) leakProblems.push(`snapshot dirs left: ${leaks.snapshotDirs.join(', ')}`);
  if (leaks.listedSandboxes.length) leakProblems.push(`sandboxes still listed: ${leaks.listedSandboxes.join(', ')}`);
  if (leaks.loopDevices.after > leaks.loopDevices.before || leaks.loopDevices.underDataDir.length) leakProblems.push(`loop devices: ${leaks.loopDevices.before} → ${leaks.loopDevices.after}`);
  for (const id of failedRows) await Sandbox.kill(id, { url }).catch(() => undefined);
  let stopError: string | undefined;
  await d.stop().catch((e: unknown) => { stopError = String(e); leakProblems.push(`daemon stop: ${stopError}`); });

  const perOp: Record<string, { ok: number; failed: number; ms: Stats | null }> = {};
  for (const k of Object.keys(OPS) as Kind[]) {
    const c = counts.get(k) ?? { ok: 0, failed: 0 };
    const l = latency.get(k) ?? [];
    perOp[k] = { ...c, ms: l.length ? stats(l) : null };
  }
  const results = {
    config: { minutes, maxCycles: Number.isFinite(maxCycles) ? maxCycles : null, seed: seedUsed, maxLive, storage, network: d.network.choice.kind },
    durationSec,
    ops,
    failed: failures.length,
    perOp,
    failures: failures.slice(0, 50),
    daemon: { baseline, final, samples },
    failedSandboxRows: failedRows,
    leaks,
    leakLimits: limits,
    leakProblems,
    pass: failures.length === 0 && leakProblems.length === 0,
  };
  const path = writeResults('soak', results);
  log(`soak: ${ops} ops in ${durationSec} s, ${failures.length} failed; leaks: ${leakProblems.length ? leakProblems.join('; ') : 'none'}; wrote ${path}`);
  for (const [k, v] of Object.entries(perOp)) log(`  ${k.padEnd(18)} ok ${String(v.ok).padStart(4)}  failed ${v.failed}  p50 ${v.ms?.p50 ?? '-'} ms  p95 ${v.ms?.p95 ?? '-'} ms`);
  process.exit(results.pass ? 0 : 1);
}

main().catch((e: unknown) => {
  process.stderr.write(`soak: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
  process.exit(1);
});
