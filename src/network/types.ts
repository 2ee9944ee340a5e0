import type { VmNetwork } from '../vmm/types.js';

/** The network seam (DESIGN §4, §7). */
export interface Slot {
  /** Slot number (persisted) or a synthetic id for user-mode networking. */
  id: number;
  /** How the VMM attaches its NIC. */
  vmNetwork: VmNetwork;
  /** Where the host reaches a guest TCP port (the agent and exposed ports). */
  guestAddress(guestPort: number): { host: string; port: number };
}

export interface NetworkSlots {
  readonly kind: 'user' | 'netns';
  acquire(signal: AbortSignal): Promise<Slot>;
  release(slot: Slot): Promise<void>;
  /** Rebuild the Slot of a VM that already runs (daemon restart), from what was recorded. */
  restore(net: VmNetwork): Slot;
}
