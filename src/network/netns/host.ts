/**
 * Host operations for netns slots: every command goes through a CommandRunner
 * (an argument array, never a shell string), so unit tests can check exactly
 * what would run. iproute2 batches keep a slot's set-up to five processes.
 */
import path from 'node:path';
import { HostFailureError, errorMessage } from '../../core/errors.js';
import type { CommandRunner } from '../../util/exec.js';
import {
  GATEWAY_IP, GATEWAY_MAC, GUEST_PREFIX, NS_VETH_NAME, TAP_NAME, type SlotAddresses, type SlotNames,
} from './addressing.js';

export interface SlotHostOptions {
  runner: CommandRunner;
  names: SlotNames;
  /** Where `ip netns add` puts namespaces (for nsenter). Default /run/netns. */
  netnsDir?: string;
  /** Set forwarding on each host veth (only when an egress interface is configured). */
  forwarding: boolean;
}

/** Sysctls inside every slot namespace. */
export const SLOT_SYSCTLS: readonly string[] = [
  'net.ipv4.ip_forward=1',
  // IPv4 only: no IPv6 path exists that the policy would have to cover.
  'net.ipv6.conf.all.disable_ipv6=1',
  'net.ipv6.conf.default.disable_ipv6=1',
];

export class SlotHost {
  readonly netnsDir: string;
  private conntrack: Promise<boolean> | undefined;

  constructor(private readonly opts: SlotHostOptions) {
    this.netnsDir = opts.netnsDir ?? '/run/netns';
  }

  private get run(): CommandRunner { return this.opts.runner; }

  netnsPath(netns: string): string { return path.join(this.netnsDir, netns); }

  private nsenter(netns: string, cmd: string, args: readonly string[]): [string, string[]] {
    return ['nsenter', [`--net=${this.netnsPath(netns)}`, '--', cmd, ...args]];
  }

  /** Commands that build slot `n` (exported for unit tests and docs). */
  createCommands(n: number, a: SlotAddresses): { cmd: string; args: string[]; input?: string }[] {
    const ns = this.opts.names.netns(n);
    const hostIf = this.opts.names.hostIf(n);
    const rootBatch = [
      `netns add ${ns}`,
      `link add ${hostIf} type veth peer name ${NS_VETH_NAME} netns ${ns}`,
      `addr add ${a.hostAddr}/30 dev ${hostIf}`,
      `link set ${hostIf} up`,
    ];
    const nsBatch = [
      'link set lo up',
      `addr add ${a.nsAddr}/30 dev ${NS_VETH_NAME}`,
      `link set ${NS_VETH_NAME} up`,
      `tuntap add dev ${TAP_NAME} mode tap`,
      `link set ${TAP_NAME} address ${GATEWAY_MAC}`,
      `addr add ${GATEWAY_IP}/${GUEST_PREFIX} dev ${TAP_NAME}`,
      `link set ${TAP_NAME} up`,
      `route add default via ${a.hostAddr} dev ${NS_VETH_NAME}`,
    ];
    const hostSysctls = [`net.ipv6.conf.${hostIf}.disable_ipv6=1`];
    if (this.opts.forwarding) hostSysctls.push(`net.ipv4.conf.${hostIf}.forwarding=1`);
    const [c1, a1] = this.nsenter(ns, 'sysctl', ['-q', '-w', ...SLOT_SYSCTLS]);
    return [
      { cmd: 'ip', args: ['-batch', '-'], input: rootBatch.join('\n') + '\n' },
      { cmd: 'ip', args: ['-n', ns, '-batch', '-'], input: nsBatch.join('\n') + '\n' },
      { cmd: c1, args: a1 },
      { cmd: 'sysctl', args: ['-q', '-w', ...hostSysctls] },
    ];
  }

  /** Builds namespace, veth pair, tap and sysctls of slot `n` (the ruleset comes next, from the pool). */
  async create(n: number, a: SlotAddresses, signal?: AbortSignal): Promise<void> {
    for (const c of this.createCommands(n, a)) {
      await this.run(c.cmd, c.args, { ...(signal ? { signal } : {}), ...(c.input !== undefined ? { input: c.input } : {}) });
    }
  }

  /** Replaces the slot's table (one `nft -f` transaction). */
  async applyRules(netns: string, ruleset: string, signal?: AbortSignal): Promise<void> {
    const [cmd, args] = this.nsenter(netns, 'nft', ['-f', '-']);
    await this.run(cmd, args, { input: ruleset, ...(signal ? { signal } : {}) });
  }

