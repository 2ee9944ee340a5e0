/** Observability for the dashboard (docs/observability.md): metric samples, log and event streams (SSE over fetch, so the API key header goes along). */
import { useEffect, useRef } from 'react';
import { getApiKey, UNAUTHORIZED_EVENT } from './api.js';

export interface MetricSample {
  timestampUnix: number; cpuCount: number; cpuUsedPct: number; memUsed: number; memTotal: number; memCache: number; diskUsed: number; diskTotal: number;
  hostCpuUsedPct?: number | null; hostMemRss?: number | null; hostDiskUsed?: number | null;
}
export interface LogEntry { timestamp: string; source: 'console' | 'agent' | 'hearth'; level: string; line: string }
export interface SandboxEvent { id: number; type: string; sandboxID: string; from: string; to: string; reason: string; keyId: string | null; timestamp: string }

const headers = (): Record<string, string> => { const k = getApiKey(); return k ? { 'x-api-key': k } : {}; };

export async function getMetrics(id: string, startUnix: number, signal?: AbortSignal): Promise<MetricSample[]> {
  const res = await fetch(`/sandboxes/${id}/metrics?start=${startUnix}`, { headers: { accept: 'application/json', ...headers() }, ...(signal ? { signal } : {}) });
  if (res.status === 401) window.dispatchEvent(new Event(UNAUTHORIZED_EVENT));
  if (!res.ok) throw new Error(`metrics: HTTP ${res.status}`);
  return await res.json() as MetricSample[];
}

/**
 * Reads a Server-Sent Events stream until `signal` aborts, reconnecting (after
 * 2 s) when it drops; `onEvent` gets each event's name and parsed data;
 * `onState` says whether the stream is open. An `end` event ends it for good.
 */
export async function streamSse(path: () => string, onEvent: (event: string, data: unknown) => void, signal: AbortSignal, onState?: (open: boolean) => void): Promise<void> {
  while (!signal.aborted) {
    try {
      const res = await fetch(path(), { headers: { accept: 'text/event-stream', ...headers() }, signal });
      if (res.status === 401) window.dispatchEvent(new Event(UNAUTHORIZED_EVENT));
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      onState?.(true);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      let ended = false;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i: number;
        while ((i = buf.indexOf('\n\n')) !== -1) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let event = 'message'; let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) event = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).replace(/^ /, '');
          }
          if (!data) continue;
          try { onEvent(event, JSON.parse(data)); } catch { /* a bad message is skipped */ }
          if (event === 'end') ended = true;
        }
      }
      onState?.(false);
      if (ended) return;
    } catch {
      onState?.(false);
      if (signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

/** Calls `onEvent` for each sandbox event hearthd publishes while the component is mounted. */
export function useEvents(onEvent: (e: SandboxEvent) => void, onState?: (open: boolean) => void): void {
  const cb = useRef(onEvent);
  cb.current = onEvent;
  const st = useRef(onState);
  st.current = onState;
  useEffect(() => {
    const ac = new AbortController();
    let last = 0;
    // After a reconnect, ask for what was missed (hearthd keeps the last 1000 events).
    void streamSse(() => `/events${last ? `?since=${last}` : ''}`, (_ev, data) => {
      const e = data as SandboxEvent;
      if (typeof e.id === 'number') last = Math.max(last, e.id);
      cb.current(e);
    }, ac.signal, (open) => st.current?.(open));
    return () => ac.abort();
  }, []);
}
