import { parseArgs } from 'node:util';
import { once } from 'node:events';
import { TimeoutError } from '../../sdk/index.js';
import { parseKeyValues, printJson, UsageError } from '../output.js';
import { attach, resolveSandboxId } from '../resolve.js';

const USAGE = 'usage: hearth exec [--env K=V]... [--cwd DIR] [--user U] [--timeout SECONDS] [--shell] <id> -- <cmd> [args...]\nSee `hearth exec --help`.';

/** Write with backpressure: a slow terminal or pipe slows the guest process, nothing piles up in memory. */
async function writeOut(stream: NodeJS.WriteStream, bytes: Uint8Array): Promise<void> {
  if (!stream.write(bytes)) await once(stream, 'drain');
}

/**
 * The guest's wrapper shell reports a missing program as `--: 1: exec: foo: not found` (its
 * $0 is the `--` before the command): say it as a shell would. Only the first stderr chunk.
 */
export function missingCommandText(text: string): string | null {
  const m = /^(?:--|sh): \d+: exec: (.+): (not found|Permission denied)\n?$/.exec(text)
    ?? /^setpriv: failed to execute (.+): (No such file or directory|Permission denied)\n?$/.exec(text);
  if (!m) return null;
  return `hearth: ${m[1]}: ${m[2] === 'Permission denied' ? 'permission denied' : 'command not found'}\n`;
}

const MISSING_PREFIXES = ['--: ', 'sh: ', 'setpriv: failed to execute '];
/** Whether `text` may be the start of the wrapper's missing-program message. */
export function mayBeMissingCommand(text: string): boolean {
  return MISSING_PREFIXES.some((p) => text.startsWith(p) || p.startsWith(text));
}

/**
 * Runs a process in the sandbox, streaming its stdout and stderr as they come;
 * our stdin (when it is not a terminal) is forwarded; exits with its exit code
 * (124 when --timeout killed it, 130 after Ctrl-C, as shells and timeout(1) do).
 */
export async function execCommand(argv: string[]): Promise<number> {
  const dash = argv.indexOf('--');
  const before = dash >= 0 ? argv.slice(0, dash) : argv;
  const cmd = dash >= 0 ? argv.slice(dash + 1) : [];
  const { values, positionals } = parseArgs({ args: before, allowPositionals: true, options: {
    env: { type: 'string', short: 'e', multiple: true }, cwd: { type: 'string' }, user: { type: 'string', short: 'u' },
    timeout: { type: 'string' }, shell: { type: 'boolean' }, json: { type: 'boolean' },
  } });
  // `hearth exec <id> cmd args` without `--`: take the words after the id as the command.
  const words = dash >= 0 ? cmd : positionals.slice(1);
  const idArg = positionals[0];
  if (!idArg || words.length === 0 || (dash >= 0 && positionals.length > 1)) throw new UsageError(USAGE);
  if (values.timeout !== undefined && !/^\d+$/.test(values.timeout)) throw new UsageError(`--timeout expects seconds, got "${values.timeout}"`);
  const id = await resolveSandboxId(idArg);
  const sbx = await attach(id, { user: values.user, work: true });
  const forwardStdin = !process.stdin.isTTY;
  const timeoutMs = values.timeout ? Number(values.timeout) * 1000 : 0;
  const json = values.json === true;
  // The first line of stderr is held until it is complete (the shell writes its error in pieces).
  let firstErr: Buffer | null = Buffer.alloc(0);
  const flushFirstErr = async (): Promise<void> => {
    if (!firstErr) return;
    const held = firstErr;
    firstErr = null;
    const nl = held.indexOf(10);
    const line = nl >= 0 ? held.subarray(0, nl + 1) : held;
    const missing = missingCommandText(line.toString('utf8'));
    await writeOut(process.stderr, missing ? Buffer.concat([Buffer.from(missing), held.subarray(line.length)]) : held);
  };
  const out = { stdout: '', stderr: '' };
  const dec = { stdout: new TextDecoder(), stderr: new TextDecoder() };
  const handle = await sbx.commands.run(values.shell ? words.join(' ') : words, {
    background: true,
    collect: false,
    stdin: forwardStdin,
    envs: parseKeyValues(values.env, '--env'),
    ...(values.cwd ? { cwd: values.cwd } : {}),
    timeoutMs,
    onData: (stream, bytes) => {
      if (json) { out[stream] += dec[stream].decode(bytes, { stream: true }); return undefined; }
      if (stream === 'stderr' && firstErr) {
        firstErr = Buffer.concat([firstErr, bytes]);
        // Held only while it can still be that message, and never for long (progress bars on stderr).
        if (firstErr.includes(10) || firstErr.length > 4096 || !mayBeMissingCommand(firstErr.toString('utf8'))) return flushFirstErr();
        setTimeout(() => { void flushFirstErr(); }, 200).unref();
        return undefined;
      }
      return writeOut(stream === 'stdout' ? process.stdout : process.stderr, bytes);
    },
  });
  let interrupted = false;
  const onInt = (): void => { interrupted = true; void handle.kill().catch(() => undefined); };
  const onTerm = (): void => { void handle.kill().catch(() => undefined); };
  process.once('SIGINT', onInt);
  process.once('SIGTERM', onTerm);
  if (forwardStdin) {
    void (async () => {
      try {
        for await (const chunk of process.stdin) await handle.sendStdin(chunk as Buffer);
        await handle.closeStdin();
      } catch { /* the process may have exited first */ }
    })();
  }
  const t0 = performance.now();
  let code: number;
  let timedOut = false;
  try {
    const result = await handle.result();
    timedOut = timeoutMs > 0 && result.exitCode < 0 && performance.now() - t0 >= timeoutMs - 500;
    // Killed by a signal: the agent reports -1; use the shell's 128+9 convention.
    code = interrupted ? 130 : timedOut ? 124 : result.exitCode < 0 ? 137 : result.exitCode;
  } catch (err) {
    if (interrupted) code = 130;
    else if (err instanceof TimeoutError && timeoutMs > 0) { timedOut = true; code = 124; void handle.kill().catch(() => undefined); }
    else throw err;
  } finally {
    await flushFirstErr();
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
    if (forwardStdin) process.stdin.destroy();
  }
  if (json) printJson({ sandboxID: id, pid: handle.pid, exitCode: code, stdout: out.stdout, stderr: out.stderr, ...(timedOut ? { timedOut: true } : {}), ...(interrupted ? { interrupted: true } : {}) });
  else if (timedOut) process.stderr.write(`hearth: the command was killed after its --timeout of ${values.timeout} s\n`);
  else if (interrupted) process.stderr.write('hearth: interrupted; the command was killed\n');
  return code;
}
