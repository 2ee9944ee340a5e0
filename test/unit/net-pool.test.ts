/**
 * NetnsSlots through an injected CommandRunner: a small model of the host
 * (namespaces, root links, nft tables) answers the commands, so these tests
 * check command construction, pool accounting, persistence, reset and reap
 * decisions without touching the machine.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { NetnsSlots, MemorySlotStore, reapPlan, SlotNames, chooseNetwork, type NetnsSlotsOptions, type SlotRow } from '../../src/network/netns/index.js';
import type { CommandRunner, RunResult } from '../../src/util/exec.js';
import { AbortedError, CapacityError, HostFailureError, InternalError, InvalidArgumentError } from '../../src/core/errors.js';

interface Call { cmd: string; args: string[]; input?: string }

/** A model of the host, enough for the commands the pool runs. */
class FakeHost {
  readonly netns = new Set<string>();
  readonly links = new Set<string>(['lo', 'eth0']);
  readonly tables = new Set<string>();
  /** Ruleset last loaded in each namespace. */
  readonly nsRules = new Map<string, string>();
  readonly calls: Call[] = [];
  routes: string[] = ['default via 192.0.2.1 dev eth0', '192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2', '10.201.0.0/30 dev hths0 proto kernel scope link src 10.201.0.1'];
  conntrack = false;
  delayMs = 0;
  /** Return an error message to make a command fail. */
  failWhen: (c: Call) => string | null = () => null;

  runner: CommandRunner = async (cmd, args, opts = {}) => {
    const c: Call = { cmd, args: [...args], ...(opts.input !== undefined && opts.input !== '' ? { input: opts.input } : {}) };
    this.calls.push(c);
    if (opts.signal?.aborted) throw new AbortedError(`${cmd} not started: cancelled`);
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    const fail = this.failWhen(c);
    const res = fail === null ? this.exec(c) : { stdout: '', stderr: fail, code: 1 };
    if (res.code !== 0 && !opts.allowFailure) throw new HostFailureError(`${cmd} ${args.join(' ')} failed (exit ${res.code}): ${res.stderr}`);
    return res;
  };

  private ok(stdout = ''): RunResult { return { stdout, stderr: '', code: 0 }; }
  private err(stderr: string): RunResult { return { stdout: '', stderr, code: 1 }; }

  private exec(c: Call): RunResult {
    const a = c.args;
    if (c.cmd === 'ip' && a[0] === '-batch') {
      for (const line of (c.input ?? '').trim().split('\n')) {
        const w = line.split(' ');
        if (w[0] === 'netns' && w[1] === 'add') {
          if (this.netns.has(w[2]!)) return this.err(`Cannot create namespace file "/run/netns/${w[2]}": File exists`);
          this.netns.add(w[2]!);
        } else if (w[0] === 'link' && w[1] === 'add') {
          if (this.links.has(w[2]!)) return this.err('RTNETLINK answers: File exists');
          this.links.add(w[2]!);
        }
      }
      return this.ok();
    }
    if (c.cmd === 'ip' && a[0] === '-n') return this.netns.has(a[1]!) ? this.ok() : this.err(`Cannot open network namespace "${a[1]}": No such file or directory`);
    if (c.cmd === 'ip' && a[0] === 'link' && a[1] === 'del') return this.links.delete(a[2]!) ? this.ok() : this.err(`Cannot find device "${a[2]}"`);
    if (c.cmd === 'ip' && a[0] === 'netns' && a[1] === 'del') {
      if (!this.netns.delete(a[2]!)) return this.err(`Cannot remove namespace file "/run/netns/${a[2]}": No such file or directory`);
      this.nsRules.delete(a[2]!);
      return this.ok();
    }
    if (c.cmd === 'ip' && a[0] === 'netns' && a[1] === 'list') return this.ok([...this.netns].map((n, i) => `${n} (id: ${i})`).join('\n') + '\n');
    if (c.cmd === 'ip' && a[0] === '-4' && a[2] === 'route') return this.ok(this.routes.join('\n') + '\n');
    if (c.cmd === 'ip' && a[0] === '-o') return this.ok([...this.links].map((l, i) => `${i + 1}: ${l}${l.startsWith('hth') ? '@if2' : ''}: <BROADCAST> mtu 1500`).join('\n') + '\n');
    if (c.cmd === 'nsenter') {
      const ns = a[0]!.replace('--net=/run/netns/', '');
      if (!this.netns.has(ns)) return this.err(`nsenter: cannot open /run/netns/${ns}: No such file or directory`);
      if (a[2] === 'nft') this.nsRules.set(ns, c.input ?? '');
      if (a[2] === 'conntrack') return this.conntrack ? this.ok() : this.err('not found');
      return this.ok();
    }
    if (c.cmd === 'nft' && a[0] === 'list') return this.ok([...this.tables].map((t) => `table inet ${t}`).join('\n') + '\n');
    if (c.cmd === 'nft' && a[0] === '-f') {
      const m = /^table inet (\S+)\ndelete table inet \S+\n(table inet)?/.exec(c.input ?? '');
      if (m) { if (m[2]) this.tables.add(m[1]!); else this.tables.delete(m[1]!); }
      return this.ok();
    }
    if (c.cmd === 'conntrack') return this.conntrack ? this.ok('conntrack v1.4.7') : this.err('conntrack: not found');
    if (c.cmd === 'sysctl' && a[0] === '-n') return this.ok('0\n');
    if (c.cmd === 'sysctl') return this.ok();
    return this.err(`unexpected command ${c.cmd} ${a.join(' ')}`);
  }

