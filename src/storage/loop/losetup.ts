import { readdir, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { HostFailureError } from '../../core/errors.js';
import type { CommandRunner } from '../../util/exec.js';

/**
 * Thin wrappers over `losetup` (every call goes through the injected
 * CommandRunner so tests can answer like the real tool and inject failures)
 * plus the two sysfs reads that have no command (read-only flag, holders).
 */

export interface LoopInfo {
  /** `/dev/loopN` */
  device: string;
  /** Absolute path of the backing file as the kernel reports it (" (deleted)" stripped). */
  backingFile: string;
  readOnly: boolean;
  /** "7:3" */
  majMin: string;
  /** The backing file was unlinked while attached. */
  deleted: boolean;
}

const LIST_COLUMNS = 'NAME,MAJ:MIN,BACK-FILE,RO';

interface LosetupJson { loopdevices?: Array<Record<string, unknown>> }

function asBool(v: unknown): boolean {
  return v === true || v === 1 || v === '1' || v === 'true';
}

/** Parse `losetup --json --list --output NAME,MAJ:MIN,BACK-FILE,RO`. */
export function parseLosetupJson(stdout: string): LoopInfo[] {
  const text = stdout.trim();
  if (text === '') return [];
  let parsed: LosetupJson;
  try {
    parsed = JSON.parse(text) as LosetupJson;
  } catch (err) {
    throw new HostFailureError(`losetup --json printed something that is not JSON: ${text.slice(0, 200)}`, { cause: err });
  }
  const out: LoopInfo[] = [];
  for (const d of parsed.loopdevices ?? []) {
    const device = typeof d['name'] === 'string' ? d['name'] : '';
    let back = typeof d['back-file'] === 'string' ? d['back-file'].trim() : '';
    if (!device || !back) continue;
    const deleted = back.endsWith(' (deleted)');
    if (deleted) back = back.slice(0, -' (deleted)'.length);
    out.push({
      device,
      backingFile: back,
      readOnly: asBool(d['ro']),
      majMin: typeof d['maj:min'] === 'string' ? d['maj:min'].trim() : '',
      deleted,
    });
  }
  return out;
}

/** Every attached loop device (or just `device`), with its backing file. */
export async function listLoops(run: CommandRunner, signal?: AbortSignal, device?: string): Promise<LoopInfo[]> {
  const args = ['--json', '--list', '--output', LIST_COLUMNS];
  if (device) args.push(device);
  // Listing one device that is not attached exits 1 with nothing useful; treat as "none".
  const r = await run('losetup', args, { signal, allowFailure: device !== undefined });
  if (r.code !== 0) return [];
  return parseLosetupJson(r.stdout);
}

/** Attach `path` to the first free loop device; returns `/dev/loopN`. */
export async function attachLoop(run: CommandRunner, path: string, opts: { readOnly: boolean; signal?: AbortSignal }): Promise<string> {
  const args = ['--find', '--show'];
  if (opts.readOnly) args.push('--read-only');
  args.push(path);
  const { stdout } = await run('losetup', args, { signal: opts.signal });
  const device = stdout.trim().split('\n').pop()?.trim() ?? '';
  if (!/^\/dev\/loop\d+$/.test(device)) throw new HostFailureError(`losetup ${args.join(' ')} printed "${stdout.trim()}", not a loop device`);
  return device;
}

/**
 * Detach `device`, but only while it is still backed by `expectedBackingFile`:
 * loop numbers are reused, and on a shared host the number we once attached
 * may by now belong to someone else. Already detached counts as done.
 * Returns false when there was nothing (of ours) to detach.
 */
export async function detachLoop(run: CommandRunner, device: string, expectedBackingFile: string, signal?: AbortSignal): Promise<boolean> {
  const [info] = await listLoops(run, signal, device);
  if (!info || info.backingFile !== expectedBackingFile) return false;
  const r = await run('losetup', ['-d', device], { signal, allowFailure: true });
  if (r.code === 0) return true;
  if (/No such device or address|No such device\b/.test(r.stderr)) return false;
  throw new HostFailureError(`losetup -d ${device} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
}

/**
 * Devices stacked on a loop device (e.g. the dm-N of every snapshot that uses
 * it as origin): /sys/block/loopN/holders. Empty when sysfs has no such entry.
 */
export async function loopHolders(device: string, sysfsRoot = '/sys'): Promise<string[]> {
  try {
    return await readdir(join(sysfsRoot, 'block', basename(device), 'holders'));
  } catch {
    return [];
  }
}

/** /sys/block/loopN/ro as a boolean (null when sysfs has no such entry). */
export async function loopReadOnly(device: string, sysfsRoot = '/sys'): Promise<boolean | null> {
  try {
    return (await readFile(join(sysfsRoot, 'block', basename(device), 'ro'), 'utf8')).trim() === '1';
  } catch {
    return null;
  }
}

/** /sys/block/loopN/loop/backing_file (null when not attached). */
export async function loopBackingFile(device: string, sysfsRoot = '/sys'): Promise<string | null> {
  try {
    return (await readFile(join(sysfsRoot, 'block', basename(device), 'loop', 'backing_file'), 'utf8')).trim();
  } catch {
    return null;
  }
}
