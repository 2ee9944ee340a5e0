/**
 * One Firecracker microVM (the `Vmm` seam: docs/ARCHITECTURE.md, "Seams"). See
 * docs/firecracker.md for the process model, the file layout and the
 * snapshot mechanics, and its last section for Firecracker's behaviour.
 *
 * Process model: Firecracker is spawned detached (own session), stdout to the
 * VM's console log (guest serial), stderr to <runDir>/firecracker.stderr.log,
 * and unref'd, so it outlives the daemon; it is configured over its API
 * socket in the VM root. <runDir>/firecracker.json records what a later
 * daemon needs to adopt it (FirecrackerDriver.adopt).
 *
 * Memory: boot uses anonymous guest memory (VmConfig.memoryFilePath is not
 * used). A restore maps the snapshot's memory file privately (File backend:
 * the file must stay in place, unmodified, while the VM lives; clones share
 * its page cache) or serves it through the userfaultfd page server (Uffd
 * backend, src/memory/uffd/), which then must outlive the VM's faults.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants as fsConstants, openSync } from 'node:fs';
import { access, chown, mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import {
  AbortedError, ConflictError, HearthError, HostFailureError, TimeoutError, errorMessage, throwIfAborted,
} from '../../core/errors.js';
import { cloneFile } from '../../memory/memory-file.js';
import { UffdPageServer, type PageServerOptions, type PageServerStats } from '../../memory/uffd/page-server.js';
import { WORKING_SET_FILE } from '../../memory/uffd/working-set.js';
import { readProcCmdline, readProcStat, tailFile, watchPidExit } from '../qemu/process.js';
import type { ExitInfo, SnapshotFiles, SnapshotWritten, VmConfig, Vmm } from '../types.js';
import type { Logger, MmdsContents } from './api-types.js';
import { FirecrackerClient, FirecrackerUnreachableError } from './client.js';
import {
  NET_IFACE_ID, ROOT, ROOT_DRIVE_ID, planBoot, planLoad, planSnapshot, validateVmConfig,
  type FirecrackerBootOptions, type FirecrackerVmConfig,
} from './config.js';
import { copySparse, moveOut, present, stageFile, unstage } from './jail.js';
import { idFromArgv, launchCommand, vmLayout, type Isolation, type JailerSettings, type VmLayout } from './layout.js';
import { SNAPSHOT_META_FILE, readSnapshotMeta, writeSnapshotMeta, type FirecrackerSnapshotMeta } from './snapshot-meta.js';
import { checkSupported, featuresOf, snapshotCompatible, type FirecrackerFeatures, type FirecrackerVersionInfo } from './version.js';
import { VsockHttpClient } from './vsock.js';
import { exitedWithin } from '../exit.js';
import { sleep } from '../../util/abort.js';

export type MemoryBackendKind = 'file' | 'uffd';

/** Everything a FirecrackerVmm needs from its driver (FirecrackerDriver resolves the options). */
export interface FirecrackerSettings {
  firecrackerBinary: string;
  isolation: Isolation;
  mountnsRoot: string;
  jailer?: JailerSettings;
  netnsDir: string;
  enablePci: boolean;
  resolveVersion(signal?: AbortSignal): Promise<FirecrackerVersionInfo>;
  memoryBackend: MemoryBackendKind;
  uffd: {
    acceptTimeoutMs: number;
    populate: 'on-demand' | 'background';
    detachWhenPopulated: boolean;
    recordWorkingSet: boolean;
    recordMaxMs: number;
    zeroPages: 'holes' | 'none';
  };
  /** Dirty-page tracking from boot/restore on; `snapshot(…, 'diff')` writes a Diff. */
  diffSnapshots: boolean;
  hugePages: 'None' | '2M';
  driveCache: 'Unsafe' | 'Writeback';
  ioEngine: 'Sync' | 'Async';
  guestCid: number;
  entropy: boolean;
  mmds: boolean;
  logLevel: NonNullable<Logger['level']>;
  metrics: boolean;
  allowNoNetwork: boolean;
  /** The agent's vsock port (for `agentClient()`). */
  agentVsockPort: number;
  apiTimeoutMs: number;
  startTimeoutMs: number;
  snapshotTimeoutMs: number;
  restoreTimeoutMs: number;
  /** stop(): bound after SendCtrlAltDel (0 = skip it), after SIGTERM, after SIGKILL (ms). */
  stopCtrlAltDelMs: number;
  stopTermMs: number;
  stopKillMs: number;
  onStep?: (sandboxId: string, op: string, step: string, ms: number) => void;
  log?: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
}

/** <runDir>/firecracker.json: the driver's own record of a running VM. */
export interface FirecrackerVmRecord {
  format: 1;
  sandboxId: string;
  id: string;
  mode: Isolation;
  root: string;
  apiSocket: string;
  consoleLog: string;
  chrootDir?: string;
  cgroupDir?: string;
  pid: number;
  startTime: string;
  firecrackerVersion: string;
  memoryBackend: 'boot' | MemoryBackendKind;
  /** Uffd: the page server handed the memory back to the kernel (the VM no longer needs it). */
  uffdDetached?: boolean;
  restoredFrom?: { dir: string; memoryPath: string };
  tapName?: string;
  vcpus: number;
  memoryMib: number;
  mounts: string[];
}

type Phase = 'new' | 'starting' | 'running' | 'failed' | 'stopped';
const MiB = 1024 * 1024;

