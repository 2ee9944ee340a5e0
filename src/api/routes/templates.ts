import type { FastifyInstance, FastifyReply } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type, type Static } from 'typebox';
import { posix } from 'node:path';
import type { SandboxManager, TemplateSnapshotInfo as TemplateSnapshotData } from '../../core/manager.js';
import { ConflictError, HearthError, InvalidArgumentError, NotFoundError } from '../../core/errors.js';
import type { Template } from '../../core/types.js';
import type { Store } from '../../store/store.js';
import { openSse, wantsFollow } from '../../observability/sse.js';
import type { TemplateBuilder, BuildEvent, BuildRequest } from '../../templates/builder.js';
import { presentBuild } from '../../templates/build-record.js';
import { parseRecipe } from '../../templates/recipe.js';
import { dockerfileToRecipe } from '../../templates/dockerfile.js';
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

/** Default cap on POST /templates bodies (the recipe and the base64 build context). */
export const DEFAULT_TEMPLATE_CONTEXT_MAX_BYTES = 64 << 20;
const MAX_CONTEXT_FILES = 10_000;

const CreateTemplateBody = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 63, description: 'The template id' }),
  aliases: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 63 }), { maxItems: 16 })),
  recipe: Type.Optional(Type.Unknown({ description: 'A hearth.template.json object (docs/templates.md)' })),
  dockerfile: Type.Optional(Type.String({ maxLength: 1 << 20, description: 'A Dockerfile in Hearth\'s subset' })),
  fromSandbox: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  fromSnapshot: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  files: Type.Optional(Type.Record(Type.String(), Type.String(), { description: 'The build context: relative path → base64 content' })),
  cpuCount: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
  memoryMB: Type.Optional(Type.Integer({ minimum: 128, maximum: 262144 })),
  diskSizeMB: Type.Optional(Type.Integer({ minimum: 256, maximum: 1048576 })),
}, { additionalProperties: false });

const BuildParams = Type.Object({
  templateID: Type.String({ maxLength: 128 }),
  buildID: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9]+$' }),
});

const BuildLogsQuery = Type.Object({
  follow: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false'), Type.Literal('1'), Type.Literal('0')])),
});

/**
 * The build context from the API's files map: each path normalised once,
 * then refused if it is absolute, climbs out ("..") or carries NUL or a
 * backslash; content is strict base64.
 */
export function decodeContext(files: Record<string, string> | undefined): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const entries = Object.entries(files ?? {});
  if (entries.length > MAX_CONTEXT_FILES) throw new InvalidArgumentError(`files: at most ${MAX_CONTEXT_FILES} entries`);
  for (const [raw, b64] of entries) {
    const dir = raw.endsWith('/');
    const p = posix.normalize(raw);
    if (!raw || raw.includes('\0') || raw.includes('\\') || p.startsWith('/') || p === '..' || p.startsWith('../') || p === '.' || p === './') {
      throw new InvalidArgumentError(`files: "${raw}" must be a relative path inside the build context`);
    }
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) throw new InvalidArgumentError(`files: "${raw}" is not base64`);
    const key = dir ? (p.endsWith('/') ? p : `${p}/`) : p.replace(/\/$/, '');
    out.set(key, Buffer.from(b64, 'base64'));
  }
  return out;
}

/**
 * A build's events as SSE on `reply`: the log so far, where every step
 * stands, then each new event, then `end`. `cancelOnLeave`: the client that
 * started the build went away before the end, so nobody wants it.
 */
async function streamBuild(b: TemplateBuilder, reply: FastifyReply, templateID: string, buildID: string, cancelOnLeave: boolean): Promise<void> {
  void reply.hijack();
  const sse = openSse(reply.raw);
  let ended = false;
  const forward = (ev: BuildEvent): void => {
    if (ev.type === 'log') sse.send(ev.entry, { event: 'log' });
    else if (ev.type === 'step') sse.send(ev.step, { event: 'step' });
    else { ended = true; sse.send(presentBuild(ev.build), { event: 'end' }); sse.end(); }
  };
  // What arrives before the backlog is out waits behind it (the backlog was cut when the subscription began).
  const queued: BuildEvent[] = [];
  let live = false;
  const { entries, off, running } = await b.follow(templateID, buildID, (ev) => { if (live) forward(ev); else queued.push(ev); });
  sse.onClose(() => {
    off();
    if (cancelOnLeave && !ended) { try { b.cancel(templateID, buildID); } catch { /* it ended meanwhile */ } }
  });
  for (const e of entries) sse.send(e, { event: 'log' });
  // Where every step stands now (a client that connects late sees cached steps at once).
  if (running) for (const st of b.get(templateID, buildID).steps) sse.send(st, { event: 'step' });
  live = true;
  for (const ev of queued) forward(ev);
  if (!running) { ended = true; sse.send(presentBuild(b.get(templateID, buildID)), { event: 'end' }); sse.end(); }
}

