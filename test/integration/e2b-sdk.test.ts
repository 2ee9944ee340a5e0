/**
 * E2B's own JavaScript SDK, unchanged, against a real hearthd with real VMs
 * (docs/e2b-compat.md): the current release (`e2b`, creates with POST
 * /v2/sandboxes) and the last one that creates with POST /sandboxes
 * (`e2b-v1` = e2b 2.50.0). One daemon for the file, listening on HTTP and
 * HTTPS (a certificate this test makes) with the sandbox domain
 * `hearth.localhost:<port>`; four VMs in all (one of them also paused
 * filesystem-only and booted back, another paused filesystem-only by its
 * timeout). Client setups covered: the
 * variables E2B_API_URL + E2B_SANDBOX_URL (plain HTTP), and E2B_DOMAIN alone
 * (HTTPS, Host-routed envd and API, in a child process that trusts the
 * certificate). `*.localhost` names are resolved to 127.0.0.1 here, as
 * browsers and systemd-resolved do.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import dns from 'node:dns';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CommandExitError, FilesystemEventType, Sandbox, SandboxNotFoundError, TimeoutError, type FilesystemEvent } from 'e2b';
import { Sandbox as SandboxV1 } from 'e2b-v1';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { createApiKey } from '../../src/api/auth.js';

const execFileP = promisify(execFile);
const DOMAIN = 'hearth.localhost';

// `*.localhost` is loopback (RFC 6761); this host's resolver does not know it, browsers and systemd-resolved do.
const realLookup = dns.lookup;
(dns as { lookup: unknown }).lookup = function lookup(host: string, opts: unknown, cb?: unknown): void {
  const callback = (typeof opts === 'function' ? opts : cb) as (...a: unknown[]) => void;
  const o = (typeof opts === 'object' && opts !== null ? opts : {}) as { all?: boolean };
  if (/\.localhost$/i.test(host)) {
    if (o.all) callback(null, [{ address: '127.0.0.1', family: 4 }]); else callback(null, '127.0.0.1', 4);
    return;
  }
  (realLookup as (...a: unknown[]) => void).call(dns, host, opts, cb);
};

let d: TestDaemon;
let tmp: string;
let key: string;
let port: number;
const savedEnv = { ...process.env };

async function makeCert(dir: string): Promise<{ cert: string; key: string }> {
  const cert = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  await execFileP('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', cert, '-days', '1',
    '-subj', `/CN=${DOMAIN}`, '-addext', `subjectAltName=DNS:${DOMAIN},DNS:*.${DOMAIN},IP:127.0.0.1`]);
  return { cert, key: keyFile };
}

before(async () => {
  tmp = await mkdtemp(join(process.env['HEARTH_TEST_TMP'] ?? tmpdir(), 'hearth-e2b-'));
  const tls = await makeCert(tmp);
  d = await startTestDaemon({ proxyDomain: DOMAIN, tlsCert: tls.cert, tlsKey: tls.key, requireApiKey: true });
  port = Number(new URL(d.url).port);
  key = createApiKey(d.store, 'e2b-sdk').key;
  // What a user sets (docs/e2b-compat.md).
  Object.assign(process.env, { E2B_API_URL: d.url, E2B_SANDBOX_URL: d.url, E2B_API_KEY: key });
});

after(async () => {
  process.env = savedEnv;
  (dns as { lookup: unknown }).lookup = realLookup;
  await d?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const raw = async (path: string, init: RequestInit = {}): Promise<Response> =>
  fetch(`${d.url}${path}`, { ...init, headers: { 'x-api-key': key, ...(init.headers as Record<string, string> | undefined) } });

describe('e2b SDK (current, v2 create path)', () => {
  let sbx: Sandbox;

  test('create (POST /v2/sandboxes), getInfo, setTimeout, getMetrics, python', async () => {
    sbx = await Sandbox.create({ metadata: { suite: 'e2b-sdk', sdk: 'v2' }, envs: { FOO: 'bar' }, timeoutMs: 300_000 });
    const info = await sbx.getInfo();
    assert.equal(info.sandboxId, sbx.sandboxId);
    assert.equal(info.state, 'running');
    assert.deepEqual(info.metadata, { suite: 'e2b-sdk', sdk: 'v2' });
    assert.equal(info.sandboxDomain, `${DOMAIN}:${port}`);
    await sbx.setTimeout(200_000);
    const end = (await sbx.getInfo()).endAt.getTime();
    assert.ok(Math.abs(end - (Date.now() + 200_000)) < 10_000, 'setTimeout moved endAt');
    const metrics = await sbx.getMetrics();
    assert.ok(metrics.length >= 1);
    assert.ok(metrics[0]!.memTotal > 0 && metrics[0]!.diskTotal > 0 && metrics[0]!.cpuCount >= 1);
    assert.ok(metrics[0]!.timestamp instanceof Date && !Number.isNaN(metrics[0]!.timestamp.getTime()));
    const py = await sbx.commands.run('python -c "import sys; print(sys.version_info[0])"; echo $FOO');
    assert.equal(py.stdout, '3\nbar\n');
  });

  test('commands: streaming, exit errors, stdin, background + connect, kill, timeouts', async () => {
    const chunks: string[] = [];
    const r = await sbx.commands.run('for i in 1 2 3; do echo out$i; echo err$i >&2; done', { onStdout: (s) => { chunks.push(s); } });
    assert.equal(r.exitCode, 0);
    assert.equal(chunks.join(''), 'out1\nout2\nout3\n');
    assert.equal(r.stderr, 'err1\nerr2\nerr3\n');
    await assert.rejects(sbx.commands.run('echo no >&2; exit 3'), (e: unknown) => e instanceof CommandExitError && e.exitCode === 3 && e.stderr === 'no\n');
    const cat = await sbx.commands.run('cat', { background: true, stdin: true });
    await sbx.commands.sendStdin(cat.pid, 'piped\n');
    await sbx.commands.closeStdin(cat.pid);
    assert.equal((await cat.wait()).stdout, 'piped\n');
    const bg = await sbx.commands.run('for i in $(seq 1 100); do echo tick$i; sleep 0.1; done', { background: true });
    const seen: string[] = [];
    const again = await sbx.commands.connect(bg.pid, { onStdout: (s) => { seen.push(s); } });
    assert.ok((await sbx.commands.list()).some((p) => p.pid === bg.pid));
    await new Promise((res) => setTimeout(res, 500));
    assert.equal(await sbx.commands.kill(bg.pid), true);
    await assert.rejects(again.wait(), CommandExitError);
    assert.ok(seen.join('').includes('tick'), 'connected handle streamed output');
    await assert.rejects(sbx.commands.run('sleep 30', { timeoutMs: 1500 }), TimeoutError);
  });

  test('pty: create, input, resize, connect', async () => {
    let out = '';
    const term = await sbx.pty.create({ cols: 80, rows: 24, onData: (b) => { out += new TextDecoder().decode(b); }, timeoutMs: 60_000 });
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode('stty size; echo pty-$((6*7))\n'));
    await waitFor(() => out.includes('pty-42') && out.includes('24 80'), 'pty output');
    await sbx.pty.resize(term.pid, { cols: 100, rows: 30 });
    let out2 = '';
    const again = await sbx.pty.connect(term.pid, { onData: (b) => { out2 += new TextDecoder().decode(b); } });
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode('stty size\n'));
    await waitFor(() => out2.includes('30 100'), 'resized pty seen through the connected handle');
    await sbx.pty.kill(term.pid);
    await again.wait().catch(() => undefined);
  });

  test('files: write/read/list/exists/rename/remove, metadata, watch', async () => {
    await sbx.files.makeDir('/home/user/e2b');
    const events: FilesystemEvent[] = [];
    const watch = await sbx.files.watchDir('/home/user/e2b', (e) => { events.push(e); });
    const w = await sbx.files.write('/home/user/e2b/a.txt', 'hello', { metadata: { owner: 'alice', Stage: 'draft' } });
    assert.equal(w.path, '/home/user/e2b/a.txt');
    assert.deepEqual(w.metadata, { owner: 'alice', stage: 'draft' }, 'the upload reply carries the metadata (keys lower-cased)');
    assert.equal(await sbx.files.read('/home/user/e2b/a.txt'), 'hello');
    assert.deepEqual((await sbx.files.getInfo('/home/user/e2b/a.txt')).metadata, { owner: 'alice', stage: 'draft' }, 'Stat');
    const listed = await sbx.files.list('/home/user/e2b');
    assert.deepEqual(listed.map((e) => [e.name, e.metadata]), [['a.txt', { owner: 'alice', stage: 'draft' }]], 'ListDir');
    const moved = await sbx.files.rename('/home/user/e2b/a.txt', '/home/user/e2b/b.txt');
    assert.deepEqual(moved.metadata, { owner: 'alice', stage: 'draft' }, 'Move');
    assert.equal(await sbx.files.exists('/home/user/e2b/a.txt'), false);
    await sbx.files.remove('/home/user/e2b/b.txt');
    await waitFor(() => events.some((e) => e.type === FilesystemEventType.REMOVE), 'watch events');
    await watch.stop();
    assert.ok(events.some((e) => e.name === 'a.txt' && (e.type === FilesystemEventType.CREATE || e.type === FilesystemEventType.WRITE)));
  });

  test('upload and download URLs: signed (with and without expiry), routed by signature; unsigned needs the headers', async () => {
    const up = await sbx.uploadUrl('/home/user/up.txt', { useSignatureExpiration: 60 });
    assert.ok(up.startsWith(`${d.url}/files?`) && up.includes('signature='));
    const form = new FormData();
    form.append('file', new Blob(['uploaded']), 'up.txt');
    const upRes = await fetch(up, { method: 'POST', body: form });
    assert.equal(upRes.status, 200, await upRes.clone().text());
    const down = await sbx.downloadUrl('/home/user/up.txt');
    const got = await fetch(down);
    assert.equal(got.status, 200);
    assert.equal(await got.text(), 'uploaded');
    const tampered = await fetch(down.replace('up.txt', 'other.txt'));
    assert.equal(tampered.status, 401);
    assert.deepEqual(Object.keys(await tampered.json() as object).sort(), ['code', 'error_code', 'message']);
    const unsigned = `${d.url}/files?path=${encodeURIComponent('/home/user/up.txt')}`;
    assert.equal((await fetch(unsigned)).status, 400);
    const withHeaders = await fetch(unsigned, { headers: { 'e2b-sandbox-id': sbx.sandboxId, 'e2b-sandbox-port': '49983', 'x-access-token': (sbx as unknown as { envdAccessToken: string }).envdAccessToken } });
    assert.equal(await withHeaders.text(), 'uploaded');
  });

  test('getHost: <port>-<id>.<domain> reaches a guest server (plain HTTP with E2B_SANDBOX_URL)', async () => {
    await sbx.files.write('/home/user/www/index.html', 'served by python');
    await sbx.commands.run('cd /home/user/www && python -m http.server 8000', { background: true });
    const host = sbx.getHost(8000);
    assert.equal(host, `8000-${sbx.sandboxId}.${DOMAIN}:${port}`);
    await waitFor(async () => (await fetch(`http://${host}/`).then((r) => r.text(), () => '')) === 'served by python', 'guest server via the host form', 20_000);
  });

  test('E2B_DOMAIN alone, over HTTPS: API at api.<domain>, envd at 49983-<id>.<domain>, getHost over https', async () => {
    const entry = createRequire(import.meta.url).resolve('e2b');
    const script = `
      import dns from 'node:dns';
      const real = dns.lookup;
      dns.lookup = (h, o, c) => /\\.localhost$/i.test(h) ? ((typeof o === 'function' ? o : c)(null, ...(o && o.all ? [[{ address: '127.0.0.1', family: 4 }]] : ['127.0.0.1', 4]))) : real(h, o, c);
      const { Sandbox } = await import(${JSON.stringify(entry)});
      const s = await Sandbox.connect(${JSON.stringify(sbx.sandboxId)});
      const r = await s.commands.run('echo over-tls');
      const page = await (await fetch('https://' + s.getHost(8000) + '/')).text();
      const apiHost = new URL((await s.uploadUrl('/tmp/x')) ).host;
      console.log(JSON.stringify({ out: r.stdout, page, apiHost, read: await s.files.read('/home/user/www/index.html') }));
    `;
    const env: Record<string, string> = { PATH: process.env['PATH'] ?? '', E2B_DOMAIN: `${DOMAIN}:${port}`, E2B_API_KEY: key, NODE_EXTRA_CA_CERTS: join(tmp, 'cert.pem') };
    const { stdout } = await execFileP(process.execPath, ['--input-type=module', '-e', script], { env, timeout: 60_000 });
    const res = JSON.parse(stdout.trim().split('\n').at(-1)!) as { out: string; page: string; apiHost: string; read: string };
    assert.equal(res.out, 'over-tls\n');
    assert.equal(res.page, 'served by python');
    assert.equal(res.read, 'served by python');
    assert.equal(res.apiHost, `49983-${sbx.sandboxId}.${DOMAIN}:${port}`, 'file URLs go to the envd host form');
  });

  let other: SandboxV1;

  test('e2b 2.50 (v1 create path): create, commands, files, connect, list; list filters and pages with the current SDK; a filesystem-only timeout pause', async () => {
    // autoPause + autoPauseMemory: false in the v1 create body: the timeout pauses filesystem-only (checked at the end).
    other = await SandboxV1.create({ metadata: { suite: 'e2b-sdk', sdk: 'v1' }, timeoutMs: 300_000, lifecycle: { onTimeout: { action: 'pause', keepMemory: false } } });
    assert.deepEqual((await other.getInfo()).lifecycle, { onTimeout: 'pause', autoResume: false });
    assert.equal((await other.commands.run('echo v1')).stdout, 'v1\n');
    // Not under /tmp: it is a tmpfs, which has no user.* xattrs before Linux 6.6 (docs/e2b-compat.md).
    await other.files.write('/home/user/v1.txt', 'old sdk', { metadata: { via: 'v1' } });
    assert.equal(await other.files.read('/home/user/v1.txt'), 'old sdk');
    assert.deepEqual((await other.files.getInfo('/home/user/v1.txt')).metadata, { via: 'v1' });
    const same = await SandboxV1.connect(other.sandboxId); // POST /sandboxes/{id}/connect
    assert.equal((await same.commands.run('cat /home/user/v1.txt')).stdout, 'old sdk');
    const v1Listed = await SandboxV1.list({ query: { metadata: { suite: 'e2b-sdk' } } }).nextItems();
    assert.deepEqual(v1Listed.map((s) => s.sandboxId).sort(), [sbx.sandboxId, other.sandboxId].sort());

    const p = Sandbox.list({ query: { metadata: { suite: 'e2b-sdk' }, state: ['running'] }, limit: 1 });
    const first = await p.nextItems();
    assert.equal(first.length, 1);
    assert.ok(p.hasNext, 'X-Next-Token read');
    const second = await p.nextItems();
    assert.equal(second.length, 1);
    assert.equal(p.hasNext, false);
    assert.deepEqual([first[0]!.sandboxId, second[0]!.sandboxId], [other.sandboxId, sbx.sandboxId], 'newest first');
    assert.deepEqual((await Sandbox.list({ query: { metadata: { sdk: 'v1' } } }).nextItems()).map((s) => s.sandboxId), [other.sandboxId]);
    assert.deepEqual(await Sandbox.list({ query: { state: ['paused'], metadata: { suite: 'e2b-sdk' } } }).nextItems(), []);
    // The timeout pauses it instead of killing it, filesystem-only as asked at create.
    await other.setTimeout(1_000);
    await waitFor(async () => (await SandboxV1.getInfo(other.sandboxId)).state === 'paused', 'paused at its timeout', 60_000);
    const timedOut = await (await raw(`/sandboxes/${other.sandboxId}`)).json() as { pausedWithMemory: boolean | null; endReason: string | null; lifecycle: { keepMemory: boolean } };
    assert.deepEqual([timedOut.pausedWithMemory, timedOut.endReason, timedOut.lifecycle.keepMemory], [false, null, false]);
    assert.equal(await SandboxV1.kill(other.sandboxId), true);
    assert.equal(await SandboxV1.kill(other.sandboxId), false, 'a killed sandbox is a 404: kill says false');
  });

  test('pause, then connect resumes (with and without timeout); connect to a running one without timeout', async () => {
    await sbx.commands.run('echo kept > /tmp/state');
    assert.equal(await sbx.pause(), true);
    assert.equal((await sbx.getInfo()).state, 'paused');
    assert.deepEqual((await Sandbox.list({ query: { state: ['paused'], metadata: { suite: 'e2b-sdk' } } }).nextItems()).map((s) => s.sandboxId), [sbx.sandboxId]);
    const resumed = await Sandbox.connect(sbx.sandboxId); // no timeout in the body
    assert.equal((await resumed.commands.run('cat /tmp/state')).stdout, 'kept\n');
    const again = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 120_000 });
    assert.equal((await again.getInfo()).state, 'running');
    assert.equal(await sbx.pause(), true);
    const withTimeout = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 90_000 });
    const left = (await withTimeout.getInfo()).endAt.getTime() - Date.now();
    assert.ok(left > 60_000 && left < 100_000, `timeout from the connect (${left} ms left)`);
    const viaV1 = await SandboxV1.connect(sbx.sandboxId, { timeoutMs: 120_000 });
    assert.equal((await viaV1.commands.run('echo ok')).stdout, 'ok\n');
  });

  test('filesystem-only pause (pause({ keepMemory: false })): only the disk is kept; connect boots from it (a new boot_id, processes gone, files kept, same token and env)', async (t) => {
    await sbx.files.write('/home/user/fs-pause.txt', 'written before the pause');
    const bootId = (await sbx.commands.run('cat /proc/sys/kernel/random/boot_id')).stdout.trim();
    await sbx.commands.run('sleep 1000', { background: true });
    const t0 = Date.now();
    assert.equal(await sbx.pause({ keepMemory: false }), true);
    const pauseMs = Date.now() - t0;
    assert.equal((await sbx.getInfo()).state, 'paused');
    const paused = await (await raw(`/sandboxes/${sbx.sandboxId}`)).json() as { pausedWithMemory: boolean | null; timings: { op: string } };
    assert.equal(paused.pausedWithMemory, false);
    assert.equal(paused.timings.op, 'pause (filesystem)');
    assert.equal(await sbx.pause({ keepMemory: false }), false, 'already paused: the SDK says false');
    const t1 = Date.now();
    const booted = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 120_000 });
    const resumeMs = Date.now() - t1;
    t.diagnostic(`filesystem-only pause ${pauseMs} ms, resume by boot ${resumeMs} ms`);
    const info = await booted.getInfo();
    assert.equal(info.state, 'running');
    const left = info.endAt.getTime() - Date.now();
    assert.ok(left > 100_000 && left <= 120_000, `the timeout counts from the resume (${left} ms left)`);
    // The old handle keeps working: the sandbox has the same token.
    assert.equal(await sbx.files.read('/home/user/fs-pause.txt'), 'written before the pause');
    const after = await sbx.commands.run('cat /proc/sys/kernel/random/boot_id; pgrep -x sleep || echo no-sleep; echo $FOO');
    const [newBootId, sleeping, foo] = after.stdout.trim().split('\n');
    assert.notEqual(newBootId, bootId, 'the guest booted');
    assert.equal(sleeping, 'no-sleep', 'a process started before the pause is gone');
    assert.equal(foo, 'bar', 'env vars come back with /init');
    // /tmp is a tmpfs: empty after a boot. The snapshot test below reads this file.
    await sbx.commands.run('echo kept > /tmp/state');
  });

  test('snapshots: create, list by name, create from, delete; fork; kill; a killed sandbox is a 404', async () => {
    const snap = await sbx.createSnapshot({ name: 'e2b-snap' });
    assert.deepEqual(snap.names, ['e2b-snap']);
    const byName = await Sandbox.listSnapshots({ name: 'e2b-snap' }).nextItems();
    assert.deepEqual(byName.map((s) => s.snapshotId), [snap.snapshotId]);
    assert.deepEqual(await Sandbox.listSnapshots({ name: 'no-such' }).nextItems(), []);
    const fromSnap = await Sandbox.create('e2b-snap', { timeoutMs: 60_000 });
    assert.equal((await fromSnap.commands.run('cat /tmp/state')).stdout, 'kept\n');
    assert.equal(await fromSnap.kill(), true);
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true);
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false);

    const [fork] = await Sandbox.fork(sbx.sandboxId, { count: 1, timeoutMs: 60_000 });
    assert.ok(fork instanceof Sandbox, String(fork));
    assert.equal((await fork.commands.run('cat /tmp/state')).stdout, 'kept\n');
    assert.equal(await fork.kill(), true);

    assert.equal(await sbx.kill(), true);
    assert.equal(await Sandbox.kill(sbx.sandboxId), false);
    await assert.rejects(Sandbox.getInfo(sbx.sandboxId), SandboxNotFoundError);
    await assert.rejects(Sandbox.connect(sbx.sandboxId), SandboxNotFoundError);
    await assert.rejects(Sandbox.fork(sbx.sandboxId), SandboxNotFoundError);
    await assert.rejects(sbx.setTimeout(10_000), SandboxNotFoundError);
    await assert.rejects(sbx.getMetrics(), SandboxNotFoundError);
    const rec = await raw(`/sandboxes/${sbx.sandboxId}/record`);
    assert.equal((await rec.json() as { state: string }).state, 'destroyed', 'Hearth\'s history of it');
  });
});

describe('raw HTTP: framing and error bodies the SDK hides', () => {
  test('errors are {code, message} JSON with the HTTP status; 404s for unknown sandboxes; list paging header', async () => {
    const bad = await raw('/v2/sandboxes', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ templateID: 'base', timeout: 'x' }) });
    assert.equal(bad.status, 400);
    const b = await bad.json() as { code: number; message: string };
    assert.equal(b.code, 400);
    assert.match(b.message, /timeout/);
    for (const [method, path] of [['GET', '/sandboxes/inope'], ['DELETE', '/sandboxes/inope'], ['POST', '/v2/sandboxes/inope/connect'], ['POST', '/sandboxes/inope/connect'], ['GET', '/sandboxes/inope/metrics']] as const) {
      const r = await raw(path, { method, ...(method === 'POST' ? { headers: { 'content-type': 'application/json' }, body: '{}' } : {}) });
      assert.equal(r.status, 404, `${method} ${path}`);
      assert.equal((await r.json() as { code: number }).code, 404);
    }
    const unauth = await fetch(`${d.url}/v2/sandboxes`);
    assert.equal(unauth.status, 401);
    assert.equal((await unauth.json() as { code: number }).code, 401);
    const listed = await raw('/v2/sandboxes?state=running&limit=1');
    assert.equal(listed.status, 200);
    assert.match(listed.headers.get('content-type') ?? '', /application\/json/);
    assert.ok(Array.isArray(await listed.json()));
  });

  test('envd of a killed sandbox: 502 with E2B\'s body; the agent port is never open on the port proxy path form', async () => {
    const r = await fetch(`${d.url}/health`, { headers: { 'e2b-sandbox-id': 'inope', 'e2b-sandbox-port': '49983', 'x-api-key': key } });
    assert.equal(r.status, 502);
    assert.deepEqual(await r.json(), { sandboxId: 'inope', message: 'The sandbox was not found', code: 502 });
    assert.equal((await fetch(`${d.url}/sandboxes/inope/ports/49983/`)).status, 403);
  });
});

async function waitFor(cond: () => boolean | Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}
