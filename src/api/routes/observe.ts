import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import type { SandboxManager } from '../../core/manager.js';
import { InvalidArgumentError } from '../../core/errors.js';
import type { Observability } from '../../observability/hub.js';
import { LOG_SOURCES, type LogEntry, type LogSource } from '../../observability/logs.js';
import { openSse, wantsFollow } from '../../observability/sse.js';
import { ErrorSchema, SandboxIdParams } from '../schemas.js';

/**
 * Observability routes (docs/observability.md): Prometheus `GET /metrics`, the
 * event stream `GET /events` and per-sandbox logs `GET /sandboxes/{id}/logs`.
 * All are API routes: they need the API key wherever keys are required.
 */

const LogsQuery = Type.Object({
  start: Type.Optional(Type.String({ pattern: '^[0-9]{1,16}$', description: 'Entries at or after this time (ms since the epoch, as E2B). Without it: the newest `limit` entries' })),
  limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,5}$', description: 'At most this many entries (default 1000, at most 10000)' })),
  source: Type.Optional(Type.String({ pattern: '^(console|agent|hearth)(,(console|agent|hearth))*$', description: 'Only these sources, comma separated: console (the guest\'s serial console), agent, hearth (lifecycle)' })),
  follow: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false'), Type.Literal('1'), Type.Literal('0')], { description: 'true: an SSE stream: the entries asked for, then each new one, until the sandbox ends or the client leaves' })),
});

const LogEntrySchema = Type.Object({
  timestamp: Type.String({ format: 'date-time' }),
  source: Type.String(),
  level: Type.String(),
  line: Type.String(),
});

const SandboxLogs = Type.Object({
  logs: Type.Array(Type.Object({ timestamp: Type.String({ format: 'date-time' }), line: Type.String() }), { description: 'E2B\'s shape: one line each' }),
  logEntries: Type.Array(Type.Object({
    timestamp: Type.String({ format: 'date-time' }), level: Type.String(), message: Type.String(), fields: Type.Record(Type.String(), Type.String()),
  }), { description: 'E2B\'s structured shape; fields.source says where the line came from' }),
  entries: Type.Array(LogEntrySchema, { description: 'Hearth\'s shape: {timestamp, source, level, line}' }),
});

const EventsQuery = Type.Object({
  since: Type.Optional(Type.String({ pattern: '^[0-9]{1,16}$', description: 'Send the kept events after this id first (as the Last-Event-ID header does)' })),
  sandboxID: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Only this sandbox\'s events' })),
});

