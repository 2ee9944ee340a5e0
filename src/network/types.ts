import type { VmNetwork } from '../vmm/types.js';

/** Egress of one sandbox: internet on/off, allow and deny CIDR lists (deny wins). */
export interface EgressPolicy {
  /** Whether the sandbox may reach destinations not on `allow` (only where an egress interface is configured). */
  internet: boolean;
  /** IPv4 CIDRs (or bare addresses) always allowed, also with internet off, unless denied. */
  allow: string[];
  /** IPv4 CIDRs never allowed; deny wins over allow. */
  deny: string[];
}

/** The network seam (docs/ARCHITECTURE.md, "Seams"; docs/networking.md). */
export interface Slot {
  /** Slot number (persisted) or a synthetic id for user-mode networking. */
  id: number;
  /** How the VMM attaches its NIC. */
  vmNetwork: VmNetwork;
  /**
   * Kernel command-line parameters that configure the guest's eth0 here. The
   * same for every slot of a backend, so a memory snapshot restores in any slot.
   */
  guestKernelArgs: string;
  /** Where the host reaches a guest TCP port (the agent and exposed ports). */
  guestAddress(guestPort: number): { host: string; port: number };
}

export interface SlotOptions {
  /** A policy other than the backend's default (fields not given keep the default). */
  egress?: Partial<EgressPolicy>;
}

export interface NetworkSlots {
  readonly kind: 'user' | 'netns';
  acquire(signal: AbortSignal, opts?: SlotOptions): Promise<Slot>;
  release(slot: Slot): Promise<void>;
  /** Rebuild the Slot of a VM that already runs (daemon restart), from what was recorded. */
  restore(net: VmNetwork): Slot;
  /** Replace a held slot's egress policy; takes effect on the next packet, also of open flows. */
  setEgress(slot: Slot, egress: Partial<EgressPolicy>): Promise<EgressPolicy>;
  /** The egress policy in force in a held slot. */
  egressOf(slot: Slot): EgressPolicy;
  /** Validate and complete a requested policy (InvalidArgumentError when it can't be honoured here). */
  checkEgress(egress: Partial<EgressPolicy>): EgressPolicy;
}
