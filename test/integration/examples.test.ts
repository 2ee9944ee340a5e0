import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { PACKAGE_ROOT } from '../../src/paths.js';

const run = promisify(execFile);
let d: TestDaemon;
before(async () => { d = await startTestDaemon(); await d.manager.settled(); });
after(async () => { await d?.stop(); });

async function example(name: string): Promise<string> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', join(PACKAGE_ROOT, 'examples', name)], { env: { ...process.env, HEARTH_URL: d.url }, cwd: PACKAGE_ROOT, timeout: 300_000 });
  return stdout;
}

test('examples/quickstart.ts runs', async () => {
  const out = await example('quickstart.ts');
  assert.match(out, /\[guest\] hello from Hearth/);
  assert.match(out, /exit code 0/);
  assert.match(out, /read back: written by the SDK/);
});

test('examples/pause-resume.ts runs', async () => {
  const out = await example('pause-resume.ts');
  assert.match(out, /state: paused/);
  assert.match(out, /alive: yes/);
});

test('examples/fork.ts runs', async () => {
  const out = await example('fork.ts');
  assert.match(out, /expensive setup done \| fork 0/);
  assert.match(out, /expensive setup done \| fork 1/);
});
