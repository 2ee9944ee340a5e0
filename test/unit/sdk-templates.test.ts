/**
 * The SDK's custom templates (docs/templates.md): the recipe builder, the build context read
 * from a directory (.hearthignore, .git, node_modules, empty directories, links), and the
 * `/templates` API against a stand-in hearthd on 127.0.0.1 that records requests and streams a
 * build's log (log and step events, then end), also breaking a stream off before its end.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ConflictError, InvalidArgumentError, NotFoundError, parseIgnore, readContextDir, TemplateBuildError, TemplateBuilder, Templates,
  type Recipe, type TemplateBuild, type TemplateBuildLogEntry, type TemplateBuildStep,
} from '../../src/sdk/index.js';
import type { Recipe as ServerRecipe } from '../../src/templates/types.js';

// ---------- the SDK's recipe type is the daemon's ----------

type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const sameRecipe: Same<Recipe, ServerRecipe> = true;

test('the SDK\'s Recipe and the daemon\'s describe the same objects', () => {
  assert.equal(sameRecipe, true);
});

// ---------- the builder ----------

describe('TemplateBuilder', () => {
  test('every step in order, start, resources', () => {
    const r = new TemplateBuilder()
      .from('base')
      .apt('python3-numpy', 'python3-pandas')
      .copy('app/', '/home/user/app', { owner: 'user' })
      .copy('run.sh', '/usr/local/bin/run', { mode: '0755' })
      .env({ MPLBACKEND: 'Agg' })
      .workdir('/home/user/app')
      .user('user')
      .run('python3 -m venv /home/user/venv')
      .run('apt-get clean', { user: 'root' })
      .pip('requests==2.32.0')
      .start('python3 -m http.server 8000', { port: 8000, timeoutSec: 30 })
      .resources({ cpuCount: 2, memoryMB: 1024 })
      .resources({ diskSizeMB: 4096 })
      .toRecipe();
    assert.deepEqual(r, {
      from: 'base',
      steps: [
        { apt: ['python3-numpy', 'python3-pandas'] },
        { copy: { src: 'app/', dest: '/home/user/app', owner: 'user' } },
        { copy: { src: 'run.sh', dest: '/usr/local/bin/run', mode: '0755' } },
        { env: { MPLBACKEND: 'Agg' } },
        { workdir: '/home/user/app' },
        { user: 'user' },
        { run: 'python3 -m venv /home/user/venv' },
        { run: 'apt-get clean', user: 'root' },
        { pip: ['requests==2.32.0'] },
      ],
      start: { command: 'python3 -m http.server 8000', ready: { port: 8000 }, timeoutSec: 30 },
      resources: { cpuCount: 2, memoryMB: 1024, diskSizeMB: 4096 },
    });
  });

  test('minimal recipe; ready by command; no ready check; toRecipe is a copy', () => {
    const b = new TemplateBuilder().run('true');
    assert.deepEqual(b.toRecipe(), { steps: [{ run: 'true' }] });
    const first = b.toRecipe();
    first.steps.push({ run: 'changed' });
    assert.deepEqual(b.toRecipe().steps, [{ run: 'true' }]);
    const vars = { A: '1' };
    const withEnv = new TemplateBuilder().env(vars);
    vars.A = '2';
    assert.deepEqual(withEnv.toRecipe().steps, [{ env: { A: '1' } }]);
    assert.deepEqual(new TemplateBuilder().start('srv', { command: 'curl -fs localhost' }).toRecipe().start, { command: 'srv', ready: { command: 'curl -fs localhost' } });
    assert.deepEqual(new TemplateBuilder().start('srv').toRecipe().start, { command: 'srv' });
  });

  test('impossible calls throw at once', () => {
    assert.throws(() => new TemplateBuilder().start('srv', { port: 1, command: 'x' }), InvalidArgumentError);
    assert.throws(() => new TemplateBuilder().apt(), InvalidArgumentError);
    assert.throws(() => new TemplateBuilder().pip(), InvalidArgumentError);
  });
});

// ---------- the build context ----------

describe('build context', () => {
  let tmp: string;
  before(async () => { tmp = await mkdtemp(join(tmpdir(), 'hearth-sdk-context-')); });
  after(async () => { await rm(tmp, { recursive: true, force: true }); });

  test('.hearthignore patterns', () => {
    const ig = parseIgnore('# comment\n\n*.log\nbuild/\n/top.txt\ndocs/**/*.tmp\n**/cache\nsrc/?.bak\n');
    const yes: [string, boolean][] = [['a.log', false], ['x/y/z.log', false], ['build', true], ['x/build', true], ['top.txt', false], ['docs/a.tmp', false], ['docs/a/b/c.tmp', false], ['cache', true], ['a/b/cache', false], ['src/1.bak', false]];
    const no: [string, boolean][] = [['a.logx', false], ['build', false], ['x/top.txt', false], ['other/a.tmp', false], ['src/12.bak', false], ['src/x/1.bak', false], ['a/log', false]];
    for (const [p, dir] of yes) assert.equal(ig(p, dir), true, `${p} ignored`);
    for (const [p, dir] of no) assert.equal(ig(p, dir), false, `${p} kept`);
    assert.equal(parseIgnore('a/**')('a/b/c', false), true);
    assert.equal(parseIgnore('')('anything', false), false);
    assert.throws(() => parseIgnore('*.log\n!keep.log'), /line 2: "!"/);
  });

  test('a directory: nested files, empty directories, .git and node_modules and ignored paths left out, links to files read', async () => {
    const dir = join(tmp, 'ctx');
    const files: Record<string, string> = {
      'hearth.template.json': '{"steps":[]}',
      '.hearthignore': '*.log\nsecrets/\n/dist\n',
      'app/main.py': 'print(1)\n',
      'app/lib/util.py': 'x = 1\n',
      'app/debug.log': 'noise',
      'app/dist/keep.txt': 'nested dist is kept (the pattern is anchored)',
      'dist/bundle.js': 'left out',
      'secrets/key': 'left out',
      '.git/HEAD': 'ref: refs/heads/main',
      'node_modules/x/index.js': 'left out',
      'app/node_modules/y.js': 'left out',
    };
    for (const [p, c] of Object.entries(files)) {
      await mkdir(join(dir, p, '..'), { recursive: true });
      await writeFile(join(dir, p), c);
    }
    await mkdir(join(dir, 'data', 'empty'), { recursive: true });
    await symlink('app/main.py', join(dir, 'link.py'));
    await symlink('app', join(dir, 'linkdir'));
    await symlink('nowhere', join(dir, 'broken'));
    await writeFile(join(dir, 'bin.dat'), Buffer.from([0, 255, 1, 254]));
    const ctx = await readContextDir(dir);
    assert.deepEqual(Object.keys(ctx).sort(), [
      '.hearthignore', 'app/dist/keep.txt', 'app/lib/util.py', 'app/main.py', 'bin.dat', 'data/empty/', 'hearth.template.json', 'link.py',
    ]);
    assert.equal(Buffer.from(ctx['app/main.py']!).toString(), 'print(1)\n');
    assert.equal(Buffer.from(ctx['link.py']!).toString(), 'print(1)\n');
    assert.deepEqual([...ctx['bin.dat']!], [0, 255, 1, 254]);
    assert.equal(ctx['data/empty/']!.byteLength, 0);
    await assert.rejects(readContextDir(join(dir, 'app', 'main.py')), /not a directory/);
  });
});

