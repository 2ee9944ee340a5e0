/**
 * Network benchmark (src/network): everything on loopback and in namespaces
 * this benchmark creates (a slot pool with a random tag, fake guests).
 *
 *  1. slots: acquire from the warm pool vs set-up from scratch; release
 *     (reset), teardown, and a policy change (setEgress);
 *  2. port proxy vs a direct connection, to a server on loopback and to a
 *     "guest" behind a slot (DNAT path): sequential request latency,
 *     concurrent requests/s, bulk download MB/s, WebSocket round trips.
 *     Upstream server, proxy and client are three processes.
 *
 * `node --import tsx bench/network.ts [--rounds N]` → bench/results/network.json
 */
import { parseArgs } from 'node:util';
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import { once } from 'node:events';
import { WebSocket } from 'ws';
import { MemorySlotStore, NetnsSlots, type NetnsSlot } from '../src/network/netns/index.js';
import { PACKAGE_ROOT } from '../src/paths.js';
import { FakeGuest, freeTestRange, randomTag, sweep, tagged } from '../test/integration/net-fixture.js';
import { log, stats, timed, writeResults, type Stats } from './lib.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '20' }, seconds: { type: 'string', default: '4' } } });
const rounds = Number(values.rounds);
const seconds = Number(values.seconds);

/** Upstream: /small (2 bytes), /bulk?mib=N (streamed), WebSocket echo. Prints its port. */
const UPSTREAM = `
const http = require('node:http');
const { WebSocketServer } = require(require('node:path').join(process.argv[1], 'node_modules', 'ws'));
const chunk = Buffer.alloc(1 << 20, 97);
const srv = http.createServer((req, res) => {
  if (req.url.startsWith('/bulk')) {
    const mib = Number(new URL(req.url, 'http://x').searchParams.get('mib'));
    res.writeHead(200, { 'content-length': String(mib * chunk.length) });
    let sent = 0;
    const pump = () => { while (sent < mib) { sent++; if (!res.write(chunk)) { res.once('drain', pump); return; } } res.end(); };
    pump();
    return;
  }
  res.end('ok');
});
srv.keepAliveTimeout = 60000;
new WebSocketServer({ server: srv }).on('connection', (ws) => ws.on('message', (m) => ws.send(m)));
srv.listen(Number(process.argv[2]), process.argv[3], () => console.log('port ' + srv.address().port));
`;

/** Proxy process: createPortProxy in front of one "sandbox" whose port 8080 is <host>:<port>. */
const PROXY = `
import http from 'node:http';
import { createPortProxy } from ${JSON.stringify(`${PACKAGE_ROOT}/src/network/proxy/index.ts`)};
const [host, port] = [process.argv[1], Number(process.argv[2])];
const proxy = createPortProxy({ resolve: (id, p) => (id === 'sbx' && p === 8080 ? { host, port } : null) });
const srv = http.createServer((req, res) => { if (!proxy.handleRequest(req, res)) { res.writeHead(404); res.end(); } });
srv.on('upgrade', (req, s, head) => { if (!proxy.handleUpgrade(req, s, head)) s.destroy(); });
srv.keepAliveTimeout = 60000;
srv.listen(0, '127.0.0.1', () => console.log('port ' + srv.address().port));
`;

async function startProcess(args: string[], netns?: string): Promise<{ child: ChildProcess; port: number }> {
  const child = netns
    ? spawn('nsenter', [`--net=/run/netns/${netns}`, '--', process.execPath, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
    : spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; const m = /port (\d+)/.exec(out); if (m) resolve(Number(m[1])); });
    child.on('exit', (code) => reject(new Error(`process exited ${code}`)));
  });
  return { child, port };
}

interface Target { name: string; host: string; port: number; prefix: string }

function get(agent: http.Agent, t: Target, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http.get({ host: t.host, port: t.port, path: `${t.prefix}${path}`, agent }, (res) => {
      let n = 0;
      res.on('data', (c: Buffer) => { n += c.length; });
      res.on('end', () => (res.statusCode === 200 ? resolve(n) : reject(new Error(`status ${res.statusCode}`))));
    }).on('error', reject);
  });
}

