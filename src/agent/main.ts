/**
 * hearth-agent entry point: runs inside the guest (Node 18+), started by the guest init before the
 * template snapshot. Configuration: environment variables, see docs/agent.md.
 */
import './polyfills.js'; // first: before @bufbuild/protobuf is evaluated
import { writeFileSync } from 'node:fs';
import { configFromEnv } from './config.js';
import { errorMessage, log } from './log.js';
import { ENVD_VERSION } from './protocol.js';
import { createAgent } from './server.js';

/** Lowers the agent's own OOM score so the kernel kills user code first (children reset theirs). */
function protectFromOom(): void {
  const value = process.env.HEARTH_AGENT_OOM_SCORE_ADJ ?? '-1000';
  if (value === '' || process.getuid?.() !== 0) return;
  try {
    writeFileSync('/proc/self/oom_score_adj', value);
  } catch (e) {
    log.warn('cannot set oom_score_adj', { error: errorMessage(e) });
  }
}

async function main(): Promise<void> {
  const config = configFromEnv();
  protectFromOom();
  const agent = createAgent(config);
  const addr = await agent.listen();
  log.info('listening', { host: addr.address, port: addr.port, version: ENVD_VERSION, defaultUser: config.defaultUser });
  // Machine-readable line for supervisors and tests.
  process.stdout.write(`hearth-agent listening on ${addr.address}:${addr.port}\n`);

  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    log.info('stopping', { signal: sig });
    const force = setTimeout(() => process.exit(0), 2000);
    force.unref();
    agent.close().then(
      () => process.exit(0),
      () => process.exit(0),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // A daemon serving many unrelated requests: log stray errors instead of dying with every process it tracks.
  process.on('uncaughtException', (e) => log.error('uncaught exception', { error: errorMessage(e), stack: (e as Error).stack }));
  process.on('unhandledRejection', (e) => log.error('unhandled rejection', { error: errorMessage(e) }));
}

main().catch((e) => {
  log.error('agent failed to start', { error: errorMessage(e) });
  process.exit(1);
});