  count(pred: (c: Call) => boolean): number { return this.calls.filter(pred).length; }
  creates(): number { return this.count((c) => c.cmd === 'ip' && c.args[0] === '-batch'); }
}

function pool(host: FakeHost, over: Partial<NetnsSlotsOptions> = {}, store = new MemorySlotStore()): { p: NetnsSlots; store: MemorySlotStore } {
  const p = new NetnsSlots({
    store, runner: host.runner, exists: (path) => host.netns.has(path.replace('/run/netns/', '')), fillRetryMs: 5, poolSize: 2, ...over,
  });
  return { p, store };
}

const sig = () => AbortSignal.timeout(5000);

describe('NetnsSlots: set-up commands', () => {
  test('a slot is built with two iproute2 batches, the namespace sysctls, host sysctls and one nft transaction', async () => {
    const host = new FakeHost();
    const { p } = pool(host, { poolSize: 1, egressInterface: 'hthi0' });
    await p.start();
    await p.whenFilled();
    const slot0 = host.calls.slice(host.calls.findIndex((c) => c.args[0] === '-batch'));
    assert.deepEqual(slot0.slice(0, 5).map((c) => [c.cmd, ...c.args].join(' ')), [
      'ip -batch -',
      'ip -n hearth-s0 -batch -',
      'nsenter --net=/run/netns/hearth-s0 -- sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1',
      'sysctl -q -w net.ipv6.conf.hths0.disable_ipv6=1 net.ipv4.conf.hths0.forwarding=1',
      'nsenter --net=/run/netns/hearth-s0 -- nft -f -',
    ]);
    assert.equal(slot0[0]!.input, [
      'netns add hearth-s0',
      'link add hths0 type veth peer name veth0 netns hearth-s0',
      'addr add 10.201.0.1/30 dev hths0',
      'link set hths0 up',
    ].join('\n') + '\n');
    assert.equal(slot0[1]!.input, [
      'link set lo up',
      'addr add 10.201.0.2/30 dev veth0',
      'link set veth0 up',
      'tuntap add dev tap0 mode tap',
      'link set tap0 address 02:48:54:00:00:16',
      'addr add 169.254.0.22/30 dev tap0',
      'link set tap0 up',
      'route add default via 10.201.0.1 dev veth0',
    ].join('\n') + '\n');
    assert.match(slot0[4]!.input!, /ip daddr 10\.201\.0\.2 meta l4proto tcp dnat ip to 169\.254\.0\.21/);
    assert.match(slot0[4]!.input!, /ct mark set 0x00000001/);
    // the host table, with the egress interface named by configuration
    assert.ok(host.tables.has('hearth'));
    const hostRules = host.calls.find((c) => c.cmd === 'nft' && c.args[0] === '-f')!.input!;
    assert.match(hostRules, /oifname "hthi0" ip saddr 10\.201\.0\.0\/16 masquerade/);
    assert.ok(host.calls.some((c) => c.cmd === 'sysctl' && c.args.join(' ') === '-q -w net.ipv4.conf.hthi0.forwarding=1'), 'forwarding on the egress interface');
    await p.close();
  });

  test('without an egress interface no host veth gets forwarding and the host table has no NAT', async () => {
    const host = new FakeHost();
    const { p } = pool(host, { poolSize: 1 });
    await p.start();
    await p.whenFilled();
    assert.ok(!host.calls.some((c) => c.args.some((x) => x.includes('forwarding'))));
    assert.doesNotMatch(host.calls.find((c) => c.cmd === 'nft' && c.args[0] === '-f')!.input!, /masquerade/);
    await p.close();
  });

  test('the VM network is a tap in the slot namespace with the same name and MAC in every slot', async () => {
    const host = new FakeHost();
    const { p } = pool(host);
    await p.start();
    await p.whenFilled();
    const a = await p.acquire(sig());
    const b = await p.acquire(sig());
    assert.deepEqual(a.vmNetwork, { kind: 'tap', netnsName: 'hearth-s0', tapName: 'tap0', mac: '02:48:54:00:00:15' });
    assert.deepEqual(b.vmNetwork, { kind: 'tap', netnsName: 'hearth-s1', tapName: 'tap0', mac: '02:48:54:00:00:15' });
    assert.deepEqual(a.guestAddress(49983), { host: '10.201.0.2', port: 49983 });
    assert.deepEqual(b.guestAddress(8080), { host: '10.201.0.6', port: 8080 });
    assert.equal(p.guestKernelArgs(), 'hearth.ip=169.254.0.21/30 hearth.gw=169.254.0.22');
    assert.equal(a.guestKernelArgs, p.guestKernelArgs(), 'the slot carries them too (for the manager)');
    await p.close();
  });
});

