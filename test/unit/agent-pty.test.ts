// PTY sessions of the in-guest agent (docs/agent.md, "PTY sessions"), against a real agent child process
// using the hearth-pty helper compiled from native/pty/hearth-pty.c into a temp dir.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { Code, ConnectError, type Client } from '@connectrpc/connect';
import { Process, Signal, type ProcessEvent_EndEvent } from '../../src/gen/process/process_pb.js';
import { type TestAgent } from '../../src/agent/testing.js';
import { startHermeticAgent } from '../helpers/hermetic-agent.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PTY_CHUNK = 16 * 1024;

type Ev = { event?: { event: { case: string | undefined; value?: unknown } } };

/** Reads a PTY stream in the background: output text, chunk sizes, end event. */
class PtyReader {
  text = '';
  maxChunk = 0;
  pid = 0;
  end: ProcessEvent_EndEvent | undefined;
  error: unknown;
  readonly done: Promise<void>;
  private readonly started: Promise<number>;
  private waiters: (() => void)[] = [];

  constructor(stream: AsyncIterable<Ev>) {
    let gotPid!: (pid: number) => void;
    let failed!: (e: unknown) => void;
    this.started = new Promise((res, rej) => {
      gotPid = res;
      failed = rej;
    });
    this.started.catch(() => undefined);
    this.done = (async () => {
      try {
        for await (const msg of stream) {
          const ev = msg.event?.event;
          if (!ev) continue;
          if (ev.case === 'start') {
            this.pid = (ev.value as { pid: number }).pid;
            gotPid(this.pid);
          } else if (ev.case === 'data') {
            const out = (ev.value as { output: { case: string; value: Uint8Array } }).output;
            assert.equal(out.case, 'pty', 'PTY output comes as data.pty');
            this.maxChunk = Math.max(this.maxChunk, out.value.length);
            this.text += Buffer.from(out.value).toString('latin1');
          } else if (ev.case === 'end') {
            this.end = ev.value as ProcessEvent_EndEvent;
          }
          this.wake();
        }
      } catch (e) {
        this.error = e;
        failed(e);
      } finally {
        this.wake();
      }
    })();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  startPid(): Promise<number> {
    return this.started;
  }

  /** Waits until the output since `from` matches `re`; returns the match. */
  async waitFor(re: RegExp, from = 0, ms = 15_000): Promise<RegExpExecArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = re.exec(this.text.slice(from));
      if (m) return m;
      if (this.end || this.error) throw new Error(`stream ended before ${re}; output: ${JSON.stringify(this.text)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${re}; output: ${JSON.stringify(this.text)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const sel = (pid: number) => ({ selector: { case: 'pid' as const, value: pid } });
const input = (text: string) => ({ input: { case: 'pty' as const, value: Buffer.from(text) } });

describe('agent PTY sessions', () => {
  let agent: TestAgent;
  let client: Client<typeof Process>;
  let tmp: string;
  let skip: string | undefined;

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'hearth-agent-pty-'));
    const helper = path.join(tmp, 'hearth-pty');
    try {
      execFileSync('gcc', ['-static', '-Os', '-o', helper, path.join(repoRoot, 'native/pty/hearth-pty.c'), '-lutil'], { stdio: 'pipe' });
    } catch (e) {
      skip = `cannot compile the pty helper: ${(e as Error).message}`;
      return;
    }
    agent = await startHermeticAgent({ HEARTH_AGENT_PTY_HELPER: helper });
    client = agent.processClient();
  });
  after(async () => {
    await agent?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  const startShell = (opts: { cols?: number; rows?: number; envs?: Record<string, string>; signal?: AbortSignal; cmd?: string; args?: string[] } = {}) =>
    new PtyReader(
      client.start(
        {
          process: {
            cmd: opts.cmd ?? '/bin/bash',
            args: opts.args ?? ['--norc', '--noprofile', '-i'],
            envs: { TERM: 'xterm-256color', PS1: '$ ', ...opts.envs },
            cwd: tmp,
          },
          pty: { size: { cols: opts.cols ?? 80, rows: opts.rows ?? 24 } },
        },
        { signal: opts.signal },
      ),
    );

  test('echo, window size, resize → tput cols, ≤16 KiB chunks, exit code', async (t) => {
    if (skip) return t.skip(skip);
    const r = startShell({ cols: 80, rows: 24 });
    const pid = await r.startPid();
    assert.ok(pid > 0);
    await client.sendInput({ process: sel(pid), input: input('echo hel""lo; tty; stty size; tput cols\n') });
    const m = await r.waitFor(/hello\r\n(\/dev\/pts\/\d+)\r\n24 80\r\n80\r\n/);
    assert.ok(m[1]);

    await client.update({ process: sel(pid), pty: { size: { cols: 100, rows: 30 } } });
    let mark = r.text.length;
    await client.sendInput({ process: sel(pid), input: input('tput cols; tput lines\n') });
    await r.waitFor(/\r100\r\n30\r\n/, mark);

    mark = r.text.length;
    await client.sendInput({ process: sel(pid), input: input("head -c 100000 /dev/zero | tr '\\0' a; echo; echo DONE\n") });
    await r.waitFor(/\r\nDONE\r\n/, mark);
    assert.equal(r.text.slice(mark).split('a').length - 1 >= 100_000, true);
    assert.ok(r.maxChunk <= PTY_CHUNK, `chunks ≤ 16 KiB, got ${r.maxChunk}`);

    await client.sendInput({ process: sel(pid), input: input('exit 3\n') });
    await r.done;
    assert.equal(r.error, undefined);
    assert.equal(r.end?.exitCode, 3);
    assert.equal(r.end?.status, 'exit status 3');
    assert.equal(pidAlive(pid), false);
  });

  test('disconnect and reattach by pid with Connect; exit 0', async (t) => {
    if (skip) return t.skip(skip);
    const ac = new AbortController();
    const r = startShell({ envs: { FOO: 'bar42' }, signal: ac.signal });
    const pid = await r.startPid();
    await client.sendInput({ process: sel(pid), input: input('echo first\n') });
    await r.waitFor(/first\r\n/);
    ac.abort();
    await r.done;
    assert.equal(r.end, undefined);
    assert.equal(pidAlive(pid), true, 'closing the stream does not kill the PTY process');

    const list = await client.list({});
    assert.ok(list.processes.some((p) => p.pid === pid));
    const r2 = new PtyReader(client.connect({ process: sel(pid) }));
    assert.equal(await r2.startPid(), pid);
    await client.sendInput({ process: sel(pid), input: input('echo $FOO\nexit\n') });
    await r2.done;
    assert.match(r2.text, /bar42\r\n/);
    assert.equal(r2.end?.exitCode, 0);
    assert.equal(r2.end?.exited, true);
  });

  test('CloseStdin is refused, stdin input is refused, Update on a pipe process is internal', async (t) => {
    if (skip) return t.skip(skip);
    const r = startShell();
    const pid = await r.startPid();
    await assert.rejects(client.closeStdin({ process: sel(pid) }), (e: unknown) => e instanceof ConnectError && e.code === Code.Unknown);
    await assert.rejects(
      client.sendInput({ process: sel(pid), input: { input: { case: 'stdin', value: Buffer.from('x') } } }),
      (e: unknown) => e instanceof ConnectError && e.code === Code.Internal,
    );
    await assert.rejects(
      client.update({ process: sel(999_999_97), pty: { size: { cols: 10, rows: 10 } } }),
      (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound,
    );
    const pipe = client.start({ process: { cmd: '/bin/sleep', args: ['5'] }, stdin: false });
    const it = pipe[Symbol.asyncIterator]();
    const first = await it.next();
    const ppid = (first.value.event!.event.value as { pid: number }).pid;
    await assert.rejects(
      client.update({ process: sel(ppid), pty: { size: { cols: 10, rows: 10 } } }),
      (e: unknown) => e instanceof ConnectError && e.code === Code.Internal,
    );
    await client.sendSignal({ process: sel(ppid), signal: Signal.SIGKILL });
    for (let n = await it.next(); !n.done; n = await it.next()) { /* drain */ }
    // Ctrl-D ends the shell, as the CloseStdin error suggests.
    await client.sendInput({ process: sel(pid), input: input('\x04') });
    await r.done;
    assert.equal(r.end?.exitCode, 0);
  });

  test('SIGKILL ends with exit code -1 and the pid is gone', async (t) => {
    if (skip) return t.skip(skip);
    const r = startShell();
    const pid = await r.startPid();
    await client.sendInput({ process: sel(pid), input: input('echo ready\n') });
    await r.waitFor(/ready\r\n/);
    await client.sendSignal({ process: sel(pid), signal: Signal.SIGKILL });
    assert.equal(pidAlive(pid), false, 'reaped when SendSignal returns');
    await r.done;
    assert.equal(r.end?.exitCode, -1);
    assert.equal(r.end?.status, 'signal: killed');
    await assert.rejects(client.sendSignal({ process: sel(pid), signal: Signal.SIGKILL }), (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound);
  });

  test('a missing command exits 127; Connect-Timeout-Ms kills the PTY', async (t) => {
    if (skip) return t.skip(skip);
    const r = startShell({ cmd: '/nonexistent/cmd', args: [] });
    await r.done;
    assert.equal(r.end?.exitCode, 127);

    const t0 = Date.now();
    const r2 = new PtyReader(
      client.start({ process: { cmd: '/bin/sleep', args: ['30'] }, pty: { size: { cols: 80, rows: 24 } } }, { timeoutMs: 1000 }),
    );
    const pid = await r2.startPid();
    // The client gives up at the same deadline (deadline_exceeded), so check the process instead.
    await r2.done;
    while (pidAlive(pid) && Date.now() - t0 < 10_000) await new Promise((res) => setTimeout(res, 50));
    assert.equal(pidAlive(pid), false, 'killed at the deadline');
  });

  test('as another user the terminal belongs to that user', async (t) => {
    if (skip) return t.skip(skip);
    if (process.getuid?.() !== 0) return t.skip('needs root');
    let name: string;
    try {
      name = execFileSync('getent', ['passwd', 'nobody'], { encoding: 'utf8' }).split(':')[0]!;
    } catch {
      return t.skip('no nobody user');
    }
    const c = agent.processClient({ Authorization: 'Basic ' + Buffer.from(`${name}:`).toString('base64') });
    const r = new PtyReader(
      c.start({ process: { cmd: '/bin/sh', args: ['-c', 'id -un; stat -c %U "$(tty)"'], cwd: '/' }, pty: { size: { cols: 80, rows: 24 } } }),
    );
    await r.done;
    assert.equal(r.end?.exitCode, 0, r.text);
    assert.equal(r.text, `${name}\r\n${name}\r\n`);
  });
});
