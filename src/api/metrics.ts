/**
 * Sandbox metrics over time, as E2B's `GET /sandboxes/{id}/metrics` answers
 * them: hearthd asks each running sandbox's agent for `GET /metrics` (CPU,
 * memory, disk, from the guest's /proc and statfs) every few seconds, adds what
 * the host sees of the sandbox (its VMM process's CPU and resident memory, the
 * blocks its disk takes in the data dir), and keeps the last hour in memory.
 * With a sample file store (src/observability/sample-store.ts) every sample is
 * also written to disk, so the whole series is kept for the sandbox's life (and
 * with its record after), across restarts of hearthd. A request for a running
 * sandbox whose newest sample is older than the interval takes one more first,
 * so a sandbox created a moment ago already has one. A paused sandbox keeps the
 * ones it had.
 */
import type { FastifyBaseLogger } from 'fastify';
import type { SandboxManager } from '../core/manager.js';
import type { SandboxRecord } from '../core/types.js';
import { HEADER_ACCESS_TOKEN, PATH_METRICS, type AgentMetrics } from '../agent/protocol.js';

/** One sample in E2B's shape (SandboxMetric). */
export interface MetricSample {
  timestamp: string;
  timestampUnix: number;
  cpuCount: number;
  cpuUsedPct: number;
  memUsed: number;
  memTotal: number;
  memCache: number;
  diskUsed: number;
  diskTotal: number;
  /** Hearth: the VMM process's CPU use seen from the host, in % of the sandbox's vCPUs (null: not known yet). */
  hostCpuUsedPct?: number | null;
  /** Hearth: the VMM process's resident memory on the host (bytes). */
  hostMemRss?: number | null;
  /** Hearth: blocks the sandbox's disk takes in the data dir (bytes, st_blocks × 512). */
  hostDiskUsed?: number | null;
}

/** What the host adds to a sample (src/observability wires it: /proc of the VMM, the disk's blocks). */
export type HostFields = Pick<MetricSample, 'hostCpuUsedPct' | 'hostMemRss' | 'hostDiskUsed'>;

export interface SamplerOptions {
  /** The host's view of a running sandbox, taken with each sample. */
  host?: (s: SandboxRecord) => Promise<HostFields | null>;
  /** Every sample, persisted; and the series older than the memory window, read back. */
  files?: { append(id: string, s: MetricSample): void; read(id: string): MetricSample[] };
  /** Called with each sample taken (hearthd's own metrics). */
  onSample?: (id: string, s: MetricSample) => void;
}

export const DEFAULT_METRICS_INTERVAL_MS = 5_000;
const KEEP_MS = 3_600_000;

export function sampleOf(m: AgentMetrics, atMs: number = Date.now()): MetricSample {
  const ts = Math.floor(atMs / 1000);
  return {
    timestamp: new Date(ts * 1000).toISOString(),
    timestampUnix: ts,
    cpuCount: m.cpu_count,
    cpuUsedPct: m.cpu_used_pct,
    memUsed: m.mem_used,
    memTotal: m.mem_total,
    memCache: m.mem_cache,
    diskUsed: m.disk_used,
    diskTotal: m.disk_total,
  };
}

export class MetricsSampler {
  private readonly series = new Map<string, MetricSample[]>();
  private readonly inFlight = new Map<string, Promise<MetricSample | null>>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly manager: Pick<SandboxManager, 'list' | 'agentEndpoint'>,
    private readonly log: FastifyBaseLogger,
    private readonly intervalMs: number = DEFAULT_METRICS_INTERVAL_MS,
    private readonly opts: SamplerOptions = {},
  ) {}

  start(): void {
    if (this.intervalMs <= 0 || this.timer) return;
    this.timer = setInterval(() => { void this.tick(); }, this.intervalMs);
    this.timer.unref();
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private async tick(): Promise<void> {
    const live = new Set<string>();
    for (const s of this.manager.list(['running', 'paused', 'pausing', 'resuming'])) {
      live.add(s.id);
      if (s.state === 'running') await this.sample(s.id, s);
    }
    for (const id of this.series.keys()) if (!live.has(id)) this.series.delete(id);
  }

  /** Takes one sample of a running sandbox now (null if its agent does not answer). */
  sample(id: string, rec?: SandboxRecord): Promise<MetricSample | null> {
    const pending = this.inFlight.get(id);
    if (pending) return pending;
    const p = this.fetchSample(id, rec).finally(() => this.inFlight.delete(id));
    this.inFlight.set(id, p);
    return p;
  }

  private async fetchSample(id: string, rec?: SandboxRecord): Promise<MetricSample | null> {
    let ep: ReturnType<SandboxManager['agentEndpoint']>;
    try { ep = this.manager.agentEndpoint(id); } catch { return null; }
    try {
      const res = await fetch(`http://${ep.endpoint.host}:${ep.endpoint.port}${PATH_METRICS}`, {
        headers: { [HEADER_ACCESS_TOKEN]: ep.token }, signal: AbortSignal.timeout(5_000),
      });
      if (!res.ok) { await res.body?.cancel(); return null; }
      const s: MetricSample = sampleOf(await res.json() as AgentMetrics);
      if (this.opts.host) {
        const r = rec ?? this.manager.list(['running']).find((x) => x.id === id);
        const h = r ? await this.opts.host(r).catch(() => null) : null;
        if (h) Object.assign(s, h);
      }
      this.opts.files?.append(id, s);
      this.opts.onSample?.(id, s);
      const list = this.series.get(id) ?? [];
      if (list.at(-1)?.timestampUnix === s.timestampUnix) list[list.length - 1] = s; else list.push(s);
      const cutoff = s.timestampUnix - KEEP_MS / 1000;
      while (list.length > 0 && list[0]!.timestampUnix < cutoff) list.shift();
      this.series.set(id, list);
      return s;
    } catch (err) {
      this.log.debug({ sandbox: id, err: String(err) }, 'metrics: agent did not answer');
      return null;
    }
  }

  /**
   * Samples between `start` and `end` (unix seconds, inclusive; default: all
   * kept), oldest first. A running sandbox gets a fresh sample first when its
   * newest one is older than the interval.
   */
  async samples(id: string, running: boolean, start?: number, end?: number): Promise<MetricSample[]> {
    const newest = this.series.get(id)?.at(-1);
    const stale = !newest || Date.now() - newest.timestampUnix * 1000 >= Math.max(1000, this.intervalMs || DEFAULT_METRICS_INTERVAL_MS);
    if (running && stale) await this.sample(id);
    const inMemory = this.series.get(id) ?? [];
    // Older than the memory window (or after a restart): the series on disk.
    const fromDisk = this.opts.files && (inMemory.length === 0 || (start ?? 0) < inMemory[0]!.timestampUnix);
    const all = fromDisk ? this.opts.files!.read(id) : inMemory;
    return all.filter((s) => (start === undefined || s.timestampUnix >= start) && (end === undefined || s.timestampUnix <= end));
  }
}
