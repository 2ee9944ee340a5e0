// The agent's /init behind its token, and the request target both the agent and hearthd's envd
// proxy decide on (src/util/request-target.ts): dot-segment and encoded walk-arounds of /init,
// sent byte for byte (fetch would normalise them), never apply a body.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { FastifyBaseLogger } from 'fastify';
import { UNAUTHORIZED_MESSAGE } from '../../src/agent/protocol.js';
import { type TestAgent } from '../../src/agent/testing.js';
import { startHermeticAgent } from '../helpers/hermetic-agent.js';
import { proxyTargetOf, proxyToSandbox } from '../../src/api/proxy.js';
import type { SandboxManager } from '../../src/core/manager.js';

interface RawAnswer { status: number; body: string }

/** One request with the target exactly as given, on its own connection. */
function rawRequest(port: number, method: string, target: string, headers: Record<string, string> = {}, body = ''): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let data = '';
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => { data += d; });
    sock.on('error', reject);
    sock.on('close', () => {
      const m = /^HTTP\/1\.1 (\d{3})/.exec(data);
      if (!m) { reject(new Error(`no HTTP answer to ${method} ${JSON.stringify(target)}: ${JSON.stringify(data.slice(0, 200))}`)); return; }
      const at = data.indexOf('\r\n\r\n');
      resolve({ status: Number(m[1]), body: at === -1 ? '' : data.slice(at + 4) });
    });
    const head = Object.entries({ host: 'agent', connection: 'close', 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), ...headers })
      .map(([k, v]) => `${k}: ${v}\r\n`).join('');
    // Written, not ended: a half-closed client socket makes Node's server abort the request.
    sock.write(`${method} ${target} HTTP/1.1\r\n${head}\r\n${body}`, 'latin1');
  });
}

/** Targets that resolve to /init for a WHATWG URL parser (or are otherwise odd) in origin-form. */
const INIT_VARIANTS = [
  '/init', '/./init', '/%2e/init', '/%2E/init', '/x/../init', '/x/%2e%2e/init', '/x/.%2e/init', '/init#frag', '//init', '///init',
  '/%69nit', '/ini%74', '/init?x=1', '/x/..//init', '/%2e%2e/init', '/../init', '/x%2f..%2finit', '/x/%5c../init', '/init%00',
  'http://agent/./init', 'http://agent//init',
];

describe('agent /init and the access token', () => {
  const token = 'tok-' + randomBytes(8).toString('hex');
  let agent: TestAgent;

  const envsWithToken = async (): Promise<unknown> => (await fetch(`${agent.baseUrl}/envs`, { headers: { 'X-Access-Token': token } })).json();

  before(async () => {
    agent = await startHermeticAgent();
  });
  after(async () => {
    await agent?.stop();
  });

  test('the first /init after a cold boot needs no token, and sets it', async () => {
    const res = await fetch(`${agent.baseUrl}/init`, { method: 'POST', body: JSON.stringify({ accessToken: token, envVars: { OWNER: 'yes' } }) });
    assert.equal(res.status, 204);
    assert.deepEqual(await envsWithToken(), { OWNER: 'yes' });
    assert.equal((await fetch(`${agent.baseUrl}/envs`)).status, 401);
  });

  test('once a token is set, /init without it or with a wrong one is 401 whatever the body, and changes nothing', async () => {
    const bodies = [
      { envVars: { SHELLOPTS: 'xtrace', PS4: '$(touch /tmp/pwned)' } },
      { accessToken: token, envVars: { X: '1' } }, // the same token in the body is no proof
      { defaultWorkdir: '/tmp' },
      { timestamp: new Date(Date.now() + 86_400_000).toISOString() },
      {},
    ];
    for (const body of bodies) {
      for (const headers of [{}, { 'X-Access-Token': token + 'x' }, { 'X-Access-Token': '' }] as Array<Record<string, string>>) {
        const res = await fetch(`${agent.baseUrl}/init`, { method: 'POST', headers, body: JSON.stringify(body) });
        assert.equal(res.status, 401, `${JSON.stringify(body)} with ${JSON.stringify(headers)}`);
        assert.deepEqual(await res.json(), { code: 401, message: UNAUTHORIZED_MESSAGE });
      }
    }
    assert.deepEqual(await envsWithToken(), { OWNER: 'yes' });
  });

  test('with the current token /init applies (what hearthd does after every restore)', async () => {
    const res = await fetch(`${agent.baseUrl}/init`, { method: 'POST', headers: { 'X-Access-Token': token }, body: JSON.stringify({ accessToken: token, envVars: { OWNER: 'again' } }) });
    assert.equal(res.status, 204);
    assert.deepEqual(await envsWithToken(), { OWNER: 'again' });
  });

  test('dot-segment and encoded variants of /init are 400 or 401 and never apply', async () => {
    const body = JSON.stringify({ envVars: { SHELLOPTS: 'xtrace' } });
    for (const target of INIT_VARIANTS) {
      const res = await rawRequest(agent.port, 'POST', target, {}, body);
      assert.ok(res.status === 400 || res.status === 401, `${JSON.stringify(target)} → ${res.status} ${res.body}`);
    }
    assert.deepEqual(await envsWithToken(), { OWNER: 'again' });
    // The agent's own 400 is envd's JSON error body.
    const bad = await rawRequest(agent.port, 'POST', '/x%2f..%2finit', {}, body);
    assert.equal(bad.status, 400);
    assert.match((JSON.parse(bad.body) as { message: string }).message, /encoded slash/);
    // `//envs` is the path /envs (not a URL with host "envs"): token checked, answered.
    assert.equal((await rawRequest(agent.port, 'GET', '//envs', { 'x-access-token': token })).status, 200);
    assert.equal((await rawRequest(agent.port, 'GET', '/x/../envs')).status, 401);
  });
});

