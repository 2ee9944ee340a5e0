import type { ServerResponse } from 'node:http';

/**
 * A Server-Sent Events answer on a raw response (the route hijacked the
 * reply): `data:` lines of JSON, an `id:` when given, a comment every 15 s so
 * idle proxies and clients keep the stream, closed by either side.
 */
export interface SseStream {
  send(data: unknown, opts?: { id?: number | string; event?: string }): void;
  end(): void;
  readonly closed: boolean;
  onClose(fn: () => void): void;
}

export const SSE_HEARTBEAT_MS = 15_000;

export function openSse(res: ServerResponse, extraHeaders: Record<string, string> = {}): SseStream {
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    'x-accel-buffering': 'no',
    ...extraHeaders,
  });
  res.flushHeaders();
  res.write(': hearth\n\n');
  let closed = false;
  const closers: Array<() => void> = [];
  const beat = setInterval(() => { if (!closed) res.write(': ping\n\n'); }, SSE_HEARTBEAT_MS);
  beat.unref();
  const finish = (): void => {
    if (closed) return;
    closed = true;
    clearInterval(beat);
    for (const fn of closers) { try { fn(); } catch { /* ignore */ } }
  };
  res.once('close', finish);
  return {
    send(data, opts = {}) {
      if (closed) return;
      let out = '';
      if (opts.event) out += `event: ${opts.event}\n`;
      if (opts.id !== undefined) out += `id: ${opts.id}\n`;
      // JSON has no raw newlines, so one data line per message.
      out += `data: ${JSON.stringify(data)}\n\n`;
      res.write(out);
    },
    end() { if (!closed) { res.end(); finish(); } },
    get closed() { return closed; },
    onClose(fn) { if (closed) fn(); else closers.push(fn); },
  };
}

/** Whether a GET asks for a stream: `follow=true|1` (false|0 says no), else an `Accept: text/event-stream`. */
export function wantsFollow(follow: string | undefined, accept: string | undefined): boolean {
  if (follow !== undefined) return follow === 'true' || follow === '1';
  return (accept ?? '').includes('text/event-stream');
}
