import { lazy, Suspense, useRef, useState } from 'react';
import { api, decodeBytes, downloadFile, killProcess, listDir, startProcess, uploadFile, type EntryInfo, type EnvdTarget, type SandboxDetail } from '../api.js';
import { FileIcon, FolderIcon } from '../icons.js';
import { ActionButton, ErrorBox, Link, StateBadge, errMsg, fmtAge, fmtBytes, fmtMs, navigate, useNow, usePoll } from '../util.js';

const Terminal = lazy(() => import('../Terminal.js'));

export function SandboxDetailPage({ id }: { id: string }) {
  const sb = usePoll(() => api.getSandbox(id), 1500, [id]);
  const now = useNow();
  const [error, setError] = useState<string>();
  const s = sb.data;
  if (!s) return <section className="card"><p><Link to="/sandboxes">← Sandboxes</Link></p>
    {sb.error ? <ErrorBox error={`Could not load sandbox ${id}: ${sb.error}`} /> : <p className="muted">Loading…</p>}</section>;
  const running = s.state === 'running';
  const target: EnvdTarget = { id: s.sandboxID, token: s.envdAccessToken };
  return <>
    <section className="card">
      <p className="crumbs"><Link to="/sandboxes">← Sandboxes</Link></p>
      <div className="card-head">
        <h2 className="mono">{s.sandboxID} <StateBadge state={s.state} /></h2>
        <div className="actions">
          {s.state === 'paused'
            ? <ActionButton label="Resume" busyLabel="Resuming…" run={() => api.resume(id)} onError={setError} onDone={sb.refresh} testId="detail-resume" />
            : <ActionButton label="Pause" busyLabel="Pausing…" disabled={!running} run={() => api.pause(id)} onError={setError} onDone={sb.refresh} testId="detail-pause" />}
          <ActionButton label="Snapshot" busyLabel="Snapshotting…" disabled={!running} run={() => api.snapshot(id)} onError={setError} onDone={sb.refresh} />
          <ActionButton label="Destroy" busyLabel="Destroying…" danger disabled={s.state === 'destroyed'} run={() => api.destroy(id)} onError={setError} onDone={() => navigate('/sandboxes')} testId="detail-destroy" />
        </div>
      </div>
      <ErrorBox error={error} onClose={() => setError(undefined)} />
      {sb.error && <ErrorBox error={`Refresh failed: ${sb.error}`} />}
      <Info s={s} now={now} />
    </section>
    {s.timings && <Timings s={s} />}
    {running
      ? <>
        <CommandRunner target={target} />
        <TerminalCard target={target} />
        <FileBrowser target={target} />
      </>
      : <section className="card"><p className="muted">Commands, terminal and files are available while the sandbox is running (it is {s.state}).</p></section>}
  </>;
}

function Info({ s, now }: { s: SandboxDetail; now: number }) {
  const rows: [string, React.ReactNode][] = [
    ['Template', s.templateID],
    ['vCPUs', s.cpuCount],
    ['Memory', `${s.memoryMB} MB`],
    ['Disk', `${fmtBytes(s.diskUsageBytes)} used of ${s.diskSizeMB} MB`],
    ['Created', `${new Date(s.createdAt).toLocaleString()} (${fmtAge(s.createdAt, now)} ago)`],
    ['Ends', s.endedAt ? `ended ${new Date(s.endedAt).toLocaleString()} (${s.endReason ?? '?'})` : `${new Date(s.endAt).toLocaleString()} (in ${fmtAge(new Date(now).toISOString(), Date.parse(s.endAt))})`],
    ['VMM', s.vmm ? `${s.vmm.kind} pid ${s.vmm.pid}` : '—'],
    ['envd', s.envdVersion],
    ['Env vars', Object.keys(s.envVars).length ? Object.entries(s.envVars).map(([k, v]) => `${k}=${v}`).join(' ') : '—'],
    ['Metadata', Object.keys(s.metadata).length ? Object.entries(s.metadata).map(([k, v]) => `${k}=${v}`).join(' ') : '—'],
  ];
  return <dl className="info">{rows.map(([k, v]) => <div key={k}><dt>{k}</dt><dd>{v}</dd></div>)}</dl>;
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

interface Chunk { kind: 'stdout' | 'stderr' | 'info'; text: string }

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
        if (ev.end) push({ kind: 'info', text: `\n[exit ${ev.end.exitCode ?? 0}${ev.end.error ? `: ${ev.end.error}` : ''} · ${fmtMs(performance.now() - t0)}]\n` });
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
    <pre className="output" ref={outRef} data-testid="cmd-output">{out.length === 0 ? <span className="muted">Output streams here (bash -l -c, through envd process.Process/Start).</span>
      : out.map((c, i) => <span key={i} className={c.kind}>{c.text}</span>)}</pre>
  </section>;
}

