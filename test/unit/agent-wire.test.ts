// Byte-level Connect wire format of the agent (docs/agent.md, "JSON mapping" and "Connect framing"), plus its pure helpers, cgroup
// placement and xattr metadata.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { basicAuthUser } from '../../src/agent/auth.js';
import { goFileModeString } from '../../src/agent/fs-entry.js';
import { negotiateEncoding } from '../../src/agent/files.js';
import { expandAndResolve, PathError } from '../../src/agent/paths.js';
import { endEventFor } from '../../src/agent/processes.js';
import { parseGroup, parsePasswd, type UserInfo } from '../../src/agent/users.js';
import { type TestAgent } from '../../src/agent/testing.js';
import { startHermeticAgent } from '../helpers/hermetic-agent.js';

interface Envelope {
  flags: number;
  json: unknown;
  text: string;
}

function frame(json: string): Buffer {
  const payload = Buffer.from(json, 'utf8');
  const head = Buffer.alloc(5);
  head[0] = 0x00;
  head.writeUInt32BE(payload.length, 1);
  return Buffer.concat([head, payload]);
}

function parseEnvelopes(body: Buffer): Envelope[] {
  const out: Envelope[] = [];
  let off = 0;
  while (off < body.length) {
    assert.ok(off + 5 <= body.length, 'truncated envelope header');
    const flags = body[off]!;
    const len = body.readUInt32BE(off + 1);
    assert.ok(off + 5 + len <= body.length, 'truncated envelope payload');
    const text = body.subarray(off + 5, off + 5 + len).toString('utf8');
    out.push({ flags, text, json: JSON.parse(text) });
    off += 5 + len;
  }
  return out;
}