describe('NetnsSlots: pool accounting', () => {
  test('the filler keeps poolSize slots ready; acquire from a full pool runs no set-up and does not wait', async () => {
    const host = new FakeHost();
    const { p } = pool(host, { poolSize: 3 });
    await p.start();
    await p.whenFilled();
    assert.equal(p.stats().free, 3);
    host.delayMs = 200; // every command is now slow: an acquire that waited for one would take >= 200 ms
    const t0 = performance.now();
    const s = await p.acquire(sig());
    const ms = performance.now() - t0;
    assert.ok(ms < 150, `acquire took ${ms} ms (a set-up would take >= 200 ms here)`);
    assert.equal(s.id, 0, 'a slot set up before the acquire');
    // the filler tops the pool up in the background
    await p.whenFilled();
    assert.deepEqual({ free: p.stats().free, used: p.stats().used }, { free: 3, used: 1 });
    await p.close();
  });

  test('with no free slot, acquire sets one up on demand; at maxSlots it fails with CapacityError', async () => {
    const host = new FakeHost();
    const { p } = pool(host, { poolSize: 0, maxSlots: 2 });
    await p.start();
    const a = await p.acquire(sig());
    const b = await p.acquire(sig());
    assert.deepEqual([a.id, b.id], [0, 1]);
    await assert.rejects(p.acquire(sig()), CapacityError);
    await p.release(a);
    const c = await p.acquire(sig());
    assert.equal(c.id, 0, 'a released slot is reused');
    await p.close();
  });

  test('release resets the slot (new generation, default policy, conntrack flushed) and returns it to the pool', async () => {
    const host = new FakeHost();
    host.conntrack = true;
    const { p, store } = pool(host, { poolSize: 1 });
    await p.start();
    await p.whenFilled();
    const s = await p.acquire(sig());
    assert.equal(store.rows.get(s.id)!.state, 'used');
    await p.setEgress(s, { internet: false, allow: ['198.51.100.0/24'] });
    assert.match(host.nsRules.get('hearth-s0')!, /elements = \{ 198\.51\.100\.0\/24 \}/);
    assert.match(host.nsRules.get('hearth-s0')!, /ct mark set 0x00000001/, 'a policy change keeps the generation: open flows stay');
    await p.release(s);
    const rules = host.nsRules.get('hearth-s0')!;
    assert.match(rules, /ct mark set 0x00000002/, 'reset bumps the generation');
    assert.doesNotMatch(rules, /198\.51\.100/, 'reset restores the default policy');
    assert.match(rules, /\n {4}accept\n {2}\}/, 'default: internet on');
    assert.ok(host.calls.some((c) => c.cmd === 'nsenter' && c.args.join(' ') === '--net=/run/netns/hearth-s0 -- conntrack -F'));
    const row = store.rows.get(s.id)!;
    assert.deepEqual({ state: row.state, generation: row.generation, policy: row.policy }, { state: 'free', generation: 2, policy: null });
    assert.equal(p.stats().free, 2);
    await p.release(s); // idempotent
    assert.equal(p.stats().free, 2);
    await p.close();
  });

  test('without the conntrack tool the reset relies on the generation mark alone', async () => {
    const host = new FakeHost();
    const { p } = pool(host, { poolSize: 1 });
    await p.start();
    const s = await p.acquire(sig());
    await p.release(s);
    assert.ok(!host.calls.some((c) => c.cmd === 'nsenter' && c.args.includes('conntrack')));
    assert.equal(host.count((c) => c.cmd === 'conntrack' && c.args[0] === '--version'), 1, 'probed once');
    await p.close();
  });

  test('beyond maxIdle free slots a released slot is removed, and a failed reset removes it too', async () => {
    const host = new FakeHost();
    const { p, store } = pool(host, { poolSize: 1, maxIdle: 1 });
    await p.start();
    await p.whenFilled();
    const a = await p.acquire(sig());
    const b = await p.acquire(sig());
    await p.whenFilled();
    assert.equal(p.stats().free, 1);
    await p.release(a);
    assert.ok(!host.netns.has(a.vmNetwork.kind === 'tap' ? a.vmNetwork.netnsName : ''), 'slot a removed');
    assert.equal(store.rows.has(a.id), false);
    host.failWhen = (c) => (c.cmd === 'nsenter' && c.args.includes('nft') && c.args[0]!.endsWith(`s${b.id}`) ? 'Error: Could not process rule' : null);
    await p.release(b);
    assert.equal(store.rows.has(b.id), false, 'reset failed: slot removed instead of reused');
    assert.equal(host.links.has(`hths${b.id}`), false);
    host.failWhen = () => null;
    assert.equal(p.stats().used, 0);
    await p.close();
  });

  test('a set-up that fails half-way removes what it made and persists nothing; the filler backs off', async () => {
    const host = new FakeHost();
    host.failWhen = (c) => (c.cmd === 'ip' && c.args[0] === '-n' ? 'RTNETLINK answers: Operation not permitted' : null);
    const { p, store } = pool(host, { poolSize: 2 });
    await p.start();
    await p.whenFilled();
    assert.equal(store.rows.size, 0);
    assert.equal(host.netns.size, 0, 'namespace removed after the failure');
    assert.deepEqual([...host.links].filter((l) => l.startsWith('hth')), []);
    assert.equal(host.creates(), 3, 'three attempts, then the filler waits for the next acquire/release');
    await assert.rejects(p.acquire(sig()), /Operation not permitted/);
    host.failWhen = () => null;
    const s = await p.acquire(sig());
    assert.equal(s.id, 0);
    await p.close();
  });

  test('a leftover with the same name ("File exists") is removed and the set-up retried once', async () => {
    const host = new FakeHost();
    host.netns.add('hearth-s0'); // appeared after the reap
    const { p } = pool(host, { poolSize: 0 });
    await p.start();
    host.netns.add('hearth-s0');
    const s = await p.acquire(sig());
    assert.equal(s.id, 0);
    assert.ok(host.calls.some((c) => c.cmd === 'ip' && c.args.join(' ') === 'netns del hearth-s0'));
    await p.close();
  });

  test('a cancelled acquire fails without leaving anything', async () => {
    const host = new FakeHost();
    const { p, store } = pool(host, { poolSize: 0 });
    await p.start();
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(p.acquire(ac.signal), AbortedError);
    assert.equal(store.rows.size, 0);
    await p.close();
  });

  test('acquire before start, or after close, is refused', async () => {
    const host = new FakeHost();
    const { p } = pool(host);
    await assert.rejects(p.acquire(sig()), /not started/);
    await p.start();
    await p.close();
    await assert.rejects(p.acquire(sig()), /closed/);
  });

  test('a free slot whose namespace vanished is dropped, not handed out', async () => {
    const host = new FakeHost();
    const { p } = pool(host, { poolSize: 2 });
    await p.start();
    await p.whenFilled();
    host.netns.delete('hearth-s0');
    const s = await p.acquire(sig());
    assert.equal(s.id, 1);
    await p.close();
  });
});

