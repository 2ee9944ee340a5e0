import { TimeoutError, throwIfAborted } from '../core/errors.js';
import type { AgentEndpoint } from '../core/types.js';
import type { InitRequestBody } from '../agent/protocol.js';
import { withDeadline } from '../util/signal.js';

/** Body of envd's POST /init plus Hearth's ignorable extension. */
export type AgentInit = InitRequestBody;

/**
 * The host's control path to a guest agent: health and /init. Data-plane calls
 * (processes, files) go through hearthd's envd proxy with Connect clients.
 */
export class AgentControl {
  constructor(private readonly endpoint: AgentEndpoint, private readonly token?: string) {}

  get baseUrl(): string { return `http://${this.endpoint.host}:${this.endpoint.port}`; }

  async health(signal: AbortSignal): Promise<boolean> {
    try {
      return await withDeadline(signal, 2000, async (s) => {
        const res = await fetch(`${this.baseUrl}/health`, { signal: s });
        await res.body?.cancel();
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
      const res = await fetch(`${this.baseUrl}/init`, { method: 'POST', headers, body: JSON.stringify(body), signal: s });
      if (res.status !== 204 && res.status !== 200) {
        throw new Error(`agent /init answered ${res.status}: ${(await res.text()).slice(0, 300)}`);
      }
      await res.body?.cancel();
    });
  }

  /**
   * Poll /health with capped exponential backoff until it answers, the
   * deadline passes, `giveUp` rejects (the VMM died), or the signal aborts.
   */
  async waitUntilReady(opts: { signal: AbortSignal; timeoutMs: number; giveUp?: Promise<never> }): Promise<number> {
    const t0 = performance.now();
    let delay = 10;
    let attempts = 0;
    const poll = async (): Promise<number> => {
      for (;;) {
        throwIfAborted(opts.signal);
        attempts++;
        if (await this.health(opts.signal)) return Math.round(performance.now() - t0);
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

