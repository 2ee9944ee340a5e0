import { ConflictError } from './errors.js';

/**
 * One operation at a time per key (sandbox id). `tryRun` refuses with 409 when
 * the key is busy; `run` waits its turn. Promise chains, no timers.
 */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<void>>();
  private readonly holders = new Map<string, string>();

  isBusy(key: string): boolean { return this.tails.has(key); }
  holder(key: string): string | undefined { return this.holders.get(key); }

  async run<T>(key: string, what: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key);
    let release!: () => void;
    const mine = new Promise<void>((r) => { release = r; });
    const tail = prev ? prev.then(() => mine) : mine;
    this.tails.set(key, tail);
    if (prev) await prev;
    this.holders.set(key, what);
    try {
      return await fn();
    } finally {
      this.holders.delete(key);
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }

  tryRun<T>(key: string, what: string, fn: () => Promise<T>): Promise<T> {
    const busy = this.holders.get(key);
    if (this.tails.has(key)) {
      return Promise.reject(new ConflictError(`sandbox ${key} is busy (${busy ?? 'another operation'} in progress); retry when it finishes`));
    }
    return this.run(key, what, fn);
  }
}
