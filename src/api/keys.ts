import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import type { Store } from '../store/store.js';
import { NotFoundError } from '../core/errors.js';
import { createApiKey } from './auth.js';
import { ErrorSchema } from './schemas.js';

const ApiKeyInfo = Type.Object({
  id: Type.String(),
  name: Type.String(),
  createdAt: Type.String({ format: 'date-time' }),
  lastUsedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
}, { $id: 'ApiKeyInfo' });

/**
 * API keys over the API (the dashboard's key page; `hearth keys` works on the database
 * directly). Like every API route these need a key wherever keys are required, and the
 * cross-site rule applies (docs/security.md); the key itself is shown once, at creation.
 */
export function apiKeyRoutes(app: FastifyInstance, store: Store): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  r.get('/api-keys', {
    schema: { summary: 'List API keys (never their values)', tags: ['keys'], response: { 200: Type.Array(ApiKeyInfo) } },
  }, async () => store.listApiKeys().map(({ id, name, createdAt, lastUsedAt }) => ({ id, name, createdAt, lastUsedAt })));

  r.post('/api-keys', {
    schema: {
      summary: 'Create an API key; the answer carries the key, shown this once',
      tags: ['keys'],
      body: Type.Object({ name: Type.Optional(Type.String({ minLength: 1, maxLength: 100 })) }, { additionalProperties: false }),
      response: { 201: Type.Object({ id: Type.String(), name: Type.String(), key: Type.String(), createdAt: Type.String() }), 400: ErrorSchema },
    },
  }, async (req, reply) => {
    const name = req.body.name ?? 'default';
    const k = createApiKey(store, name);
    const created = store.listApiKeys().find((x) => x.id === k.id);
    // The key is in this answer only: no cache may keep it.
    return reply.status(201).header('cache-control', 'no-store').send({ id: k.id, name, key: k.key, createdAt: created?.createdAt ?? new Date().toISOString() });
  });

  r.delete('/api-keys/:id', {
    schema: { summary: 'Delete an API key (clients using it get 401 at once)', tags: ['keys'], params: Type.Object({ id: Type.String({ pattern: '^[a-z0-9]{1,64}$' }) }), response: { 204: Type.Null(), 404: ErrorSchema } },
  }, async (req, reply) => {
    if (!store.deleteApiKey(req.params.id)) throw new NotFoundError(`no API key ${req.params.id}`);
    return reply.status(204).send(null);
  });
}
