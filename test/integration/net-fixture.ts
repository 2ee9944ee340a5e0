/**
 * Fixture for the netns integration tests (test/integration/net-*.test.ts).
 *
 * Network rule: traffic only goes to loopback or to namespaces made here.
 * The "internet" is a namespace with addresses from a documentation range
 * (198.51.100.0/24) behind a veth whose host end is the pool's configured
 * egress interface; nothing is routed through the host's real interfaces.
 * Every object carries a random tag (hearth-<tag>…, hth<tag>…) and is removed
 * by name, whatever happens.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { GATEWAY_IP, GATEWAY_MAC, GUEST_IP, GUEST_MAC, NS_VETH_NAME, TAP_NAME } from '../../src/network/netns/addressing.js';
import { MemorySlotStore, NetnsSlots, type NetnsSlot, type NetnsSlotsOptions } from '../../src/network/netns/index.js';
import { createPortProxy, type PortProxy } from '../../src/network/proxy/index.js';
import { CommandExitError } from '../../src/sdk/index.js';
import type { Commands } from '../../src/sdk/commands.js';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { Store } from '../../src/store/store.js';
import { SandboxManager } from '../../src/core/manager.js';
import { QemuDriver } from '../../src/vmm/qemu/driver.js';
import { probeAccelerator } from '../../src/vmm/probe.js';
import { FileRootfsBackend } from '../../src/storage/file/file-backend.js';
import { chooseRootfsBackend } from '../../src/storage/select.js';
import { startDaemon } from '../../src/daemon/daemon.js';
import { loadConfig, type HearthConfig } from '../../src/daemon/config.js';
import { createLogger } from '../../src/core/log.js';
import { testImage } from '../helpers/daemon.js';

const execFileP = promisify(execFile);

export const INTERNET_HOST_ADDR = '198.51.100.1';
export const INTERNET_SERVER = '198.51.100.10';
export const INTERNET_SERVER_2 = '198.51.100.20';

export async function sh(cmd: string, args: string[], input?: string): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ stdout, stderr, code });
    });
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input ?? '');
  });
}

async function must(cmd: string, args: string[], input?: string): Promise<string> {
  const r = await sh(cmd, args, input);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

export { freeTestRange, randomTag, sweep, tagged } from '../helpers/netns.js';

export function nsExec(netns: string, cmd: string, args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  return sh('nsenter', [`--net=/run/netns/${netns}`, '--', cmd, ...args]);
}

/** A long-running process inside a namespace; resolves once it printed `ready`. */
export async function nsSpawn(netns: string | null, args: string[], ready = 'listening'): Promise<ChildProcess> {
  const child = netns
    ? spawn('nsenter', [`--net=/run/netns/${netns}`, '--', process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error(`process in ${netns} did not print "${ready}": ${out}`)), 10_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; if (out.includes(ready)) { clearTimeout(t); resolve(); } });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { out += d; });
    child.on('exit', (code) => { clearTimeout(t); reject(new Error(`process in ${netns} exited (${code}): ${out}`)); });
  });
  child.removeAllListeners('exit');
  return child;
}

/**
 * An HTTP server answering `<label> <local address> from <peer address>`, with
 * a WebSocket echo on upgrade (ws from this repository's node_modules; the
 * namespace shares the filesystem).
 */
export const SERVER_SCRIPT = `
const http = require('node:http');
const [port, root, label, host] = process.argv.slice(1);
const { WebSocketServer } = require(require('node:path').join(root, 'node_modules', 'ws'));
const srv = http.createServer((req, res) => res.end(label + ' ' + req.socket.localAddress + ' from ' + req.socket.remoteAddress + ' ' + req.url));
const wss = new WebSocketServer({ server: srv });
wss.on('connection', (ws) => ws.on('message', (m) => ws.send('echo:' + m)));
srv.listen(Number(port), host || '0.0.0.0', () => console.log('listening'));
`;

export function serverArgs(port: number, label: string, host = '0.0.0.0'): string[] {
  return ['-e', SERVER_SCRIPT, String(port), PACKAGE_ROOT, label, host];
}

/** curl from inside a namespace; ok = an HTTP answer arrived. */
export async function curlFrom(netns: string, url: string, timeoutSec = 3): Promise<{ ok: boolean; body: string; error: string }> {
  const r = await nsExec(netns, 'curl', ['-sS', '-m', String(timeoutSec), url]);
  return { ok: r.code === 0, body: r.stdout, error: r.stderr.trim() };
}

export interface TestInternet {
  netns: string;
  hostIf: string;
  servers: ChildProcess[];
  close(): Promise<void>;
}

/**
 * The test "internet": namespace hearth-<tag>inet holding 198.51.100.10 and .20
 * (each serving HTTP on 8080), reached from the host over veth hth<tag>i0
 * (198.51.100.1/24), which the pool names as its egress interface.
 */
