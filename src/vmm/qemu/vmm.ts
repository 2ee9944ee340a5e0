/**
 * One QEMU VM (the `Vmm` seam: docs/ARCHITECTURE.md, "Seams"). See docs/vmm-qemu.md for the process
 * model and the snapshot mechanics.
 *
 * Process model: QEMU is spawned detached (own session and process group,
 * stdio to <runDir>/qemu.log) and unref'd, so it outlives the daemon; it is
 * driven over one QMP connection (<runDir>/qmp.sock) and records its pid in
 * <runDir>/qemu.pid. A later daemon re-attaches with QemuDriver.adopt().
 *
 * Snapshots: guest RAM is a shared file mapping (memory-backend-file,
 * share=on); with the `x-ignore-shared` migration capability the migration
 * stream carries device state only. The stream goes to a Unix socket served by
 * this process and is written to <dir>/vmstate (QEMU 7.2 has no `file:`
 * migration, and `exec:` would need QEMU to fork a shell, which the seccomp
 * sandbox forbids with spawn=deny). Restore hands the state file to the new
 * QEMU as an inherited fd (fd 3) and runs `migrate-incoming fd:3`.
 *
 * Least privilege: when the driver says so, QEMU drops to an unprivileged
 * uid/gid after opening its files (-runas) and chroots into <runDir>/vmroot
 * (-chroot), which is also its working directory; the snapshot socket is then
 * <runDir>/vmroot/mig.sock, owned by the VM's uid, and QEMU connects to it by
 * the relative path `mig.sock`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, closeSync, openSync, constants as fsConstants } from 'node:fs';
import { access, chmod, chown, mkdir, open, readFile, readlink, realpath, rename, rm, rmdir, stat } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import {
  AbortedError, ConflictError, HearthError, HostFailureError, TimeoutError, errorMessage, throwIfAborted,
} from '../../core/errors.js';
import type { ExitInfo, SnapshotFiles, SnapshotWritten, VmConfig, Vmm } from '../types.js';
import { buildQemuArgs, cpuModel, runFiles, spawnCommand, type QemuCmdlineOptions } from './cmdline.js';
import { readProcCmdline, readProcIds, readProcStat, tailFile, watchPidExit } from './process.js';
import { QmpClient } from './qmp.js';
import { exitedWithin } from '../exit.js';
import { sleep } from '../../util/abort.js';
import { writeFileAtomic } from '../../util/fs.js';

/** Everything a QemuVmm needs from its driver (resolved lazily: the accelerator probe is async). */
export interface QemuSettings {
  qemuBinary: string;
  resolveCmdlineOptions(signal: AbortSignal): Promise<Omit<QemuCmdlineOptions, 'incoming' | 'paused'>>;
  /** Bound for QEMU to start and answer QMP (ms). */
  startTimeoutMs: number;
  /** Bound for writing a snapshot (ms). */
  snapshotTimeoutMs: number;
  /** Bound for loading a snapshot (ms). */
  restoreTimeoutMs: number;
  /** stop(): bound for `quit` to end the process, then after SIGTERM, then after SIGKILL (ms). */
  stopQuitMs: number;
  stopTermMs: number;
  stopKillMs: number;
  /**
   * The identity QEMU drops to for this VM (-runas), and whether it chroots into
   * <runDir>/vmroot; undefined: QEMU keeps hearthd's identity. `release` frees a per-VM id.
   */
  privilegeFor?(sandboxId: string, signal: AbortSignal): Promise<{ uid: number; gid: number; chroot: boolean; release(): void } | undefined>;
  /** Where the network namespaces live (tap networking). */
  netnsDir: string;
  /** Step timings (the manager logs them: docs/ARCHITECTURE.md, "Every transition"). */
  onStep?: (sandboxId: string, op: string, step: string, ms: number) => void;
}

/**
 * What a QEMU snapshot is tied to, written beside the state as vmstate.json and
 * checked before a restore: the migration stream only loads into the same
 * machine type, CPU model, vCPU count and RAM size.
 */
export interface QemuSnapshotLayout {
  machine: string;
  accel: string;
  cpu: string;
  vcpus: number;
  memoryMib: number;
  /** Informational: QEMU that wrote it. */
  qemuVersion?: string;
}

export interface QemuStatus {
  status: string;
  running: boolean;
}