export class FirecrackerVmm implements Vmm {
  readonly kind = 'firecracker' as const;
  private phase: Phase = 'new';
  private _pid = 0;
  private child: ChildProcess | undefined;
  /** Set when the pid is not our child (adopted, or the jailer's --new-pid-ns): guards signals against pid reuse. */
  private foreignStartTime: string | undefined;
  private watch: { cancel(): void } | undefined;
  private client: FirecrackerClient | undefined;
  private layout: VmLayout | undefined;
  private cfg: FirecrackerVmConfig | undefined;
  private version: FirecrackerVersionInfo | undefined;
  private features: FirecrackerFeatures | undefined;
  private vmState: 'Not started' | 'Running' | 'Paused' = 'Not started';
  private record: FirecrackerVmRecord | undefined;
  private mounts: string[] = [];
  private pageServer: UffdPageServer | undefined;
  private restoredFrom: { dir: string; memoryPath: string; meta?: FirecrackerSnapshotMeta } | undefined;
  /**
   * The memory file equal to guest RAM as of the last dirty-bitmap reset (the
   * load, or the last snapshot); undefined after a fresh boot (the bitmap then
   * covers every page ever written). A Diff is written onto a copy of it.
   */
  private diffBase: string | undefined;
  private forceFullUntilSnapshot = false;
  private vsockClient: VsockHttpClient | undefined;
  private exitInfo: ExitInfo | undefined;
  private resolveExited!: (info: ExitInfo) => void;
  readonly exited: Promise<ExitInfo>;
  private stopping: Promise<void> | undefined;
  private _failure: Error | undefined;
  /** Durations (ms) of the last boot/restore/snapshot/stop steps. */
  readonly timings: Record<string, number> = {};

  constructor(private readonly settings: FirecrackerSettings) {
    this.exited = new Promise((resolve) => { this.resolveExited = resolve; });
  }

  get pid(): number { return this._pid; }
  get sandboxId(): string | undefined { return this.cfg?.sandboxId; }
  get runDir(): string | undefined { return this.cfg?.runDir; }
  get hasExited(): boolean { return this.exitInfo !== undefined; }
  /** Host path of the VM root (Firecracker's cwd). */
  get rootDir(): string | undefined { return this.layout?.root; }
  /** Host path of the hybrid-vsock socket (`CONNECT <port>` here reaches the guest). */
  get vsockPath(): string | undefined { return this.layout ? path.join(this.layout.root, ROOT.vsock) : undefined; }
  get apiSocketPath(): string | undefined { return this.layout?.apiSocket; }
  get firecrackerVersion(): string | undefined { return this.version?.text; }
  /** Why the VM was killed by the driver itself (e.g. its page server died), if it was. */
  get failure(): Error | undefined { return this._failure; }
  /** The VM's state as the driver last saw it. */
  get state(): 'Not started' | 'Running' | 'Paused' { return this.vmState; }
  /** The API client (for calls the Vmm seam has no method for: balloon, metrics, …). */
  get api(): FirecrackerClient | undefined { return this.client; }

  /** HTTP to the guest agent over vsock; reset after every snapshot/restore by the driver. */
  agentClient(port = this.settings.agentVsockPort): VsockHttpClient {
    const p = this.vsockPath;
    if (!p) throw new HostFailureError('the VM has not been started');
    if (port === this.settings.agentVsockPort) return (this.vsockClient ??= new VsockHttpClient(p, port));
    return new VsockHttpClient(p, port);
  }

  /** Page-server statistics (Uffd restores only). */
  pageServerStats(): PageServerStats | undefined { return this.pageServer?.stats(); }

  /**
   * Tells the driver the guest is ready (the agent answered): stops recording
   * the working set of a Uffd restore and saves it beside the snapshot. Also
   * happens by itself after `uffd.recordMaxMs`.
   */
  async markReady(): Promise<void> {
    await this.pageServer?.stopRecording().catch((err: unknown) => this.settings.log?.('warn', `cannot save the working set: ${errorMessage(err)}`));
  }

  // ---------------------------------------------------------------- boot

  async boot(cfg: VmConfig, signal: AbortSignal): Promise<void> {
    const c = cfg as FirecrackerVmConfig;
    this.claim(c);
    const t0 = performance.now();
    try {
      const features = await this.detect(signal);
      const plan = planBoot(c, this.bootOptions(features));
      await checkReadable(c.kernelPath, 'kernel');
      if (c.initrdPath) await checkReadable(c.initrdPath, 'initrd');
      await checkReadable(c.rootfsPath, 'root disk', true);
      let t = performance.now();
      await this.prepareRoot(c);
      await this.stage({ name: ROOT.kernel, source: c.kernelPath, large: false, writable: false });
      if (c.initrdPath) await this.stage({ name: ROOT.initrd, source: c.initrdPath, large: false, writable: false });
      await this.stage({ name: ROOT.rootfs, source: c.rootfsPath, large: true, writable: true });
      this.step('boot', 'prepare', t);
      await this.start(c, signal, 'boot');
      const api = this.client!;
      t = performance.now();
      await this.configureLogging(plan.logger, plan.metrics, signal);
      await api.request('put', '/machine-config', undefined, plan.machine, { signal });
      await api.request('put', '/boot-source', undefined, plan.bootSource, { signal });
      for (const d of plan.drives) await api.request('put', '/drives/{drive_id}', { drive_id: d.drive_id }, d, { signal });
      for (const n of plan.nets) await api.request('put', '/network-interfaces/{iface_id}', { iface_id: n.iface_id }, n, { signal });
      await api.request('put', '/vsock', undefined, plan.vsock, { signal });
      if (plan.entropy) await api.request('put', '/entropy', undefined, plan.entropy, { signal });
      if (plan.mmdsConfig) await api.request('put', '/mmds/config', undefined, plan.mmdsConfig, { signal });
      if (plan.mmds) await api.request('put', '/mmds', undefined, plan.mmds, { signal });
      this.step('boot', 'configure', t);
      t = performance.now();
      await api.request('put', '/actions', undefined, { action_type: 'InstanceStart' }, { signal, timeoutMs: Math.max(this.settings.apiTimeoutMs, 10_000) });
      this.vmState = 'Running';
      this.step('boot', 'start', t);
      this.phase = 'running';
      await this.writeRecord('boot');
      this.step('boot', 'total', t0);
    } catch (err) {
      await this.failStart();
      throw wrap(err, `boot of sandbox ${c.sandboxId}`);
    }
  }

