import type { ReactNode } from 'react';
import { api } from '../api.js';
import { ErrorBox, usePoll } from '../util.js';

/** GET /doctor as hearthd reports it (src/daemon/doctor.ts); fields may be missing on other versions. */
interface Doctor {
  host?: { kernel: string; cpus: number; memoryMib: number; root: boolean };
  kvm?: { device: boolean; runsGuests: boolean; detail: string };
  qemu?: { found: boolean; version: string | null; ignoreShared: boolean; detail: string; privilege: string };
  firecracker?: { found: boolean; version: string | null };
  storage?: { dataDir: string; deviceMapper: boolean; reflink: boolean };
  userfaultfd?: boolean;
  netns?: { available: boolean; detail: string };
  chosen?: { vmm: string; vmmReason: string; accel: string; storage: string; storageReason: string; network: string; networkReason: string };
  egress?: { possible: boolean; interface: string | null; why: string };
}

/** A capability: "available" in green, or "not available" in grey with what it would bring (none is required). */
function Cap({ on, yes = 'available', no = 'not available', note }: { on: boolean | undefined; yes?: string; no?: string; note?: string }) {
  if (on === undefined) return <span className="muted">—</span>;
  return <span><span className={on ? 'status-ok' : 'status-off'}>{on ? yes : no}</span>{note && <span className="muted small"> · {note}</span>}</span>;
}

function Section({ title, note, rows, wide }: { title: string; note?: string; rows: [string, ReactNode][]; wide?: boolean }) {
  return <div className={`doctor-section${wide ? ' wide' : ''}`}><h3>{title}{note && <span className="muted"> · {note}</span>}</h3>
    <table className="kv"><tbody>{rows.map(([k, v]) => <tr key={k}><th>{k}</th><td>{v}</td></tr>)}</tbody></table></div>;
}

/** What the host can do and what hearthd uses, in words; the raw report is below for the curious. */
export function HostPage() {
  const doc = usePoll(() => api.doctor() as Promise<Doctor>, 10000);
  const d = doc.data;
  return <section className="card">
    <div className="card-head"><h2>Host</h2><button type="button" onClick={doc.refresh}>Refresh</button></div>
    <ErrorBox error={doc.error && `Could not ask hearthd about this host: ${doc.error}`} />
    {d === undefined && !doc.error && <p className="muted">Running checks…</p>}
    {d !== undefined && <div data-testid="doctor" className="doctor">
      {d.chosen && <Section title="What Hearth uses" wide rows={[
        ['Virtual machines', <>{d.chosen.vmm === 'firecracker' ? 'Firecracker' : 'QEMU'} with {d.chosen.accel === 'kvm' ? 'KVM (hardware virtualisation)' : d.chosen.accel === 'tcg' ? 'software emulation (TCG, slower)' : d.chosen.accel}<div className="muted small">{d.chosen.vmmReason}</div></>],
        ['Sandbox disks', <>{({ reflink: 'reflink clones (instant copies)', dm: 'device-mapper snapshots', copy: 'full copies (slow; no reflinks here)' } as Record<string, string>)[d.chosen.storage] ?? d.chosen.storage}<div className="muted small">{d.chosen.storageReason}</div></>],
        ['Networking', <>{d.chosen.network === 'netns' ? 'a network namespace per sandbox' : 'user-mode networking'}<div className="muted small">{d.chosen.networkReason}</div></>],
        ...(d.egress ? [['Internet from sandboxes', <><span className={d.egress.possible ? 'status-ok' : 'status-warn'}>{d.egress.possible ? `possible, via ${d.egress.interface}` : 'not possible'}</span><div className="muted small">{d.egress.why}</div></>] as [string, ReactNode]] : []),
      ]} />}
      {d.host && <Section title="Host" rows={[
        ['Kernel', <span className="mono">{d.host.kernel}</span>],
        ['CPUs', d.host.cpus],
        ['Memory', `${(d.host.memoryMib / 1024).toFixed(1)} GiB`],
        ['hearthd runs as', d.host.root ? 'root' : 'an unprivileged user (no network namespaces, no device-mapper)'],
      ]} />}
      <Section title="Capabilities" note="none is required; each makes sandboxes faster or better isolated" rows={[
        ['KVM', <Cap on={d.kvm?.runsGuests} yes="runs guests" no={d.kvm?.device ? 'present but cannot run guests here' : 'not available'} note={d.kvm?.runsGuests ? undefined : 'VMs run under software emulation'} />],
        ['QEMU', d.qemu?.found ? <span>{d.qemu.version} <span className="muted small">· {d.qemu.privilege}</span></span> : <span className="status-warn">not found: install qemu-system-x86</span>],
        ['Firecracker', <Cap on={d.firecracker?.found} yes={d.firecracker?.version ?? 'found'} no="not installed" note={d.firecracker?.found ? undefined : 'used with KVM when installed'} />],
        ['Reflinks in the data dir', <Cap on={d.storage?.reflink} note={d.storage ? `${d.storage.dataDir}${d.storage.reflink ? '' : '; `hearth storage init` adds them'}` : undefined} />],
        ['device-mapper', <Cap on={d.storage?.deviceMapper} />],
        ['userfaultfd', <Cap on={d.userfaultfd} note="lazy memory restores for Firecracker" />],
        ['Network namespaces', <Cap on={d.netns?.available} note={d.netns?.detail} />],
      ]} />
    </div>}
    {d !== undefined && <details><summary>The full report (JSON)</summary><pre className="output">{JSON.stringify(d, null, 2)}</pre></details>}
  </section>;
}
