import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startHermeticAgent } from '../helpers/hermetic-agent.js';
import { Commands } from '../../src/sdk/commands.js';
import { envdClients } from '../../src/sdk/envd.js';
import { CommandExitError } from '../../src/sdk/errors.js';

const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

test('a finished command leaves no timer behind (its deadline is released with the call), whether it succeeded or failed', { timeout: 60_000 }, async () => {
  const agent = await startHermeticAgent();
  try {
    const cmds = new Commands(envdClients({ baseUrl: agent.baseUrl, accessToken: '' }));
    await cmds.run('true', { timeoutMs: 600_000 }); // warm up the connection pool
    await new Promise((r) => setTimeout(r, 50));
    const before = timers();
    const r = await cmds.run('echo hi', { timeoutMs: 600_000 });
    assert.equal(r.stdout, 'hi\n');
    await assert.rejects(cmds.run('exit 3', { timeoutMs: 600_000 }), CommandExitError);
    await new Promise((r2) => setTimeout(r2, 50));
    assert.ok(timers() <= before, `timers: ${before} before, ${timers()} after`);
  } finally {
    await agent.stop();
  }
});
