import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type, type Static } from 'typebox';
import type { SandboxManager, TemplateSnapshotInfo as TemplateSnapshotData } from '../../core/manager.js';
import { NotFoundError } from '../../core/errors.js';
import type { Store } from '../../store/store.js';
import { presentTemplate } from '../present.js';
import { ErrorSchema, TemplateSchema } from '../schemas.js';

const TemplateParams = Type.Object({ templateID: Type.String({ maxLength: 128 }) });
const TemplateSnapshotParams = Type.Object({
  templateID: Type.String({ maxLength: 128 }),
  snapshotID: Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' }),
});

export const TemplateSnapshotInfo = Type.Object({
  snapshotID: Type.String(),
  templateID: Type.String(),
  cpuCount: Type.Integer(),
  memoryMB: Type.Integer(),
  sizeBytes: Type.Integer({ description: 'Allocated blocks of its files (st_blocks*512)' }),
  createdAt: Type.String({ format: 'date-time' }),
  lastUsedAt: Type.String({ format: 'date-time', description: 'When a create last restored from it (its creation if none has)' }),
  current: Type.Boolean({ description: 'Made from the template\'s current image, kernel, network backend and VMM (an outdated one is never restored and goes first)' }),
  inUse: Type.Integer({ description: 'Creates restoring from it right now; DELETE answers 409 while this is above 0' }),
}, { $id: 'TemplateSnapshotInfo' });

function presentTemplateSnapshot(s: TemplateSnapshotData): Static<typeof TemplateSnapshotInfo> {
  return {
    snapshotID: s.snapshot.id,
    templateID: s.snapshot.templateId,
    cpuCount: s.snapshot.vcpus,
    memoryMB: s.snapshot.memoryMib,
    sizeBytes: s.sizeBytes,
    createdAt: s.snapshot.createdAt,
    lastUsedAt: s.lastUsedAt,
    current: s.current,
    inUse: s.inUse,
  };
}

/** Templates, and the warm snapshots (one per VM shape) the daemon keeps of each. */
export function templateRoutes(app: FastifyInstance, manager: SandboxManager, store: Store): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();

  r.get('/templates', { schema: { summary: 'List templates', tags: ['templates'], response: { 200: Type.Array(TemplateSchema) } } },
    async () => store.listTemplates().map(presentTemplate));

  r.get('/templates/:templateID', {
    schema: { summary: 'Get a template', tags: ['templates'], params: TemplateParams, response: { 200: TemplateSchema, 404: ErrorSchema } },
  }, async (req) => {
    const t = store.getTemplate(req.params.templateID);
    if (!t) throw new NotFoundError(`template ${req.params.templateID} does not exist`);
    return presentTemplate(t);
  });

  r.get('/templates/:templateID/snapshots', {
    schema: {
      summary: 'The template\'s warm snapshots (one per vCPU/memory shape a create asked for), most recently used first',
      tags: ['templates'], params: TemplateParams, response: { 200: Type.Array(TemplateSnapshotInfo), 404: ErrorSchema },
    },
  }, async (req) => (await manager.listTemplateSnapshots(req.params.templateID)).map(presentTemplateSnapshot));

  r.delete('/templates/:templateID/snapshots/:snapshotID', {
    schema: {
      summary: 'Remove a warm snapshot (409 while a create restores from it); the next create of its shape builds it again',
      tags: ['templates'], params: TemplateSnapshotParams, response: { 204: Type.Null(), 400: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema },
    },
  }, async (req, reply) => {
    await manager.deleteTemplateSnapshot(req.params.templateID, req.params.snapshotID);
    return reply.status(204).send(null);
  });
}
