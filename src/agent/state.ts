import type { AgentConfig } from './config.js';

/**
 * Mutable per-sandbox state, set at start-up and by `POST /init` (called by the host on every
 * create and restore). One instance per agent; handlers read it at call time.
 */
export class AgentState {
  /** Sandbox-global environment for every process (replaced wholesale by `/init` `envVars`). */
  envVars: Record<string, string> = {};
  /** Required `X-Access-Token`; undefined = no auth. */
  accessToken: string | undefined;
  defaultUser: string;
  defaultWorkdir: string | undefined;
  /** Last `/init` timestamp applied (ms since epoch); older or equal ones are ignored. */
  lastTimestampMs = 0;
  /** Hearth extension: the sandbox's id, for logs. */
  sandboxId: string | undefined;

  constructor(readonly config: AgentConfig) {
    this.accessToken = config.accessToken;
    this.defaultUser = config.defaultUser;
    this.defaultWorkdir = config.defaultWorkdir;
  }
}