// ---------- the API against a stand-in hearthd ----------

const DESCRIPTIONS = ['APT python3-numpy', 'RUN make', 'ENV A=1'];
function step(index: number, status: TemplateBuildStep['status'], extra: Partial<TemplateBuildStep> = {}): TemplateBuildStep {
  return { index, description: DESCRIPTIONS[index]!, key: `k${index}`, status, cached: status === 'cached', durationMs: null, exitCode: null, ...extra };
}
function build(templateID: string, status: TemplateBuild['status'], steps: TemplateBuildStep[], error: string | null = null): TemplateBuild {
  return {
    buildID: `b-${templateID}`, templateID, status, createdAt: '2026-01-01T00:00:00.000Z', finishedAt: status === 'building' ? null : '2026-01-01T00:00:05.000Z',
    durationMs: status === 'building' ? null : 5000, error, phase: status === 'building' ? 'steps' : 'done', steps,
  };
}
function log(stepIndex: number | null, line: string): TemplateBuildLogEntry {
  return { timestamp: '2026-01-01T00:00:01.000Z', step: stepIndex, stream: stepIndex === null ? 'hearth' : 'stdout', line };
}
type Sse = { event: string; data: unknown };
const PENDING = [step(0, 'pending'), step(1, 'pending'), step(2, 'pending')];
const DONE = [step(0, 'cached'), step(1, 'done', { durationMs: 1200, exitCode: 0 }), step(2, 'skipped')];
const FAILED_ERROR = 'step 2 (RUN make) exited with code 2; last lines:\nboom';
const STREAMS: Record<string, Sse[][]> = {
  ok: [[
    { event: 'step', data: step(0, 'cached') },
    { event: 'log', data: log(null, '1 step cached') },
    { event: 'step', data: step(1, 'running') },
    { event: 'step', data: step(1, 'running') },
    { event: 'log', data: log(1, 'compiling') },
    { event: 'step', data: DONE[1] },
    { event: 'end', data: build('ok', 'ready', DONE) },
  ]],
  bad: [[
    { event: 'step', data: step(1, 'running') },
    { event: 'log', data: log(1, 'boom') },
    { event: 'step', data: step(1, 'failed', { exitCode: 2, durationMs: 300 }) },
    { event: 'end', data: build('bad', 'failed', [step(0, 'cached'), step(1, 'failed', { exitCode: 2, durationMs: 300 }), step(2, 'cancelled')], FAILED_ERROR) },
  ]],
  // The first stream breaks off after two lines; the second replays them and goes on.
  flaky: [
    [{ event: 'log', data: log(0, 'a') }, { event: 'log', data: log(0, 'b') }],
    [{ event: 'log', data: log(0, 'a') }, { event: 'log', data: log(0, 'b') }, { event: 'log', data: log(0, 'c') }, { event: 'end', data: build('flaky', 'ready', DONE) }],
  ],
  never: [[], [], [], [], [], []],
};