/** Templates, their builds, and the warm snapshots (one per VM shape) the daemon keeps of each. */
export function templateRoutes(app: FastifyInstance, manager: SandboxManager, store: Store, builder: TemplateBuilder | null, contextMaxBytes = DEFAULT_TEMPLATE_CONTEXT_MAX_BYTES): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const needBuilder = (): TemplateBuilder => {
    if (!builder) throw new HearthError('capacity', 'template builds are not enabled on this server');
    return builder;
  };
  const present = async (t: Template): Promise<Static<typeof TemplateSchema>> => ({
    ...presentTemplate(t),
    layers: builder ? await builder.layerInfo(t) : [],
  });

  r.get('/templates', { schema: { summary: 'List templates', tags: ['templates'], response: { 200: Type.Array(TemplateSchema) } } },
    async () => Promise.all(store.listTemplates().map(present)));

  r.get('/templates/:templateID', {
    schema: { summary: 'Get a template (by id or alias)', tags: ['templates'], params: TemplateParams, response: { 200: TemplateSchema, 404: ErrorSchema } },
  }, async (req) => {
    const t = store.getTemplate(req.params.templateID);
    if (!t) throw new NotFoundError(`template ${req.params.templateID} does not exist`);
    return present(t);
  });

  r.post('/templates', {
    bodyLimit: contextMaxBytes,
    schema: {
      summary: 'Build a template from a recipe or Dockerfile (with its build context), or make one from a sandbox or snapshot; answers 202 with the build',
      tags: ['templates'], body: CreateTemplateBody, querystring: BuildLogsQuery, response: { 202: Type.Unknown(), 400: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema },
    },
  }, async (req, reply) => {
    const b = needBuilder();
    const body = req.body;
    const sources = (['recipe', 'dockerfile', 'fromSandbox', 'fromSnapshot'] as const).filter((k) => body[k] !== undefined);
    if (sources.length !== 1) throw new InvalidArgumentError(`exactly one of recipe, dockerfile, fromSandbox, fromSnapshot is needed (got ${sources.length ? sources.join(', ') : 'none'})`);
    const kind = sources[0] === 'recipe' ? 'recipe' : sources[0] === 'dockerfile' ? 'dockerfile' : sources[0] === 'fromSandbox' ? 'sandbox' : 'snapshot';
    const breq: BuildRequest = {
      name: body.name,
      aliases: body.aliases ?? [],
      kind,
      files: decodeContext(body.files),
      resources: {
        ...(body.cpuCount !== undefined ? { cpuCount: body.cpuCount } : {}),
        ...(body.memoryMB !== undefined ? { memoryMB: body.memoryMB } : {}),
        ...(body.diskSizeMB !== undefined ? { diskSizeMB: body.diskSizeMB } : {}),
      },
      ...(body.recipe !== undefined ? { recipe: parseRecipe(body.recipe) } : {}),
      ...(body.dockerfile !== undefined ? { recipe: dockerfileToRecipe(body.dockerfile) } : {}),
      ...(body.fromSandbox !== undefined ? { fromSandbox: body.fromSandbox } : {}),
      ...(body.fromSnapshot !== undefined ? { fromSnapshot: body.fromSnapshot } : {}),
    };
    const build = await b.start(breq);
    if (!wantsFollow(req.query.follow, req.headers.accept)) return reply.status(202).send(presentBuild(build));
    // Followed: the answer is the build's event stream, and a client that leaves before the end cancels it.
    await streamBuild(b, reply, build.templateId, build.id, true);
    return reply;
  });

  r.delete('/templates/:templateID', {
    schema: {
      summary: 'Delete a template (409 while sandboxes, snapshots or other templates use it); for E2B\'s SDK, a snapshot id or name here deletes that snapshot',
      tags: ['templates'], params: TemplateParams, response: { 204: Type.Null(), 404: ErrorSchema, 409: ErrorSchema },
    },
  }, async (req, reply) => {
    const t = store.getTemplate(req.params.templateID);
    if (t?.source === 'image') throw new ConflictError(`template ${t.id} is the default image's; it cannot be deleted`);
    if (t) await needBuilder().deleteTemplate(t.id);
    else await manager.deleteSnapshot(req.params.templateID);
    return reply.status(204).send(null);
  });

  r.get('/templates/:templateID/builds', {
    schema: { summary: 'A template\'s builds, newest first', tags: ['templates'], params: TemplateParams },
  }, async (req) => needBuilder().list(req.params.templateID).map(presentBuild));

  r.get('/templates/:templateID/builds/:buildID', {
    schema: { summary: 'One build: status, phase, steps (cache hits, timings, exit codes)', tags: ['templates'], params: BuildParams, response: { 200: Type.Unknown(), 404: ErrorSchema } },
  }, async (req) => presentBuild(needBuilder().get(req.params.templateID, req.params.buildID)));

  r.delete('/templates/:templateID/builds/:buildID', {
    schema: { summary: 'Cancel a running build (its build sandbox is stopped; finished layers stay cached)', tags: ['templates'], params: BuildParams, response: { 204: Type.Null(), 404: ErrorSchema, 409: ErrorSchema } },
  }, async (req, reply) => {
    needBuilder().cancel(req.params.templateID, req.params.buildID);
    return reply.status(204).send(null);
  });

  r.get('/templates/:templateID/builds/:buildID/logs', {
    schema: {
      summary: 'A build\'s log: JSON, or (?follow=true, or Accept: text/event-stream) an SSE stream of log, step and end events',
      tags: ['templates'], params: BuildParams, querystring: BuildLogsQuery, response: { 200: Type.Unknown(), 404: ErrorSchema },
    },
  }, async (req, reply) => {
    const b = needBuilder();
    const { templateID, buildID } = req.params;
    if (!wantsFollow(req.query.follow, req.headers.accept)) return { entries: await b.readLogOf(templateID, buildID) };
    b.get(templateID, buildID);
    await streamBuild(b, reply, templateID, buildID, false);
    return reply;
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
