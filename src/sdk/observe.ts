import { HearthApi, type ConnectionOptions } from './api.js';
import { errorFromResponse, SandboxError } from './errors.js';

/** One line of a sandbox's logs (`GET /sandboxes/{id}/logs`). */
export interface LogEntry {
  timestamp: string;
  /** console: the guest's serial console; agent: the guest agent; hearth: lifecycle (state changes, step timings). */
  source: 'console' | 'agent' | 'hearth';
  level: 'debug' | 'info' | 'warn' | 'error';
  line: string;
}

export interface LogsOptions extends ConnectionOptions {
  /** Entries at or after this time; without it, the newest `limit`. */
  start?: Date;
  /** At most this many (default 1000, at most 10000). */
  limit?: number;
  sources?: LogEntry['source'][];
}

/** One event of `GET /events`: a sandbox state change. */
export interface SandboxEvent {
  id: number;
  type: 'sandbox.created' | 'sandbox.paused' | 'sandbox.resumed' | 'sandbox.destroyed' | 'sandbox.failed' | 'sandbox.state';
  timestamp: string;
  sandboxID: string;
  templateID: string;
  from: string;
  to: string;
  reason: string;
  keyId: string | null;
  metadata: Record<string, string>;
}

function logsQuery(opts: LogsOptions, follow: boolean): string {
  const q = new URLSearchParams();
  if (opts.start) q.set('start', String(opts.start.getTime()));
  if (opts.limit !== undefined) q.set('limit', String(opts.limit));
  if (opts.sources?.length) q.set('source', opts.sources.join(','));
  if (follow) q.set('follow', 'true');
  return q.size ? `?${q.toString()}` : '';
}

/** A sandbox's logs now (ended sandboxes too, while hearthd keeps their record). */
export async function getLogs(id: string, opts: LogsOptions = {}): Promise<LogEntry[]> {
  const api = new HearthApi(opts);
  const r = await api.request<{ entries: LogEntry[] }>('GET', `/sandboxes/${encodeURIComponent(id)}/logs${logsQuery(opts, false)}`, undefined, opts.signal);
  return r.entries;
}

/**
 * Server-Sent Events from hearthd: each message's event name and parsed data, until the stream ends or `signal` aborts.
 * Shared by the SDK's streams (logs, events, template builds); not part of the package's exports.
 */
export async function* sse(api: HearthApi, path: string, signal?: AbortSignal): AsyncGenerator<{ event: string; data: unknown }> {
  let res: Response;
  try {
    res = await fetch(`${api.url}${path}`, { headers: api.headers({ accept: 'text/event-stream' }), ...(signal ? { signal } : {}) });
  } catch (err) {
    if (signal?.aborted) return;
    throw new SandboxError(`cannot reach hearthd at ${api.url} (${(err as Error).message}); is it running?`);
  }
  if (!res.ok || !res.body) {
    const text = await res.text();
    let parsed: unknown;
    try { parsed = JSON.parse(text); } catch { parsed = undefined; }
    throw errorFromResponse(res.status, parsed as { message?: string; error_code?: string }, `GET ${path}: HTTP ${res.status} ${text.slice(0, 200)}`);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  try {
    for (;;) {
      let chunk: Awaited<ReturnType<typeof reader.read>>;
      try { chunk = await reader.read(); } catch (err) { if (signal?.aborted) return; throw err; }
      if (chunk.done) return;
      buf += chunk.value;
      let i: number;
      while ((i = buf.indexOf('\n\n')) !== -1) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = 'message';
        let data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) event = line.slice(6).trim();
          else if (line.startsWith('data:')) data += line.slice(5).replace(/^ /, '');
        }
        if (data) yield { event, data: JSON.parse(data) as unknown };
      }
    }
  } finally {
    reader.cancel().catch(() => undefined);
  }
}

/**
 * A sandbox's logs as they are written: the entries `getLogs` would return,
 * then each new one, until the sandbox ends (or `signal` aborts).
 */
export async function* followLogs(id: string, opts: LogsOptions = {}): AsyncGenerator<LogEntry> {
  const api = new HearthApi(opts);
  for await (const m of sse(api, `/sandboxes/${encodeURIComponent(id)}/logs${logsQuery(opts, true)}`, opts.signal)) {
    if (m.event === 'end') return;
    yield m.data as LogEntry;
  }
}

/** hearthd's event stream (`GET /events`): every sandbox state change from now on (or after event `since`). */
export async function* events(opts: ConnectionOptions & { since?: number; sandboxId?: string } = {}): AsyncGenerator<SandboxEvent> {
  const api = new HearthApi(opts);
  const q = new URLSearchParams();
  if (opts.since !== undefined) q.set('since', String(opts.since));
  if (opts.sandboxId) q.set('sandboxID', opts.sandboxId);
  for await (const m of sse(api, `/events${q.size ? `?${q.toString()}` : ''}`, opts.signal)) yield m.data as SandboxEvent;
}
