import { Type, type Static } from 'typebox';

/**
 * One schema per shape: it validates input, types the handler, shapes the
 * output and generates /openapi.json. Field names follow E2B's control-plane
 * API (templateID, cpuCount, memoryMB, envVars…) so E2B clients need no mapping.
 */

export const ErrorSchema = Type.Object({
  code: Type.Integer({ description: 'Equals the HTTP status' }),
  message: Type.String(),
  error_code: Type.Optional(Type.String({ description: 'Stable machine code: not_found, invalid_argument, conflict, …' })),
}, { $id: 'Error' });

export const SandboxIdParams = Type.Object({
  sandboxID: Type.String({ pattern: '^[a-z0-9]{1,64}$', description: 'Sandbox id ([a-z0-9])' }),
});

const CidrList = Type.Array(Type.String({ minLength: 7, maxLength: 18, description: 'IPv4 address or CIDR' }), { maxItems: 1024 });

/** A sandbox's egress, as E2B names it; deny wins over allow. */
export const NetworkPolicy = Type.Object({
  allow_internet_access: Type.Boolean(),
  allowOut: Type.Array(Type.String()),
  denyOut: Type.Array(Type.String()),
});
export type NetworkPolicy = Static<typeof NetworkPolicy>;

export const NetworkUpdate = Type.Object({
  allow_internet_access: Type.Optional(Type.Boolean()),
  allowOut: Type.Optional(CidrList),
  denyOut: Type.Optional(CidrList),
}, { additionalProperties: false, description: 'Replaces the egress policy; fields not given take the host default' });

const StringMap = Type.Record(Type.String({ maxLength: 256 }), Type.String({ maxLength: 16384 }), { maxProperties: 256 });

export const NewSandbox = Type.Object({
  templateID: Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9][A-Za-z0-9._:/-]*$', description: 'Template id (default "base")' }),
  timeout: Type.Optional(Type.Integer({ minimum: 1, description: 'Seconds until the sandbox is destroyed (default from config)' })),
  cpuCount: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
  memoryMB: Type.Optional(Type.Integer({ minimum: 64, maximum: 1048576 })),
  envVars: Type.Optional(StringMap),
  metadata: Type.Optional(StringMap),
  secure: Type.Optional(Type.Boolean({ description: 'Accepted for E2B compatibility; the agent token is always enforced' })),
  allow_internet_access: Type.Optional(Type.Boolean({ description: 'Egress to destinations not on network.allowOut (default: the host policy, normally true)' })),
  network: Type.Optional(Type.Object({
    allowOut: Type.Optional(CidrList),
    denyOut: Type.Optional(CidrList),
    allowPublicTraffic: Type.Optional(Type.Boolean({ description: 'false: the port proxy requires the header e2b-traffic-access-token (default true)' })),
  }, { additionalProperties: false })),
  autoPause: Type.Optional(Type.Boolean({ description: 'E2B: pause instead of destroy at the timeout' })),
  autoPauseMemory: Type.Optional(Type.Boolean({ description: 'E2B: with autoPause, false makes the timeout pause filesystem-only (the disk is kept, memory is not; the resume boots). Default true' })),
  autoResume: Type.Optional(Type.Object({ enabled: Type.Boolean() }, { description: 'E2B: traffic through the proxy resumes a paused sandbox (not one paused filesystem-only)' })),
  lifecycle: Type.Optional(Type.Object({
    onTimeout: Type.Optional(Type.Union([Type.Literal('kill'), Type.Literal('pause')])),
    keepMemory: Type.Optional(Type.Boolean({ description: 'With onTimeout "pause": false makes that pause filesystem-only (default true); the same as autoPauseMemory' })),
    autoResume: Type.Optional(Type.Boolean()),
    autoExtend: Type.Optional(Type.Boolean({ description: 'Proxied traffic pushes the end to at least now + timeout' })),
  }, { additionalProperties: false })),
}, { additionalProperties: true });
export type NewSandbox = Static<typeof NewSandbox>;

const Timing = Type.Object({ op: Type.String(), steps: Type.Array(Type.Object({ step: Type.String(), ms: Type.Number() })) });

