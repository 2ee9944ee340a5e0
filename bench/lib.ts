/** Shared helpers for benchmarks: percentiles, timing, results files. */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cpus, totalmem } from 'node:os';
import { PACKAGE_ROOT } from '../src/paths.js';

export interface Stats { n: number; min: number; p50: number; p95: number; max: number; mean: number }

export function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] ?? NaN;
  const round = (x: number): number => Math.round(x * 10) / 10;
  return { n: s.length, min: round(s[0] ?? NaN), p50: round(at(0.5)), p95: round(at(0.95)), max: round(s.at(-1) ?? NaN), mean: round(s.reduce((a, b) => a + b, 0) / (s.length || 1)) };
}

export async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const v = await fn();
  return [v, performance.now() - t0];
}

/** Writes bench/results/<name>.json with the machine it ran on. */
export function writeResults(name: string, results: unknown): string {
  const dir = join(PACKAGE_ROOT, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${name}.json`);
  writeFileSync(path, `${JSON.stringify({
    benchmark: name,
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30) },
    results,
  }, null, 2)}\n`);
  return path;
}

export function log(msg: string): void { process.stderr.write(`${msg}\n`); }
