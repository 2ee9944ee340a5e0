import { TimeoutError, throwIfAborted } from '../core/errors.js';
import type { AgentEndpoint } from '../core/types.js';
import type { InitRequestBody } from '../agent/protocol.js';
import { withDeadline } from '../util/signal.js';
import { request as httpRequest } from 'node:http';
import { createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Process } from '../gen/process/process_pb.js';

/**
 * One HTTP exchange on its own connection (agent: false). The control path must
 * not reuse pooled connections: a slot's address is reused by the next sandbox
 * in the slot, and a pooled socket to the previous tenant hangs (its flows are
 * dropped silently when the slot is reset).
 */
async function call(url: string, opts: { method: string; headers?: Record<string, string>; body?: string; signal: AbortSignal }): Promise<{ status: number; text: string }> {
  const { body, ...rest } = opts;
  const res = await exchange(url, { ...rest, headers: opts.headers ?? {}, ...(body !== undefined ? { body: Buffer.from(body) } : {}) });
  return { status: res.status, text: res.body.toString('utf8', 0, 4096) };
}

/** A program for AgentControl.exec: argv, user (default root), working directory, environment. */
export interface GuestExec { cmd: string; args: string[]; user?: string; cwd?: string; envs?: Record<string, string> }

/** One exchange with a binary body both ways, on its own connection (as `call`); file transfers use it directly. */
function exchange(url: string, opts: { method: string; headers: Record<string, string>; body?: Uint8Array; signal: AbortSignal; maxBytes?: number }): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: opts.method, headers: opts.headers, agent: false, signal: opts.signal }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (opts.maxBytes !== undefined && size > opts.maxBytes) { req.destroy(new Error(`${url}: answer larger than ${opts.maxBytes} bytes`)); return; }
        chunks.push(c);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Body of envd's POST /init plus Hearth's ignorable extension. */
export type AgentInit = InitRequestBody;

/**
 * The host's control path to a guest agent: health, /init, and a `sync`
 * before a filesystem-only pause. Data-plane calls
 * (processes, files) go through hearthd's envd proxy with Connect clients.
 */
export class AgentControl {
  constructor(private readonly endpoint: AgentEndpoint, private readonly token?: string) {}

  get baseUrl(): string { return `http://${this.endpoint.host}:${this.endpoint.port}`; }

  /** `warm`: ask for (and wait on) the agent's command-path warm-up, as before a template snapshot. */
  async health(signal: AbortSignal, warm = false): Promise<boolean> {
    try {
      return await withDeadline(signal, 2000, async (s) => {
        const res = await call(`${this.baseUrl}/health${warm ? '?warm=1' : ''}`, { method: 'GET', signal: s });
        return res.status === 204 || res.status === 200;
      });
    } catch {
      return false;
    }
  }

