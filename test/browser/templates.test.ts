/**
 * Custom templates in the dashboard (issue #15), in Debian's Chromium against a real hearthd
 * and real VMs: the New template form builds `browser-t` from a one-step recipe; the build
 * page follows it live (step states, the log over SSE) to `ready`; the list shows the template
 * with its layer, its page the layer and the build; a sandbox from it has the file the step
 * wrote; Delete template is refused (409, hearthd's reason shown) while that sandbox exists
 * and works once it is gone. A second build (guest output that looks like HTML, then a long
 * sleep) is cancelled from its page: the HTML is shown as text, the build ends `cancelled`
 * and leaves no sandbox and no template. Screenshots: test-artifacts/templates-*.png. Any
 * console or page error fails the test, except the HTTP errors the test provokes on purpose.
 *
 *   npm run build && HEARTH_IMAGE_DIR=/var/lib/hearth HEARTH_TEST_TMP=/var/tmp \
 *     node --import tsx --test --test-timeout=600000 test/browser/templates.test.ts
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { launchBrowser, type TestBrowser } from '../helpers/browser.js';
import { Sandbox } from '../../src/sdk/index.js';

const BUILD = 540_000; // boot a build sandbox, run, capture, boot again for the warm snapshot: slow on a busy 2-core host
const RECIPE = '{"steps":[{"run":"echo built-by-browser > /etc/hearth-browser-test"}]}';
const HTML_LINE = '<b id="xss-probe">not bold</b>';
const SLOW_RECIPE = JSON.stringify({ steps: [{ run: `echo '${HTML_LINE}'; echo to-stderr >&2; sleep 600` }] });

let d: TestDaemon;
let b: TestBrowser;

/** HTTP errors the test provokes: the refused delete, and the template pages of a template that is not (or no longer) registered. */
const expected = (text: string, url: string): boolean => {
  const path = url ? new URL(url).pathname : '';
  return (/status of 409/.test(text) && path === '/templates/browser-t')
    || (/status of 404/.test(text) && (path === '/templates/browser-c' || path === '/templates/browser-t'));
};

before(async () => {
  d = await startTestDaemon();
  b = await launchBrowser({ prefix: 'templates', ignore: (m) => expected(m.text(), m.location().url) });
});

after(async () => {
  await b?.close();
  await d?.stop();
});

async function api<T>(path: string, init?: RequestInit): Promise<{ status: number; body: T }> {
  const r = await fetch(`${d.url}${path}`, init);
  const text = await r.text();
  return { status: r.status, body: (text ? JSON.parse(text) : undefined) as T };
}

interface Build { buildID: string; status: string; phase: string; steps: { index: number; status: string; exitCode: number | null; cached: boolean; description: string }[]; durationMs: number | null }

/** What the test touches of the page's globals (this file is compiled without the DOM types). */
interface PageGlobals { __seen?: string[]; document: { querySelector(sel: string): { getAttribute(name: string): string | null } | null } }

/** Records, in the page, every state a build step row shows (SPA navigation keeps the window). */
async function watchStep(testId: string): Promise<void> {
  await b.page.evaluate((id) => {
    const g = globalThis as unknown as PageGlobals;
    const seen: string[] = g.__seen = [];
    setInterval(() => {
      const s = g.document.querySelector(`[data-testid="${id}"]`)?.getAttribute('data-state');
      if (s && seen.at(-1) !== s) seen.push(s);
    }, 50);
  }, testId);
}
const seenStates = () => b.page.evaluate(() => (globalThis as unknown as PageGlobals).__seen ?? []);

