/**
 * Builds the default guest image for real and boots it under QEMU TCG.
 *
 *   node --import tsx --test test/integration/images-boot.test.ts
 *
 * The kernel, initramfs and debootstrap base are cached in
 * HEARTH_TEST_CACHE (default /var/cache/hearth-test) so that only the first
 * run pays for debootstrap; the image itself is built into a fresh temporary
 * data dir every run. HEARTH_TEST_FRESH_CACHE=1 uses a temporary cache (a
 * from-scratch build, debootstrap included). Needs root, debootstrap,
 * qemu-system-x86_64 and Debian's apt mirror; skips otherwise.
 *
 * The guest agent is a placeholder: GET /health → 204, GET /probe → facts
 * about the guest (cgroup, oom_score_adj, mounts, …), POST /exit → exits
 * (the supervisor must restart it).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile, appendFile, stat } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ensureDefaultImage, recordingProgress, type ImageInfo } from '../../src/images/index.js';
import { haveCommand, run } from '../../src/images/run.js';

const CACHE = process.env.HEARTH_TEST_FRESH_CACHE ? undefined : (process.env.HEARTH_TEST_CACHE ?? '/var/cache/hearth-test');
const BOOTS = Number(process.env.HEARTH_TEST_BOOTS ?? 5);
const BOOT_TIMEOUT_MS = 90_000;

const PLACEHOLDER_AGENT = `'use strict';
const http = require('node:http');
const fs = require('node:fs');
const os = require('node:os');
const port = Number(process.env.HEARTH_AGENT_PORT || 49983);
const read = (p) => { try { return fs.readFileSync(p, 'utf8'); } catch (e) { return null; } };
http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/health') { res.writeHead(204); return res.end(); }
  if (req.method === 'GET' && req.url === '/probe') {
    const home = fs.statSync('/home/user', { throwIfNoEntry: false });
    const body = {
      uid: process.getuid(),
      node: process.version,
      env: { port: process.env.HEARTH_AGENT_PORT },
      cgroup: (read('/proc/self/cgroup') || '').trim(),
      oomScoreAdj: (read('/proc/self/oom_score_adj') || '').trim(),
      pid1: (read('/proc/1/comm') || '').trim(),
      hearthSubtree: (read('/sys/fs/cgroup/hearth/cgroup.subtree_control') || '').trim(),
      userCgroup: fs.existsSync('/sys/fs/cgroup/hearth/user/cgroup.procs'),
      userMemoryMax: (read('/sys/fs/cgroup/hearth/user/memory.max') || '').trim(),
      hostname: os.hostname(),
      passwdUser: (read('/etc/passwd') || '').split('\\n').find((l) => l.startsWith('user:')) || null,
      home: home ? { uid: home.uid, gid: home.gid } : null,
      sudoers: read('/etc/sudoers.d/90-hearth-user'),
      mounts: (read('/proc/mounts') || '').trim().split('\\n').map((l) => l.split(' ')).map((f) => ({ dev: f[0], dir: f[1], type: f[2], opts: f[3] })),
      addrs: (os.networkInterfaces().eth0 || []).map((a) => a.address),
      routes: (read('/proc/net/route') || '').trim().split('\\n').slice(1).map((l) => l.split('\\t')),
      resolv: read('/etc/resolv.conf'),
      image: JSON.parse(read('/etc/hearth/image.json') || '{}'),
      devFd: fs.existsSync('/dev/fd/0'),
      ptmx: fs.existsSync('/dev/pts/ptmx'),
    };
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(JSON.stringify(body));
  }
  if (req.method === 'POST' && req.url === '/exit') { res.writeHead(202); res.end(); setTimeout(() => process.exit(7), 50); return; }
  res.writeHead(404); res.end();
}).listen(port, '0.0.0.0');
`;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function request(port: number, method: string, path: string, timeoutMs = 1000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, timeout: timeoutMs, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

interface Vm {
  child: ChildProcess;
  port: number;
  consolePath: string;
  exited: Promise<void>;
  exitInfo?: string;
}

/** The QEMU line that proved reliable (docs/images.md). */
function qemuArgs(img: ImageInfo, dir: string, port: number, rootfs: string): string[] {
  return [
    '-machine', 'microvm,acpi=on,pit=off,pic=off,rtc=on',
    '-accel', 'tcg',
    '-cpu', 'max',
    '-m', '512',
    '-smp', '1',
    '-nodefaults', '-no-user-config', '-no-reboot',
    '-display', 'none', '-monitor', 'none',
    '-serial', `file:${join(dir, 'console.log')}`,
    '-kernel', img.kernelPath,
    '-initrd', img.initrdPath,
    '-append', `${img.kernelArgs} hearth.ip=10.0.2.15/24 hearth.gw=10.0.2.2`,
    '-drive', `id=root,file=${rootfs},format=raw,if=none,cache=unsafe`,
    '-device', 'virtio-blk-device,drive=root',
    '-netdev', `user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:${port}-:49983`,
    '-device', 'virtio-net-device,netdev=n0',
    '-object', `memory-backend-file,id=mem,size=512M,mem-path=${join(dir, 'guest.mem')},share=on`,
    '-machine', 'memory-backend=mem',
  ];
}

