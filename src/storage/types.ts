/** The storage seam (DESIGN §4, §6): a sandbox's copy-on-write root disk. */

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
}

export interface RootfsBackend {
  readonly kind: RootfsBackendKind;
  /** O(1) for dm and reflink: never a full copy of the base. */
  create(sandboxId: string, base: BaseImage, signal: AbortSignal): Promise<RootDisk>;
  /** For pause: release host devices, move the disk's files into `intoDir`. */
  detach(disk: RootDisk, intoDir: string, signal: AbortSignal): Promise<void>;
  /** For resume: re-create the disk from files in `fromDir`. */
  attach(sandboxId: string, base: BaseImage, fromDir: string, signal: AbortSignal): Promise<RootDisk>;
  /** Write the merged disk to a standalone image (a new template). */
  flatten(disk: RootDisk, outPath: string, signal: AbortSignal): Promise<void>;
  remove(disk: RootDisk, signal: AbortSignal): Promise<void>;
  /** Real allocated blocks (st_blocks*512), not apparent size. */
  usage(disk: RootDisk): Promise<{ allocatedBytes: number }>;
}
