import { AsyncLocalStorage } from 'node:async_hooks';

/**
 * Who caused what hearthd is doing right now: an API request (its method, route
 * pattern and the id of the API key it presented, if any). The API's first hook
 * runs each API request's handler inside `actors.run(...)`; lifecycle events
 * published synchronously from inside that handler (src/core/state.ts) read it
 * here. Outside a request (timeouts, recovery, reconcile) there is none.
 * Never holds a secret: a key's id, not the key.
 */
export interface Actor {
  keyId: string | null;
  method: string;
  route: string;
}

export const actors = new AsyncLocalStorage<Actor>();

export function currentActor(): Actor | undefined {
  return actors.getStore();
}
