import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Sandbox, CommandExitError, NotFoundError, TimeoutError, InvalidArgumentError } from '../../src/sdk/index.js';
import { alive, startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { PACKAGE_ROOT } from '../../src/paths.js';

const execFileP = promisify(execFile);

describe('real sandboxes under QEMU', () => {
  let d: TestDaemon;
  let sbx: Sandbox;

  before(async () => {
    d = await startTestDaemon();
    sbx = await Sandbox.create({ url: d.url, envs: { SANDBOX_GLOBAL: 'from-create' }, metadata: { suite: 'sandbox.test' } });
  });

  after(async () => { await d?.stop(); });

  test('create returns a running sandbox with its lifecycle timings', async () => {
    const info = await sbx.getInfo();
    assert.equal(info.state, 'running');
    assert.equal(info.templateID, 'base');
    assert.deepEqual(info.metadata, { suite: 'sandbox.test' });
    assert.deepEqual(info.timings?.steps.map((s) => s.step), ['slot', 'disk', 'memory', 'restore', 'agent', 'init'], 'restored from the warm template');
    assert.ok(info.vmm && alive(info.vmm.pid), 'the QEMU process is running');
    assert.ok((info.diskUsageBytes ?? 0) > 0, 'disk usage is reported from allocated blocks');
    if (process.env['HEARTH_EXPECT_REFLINK'] === '1') {
      const doctor = await (await fetch(`${d.url}/doctor`)).json() as { chosen: { storage: string } };
      assert.equal(doctor.chosen.storage, 'reflink', 'CI runs sandboxes on reflink disks');
    }
  });

  test('exec runs a real Linux process and returns its output and exit code', async () => {
    const r = await sbx.commands.run(['uname', '-a']);
    assert.match(r.stdout, /^Linux .*x86_64/);
    assert.equal(r.exitCode, 0);
    const root = await sbx.commands.run('cat /proc/1/comm; id -un');
    assert.ok(root.stdout.split('\n')[1] === 'user', `default user is "user": ${root.stdout}`);
  });

  test('a non-zero exit code and stderr come back separately', async () => {
    await assert.rejects(sbx.commands.run('echo out; echo err >&2; exit 3'), (e: unknown) => {
      assert.ok(e instanceof CommandExitError);
      assert.equal(e.exitCode, 3);
      assert.equal(e.stdout, 'out\n');
      assert.equal(e.stderr, 'err\n');
      return true;
    });
  });

  test('env: sandbox-wide vars from create, per-command vars, and no leak between commands', async () => {
    const a = await sbx.commands.run('echo "$SANDBOX_GLOBAL/$ONLY_HERE"', { envs: { ONLY_HERE: 'x' } });
    assert.equal(a.stdout, 'from-create/x\n');
    const b = await sbx.commands.run('echo "[$ONLY_HERE]"');
    assert.equal(b.stdout, '[]\n');
  });

  test('cwd is honoured, and a missing cwd is a clear error', async () => {
    assert.equal((await sbx.commands.run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n');
    await assert.rejects(sbx.commands.run('pwd', { cwd: '/no/such/dir' }), InvalidArgumentError);
  });

  test('stdin is delivered and closing it ends the process', async () => {
    const h = await sbx.commands.run(['cat'], { background: true, stdin: true });
    await h.sendStdin('hello ');
    await h.sendStdin(new TextEncoder().encode('stdin\n'));
    await h.closeStdin();
    const r = await h.wait();
    assert.equal(r.stdout, 'hello stdin\n');
  });

  test('a command that outlives its timeout is killed', async () => {
    const t0 = Date.now();
    await assert.rejects(sbx.commands.run('sleep 30', { timeoutMs: 1500 }), TimeoutError);
    assert.ok(Date.now() - t0 < 10_000);
    const ps = await sbx.commands.run('pgrep -x sleep || true');
    assert.equal(ps.stdout.trim(), '', 'sleep must be gone after the timeout');
  });

  test('kill ends a running process', async () => {
    const h = await sbx.commands.run('sleep 100', { background: true, timeoutMs: 0 });
    assert.equal(await h.kill(), true);
    const r = await h.result();
    assert.equal(r.exitCode, -1);
    const check = await sbx.commands.run(`kill -0 ${h.pid} 2>/dev/null && echo alive || echo gone`);
    assert.equal(check.stdout, 'gone\n');
  });

  test('output streams as it is produced, in order', async () => {
    const chunks: { text: string; at: number }[] = [];
    const t0 = Date.now();
    const r = await sbx.commands.run('echo first; sleep 2; echo second', { onStdout: (text) => { chunks.push({ text, at: Date.now() - t0 }); } });
    const end = Date.now() - t0;
    assert.equal(r.stdout, 'first\nsecond\n');
    const first = chunks.find((c) => c.text.includes('first'));
    assert.ok(first, 'first chunk seen');
    assert.ok(end - first.at >= 1500, `"first" arrived ${first.at} ms after start but the command ended at ${end} ms: not streamed`);
  });

  test('200 MB of output streams through without piling up in the daemon', async () => {
    let bytes = 0;
    const rss0 = process.memoryUsage().rss;
    let peak = rss0;
    const r = await sbx.commands.run('head -c 200000000 /dev/zero', {
      collect: false, timeoutMs: 300_000,
      onData: (_s, b) => { bytes += b.length; peak = Math.max(peak, process.memoryUsage().rss); },
    });
    assert.equal(r.exitCode, 0);
    assert.equal(bytes, 200_000_000);
    assert.ok(peak - rss0 < 150 * 1024 * 1024, `RSS grew by ${Math.round((peak - rss0) / 1048576)} MiB`);
  });

  test('files: a 50 MB streamed round trip keeps its checksum', async () => {
    const data = randomBytes(50 * 1024 * 1024);
    const sum = createHash('sha256').update(data).digest('hex');
    await sbx.files.write('/tmp/big.bin', Readable.from([data.subarray(0, 20e6), data.subarray(20e6)]));
    const guestSum = await sbx.commands.run('sha256sum /tmp/big.bin | cut -d" " -f1');
    assert.equal(guestSum.stdout.trim(), sum);
    const back = createHash('sha256');
    for await (const chunk of await sbx.files.read('/tmp/big.bin', { format: 'stream' })) back.update(chunk as Buffer);
    assert.equal(back.digest('hex'), sum);
  });

  test('files: list, stat, mkdir, rename, remove', async () => {
    assert.equal(await sbx.files.makeDir('/tmp/dir/sub'), true);
    assert.equal(await sbx.files.makeDir('/tmp/dir/sub'), false);
    await sbx.files.write('/tmp/dir/a.txt', 'hello');
    const st = await sbx.files.stat('/tmp/dir/a.txt');
    assert.equal(st.type, 'file');
    assert.equal(st.size, 5);
    const names = (await sbx.files.list('/tmp/dir', { depth: 2 })).map((e) => e.path);
    assert.deepEqual(names, ['/tmp/dir/a.txt', '/tmp/dir/sub']);
    await sbx.files.rename('/tmp/dir/a.txt', '/tmp/dir/sub/b.txt');
    assert.equal(await sbx.files.read('/tmp/dir/sub/b.txt'), 'hello');
    assert.equal(await sbx.files.exists('/tmp/dir/a.txt'), false);
    await sbx.files.remove('/tmp/dir');
    await assert.rejects(sbx.files.stat('/tmp/dir'), NotFoundError);
  });

  test('bad input: unknown sandbox 404, bad body 400 naming the field, wrong state 409', async () => {
    await assert.rejects(Sandbox.getInfo('inosuchsandbox', { url: d.url }), NotFoundError);
    const res = await fetch(`${d.url}/sandboxes`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ templateID: 'base', memoryMB: 'lots' }) });
    assert.equal(res.status, 400);
    const body = await res.json() as { code: number; message: string };
    assert.equal(body.code, 400);
    assert.match(body.message, /memoryMB/);
    const bad = await fetch(`${d.url}/sandboxes`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{not json' });
    assert.equal(bad.status, 400);
    await assert.rejects(Sandbox.create({ url: d.url, template: 'nosuch' }), NotFoundError);
    await assert.rejects(Sandbox.create({ url: d.url, memoryMb: 999999 }), InvalidArgumentError);
    const unknownRoute = await fetch(`${d.url}/nope`);
    assert.equal(unknownRoute.status, 404);
    assert.equal(d.manager.list().filter((s) => s.state === 'creating').length, 0, 'no half-made sandbox');
  });

  test('the CLI runs a command and exits with its status', async () => {
    const env = { ...process.env, HEARTH_URL: d.url };
    const cli = join(PACKAGE_ROOT, 'bin', 'hearth');
    const ok = await execFileP(cli, ['exec', sbx.id, '--', 'uname', '-s'], { env });
    assert.equal(ok.stdout, 'Linux\n');
    await assert.rejects(execFileP(cli, ['exec', sbx.id, '--', 'sh', '-c', 'echo e >&2; exit 7'], { env }), (e: { code: number; stderr: string }) => e.code === 7 && e.stderr === 'e\n');
    const ls = await execFileP(cli, ['sandbox', 'ls', '--json'], { env });
    assert.ok((JSON.parse(ls.stdout) as { sandboxID: string }[]).some((s) => s.sandboxID === sbx.id));
    const piped = await execFileP('sh', ['-c', `printf 'a\\nb\\n' | "${cli}" exec ${sbx.id} -- wc -l`], { env });
    assert.equal(piped.stdout.trim(), '2');
    await execFileP('sh', ['-c', `echo copied | "${cli}" cp - ${sbx.id}:/tmp/cp.txt`], { env });
    const back = await execFileP(cli, ['cp', `${sbx.id}:/tmp/cp.txt`, '-'], { env });
    assert.equal(back.stdout, 'copied\n');
    await assert.rejects(execFileP(cli, ['cp', 'a', 'b'], { env }), (e: { code: number; stderr: string }) => e.code === 2 && /exactly one side/.test(e.stderr));
    const completion = await execFileP(cli, ['completion', 'bash'], { env });
    assert.match(completion.stdout, /complete -F _hearth hearth/);
  });

  test('destroy leaves no process, socket or file, and the sandbox says why it ended', async () => {
    const info = await sbx.getInfo();
    const pid = info.vmm!.pid;
    await sbx.kill();
    assert.equal(alive(pid), false, 'QEMU is gone');
    assert.equal(existsSync(join(d.cfg.dataDir, 'sandboxes', sbx.id)), false, 'sandbox dir is gone');
    const after = await Sandbox.getInfo(sbx.id, { url: d.url });
    assert.equal(after.state, 'destroyed');
    assert.equal(after.endReason, 'destroyed by request');
    const health = await fetch(`${d.url}/sandboxes/${sbx.id}/envd/health`);
    assert.equal(health.status, 502);
    await assert.rejects(sbx.setTimeout(1000), NotFoundError, 'a destroyed sandbox is a 404 (as in E2B)');
    await sbx.kill();
  });
});
