/**
 * hearthd's network backend (docs/networking.md, "In hearthd"): per-sandbox network namespaces where
 * the host allows (root, iproute2, nftables, nsenter, tun), else QEMU user-mode
 * networking. The probe's reason is logged and shown by `hearth doctor`.
 */
import type { Logger as PinoLogger } from 'pino';
import { AGENT_PORT } from '../agent/protocol.js';
import { chooseNetwork, NetnsSlots, type NetworkChoice } from '../network/netns/index.js';
import { UserModeSlots } from '../network/user/user-slots.js';
import type { NetworkSlots } from '../network/types.js';
import { SqliteSlotStore } from '../store/slot-store.js';
import type { Store } from '../store/store.js';
import type { HearthConfig } from './config.js';

export interface DaemonNetwork {
  slots: NetworkSlots;
  choice: NetworkChoice;
  /** Before the manager recovers: load persisted slots, reap orphans, write the host table, start filling. */
  start(signal: AbortSignal): Promise<void>;
  /** After recovery: free the used slots no adopted VM claimed. */
  finishRecovery(): Promise<void>;
  /** Stop background work; slots persist for the next start (VMs keep running). */
  close(): Promise<void>;
  /** Remove every slot and the host table (tests, uninstall). */
  destroyAll(): Promise<void>;
}

export async function createNetwork(cfg: HearthConfig, store: Store, log: PinoLogger): Promise<DaemonNetwork> {
  const choice = await chooseNetwork({ prefer: cfg.network });
  if (cfg.network === 'netns' && choice.kind !== 'netns') throw new Error(`network: netns was configured but ${choice.reason}`);
  log.info({ network: choice.kind, reason: choice.reason }, `network: ${choice.kind}`);
  if (choice.kind === 'user') {
    const slots = new UserModeSlots([AGENT_PORT]);
    const none = async (): Promise<void> => undefined;
    return { slots, choice, start: none, finishRecovery: none, close: none, destroyAll: none };
  }
  const pool = new NetnsSlots({
    store: new SqliteSlotStore(store),
    log: log.child({ component: 'network' }),
    hostRange: cfg.networkRange,
    poolSize: cfg.networkPoolSize,
    egressInterface: cfg.egressInterface,
    dns: cfg.guestDns,
    tag: cfg.networkTag,
    agentPort: AGENT_PORT,
  });
  return {
    slots: pool,
    choice,
    start: async (signal) => { await pool.start(signal); },
    finishRecovery: async () => { await pool.finishRecovery(); },
    close: () => pool.close(),
    destroyAll: () => pool.destroyAll(),
  };
}
