import { errorFromResponse, SandboxError } from './errors.js';

export interface ConnectionOptions {
  /** hearthd's URL; default $HEARTH_URL or http://127.0.0.1:3030. */
  url?: string;
  /** API key (sent as X-API-Key); default $HEARTH_API_KEY. */
  apiKey?: string;
  /** Abort the call. */
  signal?: AbortSignal;
}

export function resolveUrl(opts: ConnectionOptions = {}): string {
  return (opts.url ?? process.env['HEARTH_URL'] ?? 'http://127.0.0.1:3030').replace(/\/+$/, '');
}

/** The control-plane REST client: JSON in, JSON out, typed errors. */
export class HearthApi {
  readonly url: string;
  private readonly apiKey: string | undefined;

  constructor(opts: ConnectionOptions = {}) {
    this.url = resolveUrl(opts);
    this.apiKey = opts.apiKey ?? process.env['HEARTH_API_KEY'];
  }

  headers(extra: Record<string, string> = {}): Record<string, string> {
    return { ...(this.apiKey ? { 'x-api-key': this.apiKey } : {}), ...extra };
  }

  async request<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    return (await this.requestWithHeaders<T>(method, path, body, signal)).body;
  }

  /** As request(), also returning one response header (e.g. `x-next-token`). */
  async requestWithHeaders<T>(method: string, path: string, body?: unknown, signal?: AbortSignal, header?: string): Promise<{ body: T; next: string | null }> {
    let res: Response;
    try {
      res = await fetch(`${this.url}${path}`, {
        method,
        headers: this.headers(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        ...(signal ? { signal } : {}),
      });
    } catch (err) {
      if (signal?.aborted) throw err;
      throw new SandboxError(`cannot reach hearthd at ${this.url} (${(err as Error).cause ? String((err as { cause: unknown }).cause) : (err as Error).message}); is it running? Start it with \`hearth up\``);
    }
    const next = header ? res.headers.get(header) : null;
    if (res.status === 204) return { body: undefined as T, next };
    const text = await res.text();
    let parsed: unknown;
    try { parsed = text ? JSON.parse(text) : undefined; } catch { parsed = undefined; }
    if (!res.ok) throw errorFromResponse(res.status, parsed as { message?: string; error_code?: string }, `${method} ${path}: HTTP ${res.status} ${text.slice(0, 200)}`);
    return { body: parsed as T, next };
  }
}
