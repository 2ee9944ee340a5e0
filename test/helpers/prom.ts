/** Prometheus text parsing for tests (parse-prometheus-text-format, a prom2json-compatible parser). */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

export interface PromFamily {
  name: string;
  help: string;
  type: 'COUNTER' | 'GAUGE' | 'HISTOGRAM' | 'SUMMARY' | 'UNTYPED';
  metrics: Array<{ value?: string; labels?: Record<string, string>; buckets?: Record<string, string>; count?: string; sum?: string }>;
}

export const parseProm = require('parse-prometheus-text-format') as (text: string) => PromFamily[];

/** The family named `name`, or throws. */
export function family(fams: PromFamily[], name: string): PromFamily {
  const f = fams.find((x) => x.name === name);
  if (!f) throw new Error(`no metric family ${name} (have: ${fams.map((x) => x.name).join(', ')})`);
  return f;
}

/** Sum of the values (counters, gauges) or counts (histograms) of a family's series whose labels include `labels`. */
export function value(fams: PromFamily[], name: string, labels: Record<string, string> = {}): number {
  const f = fams.find((x) => x.name === name);
  if (!f) return 0;
  return f.metrics
    .filter((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v))
    .reduce((sum, m) => sum + Number(m.value ?? m.count ?? 0), 0);
}

/**
 * Sum of the samples of one series name in the raw text (e.g. `x_count` of a
 * histogram, whose labels the parser above drops) whose labels include `labels`.
 */
export function rawValue(text: string, series: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)/.exec(line);
    if (!m || m[1] !== series) continue;
    const got: Record<string, string> = {};
    for (const l of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) got[l[1]!] = l[2]!;
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) sum += Number(m[4]);
  }
  return sum;
}
