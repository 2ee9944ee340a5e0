/**
 * A daemon as `scripts/start.sh` starts it for users: every default of
 * `src/daemon/config.ts` and a data dir on XFS with reflinks (what `hearth
 * storage init` mounts), not the test harness's ext4 temp dir. Each gets its
 * own netns tag and range so it coexists with other runs. For benchmarks.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { loadConfig, type HearthConfig } from '../src/daemon/config.js';
import { startDaemon, type Daemon } from '../src/daemon/daemon.js';
import { createLogger } from '../src/core/log.js';
import { initReflinkDataDir, teardownReflinkDataDir, type ReflinkMount } from '../src/storage/xfs-loop.js';
import { ensureDefaultImage, lineProgress } from '../src/images/index.js';
import { AGENT_BUNDLE_PATH } from '../src/paths.js';
import { freeTestRange, randomTag, sweep } from '../test/helpers/netns.js';
import { log } from './lib.js';

export interface Env { d: Daemon; cfg: HearthConfig; mount: ReflinkMount | null; root: string }

/** A daemon as `scripts/start.sh` starts it: defaults, reflink (XFS) data dir. */
export async function userDaemon(over: Partial<HearthConfig> = {}): Promise<Env> {
  const root = await mkdtemp(join(process.env['HEARTH_TEST_TMP'] ?? '/var/tmp', 'hearth-bench-'));
  const dataDir = join(root, 'data');
  const mount = await initReflinkDataDir(dataDir, { sizeGiB: 64 });
  const cfg = loadConfig({
    dataDir, host: '127.0.0.1', port: 0,
    networkTag: randomTag(), networkRange: await freeTestRange(), ...over,
  }, {});
  // As hearthd's main: the image lives in the data dir (clones need the same filesystem); the build cache is shared.
  const image = await ensureDefaultImage({
    dataDir, cacheDir: process.env['HEARTH_IMAGE_CACHE'] ?? cfg.cacheDir, agentBundlePath: AGENT_BUNDLE_PATH, progress: lineProgress(process.stderr, 'image'),
  });
  const d = await startDaemon(cfg, createLogger(process.env['HEARTH_BENCH_LOG'] ?? 'warn'), { image });
  return { d, cfg, mount, root };
}

export async function stopEnv(e: Env): Promise<void> {
  await e.d.manager.settled();
  for (const s of e.d.manager.list()) {
    if (s.state !== 'destroyed') await e.d.manager.destroy(s.id, AbortSignal.timeout(60_000)).catch(() => undefined);
  }
  await e.d.close({ removeNetwork: true });
  await sweep(e.cfg.networkTag).catch(() => undefined);
  if (e.mount) await teardownReflinkDataDir(e.mount, { deleteImage: true }).catch((err: unknown) => log(`teardown: ${String(err)}`));
  await rm(e.root, { recursive: true, force: true });
}

