/** A minimal Server-Sent Events reader for tests: collects events until `until` says enough (or the stream ends). */
export interface SseEvent { event: string; id: string | null; data: string }

export async function readSse(url: string, opts: { headers?: Record<string, string>; until: (events: SseEvent[]) => boolean; timeoutMs?: number; onOpen?: () => void | Promise<void> }): Promise<SseEvent[]> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new Error(`SSE ${url}: timed out`)), opts.timeoutMs ?? 30_000);
  const events: SseEvent[] = [];
  try {
    const res = await fetch(url, { headers: { accept: 'text/event-stream', ...(opts.headers ?? {}) }, signal: ac.signal });
    if (!res.ok || !res.body) throw new Error(`SSE ${url}: HTTP ${res.status} ${await res.text()}`);
    await opts.onOpen?.();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i: number;
      while ((i = buf.indexOf('\n\n')) !== -1) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const e: SseEvent = { event: 'message', id: null, data: '' };
        let hasData = false;
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const c = line.indexOf(':');
          const field = c === -1 ? line : line.slice(0, c);
          const v = c === -1 ? '' : line.slice(c + 1).replace(/^ /, '');
          if (field === 'event') e.event = v;
          else if (field === 'id') e.id = v;
          else if (field === 'data') { e.data += (hasData ? '\n' : '') + v; hasData = true; }
        }
        if (hasData) events.push(e);
      }
      if (opts.until(events)) { ac.abort(); break; }
    }
    return events;
  } catch (err) {
    if (ac.signal.aborted && opts.until(events)) return events;
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
