import { readFileSync, existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { MIN_CLUSTER_TOKEN_LENGTH } from '../cluster/credential.js';
import type { RootfsBackendKind } from '../storage/types.js';
import { DEFAULT_ADMISSION, type AdmissionThresholds } from '../core/headroom.js';
import { DataLayout } from '../core/layout.js';

/**
 * hearthd's configuration. Sources, later wins: defaults → `<dataDir>/config.json`
 * → environment (HEARTH_*) → command-line flags.
 */
export interface HearthConfig {
  dataDir: string;
  /** Kernel, initramfs and debootstrap caches (regenerable; shared by every data dir). */
  cacheDir: string;
  host: string;
  port: number;
  /** Force a storage backend; otherwise chosen from host capabilities. */
  storage?: RootfsBackendKind;
  defaultTimeoutSec: number;
  maxTimeoutSec: number;
  bootTimeoutMs: number;
  restoreTimeoutMs: number;
  maxConcurrentStarts: number;
  maxForks: number;
  /**
   * Hours an ended sandbox (destroyed, or failed with nothing left on the host)
   * stays visible before its rows are purged; 0: purged as it ends. Its secrets
   * are dropped as it ends whatever this is.
   */
  endedRetentionHours: number;
  /** Build the default template's warm snapshot when hearthd starts (else on first create). */
  warmOnStart: boolean;
  /** Restore sandboxes from a template's warm snapshot instead of booting them. */
  warmTemplates: boolean;
  /**
   * Most warm snapshots (distinct vCPU/memory shapes) kept per template. A new
   * shape beyond it replaces the least recently used one that no create is
   * using; when none can go, that create cold-boots and keeps no snapshot.
   */
  warmShapesPerTemplate: number;
  defaultVcpus: number;
  defaultMemoryMib: number;
  /** Require API keys even on loopback (they are always required on other addresses). */
  requireApiKey: boolean;
  /**
   * Who QEMU runs as after start-up (when hearthd is root): 'per-vm' (a uid/gid of
   * its own per VM, chrooted; default), a user name or 'uid:gid' (shared), or 'root'.
   */
  qemuUser: string;
  /** VMM: 'auto' = Firecracker where it can run (see src/daemon/vmm.ts), else QEMU. */
  vmm: 'auto' | 'qemu' | 'firecracker';
  /** The Firecracker binary (PATH lookup when bare). */
  firecrackerBinary: string;
  /** Firecracker guest kernel (vmlinux); null: the one `hearth image kernel --firecracker` built into the cache. */
  firecrackerKernel: string | null;
  /** How Firecracker restores get memory: 'file' (private mmap) or 'uffd' (page server). */
  firecrackerMemory: 'file' | 'uffd';
  /** Network backend: 'auto' = netns where the host allows (root, iproute2, nftables), else user-mode. */
  network: 'auto' | 'netns' | 'user';
  /** Private IPv4 range for the slots' host-side /30s (must not overlap a host route). */
  networkRange: string;
  /** Free netns slots kept ready ahead of demand. */
  networkPoolSize: number;
  /** Name tag for slot objects, so several daemons share a host (tests); '' in production. */
  networkTag: string;
  /** The host interface sandbox egress leaves by (NAT); null = no sandbox reaches beyond the host. */
  egressInterface: string | null;
  /** Resolvers handed to guests (they must be allowed by the egress policy); comma separated in the env. */
  guestDns: string[];
  /** Host form of the port proxy: `<port>-<id>.<proxyDomain>`; null disables it (the path form stays). */
  proxyDomain: string | null;
  /**
   * The `domain` sandboxes announce (E2B's SDKs reach port P of a sandbox at `<P>-<id>.<domain>`).
   * null: `<proxyDomain>:<listen port>` (no port when it is 443, or 80 without TLS). Set it
   * when clients reach hearthd by another name or port (a reverse proxy); docs/e2b-compat.md.
   */
  sandboxDomain: string | null;
  /** PEM certificate (chain) and key files: the listener then also speaks HTTPS, on the same port. */
  tlsCert: string | null;
  tlsKey: string | null;
  /**
   * Host names the API answers to beyond loopback names and the listen address
   * (DNS rebinding defence; on a non-loopback listener with this empty, any name).
   */
  allowedHosts: string[];
  /** A request's headers must arrive within this (ms). */
  headersTimeoutMs: number;
  /** A request body that sends nothing for this long is cut with 408 (ms). */
  bodyIdleTimeoutMs: number;
  /** Idle keep-alive connections are closed after this (ms). */
  keepAliveTimeoutMs: number;
  /** Connections one client address may hold open at once. */
  maxConnectionsPerAddress: number;
  /** Guest memory of running sandboxes may reach host RAM × this ratio; creates beyond get 503. */
  memoryOvercommit: number;
  /**
   * Admission on the host's real headroom (src/core/headroom.ts; 0 turns a check off): a create,
   * resume or fork gets 503 when it would leave less than `admissionMinFreeMemoryMib` of
   * MemAvailable (counting it at `admissionMemoryPerSandboxMib`, at most its guest memory), less
   * than `admissionMinFreeDiskMib` free on the data dir (reserving its memory plus
   * `admissionDiskPerSandboxMib`), or while the 1-minute load per CPU exceeds `admissionMaxLoadPerCpu`.
   */
  admissionMinFreeMemoryMib: number;
  admissionMemoryPerSandboxMib: number;
  admissionMinFreeDiskMib: number;
  admissionDiskPerSandboxMib: number;
  admissionMaxLoadPerCpu: number;
  maxVcpus: number;
  maxMemoryMib: number;
  minMemoryMib: number;
  /**
   * Cluster mode (docs/cluster.md): the PostgreSQL connection string (`postgres://user:pass@host:5432/db`)
   * where nodes and placements are shared; null: a single host on SQLite alone.
   */
  databaseUrl: string | null;
  /** This node's id in the cluster (lower-case letters, digits, dashes); null: the host name. */
  nodeId: string | null;
  /** The base URL other nodes reach this one at (`http://10.0.0.5:3030`); null: the listen address (which must then not be a wildcard). */
  nodeAddress: string | null;
  /** The node-to-node credential (at least 32 characters), the same on every node; required with databaseUrl. */
  clusterToken: string | null;
  /** How often a node heartbeats (and publishes its capacity) into PostgreSQL (ms). */
  clusterHeartbeatMs: number;
  /** A node whose last heartbeat is older than this is marked down by the others (ms; at least 3 heartbeats). */
  clusterNodeExpiryMs: number;
}

export const DEFAULT_DATA_DIR = '/var/lib/hearth';
export const DEFAULT_PORT = 3030;

export function defaultConfig(): HearthConfig {
  return {
    dataDir: DEFAULT_DATA_DIR,
    cacheDir: '/var/cache/hearth',
    host: '127.0.0.1',
    port: DEFAULT_PORT,
    defaultTimeoutSec: 300,
    maxTimeoutSec: 24 * 3600,
    bootTimeoutMs: 90_000,
    restoreTimeoutMs: 30_000,
    maxConcurrentStarts: 2,
    maxForks: 20,
    endedRetentionHours: 24,
    warmOnStart: true,
    warmTemplates: true,
    warmShapesPerTemplate: 4,
    defaultVcpus: 1,
    defaultMemoryMib: 512,
    memoryOvercommit: 1.5,
    admissionMinFreeMemoryMib: DEFAULT_ADMISSION.minFreeMemoryMib,
    admissionMemoryPerSandboxMib: DEFAULT_ADMISSION.memoryPerSandboxMib,
    admissionMinFreeDiskMib: DEFAULT_ADMISSION.minFreeDiskMib,
    admissionDiskPerSandboxMib: DEFAULT_ADMISSION.diskPerSandboxMib,
    admissionMaxLoadPerCpu: DEFAULT_ADMISSION.maxLoadPerCpu,
    requireApiKey: false,
    qemuUser: 'per-vm',
    vmm: 'auto',
    firecrackerBinary: 'firecracker',
    firecrackerKernel: null,
    firecrackerMemory: 'file',
    network: 'auto',
    networkRange: '10.201.0.0/16',
    networkPoolSize: 4,
    networkTag: '',
    egressInterface: null,
    guestDns: [],
    proxyDomain: 'localhost',
    sandboxDomain: null,
    tlsCert: null,
    tlsKey: null,
    allowedHosts: [],
    headersTimeoutMs: 20_000,
    bodyIdleTimeoutMs: 60_000,
    keepAliveTimeoutMs: 65_000,
    maxConnectionsPerAddress: 512,
    maxVcpus: 8,
    maxMemoryMib: 16384,
    minMemoryMib: 128,
    databaseUrl: null,
    nodeId: null,
    nodeAddress: null,
    clusterToken: null,
    clusterHeartbeatMs: 2000,
    clusterNodeExpiryMs: 10_000,
  };
}

const ENV: Record<string, keyof HearthConfig> = {
  HEARTH_DATA_DIR: 'dataDir',
  HEARTH_CACHE_DIR: 'cacheDir',
  HEARTH_HOST: 'host',
  HEARTH_PORT: 'port',
  HEARTH_STORAGE: 'storage',
  HEARTH_DEFAULT_TIMEOUT: 'defaultTimeoutSec',
  HEARTH_BOOT_TIMEOUT_MS: 'bootTimeoutMs',
  HEARTH_RESTORE_TIMEOUT_MS: 'restoreTimeoutMs',
  HEARTH_MAX_CONCURRENT_STARTS: 'maxConcurrentStarts',
  HEARTH_WARM_SHAPES_PER_TEMPLATE: 'warmShapesPerTemplate',
  HEARTH_ENDED_RETENTION_HOURS: 'endedRetentionHours',
  HEARTH_DEFAULT_MEMORY_MB: 'defaultMemoryMib',
  HEARTH_DEFAULT_VCPUS: 'defaultVcpus',
  HEARTH_MEMORY_OVERCOMMIT: 'memoryOvercommit',
  HEARTH_ADMISSION_MIN_FREE_MEMORY_MIB: 'admissionMinFreeMemoryMib',
  HEARTH_ADMISSION_MEMORY_PER_SANDBOX_MIB: 'admissionMemoryPerSandboxMib',
  HEARTH_ADMISSION_MIN_FREE_DISK_MIB: 'admissionMinFreeDiskMib',
  HEARTH_ADMISSION_DISK_PER_SANDBOX_MIB: 'admissionDiskPerSandboxMib',
  HEARTH_ADMISSION_MAX_LOAD_PER_CPU: 'admissionMaxLoadPerCpu',
  HEARTH_REQUIRE_API_KEY: 'requireApiKey',
  HEARTH_VMM: 'vmm',
  HEARTH_QEMU_USER: 'qemuUser',
  HEARTH_FIRECRACKER: 'firecrackerBinary',
  HEARTH_FIRECRACKER_KERNEL: 'firecrackerKernel',
  HEARTH_FIRECRACKER_MEMORY: 'firecrackerMemory',
  HEARTH_NETWORK: 'network',
  HEARTH_NETWORK_RANGE: 'networkRange',
  HEARTH_NETWORK_POOL_SIZE: 'networkPoolSize',
  HEARTH_NETWORK_TAG: 'networkTag',
  HEARTH_EGRESS_INTERFACE: 'egressInterface',
  HEARTH_GUEST_DNS: 'guestDns',
  HEARTH_PROXY_DOMAIN: 'proxyDomain',
  HEARTH_SANDBOX_DOMAIN: 'sandboxDomain',
  HEARTH_TLS_CERT: 'tlsCert',
  HEARTH_TLS_KEY: 'tlsKey',
  HEARTH_ALLOWED_HOSTS: 'allowedHosts',
  HEARTH_HEADERS_TIMEOUT_MS: 'headersTimeoutMs',
  HEARTH_BODY_IDLE_TIMEOUT_MS: 'bodyIdleTimeoutMs',
  HEARTH_KEEPALIVE_TIMEOUT_MS: 'keepAliveTimeoutMs',
  HEARTH_MAX_CONNECTIONS_PER_ADDRESS: 'maxConnectionsPerAddress',
  HEARTH_DATABASE_URL: 'databaseUrl',
  HEARTH_NODE_ID: 'nodeId',
  HEARTH_NODE_ADDRESS: 'nodeAddress',
  HEARTH_CLUSTER_TOKEN: 'clusterToken',
  HEARTH_CLUSTER_HEARTBEAT_MS: 'clusterHeartbeatMs',
  HEARTH_CLUSTER_NODE_EXPIRY_MS: 'clusterNodeExpiryMs',
};

export function loadConfig(overrides: Partial<HearthConfig> = {}, env: NodeJS.ProcessEnv = process.env): HearthConfig {
  const cfg = defaultConfig();
  const dataDir = overrides.dataDir ?? env['HEARTH_DATA_DIR'] ?? cfg.dataDir;
  const file = new DataLayout(dataDir).configFile;
  if (existsSync(file)) Object.assign(cfg, JSON.parse(readFileSync(file, 'utf8')) as Partial<HearthConfig>);
  for (const [name, key] of Object.entries(ENV)) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    const current = cfg[key];
    (cfg as unknown as Record<string, unknown>)[key] = typeof current === 'number' ? parseNumber(name, v)
      : typeof current === 'boolean' ? v === '1' || v === 'true'
        : Array.isArray(current) ? v.split(',').map((x) => x.trim()).filter(Boolean)
          : v;
  }
  Object.assign(cfg, Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined)));
  validate(cfg);
  return cfg;
}

