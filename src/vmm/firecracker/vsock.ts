/**
 * The host→guest agent path over Firecracker's hybrid vsock (docs/firecracker.md, "Hybrid vsock"):
 * connect to the VM's vsock Unix socket, send `CONNECT <port>\n` in one
 * write, read `OK <host_port>\n`, then the stream is the guest's. HTTP runs
 * on top through an http.Agent whose createConnection does the handshake.
 *
 * Every snapshot resets the guest's vsock connections (a transport reset on
 * resume, and a restored VM starts with none), and right after boot or
 * restore the guest may not listen yet: Firecracker then closes the socket
 * without an OK. Both look like a connection that ends before any answer;
 * VsockHttpClient retries those with backoff, and `reset()` drops pooled
 * connections that the reset killed.
 */
import http from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { HostFailureError, TimeoutError, throwIfAborted } from '../../core/errors.js';
import { abortError, sleep } from '../../util/abort.js';

/** The guest did not accept (not listening yet, or the VM is restoring): retry. */
export class VsockNotReadyError extends HostFailureError {}

export interface VsockConnection {
  socket: net.Socket;
  /** The host-side port Firecracker assigned (from `OK <port>`). */
  hostPort: number;
}

/** Opens one connection to guest `port` through the hybrid-vsock socket `udsPath`. */
export function vsockConnect(udsPath: string, port: number, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<VsockConnection> {
  if (!Number.isInteger(port) || port < 0 || port > 0xffffffff) return Promise.reject(new RangeError(`bad vsock port ${port}`));
  const timeoutMs = opts.timeoutMs ?? 2500;
  return new Promise((resolve, reject) => {
    const s = net.createConnection(udsPath);
    let buf = Buffer.alloc(0);
    let settled = false;
    const finish = (err?: Error, conn?: VsockConnection) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      s.removeListener('readable', onReadable);
      s.removeListener('close', onClose);
      s.removeListener('error', onError);
      if (err) { s.destroy(); reject(err); } else resolve(conn!);
    };
    const timer = setTimeout(() => finish(new VsockNotReadyError(`vsock ${udsPath} port ${port}: no answer to CONNECT within ${timeoutMs} ms`)), timeoutMs);
    const onAbort = () => { finish(abortError(opts.signal!)); };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const onError = (err: NodeJS.ErrnoException) => {
      const gone = err.code === 'ENOENT' || err.code === 'ECONNREFUSED';
      finish(gone
        ? new VsockNotReadyError(`vsock socket ${udsPath} is not accepting connections (${err.code})`, { cause: err })
        : new VsockNotReadyError(`vsock ${udsPath} port ${port}: ${err.message}`, { cause: err }));
    };
    const onClose = () => finish(new VsockNotReadyError(`vsock ${udsPath}: closed before OK (guest not listening on port ${port} yet?)`));
    // 'readable' + read(): the stream is not switched to flowing mode, so bytes
    // after the OK line stay buffered for whoever reads the socket next.
    const onReadable = () => {
      let chunk: Buffer | null;
      while ((chunk = s.read() as Buffer | null) !== null) {
        buf = Buffer.concat([buf, chunk]);
        const nl = buf.indexOf(0x0a);
        if (nl < 0) {
          if (buf.length > 64) return finish(new HostFailureError(`vsock ${udsPath}: no line end in ${JSON.stringify(buf.toString('latin1'))}`));
          continue;
        }
        const line = buf.subarray(0, nl).toString('ascii').trim();
        const rest = buf.subarray(nl + 1);
        const m = /^OK (\d+)$/.exec(line);
        if (!m) return finish(new HostFailureError(`vsock ${udsPath} port ${port}: unexpected answer ${JSON.stringify(line)}`));
        if (rest.length) s.unshift(rest);
        return finish(undefined, { socket: s, hostPort: Number(m[1]) });
      }
    };
    s.on('readable', onReadable);
    s.once('close', onClose);
    s.once('error', onError);
    s.once('connect', () => { s.write(`CONNECT ${port}\n`); }); // one write: Firecracker may drop a split command
  });
}

export interface VsockAgentOptions {
  /** Per-connection handshake bound (ms). */
  connectTimeoutMs?: number;
  keepAlive?: boolean;
}

/** An http.Agent that reaches guest `port` over the hybrid vsock at `udsPath`. */
export class VsockAgent extends http.Agent {
  constructor(readonly udsPath: string, readonly port: number, private readonly vopts: VsockAgentOptions = {}) {
    super({ keepAlive: vopts.keepAlive ?? true, maxSockets: 16 });
  }

