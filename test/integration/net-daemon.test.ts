/**
 * hearthd on netns networking, end to end through its HTTP API and the SDK:
 * egress set at create and changed while running, kept across pause/resume;
 * a traffic-token-protected port; a daemon restart adopting a running sandbox
 * in its slot; 50 create/destroy cycles leaving only the pool behind.
 * Traffic goes only to loopback and to namespaces this test makes (the test
 * "internet" is 198.51.100.0/24 in its own namespace).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import { chooseNetwork } from '../../src/network/netns/index.js';
import { Sandbox } from '../../src/sdk/index.js';
import {
  INTERNET_SERVER, freeTestRange, guestCurl, randomTag, startInternet, startNetDaemon, sweep, tagged, until, type NetDaemon, type TestInternet,
} from './net-fixture.js';

const tag = randomTag();
const choice = await chooseNetwork();
const skip = choice.kind === 'netns' ? false : choice.reason;

async function reaches(s: Sandbox, url: string): Promise<boolean> {
  return (await guestCurl(s.commands, url)).ok;
}

describe(`hearthd on netns networking (tag ${tag})`, { skip }, () => {
  let internet: TestInternet | undefined;
  let d: NetDaemon | undefined;
  const internetUrl = `http://${INTERNET_SERVER}:8080/`;

  before(async () => {
    internet = await startInternet(tag);
    d = await startNetDaemon({ tag, range: await freeTestRange(), egressInterface: internet.hostIf });
  });

  after(async () => {
    await d?.stop().catch((e: unknown) => console.error('daemon stop:', e));
    await internet?.close();
    const left = await tagged(tag);
    await sweep(tag);
    assert.deepEqual(left, { netns: [], links: [], tables: [] }, 'nothing with the test tag is left');
  });

  test('egress from create is enforced, changed while running, and kept across pause/resume', async () => {
    const s = await Sandbox.create({ url: d!.url, allowInternetAccess: false });
    try {
      assert.deepEqual(s.info.network, { allow_internet_access: false, allowOut: [], denyOut: [] });
      assert.equal(await reaches(s, internetUrl), false, 'internet off from create');
      assert.deepEqual(await s.setNetwork({ allowInternetAccess: false, allowOut: [INTERNET_SERVER] }), { allow_internet_access: false, allowOut: [`${INTERNET_SERVER}/32`], denyOut: [] });
      assert.equal(await reaches(s, internetUrl), true, 'allowOut opens the one address');
      await s.pause();
      const paused = await s.setNetwork({ allowInternetAccess: true, denyOut: [INTERNET_SERVER] });
      assert.deepEqual(paused.denyOut, [`${INTERNET_SERVER}/32`], 'a paused sandbox records the change');
      await s.resume();
      assert.deepEqual(await s.getNetwork(), { allow_internet_access: true, allowOut: [], denyOut: [`${INTERNET_SERVER}/32`] });
      assert.equal(await reaches(s, internetUrl), false, 'the resumed sandbox\'s new slot has the policy: deny wins');
      await s.setNetwork({});
      assert.equal(await reaches(s, internetUrl), true, 'back to the host default (internet on)');
    } finally { await s.kill(); }
  });

  test('a sandbox with private ports is served only with its traffic token', async () => {
    const s = await Sandbox.create({ url: d!.url, network: { allowPublicTraffic: false } });
    try {
      assert.ok(s.trafficAccessToken);
      await s.commands.run('mkdir -p /tmp/w && echo private > /tmp/w/i && python3 -m http.server 8000 --bind 0.0.0.0 --directory /tmp/w >/dev/null 2>&1', { background: true });
      const url = `${s.getPortUrl(8000, 'path')}i`; // Node cannot resolve *.localhost; browsers and curl can
      const body = await until('the guest server', async () => {
        const r = await fetch(url, { headers: { 'e2b-traffic-access-token': s.trafficAccessToken! } });
        return r.ok ? r.text() : undefined;
      });
      assert.equal(body, 'private\n');
      assert.equal((await fetch(url)).status, 403);
    } finally { await s.kill(); }
  });

  test('a daemon restart adopts a running sandbox in its slot and resumes a paused one in a new slot', async () => {
    const running = await Sandbox.create({ url: d!.url });
    const paused = await Sandbox.create({ url: d!.url, allowInternetAccess: false });
    // Single quotes: the login shell must not expand $i. Written by rename: a reader never sees an empty file.
    await running.commands.run("sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/n.t; mv /tmp/n.t /tmp/n; sleep 0.2; done'", { background: true, timeoutMs: 0 });
    await paused.pause();
    const before = d!.manager.get(running.id).network;
    const pid = d!.manager.get(running.id).vmm!.pid;
    const t0 = performance.now();
    d = await d!.restart();
    const restartMs = Math.round(performance.now() - t0);
    assert.ok(restartMs < 15_000, `restart took ${restartMs} ms (an open command stream must not hold shutdown)`);
    const again = await Sandbox.connect(running.id, { url: d.url });
    try {
      assert.equal(again.info.state, 'running');
      assert.deepEqual(d.manager.get(running.id).network, before, 'the same slot');
      assert.equal(again.info.vmm!.pid, pid, 'the same QEMU');
      const n1 = Number((await again.commands.run('cat /tmp/n')).stdout);
      await new Promise((r) => setTimeout(r, 1000));
      const n2 = Number((await again.commands.run('cat /tmp/n')).stdout);
      assert.ok(n2 > n1, `its loop kept counting (${n1} → ${n2}; ${(await again.commands.run('ps -eo pid,stat,args | grep -v ps')).stdout})`);
      assert.equal(await reaches(again, internetUrl), true);
      assert.equal(d.pool.stats().pendingRecovery, 0, 'no used slot left unclaimed');
      const p = await Sandbox.connect(paused.id, { url: d.url, resume: false });
      assert.equal(p.info.state, 'paused', 'the paused sandbox came back paused after the restart');
      await p.resume();
      assert.equal(await reaches(p, internetUrl), false, 'its egress survived the restart');
      const slot = d.pool.slotFor(d.manager.get(p.id).network!)!;
      assert.equal((await stat(`/proc/${d.manager.get(p.id).vmm!.pid}/ns/net`)).ino, (await stat(`/run/netns/${slot.netnsName}`)).ino);
    } finally {
      await Promise.all([running.id, paused.id].map((id) => d!.manager.destroy(id, AbortSignal.timeout(60_000)).catch(() => undefined)));
    }
  });

  test('50 create/destroy cycles leave only the pool\'s free slots', async () => {
    const t0 = performance.now();
    const cycle = async () => { const s = await Sandbox.create({ url: d!.url }); await s.kill(); };
    for (let i = 0; i < 25; i++) await Promise.all([cycle(), cycle()]);
    console.log(`# 50 create/destroy cycles in ${Math.round(performance.now() - t0)} ms`);
    await d!.pool.whenFilled();
    const stats = d!.pool.stats();
    assert.equal(stats.used, 0);
    const objects = await tagged(tag);
    const slotNs = objects.netns.filter((n) => d!.pool.names.slotOfNetns(n) !== undefined);
    const slotLinks = objects.links.filter((l) => d!.pool.names.slotOfHostIf(l) !== undefined);
    assert.equal(slotNs.length, stats.free, `namespaces: ${slotNs.join(' ')}`);
    assert.equal(slotLinks.length, stats.free, `veths: ${slotLinks.join(' ')}`);
    assert.ok(stats.free <= 4, `free slots ${stats.free} (maxIdle 4)`);
    assert.equal(objects.tables.length, 1, 'one host table');
  });
});
