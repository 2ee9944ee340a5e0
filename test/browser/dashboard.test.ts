/**
 * The web dashboard end to end: Debian's Chromium (playwright-core) against a real hearthd
 * with real QEMU VMs. Creates a sandbox from the dashboard, runs `echo hello` (in the
 * terminal if the agent has PTY support, and always in the command runner), uploads and
 * downloads a file, pauses and resumes, snapshots, destroys. Screenshots go to
 * test-artifacts/dashboard-*.png; any console error or page error fails the test.
 *
 *   npm run build && HEARTH_IMAGE_DIR=/var/lib/hearth HEARTH_TEST_TMP=/var/tmp \
 *     node --import tsx --test test/browser/dashboard.test.ts
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { Sandbox } from '../../src/sdk/index.js';

const CHROMIUM = process.env['HEARTH_CHROMIUM'] ?? '/usr/bin/chromium';
const ARTIFACTS = join(PACKAGE_ROOT, 'test-artifacts');
const VM_OP = 300_000; // create / pause / resume on a busy 2-core host

let d: TestDaemon;
let ctx: BrowserContext;
let page: Page;
let profile: string;
const consoleErrors: string[] = [];

async function shot(name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `dashboard-${name}.png`), fullPage: true });
}

before(async () => {
  if (!existsSync(join(PACKAGE_ROOT, 'dist', 'web', 'index.html'))) throw new Error('dist/web missing: run npm run build:web first');
  await mkdir(ARTIFACTS, { recursive: true });
  d = await startTestDaemon();
  profile = await mkdtemp(join(tmpdir(), 'hearth-chromium-'));
  ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
    acceptDownloads: true,
  });
  page = ctx.pages()[0] ?? await ctx.newPage();
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(`console.error: ${m.text()} @ ${m.location().url}`); });
  page.on('pageerror', (e) => consoleErrors.push(`page error: ${e.message}`));
});

after(async () => {
  await ctx?.close().catch(() => undefined);
  if (profile) await rm(profile, { recursive: true, force: true });
  await d?.stop();
});

test('hearthd serves the dashboard without shadowing the API', async () => {
  const index = await fetch(`${d.url}/`);
  assert.equal(index.status, 200);
  assert.match(index.headers.get('content-type') ?? '', /text\/html/);
  const html = await index.text();
  const asset = /\/ui\/assets\/[^"]+\.js/.exec(html)?.[0];
  assert.ok(asset, 'index.html references a hashed asset');
  const a = await fetch(`${d.url}${asset}`);
  assert.equal(a.status, 200);
  assert.match(a.headers.get('cache-control') ?? '', /immutable/);
  assert.equal((await fetch(`${d.url}/ui/sandboxes/abc`, { headers: { accept: 'text/html' } })).status, 200);
  assert.equal((await fetch(`${d.url}/ui/assets/nope.js`)).status, 404);
  // API paths keep answering JSON, even for a browser-like Accept header.
  const list = await fetch(`${d.url}/sandboxes`, { headers: { accept: 'text/html,*/*' } });
  assert.equal(list.status, 200);
  assert.ok(Array.isArray(await list.json()));
  const missing = await fetch(`${d.url}/sandboxes/nope`, { headers: { accept: 'text/html' } });
  assert.equal(missing.status, 404);
  assert.match(missing.headers.get('content-type') ?? '', /json/);
  assert.equal((await fetch(`${d.url}/no-such-api`)).status, 404);
});

