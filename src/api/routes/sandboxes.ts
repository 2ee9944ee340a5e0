import type { ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { IdempotencyMismatchError, requestHashOf, type CreateSandboxInput, type SandboxManager } from '../../core/manager.js';
import type { SandboxRecord, SandboxState } from '../../core/types.js';
import { InvalidArgumentError, NotFoundError } from '../../core/errors.js';
import { presentDetail, presentEgress, presentListItem } from '../present.js';
import {
  ErrorSchema, ListQuery, ListQueryV2, MetricsQuery, NetworkPolicy, NetworkUpdate, NewSandbox, SandboxDetail, SandboxIdParams, SandboxListItem, SandboxMetric, TimeoutBody,
} from '../schemas.js';
import type { MetricsSampler } from '../metrics.js';
import type { EgressPolicy } from '../../network/types.js';
import type { Store } from '../../store/store.js';
import { currentActor } from '../../observability/actor.js';
import { errorBody } from '../errors.js';

const STATES: readonly SandboxState[] = ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying', 'destroyed', 'failed'];
const errors = { 400: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema, 500: ErrorSchema, 503: ErrorSchema };

/** A signal that aborts when the client goes away before the answer. */
function requestSignal(res: ServerResponse): AbortSignal {
  const ac = new AbortController();
  res.on('close', () => { if (!res.writableFinished) ac.abort(new Error('client disconnected')); });
  return ac.signal;
}

/** What the E2B-compatible parts of the API need beyond the manager (docs/e2b-compat.md). */
export interface CompatOptions {
  /** The `domain` announced in sandbox answers (E2B's SDKs build `<port>-<id>.<domain>`). */
  sandboxDomain?: () => string | null;
  /** Seconds a connect without `timeout` keeps the sandbox alive at least. */
  defaultTimeoutSec?: number;
  metrics?: MetricsSampler;
}

/** A sandbox as the API shows it: its record, disk usage and the egress in force. */
export async function sandboxDetail(manager: SandboxManager, store: Store, id: string, portDomain: string | null, domain: string | null = null): Promise<SandboxDetail> {
  const s = manager.get(id);
  const ended = s.state === 'destroyed' || s.state === 'failed';
  return presentDetail(s, store.getTemplate(s.templateId), await manager.diskUsage(id), ended ? null : manager.egressOf(id), portDomain, domain, manager.pausedWithMemory(id));
}

/**
 * A sandbox that has not been destroyed. A destroyed (killed) one is a 404 on
 * every sandbox route, as in E2B; its record stays readable at
 * GET /sandboxes/{id}/record until it is purged.
 */
export function notDestroyed(manager: SandboxManager, id: string): SandboxRecord {
  const s = manager.get(id);
  if (s.state === 'destroyed') throw new NotFoundError(`sandbox ${id} was destroyed${s.endedAt ? ` at ${s.endedAt}` : ''} (its record: GET /sandboxes/${id}/record)`);
  return s;
}

/** E2B's metadata filter: `k=v&k2=v2`, each key and value URL-encoded once more. */
export function parseMetadataFilter(q: string | undefined): Record<string, string> | null {
  if (!q) return null;
  const out: Record<string, string> = {};
  const dec = (x: string): string => { try { return decodeURIComponent(x); } catch { return x; } };
  for (const [k, v] of new URLSearchParams(q)) out[dec(k)] = dec(v);
  return out;
}

function matchesMetadata(s: SandboxRecord, want: Record<string, string> | null): boolean {
  if (!want) return true;
  return Object.entries(want).every(([k, v]) => s.metadata[k] === v);
}

/** Page cursors: opaque to clients, the sort key of the last item given. */
export function encodeCursor(at: string, id: string): string {
  return Buffer.from(JSON.stringify([at, id]), 'utf8').toString('base64url');
}

export function decodeCursor(token: string): [string, string] {
  try {
    const v = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as unknown;
    if (Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && typeof v[1] === 'string') return [v[0], v[1]];
  } catch { /* fall through */ }
  throw new InvalidArgumentError('querystring/nextToken is not a token this API gave out', 'nextToken');
}

/**
 * One page of `items`, sorted by (key, id) in `order`, starting after the
 * cursor; `next` is the cursor of the following page, if any.
 */
export function page<T>(items: T[], keyOf: (t: T) => [string, string], order: 'asc' | 'desc', limit: number, nextToken: string | undefined): { items: T[]; next: string | null } {
  const dir = order === 'asc' ? 1 : -1;
  const cmp = (a: [string, string], b: [string, string]): number => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0);
  let sorted = [...items].sort((a, b) => dir * cmp(keyOf(a), keyOf(b)));
  if (nextToken) {
    const after = decodeCursor(nextToken);
    sorted = sorted.filter((t) => dir * cmp(keyOf(t), after) > 0);
  }
  const out = sorted.slice(0, limit);
  const last = out.at(-1);
  return { items: out, next: sorted.length > limit && last ? encodeCursor(...keyOf(last)) : null };
}

