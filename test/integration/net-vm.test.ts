/**
 * Netns networking with real QEMU VMs (the default image, KVM where it runs):
 * a SandboxManager wired with NetnsSlots (net-fixture.ts startNetDaemon), the
 * SDK for commands in the guests, the port proxy in front, and the test
 * "internet" namespace (198.51.100.0/24) behind the pool's egress interface.
 * The snapshot test drives QemuVmm directly: boot in one slot, snapshot,
 * restore in another.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chooseNetwork } from '../../src/network/netns/index.js';
import { WebSocket } from 'ws';
import { Sandbox } from '../../src/sdk/index.js';
import { Commands } from '../../src/sdk/commands.js';
import { envdClients } from '../../src/sdk/envd.js';
import { AgentControl } from '../../src/client/agent-rest.js';
import { AGENT_PORT } from '../../src/agent/protocol.js';
import { GATEWAY_IP, GATEWAY_MAC, type NetnsSlot, type NetnsSlots } from '../../src/network/netns/index.js';
import type { VmConfig } from '../../src/vmm/types.js';
import type { QemuVmm } from '../../src/vmm/qemu/vmm.js';
import type { RootDisk } from '../../src/storage/types.js';
import {
  INTERNET_HOST_ADDR, INTERNET_SERVER, INTERNET_SERVER_2, counterOf, freeTestRange, randomTag, startInternet, startNetDaemon, sweep, tagged, tempDir, guestCurl, until,
  type NetDaemon, type TestInternet,
} from './net-fixture.js';

const tag = randomTag();
// Root, iproute2, nft, nsenter and /dev/net/tun, or the whole suite is skipped with the reason.
const choice = await chooseNetwork();
const netnsSkip = choice.kind === 'netns' ? false : choice.reason;
const sig = (ms = 60_000) => AbortSignal.timeout(ms);

/** A small HTTP + WebSocket echo server for the guest (its Node has no ws module: frames by hand). */
const GUEST_WS_SERVER = String.raw`
const http = require('http'), crypto = require('crypto');
const srv = http.createServer((req, res) => res.end('guest-http ' + req.url));
srv.on('upgrade', (req, sock) => {
  const accept = crypto.createHash('sha1').update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  sock.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ' + accept + '\r\n\r\n');
  let buf = Buffer.alloc(0);
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (buf.length < 2) return;
      const op = buf[0] & 15; let len = buf[1] & 127; let off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
      const masked = (buf[1] & 128) !== 0; const maskAt = off; if (masked) off += 4;
      if (buf.length < off + len) return;
      let payload = Buffer.from(buf.subarray(off, off + len));
      if (masked) for (let i = 0; i < payload.length; i++) payload[i] ^= buf[maskAt + (i % 4)];
      buf = buf.subarray(off + len);
      if (op === 8) { sock.end(Buffer.from([0x88, 0])); return; }
      if (op === 1 || op === 2) {
        const out = Buffer.concat([Buffer.from('echo:'), payload]);
        const hdr = out.length < 126 ? Buffer.from([0x80 | op, out.length]) : Buffer.from([0x80 | op, 126, out.length >> 8, out.length & 255]);
        sock.write(Buffer.concat([hdr, out]));
      }
    }
  });
});
srv.listen(8080, '0.0.0.0', () => console.log('listening'));
`;

