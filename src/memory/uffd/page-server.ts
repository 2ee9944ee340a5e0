/**
 * The userfaultfd page server for Firecracker's `Uffd` memory backend
 * (docs/uffd.md). Policy lives here; the fault loop runs on a
 * native thread of the hearth_uffd addon (never on the event loop, which may
 * be busy awaiting `PUT /snapshot/load` while the guest already faults).
 *
 * Lifecycle:
 *   1. `UffdPageServer.listen()` binds the Unix socket (a stale file is
 *      unlinked first) and waits, in the background, for Firecracker to
 *      connect. Call it before sending `/snapshot/load`.
 *   2. Firecracker connects during the load and sends the region list and the
 *      uffd; the server validates the regions against the memory file, builds
 *      the zero-page bitmap (holes of the sparse file), loads the prefetch list
 *      (the recorded working set), and starts the native fault loop. `ready`
 *      resolves. The socket file is unlinked: nobody else may connect.
 *   3. It serves until Firecracker exits (the handshake connection hangs up),
 *      `stop()` is called, every page was populated and the regions were
 *      handed back to the kernel (`populate: 'background'` with
 *      `detachWhenPopulated`), or the fault loop fails.
 *   4. `exit` resolves with the reason. A failure (`error`,
 *      `handshake-failed`) is also emitted as a 'failed' event: Firecracker
 *      then hangs on its next fault, forever, so the owner must kill it
 *      (FirecrackerVmm does) and report the sandbox as failed.
 */
import { EventEmitter } from 'node:events';
import { closeSync } from 'node:fs';
import { chown, rm, stat } from 'node:fs/promises';
import { HostFailureError, errorMessage } from '../../core/errors.js';
import { dataBitmap } from '../memory-file.js';
import { parseHandshake, type UffdHandshake } from './handshake.js';
import { loadUffdAddon, type NativeListener, type NativePageServer, type NativeStats } from './native.js';
import { mergeWorkingSet, readWorkingSet, writeWorkingSet, type WorkingSet } from './working-set.js';

export interface PageServerOptions {
  /** Unix socket Firecracker connects to (`mem_backend.backend_path`, as seen from the host). */
  socketPath: string;
  /** The snapshot's memory file (read only; mapped privately). */
  memoryPath: string;
  /** chown the socket (jailer: Firecracker runs as this uid/gid). */
  socketOwner?: { uid: number; gid: number };
  /** How long to wait for Firecracker's handshake (default 10 s). */
  acceptTimeoutMs?: number;
  /** 'holes' (default): pages in holes of the sparse memory file are served as zero pages without reading it. */
  zeroPages?: 'holes' | 'none';
  /** Pages to copy in first (memory-file page indices); overrides the working-set file's list. */
  prefetch?: Uint32Array;
  /** The snapshot's working-set file: prefetched from if present, and (with `record`) written. */
  workingSetPath?: string;
  /** Record the pages faulted in until `stopRecording()` (default: true when `workingSetPath` is set). */
  record?: boolean;
  /** Recording stops by itself after this long (default 15 s). */
  recordMaxMs?: number;
  /** 'on-demand' (default): pages come in when touched (after the prefetch). 'background': then every other page too. */
  populate?: 'on-demand' | 'background';
  /** With populate 'background': once all is resident, unregister the regions so the VM no longer needs this server. */
  detachWhenPopulated?: boolean;
}

export type PageServerExitReason = 'peer-closed' | 'peer-exited' | 'stopped' | 'detached' | 'error' | 'handshake-failed';

export interface PageServerExit {
  reason: PageServerExitReason;
  error?: Error;
}

export interface LatencySummary {
  count: number;
  meanUs: number;
  /** Upper bounds of the power-of-two bucket holding the percentile. */
  p50Us: number;
  p90Us: number;
  p99Us: number;
  maxUs: number;
}