const SandboxFields = {
  sandboxID: Type.String(),
  templateID: Type.String(),
  clientID: Type.String({ description: 'Always "6532622b" (E2B compatibility)' }),
  envdVersion: Type.String(),
  state: Type.String({ description: 'creating | running | pausing | paused | resuming | destroying | destroyed | failed' }),
  cpuCount: Type.Integer(),
  memoryMB: Type.Integer(),
  diskSizeMB: Type.Integer(),
  metadata: StringMap,
  createdAt: Type.String({ format: 'date-time' }),
  startedAt: Type.String({ format: 'date-time', description: 'When it became running (createdAt while creating)' }),
  endAt: Type.String({ format: 'date-time', description: 'When its timeout ends it (counted from when it started running: create, resume, connect)' }),
  endedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  endReason: Type.Union([Type.String(), Type.Null()], { description: 'Why it ended (destroyed, failed, timeout)' }),
  domain: Type.Union([Type.String(), Type.Null()], { description: 'Sandbox domain: E2B\'s SDKs reach port P of the sandbox at <P>-<sandboxID>.<domain> (may include :port); null when hearthd has no proxy domain' }),
};

export const SandboxListItem = Type.Object(SandboxFields, { $id: 'ListedSandbox' });

export const SandboxDetail = Type.Object({
  ...SandboxFields,
  envdAccessToken: Type.String({ description: 'X-Access-Token for the sandbox agent (envd)' }),
  envVars: StringMap,
  lifecycle: Type.Object({ onTimeout: Type.String(), keepMemory: Type.Boolean(), autoResume: Type.Boolean(), autoExtend: Type.Boolean() }),
  pausedWithMemory: Type.Union([Type.Boolean(), Type.Null()], { description: 'While paused: true when memory was kept (a resume continues every process), false for a filesystem-only pause (a resume boots from the disk); null otherwise' }),
  vmm: Type.Union([Type.Object({ kind: Type.String(), pid: Type.Integer() }), Type.Null()]),
  diskUsageBytes: Type.Union([Type.Integer(), Type.Null()], { description: 'Allocated blocks of the root disk (st_blocks*512)' }),
  timings: Type.Union([Timing, Type.Null()]),
  network: Type.Union([NetworkPolicy, Type.Null()], { description: 'Egress in force (null once ended)' }),
  allowInternetAccess: Type.Union([Type.Boolean(), Type.Null()], { description: 'E2B\'s name for network.allow_internet_access (null once ended)' }),
  allowPublicTraffic: Type.Boolean(),
  trafficAccessToken: Type.Union([Type.String(), Type.Null()], { description: 'Header e2b-traffic-access-token for the port proxy when allowPublicTraffic is false' }),
  portDomain: Type.Union([Type.String(), Type.Null()], { description: 'Ports are served at <port>-<sandboxID>.<portDomain> on the API port (an origin of their own); null: only /sandboxes/{id}/ports/{port}/' }),
}, { $id: 'SandboxDetail' });
export type SandboxDetail = Static<typeof SandboxDetail>;
export type SandboxListItem = Static<typeof SandboxListItem>;

export const ListQuery = Type.Object({
  state: Type.Optional(Type.String({ pattern: '^[a-z]+(,[a-z]+)*$', description: 'Comma-separated states (default: all but destroyed)' })),
  metadata: Type.Optional(Type.String({ maxLength: 8192, description: 'URL-encoded `k=v&k2=v2`: sandboxes whose metadata has every pair' })),
});

export const TimeoutBody = Type.Object({ timeout: Type.Integer({ minimum: 0 }) });

export const TemplateSchema = Type.Object({
  templateID: Type.String(),
  imageHash: Type.String(),
  cpuCount: Type.Integer(),
  memoryMB: Type.Integer(),
  diskSizeMB: Type.Integer(),
  createdAt: Type.String({ format: 'date-time' }),
  aliases: Type.Array(Type.String()),
  source: Type.Union([Type.Literal('image'), Type.Literal('build'), Type.Literal('sandbox'), Type.Literal('snapshot')]),
  from: Type.Union([Type.String(), Type.Null()], { description: 'The template it was built on' }),
  buildID: Type.Union([Type.String(), Type.Null()]),
  envVars: Type.Record(Type.String(), Type.String(), { description: 'What every sandbox\'s commands get (a create\'s envVars win)' }),
  user: Type.Union([Type.String(), Type.Null()]),
  workdir: Type.Union([Type.String(), Type.Null()]),
  startCommand: Type.Union([Type.String(), Type.Null()]),
  readyCheck: Type.Union([Type.Object({ port: Type.Integer() }), Type.Object({ command: Type.String() }), Type.Null()]),
  layers: Type.Array(Type.Object({ key: Type.String(), step: Type.String(), sizeBytes: Type.Integer() })),
}, { $id: 'Template' });