  // ---------------------------------------------------------------- restore

  async restore(snap: SnapshotFiles, cfg: VmConfig, signal: AbortSignal): Promise<void> {
    const c = cfg as FirecrackerVmConfig;
    this.claim(c);
    const t0 = performance.now();
    const s = this.settings;
    try {
      const features = await this.detect(signal);
      validateVmConfig(c, { allowNoNetwork: s.allowNoNetwork, hugePages: s.hugePages });
      const meta = await readSnapshotMeta(snap.dir);
      await this.checkSnapshot(snap, c, meta);
      await checkReadable(c.rootfsPath, 'root disk', true);
      let t = performance.now();
      await this.prepareRoot(c);
      await this.stage({ name: ROOT.rootfs, source: c.rootfsPath, large: true, writable: true });
      // Kernel and initrd are not needed to restore (only recorded); staged anyway so that the root looks the same.
      if (c.kernelPath) await this.stage({ name: ROOT.kernel, source: c.kernelPath, large: false, writable: false }).catch(() => undefined);
      let statePath = snap.statePath;
      let memPath = snap.memoryPath;
      if (this.layout!.mode === 'jailer') {
        statePath = `${ROOT.snapshotIn}/vmstate`;
        await this.stage({ name: statePath, source: snap.statePath, large: false, writable: false });
        if (s.memoryBackend === 'file') {
          memPath = `${ROOT.snapshotIn}/memory`;
          await this.stage({ name: memPath, source: snap.memoryPath, large: true, writable: false });
        }
      }
      this.step('restore', 'prepare', t);
      await this.start(c, signal, 'restore');
      const api = this.client!;
      await this.configureLogging(
        { log_path: ROOT.log, level: s.logLevel, show_level: true, show_log_origin: false },
        s.metrics ? { metrics_path: ROOT.metrics } : undefined,
        signal,
      );
      let backend: { type: 'File' | 'Uffd'; path: string } = { type: 'File', path: memPath };
      if (s.memoryBackend === 'uffd') {
        t = performance.now();
        await this.startPageServer(snap);
        backend = { type: 'Uffd', path: this.layout!.mode === 'jailer' ? ROOT.uffdSocket : path.join(this.layout!.root, ROOT.uffdSocket) };
        this.step('restore', 'page-server', t);
      }
      const body = planLoad({
        features,
        snapshotPath: statePath,
        backend,
        trackDirtyPages: s.diffSnapshots,
        recorded: { tapName: meta?.tapName, vsockPath: meta?.vsock.udsPath },
        tapName: c.network.kind === 'tap' ? c.network.tapName : undefined,
        resume: true,
      });
      t = performance.now();
      const load = api.request('put', '/snapshot/load', undefined, body, { signal, timeoutMs: s.restoreTimeoutMs });
      if (this.pageServer) {
        const ps = this.pageServer;
        const failed = new Promise<never>((_, reject) => { ps.once('failed', (e: Error) => reject(e)); });
        failed.catch(() => {});
        await Promise.race([load, failed]);
      } else {
        await load;
      }
      this.vmState = 'Running';
      this.step('restore', 'load', t);
      if (s.mmds && c.network.kind === 'tap') {
        // The MMDS data store is not part of a snapshot (docs/firecracker.md, "After a restore").
        const data: MmdsContents = c.mmds ?? { instanceID: c.sandboxId };
        await api.request('put', '/mmds', undefined, data, { signal });
      }
      this.restoredFrom = { dir: snap.dir, memoryPath: snap.memoryPath, meta };
      this.diffBase = snap.memoryPath;
      this.phase = 'running';
      await this.writeRecord(s.memoryBackend);
      this.vsockClient?.reset();
      this.step('restore', 'total', t0);
    } catch (err) {
      await this.failStart();
      throw wrap(err, `restore of sandbox ${c.sandboxId} from ${snap.dir}`);
    }
  }

  // ---------------------------------------------------------------- pause / resume

  async pause(signal: AbortSignal): Promise<void> {
    const t0 = performance.now();
    try {
      const api = this.requireApi('pause');
      await api.request('patch', '/vm', undefined, { state: 'Paused' }, { signal });
      this.vmState = 'Paused';
    } catch (err) {
      throw wrap(err, `pause of sandbox ${this.cfg?.sandboxId}`);
    }
    this.step('pause', 'patch', t0);
  }

  async resume(signal: AbortSignal): Promise<void> {
    const t0 = performance.now();
    try {
      const api = this.requireApi('resume');
      await api.request('patch', '/vm', undefined, { state: 'Resumed' }, { signal });
      this.vmState = 'Running';
      // After a snapshot the guest resets every vsock connection when it runs again.
      this.vsockClient?.reset();
    } catch (err) {
      throw wrap(err, `resume of sandbox ${this.cfg?.sandboxId}`);
    }
    this.step('resume', 'patch', t0);
  }

  /** GET / — Firecracker's view of the instance. */
  async describe(signal?: AbortSignal) {
    const info = await this.requireApi('describe').describe({ signal });
    this.vmState = info.state;
    return info;
  }

  // ---------------------------------------------------------------- snapshot

