/** `hearth`: the command-line interface. */
import { sandboxCommand } from './commands/sandbox.js';
import { execCommand } from './commands/exec.js';
import { shellCommand } from './commands/shell.js';
import { filesCommand } from './commands/files.js';
import { snapshotCommand } from './commands/snapshot.js';
import { keysCommand } from './commands/keys.js';
import { templateCommand } from './commands/template.js';
import { cpCommand } from './commands/cp.js';
import { completionCommand } from './commands/completion.js';
import { doctorCommand, downCommand, imageCommand, storageCommand, upCommand } from './commands/daemon.js';
import { UsageError } from './output.js';
import { SandboxError } from '../sdk/errors.js';
import { VERSION } from '../version.js';

const HELP = `hearth ${VERSION}: microVM sandboxes for untrusted code

Usage: hearth <command> [options]

Daemon:
  up [--foreground] [--port P] [--data-dir D]   build the default image if missing and start hearthd
  down                                           stop hearthd (sandboxes keep running)
  doctor                                         what this host can do and what Hearth uses
  image build                                    build (or reuse) the default guest image
  storage init                                   XFS with reflinks on a loop device for the data dir (if it lacks them)
  keys create|ls|rm                              API keys (required when hearthd listens beyond loopback)

Sandboxes:
  sandbox create|ls|get|rm|timeout               manage sandboxes (hearth sandbox help)
  sandbox pause|resume|snapshot|fork             pause/resume, capture, fork
  snapshot ls|rm                                 named snapshots
  template ls | template snapshots <id> [rm <snap>...]  templates and their warm (per-shape) snapshots
  exec <id> -- <cmd> [args...]                   run a command; streams output; exits with its code
  shell <id> [-- <cmd> [args...]]                interactive terminal (login shell); exits with its code
  files ls|stat|cat|get|put|mkdir|rm|mv          files in a sandbox (hearth files help)
  cp <local> <id>:<path> | <id>:<path> <local>   copy a file in or out (- is stdin/stdout)
  completion bash                                shell completion: source <(hearth completion bash)

Environment: HEARTH_URL (default http://127.0.0.1:3030), HEARTH_DATA_DIR, HEARTH_PORT.
Add --json to any command that prints data.`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'up': return upCommand(rest);
    case 'down': return downCommand(rest);
    case 'doctor': return doctorCommand(rest);
    case 'image': return imageCommand(rest);
    case 'storage': return storageCommand(rest);
    case 'sandbox': case 'sandboxes': case 'sb': return sandboxCommand(rest);
    case 'exec': return execCommand(rest);
    case 'shell': return shellCommand(rest);
    case 'files': return filesCommand(rest);
    case 'snapshot': case 'snapshots': return snapshotCommand(rest);
    case 'keys': return keysCommand(rest);
    case 'template': case 'templates': return templateCommand(rest);
    case 'cp': return cpCommand(rest);
    case 'completion': return completionCommand(rest);
    case 'version': case '--version': case '-v': process.stdout.write(`${VERSION}\n`); return 0;
    case undefined: case 'help': case '--help': case '-h': process.stdout.write(`${HELP}\n`); return cmd ? 0 : 2;
    default: throw new UsageError(`unknown command "${cmd}"\n\n${HELP}`);
  }
}

/** Exit once our output is flushed; idle keep-alive sockets must not hold the process open. */
function exit(code: number): void {
  process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
}

main(process.argv.slice(2)).then(
  (code) => { exit(code); },
  (err: unknown) => {
    if (err instanceof UsageError) { process.stderr.write(`${err.message}\n`); exit(err.exitCode); return; }
    if (err instanceof SandboxError) { process.stderr.write(`error: ${err.message}\n`); exit(1); return; }
    if ((err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) { process.stderr.write(`${(err as Error).message}\n`); exit(2); return; }
    process.stderr.write(`error: ${(err as Error).stack ?? String(err)}\n`);
    exit(1);
  },
);
