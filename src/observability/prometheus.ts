import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { SandboxState } from '../core/types.js';
import type { HostCapacity } from './host.js';

/**
 * hearthd's Prometheus metrics (`GET /metrics`; every one is listed with its
 * meaning in docs/observability.md). Labels are bounded: states, operation and
 * step names from the code, route patterns, status codes; never a sandbox id,
 * a key id or a path.
 */

const STATES: readonly SandboxState[] = ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying', 'destroyed', 'failed'];
const DURATION_BUCKETS = [0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const HTTP_BUCKETS = [0.001, 0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 60];

/** An operation or step name as a label: `create (boot)` → `create_boot`; anything odd collapses to `other`. */
export function labelName(s: string): string {
  const v = s.toLowerCase().replace(/[()]/g, '').trim().replace(/[^a-z0-9]+/g, '_').replace(/^_|_$/g, '');
  return v && v.length <= 40 ? v : 'other';
}

export interface LiveView {
  /** Sandboxes per state (all states, destroyed records kept for retention included). */
  countByState(): Record<string, number>;
  /** Memory (MiB) and vCPUs of sandboxes that hold host resources (not paused, not ended). */
  committed(): { memoryMib: number; vcpus: number };
  /** The admission limit for guest memory (MiB). */
  capacityMemoryMib: number | null;
  host(): HostCapacity;
  /** The VMM processes alive: CPU cores busy since the last call, resident bytes. */
  vmms(): { coresInUse: number; residentBytes: number; count: number };
  reconcile(): { at: string; killedVms: number; removedSandboxDirs: number; removedSnapshotDirs: number; errors: number } | null;
  streams(): { eventSubscribers: number; logFollowers: number };
}

export class HearthMetrics {
  readonly registry = new Registry();
  readonly transitions: Counter<'from' | 'to'>;
  readonly events: Counter<'type'>;
  readonly operations: Counter<'op' | 'outcome'>;
  readonly operationSeconds: Histogram<'op' | 'outcome'>;
  readonly stepSeconds: Histogram<'op' | 'step'>;
  readonly refusals: Counter<'operation' | 'reason'>;
  readonly http: Counter<'class' | 'method' | 'route' | 'status'>;
  readonly httpSeconds: Histogram<'class' | 'route'>;
  readonly proxy: Counter<'kind' | 'code'>;
  readonly proxyErrors: Counter<'kind' | 'reason'>;
  readonly upgrades: Counter<'outcome'>;
  readonly logEntries: Counter;
  readonly consoleBytes: Counter;
  readonly samples: Counter<'outcome'>;

  constructor(build: Record<string, string>, view: LiveView) {
    const registers = [this.registry];
    new Gauge({ name: 'hearth_build_info', help: 'hearthd build and drivers: always 1, facts in labels', labelNames: Object.keys(build), registers }).set(build, 1);
    new Gauge({
      name: 'hearth_sandboxes', help: 'Sandboxes by state (destroyed: records kept for the retention period)', labelNames: ['state'], registers,
      collect() {
        const counts = view.countByState();
        for (const s of STATES) this.set({ state: s }, counts[s] ?? 0);
      },
    });
    this.transitions = new Counter({ name: 'hearth_sandbox_transitions_total', help: 'Sandbox state changes, by from and to state', labelNames: ['from', 'to'], registers });
    this.events = new Counter({ name: 'hearth_sandbox_events_total', help: 'Events published on GET /events, by type', labelNames: ['type'], registers });
    this.operations = new Counter({ name: 'hearth_lifecycle_operations_total', help: 'Lifecycle operations finished, by operation and outcome (ok, failed)', labelNames: ['op', 'outcome'], registers });
    this.operationSeconds = new Histogram({ name: 'hearth_lifecycle_operation_duration_seconds', help: 'Duration of lifecycle operations, by operation and outcome', labelNames: ['op', 'outcome'], buckets: DURATION_BUCKETS, registers });
    this.stepSeconds = new Histogram({ name: 'hearth_lifecycle_step_duration_seconds', help: 'Duration of each step of a lifecycle operation (slot, disk, boot, restore, agent, init, snapshot, stop …)', labelNames: ['op', 'step'], buckets: DURATION_BUCKETS, registers });
    this.refusals = new Counter({ name: 'hearth_admission_refusals_total', help: 'Creates, resumes, connects and forks refused before any work, by operation and reason (capacity, invalid_argument, idempotency_mismatch, conflict, not_found)', labelNames: ['operation', 'reason'], registers });
    this.http = new Counter({ name: 'hearth_http_requests_total', help: 'HTTP requests answered, by class (api, public, dashboard, envd, port, refused), method, route pattern and status', labelNames: ['class', 'method', 'route', 'status'], registers });
    this.httpSeconds = new Histogram({ name: 'hearth_http_request_duration_seconds', help: 'Time to the end of the answer (streams: their whole life), by class and route pattern', labelNames: ['class', 'route'], buckets: HTTP_BUCKETS, registers });
    this.proxy = new Counter({ name: 'hearth_proxy_requests_total', help: 'Requests through the envd and port proxies, by proxy and status class (2xx … 5xx; cut: the connection closed before the answer ended)', labelNames: ['kind', 'code'], registers });
    this.proxyErrors = new Counter({ name: 'hearth_proxy_errors_total', help: 'Proxied requests that failed on hearthd\'s side: the sandbox or its port unreachable (502/503/504) or the stream cut', labelNames: ['kind', 'reason'], registers });
    this.upgrades = new Counter({ name: 'hearth_proxy_websocket_upgrades_total', help: 'WebSocket upgrades through the port proxy, by outcome (proxied, refused)', labelNames: ['outcome'], registers });
    this.logEntries = new Counter({ name: 'hearth_sandbox_log_entries_total', help: 'Lines written to per-sandbox logs (console, agent, lifecycle)', registers });
    this.consoleBytes = new Counter({ name: 'hearth_console_bytes_read_total', help: 'Bytes copied from guests\' serial consoles into their logs', registers });
    this.samples = new Counter({ name: 'hearth_sandbox_metric_samples_total', help: 'Per-sandbox metric samples taken (GET /sandboxes/{id}/metrics), by outcome (ok, no_answer)', labelNames: ['outcome'], registers });

    const g = (name: string, help: string, value: () => number | null): void => {
      new Gauge({ name, help, registers, collect() { const v = value(); if (v !== null) this.set(v); } });
    };
    let host: HostCapacity | null = null;
    let vmms = { coresInUse: 0, residentBytes: 0, count: 0 };
    // Read once per scrape, before the gauges that use it (collect runs in registration order).
    new Gauge({ name: 'hearth_host_cpus', help: 'CPUs of the host', registers, collect() { host = view.host(); vmms = view.vmms(); this.set(host.cpus); } });
    g('hearth_host_memory_bytes', 'Memory of the host', () => host?.memoryTotalBytes ?? null);
    g('hearth_host_memory_available_bytes', 'Memory the host could still give (MemAvailable)', () => host?.memoryAvailableBytes ?? null);
    g('hearth_datadir_size_bytes', 'Size of the data dir\'s filesystem', () => host?.dataDirTotalBytes ?? null);
    g('hearth_datadir_free_bytes', 'Free space of the data dir\'s filesystem (for unprivileged users)', () => host?.dataDirFreeBytes ?? null);
    g('hearth_capacity_memory_bytes', 'Guest memory hearthd admits at most (host RAM × memoryOvercommit)', () => (view.capacityMemoryMib === null ? null : view.capacityMemoryMib * 1048576));
    g('hearth_guest_memory_committed_bytes', 'Guest memory of sandboxes holding host resources (creating, running, pausing, resuming, destroying); admission compares it with the capacity', () => view.committed().memoryMib * 1048576);
    g('hearth_guest_vcpus_committed', 'vCPUs of sandboxes holding host resources', () => view.committed().vcpus);
    g('hearth_vmm_processes', 'VMM processes of running sandboxes', () => vmms.count);
    g('hearth_vmm_cpu_cores_in_use', 'Host CPU cores the VMM processes used, averaged since the previous scrape', () => vmms.coresInUse);
    g('hearth_vmm_resident_memory_bytes', 'Resident memory of the VMM processes on the host', () => vmms.residentBytes);
    g('hearth_reconcile_last_run_timestamp_seconds', 'When the last reconcile ran (unix seconds)', () => { const r = view.reconcile(); return r ? Date.parse(r.at) / 1000 : null; });
    new Gauge({
      name: 'hearth_reconcile_last_findings', help: 'What the last reconcile found and fixed, by kind (killed_vms, removed_sandbox_dirs, removed_snapshot_dirs, errors)', labelNames: ['kind'], registers,
      collect() {
        const r = view.reconcile();
        if (!r) return;
        this.set({ kind: 'killed_vms' }, r.killedVms);
        this.set({ kind: 'removed_sandbox_dirs' }, r.removedSandboxDirs);
        this.set({ kind: 'removed_snapshot_dirs' }, r.removedSnapshotDirs);
        this.set({ kind: 'errors' }, r.errors);
      },
    });
    g('hearth_event_stream_subscribers', 'Open GET /events streams', () => view.streams().eventSubscribers);
    g('hearth_log_followers', 'Open GET /sandboxes/{id}/logs?follow streams', () => view.streams().logFollowers);
  }

  text(): Promise<string> { return this.registry.metrics(); }
  get contentType(): string { return this.registry.contentType; }
}