  /**
   * Writes <dir>/vmstate and <dir>/memory (plus firecracker.json), and reports
   * the three in `files`. The VM is
   * paused first if it runs and stays paused, also on failure: the caller
   * resumes it (its vsock connections are then reset) or stops it.
   *
   * 'diff' (with diffSnapshots enabled) writes only the pages dirtied since
   * the last snapshot or load, onto a copy (reflink where possible) of the
   * memory file the VM was restored from, so the result is a complete memory
   * file; a VM that booted fresh gets a sparse file whose holes are pages
   * never written (resumable by itself). Otherwise 'diff' writes a Full.
   */
  async snapshot(dir: string, kind: 'full' | 'diff', signal: AbortSignal): Promise<SnapshotWritten> {
    const api = this.requireApi('snapshot');
    const cfg = this.cfg!;
    const layout = this.layout!;
    const s = this.settings;
    const t0 = performance.now();
    throwIfAborted(signal);
    await mkdir(dir, { recursive: true });
    const statePath = path.join(dir, 'vmstate');
    const memoryPath = path.join(dir, 'memory');
    const type: 'Full' | 'Diff' = kind === 'diff' && s.diffSnapshots && !this.forceFullUntilSnapshot ? 'Diff' : 'Full';
    const jailed = layout.mode === 'jailer';
    const outDir = jailed ? path.join(layout.root, ROOT.snapshotOut) : dir;
    const outState = path.join(outDir, 'vmstate');
    const outMem = path.join(outDir, 'memory');
    const apiState = jailed ? `${ROOT.snapshotOut}/vmstate` : outState;
    const apiMem = jailed ? `${ROOT.snapshotOut}/memory` : outMem;
    const memoryComplete = true;
    try {
      const info = await this.describe(signal);
      if (info.state === 'Running') await this.pause(signal);
      else if (info.state !== 'Paused') throw new HostFailureError(`the VM is '${info.state}'`);
      let t = performance.now();
      if (jailed) {
        await rm(outDir, { recursive: true, force: true });
        await mkdir(outDir, { recursive: true });
        await chown(outDir, s.jailer!.uid, s.jailer!.gid);
      }
      await rm(outState, { force: true });
      await rm(outMem, { force: true });
      if (type === 'Diff' && this.diffBase) {
        // Firecracker writes the dirty pages in place into an existing file of the right size (≥1.6).
        const how = await cloneFile(this.diffBase, outMem).catch((err: unknown) => {
          throw new HostFailureError(`the base for a Diff snapshot, ${this.diffBase}, cannot be copied (${errorMessage(err)}); take a full snapshot`, { cause: err });
        });
        if (jailed) await chown(outMem, s.jailer!.uid, s.jailer!.gid);
        this.step('snapshot', how === 'reflink' ? 'base-reflink' : 'base-copy', t);
      }
      // else: a Diff after a fresh boot holds every page ever written; its holes are zero pages.
      t = performance.now();
      await api.request('put', '/snapshot/create', undefined, planSnapshot(type, apiState, apiMem), { signal, timeoutMs: s.snapshotTimeoutMs });
      this.step('snapshot', 'create', t);
      t = performance.now();
      if (jailed) {
        await moveOut(outState, statePath);
        await moveOut(outMem, memoryPath);
      }
      const meta: FirecrackerSnapshotMeta = {
        format: 1,
        firecrackerVersion: this.version!.text,
        snapshotType: type,
        memoryComplete,
        vcpus: cfg.vcpus,
        memoryMib: cfg.memoryMib,
        hugePages: s.hugePages,
        drives: [{ id: ROOT_DRIVE_ID, path: ROOT.rootfs }],
        tapName: cfg.network.kind === 'tap' ? cfg.network.tapName : undefined,
        vsock: { udsPath: ROOT.vsock, guestCid: s.guestCid },
        createdAt: new Date().toISOString(),
      };
      await writeSnapshotMeta(dir, meta);
      await fsyncDir(dir);
      // Every successful snapshot resets the dirty bitmap: the next Diff builds on this one.
      this.diffBase = memoryPath;
      this.forceFullUntilSnapshot = false;
      this.step('snapshot', 'files', t);
      this.vsockClient?.reset();
      this.step('snapshot', 'total', t0);
      return { dir, statePath, memoryPath, files: [statePath, memoryPath, path.join(dir, SNAPSHOT_META_FILE)] };
    } catch (err) {
      for (const p of [outState, outMem, statePath, memoryPath, path.join(dir, SNAPSHOT_META_FILE)]) await rm(p, { force: true }).catch(() => {});
      throw wrap(err, `snapshot of sandbox ${cfg.sandboxId}`);
    }
  }

  // ---------------------------------------------------------------- stop

  /**
   * SendCtrlAltDel (if enabled and the guest runs), then SIGTERM, then
   * SIGKILL, each with a bound; resolves only after the process exited, then
   * stops the page server and removes sockets, links, mounts, the jail and
   * its cgroup. Idempotent. The signal is ignored: stop is cleanup and must
   * finish for a cancelled request too.
   */
  stop(_signal?: AbortSignal): Promise<void> {
    this.stopping ??= this.doStop().catch((err) => { this.stopping = undefined; throw err; });
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    const t0 = performance.now();
    const s = this.settings;
    if (this._pid > 0 && !this.hasExited) {
      if (s.stopCtrlAltDelMs > 0 && this.client && this.vmState === 'Running') {
        await this.client.request('put', '/actions', undefined, { action_type: 'SendCtrlAltDel' }, { timeoutMs: 1000 }).catch(() => {});
        await this.waitExit(s.stopCtrlAltDelMs);
      }
      if (!this.hasExited) {
        await this.signal('SIGTERM');
        await this.waitExit(s.stopTermMs);
      }
      if (!this.hasExited) {
        await this.signal('SIGKILL');
        await this.waitExit(s.stopKillMs);
      }
      if (!this.hasExited) {
        throw new HostFailureError(`Firecracker pid ${this._pid} (sandbox ${this.cfg?.sandboxId}) did not exit after SIGKILL within ${s.stopKillMs} ms`);
      }
    }
    await this.releaseHost();
    if (this._pid <= 0 && !this.hasExited) this.markExited({ code: null, signal: null });
    this.phase = 'stopped';
    this.step('stop', 'total', t0);
  }