export interface PageServerStats {
  state: 'waiting' | 'serving' | 'exited';
  exitReason?: PageServerExitReason;
  error?: string;
  pageSize?: number;
  memoryBytes?: number;
  peerPid?: number;
  faults: number;
  copiedPages: number;
  zeroPages: number;
  bytesCopied: number;
  /** Faults that found the page already there (another vCPU or the prefetcher won). */
  eexist: number;
  /** Ioctls deferred because a remove event was pending. */
  eagain: number;
  removeEvents: number;
  removedBytes: number;
  prefetchTotal: number;
  prefetchedPages: number;
  populatedPages: number;
  firstFaultMs?: number;
  latency: LatencySummary;
  latencyLog2Ns: number[];
}

export function summarizeLatency(hist: number[], sumNs: number, maxNs: number): LatencySummary {
  const count = hist.reduce((a, b) => a + b, 0);
  const pct = (q: number): number => {
    if (count === 0) return 0;
    const target = Math.ceil(q * count);
    let acc = 0;
    for (let b = 0; b < hist.length; b++) {
      acc += hist[b]!;
      if (acc >= target) return Math.min(2 ** (b + 1), maxNs || 2 ** (b + 1)) / 1000;
    }
    return maxNs / 1000;
  };
  return {
    count,
    meanUs: count ? Math.round(sumNs / count) / 1000 : 0,
    p50Us: pct(0.5), p90Us: pct(0.9), p99Us: pct(0.99),
    maxUs: maxNs / 1000,
  };
}

export class UffdPageServer extends EventEmitter {
  readonly socketPath: string;
  readonly memoryPath: string;
  /** Resolves once the handshake is in and faults are being served; rejects if it never came. */
  readonly ready: Promise<UffdHandshake>;
  /** Resolves when the server has stopped serving, for whatever reason (never rejects). */
  readonly exit: Promise<PageServerExit>;

  private listener: NativeListener | undefined;
  private native: NativePageServer | undefined;
  private handshake: UffdHandshake | undefined;
  private _peerPid: number | undefined;
  private exitInfo: PageServerExit | undefined;
  private resolveExit!: (e: PageServerExit) => void;
  private resolveReady!: (h: UffdHandshake) => void;
  private rejectReady!: (e: Error) => void;
  private recording = false;
  private recordTimer: NodeJS.Timeout | undefined;
  private priorWorkingSet: WorkingSet | undefined;
  private stopping: Promise<PageServerExit> | undefined;

  private constructor(private readonly opts: PageServerOptions) {
    super();
    this.socketPath = opts.socketPath;
    this.memoryPath = opts.memoryPath;
    this.exit = new Promise((r) => { this.resolveExit = r; });
    this.ready = new Promise((res, rej) => { this.resolveReady = res; this.rejectReady = rej; });
    this.ready.catch(() => {}); // observed through `exit` / 'failed' too
  }

  /** Binds the socket and starts waiting for Firecracker. Throws if the socket cannot be bound or the file is unusable. */
  static async listen(opts: PageServerOptions): Promise<UffdPageServer> {
    const addon = loadUffdAddon();
    const s = new UffdPageServer(opts);
    let size: number;
    try { size = (await stat(opts.memoryPath)).size; } catch (err) {
      throw new HostFailureError(`uffd: memory file ${opts.memoryPath} is not readable: ${errorMessage(err)}`, { cause: err });
    }
    if (size === 0) throw new HostFailureError(`uffd: memory file ${opts.memoryPath} is empty`);
    if (opts.workingSetPath) s.priorWorkingSet = await readWorkingSet(opts.workingSetPath);
    await rm(opts.socketPath, { force: true });
    try {
      s.listener = new addon.Listener(opts.socketPath);
    } catch (err) {
      throw new HostFailureError(`uffd: cannot listen on ${opts.socketPath}: ${errorMessage(err)}`, { cause: err });
    }
    if (opts.socketOwner) await chown(opts.socketPath, opts.socketOwner.uid, opts.socketOwner.gid);
    void s.acceptAndServe(size);
    return s;
  }

