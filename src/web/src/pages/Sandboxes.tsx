import { Fragment, useEffect, useRef, useState } from 'react';
import { api, type NewSandbox, type Sandbox, type SandboxDetail } from '../api.js';
import { ActionButton, ErrorBox, Link, StateBadge, errMsg, fmtAge, fmtBytes, navigate, useNow, usePoll } from '../util.js';
import { useEvents } from '../observe.js';

type Row = Sandbox & { diskUsageBytes?: number | null };

const LIVE = ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying', 'failed'];
const ENDED = ['destroyed', 'failed'];

/** Newest first; ties broken by id, so the order never changes between polls. */
const byAge = (a: Row, b: Row) => b.createdAt.localeCompare(a.createdAt) || a.sandboxID.localeCompare(b.sandboxID);

/** The list, plus each live sandbox's detail for disk usage (the list item has none). */
async function loadRows(history: boolean): Promise<Row[]> {
  const list = await api.listSandboxes(history ? [...LIVE, 'destroyed'] : undefined);
  const details = await Promise.all(list.map((s) => (ENDED.includes(s.state) ? undefined : api.getSandbox(s.sandboxID).catch(() => undefined))));
  return list.map((s, i) => ({ ...s, diskUsageBytes: details[i]?.diskUsageBytes ?? null })).sort(byAge);
}

/** `key=value` pairs, comma or space separated. */
export function parseFilter(text: string): [string, string][] {
  return text.split(/[\s,]+/).filter(Boolean).map((p) => {
    const eq = p.indexOf('=');
    return eq < 0 ? [p, ''] as [string, string] : [p.slice(0, eq), p.slice(eq + 1)] as [string, string];
  });
}
const matches = (s: Row, f: [string, string][]) => f.every(([k, v]) => (v === '' ? k in s.metadata : s.metadata[k] === v));

/**
 * Keeps rows where they were while the pointer is over the table: updated in place, new ones
 * added at the end, gone ones removed; the real order comes back when it leaves.
 */
function useStableOrder(rows: Row[] | undefined, frozen: boolean): Row[] | undefined {
  const order = useRef<string[]>([]);
  if (!rows) return rows;
  if (!frozen) { order.current = rows.map((r) => r.sandboxID); return rows; }
  const byId = new Map(rows.map((r) => [r.sandboxID, r]));
  const kept = order.current.filter((id) => byId.has(id));
  const added = rows.filter((r) => !kept.includes(r.sandboxID)).map((r) => r.sandboxID);
  order.current = [...kept, ...added];
  return order.current.map((id) => byId.get(id)!);
}

export function SandboxesPage() {
  const [history, setHistory] = useState(false);
  // Updated from hearthd's event stream (GET /events); a slow poll only as a fallback (and for disk usage).
  const [streaming, setStreaming] = useState(false);
  const rows = usePoll(() => loadRows(history), streaming ? 30_000 : 5000, [history, streaming]);
  const pending = useRef<ReturnType<typeof setTimeout>>();
  useEvents(() => { clearTimeout(pending.current); pending.current = setTimeout(() => rows.refresh(), 150); }, setStreaming);
  const now = useNow();
  const [notice, setNotice] = useState<string>();
  const [filter, setFilter] = useState('');
  const [hover, setHover] = useState(false);
  const f = parseFilter(filter);
  const filtered = rows.data?.filter((s) => matches(s, f));
  const shown = useStableOrder(filtered, hover);
  return <>
    <CreateForm onCreated={(s) => { setNotice(`Created ${s.sandboxID}`); rows.refresh(); }} />
    <section className="card">
      <div className="card-head">
        <h2>Sandboxes {shown ? <span className="count">{shown.length}</span> : null}</h2>
        <span className="muted small" data-testid="list-live">{streaming ? 'live (event stream)' : 'refreshes every 5 s'}{hover ? ' · order held while the pointer is on the list' : ''}</span>
      </div>
      <div className="filters">
        <label>Metadata filter <input className="mono" value={filter} onChange={(e) => setFilter(e.target.value)} placeholder="key=value, key2=value2" aria-label="metadata filter" data-testid="meta-filter" /></label>
        <label className="check"><input type="checkbox" checked={history} onChange={(e) => setHistory(e.target.checked)} data-testid="show-ended" /> Show ended sandboxes (kept for a while after they end)</label>
      </div>
      {notice && <div className="notice"><span data-testid="notice">{notice}</span><button type="button" className="link" onClick={() => setNotice(undefined)}>dismiss</button></div>}
      <ErrorBox error={rows.error && `Could not load sandboxes: ${rows.error}`} />
      {shown && shown.length === 0 && <p className="muted empty">{f.length || history ? 'No sandboxes match.' : 'No sandboxes. Create one above, or start one from a template or snapshot.'}</p>}
      {shown && shown.length > 0 &&
        <table className="table sandboxes" data-testid="sandbox-table" onPointerEnter={() => setHover(true)} onPointerLeave={() => setHover(false)}>
          <thead><tr><th>ID</th><th>State</th><th>Template</th><th>Metadata</th><th>Age</th><th>CPU / memory</th><th>Disk used</th><th className="actions-col">Actions</th></tr></thead>
          <tbody>{shown.map((s) => <SandboxRow key={s.sandboxID} s={s} now={now} refresh={rows.refresh} onNotice={setNotice} onFilter={(k, v) => setFilter(`${k}=${v}`)} />)}</tbody>
        </table>}
      {!rows.data && !rows.error && <p className="muted">Loading…</p>}
    </section>
  </>;
}