function TerminalCard({ target }: { target: EnvdTarget }) {
  const [open, setOpen] = useState(false);
  return <section className="card">
    <div className="card-head"><h3>Terminal</h3>
      <button type="button" onClick={() => setOpen((o) => !o)} data-testid="terminal-toggle">{open ? 'Close terminal' : 'Open terminal'}</button></div>
    {open ? <Suspense fallback={<p className="muted">Loading terminal…</p>}><Terminal target={target} /></Suspense>
      : <p className="muted small">An interactive shell over a PTY (process.Process/Start with <code>pty</code>; needs an agent with PTY support).</p>}
  </section>;
}

function FileBrowser({ target }: { target: EnvdTarget }) {
  const [path, setPath] = useState('/home/user');
  const [pathInput, setPathInput] = useState('/home/user');
  const entries = usePoll(() => listDir(target, path), 5000, [path, target.id]);
  const [error, setError] = useState<string>();
  const [uploading, setUploading] = useState<string>();
  const fileInput = useRef<HTMLInputElement>(null);
  const go = (p: string) => { setPath(p); setPathInput(p); };
  const parent = path === '/' ? null : path.replace(/\/[^/]+\/?$/, '') || '/';
  const sorted = [...(entries.data ?? [])].sort((a, b) => (a.type === b.type ? a.name.localeCompare(b.name) : a.type.includes('DIRECTORY') ? -1 : 1));

  async function upload(files: FileList | null) {
    if (!files) return;
    setError(undefined);
    for (const f of Array.from(files)) {
      const dest = `${path.replace(/\/$/, '')}/${f.name}`;
      setUploading(`Uploading ${f.name} (${fmtBytes(f.size)})…`);
      try { await uploadFile(target, dest, f); } catch (e) { setError(errMsg(e)); }
    }
    setUploading(undefined);
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

  return <section className="card">
    <div className="card-head"><h3>Files</h3>
      <label className="button">Upload<input ref={fileInput} type="file" multiple hidden onChange={(e) => void upload(e.target.files)} data-testid="upload-input" /></label></div>
    <form className="runner" onSubmit={(e) => { e.preventDefault(); go(pathInput || '/'); }}>
      <input className="mono" value={pathInput} onChange={(e) => setPathInput(e.target.value)} aria-label="directory" data-testid="dir-input" />
      <button type="submit">Go</button>
      <button type="button" onClick={entries.refresh}>Refresh</button>
    </form>
    {uploading && <div className="notice"><span className="spinner" />{uploading}</div>}
    <ErrorBox error={error ?? entries.error} onClose={() => setError(undefined)} />
    <table className="table files" data-testid="file-table">
      <thead><tr><th>Name</th><th>Size</th><th>Mode</th><th>Owner</th><th>Modified</th><th /></tr></thead>
      <tbody>
        {parent !== null && <tr><td colSpan={6}><button type="button" className="link" onClick={() => go(parent)}>.. (parent)</button></td></tr>}
        {sorted.map((e) => {
          const dir = e.type.includes('DIRECTORY');
          return <tr key={e.path} data-testid={`file-${e.name}`}>
            <td data-label="Name">{dir ? <button type="button" className="link" onClick={() => go(e.path)}><FolderIcon /> {e.name}/</button> : <span><FileIcon /> {e.name}</span>}
              {e.symlinkTarget && <span className="muted small"> → {e.symlinkTarget}</span>}</td>
            <td data-label="Size" className="num">{dir ? '' : fmtBytes(Number(e.size ?? 0))}</td>
            <td data-label="Mode" className="mono">{e.permissions}</td>
            <td data-label="Owner">{e.owner}</td>
            <td data-label="Modified">{e.modifiedTime ? new Date(e.modifiedTime).toLocaleString() : ''}</td>
            <td>{!dir && <button type="button" className="link" onClick={() => void download(e)}>Download</button>}</td>
          </tr>;
        })}
        {entries.data && sorted.length === 0 && <tr><td colSpan={6} className="muted">(empty directory)</td></tr>}
      </tbody>
    </table>
  </section>;
}
