/**
 * Wire constants of the in-guest agent (the envd protocol: docs/agent.md, "Wire protocol").
 *
 * The host imports this file, so it must stay free of imports (no node:*, no generated code).
 */

/** TCP port the agent listens on inside the guest (envd's port). */
export const AGENT_PORT = 49983;

/** envd version the agent reports; SDK feature gates need >= 0.6.4 (docs/agent.md, "Version gates"). */
export const ENVD_VERSION = '0.6.13';

/** Fully qualified Connect service names (URL = /<service>/<Method>). */
export const PROCESS_SERVICE = 'process.Process';
export const FILESYSTEM_SERVICE = 'filesystem.Filesystem';

/** Request/response header names used by the protocol (lower-case; HTTP header names are case-insensitive). */
export const HEADER_ACCESS_TOKEN = 'x-access-token';
export const HEADER_ENVD_VERSION = 'x-envd-version';
export const HEADER_CONNECT_TIMEOUT_MS = 'connect-timeout-ms';
export const HEADER_KEEPALIVE_PING_INTERVAL = 'keepalive-ping-interval';
export const HEADER_CONNECT_PROTOCOL_VERSION = 'connect-protocol-version';
export const HEADER_SANDBOX_ID = 'e2b-sandbox-id';
export const HEADER_SANDBOX_PORT = 'e2b-sandbox-port';
/** Prefix of upload metadata headers (`X-Metadata-<key>`), stored as xattr `user.e2b.<key>`. */
export const HEADER_METADATA_PREFIX = 'x-metadata-';

/** REST paths served next to the Connect services. */
export const PATH_HEALTH = '/health';
export const PATH_FILES = '/files';
export const PATH_INIT = '/init';
export const PATH_ENVS = '/envs';
export const PATH_METRICS = '/metrics';

/** Body of every 401 from the token check (envd's exact text). */
export const UNAUTHORIZED_MESSAGE =
  'unauthorized access, please provide a valid access token or method signing if supported';

/** Default seconds between keepalive events on Start/Connect/WatchDir when the client sends no interval. */
export const DEFAULT_KEEPALIVE_SECONDS = 90;

/** Largest data event payload for pipe output (PTY output uses PTY_CHUNK_BYTES). */
export const STD_CHUNK_BYTES = 32 * 1024;
export const PTY_CHUNK_BYTES = 16 * 1024;

/** How long exit information of a finished process stays available to Connect/List by pid. */
export const EXIT_RETENTION_MS = 30_000;

/**
 * Body of `POST /init`. Every field is optional; unknown fields are ignored, so newer hosts can
 * talk to older agents. `hearth` is Hearth's extension and is ignorable by envd-compatible servers.
 */
export interface InitRequestBody {
  envVars?: Record<string, string>;
  accessToken?: string;
  /** RFC 3339. */
  timestamp?: string;
  defaultUser?: string;
  defaultWorkdir?: string;
  volumeMounts?: Array<{ nfs_target: string; path: string }>;
  hyperloopIP?: string;
  lifecycleID?: string;
  caBundle?: string;
  hearth?: {
    sandboxId?: string;
    /** Base64 bytes mixed into the guest's entropy pool (written to /dev/urandom). */
    entropy?: string;
  };
}

/** Body of `GET /metrics`. */
export interface AgentMetrics {
  ts: number;
  cpu_count: number;
  cpu_used_pct: number;
  mem_total: number;
  mem_used: number;
  mem_cache: number;
  mem_total_mib: number;
  mem_used_mib: number;
  disk_used: number;
  disk_total: number;
}

/** `"v1_" + base64(sha256("<path>:<op>:<username>:<token>[:<expiration>]"))` without padding: envd's /files URL signature. */
export const FILES_SIGNATURE_PREFIX = 'v1_';
