/**
 * QEMU command line for a Hearth VM, built from a VmConfig as an argv array
 * (never a shell string). docs/vmm-qemu.md explains every flag.
 */
import path from 'node:path';
import { ConfigError, InternalError } from '../../core/errors.js';
import type { VmConfig } from '../types.js';
import type { Accel } from '../probe.js';

export type QemuMachine = 'microvm' | 'q35';
export type DriveCache = 'none' | 'writeback' | 'unsafe' | 'directsync' | 'writethrough';
export type DriveAio = 'threads' | 'native' | 'io_uring';

export interface QemuCmdlineOptions {
  accel: Accel;
  /** Default 'microvm' (virtio-mmio described by ACPI); 'q35' uses virtio-pci. */
  machine?: QemuMachine;
  /** Host TSC rate, added as `tsc_early_khz=` for microvm under TCG (no PIT/HPET to calibrate against). */
  tscKhz?: number;
  /** Root drive cache mode (default 'writeback'; see docs/vmm-qemu.md). */
  driveCache?: DriveCache;
  driveAio?: DriveAio;
  /** `-sandbox on,...` (seccomp). Default true. */
  seccomp?: boolean;
  /**
   * Drop to this uid/gid once QEMU has opened its files (`-runas uid:gid`). QEMU
   * calls setgid/setgroups/setuid after installing the seccomp filter, so the
   * filter must allow them (`elevateprivileges=allow`; deny and children kill
   * QEMU with SIGSYS, measured). After the drop the process has no capabilities
   * and NoNewPrivs, so set*id cannot regain anything.
   */
  runAs?: { uid: number; gid: number };
  /** `-chroot <dir>` (with runAs): QEMU chroots there before dropping privileges. */
  chrootDir?: string;
  /** Start with `-incoming defer` (restore). */
  incoming?: boolean;
  /** Start with vCPUs stopped (`-S`); restore uses it so that `cont` is explicit. */
  paused?: boolean;
  /**
   * TCG only: the translation cache in MiB (`-accel tcg,tb-size=N`). QEMU's default is 1 GiB, which
   * a busy guest fills with anonymous memory (RssAnon ~494 MB measured on a 512 MiB guest); default
   * DEFAULT_TCG_TB_SIZE_MIB (docs/performance.md has the measurements).
   */
  tbSizeMib?: number;
}

/** The TCG translation cache per VM (MiB): enough for a guest's kernel, agent and shell working set. */
export const DEFAULT_TCG_TB_SIZE_MIB = 128;

/** The CPU model per accelerator: the host's CPU under KVM, everything TCG can emulate otherwise. */
export function cpuModel(accel: Accel): string {
  return accel === 'kvm' ? 'host' : 'max';
}

/** Files of one VM inside its runDir. */
export function runFiles(runDir: string): { qmpSocket: string; pidFile: string; stderrLog: string; vmRoot: string } {
  return {
    qmpSocket: path.join(runDir, 'qmp.sock'),
    pidFile: path.join(runDir, 'qemu.pid'),
    stderrLog: path.join(runDir, 'qemu.log'),
    /** QEMU's working directory (and chroot) when it runs unprivileged: holds only mig.sock during a snapshot. */
    vmRoot: path.join(runDir, 'vmroot'),
  };
}

/** The `-sandbox` value: everything denied, except set*id when QEMU must drop privileges itself (-runas). */
export function sandboxOption(runAs: boolean): string {
  return `on,obsolete=deny,elevateprivileges=${runAs ? 'allow' : 'deny'},spawn=deny,resourcecontrol=deny`;
}

const SANDBOX_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** The `-name` value: how reconciliation recognises a Hearth VM and its sandbox. */
export function qemuVmName(sandboxId: string): string {
  if (!SANDBOX_ID.test(sandboxId)) {
    throw new InternalError(`sandbox id ${JSON.stringify(sandboxId)} is not usable in a QEMU -name (letters, digits, . _ -)`);
  }
  return `hearth-${sandboxId}`;
}

/** Inverse of the command line: which sandbox (and runDir) a QEMU argv belongs to, if any. */
export function parseQemuArgv(argv: string[]): { sandboxId: string; runDir?: string } | undefined {
  const i = argv.indexOf('-name');
  const name = i >= 0 ? argv[i + 1] : undefined;
  if (!name) return undefined;
  const guest = name.split(/(?<!,),(?!,)/)[0]!.replace(/^guest=/, '');
  const m = /^hearth-([A-Za-z0-9][A-Za-z0-9_.-]*)$/.exec(guest);
  if (!m) return undefined;
  const p = argv.indexOf('-pidfile');
  const pidFile = p >= 0 ? argv[p + 1] : undefined;
  return { sandboxId: m[1]!, runDir: pidFile ? path.dirname(pidFile) : undefined };
}

/** QEMU option values separate key=value pairs by ','; a literal comma is written ',,'. */
export function qemuEscape(value: string): string {
  return value.replace(/,/g, ',,');
}