async function latency(t: Target, n: number): Promise<Stats> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  for (let i = 0; i < 2000; i++) await get(agent, t, '/small'); // warm-up (JIT, sockets)
  const samples: number[] = [];
  for (let i = 0; i < n; i++) samples.push((await timed(() => get(agent, t, '/small')))[1] * 1000);
  agent.destroy();
  return stats(samples); // microseconds
}

async function throughput(t: Target, concurrency: number, durationS: number): Promise<number> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  let done = 0;
  const end = performance.now() + durationS * 1000;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) { await get(agent, t, '/small'); done++; }
  }));
  agent.destroy();
  return Math.round(done / durationS);
}

async function bulk(t: Target, mib: number, reps: number): Promise<Stats> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const samples: number[] = [];
  for (let i = 0; i < reps; i++) {
    const [bytes, ms] = await timed(() => get(agent, t, `/bulk?mib=${mib}`));
    if (bytes !== mib << 20) throw new Error(`got ${bytes} bytes`);
    samples.push((bytes / 2 ** 20) / (ms / 1000));
  }
  agent.destroy();
  return stats(samples); // MiB/s
}

async function wsRoundTrips(t: Target, n: number): Promise<Stats> {
  const ws = new WebSocket(`ws://${t.host}:${t.port}${t.prefix}/ws`);
  await once(ws, 'open');
  const samples: number[] = [];
  for (let i = 0; i < n + 100; i++) {
    const t0 = performance.now();
    ws.send('x'.repeat(64));
    await once(ws, 'message');
    if (i >= 100) samples.push((performance.now() - t0) * 1000);
  }
  ws.close();
  return stats(samples); // microseconds
}

async function compare(label: string, direct: Target, proxied: Target): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const t of [direct, proxied]) {
    log(`  ${label} ${t.name}: latency…`);
    const lat = await latency(t, rounds * 100);
    log(`  ${label} ${t.name}: requests/s…`);
    const rps = await throughput(t, 32, seconds);
    log(`  ${label} ${t.name}: bulk…`);
    const mbps = await bulk(t, 512, 3);
    const ws = await wsRoundTrips(t, rounds * 50);
    out[t.name] = { requestLatencyUs: lat, requestsPerSecondC32: rps, bulkMiBps: mbps, websocketRoundTripUs: ws };
    log(`  ${label} ${t.name}: p50 ${lat.p50} µs, ${rps} req/s, ${mbps.p50} MiB/s, ws p50 ${ws.p50} µs`);
  }
  const d = out[direct.name] as { requestLatencyUs: Stats; requestsPerSecondC32: number; bulkMiBps: Stats; websocketRoundTripUs: Stats };
  const p = out[proxied.name] as typeof d;
  out['proxyOverhead'] = {
    addedLatencyP50Us: Math.round(p.requestLatencyUs.p50 - d.requestLatencyUs.p50),
    addedLatencyP95Us: Math.round(p.requestLatencyUs.p95 - d.requestLatencyUs.p95),
    requestsPerSecondRatio: Math.round((p.requestsPerSecondC32 / d.requestsPerSecondC32) * 100) / 100,
    bulkThroughputRatio: Math.round((p.bulkMiBps.p50 / d.bulkMiBps.p50) * 100) / 100,
    addedWebsocketRoundTripP50Us: Math.round(p.websocketRoundTripUs.p50 - d.websocketRoundTripUs.p50),
  };
  return out;
}