  get peerPid(): number | undefined { return this._peerPid; }
  get regions(): UffdHandshake | undefined { return this.handshake; }
  get exited(): boolean { return this.exitInfo !== undefined; }

  private async acceptAndServe(fileBytes: number): Promise<void> {
    const addon = loadUffdAddon();
    let uffd = -1;
    let conn = -1;
    try {
      const a = await this.listener!.accept(this.opts.acceptTimeoutMs ?? 10_000);
      uffd = a.uffd;
      conn = a.conn;
      this._peerPid = a.peerPid;
      await this.closeListener();
      if (this.exitInfo) throw new Error('stopped before the handshake');
      const hs = parseHandshake(a.json, fileBytes);
      let bitmap: Uint8Array | undefined;
      if ((this.opts.zeroPages ?? 'holes') === 'holes') {
        const bm = dataBitmap(this.memoryPath, hs.pageSize, fileBytes);
        if (bm.dataPages < bm.pages) bitmap = bm.bitmap;
      }
      let prefetch = this.opts.prefetch;
      const prior = this.priorWorkingSet;
      if (!prefetch && prior && prior.pageSize === hs.pageSize && prior.memoryBytes === fileBytes) prefetch = prior.pages;
      else this.priorWorkingSet = undefined;
      this.recording = this.opts.record ?? this.opts.workingSetPath !== undefined;
      const populateAll = this.opts.populate === 'background';
      this.native = new addon.PageServer({
        uffd, conn, memoryPath: this.memoryPath, pageSize: hs.pageSize, regions: hs.regions,
        dataBitmap: bitmap, prefetch, record: this.recording,
        populateAll, detachWhenPopulated: populateAll && (this.opts.detachWhenPopulated ?? false),
        onEvent: (kind, info) => this.onNativeEvent(kind, info),
      });
      uffd = conn = -1; // owned by the native server now
      this.handshake = hs;
      if (this.recording) {
        this.recordTimer = setTimeout(() => { void this.stopRecording().catch(() => {}); }, this.opts.recordMaxMs ?? 15_000);
        this.recordTimer.unref();
      }
      this.resolveReady(hs);
      this.emit('serving', hs);
    } catch (err) {
      // fds that never reached the native server; closing the uffd makes Firecracker's faults fail loudly instead of hanging
      for (const fd of [uffd, conn]) if (fd >= 0) { try { closeSync(fd); } catch { /* already closed */ } }
      await this.closeListener();
      const e = err instanceof Error ? err : new Error(String(err));
      const error = new HostFailureError(`uffd page server for ${this.memoryPath}: handshake failed: ${e.message}`, { cause: e });
      this.rejectReady(error);
      this.finish({ reason: this.exitInfo ? this.exitInfo.reason : 'handshake-failed', error });
    }
  }

  private onNativeEvent(kind: string, info: { reason?: string; error?: string; pages?: number; ns?: number }): void {
    if (kind === 'prefetched') { this.emit('prefetched', { pages: info.pages ?? 0, ms: (info.ns ?? 0) / 1e6 }); return; }
    if (kind === 'populated') { this.emit('populated', { pages: info.pages ?? 0, ms: (info.ns ?? 0) / 1e6 }); return; }
    if (kind !== 'exit') return;
    const reason = (info.reason ?? 'error') as PageServerExitReason;
    const error = info.error ? new HostFailureError(`uffd page server for ${this.memoryPath} failed: ${info.error}`) : undefined;
    this.finish({ reason, error });
  }

  private finish(e: PageServerExit): void {
    if (this.exitInfo && this.exitInfo.reason !== 'stopped') return;
    const first = !this.exitInfo;
    this.exitInfo = e;
    if (this.recordTimer) clearTimeout(this.recordTimer);
    if (first) {
      this.resolveExit(e);
      this.emit('exit', e);
      if (e.reason === 'error' || e.reason === 'handshake-failed') this.emit('failed', e.error ?? new HostFailureError(`uffd page server ${e.reason}`));
    }
  }