/** Kernel command line: the transport's needs first, then the caller's arguments. */
export function kernelCmdline(cfg: VmConfig, opts: QemuCmdlineOptions): string {
  const user = cfg.kernelArgs.trim();
  const has = (key: string) => new RegExp(`(^|\\s)${key}=`).test(user);
  const parts: string[] = [];
  if (!has('console')) parts.push('console=ttyS0');
  if (!has('root')) parts.push('root=/dev/vda');
  if ((opts.machine ?? 'microvm') === 'microvm' && opts.accel === 'tcg' && opts.tscKhz && !has('tsc_early_khz')) {
    parts.push(`tsc_early_khz=${Math.round(opts.tscKhz)}`);
  }
  if (user) parts.push(user);
  return parts.join(' ');
}

function checkSocketPath(p: string): void {
  // sun_path is 108 bytes including the terminating NUL.
  if (Buffer.byteLength(p) > 107) {
    throw new ConfigError(`QMP socket path is too long for a Unix socket (${Buffer.byteLength(p)} > 107 bytes): ${p}`, 'runDir');
  }
}

/** Network address helpers for user-mode networking. */
export function parseGuestCidr(cidr: string): { network: string; prefix: number; address?: string } {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr.trim());
  if (!m) throw new InternalError(`guestCidr ${JSON.stringify(cidr)} is not an IPv4 CIDR`);
  const octets = m.slice(1, 5).map(Number);
  const prefix = Number(m[5]);
  if (octets.some((o) => o > 255) || prefix < 8 || prefix > 30) {
    throw new InternalError(`guestCidr ${JSON.stringify(cidr)} is out of range (prefix 8..30)`);
  }
  const ip = octets.reduce((a, o) => (a * 256) + o, 0);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const net = (ip & mask) >>> 0;
  const toStr = (n: number) => [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');
  return { network: toStr(net), prefix, address: ip !== net ? toStr(ip) : undefined };
}

function netdevArgs(cfg: VmConfig, machine: QemuMachine): string[] {
  const nic = machine === 'microvm' ? 'virtio-net-device' : 'virtio-net-pci';
  const n = cfg.network;
  if (n.kind === 'user') {
    const { network, prefix, address } = parseGuestCidr(n.guestCidr);
    const opts = ['user', 'id=n0', 'restrict=on', `net=${network}/${prefix}`, `host=${n.gateway}`];
    // A guestCidr naming a host address (10.0.2.15/24) is the guest's address: hand it out
    // by DHCP and forward to it; a network (10.0.2.0/24) forwards to QEMU's default (.15).
    if (address) opts.push(`dhcpstart=${address}`);
    for (const f of n.forwards) {
      if (!Number.isInteger(f.hostPort) || !Number.isInteger(f.guestPort) || f.hostPort < 1 || f.hostPort > 65535 || f.guestPort < 1 || f.guestPort > 65535) {
        throw new InternalError(`bad port forward ${JSON.stringify(f)}`);
      }
      opts.push(`hostfwd=tcp:127.0.0.1:${f.hostPort}-${address ?? ''}:${f.guestPort}`);
    }
    return ['-netdev', opts.join(','), '-device', `${nic},netdev=n0`];
  }
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(n.tapName)) throw new InternalError(`bad tap name ${JSON.stringify(n.tapName)}`);
  if (!/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(n.mac)) throw new InternalError(`bad MAC ${JSON.stringify(n.mac)}`);
  return [
    '-netdev', `tap,id=n0,ifname=${n.tapName},script=no,downscript=no`,
    '-device', `${nic},netdev=n0,mac=${n.mac}`,
  ];
}