describe('agent /init under its lock', () => {
  test('a tokenless /init queued behind the first one is refused once that one has set a token', async () => {
    const agent = await startHermeticAgent();
    try {
      const token = 'tok-' + randomBytes(8).toString('hex');
      // The first /init holds the lock while its body is still arriving.
      const first = new Promise<number>((resolve, reject) => {
        const req = http.request(`${agent.baseUrl}/init`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => { res.resume(); resolve(res.statusCode ?? 0); });
        req.on('error', reject);
        req.write('{"accessToken":');
        setTimeout(() => req.end(JSON.stringify(token) + ',"envVars":{"OWNER":"yes"}}'), 300);
      });
      await new Promise((r) => setTimeout(r, 100));
      const second = fetch(`${agent.baseUrl}/init`, { method: 'POST', body: JSON.stringify({ envVars: { SHELLOPTS: 'xtrace' } }) });
      assert.equal(await first, 204);
      assert.equal((await second).status, 401);
      const envs = await fetch(`${agent.baseUrl}/envs`, { headers: { 'X-Access-Token': token } });
      assert.deepEqual(await envs.json(), { OWNER: 'yes' });
    } finally {
      await agent.stop();
    }
  });
});

/** A stand-in for hearthd's onRequest hook: proxyTargetOf + proxyToSandbox in front of `upstream`. */
async function startProxy(upstreamPort: () => number): Promise<{ port: number; close(): Promise<void> }> {
  const manager = {
    reachable: async () => ({ endpoint: { host: '127.0.0.1', port: upstreamPort() }, token: '', lease: 'test' }),
  } as unknown as SandboxManager;
  const log = { warn: () => undefined, error: () => undefined } as unknown as FastifyBaseLogger;
  const server = http.createServer((req: IncomingMessage, res: ServerResponse) => {
    const target = proxyTargetOf(req.url ?? '/', req.headers);
    if (!target) { res.writeHead(404); res.end('not envd'); return; }
    void proxyToSandbox(manager, log, target, req, res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((r) => { server.close(() => r()); server.closeAllConnections(); }),
  };
}

describe("hearthd's envd proxy in front of the agent", () => {
  const token = 'tok-' + randomBytes(8).toString('hex');
  let agent: TestAgent;
  let proxy: { port: number; close(): Promise<void> };
  let recorder: http.Server;
  let recorded: string[] = [];
  let upstream = 0;

  before(async () => {
    agent = await startHermeticAgent();
    const init = await fetch(`${agent.baseUrl}/init`, { method: 'POST', body: JSON.stringify({ accessToken: token, envVars: { OWNER: 'yes' } }) });
    assert.equal(init.status, 204);
    recorder = http.createServer((req, res) => { recorded.push(req.url ?? ''); res.writeHead(200); res.end('ok'); });
    await new Promise<void>((r) => recorder.listen(0, '127.0.0.1', r));
    proxy = await startProxy(() => upstream);
  });
  after(async () => {
    await proxy?.close();
    await new Promise<void>((r) => { recorder?.close(() => r()); recorder?.closeAllConnections(); });
    await agent?.stop();
  });

  test('no variant of /init gets through, in path or header form, even with the token; the env is unchanged', async () => {
    upstream = agent.port;
    const body = JSON.stringify({ envVars: { SHELLOPTS: 'xtrace' } });
    for (const v of INIT_VARIANTS) {
      const forms: Array<[string, Record<string, string>]> = [[v, { 'e2b-sandbox-id': 'sbx1' }]];
      if (v.startsWith('/')) forms.push([`/sandboxes/sbx1/envd${v}`, {}]);
      for (const [target, headers] of forms) {
        const res = await rawRequest(proxy.port, 'POST', target, { ...headers, 'x-access-token': token }, body);
        assert.ok(res.status === 400 || res.status === 404, `${JSON.stringify(target)} → ${res.status} ${res.body}`);
        const answer = JSON.parse(res.body) as { code: number; error_code?: string };
        assert.equal(answer.code, res.status);
        if (res.status === 400) assert.equal(answer.error_code, 'invalid_argument');
      }
    }
    const envs = await rawRequest(proxy.port, 'GET', '/sandboxes/sbx1/envd/./envs', { 'x-access-token': token });
    assert.equal(envs.status, 200);
    assert.deepEqual(JSON.parse(envs.body), { OWNER: 'yes' });
  });

  test('the agent receives the canonical target, not the raw one', async () => {
    upstream = (recorder.address() as AddressInfo).port;
    const cases: Array<[string, Record<string, string>, string]> = [
      ['/sandboxes/sbx1/envd/./x/../files?path=%2Fa%2F..%2Fb&username=u', {}, '/files?path=%2Fa%2F..%2Fb&username=u'],
      ['/sandboxes/sbx1/envd', {}, '/'],
      ['/sandboxes/sbx1/envd?x', {}, '/?x'],
      ['/sandboxes/sbx1/envd//process.Process/%4Cist', {}, '/process.Process/List'],
      ['/a/%2e/%65nvs', { 'e2b-sandbox-id': 'sbx1' }, '/a/envs'],
      ['http://hearthd:3000/x/../health?y=%2e', { 'e2b-sandbox-id': 'sbx1' }, '/health?y=%2e'],
    ];
    for (const [target, headers, expected] of cases) {
      recorded = [];
      const res = await rawRequest(proxy.port, 'GET', target, headers);
      assert.equal(res.status, 200, `${target}: ${res.body}`);
      assert.deepEqual(recorded, [expected], target);
    }
  });
});
