import { HostFailureError, throwIfAborted } from '../../core/errors.js';
import type { Logger } from '../../core/log.js';
import type { CommandRunner } from '../../util/exec.js';
import { sleep } from '../../util/abort.js';

/**
 * `dmsetup` through the injected CommandRunner. Only `remove` retries, and
 * only on "Device or resource busy" (docs/ARCHITECTURE.md, "Retries"): a device that was just
 * closed can stay busy for a moment (udev's blkid probe, a late close of the
 * VMM's fd). Anything else, "no such device", "permission denied", a missing
 * driver, is not going to change by waiting and is returned at once.
 */

/** 'no-driver': the kernel has no device-mapper, so no dm device can exist either. */
export type DmErrorKind = 'busy' | 'missing' | 'no-driver' | 'other';

export class DmsetupError extends HostFailureError {
  constructor(message: string, readonly kind: DmErrorKind, readonly attempts: number, readonly stderr: string) {
    super(message);
  }
}

/** Sort a failed dmsetup's stderr into busy / missing / other. */
export function classifyDmError(stderr: string): DmErrorKind {
  // The control node: no access is not "the device is gone"; no driver means no device can exist.
  if (/mapper\/control|Failure to communicate with kernel/i.test(stderr)) {
    return /Permission denied|Operation not permitted/i.test(stderr) ? 'other' : 'no-driver';
  }
  if (/Device or resource busy/i.test(stderr)) return 'busy';
  if (/No such device or address|No such device\b|Device does not exist|\bnot found\b/i.test(stderr)) return 'missing';
  return 'other';
}

export interface RetryPolicy {
  /** Total `dmsetup remove` runs, first one included. */
  maxAttempts: number;
  /** Wait after the first busy failure; doubled after each further one. */
  initialDelayMs: number;
  /** Cap for one wait. */
  maxDelayMs: number;
}

/** 10 runs, waits 50, 100, 200, 400, 800, 1600, 1600, 1600, 1600 ms: ~8 s in all. */
export const DEFAULT_REMOVE_RETRY: RetryPolicy = { maxAttempts: 10, initialDelayMs: 50, maxDelayMs: 1600 };

/** The wait before attempt `attempt + 1` (attempt counts from 1). */
export function backoffDelay(policy: RetryPolicy, attempt: number): number {
  return Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** (attempt - 1));
}

export interface SnapshotTable {
  sectors: number;
  origin: string;
  cow: string;
  persistent: boolean;
  chunkSectors: number;
}

/** `0 <sectors> snapshot <origin> <cow> P <chunk>`: one persistent snapshot target over the whole origin. */
export function snapshotTable(t: { sectors: number; origin: string; cow: string; chunkSectors: number }): string {
  if (!Number.isSafeInteger(t.sectors) || t.sectors <= 0) throw new HostFailureError(`snapshot table: bad origin size ${t.sectors} sectors`);
  return `0 ${t.sectors} snapshot ${t.origin} ${t.cow} P ${t.chunkSectors}`;
}

/** Parse what `dmsetup table <name>` prints for a snapshot target (devices as major:minor). */
export function parseSnapshotTable(line: string): SnapshotTable | null {
  const f = line.trim().split(/\s+/);
  if (f.length < 7 || f[0] !== '0' || f[2] !== 'snapshot') return null;
  const sectors = Number(f[1]);
  const chunkSectors = Number(f[6]);
  if (!Number.isSafeInteger(sectors) || !Number.isSafeInteger(chunkSectors)) return null;
  return { sectors, origin: f[3]!, cow: f[4]!, persistent: /^P/i.test(f[5]!), chunkSectors };
}

export type SnapshotStatus =
  | { state: 'valid'; allocatedSectors: number; totalSectors: number; metadataSectors: number }
  | { state: 'invalid' | 'overflow' | 'merge-failed' | 'unknown'; raw: string };

/** Parse `dmsetup status <name>`: `0 <len> snapshot <alloc>/<total> <meta>` or `... snapshot Invalid`. */
export function parseSnapshotStatus(line: string): SnapshotStatus {
  const raw = line.trim();
  const m = /\bsnapshot\s+(\d+)\/(\d+)\s+(\d+)/.exec(raw);
  if (m) return { state: 'valid', allocatedSectors: Number(m[1]), totalSectors: Number(m[2]), metadataSectors: Number(m[3]) };
  if (/\bInvalid\b/.test(raw)) return { state: 'invalid', raw };
  if (/\bOverflow\b/.test(raw)) return { state: 'overflow', raw };
  if (/\bMerge failed\b/i.test(raw)) return { state: 'merge-failed', raw };
  return { state: 'unknown', raw };
}

