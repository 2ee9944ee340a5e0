import { randomBytes } from 'node:crypto';
import { mkdir, open, realpath, rename, unlink } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { AbortedError, ConfigError, ConflictError, HostFailureError, InternalError, NotFoundError, errorMessage, throwIfAborted } from '../../core/errors.js';
import type { Logger } from '../../core/log.js';
import { runCommand, type CommandRunner } from '../../util/exec.js';
import { allocatedBytes, exists } from '../../util/fs.js';
import { listLoops, type LoopInfo } from '../loop/losetup.js';
import type { LoopRef, LoopRegistry, WritableLoop } from '../loop/registry.js';
import type { BaseImage, DetachedDisk, RootDisk, RootfsBackend } from '../types.js';
import { Dmsetup, DmsetupError, parseSnapshotStatus, parseSnapshotTable, snapshotTable, type RetryPolicy, type SnapshotStatus } from './dmsetup.js';

export const DM_NAME_PREFIX = 'hearth-';
export const COW_FILE = 'cow.img';
export const DEFAULT_CHUNK_SECTORS = 8;

const SECTOR = 512;
/** dm-snapshot's persistent store: one 16-byte exception record per copied chunk. */
const EXCEPTION_BYTES = 16;

/**
 * CoW file size that can hold a copy of every chunk of the origin, so the
 * snapshot can never overflow: header chunk + one metadata chunk per
 * (chunkBytes/16) data chunks + the data chunks + a little slack
 * (dm-snap-persistent refuses a new exception unless one more chunk fits).
 * The file is sparse: only what the guest writes is allocated.
 */
export function fullCowBytes(originSectors: number, chunkSectors: number): number {
  const chunkBytes = chunkSectors * SECTOR;
  const dataChunks = Math.ceil(originSectors / chunkSectors);
  const perArea = chunkBytes / EXCEPTION_BYTES;
  const metadataChunks = Math.ceil(dataChunks / perArea);
  return (1 + metadataChunks + dataChunks + 8) * chunkBytes;
}

/** The dm device name of a sandbox: `hearth-<id>`. */
export function dmName(sandboxId: string, prefix = DM_NAME_PREFIX): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.+-]*$/.test(sandboxId) || prefix.length + sandboxId.length > 127) {
    throw new InternalError(`sandbox id "${sandboxId}" cannot name a device-mapper device`);
  }
  return `${prefix}${sandboxId}`;
}

export interface DmRootfsBackendOptions {
  /** `<dataDir>/sandboxes`: a running sandbox's CoW file is `<sandboxesDir>/<id>/cow.img`. */
  sandboxesDir: string;
  /** The shared, refcounted read-only loop devices of base images. */
  loops: LoopRegistry;
  run?: CommandRunner;
  /** Snapshot chunk size in 512-byte sectors (power of two, 8..2048). Default 8 (4 KiB). */
  chunkSectors?: number;
  /**
   * CoW file size in bytes. Default (undefined): large enough for a full
   * overwrite of the origin (`fullCowBytes`), so it never overflows and the
   * guest's own filesystem size is the write quota. A smaller value is a hard
   * host-side quota: when it fills, the kernel invalidates the snapshot and
   * every further read or write of the guest's root disk fails with EIO.
   */
  cowSizeBytes?: number;
  /** Retry policy of `dmsetup remove` on "Device or resource busy". */
  removeRetry?: Partial<RetryPolicy>;
  /** Bound for cleanup steps, which never use the caller's signal. Default 60 s. */
  cleanupTimeoutMs?: number;
  /** dm name prefix; default `hearth-`. */
  namePrefix?: string;
  log?: Logger;
}

/** What one sandbox's disk holds on the host; each field is cleared once released. */
interface DiskState {
  sandboxId: string;
  name: string;
  cowPath: string;
  /** 'maybe': `dmsetup create` ran and failed or was interrupted; check before removing. */
  dm: 'active' | 'maybe' | 'none';
  cow: WritableLoop | null;
  origin: LoopRef | null;
  /** Why `dmsetup remove` failed, while the stale device is still there. */
  stale: string | null;
}