function MetadataChips({ m, onFilter }: { m: Record<string, string>; onFilter?: (k: string, v: string) => void }) {
  const entries = Object.entries(m).filter(([k]) => !k.startsWith('hearth.'));
  if (!entries.length) return <span className="muted">—</span>;
  return <span className="chips">{entries.map(([k, v]) => <button type="button" key={k} className="chip" title={`Show only ${k}=${v}`} onClick={() => onFilter?.(k, v)}>{k}={v}</button>)}</span>;
}

function SandboxRow({ s, now, refresh, onNotice, onFilter }: { s: Row; now: number; refresh: () => void; onNotice: (m: string) => void; onFilter: (k: string, v: string) => void }) {
  const [error, setError] = useState<string>();
  const [confirming, setConfirming] = useState(false);
  const id = s.sandboxID;
  const running = s.state === 'running';
  const ended = ENDED.includes(s.state);
  const done = () => { setError(undefined); refresh(); };
  return <Fragment>
    <tr data-testid={`row-${id}`} data-state={s.state} className={ended ? 'ended' : ''}>
      <td data-label="ID"><Link to={`/sandboxes/${id}`} className="mono">{id}</Link></td>
      <td data-label="State"><StateBadge state={s.state} />{ended && s.endReason && <span className="muted small"> {s.endReason}</span>}</td>
      <td data-label="Template">{s.templateID}{s.metadata['hearth.internal'] && <span className="badge internal" title="Started by hearthd itself">{s.metadata['hearth.internal']}</span>}</td>
      <td data-label="Metadata"><MetadataChips m={s.metadata} onFilter={onFilter} /></td>
      <td data-label="Age" title={s.createdAt}>{ended && s.endedAt ? `ended ${fmtAge(s.endedAt, now)} ago` : fmtAge(s.createdAt, now)}</td>
      <td data-label="CPU / memory">{s.cpuCount} vCPU · {s.memoryMB} MB</td>
      <td data-label="Disk used">{ended ? '—' : fmtBytes(s.diskUsageBytes)}</td>
      <td className="actions">{s.state !== 'destroyed' && <>
        {!ended && s.state !== 'paused' && s.state !== 'resuming' &&
          <ActionButton label="Pause" busyLabel="Pausing…" disabled={!running} run={() => api.pause(id)} onError={setError} onDone={done} testId={`pause-${id}`} />}
        {(s.state === 'paused' || s.state === 'resuming') &&
          <ActionButton label="Resume" busyLabel="Resuming…" disabled={s.state !== 'paused'} run={() => api.resume(id)} onError={setError} onDone={done} testId={`resume-${id}`} />}
        {!ended && <ActionButton label="Snapshot" busyLabel="Snapshotting…" disabled={!running} run={() => api.snapshot(id)}
          onError={setError} onDone={(r) => { done(); onNotice(`Snapshot ${(r as { snapshotID: string }).snapshotID} saved from ${id} (to name one, take it from the sandbox's page)`); }} testId={`snapshot-${id}`} />}
        {!ended && <ActionButton label="Fork" busyLabel="Forking…" disabled={!running} run={() => api.fork(id, 1)} onError={setError}
          onDone={(r) => {
            done();
            const res = r as { sandbox?: SandboxDetail; error?: { message: string } }[];
            const bad = res.find((x) => x.error);
            if (bad) setError(`Fork: ${bad.error!.message}`);
            else onNotice(`Forked ${id} → ${res.map((x) => x.sandbox?.sandboxID).join(', ')}`);
          }} testId={`fork-${id}`} />}
        {!confirming
          ? <button type="button" className="danger" disabled={s.state === 'destroying'} data-testid={`destroy-${id}`} onClick={() => setConfirming(true)}>Destroy</button>
          : <ActionButton label="Confirm destroy" busyLabel="Destroying…" danger run={() => api.destroy(id)} onError={(m) => { setConfirming(false); setError(m); }}
              onDone={() => { setConfirming(false); done(); onNotice(`Destroyed ${id}`); }} testId={`confirm-destroy-${id}`} />}
        {confirming && <button type="button" className="link" onClick={() => setConfirming(false)}>cancel</button>}
      </>}</td>
    </tr>
    {error && <tr className="row-error"><td colSpan={8}><ErrorBox error={error} onClose={() => setError(undefined)} /></td></tr>}
  </Fragment>;
}

