import { HearthApi, type ConnectionOptions } from './api.js';
import { errorFromResponse, NotFoundError } from './errors.js';
import { Commands } from './commands.js';
import { envdClients, type EnvdTarget } from './envd.js';
import { Files } from './files.js';
import { Pty } from './pty.js';
import type { NetworkPolicy, SandboxInfo, SandboxMetrics, SandboxSummary, SnapshotInfo } from './types.js';

export type { SandboxInfo, SandboxMetrics, SandboxSummary, SnapshotInfo };

/** `Sandbox.list` filters and paging (E2B's `SandboxListOpts`). */
export interface ListOptions extends ConnectionOptions {
  query?: {
    /** Only sandboxes whose metadata has every one of these key/value pairs. */
    metadata?: Record<string, string>;
    /** States to list (default: every state but destroyed). */
    state?: string[];
  };
  /** Page size (default: everything in one page). */
  limit?: number;
  /** Where to continue: a previous page's `nextToken`. */
  nextToken?: string;
  /** @deprecated use `query.state` */
  states?: string[];
}

/** Pages of `Sandbox.list` (as E2B's SandboxPaginator): `while (p.hasNext) items.push(...await p.nextItems())`. */
export class SandboxPaginator {
  private token: string | undefined;
  private more = true;
  private readonly api: HearthApi;

  constructor(private readonly opts: ListOptions = {}) {
    this.api = new HearthApi(opts);
    this.token = opts.nextToken;
  }

  /** Whether another page may follow. */
  get hasNext(): boolean { return this.more; }
  /** The token for the next page (to continue in another paginator or process). */
  get nextToken(): string | undefined { return this.token; }

  /** The next page. */
  async nextItems(signal?: AbortSignal): Promise<SandboxSummary[]> {
    if (!this.more) throw new Error('No more items to fetch');
    const states = this.opts.query?.state ?? this.opts.states;
    const metadata = this.opts.query?.metadata;
    const q = new URLSearchParams();
    if (metadata && Object.keys(metadata).length) {
      q.set('metadata', new URLSearchParams(Object.entries(metadata).map(([k, v]): [string, string] => [encodeURIComponent(k), encodeURIComponent(v)])).toString());
    }
    if (states?.length) q.set('state', states.join(','));
    if (this.opts.limit !== undefined) q.set('limit', String(this.opts.limit));
    if (this.token) q.set('nextToken', this.token);
    const s = signal ?? this.opts.signal;
    let page: { body: SandboxSummary[]; next: string | null };
    // E2B's paged list knows running and paused sandboxes; other states come from the plain list, paged here.
    const v2 = !states?.length || states.every((x) => x === 'running' || x === 'paused');
    try {
      if (!v2) throw new NotFoundError('no route: states beyond running and paused');
      page = await this.api.requestWithHeaders<SandboxSummary[]>('GET', `/v2/sandboxes${q.size ? `?${q.toString()}` : ''}`, undefined, s, 'x-next-token');
    } catch (err) {
      // Also a hearthd without the paged route: filter and page the plain list here.
      if (!(err instanceof NotFoundError) || !/^no route/.test(err.message)) throw err;
      page = await this.legacyPage(states, metadata, s);
    }
    this.token = page.next ?? undefined;
    this.more = Boolean(page.next);
    return page.body;
  }

  /** Every remaining page. */
  async all(signal?: AbortSignal): Promise<SandboxSummary[]> {
    const out: SandboxSummary[] = [];
    while (this.more) out.push(...await this.nextItems(signal));
    return out;
  }

  private async legacyPage(states: string[] | undefined, metadata: Record<string, string> | undefined, signal?: AbortSignal): Promise<{ body: SandboxSummary[]; next: string | null }> {
    const q = new URLSearchParams();
    if (states?.length) q.set('state', states.join(','));
    if (metadata && Object.keys(metadata).length) q.set('metadata', new URLSearchParams(Object.entries(metadata)).toString());
    const all = (await this.api.request<SandboxSummary[]>('GET', `/sandboxes${q.size ? `?${q.toString()}` : ''}`, undefined, signal))
      .filter((x) => !metadata || Object.entries(metadata).every(([k, v]) => x.metadata[k] === v))
      .sort((a, b) => b.createdAt.localeCompare(a.createdAt) || a.sandboxID.localeCompare(b.sandboxID));
    const start = this.token ? Number(this.token) || 0 : 0;
    const end = this.opts.limit ? start + this.opts.limit : all.length;
    return { body: all.slice(start, end), next: end < all.length ? String(end) : null };
  }
}

