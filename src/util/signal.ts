/**
 * A signal that aborts when `parent` aborts or `ms` pass, whichever is first.
 *
 * Why not `AbortSignal.any([parent, AbortSignal.timeout(ms)])`: in Node 20 the
 * composite holds its timeout source only weakly, and the timeout's timer holds
 * its signal only weakly too, so a garbage collection while a fetch waits drops
 * the timeout and the fetch never aborts (reproduced: a fetch to a server that
 * never answers hangs for good with GC running; see test/unit/util-signal.test.ts).
 * That made the agent health poll hang for minutes under CI load. Here the timer
 * closure holds the controller strongly; `clear()` releases both the timer and
 * the listener on the parent, so a long-lived parent does not collect listeners.
 */
export interface DeadlineSignal {
  readonly signal: AbortSignal;
  clear(): void;
}

export function deadlineSignal(parent: AbortSignal | undefined, ms: number): DeadlineSignal {
  const controller = new AbortController();
  const onAbort = (): void => controller.abort(parent?.reason);
  const timer = setTimeout(() => controller.abort(new DOMException(`timed out after ${ms} ms`, 'TimeoutError')), ms);
  if (parent?.aborted) onAbort();
  else parent?.addEventListener('abort', onAbort, { once: true });
  return {
    signal: controller.signal,
    clear: () => {
      clearTimeout(timer);
      parent?.removeEventListener('abort', onAbort);
    },
  };
}

/** Run `fn` with a deadline signal, always clearing it afterwards. */
export async function withDeadline<T>(parent: AbortSignal | undefined, ms: number, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const d = deadlineSignal(parent, ms);
  try {
    return await fn(d.signal);
  } finally {
    d.clear();
  }
}
