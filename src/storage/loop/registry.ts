import { realpath } from 'node:fs/promises';
import { AbortedError, HostFailureError, throwIfAborted } from '../../core/errors.js';
import type { Logger } from '../../core/log.js';
import { runCommand, type CommandRunner } from '../../util/exec.js';
import { abortable } from '../../util/abort.js';
import { attachLoop, detachLoop, listLoops, loopHolders, type LoopInfo } from './losetup.js';

/** A counted reference to the shared read-only loop device of one base image. */
export interface LoopRef {
  readonly device: string;
  /** Canonical (realpath) image path. */
  readonly imagePath: string;
  /** Drop this reference; the last one detaches the device. Idempotent per ref. */
  release(): Promise<void>;
}

/** A private, writable loop device (a sandbox's CoW file). Never shared. */
export interface WritableLoop {
  readonly device: string;
  /** Canonical (realpath) path of the backing file. */
  readonly path: string;
  /** Detach (only while still backed by `path`); idempotent. Pass a fresh signal in cleanup. */
  detach(signal?: AbortSignal): Promise<void>;
}

export interface LoopRegistryOptions {
  run?: CommandRunner;
  /**
   * Which read-only loop devices found at start-up are Hearth's (their backing
   * file is one of Hearth's base images) and may be adopted. Default: none.
   */
  owns?: (imagePath: string) => boolean;
  /** Where sysfs is mounted (tests point it elsewhere). */
  sysfsRoot?: string;
  /** Devices stacked on a loop device; default /sys/block/loopN/holders. */
  holders?: (device: string) => Promise<string[]>;
  /** Bound for detaches run on release (they never use the caller's signal). */
  cleanupTimeoutMs?: number;
  log?: Logger;
}

interface Entry {
  image: string;
  device: string | null;
  refs: number;
  attaching: Promise<string> | null;
  detaching: Promise<void> | null;
  adopted: boolean;
}

export interface LoopEntryInfo { imagePath: string; device: string | null; refs: number; adopted: boolean }

/**
 * docs/storage.md, "LoopRegistry": each base image is attached once, read-only, and shared by every
 * sandbox built on it. `acquire` counts references; the last `release`
 * detaches. Concurrent acquires of one image share one in-flight attach.
 * After a daemon restart `adoptExisting()` re-reads the host's loop devices
 * and takes back the read-only ones backed by Hearth's images (refcount 0
 * until their users re-acquire them); `reapIdle()` then detaches what nobody
 * claimed.
 *
 * Every detach first checks that the device is still backed by the file we
 * expect: loop numbers are reused, and this registry never detaches a loop
 * it did not attach or adopt.
 */
export class LoopRegistry {
  private readonly run: CommandRunner;
  private readonly owns: (imagePath: string) => boolean;
  private readonly holders: (device: string) => Promise<string[]>;
  private readonly cleanupTimeoutMs: number;
  private readonly log: Logger | undefined;
  private readonly entries = new Map<string, Entry>();
  private readonly writable = new Map<string, string>();
  /** Adopted read-only loops of an image that already had one (a crash mid-attach). */
  private strays: LoopInfo[] = [];

  constructor(opts: LoopRegistryOptions = {}) {
    this.run = opts.run ?? runCommand;
    this.owns = opts.owns ?? (() => false);
    const sysfsRoot = opts.sysfsRoot ?? '/sys';
    this.holders = opts.holders ?? ((device) => loopHolders(device, sysfsRoot));
    this.cleanupTimeoutMs = opts.cleanupTimeoutMs ?? 30_000;
    this.log = opts.log;
  }