describe(`netns networking with real VMs (tag ${tag})`, { skip: netnsSkip }, () => {
  let internet: TestInternet | undefined;
  let pool: NetnsSlots;
  let d: NetDaemon | undefined;
  let a: Sandbox;
  let b: Sandbox;
  let hostServer: Server | undefined;
  const slotOf = (s: Sandbox): NetnsSlot => pool.slotFor(d!.manager.get(s.id).network!)!;
  const acquired: number[] = [];

  before(async () => {
    const range = await freeTestRange();
    internet = await startInternet(tag);
    d = await startNetDaemon({ tag, range, egressInterface: internet.hostIf });
    pool = d.pool;
    // Record which slot each acquire hands out (the first goes to the warm template's build VM).
    const acquire = pool.acquire.bind(pool);
    pool.acquire = async (signal, opts) => { const s = await acquire(signal, opts); acquired.push(s.id); return s; };
    await pool.whenFilled();
    [a, b] = await Promise.all([Sandbox.create({ url: d.url }), Sandbox.create({ url: d.url })]);
  });

  after(async () => {
    if (hostServer) { hostServer.closeAllConnections(); hostServer.close(); }
    await d?.stop().catch((e: unknown) => console.error('daemon stop:', e));
    await internet?.close();
    const left = await tagged(tag);
    await sweep(tag);
    assert.deepEqual(left, { netns: [], links: [], tables: [] }, 'nothing with the test tag is left');
  });

  test('sandboxes restore from the template snapshot built in another slot, take their slot from the warm pool, and run in its namespace', async () => {
    const buildSlot = acquired[0];
    const used = [slotOf(a).id, slotOf(b).id];
    assert.ok(used.some((n) => n !== buildSlot), `the template was built in slot ${buildSlot}; sandboxes run in ${used.join(', ')}`);
    for (const s of [a, b]) {
      const info = await s.getInfo();
      assert.equal(info.timings!.op, 'create (restore)', 'restored from the warm template snapshot');
      const slotStep = info.timings!.steps.find((x) => x.step === 'slot')!;
      assert.ok(slotStep.ms < 50, `slot step took ${slotStep.ms} ms`);
      const slot = slotOf(s);
      assert.equal((await stat(`/proc/${info.vmm!.pid}/ns/net`)).ino, (await stat(`/run/netns/${slot.netnsName}`)).ino, 'QEMU runs in the slot namespace');
      const ip = await s.commands.run('ip -4 -o addr show dev eth0; ip route show default');
      assert.match(ip.stdout, /inet 169\.254\.0\.21\/30/);
      assert.match(ip.stdout, /default via 169\.254\.0\.22 dev eth0/);
    }
    assert.notEqual(slotOf(a).nsAddr, slotOf(b).nsAddr);
  });

  test('egress: the guest reaches the test internet when allowed, not when denied; deny wins over allow', async () => {
    const open = await guestCurl(a.commands, `http://${INTERNET_SERVER}:8080/`);
    assert.ok(open.ok, open.out);
    assert.equal(open.out, `internet ${INTERNET_SERVER} from ${INTERNET_HOST_ADDR} /`);
    await pool.setEgress(slotOf(a), { internet: false });
    const off = await guestCurl(a.commands, `http://${INTERNET_SERVER}:8080/`);
    assert.equal(off.ok, false, off.out);
    await pool.setEgress(slotOf(a), { internet: false, allow: ['198.51.100.0/24'], deny: [INTERNET_SERVER_2] });
    assert.ok((await guestCurl(a.commands, `http://${INTERNET_SERVER}:8080/`)).ok, 'allow list opens .10');
    assert.equal((await guestCurl(a.commands, `http://${INTERNET_SERVER_2}:8080/`)).ok, false, 'deny wins over allow for .20');
    assert.ok((await guestCurl(b.commands, `http://${INTERNET_SERVER_2}:8080/`)).ok, 'the other sandbox is unaffected');
    await pool.setEgress(slotOf(a), {});
    assert.ok((await guestCurl(a.commands, `http://${INTERNET_SERVER_2}:8080/`)).ok, 'back to the default');
  });

  test('two sandboxes cannot reach each other', async () => {
    await b.commands.run('python3 -m http.server 8000 --bind 0.0.0.0 --directory /tmp >/dev/null 2>&1', { background: true });
    const viaProxy = await until('b\'s server through the proxy', async () => {
      const r = await fetch(`${d!.proxy.url}/sandboxes/${b.id}/ports/8000/`);
      return r.status === 200 ? r.text() : undefined;
    });
    assert.match(viaProxy, /Directory listing/, 'the host reaches b');
    const sb = slotOf(b);
    for (const url of [`http://${sb.nsAddr}:8000/`, `http://${sb.hostAddr}:8000/`, `http://${slotOf(a).nsAddr}:8000/`, `http://${GATEWAY_IP}:8000/`]) {
      const r = await guestCurl(a.commands, url, 2);
      assert.equal(r.ok, false, `${url} must be unreachable from a`);
    }
  });

  test('a sandbox cannot reach a host port, nor the link-local metadata address', async () => {
    hostServer = createServer((_req, res) => res.end('host'));
    await new Promise<void>((r) => hostServer!.listen(0, '0.0.0.0', r));
    const port = (hostServer.address() as AddressInfo).port;
    for (const addr of [slotOf(a).hostAddr, INTERNET_HOST_ADDR]) {
      const r = await guestCurl(a.commands, `http://${addr}:${port}/`, 2);
      assert.equal(r.ok, false, `host port ${port} via ${addr} must be unreachable`);
    }
    const before = await counterOf(slotOf(a).netnsName, 'guest_egress', /@always_deny_v4/);
    assert.equal((await guestCurl(a.commands, 'http://169.254.169.254/latest/meta-data/', 2)).ok, false);
    assert.ok(await counterOf(slotOf(a).netnsName, 'guest_egress', /@always_deny_v4/) > before);
  });

  test('a server in the sandbox is reachable through the port proxy: HTTP (both URL forms) and WebSocket', async () => {
    await a.files.write('/tmp/ws-server.js', GUEST_WS_SERVER);
    await a.commands.run('node /tmp/ws-server.js >/tmp/ws-server.log 2>&1', { background: true });
    const body = await until('the guest server through the proxy', async () => {
      const r = await fetch(`${d!.proxy.url}/sandboxes/${a.id}/ports/8080/hello?x=1`);
      return r.status === 200 ? r.text() : undefined;
    });
    assert.equal(body, 'guest-http /hello?x=1');
    const hostForm = await new Promise<string>((resolve, reject) => {
      fetch(`${d!.proxy.url}/y`, { headers: { 'x-probe': '1' } }).catch(() => undefined); // warm nothing: the host form needs a Host header
      import('node:http').then(({ request }) => {
        const q = request({ host: '127.0.0.1', port: d!.proxy.port, path: '/y', headers: { host: `8080-${a.id}.sandbox.test` } }, (res) => {
          let s = '';
          res.setEncoding('utf8').on('data', (c: string) => { s += c; }).on('end', () => resolve(s));
        });
        q.on('error', reject);
        q.end();
      }, reject);
    });
    assert.equal(hostForm, 'guest-http /y');
    const ws = new WebSocket(`ws://127.0.0.1:${d!.proxy.port}/sandboxes/${a.id}/ports/8080/socket`);
    await once(ws, 'open');
    ws.send('hello-ws');
    assert.equal(String((await once(ws, 'message'))[0]), 'echo:hello-ws');
    ws.send('x'.repeat(1000));
    assert.equal(String((await once(ws, 'message'))[0]), `echo:${'x'.repeat(1000)}`);
    ws.close();
    const closed = await fetch(`${d!.proxy.url}/sandboxes/${a.id}/ports/8081/`);
    assert.equal(closed.status, 502);
    assert.deepEqual(await closed.json(), { sandboxId: a.id, message: 'The sandbox is running but port is not open', port: 8081, code: 502 });
  });

  test('a snapshot taken in one slot restores in another: open sockets, addresses and the gateway\'s MAC all carry over', async () => {
    const t = d!.template;
    const tmp = await tempDir('hearth-net-snap-');
    const token = randomBytes(16).toString('hex');
    const nonce = randomBytes(8).toString('hex');
    let vm: QemuVmm | undefined;
    let restored: QemuVmm | undefined;
    let disk: RootDisk | undefined;
    const x = await pool.acquire(sig());
    let y: NetnsSlot | undefined;
    try {
      disk = await d!.storage.create('netsnap', { id: 'base', path: t.rootfsPath, sizeBytes: (await stat(t.rootfsPath)).size }, sig());
      const dirA = join(tmp.dir, 'a');
      await mkdir(dirA, { recursive: true });
      const cfg: VmConfig = {
        sandboxId: 'netsnap-a', vcpus: 1, memoryMib: 512, kernelPath: t.kernelPath, initrdPath: t.initrdPath, kernelArgs: `${t.kernelArgs} ${x.guestKernelArgs}`,
        rootfsPath: disk.devicePath, memoryFilePath: join(dirA, 'memory'), runDir: dirA, consoleLogPath: join(dirA, 'console.log'), network: x.vmNetwork,
      };
      vm = d!.driver.create();
      await vm.boot(cfg, sig());
      await new AgentControl(x.guestAddress(AGENT_PORT)).waitUntilReady({ signal: sig(180_000), timeoutMs: 150_000 }).catch(async (err: unknown) => {
        const log = await readFile(cfg.consoleLogPath, 'utf8').catch(() => '(no console log)');
        throw new Error(`${String(err)}\n--- guest console (tail) ---\n${log.slice(-4000)}`);
      });
      await new AgentControl(x.guestAddress(AGENT_PORT)).init({ accessToken: token, envVars: {}, timestamp: new Date().toISOString() }, sig());
      const cmdsX = new Commands(envdClients({ baseUrl: `http://${x.nsAddr}:${AGENT_PORT}`, accessToken: token }));
      await cmdsX.run(`mkdir -p /tmp/www && echo ${nonce} > /tmp/www/nonce`);
      await cmdsX.run('python3 -m http.server 8000 --bind 0.0.0.0 --directory /tmp/www >/dev/null 2>&1', { background: true });
      assert.equal(await until('the guest server in slot x', async () => {
        const r = await fetch(`http://${x.nsAddr}:8000/nonce`);
        return r.ok ? r.text() : undefined;
      }), `${nonce}\n`);
      // The guest talks to its gateway before the snapshot, so the gateway's MAC is in its ARP cache.
      assert.ok((await guestCurl(cmdsX, `http://${INTERNET_SERVER}:8080/`)).ok);
      const snap = await vm.snapshot(join(tmp.dir, 'snap'), 'full', sig());
      await vm.stop(sig());
      // A different slot for the restore (x is still held, so y cannot be x).
      y = await pool.acquire(sig());
      assert.notEqual(y.id, x.id);
      assert.notEqual(y.nsAddr, x.nsAddr);
      await pool.release(x);
      const dirB = join(tmp.dir, 'b');
      await mkdir(dirB, { recursive: true });
      const rcfg: VmConfig = { ...cfg, sandboxId: 'netsnap-b', memoryFilePath: join(dirB, 'memory'), runDir: dirB, consoleLogPath: join(dirB, 'console.log'), network: y.vmNetwork };
      await copyFile(snap.memoryPath, rcfg.memoryFilePath);
      restored = d!.driver.create();
      const t0 = performance.now();
      await restored.restore(snap, rcfg, sig());
      const yy = y;
      // The server process started before the snapshot answers on the new slot's address.
      assert.equal(await until('the restored guest server in slot y', async () => {
        const r = await fetch(`http://${yy.nsAddr}:8000/nonce`, { signal: AbortSignal.timeout(2000) });
        return r.ok ? r.text() : undefined;
      }, 20_000), `${nonce}\n`);
      const firstReplyMs = Math.round(performance.now() - t0);
      // Egress right away: a gateway MAC differing between slots would stall this for the ARP timeout (~30 s).
      const cmdsY = new Commands(envdClients({ baseUrl: `http://${y.nsAddr}:${AGENT_PORT}`, accessToken: token }));
      const t1 = performance.now();
      const egress = await guestCurl(cmdsY, `http://${INTERNET_SERVER}:8080/`, 3);
      assert.ok(egress.ok, `egress from the restored guest: ${egress.out}`);
      const egressMs = Math.round(performance.now() - t1);
      assert.ok(egressMs < 3000, `egress after restore took ${egressMs} ms`);
      const seenIp = await cmdsY.run('ip -4 -o addr show dev eth0; ip neigh show 169.254.0.22');
      assert.match(seenIp.stdout, /169\.254\.0\.21\/30/, 'the guest kept its address');
      assert.match(seenIp.stdout, new RegExp(`169\\.254\\.0\\.22 dev eth0 lladdr ${GATEWAY_MAC}`), 'its gateway entry names the MAC every slot\'s tap has');
      console.log(`# snapshot restored in another slot: first reply over the new slot ${firstReplyMs} ms, first egress ${egressMs} ms`);
    } finally {
      await restored?.stop(sig()).catch(() => undefined);
      await vm?.stop(sig()).catch(() => undefined);
      if (disk) await d!.storage.remove(disk).catch(() => undefined);
      await pool.release(x).catch(() => undefined);
      if (y) await pool.release(y).catch(() => undefined);
      await tmp.remove();
    }
  });

  test('destroying the sandboxes returns their slots; nothing beyond the pool is left on the host', async () => {
    await a.kill();
    await b.kill();
    await pool.whenFilled();
    const stats = pool.stats();
    assert.equal(stats.used, 0);
    assert.ok(stats.free <= 4, `free ${stats.free}`);
    const t = await tagged(tag);
    const slotNs = t.netns.filter((n) => pool.names.slotOfNetns(n) !== undefined);
    const slotLinks = t.links.filter((l) => pool.names.slotOfHostIf(l) !== undefined);
    assert.equal(slotNs.length, stats.free);
    assert.equal(slotLinks.length, stats.free);
  });
});
