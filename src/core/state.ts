import { channel } from 'node:diagnostics_channel';
import { ConflictError } from './errors.js';
import type { SandboxRecord, SandboxState } from './types.js';
import type { Store } from '../store/store.js';

/** Allowed transitions (docs/ARCHITECTURE.md, "Lifecycle states"). Anything else is a bug or a 409. */
const TRANSITIONS: Record<SandboxState, readonly SandboxState[]> = {
  creating: ['running', 'failed', 'destroying'],
  running: ['pausing', 'destroying', 'failed'],
  pausing: ['paused', 'running', 'failed', 'destroying'],
  paused: ['resuming', 'destroying', 'failed'],
  resuming: ['running', 'paused', 'failed', 'destroying'],
  destroying: ['destroyed', 'failed'],
  destroyed: [],
  failed: ['destroying'],
};

export function canTransition(from: SandboxState, to: SandboxState): boolean {
  return TRANSITIONS[from].includes(to);
}

export function assertTransition(id: string, from: SandboxState, to: SandboxState): void {
  if (!canTransition(from, to)) {
    throw new ConflictError(`sandbox ${id} is ${from}; it cannot become ${to}`);
  }
}

export function isTerminal(state: SandboxState): boolean {
  return state === 'destroyed';
}

/**
 * The one way a sandbox's state changes: checks the table above, then writes
 * the new state together with `patch` (and every other field of `rec`) in one
 * statement that only applies while the row is still in `rec.state`. `rec` is
 * updated in place once it is stored.
 */
export function transition(store: Store, rec: SandboxRecord, to: SandboxState, patch: Partial<SandboxRecord> = {}): void {
  const from = rec.state;
  assertTransition(rec.id, from, to);
  const next: SandboxRecord = { ...rec, ...patch, state: to };
  store.transitionSandbox(next, from);
  Object.assign(rec, next);
  if (transitions.hasSubscribers) transitions.publish({ store, rec: { ...rec }, from, to } satisfies TransitionMessage);
}

/**
 * Every state change, published after it is stored (node:diagnostics_channel,
 * so the core knows no subscriber): hearthd's event stream, per-sandbox
 * lifecycle logs and metrics (src/observability) listen here. `store` tells a
 * subscriber whose daemon the sandbox belongs to. Subscribers run synchronously
 * inside transition() and must not throw; the record holds secrets.
 */
export interface TransitionMessage { store: Store; rec: SandboxRecord; from: SandboxState; to: SandboxState }
export const TRANSITION_CHANNEL = 'hearth:sandbox-transition';
const transitions = channel(TRANSITION_CHANNEL);