const live = new Set<ChildProcess>();

async function killVm(vm: Vm): Promise<void> {
  if (vm.child.exitCode === null && vm.child.signalCode === null) vm.child.kill('SIGKILL');
  await vm.exited;
  live.delete(vm.child);
}

async function bootVm(img: ImageInfo, dir: string): Promise<Vm> {
  const rootfs = join(dir, 'rootfs.ext4');
  // Each boot gets its own writable copy of the image, as a sandbox would.
  await run('cp', ['--sparse=always', '--reflink=auto', img.rootfsPath, rootfs]);
  const port = await freePort();
  const child = spawn('qemu-system-x86_64', qemuArgs(img, dir, port, rootfs), { stdio: ['ignore', 'ignore', 'pipe'] });
  live.add(child);
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const vm: Vm = { child, port, consolePath: join(dir, 'console.log'), exited: Promise.resolve() };
  vm.exited = new Promise((resolve) => {
    child.once('exit', (code, sig) => {
      vm.exitInfo = `qemu exited (code ${code}, signal ${sig}): ${stderr.trim()}`;
      resolve();
    });
    child.once('error', (err) => {
      vm.exitInfo = `qemu failed to start: ${err.message}`;
      resolve();
    });
  });
  return vm;
}

async function consoleTail(vm: Vm): Promise<string> {
  return (await readFile(vm.consolePath, 'utf8').catch(() => '')).split('\n').slice(-30).join('\n');
}

