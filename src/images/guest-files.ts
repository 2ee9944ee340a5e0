/**
 * Locates the guest-side files in `scripts/guest/` (shipped with the repo,
 * resolved relative to this module so it works from src/ under tsx and from
 * dist/ after tsc) and hashes them for the image recipe.
 */
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sha256 } from './fsutil.js';

/** `<repo>/scripts/guest`, from `<repo>/src/images/` or `<repo>/dist/images/`. */
export const GUEST_DIR = fileURLToPath(new URL('../../scripts/guest/', import.meta.url));

/** The busybox-sh script that becomes the initramfs's /init. */
export const INITRAMFS_INIT = 'initramfs-init';
/** The PID 1 script installed as /sbin/hearth-init. */
export const HEARTH_INIT = 'hearth-init';

/** Files of scripts/guest/ installed into the rootfs: name → guest path and mode. */
export const ROOTFS_GUEST_FILES: readonly { name: string; guestPath: string; mode: number }[] = [
  { name: HEARTH_INIT, guestPath: '/sbin/hearth-init', mode: 0o755 },
  { name: 'hearth-fstab', guestPath: '/etc/hearth/fstab', mode: 0o644 },
];

export async function readGuestFile(name: string, guestDir = GUEST_DIR): Promise<Buffer> {
  return readFile(join(guestDir, name));
}

/** name → sha256 of every regular file in the guest dir (sorted by name). */
export async function hashGuestFiles(guestDir = GUEST_DIR): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const ents = await readdir(guestDir, { withFileTypes: true });
  for (const e of ents.filter((e) => e.isFile()).sort((a, b) => a.name.localeCompare(b.name))) {
    out[e.name] = sha256(await readFile(join(guestDir, e.name)));
  }
  return out;
}