export interface CreateOptions extends ConnectionOptions {
  /** Template id; default "base". */
  template?: string;
  /** Start from a named snapshot (id or name) instead of a template. */
  snapshot?: string;
  /** Sandbox lifetime; default from the daemon's config. */
  timeoutMs?: number;
  envs?: Record<string, string>;
  metadata?: Record<string, string>;
  cpu?: number;
  memoryMb?: number;
  /** Default user for commands and files (default: the template's, "user"). */
  user?: string;
  /**
   * At the timeout: destroy (default) or pause (`keepMemory: false`: a filesystem-only pause, whose
   * resume boots); resume on traffic (memory pauses only); extend on activity.
   */
  lifecycle?: { onTimeout?: 'kill' | 'pause'; keepMemory?: boolean; autoResume?: boolean; autoExtend?: boolean };
  /** Egress beyond `network.allowOut` (default: the host's policy). */
  allowInternetAccess?: boolean;
  network?: NetworkOptions;
}

/** As E2B names them. Deny wins over allow. */
export interface NetworkOptions {
  /** IPv4 addresses or CIDRs the sandbox may reach, also with internet access off. */
  allowOut?: string[];
  /** IPv4 addresses or CIDRs it may never reach. */
  denyOut?: string[];
  /** false: its ports are served by the proxy only with `trafficAccessToken` (header e2b-traffic-access-token). */
  allowPublicTraffic?: boolean;
}

export type { NetworkPolicy };

/** A running sandbox: a microVM you can run commands in and move files to and from. */
export class Sandbox {
  readonly commands: Commands;
  readonly files: Files;
  /** Interactive terminals (PTY sessions). */
  readonly pty: Pty;

  private constructor(readonly id: string, private readonly api: HearthApi, readonly info: SandboxInfo, user?: string) {
    const state = async (): Promise<string | undefined> => (await this.getInfo()).state;
    const target: EnvdTarget = { baseUrl: `${api.url}/sandboxes/${id}/envd`, accessToken: info.envdAccessToken, state };
    const clients = envdClients(target, user);
    this.commands = new Commands(clients, state);
    this.files = new Files(clients, target, user);
    this.pty = new Pty(clients, (u) => envdClients(target, u), state);
  }

  static async create(opts: CreateOptions = {}): Promise<Sandbox> {
    const api = new HearthApi(opts);
    const info = await api.request<SandboxInfo>('POST', '/sandboxes', {
      templateID: opts.snapshot ?? opts.template ?? 'base',
      ...(opts.timeoutMs !== undefined ? { timeout: Math.ceil(opts.timeoutMs / 1000) } : {}),
      ...(opts.envs ? { envVars: opts.envs } : {}),
      ...(opts.metadata ? { metadata: opts.metadata } : {}),
      ...(opts.cpu !== undefined ? { cpuCount: opts.cpu } : {}),
      ...(opts.memoryMb !== undefined ? { memoryMB: opts.memoryMb } : {}),
      ...(opts.lifecycle ? { lifecycle: opts.lifecycle } : {}),
      ...(opts.allowInternetAccess !== undefined ? { allow_internet_access: opts.allowInternetAccess } : {}),
      ...(opts.network ? { network: opts.network } : {}),
    }, opts.signal);
    return new Sandbox(info.sandboxID, api, info, opts.user);
  }

  /** The port proxy token this sandbox requires (null when its ports are public). */
  get trafficAccessToken(): string | null { return this.info.trafficAccessToken; }

  /**
   * The URL of a port the sandbox listens on, through hearthd's port proxy (send
   * `trafficAccessToken` if set). The host form `<port>-<id>.<portDomain>` when hearthd
   * has a port domain: an origin of its own, the one to open in a browser; else the path
   * form on the API's origin (served there in an opaque origin, see docs/security.md).
   */
  getPortUrl(port: number, form: 'host' | 'path' = 'host'): string {
    const domain = this.info.portDomain;
    if (form === 'host' && domain) {
      const api = new URL(this.api.url);
      return `${api.protocol}//${port}-${this.id}.${domain}${api.port ? `:${api.port}` : ''}/`;
    }
    return `${this.api.url}/sandboxes/${this.id}/ports/${port}/`;
  }

  /** The egress policy in force. */
  async getNetwork(signal?: AbortSignal): Promise<NetworkPolicy> {
    return this.api.request<NetworkPolicy>('GET', `/sandboxes/${this.id}/network`, undefined, signal);
  }

  /** Replace the egress policy (fields not given take the host default); applies at once, open connections included. */
  async setNetwork(policy: { allowInternetAccess?: boolean; allowOut?: string[]; denyOut?: string[] }, signal?: AbortSignal): Promise<NetworkPolicy> {
    return this.api.request<NetworkPolicy>('PUT', `/sandboxes/${this.id}/network`, {
      ...(policy.allowInternetAccess !== undefined ? { allow_internet_access: policy.allowInternetAccess } : {}),
      ...(policy.allowOut ? { allowOut: policy.allowOut } : {}),
      ...(policy.denyOut ? { denyOut: policy.denyOut } : {}),
    }, signal);
  }

