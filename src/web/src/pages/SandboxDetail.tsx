import { Fragment, lazy, Suspense, useRef, useState } from 'react';
import { api, decodeBytes, downloadFile, killProcess, listDir, makeDir, readHead, removePath, startProcess, uploadFile, type EntryInfo, type EnvdTarget, type ForkResult, type SandboxDetail, type Snapshot } from '../api.js';
import { FileIcon, FolderIcon } from '../icons.js';
import { ActionButton, ConfirmButton, ErrorBox, Link, StateBadge, errMsg, fmtAge, fmtBytes, fmtMs, navigate, useNow, usePoll } from '../util.js';
import { LogPanel, MetricsCharts } from '../Observe.js';

const Terminal = lazy(() => import('../Terminal.js'));

export function SandboxDetailPage({ id }: { id: string }) {
  const sb = usePoll(() => api.getSandbox(id), 1500, [id]);
  const now = useNow();
  const [error, setError] = useState<string>();
  const [notice, setNotice] = useState<React.ReactNode>();
  const s = sb.data;
  if (!s) return <section className="card"><p><Link to="/sandboxes">← Sandboxes</Link></p>
    {sb.error ? <ErrorBox error={`Could not load sandbox ${id}: ${sb.error}`} /> : <p className="muted">Loading…</p>}</section>;
  const running = s.state === 'running';
  const ended = s.state === 'destroyed' || s.state === 'failed';
  const target: EnvdTarget = { id: s.sandboxID, token: s.envdAccessToken };
  const ok = (m: React.ReactNode) => { setError(undefined); setNotice(m); sb.refresh(); };
  return <>
    <section className="card">
      <p className="crumbs"><Link to="/sandboxes">← Sandboxes</Link></p>
      <div className="card-head">
        <h2 className="mono">{s.sandboxID} <StateBadge state={s.state} /></h2>
        {s.state !== 'destroyed' && <div className="actions">
          {!ended && (s.state === 'paused'
            ? <ActionButton label="Resume" busyLabel="Resuming…" run={() => api.resume(id)} onError={setError} onDone={() => ok('Resumed')} testId="detail-resume" />
            : <ActionButton label="Pause" busyLabel="Pausing…" disabled={!running} run={() => api.pause(id)} onError={setError} onDone={() => ok('Paused: no CPU, memory and disk kept; it does not expire while paused')} testId="detail-pause" />)}
          {!ended && <SnapshotButton id={id} disabled={!running} onError={setError} onDone={(snap) => ok(<>Snapshot <span className="mono">{snap.snapshotID}</span>{snap.names[0] ? <> (<strong>{snap.names[0]}</strong>)</> : null} saved. <Link to="/snapshots">Snapshots</Link></>)} />}
          {!ended && <ActionButton label="Fork" busyLabel="Forking…" disabled={!running} run={() => api.fork(id, 1)} onError={setError} testId="detail-fork"
            onDone={(r) => {
              const res = r as ForkResult[];
              const bad = res.find((x) => x.error);
              if (bad) setError(`Fork: ${bad.error!.message}`);
              else ok(<>Forked into {res.map((x, i) => <Fragment key={i}>{i > 0 && ', '}<Link to={`/sandboxes/${x.sandbox!.sandboxID}`} className="mono">{x.sandbox!.sandboxID}</Link></Fragment>)}</>);
            }} />}
          <ConfirmButton label="Destroy" confirmLabel="Confirm destroy" busyLabel="Destroying…" disabled={s.state === 'destroying'}
            run={() => api.destroy(id)} onError={setError} onDone={() => navigate('/sandboxes')} testId="detail-destroy" />
        </div>}
      </div>
      {notice && <div className="notice"><span data-testid="detail-notice">{notice}</span><button type="button" className="link" onClick={() => setNotice(undefined)}>dismiss</button></div>}
      <ErrorBox error={error} onClose={() => setError(undefined)} />
      {sb.error && <ErrorBox error={`Refresh failed: ${sb.error}`} />}
      <Info s={s} now={now} onExtended={(secs) => ok(`It now ends in ${fmtDuration(secs)}`)} onError={setError} />
    </section>
    {s.state !== 'destroyed' && <MetricsCharts id={s.sandboxID} running={running} />}
    {s.timings && <Timings s={s} />}
    <LogPanel id={s.sandboxID} />
    {running
      ? <>
        <CommandRunner target={target} />
        <TerminalCard target={target} />
        <FileBrowser target={target} />
      </>
      : <section className="card"><p className="muted">{ended
        ? `This sandbox has ended${s.endReason ? ` (${s.endReason})` : ''}; its record is kept for a while after it ends.`
        : `Commands, terminal and files are available while the sandbox is running (it is ${s.state}).`}</p></section>}
  </>;
}

