import { AbortedError } from '../core/errors.js';

/** The AbortedError for an aborted signal, with the signal's reason as its cause. */
export function abortError(signal: AbortSignal): AbortedError {
  const e = new AbortedError();
  (e as { cause?: unknown }).cause = signal.reason;
  return e;
}

/**
 * Wait for `p`, but stop waiting (AbortedError) as soon as `signal` aborts.
 * `p` itself keeps running: use this only where the work is shared or
 * cleaned up elsewhere (a shared loop attach that other callers still wait for).
 */
export function abortable<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) { p.catch(() => undefined); return Promise.reject(abortError(signal)); }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => { reject(abortError(signal)); };
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => { signal.removeEventListener('abort', onAbort); resolve(v); },
      (err: unknown) => { signal.removeEventListener('abort', onAbort); reject(err); },
    );
  });
}

/** setTimeout as a promise that rejects with AbortedError the moment `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(abortError(signal));
  return new Promise<void>((resolve, reject) => {
    const onAbort = (): void => { clearTimeout(timer); reject(abortError(signal!)); };
    const timer = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
