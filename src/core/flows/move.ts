/**
 * A paused sandbox changing hosts (docs/cluster.md, "Moving a paused
 * sandbox"): what the node that has it describes, and how the node that takes
 * it adopts the files it received. The core knows nothing of the transport or
 * of PostgreSQL: the cluster layer (src/cluster/move.ts) streams the files and
 * decides who owns the sandbox; these functions keep the ledger and the paused
 * capture's metadata true on each side.
 */
import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Holdings } from '../holdings.js';
import { ConflictError, HostFailureError } from '../errors.js';
import type { SandboxRecord, Template } from '../types.js';
import type { DetachedDisk, RootfsBackendKind } from '../../storage/types.js';
import type { Store } from '../../store/store.js';
import { regularFiles, writeFileAtomic } from '../../util/fs.js';
import { pausedAt } from '../layout.js';
import type { PausedMeta } from './pause.js';

/** What another node needs to take over a paused sandbox: its record, what its files need there, and the files. */
export interface PausedExport {
  /** The record as stored here (its tokens included: the sandbox keeps them where it goes). */
  record: SandboxRecord;
  /** The template it was made from: the receiving node must have the same image (same id and image hash). */
  template: { id: string; imageHash: string };
  /** The storage backend of its disk: dm disks need a dm host (they read their base), file disks a file backend. */
  backend: RootfsBackendKind;
  /** false: a filesystem-only capture (the resume boots). */
  memory: boolean;
  /** The paused capture's files (plain names in one directory) and their sizes. */
  files: { name: string; size: number }[];
}

/** Disks of one family can move between hosts of that family: a dm CoW file needs dm, a standalone image a file backend. */
export function diskFamily(k: RootfsBackendKind): 'dm' | 'file' {
  return k === 'dm' ? 'dm' : 'file';
}

/** Describes a paused sandbox for a move; refuses (409) one whose capture is incomplete or cannot be rebuilt elsewhere. */
export async function describePaused(ledger: Holdings, rec: SandboxRecord, template: Template): Promise<{ exp: PausedExport; dir: string }> {
  const capture = ledger.find(rec.id, 'paused');
  const disk = capture?.holding.disk;
  if (!capture || !capture.holding.complete || !disk) throw new ConflictError(`sandbox ${rec.id} has no complete paused capture to move`);
  if (disk.backend === 'dm' && disk.base.id !== template.id) {
    throw new ConflictError(`sandbox ${rec.id} cannot move: its dm disk reads ${disk.base.id}'s image, which other nodes do not have (only disks over the template's own image move)`);
  }
  const dir = capture.holding.dir;
  const { files, others } = await regularFiles(dir);
  // A capture is a flat directory of regular files; anything else is not ours to send.
  if (others.length) throw new HostFailureError(`paused capture of ${rec.id} holds ${others[0]}, which is not a regular file`);
  if (!files.some((f) => f.name === basename(pausedAt(dir).meta))) throw new ConflictError(`sandbox ${rec.id}'s paused capture has no meta.json`);
  return {
    exp: { record: rec, template: { id: template.id, imageHash: template.imageHash }, backend: disk.backend, memory: capture.holding.memory !== false, files },
    dir,
  };
}

/** Why this host cannot take the sandbox described (409 text), or null. */
export function importRefusal(exp: PausedExport, template: Template | undefined, storageKind: RootfsBackendKind): string | null {
  const id = exp.record.id;
  if (!template || template.id !== exp.template.id) return `sandbox ${id} needs template ${exp.template.id}, which this node does not have`;
  if (template.imageHash !== exp.template.imageHash) return `sandbox ${id} needs template ${exp.template.id} at image ${exp.template.imageHash.slice(0, 12)}; this node has ${template.imageHash.slice(0, 12)}`;
  if (diskFamily(exp.backend) !== diskFamily(storageKind)) return `sandbox ${id}'s disk was made by the ${exp.backend} backend; this node's storage (${storageKind}) cannot attach it`;
  return null;
}

/**
 * Makes the files received into `pausedDir` this node's paused sandbox: the
 * capture's disk token is rewritten to where the files are now (and to this
 * node's copy of the template image), then the record and its two holdings
 * (the sandbox dir and the paused capture) are written in one transaction.
 * The record keeps its id, tokens, metadata and lifecycle.
 */
export async function adoptPaused(store: Store, ledger: Holdings, exp: PausedExport, template: Template, sandboxDir: string, pausedDir: string): Promise<SandboxRecord> {
  const paths = pausedAt(pausedDir);
  const meta = JSON.parse(await readFile(paths.meta, 'utf8')) as PausedMeta;
  if (meta.sandboxId !== exp.record.id || !meta.disk) throw new HostFailureError(`the paused capture received for ${exp.record.id} does not describe it`);
  const disk: DetachedDisk = {
    ...meta.disk,
    dir: pausedDir,
    files: meta.disk.files.map((f) => join(pausedDir, basename(f))),
    // A file disk is standalone (the base only names where it came from); a dm disk reads this node's copy of the same image.
    base: { id: template.id, path: template.rootfsPath, sizeBytes: template.rootfsSizeBytes },
  };
  await writeFileAtomic(paths.meta, JSON.stringify({ ...meta, disk }, null, 2));
  const rec: SandboxRecord = { ...exp.record, state: 'paused', agent: null, vmm: null, disk: null, network: null };
  store.atomically(() => {
    store.insertSandbox(rec);
    ledger.record(rec, { kind: 'dir', path: sandboxDir });
    ledger.record(rec, { kind: 'paused', dir: pausedDir, disk, complete: true, memory: exp.memory });
  });
  return rec;
}

/** Removes a sandbox's rows (record, holdings, journal) without touching the host: it lives on another node now. */
export function forgetRows(store: Store, ledger: Holdings, rec: SandboxRecord): void {
  const ids = ledger.list(rec.id).map((r) => r.id);
  store.deleteSandboxRows(rec.id);
  ledger.dropObjects(ids);
}