  // ---------------------------------------------------------------- adoption (FirecrackerDriver.adopt)

  /** @internal Attaches to a live Firecracker started by an earlier daemon. */
  async attach(rec: FirecrackerVmRecord, startTime: string, runDir: string): Promise<void> {
    const w = this.bind(rec, startTime, runDir);
    try {
      this.version = await this.settings.resolveVersion();
      this.features = featuresOf(this.version);
    } catch { /* the binary may have been upgraded; the running process still answers its API */ }
    this.client = this.newClient(rec.apiSocket);
    try {
      const info = await this.client.describe({ timeoutMs: 3000 });
      if (info.id !== rec.id) throw new HostFailureError(`the API socket answers for instance ${info.id}, not ${rec.id}`);
      this.vmState = info.state;
    } catch (err) {
      w.cancel();
      this.client.close();
      throw new HostFailureError(`Firecracker pid ${rec.pid} of sandbox ${rec.sandboxId} is alive but its API socket ${rec.apiSocket} does not answer: ${errorMessage(err)}`, { cause: err });
    }
  }

  /**
   * @internal Takes over the record of a Firecracker started by an earlier
   * daemon without talking to it (attach, and FirecrackerDriver.forceKill for
   * one whose API no longer answers: it can then be killed and its host files released).
   */
  bind(rec: FirecrackerVmRecord, startTime: string, runDir: string): { cancel(): void } {
    this.record = rec;
    this.mounts = rec.mounts ?? [];
    this.cfg = {
      sandboxId: rec.sandboxId, runDir, vcpus: rec.vcpus, memoryMib: rec.memoryMib, kernelPath: '', kernelArgs: '', rootfsPath: '',
      memoryFilePath: '', consoleLogPath: rec.consoleLog,
      network: rec.tapName ? { kind: 'tap', netnsName: '', tapName: rec.tapName, mac: '' } : { kind: 'user', forwards: [], guestCidr: '', gateway: '' },
    };
    this.layout = {
      mode: rec.mode, id: rec.id, root: rec.root, rootInside: rec.mode === 'jailer' ? '/' : rec.root, apiSocket: rec.apiSocket,
      apiSocketArg: rec.apiSocket, consoleLog: rec.consoleLog, stderrLog: path.join(runDir, 'firecracker.stderr.log'),
      stateFile: path.join(runDir, 'firecracker.json'), chrootDir: rec.chrootDir, cgroupDir: rec.cgroupDir,
    };
    if (rec.restoredFrom) this.restoredFrom = { ...rec.restoredFrom };
    // The dirty bitmap's base after adoption is unknown (a snapshot may have been taken since): Full until the next one.
    this.diffBase = undefined;
    this.forceFullUntilSnapshot = true;
    this._pid = rec.pid;
    this.foreignStartTime = startTime;
    this.phase = 'running';
    const w = watchPidExit(rec.pid, startTime);
    this.watch = w;
    void w.done.then(() => this.markExited({ code: null, signal: null }));
    return w;
  }

  /** @internal Kills an adopted process that cannot be used (its page server died with the old daemon) and cleans up. */
  async killAdopted(reason: string): Promise<void> {
    this._failure = new HostFailureError(reason);
    await this.signal('SIGKILL');
    await this.waitExit(this.settings.stopKillMs);
    await this.stop();
  }

  // ---------------------------------------------------------------- internals

  private claim(cfg: FirecrackerVmConfig): void {
    if (this.phase !== 'new') throw new HostFailureError(`this FirecrackerVmm was already used (${this.phase}); create a new one per VM`);
    this.phase = 'starting';
    this.cfg = cfg;
    const s = this.settings;
    this.layout = vmLayout(cfg.sandboxId, cfg.runDir, cfg.consoleLogPath, {
      isolation: s.isolation, mountnsRoot: s.mountnsRoot, firecrackerBinary: s.firecrackerBinary, jailer: s.jailer,
    });
  }

  private async detect(signal: AbortSignal): Promise<FirecrackerFeatures> {
    throwIfAborted(signal);
    this.version = await this.settings.resolveVersion(signal);
    checkSupported(this.version);
    this.features = featuresOf(this.version);
    return this.features;
  }

  private bootOptions(features: FirecrackerFeatures): FirecrackerBootOptions {
    const s = this.settings;
    return {
      features, trackDirtyPages: s.diffSnapshots, hugePages: s.hugePages, driveCache: s.driveCache, ioEngine: s.ioEngine,
      guestCid: s.guestCid, entropy: s.entropy, mmds: s.mmds, logLevel: s.logLevel, metrics: s.metrics,
      allowNoNetwork: s.allowNoNetwork, enablePci: s.enablePci,
    };
  }

