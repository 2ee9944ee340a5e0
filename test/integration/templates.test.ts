/**
 * Custom templates end to end (docs/templates.md): real hearthd, real QEMU
 * build sandboxes, real layers on disk, real apt on the host. One daemon for
 * the file. Builds: a recipe (apt, copy, env, workdir, run, start command),
 * the same recipe changed in its last step (the prefix is reused), the
 * Dockerfile equivalent (every layer reused), a failing step, a cancelled
 * build; then sandboxes from them, and deletion.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { runCli } from '../helpers/cli.js';
import { readSse } from '../helpers/sse.js';
import { Sandbox } from '../../src/sdk/index.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

let d: TestDaemon;

before(async () => { d = await startTestDaemon(); });
after(async () => { await d?.stop(); });

interface Step { index: number; description: string; key: string; status: string; cached: boolean; exitCode: number | null }
interface Build { buildID: string; templateID: string; status: string; error: string | null; steps: Step[] }

const api = async <T>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> => {
  const res = await fetch(`${d.url}${path}`, { method, headers: body !== undefined ? { 'content-type': 'application/json' } : {}, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : null) as T };
};

/** POST the build and follow its SSE log to the end; returns the final build and the log lines seen live. */
async function build(body: Record<string, unknown>): Promise<{ build: Build; lines: string[] }> {
  const started = await api<Build>('POST', '/templates', body);
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const events = await readSse(`${d.url}/templates/${started.body.templateID}/builds/${started.body.buildID}/logs?follow=true`, {
    until: (evs) => evs.some((e) => e.event === 'end'), timeoutMs: 900_000,
  });
  const lines = events.filter((e) => e.event === 'log').map((e) => (JSON.parse(e.data) as { line: string }).line);
  const endEvent = events.find((e) => e.event === 'end');
  const final = endEvent ? JSON.parse(endEvent.data) as Build : undefined;
  assert.ok(final, 'the stream ended with an end event');
  return { build: final, lines };
}

const files = (m: Record<string, string>): Record<string, string> => Object.fromEntries(Object.entries(m).map(([k, v]) => [k, Buffer.from(v).toString('base64')]));

const RECIPE = {
  steps: [
    { apt: ['jq'] },
    { run: 'date +%s%N > /etc/first-step-stamp' },
    { copy: { src: 'app/', dest: '/opt/app/', owner: 'user' } },
    { env: { GREETING: 'hello from the template' } },
    { workdir: '/opt/app' },
    { user: 'user' },
    { run: 'echo "$GREETING as $(whoami) in $(pwd)" > /opt/app/built.txt' },
  ],
  start: { command: 'python3 -m http.server 8000 --bind 127.0.0.1', ready: { port: 8000 } },
};
const CONTEXT = files({ 'app/index.html': '<p>served by the start command</p>\n', 'app/data/config.json': '{"a":1}\n' });

const DOCKERFILE = `# the same as RECIPE
FROM base
RUN date +%s%N > /etc/first-step-stamp
`;

