/**
 * nftables rulesets, as text for `nft -f -` (one transaction each: a table is
 * replaced atomically, never seen half-written). docs/networking.md, "Rules",
 * explains every rule.
 *
 * Two tables:
 *  - `inet hearth` inside every slot namespace: DNAT host → guest for exposed
 *    ports, masquerade guest → world, the per-sandbox egress policy, and a
 *    connection "generation" mark that invalidates every flow of a previous
 *    tenant when the slot is reset;
 *  - `inet hearth` (or `hearth-<tag>`) in the root namespace: no forwarding
 *    between slots, nothing from a slot to the host but replies, forwarding
 *    and masquerade out of the operator's egress interface only.
 */
import { ConfigError, InternalError } from '../../core/errors.js';
import { GATEWAY_IP, GUEST_IP, NS_VETH_NAME, TAP_NAME, intToIp, ipToInt, mergeRanges, nftRangeElement, parseCidr } from './addressing.js';
import type { EgressPolicy, Exposure } from './policy.js';

/** Interface names go into the ruleset quoted; refuse anything that could escape the quotes. */
function ifname(name: string): string {
  if (!/^[A-Za-z0-9_.:*-]{1,15}$/.test(name)) throw new InternalError(`bad interface name ${JSON.stringify(name)}`);
  return `"${name}"`;
}

function tableName(name: string): string {
  if (!/^[a-z][a-z0-9-]{0,31}$/.test(name)) throw new InternalError(`bad nftables table name ${JSON.stringify(name)}`);
  return name;
}

/** `{ a, b-c, d/p }` for an interval set, or null when empty. */
function elements(cidrs: readonly string[]): string | null {
  if (!cidrs.length) return null;
  return mergeRanges(cidrs.map((c) => parseCidr(c))).map(nftRangeElement).join(', ');
}

export interface SlotRulesInput {
  table: string;
  /** The namespace end of the veth pair (DNAT target address for the host). */
  nsAddr: string;
  agentPort: number;
  egress: EgressPolicy;
  exposure: Exposure;
  /** Operator-level deny list (DEFAULT_ALWAYS_DENY plus the slot range). */
  alwaysDeny: readonly string[];
  /** Connection generation: flows marked with an older one are dropped (reset without conntrack). */
  generation: number;
}

const REJECT = 'reject with icmpx type admin-prohibited';