type Phase = 'new' | 'starting' | 'running' | 'failed' | 'stopped';

const MiB = 1024 * 1024;

export class QemuVmm implements Vmm {
  readonly kind = 'qemu' as const;
  private phase: Phase = 'new';
  private _pid = 0;
  private child: ChildProcess | undefined;
  /** For adopted processes: /proc start time, to guard signals against pid reuse. */
  private adoptedStartTime: string | undefined;
  private qmp: QmpClient | undefined;
  private cfg: Pick<VmConfig, 'sandboxId' | 'runDir' | 'memoryFilePath'> | undefined;
  private layout: QemuSnapshotLayout | undefined;
  private exitInfo: ExitInfo | undefined;
  private resolveExited!: (info: ExitInfo) => void;
  readonly exited: Promise<ExitInfo>;
  private stopping: Promise<void> | undefined;
  /** Frees the per-VM uid once the process is gone. */
  private releaseIds: (() => void) | undefined;
  /** Durations (ms) of the last boot/restore/snapshot/stop steps, for logs and benchmarks. */
  readonly timings: Record<string, number> = {};

  constructor(private readonly settings: QemuSettings) {
    this.exited = new Promise((resolve) => { this.resolveExited = resolve; });
  }

  get pid(): number { return this._pid; }
  get sandboxId(): string | undefined { return this.cfg?.sandboxId; }
  get runDir(): string | undefined { return this.cfg?.runDir; }
  get memoryFilePath(): string | undefined { return this.cfg?.memoryFilePath; }
  get hasExited(): boolean { return this.exitInfo !== undefined; }

  // ---------------------------------------------------------------- boot

  async boot(cfg: VmConfig, signal: AbortSignal): Promise<void> {
    this.claim(cfg);
    const t0 = performance.now();
    try {
      await checkReadable(cfg.kernelPath, 'kernel');
      if (cfg.initrdPath) await checkReadable(cfg.initrdPath, 'initrd');
      await checkReadable(cfg.rootfsPath, 'root disk', true);
      // A fresh, sparse guest-RAM file of exactly the configured size: never boot on stale memory.
      await mkdir(path.dirname(cfg.memoryFilePath), { recursive: true });
      const fh = await open(cfg.memoryFilePath, fsConstants.O_CREAT | fsConstants.O_TRUNC | fsConstants.O_RDWR, 0o600);
      try { await fh.truncate(cfg.memoryMib * MiB); } finally { await fh.close(); }
      await this.start(cfg, signal, { incoming: false, paused: false });
      const st = await this.queryStatus(signal);
      if (!st.running) throw new HostFailureError(`QEMU for sandbox ${cfg.sandboxId} started but its VM is '${st.status}', not running`);
      this.phase = 'running';
      this.step('boot', 'total', t0);
    } catch (err) {
      await this.failStart();
      throw wrap(err, `boot of sandbox ${cfg.sandboxId}`);
    }
  }

  // ---------------------------------------------------------------- restore