function post(url: string, contentType: string, body: Buffer, headers: Record<string, string> = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers: { 'Content-Type': contentType, 'Connect-Protocol-Version': '1', ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('agent Connect wire format', () => {
  let agent: TestAgent;
  let tmp: string;
  let cgroupDir: string;

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'hearth-agent-wire-'));
    cgroupDir = path.join(tmp, 'cgroup-user');
    mkdirSync(cgroupDir);
    writeFileSync(path.join(cgroupDir, 'cgroup.procs'), '');
    agent = await startHermeticAgent({ HEARTH_AGENT_USER_CGROUP: cgroupDir });
  });
  after(async () => {
    await agent?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('hand-framed Start: 200 connect+json, start first, data base64, end without exitCode 0, EndStream {} last', async () => {
    const req = '{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi; echo warn >&2"],"envs":{"X":"1"},"cwd":"/tmp"},"stdin":false}';
    const res = await post(`${agent.baseUrl}/process.Process/Start`, 'application/connect+json', frame(req), { 'Connect-Timeout-Ms': '10000' });
    assert.equal(res.status, 200);
    assert.equal(res.headers['content-type'], 'application/connect+json');
    const envs = parseEnvelopes(res.body);
    assert.ok(envs.length >= 4);
    const first = envs[0]!;
    assert.equal(first.flags, 0);
    assert.match(first.text, /^\{"event":\{"start":\{"pid":\d+\}\}\}$/);
    const last = envs.at(-1)!;
    assert.equal(last.flags, 0x02);
    assert.equal(last.text, '{}');
    const end = envs.at(-2)!;
    assert.equal(end.flags, 0);
    assert.equal(end.text, '{"event":{"end":{"exited":true,"status":"exit status 0"}}}');
    const middle = envs.slice(1, -2).map((e) => e.text);
    assert.ok(middle.includes('{"event":{"data":{"stdout":"aGkK"}}}'), middle.join('\n'));
    assert.ok(middle.includes('{"event":{"data":{"stderr":"d2Fybgo="}}}'), middle.join('\n'));
    assert.equal(envs.filter((e) => e.flags === 0x02).length, 1);
  });

  test('non-zero exit: exitCode and error are on the wire (sint32 as a JSON number)', async () => {
    const res = await post(`${agent.baseUrl}/process.Process/Start`, 'application/connect+json', frame('{"process":{"cmd":"/bin/sh","args":["-c","exit 3"]},"stdin":false}'));
    const envs = parseEnvelopes(res.body);
    assert.equal(envs.at(-2)!.text, '{"event":{"end":{"exitCode":3,"exited":true,"status":"exit status 3","error":"exit status 3"}}}');
  });

  test('stream errors are HTTP 200 with a single EndStream error envelope', async () => {
    const res = await post(
      `${agent.baseUrl}/process.Process/Start`,
      'application/connect+json',
      frame(`{"process":{"cmd":"/bin/true","cwd":"${tmp}/missing"}}`),
    );
    assert.equal(res.status, 200);
    const envs = parseEnvelopes(res.body);
    assert.equal(envs.length, 1);
    assert.equal(envs[0]!.flags, 0x02);
    const err = (envs[0]!.json as { error: { code: string; message: string } }).error;
    assert.equal(err.code, 'invalid_argument');
    assert.match(err.message, /does not exist/);

    const w = await post(`${agent.baseUrl}/filesystem.Filesystem/WatchDir`, 'application/connect+json', frame(`{"path":"${tmp}/missing"}`));
    assert.equal(w.status, 200);
    const wenv = parseEnvelopes(w.body);
    assert.equal(wenv.length, 1);
    assert.equal(wenv[0]!.flags, 0x02);
    assert.equal((wenv[0]!.json as { error: { code: string } }).error.code, 'not_found');
  });

  test('unary JSON: 200 application/json; errors carry the string code and the Connect status', async () => {
    const ok = await post(`${agent.baseUrl}/process.Process/List`, 'application/json', Buffer.from('{}'));
    assert.equal(ok.status, 200);
    assert.match(String(ok.headers['content-type']), /^application\/json/);
    assert.ok(Array.isArray((JSON.parse(ok.body.toString()) as { processes?: unknown[] }).processes ?? []));

    const nf = await post(`${agent.baseUrl}/filesystem.Filesystem/Stat`, 'application/json', Buffer.from(`{"path":"${tmp}/nope"}`));
    assert.equal(nf.status, 404);
    assert.equal((JSON.parse(nf.body.toString()) as { code: string }).code, 'not_found');

    const exists = await post(`${agent.baseUrl}/filesystem.Filesystem/MakeDir`, 'application/json', Buffer.from(`{"path":"${tmp}"}`));
    assert.equal(exists.status, 409);
    assert.equal((JSON.parse(exists.body.toString()) as { code: string }).code, 'already_exists');

    // int64 size is a JSON string; enums are names; proto field names are accepted on input.
    writeFileSync(path.join(tmp, 'four'), 'four');
    const st = await post(`${agent.baseUrl}/filesystem.Filesystem/Stat`, 'application/json', Buffer.from(`{"path":"${tmp}/four"}`));
    const entry = (JSON.parse(st.body.toString()) as { entry: Record<string, unknown> }).entry;
    assert.equal(entry.size, '4');
    assert.equal(entry.type, 'FILE_TYPE_FILE');
    assert.match(String(entry.modifiedTime), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
    const kill = await post(`${agent.baseUrl}/process.Process/SendSignal`, 'application/json', Buffer.from('{"process":{"pid":99999996},"signal":"SIGNAL_SIGKILL"}'));
    assert.equal(kill.status, 404);
    const ld = await post(`${agent.baseUrl}/filesystem.Filesystem/ListDir`, 'application/json', Buffer.from(`{"path":"${tmp}","depth":1,"unknown_field":true}`));
    assert.equal(ld.status, 200);
  });

  test('user processes are moved into the configured cgroup', async () => {
    const res = await post(`${agent.baseUrl}/process.Process/Start`, 'application/connect+json', frame('{"process":{"cmd":"/bin/true"},"stdin":false}'));
    const pid = (parseEnvelopes(res.body)[0]!.json as { event: { start: { pid: number } } }).event.start.pid;
    const procs = readFileSync(path.join(cgroupDir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
    assert.ok(procs.includes(pid), `cgroup.procs=${JSON.stringify(procs)} pid=${pid}`);
  });
});

describe('agent xattr metadata (needs getfattr/setfattr on PATH)', () => {
  let agent: TestAgent;
  let tmp: string;
  let hasTools = false;
  before(async () => {
    try {
      execFileSync('sh', ['-c', 'command -v getfattr && command -v setfattr'], { stdio: 'ignore' });
      hasTools = true;
    } catch {
      hasTools = false;
    }
    tmp = mkdtempSync(path.join(os.tmpdir(), 'hearth-agent-xattr-'));
    if (hasTools) agent = await startHermeticAgent();
  });
  after(async () => {
    await agent?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('X-Metadata-* headers become user.e2b.* xattrs, are returned by uploads and Stat, and are replaced on re-upload', async (t) => {
    if (!hasTools) return t.skip('getfattr/setfattr not installed (Debian package attr)');
    const f = path.join(tmp, 'meta.txt');
    const url = `${agent.baseUrl}/files?path=${encodeURIComponent(f)}`;
    let res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/octet-stream', 'X-Metadata-Owner': 'alice', 'X-Metadata-Tag': '0x41 "q"' }, body: 'x' });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), [{ path: f, name: 'meta.txt', type: 'file', metadata: { owner: 'alice', tag: '0x41 "q"' } }]);
    const fs = agent.filesystemClient();
    assert.deepEqual((await fs.stat({ path: f })).entry?.metadata, { owner: 'alice', tag: '0x41 "q"' });
    res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/octet-stream', 'X-Metadata-Other': 'v' }, body: 'y' });
    assert.equal(res.status, 200);
    assert.deepEqual((await fs.stat({ path: f })).entry?.metadata, { other: 'v' });
    res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: 'z' });
    assert.deepEqual(await res.json(), [{ path: f, name: 'meta.txt', type: 'file' }]);
    assert.deepEqual((await fs.stat({ path: f })).entry?.metadata, {});
    const list = await fs.listDir({ path: tmp });
    assert.deepEqual(list.entries.map((e) => e.metadata), [{}]);
  });
});

describe('agent helpers', () => {
  test('goFileModeString matches Go os.FileMode.String()', () => {
    assert.equal(goFileModeString(0o100644), '-rw-r--r--');
    assert.equal(goFileModeString(0o040755), 'drwxr-xr-x');
    assert.equal(goFileModeString(0o120777), 'Lrwxrwxrwx');
    assert.equal(goFileModeString(0o041777), 'dtrwxrwxrwx');
    assert.equal(goFileModeString(0o104755), 'urwxr-xr-x');
    assert.equal(goFileModeString(0o102755), 'grwxr-xr-x');
    assert.equal(goFileModeString(0o020666), 'Dcrw-rw-rw-');
    assert.equal(goFileModeString(0o060660), 'Drw-rw----');
    assert.equal(goFileModeString(0o010644), 'prw-r--r--');
    assert.equal(goFileModeString(0o140755), 'Srwxr-xr-x');
  });

  test('expandAndResolve: empty → workdir or home, ~ expansion, relative to home, ~other rejected', () => {
    const u: UserInfo = { name: 'user', uid: 1000, gid: 1000, home: '/home/user', shell: '/bin/bash' };
    assert.equal(expandAndResolve('', u, undefined), '/home/user');
    assert.equal(expandAndResolve('', u, '/work'), '/work');
    assert.equal(expandAndResolve('~', u, '/work'), '/home/user');
    assert.equal(expandAndResolve('~/a/../b', u, undefined), '/home/user/b');
    assert.equal(expandAndResolve('x/y', u, '/work'), '/home/user/x/y');
    assert.equal(expandAndResolve('../etc', u, undefined), '/home/etc');
    assert.equal(expandAndResolve('/abs/dir/', u, undefined), '/abs/dir');
    assert.equal(expandAndResolve('/', u, undefined), '/');
    assert.throws(() => expandAndResolve('~root/x', u, undefined), PathError);
  });

  test('negotiateEncoding: gzip when accepted, identity otherwise, null when nothing fits', () => {
    assert.equal(negotiateEncoding('gzip, deflate'), 'gzip');
    assert.equal(negotiateEncoding(undefined), 'identity');
    assert.equal(negotiateEncoding('br'), 'identity');
    assert.equal(negotiateEncoding('gzip;q=0'), 'identity');
    assert.equal(negotiateEncoding('br, identity;q=0'), null);
    assert.equal(negotiateEncoding('*;q=0'), null);
    assert.equal(negotiateEncoding('*'), 'gzip');
  });

  test('endEventFor mirrors Go ProcessState', () => {
    const ok = endEventFor({ code: 0, signal: null });
    assert.equal(ok.exitCode, 0);
    assert.equal(ok.exited, true);
    assert.equal(ok.status, 'exit status 0');
    assert.equal(ok.error, undefined);
    assert.equal(endEventFor({ code: 2, signal: null }).error, 'exit status 2');
    const killed = endEventFor({ code: null, signal: 'SIGKILL' });
    assert.equal(killed.exitCode, -1);
    assert.equal(killed.exited, false);
    assert.equal(killed.status, 'signal: killed');
    assert.equal(endEventFor({ code: null, signal: 'SIGSEGV' }).status, 'signal: segmentation fault');
  });

  test('basic auth user and passwd/group parsing', () => {
    assert.equal(basicAuthUser('Basic ' + Buffer.from('root:').toString('base64')), 'root');
    assert.equal(basicAuthUser('basic ' + Buffer.from('user').toString('base64')), 'user');
    assert.equal(basicAuthUser('Bearer x'), undefined);
    assert.equal(basicAuthUser(null), undefined);
    const pw = parsePasswd('root:x:0:0:root:/root:/bin/bash\n# comment\nuser:x:1000:1000::/home/user:/bin/bash\nbroken\n');
    assert.equal(pw.byName.get('user')?.home, '/home/user');
    assert.equal(pw.byUid.get(0)?.name, 'root');
    assert.equal(parseGroup('root:x:0:\nusers:x:100:a,b\n').byGid.get(100), 'users');
  });
});
