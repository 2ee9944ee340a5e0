/**
 * The addressing plan of netns slots (docs/networking.md, "Addressing").
 *
 * Inside every slot the guest side is identical (same tap name, same guest and
 * gateway addresses, same MACs) so that one memory snapshot restores in any
 * slot. Each slot differs only on the host side: a /30 from a configurable
 * private range for its veth pair (host end .1, namespace end .2).
 */
import { ConfigError, InternalError, InvalidArgumentError } from '../../core/errors.js';

/** The tap device in every slot namespace (QEMU/Firecracker attach to it by name). */
export const TAP_NAME = 'tap0';
/** The slot namespace's end of the veth pair (the host end is named per slot). */
export const NS_VETH_NAME = 'veth0';
/** Guest address and prefix: a link-local /30 shared by every slot. */
export const GUEST_IP = '169.254.0.21';
export const GUEST_PREFIX = 30;
/** The slot namespace's address on the tap: the guest's default gateway. */
export const GATEWAY_IP = '169.254.0.22';
/** The guest NIC's MAC (QEMU `-device virtio-net…,mac=`). */
export const GUEST_MAC = '02:48:54:00:00:15';
/**
 * The tap's own MAC, fixed as well: a restored guest keeps the gateway's MAC in
 * its ARP cache, and a tap with another MAC would drop its frames until the
 * entry expires.
 */
export const GATEWAY_MAC = '02:48:54:00:00:16';
/** Default private range for the per-slot veth /30s (16384 slots). */
export const DEFAULT_HOST_RANGE = '10.201.0.0/16';

// ------------------------------------------------------------------ IPv4 helpers

export interface Cidr { /** network address as an unsigned 32-bit number */ base: number; prefix: number }

export function ipToInt(ip: string): number {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ip.trim());
  if (!m) throw new InvalidArgumentError(`${JSON.stringify(ip)} is not an IPv4 address`, 'address');
  const o = m.slice(1, 5).map(Number);
  if (o.some((x) => x > 255)) throw new InvalidArgumentError(`${JSON.stringify(ip)} is not an IPv4 address`, 'address');
  return ((o[0]! << 24) >>> 0) + (o[1]! << 16) + (o[2]! << 8) + o[3]!;
}

export function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');
}

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/**
 * Parses `a.b.c.d/p` (or a bare address, = /32). Host bits are cleared:
 * `10.1.2.3/8` is the network 10.0.0.0/8.
 */
export function parseCidr(s: string, field = 'cidr'): Cidr {
  const t = s.trim();
  const slash = t.indexOf('/');
  const addr = slash < 0 ? t : t.slice(0, slash);
  const prefixText = slash < 0 ? '32' : t.slice(slash + 1);
  if (!/^\d{1,2}$/.test(prefixText) || Number(prefixText) > 32) {
    throw new InvalidArgumentError(`${JSON.stringify(s)} is not an IPv4 CIDR (a.b.c.d/0-32)`, field);
  }
  let ip: number;
  try { ip = ipToInt(addr); } catch {
    throw new InvalidArgumentError(`${JSON.stringify(s)} is not an IPv4 CIDR (a.b.c.d/0-32)`, field);
  }
  const prefix = Number(prefixText);
  return { base: (ip & maskOf(prefix)) >>> 0, prefix };
}

export function formatCidr(c: Cidr): string {
  return `${intToIp(c.base)}/${c.prefix}`;
}

/** First and last address of a CIDR, as numbers. */
export function cidrRange(c: Cidr): [number, number] {
  return [c.base, c.base + 2 ** (32 - c.prefix) - 1];
}

export function cidrContains(c: Cidr, ip: number): boolean {
  const [a, b] = cidrRange(c);
  return ip >= a && ip <= b;
}

export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  const [a0, a1] = cidrRange(a);
  const [b0, b1] = cidrRange(b);
  return a0 <= b1 && b0 <= a1;
}

/**
 * Merges CIDRs into sorted, disjoint, non-adjacent ranges: nftables refuses
 * overlapping elements in an interval set, and a sorted list makes the
 * generated ruleset deterministic.
 */
export function mergeRanges(cidrs: readonly Cidr[]): [number, number][] {
  const ranges = cidrs.map(cidrRange).sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  const out: [number, number][] = [];
  for (const r of ranges) {
    const last = out.at(-1);
    if (last && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]);
    else out.push([r[0], r[1]]);
  }
  return out;
}

/** An nftables element for a range: `a.b.c.d/p` when it is exactly a CIDR, else `a-b`. */
export function nftRangeElement([a, b]: [number, number]): string {
  const size = b - a + 1;
  const prefix = 32 - Math.log2(size);
  if (Number.isInteger(prefix) && a % size === 0) return prefix === 32 ? intToIp(a) : `${intToIp(a)}/${prefix}`;
  return `${intToIp(a)}-${intToIp(b)}`;
}