let server: Server;
let url: string;
const seen: { method: string; path: string; headers: IncomingMessage['headers']; body: unknown }[] = [];
const connections: Record<string, number> = {};

function handle(req: IncomingMessage, res: ServerResponse, text: string): void {
  const u = new URL(req.url ?? '/', 'http://x');
  seen.push({ method: req.method ?? '', path: u.pathname + u.search, headers: req.headers, body: text ? JSON.parse(text) as unknown : undefined });
  const json = (status: number, body?: unknown): void => {
    res.writeHead(status, body === undefined ? {} : { 'content-type': 'application/json' });
    res.end(body === undefined ? undefined : JSON.stringify(body));
  };
  const parts = u.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const [root, id, sub, buildID, tail] = parts;
  if (root !== 'templates') return json(404, { message: 'no route', error_code: 'not_found' });
  if (req.method === 'POST' && parts.length === 1) return json(202, build((JSON.parse(text) as { name: string }).name, 'building', PENDING));
  if (req.method === 'GET' && parts.length === 1) return json(200, [{ templateID: 'base', cpuCount: 1, memoryMB: 512, diskSizeMB: 2048, imageHash: 'abc', createdAt: '2026-01-01T00:00:00Z' }]);
  if (id === 'missing') return json(404, { message: `template ${id} not found`, error_code: 'not_found' });
  if (parts.length === 2 && req.method === 'GET') return json(200, { templateID: id, cpuCount: 2, memoryMB: 1024, diskSizeMB: 4096, imageHash: 'h', createdAt: '2026-01-01T00:00:00Z', source: 'build' });
  if (parts.length === 2 && req.method === 'DELETE') return id === 'busy' ? json(409, { message: 'template busy is used by 1 sandbox', error_code: 'conflict' }) : json(204);
  if (sub !== 'builds') return json(404, { message: 'no route', error_code: 'not_found' });
  if (parts.length === 3) return json(200, [build(id!, 'ready', DONE)]);
  if (parts.length === 4 && req.method === 'GET') return json(200, build(id!, 'ready', DONE));
  if (parts.length === 4 && req.method === 'DELETE') return id === 'ok' ? json(409, { message: 'the build has ended', error_code: 'conflict' }) : json(204);
  if (tail === 'logs' && u.searchParams.get('follow') !== 'true') return json(200, { entries: [log(null, 'x'), log(0, 'y')] });
  if (tail === 'logs') {
    const n = connections[id!] = (connections[id!] ?? 0) + 1;
    const events = STREAMS[id!]?.[n - 1] ?? [];
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (const e of events) res.write(`event: ${e.event}\ndata: ${JSON.stringify(e.data)}\n\n`);
    res.end();
    return undefined;
  }
  void buildID;
  return json(404, { message: 'no route', error_code: 'not_found' });
}