  /**
   * Attach to an existing sandbox by id. A paused one is resumed first (as E2B's connect does;
   * `timeoutMs`, default 300 s, is its new lifetime); with `timeoutMs` a running one is made to
   * live at least that long. An ended one is returned as it is (its calls fail with SandboxGoneError).
   * With `resume: false` a paused sandbox is left paused (its envd calls fail with SandboxPausedError).
   */
  static async connect(id: string, opts: ConnectionOptions & { user?: string; timeoutMs?: number; resume?: boolean } = {}): Promise<Sandbox> {
    const api = new HearthApi(opts);
    const path = `/sandboxes/${encodeURIComponent(id)}`;
    let info = await api.request<SandboxInfo>('GET', path, undefined, opts.signal);
    // A pause or resume in flight: wait for it to settle.
    for (let wait = 250; info.state === 'pausing' || info.state === 'resuming' || info.state === 'creating'; wait = Math.min(wait * 2, 2000)) {
      await new Promise((r) => setTimeout(r, wait));
      info = await api.request<SandboxInfo>('GET', path, undefined, opts.signal);
    }
    const secs = opts.timeoutMs !== undefined ? Math.max(1, Math.ceil(opts.timeoutMs / 1000)) : undefined;
    if ((info.state === 'paused' && opts.resume !== false) || (info.state === 'running' && secs !== undefined)) {
      info = await api.request<SandboxInfo>('POST', `${path}/connect`, { timeout: secs ?? 300 }, opts.signal);
    }
    return new Sandbox(id, api, info, opts.user);
  }

  /**
   * Sandboxes, a page at a time, filtered by metadata and state (E2B's `Sandbox.list`):
   * `const p = Sandbox.list({ query: { metadata: { app: 'x' } }, limit: 50 }); while (p.hasNext) … await p.nextItems()`,
   * or `await Sandbox.list(opts).all()`.
   */
  static list(opts: ListOptions = {}): SandboxPaginator {
    return new SandboxPaginator(opts);
  }

  /**
   * Resource use samples (CPU %, memory, disk), oldest first, between `start` and `end`
   * (default: what hearthd keeps). E2B's `getMetrics`.
   */
  async getMetrics(opts: { start?: Date; end?: Date; signal?: AbortSignal } = {}): Promise<SandboxMetrics[]> {
    return Sandbox.metricsOf(this.api, this.id, opts, () => this.files.agentMetrics(opts.signal));
  }

  static async getMetrics(id: string, opts: ConnectionOptions & { start?: Date; end?: Date } = {}): Promise<SandboxMetrics[]> {
    const api = new HearthApi(opts);
    return Sandbox.metricsOf(api, id, opts, async () => (await Sandbox.connect(id, opts)).files.agentMetrics(opts.signal));
  }

  private static async metricsOf(api: HearthApi, id: string, opts: { start?: Date; end?: Date; signal?: AbortSignal }, now: () => Promise<SandboxMetrics>): Promise<SandboxMetrics[]> {
    const q = new URLSearchParams();
    if (opts.start) q.set('start', String(Math.floor(opts.start.getTime() / 1000)));
    if (opts.end) q.set('end', String(Math.ceil(opts.end.getTime() / 1000)));
    type Raw = { timestamp: string; timestampUnix?: number; cpuUsedPct: number; cpuCount: number; memUsed: number; memTotal: number; memCache?: number; diskUsed: number; diskTotal: number }
      & Pick<SandboxMetrics, 'hostCpuUsedPct' | 'hostMemRss' | 'hostDiskUsed'>;
    try {
      const raw = await api.request<Raw[]>('GET', `/sandboxes/${encodeURIComponent(id)}/metrics${q.size ? `?${q.toString()}` : ''}`, undefined, opts.signal);
      return raw.map((m) => ({
        timestamp: new Date(m.timestampUnix !== undefined ? m.timestampUnix * 1000 : m.timestamp), cpuUsedPct: m.cpuUsedPct, cpuCount: m.cpuCount,
        memUsed: m.memUsed, memTotal: m.memTotal, ...(m.memCache !== undefined ? { memCache: m.memCache } : {}), diskUsed: m.diskUsed, diskTotal: m.diskTotal,
        ...(m.hostCpuUsedPct !== undefined ? { hostCpuUsedPct: m.hostCpuUsedPct } : {}), ...(m.hostMemRss !== undefined ? { hostMemRss: m.hostMemRss } : {}),
        ...(m.hostDiskUsed !== undefined ? { hostDiskUsed: m.hostDiskUsed } : {}),
      }));
    } catch (err) {
      // hearthd without the metrics route: one sample, now, from the agent.
      if (!(err instanceof NotFoundError) || !/^no route /.test(err.message)) throw err;
      return [await now()];
    }
  }