export function CreateForm({ onCreated, initialTemplate }: { onCreated: (s: SandboxDetail) => void; initialTemplate?: string }) {
  const templates = usePoll(() => api.listTemplates(), 15000);
  const [templateID, setTemplate] = useState(initialTemplate ?? '');
  const [cpu, setCpu] = useState('');
  const [mem, setMem] = useState('');
  const [timeout, setTimeoutS] = useState('');
  const [envText, setEnvText] = useState('');
  const [metaText, setMetaText] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();
  const [startedAt, setStartedAt] = useState(0);
  const now = useNow(250);
  useEffect(() => { if (!templateID && templates.data?.[0]) setTemplate(templates.data.find((t) => t.templateID === 'base')?.templateID ?? templates.data[0].templateID); }, [templates.data, templateID]);
  const tpl = templates.data?.find((t) => t.templateID === templateID);

  async function submit(e: React.FormEvent) {
    e.preventDefault();
    setError(undefined);
    const body: NewSandbox = { templateID: templateID || 'base' };
    try {
      if (cpu) body.cpuCount = toInt(cpu, 'CPU count');
      if (mem) body.memoryMB = toInt(mem, 'Memory');
      if (timeout) body.timeout = toInt(timeout, 'Timeout');
      const env = parseEnv(envText);
      if (Object.keys(env).length) body.envVars = env;
      const meta = parseEnv(metaText, 'Metadata');
      if (Object.keys(meta).length) body.metadata = meta;
    } catch (err) { setError(errMsg(err)); return; }
    setBusy(true); setStartedAt(Date.now());
    try { onCreated(await api.createSandbox(body)); } catch (err) { setError(`Create failed: ${errMsg(err)}`); } finally { setBusy(false); }
  }

  return <section className="card">
    <h2>New sandbox</h2>
    <form className="create" onSubmit={submit} data-testid="create-form">
      <label>Template
        <select value={templateID} onChange={(e) => setTemplate(e.target.value)} name="template">
          {!templates.data && <option value="">loading…</option>}
          {templates.data?.map((t) => <option key={t.templateID} value={t.templateID}>{t.templateID}</option>)}
        </select>
      </label>
      <label>vCPUs<input name="cpu" type="number" min={1} max={64} placeholder={tpl ? String(tpl.cpuCount) : 'default'} value={cpu} onChange={(e) => setCpu(e.target.value)} /></label>
      <label>Memory (MB)<input name="memory" type="number" min={64} step={64} placeholder={tpl ? String(tpl.memoryMB) : 'default'} value={mem} onChange={(e) => setMem(e.target.value)} /></label>
      <label>Timeout (s)<input name="timeout" type="number" min={1} placeholder="default" value={timeout} onChange={(e) => setTimeoutS(e.target.value)} /></label>
      <label className="wide">Environment variables <span className="muted small">(KEY=value per line)</span>
        <textarea name="env" rows={2} value={envText} onChange={(e) => setEnvText(e.target.value)} placeholder={'FOO=bar\nDEBUG=1'} /></label>
      <label className="wide">Metadata <span className="muted small">(KEY=value per line; shown in the list and filterable)</span>
        <textarea name="metadata" rows={2} value={metaText} onChange={(e) => setMetaText(e.target.value)} placeholder={'owner=alice\nproject=demo'} /></label>
      <div className="form-actions">
        <button type="submit" className="primary" disabled={busy} data-testid="create-submit">
          {busy ? <><span className="spinner" />Creating… {((now - startedAt) / 1000).toFixed(0)} s</> : 'Create sandbox'}</button>
      </div>
    </form>
    <ErrorBox error={error} onClose={() => setError(undefined)} />
  </section>;
}

function toInt(v: string, what: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${what} must be a positive integer`);
  return n;
}
export function parseEnv(text: string, what = 'Environment'): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new Error(`${what} line ${i + 1}: expected KEY=value`);
    out[line.slice(0, eq).trim()] = line.slice(eq + 1);
  }
  return out;
}

export function goToSandbox(id: string) { navigate(`/sandboxes/${id}`); }
