/**
 * Hearth's error vocabulary: one base class, one subclass per kind of failure,
 * each with a stable `code`. The API maps codes to HTTP statuses in one table
 * (src/api/errors.ts); the SDK maps them back to the same classes.
 */
export type ErrorCode =
  | 'not_found'
  | 'invalid_argument'
  | 'conflict'
  | 'capacity'
  | 'timeout'
  | 'unauthenticated'
  | 'aborted'
  | 'host_failure'
  | 'internal';

export class HearthError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

export class NotFoundError extends HearthError {
  constructor(message: string) { super('not_found', message); }
}
export class InvalidArgumentError extends HearthError {
  /** `field` names the offending input, e.g. "body.memoryMb". */
  constructor(message: string, readonly field?: string) { super('invalid_argument', message); }
}
export class ConflictError extends HearthError {
  constructor(message: string) { super('conflict', message); }
}
export class CapacityError extends HearthError {
  constructor(message: string) { super('capacity', message); }
}
export class TimeoutError extends HearthError {
  constructor(message: string, options?: { cause?: unknown }) { super('timeout', message, options); }
}
export class AbortedError extends HearthError {
  constructor(message = 'operation was cancelled') { super('aborted', message); }
}
/** A host resource (process, device, file) misbehaved; the message says which. */
export class HostFailureError extends HearthError {
  constructor(message: string, options?: { cause?: unknown }) { super('host_failure', message, options); }
}

/**
 * A bug or a broken invariant inside Hearth (an unknown slot, a pool used
 * before start, an id that cannot name a device): never the caller's fault, so
 * never a 400.
 */
export class InternalError extends HearthError {
  constructor(message: string, options?: { cause?: unknown }) { super('internal', message, options); }
}
/** hearthd's configuration (or a driver's options) cannot work on this host; `setting` names it. Found at start-up. */
export class ConfigError extends InternalError {
  constructor(message: string, readonly setting?: string) { super(message); }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** Throws AbortedError if the signal is aborted (reason kept as cause). */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    const e = new AbortedError();
    (e as { cause?: unknown }).cause = signal.reason;
    throw e;
  }
}