function parseNumber(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number, got "${v}"`);
  return n;
}

function validate(cfg: HearthConfig): void {
  if (!cfg.dataDir.startsWith('/')) throw new Error(`dataDir must be an absolute path, got "${cfg.dataDir}"`);
  if (!Number.isInteger(cfg.port) || cfg.port < 0 || cfg.port > 65535) throw new Error(`port must be 0..65535, got ${cfg.port}`);
  if (typeof cfg.endedRetentionHours !== 'number' || !Number.isFinite(cfg.endedRetentionHours) || cfg.endedRetentionHours < 0) {
    throw new Error(`endedRetentionHours must be a number of hours >= 0, got ${String(cfg.endedRetentionHours)}`);
  }
  if (cfg.storage && !['dm', 'reflink', 'copy'].includes(cfg.storage)) throw new Error(`storage must be dm, reflink or copy, got "${cfg.storage}"`);
  if (!['auto', 'qemu', 'firecracker'].includes(cfg.vmm)) throw new Error(`vmm must be auto, qemu or firecracker, got "${cfg.vmm}"`);
  if (!['file', 'uffd'].includes(cfg.firecrackerMemory)) throw new Error(`firecrackerMemory must be file or uffd, got "${cfg.firecrackerMemory}"`);
  if (!['auto', 'netns', 'user'].includes(cfg.network)) throw new Error(`network must be auto, netns or user, got "${cfg.network}"`);
  if (!/^([a-z][a-z0-9]{0,3})?$/.test(cfg.networkTag)) throw new Error(`networkTag must be empty or a letter and up to 3 of [a-z0-9], got "${cfg.networkTag}"`);
  for (const k of ['headersTimeoutMs', 'bodyIdleTimeoutMs', 'keepAliveTimeoutMs', 'maxConnectionsPerAddress'] as const) {
    if (!Number.isInteger(cfg[k]) || cfg[k] < 1) throw new Error(`${k} must be a positive integer, got ${cfg[k]}`);
  }
  if (!Number.isInteger(cfg.warmShapesPerTemplate) || cfg.warmShapesPerTemplate < 1) throw new Error(`warmShapesPerTemplate must be an integer >= 1, got ${cfg.warmShapesPerTemplate}`);
  if ((cfg.tlsCert === null) !== (cfg.tlsKey === null)) throw new Error('tlsCert and tlsKey go together: set both or neither');
  for (const k of ['admissionMinFreeMemoryMib', 'admissionMemoryPerSandboxMib', 'admissionMinFreeDiskMib', 'admissionDiskPerSandboxMib', 'admissionMaxLoadPerCpu'] as const) {
    if (typeof cfg[k] !== 'number' || !Number.isFinite(cfg[k]) || cfg[k] < 0) throw new Error(`${k} must be a number >= 0 (0 turns the check off), got ${String(cfg[k])}`);
  }
  if (!Number.isInteger(cfg.networkPoolSize) || cfg.networkPoolSize < 0) throw new Error(`networkPoolSize must be an integer >= 0, got ${cfg.networkPoolSize}`);
  validateCluster(cfg);
}

/** Cluster settings (docs/cluster.md); checked whether or not databaseUrl is set, so a typo shows at once. */
function validateCluster(cfg: HearthConfig): void {
  if (cfg.nodeId !== null && !/^[a-z0-9][a-z0-9-]{0,62}$/.test(cfg.nodeId)) throw new Error(`nodeId must be 1 to 63 of [a-z0-9-], starting with a letter or digit, got "${cfg.nodeId}"`);
  if (cfg.nodeAddress !== null && !/^http:\/\/[^/?#\s]+$/.test(cfg.nodeAddress)) throw new Error(`nodeAddress must be http://host:port (no path), got "${cfg.nodeAddress}"`);
  if (!Number.isInteger(cfg.clusterHeartbeatMs) || cfg.clusterHeartbeatMs < 100) throw new Error(`clusterHeartbeatMs must be an integer >= 100, got ${cfg.clusterHeartbeatMs}`);
  if (!Number.isInteger(cfg.clusterNodeExpiryMs) || cfg.clusterNodeExpiryMs < 3 * cfg.clusterHeartbeatMs) {
    throw new Error(`clusterNodeExpiryMs must be an integer of at least 3 heartbeats (${3 * cfg.clusterHeartbeatMs}), got ${cfg.clusterNodeExpiryMs}`);
  }
  if (cfg.databaseUrl !== null) {
    if (!/^postgres(ql)?:\/\//.test(cfg.databaseUrl)) throw new Error('databaseUrl must be a postgres:// or postgresql:// connection string');
    if (cfg.clusterToken === null || cfg.clusterToken.length < MIN_CLUSTER_TOKEN_LENGTH) {
      throw new Error(`cluster mode (databaseUrl) needs clusterToken: at least ${MIN_CLUSTER_TOKEN_LENGTH} characters, the same on every node (e.g. openssl rand -hex 32)`);
    }
  }
}

/** This node's id: nodeId, else the host name made valid. */
export function clusterNodeId(cfg: HearthConfig): string {
  return cfg.nodeId ?? (hostname().toLowerCase().replace(/[^a-z0-9-]/g, '-').replace(/^-+/, '').slice(0, 63) || 'node');
}

/** The admission thresholds a configuration sets (src/core/headroom.ts). */
export function admissionThresholds(cfg: HearthConfig): AdmissionThresholds {
  return {
    minFreeMemoryMib: cfg.admissionMinFreeMemoryMib,
    memoryPerSandboxMib: cfg.admissionMemoryPerSandboxMib,
    minFreeDiskMib: cfg.admissionMinFreeDiskMib,
    diskPerSandboxMib: cfg.admissionDiskPerSandboxMib,
    maxLoadPerCpu: cfg.admissionMaxLoadPerCpu,
  };
}
