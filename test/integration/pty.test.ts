// PTY sessions in a real sandbox: SDK sandbox.pty over hearthd's envd proxy to the guest agent
// and its hearth-pty helper (compiled and installed by the image build), plus `hearth shell`.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Sandbox } from '../../src/sdk/index.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { Screen } from '../helpers/screen.js';

const execFileP = promisify(execFile);

describe('PTY sessions in a real sandbox', () => {
  let d: TestDaemon;
  let sbx: Sandbox;

  before(async () => {
    d = await startTestDaemon();
    sbx = await Sandbox.create({ url: d.url, metadata: { suite: 'pty.test' } });
  });

  after(async () => { await d?.stop(); });

  test('type, resize, reconnect, exit 0', async () => {
    const screen = new Screen();
    const term = await sbx.pty.create({ cols: 80, rows: 24, envs: { TERM: 'xterm-256color', FOO: 'bar42' }, onData: screen.onData });
    assert.ok(term.pid > 0);

    let mark = screen.text.length;
    await term.sendInput('echo hel""lo\n');
    await screen.waitFor(/(^|[\r\n])hello\r\n/, mark);

    mark = screen.text.length;
    await term.sendInput('tput cols; id -un\n');
    await screen.waitFor(/(^|[\r\n])80\r\nuser\r\n/, mark);

    await term.resize({ cols: 100, rows: 30 });
    mark = screen.text.length;
    await term.sendInput('tput cols; stty size\n');
    await screen.waitFor(/(^|[\r\n])100\r\n30 100\r\n/, mark);

    // Disconnect: the shell keeps running; reattach by pid.
    term.disconnect();
    assert.equal(await term.wait(), undefined);
    const screen2 = new Screen();
    const again = await sbx.pty.connect(term.pid, { onData: screen2.onData });
    assert.equal(again.pid, term.pid);
    await again.sendInput('echo $FOO\n');
    await screen2.waitFor(/bar42\r\n/);
    await again.sendInput('exit\n');
    const result = await again.wait();
    assert.deepEqual(result, { exitCode: 0 });
    assert.equal(await again.kill(), false, 'gone after exit');
  });

  test('kill ends the session with exit code -1', async () => {
    const screen = new Screen();
    const term = await sbx.pty.create({ cols: 80, rows: 24, onData: screen.onData });
    await term.sendInput('echo ready\n');
    await screen.waitFor(/(^|[\r\n])ready\r\n/);
    assert.equal(await term.kill(), true);
    const r = await term.wait();
    assert.equal(r?.exitCode, -1);
  });

  test('hearth shell forwards piped input and exits with the shell status (no PTY unless -t, as ssh)', async () => {
    const env = { ...process.env, HEARTH_URL: d.url };
    const cli = join(PACKAGE_ROOT, 'bin', 'hearth');
    const r = await execFileP('sh', ['-c', `printf 'echo from-$((6*7))\\nexit 5\\n' | "${cli}" shell ${sbx.id}; echo "rc=$?"`], { env });
    assert.equal(r.stdout, 'from-42\nrc=5\n', 'piped: a login shell without a terminal, no echo, no CR');
    const t = await execFileP('sh', ['-c', `printf 'echo from-$((6*7))\\nexit 5\\n' | "${cli}" shell -t ${sbx.id}; echo "rc=$?"`], { env });
    assert.match(t.stdout, /from-42\r\n/, '-t: on a PTY');
    assert.match(t.stdout, /rc=5\n$/);
  });
});