test('dashboard: build a template from a recipe, watch it live, see its layer, use it, delete it (409 while a sandbox uses it)', { timeout: 1_200_000 }, async () => {
  const { page } = b;
  await page.goto(`${d.url}/ui/templates`);
  await page.getByTestId('tpl-row-base').waitFor({ timeout: 30_000 });
  await page.getByTestId('tpl-new').click();
  await page.getByTestId('tpl-name').fill('browser-t');
  await page.getByTestId('tpl-kind-recipe').check();
  await page.getByTestId('tpl-source').fill(RECIPE);
  await watchStep('build-step-0');
  const t0 = Date.now();
  await page.getByTestId('tpl-submit').click();
  await page.waitForURL(/\/ui\/templates\/browser-t\/builds\/[^/]+$/, { timeout: 60_000 });
  const buildID = decodeURIComponent(page.url().split('/').pop()!);
  process.stderr.write(`build ${buildID} page open ${Date.now() - t0} ms after submit\n`);

  // The log streams while the build runs: its first line arrives before the build is over.
  await page.getByTestId('build-log').locator('.log-line').first().waitFor({ timeout: BUILD });
  const stateAtFirstLine = await page.getByTestId('build-status').getAttribute('data-state');
  process.stderr.write(`first log line after ${Date.now() - t0} ms, build ${stateAtFirstLine}\n`);
  assert.equal(stateAtFirstLine, 'building', 'a log line is shown while the build is still running');
  await b.shot('building');

  await page.locator('[data-testid="build-status"][data-state="ready"]').waitFor({ timeout: BUILD });
  const buildMs = Date.now() - t0;
  process.stderr.write(`build ready in the UI ${buildMs} ms after submit; step 0 showed ${JSON.stringify(await seenStates())}\n`);
  const step = page.getByTestId('build-step-0');
  assert.equal(await step.getAttribute('data-state'), 'done');
  assert.match((await step.textContent()) ?? '', /echo built-by-browser > \/etc\/hearth-browser-test/);
  assert.equal((await step.locator('td[data-label="Exit code"]').textContent())?.trim(), '0');
  assert.ok((await seenStates()).some((s) => s === 'pending' || s === 'running'), 'the step was shown before it was done');
  // The page agrees with the API: the build, and every log line (JSON) is on the page (SSE).
  const apiBuild = await api<Build>(`/templates/browser-t/builds/${encodeURIComponent(buildID)}`);
  assert.equal(apiBuild.status, 200);
  assert.equal(apiBuild.body.status, 'ready');
  assert.equal(apiBuild.body.steps[0]?.status, 'done');
  assert.equal(apiBuild.body.steps[0]?.exitCode, 0);
  const logs = await api<{ entries: { line: string }[] }>(`/templates/browser-t/builds/${encodeURIComponent(buildID)}/logs`);
  assert.equal(logs.status, 200);
  const lines = page.getByTestId('build-log').locator('.log-line');
  assert.ok(logs.body.entries.length >= 1, 'the build logged something');
  assert.equal(await lines.count(), logs.body.entries.length, 'every log entry is on the page');
  await lines.filter({ hasText: logs.body.entries.at(-1)!.line }).first().waitFor();
  await b.shot('ready');

  // The list: the template with its one layer; its page: the layer and the build.
  await page.getByRole('link', { name: '← Templates' }).click();
  const row = page.getByTestId('tpl-row-browser-t');
  await row.waitFor({ timeout: 30_000 });
  assert.equal(await page.getByTestId('tpl-layers-browser-t').getAttribute('data-count'), '1');
  assert.equal(await row.locator('td[data-label="Source"]').textContent(), 'build');
  await b.shot('list');
  await row.getByRole('link', { name: 'browser-t' }).click();
  await page.waitForURL(/\/ui\/templates\/browser-t$/);
  await page.getByTestId('tpl-layer-0').getByText('echo built-by-browser', { exact: false }).waitFor({ timeout: 30_000 });
  const buildRow = page.getByTestId(`tpl-build-${buildID}`);
  await buildRow.waitFor();
  assert.equal(await buildRow.locator('[data-state]').getAttribute('data-state'), 'ready');
  assert.equal((await buildRow.locator('td[data-label="Cached steps"]').textContent())?.trim(), '0 of 1');
  await b.shot('detail');

  // A sandbox from it has what the step wrote.
  const t1 = Date.now();
  const sbx = await Sandbox.create({ url: d.url, template: 'browser-t' });
  process.stderr.write(`sandbox from browser-t in ${Date.now() - t1} ms\n`);
  assert.equal(await sbx.files.read('/etc/hearth-browser-test'), 'built-by-browser\n');

  // Delete while it exists: refused, with hearthd's reason on the page.
  const isDelete = (r: { url(): string; request(): { method(): string } }) => r.request().method() === 'DELETE' && new URL(r.url()).pathname === '/templates/browser-t';
  await page.getByTestId('tpl-delete').click();
  const [refused] = await Promise.all([page.waitForResponse(isDelete), page.getByTestId('confirm-tpl-delete').click()]);
  assert.equal(refused.status(), 409);
  const reason = (await refused.json() as { message: string }).message;
  process.stderr.write(`delete refused: ${reason}\n`);
  await page.getByRole('alert').filter({ hasText: reason }).waitFor({ timeout: 10_000 });
  await b.shot('delete-refused');
  assert.equal((await api(`/templates/browser-t`)).status, 200);

  await sbx.kill();
  await page.getByTestId('tpl-delete').click();
  const [deleted] = await Promise.all([page.waitForResponse(isDelete), page.getByTestId('confirm-tpl-delete').click()]);
  assert.equal(deleted.status(), 204);
  await page.waitForURL(/\/ui\/templates$/);
  await page.getByTestId('tpl-row-base').waitFor();
  assert.equal(await page.getByTestId('tpl-row-browser-t').count(), 0);
  assert.equal((await api(`/templates/browser-t`)).status, 404);
  assert.deepEqual(b.errors, []);
});

