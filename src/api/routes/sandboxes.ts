import type { ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { IdempotencyMismatchError, requestHashOf, type CreateSandboxInput, type SandboxManager } from '../../core/manager.js';
import type { SandboxState } from '../../core/types.js';
import { InvalidArgumentError } from '../../core/errors.js';
import { presentDetail, presentEgress, presentListItem } from '../present.js';
import {
  ErrorSchema, ListQuery, NetworkPolicy, NetworkUpdate, NewSandbox, SandboxDetail, SandboxIdParams, SandboxListItem, TimeoutBody,
} from '../schemas.js';
import type { EgressPolicy } from '../../network/types.js';
import type { Store } from '../../store/store.js';
import { verifyApiKey } from '../auth.js';
import { errorBody } from '../errors.js';

const STATES: readonly SandboxState[] = ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying', 'destroyed', 'failed'];
const errors = { 400: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema, 500: ErrorSchema, 503: ErrorSchema };

/** A signal that aborts when the client goes away before the answer. */
function requestSignal(res: ServerResponse): AbortSignal {
  const ac = new AbortController();
  res.on('close', () => { if (!res.writableFinished) ac.abort(new Error('client disconnected')); });
  return ac.signal;
}

/** A sandbox as the API shows it: its record, disk usage and the egress in force. */
export async function sandboxDetail(manager: SandboxManager, store: Store, id: string, portDomain: string | null): Promise<SandboxDetail> {
  const s = manager.get(id);
  const ended = s.state === 'destroyed' || s.state === 'failed';
  return presentDetail(s, store.getTemplate(s.templateId), await manager.diskUsage(id), ended ? null : manager.egressOf(id), portDomain);
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

export function sandboxRoutes(app: FastifyInstance, manager: SandboxManager, store: Store, portDomain: string | null = null): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();

  r.post('/sandboxes', {
    schema: {
      summary: 'Create a sandbox (a running VM) from a template',
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
      // A key belongs to the API key that sent it; the body it first came with is remembered by its hash.
      const apiKey = req.headers['x-api-key'];
      const owner = verifyApiKey(store, typeof apiKey === 'string' ? apiKey : undefined);
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
    return reply.status(201).send(await sandboxDetail(manager, store, created.sandbox.id, portDomain));
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
    return manager.list(states).map((s) => presentListItem(s, store.getTemplate(s.templateId)));
  });

  r.get('/sandboxes/:sandboxID', {
    schema: { summary: 'Get a sandbox, including recently ended ones and why they ended', tags: ['sandboxes'], params: SandboxIdParams, response: { 200: SandboxDetail, ...errors } },
  }, async (req) => {
    return sandboxDetail(manager, store, req.params.sandboxID, portDomain);
  });

  r.get('/sandboxes/:sandboxID/network', {
    schema: { summary: 'The egress policy in force', tags: ['network'], params: SandboxIdParams, response: { 200: NetworkPolicy, ...errors } },
  }, async (req) => presentEgress(manager.egressOf(req.params.sandboxID)));

  r.put('/sandboxes/:sandboxID/network', {
    schema: {
      summary: 'Replace the egress policy: at once while running (open connections included), at the next resume while paused',
      tags: ['network'], params: SandboxIdParams, body: NetworkUpdate, response: { 200: NetworkPolicy, ...errors },
    },
  }, async (req) => {
    const b = req.body;
    const e = await manager.setEgress(req.params.sandboxID, egressRequest(b.allow_internet_access, b.allowOut, b.denyOut) ?? {}, AbortSignal.timeout(60_000));
    return presentEgress(e);
  });

  r.delete('/sandboxes/:sandboxID', {
    schema: { summary: 'Destroy a sandbox (idempotent)', tags: ['sandboxes'], params: SandboxIdParams, response: { 204: Type.Null(), ...errors } },
  }, async (req, reply) => {
    // Cleanup must finish even if the client goes away: a fresh, bounded signal.
    await manager.destroy(req.params.sandboxID, AbortSignal.timeout(120_000));
    return reply.status(204).send(null);
  });

  r.post('/sandboxes/:sandboxID/timeout', {
    schema: { summary: 'Set the sandbox to end `timeout` seconds from now (may shorten)', tags: ['sandboxes'], params: SandboxIdParams, body: TimeoutBody, response: { 204: Type.Null(), ...errors } },
  }, async (req, reply) => {
    manager.setTimeout(req.params.sandboxID, req.body.timeout);
    return reply.status(204).send(null);
  });
}
