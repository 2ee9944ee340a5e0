/**
 * Loader and types for the hearth_uffd Node-API addon (native/uffd/). The
 * addon does only what Node cannot: receive a file descriptor over a Unix
 * socket, issue userfaultfd ioctls on native threads, and seek through sparse
 * files. Everything else (which pages, in which order, accounting,
 * supervision) is decided in TypeScript (page-server.ts).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HostFailureError, errorMessage } from '../../core/errors.js';

export interface NativeAccepted {
  /** The region list exactly as Firecracker sent it (parse with parseHandshake). */
  json: string;
  uffd: number;
  /** The handshake connection, kept open: its hang-up means Firecracker exited. */
  conn: number;
  /** SO_PEERCRED of the connecting process. */
  peerPid: number;
  peerUid: number;
}

export interface NativeListener {
  accept(timeoutMs: number): Promise<NativeAccepted>;
  close(): void;
  readonly fd: number;
}

export interface NativeRegion { base: bigint; size: bigint; offset: bigint }

export interface NativePageServerOptions {
  uffd: number;
  conn: number;
  memoryPath: string;
  pageSize: number;
  regions: NativeRegion[];
  /** Bit i set = memory-file page i holds data; clear = never written (served as a zero page). */
  dataBitmap?: Uint8Array;
  /** Memory-file page indices to copy in before anything else, in this order. */
  prefetch?: Uint32Array;
  populateAll?: boolean;
  detachWhenPopulated?: boolean;
  record?: boolean;
  onEvent(kind: 'exit' | 'prefetched' | 'populated', info: { reason?: string; error?: string; pages?: number; ns?: number }): void;
}

export interface NativeStats {
  running: boolean;
  pageSize: number;
  filePages: number;
  faults: number;
  copiedPages: number;
  zeroPages: number;
  bytesCopied: number;
  eexist: number;
  eagain: number;
  enoent: number;
  removeEvents: number;
  removedBytes: number;
  prefetchedPages: number;
  prefetchTotal: number;
  populatedPages: number;
  unexpectedEvents: number;
  firstFaultNs: number;
  lastFaultNs: number;
  latencySumNs: number;
  latencyMaxNs: number;
  uptimeNs: number;
  /** Count of fault service times per power of two of nanoseconds (bucket b: [2^b, 2^(b+1)) ns). */
  latencyLog2Ns: number[];
  exitReason?: string;
  error?: string;
}

export interface NativePageServer {
  stats(): NativeStats;
  /** Joins the fault thread and closes the uffd, the connection and the mapping. Idempotent. */
  stop(): void;
  setRecording(on: boolean): void;
  /** Pages faulted in (first touch order) since the last call, while recording. */
  takeTouched(): Uint32Array;
  /** Testing hook: the fault thread exits with an error, as if it had crashed. */
  debugCrash(): void;
}

export interface NativeFakeVmmOptions {
  socketPath: string;
  regionSizes: (number | bigint)[];
  pageSize?: number;
  /** Which page-size fields the handshake carries (Firecracker ≥1.12 sends both). */
  fields?: 'both' | 'page_size' | 'page_size_kib' | 'none';
  sendFd?: boolean;
  /** Keep the VMM's own copy of the uffd, as Firecracker does (default true). */
  keepUffd?: boolean;
}

export interface NativeFakeVmm {
  readonly handshake: string;
  readonly size: number;
  read(offset: number, length: number): Buffer;
  write(offset: number, data: Buffer): void;
  touch(opts?: { offset?: number; length?: number; threads?: number; copy?: boolean; write?: boolean; order?: 'seq' | 'random'; seed?: number }):
    Promise<{ elapsedNs: number; latencyNs: Float64Array; data?: Buffer }>;
  dontneed(offset: number, length: number): void;
  disconnect(): void;
  close(): void;
}

export interface UffdAddon {
  Listener: new (path: string) => NativeListener;
  PageServer: new (opts: NativePageServerOptions) => NativePageServer;
  /** [offset0, length0, offset1, length1, …] of the file's data extents (SEEK_DATA/SEEK_HOLE). */
  dataExtents(path: string): Float64Array;
  punchZeroPages(path: string, pageSize: number): Promise<{ punchedBytes: number; scannedBytes: number }>;
  testing: {
    FakeVmm: new (opts: NativeFakeVmmOptions) => NativeFakeVmm;
    /** Benchmark baseline: pread every page of a file (one call per page). */
    preadPages(path: string, opts?: { pageSize?: number; order?: 'seq' | 'random'; seed?: number }): Promise<{ elapsedNs: number; latencyNs: Float64Array }>;
  };
}

/** Where node-gyp puts the addon (native/uffd/build/Release), found from src/ or dist/. */
export function addonCandidates(): string[] {
  const here = dirname(fileURLToPath(import.meta.url));
  const root = resolve(here, '..', '..', '..');
  const out = [join(root, 'native', 'uffd', 'build', 'Release', 'hearth_uffd.node')];
  if (process.env.HEARTH_UFFD_ADDON) out.unshift(process.env.HEARTH_UFFD_ADDON);
  return out;
}

let cached: UffdAddon | undefined;
let loadError: Error | undefined;

/** The addon, loaded once; throws HostFailureError telling how to build it if it is missing. */
export function loadUffdAddon(): UffdAddon {
  if (cached) return cached;
  if (loadError) throw loadError;
  const require = createRequire(import.meta.url);
  const tried: string[] = [];
  for (const p of addonCandidates()) {
    if (!existsSync(p)) { tried.push(`${p} (missing)`); continue; }
    try {
      cached = require(p) as UffdAddon;
      return cached;
    } catch (err) {
      tried.push(`${p} (${errorMessage(err)})`);
    }
  }
  loadError = new HostFailureError(
    `the userfaultfd addon is not built (tried ${tried.join('; ')}); build it with \`npm run build:native\` (node-gyp, needs g++ and make)`,
  );
  throw loadError;
}

/** True if the addon can be loaded (for probes and test skips). */
export function uffdAddonAvailable(): boolean {
  try { loadUffdAddon(); return true; } catch { return false; }
}
