import { useState } from 'react';
import { api } from '../api.js';
import { ActionButton, ErrorBox, fmtAge, navigate, useNow, usePoll } from '../util.js';

export function TemplatesPage() {
  const tpls = usePoll(() => api.listTemplates(), 5000);
  const now = useNow();
  const [error, setError] = useState<string>();
  return <section className="card">
    <div className="card-head"><h2>Templates {tpls.data ? <span className="count">{tpls.data.length}</span> : null}</h2></div>
    <ErrorBox error={error ?? (tpls.error && `Could not load templates: ${tpls.error}`)} onClose={() => setError(undefined)} />
    {tpls.data?.length === 0 && <p className="muted empty">No templates.</p>}
    {tpls.data && tpls.data.length > 0 &&
      <table className="table" data-testid="template-table">
        <thead><tr><th>Template</th><th>Defaults</th><th>Disk</th><th>Image</th><th>Age</th><th className="actions-col">Actions</th></tr></thead>
        <tbody>{tpls.data.map((t) => <tr key={t.templateID}>
          <td data-label="Template"><strong>{t.templateID}</strong></td>
          <td data-label="Defaults">{t.cpuCount} vCPU · {t.memoryMB} MB</td>
          <td data-label="Disk">{t.diskSizeMB} MB</td>
          <td data-label="Image" className="mono small" title={t.imageHash}>{t.imageHash.slice(0, 16)}…</td>
          <td data-label="Age" title={t.createdAt}>{fmtAge(t.createdAt, now)}</td>
          <td className="actions"><ActionButton label="Start sandbox" busyLabel="Starting…" run={() => api.createSandbox({ templateID: t.templateID })}
            onError={setError} onDone={(r) => navigate(`/sandboxes/${(r as { sandboxID: string }).sandboxID}`)} /></td>
        </tr>)}</tbody>
      </table>}
  </section>;
}
