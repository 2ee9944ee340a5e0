import { useEffect, useState } from 'react';
import { api, getApiKey, setApiKey, UNAUTHORIZED_EVENT } from './api.js';
import { Logo } from './icons.js';
import { Link, usePath } from './util.js';
import { SandboxesPage } from './pages/Sandboxes.js';
import { SandboxDetailPage } from './pages/SandboxDetail.js';
import { SnapshotsPage } from './pages/Snapshots.js';
import { TemplatesPage } from './pages/Templates.js';
import { TemplateDetailPage } from './pages/TemplateDetail.js';
import { TemplateBuildPage } from './pages/TemplateBuild.js';
import { HostPage } from './pages/Host.js';
import { KeysPage } from './pages/Keys.js';

const NAV = [
  { to: '/sandboxes', label: 'Sandboxes' },
  { to: '/snapshots', label: 'Snapshots' },
  { to: '/templates', label: 'Templates' },
  { to: '/host', label: 'Host' },
  { to: '/keys', label: 'API keys' },
];

export function App() {
  const path = usePath();
  const [version, setVersion] = useState<string>();
  const [needKey, setNeedKey] = useState(false);
  useEffect(() => { api.health().then((h) => setVersion(h.version), () => undefined); }, []);
  useEffect(() => {
    const l = () => setNeedKey(true);
    window.addEventListener(UNAUTHORIZED_EVENT, l);
    return () => window.removeEventListener(UNAUTHORIZED_EVENT, l);
  }, []);
  const parts = path.split('/').filter(Boolean);
  const section = parts[0] ?? 'sandboxes';
  let page;
  if (section === 'sandboxes' && parts[1]) page = <SandboxDetailPage id={parts[1]} />;
  else if (section === 'sandboxes') page = <SandboxesPage />;
  else if (section === 'snapshots') page = <SnapshotsPage />;
  else if (section === 'templates' && parts[1] && parts[2] === 'builds' && parts[3]) page = <TemplateBuildPage id={decodeURIComponent(parts[1])} buildID={decodeURIComponent(parts[3])} />;
  else if (section === 'templates' && parts[1]) page = <TemplateDetailPage id={decodeURIComponent(parts[1])} />;
  else if (section === 'templates') page = <TemplatesPage />;
  else if (section === 'host') page = <HostPage />;
  else if (section === 'keys') page = <KeysPage />;
  else page = <div className="card"><h2>Not found</h2><p>No page at <code>{path}</code>. <Link to="/sandboxes">Sandboxes</Link></p></div>;
  useEffect(() => {
    const name = NAV.find((n) => n.to === `/${section}`)?.label ?? 'Hearth';
    document.title = parts[1] ? `${parts[1]} · Hearth` : `${name} · Hearth`;
  }, [path]); // eslint-disable-line react-hooks/exhaustive-deps
  return <div className="app">
    <header className="top">
      <Link to="/sandboxes" className="brand"><Logo /> Hearth</Link>
      <nav>{NAV.map((n) => <Link key={n.to} to={n.to} className={`/${section}` === n.to ? 'active' : ''}>{n.label}</Link>)}</nav>
      <span className="version">{version ? `hearthd ${version}` : ''}</span>
    </header>
    <main>{needKey && <ApiKeyForm onSaved={() => { setNeedKey(false); }} />}{page}</main>
  </div>;
}

function ApiKeyForm({ onSaved }: { onSaved: () => void }) {
  const [key, setKey] = useState(getApiKey());
  return <form className="card apikey" onSubmit={(e) => { e.preventDefault(); setApiKey(key.trim()); onSaved(); }}>
    <strong>hearthd wants an API key.</strong>
    <span className="muted small">Create one with <code>hearth keys create</code>; it is kept in this browser's local storage.</span>
    <div className="runner"><input type="password" className="mono" value={key} onChange={(e) => setKey(e.target.value)} placeholder="X-API-Key" aria-label="API key" />
      <button type="submit" className="primary">Save</button></div>
  </form>;
}
