/**
 * An http.Agent whose keep-alive pool is keyed by a lease as well as host:port.
 *
 * Why: a netns slot's address (10.201.x.y) is reused by the next sandbox in the
 * slot, and releasing a slot silently drops every flow of the previous tenant
 * (the connection-generation mark). A pooled socket from the previous tenant
 * would then be handed to a request for the new one and hang until TCP gives
 * up (minutes). Keying by a lease (the sandbox and its VMM incarnation) means a
 * socket is only ever reused for the VM it was opened to.
 */
import { Agent, type AgentOptions, type ClientRequestArgs } from 'node:http';

export interface LeasedRequestArgs extends ClientRequestArgs {
  /** Which VM incarnation the connection belongs to (e.g. `<sandboxId>/<vmm pid>`). */
  lease?: string;
}

export class LeaseAgent extends Agent {
  constructor(opts: AgentOptions) {
    // Idle sockets of ended leases are closed after `timeout`.
    super({ timeout: 60_000, ...opts });
  }

  override getName(options?: LeasedRequestArgs): string {
    return `${super.getName(options)}|${options?.lease ?? ''}`;
  }
}
