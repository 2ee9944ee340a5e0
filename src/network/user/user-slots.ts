import { createServer } from 'node:net';
import { InvalidArgumentError, throwIfAborted } from '../../core/errors.js';
import type { VmNetwork } from '../../vmm/types.js';
import type { EgressPolicy, NetworkSlots, Slot, SlotOptions } from '../types.js';

/** Guest side of QEMU's user-mode network (slirp defaults). */
export const USER_NET_GUEST_CIDR = '10.0.2.15/24';
export const USER_NET_GATEWAY = '10.0.2.2';

/**
 * User-mode networking: no namespaces, no root needed. The guest is isolated
 * (`restrict=on`: no egress at all) and the host reaches guest ports through
 * forwards on 127.0.0.1. The fallback where per-sandbox namespaces can't be made.
 */
export class UserModeSlots implements NetworkSlots {
  readonly kind = 'user' as const;
  private readonly inUse = new Set<number>();

  constructor(private readonly guestPorts: readonly number[]) {}

  async acquire(signal: AbortSignal, opts: SlotOptions = {}): Promise<Slot> {
    throwIfAborted(signal);
    if (opts.egress) checkNoEgress(opts.egress);
    const forwards: { hostPort: number; guestPort: number }[] = [];
    for (const guestPort of this.guestPorts) {
      forwards.push({ hostPort: await this.freePort(), guestPort });
    }
    return this.restore({ kind: 'user', forwards, guestCidr: USER_NET_GUEST_CIDR, gateway: USER_NET_GATEWAY });
  }

  async release(slot: Slot): Promise<void> {
    if (slot.vmNetwork.kind !== 'user') return;
    for (const f of slot.vmNetwork.forwards) this.inUse.delete(f.hostPort);
  }

  /** Recreate a slot for a VM adopted after a restart (its forwards are on QEMU's command line). */
  restore(net: VmNetwork): Slot {
    if (net.kind !== 'user') throw new Error(`user-mode slots cannot restore a ${net.kind} network`);
    for (const f of net.forwards) this.inUse.add(f.hostPort);
    return userSlot(net.forwards);
  }

  async setEgress(_slot: Slot, egress: Partial<EgressPolicy>): Promise<EgressPolicy> {
    return this.checkEgress(egress);
  }

  checkEgress(egress: Partial<EgressPolicy>): EgressPolicy {
    checkNoEgress(egress);
    return this.egressOf();
  }

  /** User-mode guests reach nothing (restrict=on): the only policy there is. */
  egressOf(): EgressPolicy {
    return { internet: false, allow: [], deny: [] };
  }

  /** Ask the kernel for a free loopback port, skipping ones handed out but not yet bound by QEMU. */
  private async freePort(): Promise<number> {
    for (let i = 0; i < 20; i++) {
      const port = await new Promise<number>((resolve, reject) => {
        const srv = createServer();
        srv.once('error', reject);
        srv.listen(0, '127.0.0.1', () => {
          const addr = srv.address();
          const p = typeof addr === 'object' && addr ? addr.port : 0;
          srv.close(() => resolve(p));
        });
      });
      if (!this.inUse.has(port)) return port;
    }
    throw new Error('no free loopback port');
  }
}

/** A policy that asks for any egress can't be honoured here: say so rather than pretend. */
function checkNoEgress(egress: Partial<EgressPolicy>): void {
  if (egress.internet === true || (egress.allow?.length ?? 0) > 0) {
    throw new InvalidArgumentError(
      'this host runs sandboxes on user-mode networking, which has no egress: internet access and allow lists need netns networking (root, iproute2, nftables; see `hearth doctor`)',
      'network',
    );
  }
}

function userSlot(forwards: { hostPort: number; guestPort: number }[]): Slot {
  return {
    id: forwards[0]?.hostPort ?? 0,
    vmNetwork: { kind: 'user', forwards, guestCidr: USER_NET_GUEST_CIDR, gateway: USER_NET_GATEWAY },
    guestKernelArgs: `hearth.ip=${USER_NET_GUEST_CIDR} hearth.gw=${USER_NET_GATEWAY}`,
    guestAddress(guestPort: number) {
      const f = forwards.find((x) => x.guestPort === guestPort);
      if (!f) throw new Error(`guest port ${guestPort} is not forwarded in user-mode networking`);
      return { host: '127.0.0.1', port: f.hostPort };
    },
  };
}
