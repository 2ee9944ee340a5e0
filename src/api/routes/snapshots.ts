import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import type { SandboxManager } from '../../core/manager.js';
import type { ErrorCode } from '../../core/errors.js';
import type { SnapshotRecord } from '../../core/types.js';
import type { Store } from '../../store/store.js';
import { notDestroyed, page, pageLimit, sandboxDetail, type CompatOptions } from './sandboxes.js';
import { STATUS_OF } from '../errors.js';
import {
  ConnectBody, ErrorSchema, ForkBody, ForkResult, PauseBody, ResumeBody, SandboxDetail, SandboxIdParams, SnapshotBody, SnapshotIdParams, SnapshotInfo,
} from '../schemas.js';

const errors = { 400: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema, 500: ErrorSchema };

async function presentSnapshot(manager: SandboxManager, s: SnapshotRecord): Promise<import('typebox').Static<typeof SnapshotInfo>> {
  return {
    snapshotID: s.id,
    names: s.name ? [s.name] : [],
    sandboxID: s.sandboxId,
    templateID: s.templateId,
    cpuCount: s.vcpus,
    memoryMB: s.memoryMib,
    createdAt: s.createdAt,
    sizeBytes: await manager.snapshotUsage(s.id),
  };
}

/** Pause, resume (and E2B's connect), named snapshots, forks. */
export function snapshotRoutes(app: FastifyInstance, manager: SandboxManager, store: Store, portDomain: string | null = null, compat: CompatOptions = {}): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const detail = (id: string) => sandboxDetail(manager, store, id, portDomain, compat.sandboxDomain?.() ?? null);

  r.post('/sandboxes/:sandboxID/pause', {
    schema: {
      summary: 'Pause: memory and disk kept on the host (memory: false: the disk alone), no VMM process, no CPU',
      tags: ['sandboxes'], params: SandboxIdParams, body: Type.Optional(PauseBody), response: { 204: Type.Null(), ...errors },
    },
  }, async (req, reply) => {
    notDestroyed(manager, req.params.sandboxID);
    await manager.pause(req.params.sandboxID, AbortSignal.timeout(300_000), { memory: req.body?.memory !== false });
    return reply.status(204).send(null);
  });

  r.post('/sandboxes/:sandboxID/resume', {
    schema: {
      summary: 'Resume a paused sandbox: exactly where it was, or by a boot from its disk (a filesystem-only pause, or memory: false)',
      tags: ['sandboxes'], params: SandboxIdParams, body: Type.Optional(ResumeBody), response: { 201: SandboxDetail, ...errors },
    },
  }, async (req, reply) => {
    notDestroyed(manager, req.params.sandboxID);
    await manager.resume(req.params.sandboxID, AbortSignal.timeout(300_000), req.body?.timeout, { memory: req.body?.memory !== false });
    return reply.status(201).send(await detail(req.params.sandboxID));
  });

  // E2B's SDKs connect with POST /v2/sandboxes/{id}/connect since e2b 2.51, /sandboxes/{id}/connect before.
  for (const path of ['/sandboxes/:sandboxID/connect', '/v2/sandboxes/:sandboxID/connect']) r.post(path, {
    schema: {
      summary: 'Resume if paused; make sure it lives at least `timeout` more seconds (200 running, 201 resumed; 404 destroyed or unknown)',
      tags: ['sandboxes'], params: SandboxIdParams, body: Type.Optional(ConnectBody), response: { 200: SandboxDetail, 201: SandboxDetail, ...errors },
    },
  }, async (req, reply) => {
    const timeout = req.body?.timeout ?? compat.defaultTimeoutSec ?? 300;
    const { resumed } = await manager.connect(req.params.sandboxID, timeout, AbortSignal.timeout(300_000), { memory: req.body?.memory !== false });
    return reply.status(resumed ? 201 : 200).send(await detail(req.params.sandboxID));
  });

  r.post('/sandboxes/:sandboxID/snapshots', {
    schema: { summary: 'Capture a running sandbox (memory + disk); it keeps running after a short freeze', tags: ['snapshots'], params: SandboxIdParams, body: SnapshotBody, response: { 201: SnapshotInfo, ...errors } },
  }, async (req, reply) => {
    notDestroyed(manager, req.params.sandboxID);
    const snap = await manager.snapshot(req.params.sandboxID, req.body.name ?? null, AbortSignal.timeout(300_000));
    return reply.status(201).send(await presentSnapshot(manager, snap));
  });

  r.get('/snapshots', {
    schema: {
      summary: 'List named snapshots, newest first: by sandbox, by name (or id), in pages',
      description: 'Pages of `limit` (default 100); header X-Next-Token is the `nextToken` of the next page, absent on the last one.',
      tags: ['snapshots'],
      querystring: Type.Object({
        sandboxID: Type.Optional(Type.String({ pattern: '^[a-z0-9]{1,64}$' })),
        name: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'A snapshot name or id' })),
        limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,9}$', description: '1 to 100 (default 100)' })),
        nextToken: Type.Optional(Type.String({ maxLength: 512 })),
      }),
      response: { 200: Type.Array(SnapshotInfo), 400: ErrorSchema },
    },
  }, async (req, reply) => {
    const q = req.query;
    const all = manager.listSnapshots(q.sandboxID ? { sandboxId: q.sandboxID } : {}).filter((s) => !q.name || s.name === q.name || s.id === q.name);
    const { items, next } = page(all, (s) => [s.createdAt, s.id], 'desc', pageLimit(q.limit), q.nextToken);
    if (next) void reply.header('x-next-token', next);
    return Promise.all(items.map((s) => presentSnapshot(manager, s)));
  });

  r.get('/snapshots/:snapshotID', {
    schema: { summary: 'Get a snapshot by id or name', tags: ['snapshots'], params: SnapshotIdParams, response: { 200: SnapshotInfo, ...errors } },
  }, async (req) => presentSnapshot(manager, manager.getSnapshot(req.params.snapshotID)));

  r.delete('/snapshots/:snapshotID', {
    schema: { summary: 'Delete a snapshot (sandboxes started from it are unaffected)', tags: ['snapshots'], params: SnapshotIdParams, response: { 204: Type.Null(), ...errors } },
  }, async (req, reply) => {
    await manager.deleteSnapshot(req.params.snapshotID);
    return reply.status(204).send(null);
  });

  // E2B's SDK deletes snapshots through DELETE /templates/{id}: routes/templates.ts answers it.

  r.post('/sandboxes/:sandboxID/fork', {
    schema: { summary: 'N new sandboxes from the current state of a running one', tags: ['sandboxes'], params: SandboxIdParams, body: Type.Optional(ForkBody), response: { 201: Type.Array(ForkResult), ...errors } },
  }, async (req, reply) => {
    notDestroyed(manager, req.params.sandboxID);
    const results = await manager.fork(req.params.sandboxID, req.body?.count ?? 1, req.body?.timeout, AbortSignal.timeout(600_000));
    const out = await Promise.all(results.map(async (res) => {
      if (res.sandbox) return { sandbox: await detail(res.sandbox.id) };
      const code = (res.error?.code ?? 'internal') as ErrorCode;
      const status = STATUS_OF[code] ?? 500;
      return { error: { code: status, message: res.error?.message ?? 'fork failed', error_code: code } };
    }));
    return reply.status(201).send(out);
  });
}
