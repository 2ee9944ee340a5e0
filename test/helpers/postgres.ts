/**
 * A throw-away PostgreSQL (Debian's packages) for tests: its own data dir under
 * HEARTH_TEST_TMP (or the temp dir), a free loopback port, trust auth, run as
 * the `postgres` user (initdb refuses root). stop() removes everything.
 */
import { execFile } from 'node:child_process';
import { chown, mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
const BIN = '/usr/lib/postgresql/15/bin';

export function postgresAvailable(): boolean {
  return existsSync(join(BIN, 'initdb')) && existsSync(join(BIN, 'pg_ctl'));
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (a && typeof a === 'object' ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

export interface TestPostgres {
  url: string;
  port: number;
  stop(): Promise<void>;
  /** Stops the server (fast shutdown: connections cut), keeping its data. */
  halt(): Promise<void>;
  /** Starts it again on the same port and data. */
  start(): Promise<void>;
}

export async function startPostgres(): Promise<TestPostgres> {
  const root = await mkdtemp(join(process.env['HEARTH_TEST_TMP'] ?? tmpdir(), 'hearth-pg-'));
  const asRoot = userInfo().uid === 0;
  const pgUid = asRoot ? Number((await execFileP('id', ['-u', 'postgres'])).stdout.trim()) : -1;
  const pgGid = asRoot ? Number((await execFileP('id', ['-g', 'postgres'])).stdout.trim()) : -1;
  if (asRoot) await chown(root, pgUid, pgGid);
  const run = (cmd: string, args: string[]): Promise<{ stdout: string }> => asRoot
    ? execFileP('runuser', ['-u', 'postgres', '--', join(BIN, cmd), ...args], { timeout: 60_000 })
    : execFileP(join(BIN, cmd), args, { timeout: 60_000 });
  const data = join(root, 'data');
  const port = await freePort();
  await run('initdb', ['-D', data, '-A', 'trust', '-U', 'hearth', '--no-sync', '-E', 'UTF8']);
  const opts = `-p ${port} -k ${root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50`;
  const start = async (): Promise<void> => { await run('pg_ctl', ['-D', data, '-o', opts, '-l', join(root, 'log'), '-w', '-t', '30', 'start']); };
  const halt = async (): Promise<void> => { await run('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']); };
  await start();
  let running = true;
  return {
    url: `postgres://hearth@127.0.0.1:${port}/postgres`,
    port,
    async halt() { await halt(); running = false; },
    async start() { await start(); running = true; },
    async stop() {
      if (running) await halt().catch(() => run('pg_ctl', ['-D', data, '-m', 'immediate', 'stop']).catch(() => undefined));
      running = false;
      await rm(root, { recursive: true, force: true });
    },
  };
}