export const PauseBody = Type.Object({
  memory: Type.Optional(Type.Boolean({ description: 'Keep memory (default true). false: a filesystem-only pause: the guest syncs its disks, the VM stops, only the disk is kept; the resume boots from it (processes are gone)' })),
});

export const ResumeBody = Type.Object({
  timeout: Type.Optional(Type.Integer({ minimum: 1, description: 'Seconds the resumed sandbox lives (default from config)' })),
  autoPause: Type.Optional(Type.Boolean()),
  memory: Type.Optional(Type.Boolean({ description: 'false: boot from the disk even if memory was kept (its memory is dropped). A filesystem-only pause always boots' })),
});

export const ConnectBody = Type.Object({
  timeout: Type.Optional(Type.Integer({ minimum: 0, description: 'Seconds from now the sandbox lives at least (default: the daemon\'s default timeout, 300 s unless configured)' })),
  memory: Type.Optional(Type.Boolean({ description: 'E2B (onResume "reboot"): false resumes a paused sandbox by a boot from its disk, dropping kept memory; ignored for a running one' })),
});

/** E2B's list query (GET /v2/sandboxes; also understood by GET /sandboxes). */
export const ListQueryV2 = Type.Object({
  metadata: Type.Optional(Type.String({ maxLength: 8192, description: 'URL-encoded `k=v&k2=v2`: sandboxes whose metadata has every pair' })),
  state: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String())], { description: 'running, paused (comma-separated or repeated; default both)' })),
  startedAfter: Type.Optional(Type.String({ maxLength: 64, description: 'RFC 3339 time: sandboxes started at or after it' })),
  template: Type.Optional(Type.String({ maxLength: 128 })),
  order: Type.Optional(Type.Union([Type.Literal('asc'), Type.Literal('desc')], { description: 'By start time, across the whole result (default desc, newest first)' })),
  limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,9}$', description: 'Page size, 1 to 100 (default 100); the header X-Next-Token carries the cursor of the next page' })),
  nextToken: Type.Optional(Type.String({ maxLength: 512 })),
});

export const MetricsQuery = Type.Object({
  start: Type.Optional(Type.String({ pattern: '^[0-9]{1,12}$', description: 'Unix seconds (default: the oldest sample kept)' })),
  end: Type.Optional(Type.String({ pattern: '^[0-9]{1,12}$', description: 'Unix seconds (default: now)' })),
});

export const SandboxMetric = Type.Object({
  timestamp: Type.String({ format: 'date-time' }),
  timestampUnix: Type.Integer(),
  cpuCount: Type.Integer(),
  cpuUsedPct: Type.Number(),
  memUsed: Type.Integer(),
  memTotal: Type.Integer(),
  memCache: Type.Integer(),
  diskUsed: Type.Integer(),
  diskTotal: Type.Integer(),
  hostCpuUsedPct: Type.Optional(Type.Union([Type.Number(), Type.Null()], { description: 'Hearth: the VMM process\'s CPU use seen from the host, in % of the sandbox\'s vCPUs (null until a second reading)' })),
  hostMemRss: Type.Optional(Type.Union([Type.Integer(), Type.Null()], { description: 'Hearth: the VMM process\'s resident memory on the host (bytes)' })),
  hostDiskUsed: Type.Optional(Type.Union([Type.Integer(), Type.Null()], { description: 'Hearth: blocks the sandbox\'s disk takes in the data dir (bytes)' })),
});

export const SnapshotBody = Type.Object({
  name: Type.Optional(Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' })),
});

export const SnapshotInfo = Type.Object({
  snapshotID: Type.String(),
  names: Type.Array(Type.String()),
  sandboxID: Type.Union([Type.String(), Type.Null()]),
  templateID: Type.String(),
  cpuCount: Type.Integer(),
  memoryMB: Type.Integer(),
  createdAt: Type.String({ format: 'date-time' }),
  sizeBytes: Type.Integer({ description: 'Allocated blocks of the snapshot files (st_blocks*512)' }),
}, { $id: 'SnapshotInfo' });

export const SnapshotIdParams = Type.Object({ snapshotID: Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' }) });

export const ForkBody = Type.Object({
  count: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, description: 'How many sandboxes (default 1)' })),
  timeout: Type.Optional(Type.Integer({ minimum: 1, description: 'Seconds each fork lives (default from config)' })),
});

export const ForkResult = Type.Object({
  sandbox: Type.Optional(SandboxDetail),
  error: Type.Optional(Type.Object({ code: Type.Integer(), message: Type.String(), error_code: Type.String() })),
});