/** Snapshot with an optional name: the first click asks for it. */
function SnapshotButton({ id, disabled, onError, onDone }: { id: string; disabled: boolean; onError: (m: string) => void; onDone: (s: Snapshot) => void }) {
  const [asking, setAsking] = useState(false);
  const [name, setName] = useState('');
  if (!asking) return <button type="button" disabled={disabled} onClick={() => setAsking(true)} data-testid="detail-snapshot">Snapshot…</button>;
  return <form className="inline-form" onSubmit={(e) => e.preventDefault()}>
    <input className="mono" value={name} onChange={(e) => setName(e.target.value)} placeholder="name (optional)" aria-label="snapshot name" data-testid="snapshot-name" autoFocus
      pattern="[A-Za-z0-9][A-Za-z0-9._\-]*" title="letters, digits, . _ -" />
    <ActionButton label="Take snapshot" busyLabel="Snapshotting…" disabled={disabled} testId="snapshot-take"
      run={() => api.snapshot(id, name.trim() || undefined)} onError={onError} onDone={(r) => { setAsking(false); setName(''); onDone(r as Snapshot); }} />
    <button type="button" className="link" onClick={() => setAsking(false)}>cancel</button>
  </form>;
}

export function fmtDuration(secs: number): string {
  if (secs < 90) return `${Math.round(secs)} s`;
  if (secs < 5400) return `${Math.round(secs / 60)} min`;
  if (secs < 172800) return `${(secs / 3600).toFixed(secs < 36000 ? 1 : 0)} h`;
  return `${Math.round(secs / 86400)} days`;
}

function Info({ s, now, onExtended, onError }: { s: SandboxDetail; now: number; onExtended: (secs: number) => void; onError: (m: string) => void }) {
  const [showEnv, setShowEnv] = useState(false);
  const envs = Object.entries(s.envVars);
  let ends: React.ReactNode;
  if (s.endedAt) ends = `ended ${new Date(s.endedAt).toLocaleString()} (${s.endReason ?? 'unknown reason'})`;
  else if (s.state === 'paused' || s.state === 'pausing') ends = 'does not expire while paused (its timeout starts again when it is resumed)';
  else ends = <>{new Date(s.endAt).toLocaleString()} (in {fmtAge(new Date(now).toISOString(), Date.parse(s.endAt))}) <ExtendTimeout id={s.sandboxID} onDone={onExtended} onError={onError} /></>;
  const rows: [string, React.ReactNode][] = [
    ['Template', s.templateID],
    ['vCPUs', s.cpuCount],
    ['Memory', `${s.memoryMB} MB`],
    ['Disk', s.diskUsageBytes === null ? `${s.diskSizeMB} MB` : `${fmtBytes(s.diskUsageBytes)} used of ${s.diskSizeMB} MB`],
    ['Created', `${new Date(s.createdAt).toLocaleString()} (${fmtAge(s.createdAt, now)} ago)`],
    ['Ends', ends],
    ['VM process', s.vmm ? `${s.vmm.kind}, pid ${s.vmm.pid}` : '—'],
    ['Agent version', s.envdVersion || '—'],
    ['Env vars', envs.length
      ? <span data-testid="env-vars">{envs.map(([k, v]) => <span key={k} className="chip mono">{k}={showEnv ? v : '••••••'}</span>)}
        <button type="button" className="link" onClick={() => setShowEnv((x) => !x)} data-testid="env-toggle">{showEnv ? 'hide values' : 'show values'}</button></span>
      : '—'],
    ['Metadata', Object.keys(s.metadata).length ? <span className="chips">{Object.entries(s.metadata).map(([k, v]) => <span key={k} className="chip mono">{k}={v}</span>)}</span> : '—'],
  ];
  return <dl className="info">{rows.map(([k, v]) => <div key={k}><dt>{k}</dt><dd>{v}</dd></div>)}</dl>;
}

