/**
 * The CLI without VMs: `--help` on every command and group (through the real entry point),
 * errors as JSON under --json and in the user's words, id prefixes, the per-user config file,
 * and the systemd unit `hearth service install` writes (into a temp root: never the host's
 * /etc). HOME and XDG_CONFIG_HOME point into temp dirs throughout.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HELP, helpFor } from '../../src/cli/help.js';
import { humanize } from '../../src/cli/output.js';
import { mayBeMissingCommand, missingCommandText } from '../../src/cli/commands/exec.js';
import { unitFile } from '../../src/cli/commands/service.js';
import { PACKAGE_ROOT } from '../../src/paths.js';

interface Ran { code: number | null; stdout: string; stderr: string }

let home: string;
let api: Server;
let apiUrl: string;
const SANDBOXES = [
  { sandboxID: 'iabc111', state: 'running', metadata: {}, createdAt: '2026-01-01T00:00:00Z' },
  { sandboxID: 'iabc222', state: 'running', metadata: {}, createdAt: '2026-01-01T00:00:00Z' },
  { sandboxID: 'ixyz333', state: 'running', metadata: {}, createdAt: '2026-01-01T00:00:00Z' },
];

function cli(args: string[], env: Record<string, string> = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(PACKAGE_ROOT, 'src/cli/main.ts'), ...args], {
      cwd: PACKAGE_ROOT,
      env: { ...process.env, HOME: home, XDG_CONFIG_HOME: join(home, '.config'), HEARTH_URL: apiUrl, HEARTH_API_KEY: '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs `fn` over `items`, `n` at a time. */
async function pool<T>(items: T[], n: number, fn: (x: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(Array.from({ length: n }, async () => { for (let x = queue.shift(); x !== undefined; x = queue.shift()) await fn(x); }));
}

before(async () => {
  home = await mkdtemp(join(tmpdir(), 'hearth-cli-unit-'));
  // A stand-in hearthd: a sandbox list, a validation error, a detail.
  api = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const json = (status: number, body: unknown): void => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(JSON.stringify(body)); };
    if (req.method === 'GET' && (url.pathname === '/v2/sandboxes' || url.pathname === '/sandboxes')) return json(200, SANDBOXES);
    if (req.method === 'POST' && url.pathname === '/sandboxes') return json(400, { code: 400, message: 'body/cpuCount must be <= 64', error_code: 'invalid_argument' });
    if (req.method === 'GET' && url.pathname.startsWith('/sandboxes/')) return json(404, { code: 404, message: `sandbox ${url.pathname.split('/')[2]} not found`, error_code: 'not_found' });
    if (req.method === 'DELETE' && url.pathname.startsWith('/sandboxes/')) { res.writeHead(204); res.end(); return undefined; }
    return json(404, { code: 404, message: `no route ${req.method} ${url.pathname}`, error_code: 'not_found' });
  });
  await new Promise<void>((r) => api.listen(0, '127.0.0.1', r));
  apiUrl = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
});

after(async () => {
  await new Promise((r) => api.close(r));
  await rm(home, { recursive: true, force: true });
});

