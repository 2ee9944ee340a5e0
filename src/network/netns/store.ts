/**
 * Persistence of netns slots (docs/networking.md, "Slot life cycle": slot numbers and addresses persist,
 * so a restarted daemon finds its slots, adopts the used ones and reaps what no
 * row owns). The daemon backs this with SQLite; tests use MemorySlotStore.
 * Calls are synchronous (better-sqlite3 is) and must be durable on return.
 */
import type { SlotPolicy } from './policy.js';

export interface SlotRow {
  /** Slot number: the n-th /30 of the host range. */
  n: number;
  netns: string;
  hostIf: string;
  hostAddr: string;
  nsAddr: string;
  /** 'free' slots are in the pool; 'used' ones belong to a sandbox (adopted after a restart). */
  state: 'free' | 'used';
  /** Connection generation last written into the slot's ruleset (only grows). */
  generation: number;
  /** The policy in force (null = the pool's default). */
  policy: SlotPolicy | null;
}

export interface SlotStore {
  load(): SlotRow[];
  /** Insert or replace the row of slot `row.n`. */
  save(row: SlotRow): void;
  delete(n: number): void;
}

export class MemorySlotStore implements SlotStore {
  readonly rows = new Map<number, SlotRow>();

  constructor(initial: readonly SlotRow[] = []) {
    for (const r of initial) this.rows.set(r.n, structuredClone(r));
  }

  load(): SlotRow[] {
    return [...this.rows.values()].sort((a, b) => a.n - b.n).map((r) => structuredClone(r));
  }

  save(row: SlotRow): void {
    this.rows.set(row.n, structuredClone(row));
  }

  delete(n: number): void {
    this.rows.delete(n);
  }
}