  /** Closes the listening socket and unlinks its file (nobody else may connect). */
  private async closeListener(): Promise<void> {
    if (!this.listener) return;
    this.listener.close();
    this.listener = undefined;
    await rm(this.socketPath, { force: true }).catch(() => {});
  }

  /** Stops recording the touched pages and merges them into the working-set file (if configured). */
  async stopRecording(): Promise<WorkingSet | undefined> {
    if (!this.recording || !this.native || !this.handshake) return undefined;
    this.recording = false;
    if (this.recordTimer) clearTimeout(this.recordTimer);
    this.native.setRecording(false);
    const touched = this.native.takeTouched();
    const prior = this.priorWorkingSet;
    const ws: WorkingSet = {
      pageSize: this.handshake.pageSize,
      memoryBytes: Number(this.handshake.totalBytes),
      pages: mergeWorkingSet(prior?.pages, touched),
      recordedAt: new Date().toISOString(),
      restores: (prior?.restores ?? 0) + 1,
    };
    if (this.opts.workingSetPath && (touched.length > 0 || !prior)) await writeWorkingSet(this.opts.workingSetPath, ws);
    this.emit('recorded', { pages: touched.length, total: ws.pages.length });
    return ws;
  }

  stats(): PageServerStats {
    const n: NativeStats | undefined = this.native?.stats();
    const ex = this.exitInfo;
    const state = ex ? 'exited' : this.native ? 'serving' : 'waiting';
    const zero = { faults: 0, copiedPages: 0, zeroPages: 0, bytesCopied: 0, eexist: 0, eagain: 0, removeEvents: 0, removedBytes: 0, prefetchTotal: 0, prefetchedPages: 0, populatedPages: 0 };
    if (!n) return { state, exitReason: ex?.reason, error: ex?.error?.message, ...zero, latency: summarizeLatency([], 0, 0), latencyLog2Ns: [] };
    return {
      state,
      exitReason: ex?.reason,
      error: ex?.error?.message,
      pageSize: n.pageSize,
      memoryBytes: n.filePages * n.pageSize,
      peerPid: this._peerPid,
      faults: n.faults,
      copiedPages: n.copiedPages,
      zeroPages: n.zeroPages,
      bytesCopied: n.bytesCopied,
      eexist: n.eexist,
      eagain: n.eagain,
      removeEvents: n.removeEvents,
      removedBytes: n.removedBytes,
      prefetchTotal: n.prefetchTotal,
      prefetchedPages: n.prefetchedPages,
      populatedPages: n.populatedPages,
      firstFaultMs: n.faults ? n.firstFaultNs / 1e6 : undefined,
      latency: summarizeLatency(n.latencyLog2Ns, n.latencySumNs, n.latencyMaxNs),
      latencyLog2Ns: n.latencyLog2Ns,
    };
  }

  /**
   * Stops serving and releases everything (thread, uffd, mapping, socket).
   * Call only after Firecracker has exited: a VM whose pages are still
   * missing hangs once nobody answers its faults.
   */
  stop(): Promise<PageServerExit> {
    this.stopping ??= (async () => {
      if (this.recordTimer) clearTimeout(this.recordTimer);
      if (!this.exitInfo && !this.native) {
        this.exitInfo = { reason: 'stopped' };
        this.resolveExit(this.exitInfo);
        this.emit('exit', this.exitInfo);
        this.rejectReady(new HostFailureError('uffd page server stopped before Firecracker connected'));
      }
      await this.closeListener();
      this.native?.stop();
      await rm(this.socketPath, { force: true }).catch(() => {});
      return this.exit;
    })();
    return this.stopping;
  }

  /** @internal Testing hook: make the native fault loop fail as if it had crashed. */
  debugCrash(): void { this.native?.debugCrash(); }
}
