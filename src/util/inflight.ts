/**
 * Requests in flight per key (a sandbox), so that an operation that is about to
 * take the sandbox's VM away (pause) can let short requests finish first
 * instead of freezing them half-way: a request frozen inside a paused guest is
 * cut when the VM goes, and a browser then re-sends it to a paused sandbox.
 */
export class InflightRequests {
  private readonly byKey = new Map<string, { count: number; idle: Array<() => void> }>();

  /** Counts a request; call the returned function (any number of times) when it is over. */
  begin(key: string): () => void {
    const entry = this.byKey.get(key) ?? { count: 0, idle: [] };
    entry.count++;
    this.byKey.set(key, entry);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      entry.count--;
      if (entry.count > 0) return;
      this.byKey.delete(key);
      for (const wake of entry.idle.splice(0)) wake();
    };
  }

  count(key: string): number { return this.byKey.get(key)?.count ?? 0; }

  /** Resolves true when no request for `key` is in flight, false if `timeoutMs` passed first. */
  drain(key: string, timeoutMs: number): Promise<boolean> {
    const entry = this.byKey.get(key);
    if (!entry) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => { entry.idle.splice(entry.idle.indexOf(done), 1); resolve(false); }, timeoutMs);
      const done = (): void => { clearTimeout(timer); resolve(true); };
      entry.idle.push(done);
    });
  }
}
