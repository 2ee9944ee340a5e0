import { createReadStream, createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { Sandbox } from '../../sdk/index.js';
import { UsageError } from '../output.js';

const USAGE = 'usage: hearth cp <local-file|-> <id>:<path>   or   hearth cp <id>:<path> <local-file|->';

/** A `<sandbox id>:<path>` operand, or null for a local one. */
function remote(arg: string): { id: string; path: string } | null {
  const m = /^(i?[a-z0-9]{1,64}):(.+)$/.exec(arg);
  return m ? { id: m[1]!, path: m[2]! } : null;
}

/** `hearth cp`: copy a file into or out of a sandbox, streamed both ways (- is stdin/stdout). */
export async function cpCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { user: { type: 'string', short: 'u' } } });
  const [from, to] = positionals;
  if (!from || !to || positionals.length !== 2) throw new UsageError(USAGE);
  const src = remote(from);
  const dst = remote(to);
  if ((src && dst) || (!src && !dst)) throw new UsageError(`exactly one side must be <id>:<path>\n${USAGE}`);
  const opts = values.user ? { user: values.user } : {};
  if (dst) {
    const sbx = await Sandbox.connect(dst.id, opts);
    await sbx.files.write(dst.path, from === '-' ? process.stdin : createReadStream(from));
  } else {
    const sbx = await Sandbox.connect(src!.id, opts);
    await pipeline(await sbx.files.read(src!.path, { format: 'stream' }), to === '-' ? process.stdout : createWriteStream(to));
  }
  return 0;
}