  private async checkSnapshot(snap: SnapshotFiles, cfg: VmConfig, meta: FirecrackerSnapshotMeta | undefined): Promise<void> {
    await checkReadable(snap.statePath, 'snapshot state');
    let memSize: number;
    try { memSize = (await stat(snap.memoryPath)).size; } catch (err) {
      throw new HostFailureError(`snapshot memory file ${snap.memoryPath} is missing: ${errorMessage(err)}`);
    }
    const mib = meta?.memoryMib ?? cfg.memoryMib;
    if (memSize !== mib * MiB) throw new ConflictError(`snapshot memory file ${snap.memoryPath} has ${memSize} bytes, but this VM has ${mib} MiB`);
    if (!meta) return;
    if (meta.memoryMib !== cfg.memoryMib || meta.vcpus !== cfg.vcpus) {
      throw new ConflictError(`snapshot ${snap.dir} is of a ${meta.vcpus}-vCPU ${meta.memoryMib} MiB VM; this VM is configured with ${cfg.vcpus} vCPUs and ${cfg.memoryMib} MiB`);
    }
    if (!snapshotCompatible(meta.firecrackerVersion, this.version!)) {
      throw new ConflictError(`snapshot ${snap.dir} was written by Firecracker ${meta.firecrackerVersion}; ${this.version!.text} cannot load it (snapshots load only within one release line)`);
    }
    if (!meta.memoryComplete) throw new ConflictError(`snapshot ${snap.dir} is a Diff layer; merge it into its base first (rebaseMemory)`);
    if (meta.hugePages === '2M' && this.settings.memoryBackend !== 'uffd') {
      throw new ConflictError(`snapshot ${snap.dir} has 2M huge pages: released Firecracker versions restore it only with the Uffd backend`);
    }
  }

  /** Fresh root: stale sockets and links gone (Firecracker refuses to bind an existing path). */
  private async prepareRoot(cfg: VmConfig): Promise<void> {
    const layout = this.layout!;
    await mkdir(cfg.runDir, { recursive: true });
    if (layout.mode === 'jailer') {
      // A leftover jail from a crashed run would make the jailer fail; nothing in it is worth keeping.
      await rm(layout.chrootDir!, { recursive: true, force: true });
      await mkdir(layout.root, { recursive: true });
    } else {
      await mkdir(layout.root, { recursive: true });
      for (const name of await readdir(layout.root)) {
        if (name === ROOT.log || name === ROOT.metrics) continue;
        await rm(path.join(layout.root, name), { recursive: true, force: true });
      }
      if (layout.mode === 'mountns') await mkdir(this.settings.mountnsRoot, { recursive: true });
    }
    await rm(layout.stateFile, { force: true });
  }

  private async stage(req: Parameters<typeof stageFile>[2]): Promise<void> {
    const m = await stageFile(this.layout!, this.settings.jailer, req);
    if (m) this.mounts.push(m);
  }

  private newClient(socketPath: string): FirecrackerClient {
    return new FirecrackerClient(socketPath, {
      timeoutMs: this.settings.apiTimeoutMs,
      onDeprecation: (m, p) => this.settings.log?.('warn', `Firecracker flagged ${m} ${p} as using a deprecated field`),
    });
  }