describe('custom templates', () => {
  let first: Build;

  test('a recipe builds: every step runs, logs stream live, a layer per step that changes the disk', async () => {
    const { build: b, lines } = await build({ name: 'web', aliases: ['web-alias'], recipe: RECIPE, files: CONTEXT });
    assert.equal(b.status, 'ready', b.error ?? '');
    first = b;
    assert.deepEqual(b.steps.map((s) => s.status), ['done', 'done', 'done', 'skipped', 'done', 'skipped', 'done']);
    assert.ok(b.steps.every((s) => !s.cached));
    assert.ok(lines.some((l) => /Setting up jq/.test(l)), 'apt output streamed');
    const t = await api<{ source: string; layers: unknown[]; startCommand: string; user: string; workdir: string; envVars: Record<string, string>; aliases: string[] }>('GET', '/templates/web-alias');
    assert.equal(t.status, 200);
    assert.equal(t.body.source, 'build');
    assert.equal(t.body.layers.length, 5);
    assert.equal(t.body.user, 'user');
    assert.equal(t.body.workdir, '/opt/app');
    assert.deepEqual(t.body.envVars, { GREETING: 'hello from the template' });
  });

  test('a sandbox from it starts by restore, with every step\'s effect, its env/user/workdir, and the service already listening', async () => {
    const sbx = await Sandbox.create({ template: 'web', url: d.url });
    try {
      const rec = await api<{ timings: { op: string } | null }>('GET', `/sandboxes/${sbx.id}/record`);
      assert.equal(rec.body.timings?.op, 'create (restore)');
      const r = await sbx.commands.run('curl -s http://127.0.0.1:8000/index.html; cat built.txt; jq .a data/config.json; stat -c %U /opt/app/index.html; echo "$GREETING"; whoami; pwd');
      assert.equal(r.stdout, '<p>served by the start command</p>\nhello from the template as user in /opt/app\n1\nuser\nhello from the template\nuser\n/opt/app\n');
    } finally {
      await sbx.kill();
    }
  });

  test('changing the last step reuses every layer before it (the earlier steps do not run again)', async () => {
    const changed = { ...RECIPE, steps: [...RECIPE.steps.slice(0, -1), { run: 'echo changed > /opt/app/built.txt' }] };
    const { build: b } = await build({ name: 'web', recipe: changed, files: CONTEXT });
    assert.equal(b.status, 'ready', b.error ?? '');
    assert.deepEqual(b.steps.map((s) => s.status), ['cached', 'cached', 'cached', 'skipped', 'cached', 'skipped', 'done']);
    assert.deepEqual(b.steps.slice(0, 6).map((s) => s.key), first.steps.slice(0, 6).map((s) => s.key));
    assert.notEqual(b.steps[6]!.key, first.steps[6]!.key);
    const sbx = await Sandbox.create({ template: 'web', url: d.url });
    try {
      const r = await sbx.commands.run('cat built.txt; cat /etc/first-step-stamp');
      const [built, stamp] = r.stdout.trim().split('\n');
      assert.equal(built, 'changed');
      assert.match(stamp ?? '', /^\d+$/);
      // The first build's stamp: had the step run again, the time would differ.
      const again = await build({ name: 'stamp-check', recipe: { steps: [RECIPE.steps[0], RECIPE.steps[1]] } });
      assert.deepEqual(again.build.steps.map((s) => s.status), ['cached', 'cached']);
    } finally {
      await sbx.kill();
    }
  });

  test('a Dockerfile gives the same layers as the equivalent recipe: all cached', async () => {
    const recipe = { steps: [{ run: 'date +%s%N > /etc/first-step-stamp' }] };
    const r = await build({ name: 'from-recipe', recipe });
    assert.equal(r.build.status, 'ready', r.build.error ?? '');
    const df = await build({ name: 'from-dockerfile', dockerfile: DOCKERFILE });
    assert.equal(df.build.status, 'ready', df.build.error ?? '');
    assert.deepEqual(df.build.steps.map((s) => [s.key, s.status]), r.build.steps.map((s) => [s.key, 'cached']));
    const bad = await api<{ message: string }>('POST', '/templates', { name: 'bad-df', dockerfile: 'FROM base\nRUN true\nARG X=1\n' });
    assert.equal(bad.status, 400);
    assert.match(bad.body.message, /^Dockerfile line 3: ARG is not supported/);
  });

  test('a failing step reports its exit code and last lines, keeps the layers before it, leaves no sandbox or partial layer', async () => {
    const { build: b } = await build({ name: 'broken', recipe: { steps: [{ run: 'echo fine > /ok' }, { run: 'echo about to fail; echo oops >&2; exit 7' }] } });
    assert.equal(b.status, 'failed');
    assert.equal(b.steps[1]!.status, 'failed');
    assert.equal(b.steps[1]!.exitCode, 7);
    assert.match(b.error ?? '', /exit code 7.*oops/);
    assert.equal((await api('GET', '/templates/broken')).status, 404);
    const live = d.store.listSandboxes({ states: ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying'] });
    assert.deepEqual(live.filter((s) => s.metadata['hearth.build']).map((s) => s.id), []);
    const layerDir = join(d.cfg.dataDir, 'layers');
    const names = await readdir(layerDir);
    assert.deepEqual(names.filter((n) => n.startsWith('.')), [], 'no staging leftovers');
    assert.ok(names.includes(b.steps[0]!.key), 'the finished step\'s layer stays cached');
    const retry = await build({ name: 'broken', recipe: { steps: [{ run: 'echo fine > /ok' }, { run: 'true' }] } });
    assert.equal(retry.build.steps[0]!.status, 'cached');
    assert.equal(retry.build.status, 'ready');
  });

  test('a cancelled build stops its build sandbox and registers nothing', async () => {
    const started = await api<Build>('POST', '/templates', { name: 'cancelled', recipe: { steps: [{ run: 'sleep 600' }] } });
    assert.equal(started.status, 202);
    const path = `/templates/cancelled/builds/${started.body.buildID}`;
    for (let i = 0; i < 600; i++) {
      const cur = await api<Build>('GET', path);
      if (cur.body.steps[0]?.status === 'running') break;
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.equal((await api('DELETE', path)).status, 204);
    for (let i = 0; i < 240; i++) {
      if ((await api<Build>('GET', path)).body.status !== 'building') break;
      await new Promise((r) => setTimeout(r, 250));
    }
    const end = await api<Build>('GET', path);
    assert.equal(end.body.status, 'cancelled');
    assert.equal((await api('DELETE', path)).status, 409);
    assert.equal((await api('GET', '/templates/cancelled')).status, 404);
    const live = d.store.listSandboxes({ states: ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying'] });
    assert.deepEqual(live.filter((s) => s.metadata['hearth.build']).map((s) => s.id), []);
  });

  test('a client that started a build with ?follow=true and leaves before the end cancels it', async () => {
    const ac = new AbortController();
    const res = await fetch(`${d.url}/templates?follow=true`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, signal: ac.signal,
      body: JSON.stringify({ name: 'left-behind', recipe: { steps: [{ run: 'sleep 600' }] } }),
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type')?.split(';')[0], 'text/event-stream');
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let seen = '';
    while (!/"status":"running"/.test(seen)) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += value;
    }
    ac.abort();
    let builds: Build[] = [];
    for (let i = 0; i < 240; i++) {
      builds = (await api<Build[]>('GET', '/templates/left-behind/builds')).body;
      if (builds[0]?.status !== 'building') break;
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.equal(builds[0]?.status, 'cancelled');
    const live = d.store.listSandboxes({ states: ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying'] });
    assert.deepEqual(live.filter((s) => s.metadata['hearth.build']).map((s) => s.id), []);
  });

  test('a template from a running sandbox\'s disk, and one from a named snapshot\'s', async () => {
    const src = await Sandbox.create({ url: d.url });
    try {
      await src.commands.run('echo made-by-hand | sudo tee /etc/hand-made >/dev/null');
      // The default image's Python: pip and venv work, `python` is python3.
      const py = await src.commands.run('python3 -m pip --version >/dev/null && python3 -m venv /tmp/venv && /tmp/venv/bin/python -m pip --version >/dev/null && python -c "import sys; print(sys.version_info[0])"');
      assert.equal(py.stdout, '3\n');
      const fromSbx = await build({ name: 'from-sandbox', fromSandbox: src.id });
      assert.equal(fromSbx.build.status, 'ready', fromSbx.build.error ?? '');
      const snap = await api<{ snapshotID: string }>('POST', `/sandboxes/${src.id}/snapshots`, { name: 'hand-made-snap' });
      assert.equal(snap.status, 201, JSON.stringify(snap.body));
      const fromSnap = await build({ name: 'from-snapshot', fromSnapshot: 'hand-made-snap' });
      assert.equal(fromSnap.build.status, 'ready', fromSnap.build.error ?? '');
      for (const template of ['from-sandbox', 'from-snapshot']) {
        const t = await api<{ source: string }>('GET', `/templates/${template}`);
        assert.equal(t.body.source, template === 'from-sandbox' ? 'sandbox' : 'snapshot');
        const sbx = await Sandbox.create({ url: d.url, template });
        try {
          assert.equal((await sbx.commands.run('cat /etc/hand-made')).stdout, 'made-by-hand\n');
        } finally {
          await sbx.kill();
        }
      }
      // The snapshot's template depends on nothing it made; the snapshot can go, then the template.
      assert.equal((await api('DELETE', '/snapshots/hand-made-snap')).status, 204);
      assert.equal((await api('DELETE', '/templates/from-snapshot')).status, 204);
    } finally {
      await src.kill();
    }
  });

  test('bad input is a 4xx with a message, before any work', async () => {
    const cases: [unknown, number, RegExp][] = [
      [{ name: 'x', recipe: { steps: [{ copy: { src: '../etc/passwd', dest: '/x' } }] } }, 400, /steps\[0\]\.copy\.src/],
      [{ name: 'x', recipe: { steps: [{ apt: ['-o=APT::Foo=1'] }] } }, 400, /steps\[0\]\.apt/],
      [{ name: 'x', recipe: { from: 'nope', steps: [] } }, 404, /nope/],
      [{ name: 'x', recipe: { steps: [] }, files: { '../up': '' } }, 400, /files/],
      [{ name: 'x', recipe: { steps: [] }, dockerfile: 'FROM base' }, 400, /exactly one/],
      [{ name: 'base', recipe: { steps: [] } }, 409, /base/],
      [{ name: 'x', recipe: { steps: [] }, files: { a: 'aGk=', 'a/b': 'aGk=' } }, 400, /both a file and a directory/],
      [{ name: 'x', recipe: { steps: [{ copy: { src: 'missing.txt', dest: '/x' } }] } }, 400, /not in the build context/],
    ];
    for (const [body, status, msg] of cases) {
      const r = await api<{ message: string }>('POST', '/templates', body);
      assert.equal(r.status, status, JSON.stringify(body));
      assert.match(r.body.message, msg);
    }
  });

  test('delete: 409 while a sandbox uses the template, then 204 and its own layers go', async () => {
    const sbx = await Sandbox.create({ template: 'web', url: d.url });
    const refused = await api<{ message: string }>('DELETE', '/templates/web');
    assert.equal(refused.status, 409);
    assert.match(refused.body.message, new RegExp(sbx.id));
    await sbx.kill();
    const t = await api<{ layers: { key: string }[] }>('GET', '/templates/web');
    assert.equal((await api('DELETE', '/templates/web')).status, 204);
    assert.equal((await api('GET', '/templates/web')).status, 404);
    const left = new Set(await readdir(join(d.cfg.dataDir, 'layers')));
    // The last layer was web's alone; the first ones are shared with stamp-check and stay.
    assert.equal(left.has(t.body.layers.at(-1)!.key), false);
    assert.equal(left.has(t.body.layers[0]!.key), true);
    assert.equal((await api('DELETE', '/templates/base')).status, 409);
  });
});

describe('example templates (examples/templates/), built with the CLI', () => {
  let home: string;
  before(async () => { home = await mkdtemp(join(process.env['HEARTH_TEST_TMP'] ?? tmpdir(), 'hearth-cli-home-')); });
  after(async () => { if (home) await rm(home, { recursive: true, force: true }); });

  test('node-service: the recipe builds; the Dockerfile beside it reuses every layer; its service answers in a new sandbox', async () => {
    const dir = join(PACKAGE_ROOT, 'examples/templates/node-service');
    const r = await runCli(d.url, home, ['template', 'build', dir, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const b = JSON.parse(r.stdout) as Build;
    assert.equal(b.status, 'ready');
    const df = await runCli(d.url, home, ['template', 'build', dir, '--file', join(dir, 'Dockerfile'), '--name', 'node-service-df', '--json']);
    assert.equal(df.code, 0, df.stderr);
    const dfb = JSON.parse(df.stdout) as Build;
    assert.deepEqual(dfb.steps.map((s) => [s.key, s.cached || s.status === 'skipped']), b.steps.map((s) => [s.key, true]));
    const sbx = await Sandbox.create({ template: 'node-service', url: d.url });
    try {
      const out = await sbx.commands.run('curl -s http://127.0.0.1:3000/hello');
      assert.equal((JSON.parse(out.stdout) as { ok: boolean; path: string }).path, '/hello');
    } finally {
      await sbx.kill();
    }
  });

  test('python-data: Debian\'s numpy and pandas, installed without guest network access, on a disk grown to 3 GiB', async () => {
    const r = await runCli(d.url, home, ['template', 'build', join(PACKAGE_ROOT, 'examples/templates/python-data'), '--json']);
    assert.equal(r.code, 0, r.stderr);
    const sbx = await Sandbox.create({ template: 'python-data', url: d.url });
    try {
      const out = await sbx.commands.run('python3 analysis.py');
      assert.equal(out.stdout, '285 28.5\n');
      // Its recipe grows the disk to 3 GiB: the build sandbox grew the filesystem online.
      const df = await sbx.commands.run("df -BM --output=size / | tail -1 | tr -dc 0-9");
      assert.ok(Number(df.stdout) > 2900, `root filesystem ${df.stdout} MiB`);
    } finally {
      await sbx.kill();
    }
  });
});