/** The QEMU argv (without the binary). */
export function buildQemuArgs(cfg: VmConfig, opts: QemuCmdlineOptions): string[] {
  const machine = opts.machine ?? 'microvm';
  if (!Number.isInteger(cfg.vcpus) || cfg.vcpus < 1 || cfg.vcpus > 64) throw new InternalError(`vcpus must be 1..64, got ${cfg.vcpus}`);
  if (!Number.isInteger(cfg.memoryMib) || cfg.memoryMib < 64) throw new InternalError(`memoryMib must be an integer >= 64, got ${cfg.memoryMib}`);
  for (const [field, value] of [['kernelPath', cfg.kernelPath], ['rootfsPath', cfg.rootfsPath], ['memoryFilePath', cfg.memoryFilePath], ['runDir', cfg.runDir], ['consoleLogPath', cfg.consoleLogPath]] as const) {
    if (!value || !path.isAbsolute(value)) throw new InternalError(`${field} must be an absolute path, got ${JSON.stringify(value)}`);
  }
  if (cfg.initrdPath !== undefined && !path.isAbsolute(cfg.initrdPath)) throw new InternalError(`initrdPath must be an absolute path`);
  const files = runFiles(cfg.runDir);
  checkSocketPath(files.qmpSocket);
  const name = qemuVmName(cfg.sandboxId);
  const dev = (microvmDev: string, pciDev: string) => (machine === 'microvm' ? microvmDev : pciDev);

  const machineOpts = machine === 'microvm'
    ? 'microvm,acpi=on,pit=off,pic=off,rtc=on,memory-backend=mem'
    : 'q35,memory-backend=mem';
  const args: string[] = [
    '-name', `${name},process=${name}`,
    '-machine', machineOpts,
    '-accel', opts.accel === 'tcg' ? `tcg,tb-size=${opts.tbSizeMib ?? DEFAULT_TCG_TB_SIZE_MIB}` : opts.accel,
    '-cpu', cpuModel(opts.accel),
    '-smp', String(cfg.vcpus),
    '-m', `${cfg.memoryMib}M`,
    '-object', `memory-backend-file,id=mem,size=${cfg.memoryMib}M,mem-path=${qemuEscape(cfg.memoryFilePath)},share=on`,
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
  ];
  if (opts.runAs) {
    const { uid, gid } = opts.runAs;
    if (!Number.isInteger(uid) || !Number.isInteger(gid) || uid <= 0 || gid <= 0 || uid >= 0xffffffff || gid >= 0xffffffff) {
      throw new InternalError(`runAs must be a non-root uid:gid, got ${uid}:${gid}`);
    }
    args.push('-runas', `${uid}:${gid}`);
    if (opts.chrootDir) {
      if (!path.isAbsolute(opts.chrootDir)) throw new InternalError('chrootDir must be an absolute path');
      args.push('-chroot', opts.chrootDir);
    }
  }
  if (opts.seccomp ?? true) {
    // spawn=deny is possible because snapshots never use exec: migration (see vmm.ts).
    args.push('-sandbox', sandboxOption(opts.runAs !== undefined));
  }
  args.push(
    '-chardev', `file,id=con0,path=${qemuEscape(cfg.consoleLogPath)},append=on`,
    '-serial', 'chardev:con0',
    '-kernel', cfg.kernelPath,
  );
  if (cfg.initrdPath) args.push('-initrd', cfg.initrdPath);
  args.push('-append', kernelCmdline(cfg, opts));
  const cache = opts.driveCache ?? 'writeback';
  const aio = opts.driveAio ?? 'threads';
  // auto-read-only=off: the image stays O_RDWR while migration inactivates it, so QEMU re-uses its fd
  // instead of reopening the path (which an unprivileged QEMU could not do).
  args.push(
    '-drive', `id=root,file=${qemuEscape(cfg.rootfsPath)},if=none,format=raw,cache=${cache},aio=${aio},discard=unmap,auto-read-only=off`,
    '-device', `${dev('virtio-blk-device', 'virtio-blk-pci')},drive=root`,
    ...netdevArgs(cfg, machine),
    '-device', dev('virtio-rng-device', 'virtio-rng-pci'),
    '-chardev', `socket,id=qmp,path=${qemuEscape(files.qmpSocket)},server=on,wait=off`,
    '-mon', 'chardev=qmp,mode=control',
    '-pidfile', files.pidFile,
  );
  if (opts.paused) args.push('-S');
  if (opts.incoming) args.push('-incoming', 'defer');
  return args;
}

/**
 * The program to spawn: QEMU itself, or (tap networking) QEMU entered into the
 * slot's network namespace with nsenter, which execs QEMU in place so the
 * spawned pid is QEMU's pid.
 */
export function spawnCommand(cfg: VmConfig, qemuBinary: string, qemuArgs: string[], netnsDir = '/run/netns'): { file: string; args: string[] } {
  if (cfg.network.kind === 'tap') {
    const ns = cfg.network.netnsName;
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(ns)) throw new InternalError(`bad netns name ${JSON.stringify(ns)}`);
    return { file: 'nsenter', args: [`--net=${path.join(netnsDir, ns)}`, '--', qemuBinary, ...qemuArgs] };
  }
  return { file: qemuBinary, args: qemuArgs };
}

/** Parses a QEMU option string ("type,key=value,..." with ",," for a literal comma). */
export function parseQemuOpts(s: string): { first?: string; opts: Record<string, string> } {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === ',') {
      if (s[i + 1] === ',') { cur += ','; i++; continue; }
      parts.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  parts.push(cur);
  const opts: Record<string, string> = {};
  let first: string | undefined;
  parts.forEach((p, idx) => {
    const eq = p.indexOf('=');
    if (eq < 0) { if (idx === 0) first = p; else opts[p] = 'on'; return; }
    opts[p.slice(0, eq)] = p.slice(eq + 1);
  });
  return { first, opts };
}

/** The guest-RAM file named on a QEMU command line built by buildQemuArgs. */
export function memoryPathFromArgv(argv: string[]): string | undefined {
  for (let i = 0; i < argv.length - 1; i++) {
    if (argv[i] !== '-object') continue;
    const { first, opts } = parseQemuOpts(argv[i + 1]!);
    if ((first === 'memory-backend-file' || opts['qom-type'] === 'memory-backend-file') && opts['id'] === 'mem') return opts['mem-path'];
  }
  return undefined;
}