  /** Whether the conntrack tool is installed (probed once). */
  hasConntrack(): Promise<boolean> {
    this.conntrack ??= this.run('conntrack', ['--version'], { allowFailure: true }).then((r) => r.code === 0, () => false);
    return this.conntrack;
  }

  /**
   * Flushes the slot's connection-tracking table when the conntrack tool is
   * installed. Without it, the generation mark in the ruleset already makes
   * every old flow unusable (docs/networking.md, "Slot life cycle").
   */
  async flushConntrack(netns: string): Promise<boolean> {
    if (!await this.hasConntrack()) return false;
    // Without this, a mid-stream TCP packet of a flushed flow is picked up as a new flow
    // (the kernel's default "loose" tracking), marked with the new generation and let
    // through: the flush would undo the generation mark. Per namespace; needs nf_conntrack,
    // which the slot's ruleset has loaded by now.
    const [sc, sa] = this.nsenter(netns, 'sysctl', ['-q', '-w', 'net.netfilter.nf_conntrack_tcp_loose=0']);
    await this.run(sc, sa, { allowFailure: true });
    const [cmd, args] = this.nsenter(netns, 'conntrack', ['-F']);
    const r = await this.run(cmd, args, { allowFailure: true });
    return r.code === 0;
  }

  /**
   * Removes a slot: the host veth first (that removes its peer in the namespace
   * synchronously, so the name is free for a new slot at once), then the
   * namespace (its tap, table and conntrack table go with it). Missing pieces
   * are fine: destroy is idempotent.
   */
  async destroy(netns: string, hostIf: string): Promise<void> {
    const errors: string[] = [];
    const link = await this.run('ip', ['link', 'del', hostIf], { allowFailure: true });
    if (link.code !== 0 && !/Cannot find device|does not exist/i.test(link.stderr)) errors.push(`ip link del ${hostIf}: ${link.stderr.trim()}`);
    const ns = await this.run('ip', ['netns', 'del', netns], { allowFailure: true });
    if (ns.code !== 0 && !/No such file or directory/i.test(ns.stderr)) errors.push(`ip netns del ${netns}: ${ns.stderr.trim()}`);
    if (errors.length) throw new HostFailureError(`could not remove network slot ${netns}: ${errors.join('; ')}`);
  }

  /** Network namespaces on the host (names). */
  async listNetns(): Promise<string[]> {
    const r = await this.run('ip', ['netns', 'list']);
    return r.stdout.split('\n').map((l) => l.trim().split(/\s+/)[0] ?? '').filter(Boolean);
  }

  /** Interfaces in the root namespace (names, without the @peer suffix). */
  async listLinks(): Promise<string[]> {
    const r = await this.run('ip', ['-o', 'link', 'show']);
    const out: string[] = [];
    for (const line of r.stdout.split('\n')) {
      const m = /^\d+:\s+([^:@\s]+)/.exec(line);
      if (m) out.push(m[1]!);
    }
    return out;
  }

  /** IPv4 routes of the root namespace's main table: destination and device. */
  async listRoutes(): Promise<{ dst: string; dev: string }[]> {
    const r = await this.run('ip', ['-4', '-o', 'route', 'show']);
    const out: { dst: string; dev: string }[] = [];
    for (const line of r.stdout.split('\n')) {
      const w = line.trim().split(/\s+/);
      const dev = w[w.indexOf('dev') + 1];
      if (w[0] && w.includes('dev') && dev) out.push({ dst: w[0], dev });
    }
    return out;
  }

  /** nftables tables in the root namespace. */
  async listTables(): Promise<{ family: string; name: string }[]> {
    const r = await this.run('nft', ['list', 'tables']);
    const out: { family: string; name: string }[] = [];
    for (const line of r.stdout.split('\n')) {
      const m = /^table\s+(\S+)\s+(\S+)/.exec(line.trim());
      if (m) out.push({ family: m[1]!, name: m[2]! });
    }
    return out;
  }

  async applyHostRules(ruleset: string): Promise<void> {
    await this.run('nft', ['-f', '-'], { input: ruleset });
  }

  async readSysctl(key: string): Promise<string | null> {
    const r = await this.run('sysctl', ['-n', key], { allowFailure: true });
    return r.code === 0 ? r.stdout.trim() : null;
  }

  async writeSysctl(key: string, value: string): Promise<void> {
    await this.run('sysctl', ['-q', '-w', `${key}=${value}`]);
  }
}

/** A failure message with the command's own words. */
export function hostError(what: string, err: unknown): HostFailureError {
  return new HostFailureError(`${what}: ${errorMessage(err)}`, { cause: err });
}
