/** Result of waiting on an EventQueue. */
export type QueueWait<T> = { kind: 'item'; item: T } | { kind: 'timeout' } | { kind: 'closed' };

/**
 * Single-consumer FIFO feeding one response stream. Producers push synchronously; the consumer
 * awaits `next()`, which also resolves on timeout (for keepalives) and rejects when `signal` aborts.
 * Size accounting is the producer's business (see ProcessOutput's backpressure).
 */
export class EventQueue<T> {
  private items: T[] = [];
  private head = 0;
  private waiter: ((w: QueueWait<T>) => void) | undefined;
  private closed = false;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    if (this.closed) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w({ kind: 'item', item });
      return;
    }
    this.items.push(item);
  }

  /** Removes queued items matching `drop` (e.g. output after a kill). */
  filter(keep: (item: T) => boolean): void {
    this.items = this.items.slice(this.head).filter(keep);
    this.head = 0;
  }

  /** No more items will come; a waiting or later `next()` gets `closed` after the queue drains. */
  close(): void {
    this.closed = true;
    if (this.waiter && this.length === 0) {
      const w = this.waiter;
      this.waiter = undefined;
      w({ kind: 'closed' });
    }
  }

  private shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head]!;
    this.items[this.head] = undefined as T;
    this.head++;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  next(signal: AbortSignal, timeoutMs?: number): Promise<QueueWait<T>> {
    if (signal.aborted) return Promise.reject(signal.reason);
    if (this.length > 0) return Promise.resolve({ kind: 'item', item: this.shift()! });
    if (this.closed) return Promise.resolve({ kind: 'closed' });
    return new Promise<QueueWait<T>>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = () => {
        cleanup();
        this.waiter = undefined;
        reject(signal.reason);
      };
      const cleanup = () => {
        if (timer) clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
      };
      this.waiter = (w) => {
        cleanup();
        resolve(w);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined && timeoutMs > 0) {
        timer = setTimeout(() => {
          this.waiter = undefined;
          cleanup();
          resolve({ kind: 'timeout' });
        }, timeoutMs);
      }
    });
  }
}

/** Keepalive interval from the `Keepalive-Ping-Interval` header (seconds), envd default 90 s. */
export function keepaliveMs(header: string | null, defaultSeconds: number): number {
  const n = header === null ? NaN : Number(header);
  const seconds = Number.isFinite(n) && n > 0 ? n : defaultSeconds;
  return Math.min(seconds * 1000, 2_147_000_000);
}
