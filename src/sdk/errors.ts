/**
 * The SDK's typed errors. The daemon's `error_code` (and HTTP status) map back
 * to the same vocabulary as src/core/errors.ts; Connect codes from the agent map
 * as E2B's SDK maps them (docs/agent.md, "Error codes").
 */
export class SandboxError extends Error {
  constructor(message: string, readonly status?: number, readonly code?: string) {
    super(message);
    this.name = new.target.name;
  }
}
export class NotFoundError extends SandboxError {}
export class InvalidArgumentError extends SandboxError {}
export class ConflictError extends SandboxError {}
export class AuthenticationError extends SandboxError {}
export class CapacityError extends SandboxError {}
export class TimeoutError extends SandboxError {}
/** The sandbox ended (destroyed, timed out, crashed) while a call was in flight. */
export class SandboxGoneError extends SandboxError {}
/**
 * The sandbox is paused (or pausing, resuming): its agent cannot be reached until it is resumed
 * (`sandbox.resume()`, or `Sandbox.connect(id)`, which resumes it). It is not gone: nothing is lost.
 */
export class SandboxPausedError extends SandboxError {}

/** A command finished with a non-zero exit code. */
export class CommandExitError extends SandboxError {
  constructor(readonly exitCode: number, readonly stdout: string, readonly stderr: string, readonly errorText: string | undefined) {
    super(`command exited with code ${exitCode}${errorText ? `: ${errorText}` : ''}`);
  }
}

const BY_CODE: Record<string, new (m: string, s?: number, c?: string) => SandboxError> = {
  not_found: NotFoundError,
  invalid_argument: InvalidArgumentError,
  conflict: ConflictError,
  unauthenticated: AuthenticationError,
  capacity: CapacityError,
  timeout: TimeoutError,
};

const BY_STATUS: Record<number, new (m: string, s?: number, c?: string) => SandboxError> = {
  400: InvalidArgumentError, 401: AuthenticationError, 404: NotFoundError, 409: ConflictError,
  429: CapacityError, 503: CapacityError, 504: TimeoutError,
};

export function errorFromResponse(status: number, body: { message?: string; error_code?: string } | undefined, fallback: string): SandboxError {
  const message = body?.message ?? fallback;
  const Cls = (body?.error_code && BY_CODE[body.error_code]) || BY_STATUS[status] || SandboxError;
  return new Cls(message, status, body?.error_code);
}
