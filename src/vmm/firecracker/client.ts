/**
 * Firecracker API client over its Unix socket (docs/firecracker.md, "API transport"): HTTP/1.1 with
 * node:http and `socketPath`; every request carries Content-Length (the
 * server reads bodies by Content-Length only; a chunked body reads as empty)
 * and is written in one `end(body)`; `Content-Type`/`Accept` are exactly
 * `application/json`. One request at a time (the API thread serialises them
 * anyway), one kept-alive connection. Every request has a timeout; error
 * answers carry `{"fault_message": …}`, reported as FirecrackerApiError (a
 * HostFailureError) with Firecracker's own text.
 *
 * The methods are typed from the generated spec types: `request('put',
 * '/drives/{drive_id}', { drive_id }, body)` only compiles with a Drive body.
 */
import http from 'node:http';
import { HostFailureError, TimeoutError, errorMessage } from '../../core/errors.js';
import { abortError } from '../../util/abort.js';
import type { ApiPath, MethodOf, PathParams, RequestBody, ResponseBody } from './api-types.js';

export class FirecrackerApiError extends HostFailureError {
  constructor(
    readonly method: string,
    readonly path: string,
    readonly status: number,
    /** Firecracker's `fault_message` (or the raw body when there is none). */
    readonly faultMessage: string,
  ) {
    super(`Firecracker ${method} ${path} failed (${status}): ${faultMessage}`);
  }
}

/** The API socket does not accept connections: the process exited or never started. */
export class FirecrackerUnreachableError extends HostFailureError {}

export interface RequestOptions {
  signal?: AbortSignal;
  /** Default: the client's `timeoutMs`. */
  timeoutMs?: number;
}

export interface ClientOptions {
  /** Default per-request timeout (ms). Snapshot calls pass their own. */
  timeoutMs?: number;
  /** Called when a response carries `Deprecation: true` (a deprecated field was used). */
  onDeprecation?: (method: string, path: string) => void;
}

export class FirecrackerClient {
  private readonly agent: http.Agent;
  private readonly timeoutMs: number;

  constructor(readonly socketPath: string, private readonly opts: ClientOptions = {}) {
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    this.timeoutMs = opts.timeoutMs ?? 5000;
  }

  close(): void { this.agent.destroy(); }

  /** Typed request: path parameters are substituted (and checked), the body is the spec's schema. */
  async request<P extends ApiPath, M extends MethodOf<P>>(
    method: M,
    path: P,
    params: PathParams<P, M>,
    body: RequestBody<P, M>,
    opts: RequestOptions = {},
  ): Promise<ResponseBody<P, M>> {
    let url = String(path);
    if (params) {
      for (const [k, v] of Object.entries(params as Record<string, string>)) {
        if (!/^[A-Za-z0-9_]+$/.test(v)) throw new HostFailureError(`Firecracker ${k} ${JSON.stringify(v)} must be non-empty [A-Za-z0-9_] (no hyphens)`);
        url = url.replace(`{${k}}`, encodeURIComponent(v));
      }
    }
    if (/[{}]/.test(url)) throw new HostFailureError(`missing path parameter in ${url}`);
    const res = await this.raw(String(method).toUpperCase(), url, body === undefined ? undefined : JSON.stringify(body), opts);
    return (res === undefined ? undefined : res) as ResponseBody<P, M>;
  }

  /** GET / — instance id, state ("Not started" | "Running" | "Paused"), version. */
  describe(opts?: RequestOptions) { return this.request('get', '/', undefined, undefined, opts); }

  /** Low level: one HTTP exchange. Resolves with the parsed JSON of a 200, undefined for 204. */
  raw(method: string, path: string, body: string | undefined, opts: RequestOptions = {}): Promise<unknown> {
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    const signal = opts.signal;
    if (signal?.aborted) return Promise.reject(abortError(signal));
    const payload = body ?? '';
    return new Promise((resolve, reject) => {
      let settled = false;
      const done = (err: Error | undefined, v?: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err); else resolve(v);
      };
      const req = http.request({
        socketPath: this.socketPath,
        agent: this.agent,
        method,
        path,
        headers: {
          Host: 'localhost',
          Accept: 'application/json',
          ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}),
          'Content-Length': Buffer.byteLength(payload),
        },
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (err) => done(new HostFailureError(`Firecracker ${method} ${path}: ${err.message}`, { cause: err })));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const status = res.statusCode ?? 0;
          if (res.headers['deprecation'] === 'true') this.opts.onDeprecation?.(method, path);
          if (status === 204) { done(undefined, undefined); return; }
          let json: unknown;
          try { json = text ? JSON.parse(text) : undefined; } catch { json = undefined; }
          if (status >= 200 && status < 300) {
            if (text && json === undefined) { done(new HostFailureError(`Firecracker ${method} ${path} answered ${status} with invalid JSON: ${text.slice(0, 200)}`)); return; }
            done(undefined, json);
            return;
          }
          const fault = json && typeof json === 'object' && typeof (json as { fault_message?: unknown }).fault_message === 'string'
            ? (json as { fault_message: string }).fault_message
            : text.trim() || `HTTP ${status}`;
          done(new FirecrackerApiError(method, path, status, fault));
        });
      });
      const timer = setTimeout(() => {
        req.destroy();
        done(new TimeoutError(`Firecracker ${method} ${path} did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      const onAbort = () => { req.destroy(); done(abortError(signal!)); };
      signal?.addEventListener('abort', onAbort, { once: true });
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') {
          done(new FirecrackerUnreachableError(`Firecracker API socket ${this.socketPath} does not accept connections (${err.code}): the process is not running`, { cause: err }));
        } else {
          done(new HostFailureError(`Firecracker ${method} ${path}: ${errorMessage(err)}`, { cause: err }));
        }
      });
      req.end(payload);
    });
  }
}

