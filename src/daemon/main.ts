/**
 * hearthd: the Hearth daemon. `node dist/daemon/main.js [--host H] [--port P] [--data-dir D]`
 * (usually started by `hearth up`). Stops on SIGTERM/SIGINT; running sandboxes
 * keep running and are adopted by the next start.
 */
import { parseArgs } from 'node:util';
import { existsSync } from 'node:fs';
import { loadConfig } from './config.js';
import { startDaemon } from './daemon.js';
import { createLogger } from '../core/log.js';
import { ensureDefaultImage, lineProgress } from '../images/index.js';
import { AGENT_BUNDLE_PATH } from '../paths.js';
import { startLogRotation } from '../observability/log-rotate.js';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    host: { type: 'string' }, port: { type: 'string' }, 'data-dir': { type: 'string' }, storage: { type: 'string' },
    // The file hearthd's stdout/stderr go to (`hearth up`): rotated by size (docs/observability.md).
    'log-file': { type: 'string' },
  } });
  const cfg = loadConfig({
    ...(values.host ? { host: values.host } : {}),
    ...(values.port ? { port: Number(values.port) } : {}),
    ...(values['data-dir'] ? { dataDir: values['data-dir'] } : {}),
    ...(values.storage ? { storage: values.storage as 'reflink' | 'copy' } : {}),
  });
  const log = createLogger();
  const logFile = values['log-file'] ?? process.env['HEARTH_LOG_FILE'];
  if (logFile) startLogRotation(logFile, { onRotate: () => log.info({ file: logFile }, 'hearthd log rotated') });
  if (!existsSync(AGENT_BUNDLE_PATH)) throw new Error(`guest agent bundle ${AGENT_BUNDLE_PATH} is missing: run \`npm run build\``);
  // A cache hit normally (`hearth up` builds the image first, with a progress display).
  const image = await ensureDefaultImage({ dataDir: cfg.dataDir, cacheDir: cfg.cacheDir, agentBundlePath: AGENT_BUNDLE_PATH, progress: lineProgress(process.stderr) });
  const daemon = await startDaemon(cfg, log, { image });
  let stopping = false;
  const stop = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    log.info(`${sig}: stopping hearthd (sandboxes keep running and are adopted on the next start)`);
    daemon.close().then(() => process.exit(0), (err: unknown) => { log.error({ err }, 'shutdown failed'); process.exit(1); });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: unknown) => {
  process.stderr.write(`hearthd: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
