/**
 * `hearth template build|create|get|rm|builds|logs` through the real entry point, against a
 * stand-in hearthd on 127.0.0.1 that implements just enough of docs/templates.md, "API": POST
 * answers a build, the log stream sends step and log events then `end` (or holds until the build
 * is cancelled). Exit codes 0 (ready), 1 (failed), 130 (Ctrl-C, after cancelling the build), 2
 * (usage); the progress display on a terminal and off one. Temp dirs only; HOME points into one.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { BuildProgress, buildSummary, nameFromDir, readRecipeText, watchBuild } from '../../src/cli/commands/template.js';
import type { TemplateBuild, TemplateBuildLogEntry, TemplateBuildStep } from '../../src/sdk/index.js';

interface Ran { code: number | null; stdout: string; stderr: string }

const DESCRIPTIONS = ['APT python3-numpy', 'RUN make', 'ENV A=1'];
function step(index: number, status: TemplateBuildStep['status'], extra: Partial<TemplateBuildStep> = {}): TemplateBuildStep {
  return { index, description: DESCRIPTIONS[index]!, key: `k${index}`, status, cached: status === 'cached', durationMs: null, exitCode: null, ...extra };
}
function mkBuild(templateID: string, status: TemplateBuild['status'], steps: TemplateBuildStep[], error: string | null = null): TemplateBuild {
  return {
    buildID: `b-${templateID}`, templateID, status, createdAt: '2026-01-01T00:00:00.000Z', finishedAt: status === 'building' ? null : '2026-01-01T00:00:05.000Z',
    durationMs: status === 'building' ? null : 5000, error, phase: status === 'building' ? 'steps' : 'done', steps,
  };
}
function log(stepIndex: number | null, line: string): TemplateBuildLogEntry {
  return { timestamp: '2026-01-01T00:00:01.000Z', step: stepIndex, stream: stepIndex === null ? 'hearth' : 'stdout', line };
}
const PENDING = [step(0, 'pending'), step(1, 'pending'), step(2, 'pending')];
const DONE = [step(0, 'cached'), step(1, 'done', { durationMs: 1200, exitCode: 0 }), step(2, 'skipped')];
const FAILED = [step(0, 'cached'), step(1, 'failed', { exitCode: 2, durationMs: 300 }), step(2, 'cancelled')];
const FAILED_ERROR = 'step 2 (RUN make) exited with code 2; last lines: boom';
const STREAMS: Record<string, { event: string; data: unknown }[]> = {
  ok: [
    { event: 'step', data: step(0, 'cached') },
    { event: 'log', data: log(null, 'layer 1 of 3 from the cache') },
    { event: 'step', data: step(1, 'running') },
    { event: 'log', data: log(1, 'compiling') },
    { event: 'step', data: DONE[1] },
    { event: 'step', data: DONE[2] },
    { event: 'end', data: mkBuild('ok', 'ready', DONE) },
  ],
  bad: [
    { event: 'step', data: step(0, 'cached') },
    { event: 'step', data: step(1, 'running') },
    { event: 'log', data: log(1, 'boom') },
    { event: 'step', data: FAILED[1] },
    { event: 'end', data: mkBuild('bad', 'failed', FAILED, FAILED_ERROR) },
  ],
  // Holds the stream open after these until the build is cancelled.
  hang: [
    { event: 'step', data: step(0, 'running') },
    { event: 'log', data: log(0, 'working') },
  ],
};

let home: string;
let server: Server;
let apiUrl: string;
const seen: { method: string; path: string; body: unknown }[] = [];
const open = new Map<string, ServerResponse>();

function handle(req: IncomingMessage, res: ServerResponse, text: string): void {
  const u = new URL(req.url ?? '/', 'http://x');
  seen.push({ method: req.method ?? '', path: u.pathname + u.search, body: text ? JSON.parse(text) as unknown : undefined });
  const json = (status: number, body?: unknown): void => {
    res.writeHead(status, body === undefined ? {} : { 'content-type': 'application/json' });
    res.end(body === undefined ? undefined : JSON.stringify(body));
  };
  const parts = u.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const [root, id, sub, , tail] = parts;
  if (root === 'sandboxes' || root === 'v2') return json(200, [{ sandboxID: 'iabc111', state: 'running', metadata: {}, createdAt: '2026-01-01T00:00:00Z' }]);
  if (root !== 'templates') return json(404, { message: 'no route', error_code: 'not_found' });
  if (req.method === 'POST' && parts.length === 1) {
    const name = (JSON.parse(text) as { name: string }).name;
    if (name === 'taken') return json(409, { message: 'a build of taken is already running', error_code: 'conflict' });
    return json(202, mkBuild(name, 'building', PENDING));
  }
  if (parts.length === 2 && req.method === 'GET') {
    return json(200, {
      templateID: id, aliases: ['o'], source: 'build', cpuCount: 2, memoryMB: 1024, diskSizeMB: 4096, imageHash: 'h123', createdAt: '2026-01-01T00:00:00Z', buildID: 'b-ok', from: 'base',
      envVars: { SECRET_TOKEN: 'hidden-value' }, user: 'user', workdir: '/app', startCommand: 'python3 -m http.server 8000', readyCheck: { port: 8000 },
      layers: [{ key: 'aaaaaaaaaaaaaaaaaaaa', step: 'APT python3-numpy', sizeBytes: 2048 }],
    });
  }
  if (parts.length === 2 && req.method === 'DELETE') return id === 'busy' ? json(409, { message: 'template busy is used by 1 sandbox', error_code: 'conflict' }) : json(204);
  if (sub !== 'builds') return json(404, { message: 'no route', error_code: 'not_found' });
  if (parts.length === 3) return json(200, [mkBuild(id!, 'failed', FAILED, FAILED_ERROR), mkBuild(id!, 'ready', DONE)]);
  if (parts.length === 4 && req.method === 'DELETE') {
    const stream = open.get(id!);
    if (!stream) return json(409, { message: 'the build has ended', error_code: 'conflict' });
    json(204);
    stream.end(`event: end\ndata: ${JSON.stringify(mkBuild(id!, 'cancelled', PENDING))}\n\n`);
    open.delete(id!);
    return undefined;
  }
  if (tail === 'logs' && u.searchParams.get('follow') !== 'true') return json(200, { entries: [log(null, 'starting'), log(0, 'Setting up numpy')] });
  if (tail === 'logs') {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (const e of STREAMS[id!] ?? []) res.write(`event: ${e.event}\ndata: ${JSON.stringify(e.data)}\n\n`);
    if (id === 'hang') open.set(id, res); else res.end();
    return undefined;
  }
  return json(404, { message: 'no route', error_code: 'not_found' });
}

function cli(args: string[], opts: { onStderr?: (text: string, kill: (s: NodeJS.Signals) => void) => void } = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), join(PACKAGE_ROOT, 'src/cli/main.ts'), ...args], {
      cwd: home, // (for --file relative to it; tsx by its URL, resolved from here)
      env: { ...process.env, HOME: home, XDG_CONFIG_HOME: join(home, '.config'), HEARTH_URL: apiUrl, HEARTH_API_KEY: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); opts.onStderr?.(stderr, (s) => child.kill(s)); });
    child.on('error', reject);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

async function contextDir(name: string, files: Record<string, string>): Promise<string> {
  const dir = join(home, name);
  for (const [p, c] of Object.entries(files)) {
    await mkdir(join(dir, p, '..'), { recursive: true });
    await writeFile(join(dir, p), c);
  }
  return dir;
}

const posts = (): { name: string; recipe?: unknown; dockerfile?: string; files?: Record<string, string>; fromSandbox?: string; fromSnapshot?: string; aliases?: string[]; cpuCount?: number; memoryMB?: number; diskSizeMB?: number }[] =>
  seen.filter((r) => r.method === 'POST' && r.path === '/templates').map((r) => r.body as ReturnType<typeof posts>[number]);

before(async () => {
  home = await mkdtemp(join(tmpdir(), 'hearth-cli-template-'));
  server = createServer((req, res) => {
    let text = '';
    req.on('data', (c: Buffer) => { text += c.toString(); });
    req.on('end', () => handle(req, res, text));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  apiUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await rm(home, { recursive: true, force: true });
});

describe('hearth template build', () => {
  test('a recipe directory: the context uploaded (ignores applied), plain progress off a terminal, the summary, exit 0', async () => {
    const recipe = { from: 'base', steps: [{ apt: ['python3-numpy'] }, { copy: { src: 'app/', dest: '/app' } }, { env: { A: '1' } }] };
    const dir = await contextDir('proj', {
      'hearth.template.json': JSON.stringify(recipe), 'app/main.py': 'print(1)\n', 'app/x.log': 'left out', '.hearthignore': '*.log\n', '.git/HEAD': 'left out',
      'Dockerfile': 'FROM base\n',
    });
    seen.length = 0;
    const r = await cli(['template', 'build', dir, '--name', 'ok', '--alias', 'o1', '--alias', 'o2', '--cpu', '2', '--memory', '1024', '--disk', '4096']);
    assert.equal(r.code, 0, r.stderr);
    const [body] = posts();
    assert.deepEqual(body!.recipe, recipe, 'hearth.template.json wins over the Dockerfile');
    assert.equal(body!.dockerfile, undefined);
    assert.deepEqual(Object.keys(body!.files!).sort(), ['.hearthignore', 'Dockerfile', 'app/main.py', 'hearth.template.json']);
    assert.equal(Buffer.from(body!.files!['app/main.py']!, 'base64').toString(), 'print(1)\n');
    assert.deepEqual([body!.aliases, body!.cpuCount, body!.memoryMB, body!.diskSizeMB], [['o1', 'o2'], 2, 1024, 4096]);
    assert.match(r.stdout, /^template ok ready in 5\.0 s \(1 of 3 steps cached; build b-ok\)\n$/);
    const lines = r.stderr.split('\n');
    for (const want of ['[1/3] APT python3-numpy: cached', '[hearth] layer 1 of 3 from the cache', '[2/3] RUN make', '[2] compiling', '[2/3] RUN make: done in 1.2 s', '[3/3] ENV A=1: no layer']) {
      assert.ok(lines.includes(want), `stderr has "${want}":\n${r.stderr}`);
    }
    assert.ok(lines.indexOf('[2] compiling') > lines.indexOf('[2/3] RUN make'), 'in order');
    assert.ok(!r.stderr.includes('\x1b['), 'no terminal codes off a terminal');
    assert.equal(seen.filter((s) => s.path === '/templates/ok/builds/b-ok/logs?follow=true').length, 1);
  });

  test('a Dockerfile (default name from the directory), --no-follow --json prints the build at once', async () => {
    const dir = await contextDir('My App', { 'Dockerfile': 'FROM base\nRUN true\n' });
    seen.length = 0;
    const r = await cli(['template', 'build', dir, '--no-follow', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(posts()[0]!.name, 'my-app');
    assert.equal(posts()[0]!.dockerfile, 'FROM base\nRUN true\n');
    assert.equal((JSON.parse(r.stdout) as TemplateBuild).buildID, 'b-my-app');
    assert.ok(!seen.some((s) => s.path.includes('/logs')), 'not followed');
  });

  test('--file names the recipe or Dockerfile (relative to the current directory); --json prints the final build', async () => {
    const dir = await contextDir('proj2', { 'ctx.txt': 'x' });
    await writeFile(join(home, 'recipe.hearth'), '{ "steps": [{ "run": "true" }] }');
    seen.length = 0;
    const r = await cli(['template', 'build', dir, '--name', 'ok', '--file', 'recipe.hearth', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(posts()[0]!.recipe, { steps: [{ run: 'true' }] });
    const final = JSON.parse(r.stdout) as TemplateBuild;
    assert.equal(final.status, 'ready');
    assert.match(r.stderr, /template ok ready/);
  });

  test('a failed build: exit 1 with its error (plain and --json)', async () => {
    const dir = await contextDir('proj3', { 'Dockerfile': 'FROM base\nRUN make\n' });
    const r = await cli(['template', 'build', dir, '--name', 'bad']);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /\[2\/3\] RUN make: failed \(exit 2\) after 0\.3 s/);
    assert.match(r.stderr, /build b-bad of template bad failed after 5\.0 s \(1 of 3 steps cached\)\nerror: step 2 \(RUN make\) exited with code 2; last lines: boom\n$/);
    const j = await cli(['template', 'build', dir, '--name', 'bad', '--json']);
    assert.equal(j.code, 1);
    assert.equal((JSON.parse(j.stdout) as TemplateBuild).error, FAILED_ERROR);
    const errLine = j.stderr.trim().split('\n').at(-1)!;
    assert.deepEqual(JSON.parse(errLine), { error: { message: FAILED_ERROR, type: 'TemplateBuildError', exitCode: 1 } });
  });

  test('Ctrl-C: the build is cancelled (DELETE), exit 130', async () => {
    const dir = await contextDir('proj4', { 'Dockerfile': 'FROM base\nRUN sleep 100\n' });
    seen.length = 0;
    let sent = false;
    const r = await cli(['template', 'build', dir, '--name', 'hang'], {
      onStderr: (text, kill) => { if (!sent && text.includes('[1] working')) { sent = true; kill('SIGINT'); } },
    });
    assert.ok(sent, r.stderr);
    assert.equal(r.code, 130, r.stderr);
    assert.ok(seen.some((s) => s.method === 'DELETE' && s.path === '/templates/hang/builds/b-hang'), 'cancelled');
    assert.match(r.stderr, /cancelling build b-hang of template hang…\ncancelled\n$/);
  });

  test('usage errors: exit 2 before any request; hearthd\'s refusals: exit 1', async () => {
    seen.length = 0;
    for (const args of [['template', 'build'], ['template', 'build', 'a', 'b'], ['template', 'build', home, '--cpu', 'two'], ['template', 'create', 'x'], ['template', 'create', 'x', '--from-sandbox', 'i1', '--from-snapshot', 's1'], ['template', 'logs', 'x'], ['template', 'bogus']]) {
      const r = await cli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    }
    const empty = await contextDir('empty', { 'README': 'no recipe' });
    const none = await cli(['template', 'build', empty]);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /has no hearth\.template\.json and no Dockerfile; --file names/);
    assert.equal(seen.length, 0);
    const broken = await contextDir('broken', { 'hearth.template.json': '{ steps: ' });
    const bad = await cli(['template', 'build', broken]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /hearth\.template\.json: not valid JSON/);
    const taken = await cli(['template', 'build', broken, '--file', join(home, 'recipe.hearth'), '--name', 'taken']);
    assert.equal(taken.code, 1);
    assert.equal(taken.stderr, 'error: a build of taken is already running\n');
  });
});

describe('hearth template create, get, rm, builds, logs', () => {
  test('create --from-sandbox (a prefix) and --from-snapshot follow the build', async () => {
    seen.length = 0;
    const a = await cli(['template', 'create', 'ok', '--from-sandbox', 'iabc']);
    assert.equal(a.code, 0, a.stderr);
    assert.match(a.stdout, /template ok ready/);
    const b = await cli(['template', 'create', 'bad', '--from-snapshot', 's1', '--alias', 'x']);
    assert.equal(b.code, 1);
    assert.deepEqual(posts(), [{ name: 'ok', fromSandbox: 'iabc111' }, { name: 'bad', fromSnapshot: 's1', aliases: ['x'] }]);
  });

  test('get: the template without env values, and its layers', async () => {
    const r = await cli(['template', 'get', 'ok']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^id {10}ok\n/);
    assert.match(r.stdout, /start {7}python3 -m http\.server 8000 \(ready: port 8000\)/);
    assert.match(r.stdout, /env vars {4}SECRET_TOKEN {2}\(values hidden/);
    assert.doesNotMatch(r.stdout, /hidden-value/);
    assert.match(r.stdout, /layers:\n#\s+STEP\s+KEY\s+SIZE\n1\s+APT python3-numpy\s+aaaaaaaaaaaaaaaa\s+2\.0 KiB\n/);
    const j = await cli(['template', 'get', 'ok', '--json']);
    assert.equal((JSON.parse(j.stdout) as { envVars: Record<string, string> }).envVars['SECRET_TOKEN'], 'hidden-value');
  });

  test('rm: each template; exit 1 when one is refused', async () => {
    seen.length = 0;
    const r = await cli(['template', 'rm', 'old', 'busy']);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, 'old deleted\n');
    assert.equal(r.stderr, 'busy: template busy is used by 1 sandbox\n');
    assert.deepEqual(seen.map((s) => `${s.method} ${s.path}`), ['DELETE /templates/old', 'DELETE /templates/busy']);
  });

  test('builds: a table with status, steps, duration and the error\'s first line', async () => {
    const r = await cli(['template', 'builds', 'ok']);
    assert.equal(r.code, 0, r.stderr);
    const [head, first, second] = r.stdout.trim().split('\n');
    assert.match(head!, /^BUILD\s+STATUS\s+STEPS\s+TOOK\s+AGE\s+ERROR$/);
    assert.match(first!, /^b-ok\s+failed\s+3 \(1 cached\)\s+5\.0 s\s+\S+\s+step 2 \(RUN make\) exited with code 2; last lines: boom$/);
    assert.match(second!, /^b-ok\s+ready\s+3 \(1 cached\)\s+5\.0 s\s+\S+\s+-$/);
  });

  test('logs: the lines so far, or followed to the end with -f', async () => {
    const r = await cli(['template', 'logs', 'ok', 'b-ok']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '2026-01-01 00:00:01.000 [hearth] starting\n2026-01-01 00:00:01.000 [1] Setting up numpy\n');
    const f = await cli(['template', 'logs', 'ok', 'b-ok', '-f']);
    assert.equal(f.code, 0, f.stderr);
    assert.equal(f.stdout, '2026-01-01 00:00:01.000 [hearth] layer 1 of 3 from the cache\n2026-01-01 00:00:01.000 [2] compiling\ntemplate ok ready in 5.0 s (1 of 3 steps cached; build b-ok)\n');
    const j = await cli(['template', 'logs', 'bad', 'b-bad', '-f', '--json']);
    const events = j.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string });
    assert.deepEqual(events.map((e) => e.type), ['step', 'step', 'log', 'step', 'step', 'end']);
  });
});

describe('progress display and helpers', () => {
  class Sink { text = ''; columns = 200; write(s: string): boolean { this.text += s; return true; } }

  test('on a terminal: steps as they end, the running one on a spinner line, logs dimmed', () => {
    const sink = new Sink();
    const p = new BuildProgress(sink, true, mkBuild('t', 'building', PENDING));
    p.step(step(0, 'cached'));
    p.step(step(1, 'running'));
    p.log(log(1, 'compiling'));
    p.log(log(null, 'builder line'));
    p.step(step(1, 'failed', { exitCode: 2, durationMs: 1500 }));
    p.stop();
    const t = sink.text;
    assert.ok(t.includes('\r\x1b[K\x1b[32m✓\x1b[0m [1/3] APT python3-numpy \x1b[2mcached\x1b[0m\n'), JSON.stringify(t));
    const spin = t.indexOf(' [2/3] RUN make \x1b[2m0.');
    assert.ok(spin > 0 && t.slice(spin - 5, spin - 1) === '\r\x1b[K' && '⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏'.includes(t[spin - 1]!), 'the running step on the spinner line');
    assert.ok(t.includes('\r\x1b[K\x1b[2m  compiling\x1b[0m\n'), 'step output dimmed');
    assert.ok(t.includes('\r\x1b[K  builder line\n'), 'the builder\'s lines not dimmed');
    assert.ok(t.includes('\x1b[31m✗\x1b[0m [2/3] RUN make \x1b[31mfailed (exit 2) after 1.5 s\x1b[0m\n'));
    assert.ok(t.endsWith('\r\x1b[K'), 'stop clears the spinner line');
  });

  test('off a terminal: plain lines, no codes', () => {
    const sink = new Sink();
    const p = new BuildProgress(sink, false);
    p.step(step(0, 'cached'));
    p.step(step(1, 'running'));
    p.log(log(1, 'compiling'));
    p.step(step(1, 'done', { durationMs: 65_000 }));
    p.step(step(2, 'cancelled'));
    p.stop();
    assert.equal(sink.text, '[1] APT python3-numpy: cached\n[2] RUN make\n[2] compiling\n[2] RUN make: done in 1m 05s\n[3] ENV A=1: cancelled\n', 'no total when the build did not say');
  });

  test('summary, default names, recipe or Dockerfile', () => {
    assert.equal(buildSummary(mkBuild('t', 'ready', DONE), 0), 'template t ready in 5.0 s (1 of 3 steps cached; build b-t)');
    assert.equal(buildSummary({ ...mkBuild('t', 'cancelled', PENDING), durationMs: null }, 2500), 'build b-t of template t cancelled after 2.5 s (0 of 3 steps cached)');
    assert.equal(nameFromDir('/x/My App_'), 'my-app');
    assert.deepEqual(readRecipeText('a/Dockerfile', 'FROM base\n'), { dockerfile: 'FROM base\n' });
    assert.deepEqual(readRecipeText('a/recipe', ' {"steps":[]}'), { recipe: { steps: [] } });
    assert.throws(() => readRecipeText('a/x.json', 'FROM base'), /x\.json: not valid JSON/);
  });

  test('watchBuild in process: an abort cancels the build and gives 130', async () => {
    seen.length = 0;
    const sink = new Sink();
    const ac = new AbortController();
    const poll = setInterval(() => { if (sink.text.includes('[1] working')) ac.abort(); }, 10);
    try {
      const code = await watchBuild(mkBuild('hang', 'building', PENDING), { signal: ac.signal, err: sink, fancy: false, connection: { url: apiUrl } });
      assert.equal(code, 130);
    } finally { clearInterval(poll); }
    assert.deepEqual(seen.filter((s) => s.method === 'DELETE').map((s) => s.path), ['/templates/hang/builds/b-hang']);
    assert.match(sink.text, /cancelled\n$/);
  });
});
