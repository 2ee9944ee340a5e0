import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Logger } from '../../core/log.js';
import { runCommand, type CommandRunner } from '../../util/exec.js';
import { LoopRegistry } from '../loop/registry.js';
import { DmRootfsBackend, type DmRootfsBackendOptions } from './dm-backend.js';

export { DmRootfsBackend, DmDeviceStuckError, COW_FILE, DM_NAME_PREFIX, DEFAULT_CHUNK_SECTORS, dmName, fullCowBytes } from './dm-backend.js';
export type { DmRootfsBackendOptions } from './dm-backend.js';
export { Dmsetup, DmsetupError, DEFAULT_REMOVE_RETRY, backoffDelay, classifyDmError, parseSnapshotStatus, parseSnapshotTable, snapshotTable } from './dmsetup.js';
export type { DmErrorKind, RetryPolicy, SnapshotStatus, SnapshotTable } from './dmsetup.js';

/**
 * Does this host's kernel have device-mapper? Asks the kernel (/proc/misc
 * lists "device-mapper" once dm is built in or loaded), not /dev: libdevmapper
 * mknods /dev/mapper/control itself whenever any dmsetup runs, so the node
 * can exist on a kernel without dm (as on the machine this was written on).
 */
export function deviceMapperAvailable(procMisc = '/proc/misc'): boolean {
  try {
    return /^\s*\d+\s+device-mapper\s*$/m.test(readFileSync(procMisc, 'utf8')) && existsSync('/dev/mapper/control');
  } catch {
    return false;
  }
}

/**
 * hearthd's dm backend: a LoopRegistry that adopts read-only loop devices
 * backed by files under the data dir or any of `imageRoots` (where template
 * and snapshot base images live), and the backend over it.
 */
export function createDmBackend(opts: {
  dataDir: string;
  imageRoots?: string[];
  run?: CommandRunner;
  log?: Logger;
} & Partial<Omit<DmRootfsBackendOptions, 'loops' | 'run' | 'log'>>): DmRootfsBackend {
  const run = opts.run ?? runCommand;
  const roots = [opts.dataDir, ...(opts.imageRoots ?? [])].map((r) => `${resolve(r).replace(/\/+$/, '')}/`);
  const loops = new LoopRegistry({ run, log: opts.log, owns: (p) => roots.some((r) => p.startsWith(r)) });
  return new DmRootfsBackend({ ...opts, sandboxesDir: opts.sandboxesDir ?? join(opts.dataDir, 'sandboxes'), loops, run, log: opts.log });
}
