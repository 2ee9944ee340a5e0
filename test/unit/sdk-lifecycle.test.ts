/**
 * Hearth's SDK asks for a filesystem-only pause, a boot resume and a timeout
 * lifecycle with the API's fields (docs/api.md, "Timeouts and lifecycle"):
 * the requests it sends, against a stand-in hearthd that records them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Sandbox } from '../../src/sdk/index.js';

test('SDK: pause({ keepMemory: false }), resume({ keepMemory: false }), create with lifecycle.keepMemory send the API\'s fields', async () => {
  const seen: { method: string; url: string; body: unknown }[] = [];
  const detail = { sandboxID: 'iabc', templateID: 'base', state: 'running', envdAccessToken: 't', trafficAccessToken: null, lifecycle: { onTimeout: 'pause', keepMemory: false, autoResume: false, autoExtend: false } };
  const server = createServer((req, res) => {
    let text = '';
    req.on('data', (c: Buffer) => { text += c.toString(); });
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', body: text ? JSON.parse(text) as unknown : undefined });
      if (req.url?.endsWith('/pause')) { res.statusCode = 204; res.end(); return; }
      res.statusCode = req.method === 'POST' ? 201 : 200;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(detail));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const s = await Sandbox.create({ url, timeoutMs: 10_000, lifecycle: { onTimeout: 'pause', keepMemory: false } });
    await s.pause({ keepMemory: false });
    await s.pause();
    await s.pause(new AbortController().signal);
    await s.resume({ keepMemory: false, timeoutMs: 5000 });
    await s.resume();
    assert.deepEqual(seen.map((r) => [r.method, r.url, r.body]), [
      ['POST', '/sandboxes', { templateID: 'base', timeout: 10, lifecycle: { onTimeout: 'pause', keepMemory: false } }],
      ['POST', '/sandboxes/iabc/pause', { memory: false }],
      ['POST', '/sandboxes/iabc/pause', {}],
      ['POST', '/sandboxes/iabc/pause', {}],
      ['POST', '/sandboxes/iabc/resume', { timeout: 5, memory: false }],
      ['POST', '/sandboxes/iabc/resume', {}],
    ]);
  } finally {
    server.close();
  }
});
