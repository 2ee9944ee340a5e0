import { parseArgs } from 'node:util';
import { once } from 'node:events';
import { Sandbox } from '../../sdk/index.js';
import { parseKeyValues, UsageError } from '../output.js';

const USAGE = 'usage: hearth exec [--env K=V]... [--cwd DIR] [--user U] [--timeout SECONDS] [--shell] <id> -- <cmd> [args...]';

/** Write with backpressure: a slow terminal or pipe slows the guest process, nothing piles up in memory. */
async function writeOut(stream: NodeJS.WriteStream, bytes: Uint8Array): Promise<void> {
  if (!stream.write(bytes)) await once(stream, 'drain');
}

/**
 * Runs a process in the sandbox, streaming its stdout and stderr as they come;
 * our stdin (when it is not a terminal) is forwarded; exits with its exit code.
 */
export async function execCommand(argv: string[]): Promise<number> {
  const dash = argv.indexOf('--');
  const before = dash >= 0 ? argv.slice(0, dash) : argv;
  const cmd = dash >= 0 ? argv.slice(dash + 1) : [];
  const { values, positionals } = parseArgs({ args: before, allowPositionals: true, options: {
    env: { type: 'string', short: 'e', multiple: true }, cwd: { type: 'string' }, user: { type: 'string', short: 'u' },
    timeout: { type: 'string' }, shell: { type: 'boolean' },
  } });
  const id = positionals[0];
  if (!id || cmd.length === 0) throw new UsageError(USAGE);
  if (values.timeout !== undefined && !/^\d+$/.test(values.timeout)) throw new UsageError(`--timeout expects seconds, got "${values.timeout}"`);
  const sbx = await Sandbox.connect(id, values.user ? { user: values.user } : {});
  const forwardStdin = !process.stdin.isTTY;
  const ac = new AbortController();
  const handle = await sbx.commands.run(values.shell ? cmd.join(' ') : cmd, {
    background: true,
    collect: false,
    stdin: forwardStdin,
    envs: parseKeyValues(values.env, '--env'),
    ...(values.cwd ? { cwd: values.cwd } : {}),
    timeoutMs: values.timeout ? Number(values.timeout) * 1000 : 0,
    onData: (stream, bytes) => writeOut(stream === 'stdout' ? process.stdout : process.stderr, bytes),
    signal: ac.signal,
  });
  const onSignal = (): void => { void handle.kill(); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  if (forwardStdin) {
    void (async () => {
      try {
        for await (const chunk of process.stdin) await handle.sendStdin(chunk as Buffer);
        await handle.closeStdin();
      } catch { /* the process may have exited first */ }
    })();
  }
  const result = await handle.result();
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  if (forwardStdin) process.stdin.destroy();
  // Killed by a signal: the agent reports -1; use the shell's 128+9 convention.
  return result.exitCode < 0 ? 137 : result.exitCode;
}
