import { api } from '../api.js';
import { ErrorBox, usePoll } from '../util.js';

/** GET /doctor, rendered as nested key/value tables (with the raw JSON below). */
export function HostPage() {
  const doc = usePoll(() => api.doctor(), 10000);
  return <section className="card">
    <div className="card-head"><h2>Host</h2><button type="button" onClick={doc.refresh}>Refresh</button></div>
    <ErrorBox error={doc.error && `Could not load /doctor: ${doc.error}`} />
    {doc.data === undefined && !doc.error && <p className="muted">Running checks…</p>}
    {doc.data !== undefined && <div data-testid="doctor" className="doctor">{isObj(doc.data)
      ? Object.entries(doc.data).map(([k, v]) => <div key={k} className="doctor-section"><h3>{k}</h3><Value v={v} /></div>)
      : <Value v={doc.data} />}</div>}
    {doc.data !== undefined && <details><summary>Raw JSON</summary><pre className="output">{JSON.stringify(doc.data, null, 2)}</pre></details>}
  </section>;
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function Value({ v }: { v: unknown }): JSX.Element {
  if (v === null || v === undefined) return <span className="muted">—</span>;
  if (typeof v === 'boolean') return <span className={v ? 'ok' : 'bad'}>{v ? '✔ yes' : '✘ no'}</span>;
  if (typeof v !== 'object') return <span className="mono">{String(v)}</span>;
  if (Array.isArray(v)) {
    if (v.length === 0) return <span className="muted">(none)</span>;
    if (v.every((x) => typeof x !== 'object' || x === null)) return <span className="mono">{v.map(String).join(', ')}</span>;
    return <ol className="kv-list">{v.map((x, i) => <li key={i}><Value v={x} /></li>)}</ol>;
  }
  const entries = Object.entries(v as Record<string, unknown>);
  return <table className="kv"><tbody>{entries.map(([k, x]) => <tr key={k}><th>{k}</th><td><Value v={x} /></td></tr>)}</tbody></table>;
}