type FileFate = 'unlink' | 'keep' | { moveTo: string };

/** `dmsetup remove` failed: the stale device still holds its CoW and origin loops, which were kept. */
export class DmDeviceStuckError extends HostFailureError {}

/**
 * dm-snapshot root disks (docs/storage.md, "dm-snapshot backend"). Per sandbox: a sparse CoW file on its
 * own writable loop device, and `hearth-<id>` = `0 <sectors> snapshot
 * <origin loop> <cow loop> P <chunk>` over the base image's shared read-only
 * loop device. Creation is O(1) whatever the image size.
 *
 * Release order (docs/ARCHITECTURE.md, "Pause order", steps 4-6): `dmsetup remove` (retried only while
 * busy) → detach the CoW loop → move or delete the CoW file → release the
 * origin reference. If the dm removal fails nothing after it runs: the stale
 * device still references both loops, and the error is a hard one.
 */
export class DmRootfsBackend implements RootfsBackend {
  readonly kind = 'dm' as const;
  /** The origin loop device reads the base image for as long as the disk exists. */
  readonly readsBase = true;
  readonly dm: Dmsetup;
  private readonly run: CommandRunner;
  private readonly loops: LoopRegistry;
  private readonly sandboxesDir: string;
  private readonly chunkSectors: number;
  private readonly cowSizeBytes: number | undefined;
  private readonly cleanupTimeoutMs: number;
  private readonly prefix: string;
  private readonly log: Logger | undefined;
  private readonly live = new Map<string, DiskState>();

  constructor(opts: DmRootfsBackendOptions) {
    this.run = opts.run ?? runCommand;
    this.loops = opts.loops;
    this.sandboxesDir = opts.sandboxesDir;
    this.chunkSectors = opts.chunkSectors ?? DEFAULT_CHUNK_SECTORS;
    const c = this.chunkSectors;
    if (!Number.isInteger(c) || c < 8 || c > 2048 || (c & (c - 1)) !== 0) {
      throw new ConfigError(`dm chunk size must be a power of two from 8 to 2048 sectors, got ${c}`, 'chunkSectors');
    }
    if (opts.cowSizeBytes !== undefined && !(Number.isSafeInteger(opts.cowSizeBytes) && opts.cowSizeBytes >= 16 * c * SECTOR)) {
      throw new ConfigError(`dm CoW size must be at least 16 chunks, got ${opts.cowSizeBytes}`, 'cowSizeBytes');
    }
    this.cowSizeBytes = opts.cowSizeBytes;
    this.cleanupTimeoutMs = opts.cleanupTimeoutMs ?? 60_000;
    this.prefix = opts.namePrefix ?? DM_NAME_PREFIX;
    this.log = opts.log;
    this.dm = new Dmsetup(this.run, opts.removeRetry, opts.log);
  }

  deviceName(sandboxId: string): string { return dmName(sandboxId, this.prefix); }
  devicePath(sandboxId: string): string { return `/dev/mapper/${this.deviceName(sandboxId)}`; }
  cowPath(sandboxId: string): string { return join(this.sandboxesDir, sandboxId, COW_FILE); }