export function observeRoutes(app: FastifyInstance, manager: SandboxManager, obs: Observability): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();

  r.get('/metrics', {
    schema: {
      summary: 'hearthd\'s Prometheus metrics (text exposition format); every metric is described in docs/observability.md',
      tags: ['observability'],
    },
  }, async (_req, reply) => {
    const text = await obs.metrics.text();
    return reply.type(obs.metrics.contentType).send(text);
  });

  r.get('/events', {
    schema: {
      summary: 'Server-Sent Events: every sandbox state change (sandbox.created, .paused, .resumed, .destroyed, .failed, .state) with its reason and the API key id that caused it',
      tags: ['observability'], querystring: EventsQuery,
    },
  }, async (req, reply) => {
    const only = req.query.sandboxID;
    const lastHeader = req.headers['last-event-id'];
    const since = req.query.since !== undefined ? Number(req.query.since) : typeof lastHeader === 'string' && /^\d+$/.test(lastHeader) ? Number(lastHeader) : null;
    void reply.hijack();
    const sse = openSse(reply.raw);
    // Subscribe before the backlog is sent, so nothing published in between is lost; duplicates are skipped by id.
    let sentUpTo = since ?? obs.events.lastId;
    const send = (e: { id: number; sandboxID: string; type: string }): void => {
      if (e.id <= sentUpTo || (only && e.sandboxID !== only)) return;
      sentUpTo = e.id;
      sse.send(e, { id: e.id, event: e.type });
    };
    const off = obs.events.subscribe(send);
    sse.onClose(off);
    if (since !== null) for (const e of obs.events.since(since)) send(e);
    return reply;
  });

  r.get('/sandboxes/:sandboxID/logs', {
    schema: {
      summary: 'A sandbox\'s logs: guest console, agent and lifecycle lines (E2B\'s shape plus Hearth\'s entries); follow=true streams them (SSE)',
      description: 'Kept while the sandbox\'s record is (ended sandboxes too), bounded on disk per sandbox (rotation). Secrets (tokens, env values of 8 characters or more) are redacted.',
      tags: ['sandboxes', 'observability'], params: SandboxIdParams, querystring: LogsQuery,
      response: { 200: SandboxLogs, 400: ErrorSchema, 404: ErrorSchema },
    },
  }, async (req, reply) => {
    const s = manager.get(req.params.sandboxID);
    const q = req.query;
    const limit = q.limit !== undefined ? Number(q.limit) : undefined;
    if (limit !== undefined && (limit < 1 || limit > 10_000)) throw new InvalidArgumentError('limit must be from 1 to 10000', 'limit');
    const sources = q.source ? q.source.split(',').filter((x): x is LogSource => (LOG_SOURCES as readonly string[]).includes(x)) : undefined;
    const query = { ...(q.start !== undefined ? { start: Number(q.start) } : {}), ...(limit !== undefined ? { limit } : {}), ...(sources ? { sources } : {}) };
    if (!wantsFollow(q.follow, req.headers.accept)) {
      obs.tailAll();
      const entries = obs.logs.read(s.id, query);
      return {
        logs: entries.map((e) => ({ timestamp: e.timestamp, line: e.line })),
        logEntries: entries.map((e) => ({ timestamp: e.timestamp, level: e.level, message: e.line, fields: { source: e.source } })),
        entries,
      };
    }
    void reply.hijack();
    const sse = openSse(reply.raw);
    const keep = (e: LogEntry): boolean => !sources || sources.includes(e.source);
    const queued: LogEntry[] = [];
    let live = false;
    const offLogs = obs.logs.follow(s.id, (e) => { if (!keep(e)) return; if (live) sse.send(e); else queued.push(e); });
    // The stream ends after the sandbox does (its last lines, then `event: end`).
    const offEvents = obs.events.subscribe((e) => {
      if (e.sandboxID !== s.id || (e.to !== 'destroyed' && e.to !== 'failed')) return;
      setImmediate(() => { sse.send({ state: e.to, reason: e.reason }, { event: 'end' }); sse.end(); });
    });
    sse.onClose(() => { offLogs(); offEvents(); });
    obs.tailAll();
    const backlog = obs.logs.read(s.id, query);
    const seen = new Set(backlog.map((e) => JSON.stringify(e)));
    for (const e of backlog) sse.send(e);
    live = true;
    for (const e of queued) if (!seen.has(JSON.stringify(e))) sse.send(e);
    const ended = manager.get(s.id).state;
    if (ended === 'destroyed' || ended === 'failed') { sse.send({ state: ended, reason: manager.get(s.id).endReason }, { event: 'end' }); sse.end(); }
    return reply;
  });
}

/** Routes whose refusals count as admission refusals, by the operation they start. */
const ADMITTING: Record<string, string> = {
  'POST /sandboxes': 'create',
  'POST /v2/sandboxes': 'create',
  'POST /sandboxes/:sandboxID/resume': 'resume',
  'POST /sandboxes/:sandboxID/connect': 'connect',
  'POST /v2/sandboxes/:sandboxID/connect': 'connect',
  'POST /sandboxes/:sandboxID/fork': 'fork',
};
const REFUSALS = new Set(['capacity', 'invalid_argument', 'conflict', 'not_found']);

/** Counts creates, resumes, connects and forks refused before any work (hearth_admission_refusals_total). */
export function countAdmissionRefusals(app: FastifyInstance, obs: Observability): void {
  app.addHook('onError', async (req, _reply, err) => {
    const op = ADMITTING[`${req.method} ${req.routeOptions.url ?? ''}`];
    if (!op) return;
    const e = err as { code?: unknown; validation?: unknown; name?: string };
    if (e.validation) { obs.refused(op, 'invalid_argument'); return; }
    if (e.name === 'IdempotencyMismatchError') { obs.refused(op, 'idempotency_mismatch'); return; }
    if (typeof e.code === 'string' && REFUSALS.has(e.code)) obs.refused(op, e.code);
  });
}
