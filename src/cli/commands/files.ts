import { parseArgs } from 'node:util';
import { createReadStream, createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Sandbox } from '../../sdk/index.js';
import { printJson, printTable, UsageError } from '../output.js';

const HELP = `Usage: hearth files <command> <id> ...

  ls <id> <path> [--depth N]         list a directory
  stat <id> <path>                   show one entry
  cat <id> <path>                    print a file (streamed)
  get <id> <path> <local-file>       download (streamed)
  put <id> <local-file|-> <path>     upload a file, or stdin with - (streamed)
  mkdir <id> <path>                  mkdir -p
  rm <id> <path>                     rm -rf
  mv <id> <from> <to>                rename

  --user U runs as that guest user; --json prints JSON.`;

export async function filesCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (!sub || sub === 'help' || sub === '--help') { process.stdout.write(`${HELP}\n`); return sub ? 0 : 2; }
  const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: {
    depth: { type: 'string' }, user: { type: 'string', short: 'u' }, json: { type: 'boolean' },
  } });
  const [id, a, b] = positionals;
  const need = (n: number): void => { if (positionals.length < n) throw new UsageError(`hearth files ${sub}: missing arguments\n\n${HELP}`); };
  need(2);
  const sbx = await Sandbox.connect(id!, values.user ? { user: values.user } : {});
  switch (sub) {
    case 'ls': {
      const depth = values.depth ? Number(values.depth) : 1;
      const entries = await sbx.files.list(a!, { depth });
      if (values.json) printJson(entries);
      else printTable(entries.map((e) => ({ permissions: e.permissions, owner: e.owner, size: e.size, modified: e.modifiedTime?.toISOString() ?? '-', path: e.path })), ['permissions', 'owner', 'size', 'modified', 'path']);
      return 0;
    }
    case 'stat': {
      const e = await sbx.files.stat(a!);
      if (values.json) printJson(e); else for (const [k, v] of Object.entries(e)) process.stdout.write(`${k.padEnd(14)}${v instanceof Date ? v.toISOString() : String(v)}\n`);
      return 0;
    }
    case 'cat':
      await pipeline(await sbx.files.read(a!, { format: 'stream' }), process.stdout);
      return 0;
    case 'get':
      need(3);
      await pipeline(await sbx.files.read(a!, { format: 'stream' }), createWriteStream(b!));
      return 0;
    case 'put': {
      need(3);
      const info = await sbx.files.write(b!, a === '-' ? process.stdin : createReadStream(a!));
      if (values.json) printJson(info); else process.stdout.write(`${info.path}\n`);
      return 0;
    }
    case 'mkdir': {
      const created = await sbx.files.makeDir(a!);
      if (values.json) printJson({ created }); else if (!created) process.stderr.write(`${a} already exists\n`);
      return 0;
    }
    case 'rm': await sbx.files.remove(a!); return 0;
    case 'mv': {
      need(3);
      const e = await sbx.files.rename(a!, b!);
      if (values.json) printJson(e);
      return 0;
    }
    default: throw new UsageError(`unknown command "files ${sub}"\n\n${HELP}`);
  }
}
