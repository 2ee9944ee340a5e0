/**
 * NetnsSlots on this host with real namespaces, veths, taps and nftables.
 * Datapath tests use fake guests (a veth in place of the tap, its peer in a
 * "guest" namespace, see net-fixture.ts); net-vm.test.ts repeats the essential
 * ones with real QEMU VMs. The "internet" is a namespace with 198.51.100.0/24
 * addresses behind the pool's configured egress interface.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import type { ChildProcess } from 'node:child_process';
import { WebSocket } from 'ws';
import type { AddressInfo } from 'node:net';
import { GATEWAY_IP, GATEWAY_MAC, GUEST_IP, MemorySlotStore, NetnsSlots, type NetnsSlot } from '../../src/network/netns/index.js';
import { chooseNetwork } from '../../src/network/netns/index.js';
import {
  FakeGuest, INTERNET_HOST_ADDR, INTERNET_SERVER, INTERNET_SERVER_2, counterOf, freeTestRange, nsSpawn, randomTag, sh, startInternet, startProxy,
  sweep, tagged, type TestInternet,
} from './net-fixture.js';
import { PACKAGE_ROOT } from '../../src/paths.js';

const tag = randomTag();
// Root, iproute2, nft, nsenter and /dev/net/tun, or the whole suite is skipped with the reason.
const choice = await chooseNetwork();
const netnsSkip = choice.kind === 'netns' ? false : choice.reason;
const sig = () => AbortSignal.timeout(30_000);

async function json<T>(cmd: string, args: string[]): Promise<T> {
  const r = await sh(cmd, args);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as T;
}

interface IpAddr { ifname: string; address?: string; addr_info: { family: string; local: string; prefixlen: number }[]; linkinfo?: { info_kind?: string }; operstate?: string }

describe(`netns slots on this host (tag ${tag})`, { skip: netnsSkip }, () => {
  let range: string;
  let internet: TestInternet | undefined;
  let store: MemorySlotStore;
  let pool: NetnsSlots;
  let a: NetnsSlot;
  let b: NetnsSlot;
  let ga: FakeGuest | undefined;
  let gb: FakeGuest | undefined;
  let hostServer: Server | undefined;
  const procs: ChildProcess[] = [];

  before(async () => {
    range = await freeTestRange();
    internet = await startInternet(tag);
    store = new MemorySlotStore();
    pool = new NetnsSlots({ store, tag, hostRange: range, poolSize: 2, maxIdle: 4, egressInterface: internet.hostIf });
    await pool.start();
    await pool.whenFilled();
  });

  after(async () => {
    for (const p of procs) p.kill('SIGKILL');
    await ga?.detach().catch(() => undefined);
    await gb?.detach().catch(() => undefined);
    if (hostServer) { hostServer.closeAllConnections(); hostServer.close(); }
    await pool?.destroyAll().catch((e: unknown) => console.error('destroyAll:', e));
    await internet?.close();
    const left = await tagged(tag);
    await sweep(tag);
    assert.deepEqual(left, { netns: [], links: [], tables: [] }, 'nothing with the test tag is left');
  });

  test('a slot is a namespace with a veth pair, a tap, the constant guest link, a default route and its table', async () => {
    a = await pool.acquire(sig());
    b = await pool.acquire(sig());
    assert.notEqual(a.nsAddr, b.nsAddr);
    for (const s of [a, b]) {
      const inside = await json<IpAddr[]>('ip', ['-n', s.netnsName, '-d', '-j', 'addr', 'show']);
      const tap = inside.find((i) => i.ifname === 'tap0')!;
      assert.equal(tap.linkinfo?.info_kind, 'tun', 'tap0 is a tun/tap device');
      assert.equal(tap.address, GATEWAY_MAC);
      assert.deepEqual(tap.addr_info.filter((x) => x.family === 'inet').map((x) => `${x.local}/${x.prefixlen}`), [`${GATEWAY_IP}/30`]);
      const veth = inside.find((i) => i.ifname === 'veth0')!;
      assert.equal(veth.linkinfo?.info_kind, 'veth');
      assert.deepEqual(veth.addr_info.map((x) => `${x.local}/${x.prefixlen}`), [`${s.nsAddr}/30`], 'IPv4 only: no IPv6 address');
      const routes = await json<{ dst: string; gateway?: string }[]>('ip', ['-n', s.netnsName, '-j', 'route', 'show']);
      assert.ok(routes.some((r) => r.dst === 'default' && r.gateway === s.hostAddr));
      const host = await json<IpAddr[]>('ip', ['-j', 'addr', 'show', 'dev', s.hostIf]);
      assert.deepEqual(host[0]!.addr_info.map((x) => `${x.local}/${x.prefixlen}`), [`${s.hostAddr}/30`]);
      const fwd = await sh('nsenter', [`--net=/run/netns/${s.netnsName}`, '--', 'sysctl', '-n', 'net.ipv4.ip_forward']);
      assert.equal(fwd.stdout.trim(), '1');
      const tables = await sh('nsenter', [`--net=/run/netns/${s.netnsName}`, '--', 'nft', 'list', 'tables']);
      assert.equal(tables.stdout.trim(), 'table inet hearth');
    }
    const hostTables = await sh('nft', ['list', 'tables']);
    assert.match(hostTables.stdout, new RegExp(`table inet hearth-${tag}\\n`));
  });

  test('every slot presents the same guest side (what a memory snapshot needs); only the host side differs', async () => {
    const view = async (s: NetnsSlot) => {
      const tap = (await json<IpAddr[]>('ip', ['-n', s.netnsName, '-j', 'addr', 'show', 'dev', 'tap0']))[0]!;
      const { netnsName, ...vm } = s.vmNetwork as { netnsName: string; tapName: string; mac: string; kind: string };
      assert.equal(netnsName, s.netnsName);
      return { vm, tapMac: tap.address, addr: tap.addr_info.map((x) => `${x.local}/${x.prefixlen}`), guestArgs: pool.guestKernelArgs() };
    };
    assert.deepEqual(await view(a), await view(b));
    assert.equal(a.vmNetwork.kind === 'tap' && a.vmNetwork.tapName, 'tap0');
    assert.notEqual(a.netnsName, b.netnsName);
  });

  test('the host reaches a guest port at the slot address; the guest sees its gateway as the peer', async () => {
    ga = await new FakeGuest(a, tag).attach();
    gb = await new FakeGuest(b, tag).attach();
    await ga.serve(8080, 'guestA');
    await gb.serve(8080, 'guestB');
    await ga.serve(9090, 'guestA9090');
    const r = await sh('curl', ['-sS', '-m', '3', `http://${a.nsAddr}:8080/x`]);
    assert.equal(r.stdout, `guestA ${GUEST_IP} from ${GATEWAY_IP} /x`);
    const rb = await sh('curl', ['-sS', '-m', '3', `http://${b.nsAddr}:8080/`]);
    assert.equal(rb.stdout, `guestB ${GUEST_IP} from ${GATEWAY_IP} /`);
  });

  test('egress: the guest reaches the test internet when allowed, not when denied, and deny wins over allow', async () => {
    const open = await ga!.curl(`http://${INTERNET_SERVER}:8080/`);
    assert.ok(open.ok, open.error);
    assert.equal(open.body, `internet ${INTERNET_SERVER} from ${INTERNET_HOST_ADDR} /`, 'NATed twice: the internet sees the host');
    await pool.setEgress(a, { internet: false });
    const off = await ga!.curl(`http://${INTERNET_SERVER}:8080/`);
    assert.equal(off.ok, false);
    assert.match(off.error, /No route to host|Couldn't connect|Connection refused|timed out/i);
    await pool.setEgress(a, { internet: false, allow: ['198.51.100.0/24'], deny: [`${INTERNET_SERVER_2}/32`] });
    assert.ok((await ga!.curl(`http://${INTERNET_SERVER}:8080/`)).ok, 'allowed by the allow list');
    assert.equal((await ga!.curl(`http://${INTERNET_SERVER_2}:8080/`)).ok, false, 'deny wins over allow');
    await pool.setEgress(a, { internet: true, deny: ['198.51.100.0/28'] });
    assert.equal((await ga!.curl(`http://${INTERNET_SERVER}:8080/`)).ok, false, 'deny with internet on');
    assert.ok((await ga!.curl(`http://${INTERNET_SERVER_2}:8080/`)).ok, '.20 is outside the denied /28');
    // the other sandbox was never affected
    assert.ok((await gb!.curl(`http://${INTERNET_SERVER}:8080/`)).ok);
    await pool.setEgress(a, {});
  });

  test('a policy change applies to connections that are already open', async () => {
    const client = await nsSpawn(ga!.netns, ['-e', `
      const WebSocket = require(require('node:path').join(process.argv[1], 'node_modules', 'ws'));
      const ws = new WebSocket('ws://${INTERNET_SERVER}:8080/');
      let n = 0;
      ws.on('open', () => { console.log('open'); setInterval(() => ws.send(String(n++)), 50); });
      ws.on('message', (m) => console.log(String(m)));
      ws.on('error', (e) => console.log('error ' + e.message));
    `, PACKAGE_ROOT], 'open');
    procs.push(client);
    let echoes = 0;
    client.stdout!.on('data', (d: Buffer) => { echoes += (d.toString().match(/echo:/g) ?? []).length; });
    await new Promise((r) => setTimeout(r, 500));
    assert.ok(echoes > 3, `echoes flow before the change (${echoes})`);
    await pool.setEgress(a, { internet: false });
    await new Promise((r) => setTimeout(r, 200));
    const atChange = echoes;
    await new Promise((r) => setTimeout(r, 800));
    assert.ok(echoes - atChange <= 1, `no echoes after internet was switched off (${echoes - atChange} more)`);
    client.kill('SIGKILL');
    await pool.setEgress(a, {});
  });

  test('two sandboxes cannot reach each other, by any address', async () => {
    for (const url of [
      `http://${b.nsAddr}:8080/`, // b's exposed address
      `http://${b.hostAddr}:8080/`, // the host end of b's veth
      `http://${a.nsAddr}:8080/`, // a's own slot address (hairpin)
      `http://${GATEWAY_IP}:8080/`, // the slot namespace itself
    ]) {
      const r = await ga!.curl(url, 2);
      assert.equal(r.ok, false, `${url} must be unreachable from sandbox a: ${r.body}`);
    }
    assert.ok((await sh('curl', ['-sS', '-m', '3', `http://${b.nsAddr}:8080/`])).code === 0, 'while the host reaches b');
  });

  test('a sandbox cannot reach a host port, on any host address', async () => {
    hostServer = createServer((_req, res) => res.end('host'));
    await new Promise<void>((r) => hostServer!.listen(0, '0.0.0.0', r));
    const port = (hostServer.address() as AddressInfo).port;
    assert.equal((await sh('curl', ['-sS', '-m', '3', `http://${INTERNET_HOST_ADDR}:${port}/`])).stdout, 'host', 'the server works');
    for (const addr of [a.hostAddr, INTERNET_HOST_ADDR]) {
      const r = await ga!.curl(`http://${addr}:${port}/`, 2);
      assert.equal(r.ok, false, `host port via ${addr} must be unreachable: ${r.body}`);
    }
  });

  test('link-local metadata (169.254.169.254) is refused by the operator deny list, also with internet on', async () => {
    const before = await counterOf(a.netnsName, 'guest_egress', /@always_deny_v4/);
    const r = await ga!.curl('http://169.254.169.254/latest/meta-data/', 2);
    assert.equal(r.ok, false);
    assert.ok(await counterOf(a.netnsName, 'guest_egress', /@always_deny_v4/) > before, 'the always-deny rule counted the attempt');
  });

  test('exposure: the host reaches only the exposed guest ports (others are reset at once)', async () => {
    await pool.setExposure(a, [8080]);
    assert.equal((await sh('curl', ['-sS', '-m', '3', `http://${a.nsAddr}:8080/`])).code, 0);
    const t0 = performance.now();
    const closed = await sh('curl', ['-sS', '-m', '3', `http://${a.nsAddr}:9090/`]);
    assert.notEqual(closed.code, 0);
    assert.match(closed.stderr, /Connection refused|reset|Couldn't connect/i);
    assert.ok(performance.now() - t0 < 2000, 'refused, not timed out');
    await pool.setExposure(a, 'all');
    assert.equal((await sh('curl', ['-sS', '-m', '3', `http://${a.nsAddr}:9090/`])).stdout, `guestA9090 ${GUEST_IP} from ${GATEWAY_IP} /`);
  });

  test('the port proxy reaches guest servers over HTTP and WebSocket, and says 502 when nothing listens', async () => {
    const slots: Record<string, NetnsSlot> = { sbxa: a, sbxb: b };
    const px = await startProxy((id, port) => slots[id]?.guestAddress(port) ?? null);
    try {
      const r = await fetch(`${px.url}/sandboxes/sbxa/ports/8080/hello?x=1`);
      assert.equal(await r.text(), `guestA ${GUEST_IP} from ${GATEWAY_IP} /hello?x=1`);
      const hostForm = await sh('curl', ['-sS', '-H', 'Host: 8080-sbxb.sandbox.test', `${px.url}/y`]);
      assert.equal(hostForm.stdout, `guestB ${GUEST_IP} from ${GATEWAY_IP} /y`);
      const closed = await fetch(`${px.url}/sandboxes/sbxa/ports/7777/`);
      assert.equal(closed.status, 502);
      assert.deepEqual(await closed.json(), { sandboxId: 'sbxa', message: 'The sandbox is running but port is not open', port: 7777, code: 502 });
      const ws = new WebSocket(`ws://127.0.0.1:${px.port}/sandboxes/sbxb/ports/8080/ws`);
      await once(ws, 'open');
      ws.send('hi');
      const [msg] = await once(ws, 'message') as [Buffer];
      assert.equal(msg.toString(), 'echo:hi');
      ws.close();
    } finally {
      await px.close();
    }
  });

  test('release resets the slot: every flow of the previous tenant is cut and the policy is back to default', async () => {
    await pool.setEgress(a, { internet: false });
    // an open host → guest connection (what the agent client or the proxy holds)
    const ws = new WebSocket(`ws://${a.nsAddr}:8080/`);
    await once(ws, 'open');
    ws.send('before');
    assert.equal(String((await once(ws, 'message'))[0]), 'echo:before');
    await pool.release(a);
    let after = '';
    ws.on('message', (m) => { after += String(m); });
    ws.on('error', () => undefined);
    ws.send('after');
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(after, '', 'the old connection carries nothing after the reset');
    ws.terminate();
    assert.deepEqual(pool.policyOf(a.id).egress, { internet: true, allow: [], deny: [] });
    // the guest still attached to the freed slot sees the default policy: internet on
    assert.ok((await ga!.curl(`http://${INTERNET_SERVER}:8080/`)).ok);
    await ga!.detach();
    ga = undefined;
    await gb!.detach();
    gb = undefined;
    await pool.release(b);
  });

  test('50 acquire/release cycles with bursts beyond the pool and a daemon restart leave nothing beyond the pool', async () => {
    const slotObjects = async () => {
      const t = await tagged(tag);
      return {
        netns: t.netns.filter((n) => pool.names.slotOfNetns(n) !== undefined).sort(),
        links: t.links.filter((l) => pool.names.slotOfHostIf(l) !== undefined).sort(),
        tables: t.tables,
      };
    };
    for (let i = 0; i < 50; i++) {
      const burst = i % 10 === 9 ? 6 : 1 + (i % 3); // bursts of 6 are beyond poolSize 2 and maxIdle 4
      const held = await Promise.all(Array.from({ length: burst }, () => pool.acquire(sig())));
      if (i % 7 === 0) await pool.setEgress(held[0]!, { internet: false, deny: ['198.51.100.0/24'] });
      await Promise.all(held.map((s) => pool.release(s)));
      if (i === 25) {
        // daemon restart: a new pool over the same store adopts and reaps
        await pool.close();
        pool = new NetnsSlots({ store, tag, hostRange: range, poolSize: 2, maxIdle: 4, egressInterface: internet!.hostIf });
        const report = await pool.start();
        assert.deepEqual(report.reaped, { netns: [], links: [] });
        assert.deepEqual(report.dropped, []);
      }
    }
    await pool.whenFilled();
    const stats = pool.stats();
    assert.equal(stats.used, 0);
    assert.ok(stats.free >= 2 && stats.free <= 4, `free ${stats.free}`);
    const objs = await slotObjects();
    const rows = store.load();
    assert.deepEqual(objs.netns, rows.map((r) => r.netns).sort(), 'one namespace per persisted slot, no more');
    assert.deepEqual(objs.links, rows.map((r) => r.hostIf).sort(), 'one host veth per persisted slot, no more');
    assert.deepEqual(objs.tables, [`hearth-${tag}`], 'one host table');
    for (const r of rows) {
      const links = await sh('ip', ['-n', r.netns, '-o', 'link', 'show']);
      assert.deepEqual(links.stdout.split('\n').filter(Boolean).map((l) => /^\d+:\s+([^:@]+)/.exec(l)![1]).sort(), ['lo', 'tap0', 'veth0'], `${r.netns} holds lo, tap0, veth0 only`);
      const tables = await sh('nsenter', [`--net=/run/netns/${r.netns}`, '--', 'nft', 'list', 'tables']);
      assert.equal(tables.stdout.trim(), 'table inet hearth');
    }
    await pool.destroyAll();
    assert.deepEqual(await slotObjects(), { netns: [], links: [], tables: [] }, 'destroyAll leaves nothing');
  });

  test('start() reaps namespaces and veths with the pool\'s names that no persisted slot owns', async () => {
    const p = new NetnsSlots({ store: new MemorySlotStore(), tag, hostRange: range, poolSize: 0 });
    await sh('ip', ['netns', 'add', `hearth-${tag}s40`]);
    await sh('ip', ['link', 'add', `hth${tag}s41`, 'type', 'veth', 'peer', 'name', `hth${tag}x41`]);
    await sh('ip', ['netns', 'add', `hearth-${tag}x1`]); // not a slot name: left alone
    try {
      const report = await p.start();
      assert.deepEqual(report.reaped, { netns: [`hearth-${tag}s40`], links: [`hth${tag}s41`] });
      const t = await tagged(tag);
      assert.ok(!t.netns.includes(`hearth-${tag}s40`));
      assert.ok(!t.links.includes(`hth${tag}s41`) && !t.links.includes(`hth${tag}x41`), 'the veth pair is gone');
      assert.ok(t.netns.includes(`hearth-${tag}x1`), 'a name the pool does not make is not touched');
    } finally {
      await sh('ip', ['netns', 'del', `hearth-${tag}x1`]);
      await p.destroyAll();
    }
  });
});
