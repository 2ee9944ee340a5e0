/**
 * Everyday use (issue #17) with real VMs: the SDK's E2B-parity items (list with metadata and
 * paging, watchDir, getMetrics, commands.connect, reattach across pause/resume, a paused
 * sandbox reported as paused, Sandbox.connect resuming it) and the CLI's behaviour that needs
 * a guest (exit codes 124 and 130, a missing command, id prefixes, JSON errors, `sandbox get`,
 * `sandbox network`, `shell` without a terminal). One daemon, two small sandboxes.
 *
 *   npm run build && HEARTH_IMAGE_DIR=/var/lib/hearth HEARTH_TEST_TMP=/var/tmp \
 *     node --import tsx --test --test-timeout=600000 test/integration/cli-sdk.test.ts
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, SandboxPausedError, SandboxGoneError, type FilesystemEvent } from '../../src/sdk/index.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { PACKAGE_ROOT } from '../../src/paths.js';

interface Ran { code: number | null; stdout: string; stderr: string }

describe('everyday use: SDK parity and CLI with real sandboxes', () => {
  let d: TestDaemon;
  let a: Sandbox;
  let b: Sandbox;
  let home: string;

  /** The CLI as a user runs it (HOME and XDG_CONFIG_HOME in a temp dir: never the host user's). */
  function cli(args: string[], opts: { stdin?: string; onStdout?: (text: string, child: ReturnType<typeof spawn>) => void } = {}): Promise<Ran> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ['--import', 'tsx', join(PACKAGE_ROOT, 'src/cli/main.ts'), ...args], {
        cwd: PACKAGE_ROOT,
        env: { ...process.env, HEARTH_URL: d.url, HOME: home, XDG_CONFIG_HOME: join(home, '.config'), HEARTH_API_KEY: '' },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); opts.onStdout?.(stdout, child); });
      child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
      child.stdin.end(opts.stdin ?? '');
    });
  }

  before(async () => {
    home = await mkdtemp(join(tmpdir(), 'hearth-cli-home-'));
    d = await startTestDaemon();
    a = await Sandbox.create({ url: d.url, metadata: { suite: 'parity', role: 'a' } });
    b = await Sandbox.create({ url: d.url, metadata: { suite: 'parity', role: 'b' } });
  });

  after(async () => {
    await d?.stop();
    if (home) await rm(home, { recursive: true, force: true });
  });

  test('Sandbox.list: metadata filter and paging', async () => {
    const only = await Sandbox.list({ url: d.url, query: { metadata: { suite: 'parity', role: 'b' } } }).all();
    assert.deepEqual(only.map((s) => s.sandboxID), [b.id]);
    const pager = Sandbox.list({ url: d.url, query: { metadata: { suite: 'parity' }, state: ['running'] }, limit: 1 });
    const first = await pager.nextItems();
    assert.equal(first.length, 1);
    assert.ok(pager.hasNext, 'a second page');
    const second = await pager.nextItems();
    assert.equal(second.length, 1);
    assert.deepEqual(new Set([...first, ...second].map((s) => s.sandboxID)), new Set([a.id, b.id]));
    if (pager.hasNext) assert.deepEqual(await pager.nextItems(), []);
    assert.equal(pager.hasNext, false);
    assert.deepEqual(await Sandbox.list({ url: d.url, query: { metadata: { suite: 'nope' } } }).all(), []);
  });

  test('files.watchDir reports changes until stopped', async () => {
    await a.files.makeDir('/home/user/watched');
    const events: FilesystemEvent[] = [];
    let exited: Error | undefined | 'no' = 'no';
    const w = await a.files.watchDir('/home/user/watched', (e) => { events.push(e); }, { onExit: (err) => { exited = err; } });
    await a.files.write('/home/user/watched/new.txt', 'x');
    await a.commands.run('rm /home/user/watched/new.txt');
    const deadline = Date.now() + 30_000;
    while (!events.some((e) => e.type === 'remove') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    await w.stop();
    assert.ok(events.some((e) => e.name === 'new.txt' && e.type === 'create'), JSON.stringify(events));
    assert.ok(events.some((e) => e.name === 'new.txt' && e.type === 'remove'), JSON.stringify(events));
    assert.equal(exited, undefined, 'onExit without an error after stop()');
  });

  test('getMetrics: CPU, memory and disk of the guest', async () => {
    const m = await a.getMetrics();
    assert.ok(m.length >= 1);
    const last = m[m.length - 1]!;
    assert.ok(last.timestamp instanceof Date && !Number.isNaN(last.timestamp.getTime()));
    assert.ok(last.memTotal > 100 * 1024 * 1024, `memTotal ${last.memTotal}`);
    assert.ok(last.diskTotal > 0 && last.cpuCount >= 1);
    assert.ok(last.cpuUsedPct >= 0 && last.cpuUsedPct <= 100);
    const s = await Sandbox.getMetrics(a.id, { url: d.url });
    assert.ok(s.length >= 1);
  });

  test('commands.connect(pid) reattaches to a background process', async () => {
    const h = await a.commands.run('sleep 2; echo done-connect', { background: true, timeoutMs: 0 });
    const other = await Sandbox.connect(a.id, { url: d.url });
    const again = await other.commands.connect(h.pid);
    const r = await again.wait();
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'done-connect\n');
    await assert.rejects(other.commands.connect(999_999), { name: 'NotFoundError' });
  });

  test('pause/resume: paused is not gone, handles and connect(pid) survive, Sandbox.connect resumes', { timeout: 600_000 }, async () => {
    // Output is streamed, not kept: what a process writes while no stream is attached (between the
    // resume and the reattach) is not replayed. So it waits for a go-ahead after both are attached.
    const h = await a.commands.run('echo before; while [ ! -e /tmp/go ]; do sleep 0.2; done; echo after; exit 7', { background: true, timeoutMs: 0 });
    let screen = '';
    const term = await a.pty.create({ cols: 80, rows: 24, onData: (b) => { screen += new TextDecoder().decode(b); } });
    await new Promise((r) => setTimeout(r, 1000));
    await a.pause();
    await assert.rejects(a.commands.run('true'), (e: unknown) => {
      assert.ok(e instanceof SandboxPausedError, `got ${(e as Error).name}: ${(e as Error).message}`);
      assert.ok(!(e instanceof SandboxGoneError));
      return true;
    });
    await assert.rejects(a.files.read('/etc/hostname'), SandboxPausedError);
    assert.equal((await a.getInfo()).state, 'paused', 'still paused: nothing above resumed it');
    const resumed = await Sandbox.connect(a.id, { url: d.url });
    assert.equal(resumed.info.state, 'running');
    const viaPid = await resumed.commands.connect(h.pid);
    await new Promise((r) => setTimeout(r, 3000)); // the first handle polls the state every second at most
    await resumed.files.write('/tmp/go', '');
    const [r1, r2] = await Promise.all([h.result(), viaPid.result()]);
    assert.equal(r1.exitCode, 7);
    assert.equal(r1.stdout, 'before\nafter\n', 'the handle from before the pause sees the output after it');
    assert.equal(r2.exitCode, 7);
    assert.equal(r2.stdout, 'after\n');
    assert.equal((await resumed.commands.run('echo ok')).stdout, 'ok\n');
    // The terminal opened before the pause follows its shell after the resume.
    await term.sendInput('echo pty-$((40+2))\n');
    for (const deadline = Date.now() + 30_000; !screen.includes('pty-42') && Date.now() < deadline;) await new Promise((r) => setTimeout(r, 100));
    assert.match(screen, /pty-42/);
    await term.sendInput('exit 5\n');
    assert.equal((await term.wait())?.exitCode, 5);
  });

  test('CLI: --timeout exits 124, a missing command 127 without a stray "--", Ctrl-C 130', { timeout: 300_000 }, async () => {
    const t = await cli(['exec', '--timeout', '2', a.id, '--', 'sleep', '30']);
    assert.equal(t.code, 124, t.stderr);
    assert.match(t.stderr, /timeout/);
    const missing = await cli(['exec', a.id, '--', 'no-such-command-here']);
    assert.equal(missing.code, 127, missing.stderr);
    assert.doesNotMatch(missing.stderr, /^--:/m);
    assert.match(missing.stderr, /no-such-command-here: command not found/);
    const int = await cli(['exec', a.id, '--', 'sh', '-c', 'echo ready; sleep 60'], {
      onStdout: (text, child) => { if (text.includes('ready')) child.kill('SIGINT'); },
    });
    assert.equal(int.code, 130, int.stderr);
    const stillThere = await a.commands.run("pgrep -fx 'sleep 60' || true");
    assert.equal(stillThere.stdout.trim(), '', 'the command was killed');
  });

  test('CLI: id prefixes, JSON errors in user words, sandbox get and network, shell without a terminal', { timeout: 300_000 }, async () => {
    const everyone = await Sandbox.list({ url: d.url, query: { state: ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying', 'destroyed', 'failed'] } }).all();
    const prefix = a.id.slice(0, Math.max(0, ...everyone.filter((s) => s.sandboxID !== a.id).map((s) => commonPrefix(a.id, s.sandboxID))) + 1);
    assert.ok(prefix.length < a.id.length);
    const r = await cli(['exec', prefix, '--', 'echo', 'via-prefix']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'via-prefix\n');

    const big = await cli(['sandbox', 'create', '--cpu', '99', '--json']);
    assert.equal(big.code, 1);
    const err = JSON.parse(big.stderr.trim()) as { error: { message: string; exitCode: number; status: number } };
    assert.match(err.error.message, /--cpu must be at most 64/);
    assert.equal(err.error.status, 400);
    assert.equal(big.stdout, '');

    const gone = await cli(['sandbox', 'get', 'zzzzzzzz', '--json']);
    assert.equal(gone.code, 1);
    assert.match((JSON.parse(gone.stderr) as { error: { message: string } }).error.message, /no sandbox zzzzzzzz/);

    const get = await cli(['sandbox', 'get', b.id]);
    assert.equal(get.code, 0, get.stderr);
    assert.match(get.stdout, /^id {10}\S+$/m);
    assert.match(get.stdout, /^metadata {4}suite=parity {2}role=b$/m);
    assert.doesNotMatch(get.stdout, /[{}]/, 'no raw JSON');

    const net = await cli(['sandbox', 'network', b.id]);
    assert.equal(net.code, 0, net.stderr);
    // The test daemon has no egress interface: the CLI must not claim "internet on".
    assert.doesNotMatch(net.stdout, /^internet {2}on\b/m);
    assert.match(net.stdout, /not possible on this host|off/);

    // Files through the CLI, both ways, byte for byte.
    const local = join(home, 'up.bin');
    const data = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7) % 251));
    await writeFile(local, data);
    const put = await cli(['files', 'put', b.id, local, '/tmp/up.bin', '--json']);
    assert.equal(put.code, 0, put.stderr);
    assert.equal((JSON.parse(put.stdout) as { bytes: number }).bytes, data.length);
    const back = join(home, 'down.bin');
    const got = await cli(['cp', `${b.id}:/tmp/up.bin`, back]);
    assert.equal(got.code, 0, got.stderr);
    assert.ok((await readFile(back)).equals(data));

    // Looking at a paused sandbox leaves it paused; working in it resumes it, and says so.
    const paused = await cli(['sandbox', 'pause', b.id, '--json']);
    assert.equal(paused.code, 0, paused.stderr);
    const look = await cli(['sandbox', 'network', b.id, '--json']);
    assert.equal(look.code, 0, look.stderr);
    assert.equal((await b.getInfo()).state, 'paused');
    const work = await cli(['exec', b.id, '--', 'true']);
    assert.equal(work.code, 0, work.stderr);
    assert.match(work.stderr, /was paused; resumed it/);

    const sh = await cli(['shell', b.id], { stdin: 'echo $((6*7))\nexit 3\n' });
    assert.equal(sh.stdout, '42\n', 'no PTY: no echo of the input, no CR/LF');
    assert.equal(sh.code, 3);
  });
});

function commonPrefix(x: string, y: string): number {
  let i = 0;
  while (i < x.length && x[i] === y[i]) i++;
  return i;
}
