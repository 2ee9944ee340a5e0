import { appendFileSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MetricSample } from '../api/metrics.js';
import type { SandboxLogStore } from './logs.js';

/**
 * A sandbox's metric samples on disk (`<dataDir>/observe/<id>/metrics.jsonl`,
 * beside its logs), so its whole series is kept for its life and after, with
 * its record, and survives a restart of hearthd. Bounded: past `maxBytes` the
 * older half is dropped (at the 5 s interval 16 MiB is about four days of samples).
 */
export const DEFAULT_SAMPLES_MAX_BYTES = 16 << 20;

export class SampleFiles {
  private readonly sizes = new Map<string, number>();

  constructor(private readonly logs: SandboxLogStore, private readonly maxBytes = DEFAULT_SAMPLES_MAX_BYTES) {}

  private file(id: string): string | null {
    const d = this.logs.dirOf(id);
    return d ? join(d, 'metrics.jsonl') : null;
  }

  append(id: string, s: MetricSample): void {
    const f = this.file(id);
    if (!f) return;
    const line = JSON.stringify(s) + '\n';
    let size = this.sizes.get(id);
    if (size === undefined) {
      mkdirSync(join(f, '..'), { recursive: true });
      try { size = statSync(f).size; } catch { size = 0; }
    }
    if (size + line.length > this.maxBytes) {
      const kept = this.read(id);
      const text = kept.slice(Math.floor(kept.length / 2)).map((x) => JSON.stringify(x) + '\n').join('');
      writeFileSync(f, text);
      size = Buffer.byteLength(text);
    }
    appendFileSync(f, line);
    this.sizes.set(id, size + line.length);
  }

  read(id: string): MetricSample[] {
    const f = this.file(id);
    if (!f) return [];
    let text: string;
    try { text = readFileSync(f, 'utf8'); } catch { return []; }
    const out: MetricSample[] = [];
    for (const line of text.split('\n')) {
      if (!line) continue;
      let x: MetricSample;
      try { x = JSON.parse(line) as MetricSample; } catch { continue; /* torn line */ }
      // Two samples in one second: the later one, as in memory.
      if (out.at(-1)?.timestampUnix === x.timestampUnix) out[out.length - 1] = x; else out.push(x);
    }
    return out;
  }

  forget(id: string): void { this.sizes.delete(id); }
}
