import { parseArgs } from 'node:util';
import { once } from 'node:events';
import { parseKeyValues, UsageError } from '../output.js';
import { attach, resolveSandboxId } from '../resolve.js';
import { execCommand } from './exec.js';

const USAGE = 'usage: hearth shell [-t|-T] [--env K=V]... [--cwd DIR] [--user U] <id> [-- <cmd> [args...]]\nSee `hearth shell --help`.';

/**
 * An interactive terminal in a sandbox (a login shell, or the given command, on a PTY). With a
 * terminal on stdin it is put in raw mode (keys such as Ctrl-C go to the sandbox) and window
 * size changes are forwarded. Like ssh and docker, a PTY is allocated only when stdin is a
 * terminal (or with -t): piped input runs the shell (`bash -l`, reading commands from stdin) or
 * the command without one, as `hearth exec` does. With -t and piped stdin, its end sends Ctrl-D.
 * Exits with the shell's exit code (137 if it was killed).
 */
export async function shellCommand(argv: string[]): Promise<number> {
  const dash = argv.indexOf('--');
  const before = dash >= 0 ? argv.slice(0, dash) : argv;
  const cmd = dash >= 0 ? argv.slice(dash + 1) : [];
  const { values, positionals } = parseArgs({ args: before, allowPositionals: true, options: {
    env: { type: 'string', short: 'e', multiple: true }, cwd: { type: 'string' }, user: { type: 'string', short: 'u' },
    tty: { type: 'boolean', short: 't' }, 'no-tty': { type: 'boolean', short: 'T' },
  } });
  const idArg = positionals[0];
  if (!idArg || positionals.length > 1) throw new UsageError(USAGE);
  if (values.tty && values['no-tty']) throw new UsageError('-t and -T contradict each other');
  const wantPty = values.tty === true || (values['no-tty'] !== true && process.stdin.isTTY === true);
  if (!wantPty) {
    // No terminal: the same as exec, with a login shell reading stdin when no command is given.
    const opts = [...(values.env ?? []).flatMap((e) => ['--env', e]), ...(values.cwd ? ['--cwd', values.cwd] : []), ...(values.user ? ['--user', values.user] : [])];
    return execCommand([...opts, idArg, '--', ...(cmd.length ? cmd : ['/bin/bash', '-l'])]);
  }
  const id = await resolveSandboxId(idArg);
  const sbx = await attach(id, { user: values.user, work: true });

  const stdin = process.stdin;
  const stdout = process.stdout;
  const tty = stdin.isTTY === true && stdout.isTTY === true;
  const size = () => ({ cols: stdout.columns || 80, rows: stdout.rows || 24 });
  const handle = await sbx.pty.create({
    ...(tty ? size() : { cols: 80, rows: 24 }),
    envs: parseKeyValues(values.env, '--env'), // TERM=xterm-256color unless --env TERM=…
    ...(values.cwd ? { cwd: values.cwd } : {}),
    ...(cmd.length > 0 ? { cmd: cmd[0]!, args: cmd.slice(1) } : {}),
    onData: async (bytes) => {
      if (!stdout.write(bytes)) await once(stdout, 'drain');
    },
  });

  // Input in order: each chunk waits for the previous one to be delivered.
  let inputChain: Promise<void> = Promise.resolve();
  const send = (data: Uint8Array | string): void => {
    inputChain = inputChain.then(() => handle.sendInput(data)).catch(() => undefined);
  };
  const onInput = (chunk: Buffer): void => send(chunk);
  const onEnd = (): void => send('\x04');
  const onResize = (): void => { void handle.resize(size()).catch(() => undefined); };
  const onSignal = (): void => { void handle.kill(); };

  if (tty) {
    stdin.setRawMode(true);
    stdout.on('resize', onResize); // Node listens for SIGWINCH on TTY streams
  }
  stdin.on('data', onInput);
  if (!tty) stdin.once('end', onEnd);
  stdin.resume();
  process.once('SIGTERM', onSignal);
  process.once('SIGHUP', onSignal);

  try {
    const result = await handle.wait();
    if (!result) return 1;
    return result.exitCode < 0 ? 137 : result.exitCode;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGHUP', onSignal);
    stdin.off('data', onInput);
    stdin.off('end', onEnd);
    if (tty) {
      stdout.off('resize', onResize);
      stdin.setRawMode(false);
    }
    stdin.pause();
    stdin.destroy();
  }
}
