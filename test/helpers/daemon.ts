/**
 * Integration-test harness: a real hearthd (in-process) with a temp data dir,
 * the real default image (built once and cached in HEARTH_IMAGE_DIR, default
 * /var/lib/hearth, the README's data dir, so CI's start step is reused), real
 * QEMU VMs. `stop()` destroys every sandbox it can and checks nothing is left.
 */
import { mkdtemp, rm, readdir } from 'node:fs/promises';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { loadConfig, type HearthConfig } from '../../src/daemon/config.js';
import { startDaemon, type Daemon } from '../../src/daemon/daemon.js';
import { createLogger } from '../../src/core/log.js';
import { ensureDefaultImage, lineProgress, type ImageInfo } from '../../src/images/index.js';
import { AGENT_BUNDLE_PATH } from '../../src/paths.js';
import { chooseNetwork, NetnsSlots } from '../../src/network/netns/index.js';
import { freeTestRange, randomTag, sweep, tagged } from './netns.js';

let imagePromise: Promise<ImageInfo> | undefined;

export function testImage(): Promise<ImageInfo> {
  if (!existsSync(AGENT_BUNDLE_PATH)) throw new Error(`${AGENT_BUNDLE_PATH} missing: run npm run build before the integration tests`);
  imagePromise ??= ensureDefaultImage({
    dataDir: process.env['HEARTH_IMAGE_DIR'] ?? '/var/lib/hearth',
    cacheDir: process.env['HEARTH_IMAGE_CACHE'] ?? '/var/cache/hearth',
    agentBundlePath: AGENT_BUNDLE_PATH,
    progress: lineProgress(process.stderr, 'test image'),
  });
  return imagePromise;
}

export interface TestDaemon extends Daemon {
  cfg: HearthConfig;
  /** Close this daemon without touching its sandboxes and start a new one on the same data dir. */
  restart(): Promise<TestDaemon>;
  /** Destroys every sandbox still live, closes the daemon, removes the data dir. */
  stop(): Promise<void>;
}

/**
 * Where this host runs netns slots (root, iproute2, nftables), test daemons do
 * too, as hearthd would: each with its own random name tag and a free private
 * range, so they never touch another daemon's slots; stop() removes them all.
 */
async function testNetwork(over: Partial<HearthConfig>): Promise<Partial<HearthConfig>> {
  if (over.network === 'user' || (await chooseNetwork({ prefer: over.network ?? 'auto' })).kind !== 'netns') return { network: 'user' };
  return { network: 'netns', networkTag: randomTag(), networkRange: await freeTestRange(), networkPoolSize: 2, egressInterface: null };
}

export async function startTestDaemon(over: Partial<HearthConfig> = {}): Promise<TestDaemon> {
  const dataDir = await mkdtemp(join(process.env['HEARTH_TEST_TMP'] ?? tmpdir(), 'hearth-it-'));
  const net = await testNetwork(over);
  // Host-headroom admission off unless a test sets it: a 2-core CI machine running TCG guests
  // sits at load levels a production host would refuse at, and tests assert behaviour, not load.
  const admission: Partial<HearthConfig> = { admissionMaxLoadPerCpu: 0, admissionMinFreeMemoryMib: 0, admissionMinFreeDiskMib: 0 };
  return daemonOn(loadConfig({ dataDir, host: '127.0.0.1', port: 0, defaultMemoryMib: 512, bootTimeoutMs: 120_000, ...admission, ...net, ...over }, {}));
}

/** A daemon on an existing configuration and data dir (a node started again after it was closed). */
export async function daemonOn(cfg: HearthConfig): Promise<TestDaemon> {
  const image = await testImage();
  const dataDir = cfg.dataDir;
  const log = createLogger(process.env['HEARTH_TEST_LOG'] ?? 'warn');
  const d = await startDaemon(cfg, log, { image });
  return {
    ...d,
    cfg,
    async restart() {
      await d.manager.settled();
      await d.close();
      return daemonOn(cfg);
    },
    async stop() {
      await d.manager.settled();
      for (const s of d.manager.list()) {
        if (s.state !== 'destroyed') await d.manager.destroy(s.id, AbortSignal.timeout(60_000)).catch(() => undefined);
      }
      // The slots outlive a daemon (the next start reuses them); a test's pool goes with the test.
      await d.close({ removeNetwork: true });
      let netLeft: string[] = [];
      if (d.network.slots instanceof NetnsSlots) {
        const t = await tagged(cfg.networkTag);
        netLeft = [...t.netns, ...t.links, ...t.tables];
        if (netLeft.length) await sweep(cfg.networkTag);
      }
      const left = existsSync(join(dataDir, 'sandboxes')) ? await readdir(join(dataDir, 'sandboxes')) : [];
      await rm(dataDir, { recursive: true, force: true });
      if (left.length) throw new Error(`sandbox directories left behind: ${left.join(', ')}`);
      if (netLeft.length) throw new Error(`network objects left behind: ${netLeft.join(', ')}`);
    },
  };
}

/** Is a process with this pid alive? */
export function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

/** QEMU processes whose command line mentions `dir` (the data dir: pid file, QMP socket, disks), sorted. */
export function qemuPidsUnder(dir: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let argv: string[];
    try { argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0'); } catch { continue; }
    if (!argv[0] || !basename(argv[0]).startsWith('qemu-system')) continue;
    if (argv.some((a) => a.includes(dir))) out.push(Number(name));
  }
  return out.sort((a, b) => a - b);
}
