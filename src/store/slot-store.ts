/**
 * The netns slot pool's rows in hearthd's SQLite database (SlotStore seam of
 * src/network/netns/store.ts). Each call is one statement, durable on return
 * (WAL), so a crash never leaves a row for a slot that was not fully set up.
 */
import type { Store } from './store.js';
import type { SlotPolicy, SlotRow, SlotStore } from '../network/netns/index.js';

type Row = Record<string, unknown>;

export class SqliteSlotStore implements SlotStore {
  constructor(private readonly store: Store) {}

  load(): SlotRow[] {
    return (this.store.db.prepare('SELECT * FROM network_slots ORDER BY n').all() as Row[]).map((r) => ({
      n: r['n'] as number,
      netns: r['netns'] as string,
      hostIf: r['host_if'] as string,
      hostAddr: r['host_addr'] as string,
      nsAddr: r['ns_addr'] as string,
      state: r['state'] as 'free' | 'used',
      generation: r['generation'] as number,
      policy: r['policy'] ? JSON.parse(r['policy'] as string) as SlotPolicy : null,
    }));
  }

  save(row: SlotRow): void {
    this.store.db.prepare(`
      INSERT INTO network_slots (n, netns, host_if, host_addr, ns_addr, state, generation, policy)
      VALUES (@n, @netns, @hostIf, @hostAddr, @nsAddr, @state, @generation, @policy)
      ON CONFLICT(n) DO UPDATE SET netns=excluded.netns, host_if=excluded.host_if, host_addr=excluded.host_addr,
        ns_addr=excluded.ns_addr, state=excluded.state, generation=excluded.generation, policy=excluded.policy
    `).run({ ...row, policy: row.policy ? JSON.stringify(row.policy) : null });
  }

  delete(n: number): void {
    this.store.db.prepare('DELETE FROM network_slots WHERE n = ?').run(n);
  }
}
