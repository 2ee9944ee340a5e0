import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import type { FastifyReply } from 'fastify';
import { NotFoundError } from '../core/errors.js';
import { KeyStoreUnavailableError, type ApiKeyStore } from './key-store.js';
import { errorBody } from './errors.js';
import { ErrorSchema } from './schemas.js';

const ApiKeyInfo = Type.Object({
  id: Type.String(),
  name: Type.String(),
  createdAt: Type.String({ format: 'date-time' }),
  lastUsedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
}, { $id: 'ApiKeyInfo' });

/** The cluster database does not answer (cluster mode): 503, the keys are unchanged. */
async function orUnavailable<T>(reply: FastifyReply, fn: () => Promise<T>): Promise<T | FastifyReply> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof KeyStoreUnavailableError) return reply.status(503).send(errorBody(503, err.message, 'unavailable'));
    throw err;
  }
}

/**
 * API keys over the API (the dashboard's key page; `hearth keys` works on the same store
 * directly): the node's SQLite, or in cluster mode the cluster's keys in PostgreSQL. Like
 * every API route these need a key wherever keys are required, and the cross-site rule
 * applies (docs/security.md); the key itself is shown once, at creation.
 */
export function apiKeyRoutes(app: FastifyInstance, keys: ApiKeyStore): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  r.get('/api-keys', {
    schema: { summary: 'List API keys (never their values)', tags: ['keys'], response: { 200: Type.Array(ApiKeyInfo), 503: ErrorSchema } },
  }, async (_req, reply) => orUnavailable(reply, () => keys.list()));

  r.post('/api-keys', {
    schema: {
      summary: 'Create an API key; the answer carries the key, shown this once',
      tags: ['keys'],
      body: Type.Object({ name: Type.Optional(Type.String({ minLength: 1, maxLength: 100 })) }, { additionalProperties: false }),
      response: { 201: Type.Object({ id: Type.String(), name: Type.String(), key: Type.String(), createdAt: Type.String() }), 400: ErrorSchema, 503: ErrorSchema },
    },
  }, async (req, reply) => orUnavailable(reply, async () => {
    const k = await keys.create(req.body.name ?? 'default');
    // The key is in this answer only: no cache may keep it.
    return reply.status(201).header('cache-control', 'no-store').send({ id: k.id, name: k.name, key: k.key, createdAt: k.createdAt });
  }));

  r.delete('/api-keys/:id', {
    schema: {
      summary: 'Delete an API key (clients using it get 401 at once; in cluster mode on other nodes within a heartbeat)', tags: ['keys'],
      params: Type.Object({ id: Type.String({ pattern: '^[a-z0-9]{1,64}$' }) }), response: { 204: Type.Null(), 404: ErrorSchema, 503: ErrorSchema },
    },
  }, async (req, reply) => orUnavailable(reply, async () => {
    if (!await keys.delete(req.params.id)) throw new NotFoundError(`no API key ${req.params.id}`);
    return reply.status(204).send(null);
  }));
}