describe('NetnsSlots: policy', () => {
  test('setEgress validates before touching the host and only works on a slot in use', async () => {
    const host = new FakeHost();
    const { p } = pool(host, { poolSize: 1 });
    await p.start();
    await p.whenFilled();
    const s = await p.acquire(sig());
    await p.whenFilled();
    const before = host.calls.length;
    await assert.rejects(p.setEgress(s, { allow: ['not-an-ip'] }), InvalidArgumentError);
    assert.equal(host.calls.length, before, 'nothing ran');
    const eg = await p.setEgress(s, { internet: false, deny: ['198.51.100.20'], allow: ['198.51.100.0/24'] });
    assert.deepEqual(eg, { internet: false, allow: ['198.51.100.0/24'], deny: ['198.51.100.20/32'] });
    assert.deepEqual(p.policyOf(s).egress, eg);
    await p.whenFilled();
    await assert.rejects(p.setEgress(1, { internet: false }), /not in use/);
    const ex = await p.setExposure(s, [8080]);
    assert.deepEqual(ex, [8080, 49983]);
    assert.match(host.nsRules.get('hearth-s0')!, /tcp dport \{ 8080, 49983 \} dnat/);
    assert.match(host.nsRules.get('hearth-s0')!, /elements = \{ 198\.51\.100\.20 \}/, 'the egress policy survives an exposure change');
    await p.close();
  });

  test('acquire with a policy applies it before returning; the operator default applies otherwise', async () => {
    const host = new FakeHost();
    const { p } = pool(host, { poolSize: 1, defaultEgress: { internet: false } });
    await p.start();
    await p.whenFilled();
    assert.match(host.nsRules.get('hearth-s0')!, /\n {4}counter reject with icmpx type admin-prohibited\n {2}\}/, 'operator default: internet off');
    const s = await p.acquire(sig(), { egress: { internet: true, deny: ['203.0.113.0/24'] } });
    assert.deepEqual(p.policyOf(s).egress, { internet: true, allow: [], deny: ['203.0.113.0/24'] });
    assert.match(host.nsRules.get('hearth-s0')!, /\n {4}accept\n {2}\}/);
    await p.close();
  });

  test('policy changes of one slot run one at a time, in order', async () => {
    const host = new FakeHost();
    host.delayMs = 5;
    const { p } = pool(host, { poolSize: 1 });
    await p.start();
    const s = await p.acquire(sig());
    await Promise.all([
      p.setEgress(s, { deny: ['198.51.100.1'] }),
      p.setEgress(s, { deny: ['198.51.100.2'] }),
      p.setEgress(s, { deny: ['198.51.100.3'] }),
    ]);
    assert.match(host.nsRules.get(s.netnsName)!, /elements = \{ 198\.51\.100\.3 \}/);
    assert.deepEqual(p.policyOf(s).egress.deny, ['198.51.100.3/32']);
    await p.close();
  });
});

