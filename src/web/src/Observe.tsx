/** The detail page's resource charts and live log panel (docs/observability.md, docs/dashboard.md). */
import { useEffect, useRef, useState } from 'react';
import { getMetrics, streamSse, type LogEntry, type MetricSample } from './observe.js';
import { fmtBytes } from './util.js';

const WINDOW_SEC = 15 * 60;

interface Series { label: string; color: string; points: [number, number | null][] }

/** A small SVG line chart: time on x, 0…max on y. */
function Chart({ title, series, max, fmt, testId }: { title: string; series: Series[]; max: number; fmt: (v: number) => string; testId: string }) {
  const W = 320; const H = 90; const P = 4;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const x0 = Math.min(...xs); const x1 = Math.max(...xs);
  const sx = (t: number) => P + (x1 > x0 ? ((t - x0) / (x1 - x0)) * (W - 2 * P) : W / 2);
  const sy = (v: number) => H - P - (Math.min(v, max) / (max || 1)) * (H - 2 * P);
  const latest = series.map((s) => { const v = [...s.points].reverse().find((p) => p[1] !== null)?.[1]; return v === undefined || v === null ? '—' : fmt(v); });
  return <figure className="chart" data-testid={testId}>
    <figcaption><strong>{title}</strong> {series.map((s, i) => <span key={s.label} className="legend"><i style={{ background: s.color }} />{s.label} <span className="mono" data-testid={`${testId}-${i}`}>{latest[i]}</span></span>)}</figcaption>
    <svg viewBox={`0 0 ${W} ${H}`} preserveAspectRatio="none" role="img" aria-label={title}>
      <line x1={P} x2={W - P} y1={sy(max / 2)} y2={sy(max / 2)} className="grid" />
      {series.map((s) => {
        const pts = s.points.filter((p): p is [number, number] => p[1] !== null);
        if (pts.length === 0) return null;
        const d = pts.map((p, i) => `${i ? 'L' : 'M'}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(' ');
        return <path key={s.label} d={pts.length === 1 ? `${d} l1,0` : d} stroke={s.color} fill="none" strokeWidth={1.8} vectorEffect="non-scaling-stroke" />;
      })}
    </svg>
    <div className="chart-foot muted small"><span>{fmt(max)}</span><span>{xs.length ? `last ${Math.max(1, Math.round((x1 - x0) / 60))} min` : ''}</span></div>
  </figure>;
}

/** CPU, memory and disk of the last 15 minutes, from the guest and from the host; refreshed every 5 s while it runs. */
export function MetricsCharts({ id, running }: { id: string; running: boolean }) {
  const [samples, setSamples] = useState<MetricSample[]>();
  const [error, setError] = useState<string>();
  useEffect(() => {
    const ac = new AbortController();
    const load = () => getMetrics(id, Math.floor(Date.now() / 1000) - WINDOW_SEC, ac.signal).then((s) => { setSamples(s); setError(undefined); }, (e: unknown) => { if (!ac.signal.aborted) setError(String(e)); });
    void load();
    const h = running ? setInterval(() => { if (!document.hidden) void load(); }, 5000) : undefined;
    return () => { ac.abort(); clearInterval(h); };
  }, [id, running]);
  const s = samples ?? [];
  const last = s.at(-1);
  return <section className="card" data-testid="metrics-card" data-samples={s.length} data-last={last?.timestampUnix ?? 0}>
    <div className="card-head"><h3>Resources</h3><span className="muted small">guest (its agent) and host (its VM process); every 5 s while running</span></div>
    {error && !samples && <p className="muted">Metrics are not available: {error}</p>}
    {samples && s.length === 0 && <p className="muted">No samples yet{running ? ': the first comes within 5 s' : ''}.</p>}
    {s.length > 0 && last && <div className="charts">
      <Chart title="CPU" testId="chart-cpu" max={100} fmt={(v) => `${v.toFixed(0)}%`} series={[
        { label: 'guest', color: '#d9480f', points: s.map((m) => [m.timestampUnix, m.cpuUsedPct]) },
        { label: 'host', color: '#1c7ed6', points: s.map((m) => [m.timestampUnix, m.hostCpuUsedPct ?? null]) },
      ]} />
      <Chart title="Memory" testId="chart-mem" max={Math.max(last.memTotal, ...s.map((m) => m.hostMemRss ?? 0))} fmt={fmtBytes} series={[
        { label: 'guest used', color: '#d9480f', points: s.map((m) => [m.timestampUnix, m.memUsed]) },
        { label: 'host RSS', color: '#1c7ed6', points: s.map((m) => [m.timestampUnix, m.hostMemRss ?? null]) },
      ]} />
      <Chart title="Disk" testId="chart-disk" max={Math.max(last.diskTotal, ...s.map((m) => m.hostDiskUsed ?? 0))} fmt={fmtBytes} series={[
        { label: 'guest used', color: '#d9480f', points: s.map((m) => [m.timestampUnix, m.diskUsed]) },
        { label: 'host blocks', color: '#1c7ed6', points: s.map((m) => [m.timestampUnix, m.hostDiskUsed ?? null]) },
      ]} />
    </div>}
  </section>;
}

const SOURCES: LogEntry['source'][] = ['console', 'agent', 'hearth'];
const KEEP = 2000;

/** The sandbox's logs, live: console, agent and lifecycle lines as hearthd writes them. */
export function LogPanel({ id }: { id: string }) {
  const [entries, setEntries] = useState<LogEntry[]>([]);
  const [shown, setShown] = useState<Set<string>>(new Set(SOURCES));
  const [live, setLive] = useState(false);
  const [follow, setFollow] = useState(true);
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const ac = new AbortController();
    setEntries([]);
    void streamSse(() => `/sandboxes/${id}/logs?follow=true&limit=500`, (event, data) => {
      if (event === 'end') return;
      setEntries((prev) => (prev.length >= KEEP ? [...prev.slice(-(KEEP - 1)), data as LogEntry] : [...prev, data as LogEntry]));
      // Each (re)connection sends the newest lines first: start over then.
    }, ac.signal, (open) => { setLive(open); if (open) setEntries([]); });
    return () => ac.abort();
  }, [id]);
  useEffect(() => { if (follow && box.current) box.current.scrollTop = box.current.scrollHeight; }, [entries, follow, shown]);
  const visible = entries.filter((e) => shown.has(e.source));
  return <section className="card" data-testid="logs-card">
    <div className="card-head">
      <h3>Logs <span className="count">{visible.length}</span></h3>
      <div className="filters">
        {SOURCES.map((s) => <label key={s}><input type="checkbox" checked={shown.has(s)} data-testid={`logs-source-${s}`}
          onChange={(e) => setShown((prev) => { const n = new Set(prev); if (e.target.checked) n.add(s); else n.delete(s); return n; })} />{s}</label>)}
        <label><input type="checkbox" checked={follow} onChange={(e) => setFollow(e.target.checked)} />follow</label>
        <span className={`muted small ${live ? 'live' : ''}`} data-testid="logs-live">{live ? '● live' : 'not connected'}</span>
      </div>
    </div>
    <div className="logs mono" ref={box} data-testid="logs">
      {visible.length === 0 ? <p className="muted">No lines yet.</p> : visible.map((e, i) => <div key={i} className={`log-line src-${e.source} lvl-${e.level}`}>
        <span className="log-time">{e.timestamp.slice(11, 19)}</span><span className="log-src">{e.source}</span><span className="log-text">{e.line}</span>
      </div>)}
    </div>
  </section>;
}