test('dashboard: a running build is cancelled from its page; guest output that looks like HTML is shown as text', { timeout: 900_000 }, async () => {
  const { page } = b;
  await page.goto(`${d.url}/ui/templates`);
  await page.getByTestId('tpl-new').click();
  await page.getByTestId('tpl-name').fill('browser-c');
  await page.getByTestId('tpl-source').fill(SLOW_RECIPE);
  await page.getByTestId('tpl-submit').click();
  await page.waitForURL(/\/ui\/templates\/browser-c\/builds\/[^/]+$/, { timeout: 60_000 });
  const buildID = decodeURIComponent(page.url().split('/').pop()!);

  await page.locator('[data-testid="build-step-0"][data-state="running"]').waitFor({ timeout: BUILD });
  const log = page.getByTestId('build-log');
  await log.getByText(HTML_LINE, { exact: true }).waitFor({ timeout: 120_000 });
  await log.locator('.stream-stderr').getByText('to-stderr').waitFor({ timeout: 30_000 });
  assert.equal(await page.locator('#xss-probe').count(), 0, 'guest output is never parsed as HTML');
  await page.getByTestId('build-log-live').getByText('● live').waitFor();
  await b.shot('running');

  const t0 = Date.now();
  await page.getByTestId('build-cancel').click();
  await page.locator('[data-testid="build-status"][data-state="cancelled"]').waitFor({ timeout: 120_000 });
  process.stderr.write(`cancelled in the UI ${Date.now() - t0} ms after the click; step 0 ${await page.getByTestId('build-step-0').getAttribute('data-state')}\n`);
  assert.equal(await page.getByTestId('build-cancel').count(), 0, 'no Cancel once it ended');
  await page.getByTestId('build-log-live').getByText('complete').waitFor({ timeout: 10_000 });
  await b.shot('cancelled');

  const apiBuild = await api<Build>(`/templates/browser-c/builds/${encodeURIComponent(buildID)}`);
  assert.equal(apiBuild.body.status, 'cancelled');
  assert.equal((await api(`/templates/browser-c`)).status, 404, 'a cancelled first build registers no template');
  await d.manager.settled();
  const live = d.manager.list().filter((s) => s.state !== 'destroyed');
  assert.deepEqual(live.map((s) => `${s.id} ${s.state}`), [], 'the build sandbox is gone');

  // Its template page (not registered) still lists the build.
  await page.getByRole('link', { name: 'browser-c' }).first().click();
  await page.waitForURL(/\/ui\/templates\/browser-c$/);
  await page.getByTestId(`tpl-build-${buildID}`).waitFor({ timeout: 30_000 });
  await page.getByTestId('tpl-unregistered').waitFor();
  assert.deepEqual(b.errors, []);
});
