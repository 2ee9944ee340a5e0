/**
 * The VMM seam (docs/ARCHITECTURE.md, "Seams"). One `Vmm` instance per running VM; drivers
 * (qemu/, firecracker/) implement it. The core never imports a driver.
 */

export type VmmKind = 'qemu' | 'firecracker';

/** How the VM's single NIC is wired on the host. */
export type VmNetwork =
  /** QEMU user-mode networking, restricted (no egress), with host→guest forwards on 127.0.0.1. */
  | { kind: 'user'; forwards: { hostPort: number; guestPort: number }[]; guestCidr: string; gateway: string }
  /** A tap device inside a network namespace (the VMM is started inside `netnsName`). */
  | { kind: 'tap'; netnsName: string; tapName: string; mac: string };

export interface VmConfig {
  sandboxId: string;
  vcpus: number;
  memoryMib: number;
  kernelPath: string;
  initrdPath?: string;
  /** Kernel command line (without root=, which the driver adds for its transport). */
  kernelArgs: string;
  /** Root disk: a file or block device, attached read-write as the first drive. */
  rootfsPath: string;
  /** Guest RAM lives in this file (QEMU memory-backend-file, share=on). */
  memoryFilePath: string;
  /** Directory for sockets, pid file and logs of this VM; created by the caller. */
  runDir: string;
  consoleLogPath: string;
  network: VmNetwork;
}

export interface SnapshotFiles {
  /** Directory holding the snapshot. */
  dir: string;
  /** Device/vCPU state (QEMU migration stream or Firecracker vmstate). */
  statePath: string;
  /** Guest memory file. */
  memoryPath: string;
}

/** What `Vmm.snapshot` wrote. */
export interface SnapshotWritten extends SnapshotFiles {
  /**
   * Every file the snapshot consists of, as absolute paths: the state, the
   * memory (QEMU: the VM's own RAM file, outside `dir`; Firecracker: in `dir`)
   * and the VMM's metadata beside the state (QEMU `vmstate.json`, Firecracker
   * `firecracker.json`). The caller moves or copies exactly these; on restore
   * the driver finds its metadata under the same name beside the state.
   */
  files: string[];
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Vmm {
  readonly kind: VmmKind;
  boot(cfg: VmConfig, signal: AbortSignal): Promise<void>;
  restore(snap: SnapshotFiles, cfg: VmConfig, signal: AbortSignal): Promise<void>;
  pause(signal: AbortSignal): Promise<void>;
  resume(signal: AbortSignal): Promise<void>;
  snapshot(dir: string, kind: 'full' | 'diff', signal: AbortSignal): Promise<SnapshotWritten>;
  /** SIGTERM (or a clean quit), then SIGKILL after a bound; resolves only after the process exited. */
  stop(signal: AbortSignal): Promise<void>;
  readonly pid: number;
  readonly exited: Promise<ExitInfo>;
  /** The guest answered after a boot or restore (a uffd page server stops recording its working set). */
  markReady?(): Promise<void>;
  /** Let go of the VM without stopping it (daemon shutdown), so that another daemon can adopt it. */
  detach?(): void;
}

/** What a driver records so that a later daemon can find (adopt or reap) its VM. */
export interface VmmHandle {
  kind: VmmKind;
  pid: number;
  runDir: string;
}

export interface VmmDriver {
  readonly kind: VmmKind;
  create(): Vmm;
  /** Re-attach to a VM started by an earlier daemon; null if it is gone. */
  adopt(handle: VmmHandle): Promise<Vmm | null>;
  /** Every VM of this kind on the host that carries Hearth's name (for reaping orphans). */
  list?(): Promise<{ sandboxId: string; pid: number; runDir?: string }[]>;
  /**
   * Kill a VM that `adopt` could not take control of (its control socket no
   * longer answers), by SIGKILL, and resolve once the process is gone. The
   * driver checks first that `handle.pid` is still this driver's VM of
   * `handle.runDir` (not a reused pid); false: no such VM runs (nothing was
   * killed). Throws HostFailureError if it is still there after the bound.
   */
  forceKill(handle: VmmHandle, signal: AbortSignal): Promise<boolean>;
  /**
   * true: restore maps the snapshot's memory file privately and never writes it
   * (Firecracker), so the manager passes the snapshot's file as is. Absent/false:
   * the VMM runs on `VmConfig.memoryFilePath` and writes guest memory into it
   * (QEMU, share=on), so the manager first fills it with a copy (reflink).
   */
  readonly restoreMapsSnapshotMemory?: boolean;
  /**
   * What a snapshot made here must match to be loaded here, as `name=value`
   * pairs separated by spaces (QEMU: version, accelerator, CPU model, machine;
   * Firecracker: its release line). Recorded with every snapshot and folded
   * into the warm-snapshot key: a different value means rebuild (warm
   * templates) or refuse with the difference named (user snapshots).
   */
  snapshotCompat(signal: AbortSignal): Promise<string>;
}
