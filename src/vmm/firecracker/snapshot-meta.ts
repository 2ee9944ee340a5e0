/**
 * `firecracker.json`, written beside each snapshot's `vmstate` and `memory`:
 * what the snapshot is tied to (docs/firecracker.md, "What a snapshot holds" and
 * "Compatibility"). Checked before a
 * restore: the Firecracker release line must match, the memory size must be
 * the VM's, and the recorded tap/vsock names decide whether the load needs
 * `network_overrides` / `vsock_override`.
 */
import { open, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { HostFailureError, errorMessage } from '../../core/errors.js';

export const SNAPSHOT_META_FILE = 'firecracker.json';

export interface FirecrackerSnapshotMeta {
  format: 1;
  firecrackerVersion: string;
  snapshotType: 'Full' | 'Diff';
  /** A Diff written onto a copy of the base memory: the memory file is complete. */
  memoryComplete: boolean;
  vcpus: number;
  memoryMib: number;
  hugePages: 'None' | '2M';
  /** Recorded device names (relative to the VM root). */
  drives: { id: string; path: string }[];
  tapName?: string;
  vsock: { udsPath: string; guestCid: number };
  createdAt: string;
}

export async function readSnapshotMeta(dir: string): Promise<FirecrackerSnapshotMeta | undefined> {
  let text: string;
  try { text = await readFile(path.join(dir, SNAPSHOT_META_FILE), 'utf8'); } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new HostFailureError(`snapshot ${dir}: cannot read ${SNAPSHOT_META_FILE}: ${errorMessage(err)}`);
  }
  try {
    const m = JSON.parse(text) as FirecrackerSnapshotMeta;
    if (m.format !== 1) throw new Error(`unknown format ${String(m.format)}`);
    return m;
  } catch (err) {
    throw new HostFailureError(`snapshot ${dir}: bad ${SNAPSHOT_META_FILE}: ${errorMessage(err)}`);
  }
}

export async function writeSnapshotMeta(dir: string, meta: FirecrackerSnapshotMeta): Promise<void> {
  const p = path.join(dir, SNAPSHOT_META_FILE);
  const tmp = `${p}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(JSON.stringify(meta, null, 2) + '\n');
    await fh.sync();
  } finally {
    await fh.close();
  }
  try { await rename(tmp, p); } catch (err) { await rm(tmp, { force: true }); throw err; }
}