  private async start(cfg: VmConfig, signal: AbortSignal, op: 'boot' | 'restore'): Promise<void> {
    throwIfAborted(signal);
    const s = this.settings;
    const layout = this.layout!;
    let t = performance.now();
    if (cfg.network.kind === 'tap') await checkReadable(path.join(s.netnsDir, cfg.network.netnsName), 'network namespace');
    if (!this.features!.createsLogFiles) {
      // Before 1.14 the logger and metrics files must exist.
      for (const f of [ROOT.log, ROOT.metrics]) { const fh = await open(path.join(layout.root, f), 'a'); await fh.close(); }
    }
    const cmd = launchCommand(layout, {
      firecrackerBinary: s.firecrackerBinary, mountnsRoot: s.mountnsRoot, netnsDir: s.netnsDir, enablePci: s.enablePci, jailer: s.jailer,
    }, cfg.network, cfg);
    await mkdir(path.dirname(layout.consoleLog), { recursive: true });
    const outFd = openSync(layout.consoleLog, 'a');
    const errFd = openSync(layout.stderrLog, 'a');
    let child: ChildProcess;
    try {
      child = spawn(cmd.file, cmd.args, { cwd: cmd.cwd, detached: true, stdio: ['ignore', outFd, errFd] });
    } finally {
      closeSync(outFd);
      closeSync(errFd);
    }
    this.child = child;
    let spawnError: Error | undefined;
    child.once('error', (err) => { spawnError = err; if (child.pid === undefined) this.markExited({ code: null, signal: null }); });
    // With --new-pid-ns the jailer forks Firecracker and its own process leaves (status 0): not the VM's exit.
    const jailedFork = layout.mode === 'jailer' && !!s.jailer?.newPidNs;
    child.once('exit', (code, sig) => {
      if (this.foreignStartTime) return;
      if (jailedFork && code === 0) return;
      this.markExited({ code, signal: sig });
    });
    child.unref();
    if (child.pid !== undefined) this._pid = child.pid;
    this.step(op, 'spawn', t);

    t = performance.now();
    this.client = this.newClient(layout.apiSocket);
    const deadline = Date.now() + s.startTimeoutMs;
    let lastError: unknown;
    for (let attempt = 0; ; attempt++) {
      throwIfAborted(signal);
      if (spawnError) throw new HostFailureError(`cannot start ${cmd.file}: ${spawnError.message}`, { cause: spawnError });
      if (this.hasExited) throw await this.exitedEarlyError('during start');
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        const why = lastError instanceof FirecrackerUnreachableError || lastError === undefined ? '' : ` (last error: ${errorMessage(lastError)})`;
        throw new TimeoutError(`Firecracker did not answer on ${layout.apiSocket} within ${s.startTimeoutMs} ms${why}`);
      }
      try {
        const info = await this.client.describe({ signal, timeoutMs: Math.min(remaining, 1000) });
        if (info.id !== layout.id) throw new InstanceMismatchError(`the API socket ${layout.apiSocket} answers for instance ${info.id}, not ${layout.id}`);
        this.vmState = info.state;
        break;
      } catch (err) {
        if (err instanceof AbortedError || err instanceof InstanceMismatchError) throw err;
        lastError = err;
        await sleep(Math.min(5 + attempt * 2, 25), signal);
      }
    }
    if (layout.mode === 'jailer' && s.jailer?.newPidNs) await this.followJailedPid();
    this.step(op, 'api', t);
  }

  /** With --new-pid-ns the jailer forks: Firecracker's host pid is in <root>/<exec>.pid. */
  private async followJailedPid(): Promise<void> {
    const text = await readFile(this.layout!.pidFile!, 'utf8').catch(() => '');
    const pid = Number(text.trim());
    if (!Number.isInteger(pid) || pid <= 0 || pid === this._pid) return;
    const st = await readProcStat(pid);
    if (!st) throw new HostFailureError(`the jailer's pid file names ${pid}, which is not running`);
    this._pid = pid;
    this.foreignStartTime = st.startTime;
    const w = watchPidExit(pid, st.startTime, 50);
    this.watch = w;
    void w.done.then(() => this.markExited({ code: null, signal: null }));
  }

  private async configureLogging(logger: Logger, metrics: { metrics_path: string } | undefined, signal: AbortSignal): Promise<void> {
    const api = this.client!;
    await api.request('put', '/logger', undefined, logger, { signal });
    if (metrics) await api.request('put', '/metrics', undefined, metrics, { signal });
  }

  private async startPageServer(snap: SnapshotFiles): Promise<void> {
    const s = this.settings;
    const layout = this.layout!;
    const opts: PageServerOptions = {
      socketPath: path.join(layout.root, ROOT.uffdSocket),
      memoryPath: snap.memoryPath,
      acceptTimeoutMs: s.uffd.acceptTimeoutMs,
      zeroPages: s.uffd.zeroPages,
      populate: s.uffd.populate,
      detachWhenPopulated: s.uffd.detachWhenPopulated,
      recordMaxMs: s.uffd.recordMaxMs,
      ...(s.uffd.recordWorkingSet ? { workingSetPath: path.join(snap.dir, WORKING_SET_FILE), record: true } : { record: false }),
      ...(layout.mode === 'jailer' ? { socketOwner: { uid: s.jailer!.uid, gid: s.jailer!.gid } } : {}),
    };
    const ps = await UffdPageServer.listen(opts);
    this.pageServer = ps;
    ps.on('failed', (err: Error) => {
      // Firecracker now hangs on its next fault, forever (docs/uffd.md, "When the handler dies"): kill it; the manager sees `exited`.
      this._failure = new HostFailureError(`the userfaultfd page server of sandbox ${this.cfg?.sandboxId} failed: ${err.message}`, { cause: err });
      this.settings.log?.('error', this._failure.message, { pid: this._pid });
      if (this.phase === 'running' || this.phase === 'starting') void this.signal('SIGKILL');
    });
    ps.on('exit', (e: { reason: string }) => {
      if (e.reason === 'detached' && this.record) { this.record.uffdDetached = true; void this.saveRecord(); }
    });
  }

  private async writeRecord(backend: 'boot' | MemoryBackendKind): Promise<void> {
    const layout = this.layout!;
    const cfg = this.cfg!;
    const st = await readProcStat(this._pid);
    this.record = {
      format: 1,
      sandboxId: cfg.sandboxId,
      id: layout.id,
      mode: layout.mode,
      root: layout.root,
      apiSocket: layout.apiSocket,
      consoleLog: layout.consoleLog,
      chrootDir: layout.chrootDir,
      cgroupDir: layout.cgroupDir,
      pid: this._pid,
      startTime: st?.startTime ?? '',
      firecrackerVersion: this.version!.text,
      memoryBackend: backend,
      restoredFrom: this.restoredFrom ? { dir: this.restoredFrom.dir, memoryPath: this.restoredFrom.memoryPath } : undefined,
      tapName: cfg.network.kind === 'tap' ? cfg.network.tapName : undefined,
      vcpus: cfg.vcpus,
      memoryMib: cfg.memoryMib,
      mounts: this.mounts,
    };
    await this.saveRecord();
  }

  private async saveRecord(): Promise<void> {
    if (!this.record || !this.layout) return;
    const p = this.layout.stateFile;
    const tmp = `${p}.tmp-${process.pid}`;
    const fh = await open(tmp, 'w', 0o600);
    try { await fh.writeFile(JSON.stringify(this.record, null, 2) + '\n'); await fh.sync(); } finally { await fh.close(); }
    await rename(tmp, p);
  }

  private async exitedEarlyError(during: string): Promise<HostFailureError> {
    const info = this.exitInfo!;
    const layout = this.layout!;
    const lines = [
      ...(await tailFile(layout.stderrLog, 4096)).split('\n'),
      ...(await tailFile(path.join(layout.root, ROOT.log), 4096)).split('\n'),
    ].filter((l) => l.trim()).slice(-8).join('\n');
    const how = info.signal ? `was killed by ${info.signal}` : `exited with status ${info.code}${exitCodeMeaning(info.code)}`;
    return new HostFailureError(`Firecracker ${how} ${during}${lines ? `: ${lines}` : ''}`);
  }

  /** On a failed boot/restore: kill the process, wait for it, release everything on the host. */
  private async failStart(): Promise<void> {
    this.phase = 'failed';
    // A forked (--new-pid-ns) Firecracker may be running although the jailer's own process left.
    if (this.layout?.mode === 'jailer' && this.settings.jailer?.newPidNs && !this.foreignStartTime) await this.followJailedPid().catch(() => {});
    try {
      if (this._pid > 0 && !this.hasExited) {
        await this.signal('SIGKILL');
        await this.waitExit(this.settings.stopKillMs);
      }
    } catch { /* reported through the original error */ }
    await this.releaseHost().catch((err: unknown) => this.settings.log?.('warn', `cleanup after a failed start: ${errorMessage(err)}`));
    if (this._pid <= 0 && !this.hasExited) this.markExited({ code: null, signal: null });
  }

  /** Everything on the host but the process: page server, sockets, links, mounts, jail, cgroup, record. */
  private async releaseHost(): Promise<void> {
    const errors: string[] = [];
    this.client?.close();
    this.vsockClient?.close();
    this.watch?.cancel();
    if (this.pageServer) {
      await this.pageServer.stopRecording().catch(() => undefined);
      await this.pageServer.stop().catch((e: unknown) => errors.push(`page server: ${errorMessage(e)}`));
    }
    const layout = this.layout;
    if (layout) {
      errors.push(...await unstage(this.mounts));
      this.mounts = [];
      if (layout.mode === 'jailer') {
        // Keep Firecracker's log for post-mortems: the jail goes away.
        const log = path.join(layout.root, ROOT.log);
        if (await present(log)) await copySparse(log, path.join(path.dirname(layout.stateFile), ROOT.log)).catch(() => {});
        if (layout.chrootDir) await rm(layout.chrootDir, { recursive: true, force: true }).catch((e: unknown) => errors.push(`jail: ${errorMessage(e)}`));
        if (layout.cgroupDir) await rmdirCgroup(layout.cgroupDir).catch((e: unknown) => errors.push(`cgroup: ${errorMessage(e)}`));
      } else {
        for (const name of await readdir(layout.root).catch(() => [] as string[])) {
          if (name === ROOT.log || name === ROOT.metrics) continue;
          await rm(path.join(layout.root, name), { recursive: true, force: true }).catch((e: unknown) => errors.push(`${name}: ${errorMessage(e)}`));
        }
      }
      await rm(layout.stateFile, { force: true }).catch(() => {});
    }
    if (errors.length) throw new HostFailureError(`Firecracker VM of sandbox ${this.cfg?.sandboxId}: cleanup incomplete: ${errors.join('; ')}`);
  }

  private requireApi(op: string): FirecrackerClient {
    if (this.phase !== 'running' || !this.client) throw new HostFailureError(`cannot ${op}: the VM is ${this.phase}`);
    if (this.hasExited) throw new HostFailureError(`cannot ${op}: Firecracker pid ${this._pid} has exited${this._failure ? ` (${this._failure.message})` : ''}`);
    return this.client;
  }

  private markExited(info: ExitInfo): void {
    if (this.exitInfo) return;
    this.exitInfo = info;
    this.watch?.cancel();
    this.resolveExited(info);
  }

  private async waitExit(ms: number): Promise<boolean> {
    return this.hasExited || exitedWithin(this.exited, ms);
  }

  /** Signals our Firecracker only: our child, or a foreign pid whose start time still matches and whose --id is ours. */
  private async signal(sig: NodeJS.Signals): Promise<void> {
    if (this.hasExited || this._pid <= 0) return;
    if (this.child && !this.foreignStartTime && this.child.pid === this._pid) {
      this.child.kill(sig);
      return;
    }
    const st = await readProcStat(this._pid);
    const argv = await readProcCmdline(this._pid);
    if (!st || st.startTime !== this.foreignStartTime || (argv && this.layout && idFromArgv(argv) !== this.layout.id)) {
      this.markExited({ code: null, signal: null });
      return;
    }
    try { process.kill(this._pid, sig); } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ESRCH') this.markExited({ code: null, signal: null });
      else throw err;
    }
  }

  private step(op: string, step: string, since: number): void {
    const ms = Math.round((performance.now() - since) * 10) / 10;
    this.timings[`${op}.${step}`] = ms;
    this.settings.onStep?.(this.cfg?.sandboxId ?? '?', op, step, ms);
  }
}