  async restore(snap: SnapshotFiles, cfg: VmConfig, signal: AbortSignal): Promise<void> {
    this.claim(cfg);
    const t0 = performance.now();
    let stateFd: number | undefined;
    try {
      await checkReadable(cfg.kernelPath, 'kernel');
      if (cfg.initrdPath) await checkReadable(cfg.initrdPath, 'initrd');
      await checkReadable(cfg.rootfsPath, 'root disk', true);
      let memSize: number;
      try { memSize = (await stat(cfg.memoryFilePath)).size; } catch (err) {
        throw new HostFailureError(`memory file ${cfg.memoryFilePath} for the restore is missing (${errorMessage(err)}); the caller places a copy of the snapshot's memory file there`);
      }
      if (memSize !== cfg.memoryMib * MiB) {
        throw new HostFailureError(`memory file ${cfg.memoryFilePath} is ${memSize} bytes, but the VM has ${cfg.memoryMib} MiB`);
      }
      await this.checkLayout(snap, cfg, signal);
      try { stateFd = openSync(snap.statePath, 'r'); } catch (err) {
        throw new HostFailureError(`snapshot state ${snap.statePath} is not readable: ${errorMessage(err)}`);
      }
      await this.start(cfg, signal, { incoming: true, paused: true }, stateFd);
      closeSync(stateFd);
      stateFd = undefined;
      const qmp = this.qmp!;
      let t = performance.now();
      await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] }, { signal });
      await qmp.execute('migrate-incoming', { uri: 'fd:3' }, { signal });
      await this.waitMigration('restore', this.settings.restoreTimeoutMs, signal);
      this.step('restore', 'load', t);
      t = performance.now();
      await qmp.execute('cont', undefined, { signal });
      const st = await this.queryStatus(signal);
      if (!st.running) throw new HostFailureError(`restored VM of sandbox ${cfg.sandboxId} is '${st.status}' after cont`);
      this.step('restore', 'cont', t);
      this.phase = 'running';
      this.step('restore', 'total', t0);
    } catch (err) {
      if (stateFd !== undefined) closeSync(stateFd);
      await this.failStart();
      throw wrap(err, `restore of sandbox ${cfg.sandboxId} from ${snap.statePath}`);
    }
  }

  // ---------------------------------------------------------------- pause / resume

  /** Freezes the vCPUs (QMP `stop`; synchronous in QEMU, confirmed with query-status). */
  async pause(signal: AbortSignal): Promise<void> {
    const t0 = performance.now();
    try {
      const qmp = this.requireQmp('pause');
      await qmp.execute('stop', undefined, { signal });
      const st = await this.queryStatus(signal);
      if (st.running) throw new HostFailureError(`VM still '${st.status}' after stop`);
    } catch (err) {
      throw wrap(err, `pause of sandbox ${this.cfg?.sandboxId}`);
    }
    this.step('pause', 'stop', t0);
  }

  /** Runs the vCPUs again (QMP `cont`, confirmed with query-status); also after a snapshot. */
  async resume(signal: AbortSignal): Promise<void> {
    const t0 = performance.now();
    try {
      const qmp = this.requireQmp('resume');
      await qmp.execute('cont', undefined, { signal });
      const st = await this.queryStatus(signal);
      if (!st.running) throw new HostFailureError(`VM is '${st.status}' after cont`);
    } catch (err) {
      throw wrap(err, `resume of sandbox ${this.cfg?.sandboxId}`);
    }
    this.step('resume', 'cont', t0);
  }

  /** QMP query-status ('running', 'paused', 'postmigrate', …). */
  async status(signal?: AbortSignal): Promise<QemuStatus> {
    this.requireQmp('query-status');
    return this.queryStatus(signal);
  }

  private async queryStatus(signal?: AbortSignal): Promise<QemuStatus> {
    if (!this.qmp) throw new HostFailureError('QMP is not connected');
    const r = await this.qmp.execute<{ status: string; running: boolean }>('query-status', undefined, { signal });
    return { status: r.status, running: r.running };
  }

  // ---------------------------------------------------------------- snapshot

  /**
   * Writes the device state to <dir>/vmstate and the VM's layout to
   * <dir>/vmstate.json. Guest RAM is not copied: it is the VM's memory file
   * (`memoryPath`, listed in `files` with the other two), which the caller
   * copies or reflinks while the VM stays paused or moves after it stopped. `kind` is accepted for the seam;
   * both kinds are the same here (the memory file always holds all of RAM).
   * The VM is paused first if it is running, and stays paused afterwards, also
   * on failure: the caller resumes or stops it.
   */
  async snapshot(dir: string, _kind: 'full' | 'diff', signal: AbortSignal): Promise<SnapshotWritten> {
    const qmp = this.requireQmp('snapshot');
    const cfg = this.cfg!;
    const t0 = performance.now();
    throwIfAborted(signal);
    await mkdir(dir, { recursive: true });
    const st = await this.status(signal);
    if (st.running) await this.pause(signal);
    const statePath = path.join(dir, 'vmstate');
    const tmpPath = `${statePath}.tmp`;
    const { sockPath, uri, owner } = await this.migrationSocket();
    await rm(sockPath, { force: true });
    const server = net.createServer();
    let received: Promise<void> | undefined;
    const connected = new Promise<void>((resolve) => {
      server.once('connection', (sock) => {
        server.close(); // one stream per snapshot
        received = pipeline(sock, createWriteStream(tmpPath, { mode: 0o600 }));
        received.catch(() => {});
        resolve();
      });
    });
    let started = false;
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(sockPath, () => { server.off('error', reject); resolve(); });
      });
      // An unprivileged QEMU must be able to connect; nobody else (another VM's uid) may. Until the
      // chown the socket is root's with the umask's mode (no write bit for others: no connect).
      if (owner) {
        await chown(sockPath, owner.uid, owner.gid);
        await chmod(sockPath, 0o600);
      }
      await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] }, { signal });
      // The default bandwidth cap (128 MiB/s) would throttle a full-RAM stream; device state is tiny anyway.
      await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 * MiB }, { signal });
      let t = performance.now();
      started = true;
      await qmp.execute('migrate', { uri }, { signal });
      await this.waitMigration('snapshot', this.settings.snapshotTimeoutMs, signal);
      this.step('snapshot', 'migrate', t);
      t = performance.now();
      await withTimeout(connected.then(() => received!), 10_000, 'snapshot stream did not finish after migration completed');
      const fh = await open(tmpPath, 'r+');
      try { await fh.sync(); } finally { await fh.close(); }
      await rename(tmpPath, statePath);
      const files = [statePath, cfg.memoryFilePath];
      if (this.layout) {
        await writeFileAtomic(path.join(dir, LAYOUT_FILE), JSON.stringify(this.layout, null, 2) + '\n');
        files.push(path.join(dir, LAYOUT_FILE));
      }
      await fsyncDir(dir);
      this.step('snapshot', 'write', t);
      this.step('snapshot', 'total', t0);
      // Guest RAM is the VM's own file: reported where it is, for the caller to copy or move.
      return { dir, statePath, memoryPath: cfg.memoryFilePath, files };
    } catch (err) {
      if (started && qmp.isOpen) await qmp.execute('migrate_cancel', undefined, { timeoutMs: 2000 }).catch(() => {});
      await rm(tmpPath, { force: true }).catch(() => {});
      throw wrap(err, `snapshot of sandbox ${cfg.sandboxId}`);
    } finally {
      server.close();
      await rm(sockPath, { force: true }).catch(() => {});
    }
  }

  // ---------------------------------------------------------------- stop

  /**
   * `quit` over QMP (bounded), then SIGTERM, then SIGKILL, each with a bound;
   * resolves only after the process exited, then removes the QMP socket and
   * pid file. Idempotent. The signal is deliberately ignored: stop is cleanup
   * and must complete even for a cancelled request (callers pass a fresh one).
   */
  stop(_signal?: AbortSignal): Promise<void> {
    if (!this.stopping) {
      this.stopping = this.doStop().catch((err) => { this.stopping = undefined; throw err; });
    }
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    const t0 = performance.now();
    const s = this.settings;
    if (this._pid > 0 && !this.hasExited) {
      if (this.qmp?.isOpen) {
        // The reply may be lost when QEMU closes the socket first; any failure falls through to signals.
        await this.qmp.execute('quit', undefined, { timeoutMs: s.stopQuitMs }).catch(() => {});
        await this.waitExit(s.stopQuitMs);
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
        throw new HostFailureError(`QEMU pid ${this._pid} (sandbox ${this.cfg?.sandboxId}) did not exit after SIGKILL within ${s.stopKillMs} ms`);
      }
    }
    this.qmp?.close();
    if (this.cfg) await removeRunFiles(this.cfg.runDir);
    if (this._pid <= 0 && !this.hasExited) this.markExited({ code: null, signal: null });
    this.phase = 'stopped';
    this.step('stop', 'total', t0);
  }

  // ---------------------------------------------------------------- adoption (used by QemuDriver)

  /** @internal Attaches to a live QEMU started by an earlier daemon. */
  async attach(pid: number, startTime: string, sandboxId: string, runDir: string, memoryFilePath: string): Promise<void> {
    this.cfg = { sandboxId, runDir, memoryFilePath };
    this._pid = pid;
    this.adoptedStartTime = startTime;
    this.phase = 'running';
    const watch = watchPidExit(pid, startTime);
    void watch.done.then(() => this.markExited({ code: null, signal: null }));
    try {
      this.qmp = await QmpClient.connect(runFiles(runDir).qmpSocket, { timeoutMs: 5000 });
    } catch (err) {
      watch.cancel();
      throw new HostFailureError(
        `QEMU pid ${pid} of sandbox ${sandboxId} is alive but its QMP socket does not answer (${errorMessage(err)}); is another daemon still connected?`,
        { cause: err },
      );
    }
  }

  // ---------------------------------------------------------------- internals

  private claim(cfg: VmConfig): void {
    if (this.phase !== 'new') throw new HostFailureError(`this QemuVmm was already used (${this.phase}); create a new one per VM`);
    this.phase = 'starting';
    this.cfg = { sandboxId: cfg.sandboxId, runDir: cfg.runDir, memoryFilePath: cfg.memoryFilePath };
  }

  private async start(cfg: VmConfig, signal: AbortSignal, mode: { incoming: boolean; paused: boolean }, stateFd?: number): Promise<void> {
    throwIfAborted(signal);
    const s = this.settings;
    const files = runFiles(cfg.runDir);
    await mkdir(cfg.runDir, { recursive: true });
    await removeRunFiles(cfg.runDir);
    let t = performance.now();
    const base = await s.resolveCmdlineOptions(signal);
    const priv = await s.privilegeFor?.(cfg.sandboxId, signal);
    if (priv) {
      this.releaseIds = priv.release;
      // Root-owned, searchable only by root and the VM's group: QEMU's cwd (and chroot), where mig.sock appears.
      await mkdir(files.vmRoot, { recursive: true, mode: 0o710 });
      await chown(files.vmRoot, 0, priv.gid);
      await chmod(files.vmRoot, 0o710);
    }
    // QEMU drops privileges at the end of its start-up, after it has already started the vCPUs
    // unless told -S: a dropping QEMU starts paused and gets `cont` over QMP once it listens,
    // i.e. after the drop, so no guest instruction ever runs in a root QEMU.
    const contOnQmp = priv !== undefined && !mode.paused && !mode.incoming;
    const qemuArgs = buildQemuArgs(cfg, {
      ...base,
      ...mode,
      ...(contOnQmp ? { paused: true } : {}),
      ...(priv ? { runAs: { uid: priv.uid, gid: priv.gid }, chrootDir: priv.chroot ? files.vmRoot : undefined } : {}),
    });
    this.layout = layoutOf(cfg, base);
    const cmd = spawnCommand(cfg, s.qemuBinary, qemuArgs, s.netnsDir);
    if (cfg.network.kind === 'tap') await checkReadable(path.join(s.netnsDir, cfg.network.netnsName), 'network namespace');
    throwIfAborted(signal);
    const logFd = openSync(files.stderrLog, 'a');
    let child: ChildProcess;
    try {
      const stdio: (number | 'ignore')[] = ['ignore', logFd, logFd];
      if (stateFd !== undefined) stdio.push(stateFd);
      child = spawn(cmd.file, cmd.args, { detached: true, stdio, ...(priv ? { cwd: files.vmRoot } : {}) });
    } finally {
      closeSync(logFd);
    }
    this.child = child;
    let spawnError: Error | undefined;
    child.once('error', (err) => { spawnError = err; if (child.pid === undefined) this.markExited({ code: null, signal: null }); });
    child.once('exit', (code, sig) => this.markExited({ code, signal: sig }));
    child.unref();
    if (child.pid !== undefined) this._pid = child.pid;
    this.step(mode.incoming ? 'restore' : 'boot', 'spawn', t);

    // Wait until QMP accepts and capabilities are negotiated.
    t = performance.now();
    const deadline = Date.now() + s.startTimeoutMs;
    for (let attempt = 0; ; attempt++) {
      throwIfAborted(signal);
      if (spawnError) throw new HostFailureError(`cannot start ${cmd.file}: ${spawnError.message}`, { cause: spawnError });
      if (this.hasExited) throw await this.exitedEarlyError(files.stderrLog);
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new TimeoutError(`QEMU did not answer on ${files.qmpSocket} within ${s.startTimeoutMs} ms`);
      try {
        this.qmp = await QmpClient.connect(files.qmpSocket, { signal, timeoutMs: Math.min(remaining, 3000) });
        break;
      } catch (err) {
        if (err instanceof AbortedError) throw err;
        await sleep(Math.min(5 + attempt * 2, 25), signal);
      }
    }
    const v = this.qmp!.greeting?.version.qemu;
    if (v && this.layout) this.layout.qemuVersion = `${v.major}.${v.minor}.${v.micro}`;
    if (contOnQmp) await this.qmp!.execute('cont', undefined, { signal });
    this.step(mode.incoming ? 'restore' : 'boot', 'qmp', t);
  }

  /** Refuses a restore whose machine layout differs from the snapshot's (vmstate.json). */
  private async checkLayout(snap: SnapshotFiles, cfg: VmConfig, signal: AbortSignal): Promise<void> {
    let saved: QemuSnapshotLayout;
    try {
      saved = JSON.parse(await readFile(path.join(snap.dir, LAYOUT_FILE), 'utf8')) as QemuSnapshotLayout;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return; // older snapshot: QEMU will check
      throw new HostFailureError(`snapshot ${snap.dir}: unreadable ${LAYOUT_FILE}: ${errorMessage(err)}`);
    }
    const now = layoutOf(cfg, await this.settings.resolveCmdlineOptions(signal));
    const diffs = (['machine', 'accel', 'cpu', 'vcpus', 'memoryMib'] as const)
      .filter((k) => saved[k] !== now[k])
      .map((k) => `${k} ${String(saved[k])} → ${String(now[k])}`);
    if (diffs.length) {
      throw new ConflictError(`snapshot ${snap.dir} was taken with a different VM layout (${diffs.join(', ')}); restore needs the same machine, CPU, vCPUs and memory`);
    }
  }

  private async exitedEarlyError(logPath: string, during = 'during start'): Promise<HostFailureError> {
    const info = this.exitInfo!;
    const log = (await tailFile(logPath, 4096)).trim().split('\n').filter((l) => l.trim()).slice(-6).join('\n');
    const how = info.signal ? `was killed by ${info.signal}` : `exited with status ${info.code}`;
    return new HostFailureError(`QEMU ${how} ${during}${log ? `: ${log}` : ''}`);
  }

  /** On a failed boot/restore: kill the process, wait for it, remove socket and pid file. */
  private async failStart(): Promise<void> {
    this.phase = 'failed';
    this.qmp?.close();
    try {
      if (this._pid > 0 && !this.hasExited) {
        await this.signal('SIGKILL');
        await this.waitExit(this.settings.stopKillMs);
      }
    } catch { /* reported below through the original error */ }
    if (this._pid <= 0 && !this.hasExited) this.markExited({ code: null, signal: null });
    if (this.hasExited) this.releaseIds?.();
    if (this.cfg) await removeRunFiles(this.cfg.runDir).catch(() => {});
  }

  private async waitMigration(op: 'snapshot' | 'restore', timeoutMs: number, signal: AbortSignal): Promise<void> {
    const qmp = this.qmp!;
    const deadline = Date.now() + timeoutMs;
    let interval = 2;
    for (;;) {
      throwIfAborted(signal);
      const during = op === 'restore' ? 'while loading the snapshot' : 'while writing the snapshot';
      if (this.hasExited) throw await this.exitedEarlyError(runFiles(this.cfg!.runDir).stderrLog, during);
      let m: { status?: string; 'error-desc'?: string };
      try {
        m = await qmp.execute('query-migrate', undefined, { signal });
      } catch (err) {
        // QEMU exits when an incoming migration fails: report its own words.
        if (!qmp.isOpen && (await this.waitExit(2000))) throw await this.exitedEarlyError(runFiles(this.cfg!.runDir).stderrLog, during);
        throw err;
      }
      switch (m.status) {
        case 'completed':
          return;
        case 'failed':
        case 'cancelled':
          throw new HostFailureError(`${op}: migration ${m.status}${m['error-desc'] ? `: ${m['error-desc']}` : ''}`);
        default:
          break;
      }
      if (Date.now() > deadline) throw new TimeoutError(`${op}: migration still '${m.status ?? 'none'}' after ${timeoutMs} ms`);
      await sleep(interval, signal);
      interval = Math.min(interval * 2, 20);
    }
  }

  /**
   * Where the snapshot stream's socket goes. A QEMU started in <runDir>/vmroot (unprivileged,
   * possibly chrooted there) connects to `mig.sock` relative to its working directory, so neither
   * the runDir's ancestors nor the chroot matter; an older QEMU gets the absolute path. If QEMU
   * runs as another uid than hearthd, the socket is handed to that uid.
   */
  private async migrationSocket(): Promise<{ sockPath: string; uri: string; owner?: { uid: number; gid: number } }> {
    const files = runFiles(this.cfg!.runDir);
    const [cwd, vmRoot, ids] = await Promise.all([
      readlink(`/proc/${this._pid}/cwd`).catch(() => undefined),
      realpath(files.vmRoot).catch(() => undefined),
      readProcIds(this._pid),
    ]);
    const euid = process.geteuid?.() ?? -1;
    const owner = ids && euid === 0 && ids.uid !== 0 ? ids : undefined;
    if (cwd !== undefined && cwd === vmRoot) return { sockPath: path.join(files.vmRoot, 'mig.sock'), uri: 'unix:mig.sock', owner };
    const sockPath = path.join(this.cfg!.runDir, 'mig.sock');
    return { sockPath, uri: `unix:${sockPath}`, owner };
  }

  /**
   * Let go of the VM without stopping it (daemon shutdown): QEMU serves one QMP
   * client at a time, so the next daemon can only adopt the VM once this closes.
   */
  detach(): void {
    this.qmp?.close();
  }

  private requireQmp(op: string): QmpClient {
    if (this.phase !== 'running' || !this.qmp) throw new HostFailureError(`cannot ${op}: the VM is ${this.phase === 'running' ? 'not connected' : this.phase}`);
    if (!this.qmp.isOpen) throw new HostFailureError(`cannot ${op}: QMP connection to QEMU pid ${this._pid} is closed${this.hasExited ? ' (QEMU exited)' : ''}`);
    return this.qmp;
  }

  private markExited(info: ExitInfo): void {
    if (this.exitInfo) return;
    this.exitInfo = info;
    this.releaseIds?.();
    this.resolveExited(info);
  }

  private async waitExit(ms: number): Promise<boolean> {
    return this.hasExited || exitedWithin(this.exited, ms);
  }

  /** Sends a signal to our QEMU only: our child, or an adopted pid whose start time still matches. */
  private async signal(sig: NodeJS.Signals): Promise<void> {
    if (this.hasExited || this._pid <= 0) return;
    if (this.child) {
      this.child.kill(sig);
      return;
    }
    const st = await readProcStat(this._pid);
    if (!st || st.startTime !== this.adoptedStartTime) { this.markExited({ code: null, signal: null }); return; }
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

/** Is `pid` QEMU running the VM whose run files are in `runDir`? Returns its argv and start time. */
export async function identifyQemu(pid: number, runDir: string): Promise<{ argv: string[]; startTime: string } | undefined> {
  const argv = await readProcCmdline(pid);
  const st = await readProcStat(pid);
  if (!argv || !st || st.state === 'Z' || st.state === 'X') return undefined;
  if (!argv[0] || !/qemu-system/.test(path.basename(argv[0]))) return undefined;
  const i = argv.indexOf('-pidfile');
  if (i < 0 || argv[i + 1] !== runFiles(runDir).pidFile) return undefined;
  return { argv, startTime: st.startTime };
}

const LAYOUT_FILE = 'vmstate.json';

function layoutOf(cfg: VmConfig, o: Omit<QemuCmdlineOptions, 'incoming' | 'paused'>): QemuSnapshotLayout {
  return {
    machine: o.machine ?? 'microvm',
    accel: o.accel,
    cpu: cpuModel(o.accel),
    vcpus: cfg.vcpus,
    memoryMib: cfg.memoryMib,
  };
}

async function removeRunFiles(runDir: string): Promise<void> {
  const f = runFiles(runDir);
  await rm(f.qmpSocket, { force: true });
  await rm(f.pidFile, { force: true });
  await rm(path.join(runDir, 'mig.sock'), { force: true });
  await rm(path.join(f.vmRoot, 'mig.sock'), { force: true });
  await rmdir(f.vmRoot).catch(() => {}); // empty unless a snapshot is being written; recreated by start
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
  try { await fh.sync(); } finally { await fh.close(); }
}

async function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new TimeoutError(message)), ms); })]);
  } finally {
    clearTimeout(timer);
  }
}

/** Keeps Hearth errors (their class is the API contract) and prefixes context; wraps anything else as a host failure. */
function wrap(err: unknown, context: string): Error {
  if (err instanceof HearthError) {
    if (!err.message.startsWith(context)) err.message = `${context}: ${err.message}`;
    return err;
  }
  return new HostFailureError(`${context}: ${errorMessage(err)}`, { cause: err });
}
