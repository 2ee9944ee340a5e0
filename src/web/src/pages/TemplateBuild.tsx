import { useEffect, useRef, useState } from 'react';
import { api, templateApi, type BuildLogEntry, type BuildStep, type TemplateBuild } from '../api.js';
import { streamSse } from '../observe.js';
import { ActionButton, ErrorBox, Link, StateBadge, errMsg, fmtAge, fmtMs, navigate, useNow } from '../util.js';
import { templateUrl } from './Templates.js';

const KEEP = 5000;
const PHASES: Record<string, string> = { steps: 'running the steps', snapshot: 'starting it and taking the warm snapshot', done: 'done' };

function upsertStep(steps: BuildStep[], s: BuildStep): BuildStep[] {
  const out = steps.filter((x) => x.index !== s.index);
  out.push(s);
  return out.sort((a, b) => a.index - b.index);
}
const isBuild = (d: unknown): d is TemplateBuild => typeof d === 'object' && d !== null && 'buildID' in d && 'status' in d && Array.isArray((d as TemplateBuild).steps);

/**
 * One build, live: its steps (from the `step` events of the log stream, and a poll every 2 s
 * for the phase) and its log (SSE, docs/templates.md). Log lines are guest output: text only.
 */
export function TemplateBuildPage({ id, buildID }: { id: string; buildID: string }) {
  const [build, setBuild] = useState<TemplateBuild>();
  const [loadError, setLoadError] = useState<string>();
  const [entries, setEntries] = useState<BuildLogEntry[]>([]);
  const [live, setLive] = useState(false);
  const [error, setError] = useState<string>();
  const [onlyStep, setOnlyStep] = useState<number | null>(null);
  const [follow, setFollow] = useState(true);
  const box = useRef<HTMLDivElement>(null);
  // When this page first saw each step running: a running step's duration is not in the API until it ends.
  const runningSince = useRef(new Map<number, number>());
  const now = useNow();

  useEffect(() => {
    const ac = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    let ended = false; // the stream's `end` (or a poll) said the build is over: no more polls
    setBuild(undefined); setEntries([]); setLoadError(undefined); runningSince.current.clear();
    const load = async () => {
      try {
        const b = await templateApi.getBuild(id, buildID);
        if (ac.signal.aborted) return;
        setBuild(b); setLoadError(undefined);
        if (b.status !== 'building') ended = true;
      } catch (e) { if (!ac.signal.aborted) setLoadError(errMsg(e)); }
      if (!ac.signal.aborted && !ended) timer = setTimeout(() => void load(), 2000);
    };
    void load();
    void streamSse(() => templateApi.buildLogsPath(id, buildID), (event, data) => {
      if (ac.signal.aborted) return;
      if (event === 'end') {
        ended = true; clearTimeout(timer);
        if (isBuild(data)) setBuild(data);
        else void load();
      } else if (event === 'step') {
        const s = data as BuildStep;
        if (typeof s.index === 'number') setBuild((b) => (b && b.status === 'building' ? { ...b, steps: upsertStep(b.steps, s) } : b));
      } else if (event === 'log' || (event === 'message' && typeof (data as BuildLogEntry).line === 'string')) {
        const e = data as BuildLogEntry;
        setEntries((prev) => (prev.length >= KEEP ? [...prev.slice(-(KEEP - 1)), e] : [...prev, e]));
      }
      // Each (re)connection sends the whole log again: start over then.
    }, ac.signal, (open) => { setLive(open); if (open) setEntries([]); });
    return () => { ac.abort(); clearTimeout(timer); };
  }, [id, buildID]);

  for (const s of build?.steps ?? []) if (s.status === 'running' && !runningSince.current.has(s.index)) runningSince.current.set(s.index, Date.now());
  useEffect(() => { if (follow && box.current) box.current.scrollTop = box.current.scrollHeight; }, [entries, follow, onlyStep]);

  const back = <p className="crumbs"><Link to="/templates">← Templates</Link> · <Link to={templateUrl(id)}>{id}</Link></p>;
  if (!build) return <section className="card">{back}
    {loadError ? <ErrorBox error={`Could not load build ${buildID}: ${loadError}`} /> : <p className="muted">Loading…</p>}</section>;
  const building = build.status === 'building';
  const visible = onlyStep === null ? entries : entries.filter((e) => e.step === onlyStep);
  const cached = build.steps.filter((s) => s.cached).length;
  return <>
    <section className="card" data-testid="build-card">
      {back}
      <div className="card-head">
        <h2><span className="mono">{build.buildID}</span> <span data-testid="build-status" data-state={build.status}><StateBadge state={build.status} /></span></h2>
        <div className="actions">
          {building && <ActionButton label="Cancel build" busyLabel="Cancelling…" danger testId="build-cancel"
            run={() => templateApi.cancelBuild(id, buildID)} onError={setError} />}
          {build.status === 'ready' && <ActionButton label="Start sandbox" busyLabel="Starting…" testId="build-start"
            run={() => api.createSandbox({ templateID: build.templateID || id })} onError={setError}
            onDone={(r) => navigate(`/sandboxes/${(r as { sandboxID: string }).sandboxID}`)} />}
        </div>
      </div>
      <ErrorBox error={error} onClose={() => setError(undefined)} />
      {loadError && <ErrorBox error={`Refresh failed: ${loadError}`} />}
      <dl className="info">
        <div><dt>Template</dt><dd><Link to={templateUrl(build.templateID || id)} className="mono">{build.templateID || id}</Link></dd></div>
        <div><dt>Phase</dt><dd data-testid="build-phase">{PHASES[build.phase] ?? build.phase}</dd></div>
        <div><dt>Started</dt><dd title={build.createdAt}>{new Date(build.createdAt).toLocaleString()} ({fmtAge(build.createdAt, now)} ago)</dd></div>
        <div><dt>Duration</dt><dd data-testid="build-duration">{build.durationMs !== null ? fmtMs(build.durationMs) : building ? `${fmtAge(build.createdAt, now)} so far` : '—'}</dd></div>
        <div><dt>Steps</dt><dd>{build.steps.length}{cached ? `, ${cached} from the cache` : ''}</dd></div>
      </dl>
      {build.error && <div className="build-error" role="alert" data-testid="build-error"><strong>The build failed</strong><pre className="output">{build.error}</pre></div>}
    </section>
    <section className="card" data-testid="build-steps">
      <div className="card-head"><h3>Steps</h3><span className="muted small">click a step to see only its log</span></div>
      {build.steps.length === 0 ? <p className="muted empty">No steps.</p> :
        <table className="table build-steps"><thead><tr><th>#</th><th>Step</th><th>Status</th><th>Duration</th><th>Exit code</th><th>Layer</th></tr></thead>
          <tbody>{build.steps.map((s) => {
            const since = runningSince.current.get(s.index);
            return <tr key={s.index} data-testid={`build-step-${s.index}`} data-state={s.status} className={onlyStep === s.index ? 'selected' : ''}
              onClick={() => setOnlyStep((x) => (x === s.index ? null : s.index))}>
              <td data-label="#">{s.index}</td>
              <td data-label="Step" className="mono">{s.description}</td>
              <td data-label="Status">{s.status === 'running' && <span className="spinner" />} <StateBadge state={s.status} /></td>
              <td data-label="Duration">{s.durationMs !== null ? fmtMs(s.durationMs) : s.status === 'running' && since ? `${fmtAge(new Date(since).toISOString(), now)} so far` : '—'}</td>
              <td data-label="Exit code">{s.exitCode === null ? '—' : <span className={s.exitCode === 0 ? 'ok' : 'bad'}>{s.exitCode}</span>}</td>
              <td data-label="Layer" className="mono small" title={s.key}>{s.key ? s.key.slice(0, 16) : '—'}</td>
            </tr>;
          })}</tbody></table>}
    </section>
    <section className="card" data-testid="build-logs-card">
      <div className="card-head">
        <h3>Log <span className="count">{visible.length}</span>{onlyStep !== null && <span className="muted small">step {onlyStep} only <button type="button" className="link" onClick={() => setOnlyStep(null)}>show all</button></span>}</h3>
        <div className="filters">
          <label><input type="checkbox" checked={follow} onChange={(e) => setFollow(e.target.checked)} />follow</label>
          <span className={`muted small ${live ? 'live' : ''}`} data-testid="build-log-live">{live ? '● live' : building ? 'not connected' : 'complete'}</span>
        </div>
      </div>
      <div className="logs mono" ref={box} data-testid="build-log">
        {visible.length === 0 ? <p className="muted">No lines yet.</p> : visible.map((e, i) => <div key={i} className={`log-line stream-${e.stream}`}>
          <span className="log-time">{e.timestamp.slice(11, 19)}</span>
          <span className="log-src" title={e.step === null ? e.stream : `step ${e.step}, ${e.stream}`}>{e.stream === 'hearth' || e.step === null ? e.stream : `#${e.step}${e.stream === 'stderr' ? ' err' : ''}`}</span>
          <span className="log-text">{e.line}</span>
        </div>)}
      </div>
    </section>
  </>;
}