function failure(cmd: string, code: number, stderr: string, stdout: string): string {
  return `${cmd} failed (exit ${code}): ${(stderr.trim() || stdout.trim()).replace(/\s*\n\s*/g, '; ')}`;
}

export class Dmsetup {
  readonly retry: RetryPolicy;

  constructor(private readonly run: CommandRunner, retry: Partial<RetryPolicy> = {}, private readonly log?: Logger) {
    this.retry = { ...DEFAULT_REMOVE_RETRY, ...retry };
    if (!(this.retry.maxAttempts >= 1)) throw new HostFailureError('dmsetup retry: maxAttempts must be at least 1');
  }

  /** `dmsetup create <name> --table <table>`. */
  async create(name: string, table: string, signal?: AbortSignal): Promise<void> {
    const r = await this.run('dmsetup', ['create', name, '--table', table], { signal, allowFailure: true });
    if (r.code !== 0) {
      throw new DmsetupError(failure(`dmsetup create ${name}`, r.code, r.stderr, r.stdout), classifyDmError(r.stderr), 1, r.stderr);
    }
  }

  /**
   * `dmsetup remove <name>`, retried with bounded exponential backoff only
   * while it fails with "Device or resource busy". Aborting `signal` stops at
   * once, also in the middle of a wait. With `missingOk`, a device that does
   * not exist counts as removed (idempotent destroy); otherwise it is an error
   * like any other, returned without retrying.
   */
  async remove(name: string, signal: AbortSignal, opts: { missingOk?: boolean } = {}): Promise<{ attempts: number; missing: boolean }> {
    for (let attempt = 1; ; attempt++) {
      throwIfAborted(signal);
      const r = await this.run('dmsetup', ['remove', name], { signal, allowFailure: true });
      if (r.code === 0) return { attempts: attempt, missing: false };
      const kind = classifyDmError(r.stderr);
      if ((kind === 'missing' || kind === 'no-driver') && opts.missingOk) return { attempts: attempt, missing: true };
      if (kind !== 'busy') {
        throw new DmsetupError(failure(`dmsetup remove ${name}`, r.code, r.stderr, r.stdout), kind, attempt, r.stderr);
      }
      if (attempt >= this.retry.maxAttempts) {
        throw new DmsetupError(`dmsetup remove ${name}: device still busy after ${attempt} attempts: ${r.stderr.trim().split('\n')[0] ?? ''}`, 'busy', attempt, r.stderr);
      }
      const delay = backoffDelay(this.retry, attempt);
      this.log?.warn({ device: name, attempt, delayMs: delay }, 'dmsetup remove: device busy, retrying');
      await sleep(delay, signal);
    }
  }

  /** Does a device of this name exist? Errors other than "does not exist" are thrown. */
  async exists(name: string, signal?: AbortSignal): Promise<boolean> {
    const r = await this.run('dmsetup', ['info', name], { signal, allowFailure: true });
    if (r.code === 0) return true;
    const kind = classifyDmError(r.stderr);
    if (kind === 'missing' || kind === 'no-driver') return false;
    throw new DmsetupError(failure(`dmsetup info ${name}`, r.code, r.stderr, r.stdout), classifyDmError(r.stderr), 1, r.stderr);
  }

  /** The device's table, or null when it does not exist. */
  async table(name: string, signal?: AbortSignal): Promise<string | null> {
    const r = await this.run('dmsetup', ['table', name], { signal, allowFailure: true });
    if (r.code === 0) return r.stdout.trim();
    if (['missing', 'no-driver'].includes(classifyDmError(r.stderr))) return null;
    throw new DmsetupError(failure(`dmsetup table ${name}`, r.code, r.stderr, r.stdout), classifyDmError(r.stderr), 1, r.stderr);
  }

  /** `dmsetup status <name>` (null when it does not exist). */
  async status(name: string, signal?: AbortSignal): Promise<string | null> {
    const r = await this.run('dmsetup', ['status', name], { signal, allowFailure: true });
    if (r.code === 0) return r.stdout.trim();
    if (['missing', 'no-driver'].includes(classifyDmError(r.stderr))) return null;
    throw new DmsetupError(failure(`dmsetup status ${name}`, r.code, r.stderr, r.stdout), classifyDmError(r.stderr), 1, r.stderr);
  }

  /** Names of every dm device (`dmsetup ls`). */
  async list(signal?: AbortSignal): Promise<string[]> {
    const { stdout } = await this.run('dmsetup', ['ls'], { signal });
    const names: string[] = [];
    for (const line of stdout.split('\n')) {
      const t = line.trim();
      if (!t || /^No devices found/i.test(t)) continue;
      const name = t.split(/\s+/)[0];
      if (name) names.push(name);
    }
    return names;
  }
}
