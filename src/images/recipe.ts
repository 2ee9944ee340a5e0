/**
 * The image recipe: every input that changes the bytes of the default image.
 * Its sha256 names the image (`<dataDir>/images/<hash16>/`), so a change of
 * any input builds a new image and an unchanged recipe reuses the old one.
 */
import { createHash } from 'node:crypto';

/** Bump when the build code changes what it produces for the same inputs. */
export const IMAGE_BUILDER_VERSION = 2;

export interface ImageRecipe {
  builderVersion: number;
  kernel: { packageName: string; packageVersion: string; release: string };
  debootstrap: { suite: string; mirror: string; arch: string; variant: string; packages: string[] };
  initramfs: { key: string };
  /** The static busybox, also installed in the rootfs for hearth-init. */
  busyboxSha256: string;
  /** file name → sha256 of each file in scripts/guest/. */
  guestFiles: Record<string, string>;
  /** sha256 of the agent bundle. */
  agentSha256: string;
  /** The PTY helper (native/pty/hearth-pty.c): source sha256 and compiler. Absent in builder version 1. */
  ptyHelper?: { sourceSha256: string; compiler: string };
  /** Which Node the guest's /usr/local/bin/node is (see node-runtime.ts). */
  node: { source: 'debian' } | { source: 'host'; version: string; sha256: string; modules: string[] };
  rootfsSizeMiB: number;
  hostname: string;
}

/** JSON with object keys sorted at every level, so key order never changes the hash. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj).filter((k) => obj[k] !== undefined).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** sha256 (hex) of the canonical recipe. Package order does not matter; everything else does. */
export function recipeHash(recipe: ImageRecipe): string {
  const normalised: ImageRecipe = {
    ...recipe,
    debootstrap: { ...recipe.debootstrap, packages: [...new Set(recipe.debootstrap.packages)].sort() },
  };
  return createHash('sha256').update(canonicalJson(normalised)).digest('hex');
}

/** A version-4-shaped UUID derived from the hash: the ext4 UUID, stable per image. */
export function uuidFromHash(hash: string): string {
  const h = hash.slice(0, 32).split('');
  h[12] = '4';
  h[16] = ((parseInt(h[16]!, 16) & 0x3) | 0x8).toString(16);
  const s = h.join('');
  return `${s.slice(0, 8)}-${s.slice(8, 12)}-${s.slice(12, 16)}-${s.slice(16, 20)}-${s.slice(20, 32)}`;
}
