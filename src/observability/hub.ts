import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import type { FastifyBaseLogger } from 'fastify';
import type { SandboxManager } from '../core/manager.js';
import type { SandboxRecord, SandboxState } from '../core/types.js';
import { TRANSITION_CHANNEL, type TransitionMessage } from '../core/state.js';
import { STEPS_CHANNEL, type StepsMessage } from '../core/steps.js';
import type { Store } from '../store/store.js';
import type { HostFields, MetricSample } from '../api/metrics.js';
import { ConsoleTailer, DEFAULT_CONSOLE_MAX_BYTES } from './console-tail.js';
import { EventBus, eventOf } from './events.js';
import { hostCapacity, ProcCpuMeter, procStats } from './host.js';
import { SandboxLogStore, redactor, type LogEntry } from './logs.js';
import { HearthMetrics, labelName } from './prometheus.js';
import { SampleFiles } from './sample-store.js';

/**
 * The observability of one hearthd (docs/observability.md): the event stream,
 * per-sandbox logs (console, agent, lifecycle) and metric sample files under
 * `<dataDir>/observe/<id>/`, the Prometheus registry, and the access log. It
 * listens to the core's transition and step channels (src/core/state.ts,
 * src/core/steps.ts), keeping only its own daemon's (by store and logger).
 */
export interface ObservabilityOptions {
  store: Store;
  manager: Pick<SandboxManager, 'list' | 'get' | 'diskUsage' | 'lastReconcileReport'>;
  log: FastifyBaseLogger;
  /** The data dir: logs and samples under `observe/`, consoles under `sandboxes/`; null: in memory, no consoles. */
  dataDir: string | null;
  /** Guest memory admitted at most (MiB), for hearth_capacity_memory_bytes. */
  capacityMemoryMib?: number | null;
  /** Labels of hearth_build_info. */
  build?: Record<string, string>;
  logFileBytes?: number;
  logKeepFiles?: number;
  consoleMaxBytes?: number;
  /** How often consoles are copied into the logs (ms; 0: only when a sandbox pauses or ends). */
  tailIntervalMs?: number;
  /** One access-log line per request (default true). */
  accessLog?: boolean;
}

const ACTIVE: readonly SandboxState[] = ['creating', 'running', 'pausing', 'resuming', 'destroying'];
/** The observe dirs of sandboxes whose record is gone are removed this often (and at start). */
const SWEEP_MS = 10 * 60_000;

export type RequestClass = 'api' | 'public' | 'dashboard' | 'envd' | 'port' | 'refused' | 'forwarded';
export interface RequestTrack { cls: RequestClass; route: string; keyId: string | null }

export class Observability {
  readonly events = new EventBus();
  readonly logs: SandboxLogStore;
  readonly samples: SampleFiles | null;
  readonly metrics: HearthMetrics;
  private readonly tailer: ConsoleTailer | null;
  private readonly redactors = new Map<string, (l: string) => string>();
  private readonly cpu = new ProcCpuMeter();
  private readonly scrapeCpu = new ProcCpuMeter();
  private readonly access: FastifyBaseLogger | null;
  private timers: NodeJS.Timeout[] = [];
  private lastLogWritten = 0;
  private lastConsoleBytes = 0;