class InstanceMismatchError extends HostFailureError {}

const EXIT_CODES: Record<number, string> = {
  1: 'generic error', 2: 'unexpected error', 148: 'bad syscall (seccomp)', 149: 'SIGBUS', 150: 'SIGSEGV', 151: 'SIGXFSZ',
  152: 'bad configuration', 153: 'argument parsing error', 154: 'SIGXCPU', 155: 'SIGPIPE', 156: 'SIGHUP', 157: 'SIGILL',
};
function exitCodeMeaning(code: number | null): string {
  return code !== null && EXIT_CODES[code] ? ` (${EXIT_CODES[code]})` : '';
}

async function rmdirCgroup(dir: string): Promise<void> {
  try { await rm(dir, { recursive: false, force: true }); } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    // cgroupfs: rmdir (rm of a directory without recursive fails with EISDIR/ERR_FS_EISDIR)
    const { rmdir } = await import('node:fs/promises');
    try { await rmdir(dir); } catch (e) { if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e; }
  }
}

async function checkReadable(p: string, what: string, writable = false): Promise<void> {
  try {
    await access(p, fsConstants.R_OK | (writable ? fsConstants.W_OK : 0));
  } catch (err) {
    throw new HostFailureError(`${what} ${p} is not ${writable ? 'readable and writable' : 'readable'}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`);
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try { await fh.sync(); } catch { /* not supported everywhere */ } finally { await fh.close(); }
}

/** Keeps Hearth errors (their class is the API contract) and prefixes context; wraps anything else as a host failure. */
function wrap(err: unknown, context: string): Error {
  if (err instanceof HearthError) {
    if (!err.message.startsWith(context)) err.message = `${context}: ${err.message}`;
    return err;
  }
  return new HostFailureError(`${context}: ${errorMessage(err)}`, { cause: err });
}

export { NET_IFACE_ID };