/** Set the sandbox to end N minutes from now. */
function ExtendTimeout({ id, onDone, onError }: { id: string; onDone: (secs: number) => void; onError: (m: string) => void }) {
  const [open, setOpen] = useState(false);
  const [minutes, setMinutes] = useState('30');
  if (!open) return <button type="button" className="link" onClick={() => setOpen(true)} data-testid="extend-open">change…</button>;
  const secs = Math.round(Number(minutes) * 60);
  return <form className="inline-form" onSubmit={(e) => e.preventDefault()}>
    end in <input type="number" min={1} value={minutes} onChange={(e) => setMinutes(e.target.value)} aria-label="minutes from now" data-testid="extend-minutes" className="narrow" /> min
    <ActionButton label="Set" busyLabel="Setting…" disabled={!(secs > 0)} testId="extend-set"
      run={() => api.setTimeout(id, secs)} onError={onError} onDone={() => { setOpen(false); onDone(secs); }} />
    <button type="button" className="link" onClick={() => setOpen(false)}>cancel</button>
  </form>;
}

function Timings({ s }: { s: SandboxDetail }) {
  const t = s.timings!;
  const total = t.steps.reduce((a, x) => a + x.ms, 0) || 1;
  return <section className="card">
    <div className="card-head"><h3>Last lifecycle operation: {t.op}</h3><span className="muted">{fmtMs(total)} total</span></div>
    <table className="table timings"><tbody>
      {t.steps.map((x, i) => <tr key={i}><td className="mono">{x.step}</td><td className="num">{fmtMs(x.ms)}</td>
        <td className="bar-cell"><div className="bar" style={{ width: `${Math.max(0.5, (x.ms / total) * 100)}%` }} /></td></tr>)}
    </tbody></table>
  </section>;
}

interface Chunk { kind: 'stdout' | 'stderr' | 'info' | 'exit-ok' | 'exit-bad'; text: string }