/** The ruleset inside a slot namespace, replacing any earlier version of the table. */
export function slotRuleset(p: SlotRulesInput): string {
  const t = tableName(p.table);
  if (!Number.isInteger(p.generation) || p.generation < 0 || p.generation > 0xffffffff) throw new InternalError(`bad generation ${p.generation}`);
  const gen = `0x${p.generation.toString(16).padStart(8, '0')}`;
  const tap = ifname(TAP_NAME);
  const veth = ifname(NS_VETH_NAME);
  const nsAddr = intToIp(ipToInt(p.nsAddr));
  const always = elements(p.alwaysDeny);
  const deny = elements(p.egress.deny);
  const allow = elements(p.egress.allow);
  const ports = p.exposure === 'all' ? null : [...new Set([p.agentPort, ...p.exposure])].sort((a, b) => a - b);
  const dnatMatch = ports ? `tcp dport { ${ports.join(', ')} }` : 'meta l4proto tcp';

  const lines: string[] = [
    `table inet ${t}`,
    `delete table inet ${t}`,
    `table inet ${t} {`,
    `  set allow_v4 {`,
    `    type ipv4_addr; flags interval;`,
    ...(allow ? [`    elements = { ${allow} }`] : []),
    `  }`,
    `  set deny_v4 {`,
    `    type ipv4_addr; flags interval;`,
    ...(deny ? [`    elements = { ${deny} }`] : []),
    `  }`,
    `  set always_deny_v4 {`,
    `    type ipv4_addr; flags interval;`,
    ...(always ? [`    elements = { ${always} }`] : []),
    `  }`,
    // Host → guest: the host's connections to <nsAddr>:<exposed port> go to the guest,
    // which sees them come from its gateway (same peer address in every slot).
    `  chain prerouting {`,
    `    type nat hook prerouting priority dstnat; policy accept;`,
    `    iifname ${veth} ip daddr ${nsAddr} ${dnatMatch} dnat ip to ${GUEST_IP}`,
    `  }`,
    `  chain postrouting {`,
    `    type nat hook postrouting priority srcnat; policy accept;`,
    `    oifname ${tap} ct status dnat snat ip to ${GATEWAY_IP}`,
    `    oifname ${veth} ip saddr ${GUEST_IP} masquerade`,
    `  }`,
    `  chain forward {`,
    `    type filter hook forward priority filter; policy drop;`,
    `    ct state invalid drop`,
    `    iifname ${tap} ip saddr != ${GUEST_IP} drop`,
    `    ct state new ct mark set ${gen}`,
    `    ct mark != ${gen} counter drop`,
    // Connections the host opened to an exposed port, both directions.
    `    iifname ${veth} oifname ${tap} ct status dnat ct direction original accept`,
    `    iifname ${tap} oifname ${veth} ct status dnat ct direction reply accept`,
    // Connections the guest opened: every packet of the guest's direction passes the
    // policy (a policy change cuts flows it no longer allows), replies come back.
    `    iifname ${tap} oifname ${veth} ct direction original jump guest_egress`,
    `    iifname ${veth} oifname ${tap} ct direction reply accept`,
    `    iifname ${veth} oifname ${tap} ct state related accept`,
    `  }`,
    `  chain guest_egress {`,
    `    meta nfproto != ipv4 drop`,
    `    ip daddr @always_deny_v4 counter ${REJECT}`,
    `    ip daddr @deny_v4 counter ${REJECT}`,
    `    ip daddr @allow_v4 accept`,
    p.egress.internet ? `    accept` : `    counter ${REJECT}`,
    `  }`,
    // Nothing talks to the namespace itself: the guest gets a refusal, a host
    // connection to a port that is not exposed gets a reset (so the proxy says
    // "port is not open" at once).
    `  chain input {`,
    `    type filter hook input priority filter; policy drop;`,
    `    iifname "lo" accept`,
    `    ct state established,related accept`,
    `    iifname ${veth} meta l4proto tcp reject with tcp reset`,
    `    iifname ${tap} ${REJECT}`,
    `  }`,
    `}`,
  ];
  return lines.join('\n') + '\n';
}

export interface HostRulesInput {
  table: string;
  /** nftables wildcard for the pool's host veths, e.g. `hths*`. */
  hostIfGlob: string;
  /** The whole slot range (masquerade source). */
  range: string;
  /** The operator's egress interface, or null: no internet for any sandbox. */
  egressInterface: string | null;
}

/** The pool's table in the root namespace, replacing any earlier version. */
export function hostRuleset(p: HostRulesInput): string {
  const t = tableName(p.table);
  const slots = ifname(p.hostIfGlob);
  const cidr = nftRangeElement(mergeRanges([parseCidr(p.range)])[0]!);
  const eg = p.egressInterface ? ifname(p.egressInterface) : null;
  if (eg && p.egressInterface!.includes('*')) throw new ConfigError('the egress interface must be one interface, not a wildcard', 'network.egressInterface');
  const lines: string[] = [
    `table inet ${t}`,
    `delete table inet ${t}`,
    `table inet ${t} {`,
    // Slot → host: only replies (the host opens connections to slots, never the reverse).
    `  chain input {`,
    `    type filter hook input priority filter - 10; policy accept;`,
    `    iifname ${slots} ct state established,related accept`,
    `    iifname ${slots} counter drop`,
    `  }`,
    `  chain forward {`,
    `    type filter hook forward priority filter - 10; policy accept;`,
    `    iifname ${slots} oifname ${slots} counter drop`,
    ...(eg ? [
      `    iifname ${slots} oifname ${eg} ip saddr ${cidr} accept`,
      `    iifname ${eg} oifname ${slots} ct state established,related accept`,
    ] : []),
    `    iifname ${slots} counter drop`,
    `    oifname ${slots} counter drop`,
    `  }`,
    ...(eg ? [
      `  chain postrouting {`,
      `    type nat hook postrouting priority srcnat; policy accept;`,
      `    oifname ${eg} ip saddr ${cidr} masquerade`,
      `  }`,
    ] : []),
    `}`,
  ];
  return lines.join('\n') + '\n';
}

/** Deletes a table if it exists (the `table …` line makes `delete` safe on a missing table). */
export function deleteTableScript(family: 'inet', table: string): string {
  const t = tableName(table);
  return `table ${family} ${t}\ndelete table ${family} ${t}\n`;
}
