import { useState } from 'react';
import { api, ApiError, templateApi, type TemplateBuild, type TemplateInfo } from '../api.js';
import { ActionButton, ConfirmButton, ErrorBox, Link, StateBadge, fmtAge, fmtBytes, fmtMs, navigate, useNow, usePoll } from '../util.js';
import { buildUrl, layersSize } from './Templates.js';

const newestFirst = (a: TemplateBuild, b: TemplateBuild) => b.createdAt.localeCompare(a.createdAt) || b.buildID.localeCompare(a.buildID);
const notFound = (e: unknown) => e instanceof ApiError && e.status === 404;

/** A template: what sandboxes from it get, its layers (one per step), its builds; Start sandbox, Delete. */
export function TemplateDetailPage({ id }: { id: string }) {
  // A template whose first build has not finished (or failed) is not registered yet, but has builds.
  const tpl = usePoll(() => templateApi.get(id).catch((e: unknown) => { if (notFound(e)) return null; throw e; }), 5000, [id]);
  const builds = usePoll(() => templateApi.builds(id).catch((e: unknown) => { if (notFound(e)) return null; throw e; }), 3000, [id]);
  const now = useNow();
  const [error, setError] = useState<string>();
  const t = tpl.data;
  const back = <p className="crumbs"><Link to="/templates">← Templates</Link></p>;
  if (t === undefined || builds.data === undefined) {
    return <section className="card">{back}
      {tpl.error || builds.error ? <ErrorBox error={`Could not load template ${id}: ${tpl.error ?? builds.error}`} /> : <p className="muted">Loading…</p>}</section>;
  }
  if (t === null && !builds.data?.length) return <section className="card">{back}<ErrorBox error={`Template ${id} does not exist.`} /></section>;
  const list = [...(builds.data ?? [])].sort(newestFirst);
  const isBase = t?.source === 'image' || id === 'base';
  return <>
    <section className="card" data-testid="tpl-detail">
      {back}
      <div className="card-head">
        <h2 className="mono">{t?.templateID ?? id} {t?.source && <span className="badge">{t.source}</span>}</h2>
        {t && <div className="actions">
          <ActionButton label="Start sandbox" busyLabel="Starting…" testId="tpl-start" run={() => api.createSandbox({ templateID: t.templateID })}
            onError={setError} onDone={(r) => navigate(`/sandboxes/${(r as { sandboxID: string }).sandboxID}`)} />
          <ConfirmButton label="Delete template" confirmLabel="Confirm delete" busyLabel="Deleting…" testId="tpl-delete" disabled={isBase}
            run={() => templateApi.delete(t.templateID)} onError={(m) => setError(m.replace(/^Confirm delete: /, 'Delete template: '))} onDone={() => navigate('/templates')} />
        </div>}
      </div>
      <ErrorBox error={error} onClose={() => setError(undefined)} />
      {(tpl.error || builds.error) && <ErrorBox error={`Refresh failed: ${tpl.error ?? builds.error}`} />}
      {t ? <Info t={t} now={now} /> : <p className="muted" data-testid="tpl-unregistered">Not registered yet: no build of it has finished (see its builds below).</p>}
    </section>
    {t && <section className="card" data-testid="tpl-layers">
      <div className="card-head"><h3>Layers <span className="count">{t.layers?.length ?? 0}</span></h3>
        {t.layers?.length ? <span className="muted small">{fmtBytes(layersSize(t))} in all (allocated blocks; layers are shared with templates that build on the same steps)</span> : null}</div>
      {t.layers?.length
        ? <table className="table"><thead><tr><th>#</th><th>Step</th><th>Size</th><th>Key</th></tr></thead>
          <tbody>{t.layers.map((l, i) => <tr key={l.key} data-testid={`tpl-layer-${i}`}>
            <td data-label="#">{i}</td>
            <td data-label="Step" className="mono">{l.step}</td>
            <td data-label="Size" className="num">{fmtBytes(l.sizeBytes)}</td>
            <td data-label="Key" className="mono small" title={l.key}>{l.key.slice(0, 16)}</td>
          </tr>)}</tbody></table>
        : <p className="muted empty">{t.source === 'build' ? 'No layers.' : `No layers: a template made from ${t.source === 'image' ? 'an image' : `a ${t.source ?? 'disk'}`} has its disk as it was, no steps.`}</p>}
    </section>}
    <section className="card" data-testid="tpl-builds">
      <div className="card-head"><h3>Builds <span className="count">{list.length}</span></h3><span className="muted small">newest first</span></div>
      {list.length === 0
        ? <p className="muted empty">No builds{isBase ? ': the base template is made from the default image.' : '.'}</p>
        : <table className="table"><thead><tr><th>Build</th><th>Status</th><th>Started</th><th>Duration</th><th>Cached steps</th><th>Error</th></tr></thead>
          <tbody>{list.map((b) => <tr key={b.buildID} data-testid={`tpl-build-${b.buildID}`}>
            <td data-label="Build"><Link to={buildUrl(b.templateID || id, b.buildID)} className="mono">{b.buildID}</Link>{t?.buildID === b.buildID && <span className="badge internal" title="The build the template is made of">current</span>}</td>
            <td data-label="Status"><StateBadge state={b.status} />{b.status === 'building' && <span className="muted small"> {b.phase}</span>}</td>
            <td data-label="Started" title={b.createdAt}>{fmtAge(b.createdAt, now)} ago</td>
            <td data-label="Duration">{b.durationMs !== null ? fmtMs(b.durationMs) : b.status === 'building' ? `${fmtAge(b.createdAt, now)} so far` : '—'}</td>
            <td data-label="Cached steps">{b.steps.filter((s) => s.cached).length} of {b.steps.length}</td>
            <td data-label="Error" className="small clip" title={b.error ?? ''}>{b.error ? b.error.split('\n')[0] : <span className="muted">—</span>}</td>
          </tr>)}</tbody></table>}
    </section>
  </>;
}

