/**
 * Where one Firecracker VM lives on the host and how it is started.
 *
 * Every VM has a *root* directory, Firecracker's working directory, holding
 * its files under constant names (config.ts ROOT): `vmlinux`, `rootfs`,
 * `v.sock`, `uffd.sock`, … API bodies use those relative names, so a
 * snapshot taken in one root restores in any other. Three ways to start:
 *
 *  - `none`: `firecracker` spawned with cwd = `<runDir>/fc`; files there are
 *    symlinks to the real kernel, disk, …
 *  - `mountns` (default when root): the same, inside a private mount
 *    namespace (`unshare --mount --propagation private`) where `<runDir>/fc`
 *    is bind-mounted at one constant path (default /run/hearth/fc-vm) and
 *    Firecracker runs there; every VM sees the same absolute cwd, and the
 *    mount vanishes with the process (nothing to clean up on the host).
 *  - `jailer`: Firecracker's jailer builds `<chroot-base>/<exec>/<id>/root`,
 *    chroots there, drops to uid/gid, joins the netns and cgroup. The files
 *    are hard links, copies, device nodes or bind mounts (jail.ts).
 *
 * With tap networking, `none` and `mountns` enter the slot's namespace with
 * `nsenter --net=`; the jailer uses `--netns`. Every wrapper execs in place,
 * so the spawned pid is Firecracker's (except with the jailer's
 * --new-pid-ns, where the pid comes from `<root>/<exec>.pid`).
 */
import path from 'node:path';
import { ConfigError, InternalError } from '../../core/errors.js';
import type { VmNetwork } from '../types.js';
import { ROOT } from './config.js';

export type Isolation = 'none' | 'mountns' | 'jailer';

export interface JailerSettings {
  binary: string;
  uid: number;
  gid: number;
  chrootBaseDir: string;
  cgroupVersion: 1 | 2;
  /** Relative to the cgroup root; default: the exec file's name (jailer default). */
  parentCgroup?: string;
  /** Set cpu.max and memory.max from the VM size (cgroup v2 only). */
  cgroupLimits: boolean;
  /** Extra guest-RAM headroom in memory.max (MiB). */
  memoryOverheadMib: number;
  newPidNs: boolean;
  resourceLimits?: { fsize?: number; noFile?: number };
  /** cgroup v2 mount point (for cleanup). */
  cgroupRoot: string;
}

export interface VmLayout {
  mode: Isolation;
  /** `--id`: [A-Za-z0-9-], at most 64 characters. */
  id: string;
  /** Host path of the VM root. */
  root: string;
  /** The root as the process sees it (its cwd). */
  rootInside: string;
  /** Host path of the API socket, and the `--api-sock` argument. */
  apiSocket: string;
  apiSocketArg: string;
  /** Firecracker's stdout (the guest's serial console) and stderr. */
  consoleLog: string;
  stderrLog: string;
  /** The driver's record of this VM, for adoption after a daemon restart. */
  stateFile: string;
  /** jailer: `<base>/<exec>/<id>` (removed on stop), the pid file, the cgroup. */
  chrootDir?: string;
  pidFile?: string;
  cgroupDir?: string;
}

export const MOUNTNS_ROOT_DEFAULT = '/run/hearth/fc-vm';
const SUN_PATH_MAX = 107;

/** Firecracker's instance id for a sandbox. */
export function firecrackerId(sandboxId: string): string {
  const id = `hearth-${sandboxId}`;
  if (!/^[A-Za-z0-9-]{1,64}$/.test(id)) {
    throw new InternalError(`sandbox id ${JSON.stringify(sandboxId)} does not make a Firecracker id (letters, digits, '-', at most 57 characters)`);
  }
  return id;
}