  async create(sandboxId: string, base: BaseImage, signal: AbortSignal): Promise<RootDisk> {
    throwIfAborted(signal);
    const name = this.deviceName(sandboxId);
    const existing = this.live.get(sandboxId);
    if (existing && !isEmpty(existing)) throw new ConflictError(`sandbox ${sandboxId} already has a dm disk`);
    const st: DiskState = { sandboxId, name, cowPath: this.cowPath(sandboxId), dm: 'none', cow: null, origin: null, stale: null };
    let cowCreated = false;
    try {
      st.origin = await this.loops.acquire(base.path, signal);
      const sectors = await this.sectorsOf(st.origin.device, signal);
      await mkdir(dirname(st.cowPath), { recursive: true });
      // 'w' truncates: a fresh CoW must start all zeros (a zero header = a new persistent store).
      const fh = await open(st.cowPath, 'w', 0o600);
      cowCreated = true;
      try { await fh.truncate(this.cowSizeBytes ?? fullCowBytes(sectors, this.chunkSectors)); } finally { await fh.close(); }
      throwIfAborted(signal);
      st.cow = await this.loops.attachFile(st.cowPath, signal);
      await this.createDevice(st, sectors, signal);
    } catch (err) {
      await this.unwind(st, cowCreated ? 'unlink' : 'keep', err, 'create');
      throw err;
    }
    this.live.set(sandboxId, st);
    return this.diskOf(st, base);
  }

  /**
   * Pause: remove the dm device (retried while busy), detach the CoW loop,
   * move the CoW file to `<intoDir>/cow.img`, release the origin reference.
   * A failed removal throws DmDeviceStuckError and keeps everything else.
   * Idempotent: a disk already detached into `intoDir` gives its token again.
   * The token carries the disk's base: the origin its CoW layer was written against.
   */
  async detach(disk: RootDisk, intoDir: string, signal: AbortSignal): Promise<DetachedDisk> {
    throwIfAborted(signal);
    const st = await this.stateOf(disk.sandboxId, signal);
    const base = disk.base;
    this.live.set(disk.sandboxId, st);
    await mkdir(intoDir, { recursive: true });
    const dst = join(intoDir, COW_FILE);
    const alreadyMoved = st.dm === 'none' && !st.cow && !(await exists(st.cowPath)) && await exists(dst);
    await this.teardown(st, signal, alreadyMoved ? 'keep' : { moveTo: dst }, false);
    this.live.delete(disk.sandboxId);
    return { sandboxId: disk.sandboxId, backend: 'dm', base, dir: intoDir, files: [dst] };
  }

  /**
   * Resume: remove a stale device of the same name if one exists (and the
   * loops it held), move `<token.dir>/cow.img` back, and recreate the snapshot
   * over it, on the token's base (the image the CoW layer was written against;
   * the persistent store reloads its exceptions). On failure the CoW file is
   * moved back into `token.dir`: never deleted.
   */
  async attach(token: DetachedDisk, signal: AbortSignal): Promise<RootDisk> {
    throwIfAborted(signal);
    const { sandboxId, base, dir: fromDir } = token;
    const name = this.deviceName(sandboxId);
    await this.clearStale(sandboxId, signal);
    const src = join(fromDir, COW_FILE);
    const st: DiskState = { sandboxId, name, cowPath: this.cowPath(sandboxId), dm: 'none', cow: null, origin: null, stale: null };
    if (!(await exists(src))) throw new NotFoundError(`no CoW file ${src} to resume sandbox ${sandboxId} from`);
    await mkdir(dirname(st.cowPath), { recursive: true });
    const moved = resolve(src) !== resolve(st.cowPath);
    if (moved) await rename(src, st.cowPath);
    try {
      throwIfAborted(signal);
      st.origin = await this.loops.acquire(base.path, signal);
      const sectors = await this.sectorsOf(st.origin.device, signal);
      st.cow = await this.loops.attachFile(st.cowPath, signal);
      await this.createDevice(st, sectors, signal);
    } catch (err) {
      await this.unwind(st, moved ? { moveTo: src } : 'keep', err, 'attach');
      throw err;
    }
    this.live.set(sandboxId, st);
    return this.diskOf(st, base);
  }

  /**
   * Put a detached disk back into `token.dir` whatever of an attach happened
   * (after a crash this process may know nothing: the state comes from the
   * host): the device and loops are released, the CoW file moved back.
   */
  async reclaim(token: DetachedDisk, signal: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    const st = await this.stateOf(token.sandboxId, signal);
    this.live.set(token.sandboxId, st);
    await this.teardown(st, signal, 'keep', true);
    this.live.delete(token.sandboxId);
    const dst = join(token.dir, COW_FILE);
    if (resolve(st.cowPath) !== resolve(dst) && await exists(st.cowPath)) {
      await mkdir(token.dir, { recursive: true });
      await rename(st.cowPath, dst);
    }
  }

