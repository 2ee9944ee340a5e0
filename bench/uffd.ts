/**
 * userfaultfd page-server benchmark (docs/uffd.md).
 *
 *   node --import tsx bench/uffd.ts [--mib 256] [--repeat 3] [--out bench/results/uffd.json]
 *
 * A memory file of --mib MiB is served to a stand-in VMM (the addon's
 * testing.FakeVmm: anonymous memory registered with userfaultfd, exactly as
 * Firecracker does) whose native threads touch every page once. Reported per
 * scenario: faults/s, MB/s and the per-page latency seen by the faulting
 * thread (fault → kernel → page-server thread → UFFDIO_COPY → wake), against
 * a baseline of pread(2)-ing the same pages of the same file (page cache
 * warm in both cases). The median run (by elapsed time) of --repeat is kept.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, release, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UffdPageServer } from '../src/memory/uffd/page-server.js';
import { loadUffdAddon } from '../src/memory/uffd/native.js';

const args = process.argv.slice(2);
const arg = (name: string, def: string) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1]! : def; };
const MIB = Number(arg('mib', '256'));
const REPEAT = Number(arg('repeat', '3'));
const OUT = resolve(arg('out', join(dirname(fileURLToPath(import.meta.url)), 'results', 'uffd.json')));
const PAGE = 4096;
const BYTES = MIB * 1024 * 1024;
const PAGES = BYTES / PAGE;
const addon = loadUffdAddon();

interface Run { elapsedNs: number; latencyNs: Float64Array; extra?: Record<string, number> }

function pct(sorted: Float64Array, q: number): number { return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!; }

function summarize(name: string, runs: Run[], note: string) {
  const sorted = [...runs].sort((a, b) => a.elapsedNs - b.elapsedNs);
  const med = sorted[Math.floor(sorted.length / 2)]!;
  const lat = Float64Array.from(med.latencyNs).sort();
  const secs = med.elapsedNs / 1e9;
  return {
    name, note,
    pages: med.latencyNs.length,
    elapsedMs: +(med.elapsedNs / 1e6).toFixed(1),
    pagesPerSec: Math.round(med.latencyNs.length / secs),
    MBps: +((med.latencyNs.length * PAGE) / 1e6 / secs).toFixed(1),
    latencyUs: {
      p50: +(pct(lat, 0.5) / 1e3).toFixed(2), p90: +(pct(lat, 0.9) / 1e3).toFixed(2), p99: +(pct(lat, 0.99) / 1e3).toFixed(2),
      max: +(lat[lat.length - 1]! / 1e3).toFixed(1), mean: +(lat.reduce((a, b) => a + b, 0) / lat.length / 1e3).toFixed(2),
    },
    runsMs: runs.map((r) => +(r.elapsedNs / 1e6).toFixed(1)),
    ...(med.extra ? { server: med.extra } : {}),
  };
}

async function makeFile(path: string, holes: boolean): Promise<void> {
  const fh = await open(path, 'w', 0o600);
  try {
    await fh.truncate(BYTES);
    if (holes) return;
    const chunk = Buffer.alloc(4 << 20);
    for (let off = 0; off < BYTES; off += chunk.length) {
      for (let p = 0; p < chunk.length; p += PAGE) chunk.writeUInt32LE((off + p) / PAGE + 1, p);
      await fh.write(chunk, 0, chunk.length, off);
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function uffdRun(dir: string, mem: string, touch: { threads: number; order: 'seq' | 'random' }, prefetchAll = false): Promise<Run> {
  const sock = join(dir, `b-${Math.random().toString(36).slice(2)}.sock`);
  const prefetch = prefetchAll ? Uint32Array.from({ length: PAGES }, (_, i) => i) : undefined;
  const s = await UffdPageServer.listen({ socketPath: sock, memoryPath: mem, prefetch, record: false });
  const prefetched = new Promise<{ pages: number; ms: number }>((r) => s.once('prefetched', r));
  const t0 = process.hrtime.bigint();
  const vm = new addon.testing.FakeVmm({ socketPath: sock, regionSizes: [BYTES], keepUffd: false });
  try {
    await s.ready;
    let extra: Record<string, number> | undefined;
    if (prefetchAll) {
      const pf = await prefetched;
      extra = { prefetchMs: +pf.ms.toFixed(1), handshakeToPrefetchedMs: +(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1) };
    }
    const r = await vm.touch({ threads: touch.threads, order: touch.order, seed: 42 });
    const st = s.stats();
    extra = { ...extra, faults: st.faults, copiedPages: st.copiedPages, zeroPages: st.zeroPages, prefetchedPages: st.prefetchedPages, serviceP50Us: st.latency.p50Us, serviceP99Us: st.latency.p99Us, serviceMeanUs: st.latency.meanUs };
    if (st.error) throw new Error(st.error);
    return { elapsedNs: r.elapsedNs, latencyNs: r.latencyNs, extra };
  } finally {
    vm.close();
    await s.stop();
  }
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'hearth-uffd-bench-'));
  try {
    const mem = join(dir, 'memory');
    const sparse = join(dir, 'sparse');
    await makeFile(mem, false);
    await makeFile(sparse, true);
    await readFile(mem); // warm the page cache: both sides read from it
    const results = [];
    const rep = async (f: () => Promise<Run>) => { const out: Run[] = []; for (let i = 0; i < REPEAT; i++) out.push(await f()); return out; };

    results.push(summarize('pread-seq', await rep(() => addon.testing.preadPages(mem, { order: 'seq' })), 'baseline: pread(2) of each 4 KiB page in file order, one thread'));
    results.push(summarize('pread-random', await rep(() => addon.testing.preadPages(mem, { order: 'random', seed: 42 })), 'baseline: pread(2) of each page in shuffled order, one thread'));
    results.push(summarize('uffd-seq-1t', await rep(() => uffdRun(dir, mem, { threads: 1, order: 'seq' })), 'page server, UFFDIO_COPY per fault, pages touched in order by 1 thread'));
    results.push(summarize('uffd-random-1t', await rep(() => uffdRun(dir, mem, { threads: 1, order: 'random' })), 'page server, pages touched in shuffled order by 1 thread'));
    results.push(summarize('uffd-random-2t', await rep(() => uffdRun(dir, mem, { threads: 2, order: 'random' })), 'page server, 2 faulting threads (2 vCPUs) in shuffled order'));
    results.push(summarize('uffd-zero-1t', await rep(() => uffdRun(dir, sparse, { threads: 1, order: 'random' })), 'sparse memory file (all holes): UFFDIO_ZEROPAGE, no file read'));
    results.push(summarize('uffd-prefetch-all', await rep(() => uffdRun(dir, mem, { threads: 1, order: 'random' }, true)), 'whole file in the prefetch list (64-page UFFDIO_COPY runs) before the guest touches it; latency = touches after the prefetch'));

    const base = results.find((r) => r.name === 'pread-random')!;
    const uf = results.find((r) => r.name === 'uffd-random-1t')!;
    const pf = results.find((r) => r.name === 'uffd-prefetch-all')!.server as { prefetchMs: number };
    const summary = {
      faultVsPreadLatencyP50: +(uf.latencyUs.p50 / base.latencyUs.p50).toFixed(1),
      faultThroughputVsPread: +(uf.MBps / base.MBps).toFixed(2),
      prefetchMBps: +(BYTES / 1e6 / (pf.prefetchMs / 1e3)).toFixed(0),
    };
    const cpuModel = (readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m)?.[1] ?? 'unknown').trim();
    const report = {
      benchmark: 'uffd page server',
      date: new Date().toISOString(),
      host: { cpus: cpus().length, cpuModel, kernel: release(), node: process.version },
      config: { memoryMiB: MIB, pageSize: PAGE, repeat: REPEAT, pageCache: 'warm' },
      results,
      summary,
      checksum: createHash('sha256').update(JSON.stringify(results.map((r) => r.pages))).digest('hex').slice(0, 8),
    };
    await writeFile(OUT, JSON.stringify(report, null, 2) + '\n');
    for (const r of results) {
      console.log(`${r.name.padEnd(18)} ${String(r.elapsedMs).padStart(8)} ms  ${String(r.pagesPerSec).padStart(9)} pages/s  ${String(r.MBps).padStart(7)} MB/s  p50 ${r.latencyUs.p50} µs  p99 ${r.latencyUs.p99} µs`);
    }
    console.log(`written to ${OUT}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