describe('help', () => {
  test('every command and group has usage, a summary, and (leaves) examples', () => {
    for (const [key, e] of Object.entries(HELP)) {
      const text = helpFor([...key.split(' '), '--help'])!;
      assert.ok(text.startsWith(`Usage: ${e.usage}`), key);
      if (!e.group) assert.match(text, /\nExamples:\n {2}\S/, `${key} has examples`);
      else assert.match(text, /\nCommands:\n/, `${key} lists its commands`);
    }
  });

  test('--help through the real entry point, on every command: exit 0, its own usage, never a parse error', async () => {
    const failures: string[] = [];
    await pool(Object.keys(HELP), 4, async (key) => {
      const r = await cli([...key.split(' '), '--help']);
      if (r.code !== 0 || !r.stdout.startsWith(`Usage: ${HELP[key]!.usage}`) || r.stderr) failures.push(`${key}: exit ${r.code} ${r.stderr.slice(0, 200)}`);
    });
    assert.deepEqual(failures, []);
    // -h, help <command>, options before --help, aliases.
    for (const args of [['exec', '-h'], ['help', 'exec'], ['exec', 'i1', '--timeout', '3', '--help'], ['sb', 'ls', '--help']]) {
      const r = await cli(args);
      assert.equal(r.code, 0, args.join(' '));
      assert.match(r.stdout, /^Usage: hearth (exec|sandbox ls)/, args.join(' '));
    }
  });

  test('top-level help lists every command, sandbox network and url, and HEARTH_API_KEY', async () => {
    const r = await cli(['--help']);
    assert.equal(r.code, 0);
    for (const word of ['sandbox create', 'network', 'url', 'exec', 'shell', 'cp', 'files', 'snapshot', 'template', 'up', 'down', 'doctor', 'service', 'image', 'storage', 'keys', 'config', 'completion', 'HEARTH_API_KEY', 'HEARTH_URL']) {
      assert.ok(r.stdout.includes(word), word);
    }
    const none = await cli([]);
    assert.equal(none.code, 2);
  });
});

describe('errors', () => {
  test('validation messages in the CLI\'s words', () => {
    assert.equal(humanize('body/cpuCount must be <= 64'), '--cpu must be at most 64');
    assert.equal(humanize('body/memoryMB must be >= 64'), '--memory must be at least 64');
    assert.equal(humanize('body/timeout must be integer'), '--timeout must be a whole number');
    assert.equal(humanize('sandbox x not found'), 'sandbox x not found');
    assert.equal(humanize('cpuCount must be an integer from 1 to 8'), '--cpu must be a whole number from 1 to 8');
    assert.match(humanize('the sandbox is paused: resume it (sandbox.resume() or Sandbox.connect(id)) to reach it again'), /resume it \(`hearth sandbox resume <id>`\)/);
  });

  test('--json: errors are one JSON object on stderr, stdout stays empty', async () => {
    const r = await cli(['sandbox', 'create', '--cpu', '99', '--json']);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    const e = JSON.parse(r.stderr) as { error: { message: string; status: number; code: string; exitCode: number } };
    assert.deepEqual(e.error, { message: '--cpu must be at most 64', type: 'InvalidArgumentError', code: 'invalid_argument', status: 400, exitCode: 1 });
    const usage = await cli(['sandbox', 'ls', '--state', 'bogus', '--json']);
    assert.equal(usage.code, 2);
    assert.match((JSON.parse(usage.stderr) as { error: { message: string } }).error.message, /unknown state "bogus"/);
    const parse = await cli(['exec', '--bogus', '--json']);
    assert.equal(parse.code, 2);
    assert.ok(JSON.parse(parse.stderr));
    const down = await cli(['sandbox', 'ls', '--json'], { HEARTH_URL: 'http://127.0.0.1:9' });
    assert.equal(down.code, 1);
    assert.match((JSON.parse(down.stderr) as { error: { message: string } }).error.message, /cannot reach hearthd/);
    const plain = await cli(['sandbox', 'create', '--cpu', '99']);
    assert.equal(plain.stderr, 'error: --cpu must be at most 64\n');
  });

  test('a missing program is reported as a shell would, without the wrapper\'s "--" as argv0', () => {
    assert.equal(missingCommandText('--: 1: exec: foo: not found\n'), 'hearth: foo: command not found\n');
    assert.equal(missingCommandText('setpriv: failed to execute foo: No such file or directory\n'), 'hearth: foo: command not found\n');
    assert.equal(missingCommandText('something else\n'), null);
    assert.equal(mayBeMissingCommand('--: 1: ex'), true);
    assert.equal(mayBeMissingCommand('-'), true);
    assert.equal(mayBeMissingCommand('50%\r'), false, 'other stderr is not held');
  });
});

