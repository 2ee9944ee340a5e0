import { AGENT_PORT } from './protocol.js';

/** Start-up configuration of the agent, read from the environment (see docs/agent.md). */
export interface AgentConfig {
  host: string;
  port: number;
  /** User for requests without Basic auth, until `/init` sets `defaultUser`. */
  defaultUser: string;
  defaultWorkdir: string | undefined;
  /** Initial access token (normally set by `/init`); empty means none. */
  accessToken: string | undefined;
  /** cgroup (v2) directory user processes are moved into; skipped when it doesn't exist. */
  userCgroupDir: string;
  /** `date` binary used to set the clock from `/init` `timestamp`; empty disables clock setting. */
  dateBin: string;
  /** Where `/init` `hearth.entropy` bytes are written. */
  urandomPath: string;
  /** PATH given to user processes. */
  processPath: string;
  /** The hearth-pty helper binary for PTY sessions (native/pty/hearth-pty.c). */
  ptyHelper: string;
  /**
   * The binary run once as `<sysHelper> --sys` (as root) to set the clock and reseed the CRNG
   * for `/init` without spawning a process per call; empty disables it (then `dateBin` and perl).
   */
  sysHelper: string;
  /** Run a login-shell command through the agent's own request path once at start, before reporting healthy. */
  warmup: boolean;
}

/** Where the image installs the PTY helper (src/images/rootfs.ts PTY_HELPER_GUEST_PATH). */
export const DEFAULT_PTY_HELPER = '/usr/local/lib/hearth/hearth-pty';

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export function configFromEnv(env: NodeJS.ProcessEnv = process.env): AgentConfig {
  const portText = env.HEARTH_AGENT_PORT;
  const port = portText === undefined || portText === '' ? AGENT_PORT : Number(portText);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`HEARTH_AGENT_PORT must be a port number, got '${portText}'`);
  }
  return {
    host: env.HEARTH_AGENT_HOST || '0.0.0.0',
    port,
    defaultUser: env.HEARTH_AGENT_DEFAULT_USER || 'user',
    defaultWorkdir: env.HEARTH_AGENT_DEFAULT_WORKDIR || undefined,
    accessToken: env.HEARTH_AGENT_ACCESS_TOKEN || undefined,
    userCgroupDir: env.HEARTH_AGENT_USER_CGROUP ?? '/sys/fs/cgroup/hearth/user',
    dateBin: env.HEARTH_AGENT_DATE_BIN ?? 'date',
    urandomPath: env.HEARTH_AGENT_URANDOM ?? '/dev/urandom',
    processPath: env.PATH || DEFAULT_PATH,
    ptyHelper: env.HEARTH_AGENT_PTY_HELPER ?? DEFAULT_PTY_HELPER,
    sysHelper: env.HEARTH_AGENT_SYS_HELPER ?? DEFAULT_PTY_HELPER,
    warmup: (env.HEARTH_AGENT_WARMUP ?? '1') !== '0',
  };
}