function CommandRunner({ target }: { target: EnvdTarget }) {
  const [cmd, setCmd] = useState('echo hello');
  const [out, setOut] = useState<Chunk[]>([]);
  const [pid, setPid] = useState<number>();
  const [running, setRunning] = useState(false);
  const [error, setError] = useState<string>();
  const abort = useRef<AbortController>();
  const outRef = useRef<HTMLPreElement>(null);

  async function run(e: React.FormEvent) {
    e.preventDefault();
    if (!cmd.trim()) return;
    const ac = new AbortController();
    abort.current = ac;
    setOut([{ kind: 'info', text: `$ ${cmd}\n` }]); setError(undefined); setRunning(true); setPid(undefined);
    const dec = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    const push = (c: Chunk) => {
      setOut((o) => [...o, c]);
      requestAnimationFrame(() => { const el = outRef.current; if (el) el.scrollTop = el.scrollHeight; });
    };
    const t0 = performance.now();
    try {
      await startProcess(target, { cmd: '/bin/bash', args: ['-l', '-c', cmd] }, (ev) => {
        if (ev.start) setPid(ev.start.pid);
        if (ev.data?.stdout) push({ kind: 'stdout', text: dec.stdout.decode(decodeBytes(ev.data.stdout), { stream: true }) });
        if (ev.data?.stderr) push({ kind: 'stderr', text: dec.stderr.decode(decodeBytes(ev.data.stderr), { stream: true }) });
        if (ev.end) {
          const code = ev.end.exitCode ?? 0;
          push({ kind: code === 0 ? 'exit-ok' : 'exit-bad', text: `\n[exit ${code}${code !== 0 && ev.end.error && !/^exit status \d+$/.test(ev.end.error) ? `: ${ev.end.error}` : ''} · ${fmtMs(performance.now() - t0)}]\n` });
        }
      }, ac.signal);
    } catch (err) {
      if (!ac.signal.aborted) setError(errMsg(err));
      else push({ kind: 'info', text: '\n[detached]\n' });
    } finally { setRunning(false); }
  }

  return <section className="card">
    <h3>Run a command</h3>
    <form className="runner" onSubmit={run}>
      <input className="mono" value={cmd} onChange={(e) => setCmd(e.target.value)} aria-label="command" data-testid="cmd-input" placeholder="ls -la /" />
      <button type="submit" className="primary" disabled={running} data-testid="cmd-run">{running ? <><span className="spinner" />Running</> : 'Run'}</button>
      {running && pid !== undefined && <button type="button" className="danger" onClick={() => { void killProcess(target, pid).catch((e2) => setError(errMsg(e2))); }}>Kill</button>}
    </form>
    <ErrorBox error={error} onClose={() => setError(undefined)} />
    <pre className="output" ref={outRef} data-testid="cmd-output">{out.length === 0 ? <span className="muted">Output appears here as the command runs (in a login bash shell, as the sandbox's default user).</span>
      : out.map((c, i) => <span key={i} className={c.kind}>{c.text}</span>)}</pre>
  </section>;
}

function TerminalCard({ target }: { target: EnvdTarget }) {
  const [open, setOpen] = useState(false);
  return <section className="card">
    <div className="card-head"><h3>Terminal</h3>
      <button type="button" onClick={() => setOpen((o) => !o)} data-testid="terminal-toggle">{open ? 'Close terminal' : 'Open terminal'}</button></div>
    {open ? <Suspense fallback={<p className="muted">Loading terminal…</p>}><Terminal target={target} /></Suspense>
      : <p className="muted small">An interactive login shell in the sandbox, in your browser. Closing it ends the shell.</p>}
  </section>;
}

const PREVIEW_BYTES = 64 * 1024;
const IMAGE = /\.(png|jpe?g|gif|webp|svg|bmp|ico)$/i;

interface Preview { path: string; text?: string; imageUrl?: string; truncated: boolean; binary?: boolean }

function FileBrowser({ target }: { target: EnvdTarget }) {
  const [path, setPath] = useState('/home/user');
  const [pathInput, setPathInput] = useState('/home/user');
  const entries = usePoll(() => listDir(target, path), 5000, [path, target.id]);
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState<string>();
  const [newDir, setNewDir] = useState('');
  const [preview, setPreview] = useState<Preview>();
  const [confirmDelete, setConfirmDelete] = useState<string>();
  const fileInput = useRef<HTMLInputElement>(null);
  const go = (p: string) => { setPath(p); setPathInput(p); setPreview(undefined); };
  const parent = path === '/' ? null : path.replace(/\/[^/]+\/?$/, '') || '/';
  const sorted = [...(entries.data ?? [])].sort((a, b) => (a.type === b.type ? a.name.localeCompare(b.name) : a.type.includes('DIRECTORY') ? -1 : 1));
  const join = (name: string) => `${path.replace(/\/$/, '')}/${name}`;

  async function upload(files: FileList | null) {
    if (!files) return;
    setError(undefined);
    for (const f of Array.from(files)) {
      setBusy(`Uploading ${f.name} (${fmtBytes(f.size)})…`);
      try { await uploadFile(target, join(f.name), f); } catch (e) { setError(errMsg(e)); }
    }
    setBusy(undefined);
    if (fileInput.current) fileInput.current.value = '';
    entries.refresh();
  }
  async function download(e: EntryInfo) {
    try {
      const blob = await downloadFile(target, e.path);
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url; a.download = e.name; document.body.appendChild(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (err) { setError(errMsg(err)); }
  }
  async function remove(e: EntryInfo) {
    setConfirmDelete(undefined);
    setBusy(`Deleting ${e.name}…`);
    try {
      await removePath(target, e.path);
      if (preview?.path === e.path) setPreview(undefined);
    } catch (err) { setError(`Could not delete ${e.path}: ${errMsg(err)}`); }
    setBusy(undefined);
    entries.refresh();
  }
  async function mkdir(ev: React.FormEvent) {
    ev.preventDefault();
    const name = newDir.trim();
    if (!name) return;
    const dest = name.startsWith('/') ? name : join(name);
    try { await makeDir(target, dest); setNewDir(''); } catch (err) { setError(`Could not create ${dest}: ${errMsg(err)}`); }
    entries.refresh();
  }
  async function show(e: EntryInfo) {
    if (preview?.imageUrl) URL.revokeObjectURL(preview.imageUrl);
    try {
      if (IMAGE.test(e.name) && Number(e.size ?? 0) <= 8 * 1024 * 1024) {
        const blob = await downloadFile(target, e.path);
        setPreview({ path: e.path, imageUrl: URL.createObjectURL(blob), truncated: false });
        return;
      }
      const { bytes, truncated } = await readHead(target, e.path, PREVIEW_BYTES);
      const binary = bytes.subarray(0, 4096).includes(0);
      setPreview({ path: e.path, truncated, binary, ...(binary ? {} : { text: new TextDecoder().decode(bytes) }) });
    } catch (err) { setError(`Could not open ${e.path}: ${errMsg(err)}`); }
  }

  return <section className="card">
    <div className="card-head"><h3>Files</h3>
      <label className="button">Upload<input ref={fileInput} type="file" multiple hidden onChange={(e) => void upload(e.target.files)} data-testid="upload-input" /></label></div>
    <form className="runner" onSubmit={(e) => { e.preventDefault(); go(pathInput || '/'); }}>
      <input className="mono" value={pathInput} onChange={(e) => setPathInput(e.target.value)} aria-label="directory" data-testid="dir-input" />
      <button type="submit">Go</button>
      <button type="button" onClick={entries.refresh}>Refresh</button>
    </form>
    <form className="runner" onSubmit={mkdir}>
      <input className="mono" value={newDir} onChange={(e) => setNewDir(e.target.value)} placeholder="new folder name" aria-label="new folder" data-testid="mkdir-input" />
      <button type="submit" data-testid="mkdir-submit" disabled={!newDir.trim()}>New folder</button>
    </form>
    {busy && <div className="notice"><span className="spinner" />{busy}</div>}
    <ErrorBox error={error ?? (entries.error && `Could not open ${path}: ${entries.error}`)} onClose={() => setError(undefined)} />
    <table className="table files" data-testid="file-table">
      <thead><tr><th>Name</th><th>Size</th><th>Mode</th><th>Owner</th><th>Modified</th><th /></tr></thead>
      <tbody>
        {parent !== null && <tr><td colSpan={6}><button type="button" className="link" onClick={() => go(parent)}>.. (parent)</button></td></tr>}
        {sorted.map((e) => {
          const dir = e.type.includes('DIRECTORY');
          return <tr key={e.path} data-testid={`file-${e.name}`}>
            <td data-label="Name">{dir ? <button type="button" className="link" onClick={() => go(e.path)}><FolderIcon /> {e.name}/</button>
              : <button type="button" className="link plain" onClick={() => void show(e)} title="Preview"><FileIcon /> {e.name}</button>}
              {e.symlinkTarget && <span className="muted small"> → {e.symlinkTarget}</span>}</td>
            <td data-label="Size" className="num">{dir ? '' : fmtBytes(Number(e.size ?? 0))}</td>
            <td data-label="Mode" className="mono">{e.permissions}</td>
            <td data-label="Owner">{e.owner}</td>
            <td data-label="Modified">{e.modifiedTime ? new Date(e.modifiedTime).toLocaleString() : ''}</td>
            <td className="actions">
              {!dir && <button type="button" className="link" onClick={() => void show(e)}>Preview</button>}
              {!dir && <button type="button" className="link" onClick={() => void download(e)}>Download</button>}
              {confirmDelete === e.path
                ? <><button type="button" className="link danger-text" onClick={() => void remove(e)} data-testid={`confirm-delete-${e.name}`}>Delete {dir ? 'folder and contents' : 'file'}?</button>
                  <button type="button" className="link" onClick={() => setConfirmDelete(undefined)}>cancel</button></>
                : <button type="button" className="link" onClick={() => setConfirmDelete(e.path)} data-testid={`delete-${e.name}`}>Delete</button>}
            </td>
          </tr>;
        })}
        {entries.data && sorted.length === 0 && <tr><td colSpan={6} className="muted">(empty directory)</td></tr>}
      </tbody>
    </table>
    {preview && <div className="preview" data-testid="file-preview">
      <div className="card-head"><strong className="mono">{preview.path}</strong>
        <button type="button" className="link" onClick={() => { if (preview.imageUrl) URL.revokeObjectURL(preview.imageUrl); setPreview(undefined); }}>close</button></div>
      {preview.imageUrl && <img src={preview.imageUrl} alt={preview.path} />}
      {preview.binary && <p className="muted">A binary file: download it to open it.</p>}
      {preview.text !== undefined && <pre className="output">{preview.text}{preview.truncated && <span className="muted">{`\n… (first ${fmtBytes(PREVIEW_BYTES)} shown; download for the rest)`}</span>}</pre>}
    </div>}
  </section>;
}