/** Poll GET /health every 50 ms until 204; ms since `t0`. */
async function waitHealthy(vm: Vm, t0: number, timeoutMs = BOOT_TIMEOUT_MS): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (vm.exitInfo) throw new Error(`${vm.exitInfo}\nconsole:\n${await consoleTail(vm)}`);
    try {
      const r = await request(vm.port, 'GET', '/health', 500);
      if (r.status === 204) return Date.now() - t0;
    } catch {
      /* not up yet */
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no /health within ${timeoutMs} ms\nconsole:\n${await consoleTail(vm)}`);
}

function stats(ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  const med = s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  return `min ${s[0]} ms, median ${med} ms, max ${s[s.length - 1]} ms (n=${s.length})`;
}

const canRun = process.getuid?.() === 0 && (await haveCommand('qemu-system-x86_64')) && (await haveCommand('debootstrap'));

describe('default guest image', { skip: canRun ? false : 'needs root, qemu-system-x86_64 and debootstrap' }, () => {
  let work: string;
  let dataDir: string;
  let cacheDir: string;
  let agentPath: string;
  let image: ImageInfo;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'hearth-images-it-'));
    dataDir = join(work, 'data');
    cacheDir = CACHE ?? join(work, 'cache');
    agentPath = join(work, 'hearth-agent.cjs');
    await writeFile(agentPath, PLACEHOLDER_AGENT);
  });

  after(async () => {
    for (const child of live) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    live.clear();
    if (!process.env.HEARTH_TEST_KEEP) await rm(work, { recursive: true, force: true });
  });

  it('builds the image, reuses it, and rebuilds only the rootfs when the agent changes', { timeout: 30 * 60_000 }, async (t) => {
    const p1 = recordingProgress();
    let t0 = Date.now();
    image = await ensureDefaultImage({ dataDir, cacheDir, agentBundlePath: agentPath, progress: p1 });
    const firstMs = Date.now() - t0;
    const ranDebootstrap = p1.events.some((e) => e.kind === 'stage' && e.text.startsWith('debootstrap'));
    t.diagnostic(`build: ${firstMs} ms (${ranDebootstrap ? 'with debootstrap' : 'debootstrap base cached'})`);
    assert.equal(image.built, true);
    assert.match(image.hash, /^[0-9a-f]{64}$/);
    assert.equal(image.dir, join(dataDir, 'images', image.hash.slice(0, 16)));
    const manifest = JSON.parse(await readFile(join(image.dir, 'manifest.json'), 'utf8')) as { hash: string; recipe: unknown };
    assert.equal(manifest.hash, image.hash);
    assert.match(image.kernelArgs, /init=\/sbin\/hearth-init/);
    const st = await stat(image.rootfsPath);
    assert.equal(st.size, 2048 * 1024 * 1024);
    assert.ok(st.blocks * 512 < st.size / 2, 'rootfs.ext4 is sparse');

    t0 = Date.now();
    const again = await ensureDefaultImage({ dataDir, cacheDir, agentBundlePath: agentPath });
    t.diagnostic(`reuse: ${Date.now() - t0} ms`);
    assert.equal(again.built, false);
    assert.equal(again.hash, image.hash);

    // A directory without manifest.json (a crashed build) is incomplete: rebuilt, same hash.
    await rm(join(image.dir, 'manifest.json'));
    const rebuilt = await ensureDefaultImage({ dataDir, cacheDir, agentBundlePath: agentPath });
    assert.equal(rebuilt.built, true);
    assert.equal(rebuilt.hash, image.hash);
    assert.ok(JSON.parse(await readFile(join(image.dir, 'manifest.json'), 'utf8')));

    // Only the agent changes: new hash, no debootstrap.
    const agent2 = join(work, 'hearth-agent-2.cjs');
    await writeFile(agent2, PLACEHOLDER_AGENT);
    await appendFile(agent2, '// changed\n');
    const p3 = recordingProgress();
    t0 = Date.now();
    const changed = await ensureDefaultImage({ dataDir, cacheDir, agentBundlePath: agent2, progress: p3 });
    t.diagnostic(`rebuild after agent change: ${Date.now() - t0} ms`);
    assert.equal(changed.built, true);
    assert.notEqual(changed.hash, image.hash);
    assert.ok(!p3.events.some((e) => e.kind === 'stage' && e.text.startsWith('debootstrap')), 'debootstrap did not run again');
    await rm(changed.dir, { recursive: true, force: true });
  });

  it(`boots under QEMU TCG and answers /health (${BOOTS} boots)`, { timeout: BOOTS * 2 * BOOT_TIMEOUT_MS }, async (t) => {
    assert.ok(image, 'image was built');
    const times: number[] = [];
    for (let i = 0; i < BOOTS; i++) {
      const dir = await mkdtemp(join(work, `boot${i}-`));
      const t0 = Date.now();
      const vm = await bootVm(image, dir);
      try {
        const ms = await waitHealthy(vm, t0);
        times.push(ms);
        const consoleText = await readFile(vm.consolePath, 'utf8');
        assert.match(consoleText, /hearth-init: agent started/);
        assert.doesNotMatch(consoleText, /FATAL|Kernel panic/);

        if (i === 0) {
          const probe = JSON.parse((await request(vm.port, 'GET', '/probe', 5000)).body) as Record<string, unknown>;
          t.diagnostic(`guest: node ${probe.node as string}, pid1 ${probe.pid1 as string}, cgroup ${probe.cgroup as string}`);
          assert.equal(probe.uid, 0);
          assert.equal(probe.pid1, 'tini');
          assert.equal(probe.cgroup, '0::/hearth/agent');
          assert.equal(probe.oomScoreAdj, '-1000');
          assert.equal(probe.userCgroup, true);
          for (const c of ['cpu', 'memory', 'pids']) assert.match(probe.hearthSubtree as string, new RegExp(`\\b${c}\\b`));
          assert.match(probe.userMemoryMax as string, /^\d+$/);
          assert.equal(probe.hostname, 'hearth');
          assert.match(probe.passwdUser as string, /^user:x:1000:1000:.*:\/home\/user:\/bin\/bash$/);
          assert.deepEqual(probe.home, { uid: 1000, gid: 1000 });
          assert.match(probe.sudoers as string, /^user ALL=\(ALL:ALL\) NOPASSWD: ALL/);
          const mounts = probe.mounts as { dev: string; dir: string; type: string; opts: string }[];
          const mount = (dir: string) => mounts.find((m) => m.dir === dir);
          assert.equal(mount('/')?.type, 'ext4');
          assert.match(mount('/')!.opts, /^rw\b/);
          for (const [dir, type] of [['/proc', 'proc'], ['/sys', 'sysfs'], ['/dev', 'devtmpfs'], ['/dev/pts', 'devpts'], ['/dev/shm', 'tmpfs'], ['/run', 'tmpfs'], ['/tmp', 'tmpfs'], ['/sys/fs/cgroup', 'cgroup2']]) {
            assert.equal(mount(dir!)?.type, type, `${dir} is ${type}`);
          }
          assert.deepEqual((probe.addrs as string[]).filter((a) => !a.includes(':')), ['10.0.2.15']);
          const routes = probe.routes as string[][];
          assert.ok(routes.some((r) => r[0] === 'eth0' && r[1] === '00000000' && r[2] === '0202000A'), 'default route via 10.0.2.2');
          assert.doesNotMatch(probe.resolv as string, /nameserver/);
          assert.equal((probe.image as { hash?: string }).hash, image.hash);
          assert.equal(probe.devFd, true);
          assert.equal(probe.ptmx, true);

          // The supervisor restarts a dead agent.
          assert.equal((await request(vm.port, 'POST', '/exit')).status, 202);
          const tExit = Date.now();
          await new Promise((r) => setTimeout(r, 300));
          const restartMs = await waitHealthy(vm, tExit, 30_000);
          t.diagnostic(`agent restarted and healthy ${restartMs} ms after exit`);
          assert.match(await readFile(vm.consolePath, 'utf8'), /agent \(pid \d+\) exited with status 7; restarting/);
        }
      } finally {
        await killVm(vm);
        await rm(dir, { recursive: true, force: true });
      }
    }
    t.diagnostic(`boot to /health: ${stats(times)} [${times.join(', ')}]`);
  });

  it('powers off with a clear message when the root device is missing', { timeout: BOOT_TIMEOUT_MS }, async () => {
    assert.ok(image, 'image was built');
    const dir = await mkdtemp(join(work, 'noroot-'));
    const port = await freePort();
    const args = qemuArgs(image, dir, port, join(dir, 'unused.ext4'));
    // Drop the drive: the initramfs must give up after hearth.rootwait and power off.
    const drive = args.indexOf('-drive');
    args.splice(drive, 4);
    const i = args.indexOf('-append');
    args[i + 1] += ' hearth.rootwait=2';
    const child = spawn('qemu-system-x86_64', args, { stdio: 'ignore' });
    live.add(child);
    try {
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 60_000).unref());
      const result = await Promise.race([exited, timeout]);
      const text = await readFile(join(dir, 'console.log'), 'utf8');
      assert.notEqual(result, 'timeout', `QEMU should have exited; console:\n${text}`);
      assert.match(text, /hearth-initramfs: FATAL: root device \/dev\/vda did not appear within 2s/);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      live.delete(child);
      await rm(dir, { recursive: true, force: true });
    }
  });
});
