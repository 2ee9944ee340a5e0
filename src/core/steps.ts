import { channel } from 'node:diagnostics_channel';
import { throwIfAborted } from './errors.js';
import type { Logger } from './log.js';

/**
 * Times each step of a lifecycle operation and logs them on one line at the
 * end (`create i…: slot 1 ms, disk 12 ms, boot 5210 ms, agent 830 ms`), as docs/ARCHITECTURE.md, "Every transition", asks.
 */
export class StepTimer {
  readonly steps: [string, number][] = [];
  private readonly t0 = performance.now();

  constructor(readonly op: string, private readonly onStep?: (step: string) => void) {}

  /** Runs one step; refuses to start it once `signal` is aborted (cleanup then runs with its own signal). */
  async run<T>(step: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    throwIfAborted(signal);
    this.onStep?.(step);
    const t = performance.now();
    try {
      return await fn();
    } finally {
      this.steps.push([step, Math.round(performance.now() - t)]);
    }
  }

  totalMs(): number { return Math.round(performance.now() - this.t0); }

  summary(): string {
    return this.steps.map(([s, ms]) => `${s} ${ms} ms`).join(', ');
  }

  log(log: Logger, subject: string, outcome: 'ok' | 'failed'): void {
    if (finished.hasSubscribers) finished.publish({ log, op: this.op, subject, outcome, totalMs: this.totalMs(), steps: [...this.steps] } satisfies StepsMessage);
    log.info({ op: this.op, subject, outcome, totalMs: this.totalMs(), steps: Object.fromEntries(this.steps) },
      `${this.op} ${subject} ${outcome} in ${this.totalMs()} ms: ${this.summary()}`);
  }
}

/**
 * Each logged operation (its op, subject, outcome and step timings), published
 * on node:diagnostics_channel as it is logged: hearthd's Prometheus histograms
 * and the per-sandbox lifecycle log listen here (src/observability). `log` is
 * the logger the operation logged to, which tells a subscriber whose daemon it was.
 */
export interface StepsMessage { log: Logger; op: string; subject: string; outcome: 'ok' | 'failed'; totalMs: number; steps: [string, number][] }
export const STEPS_CHANNEL = 'hearth:lifecycle-steps';
const finished = channel(STEPS_CHANNEL);
