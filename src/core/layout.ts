import { basename, dirname, join } from 'node:path';

/**
 * Every path Hearth keeps under its data dir, in one place
 * (docs/ARCHITECTURE.md, "Storage"). Pure path arithmetic: nothing here
 * touches the file system.
 *
 * What the core does not name itself it takes from whoever wrote it: the
 * root disk's files from the storage backend's token (`rootfs.ext4` with the
 * file backends, `cow.img` with dm), the VMM's own files from the driver
 * (its run files, and the files `Vmm.snapshot` reports it wrote). The core
 * places a snapshot's state and memory under the names below, and keeps every
 * other file a VMM reported under that file's own name, so the driver finds
 * its metadata (`vmstate.json`, `firecracker.json`) beside the state on restore.
 */

/** Top-level files of the data dir. */
export const DATA_FILES = {
  /** The store (SQLite, with `-wal` and `-shm` beside it). */
  db: 'hearth.db',
  /** Optional configuration (src/daemon/config.ts). */
  config: 'config.json',
  /** Written by `hearth up`. */
  pid: 'hearthd.pid',
  log: 'hearthd.log',
} as const;

/** Names inside a snapshot directory (named, fork or warm) and inside a paused capture. */
export const SNAPSHOT_FILES = {
  /** The VMM's device and vCPU state. */
  state: 'vmstate',
  /** Guest RAM. */
  memory: 'memory',
  /** The disk, flattened (snapshot directories only; a paused capture holds the detached disk as storage names it). */
  rootfs: 'rootfs.ext4',
  /** A paused capture's metadata, written last: its presence marks the capture complete. */
  meta: 'meta.json',
} as const;

/** The suffix of a snapshot directory while it is captured. */
export const STAGING_SUFFIX = '.staging';

/** A sandbox's directory and the files the core names in it. */
export interface SandboxPaths {
  dir: string;
  /** The guest's serial console. */
  console: string;
  /** Guest RAM while it runs (QEMU's memory-backend-file; a restore's copy of the snapshot's memory). */
  memory: string;
  /** Where a pause writes the VMM's snapshot before the VMM stops. */
  pauseStaging: string;
  /** The paused capture. */
  paused: PausedPaths;
}

/** A paused capture: the VMM's snapshot, the detached disk and `meta.json`. */
export interface PausedPaths {
  dir: string;
  state: string;
  memory: string;
  meta: string;
}

/** A snapshot directory (named snapshots, forks' temporary ones, warm template snapshots). */
export interface SnapshotPaths {
  dir: string;
  /** Where it is captured before it is renamed into place. */
  staging: string;
  state: string;
  memory: string;
  rootfs: string;
}

/** Warm snapshot directory names: `<warm key prefix>-<vcpus>c-<memory>m-<random>` (older ones without the suffix). */
const WARM_DIR = /^[0-9a-f]{16}-\d+c-\d+m(-[a-z0-9]+)?(\.staging)?$/;

/** The data dir's layout. */
export class DataLayout {
  constructor(readonly dataDir: string) {}

  get db(): string { return join(this.dataDir, DATA_FILES.db); }
  get configFile(): string { return join(this.dataDir, DATA_FILES.config); }
  get pidFile(): string { return join(this.dataDir, DATA_FILES.pid); }
  get logFile(): string { return join(this.dataDir, DATA_FILES.log); }

  /** Built guest images: `images/<hash16>/` (vmlinux, initramfs.cpio, rootfs.ext4, manifest.json). */
  get imagesDir(): string { return join(this.dataDir, 'images'); }

  /** One directory per sandbox, named by its id; the storage backends keep running disks there too. */
  get sandboxesDir(): string { return join(this.dataDir, 'sandboxes'); }

  sandbox(id: string): SandboxPaths {
    const dir = join(this.sandboxesDir, id);
    return {
      dir,
      console: join(dir, 'console.log'),
      memory: join(dir, SNAPSHOT_FILES.memory),
      pauseStaging: join(dir, 'pause-staging'),
      paused: pausedAt(join(dir, 'paused')),
    };
  }

  /** Whether `runDir` is a sandbox directory of this data dir (VMs elsewhere belong to another daemon). */
  ownsRunDir(runDir: string | undefined): boolean {
    return runDir !== undefined && dirname(runDir) === this.sandboxesDir && basename(runDir) !== '';
  }

  /** Named snapshots and forks' temporary snapshots: `snapshots/<id>/`. */
  get snapshotsDir(): string { return join(this.dataDir, 'snapshots'); }

  snapshot(id: string): SnapshotPaths { return snapshotAt(join(this.snapshotsDir, id)); }

  /** Warm snapshots: `templates/<template>/<key16>-<vcpus>c-<mib>m-<random>/`. */
  get templatesDir(): string { return join(this.dataDir, 'templates'); }

  /** Custom-template layers: `layers/<key>/` (rootfs.ext4, layer.json); `.staging-<pid>-<random>/` while written (docs/templates.md). */
  get layersDir(): string { return join(this.dataDir, 'layers'); }

  /** Template builds: `builds/<build id>/` (log.jsonl; context/ while it runs). */
  get buildsDir(): string { return join(this.dataDir, 'builds'); }

  templateDir(templateId: string): string { return join(this.templatesDir, templateId); }

  warmSnapshot(templateId: string, warmKey: string, vcpus: number, memoryMib: number, unique: string): SnapshotPaths {
    return snapshotAt(join(this.templateDir(templateId), `${warmKey.slice(0, 16)}-${vcpus}c-${memoryMib}m-${unique}`));
  }
}

/** The files of the snapshot directory `dir` (wherever it is: snapshots/ or templates/). */
export function snapshotAt(dir: string): SnapshotPaths {
  return {
    dir,
    staging: `${dir}${STAGING_SUFFIX}`,
    state: join(dir, SNAPSHOT_FILES.state),
    memory: join(dir, SNAPSHOT_FILES.memory),
    rootfs: join(dir, SNAPSHOT_FILES.rootfs),
  };
}

/** The files of the paused capture in `dir`. */
export function pausedAt(dir: string): PausedPaths {
  return { dir, state: join(dir, SNAPSHOT_FILES.state), memory: join(dir, SNAPSHOT_FILES.memory), meta: join(dir, SNAPSHOT_FILES.meta) };
}

/** Whether a directory name under `templates/<template>/` is a warm snapshot's (or one being captured). */
export function isWarmDirName(name: string): boolean { return WARM_DIR.test(name); }

/** Whether a directory name under `snapshots/` is a capture in flight (or one a crash left). */
export function isStagingName(name: string): boolean { return name.endsWith(STAGING_SUFFIX); }

/**
 * Where the files a VMM reported for a snapshot go in a snapshot directory or
 * paused capture `dir`: the state and memory under the core's names, every
 * other file under its own name. Refuses two files that would land on one name.
 */
export function placeSnapshotFiles(dir: string, written: { statePath: string; memoryPath: string; files: readonly string[] }): { from: string; to: string }[] {
  const out: { from: string; to: string }[] = [];
  const taken = new Set<string>();
  for (const from of new Set([written.statePath, written.memoryPath, ...written.files])) {
    const name = from === written.statePath ? SNAPSHOT_FILES.state : from === written.memoryPath ? SNAPSHOT_FILES.memory : basename(from);
    if (taken.has(name) || name === SNAPSHOT_FILES.meta || name === SNAPSHOT_FILES.rootfs) {
      throw new Error(`the VMM reported two snapshot files named ${name} (or one the core writes itself): ${[...written.files].join(', ')}`);
    }
    taken.add(name);
    out.push({ from, to: join(dir, name) });
  }
  return out;
}
