/**
 * The dashboard's observability (issue #16) in Debian's Chromium against a real hearthd and
 * one real VM: the sandbox list updates from the event stream (no 1.5 s polling: a sandbox
 * created through the API shows up, and goes once destroyed, well within the 30 s fallback
 * poll); the detail page shows resource charts whose CPU rises while the guest runs a CPU
 * loop, and a live log panel with a line the guest printed to its console. Screenshots:
 * test-artifacts/observe-*.png. Any console or page error fails the test.
 *
 *   npm run build && HEARTH_IMAGE_DIR=/var/lib/hearth HEARTH_TEST_TMP=/var/tmp \
 *     node --import tsx --test --test-timeout=600000 test/browser/observe.test.ts
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { Sandbox } from '../../src/sdk/index.js';

const CHROMIUM = process.env['HEARTH_CHROMIUM'] ?? '/usr/bin/chromium';
const ARTIFACTS = join(PACKAGE_ROOT, 'test-artifacts');

let d: TestDaemon;
let ctx: BrowserContext;
let page: Page;
let profile: string;
const pageErrors: string[] = [];

const shot = (name: string) => page.screenshot({ path: join(ARTIFACTS, `observe-${name}.png`), fullPage: true });

before(async () => {
  if (!existsSync(join(PACKAGE_ROOT, 'dist', 'web', 'index.html'))) throw new Error('dist/web missing: run npm run build:web first');
  await mkdir(ARTIFACTS, { recursive: true });
  d = await startTestDaemon();
  profile = await mkdtemp(join(tmpdir(), 'hearth-chromium-'));
  ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, viewport: { width: 1280, height: 900 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  page = ctx.pages()[0] ?? await ctx.newPage();
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(`console.error: ${m.text()} @ ${m.location().url}`); });
  page.on('pageerror', (e) => pageErrors.push(`page error: ${e.message}`));
});

after(async () => {
  await ctx?.close().catch(() => undefined);
  if (profile) await rm(profile, { recursive: true, force: true });
  await d?.stop();
});

test('dashboard: the list follows the event stream; the detail page shows CPU rising on its charts and the guest\'s console line in its live logs', { timeout: 600_000 }, async () => {
  await page.goto(`${d.url}/ui/sandboxes`);
  await page.getByTestId('list-live').getByText('live (event stream)').waitFor({ timeout: 30_000 });
  await d.manager.settled();

  // Created through the API: the row appears from the event, not from a poll (30 s while streaming).
  const sbx = await Sandbox.create({ url: d.url, metadata: { suite: 'observe' } });
  const t0 = Date.now();
  await page.locator(`[data-testid="row-${sbx.id}"][data-state="running"]`).waitFor({ timeout: 10_000 });
  const appearedMs = Date.now() - t0;
  process.stderr.write(`row appeared ${appearedMs} ms after the create returned\n`);
  await shot('list');

  await page.getByTestId(`row-${sbx.id}`).getByRole('link', { name: sbx.id }).click();
  await page.waitForURL(`**/ui/sandboxes/${sbx.id}`);
  await page.getByTestId('logs-live').getByText('● live').waitFor({ timeout: 30_000 });
  // The lifecycle lines of its create are there from the start.
  await page.getByTestId('logs').getByText(/create \(restore\) ok in \d+ ms/).waitFor({ timeout: 30_000 });

  const marker = `HEARTH-DASHBOARD-${randomBytes(4).toString('hex')}`;
  await sbx.commands.run(`echo "${marker} from the guest console" | sudo -n tee /dev/console > /dev/null`);
  await page.getByTestId('logs').getByText(`${marker} from the guest console`).waitFor({ timeout: 30_000 });

  await page.getByTestId('chart-cpu').waitFor({ timeout: 30_000 });
  const card = page.getByTestId('metrics-card');
  const cpuNow = async () => Number(((await page.getByTestId('chart-cpu-0').textContent()) ?? '').replace('%', ''));
  const lastSample = async () => Number(await card.getAttribute('data-last'));
  const until = async (what: string, ok: () => Promise<boolean>, ms: number) => {
    const end = Date.now() + ms;
    while (!(await ok())) { if (Date.now() > end) assert.fail(`timed out waiting for ${what}`); await page.waitForTimeout(1000); }
  };
  // Idle first (the first sample after a restore is the guest catching up), then a CPU loop.
  await until('an idle CPU sample', async () => Number(await card.getAttribute('data-samples')) >= 2 && (await cpuNow()) < 50, 60_000);
  const idle = await cpuNow();
  const loopAt = Math.floor(Date.now() / 1000);
  await sbx.commands.run('timeout 60 sh -c "while :; do :; done"', { background: true });
  await until('the CPU chart to rise', async () => (await lastSample()) > loopAt + 2 && (await cpuNow()) >= 70, 60_000);
  const cpu = await cpuNow();
  await page.waitForTimeout(6000); // one more sample: a line, not a dot
  process.stderr.write(`chart: guest CPU ${idle}% → ${cpu}%\n`);
  const hostCpu = Number(((await page.getByTestId('chart-cpu-1').textContent()) ?? '').replace('%', ''));
  assert.ok(hostCpu >= 50, `the host sees the VM process busy: ${hostCpu}%`);
  // The line of the CPU chart has points (a path with a drawing).
  assert.ok(await page.getByTestId('chart-cpu').locator('path').count() >= 1);
  await page.getByTestId('chart-mem').waitFor();
  await page.getByTestId('chart-disk').waitFor();
  // Only the console: the filter hides the lifecycle lines.
  await page.getByTestId('logs-source-hearth').uncheck();
  assert.equal(await page.getByTestId('logs').getByText(/create \(restore\) ok/).count(), 0);
  await page.getByTestId('logs-source-hearth').check();
  await shot('detail');

  // Destroyed through the API: the list drops it from the event.
  await page.goto(`${d.url}/ui/sandboxes`);
  await page.getByTestId(`row-${sbx.id}`).waitFor();
  await page.getByTestId('list-live').getByText('live (event stream)').waitFor({ timeout: 30_000 });
  await sbx.kill();
  const t1 = Date.now();
  await page.getByTestId(`row-${sbx.id}`).waitFor({ state: 'detached', timeout: 10_000 });
  process.stderr.write(`row went ${Date.now() - t1} ms after the destroy returned\n`);
  assert.deepEqual(pageErrors, []);
});