export async function startInternet(tag: string): Promise<TestInternet> {
  const routes = await must('ip', ['-4', 'route', 'show', 'table', 'all']);
  if (routes.includes('198.51.100.')) throw new Error('the host already routes 198.51.100.0/24; refusing to add the test internet');
  const netns = `hearth-${tag}inet`;
  const hostIf = `hth${tag}i0`;
  await must('ip', ['-batch', '-'], [
    `netns add ${netns}`,
    `link add ${hostIf} type veth peer name eth0 netns ${netns}`,
    `addr add ${INTERNET_HOST_ADDR}/24 dev ${hostIf}`,
    `link set ${hostIf} up`,
  ].join('\n') + '\n');
  await must('ip', ['-n', netns, '-batch', '-'], [
    'link set lo up',
    `addr add ${INTERNET_SERVER}/24 dev eth0`,
    `addr add ${INTERNET_SERVER_2}/24 dev eth0`,
    'link set eth0 up',
  ].join('\n') + '\n');
  const servers = [
    await nsSpawn(netns, serverArgs(8080, 'internet', INTERNET_SERVER)),
    await nsSpawn(netns, serverArgs(8080, 'internet2', INTERNET_SERVER_2)),
  ];
  return {
    netns, hostIf, servers,
    async close() {
      for (const s of servers) s.kill('SIGKILL');
      await sh('ip', ['link', 'del', hostIf]);
      await sh('ip', ['netns', 'del', netns]);
    },
  };
}

/**
 * A fake guest for datapath tests without a VMM: the slot's tap is replaced by
 * a veth named tap0 whose peer (eth0, guest MAC and address, default route via
 * the gateway) sits in namespace hearth-<tag>g<N>. Processes in that namespace
 * act as the guest. detach() puts a real tap back exactly as the pool made it.
 */
export class FakeGuest {
  readonly netns: string;
  private procs: ChildProcess[] = [];

  constructor(readonly slot: NetnsSlot, tag: string) {
    this.netns = `hearth-${tag}g${slot.id}`;
  }

  async attach(): Promise<this> {
    const ns = this.slot.netnsName;
    await must('ip', ['netns', 'add', this.netns]);
    await must('ip', ['-n', ns, '-batch', '-'], [
      `link del ${TAP_NAME}`,
      `link add ${TAP_NAME} type veth peer name eth0 netns ${this.netns}`,
      `link set ${TAP_NAME} address ${GATEWAY_MAC}`,
      `addr add ${GATEWAY_IP}/30 dev ${TAP_NAME}`,
      `link set ${TAP_NAME} up`,
    ].join('\n') + '\n');
    await must('ip', ['-n', this.netns, '-batch', '-'], [
      'link set lo up',
      `link set eth0 address ${GUEST_MAC}`,
      `addr add ${GUEST_IP}/30 dev eth0`,
      'link set eth0 up',
      `route add default via ${GATEWAY_IP} dev eth0`,
    ].join('\n') + '\n');
    return this;
  }

  curl(url: string, timeoutSec = 3): Promise<{ ok: boolean; body: string; error: string }> {
    return curlFrom(this.netns, url, timeoutSec);
  }

  async serve(port: number, label: string): Promise<void> {
    this.procs.push(await nsSpawn(this.netns, serverArgs(port, label)));
  }

  async detach(): Promise<void> {
    for (const p of this.procs) p.kill('SIGKILL');
    this.procs = [];
    const ns = this.slot.netnsName;
    await sh('ip', ['netns', 'del', this.netns]);
    await sh('ip', ['-n', ns, 'link', 'del', TAP_NAME]);
    await must('ip', ['-n', ns, '-batch', '-'], [
      `tuntap add dev ${TAP_NAME} mode tap`,
      `link set ${TAP_NAME} address ${GATEWAY_MAC}`,
      `addr add ${GATEWAY_IP}/30 dev ${TAP_NAME}`,
      `link set ${TAP_NAME} up`,
    ].join('\n') + '\n');
  }
}

