export {
  DEFAULT_HOST_RANGE, GATEWAY_IP, GATEWAY_MAC, GUEST_IP, GUEST_MAC, GUEST_PREFIX, NS_VETH_NAME, TAP_NAME,
  AddressPlan, SlotNames, tapGuestKernelArgs, type SlotAddresses,
} from './addressing.js';
export {
  DEFAULT_ALWAYS_DENY, DEFAULT_EGRESS, egressAllows, normalizeEgress, normalizeExposure,
  type EgressPolicy, type Exposure, type SlotPolicy,
} from './policy.js';
export { hostRuleset, slotRuleset } from './rules.js';
export { SlotHost } from './host.js';
export { MemorySlotStore, type SlotRow, type SlotStore } from './store.js';
export { NetnsSlot, NetnsSlots, reapPlan, type NetnsSlotsOptions, type PoolStats, type StartReport } from './pool.js';
export { chooseNetwork, type NetworkChoice, type NetworkCheck } from './probe.js';
export { netRunner } from './run.js';