  /** Copy the merged device into a new standalone sparse image (written aside, fsynced, renamed). */
  async flatten(disk: RootDisk, outPath: string, signal: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    const st = await this.stateOf(disk.sandboxId, signal);
    if (st.dm !== 'active' || st.stale) throw new ConflictError(`the dm disk of sandbox ${disk.sandboxId} is not attached`);
    const tmp = `${outPath}.partial-${randomBytes(4).toString('hex')}`;
    try {
      // cp reads a block device's contents and, with --sparse=always, leaves holes for zero blocks.
      await this.run('cp', ['--sparse=always', this.devicePath(disk.sandboxId), tmp], { signal });
      const fh = await open(tmp, 'r+');
      try { await fh.sync(); } finally { await fh.close(); }
      await rename(tmp, outPath);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
  }

  /** Idempotent destroy: device (missing is fine), CoW loop, CoW file, origin reference. */
  async remove(disk: RootDisk, signal: AbortSignal): Promise<void> {
    const st = await this.stateOf(disk.sandboxId, signal);
    this.live.set(disk.sandboxId, st);
    await this.teardown(st, signal, 'unlink', true);
    this.live.delete(disk.sandboxId);
    for (const f of disk.files) await unlinkIfExists(f);
  }

  async usage(disk: RootDisk): Promise<{ allocatedBytes: number }> {
    let total = 0;
    for (const f of disk.files) total += await allocatedBytes(f);
    return { allocatedBytes: total };
  }

  /** The kernel's view of the snapshot: CoW sectors used, or invalid/overflow (a CoW that filled up). */
  async cowStatus(disk: RootDisk, signal: AbortSignal): Promise<SnapshotStatus | null> {
    const line = await this.dm.status(this.deviceName(disk.sandboxId), signal);
    return line === null ? null : parseSnapshotStatus(line);
  }

  /**
   * After a daemon restart (docs/ARCHITECTURE.md, "Recovery"), before the manager's own recovery:
   * adopt the base-image loop devices, take back the dm devices of the
   * sandboxes in `keep` (re-taking their origin references), remove every
   * other `hearth-` device with the loops it held (their files are left to the
   * manager), detach CoW loops of files in the sandboxes dir that no kept
   * device uses, and detach base-image loops nobody uses any more.
   */
  async recover(keep: Iterable<string>, signal: AbortSignal): Promise<{ adopted: string[]; reaped: string[]; detachedLoops: string[] }> {
    const keepSet = new Set(keep);
    const adopted: string[] = [];
    const reaped: string[] = [];
    const detachedLoops: string[] = [];
    await this.loops.adoptExisting(signal);
    for (const name of await this.dm.list(signal)) {
      if (!name.startsWith(this.prefix)) continue;
      const id = name.slice(this.prefix.length);
      if (this.live.has(id)) continue;
      const st = await this.fromHost(id, signal);
      if (keepSet.has(id)) {
        this.live.set(id, st);
        adopted.push(id);
        continue;
      }
      this.live.set(id, st);
      try {
        await this.teardown(st, signal, 'keep', true);
        this.live.delete(id);
        reaped.push(id);
      } catch (err) {
        this.log?.error({ device: name, err: errorMessage(err) }, 'dm: could not reap an orphaned device');
      }
    }
    const inUse = new Set([...this.live.values()].map((s) => s.cow?.device).filter((d): d is string => !!d));
    const root = await realpath(this.sandboxesDir).catch(() => resolve(this.sandboxesDir));
    for (const l of await listLoops(this.run, signal)) {
      if (l.readOnly || inUse.has(l.device) || !l.backingFile.startsWith(`${root}/`) || !l.backingFile.endsWith(`/${COW_FILE}`)) continue;
      try {
        await this.loops.adoptWritable(l.device, l.backingFile).detach(AbortSignal.timeout(this.cleanupTimeoutMs));
        detachedLoops.push(l.device);
      } catch (err) {
        this.log?.error({ device: l.device, err: errorMessage(err) }, 'dm: could not detach an orphaned CoW loop');
      }
    }
    detachedLoops.push(...await this.loops.reapIdle());
    this.log?.info({ adopted, reaped, detachedLoops }, `dm recovery: adopted ${adopted.length}, reaped ${reaped.length}`);
    return { adopted, reaped, detachedLoops };
  }

  // ------------------------------------------------------------ internals

  private diskOf(st: DiskState, base: BaseImage): RootDisk {
    return { sandboxId: st.sandboxId, backend: 'dm', devicePath: this.devicePath(st.sandboxId), files: [st.cowPath], base };
  }

  private async sectorsOf(device: string, signal: AbortSignal): Promise<number> {
    const { stdout } = await this.run('blockdev', ['--getsz', device], { signal });
    const n = Number(stdout.trim());
    if (!Number.isSafeInteger(n) || n <= 0) throw new HostFailureError(`blockdev --getsz ${device} printed "${stdout.trim()}"`);
    return n;
  }

  /** `dmsetup create`, never killed half-way (an interrupted create could leave a device nobody knows). */
  private async createDevice(st: DiskState, sectors: number, signal: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    if (!st.origin || !st.cow) throw new HostFailureError('dm create without its loop devices');
    st.dm = 'maybe';
    await this.dm.create(st.name, snapshotTable({ sectors, origin: st.origin.device, cow: st.cow.device, chunkSectors: this.chunkSectors }));
    st.dm = 'active';
    throwIfAborted(signal);
  }

  /** The disk's state, rebuilt from the host if this process does not know it (it then holds references: keep it). */
  private async stateOf(sandboxId: string, signal: AbortSignal): Promise<DiskState> {
    const known = this.live.get(sandboxId);
    if (known) return known;
    const st = await this.fromHost(sandboxId, signal);
    if (!isEmpty(st)) this.live.set(sandboxId, st);
    return st;
  }

  /** Rebuild a disk's state from the host (after a restart): its dm table, and the loops behind it. */
  private async fromHost(sandboxId: string, signal: AbortSignal): Promise<DiskState> {
    const name = this.deviceName(sandboxId);
    const st: DiskState = { sandboxId, name, cowPath: this.cowPath(sandboxId), dm: 'none', cow: null, origin: null, stale: null };
    const table = await this.dm.table(name, signal);
    const loops = await listLoops(this.run, signal);
    const find = (dev: string): LoopInfo | undefined => loops.find((l) => l.majMin === dev || l.device === dev);
    if (table !== null) {
      st.dm = 'active';
      const t = parseSnapshotTable(table);
      if (t) {
        const cow = find(t.cow);
        const origin = find(t.origin);
        if (cow) st.cow = this.loops.adoptWritable(cow.device, cow.backingFile);
        if (origin) st.origin = this.loops.adoptRef(origin);
      } else {
        this.log?.warn({ device: name, table }, 'dm: device of a sandbox is not a snapshot target; only the device will be removed');
      }
    } else {
      const real = await realpath(st.cowPath).catch(() => st.cowPath);
      const cow = loops.find((l) => !l.readOnly && l.backingFile === real);
      if (cow) st.cow = this.loops.adoptWritable(cow.device, cow.backingFile);
    }
    return st;
  }

  /** Before resume: remove a stale device of the same name and release what it held. */
  private async clearStale(sandboxId: string, signal: AbortSignal): Promise<void> {
    let st = this.live.get(sandboxId);
    if (!st) {
      if (!(await this.dm.exists(this.deviceName(sandboxId), signal))) return;
      st = await this.fromHost(sandboxId, signal);
      this.live.set(sandboxId, st);
    }
    this.log?.warn({ sandbox: sandboxId, device: st.name, stale: st.stale }, 'dm: removing a stale device before resume');
    await this.teardown(st, signal, 'keep', true);
    this.live.delete(sandboxId);
  }

  /**
   * Release what `st` holds, in order. The dm removal uses the caller's
   * signal (abort stops its backoff); once it is gone, the rest runs to the
   * end on a fresh signal. A failed removal stops everything after it.
   */
  private async teardown(st: DiskState, signal: AbortSignal, file: FileFate, missingOk: boolean): Promise<void> {
    if (st.dm !== 'none') {
      try {
        if (st.dm === 'maybe' && !(await this.dm.exists(st.name, signal))) {
          // `dmsetup create` left nothing behind.
        } else {
          await this.dm.remove(st.name, signal, { missingOk });
        }
        st.dm = 'none';
        st.stale = null;
      } catch (err) {
        st.dm = 'active';
        st.stale = errorMessage(err);
        if (err instanceof AbortedError) throw err;
        const what = [st.cow && `CoW loop ${st.cow.device}`, st.origin && `origin loop ${st.origin.device}`].filter(Boolean).join(' and ') || 'its loop devices';
        const why = err instanceof DmsetupError && err.kind === 'missing'
          ? `; the device was expected but is gone, so ${what} were kept for remove() to release`
          : `; the stale device still references ${what}, which were kept`;
        throw new DmDeviceStuckError(`${errorMessage(err)}${why}`, { cause: err });
      }
    }
    const fresh = AbortSignal.timeout(this.cleanupTimeoutMs);
    const errors: string[] = [];
    let cowFree = true;
    const cow = st.cow;
    if (cow) {
      try {
        await cow.detach(fresh);
        st.cow = null;
      } catch (err) {
        cowFree = false;
        errors.push(`CoW loop ${cow.device}: ${errorMessage(err)}`);
      }
    }
    if (!cowFree) {
      if (file !== 'keep') errors.push(`CoW file left at ${st.cowPath} while its loop device is attached`);
    } else if (file === 'unlink') {
      try { await unlinkIfExists(st.cowPath); } catch (err) { errors.push(`CoW file ${st.cowPath}: ${errorMessage(err)}`); }
    } else if (file !== 'keep' && resolve(file.moveTo) !== resolve(st.cowPath)) {
      try {
        await rename(st.cowPath, file.moveTo);
        st.cowPath = file.moveTo;
      } catch (err) {
        errors.push(`moving CoW file ${st.cowPath} to ${file.moveTo}: ${errorMessage(err)}`);
      }
    }
    if (st.origin) {
      try {
        await st.origin.release();
        st.origin = null;
      } catch (err) {
        errors.push(`origin loop: ${errorMessage(err)}`);
      }
    }
    if (errors.length > 0) throw new HostFailureError(`releasing the dm disk of sandbox ${st.sandboxId}: ${errors.join('; ')}`);
  }

  /** Compensation of a failed create/attach, on a fresh signal. */
  private async unwind(st: DiskState, file: FileFate, cause: unknown, op: string): Promise<void> {
    try {
      await this.teardown(st, AbortSignal.timeout(this.cleanupTimeoutMs), file, true);
    } catch (err) {
      // Keep what is left so a later remove() (or recovery) can finish it.
      this.live.set(st.sandboxId, st);
      this.log?.error({ sandbox: st.sandboxId, op, err: errorMessage(err) }, 'dm: cleanup after a failed operation failed');
      const e = new HostFailureError(`dm ${op} of sandbox ${st.sandboxId} failed (${errorMessage(cause)}), and so did its cleanup: ${errorMessage(err)}`, { cause });
      throw e;
    }
  }
}

function isEmpty(st: DiskState): boolean {
  return st.dm === 'none' && !st.cow && !st.origin;
}

async function unlinkIfExists(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

export { DmsetupError };
