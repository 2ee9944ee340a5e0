import { useState } from 'react';
import { api, templateApi, type NewTemplate, type TemplateBuild, type TemplateInfo } from '../api.js';
import { ActionButton, ErrorBox, Link, errMsg, fmtAge, fmtBytes, navigate, useNow, usePoll } from '../util.js';

/** Where a template's page, and one of its builds, live in the dashboard. */
export const templateUrl = (id: string) => `/templates/${encodeURIComponent(id)}`;
export const buildUrl = (id: string, buildID: string) => `${templateUrl(id)}/builds/${encodeURIComponent(buildID)}`;

export const layersSize = (t: TemplateInfo) => (t.layers ?? []).reduce((a, l) => a + l.sizeBytes, 0);

/** Templates: the list (custom ones link to their layers and builds) and the New template form. */
export function TemplatesPage() {
  const tpls = usePoll(() => templateApi.list(), 5000);
  const now = useNow();
  const [error, setError] = useState<string>();
  const [creating, setCreating] = useState(false);
  return <>
    {creating && <NewTemplateForm onClose={() => setCreating(false)} />}
    <section className="card">
      <div className="card-head"><h2>Templates {tpls.data ? <span className="count">{tpls.data.length}</span> : null}</h2>
        {!creating && <button type="button" className="primary" data-testid="tpl-new" onClick={() => setCreating(true)}>New template</button>}</div>
      <ErrorBox error={error ?? (tpls.error && `Could not load templates: ${tpls.error}`)} onClose={() => setError(undefined)} />
      {tpls.data?.length === 0 && <p className="muted empty">No templates.</p>}
      {tpls.data && tpls.data.length > 0 &&
        <table className="table" data-testid="template-table">
          <thead><tr><th>Template</th><th>Aliases</th><th>Source</th><th>Shape</th><th>Disk</th><th>Layers</th><th>Created</th><th>Start command</th><th className="actions-col">Actions</th></tr></thead>
          <tbody>{tpls.data.map((t) => <tr key={t.templateID} data-testid={`tpl-row-${t.templateID}`}>
            <td data-label="Template"><Link to={templateUrl(t.templateID)}><strong>{t.templateID}</strong></Link></td>
            <td data-label="Aliases">{t.aliases?.length ? <span className="chips">{t.aliases.map((a) => <span key={a} className="chip mono">{a}</span>)}</span> : <span className="muted">—</span>}</td>
            <td data-label="Source">{t.source ?? '—'}</td>
            <td data-label="Shape">{t.cpuCount} vCPU · {t.memoryMB} MB</td>
            <td data-label="Disk">{t.diskSizeMB} MB</td>
            <td data-label="Layers" data-testid={`tpl-layers-${t.templateID}`} data-count={t.layers?.length ?? 0}>
              {t.layers?.length ? `${t.layers.length} · ${fmtBytes(layersSize(t))}` : <span className="muted">—</span>}</td>
            <td data-label="Created" title={t.createdAt}>{fmtAge(t.createdAt, now)} ago</td>
            <td data-label="Start command" className="mono small clip" title={t.startCommand ?? ''}>{t.startCommand || <span className="muted">—</span>}</td>
            <td className="actions"><ActionButton label="Start sandbox" busyLabel="Starting…" run={() => api.createSandbox({ templateID: t.templateID })}
              onError={setError} onDone={(r) => navigate(`/sandboxes/${(r as { sandboxID: string }).sandboxID}`)} /></td>
          </tr>)}</tbody>
        </table>}
    </section>
  </>;
}

const RECIPE_EXAMPLE = `{
  "from": "base",
  "steps": [
    { "apt": ["python3-numpy"] },
    { "run": "echo hello > /etc/motd" }
  ],
  "start": { "command": "python3 -m http.server 8000", "ready": { "port": 8000 } }
}`;
const DOCKERFILE_EXAMPLE = `FROM base
RUN apt-get install -y python3-numpy
ENV MPLBACKEND=Agg
CMD python3 -m http.server 8000
EXPOSE 8000`;

/** POST /templates from a name and a hearth.template.json or a Dockerfile; opens the build's page. */
function NewTemplateForm({ onClose }: { onClose: () => void }) {
  const [name, setName] = useState('');
  const [kind, setKind] = useState<'recipe' | 'dockerfile'>('recipe');
  const [text, setText] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();

  async function submit(e: React.FormEvent) {
    e.preventDefault();
    setError(undefined);
    const body: NewTemplate = { name: name.trim() };
    if (!body.name) { setError('A template needs a name'); return; }
    if (!text.trim()) { setError(`Paste a ${kind === 'recipe' ? 'hearth.template.json' : 'Dockerfile'}`); return; }
    if (kind === 'recipe') {
      try { body.recipe = JSON.parse(text) as unknown; } catch (err) { setError(`hearth.template.json is not valid JSON: ${errMsg(err)}`); return; }
    } else body.dockerfile = text;
    setBusy(true);
    try {
      const b: TemplateBuild = await templateApi.build(body);
      navigate(buildUrl(b.templateID || body.name, b.buildID));
    } catch (err) { setError(`Build not started: ${errMsg(err)}`); } finally { setBusy(false); }
  }

  return <section className="card">
    <div className="card-head"><h2>New template</h2><button type="button" className="link" onClick={onClose}>close</button></div>
    <form className="create tpl-form" onSubmit={submit} data-testid="tpl-form">
      <label>Name<input name="name" className="mono" value={name} onChange={(e) => setName(e.target.value)} placeholder="e.g. py-data" data-testid="tpl-name" /></label>
      <div className="wide tpl-kind" role="radiogroup" aria-label="recipe format">
        <span className="muted small">Build from</span>
        <label className="check"><input type="radio" name="kind" checked={kind === 'recipe'} onChange={() => setKind('recipe')} data-testid="tpl-kind-recipe" /> <code>hearth.template.json</code></label>
        <label className="check"><input type="radio" name="kind" checked={kind === 'dockerfile'} onChange={() => setKind('dockerfile')} data-testid="tpl-kind-dockerfile" /> Dockerfile (Hearth's subset)</label>
      </div>
      <label className="full">{kind === 'recipe' ? 'hearth.template.json' : 'Dockerfile'} <span className="muted small">(steps that copy files need a build context: use the SDK or CLI for those; docs/templates.md)</span>
        <textarea name="source" rows={10} spellCheck={false} value={text} onChange={(e) => setText(e.target.value)}
          placeholder={kind === 'recipe' ? RECIPE_EXAMPLE : DOCKERFILE_EXAMPLE} data-testid="tpl-source" /></label>
      <div className="form-actions full">
        <button type="submit" className="primary" disabled={busy} data-testid="tpl-submit">{busy ? <><span className="spinner" />Starting build…</> : 'Build template'}</button>
      </div>
    </form>
    <ErrorBox error={error} onClose={() => setError(undefined)} />
  </section>;
}
