/**
 * Firecracker version detection (`firecracker --version`) and the feature
 * gates of docs/firecracker.md, "Versions": a request must never carry a field the running
 * binary does not know (unknown fields are a 400), and some behaviours
 * (logger file creation, snapshot format lines) changed between releases.
 */
import { spawn } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { HostFailureError } from '../../core/errors.js';

export interface FirecrackerVersionInfo {
  major: number;
  minor: number;
  patch: number;
  /** As printed, e.g. "1.16.1" or "1.17.0-dev". */
  text: string;
}

export interface FirecrackerFeatures {
  /** UFFD handshake `page_size`; handshake connection kept open (1.12). */
  uffdPageSize: boolean;
  /** `network_overrides` on /snapshot/load (1.12). */
  networkOverrides: boolean;
  /** `track_dirty_pages` on /snapshot/load; before, only `enable_diff_snapshots` (1.13). */
  trackDirtyPagesOnLoad: boolean;
  /** Diff snapshots without dirty tracking, mincore based (1.13). */
  diffWithoutTracking: boolean;
  /** `--enable-pci` (1.13). */
  pci: boolean;
  /** PUT /serial (1.14). */
  serial: boolean;
  /** Logger and metrics files are created when missing (1.14); before, they must exist. */
  createsLogFiles: boolean;
  /** `imds_compat` in /mmds/config (1.14, after the 1.13 swagger typo). */
  imdsCompat: boolean;
  /** `vsock_override` and `clock_realtime` on /snapshot/load, network `mtu` (1.16). */
  vsockOverride: boolean;
  clockRealtime: boolean;
  netMtu: boolean;
  /** Vsock after restore without the known bugs (1.16.1, docs/firecracker.md, "Versions"). */
  reliableVsockAfterRestore: boolean;
}

/** Oldest release the driver drives (snapshots GA in 1.13; older ones lack fields the driver relies on). */
export const MIN_FIRECRACKER = { major: 1, minor: 10, patch: 0 };
/** The API spec the types were generated from. */
export const SPEC_VERSION = '1.16.1';

export function parseFirecrackerVersion(output: string): FirecrackerVersionInfo {
  const m = /Firecracker\s+v?(\d+)\.(\d+)\.(\d+)(\S*)/i.exec(output) ?? /\bv?(\d+)\.(\d+)\.(\d+)(\S*)/.exec(output);
  if (!m) throw new HostFailureError(`cannot find a version in the output of firecracker --version: ${JSON.stringify(output.slice(0, 200))}`);
  const [major, minor, patch] = [Number(m[1]), Number(m[2]), Number(m[3])];
  return { major, minor, patch, text: `${major}.${minor}.${patch}${m[4] ?? ''}` };
}

export function atLeast(v: FirecrackerVersionInfo, major: number, minor: number, patch = 0): boolean {
  if (v.major !== major) return v.major > major;
  if (v.minor !== minor) return v.minor > minor;
  return v.patch >= patch;
}

export function featuresOf(v: FirecrackerVersionInfo): FirecrackerFeatures {
  return {
    uffdPageSize: atLeast(v, 1, 12),
    networkOverrides: atLeast(v, 1, 12),
    trackDirtyPagesOnLoad: atLeast(v, 1, 13),
    diffWithoutTracking: atLeast(v, 1, 13),
    pci: atLeast(v, 1, 13),
    serial: atLeast(v, 1, 14),
    createsLogFiles: atLeast(v, 1, 14),
    imdsCompat: atLeast(v, 1, 14),
    vsockOverride: atLeast(v, 1, 16),
    clockRealtime: atLeast(v, 1, 16),
    netMtu: atLeast(v, 1, 16),
    reliableVsockAfterRestore: atLeast(v, 1, 16, 1),
  };
}

export function checkSupported(v: FirecrackerVersionInfo): void {
  if (!atLeast(v, MIN_FIRECRACKER.major, MIN_FIRECRACKER.minor, MIN_FIRECRACKER.patch)) {
    throw new HostFailureError(`Firecracker ${v.text} is too old: Hearth needs ${MIN_FIRECRACKER.major}.${MIN_FIRECRACKER.minor} or newer (1.16.1 recommended)`);
  }
}

/**
 * Snapshots load only into the release line that wrote them (same snapshot
 * format MAJOR, MINOR not newer; in practice the same Firecracker minor).
 */
export function snapshotCompatible(writtenBy: string, running: FirecrackerVersionInfo): boolean {
  const w = parseFirecrackerVersion(`v${writtenBy}`);
  return w.major === running.major && w.minor === running.minor;
}

const cache = new Map<string, { mtimeMs: number; v: Promise<FirecrackerVersionInfo> }>();

/** Runs `<binary> --version` (cached per binary and mtime). */
export async function detectFirecrackerVersion(binary: string, timeoutMs = 5000): Promise<FirecrackerVersionInfo> {
  let mtimeMs = 0;
  try { mtimeMs = (await stat(binary)).mtimeMs; } catch { /* resolved through PATH */ }
  const hit = cache.get(binary);
  if (hit && hit.mtimeMs === mtimeMs) return hit.v;
  const v = runVersion(binary, timeoutMs);
  cache.set(binary, { mtimeMs, v });
  v.catch(() => cache.delete(binary));
  return v;
}

function runVersion(binary: string, timeoutMs: number): Promise<FirecrackerVersionInfo> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, ['--version'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const timer = setTimeout(() => { child.kill('SIGKILL'); }, timeoutMs);
    child.stdout!.on('data', (d: Buffer) => { out += d.toString('utf8'); });
    child.stderr!.on('data', (d: Buffer) => { out += d.toString('utf8'); });
    child.once('error', (err) => { clearTimeout(timer); reject(new HostFailureError(`cannot run ${binary} --version: ${err.message}`, { cause: err })); });
    child.once('close', (code, sig) => {
      clearTimeout(timer);
      if (code !== 0) { reject(new HostFailureError(`${binary} --version failed (${sig ?? `exit ${code}`}): ${out.trim().slice(0, 300)}`)); return; }
      try { resolve(parseFirecrackerVersion(out)); } catch (err) { reject(err); }
    });
  });
}
