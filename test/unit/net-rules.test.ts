/**
 * Netns networking, pure parts: the addressing plan, names, policies, and the
 * nftables ruleset text (what `nft -f` receives).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  AddressPlan, SlotNames, mergeRanges, nftRangeElement, parseCidr, formatCidr, tapGuestKernelArgs, ipToInt, GUEST_IP, GATEWAY_IP,
} from '../../src/network/netns/addressing.js';
import { DEFAULT_ALWAYS_DENY, egressAllows, normalizeEgress, normalizeExposure } from '../../src/network/netns/policy.js';
import { hostRuleset, slotRuleset } from '../../src/network/netns/rules.js';
import { ConfigError, InternalError, InvalidArgumentError } from '../../src/core/errors.js';

describe('addressing plan', () => {
  test('slot n gets the n-th /30 of the range: host end .1, namespace end .2', () => {
    const plan = new AddressPlan('10.201.0.0/16');
    assert.equal(plan.capacity, 16384);
    assert.deepEqual(plan.addresses(0), { subnet: '10.201.0.0/30', hostAddr: '10.201.0.1', nsAddr: '10.201.0.2' });
    assert.deepEqual(plan.addresses(1), { subnet: '10.201.0.4/30', hostAddr: '10.201.0.5', nsAddr: '10.201.0.6' });
    assert.deepEqual(plan.addresses(64), { subnet: '10.201.1.0/30', hostAddr: '10.201.1.1', nsAddr: '10.201.1.2' });
    assert.deepEqual(plan.addresses(16383), { subnet: '10.201.255.252/30', hostAddr: '10.201.255.253', nsAddr: '10.201.255.254' });
    assert.throws(() => plan.addresses(16384), InternalError);
    assert.throws(() => plan.addresses(-1), InternalError);
  });

  test('the range is configurable, host bits are ignored, and bad ranges are refused', () => {
    const plan = new AddressPlan('172.30.5.9/24');
    assert.equal(plan.rangeText, '172.30.5.0/24');
    assert.equal(plan.capacity, 64);
    assert.equal(plan.addresses(63).nsAddr, '172.30.5.254');
    assert.throws(() => new AddressPlan('10.0.0.0/31'), /too small/);
    assert.throws(() => new AddressPlan('10.0.0.0/7'), /too large/);
    assert.throws(() => new AddressPlan('169.254.0.0/16'), /overlaps the guest link/);
    assert.throws(() => new AddressPlan('10.0.0/16'), ConfigError);
  });

  test('the guest side is one constant for every slot; kernel args carry it', () => {
    assert.equal(tapGuestKernelArgs(), `hearth.ip=${GUEST_IP}/30 hearth.gw=${GATEWAY_IP}`);
    assert.equal(tapGuestKernelArgs(['198.51.100.53', '198.51.100.54']), 'hearth.ip=169.254.0.21/30 hearth.gw=169.254.0.22 hearth.dns=198.51.100.53,198.51.100.54');
  });

  test('CIDR parsing normalizes and ranges merge into disjoint nft elements', () => {
    assert.equal(formatCidr(parseCidr('10.1.2.3/8')), '10.0.0.0/8');
    assert.equal(formatCidr(parseCidr('198.51.100.7')), '198.51.100.7/32');
    assert.throws(() => parseCidr('300.1.1.1/8'), InvalidArgumentError);
    assert.throws(() => parseCidr('1.2.3.4/33'), InvalidArgumentError);
    assert.throws(() => parseCidr('::1/128'), InvalidArgumentError);
    const merged = mergeRanges(['10.0.0.0/8', '10.1.0.0/16', '11.0.0.0/8', '192.168.0.0/24', '192.168.1.0/24', '8.8.8.8'].map((c) => parseCidr(c)));
    assert.deepEqual(merged.map(nftRangeElement), ['8.8.8.8', '10.0.0.0/7', '192.168.0.0/23']);
    assert.equal(nftRangeElement([ipToInt('10.0.0.1'), ipToInt('10.0.0.6')]), '10.0.0.1-10.0.0.6');
  });
});

describe('slot names', () => {
  test('production names and tagged names; each pool only recognises its own', () => {
    const prod = new SlotNames();
    const test7 = new SlotNames('t7');
    assert.equal(prod.netns(3), 'hearth-s3');
    assert.equal(prod.hostIf(3), 'hths3');
    assert.equal(prod.hostTable, 'hearth');
    assert.equal(test7.netns(3), 'hearth-t7s3');
    assert.equal(test7.hostIf(16383), 'htht7s16383');
    assert.ok(test7.hostIf(16383).length <= 15, 'interface names fit IFNAMSIZ');
    assert.equal(test7.hostTable, 'hearth-t7');
    assert.equal(prod.slotOfNetns('hearth-s12'), 12);
    assert.equal(prod.slotOfNetns('hearth-t7s12'), undefined);
    assert.equal(test7.slotOfNetns('hearth-s12'), undefined);
    assert.equal(prod.slotOfNetns('hearth-s012'), undefined, 'no leading zeros: not a name this pool makes');
    assert.equal(prod.slotOfNetns('hearth-s1x'), undefined);
    assert.equal(prod.slotOfHostIf('hths0'), 0);
    assert.equal(prod.slotOfHostIf('htht7s0'), undefined);
    assert.equal(prod.slotOfHostIf('eth0'), undefined);
    assert.throws(() => new SlotNames('T7'), ConfigError);
    assert.throws(() => new SlotNames('7t'), ConfigError);
    assert.throws(() => new SlotNames('toolong'), ConfigError);
  });
});

describe('egress policy', () => {
  test('normalization: defaults, sorted and deduplicated CIDRs, bad input refused', () => {
    assert.deepEqual(normalizeEgress(undefined), { internet: true, allow: [], deny: [] });
    assert.deepEqual(normalizeEgress({ internet: false, allow: ['198.51.100.9/24', '198.51.100.0/24', '203.0.113.1'] }),
      { internet: false, allow: ['198.51.100.0/24', '203.0.113.1/32'], deny: [] });
    assert.throws(() => normalizeEgress({ allow: ['example.com'] }), (e: unknown) => e instanceof InvalidArgumentError && e.field === 'egress.allow');
    assert.throws(() => normalizeEgress({ internet: 'yes' as unknown as boolean }), InvalidArgumentError);
    assert.throws(() => normalizeEgress({ deny: 'x' as unknown as string[] }), InvalidArgumentError);
  });

  test('deny wins over allow; allow opens holes with internet off; operator deny beats everything', () => {
    const always = [...DEFAULT_ALWAYS_DENY, '10.201.0.0/16'];
    const p = normalizeEgress({ internet: false, allow: ['198.51.100.0/24', '10.0.0.0/8'], deny: ['198.51.100.20'] });
    assert.equal(egressAllows(p, always, '198.51.100.10', true), true);
    assert.equal(egressAllows(p, always, '198.51.100.20', true), false, 'deny wins');
    assert.equal(egressAllows(p, always, '203.0.113.5', true), false, 'internet off');
    assert.equal(egressAllows(p, always, '10.9.9.9', true), false, 'operator deny beats allow');
    assert.equal(egressAllows(p, always, '169.254.169.254', true), false, 'metadata');
    assert.equal(egressAllows(p, always, '198.51.100.10', false), false, 'no egress interface: nothing leaves');
    const open = normalizeEgress({ internet: true, deny: ['203.0.113.0/24'] });
    assert.equal(egressAllows(open, always, '198.51.100.10', true), true);
    assert.equal(egressAllows(open, always, '203.0.113.77', true), false);
  });

  test('exposure always includes the agent port', () => {
    assert.equal(normalizeExposure(undefined, 49983), 'all');
    assert.deepEqual(normalizeExposure([8080, 3000, 8080], 49983), [3000, 8080, 49983]);
    assert.throws(() => normalizeExposure([0], 49983), InvalidArgumentError);
    assert.throws(() => normalizeExposure([70000], 49983), InvalidArgumentError);
  });
});

describe('slot ruleset', () => {
  const base = {
    table: 'hearth',
    nsAddr: '10.201.0.6',
    agentPort: 49983,
    egress: normalizeEgress(undefined),
    exposure: 'all' as const,
    alwaysDeny: [...DEFAULT_ALWAYS_DENY, '10.201.0.0/16'],
    generation: 7,
  };

  test('replaces the table atomically: declare, delete, define, in one script', () => {
    const text = slotRuleset(base);
    assert.ok(text.startsWith('table inet hearth\ndelete table inet hearth\ntable inet hearth {\n'), text.slice(0, 80));
  });

  test('DNAT from the namespace veth address to the guest, SNAT to the gateway, masquerade out', () => {
    const text = slotRuleset(base);
    assert.match(text, /iifname "veth0" ip daddr 10\.201\.0\.6 meta l4proto tcp dnat ip to 169\.254\.0\.21\n/);
    assert.match(text, /oifname "tap0" ct status dnat snat ip to 169\.254\.0\.22\n/);
    assert.match(text, /oifname "veth0" ip saddr 169\.254\.0\.21 masquerade\n/);
    const listed = slotRuleset({ ...base, exposure: [8080, 3000] });
    assert.match(listed, /tcp dport \{ 3000, 8080, 49983 \} dnat ip to 169\.254\.0\.21/);
  });

  test('forward: default drop, anti-spoofing, generation mark, policy on every guest packet', () => {
    const text = slotRuleset(base);
    const fwd = /chain forward \{([\s\S]*?)\n {2}\}/.exec(text)![1]!;
    const lines = fwd.trim().split('\n').map((l) => l.trim());
    assert.deepEqual(lines, [
      'type filter hook forward priority filter; policy drop;',
      'ct state invalid drop',
      'iifname "tap0" ip saddr != 169.254.0.21 drop',
      'ct state new ct mark set 0x00000007',
      'ct mark != 0x00000007 counter drop',
      'iifname "veth0" oifname "tap0" ct status dnat ct direction original accept',
      'iifname "tap0" oifname "veth0" ct status dnat ct direction reply accept',
      'iifname "tap0" oifname "veth0" ct direction original jump guest_egress',
      'iifname "veth0" oifname "tap0" ct direction reply accept',
      'iifname "veth0" oifname "tap0" ct state related accept',
    ]);
  });

  test('egress chain: operator deny, sandbox deny, allow, then the internet switch', () => {
    const on = slotRuleset({ ...base, egress: normalizeEgress({ internet: true, allow: ['198.51.100.0/24'], deny: ['198.51.100.20', '203.0.113.0/24'] }) });
    const chain = (t: string) => /chain guest_egress \{([\s\S]*?)\n {2}\}/.exec(t)![1]!.trim().split('\n').map((l) => l.trim());
    assert.deepEqual(chain(on), [
      'meta nfproto != ipv4 drop',
      'ip daddr @always_deny_v4 counter reject with icmpx type admin-prohibited',
      'ip daddr @deny_v4 counter reject with icmpx type admin-prohibited',
      'ip daddr @allow_v4 accept',
      'accept',
    ]);
    assert.match(on, /set deny_v4 \{\n\s+type ipv4_addr; flags interval;\n\s+elements = \{ 198\.51\.100\.20, 203\.0\.113\.0\/24 \}/);
    assert.match(on, /set allow_v4 \{\n\s+type ipv4_addr; flags interval;\n\s+elements = \{ 198\.51\.100\.0\/24 \}/);
    const off = slotRuleset({ ...base, egress: normalizeEgress({ internet: false }) });
    assert.equal(chain(off).at(-1), 'counter reject with icmpx type admin-prohibited');
    assert.doesNotMatch(off, /elements = \{ \}/, 'empty sets have no elements line');
    // operator deny list: merged (10/8 swallows the slot range), link-local present
    assert.match(on, /set always_deny_v4 \{\n\s+type ipv4_addr; flags interval;\n\s+elements = \{ 0\.0\.0\.0\/8, 10\.0\.0\.0\/8, 100\.64\.0\.0\/10, 127\.0\.0\.0\/8, 169\.254\.0\.0\/16, /);
  });

  test('input: nothing reaches the namespace itself; unexposed host connections get a reset', () => {
    const text = slotRuleset(base);
    const input = /chain input \{([\s\S]*?)\n {2}\}/.exec(text)![1]!.trim().split('\n').map((l) => l.trim());
    assert.deepEqual(input, [
      'type filter hook input priority filter; policy drop;',
      'iifname "lo" accept',
      'ct state established,related accept',
      'iifname "veth0" meta l4proto tcp reject with tcp reset',
      'iifname "tap0" reject with icmpx type admin-prohibited',
    ]);
  });

  test('bad inputs never reach the ruleset', () => {
    assert.throws(() => slotRuleset({ ...base, nsAddr: '10.0.0.1; flush ruleset' }), InvalidArgumentError);
    assert.throws(() => slotRuleset({ ...base, table: 'x y' }), InternalError);
    assert.throws(() => slotRuleset({ ...base, generation: -1 }), InternalError);
  });
});

describe('host ruleset', () => {
  test('without an egress interface: slots talk to nothing but replies, no NAT chain', () => {
    const text = hostRuleset({ table: 'hearth', hostIfGlob: 'hths*', range: '10.201.0.0/16', egressInterface: null });
    assert.ok(text.startsWith('table inet hearth\ndelete table inet hearth\n'));
    assert.match(text, /iifname "hths\*" ct state established,related accept\n\s+iifname "hths\*" counter drop/);
    assert.match(text, /iifname "hths\*" oifname "hths\*" counter drop/);
    assert.doesNotMatch(text, /masquerade/);
    assert.doesNotMatch(text, /accept\n\s+iifname "hths\*" counter drop\n\s+oifname/, 'no forward accept');
  });

  test('with an egress interface: forward slots → that interface only, replies back, masquerade', () => {
    const text = hostRuleset({ table: 'hearth-t7', hostIfGlob: 'htht7s*', range: '10.201.0.0/16', egressInterface: 'htht7i0' });
    assert.match(text, /iifname "htht7s\*" oifname "htht7i0" ip saddr 10\.201\.0\.0\/16 accept/);
    assert.match(text, /iifname "htht7i0" oifname "htht7s\*" ct state established,related accept/);
    assert.match(text, /oifname "htht7i0" ip saddr 10\.201\.0\.0\/16 masquerade/);
    assert.throws(() => hostRuleset({ table: 'hearth', hostIfGlob: 'hths*', range: '10.201.0.0/16', egressInterface: 'eth"0' }), InternalError);
    assert.throws(() => hostRuleset({ table: 'hearth', hostIfGlob: 'hths*', range: '10.201.0.0/16', egressInterface: 'eth*' }), ConfigError);
  });
});
