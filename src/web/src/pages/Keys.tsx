import { useState } from 'react';
import { api, type ApiKey } from '../api.js';
import { ActionButton, ConfirmButton, ErrorBox, fmtAge, useNow, usePoll } from '../util.js';

/** API keys: list, create (the key is shown once), delete. */
export function KeysPage() {
  const keys = usePoll(() => api.listKeys(), 10000);
  const now = useNow();
  const [name, setName] = useState('');
  const [created, setCreated] = useState<ApiKey & { key: string }>();
  const [error, setError] = useState<string>();
  const [copied, setCopied] = useState(false);
  return <section className="card">
    <div className="card-head"><h2>API keys {keys.data ? <span className="count">{keys.data.length}</span> : null}</h2>
      <span className="muted small">Clients send a key as <code>X-API-Key</code> (<code>HEARTH_API_KEY</code> for the CLI and SDK). hearthd requires one when it listens beyond loopback.</span></div>
    <form className="runner" onSubmit={(e) => e.preventDefault()}>
      <input value={name} onChange={(e) => setName(e.target.value)} placeholder="name, e.g. ci or laptop" aria-label="key name" data-testid="key-name" />
      <ActionButton label="Create key" busyLabel="Creating…" testId="key-create" run={() => api.createKey(name.trim() || 'default')} onError={setError}
        onDone={(k) => { setCreated(k as ApiKey & { key: string }); setName(''); setCopied(false); keys.refresh(); }} />
    </form>
    {created && <div className="notice" data-testid="key-created">
      <div><strong>Key “{created.name}” created.</strong> Copy it now: it is not shown again (hearthd keeps only a hash).
        <div className="keyshow"><code data-testid="key-value">{created.key}</code>
          <button type="button" onClick={() => { void navigator.clipboard?.writeText(created.key).then(() => setCopied(true), () => undefined); }}>{copied ? 'Copied' : 'Copy'}</button></div></div>
      <button type="button" className="link" onClick={() => setCreated(undefined)}>done</button>
    </div>}
    <ErrorBox error={error ?? (keys.error && `Could not load keys: ${keys.error}`)} onClose={() => setError(undefined)} />
    {keys.data?.length === 0 && <p className="muted empty">No keys yet. On a loopback listener none is needed unless hearthd is started with requireApiKey.</p>}
    {keys.data && keys.data.length > 0 && <table className="table" data-testid="key-table">
      <thead><tr><th>ID</th><th>Name</th><th>Created</th><th>Last used</th><th className="actions-col">Actions</th></tr></thead>
      <tbody>{keys.data.map((k) => <tr key={k.id} data-testid={`key-${k.id}`}>
        <td data-label="ID" className="mono">{k.id}</td>
        <td data-label="Name">{k.name}</td>
        <td data-label="Created" title={k.createdAt}>{fmtAge(k.createdAt, now)} ago</td>
        <td data-label="Last used" title={k.lastUsedAt ?? ''}>{k.lastUsedAt ? `${fmtAge(k.lastUsedAt, now)} ago` : 'never'}</td>
        <td className="actions"><ConfirmButton label="Delete" confirmLabel="Delete: clients using it lose access" busyLabel="Deleting…" testId={`key-delete-${k.id}`}
          run={() => api.deleteKey(k.id)} onError={setError} onDone={keys.refresh} /></td>
      </tr>)}</tbody>
    </table>}
  </section>;
}