test('dashboard: create, run, files, pause/resume, snapshot, destroy', { timeout: 1_200_000 }, async (t) => {
  await page.goto(`${d.url}/`);
  await page.getByRole('heading', { name: /Sandboxes/ }).waitFor();
  await d.manager.settled(); // warm-template builds (internal sandboxes) finish first
  await page.getByTestId('create-form').waitFor();
  await shot('sandboxes-start');

  // Create from the form.
  const form = page.getByTestId('create-form');
  await form.locator('select[name=template]').selectOption('base');
  await form.locator('input[name=cpu]').fill('1');
  await form.locator('input[name=memory]').fill('512');
  await form.locator('input[name=timeout]').fill('900');
  await form.locator('textarea[name=env]').fill('GREETING=hello-from-dashboard');
  await form.locator('textarea[name=metadata]').fill('owner=dash');
  await page.getByTestId('create-submit').click();
  await page.getByTestId('create-submit').getByText(/Creating/).waitFor();
  const notice = page.getByTestId('notice');
  await notice.getByText(/^Created [a-z0-9]+$/).waitFor({ timeout: VM_OP });
  const id = (await notice.textContent())!.replace('Created ', '').trim();
  const row = page.getByTestId(`row-${id}`);
  await page.locator(`[data-testid="row-${id}"][data-state="running"]`).waitFor();
  await row.getByText('1 vCPU · 512 MB').waitFor();
  await row.getByText(/MiB|GiB|KiB/).waitFor(); // disk usage from the detail
  await row.getByRole('button', { name: 'owner=dash' }).waitFor(); // metadata column
  await page.getByTestId('meta-filter').fill('owner=nobody');
  await row.waitFor({ state: 'detached' });
  await page.getByTestId('meta-filter').fill('owner=dash');
  await row.waitFor();
  await shot('sandboxes-running');
  await page.getByTestId('meta-filter').fill('');

  // Detail: info, timings, command runner.
  await row.getByRole('link', { name: id }).click();
  await page.waitForURL(`**/ui/sandboxes/${id}`);
  await page.getByText('Last lifecycle operation').waitFor();
  // Env var values are hidden until asked for.
  await page.getByTestId('env-vars').getByText('GREETING=••••••').waitFor();
  assert.equal(await page.getByText('GREETING=hello-from-dashboard').count(), 0);
  await page.getByTestId('env-toggle').click();
  await page.getByText('GREETING=hello-from-dashboard').waitFor();
  await page.getByTestId('cmd-input').fill('echo hello; echo "$GREETING"; echo oops >&2');
  await page.getByTestId('cmd-run').click();
  const out = page.getByTestId('cmd-output');
  await out.getByText(/\[exit 0/).waitFor({ timeout: 60_000 });
  const text = await out.textContent();
  assert.match(text ?? '', /^hello$/m);
  assert.match(text ?? '', /hello-from-dashboard/);
  assert.match(text ?? '', /oops/);
  assert.equal(await out.locator('.exit-ok').count(), 1, 'exit 0 in green');
  await page.getByTestId('cmd-input').fill('echo failing; exit 3');
  await page.getByTestId('cmd-run').click();
  await out.getByText(/\[exit 3/).waitFor({ timeout: 60_000 });
  assert.equal(await out.locator('.exit-bad').count(), 1, 'a non-zero exit in red');
  assert.doesNotMatch(await page.locator('main').textContent() ?? '', /process\.Process|filesystem\.Filesystem|envd/, 'no protocol jargon');

  // Terminal: a PTY shell if the agent supports it; otherwise the card says so.
  await page.getByTestId('terminal-toggle').click();
  const status = page.getByTestId('terminal-status');
  await page.waitForFunction(() => !/starting/.test(document.querySelector('[data-testid=terminal-status]')?.textContent ?? 'starting'), null, { timeout: 60_000 });
  const ptyReady = /pid/.test((await status.textContent()) ?? '');
  if (ptyReady) {
    await page.waitForFunction(() => /\$\s*$/.test((document.querySelector('[data-testid=terminal] .xterm-rows')?.textContent ?? '').trim() + ' '), null, { timeout: 30_000 }).catch(() => undefined);
    await page.getByTestId('terminal').click();
    await page.keyboard.type('echo hel""lo-pty\r');
    await page.waitForFunction(() => /hello-pty/.test(document.querySelector('[data-testid=terminal]')?.textContent ?? ''), null, { timeout: 30_000 });
    // A long line typed key by key (120 ms apart) while the guest is busy on every vCPU
    // arrives exactly: in order, nothing lost, nothing doubled. Typing starts as the terminal
    // opens, before its shell has started (keys typed then used to be dropped).
    const sdk = await Sandbox.connect(id, { url: d.url });
    await sdk.commands.run('for i in 1 2 3; do nohup sh -c "while :; do :; done" >/dev/null 2>&1 & done', { timeoutMs: 30_000 });
    const payload = `typed-slowly ${'abcdefghijklmnopqrstuvwxyz-0123456789'.repeat(2)} {[("$|&;")]} end`;
    const typed = `printf '%s\\n' '${payload}' "$GREETING" > /tmp/typed.txt`;
    await page.getByTestId('terminal-toggle').click(); // close the first shell
    await page.getByTestId('terminal-toggle').click(); // and open a new one
    await page.locator('[data-testid=terminal] .xterm-helper-textarea').focus();
    const before = await status.textContent();
    const t0 = Date.now();
    await page.keyboard.type(typed, { delay: 120 });
    t.diagnostic(`typing began while the terminal said "${before}"`);
    await page.keyboard.press('Enter');
    let got = '';
    for (const deadline = Date.now() + 60_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 500))) {
      got = await sdk.files.read('/tmp/typed.txt').catch(() => '');
      if (got.endsWith('hello-from-dashboard\n')) break;
    }
    await sdk.commands.run("pkill -f '^sh -c while' || true", { timeoutMs: 30_000 });
    assert.equal(got, `${payload}\nhello-from-dashboard\n`, 'every key, in order');
    t.diagnostic(`typed ${typed.length} keys at 120 ms each under load in ${Date.now() - t0} ms; read back exactly`);
    await page.locator('section', { has: page.getByTestId('terminal') }).screenshot({ path: join(ARTIFACTS, 'dashboard-terminal.png') });
  } else {
    await page.getByTestId('terminal-error').waitFor();
  }
  t.diagnostic(`PTY terminal: ${ptyReady ? 'ready, echo worked' : `not available (${await page.getByTestId('terminal-error').textContent()})`}`);
  assert.ok(ptyReady, 'the agent has PTY support');

  // Files: upload into /home/user, see it listed, download it back.
  const content = `uploaded from the dashboard test ${Date.now()}\n`;
  await page.getByTestId('upload-input').setInputFiles({ name: 'dashboard-upload.txt', mimeType: 'text/plain', buffer: Buffer.from(content) });
  await page.getByTestId('file-dashboard-upload.txt').waitFor({ timeout: 30_000 });
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.getByTestId('file-dashboard-upload.txt').getByRole('button', { name: 'Download' }).click(),
  ]);
  assert.equal(await readFile((await download.path())!, 'utf8'), content);
  // Preview, new folder, delete.
  await page.getByTestId('file-dashboard-upload.txt').getByRole('button', { name: 'Preview' }).click();
  await page.getByTestId('file-preview').getByText(content.trim()).waitFor();
  await page.getByTestId('mkdir-input').fill('made-here');
  await page.getByTestId('mkdir-submit').click();
  await page.getByTestId('file-made-here').waitFor({ timeout: 30_000 });
  await shot('detail-files');
  await page.getByTestId('delete-made-here').click();
  await page.getByTestId('confirm-delete-made-here').click();
  await page.getByTestId('file-made-here').waitFor({ state: 'detached', timeout: 30_000 });
  // Extend the timeout.
  await page.getByTestId('extend-open').click();
  await page.getByTestId('extend-minutes').fill('60');
  await page.getByTestId('extend-set').click();
  await page.getByTestId('detail-notice').getByText('It now ends in 60 min').waitFor();
  // A named snapshot from the detail page, with a notice.
  await page.getByTestId('detail-snapshot').click();
  await page.getByTestId('snapshot-name').fill('from-detail');
  await page.getByTestId('snapshot-take').click();
  await page.getByTestId('detail-notice').getByText(/Snapshot \S+ \(from-detail\) saved/).waitFor({ timeout: VM_OP });
  await shot('detail');
  // Destroy asks first.
  await page.getByTestId('detail-destroy').click();
  await page.getByTestId('confirm-detail-destroy').waitFor();
  await page.getByText('cancel', { exact: true }).click();
  await page.getByTestId('detail-destroy').waitFor();

  // Narrow window.
  await page.setViewportSize({ width: 390, height: 844 });
  await shot('detail-narrow');
  await page.getByRole('link', { name: 'Sandboxes' }).first().click();
  await row.waitFor();
  await shot('sandboxes-narrow');
  await page.setViewportSize({ width: 1280, height: 800 });

  // Pause and resume from the list, with progress shown.
  await page.getByTestId(`pause-${id}`).click();
  await page.locator(`[data-testid="row-${id}"][data-state="paused"]`).waitFor({ timeout: VM_OP });
  await shot('sandboxes-paused');
  await page.getByTestId(`resume-${id}`).click();
  await page.locator(`[data-testid="row-${id}"][data-state="running"]`).waitFor({ timeout: VM_OP });

  // Still the same machine: the uploaded file survived pause/resume.
  await row.getByRole('link', { name: id }).click();
  await page.getByTestId('cmd-input').fill('cat /home/user/dashboard-upload.txt');
  await page.getByTestId('cmd-run').click();
  await page.getByTestId('cmd-output').getByText(/\[exit 0/).waitFor({ timeout: 60_000 });
  assert.ok((await page.getByTestId('cmd-output').textContent())?.includes(content.trim()));
  await page.getByRole('link', { name: 'Sandboxes' }).first().click();

  // Snapshot, then see it on the Snapshots page.
  await page.getByTestId(`snapshot-${id}`).click();
  await notice.getByText(/^Snapshot \S+ saved/).waitFor({ timeout: VM_OP });
  await page.getByRole('link', { name: 'Snapshots' }).click();
  await page.getByTestId('snapshot-table').waitFor();
  await page.getByTestId('snapshot-table').getByText('from-detail').waitFor();
  await shot('snapshots');

  await page.getByRole('link', { name: 'Templates' }).click();
  await page.getByTestId('template-table').getByText('base').waitFor();
  await shot('templates');

  await page.getByRole('link', { name: 'Host' }).click();
  await page.getByTestId('doctor').waitFor({ timeout: 60_000 });
  await page.getByText('What Hearth uses').waitFor();
  assert.equal(await page.getByTestId('doctor').getByText('✘').count(), 0, 'no red crosses for optional features');
  await shot('host');

  // API keys: create (shown once), delete.
  await page.getByRole('link', { name: 'API keys' }).click();
  await page.getByTestId('key-name').fill('dashboard-test');
  await page.getByTestId('key-create').click();
  const keyValue = (await page.getByTestId('key-value').textContent()) ?? '';
  assert.match(keyValue, /^e2b_[0-9a-f]{40}$/);
  await page.getByTestId('key-table').getByText('dashboard-test').waitFor();
  await shot('keys');
  const keyRow = page.getByTestId('key-table').locator('tr', { hasText: 'dashboard-test' });
  await keyRow.getByRole('button', { name: 'Delete' }).click();
  await keyRow.getByRole('button', { name: /Delete: clients/ }).click();
  await keyRow.waitFor({ state: 'detached' });

  // Destroy (two clicks) and see it leave the list.
  await page.getByRole('link', { name: 'Sandboxes' }).first().click();
  await page.getByTestId(`destroy-${id}`).click();
  await page.getByTestId(`confirm-destroy-${id}`).click();
  await row.waitFor({ state: 'detached', timeout: 120_000 });
  await shot('sandboxes-destroyed');
  // History: ended sandboxes on request.
  await page.getByTestId('show-ended').check();
  await page.locator(`[data-testid="row-${id}"][data-state="destroyed"]`).waitFor();
  await shot('sandboxes-history');

  assert.deepEqual(consoleErrors, [], 'no console errors');
});