  /** The shared read-only loop device of `imagePath`, attaching it if needed. */
  async acquire(imagePath: string, signal: AbortSignal): Promise<LoopRef> {
    throwIfAborted(signal);
    const image = await canonical(imagePath);
    for (;;) {
      throwIfAborted(signal);
      let e = this.entries.get(image);
      if (e?.detaching) {
        await abortable(e.detaching.catch(() => undefined), signal);
        continue;
      }
      if (!e) {
        e = { image, device: null, refs: 0, attaching: null, detaching: null, adopted: false };
        this.entries.set(image, e);
        e.attaching = this.attachShared(e);
      }
      e.refs++;
      if (e.device) return this.ref(e, e.device);
      try {
        const device = await abortable(e.attaching!, signal);
        return this.ref(e, device);
      } catch (err) {
        e.refs--;
        // If the attach finished but every waiter went away, the attach path detaches it.
        throw err;
      }
    }
  }

  /**
   * Attach a writable file (a sandbox's CoW file) to its own loop device.
   * The attach itself is not interrupted half-way (a killed losetup could
   * leave an attached device nobody knows); if `signal` aborted meanwhile the
   * device is detached again and AbortedError thrown.
   */
  async attachFile(path: string, signal: AbortSignal): Promise<WritableLoop> {
    throwIfAborted(signal);
    const file = await canonical(path);
    const device = await attachLoop(this.run, file, { readOnly: false });
    this.writable.set(device, file);
    const loop = this.writableHandle(device, file);
    if (signal.aborted) {
      await loop.detach().catch((err: unknown) => this.log?.error({ device, err: String(err) }, 'loop: detach after cancelled attach failed'));
      throw new AbortedError(`attaching ${file} was cancelled`);
    }
    return loop;
  }

  /** A handle for a writable loop device found on the host (daemon restart). */
  adoptWritable(device: string, path: string): WritableLoop {
    this.writable.set(device, path);
    return this.writableHandle(device, path);
  }

  /**
   * Take a reference on a read-only loop device found on the host, e.g. the
   * origin of a dm device that survived a daemon restart. The device becomes
   * (or already is) the image's shared entry; if the image already has a
   * different device, the returned ref stands alone and its release detaches
   * that device (when nothing stacks on it any more).
   */
  adoptRef(info: LoopInfo): LoopRef {
    const e = this.entries.get(info.backingFile);
    if (!e) {
      const ne: Entry = { image: info.backingFile, device: info.device, refs: 1, attaching: null, detaching: null, adopted: true };
      this.entries.set(info.backingFile, ne);
      return this.ref(ne, info.device);
    }
    if (e.device === info.device && !e.detaching) {
      e.refs++;
      return this.ref(e, info.device);
    }
    let released = false;
    return {
      device: info.device,
      imagePath: info.backingFile,
      release: async () => {
        if (released) return;
        released = true;
        if ((await this.holders(info.device)).length > 0) { this.strays.push(info); return; }
        await detachLoop(this.run, info.device, info.backingFile, AbortSignal.timeout(this.cleanupTimeoutMs));
      },
    };
  }

  /**
   * After a restart: adopt the host's read-only loop devices whose backing
   * file `owns` accepts, with no references. Call before the first acquire.
   */
  async adoptExisting(signal: AbortSignal): Promise<{ adopted: LoopInfo[]; duplicates: LoopInfo[] }> {
    const adopted: LoopInfo[] = [];
    const duplicates: LoopInfo[] = [];
    for (const info of await listLoops(this.run, signal)) {
      if (!info.readOnly || info.deleted || !this.owns(info.backingFile)) continue;
      const existing = this.entries.get(info.backingFile);
      if (existing) {
        if (existing.device !== info.device) duplicates.push(info);
        continue;
      }
      this.entries.set(info.backingFile, { image: info.backingFile, device: info.device, refs: 0, attaching: null, detaching: null, adopted: true });
      adopted.push(info);
    }
    this.strays.push(...duplicates);
    if (adopted.length || duplicates.length) {
      this.log?.info({ adopted: adopted.map((a) => a.device), duplicates: duplicates.map((d) => d.device) }, 'loop: adopted existing base-image devices');
    }
    return { adopted, duplicates };
  }

