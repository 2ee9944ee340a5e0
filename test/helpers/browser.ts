/**
 * Debian's Chromium for the browser tests (playwright-core; `HEARTH_CHROMIUM` overrides
 * /usr/bin/chromium): a headless persistent context in a temp profile, one page, and every
 * console error and page error it reports collected in `errors` (tests assert it is empty).
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type ConsoleMessage, type Page } from 'playwright-core';
import { PACKAGE_ROOT } from '../../src/paths.js';

export const CHROMIUM = process.env['HEARTH_CHROMIUM'] ?? '/usr/bin/chromium';
export const ARTIFACTS = join(PACKAGE_ROOT, 'test-artifacts');

export interface TestBrowser {
  ctx: BrowserContext;
  page: Page;
  /** Console errors and page errors, in order, except those `ignore` accepted. */
  errors: string[];
  /** A full-page screenshot in test-artifacts/<prefix>-<name>.png. */
  shot(name: string): Promise<void>;
  close(): Promise<void>;
}

export async function launchBrowser(opts: {
  /** Screenshot file prefix. */
  prefix: string;
  viewport?: { width: number; height: number };
  acceptDownloads?: boolean;
  /** Console messages a test expects (an HTTP error the page shows on purpose): not counted as errors. */
  ignore?: (m: ConsoleMessage) => boolean;
}): Promise<TestBrowser> {
  if (!existsSync(join(PACKAGE_ROOT, 'dist', 'web', 'index.html'))) throw new Error('dist/web missing: run npm run build:web first');
  await mkdir(ARTIFACTS, { recursive: true });
  const profile = await mkdtemp(join(tmpdir(), 'hearth-chromium-'));
  let ctx: BrowserContext;
  try {
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM, headless: true, viewport: opts.viewport ?? { width: 1280, height: 900 }, acceptDownloads: opts.acceptDownloads ?? false,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  } catch (e) {
    await rm(profile, { recursive: true, force: true });
    throw e;
  }
  const page = ctx.pages()[0] ?? await ctx.newPage();
  const errors: string[] = [];
  page.on('console', (m) => { if (m.type() === 'error' && !opts.ignore?.(m)) errors.push(`console.error: ${m.text()} @ ${m.location().url}`); });
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  return {
    ctx, page, errors,
    shot: async (name) => { await page.screenshot({ path: join(ARTIFACTS, `${opts.prefix}-${name}.png`), fullPage: true }); },
    close: async () => {
      await ctx.close().catch(() => undefined);
      await rm(profile, { recursive: true, force: true });
    },
  };
}
