// REST surface of the in-guest agent (docs/agent.md, "REST routes"): auth, /init, /envs, /metrics, /health, /files.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { gzipSync } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import { Code, ConnectError } from '@connectrpc/connect';
import { filesSignature } from '../../src/agent/auth.js';
import { ENVD_VERSION, UNAUTHORIZED_MESSAGE } from '../../src/agent/protocol.js';
import { type TestAgent } from '../../src/agent/testing.js';
import { startHermeticAgent, type HermeticAgent } from '../helpers/hermetic-agent.js';

async function sha256File(p: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(p)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Writes `size` random bytes to `p` in 1 MiB pieces (never the whole file in memory). */
async function writeRandomFile(p: string, size: number): Promise<void> {
  const out = createWriteStream(p);
  let left = size;
  await pipeline(
    Readable.from(
      (function* () {
        while (left > 0) {
          const n = Math.min(left, 1 << 20);
          left -= n;
          yield randomBytes(n);
        }
      })(),
    ),
    out,
  );
}

/** Streams a file as an octet-stream POST body with node:http (chunked, no Content-Length). */
function postFileStream(url: string, file: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers: { 'Content-Type': 'application/octet-stream', ...headers } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    createReadStream(file).pipe(req);
  });
}

describe('agent REST', () => {
  let agent: HermeticAgent;
  let tmp: string;
  let entropyFile: string;
  let dateLog: string;

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'hearth-agent-rest-'));
    entropyFile = path.join(tmp, 'entropy.bin');
    dateLog = path.join(tmp, 'date.log');
    const fakeDate = path.join(tmp, 'fake-date');
    writeFileSync(fakeDate, `#!/bin/sh\necho "$@" >> ${dateLog}\n`);
    chmodSync(fakeDate, 0o755);
    agent = await startHermeticAgent({ HEARTH_AGENT_URANDOM: entropyFile, HEARTH_AGENT_DATE_BIN: fakeDate });
  });
  after(async () => {
    await agent?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('GET /health is 204, no-store, empty', async () => {
    const res = await fetch(`${agent.baseUrl}/health`);
    assert.equal(res.status, 204);
    assert.equal(res.headers.get('cache-control'), 'no-store');
    assert.equal(await res.text(), '');
  });

  test('/init answers 204 with X-Envd-Version and accepts chunked bodies and unknown fields', async () => {
    const res = await fetch(`${agent.baseUrl}/init`, {
      method: 'POST',
      body: Readable.toWeb(Readable.from([Buffer.from('{"envVars":{"K":"v"},'), Buffer.from('"futureField":{"x":1},"hyperloopIP":"10.0.0.1"}')])) as ReadableStream,
      duplex: 'half',
    } as RequestInit);
    assert.equal(res.status, 204);
    assert.equal(res.headers.get('x-envd-version'), ENVD_VERSION);
    assert.deepEqual(await (await fetch(`${agent.baseUrl}/envs`)).json(), { K: 'v' });
    const bad = await fetch(`${agent.baseUrl}/init`, { method: 'POST', body: '{nope' });
    assert.equal(bad.status, 400);
    const badUser = await fetch(`${agent.baseUrl}/init`, { method: 'POST', body: JSON.stringify({ defaultUser: 'no-such-user-x' }) });
    assert.equal(badUser.status, 400);
  });

  test('/init timestamp sets the clock only when newer and drifted; entropy goes to the entropy device', async () => {
    rmSync(dateLog, { force: true });
    const entropy = randomBytes(64);
    const old = new Date(Date.now() - 3600_000).toISOString();
    let res = await fetch(`${agent.baseUrl}/init`, {
      method: 'POST',
      body: JSON.stringify({ timestamp: old, hearth: { sandboxId: 'itest', entropy: entropy.toString('base64') } }),
    });
    assert.equal(res.status, 204);
    const calls1 = readFileSync(dateLog, 'utf8').trim().split('\n');
    assert.equal(calls1.length, 1);
    assert.match(calls1[0]!, /^-s @\d+\.\d{3}$/);
    assert.ok(Math.abs(Number(calls1[0]!.slice(4)) * 1000 - Date.parse(old)) < 1);
    assert.ok(readFileSync(entropyFile).subarray(-64).equals(entropy));
    // Older than the last applied: ignored.
    res = await fetch(`${agent.baseUrl}/init`, { method: 'POST', body: JSON.stringify({ timestamp: new Date(Date.parse(old) - 1000).toISOString() }) });
    assert.equal(res.status, 204);
    // Newer but the clock is right: not set.
    res = await fetch(`${agent.baseUrl}/init`, { method: 'POST', body: JSON.stringify({ timestamp: new Date().toISOString() }) });
    assert.equal(res.status, 204);
    assert.equal(readFileSync(dateLog, 'utf8').trim().split('\n').length, 1);
  });

  test('GET /metrics reports guest numbers from /proc', async () => {
    const m = (await (await fetch(`${agent.baseUrl}/metrics`)).json()) as Record<string, number>;
    for (const k of ['ts', 'cpu_count', 'cpu_used_pct', 'mem_total', 'mem_used', 'mem_cache', 'mem_total_mib', 'mem_used_mib', 'disk_used', 'disk_total']) {
      assert.equal(typeof m[k], 'number', k);
    }
    assert.ok(m.cpu_count! >= 1);
    assert.ok(m.mem_total! > m.mem_used!);
    assert.equal(m.mem_total_mib, Math.floor(m.mem_total! / 1048576));
    assert.ok(Math.abs(m.ts! - Date.now() / 1000) < 5);
    assert.ok(m.disk_total! > 0);
  });

  test('/files: 50 MB random file round trip, streamed both ways, sha256 equal (gzip and identity)', async () => {
    const src = path.join(tmp, 'big.bin');
    await writeRandomFile(src, 50 * 1024 * 1024);
    const want = await sha256File(src);
    const target = path.join(tmp, 'up', 'big-copy.bin');
    const up = await postFileStream(`${agent.baseUrl}/files?path=${encodeURIComponent(target)}`, src);
    assert.equal(up.status, 200, up.body);
    assert.deepEqual(JSON.parse(up.body), [{ path: target, name: 'big-copy.bin', type: 'file' }]);
    assert.equal(await sha256File(target), want);

    // Download with fetch's default Accept-Encoding (gzip, deflate): gzip stream, decoded by fetch.
    const res = await fetch(`${agent.baseUrl}/files?path=${encodeURIComponent(target)}`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-encoding'), 'gzip');
    const h = createHash('sha256');
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) h.update(chunk);
    assert.equal(h.digest('hex'), want);

    // Identity: Content-Length, Content-Disposition, Last-Modified.
    const down = path.join(tmp, 'down.bin');
    await new Promise<void>((resolve, reject) => {
      http.get(`${agent.baseUrl}/files?path=${encodeURIComponent(target)}`, { headers: { 'Accept-Encoding': 'identity' } }, (r) => {
        try {
          assert.equal(r.statusCode, 200);
          assert.equal(r.headers['content-length'], String(50 * 1024 * 1024));
          assert.equal(r.headers['content-disposition'], 'inline; filename="big-copy.bin"');
          assert.ok(r.headers['last-modified']);
          assert.equal(r.headers['content-encoding'], undefined);
        } catch (e) {
          reject(e);
        }
        pipeline(r, createWriteStream(down)).then(resolve, reject);
      }).on('error', reject);
    });
    assert.equal(await sha256File(down), want);
  });

  test('/files download: Range, empty file, 404, directory 400, 406', async () => {
    const f = path.join(tmp, 'range.txt');
    writeFileSync(f, '0123456789');
    const r = await fetch(`${agent.baseUrl}/files?path=${encodeURIComponent(f)}`, { headers: { Range: 'bytes=2-4', 'Accept-Encoding': 'identity' } });
    assert.equal(r.status, 206);
    assert.equal(await r.text(), '234');
    assert.equal(r.headers.get('content-range'), 'bytes 2-4/10');

    const empty = path.join(tmp, 'empty.txt');
    writeFileSync(empty, '');
    const e = await fetch(`${agent.baseUrl}/files?path=${encodeURIComponent(empty)}`);
    assert.equal(e.status, 200);
    assert.equal(e.headers.get('content-length'), '0');
    assert.equal(await e.text(), '');

    const missing = path.join(tmp, 'missing.txt');
    const nf = await fetch(`${agent.baseUrl}/files?path=${encodeURIComponent(missing)}`);
    assert.equal(nf.status, 404);
    assert.deepEqual(await nf.json(), { code: 404, message: `path '${missing}' does not exist` });

    const dir = await fetch(`${agent.baseUrl}/files?path=${encodeURIComponent(tmp)}`);
    assert.equal(dir.status, 400);
    assert.equal(((await dir.json()) as { code: number }).code, 400);

    const na = await fetch(`${agent.baseUrl}/files?path=${encodeURIComponent(f)}`, { headers: { 'Accept-Encoding': 'br, identity;q=0' } });
    assert.equal(na.status, 406);

    const badUser = await fetch(`${agent.baseUrl}/files?path=${encodeURIComponent(f)}&username=no-such-user-x`);
    assert.equal(badUser.status, 401);
  });

  test('/files upload: multipart with directory filenames, relative paths to home, duplicates 400', async () => {
    const base = path.join(tmp, 'multi');
    const form = new FormData();
    form.append('file', new Blob(['one']), `${base}/a/1.txt`);
    form.append('ignored', 'not a file');
    form.append('file', new Blob(['two']), `${base}/b/c/2.txt`);
    const res = await fetch(`${agent.baseUrl}/files`, { method: 'POST', body: form });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), [
      { path: `${base}/a/1.txt`, name: '1.txt', type: 'file' },
      { path: `${base}/b/c/2.txt`, name: '2.txt', type: 'file' },
    ]);
    assert.equal(readFileSync(`${base}/a/1.txt`, 'utf8'), 'one');
    assert.equal(readFileSync(`${base}/b/c/2.txt`, 'utf8'), 'two');

    // A part without filename (a plain field named "file") is accepted when ?path= is given.
    const field = new FormData();
    field.append('file', 'file content');
    const rel = `hearth-agent-test-${process.pid}.txt`;
    const r2 = await fetch(`${agent.baseUrl}/files?path=${rel}`, { method: 'POST', body: field });
    assert.equal(r2.status, 200);
    assert.deepEqual(await r2.json(), [{ path: `/root/${rel}`, name: rel, type: 'file' }]);
    // The agent's /root is agent.home on the host (test/helpers/hermetic-agent.ts).
    const onHost = path.join(agent.home ?? '/root', rel);
    assert.equal(readFileSync(onHost, 'utf8'), 'file content');
    rmSync(onHost);

    const dup = new FormData();
    dup.append('file', new Blob(['x']), `${base}/dup.txt`);
    dup.append('file', new Blob(['y']), `${base}/dup.txt`);
    const r3 = await fetch(`${agent.baseUrl}/files`, { method: 'POST', body: dup });
    assert.equal(r3.status, 400);

    const noPath = await fetch(`${agent.baseUrl}/files`, { method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: 'x' });
    assert.equal(noPath.status, 400);
  });

  test('/files upload: gzip request body, truncate on overwrite, unsupported encoding 400, 0644 mode', async () => {
    const f = path.join(tmp, 'gz', 'data.txt');
    const long = 'x'.repeat(1000);
    let res = await fetch(`${agent.baseUrl}/files?path=${encodeURIComponent(f)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Encoding': 'gzip' },
      body: gzipSync(Buffer.from(long)),
    });
    assert.equal(res.status, 200);
    assert.equal(readFileSync(f, 'utf8'), long);
    assert.equal(statSync(f).mode & 0o777, 0o666 & ~process.umask());
    res = await fetch(`${agent.baseUrl}/files?path=${encodeURIComponent(f)}`, { method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: 'short' });
    assert.equal(res.status, 200);
    assert.equal(readFileSync(f, 'utf8'), 'short');
    res = await fetch(`${agent.baseUrl}/files?path=${encodeURIComponent(f)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Encoding': 'br' },
      body: 'x',
    });
    assert.equal(res.status, 400);
    res = await fetch(`${agent.baseUrl}/files?path=${encodeURIComponent(f)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream', 'X-Metadata-Bad': 'caf\u00e9' },
      body: 'x',
    });
    assert.equal(res.status, 400);
  });

  test('signature matches the SDK cross-check vector', () => {
    assert.equal(filesSignature('hello.txt', 'read', 'user', '0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0'), 'v1_gUtH/s9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E');
  });

  describe('with an access token', () => {
    const token = 'tok-' + randomBytes(8).toString('hex');
    let secured: TestAgent;
    before(async () => {
      secured = await startHermeticAgent();
      const res = await fetch(`${secured.baseUrl}/init`, { method: 'POST', body: JSON.stringify({ accessToken: token }) });
      assert.equal(res.status, 204);
    });
    after(async () => {
      await secured?.stop();
    });

    test('RPCs and REST need X-Access-Token (exact 401 body); /health stays open', async () => {
      const res = await fetch(`${secured.baseUrl}/envs`);
      assert.equal(res.status, 401);
      assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
      assert.deepEqual(await res.json(), { code: 401, message: UNAUTHORIZED_MESSAGE });
      assert.equal((await fetch(`${secured.baseUrl}/envs`, { headers: { 'X-Access-Token': token } })).status, 200);
      assert.equal((await fetch(`${secured.baseUrl}/envs`, { headers: { 'X-Access-Token': token + 'x' } })).status, 401);
      assert.equal((await fetch(`${secured.baseUrl}/metrics`)).status, 401);
      assert.equal((await fetch(`${secured.baseUrl}/health`)).status, 204);

      await assert.rejects(secured.processClient().list({}), (e: unknown) => e instanceof ConnectError && e.code === Code.Unauthenticated);
      const ok = await secured.processClient({ 'X-Access-Token': token }).list({});
      assert.ok(Array.isArray(ok.processes));
      // Streaming RPCs too (the client maps the HTTP 401 to unauthenticated).
      await assert.rejects(
        (async () => {
          for await (const _ of secured.filesystemClient().watchDir({ path: '/tmp' })) break;
        })(),
        (e: unknown) => e instanceof ConnectError && e.code === Code.Unauthenticated,
      );
    });

    test('CORS: preflight needs no token; responses (401 included) carry Access-Control-Allow-Origin', async () => {
      const pre = await fetch(`${secured.baseUrl}/process.Process/Start`, {
        method: 'OPTIONS',
        headers: { Origin: 'https://app.example', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type,x-access-token,connect-timeout-ms' },
      });
      assert.equal(pre.status, 204);
      assert.equal(pre.headers.get('access-control-allow-origin'), '*');
      assert.match(pre.headers.get('access-control-allow-methods') ?? '', /POST/);
      assert.equal(pre.headers.get('access-control-allow-headers'), 'content-type,x-access-token,connect-timeout-ms');
      const denied = await fetch(`${secured.baseUrl}/envs`, { headers: { Origin: 'https://app.example' } });
      assert.equal(denied.status, 401);
      assert.equal(denied.headers.get('access-control-allow-origin'), '*');
      const list = await fetch(`${secured.baseUrl}/process.Process/List`, {
        method: 'POST',
        headers: { Origin: 'https://app.example', 'Content-Type': 'application/json', 'X-Access-Token': token },
        body: '{}',
      });
      assert.equal(list.status, 200);
      assert.equal(list.headers.get('access-control-allow-origin'), '*');
      assert.match(list.headers.get('access-control-expose-headers') ?? '', /Grpc-Status/i);
    });

    test('/files: header token, signatures, expiry (exact body)', async () => {
      const f = path.join(tmp, 'signed.txt');
      writeFileSync(f, 'signed');
      const url = (q: string) => `${secured.baseUrl}/files?${q}`;
      const p = encodeURIComponent(f);
      assert.equal((await fetch(url(`path=${p}`), { headers: { 'X-Access-Token': token } })).status, 200);
      const wrong = await fetch(url(`path=${p}`), { headers: { 'X-Access-Token': 'nope' } });
      assert.equal(wrong.status, 401);
      assert.equal(((await wrong.json()) as { message: string }).message, 'access token present in header but does not match');
      const missing = await fetch(url(`path=${p}`));
      assert.equal(missing.status, 401);
      assert.equal(((await missing.json()) as { message: string }).message, 'missing signature query parameter');

      const sig = filesSignature(f, 'read', '', token);
      const signed = await fetch(url(`path=${p}&signature=${encodeURIComponent(sig)}`));
      assert.equal(signed.status, 200);
      assert.equal(await signed.text(), 'signed');
      const asWrite = await fetch(url(`path=${p}&signature=${encodeURIComponent(sig)}`), { method: 'POST', body: 'x', headers: { 'Content-Type': 'application/octet-stream' } });
      assert.equal(asWrite.status, 401);
      assert.equal(readFileSync(f, 'utf8'), 'signed');

      const exp = String(Math.floor(Date.now() / 1000) + 60);
      const sigU = filesSignature(f, 'read', 'root', token, exp);
      assert.equal((await fetch(url(`path=${p}&username=root&signature=${encodeURIComponent(sigU)}&signature_expiration=${exp}`))).status, 200);

      const past = String(Math.floor(Date.now() / 1000) - 10);
      const sigOld = filesSignature(f, 'read', '', token, past);
      const expired = await fetch(url(`path=${p}&signature=${encodeURIComponent(sigOld)}&signature_expiration=${past}`));
      assert.equal(expired.status, 401);
      assert.deepEqual(await expired.json(), { code: 401, message: 'signature is already expired' });

      const wsig = filesSignature(f, 'write', '', token);
      const w = await fetch(url(`path=${p}&signature=${encodeURIComponent(wsig)}`), { method: 'POST', body: 'new', headers: { 'Content-Type': 'application/octet-stream' } });
      assert.equal(w.status, 200);
      assert.equal(readFileSync(f, 'utf8'), 'new');
    });

    test('/init can change the token only when presenting the current one', async () => {
      const denied = await fetch(`${secured.baseUrl}/init`, { method: 'POST', body: JSON.stringify({ accessToken: 'other' }) });
      assert.equal(denied.status, 401);
      assert.equal((await fetch(`${secured.baseUrl}/envs`, { headers: { 'X-Access-Token': token } })).status, 200);
      // Once a token is set every /init needs it, even one that keeps the token (re-init after resume).
      assert.equal((await fetch(`${secured.baseUrl}/init`, { method: 'POST', body: JSON.stringify({ accessToken: token }) })).status, 401);
      assert.equal((await fetch(`${secured.baseUrl}/init`, { method: 'POST', headers: { 'X-Access-Token': token }, body: JSON.stringify({ accessToken: token }) })).status, 204);
      const next = token + '-2';
      const ok = await fetch(`${secured.baseUrl}/init`, { method: 'POST', headers: { 'X-Access-Token': token }, body: JSON.stringify({ accessToken: next }) });
      assert.equal(ok.status, 204);
      assert.equal((await fetch(`${secured.baseUrl}/envs`, { headers: { 'X-Access-Token': token } })).status, 401);
      assert.equal((await fetch(`${secured.baseUrl}/envs`, { headers: { 'X-Access-Token': next } })).status, 200);
      // Clearing (empty token) with proof turns auth off.
      const cleared = await fetch(`${secured.baseUrl}/init`, { method: 'POST', headers: { 'X-Access-Token': next }, body: JSON.stringify({ accessToken: '' }) });
      assert.equal(cleared.status, 204);
      assert.equal((await fetch(`${secured.baseUrl}/envs`)).status, 200);
    });
  });
});
