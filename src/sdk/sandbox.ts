import { HearthApi, type ConnectionOptions } from './api.js';
import { errorFromResponse } from './errors.js';
import { Commands } from './commands.js';
import { envdClients, type EnvdTarget } from './envd.js';
import { Files } from './files.js';
import { Pty } from './pty.js';
import type { NetworkPolicy, SandboxDetail, SandboxListItem, SnapshotInfo as SnapshotInfoSchema } from '../api/schemas.js';
import type { Static } from 'typebox';

export type SandboxInfo = SandboxDetail;
export type SnapshotInfo = Static<typeof SnapshotInfoSchema>;
export type SandboxSummary = SandboxListItem;

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
  /** At the timeout: destroy (default) or pause; resume on traffic; extend on activity. */
  lifecycle?: { onTimeout?: 'kill' | 'pause'; autoResume?: boolean; autoExtend?: boolean };
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
    const target: EnvdTarget = { baseUrl: `${api.url}/sandboxes/${id}/envd`, accessToken: info.envdAccessToken };
    const clients = envdClients(target, user);
    this.commands = new Commands(clients);
    this.files = new Files(clients, target, user);
    this.pty = new Pty(clients, (u) => envdClients(target, u));
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

  /** Attach to an existing sandbox by id. */
  static async connect(id: string, opts: ConnectionOptions & { user?: string } = {}): Promise<Sandbox> {
    const api = new HearthApi(opts);
    const info = await api.request<SandboxInfo>('GET', `/sandboxes/${encodeURIComponent(id)}`, undefined, opts.signal);
    return new Sandbox(id, api, info, opts.user);
  }

  static async list(opts: ConnectionOptions & { states?: string[] } = {}): Promise<SandboxSummary[]> {
    const q = opts.states?.length ? `?state=${opts.states.join(',')}` : '';
    return new HearthApi(opts).request<SandboxSummary[]>('GET', `/sandboxes${q}`, undefined, opts.signal);
  }

  static async getInfo(id: string, opts: ConnectionOptions = {}): Promise<SandboxInfo> {
    return new HearthApi(opts).request<SandboxInfo>('GET', `/sandboxes/${encodeURIComponent(id)}`, undefined, opts.signal);
  }

  static async kill(id: string, opts: ConnectionOptions = {}): Promise<void> {
    await new HearthApi(opts).request<void>('DELETE', `/sandboxes/${encodeURIComponent(id)}`, undefined, opts.signal);
  }

  async getInfo(signal?: AbortSignal): Promise<SandboxInfo> {
    return this.api.request<SandboxInfo>('GET', `/sandboxes/${this.id}`, undefined, signal);
  }

  async setTimeout(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    await this.api.request<void>('POST', `/sandboxes/${this.id}/timeout`, { timeout: Math.ceil(timeoutMs / 1000) }, signal);
  }

  /** Pause: the VM stops (no process, no CPU); memory and disk stay on the host. */
  async pause(signal?: AbortSignal): Promise<void> {
    await this.api.request<void>('POST', `/sandboxes/${this.id}/pause`, {}, signal);
  }

  /** Resume exactly where it was paused; processes keep their PIDs and memory. */
  async resume(opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    await this.api.request<SandboxInfo>('POST', `/sandboxes/${this.id}/resume`,
      opts.timeoutMs !== undefined ? { timeout: Math.ceil(opts.timeoutMs / 1000) } : {}, opts.signal);
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
    await this.api.request<void>('DELETE', `/sandboxes/${this.id}`, undefined, signal);
  }
}
