/**
 * Per-sandbox network policy: egress (internet on/off, allow and deny CIDR
 * lists, deny wins) and which guest TCP ports the host may reach (exposure).
 */
import { InvalidArgumentError } from '../../core/errors.js';
import { formatCidr, parseCidr } from './addressing.js';
import type { EgressPolicy } from '../types.js';

export type { EgressPolicy };

/** Guest TCP ports the host may connect to (the agent port is always included). */
export type Exposure = 'all' | number[];

export interface SlotPolicy {
  egress: EgressPolicy;
  exposure: Exposure;
}

export const DEFAULT_EGRESS: EgressPolicy = Object.freeze({ internet: true, allow: [], deny: [] }) as EgressPolicy;

/**
 * Destinations no sandbox may reach whatever its policy (operator-level deny):
 * "this" network, private ranges (the host's LAN, other sandboxes' veths),
 * carrier-grade NAT, loopback, link-local (cloud metadata 169.254.169.254,
 * the guest link itself), IETF protocol assignments, benchmarking,
 * multicast, reserved and broadcast. Configurable (`alwaysDeny`).
 */
export const DEFAULT_ALWAYS_DENY: readonly string[] = Object.freeze([
  '0.0.0.0/8',
  '10.0.0.0/8',
  '100.64.0.0/10',
  '127.0.0.0/8',
  '169.254.0.0/16',
  '172.16.0.0/12',
  '192.0.0.0/24',
  '192.168.0.0/16',
  '198.18.0.0/15',
  '224.0.0.0/3',
]);

const MAX_CIDRS = 1024;

function normalizeList(list: unknown, field: string): string[] {
  if (list === undefined) return [];
  if (!Array.isArray(list)) throw new InvalidArgumentError(`${field} must be a list of IPv4 CIDRs`, field);
  if (list.length > MAX_CIDRS) throw new InvalidArgumentError(`${field} has ${list.length} entries; at most ${MAX_CIDRS}`, field);
  const out = new Set<string>();
  for (const item of list) {
    if (typeof item !== 'string') throw new InvalidArgumentError(`${field} must be a list of IPv4 CIDRs`, field);
    out.add(formatCidr(parseCidr(item, field)));
  }
  return [...out].sort();
}

/** Validates and normalizes a policy (CIDRs to network/prefix, sorted, deduplicated). */
export function normalizeEgress(p: Partial<EgressPolicy> | undefined, base: EgressPolicy = DEFAULT_EGRESS): EgressPolicy {
  if (p !== undefined && (typeof p !== 'object' || p === null)) throw new InvalidArgumentError('egress policy must be an object', 'egress');
  const internet = p?.internet ?? base.internet;
  if (typeof internet !== 'boolean') throw new InvalidArgumentError('egress.internet must be a boolean', 'egress.internet');
  return {
    internet,
    allow: normalizeList(p?.allow ?? base.allow, 'egress.allow'),
    deny: normalizeList(p?.deny ?? base.deny, 'egress.deny'),
  };
}

export function normalizeExposure(e: Exposure | undefined, agentPort: number): Exposure {
  if (e === undefined || e === 'all') return 'all';
  if (!Array.isArray(e)) throw new InvalidArgumentError(`exposure must be 'all' or a list of ports`, 'exposure');
  const ports = new Set<number>([agentPort]);
  for (const p of e) {
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new InvalidArgumentError(`exposed port ${JSON.stringify(p)} is not 1..65535`, 'exposure');
    ports.add(p);
  }
  return [...ports].sort((a, b) => a - b);
}

/**
 * Whether the policy lets a guest reach `ip` (what the ruleset enforces, as a
 * function: used by unit tests and by `explain` in docs): operator deny, then
 * sandbox deny, then allow, then the internet switch.
 */
export function egressAllows(policy: EgressPolicy, alwaysDeny: readonly string[], ip: string, internetAvailable: boolean): boolean {
  const addr = parseCidr(ip).base;
  const within = (list: readonly string[]) => list.some((c) => {
    const x = parseCidr(c);
    const size = 2 ** (32 - x.prefix);
    return addr >= x.base && addr < x.base + size;
  });
  if (!internetAvailable) return false;
  if (within(alwaysDeny) || within(policy.deny)) return false;
  if (within(policy.allow)) return true;
  return policy.internet;
}