  /**
   * Detach every read-only device with no references and no holders (adopted
   * ones nobody re-acquired, duplicates). Returns the devices detached.
   */
  async reapIdle(): Promise<string[]> {
    const done: string[] = [];
    for (const e of [...this.entries.values()]) {
      if (e.refs !== 0 || !e.device || e.attaching || e.detaching) continue;
      if (await this.detachEntry(e)) done.push(e.device);
    }
    const strays = this.strays;
    this.strays = [];
    for (const s of strays) {
      if ((await this.holders(s.device)).length > 0) { this.strays.push(s); continue; }
      if (await detachLoop(this.run, s.device, s.backingFile, AbortSignal.timeout(this.cleanupTimeoutMs))) done.push(s.device);
    }
    return done;
  }

  /** What the registry holds (doctor, tests). */
  list(): LoopEntryInfo[] {
    return [...this.entries.values()].map((e) => ({ imagePath: e.image, device: e.device, refs: e.refs, adopted: e.adopted }));
  }

  /** Writable loops attached (or adopted) and not yet detached: device → file. */
  listWritable(): Array<{ device: string; path: string }> {
    return [...this.writable.entries()].map(([device, path]) => ({ device, path }));
  }

  // ------------------------------------------------------------ internals

  private attachShared(e: Entry): Promise<string> {
    // Shared by every waiter, so never cancelled by one waiter's signal.
    const p = attachLoop(this.run, e.image, { readOnly: true }).then(
      (device) => {
        e.device = device;
        e.attaching = null;
        if (e.refs === 0) {
          // Every waiter was cancelled meanwhile: nobody will release it.
          void this.detachEntry(e).catch((err: unknown) => this.log?.error({ device, err: String(err) }, 'loop: detach of unclaimed device failed'));
        }
        return device;
      },
      (err: unknown) => {
        if (this.entries.get(e.image) === e) this.entries.delete(e.image);
        throw err;
      },
    );
    p.catch(() => undefined);
    return p;
  }

  private ref(e: Entry, device: string): LoopRef {
    let released = false;
    return {
      device,
      imagePath: e.image,
      release: async () => {
        if (released) return;
        released = true;
        e.refs--;
        if (e.refs === 0) await this.detachEntry(e);
      },
    };
  }

  /** Detach an entry with no references; false when kept (holders, or it changed meanwhile). */
  private async detachEntry(e: Entry): Promise<boolean> {
    const device = e.device;
    if (!device || e.refs !== 0 || e.detaching) return false;
    const holders = await this.holders(device);
    if (holders.length > 0) {
      // Something (a stale dm device) still stacks on it: detaching would only
      // set autoclear. Keep it; the next acquire reuses it, reapIdle retries.
      this.log?.warn({ device, image: e.image, holders }, 'loop: base image device has no references but still has holders; kept');
      return false;
    }
    if (e.refs !== 0) return false;
    e.detaching = detachLoop(this.run, device, e.image, AbortSignal.timeout(this.cleanupTimeoutMs)).then(() => undefined);
    try {
      await e.detaching;
      if (this.entries.get(e.image) === e) this.entries.delete(e.image);
      return true;
    } catch (err) {
      throw new HostFailureError(`detaching loop device ${device} (${e.image}): ${(err as Error).message}`, { cause: err });
    } finally {
      e.detaching = null;
    }
  }

  private writableHandle(device: string, path: string): WritableLoop {
    return {
      device,
      path,
      detach: async (signal?: AbortSignal) => {
        await detachLoop(this.run, device, path, signal ?? AbortSignal.timeout(this.cleanupTimeoutMs));
        if (this.writable.get(device) === path) this.writable.delete(device);
      },
    };
  }
}

async function canonical(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch (err) {
    throw new HostFailureError(`${path}: ${(err as Error).message}`, { cause: err });
  }
}