/** A port proxy on 127.0.0.1 in front of a resolver. */
export async function startProxy(resolve: (id: string, port: number) => { host: string; port: number } | null, domain = 'sandbox.test'): Promise<{ url: string; port: number; proxy: PortProxy; server: Server; close(): Promise<void> }> {
  const proxy = createPortProxy({ resolve, domain });
  const server = createServer((req, res) => { if (!proxy.handleRequest(req, res)) { res.writeHead(404); res.end(); } });
  server.on('upgrade', (req, socket, head) => { if (!proxy.handleUpgrade(req, socket, head)) socket.destroy(); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`, port, proxy, server,
    async close() { proxy.close(); server.closeAllConnections(); await new Promise((r) => server.close(r)); },
  };
}

export function testPool(tag: string, range: string, over: Partial<NetnsSlotsOptions> = {}): NetnsSlots {
  return new NetnsSlots({ store: new MemorySlotStore(), tag, hostRange: range, poolSize: 2, ...over });
}

/** Packets counted by the rules of a chain in a slot's table whose text matches. */
export async function counterOf(netns: string, chain: string, match: RegExp): Promise<number> {
  const out = await must('nsenter', [`--net=/run/netns/${netns}`, '--', 'nft', 'list', 'chain', 'inet', 'hearth', chain]);
  let total = 0;
  for (const line of out.split('\n')) {
    if (!match.test(line)) continue;
    const m = /counter packets (\d+)/.exec(line);
    if (m) total += Number(m[1]);
  }
  return total;
}

export async function tempDir(prefix: string): Promise<{ dir: string; remove(): Promise<void> }> {
  const dir = await mkdtemp(join(process.env['HEARTH_TEST_TMP'] ?? tmpdir(), prefix));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

export { execFileP, NS_VETH_NAME };

/** curl from inside a guest; ok = an HTTP answer arrived. */
export async function guestCurl(cmds: Pick<Commands, 'run'>, url: string, timeoutSec = 3): Promise<{ ok: boolean; out: string }> {
  try {
    const r = await cmds.run(`curl -sS -m ${timeoutSec} ${url}`, { timeoutMs: (timeoutSec + 10) * 1000 });
    return { ok: true, out: r.stdout };
  } catch (err) {
    if (err instanceof CommandExitError) return { ok: false, out: err.stderr };
    throw err;
  }
}

/** Poll `fn` until it gives a value (errors count as not yet). */
export async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}


// ------------------------------------------------------------------ real VMs
export interface NetDaemon {
  url: string;
  manager: SandboxManager;
  store: Store;
  pool: NetnsSlots;
  cfg: HearthConfig;
  driver: QemuDriver;
  storage: FileRootfsBackend;
  /** The template's kernel/initrd/rootfs/args (the slot's guest addresses are appended per VM). */
  template: { kernelPath: string; initrdPath: string; rootfsPath: string; kernelArgs: string };
  /** hearthd's own listener, which serves the port proxy (host form under "sandbox.test"). */
  proxy: { url: string; port: number };
  /** Closes this daemon, leaving sandboxes and slots as a crash-free stop does, and starts a new one on the same data dir. */
  restart(): Promise<NetDaemon>;
  /** Destroys every sandbox, closes the daemon, removes the pool's slots and the data dir. */
  stop(): Promise<void>;
}

/**
 * hearthd itself (startDaemon) on netns networking with this test's tag, range
 * and egress interface. The warm template is not built at start, so a test can
 * watch the pool's acquires from the first one (the template build's).
 */
export async function startNetDaemon(opts: { tag: string; range: string; egressInterface: string }): Promise<NetDaemon> {
  const tmp = await tempDir('hearth-net-it-');
  const cfg = loadConfig({
    dataDir: tmp.dir, host: '127.0.0.1', port: 0, defaultMemoryMib: 512, bootTimeoutMs: 120_000, warmOnStart: false,
    network: 'netns', networkTag: opts.tag, networkRange: opts.range, networkPoolSize: 2, egressInterface: opts.egressInterface, proxyDomain: 'sandbox.test',
    admissionMaxLoadPerCpu: 0, admissionMinFreeMemoryMib: 0, admissionMinFreeDiskMib: 0, // tests assert behaviour, not host load
  }, {});
  return openNetDaemon(cfg, tmp);
}

async function openNetDaemon(cfg: HearthConfig, tmp: { dir: string; remove(): Promise<void> }): Promise<NetDaemon> {
  const image = await testImage();
  const d = await startDaemon(cfg, createLogger(process.env['HEARTH_TEST_LOG'] ?? 'warn'), { image });
  const pool = d.network.slots;
  if (!(pool instanceof NetnsSlots)) throw new Error('the daemon did not choose netns networking');
  const [accel, storageChoice] = await Promise.all([probeAccelerator(), chooseRootfsBackend(cfg.dataDir, cfg.storage)]);
  const port = (d.app.server.address() as AddressInfo).port;
  return {
    url: d.url, manager: d.manager, store: d.store, pool, cfg,
    // For the test that drives VMs directly, beside the daemon's.
    driver: new QemuDriver({ accel: accel.accel }),
    storage: new FileRootfsBackend(storageChoice.chosen === 'dm' ? 'copy' : storageChoice.chosen, join(tmp.dir, 'direct')),
    template: { kernelPath: image.kernelPath, initrdPath: image.initrdPath, rootfsPath: image.rootfsPath, kernelArgs: image.kernelArgs },
    proxy: { url: d.url, port },
    async restart() {
      await d.manager.settled();
      await d.close();
      return openNetDaemon(cfg, tmp);
    },
    async stop() {
      await d.manager.settled();
      for (const s of d.manager.list()) {
        if (s.state !== 'destroyed') await d.manager.destroy(s.id, AbortSignal.timeout(60_000)).catch(() => undefined);
      }
      await d.close({ removeNetwork: true });
      await tmp.remove();
    },
  };
}
