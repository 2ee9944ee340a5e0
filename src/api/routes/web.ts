import { readFile, stat } from 'node:fs/promises';
import { join, normalize, extname, sep } from 'node:path';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { PACKAGE_ROOT } from '../../paths.js';

/**
 * The web dashboard (src/web, built by `npm run build:web` into dist/web), see docs/dashboard.md.
 *
 *  - `GET /` and `GET /ui`, `/ui/<anything>`: the SPA's index.html (client-side routes live under /ui/);
 *  - `GET /ui/assets/<file>`: hashed static assets, cached for a year (immutable);
 *  - any other unknown GET that accepts text/html and is not an API path: index.html too
 *    (through `serveDashboardFallback`, called from the API's not-found handler);
 *  - when dist/web is missing, those pages answer 503 with a page that says how to build it.
 *
 * The API (`/sandboxes`, `/snapshots`, `/templates`, `/doctor`, `/health`, `/openapi.json`) and the
 * envd proxy are never shadowed: the SPA only owns `/` and `/ui/*`.
 */
export const WEB_ROOT = process.env['HEARTH_WEB_DIR'] ?? join(PACKAGE_ROOT, 'dist', 'web');

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.json': 'application/json', '.svg': 'image/svg+xml', '.png': 'image/png',
  '.ico': 'image/x-icon', '.woff2': 'font/woff2', '.woff': 'font/woff', '.map': 'application/json', '.txt': 'text/plain; charset=utf-8',
};

const API_PREFIXES = ['/sandboxes', '/snapshots', '/templates', '/doctor', '/health', '/openapi.json', '/events', '/admin', '/keys'];

const NOT_BUILT = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Hearth dashboard not built</title>
<style>body{font-family:system-ui,sans-serif;max-width:640px;margin:80px auto;padding:0 20px;color:#1d2330}code{background:#eef0f3;padding:2px 6px;border-radius:4px}</style></head>
<body><h1>🔥 Hearth</h1><p>The web dashboard has not been built, so hearthd has nothing to show here.</p>
<p>Build it with <code>npm run build:web</code> (or the full <code>npm run build</code>) and reload this page.</p>
<p>The HTTP API works regardless: see <a href="/openapi.json">/openapi.json</a> and <a href="/health">/health</a>.</p></body></html>`;

async function sendIndex(reply: FastifyReply): Promise<FastifyReply> {
  let html: Buffer;
  try {
    html = await readFile(join(WEB_ROOT, 'index.html'));
  } catch {
    return reply.status(503).header('content-type', 'text/html; charset=utf-8').header('cache-control', 'no-store').send(NOT_BUILT);
  }
  return reply.status(200).header('content-type', 'text/html; charset=utf-8').header('cache-control', 'no-cache').send(html);
}

/** A file under WEB_ROOT for a /ui/<rel> request, or null (missing, a directory, or escaping the root). */
async function staticFile(rel: string): Promise<{ path: string; size: number; mtime: Date } | null> {
  let decoded: string;
  try { decoded = decodeURIComponent(rel); } catch { return null; }
  if (decoded.includes('\0')) return null;
  const path = normalize(join(WEB_ROOT, decoded));
  if (!path.startsWith(normalize(WEB_ROOT) + sep)) return null;
  try {
    const st = await stat(path);
    return st.isFile() ? { path, size: st.size, mtime: st.mtime } : null;
  } catch { return null; }
}

export function webRoutes(app: FastifyInstance): void {
  const hide = { schema: { hide: true } };
  app.get('/', hide, async (_req, reply) => sendIndex(reply));
  app.get('/ui', hide, async (_req, reply) => sendIndex(reply));
  app.get('/ui/*', hide, async (req, reply) => {
    const rel = ((req.params as { '*': string })['*'] ?? '');
    if (rel && rel !== 'index.html') {
      const f = await staticFile(rel);
      if (f) {
        const immutable = rel.startsWith('assets/');
        const etag = `"${f.size.toString(16)}-${f.mtime.getTime().toString(16)}"`;
        reply.header('etag', etag).header('last-modified', f.mtime.toUTCString())
          .header('cache-control', immutable ? 'public, max-age=31536000, immutable' : 'no-cache')
          .header('content-type', TYPES[extname(f.path)] ?? 'application/octet-stream')
          .header('x-content-type-options', 'nosniff');
        if (req.headers['if-none-match'] === etag) return reply.status(304).send();
        return reply.status(200).send(await readFile(f.path));
      }
      // A missing asset is a 404, not the SPA (a stale tab asking for an old hash must not get HTML as JS).
      if (rel.startsWith('assets/') || extname(rel) !== '') {
        return reply.status(404).header('content-type', 'text/plain; charset=utf-8').send(`not found: /ui/${rel}`);
      }
    }
    return sendIndex(reply);
  });
}

/**
 * For the API's not-found handler: answers an unknown non-API GET that accepts text/html with the
 * dashboard (true), or leaves the reply alone (false) so the API's JSON 404 goes out.
 */
export async function serveDashboardFallback(req: FastifyRequest, reply: FastifyReply): Promise<boolean> {
  if (req.method !== 'GET' && req.method !== 'HEAD') return false;
  const path = req.url.split('?')[0] ?? '/';
  if (API_PREFIXES.some((p) => path === p || path.startsWith(`${p}/`))) return false;
  const accept = req.headers.accept ?? '';
  if (!accept.includes('text/html')) return false;
  await sendIndex(reply);
  return true;
}
