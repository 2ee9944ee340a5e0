// Process service of the in-guest agent (docs/agent.md, "Processes"), against a real agent child process.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Code, ConnectError, type Client } from '@connectrpc/connect';
import { Process, Signal, type ProcessEvent_EndEvent, type StartResponse } from '../../src/gen/process/process_pb.js';
import { type TestAgent } from '../../src/agent/testing.js';
import { startHermeticAgent } from '../helpers/hermetic-agent.js';

interface RunResult {
  pid: number;
  stdout: string;
  stderr: string;
  end: ProcessEvent_EndEvent | undefined;
  kinds: string[];
}

async function collect(stream: AsyncIterable<{ event?: StartResponse['event'] }>): Promise<RunResult> {
  const r: RunResult = { pid: 0, stdout: '', stderr: '', end: undefined, kinds: [] };
  for await (const msg of stream) {
    const ev = msg.event?.event;
    if (!ev || ev.case === undefined) continue;
    r.kinds.push(ev.case);
    if (ev.case === 'start') r.pid = ev.value.pid;
    if (ev.case === 'data') {
      const out = ev.value.output;
      if (out.case === 'stdout') r.stdout += Buffer.from(out.value).toString();
      if (out.case === 'stderr') r.stderr += Buffer.from(out.value).toString();
    }
    if (ev.case === 'end') r.end = ev.value;
  }
  return r;
}

function bash(client: Client<typeof Process>, script: string, opts: { envs?: Record<string, string>; cwd?: string; timeoutMs?: number; stdin?: boolean; tag?: string } = {}) {
  return client.start(
    { process: { cmd: '/bin/bash', args: ['-l', '-c', script], envs: opts.envs ?? {}, cwd: opts.cwd }, stdin: opts.stdin ?? false, tag: opts.tag },
    { timeoutMs: opts.timeoutMs },
  );
}

/** Reads events until the start event and returns its pid plus the live iterator. */
async function startAndGetPid(stream: AsyncIterable<StartResponse>): Promise<{ pid: number; rest: AsyncIterator<StartResponse> }> {
  const it = stream[Symbol.asyncIterator]();
  const first = await it.next();
  assert.equal(first.done, false);
  assert.equal(first.value.event?.event.case, 'start');
  return { pid: (first.value.event!.event.value as { pid: number }).pid, rest: it };
}

