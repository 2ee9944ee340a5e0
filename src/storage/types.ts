/** The storage seam (docs/ARCHITECTURE.md, "Seams"; docs/storage.md): a sandbox's copy-on-write root disk. */

export type RootfsBackendKind = 'dm' | 'reflink' | 'copy';

export interface BaseImage {
  /** Stable id (template id); dm uses it to share one origin loop device. */
  id: string;
  /** Read-only ext4 image. */
  path: string;
  sizeBytes: number;
}

export interface RootDisk {
  sandboxId: string;
  backend: RootfsBackendKind;
  /** What the VMM opens: a file or a block device. */
  devicePath: string;
  /** Files owned by this disk (CoW file, image copy), for usage and moves. */
  files: string[];
  /**
   * The base image the disk was made from. dm keeps reading it (the origin under
   * the CoW layer), so a later attach must use this one and no other.
   */
  base: BaseImage;
}

/**
 * A detached disk (pause): what `detach` returns and `attach` takes back. It
 * carries the disk's base, so no caller re-supplies one (and none can supply
 * the wrong one). Plain data: it is persisted in the holdings ledger.
 */
export interface DetachedDisk {
  sandboxId: string;
  backend: RootfsBackendKind;
  base: BaseImage;
  /** The directory the disk's files were moved into. */
  dir: string;
  /** The disk's files, in `dir`. */
  files: string[];
}

export interface RootfsBackend {
  readonly kind: RootfsBackendKind;
  /**
   * true: a disk reads its base image for as long as it exists (dm), so that
   * image may not be deleted while a disk made from it is held.
   */
  readonly readsBase: boolean;
  /** O(1) for dm and reflink: never a full copy of the base. */
  create(sandboxId: string, base: BaseImage, signal: AbortSignal): Promise<RootDisk>;
  /**
   * For pause: release host devices, move the disk's files into `intoDir`.
   * Idempotent: a disk already detached into `intoDir` gives its token again.
   */
  detach(disk: RootDisk, intoDir: string, signal: AbortSignal): Promise<DetachedDisk>;
  /** For resume: re-create the disk from a token `detach` returned, on the token's base. */
  attach(token: DetachedDisk, signal: AbortSignal): Promise<RootDisk>;
  /**
   * Put a detached disk back where its token says, whatever of an attach of it
   * happened (none, part, all; e.g. the daemon died mid-resume): devices are
   * released and the files moved back into `token.dir`, never deleted. Idempotent.
   */
  reclaim(token: DetachedDisk, signal: AbortSignal): Promise<void>;
  /** Write the merged disk to a standalone image (a new template). */
  flatten(disk: RootDisk, outPath: string, signal: AbortSignal): Promise<void>;
  remove(disk: RootDisk, signal: AbortSignal): Promise<void>;
  /** Real allocated blocks (st_blocks*512), not apparent size. */
  usage(disk: RootDisk): Promise<{ allocatedBytes: number }>;
}
