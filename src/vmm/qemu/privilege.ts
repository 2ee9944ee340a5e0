/**
 * Least privilege for QEMU (issue #8). hearthd runs as root; QEMU need not:
 * it opens everything it needs (memory file, disk, console log, tap, QMP
 * socket, state fd) at start-up, then drops to an unprivileged uid/gid
 * (`-runas`), optionally chroots into an empty directory (`-chroot`), under a
 * seccomp filter (`-sandbox`). docs/vmm-qemu.md ("Least privilege") has the
 * details and measurements.
 *
 * Identities: by default every VM gets a uid=gid of its own from a range that
 * no passwd entry uses ('per-vm'), so one escaped QEMU cannot signal, trace or
 * reach the files or sockets of another VM. A named user (or "uid:gid") runs
 * every VM as that one identity instead.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ConfigError, HostFailureError } from '../../core/errors.js';
import { readdirSync, readFileSync } from 'node:fs';

const execFileP = promisify(execFile);

export interface QemuPrivilegeOptions {
  /**
   * Who QEMU runs as once set up:
   * - 'per-vm' (default when hearthd runs as root): a uid=gid of its own per VM, from `idRange`
   *   (no passwd entry needed);
   * - a user name (resolved with getent, e.g. 'hearth-vm') or 'uid:gid': every VM as that identity;
   * - 'root' (or 'none'): no drop; QEMU keeps hearthd's identity.
   */
  user?: string;
  /** Range of uids (= gids) for 'per-vm'. Default base 1_900_000_000, count 65_536 (unused by systemd's ranges). */
  idRange?: { base: number; count: number };
  /** Seccomp (`-sandbox on,...`). Default true. */
  seccomp?: boolean;
  /** chroot QEMU into `<runDir>/vmroot` (empty, root-owned) when it drops privileges. Default true. */
  chroot?: boolean;
}

export const DEFAULT_ID_RANGE = { base: 1_900_000_000, count: 65_536 } as const;

/** What the driver does, after resolving the options against this host. */
export interface QemuPrivilege {
  mode: 'per-vm' | 'user' | 'none';
  /** For mode 'user'. */
  uid?: number;
  gid?: number;
  idRange: { base: number; count: number };
  seccomp: boolean;
  chroot: boolean;
  /** Why privileges are (not) dropped, for the log and `hearth doctor`. */
  reason: string;
}

export async function resolvePrivilege(opts: QemuPrivilegeOptions, euid = process.geteuid?.() ?? -1): Promise<QemuPrivilege> {
  const seccomp = opts.seccomp ?? true;
  const chroot = opts.chroot ?? true;
  const idRange = opts.idRange ?? DEFAULT_ID_RANGE;
  if (!Number.isInteger(idRange.base) || !Number.isInteger(idRange.count) || idRange.base < 65_536 || idRange.count < 1 || idRange.base + idRange.count > 0x7fffffff) {
    throw new ConfigError(`privilege.idRange must lie within 65536..2^31-1, got ${JSON.stringify(idRange)}`, 'privilege.idRange');
  }
  const none = (reason: string): QemuPrivilege => ({ mode: 'none', idRange, seccomp, chroot: false, reason });
  const user = (opts.user ?? 'per-vm').trim();
  if (user === 'root' || user === 'none') return none(`privilege.user is '${user}': QEMU runs as hearthd's user`);
  if (euid !== 0) return none(`hearthd is not root (euid ${euid}): QEMU runs as hearthd's user and cannot switch to another`);
  const perVm = (why = ''): QemuPrivilege => ({
    mode: 'per-vm', idRange, seccomp, chroot,
    reason: `${why}QEMU drops to a uid/gid of its own per VM (${idRange.base}..${idRange.base + idRange.count - 1})${chroot ? ', chrooted into <runDir>/vmroot' : ''}`,
  });
  if (user === 'per-vm') return perVm();
  const numeric = /^(\d+):(\d+)$/.exec(user);
  let ids: { uid: number; gid: number } | undefined;
  if (numeric) ids = { uid: Number(numeric[1]), gid: Number(numeric[2]) };
  else ids = await lookupUser(user);
  if (!ids) return perVm(`user '${user}' does not exist; `);
  if (ids.uid === 0 || ids.gid === 0) return none(`privilege.user '${user}' is root (uid ${ids.uid}, gid ${ids.gid})`);
  return {
    mode: 'user', uid: ids.uid, gid: ids.gid, idRange, seccomp, chroot,
    reason: `QEMU drops to user ${user} (${ids.uid}:${ids.gid}), shared by all VMs${chroot ? ', chrooted into <runDir>/vmroot' : ''}`,
  };
}

/** uid and primary gid of a user name (getent: files, NSS), or undefined. */
export async function lookupUser(name: string): Promise<{ uid: number; gid: number } | undefined> {
  if (!/^[a-z_][a-z0-9_.-]*\$?$/i.test(name)) return undefined;
  try {
    const { stdout } = await execFileP('getent', ['passwd', name], { timeout: 5000 });
    const f = stdout.trim().split('\n')[0]?.split(':');
    if (!f || f.length < 4) return undefined;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    return Number.isInteger(uid) && Number.isInteger(gid) ? { uid, gid } : undefined;
  } catch {
    return undefined;
  }
}

/** FNV-1a (32 bit): a stable starting point in the range per sandbox id. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/**
 * Hands out per-VM ids: the sandbox id's hash is the starting point, then the
 * first id that no live Hearth QEMU on this host (by /proc) and no VM being
 * started by this process uses. Reserved until `release`.
 */
export class VmIdAllocator {
  private readonly reserved = new Set<number>();

  constructor(private readonly range: { base: number; count: number }) {}

  async acquire(sandboxId: string): Promise<{ uid: number; gid: number; release(): void }> {
    const live = liveQemuUids();
    const { base, count } = this.range;
    const start = fnv1a(sandboxId) % count;
    for (let i = 0; i < count; i++) {
      const id = base + ((start + i) % count);
      if (this.reserved.has(id) || live.has(id)) continue;
      this.reserved.add(id);
      let released = false;
      return { uid: id, gid: id, release: () => { if (!released) { released = true; this.reserved.delete(id); } } };
    }
    throw new HostFailureError(`no free uid for a VM in ${base}..${base + count - 1}`);
  }
}

/**
 * uids of the live QEMU processes on this host (any QEMU: an id in the range
 * used by a QEMU we do not know about is skipped too). Synchronous on purpose:
 * /proc reads through the thread pool took ≈ 9 ms for 100 processes, these
 * take ≈ 2–4 ms (once per VM start).
 */
function liveQemuUids(procRoot = '/proc'): Set<number> {
  const out = new Set<number>();
  let entries: string[];
  try { entries = readdirSync(procRoot); } catch { return out; }
  for (const pid of entries) {
    if (!/^\d+$/.test(pid)) continue;
    let cmdline: string;
    try { cmdline = readFileSync(`${procRoot}/${pid}/cmdline`, 'latin1'); } catch { continue; }
    const end = cmdline.indexOf('\0');
    if (!(end < 0 ? cmdline : cmdline.slice(0, end)).includes('qemu-system')) continue;
    let status: string;
    try { status = readFileSync(`${procRoot}/${pid}/status`, 'latin1'); } catch { continue; }
    const m = /^Uid:\s+\d+\s+(\d+)/m.exec(status);
    if (m) out.add(Number(m[1]));
  }
  return out;
}