async function slotBench(tag: string, range: string): Promise<Record<string, unknown>> {
  // From scratch: an empty pool sets each slot up inside acquire(); release with maxIdle 0 tears it down.
  const cold = new NetnsSlots({ store: new MemorySlotStore(), tag, hostRange: range, poolSize: 0, maxIdle: 0 });
  await cold.start();
  const setup: number[] = [];
  const teardown: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const [s, ms] = await timed(() => cold.acquire(AbortSignal.timeout(30_000)));
    setup.push(ms);
    teardown.push((await timed(() => cold.release(s)))[1]);
  }
  await cold.destroyAll();
  log(`  set-up from scratch p50 ${stats(setup).p50} ms, teardown p50 ${stats(teardown).p50} ms`);
  // Warm: the filler made `rounds` slots ahead; acquire takes one. maxIdle leaves room for every
  // release to be a reset (not a teardown); the filler is idle before each measured phase.
  const warm = new NetnsSlots({ store: new MemorySlotStore(), tag, hostRange: range, poolSize: rounds, maxIdle: rounds * 3 });
  await warm.start();
  const [, fillMs] = await timed(() => warm.whenFilled());
  const acquire: number[] = [];
  const held: NetnsSlot[] = [];
  for (let i = 0; i < rounds; i++) {
    const [s, ms] = await timed(() => warm.acquire(AbortSignal.timeout(30_000)));
    acquire.push(ms);
    held.push(s);
  }
  await warm.whenFilled();
  const setEgress: number[] = [];
  for (const s of held) setEgress.push((await timed(() => warm.setEgress(s, { internet: false, allow: ['198.51.100.0/24'], deny: ['198.51.100.20'] })))[1]);
  const release: number[] = [];
  for (const s of held) release.push((await timed(() => warm.release(s)))[1]);
  await warm.destroyAll();
  log(`  acquire from the warm pool p50 ${stats(acquire).p50} ms; release (reset) p50 ${stats(release).p50} ms`);
  return {
    setupFromScratchMs: stats(setup),
    acquireFromPoolMs: stats(acquire),
    releaseResetMs: stats(release),
    teardownMs: stats(teardown),
    setEgressMs: stats(setEgress),
    backgroundFillMsPerSlot: Math.round((fillMs / rounds) * 10) / 10,
    conntrackTool: await warm.host.hasConntrack(),
  };
}

async function main(): Promise<void> {
  const tag = randomTag();
  const range = await freeTestRange();
  const procs: ChildProcess[] = [];
  let pool: NetnsSlots | undefined;
  let guest: FakeGuest | undefined;
  try {
    log(`network benchmark (tag ${tag}, range ${range}, rounds ${rounds})`);
    log('slots:');
    const slots = await slotBench(tag, range);

    log('proxy on loopback:');
    const up = await startProcess(['-e', UPSTREAM, PACKAGE_ROOT, '0', '127.0.0.1']);
    procs.push(up.child);
    const px = await startProcess(['--import', 'tsx', '--input-type=module', '-e', PROXY, '127.0.0.1', String(up.port)]);
    procs.push(px.child);
    const loopback = await compare('loopback',
      { name: 'direct', host: '127.0.0.1', port: up.port, prefix: '' },
      { name: 'proxy', host: '127.0.0.1', port: px.port, prefix: '/sandboxes/sbx/ports/8080' });

    log('proxy to a guest behind a slot (DNAT):');
    pool = new NetnsSlots({ store: new MemorySlotStore(), tag, hostRange: range, poolSize: 1 });
    await pool.start();
    const slot = await pool.acquire(AbortSignal.timeout(30_000));
    guest = await new FakeGuest(slot, tag).attach();
    const gup = await startProcess(['-e', UPSTREAM, PACKAGE_ROOT, '8080', '0.0.0.0'], guest.netns);
    procs.push(gup.child);
    const gpx = await startProcess(['--import', 'tsx', '--input-type=module', '-e', PROXY, slot.nsAddr, '8080']);
    procs.push(gpx.child);
    const slotPath = await compare('slot',
      { name: 'direct', host: slot.nsAddr, port: 8080, prefix: '' },
      { name: 'proxy', host: '127.0.0.1', port: gpx.port, prefix: '/sandboxes/sbx/ports/8080' });

    const path = writeResults('network', {
      units: { latency: 'microseconds', bulk: 'MiB/s', slots: 'milliseconds' },
      slots,
      proxyLoopback: loopback,
      proxyToSlotGuest: slotPath,
      notes: [
        'Upstream server, proxy and client are separate Node processes on this host; the slot guest is a fake guest (a veth in place of the tap, its peer in a namespace) so the path includes the slot\'s DNAT/SNAT and nftables rules but no VM.',
        'direct = the client connects to the server itself (loopback, or the slot\'s namespace address); proxy = through createPortProxy (path form).',
      ],
    });
    log(`results: ${path}`);
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    await guest?.detach().catch(() => undefined);
    await pool?.destroyAll().catch(() => undefined);
    await sweep(tag);
    const left = await tagged(tag);
    if (left.netns.length || left.links.length || left.tables.length) log(`LEFT BEHIND: ${JSON.stringify(left)}`);
  }
}

await main();