describe('Templates API', () => {
  let tmp: string;
  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'hearth-sdk-templates-'));
    server = createServer((req, res) => {
      let text = '';
      req.on('data', (c: Buffer) => { text += c.toString(); });
      req.on('end', () => handle(req, res, text));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    await rm(tmp, { recursive: true, force: true });
  });

  test('build: a recipe (or a builder) with the context as base64, the shape and aliases; the API key sent', async () => {
    const dir = join(tmp, 'ctx');
    await mkdir(join(dir, '.git'), { recursive: true });
    await writeFile(join(dir, '.git', 'HEAD'), 'x');
    await writeFile(join(dir, 'a.txt'), 'from dir');
    await writeFile(join(dir, 'b.txt'), 'replaced');
    seen.length = 0;
    const recipe = new TemplateBuilder().copy('.', '/app').run('make');
    const b = await Templates.build({
      name: 'ok', recipe, contextDir: dir, files: { 'b.txt': 'given', 'bin': new Uint8Array([1, 2, 3]), 'empty/': '' }, aliases: ['okay'], cpuCount: 2, memoryMB: 1024, diskSizeMB: 4096,
    }, { url, apiKey: 'secret' });
    assert.equal(b.buildID, 'b-ok');
    assert.equal(b.status, 'building');
    const req = seen.at(-1)!;
    assert.equal(req.method, 'POST');
    assert.equal(req.path, '/templates');
    assert.equal(req.headers['x-api-key'], 'secret');
    assert.deepEqual(req.body, {
      name: 'ok', recipe: { steps: [{ copy: { src: '.', dest: '/app' } }, { run: 'make' }] },
      files: { 'a.txt': Buffer.from('from dir').toString('base64'), 'b.txt': Buffer.from('given').toString('base64'), bin: 'AQID', 'empty/': '' },
      aliases: ['okay'], cpuCount: 2, memoryMB: 1024, diskSizeMB: 4096,
    });
    await Templates.build({ name: 'd', dockerfile: 'FROM base\nRUN true\n' }, { url });
    assert.deepEqual(seen.at(-1)!.body, { name: 'd', dockerfile: 'FROM base\nRUN true\n' });
    await Templates.build({ name: 's', fromSandbox: 'iabc' }, { url });
    assert.deepEqual(seen.at(-1)!.body, { name: 's', fromSandbox: 'iabc' });
  });

  test('build: exactly one source; no files without a recipe or Dockerfile (refused before any request)', async () => {
    seen.length = 0;
    await assert.rejects(Templates.build({ name: 'x' }, { url }), /exactly one of recipe, dockerfile, fromSandbox, fromSnapshot \(got none\)/);
    await assert.rejects(Templates.build({ name: 'x', recipe: { steps: [] }, dockerfile: 'FROM base' }, { url }), /got recipe, dockerfile/);
    await assert.rejects(Templates.build({ name: 'x', fromSnapshot: 's1', files: { a: 'b' } }, { url }), InvalidArgumentError);
    assert.equal(seen.length, 0);
  });

  test('waitForBuild: steps once per status (the initial build\'s first), logs in order, the final build', async () => {
    const events: string[] = [];
    const initial = build('ok', 'building', PENDING);
    const done = await Templates.waitForBuild('ok', 'b-ok', {
      url, build: initial,
      onLog: (e) => events.push(`log ${e.step ?? '-'} ${e.line}`),
      onStep: (s) => events.push(`step ${s.index} ${s.status}`),
    });
    assert.equal(done.status, 'ready');
    assert.deepEqual(events, [
      'step 0 pending', 'step 1 pending', 'step 2 pending',
      'step 0 cached', 'log - 1 step cached', 'step 1 running', 'log 1 compiling', 'step 1 done',
      'step 2 skipped', // only in the final build: reported before it resolves
    ]);
    assert.equal(seen.at(-1)!.path, '/templates/ok/builds/b-ok/logs?follow=true');
    assert.equal(seen.at(-1)!.headers.accept, 'text/event-stream');
  });

  test('waitForBuild: a failed build rejects with its error and the build', async () => {
    const err = await Templates.waitForBuild('bad', 'b-bad', { url }).then(() => null, (e: unknown) => e);
    assert.ok(err instanceof TemplateBuildError, String(err));
    assert.equal(err.message, FAILED_ERROR);
    assert.equal(err.build.status, 'failed');
    assert.equal(err.build.steps[1]!.exitCode, 2);
  });

  test('followBuild: a stream broken off before its end is reopened without repeating lines; one that never ends gives up', async () => {
    const lines: string[] = [];
    const b = await Templates.waitForBuild('flaky', 'b-flaky', { url, onLog: (e) => lines.push(e.line) });
    assert.equal(b.status, 'ready');
    assert.deepEqual(lines, ['a', 'b', 'c']);
    assert.equal(connections['flaky'], 2);
    await assert.rejects(Templates.waitForBuild('never', 'b-never', { url }), /ended 4 times before the build did/);
    assert.equal(connections['never'], 4);
  });

  test('waitForBuild: an aborted signal rejects without waiting; unknown builds are NotFoundError', async () => {
    const ac = new AbortController();
    ac.abort(new Error('stop'));
    await assert.rejects(Templates.waitForBuild('ok', 'b-ok', { url, signal: ac.signal }), /stop/);
    await assert.rejects(Templates.getBuild('missing', 'b1', { url }), NotFoundError);
  });

  test('get, list, delete, listBuilds, getBuild, cancelBuild, buildLogs: their routes and answers', async () => {
    seen.length = 0;
    assert.equal((await Templates.get('py data', { url })).templateID, 'py data');
    assert.equal((await Templates.list({ url }))[0]!.templateID, 'base');
    await Templates.delete('old', { url });
    await assert.rejects(Templates.delete('busy', { url }), ConflictError);
    assert.equal((await Templates.listBuilds('t', { url }))[0]!.buildID, 'b-t');
    assert.equal((await Templates.getBuild('t', 'b-t', { url })).status, 'ready');
    assert.equal(await Templates.cancelBuild('t', 'b-t', { url }), true);
    assert.equal(await Templates.cancelBuild('ok', 'b-ok', { url }), false, 'an ended build: 409 → false');
    assert.deepEqual((await Templates.buildLogs('t', 'b-t', { url })).map((e) => e.line), ['x', 'y']);
    assert.deepEqual(seen.map((r) => `${r.method} ${r.path}`), [
      'GET /templates/py%20data', 'GET /templates', 'DELETE /templates/old', 'DELETE /templates/busy', 'GET /templates/t/builds',
      'GET /templates/t/builds/b-t', 'DELETE /templates/t/builds/b-t', 'DELETE /templates/ok/builds/b-ok', 'GET /templates/t/builds/b-t/logs',
    ]);
  });
});