  static async getInfo(id: string, opts: ConnectionOptions = {}): Promise<SandboxInfo> {
    // The record route: it also shows a sandbox that has ended (GET /sandboxes/{id} is a 404 then, as in E2B).
    return new HearthApi(opts).request<SandboxInfo>('GET', `/sandboxes/${encodeURIComponent(id)}/record`, undefined, opts.signal);
  }

  static async kill(id: string, opts: ConnectionOptions = {}): Promise<void> {
    // 404: already destroyed (or unknown); killing is idempotent here.
    await new HearthApi(opts).request<void>('DELETE', `/sandboxes/${encodeURIComponent(id)}`, undefined, opts.signal).catch((err: unknown) => {
      if (!(err instanceof NotFoundError)) throw err;
    });
  }

  async getInfo(signal?: AbortSignal): Promise<SandboxInfo> {
    return this.api.request<SandboxInfo>('GET', `/sandboxes/${this.id}/record`, undefined, signal);
  }

  async setTimeout(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    await this.api.request<void>('POST', `/sandboxes/${this.id}/timeout`, { timeout: Math.ceil(timeoutMs / 1000) }, signal);
  }

  /**
   * Pause: the VM stops (no process, no CPU); memory and disk stay on the host. With
   * `keepMemory: false` only the disk is kept (the guest syncs first; a resume boots from it).
   */
  async pause(opts: AbortSignal | { keepMemory?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    const o = opts instanceof AbortSignal ? { signal: opts } : opts;
    await this.api.request<void>('POST', `/sandboxes/${this.id}/pause`, o.keepMemory === false ? { memory: false } : {}, o.signal);
  }

  /**
   * Resume exactly where it was paused (processes keep their PIDs and memory); a filesystem-only
   * pause, or `keepMemory: false`, boots from the disk instead.
   */
  async resume(opts: { timeoutMs?: number; keepMemory?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    await this.api.request<SandboxInfo>('POST', `/sandboxes/${this.id}/resume`, {
      ...(opts.timeoutMs !== undefined ? { timeout: Math.ceil(opts.timeoutMs / 1000) } : {}),
      ...(opts.keepMemory === false ? { memory: false } : {}),
    }, opts.signal);
  }

  /** Capture memory and disk as a named snapshot; the sandbox keeps running after a short freeze. */
  async snapshot(name?: string, signal?: AbortSignal): Promise<SnapshotInfo> {
    return this.api.request<SnapshotInfo>('POST', `/sandboxes/${this.id}/snapshots`, name ? { name } : {}, signal);
  }

  /** N new sandboxes from this one's current state. */
  async fork(count = 1, opts: { timeoutMs?: number; signal?: AbortSignal; user?: string } = {}): Promise<Sandbox[]> {
    const results = await this.api.request<{ sandbox?: SandboxInfo; error?: { message: string; error_code: string; code: number } }[]>(
      'POST', `/sandboxes/${this.id}/fork`, { count, ...(opts.timeoutMs !== undefined ? { timeout: Math.ceil(opts.timeoutMs / 1000) } : {}) }, opts.signal);
    const failed = results.filter((r) => r.error);
    if (failed.length) {
      // Don't leak the ones that did start.
      await Promise.all(results.filter((r) => r.sandbox).map((r) => this.api.request<void>('DELETE', `/sandboxes/${r.sandbox!.sandboxID}`).catch(() => undefined)));
      throw errorFromResponse(failed[0]!.error!.code, failed[0]!.error, `fork failed: ${failed[0]!.error!.message}`);
    }
    return results.map((r) => new Sandbox(r.sandbox!.sandboxID, this.api, r.sandbox!, opts.user));
  }

  static async listSnapshots(opts: ConnectionOptions & { sandboxId?: string } = {}): Promise<SnapshotInfo[]> {
    const q = opts.sandboxId ? `?sandboxID=${encodeURIComponent(opts.sandboxId)}` : '';
    return new HearthApi(opts).request<SnapshotInfo[]>('GET', `/snapshots${q}`, undefined, opts.signal);
  }

  static async deleteSnapshot(idOrName: string, opts: ConnectionOptions = {}): Promise<void> {
    await new HearthApi(opts).request<void>('DELETE', `/snapshots/${encodeURIComponent(idOrName)}`, undefined, opts.signal);
  }

  /** Destroy the sandbox (idempotent). */
  async kill(signal?: AbortSignal): Promise<void> {
    await this.api.request<void>('DELETE', `/sandboxes/${this.id}`, undefined, signal).catch((err: unknown) => {
      if (!(err instanceof NotFoundError)) throw err; // already destroyed
    });
  }
}
