import { HearthApi, type ConnectionOptions } from './api.js';
import { Commands } from './commands.js';
import { envdClients, type EnvdTarget } from './envd.js';
import { Files } from './files.js';
import type { SandboxDetail, SandboxListItem } from '../api/schemas.js';

export type SandboxInfo = SandboxDetail;
export type SandboxSummary = SandboxListItem;

export interface CreateOptions extends ConnectionOptions {
  /** Template id; default "base". */
  template?: string;
  /** Sandbox lifetime; default from the daemon's config. */
  timeoutMs?: number;
  envs?: Record<string, string>;
  metadata?: Record<string, string>;
  cpu?: number;
  memoryMb?: number;
  /** Default user for commands and files (default: the template's, "user"). */
  user?: string;
}

/** A running sandbox: a microVM you can run commands in and move files to and from. */
export class Sandbox {
  readonly commands: Commands;
  readonly files: Files;

  private constructor(readonly id: string, private readonly api: HearthApi, readonly info: SandboxInfo, user?: string) {
    const target: EnvdTarget = { baseUrl: `${api.url}/sandboxes/${id}/envd`, accessToken: info.envdAccessToken };
    const clients = envdClients(target, user);
    this.commands = new Commands(clients);
    this.files = new Files(clients, target, user);
  }

  static async create(opts: CreateOptions = {}): Promise<Sandbox> {
    const api = new HearthApi(opts);
    const info = await api.request<SandboxInfo>('POST', '/sandboxes', {
      templateID: opts.template ?? 'base',
      ...(opts.timeoutMs !== undefined ? { timeout: Math.ceil(opts.timeoutMs / 1000) } : {}),
      ...(opts.envs ? { envVars: opts.envs } : {}),
      ...(opts.metadata ? { metadata: opts.metadata } : {}),
      ...(opts.cpu !== undefined ? { cpuCount: opts.cpu } : {}),
      ...(opts.memoryMb !== undefined ? { memoryMB: opts.memoryMb } : {}),
    }, opts.signal);
    return new Sandbox(info.sandboxID, api, info, opts.user);
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

  /** Destroy the sandbox (idempotent). */
  async kill(signal?: AbortSignal): Promise<void> {
    await this.api.request<void>('DELETE', `/sandboxes/${this.id}`, undefined, signal);
  }
}