  async init(body: AgentInit, signal: AbortSignal): Promise<void> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (this.token) headers['x-access-token'] = this.token;
    await withDeadline(signal, 10_000, async (s) => {
      const res = await call(`${this.baseUrl}/init`, { method: 'POST', headers, body: JSON.stringify(body), signal: s });
      if (res.status !== 204 && res.status !== 200) {
        throw new Error(`agent /init answered ${res.status}: ${res.text.slice(0, 300)}`);
      }
    });
  }

  /**
   * Write the guest's dirty data to its disks: `sync` as root through envd's
   * process API (the agent has no control route for it), before a
   * filesystem-only pause stops the VM. Resolves when sync exited 0; bounded
   * by `timeoutMs`. Its own connection, as every control call.
   */
  async sync(signal: AbortSignal, timeoutMs = 60_000): Promise<void> {
    await withDeadline(signal, timeoutMs, async (s) => {
      const transport = createConnectTransport({ baseUrl: this.baseUrl, httpVersion: '1.1', useBinaryFormat: true, nodeOptions: { agent: false } });
      const headers: Record<string, string> = { authorization: `Basic ${Buffer.from('root:').toString('base64')}` };
      if (this.token) headers['x-access-token'] = this.token;
      let end: { exitCode: number; status: string; error?: string } | undefined;
      for await (const res of createClient(Process, transport).start({ process: { cmd: '/bin/sync', args: [], envs: {} }, stdin: false }, { signal: s, headers })) {
        if (res.event?.event.case === 'end') end = res.event.event.value;
      }
      if (!end) throw new Error('agent: sync ended without an exit status');
      if (end.exitCode !== 0) throw new Error(`agent: sync failed (${end.status}${end.error ? `: ${end.error}` : ''})`);
    });
  }

  /**
   * Run a program in the guest to its end, as `user` (root by default), streaming its output to
   * `onOutput`: the template builder's steps and the start command's ready checks. Its own
   * connection, as every control call. Resolves with the exit code (a signal-killed process: -1).
   */
  async exec(req: GuestExec, signal: AbortSignal, onOutput?: (stream: 'stdout' | 'stderr', chunk: Uint8Array) => void): Promise<{ exitCode: number; status: string }> {
    const transport = createConnectTransport({ baseUrl: this.baseUrl, httpVersion: '1.1', useBinaryFormat: true, nodeOptions: { agent: false } });
    const headers: Record<string, string> = { authorization: `Basic ${Buffer.from(`${req.user ?? 'root'}:`).toString('base64')}` };
    if (this.token) headers['x-access-token'] = this.token;
    let end: { exitCode: number; exited: boolean; status: string; error?: string } | undefined;
    const process = { cmd: req.cmd, args: req.args, envs: req.envs ?? {}, ...(req.cwd ? { cwd: req.cwd } : {}) };
    for await (const res of createClient(Process, transport).start({ process, stdin: false }, { signal, headers })) {
      const ev = res.event?.event;
      if (ev?.case === 'data' && onOutput) {
        const out = ev.value.output;
        if (out.case === 'stdout' || out.case === 'stderr') onOutput(out.case, out.value);
      } else if (ev?.case === 'end') {
        end = ev.value;
      }
    }
    if (!end) throw new Error(`agent: ${req.cmd} ended without an exit status`);
    return { exitCode: end.exited ? end.exitCode : -1, status: end.status };
  }

  /** Write a file in the guest as root (octet-stream upload; parents are created). */
  async writeFile(path: string, data: Uint8Array, signal: AbortSignal): Promise<void> {
    const headers: Record<string, string> = { 'content-type': 'application/octet-stream', 'content-length': String(data.byteLength) };
    if (this.token) headers['x-access-token'] = this.token;
    const res = await exchange(`${this.baseUrl}/files?path=${encodeURIComponent(path)}&username=root`, { method: 'POST', headers, body: data, signal });
    if (res.status < 200 || res.status > 299) throw new Error(`agent: writing ${path} answered ${res.status}: ${res.body.toString('utf8', 0, 300)}`);
  }

  /** Read a guest file as root (at most `maxBytes`). */
  async readFile(path: string, signal: AbortSignal, maxBytes = 64 << 20): Promise<Buffer> {
    const headers: Record<string, string> = {};
    if (this.token) headers['x-access-token'] = this.token;
    const res = await exchange(`${this.baseUrl}/files?path=${encodeURIComponent(path)}&username=root`, { method: 'GET', headers, signal, maxBytes });
    if (res.status !== 200) throw new Error(`agent: reading ${path} answered ${res.status}: ${res.body.toString('utf8', 0, 300)}`);
    return res.body;
  }

  /**
   * Poll /health with capped exponential backoff until it answers, the
   * deadline passes, `giveUp` rejects (the VMM died), or the signal aborts.
   */
  async waitUntilReady(opts: { signal: AbortSignal; timeoutMs: number; giveUp?: Promise<never>; warm?: boolean }): Promise<number> {
    const t0 = performance.now();
    let delay = 10;
    let attempts = 0;
    const poll = async (): Promise<number> => {
      for (;;) {
        throwIfAborted(opts.signal);
        attempts++;
        if (await this.health(opts.signal, opts.warm)) return Math.round(performance.now() - t0);
        if (performance.now() - t0 > opts.timeoutMs) {
          throw new TimeoutError(`agent at ${this.baseUrl} did not answer within ${opts.timeoutMs} ms (${attempts} attempts)`);
        }
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 200);
      }
    };
    return opts.giveUp ? Promise.race([poll(), opts.giveUp]) : poll();
  }
}

