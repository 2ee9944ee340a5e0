import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { HearthError, type ErrorCode } from '../core/errors.js';

/** The one table from error codes to HTTP statuses (the SDK maps them back). */
export const STATUS_OF: Record<ErrorCode, number> = {
  invalid_argument: 400,
  unauthenticated: 401,
  not_found: 404,
  conflict: 409,
  capacity: 503,
  timeout: 504,
  aborted: 499,
  host_failure: 500,
  internal: 500,
};

/** E2B's error body: `code` equals the HTTP status; `error_code` is the machine code. */
export interface ErrorBody { code: number; message: string; error_code: string }

export function errorBody(status: number, message: string, errorCode: string): ErrorBody {
  return { code: status, message, error_code: errorCode };
}

export function handleError(err: FastifyError | Error, req: FastifyRequest, reply: FastifyReply): void {
  if (err instanceof HearthError) {
    const status = STATUS_OF[err.code];
    if (status >= 500) req.log.error({ err: err.message }, 'request failed');
    void reply.status(status).send(errorBody(status, err.message, err.code));
    return;
  }
  const fe = err as FastifyError;
  if (fe.validation) {
    // Fastify's message already names the field ("body/memoryMB must be <= 16384").
    void reply.status(400).send(errorBody(400, fe.message, 'invalid_argument'));
    return;
  }
  const status = fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500 ? fe.statusCode : 500;
  if (status === 500) req.log.error({ err }, 'unhandled error');
  void reply.status(status).send(errorBody(status, status === 500 ? `internal error: ${err.message}` : err.message, status === 500 ? 'internal' : 'invalid_argument'));
}