function Info({ t, now }: { t: TemplateInfo; now: number }) {
  const [showEnv, setShowEnv] = useState(false);
  const envs = Object.entries(t.envVars ?? {});
  const ready = t.readyCheck ? ('port' in t.readyCheck ? `port ${t.readyCheck.port} accepts connections` : <code>{t.readyCheck.command}</code>) : '—';
  const rows: [string, React.ReactNode][] = [
    ['Aliases', t.aliases?.length ? <span className="chips">{t.aliases.map((a) => <span key={a} className="chip mono">{a}</span>)}</span> : '—'],
    ['Source', t.source ?? '—'],
    ['Built on', t.from ? <Link to={`/templates/${encodeURIComponent(t.from)}`} className="mono">{t.from}</Link> : '—'],
    ['Shape', `${t.cpuCount} vCPU · ${t.memoryMB} MB`],
    ['Disk', `${t.diskSizeMB} MB`],
    ['Created', `${new Date(t.createdAt).toLocaleString()} (${fmtAge(t.createdAt, now)} ago)`],
    ['Start command', t.startCommand ? <code data-testid="tpl-start-command">{t.startCommand}</code> : '—'],
    ['Ready when', ready],
    ['User', t.user ?? '—'],
    ['Working directory', t.workdir ? <code>{t.workdir}</code> : '—'],
    ['Env vars', envs.length
      ? <span>{envs.map(([k, v]) => <span key={k} className="chip mono">{k}={showEnv ? v : '••••••'}</span>)}
        <button type="button" className="link" onClick={() => setShowEnv((x) => !x)}>{showEnv ? 'hide values' : 'show values'}</button></span>
      : '—'],
    ['Image', <span className="mono small" title={t.imageHash}>{t.imageHash.slice(0, 16)}…</span>],
  ];
  return <dl className="info">{rows.map(([k, v]) => <div key={k}><dt>{k}</dt><dd>{v}</dd></div>)}</dl>;
}
