/**
 * In-flight upstream connections per sandbox, so a proxy can cut them the
 * moment the sandbox's VM goes away (paused, destroyed). Otherwise a stream to a
 * VM whose slot was reset only fails when TCP keepalive gives up (~11 s), and a
 * client following a command's output would wait that long to learn it ended.
 */
export interface Destroyable { destroy(err?: Error): void }

export class StreamRegistry {
  private readonly byKey = new Map<string, Set<Destroyable>>();

  /** Track `d` under `key` until `done` fires (or cut() destroys it). */
  add(key: string, d: Destroyable, onDone: (fn: () => void) => void): void {
    let set = this.byKey.get(key);
    if (!set) this.byKey.set(key, set = new Set());
    set.add(d);
    onDone(() => {
      set.delete(d);
      if (set.size === 0 && this.byKey.get(key) === set) this.byKey.delete(key);
    });
  }

  /** Destroy everything tracked under `key`; returns how many. */
  cut(key: string): number {
    const set = this.byKey.get(key);
    if (!set) return 0;
    this.byKey.delete(key);
    for (const d of set) d.destroy();
    return set.size;
  }

  size(key: string): number { return this.byKey.get(key)?.size ?? 0; }
}