/** The `limit` query parameter: 1 to 100, default 100. */
export function pageLimit(raw: string | undefined): number {
  if (raw === undefined) return 100;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 100) throw new InvalidArgumentError('querystring/limit must be an integer from 1 to 100', 'limit');
  return n;
}

/** E2B's egress fields → a policy request; undefined when none is given (the host default applies). */
function egressRequest(internet: boolean | undefined, allowOut: string[] | undefined, denyOut: string[] | undefined): Partial<EgressPolicy> | undefined {
  if (internet === undefined && allowOut === undefined && denyOut === undefined) return undefined;
  return {
    ...(internet !== undefined ? { internet } : {}),
    ...(allowOut !== undefined ? { allow: allowOut } : {}),
    ...(denyOut !== undefined ? { deny: denyOut } : {}),
  };
}

export function sandboxRoutes(app: FastifyInstance, manager: SandboxManager, store: Store, portDomain: string | null = null, compat: CompatOptions = {}): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const domain = (): string | null => compat.sandboxDomain?.() ?? null;

  // E2B's SDKs create with POST /v2/sandboxes since e2b 2.51, POST /sandboxes before: the same route.
  for (const path of ['/sandboxes', '/v2/sandboxes']) r.post(path, {
    schema: {
      summary: path === '/sandboxes' ? 'Create a sandbox (a running VM) from a template' : 'Create a sandbox (E2B v2 path; the same as POST /sandboxes)',
      description: 'With header Idempotency-Key (1 to 200 characters, kept 24 h per API key): a retry with the same body gets the first '
        + 'request\'s sandbox (201, header idempotent-replayed: true) or its error; another body under the same key is a 422.',
      tags: ['sandboxes'], body: NewSandbox, response: { 201: SandboxDetail, ...errors, 422: ErrorSchema },
    },
  }, async (req, reply) => {
    const b = req.body;
    const idem = req.headers['idempotency-key'];
    if (idem !== undefined && (typeof idem !== 'string' || idem.length < 1 || idem.length > 200)) {
      throw new InvalidArgumentError('headers/idempotency-key must be 1 to 200 characters', 'idempotency-key');
    }
    let idempotency: Pick<CreateSandboxInput, 'idempotencyKey' | 'idempotencyScope' | 'requestHash'> = {};
    if (typeof idem === 'string') {
      // A key belongs to the API key that sent it (as the first hook verified it, here or on the node
      // that forwarded the create); the body it first came with is remembered by its hash.
      const owner = currentActor()?.keyId ?? null;
      idempotency = { idempotencyKey: idem, idempotencyScope: owner ?? '', requestHash: requestHashOf(b) };
    }
    const egress = egressRequest(b.allow_internet_access, b.network?.allowOut, b.network?.denyOut);
    const input: CreateSandboxInput = {
      ...idempotency,
      templateId: b.templateID,
      ...(b.cpuCount !== undefined ? { vcpus: b.cpuCount } : {}),
      ...(b.memoryMB !== undefined ? { memoryMib: b.memoryMB } : {}),
      ...(b.timeout !== undefined ? { timeoutSec: b.timeout } : {}),
      ...(b.envVars ? { envVars: b.envVars } : {}),
      ...(b.metadata ? { metadata: b.metadata } : {}),
      network: {
        ...(egress ? { egress } : {}),
        ...(b.network?.allowPublicTraffic !== undefined ? { publicTraffic: b.network.allowPublicTraffic } : {}),
      },
      lifecycle: {
        ...(b.autoPause !== undefined ? { onTimeout: b.autoPause ? 'pause' as const : 'kill' as const } : {}),
        ...(b.autoPauseMemory !== undefined ? { keepMemory: b.autoPauseMemory } : {}),
        ...(b.autoResume ? { autoResume: b.autoResume.enabled } : {}),
        ...(b.lifecycle ?? {}),
      },
    };
    let created: Awaited<ReturnType<SandboxManager['createSandbox']>>;
    try {
      created = await manager.createSandbox(input, requestSignal(reply.raw));
    } catch (err) {
      if (err instanceof IdempotencyMismatchError) return reply.status(422).send(errorBody(422, err.message, err.code));
      throw err;
    }
    // A replay answers as the first request did (201), and says it is one.
    if (created.replayed) void reply.header('idempotent-replayed', 'true');
    return reply.status(201).send(await sandboxDetail(manager, store, created.sandbox.id, portDomain, domain()));
  });

  r.get('/sandboxes', {
    schema: { summary: 'List sandboxes (default: every state but destroyed)', tags: ['sandboxes'], querystring: ListQuery, response: { 200: Type.Array(SandboxListItem), 400: ErrorSchema } },
  }, async (req) => {
    let states: SandboxState[] | undefined;
    if (req.query.state) {
      states = req.query.state.split(',') as SandboxState[];
      const bad = states.find((s) => !STATES.includes(s));
      if (bad) throw new InvalidArgumentError(`querystring/state: unknown state "${bad}" (one of ${STATES.join(', ')})`, 'state');
    }
    const want = parseMetadataFilter(req.query.metadata);
    return manager.list(states).filter((s) => matchesMetadata(s, want)).map((s) => presentListItem(s, store.getTemplate(s.templateId), domain()));
  });

  r.get('/v2/sandboxes', {
    schema: {
      summary: 'List running and paused sandboxes (E2B v2): metadata, state, startedAfter and template filters, order by start time, pages',
      description: 'Pages of `limit` (default 100); header X-Next-Token is the `nextToken` of the next page, absent on the last one.',
      tags: ['sandboxes'], querystring: ListQueryV2, response: { 200: Type.Array(SandboxListItem), 400: ErrorSchema },
    },
  }, async (req, reply) => {
    const q = req.query;
    const raw = q.state === undefined ? ['running', 'paused'] : (Array.isArray(q.state) ? q.state : [q.state]).flatMap((x) => x.split(',')).filter(Boolean);
    const bad = raw.find((x) => x !== 'running' && x !== 'paused');
    if (bad !== undefined) throw new InvalidArgumentError(`querystring/state: unknown state "${bad}" (running or paused)`, 'state');
    let after: number | null = null;
    if (q.startedAfter !== undefined) {
      after = Date.parse(q.startedAfter);
      if (!Number.isFinite(after)) throw new InvalidArgumentError('querystring/startedAfter must be an RFC 3339 time', 'startedAfter');
    }
    const want = parseMetadataFilter(q.metadata);
    const started = (s: SandboxRecord): string => s.startedAt ?? s.createdAt;
    const all = manager.list(raw as SandboxState[]).filter((s) => matchesMetadata(s, want)
      && (after === null || Date.parse(started(s)) >= after)
      && (!q.template || s.templateId === q.template));
    const { items, next } = page(all, (s) => [started(s), s.id], q.order ?? 'desc', pageLimit(q.limit), q.nextToken);
    if (next) void reply.header('x-next-token', next);
    return items.map((s) => presentListItem(s, store.getTemplate(s.templateId), domain()));
  });

  r.get('/sandboxes/:sandboxID', {
    schema: { summary: 'Get a sandbox (404 once destroyed, as in E2B; a failed one is shown with why it failed)', tags: ['sandboxes'], params: SandboxIdParams, response: { 200: SandboxDetail, ...errors } },
  }, async (req) => {
    notDestroyed(manager, req.params.sandboxID);
    return sandboxDetail(manager, store, req.params.sandboxID, portDomain, domain());
  });

  r.get('/sandboxes/:sandboxID/record', {
    schema: { summary: 'A sandbox\'s record in any state, ended ones included until they are purged (endedAt, endReason, timings)', tags: ['sandboxes'], params: SandboxIdParams, response: { 200: SandboxDetail, ...errors } },
  }, async (req) => sandboxDetail(manager, store, req.params.sandboxID, portDomain, domain()));

  r.get('/sandboxes/:sandboxID/metrics', {
    schema: {
      summary: 'CPU, memory and disk samples over time (E2B\'s shape), oldest first',
      description: 'Sampled from the guest agent every few seconds while the sandbox runs (the last hour is kept, in memory); `start`/`end` are unix seconds.',
      tags: ['sandboxes'], params: SandboxIdParams, querystring: MetricsQuery, response: { 200: Type.Array(SandboxMetric), ...errors },
    },
  }, async (req) => {
    const s = notDestroyed(manager, req.params.sandboxID);
    if (!compat.metrics) return [];
    const num = (x: string | undefined): number | undefined => (x === undefined ? undefined : Number(x));
    return compat.metrics.samples(s.id, s.state === 'running', num(req.query.start), num(req.query.end));
  });

  r.get('/sandboxes/:sandboxID/network', {
    schema: { summary: 'The egress policy in force', tags: ['network'], params: SandboxIdParams, response: { 200: NetworkPolicy, ...errors } },
  }, async (req) => {
    notDestroyed(manager, req.params.sandboxID);
    return presentEgress(manager.egressOf(req.params.sandboxID));
  });

  r.put('/sandboxes/:sandboxID/network', {
    schema: {
      summary: 'Replace the egress policy: at once while running (open connections included), at the next resume while paused',
      tags: ['network'], params: SandboxIdParams, body: NetworkUpdate, response: { 200: NetworkPolicy, ...errors },
    },
  }, async (req) => {
    notDestroyed(manager, req.params.sandboxID);
    const b = req.body;
    const e = await manager.setEgress(req.params.sandboxID, egressRequest(b.allow_internet_access, b.allowOut, b.denyOut) ?? {}, AbortSignal.timeout(60_000));
    return presentEgress(e);
  });

  r.delete('/sandboxes/:sandboxID', {
    schema: { summary: 'Destroy a sandbox (404 if it is already destroyed, as in E2B)', tags: ['sandboxes'], params: SandboxIdParams, response: { 204: Type.Null(), ...errors } },
  }, async (req, reply) => {
    notDestroyed(manager, req.params.sandboxID);
    // Cleanup must finish even if the client goes away: a fresh, bounded signal.
    await manager.destroy(req.params.sandboxID, AbortSignal.timeout(120_000));
    return reply.status(204).send(null);
  });

  r.post('/sandboxes/:sandboxID/timeout', {
    schema: { summary: 'Set the sandbox to end `timeout` seconds from now (may shorten)', tags: ['sandboxes'], params: SandboxIdParams, body: TimeoutBody, response: { 204: Type.Null(), ...errors } },
  }, async (req, reply) => {
    notDestroyed(manager, req.params.sandboxID);
    manager.setTimeout(req.params.sandboxID, req.body.timeout);
    return reply.status(204).send(null);
  });
}
