// The agent's sys helper (`hearth-pty --sys`): /init sets the clock and reseeds the CRNG through
// one long-lived process instead of spawning `date` and perl per call (issue #14). The real helper
// is never asked to set this host's clock: clock requests go to a fake helper that logs them.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { SysHelper } from '../../src/agent/sys-helper.js';
import { startHermeticAgent, type HermeticAgent } from '../helpers/hermetic-agent.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const root = process.getuid?.() === 0;

/** A fake `<helper> --sys`: logs each request line, answers `ok` (or `err …` for "seed ff…"). */
function fakeHelper(dir: string, log: string): string {
  const p = path.join(dir, 'fake-sys');
  writeFileSync(p, `#!/bin/sh
[ "$1" = --sys ] || exit 2
while IFS= read -r line; do
  echo "$line" >> ${log}
  case "$line" in "seed ff"*) echo "err 5 seed: Input/output error" ;; die) exit 3 ;; *) echo ok ;; esac
done
`);
  chmodSync(p, 0o755);
  return p;
}

describe('sys helper', { skip: root ? false : 'the sys helper runs only as root' }, () => {
  let tmp: string;
  let log: string;
  before(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'hearth-sys-'));
    log = path.join(tmp, 'requests.log');
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  test('requests are lines, answers settle them in order; an err answer rejects with its text', async () => {
    const h = new SysHelper(fakeHelper(tmp, log));
    assert.ok(h.available);
    await h.setClock(1_700_000_000_123.5);
    await h.seed(Buffer.from([1, 2, 0xab]));
    await assert.rejects(h.seed(Buffer.from([0xff])), /seed: Input\/output error/);
    const lines = readFileSync(log, 'utf8').trim().split('\n');
    assert.deepEqual(lines, ['clock 1700000000 123500000', 'seed 0102ab', 'seed ff']);
    h.close();
    assert.equal(h.available, false);
  });

  test('a helper that dies fails what waits and turns unavailable (callers fall back)', async () => {
    const h = new SysHelper(fakeHelper(tmp, log));
    await assert.rejects((h as unknown as { request(l: string): Promise<void> }).request('die'), /exited/);
    assert.equal(h.available, false);
    await assert.rejects(h.setClock(Date.now()), /not running/);
  });

  test('missing binary or empty path: not available', () => {
    assert.equal(new SysHelper('').available, false);
    assert.equal(new SysHelper(path.join(tmp, 'nope')).available, false);
  });

  test('the real helper (native/pty/hearth-pty.c --sys) answers ping and refuses malformed requests', (t) => {
    const bin = path.join(tmp, 'hearth-pty');
    try {
      execFileSync('gcc', ['-static', '-Os', '-o', bin, path.join(repoRoot, 'native/pty/hearth-pty.c'), '-lutil'], { stdio: 'pipe' });
    } catch (e) {
      t.skip(`cannot compile the helper: ${(e as Error).message.split('\n')[0]}`);
      return;
    }
    const out = execFileSync(bin, ['--sys'], { input: 'ping\nclock -1 0\nclock 1 1000000000\nseed zz\nseed \nbogus\n' + 'x'.repeat(3000) + '\nping\n', encoding: 'utf8' });
    const lines = out.trim().split('\n');
    assert.equal(lines[0], 'ok');
    for (const l of lines.slice(1, 6)) assert.match(l, /^err 22 /);
    assert.match(lines[6]!, /^err 7 request/); // over-long line: E2BIG, and the helper carries on
    assert.equal(lines.at(-1), 'ok');
  });

  test('/init sets the clock and seeds the CRNG through the helper, never spawning date', async () => {
    const dateLog = path.join(tmp, 'date.log');
    const fakeDate = path.join(tmp, 'fake-date');
    writeFileSync(fakeDate, `#!/bin/sh\necho "$@" >> ${dateLog}\n`);
    chmodSync(fakeDate, 0o755);
    rmSync(log, { force: true });
    // HEARTH_AGENT_URANDOM stays /dev/urandom: that is when the helper seeds (the fake one only logs).
    let agent: HermeticAgent | undefined;
    try {
      agent = await startHermeticAgent({ HEARTH_AGENT_SYS_HELPER: fakeHelper(tmp, log), HEARTH_AGENT_DATE_BIN: fakeDate, HEARTH_AGENT_URANDOM: '/dev/urandom' });
      const entropy = randomBytes(64);
      const ts = new Date(Date.now() - 3600_000).toISOString();
      const res = await fetch(`${agent.baseUrl}/init`, { method: 'POST', body: JSON.stringify({ timestamp: ts, hearth: { entropy: entropy.toString('base64') } }) });
      assert.equal(res.status, 204);
      const lines = readFileSync(log, 'utf8').trim().split('\n');
      const ms = Date.parse(ts);
      assert.deepEqual(lines, [`clock ${Math.floor(ms / 1000)} ${(ms % 1000) * 1e6}`, `seed ${entropy.toString('hex')}`]);
      assert.equal(existsSync(dateLog), false, 'date must not run when the helper is there');
    } finally {
      await agent?.stop();
    }
  });

  test('warm-up: plain /health is ready at once and starts nothing; /health?warm=1 starts the warm-up and is 503 until a login shell ran through the agent\'s own request path, then 204', async () => {
    let agent: HermeticAgent | undefined;
    try {
      agent = await startHermeticAgent({ HEARTH_AGENT_WARMUP: '1' });
      assert.equal((await fetch(`${agent.baseUrl}/health`)).status, 204, 'a cold boot for a user must not wait for the warm-up');
      await new Promise((r) => setTimeout(r, 300));
      assert.doesNotMatch(agent.log(), /warm-up/, 'plain /health must not start the warm-up');
      const first = await fetch(`${agent.baseUrl}/health?warm=1`);
      assert.equal(first.status, 503);
      const deadline = Date.now() + 20_000;
      let status = first.status;
      while (status !== 204 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
        status = (await fetch(`${agent.baseUrl}/health?warm=1`)).status;
      }
      assert.equal(status, 204);
      assert.match(agent.log(), /warm-up done/);
      assert.doesNotMatch(agent.log(), /warm-up failed/);
    } finally {
      await agent?.stop();
    }
  });
});