export function vmLayout(
  sandboxId: string,
  runDir: string,
  consoleLogPath: string,
  opts: { isolation: Isolation; mountnsRoot: string; firecrackerBinary: string; jailer?: JailerSettings },
): VmLayout {
  const id = firecrackerId(sandboxId);
  const base = {
    id,
    consoleLog: consoleLogPath,
    stderrLog: path.join(runDir, 'firecracker.stderr.log'),
    stateFile: path.join(runDir, 'firecracker.json'),
  };
  let layout: VmLayout;
  if (opts.isolation === 'jailer') {
    const j = opts.jailer;
    if (!j) throw new ConfigError('isolation "jailer" needs jailer settings');
    const exec = path.basename(opts.firecrackerBinary);
    const chrootDir = path.join(j.chrootBaseDir, exec, id);
    const root = path.join(chrootDir, 'root');
    layout = {
      ...base,
      mode: 'jailer',
      root,
      rootInside: '/',
      apiSocket: path.join(root, ROOT.apiSocket),
      apiSocketArg: `/${ROOT.apiSocket}`,
      chrootDir,
      pidFile: path.join(root, `${exec}.pid`),
      cgroupDir: j.cgroupVersion === 2 ? path.join(j.cgroupRoot, j.parentCgroup ?? exec, id) : undefined,
    };
  } else {
    const root = path.join(runDir, 'fc');
    layout = {
      ...base,
      mode: opts.isolation,
      root,
      rootInside: opts.isolation === 'mountns' ? opts.mountnsRoot : root,
      apiSocket: path.join(root, ROOT.apiSocket),
      apiSocketArg: path.join(root, ROOT.apiSocket),
    };
  }
  for (const name of [ROOT.apiSocket, ROOT.uffdSocket, `${ROOT.vsock}_4294967295`]) {
    const p = path.join(layout.root, name);
    if (Buffer.byteLength(p) > SUN_PATH_MAX) {
      throw new ConfigError(`Unix socket path ${p} is longer than ${SUN_PATH_MAX} bytes; use a shorter runDir or chroot base`, 'runDir');
    }
  }
  return layout;
}

export interface LaunchSettings {
  firecrackerBinary: string;
  mountnsRoot: string;
  netnsDir: string;
  enablePci: boolean;
  jailer?: JailerSettings;
}

/** Mounts the VM root at the constant path inside the new mount namespace, enters it, execs Firecracker. */
export const MOUNTNS_SCRIPT = 'mount --bind "$1" "$2" && cd "$2" && shift 2 && exec "$@"';

export interface LaunchCommand {
  file: string;
  args: string[];
  cwd: string;
}

/** The command that starts Firecracker for this layout (an argv, never a shell string built from input). */
export function launchCommand(layout: VmLayout, s: LaunchSettings, net: VmNetwork, vm: { vcpus: number; memoryMib: number }): LaunchCommand {
  const fcArgs = ['--api-sock', layout.apiSocketArg, '--id', layout.id];
  if (s.enablePci) fcArgs.push('--enable-pci');
  const netnsPath = net.kind === 'tap' ? path.join(s.netnsDir, net.netnsName) : undefined;
  if (layout.mode === 'jailer') {
    const j = s.jailer!;
    const args = [
      '--id', layout.id,
      '--exec-file', s.firecrackerBinary,
      '--uid', String(j.uid),
      '--gid', String(j.gid),
      '--chroot-base-dir', j.chrootBaseDir,
      '--cgroup-version', String(j.cgroupVersion),
    ];
    if (j.parentCgroup) args.push('--parent-cgroup', j.parentCgroup);
    if (j.cgroupLimits && j.cgroupVersion === 2) {
      args.push('--cgroup', `cpu.max=${vm.vcpus * 100000} 100000`);
      args.push('--cgroup', `memory.max=${(vm.memoryMib + j.memoryOverheadMib) * 1024 * 1024}`);
    }
    if (netnsPath) args.push('--netns', netnsPath);
    if (j.newPidNs) args.push('--new-pid-ns');
    if (j.resourceLimits?.fsize !== undefined) args.push('--resource-limit', `fsize=${j.resourceLimits.fsize}`);
    if (j.resourceLimits?.noFile !== undefined) args.push('--resource-limit', `no-file=${j.resourceLimits.noFile}`);
    args.push('--', ...fcArgs);
    return { file: j.binary, args, cwd: '/' };
  }
  let cmd: string[] = [s.firecrackerBinary, ...fcArgs];
  if (layout.mode === 'mountns') {
    cmd = ['unshare', '--mount', '--propagation', 'private', '--', '/bin/sh', '-c', MOUNTNS_SCRIPT, 'hearth-fc', layout.root, s.mountnsRoot, ...cmd];
  }
  if (netnsPath) cmd = ['nsenter', `--net=${netnsPath}`, '--', ...cmd];
  return { file: cmd[0]!, args: cmd.slice(1), cwd: layout.root };
}

/** The `--id` value on a Firecracker (or jailer-started) command line. */
export function idFromArgv(argv: string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--id') return argv[i + 1];
    if (a.startsWith('--id=')) return a.slice(5);
  }
  return undefined;
}