describe('NetnsSlots: persistence, restart and reap', () => {
  test('reapPlan: only this pool\'s names that no row owns', () => {
    const names = new SlotNames();
    const plan = reapPlan(names, new Set([0, 2]),
      ['hearth-s0', 'hearth-s1', 'hearth-s2', 'hearth-s3', 'hearth-t7s1', 'hq-test-1', 'hearth-s01', 'other'],
      ['lo', 'eth0', 'hths0', 'hths1', 'hths9', 'htht7s1', 'hths', 'docker0']);
    assert.deepEqual(plan, { netns: ['hearth-s1', 'hearth-s3'], links: ['hths1', 'hths9'] });
  });

  test('a restart adopts used slots, resets free ones, reaps unowned objects and drops broken rows', async () => {
    const host = new FakeHost();
    const store = new MemorySlotStore();
    const first = pool(host, { poolSize: 3 }, store).p;
    await first.start();
    await first.whenFilled();
    const used = await first.acquire(sig());
    await first.setEgress(used, { internet: false });
    await first.whenFilled();
    await first.close();
    assert.deepEqual([...store.rows.values()].map((r) => [r.n, r.state]), [[0, 'used'], [1, 'free'], [2, 'free'], [3, 'free']]);
    // meanwhile: a crash left an unowned namespace and veth; slot 2's namespace vanished; another pool's objects exist
    host.netns.add('hearth-s7');
    host.links.add('hths8');
    host.netns.add('hearth-t7s0');
    host.links.add('htht7s0');
    host.netns.delete('hearth-s2');
    const second = pool(host, { poolSize: 3 }, store).p;
    const report = await second.start();
    assert.deepEqual(report.reaped, { netns: ['hearth-s7'], links: ['hths8'] });
    assert.deepEqual(report.dropped, [2]);
    assert.deepEqual(report.pending, [0]);
    assert.equal(report.reused, 2);
    assert.ok(host.netns.has('hearth-t7s0') && host.links.has('htht7s0'), 'another pool\'s objects are left alone');
    const del = host.calls.findIndex((c) => c.cmd === 'ip' && c.args.join(' ') === 'link del hths2');
    assert.ok(del >= 0, 'the broken slot\'s veth was removed');
    assert.ok(host.calls.slice(del).some((c) => c.input?.includes('netns add hearth-s2')), 'and its number set up afresh by the filler');
    assert.match(host.nsRules.get('hearth-s1')!, /ct mark set 0x00000002/, 'free slots are reset at start');
    // the manager restores the adopted VM's slot from its recorded VmNetwork
    const restored = second.restore(used.vmNetwork);
    assert.equal(restored.id, 0);
    assert.deepEqual(restored.guestAddress(49983), used.guestAddress(49983));
    assert.equal(second.policyOf(restored).egress.internet, false, 'its policy is remembered');
    assert.deepEqual(await second.finishRecovery(), []);
    await second.whenFilled();
    assert.equal(second.stats().free, 3);
    await second.close();
  });

  test('finishRecovery frees used slots no VM claimed', async () => {
    const host = new FakeHost();
    const rows: SlotRow[] = [];
    const store = new MemorySlotStore(rows);
    const first = pool(host, { poolSize: 0 }, store).p;
    await first.start();
    await first.acquire(sig());
    await first.acquire(sig());
    await first.close();
    const second = pool(host, { poolSize: 0, maxIdle: 5 }, store).p;
    await second.start();
    second.restore({ kind: 'tap', netnsName: 'hearth-s1', tapName: 'tap0', mac: '02:48:54:00:00:15' });
    assert.deepEqual(await second.finishRecovery(), [0]);
    assert.deepEqual(second.stats(), { free: 1, used: 1, pendingRecovery: 0, creating: 0, resetting: 0, total: 2, poolSize: 0, maxSlots: 1024 });
    await second.close();
  });

  test('restore refuses a network that is not one of this pool\'s slots', async () => {
    const host = new FakeHost();
    const { p } = pool(host, { tag: 't7' });
    assert.throws(() => p.restore({ kind: 'user', forwards: [], guestCidr: '10.0.2.15/24', gateway: '10.0.2.2' }), InternalError);
    assert.throws(() => p.restore({ kind: 'tap', netnsName: 'hearth-s1', tapName: 'tap0', mac: '02:48:54:00:00:15' }), /not one of this pool's slots/);
  });

  test('a changed host range: free slots with old addresses are removed at start, used ones when released', async () => {
    const host = new FakeHost();
    const store = new MemorySlotStore();
    const first = pool(host, { poolSize: 2 }, store).p;
    await first.start();
    await first.whenFilled();
    const s = await first.acquire(sig());
    await first.whenFilled();
    await first.close();
    const second = pool(host, { poolSize: 0, hostRange: '10.202.0.0/16', maxIdle: 4 }, store).p;
    const report = await second.start();
    assert.deepEqual(report.dropped.sort(), [1, 2]);
    const restored = second.restore(s.vmNetwork);
    assert.equal(restored.nsAddr, '10.201.0.2', 'a running VM keeps the address it was given');
    await second.release(restored);
    assert.equal(store.rows.size, 0, 'stale slot removed on release');
    await second.close();
  });

  test('destroyAll removes every slot, the host table, and restores forwarding on the egress interface', async () => {
    const host = new FakeHost();
    const { p, store } = pool(host, { poolSize: 2, egressInterface: 'hthi0' });
    await p.start();
    await p.whenFilled();
    await p.acquire(sig());
    await p.whenFilled();
    await p.destroyAll();
    assert.equal(store.rows.size, 0);
    assert.deepEqual([...host.netns], []);
    assert.deepEqual([...host.links].filter((l) => l.startsWith('hth')), []);
    assert.deepEqual([...host.tables], []);
    assert.ok(host.calls.some((c) => c.cmd === 'sysctl' && c.args.join(' ') === '-q -w net.ipv4.conf.hthi0.forwarding=0'));
  });

  test('a slot range that overlaps a host route (not one of its own veths) is refused at start', async () => {
    const host = new FakeHost();
    host.routes.push('10.201.128.0/17 dev ens5 proto kernel scope link src 10.201.128.9');
    const { p } = pool(host);
    await assert.rejects(p.start(), /overlaps the host route 10\.201\.128\.0\/17 dev ens5/);
    const ok = pool(host, { hostRange: '10.202.0.0/16' }).p;
    await ok.start();
    await ok.close();
  });

  test('configuration is validated', () => {
    const host = new FakeHost();
    assert.throws(() => pool(host, { maxSlots: 70000 }), /maxSlots/);
    assert.throws(() => pool(host, { hostRange: '10.0.0.0/29', maxSlots: 3 }), /maxSlots must be 1..2/);
    assert.throws(() => pool(host, { egressInterface: 'eth0; rm' }), /not an interface name/);
    assert.throws(() => pool(host, { egressInterface: 'hths3' }), /pool's own veths/);
    assert.throws(() => pool(host, { dns: ['dns.example'] }), InvalidArgumentError);
    assert.throws(() => pool(host, { poolSize: 4, maxIdle: 2 }), /maxIdle/);
  });
});

describe('chooseNetwork', () => {
  const runner = (missing: string[]): CommandRunner => async (cmd) => (missing.includes(cmd)
    ? { stdout: '', stderr: `${cmd}: not found`, code: 127 }
    : { stdout: `${cmd} 1.0\n`, stderr: '', code: 0 });

  test('root with iproute2, nft, nsenter and a tun device: netns', async () => {
    const c = await chooseNetwork({ runner: runner(['conntrack']), uid: 0, tunPath: '/dev/null' });
    assert.equal(c.kind, 'netns', c.reason);
    assert.equal(c.conntrack, false);
    assert.match(c.reason, /generation mark/);
    assert.deepEqual(c.checks.map((x) => [x.name, x.ok]), [['root', true], ['iproute2', true], ['nftables', true], ['nsenter', true], ['tun', true]]);
  });

  test('missing pieces fall back to user-mode networking and say why', async () => {
    const noNft = await chooseNetwork({ runner: runner(['nft']), uid: 0, tunPath: '/dev/null' });
    assert.equal(noNft.kind, 'user');
    assert.match(noNft.reason, /nftables: `nft` not found/);
    const notRoot = await chooseNetwork({ runner: runner([]), uid: 1000, tunPath: '/dev/null' });
    assert.equal(notRoot.kind, 'user');
    assert.match(notRoot.reason, /running as uid 1000/);
    const noTun = await chooseNetwork({ runner: runner([]), uid: 0, tunPath: '/nonexistent/tun' });
    assert.equal(noTun.kind, 'user');
    assert.match(noTun.reason, /tun: \/nonexistent\/tun/);
    const forced = await chooseNetwork({ runner: runner(['nft']), uid: 0, tunPath: '/dev/null', prefer: 'netns' });
    assert.match(forced.reason, /was requested but cannot work here/);
    const user = await chooseNetwork({ runner: runner([]), uid: 0, tunPath: '/dev/null', prefer: 'user' });
    assert.equal(user.kind, 'user');
  });
});