describe('ids, config file, service unit', () => {
  test('an unambiguous prefix resolves; an ambiguous one says which ids it matches', async () => {
    const ok = await cli(['sandbox', 'rm', 'ixy']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout, 'ixyz333 destroyed\n');
    const amb = await cli(['sandbox', 'rm', 'iabc', '--json']);
    assert.equal(amb.code, 1);
    assert.match(amb.stdout, /ambiguous.*iabc111, iabc222/);
  });

  test('~/.config/hearth/config.json holds the URL and key (0600); the environment wins', async () => {
    const set = await cli(['config', 'set', 'url', 'http://127.0.0.2:9/'], { HEARTH_URL: '' });
    assert.equal(set.code, 0, set.stderr);
    await cli(['config', 'set', 'api-key', 'e2b_secretsecretsecret'], { HEARTH_URL: '' });
    const file = join(home, '.config', 'hearth', 'config.json');
    assert.deepEqual(JSON.parse(await readFile(file, 'utf8')), { url: 'http://127.0.0.2:9', apiKey: 'e2b_secretsecretsecret' });
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    const shown = await cli(['config', 'show', '--json'], { HEARTH_URL: '' });
    assert.deepEqual(JSON.parse(shown.stdout), { file, url: 'http://127.0.0.2:9', urlFrom: file, apiKeySet: true, apiKeyFrom: file });
    const human = await cli(['config', 'show'], { HEARTH_URL: '' });
    assert.doesNotMatch(human.stdout, /secretsecretsecret/, 'the key is masked');
    const env = await cli(['config', 'show', '--json'], { HEARTH_URL: 'http://127.0.0.1:1' });
    assert.equal((JSON.parse(env.stdout) as { urlFrom: string }).urlFrom, 'HEARTH_URL');
    // The file's URL is used when the environment has none.
    const used = await cli(['sandbox', 'ls', '--json'], { HEARTH_URL: '' });
    assert.match(used.stderr, /127\.0\.0\.2:9/);
    await cli(['config', 'unset', 'url'], { HEARTH_URL: '' });
    await cli(['config', 'unset', 'api-key'], { HEARTH_URL: '' });
    assert.deepEqual(JSON.parse(await readFile(file, 'utf8')), {});
  });

  test('service install writes a unit running `hearth up --foreground` into --root, runs no systemctl', async () => {
    const root = await mkdtemp(join(tmpdir(), 'hearth-root-'));
    try {
      const r = await cli(['service', 'install', '--root', root, '--port', '3031', '--data-dir', '/srv/hearth', '--env', 'HEARTH_EGRESS_INTERFACE=eth0', '--json']);
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout) as { unitPath: string; actions: string[] };
      assert.equal(out.unitPath, join(root, 'etc/systemd/system/hearth.service'));
      assert.deepEqual(out.actions, [`write ${out.unitPath}`], 'no systemctl outside the real root');
      const unit = await readFile(out.unitPath, 'utf8');
      assert.match(unit, /^ExecStart=\S*node\S* \S+\/dist\/cli\/main\.js up --foreground --port 3031 --data-dir \/srv\/hearth$/m);
      assert.match(unit, /^Environment=HEARTH_EGRESS_INTERFACE=eth0$/m);
      assert.match(unit, /^KillMode=process$/m);
      assert.match(unit, /^StandardOutput=journal$/m);
      assert.match(unit, /^WantedBy=multi-user\.target$/m);
      const dry = await cli(['service', 'install', '--dry-run']);
      assert.equal(dry.code, 0, dry.stderr);
      assert.match(dry.stdout, /\[Service\]/);
      assert.match(dry.stderr, /would systemctl enable --now hearth\.service/);
      const un = await cli(['service', 'uninstall', '--root', root]);
      assert.equal(un.code, 0, un.stderr);
      assert.equal(existsSync(out.unitPath), false);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
    assert.match(unitFile({ node: '/usr/bin/node', cli: '/opt/hearth/dist/cli/main.js', env: { A: 'b c' } }), /^Environment="A=b c"$/m);
  });
});
