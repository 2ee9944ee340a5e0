import { constants } from 'node:fs';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { deviceMapperAvailable } from './dm/index.js';
import type { RootfsBackendKind } from './types.js';

export interface StorageProbe {
  deviceMapper: boolean;
  reflink: boolean;
  chosen: RootfsBackendKind;
  reason: string;
}

/** Does `dir`'s filesystem support FICLONE? Tried for real with a small file. */
export async function supportsReflink(dir: string): Promise<boolean> {
  const tmp = await mkdtemp(join(dir, '.reflink-probe-'));
  try {
    await writeFile(join(tmp, 'a'), 'hearth');
    await copyFile(join(tmp, 'a'), join(tmp, 'b'), constants.COPYFILE_FICLONE_FORCE);
    return true;
  } catch {
    return false;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * docs/storage.md, "Choosing a backend": dm where device-mapper exists (and we are root), else reflink,
 * else copy; configuration overrides. Device-mapper is detected from
 * /proc/misc: libdevmapper creates /dev/mapper/control even without the driver.
 */
export async function chooseRootfsBackend(dataDir: string, override?: RootfsBackendKind): Promise<StorageProbe> {
  const deviceMapper = deviceMapperAvailable() && process.getuid?.() === 0;
  const reflink = await supportsReflink(dataDir);
  if (override) {
    if (override === 'reflink' && !reflink) throw new Error(`storage backend "reflink" was configured but ${dataDir} does not support reflinks (use XFS or btrfs)`);
    if (override === 'dm' && !deviceMapper) throw new Error('storage backend "dm" was configured but this host has no device-mapper (or hearthd is not root)');
    return { deviceMapper, reflink, chosen: override, reason: 'configured' };
  }
  if (deviceMapper) return { deviceMapper, reflink, chosen: 'dm', reason: 'device-mapper available (/proc/misc): snapshot targets over a shared read-only origin' };
  if (reflink) return { deviceMapper, reflink, chosen: 'reflink', reason: `${dataDir} supports reflinks (FICLONE)` };
  return { deviceMapper, reflink, chosen: 'copy', reason: `${dataDir} has no reflink support; full sparse copies` };
}
