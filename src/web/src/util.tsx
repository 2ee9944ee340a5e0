import { useCallback, useEffect, useRef, useState, type ReactNode } from 'react';

// ---------- routing: /ui/<page>[/<id>] with history.pushState ----------

export function currentPath(): string {
  const p = window.location.pathname.replace(/^\/ui\/?/, '/');
  return p === '' ? '/' : p;
}
const listeners = new Set<() => void>();
window.addEventListener('popstate', () => listeners.forEach((l) => l()));
export function navigate(to: string): void {
  window.history.pushState(null, '', `/ui${to}`);
  listeners.forEach((l) => l());
  window.scrollTo(0, 0);
}
export function usePath(): string {
  const [p, setP] = useState(currentPath());
  useEffect(() => {
    const l = () => setP(currentPath());
    listeners.add(l);
    return () => { listeners.delete(l); };
  }, []);
  return p;
}
export function Link({ to, children, className }: { to: string; children: ReactNode; className?: string }) {
  return <a href={`/ui${to}`} className={className} onClick={(e) => {
    if (e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault(); navigate(to);
  }}>{children}</a>;
}

// ---------- polling ----------

export interface Polled<T> { data: T | undefined; error: string | undefined; refresh: () => void; loading: boolean }

/** Calls `load` now and every `ms` (skipped while the tab is hidden); `refresh()` reloads at once. */
export function usePoll<T>(load: () => Promise<T>, ms: number, deps: unknown[] = []): Polled<T> {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<string>();
  const [loading, setLoading] = useState(true);
  const loadRef = useRef(load);
  loadRef.current = load;
  const tick = useRef(0);
  const run = useCallback(async () => {
    const my = ++tick.current;
    try {
      const d = await loadRef.current();
      if (my === tick.current) { setData(d); setError(undefined); }
    } catch (e) {
      if (my === tick.current) setError(errMsg(e));
    } finally {
      if (my === tick.current) setLoading(false);
    }
  }, []);
  useEffect(() => {
    setLoading(true);
    void run();
    const h = setInterval(() => { if (!document.hidden) void run(); }, ms);
    // tick is a counter, not a DOM ref: bumping it on cleanup discards answers to stale requests.
    // eslint-disable-next-line react-hooks/exhaustive-deps
    return () => { clearInterval(h); tick.current++; };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [ms, run, ...deps]);
  return { data, error, refresh: () => void run(), loading };
}

export function errMsg(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

// ---------- formatting ----------

export function fmtBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0; let v = n;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${v < 10 && i > 0 ? v.toFixed(1) : Math.round(v)} ${u[i]}`;
}
export function fmtAge(iso: string, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}
export function fmtMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}
export function useNow(ms = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => { const h = setInterval(() => setNow(Date.now()), ms); return () => clearInterval(h); }, [ms]);
  return now;
}

export function StateBadge({ state }: { state: string }) {
  return <span className={`badge state-${state}`} data-state={state}>{state}</span>;
}

/** A button that runs an async action, shows progress while it runs and reports errors through onError. */
export function ActionButton({ label, busyLabel, run, disabled, danger, onError, onDone, testId }: {
  label: string; busyLabel?: string; run: () => Promise<unknown>; disabled?: boolean; danger?: boolean;
  onError: (msg: string) => void; onDone?: (r: unknown) => void; testId?: string;
}) {
  const [busy, setBusy] = useState(false);
  return <button type="button" className={danger ? 'danger' : ''} disabled={disabled || busy} data-testid={testId} aria-busy={busy}
    onClick={async () => {
      setBusy(true);
      try { const r = await run(); onDone?.(r); } catch (e) { onError(`${label}: ${errMsg(e)}`); } finally { setBusy(false); }
    }}>{busy ? <><span className="spinner" />{busyLabel ?? `${label}…`}</> : label}</button>;
}

export function ErrorBox({ error, onClose }: { error: string | undefined; onClose?: () => void }) {
  if (!error) return null;
  return <div className="error" role="alert">{error}{onClose && <button type="button" className="link" onClick={onClose}>dismiss</button>}</div>;
}

/** A destructive action that asks once more before it runs: the first click arms it, the second runs it. */
export function ConfirmButton({ label, confirmLabel, busyLabel, run, disabled, onError, onDone, testId }: {
  label: string; confirmLabel: string; busyLabel?: string; run: () => Promise<unknown>; disabled?: boolean;
  onError: (msg: string) => void; onDone?: (r: unknown) => void; testId?: string;
}) {
  const [armed, setArmed] = useState(false);
  if (!armed) return <button type="button" className="danger" disabled={disabled} data-testid={testId} onClick={() => setArmed(true)}>{label}</button>;
  return <span className="confirm">
    <ActionButton label={confirmLabel} busyLabel={busyLabel} danger run={run} testId={testId ? `confirm-${testId}` : undefined}
      onError={(m) => { setArmed(false); onError(m); }} onDone={(r) => { setArmed(false); onDone?.(r); }} />
    <button type="button" className="link" onClick={() => setArmed(false)}>cancel</button>
  </span>;
}