// ------------------------------------------------------------------ slot plan

export interface SlotAddresses {
  /** The /30 of this slot's veth pair, e.g. 10.201.0.4/30. */
  subnet: string;
  /** Host (root namespace) end of the veth pair, e.g. 10.201.0.5. */
  hostAddr: string;
  /** Slot namespace end: where the host reaches the guest's ports (DNAT), e.g. 10.201.0.6. */
  nsAddr: string;
}

/** Maps slot numbers to /30s of the host range: slot n gets the n-th /30. */
export class AddressPlan {
  readonly range: Cidr;
  /** How many slots the range holds. */
  readonly capacity: number;

  constructor(range: string = DEFAULT_HOST_RANGE) {
    try {
      this.range = parseCidr(range, 'hostRange');
    } catch (err) {
      throw new ConfigError(`hostRange: ${(err as Error).message}`, 'network.hostRange');
    }
    if (this.range.prefix > 30) throw new ConfigError(`hostRange ${range} is too small: each slot needs a /30`, 'hostRange');
    if (this.range.prefix < 8) throw new ConfigError(`hostRange ${range} is too large (prefix 8..30)`, 'hostRange');
    const guest = parseCidr(`${GUEST_IP}/${GUEST_PREFIX}`);
    if (cidrsOverlap(this.range, guest)) throw new ConfigError(`hostRange ${range} overlaps the guest link ${formatCidr(guest)}`, 'hostRange');
    this.capacity = 2 ** (30 - this.range.prefix);
  }

  get rangeText(): string { return formatCidr(this.range); }

  addresses(n: number): SlotAddresses {
    if (!Number.isInteger(n) || n < 0 || n >= this.capacity) {
      throw new InternalError(`slot ${n} is outside the host range ${this.rangeText} (0..${this.capacity - 1})`);
    }
    const base = this.range.base + n * 4;
    return { subnet: `${intToIp(base)}/30`, hostAddr: intToIp(base + 1), nsAddr: intToIp(base + 2) };
  }
}

/** Kernel command-line parameters for a guest on a tap slot (read by scripts/guest/hearth-init). */
export function tapGuestKernelArgs(dns: readonly string[] = []): string {
  const parts = [`hearth.ip=${GUEST_IP}/${GUEST_PREFIX}`, `hearth.gw=${GATEWAY_IP}`];
  if (dns.length) parts.push(`hearth.dns=${dns.join(',')}`);
  return parts.join(' ');
}

// ------------------------------------------------------------------ names

const TAG = /^[a-z][a-z0-9]{0,3}$/;

/**
 * Names of a pool's host objects. The tag (empty in production) lets several
 * pools share a host (tests run beside a real daemon) without one reaping the
 * other's: each pool matches only its own exact patterns.
 *
 *   tag ''  : namespaces hearth-s<N>,  host veths hths<N>,  host table inet hearth
 *   tag 't7': namespaces hearth-t7s<N>, host veths htht7s<N>, host table inet hearth-t7
 */
export class SlotNames {
  readonly tag: string;
  private readonly nsRe: RegExp;
  private readonly ifRe: RegExp;

  constructor(tag = '') {
    if (tag !== '' && !TAG.test(tag)) throw new ConfigError(`network tag ${JSON.stringify(tag)} must be 1-4 of [a-z0-9], starting with a letter`, 'tag');
    this.tag = tag;
    this.nsRe = new RegExp(`^hearth-${tag}s(0|[1-9]\\d{0,4})$`);
    this.ifRe = new RegExp(`^hth${tag}s(0|[1-9]\\d{0,4})$`);
  }

  netns(n: number): string { return `hearth-${this.tag}s${n}`; }
  hostIf(n: number): string { return `hth${this.tag}s${n}`; }
  /** nftables interface wildcard matching every host veth of this pool. */
  get hostIfGlob(): string { return `hth${this.tag}s*`; }
  /** The pool's table in the root namespace (isolation between slots, egress NAT). */
  get hostTable(): string { return this.tag ? `hearth-${this.tag}` : 'hearth'; }
  /** The table inside each slot namespace (same name in every slot). */
  readonly slotTable = 'hearth';

  slotOfNetns(name: string): number | undefined {
    const m = this.nsRe.exec(name);
    return m ? Number(m[1]) : undefined;
  }

  slotOfHostIf(name: string): number | undefined {
    const m = this.ifRe.exec(name);
    return m ? Number(m[1]) : undefined;
  }
}