async function drain(it: AsyncIterator<StartResponse>): Promise<RunResult> {
  return collect({ [Symbol.asyncIterator]: () => it });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('agent process service', () => {
  let agent: TestAgent;
  let client: Client<typeof Process>;
  let tmp: string;

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'hearth-agent-proc-'));
    agent = await startHermeticAgent();
    client = agent.processClient();
  });
  after(async () => {
    await agent?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('start → data → end in order, exit code 0 omitted from the end event', async () => {
    const r = await collect(bash(client, 'echo hello; echo oops >&2'));
    assert.equal(r.kinds[0], 'start');
    assert.equal(r.kinds.at(-1), 'end');
    assert.equal(r.kinds.filter((k) => k === 'end').length, 1);
    assert.ok(r.pid > 0);
    assert.equal(r.stdout, 'hello\n');
    assert.equal(r.stderr, 'oops\n');
    assert.equal(r.end?.exitCode, 0);
    assert.equal(r.end?.exited, true);
    assert.equal(r.end?.status, 'exit status 0');
    assert.equal(r.end?.error, undefined);
  });

  test('non-zero exit code gives error "exit status N"', async () => {
    const r = await collect(bash(client, 'exit 7'));
    assert.equal(r.end?.exitCode, 7);
    assert.equal(r.end?.exited, true);
    assert.equal(r.end?.status, 'exit status 7');
    assert.equal(r.end?.error, 'exit status 7');
  });

  test('killed by a signal gives exit code -1 and "signal: killed"', async () => {
    const r = await collect(bash(client, 'kill -9 $$'));
    assert.equal(r.end?.exitCode, -1);
    assert.equal(r.end?.exited, false);
    assert.equal(r.end?.status, 'signal: killed');
  });

  test('stdout chunks are at most 32 KiB and arrive complete', async () => {
    const stream = client.start({ process: { cmd: '/usr/bin/head', args: ['-c', '300000', '/dev/zero'] }, stdin: false });
    let total = 0;
    let biggest = 0;
    for await (const msg of stream) {
      const ev = msg.event?.event;
      if (ev?.case === 'data' && ev.value.output.case === 'stdout') {
        total += ev.value.output.value.length;
        biggest = Math.max(biggest, ev.value.output.value.length);
      }
    }
    assert.equal(total, 300000);
    assert.ok(biggest <= 32 * 1024, `chunk of ${biggest} bytes`);
  });

  test('env: sandbox env, then request envs win; request envs do not leak into later processes', async () => {
    const init = await fetch(`${agent.baseUrl}/init`, {
      method: 'POST',
      body: JSON.stringify({ envVars: { SANDBOX_ONLY: 'sb', SHARED: 'from-sandbox' } }),
    });
    assert.equal(init.status, 204);
    const r1 = await collect(bash(client, 'echo "$SANDBOX_ONLY|$SHARED|$REQ_ONLY|$HOME|$USER|$LOGNAME"', { envs: { SHARED: 'from-request', REQ_ONLY: 'r' } }));
    assert.equal(r1.stdout, 'sb|from-request|r|/root|root|root\n');
    const r2 = await collect(bash(client, 'echo "[$REQ_ONLY]|$SHARED"'));
    assert.equal(r2.stdout, '[]|from-sandbox\n');
    const env = await (await fetch(`${agent.baseUrl}/envs`)).json();
    assert.deepEqual(env, { SANDBOX_ONLY: 'sb', SHARED: 'from-sandbox' });
  });

  test('cwd: explicit, relative to home, ~, and default home', async () => {
    assert.equal((await collect(bash(client, 'pwd', { cwd: tmp }))).stdout, `${tmp}\n`);
    assert.equal((await collect(bash(client, 'pwd'))).stdout, '/root\n');
    assert.equal((await collect(bash(client, 'pwd', { cwd: '~' }))).stdout, '/root\n');
    assert.equal((await collect(bash(client, 'pwd', { cwd: '../tmp' }))).stdout, '/tmp\n');
  });

  test('a missing cwd fails the stream with invalid_argument (EndStream error, no start event)', async () => {
    const kinds: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const m of bash(client, 'pwd', { cwd: path.join(tmp, 'nope') })) kinds.push(m.event?.event.case ?? '?');
      })(),
      (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument && /does not exist/.test(e.rawMessage),
    );
    assert.deepEqual(kinds, []);
  });

  test('stdin: SendInput then CloseStdin; cat echoes and exits 0', async () => {
    const { pid, rest } = await startAndGetPid(bash(client, 'cat', { stdin: true }));
    await client.sendInput({ process: { selector: { case: 'pid', value: pid } }, input: { input: { case: 'stdin', value: Buffer.from('hello ') } } });
    await client.sendInput({ process: { selector: { case: 'pid', value: pid } }, input: { input: { case: 'stdin', value: new Uint8Array() } } });
    await client.sendInput({ process: { selector: { case: 'pid', value: pid } }, input: { input: { case: 'stdin', value: Buffer.from('world') } } });
    await client.closeStdin({ process: { selector: { case: 'pid', value: pid } } });
    const r = await drain(rest);
    assert.equal(r.stdout, 'hello world');
    assert.equal(r.end?.exitCode, 0);
  });

  test('stdin:false gives /dev/null (cat exits at once) and SendInput fails with internal', async () => {
    const { pid, rest } = await startAndGetPid(bash(client, 'sleep 0.5; cat; echo done', { stdin: false }));
    await assert.rejects(
      client.sendInput({ process: { selector: { case: 'pid', value: pid } }, input: { input: { case: 'stdin', value: Buffer.from('x') } } }),
      (e: unknown) => e instanceof ConnectError && e.code === Code.Internal,
    );
    const r = await drain(rest);
    assert.equal(r.stdout, 'done\n');
  });

  test('SendSignal SIGKILL ends the process (pid really gone) and unknown pids are not_found', async () => {
    const { pid, rest } = await startAndGetPid(bash(client, 'sleep 60'));
    assert.ok(pidAlive(pid));
    await client.sendSignal({ process: { selector: { case: 'pid', value: pid } }, signal: Signal.SIGKILL });
    assert.equal(pidAlive(pid), false, 'kill -0 must fail right after SendSignal(SIGKILL)');
    const r = await drain(rest);
    assert.equal(r.end?.exitCode, -1);
    assert.equal(r.end?.status, 'signal: killed');
    await assert.rejects(
      client.sendSignal({ process: { selector: { case: 'pid', value: 999_999_99 } }, signal: Signal.SIGKILL }),
      (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound,
    );
  });

  test('SendSignal SIGTERM terminates; other signals are unimplemented', async () => {
    const { pid, rest } = await startAndGetPid(client.start({ process: { cmd: '/bin/sleep', args: ['60'] }, stdin: false }));
    await assert.rejects(
      client.sendSignal({ process: { selector: { case: 'pid', value: pid } }, signal: Signal.UNSPECIFIED }),
      (e: unknown) => e instanceof ConnectError && e.code === Code.Unimplemented,
    );
    await client.sendSignal({ process: { selector: { case: 'pid', value: pid } }, signal: Signal.SIGTERM });
    const r = await drain(rest);
    assert.equal(r.end?.status, 'signal: terminated');
  });

  test('Connect-Timeout-Ms kills the process at the deadline', async () => {
    const started = Date.now();
    let pid = 0;
    await assert.rejects(
      (async () => {
        for await (const m of bash(client, 'sleep 30', { timeoutMs: 1000 })) {
          if (m.event?.event.case === 'start') pid = m.event.event.value.pid;
        }
      })(),
      (e: unknown) => e instanceof ConnectError && e.code === Code.DeadlineExceeded,
    );
    assert.ok(pid > 0);
    // The server-side kill happens at the same deadline; allow a moment for reaping.
    for (let i = 0; i < 50 && pidAlive(pid); i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(pidAlive(pid), false, 'process must be killed at the deadline');
    assert.ok(Date.now() - started < 5000);
    const list = await client.list({});
    assert.ok(!list.processes.some((p) => p.pid === pid));
  });

  test('client disconnect only unsubscribes; Connect reattaches by pid and by tag; List shows config', async () => {
    const ac = new AbortController();
    const marker = path.join(tmp, 'marker');
    const stream = client.start(
      { process: { cmd: '/bin/bash', args: ['-c', `read line; echo "got:$line"; echo done > ${marker}`], envs: { A: '1' }, cwd: tmp }, stdin: true, tag: 'my-tag' },
      { signal: ac.signal },
    );
    const { pid } = await startAndGetPid(stream);
    ac.abort();
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(pidAlive(pid), 'disconnect must not kill the process');

    const list = await client.list({});
    const info = list.processes.find((p) => p.pid === pid);
    assert.ok(info, 'process listed');
    assert.equal(info.tag, 'my-tag');
    assert.equal(info.config?.cmd, '/bin/bash');
    assert.deepEqual(info.config?.envs, { A: '1' });
    assert.equal(info.config?.cwd, tmp);

    const byTag = client.connect({ process: { selector: { case: 'tag', value: 'my-tag' } } });
    const it = byTag[Symbol.asyncIterator]();
    const first = await it.next();
    assert.equal(first.value?.event?.event.case, 'start');
    assert.equal((first.value?.event?.event.value as { pid: number }).pid, pid);
    await client.sendInput({ process: { selector: { case: 'pid', value: pid } }, input: { input: { case: 'stdin', value: Buffer.from('abc\n') } } });
    const r = await collect({ [Symbol.asyncIterator]: () => it });
    assert.equal(r.stdout, 'got:abc\n');
    assert.equal(r.end?.exitCode, 0);

    // Exit info is kept: a Connect after the end gets start + end.
    const again = await collect(client.connect({ process: { selector: { case: 'pid', value: pid } } }));
    assert.deepEqual(again.kinds, ['start', 'end']);
    assert.equal(again.end?.exitCode, 0);
    // But it is no longer listed as running, and signals/input find nothing (SDK kill() → false).
    assert.ok(!(await client.list({})).processes.some((p) => p.pid === pid));
    await assert.rejects(
      client.sendSignal({ process: { selector: { case: 'pid', value: pid } }, signal: Signal.SIGKILL }),
      (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound,
    );
  });

  test('Connect to an unknown pid is not_found', async () => {
    await assert.rejects(
      collect(client.connect({ process: { selector: { case: 'pid', value: 999_999_98 } } })),
      (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound,
    );
  });

  test('keepalive events are sent per Keepalive-Ping-Interval', async () => {
    const c = agent.processClient({ 'Keepalive-Ping-Interval': '0.2' });
    const r = await collect(bash(c, 'sleep 0.9; echo x'));
    assert.ok(r.kinds.filter((k) => k === 'keepalive').length >= 2, `kinds: ${r.kinds.join(',')}`);
    assert.equal(r.kinds[0], 'start');
    assert.equal(r.stdout, 'x\n');
  });

  test('Basic-auth user selects the user; unknown users are unauthenticated', async () => {
    const asRoot = agent.processClient({ Authorization: 'Basic ' + Buffer.from('root:').toString('base64') });
    const r = await collect(bash(asRoot, 'id -un'));
    assert.equal(r.stdout, 'root\n');
    const bad = agent.processClient({ Authorization: 'Basic ' + Buffer.from('no-such-user-x:').toString('base64') });
    await assert.rejects(collect(bash(bad, 'true')), (e: unknown) => e instanceof ConnectError && e.code === Code.Unauthenticated && /invalid username/.test(e.rawMessage));
  });

  test('runs as a non-root user with that user\'s HOME when one exists', async (t) => {
    let name: string;
    try {
      name = execFileSync('getent', ['passwd', 'nobody'], { encoding: 'utf8' }).split(':')[0]!;
    } catch {
      return t.skip('no nobody user');
    }
    const c = agent.processClient({ Authorization: 'Basic ' + Buffer.from(`${name}:`).toString('base64') });
    const r = await collect(bash(c, 'id -un; echo $USER', { cwd: '/' }));
    assert.equal(r.stdout, `${name}\n${name}\n`);
  });

  test('PTY sessions without the helper answer unimplemented; StreamInput is unimplemented', async () => {
    // This agent has no HEARTH_AGENT_PTY_HELPER (the default path is the guest's); agent-pty.test.ts tests PTYs.
    await assert.rejects(
      collect(client.start({ process: { cmd: '/bin/bash', args: ['-i', '-l'] }, pty: { size: { cols: 80, rows: 24 } } })),
      (e: unknown) => e instanceof ConnectError && e.code === Code.Unimplemented && /PTY sessions are not supported/.test(e.rawMessage),
    );
    await assert.rejects(
      client.streamInput((async function* () {})()),
      (e: unknown) => e instanceof ConnectError && e.code === Code.Unimplemented,
    );
  });

  test('CloseStdin and SendInput on unknown pids are not_found', async () => {
    await assert.rejects(client.closeStdin({ process: { selector: { case: 'pid', value: 999_999_97 } } }), (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound);
    await assert.rejects(
      client.sendInput({ process: { selector: { case: 'pid', value: 999_999_97 } }, input: { input: { case: 'stdin', value: Buffer.from('x') } } }),
      (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound,
    );
  });

  test('the end event arrives even if a background child keeps stdout open', async () => {
    const started = Date.now();
    const r = await collect(bash(client, 'sleep 5 & echo parent-done'));
    assert.equal(r.stdout, 'parent-done\n');
    assert.equal(r.end?.exitCode, 0);
    assert.ok(Date.now() - started < 3000, 'must not wait for the orphan');
  });
});
