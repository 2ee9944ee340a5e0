/**
 * The agent tests never read or change the host's login profile (test/helpers/hermetic-agent.ts).
 *
 * The host is simulated, so that nothing of the real one is touched: an outer mount namespace
 * in which /root holds a .profile, .bash_profile, .bash_login and .bashrc, and /etc/profile and
 * /etc/bash.bashrc are files, that each print a marker. First a control: an agent started the
 * old way inside that "host" does print the markers, so the check can see a leak. Then the
 * hermetic agent inside the same "host": login, interactive and interactive login shells print
 * no marker, the "host" home gains no file (no .bash_history, nothing a command writes to ~),
 * and what a command writes to ~ lands in the agent's own home.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Client } from '@connectrpc/connect';
import type { Process } from '../../src/gen/process/process_pb.js';
import type { TestAgent } from '../../src/agent/testing.js';
import { canIsolate, startHermeticAgent, startTestAgentWithNode, SYSTEM_PROFILES, writeBindWrapper, type HermeticAgent } from '../helpers/hermetic-agent.js';

const MARKER = 'HEARTH-HOST-PROFILE-READ';
const HOME_FILES = ['.profile', '.bash_profile', '.bash_login', '.bashrc'];

interface Run { stdout: string; stderr: string; exitCode: number }

async function run(client: Client<typeof Process>, args: string[], input?: string): Promise<Run> {
  const out = { stdout: '', stderr: '', exitCode: 0 };
  const dec = new TextDecoder();
  let pid = 0;
  const stream = client.start({ process: { cmd: '/bin/bash', args, envs: {} }, stdin: input !== undefined }, { timeoutMs: 30_000 });
  for await (const m of stream) {
    const ev = m.event?.event;
    if (ev?.case === 'start') {
      pid = ev.value.pid;
      if (input !== undefined) {
        await client.sendInput({ process: { selector: { case: 'pid', value: pid } }, input: { input: { case: 'stdin', value: new TextEncoder().encode(input) } } });
      }
    } else if (ev?.case === 'data') {
      if (ev.value.output.case === 'stdout') out.stdout += dec.decode(ev.value.output.value);
      if (ev.value.output.case === 'stderr') out.stderr += dec.decode(ev.value.output.value);
    } else if (ev?.case === 'end') {
      out.exitCode = ev.value.exitCode;
    }
  }
  return out;
}

/** The shells the SDK and the dashboard start, plus an interactive one that keeps history. */
async function shells(agent: TestAgent): Promise<Run[]> {
  const c = agent.processClient();
  return [
    await run(c, ['-l', '-c', 'echo login']),
    await run(c, ['-i', '-c', 'echo interactive']),
    await run(c, ['-i', '-l', '-c', 'echo interactive-login']),
    await run(c, ['-i', '-l'], 'echo typed\nexit\n'),
    await run(c, ['-l', '-c', 'echo x > ~/hermetic-probe; echo $HOME']),
  ];
}

const skip = canIsolate() ? false : 'needs root and mount namespaces (unshare --mount)';

describe('the agent tests are hermetic', { skip }, () => {
  let dir: string;
  let hostHome: string;
  let fakeHost: string;
  let agents: TestAgent[] = [];
  /** What the simulated host's mount namespace shows in place of the real files. */
  const binds = (): [string, string][] => [[hostHome, '/root'], [path.join(dir, 'profile'), SYSTEM_PROFILES[0]], [path.join(dir, 'bash.bashrc'), SYSTEM_PROFILES[1]]];

  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'hearth-fake-host-'));
    hostHome = path.join(dir, 'root');
    // The simulated host: every profile file prints the marker and names itself.
    writeFileSync(path.join(dir, 'profile'), `echo '${MARKER} /etc/profile'\n`);
    writeFileSync(path.join(dir, 'bash.bashrc'), `echo '${MARKER} /etc/bash.bashrc'\n`);
    mkdirSync(hostHome, { mode: 0o700 });
    for (const f of HOME_FILES) writeFileSync(path.join(hostHome, f), `echo '${MARKER} ~/${f}'\n`);
    fakeHost = writeBindWrapper(path.join(dir, 'fake-host-node'), binds(), process.env.HEARTH_AGENT_TEST_NODE || process.execPath);
  });

  after(async () => {
    for (const a of agents) await a.stop();
    agents = [];
    rmSync(dir, { recursive: true, force: true });
  });

  test('control: an agent started without isolation reads the (simulated) host profile', async () => {
    const agent = await startTestAgentWithNode(fakeHost, { HOME: '/root' });
    agents.push(agent);
    const runs = await shells(agent);
    const all = runs.map((r) => r.stdout + r.stderr).join('');
    assert.match(all, new RegExp(`${MARKER} /etc/profile`));
    assert.match(all, new RegExp(`${MARKER} ~/\\.bash_profile`));
    assert.match(all, new RegExp(`${MARKER} ~/\\.bashrc`));
    assert.ok(existsSync(path.join(hostHome, 'hermetic-probe')), 'the control wrote into the host home');
    rmSync(path.join(hostHome, 'hermetic-probe'), { force: true });
    rmSync(path.join(hostHome, '.bash_history'), { force: true });
    await agent.stop();
    agents = agents.filter((a) => a !== agent);
  });

  test('the hermetic agent reads no host profile and leaves nothing in the host home', async () => {
    const before = readdirSync(hostHome).sort();
    const profiles = HOME_FILES.map((f) => readFileSync(path.join(hostHome, f), 'utf8'));
    // The simulated host outside, the hermetic namespace inside it, then node.
    const agent: HermeticAgent = await startHermeticAgent({}, { launcher: (hermetic) => writeBindWrapper(path.join(dir, 'fake-host-then-hermetic'), binds(), hermetic) });
    agents.push(agent);
    assert.equal(agent.hermetic, true);
    const runs = await shells(agent);
    for (const r of runs) {
      assert.doesNotMatch(r.stdout + r.stderr, new RegExp(MARKER), `a shell read a host profile:\n${r.stdout}${r.stderr}`);
    }
    assert.equal(runs[0]!.stdout, 'login\n');
    assert.equal(runs[2]!.stdout, 'interactive-login\n');
    assert.match(runs[3]!.stdout, /typed/);
    assert.equal(runs[4]!.stdout, '/root\n', 'HOME is still /root inside');
    // Nothing reached the host home: not the probe, not a history file, no profile changed.
    assert.deepEqual(readdirSync(hostHome).sort(), before);
    assert.deepEqual(HOME_FILES.map((f) => readFileSync(path.join(hostHome, f), 'utf8')), profiles);
    // It went to the agent's own home instead.
    assert.equal(readFileSync(path.join(agent.home!, 'hermetic-probe'), 'utf8'), 'x\n');
    const home = agent.home!;
    await agent.stop();
    agents = agents.filter((a) => a !== agent);
    assert.equal(existsSync(home), false, 'the agent\'s home is removed when it stops');
  });
});