  constructor(private readonly opts: ObservabilityOptions) {
    const observeDir = opts.dataDir ? join(opts.dataDir, 'observe') : null;
    this.logs = new SandboxLogStore({ dir: observeDir, ...(opts.logFileBytes ? { maxFileBytes: opts.logFileBytes } : {}), ...(opts.logKeepFiles !== undefined ? { keepFiles: opts.logKeepFiles } : {}) });
    this.samples = observeDir ? new SampleFiles(this.logs) : null;
    this.tailer = opts.dataDir ? new ConsoleTailer(join(opts.dataDir, 'sandboxes'), this.logs, opts.consoleMaxBytes ?? DEFAULT_CONSOLE_MAX_BYTES) : null;
    this.access = opts.accessLog === false ? null : opts.log.child({ component: 'access' });
    this.metrics = new HearthMetrics(opts.build ?? {}, {
      countByState: () => {
        const out: Record<string, number> = {};
        for (const s of opts.store.listSandboxes({ states: ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying', 'destroyed', 'failed'] })) out[s.state] = (out[s.state] ?? 0) + 1;
        return out;
      },
      committed: () => opts.manager.list(ACTIVE).reduce((a, s) => ({ memoryMib: a.memoryMib + s.memoryMib, vcpus: a.vcpus + s.vcpus }), { memoryMib: 0, vcpus: 0 }),
      capacityMemoryMib: opts.capacityMemoryMib ?? null,
      host: () => hostCapacity(opts.dataDir),
      vmms: () => {
        let cores = 0; let rss = 0; let count = 0;
        const pids = new Set<number>();
        for (const s of opts.manager.list(['running'])) {
          if (!s.vmm) continue;
          const st = procStats(s.vmm.pid);
          if (!st) continue;
          pids.add(s.vmm.pid);
          count++;
          rss += st.rssBytes;
          const pct = this.scrapeCpu.percent(s.vmm.pid, 1, st);
          if (pct !== null) cores += pct / 100;
        }
        this.scrapeCpu.forgetExcept(pids);
        return { coresInUse: Math.round(cores * 1000) / 1000, residentBytes: rss, count };
      },
      reconcile: () => {
        const r = opts.manager.lastReconcileReport();
        return r ? { at: r.at, killedVms: r.killedVms.length, removedSandboxDirs: r.removedSandboxDirs.length, removedSnapshotDirs: r.removedSnapshotDirs.length, errors: r.errors.length } : null;
      },
      streams: () => ({ eventSubscribers: this.events.subscribers, logFollowers: this.logs.followerCount }),
    });
    subscribe(TRANSITION_CHANNEL, this.onTransition);
    subscribe(STEPS_CHANNEL, this.onSteps);
  }

  /** Starts the console tailer and the sweep of logs whose sandbox record is gone. */
  start(): void {
    if (this.timers.length) return;
    const every = this.opts.tailIntervalMs ?? 1000;
    if (this.tailer && every > 0) {
      const t = setInterval(() => this.tailAll(), every);
      t.unref();
      this.timers.push(t);
    }
    this.sweep();
    const s = setInterval(() => this.sweep(), SWEEP_MS);
    s.unref();
    this.timers.push(s);
  }

  close(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    unsubscribe(TRANSITION_CHANNEL, this.onTransition);
    unsubscribe(STEPS_CHANNEL, this.onSteps);
  }

  // ------------------------------------------------------------ core channels

  private readonly onTransition = (message: unknown): void => {
    const m = message as TransitionMessage;
    if (m.store !== this.opts.store) return;
    try {
      const { rec, from, to } = m;
      if (to === 'pausing' || to === 'destroying') { this.tail(rec, true); if (rec.vmm) this.cpu.forget(rec.vmm.pid); }
      const e = this.events.publish((id) => eventOf(id, rec, from, to));
      this.metrics.transitions.inc({ from, to });
      this.metrics.events.inc({ type: e.type });
      const who = e.keyId ? ` (API key ${e.keyId})` : '';
      this.appendHearth(rec.id, to === 'failed' ? 'error' : 'info', `${from} → ${to}: ${e.reason}${who}`);
      if (to === 'destroyed' || to === 'failed' || to === 'paused') { this.tailer?.forget(rec.id); this.redactors.delete(rec.id); }
    } catch (err) {
      this.opts.log.warn({ err: String(err) }, 'observability: a transition was not recorded');
    }
  };

  private readonly onSteps = (message: unknown): void => {
    const m = message as StepsMessage;
    if ((m.log as unknown) !== this.opts.log) return;
    try {
      const op = labelName(m.op);
      this.metrics.operations.inc({ op, outcome: m.outcome });
      this.metrics.operationSeconds.observe({ op, outcome: m.outcome }, m.totalMs / 1000);
      for (const [step, ms] of m.steps) this.metrics.stepSeconds.observe({ op, step: labelName(step) }, ms / 1000);
      const id = m.subject.split(' ')[0] ?? '';
      if (id && this.opts.store.getSandbox(id)) {
        const steps = m.steps.map(([s, ms]) => `${s} ${ms} ms`).join(', ');
        this.appendHearth(id, m.outcome === 'ok' ? 'info' : 'error', `${m.op} ${m.outcome} in ${m.totalMs} ms${steps ? `: ${steps}` : ''}`);
      }
    } catch (err) {
      this.opts.log.warn({ err: String(err) }, 'observability: an operation was not recorded');
    }
  };

  private appendHearth(id: string, level: LogEntry['level'], line: string): void {
    this.logs.append(id, [{ timestamp: new Date().toISOString(), source: 'hearth', level, line }]);
    this.countLogs();
  }

  private countLogs(): void {
    const w = this.logs.written;
    if (w > this.lastLogWritten) { this.metrics.logEntries.inc(w - this.lastLogWritten); this.lastLogWritten = w; }
    const b = this.tailer?.bytesRead ?? 0;
    if (b > this.lastConsoleBytes) { this.metrics.consoleBytes.inc(b - this.lastConsoleBytes); this.lastConsoleBytes = b; }
  }

  // ------------------------------------------------------------ consoles

  private redactorOf(rec: SandboxRecord): (l: string) => string {
    let r = this.redactors.get(rec.id);
    if (!r) {
      r = redactor([rec.agentToken, rec.netPolicy.trafficToken ?? '', ...Object.values(rec.envVars)]);
      if (rec.agentToken) this.redactors.set(rec.id, r); // ended records hold no secrets: build it again next time
    }
    return r;
  }

  private tail(rec: SandboxRecord, final = false): void {
    if (!this.tailer) return;
    try {
      this.tailer.drain({ id: rec.id, redact: this.redactorOf(rec) }, final);
    } catch (err) {
      this.opts.log.debug({ sandbox: rec.id, err: String(err) }, 'observability: console not read');
    }
  }

  /** Copies every active sandbox's new console lines into its log now. */
  tailAll(): void {
    for (const s of this.opts.manager.list(ACTIVE)) this.tail(s);
    this.countLogs();
  }

  // ------------------------------------------------------------ retention

  /** Removes the logs and samples of sandboxes whose record is gone (purged after retention). */
  sweep(): string[] {
    const removed: string[] = [];
    for (const id of this.logs.ids()) {
      if (this.opts.store.getSandbox(id)) continue;
      this.logs.remove(id);
      this.samples?.forget(id);
      removed.push(id);
    }
    return removed;
  }

  // ------------------------------------------------------------ per-sandbox host view

  /** What the host sees of a running sandbox (VMM process CPU and memory, disk blocks). */
  async hostFields(rec: SandboxRecord): Promise<HostFields> {
    const st = rec.vmm ? procStats(rec.vmm.pid) : null;
    const pct = rec.vmm ? this.cpu.percent(rec.vmm.pid, rec.vcpus, st) : null;
    const disk = await this.opts.manager.diskUsage(rec.id).catch(() => null);
    return { hostCpuUsedPct: pct, hostMemRss: st?.rssBytes ?? null, hostDiskUsed: disk };
  }

  onSample(ok: boolean): void { this.metrics.samples.inc({ outcome: ok ? 'ok' : 'no_answer' }); }

  sampleSink(): { append(id: string, s: MetricSample): void; read(id: string): MetricSample[] } | undefined {
    return this.samples ?? undefined;
  }

  // ------------------------------------------------------------ requests

  /** Starts tracking one request: one access-log line and the HTTP metrics when its answer ends. */
  beginRequest(req: IncomingMessage, res: ServerResponse): RequestTrack {
    const t0 = performance.now();
    const track: RequestTrack = { cls: 'api', route: 'unmatched', keyId: null };
    res.once('close', () => {
      const ms = performance.now() - t0;
      const cut = !res.writableFinished;
      const status = res.statusCode;
      const method = (req.method ?? 'GET').toUpperCase();
      this.metrics.http.inc({ class: track.cls, method: labelMethod(method), route: track.route, status: String(status) });
      this.metrics.httpSeconds.observe({ class: track.cls, route: track.route }, ms / 1000);
      if (track.cls === 'envd' || track.cls === 'port') {
        this.metrics.proxy.inc({ kind: track.cls, code: cut ? 'cut' : `${Math.floor(status / 100)}xx` });
        if (cut) this.metrics.proxyErrors.inc({ kind: track.cls, reason: 'cut' });
        else if (status === 502 || status === 503 || status === 504) this.metrics.proxyErrors.inc({ kind: track.cls, reason: `http_${status}` });
      }
      // No query string (signed URLs carry signatures), no headers, no bodies: nothing secret.
      this.access?.info({
        method, route: track.route, path: pathOf(req.url), status, durationMs: Math.round(ms * 10) / 10, class: track.cls,
        keyId: track.keyId, remote: req.socket.remoteAddress ?? null, ...(cut ? { cut: true } : {}),
      }, `${method} ${pathOf(req.url)} ${status} ${Math.round(ms)} ms`);
    });
    return track;
  }

  /** A create, resume, connect or fork refused before any work. */
  refused(operation: string, reason: string): void {
    this.metrics.refusals.inc({ operation, reason });
  }
}

function pathOf(url: string | undefined): string {
  const u = url ?? '/';
  const q = u.indexOf('?');
  const p = q === -1 ? u : u.slice(0, q);
  return p.length > 300 ? `${p.slice(0, 300)}…` : p;
}

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
function labelMethod(m: string): string { return METHODS.has(m) ? m : 'OTHER'; }
