import { Fragment, useState } from 'react';
import { api } from '../api.js';
import { ActionButton, ErrorBox, Link, fmtAge, fmtBytes, navigate, useNow, usePoll } from '../util.js';

export function SnapshotsPage() {
  const snaps = usePoll(() => api.listSnapshots(), 2000);
  const now = useNow();
  const [errors, setErrors] = useState<Record<string, string>>({});
  const setErr = (id: string) => (m: string) => setErrors((e) => ({ ...e, [id]: m }));
  return <section className="card">
    <div className="card-head"><h2>Snapshots {snaps.data ? <span className="count">{snaps.data.length}</span> : null}</h2>
      <span className="muted small">Take one from a running sandbox (Sandboxes → Snapshot).</span></div>
    <ErrorBox error={snaps.error && `Could not load snapshots: ${snaps.error}`} />
    {snaps.data?.length === 0 && <p className="muted empty">No snapshots yet.</p>}
    {snaps.data && snaps.data.length > 0 &&
      <table className="table" data-testid="snapshot-table">
        <thead><tr><th>ID</th><th>Names</th><th>From sandbox</th><th>Template</th><th>CPU / memory</th><th>Size</th><th>Age</th><th className="actions-col">Actions</th></tr></thead>
        <tbody>{snaps.data.map((s) => <Fragment key={s.snapshotID}>
          <tr data-testid={`snap-${s.snapshotID}`}>
            <td data-label="ID" className="mono">{s.snapshotID}</td>
            <td data-label="Names">{s.names.join(', ') || '—'}</td>
            <td data-label="From">{s.sandboxID ? <Link to={`/sandboxes/${s.sandboxID}`} className="mono">{s.sandboxID}</Link> : '—'}</td>
            <td data-label="Template">{s.templateID}</td>
            <td data-label="CPU / memory">{s.cpuCount} vCPU · {s.memoryMB} MB</td>
            <td data-label="Size">{fmtBytes(s.sizeBytes)}</td>
            <td data-label="Age" title={s.createdAt}>{fmtAge(s.createdAt, now)}</td>
            <td className="actions">
              <ActionButton label="Start sandbox" busyLabel="Starting…" run={() => api.createSandbox({ templateID: s.names[0] ?? s.snapshotID })}
                onError={setErr(s.snapshotID)} onDone={(r) => navigate(`/sandboxes/${(r as { sandboxID: string }).sandboxID}`)} />
              <ActionButton label="Delete" busyLabel="Deleting…" danger run={() => api.deleteSnapshot(s.snapshotID)} onError={setErr(s.snapshotID)} onDone={snaps.refresh} />
            </td>
          </tr>
          {errors[s.snapshotID] && <tr className="row-error"><td colSpan={8}><ErrorBox error={errors[s.snapshotID]} onClose={() => setErr(s.snapshotID)('')} /></td></tr>}
        </Fragment>)}</tbody>
      </table>}
  </section>;
}
