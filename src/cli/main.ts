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
import { configCommand } from './commands/config.js';
import { serviceCommand } from './commands/service.js';
import { eventsCommand, logsCommand } from './commands/observe.js';
import { doctorCommand, downCommand, imageCommand, storageCommand, upCommand } from './commands/daemon.js';
import { humanize, jsonError, UsageError } from './output.js';
import { canonicalWords, helpFor, topHelp } from './help.js';
import { applyUserConfig } from './user-config.js';
import { SandboxError } from '../sdk/errors.js';
import { VERSION } from '../version.js';

async function main(argv: string[]): Promise<number> {
  const help = helpFor(argv);
  if (help !== null) { process.stdout.write(`${help}\n`); return 0; }
  const [first, ...rest] = argv;
  const cmd = first === undefined ? undefined : canonicalWords([first])[0];
  if (cmd !== 'config') applyUserConfig(); // `config show` reports the sources itself
  switch (cmd) {
    case 'up': return upCommand(rest);
    case 'down': return downCommand(rest);
    case 'doctor': return doctorCommand(rest);
    case 'image': return imageCommand(rest);
    case 'storage': return storageCommand(rest);
    case 'sandbox': return sandboxCommand(rest);
    case 'exec': return execCommand(rest);
    case 'shell': return shellCommand(rest);
    case 'files': return filesCommand(rest);
    case 'snapshot': return snapshotCommand(rest);
    case 'keys': return keysCommand(rest);
    case 'template': return templateCommand(rest);
    case 'cp': return cpCommand(rest);
    case 'completion': return completionCommand(rest);
    case 'config': return configCommand(rest);
    case 'service': return serviceCommand(rest);
    case 'logs': return logsCommand(rest);
    case 'events': return eventsCommand(rest);
    case 'version': process.stdout.write(rest.includes('--json') ? `${JSON.stringify({ version: VERSION })}\n` : `${VERSION}\n`); return 0;
    case undefined: process.stderr.write(`${topHelp()}\n`); return 2;
    default: throw new UsageError(`unknown command "${first}"; \`hearth --help\` lists them`);
  }
}

/** Exit once our output is flushed; idle keep-alive sockets must not hold the process open. */
function exit(code: number): void {
  process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
}

const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
const json = (dash >= 0 ? argv.slice(0, dash) : argv).includes('--json');

function fail(err: unknown, code: number, text: string): void {
  process.stderr.write(json ? `${jsonError(err, code)}\n` : `${text}\n`);
  exit(code);
}

main(argv).then(
  (code) => { exit(code); },
  (err: unknown) => {
    if (err instanceof UsageError) { fail(err, err.exitCode, humanize(err.message)); return; }
    if (err instanceof SandboxError) { fail(err, 1, `error: ${humanize(err.message)}`); return; }
    const code = (err as { code?: string }).code;
    if (code?.startsWith('ERR_PARSE_ARGS')) {
      const words = argv.filter((w) => !w.startsWith('-')).slice(0, 2).join(' ');
      fail(err, 2, `${(err as Error).message.replace(/\. To specify a positional argument.*$/s, '')}\nSee \`hearth ${words} --help\`.`);
      return;
    }
    if (code === 'ENOENT' || code === 'EACCES' || code === 'EISDIR') { fail(err, 1, `error: ${(err as Error).message}`); return; }
    fail(err, 1, `error: ${(err as Error).stack ?? String(err)}`);
  },
);
