import type { IncomingMessage, ServerResponse } from 'node:http';
import { cors } from '@connectrpc/connect';

/**
 * CORS like envd's (rs/cors with AllowedOrigins "*"), so E2B's SDK works from browsers. It wraps
 * everything, auth included: preflights need no token, and a 401 is readable by the page.
 */
const EXPOSED = [...cors.exposedHeaders, 'Location', 'Cache-Control', 'X-Content-Type-Options', 'X-Envd-Version'].join(', ');
const METHODS = 'HEAD, GET, POST, PUT, PATCH, DELETE';
const MAX_AGE_SECONDS = '7200';

/** Adds CORS headers; returns true when the request was a preflight and has been answered. */
export function applyCors(req: IncomingMessage, res: ServerResponse): boolean {
  const origin = req.headers.origin;
  if (origin === undefined) return false;
  const requestedMethod = req.headers['access-control-request-method'];
  if (req.method === 'OPTIONS' && requestedMethod !== undefined) {
    const headers: Record<string, string> = {
      'Access-Control-Allow-Origin': '*',
      'Access-Control-Allow-Methods': METHODS,
      'Access-Control-Max-Age': MAX_AGE_SECONDS,
      Vary: 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers',
    };
    const requestedHeaders = req.headers['access-control-request-headers'];
    if (requestedHeaders) headers['Access-Control-Allow-Headers'] = requestedHeaders;
    res.writeHead(204, headers);
    res.end();
    return true;
  }
  res.setHeader('Access-Control-Allow-Origin', '*');
  res.setHeader('Access-Control-Expose-Headers', EXPOSED);
  res.setHeader('Vary', 'Origin');
  return false;
}
