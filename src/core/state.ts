import { ConflictError } from './errors.js';
import type { SandboxState } from './types.js';

/** Allowed transitions (DESIGN §3). Anything else is a bug or a 409. */
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
