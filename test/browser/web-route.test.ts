/** The dashboard's static route without VMs or a browser: not-built page, SPA fallback, assets, caching. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify from 'fastify';

async function appWith(dir: string) {
  process.env['HEARTH_WEB_DIR'] = dir;
  const { webRoutes, serveDashboardFallback } = await import(`../../src/api/routes/web.ts?dir=${encodeURIComponent(dir)}`) as typeof import('../../src/api/routes/web.js');
  const app = Fastify();
  app.setNotFoundHandler(async (req, reply) => {
    if (await serveDashboardFallback(req, reply)) return reply;
    return reply.status(404).send({ code: 404, message: 'no route' });
  });
  app.get('/sandboxes', async () => []);
  webRoutes(app);
  await app.ready();
  return app;
}

test('not built: a 503 page that says how to build it; the API still answers', async () => {
  const app = await appWith(join(tmpdir(), 'hearth-no-such-web-dir'));
  const r = await app.inject({ url: '/' });
  assert.equal(r.statusCode, 503);
  assert.match(r.headers['content-type'] as string, /text\/html/);
  assert.match(r.body, /npm run build:web/);
  assert.equal((await app.inject({ url: '/sandboxes', headers: { accept: 'text/html' } })).statusCode, 200);
  await app.close();
});

test('built: index for / and /ui/*, hashed assets cached, API and unknown JSON paths untouched', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'hearth-web-'));
  await mkdir(join(dir, 'assets'));
  await writeFile(join(dir, 'index.html'), '<!doctype html><title>x</title>');
  await writeFile(join(dir, 'assets', 'index-abc.js'), 'console.log(1)');
  const app = await appWith(dir);
  for (const url of ['/', '/ui', '/ui/', '/ui/sandboxes/abc', '/ui/host']) {
    const r = await app.inject({ url });
    assert.equal(r.statusCode, 200, url);
    assert.equal(r.body, '<!doctype html><title>x</title>', url);
    assert.equal(r.headers['cache-control'], 'no-cache');
  }
  const js = await app.inject({ url: '/ui/assets/index-abc.js' });
  assert.equal(js.statusCode, 200);
  assert.match(js.headers['content-type'] as string, /javascript/);
  assert.match(js.headers['cache-control'] as string, /immutable/);
  assert.equal((await app.inject({ url: '/ui/assets/index-abc.js', headers: { 'if-none-match': js.headers.etag as string } })).statusCode, 304);
  assert.equal((await app.inject({ url: '/ui/assets/missing.js' })).statusCode, 404);
  assert.equal((await app.inject({ url: '/ui/..%2f..%2fetc%2fpasswd.txt' })).statusCode, 404);
  // Unknown non-API GETs: the SPA for browsers, JSON 404 for everything else.
  assert.equal((await app.inject({ url: '/whatever', headers: { accept: 'text/html' } })).body, '<!doctype html><title>x</title>');
  assert.equal((await app.inject({ url: '/whatever' })).statusCode, 404);
  assert.equal((await app.inject({ url: '/sandboxes/nope/pause', headers: { accept: 'text/html' } })).statusCode, 404);
  assert.deepEqual((await app.inject({ url: '/sandboxes', headers: { accept: 'text/html' } })).json(), []);
  await app.close();
  await rm(dir, { recursive: true, force: true });
});
