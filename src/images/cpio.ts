/**
 * A minimal writer for the "newc" cpio format the kernel unpacks as an
 * initramfs. Written in TypeScript (rather than running cpio) so that device
 * nodes need no mknod, owners are always root, timestamps are fixed, and the
 * archive is byte-for-byte reproducible.
 */

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Buffer; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'char'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

function pad4(len: number): Buffer {
  const r = (4 - (len % 4)) % 4;
  return Buffer.alloc(r);
}

function header(
  ino: number,
  mode: number,
  nlink: number,
  fileSize: number,
  rdevMajor: number,
  rdevMinor: number,
  nameSize: number,
  mtime: number,
): string {
  return (
    '070701' +
    hex8(ino) +
    hex8(mode) +
    hex8(0) + // uid
    hex8(0) + // gid
    hex8(nlink) +
    hex8(mtime) +
    hex8(fileSize) +
    hex8(0) + // devmajor
    hex8(0) + // devminor
    hex8(rdevMajor) +
    hex8(rdevMinor) +
    hex8(nameSize) +
    hex8(0) // check
  );
}

/** Serialize entries (parents must precede children) into a newc archive. */
export function buildCpio(entries: readonly CpioEntry[], mtime = 0): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const push = (name: string, mode: number, nlink: number, data: Buffer, rmaj = 0, rmin = 0) => {
    const nameBuf = Buffer.from(name + '\0', 'utf8');
    const h = Buffer.from(header(ino++, mode, nlink, data.length, rmaj, rmin, nameBuf.length, mtime), 'ascii');
    parts.push(h, nameBuf, pad4(h.length + nameBuf.length));
    if (data.length) parts.push(data, pad4(data.length));
  };
  for (const e of entries) {
    const name = e.path.replace(/^\/+/, '');
    if (!name) continue;
    switch (e.type) {
      case 'dir':
        push(name, S_IFDIR | (e.mode ?? 0o755), 2, Buffer.alloc(0));
        break;
      case 'file':
        push(name, S_IFREG | (e.mode ?? 0o644), 1, e.data);
        break;
      case 'symlink':
        push(name, S_IFLNK | 0o777, 1, Buffer.from(e.target, 'utf8'));
        break;
      case 'char':
        push(name, S_IFCHR | (e.mode ?? 0o600), 1, Buffer.alloc(0), e.major, e.minor);
        break;
    }
  }
  ino = 0;
  push('TRAILER!!!', 0, 1, Buffer.alloc(0));
  return Buffer.concat(parts);
}
