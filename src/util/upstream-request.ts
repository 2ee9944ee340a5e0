/**
 * Forwards a request upstream so that a stale pooled keep-alive connection
 * never loses it.
 *
 * The race: an idle pooled socket is handed to a request at the moment the
 * other side closes it (its idle timeout, a slot reset); the request fails
 * with ECONNRESET/EPIPE/"socket hang up" and `reusedSocket` set. Such a
 * request never reached the upstream application, so sending it again is
 * safe, but only if its body is still at hand. Hence three cases:
 *  - no body: pooled socket, retried once on a fresh connection;
 *  - a small body with a known length (≤ maxBuffered): read first, then as above;
 *  - any other body (large or chunked, streamed with backpressure): a fresh
 *    connection of its own from the start, so there is no stale socket to hit.
 */
import { Agent, request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import type { LeasedRequestArgs } from './lease-agent.js';

/** Bodies up to this size are buffered so their request can be retried. */
export const DEFAULT_MAX_BUFFERED = 64 * 1024;

/** One connection per request, closed after it (Connection: close semantics without the header). */
const freshAgent = new Agent({ keepAlive: false });

export interface UpstreamHandlers {
  onResponse(res: IncomingMessage): void;
  /** The request failed before any response (after the retry, if one was allowed). */
  onError(err: NodeJS.ErrnoException, info: { reusedSocket: boolean }): void;
  /** The connection broke after the response started (the answer is cut). */
  onLateError?(err: NodeJS.ErrnoException): void;
}

export interface Upstream {
  /** Stops the upstream request (the client went away). */
  abort(): void;
}

function bodyKind(req: IncomingMessage, maxBuffered: number): 'none' | 'small' | 'stream' {
  const te = req.headers['transfer-encoding'];
  const len = req.headers['content-length'];
  if (te === undefined && (len === undefined || len === '0')) return 'none';
  if (te === undefined && len !== undefined && /^\d+$/.test(len) && Number(len) <= maxBuffered) return 'small';
  return 'stream';
}

function readAll(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) { req.destroy(new Error('request body longer than its content-length')); return; }
      chunks.push(c);
    });
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
    req.once('aborted', () => reject(new Error('client aborted the request')));
    req.resume();
  });
}

export function forwardUpstream(req: IncomingMessage, args: LeasedRequestArgs, handlers: UpstreamHandlers, maxBuffered = DEFAULT_MAX_BUFFERED): Upstream {
  const kind = bodyKind(req, maxBuffered);
  let current: ClientRequest | null = null;
  let aborted = false;

  const send = (body: Buffer | null, pooled: boolean, mayRetry: boolean): void => {
    if (aborted) return;
    const up = httpRequest(pooled ? args : { ...args, agent: freshAgent });
    current = up;
    let responded = false;
    up.on('response', (res) => { responded = true; handlers.onResponse(res); });
    up.on('error', (err: NodeJS.ErrnoException) => {
      if (aborted) return;
      if (responded) { handlers.onLateError?.(err); return; }
      if (mayRetry && up.reusedSocket) { send(body, false, false); return; }
      handlers.onError(err, { reusedSocket: up.reusedSocket });
    });
    if (kind === 'stream') req.pipe(up);
    else up.end(body ?? undefined);
  };

  if (kind === 'none') send(null, true, true);
  else if (kind === 'stream') send(null, false, false);
  else {
    readAll(req, maxBuffered).then((body) => send(body, true, true), (err: NodeJS.ErrnoException) => {
      if (!aborted) handlers.onError(err, { reusedSocket: false });
    });
  }
  return {
    abort() {
      aborted = true;
      current?.destroy();
    },
  };
}