  override createConnection(_options: http.ClientRequestArgs, callback?: (err: Error | null, stream: Duplex) => void): Duplex | null | undefined {
    vsockConnect(this.udsPath, this.port, { timeoutMs: this.vopts.connectTimeoutMs }).then(
      (c) => callback?.(null, c.socket),
      (err: Error) => callback?.(err, undefined as unknown as Duplex),
    );
    return undefined;
  }

  /** Drops pooled connections (after a snapshot or restore they are dead). */
  reset(): void {
    for (const list of Object.values(this.freeSockets)) for (const s of list ?? []) s.destroy();
  }
}

export interface VsockResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export interface VsockRequest {
  method?: string;
  path: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  signal?: AbortSignal;
  /** Bound for the whole call, retries included (default 10 s). */
  timeoutMs?: number;
  /** Retry when the connection ends before any response byte (default true; only for idempotent calls). */
  retry?: boolean;
}

/** HTTP to a guest agent over vsock, retrying while the guest is not (yet, or again) listening. */
export class VsockHttpClient {
  readonly agent: VsockAgent;

  constructor(readonly udsPath: string, readonly port: number, opts: VsockAgentOptions = {}) {
    this.agent = new VsockAgent(udsPath, port, opts);
  }

  close(): void { this.agent.destroy(); }
  /** Call after every snapshot, resume or restore of the VM. */
  reset(): void { this.agent.reset(); }

  async request(req: VsockRequest): Promise<VsockResponse> {
    const timeoutMs = req.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    let delay = 10;
    for (let attempt = 1; ; attempt++) {
      throwIfAborted(req.signal);
      try {
        return await this.once(req, Math.max(1, deadline - Date.now()));
      } catch (err) {
        const retriable = (req.retry ?? true) && (err instanceof VsockNotReadyError || isResetBeforeResponse(err));
        if (!retriable) throw err;
        if (Date.now() + delay >= deadline) {
          throw new TimeoutError(`agent on vsock port ${this.port} (${this.udsPath}) did not answer ${req.method ?? 'GET'} ${req.path} within ${timeoutMs} ms (${attempt} attempts): ${(err as Error).message}`, { cause: err });
        }
        await sleep(delay, req.signal);
        delay = Math.min(delay * 2, 200);
      }
    }
  }

  private once(req: VsockRequest, timeoutMs: number): Promise<VsockResponse> {
    return new Promise((resolve, reject) => {
      const body = req.body === undefined ? undefined : Buffer.isBuffer(req.body) ? req.body : Buffer.from(req.body);
      const r = http.request({
        agent: this.agent,
        host: 'localhost',
        method: req.method ?? 'GET',
        path: req.path,
        headers: { ...req.headers, ...(body ? { 'Content-Length': String(body.length) } : {}) },
        signal: req.signal,
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => { clearTimeout(timer); resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }); });
        res.on('error', (err) => { clearTimeout(timer); reject(err); });
      });
      const timer = setTimeout(() => r.destroy(new VsockNotReadyError(`no response within ${timeoutMs} ms`)), timeoutMs);
      r.on('error', (err) => {
        clearTimeout(timer);
        if (req.signal?.aborted) { reject(abortError(req.signal)); return; }
        reject(err);
      });
      r.end(body);
    });
  }

  async health(signal: AbortSignal): Promise<boolean> {
    try {
      const res = await this.request({ path: '/health', signal, timeoutMs: 2000, retry: false });
      return res.status === 204 || res.status === 200;
    } catch {
      return false;
    }
  }

  /** Polls /health until it answers (like AgentControl.waitUntilReady, over vsock). */
  async waitUntilReady(opts: { signal: AbortSignal; timeoutMs: number; giveUp?: Promise<never> }): Promise<number> {
    const t0 = performance.now();
    const poll = async (): Promise<number> => {
      let delay = 10;
      for (;;) {
        throwIfAborted(opts.signal);
        if (await this.health(opts.signal)) return Math.round(performance.now() - t0);
        if (performance.now() - t0 > opts.timeoutMs) throw new TimeoutError(`agent on vsock port ${this.port} did not answer within ${opts.timeoutMs} ms`);
        await sleep(delay, opts.signal);
        delay = Math.min(delay * 2, 200);
      }
    };
    return opts.giveUp ? Promise.race([poll(), opts.giveUp]) : poll();
  }
}

function isResetBeforeResponse(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'ECONNRESET' || code === 'EPIPE' || code === 'ECONNREFUSED' || code === 'ENOENT';
}

