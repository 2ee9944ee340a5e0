/** /api-keys (the dashboard's key page): create shows the key once, list never shows it, delete revokes. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import Fastify from 'fastify';
import { apiKeyRoutes } from '../../src/api/keys.js';
import { handleError } from '../../src/api/errors.js';
import { verifyApiKey } from '../../src/api/auth.js';
import { Store } from '../../src/store/store.js';
import { SqliteKeyStore } from '../../src/api/key-store.js';

test('API keys over the API: create (once, not cached), list without values, delete revokes', async () => {
  const store = new Store(':memory:');
  const app = Fastify();
  app.setErrorHandler(handleError);
  apiKeyRoutes(app, new SqliteKeyStore(store));
  try {
    const created = await app.inject({ method: 'POST', url: '/api-keys', payload: { name: 'laptop' } });
    assert.equal(created.statusCode, 201);
    assert.equal(created.headers['cache-control'], 'no-store');
    const k = created.json<{ id: string; name: string; key: string; createdAt: string }>();
    assert.equal(k.name, 'laptop');
    assert.match(k.key, /^e2b_[0-9a-f]{40}$/);
    assert.equal(verifyApiKey(store, k.key), k.id, 'the key works');

    const list = await app.inject({ url: '/api-keys' });
    assert.equal(list.statusCode, 200);
    assert.ok(!list.body.includes(k.key), 'never the key itself');
    assert.deepEqual(list.json<{ id: string; name: string }[]>().map((x) => [x.id, x.name]), [[k.id, 'laptop']]);
    assert.ok(list.json<{ lastUsedAt: string | null }[]>()[0]!.lastUsedAt, 'last use recorded');

    assert.equal((await app.inject({ method: 'POST', url: '/api-keys', payload: { name: '' } })).statusCode, 400);
    assert.equal((await app.inject({ method: 'DELETE', url: `/api-keys/${k.id}` })).statusCode, 204);
    assert.equal(verifyApiKey(store, k.key), null, 'revoked at once');
    assert.equal((await app.inject({ method: 'DELETE', url: `/api-keys/${k.id}` })).statusCode, 404);
  } finally {
    await app.close();
    store.close();
  }
});
