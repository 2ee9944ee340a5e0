/**
 * Test support (not part of the agent bundle): start a real agent as a child process on
 * 127.0.0.1 with a random port, and make Connect clients for it the way E2B's SDK does
 * (Connect protocol, JSON codec, HTTP/1.1).
 *
 * By default it runs src/agent/main.ts with the current Node and tsx. Set
 * HEARTH_AGENT_TEST_NODE (a node binary, e.g. Debian's Node 18) and/or HEARTH_AGENT_TEST_BUNDLE
 * (e.g. dist/agent/hearth-agent.cjs) to test the bundle on the guest's runtime instead.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createClient, type Client, type Transport } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Filesystem } from '../gen/filesystem/filesystem_pb.js';
import { Process } from '../gen/process/process_pb.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface TestAgent {
  readonly pid: number;
  readonly port: number;
  readonly baseUrl: string;
  readonly child: ChildProcess;
  /** Everything the agent wrote to stderr so far (its log). */
  log(): string;
  transport(headers?: Record<string, string>): Transport;
  processClient(headers?: Record<string, string>): Client<typeof Process>;
  filesystemClient(headers?: Record<string, string>): Client<typeof Filesystem>;
  stop(): Promise<void>;
}

export async function startTestAgent(env: Record<string, string> = {}): Promise<TestAgent> {
  const node = process.env.HEARTH_AGENT_TEST_NODE || process.execPath;
  const bundle = process.env.HEARTH_AGENT_TEST_BUNDLE;
  const args = bundle
    ? [path.resolve(repoRoot, bundle)]
    : ['--import', 'tsx', path.join(repoRoot, 'src/agent/main.ts')];
  const child = spawn(node, args, {
    cwd: repoRoot,
    env: {
      ...process.env,
      HEARTH_AGENT_HOST: '127.0.0.1',
      HEARTH_AGENT_PORT: '0',
      HEARTH_AGENT_DEFAULT_USER: 'root',
      HEARTH_AGENT_OOM_SCORE_ADJ: '',
      HEARTH_AGENT_DATE_BIN: '',
      HEARTH_AGENT_SYS_HELPER: '',
      HEARTH_AGENT_WARMUP: '0',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    stderr += d;
  });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`agent did not start within 20 s; log:\n${stderr}`)), 20_000);
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      out += d;
      const m = /hearth-agent listening on [^\s]+:(\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`agent exited with ${code} before listening; log:\n${stderr}`));
    });
  });
  child.stdout!.resume();
  const baseUrl = `http://127.0.0.1:${port}`;
  const transport = (headers?: Record<string, string>) =>
    createConnectTransport({
      baseUrl,
      httpVersion: '1.1',
      useBinaryFormat: false,
      interceptors: headers
        ? [
            (next) => async (req) => {
              for (const [k, v] of Object.entries(headers)) req.header.set(k, v);
              return next(req);
            },
          ]
        : [],
    });
  return {
    pid: child.pid!,
    port,
    baseUrl,
    child,
    log: () => stderr,
    transport,
    processClient: (headers) => createClient(Process, transport(headers)),
    filesystemClient: (headers) => createClient(Filesystem, transport(headers)),
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        const t = setTimeout(() => child.kill('SIGKILL'), 3000);
        child.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
        child.kill('SIGTERM');
      }),
  };
}

/** Resident set size of a process in bytes (from /proc/<pid>/status). */
export async function rssBytes(pid: number): Promise<number> {
  const { readFile } = await import('node:fs/promises');
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(text);
  return m ? Number(m[1]) * 1024 : 0;
}
