import { parseArgs } from 'node:util';
import { printJson, UsageError } from '../output.js';
import { attach, resolveSandboxId } from '../resolve.js';
import { download, upload } from './files.js';

const USAGE = 'usage: hearth cp <local-file|-> <id>:<path>   or   hearth cp <id>:<path> <local-file|->';

/** A `<sandbox id>:<path>` operand, or null for a local one. */
function remote(arg: string): { id: string; path: string } | null {
  const m = /^([a-z0-9]{1,64}):(.+)$/.exec(arg);
  return m ? { id: m[1]!, path: m[2]! } : null;
}

/** `hearth cp`: copy a file into or out of a sandbox, streamed both ways (- is stdin/stdout). */
export async function cpCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { user: { type: 'string', short: 'u' }, json: { type: 'boolean' } } });
  const [from, to] = positionals;
  if (!from || !to || positionals.length !== 2) throw new UsageError(USAGE);
  const src = remote(from);
  const dst = remote(to);
  if ((src && dst) || (!src && !dst)) throw new UsageError(`exactly one side must be <id>:<path>\n${USAGE}`);
  const opts = values.user ? { user: values.user } : {};
  if (dst) {
    const sbx = await attach(await resolveSandboxId(dst.id), { ...opts, work: true });
    const r = await upload(sbx, from, dst.path, values.json);
    if (values.json) printJson(r);
  } else {
    const sbx = await attach(await resolveSandboxId(src!.id), { ...opts, work: true });
    const r = await download(sbx, src!.path, to, values.json);
    if (values.json && to !== '-') printJson(r);
  }
  return 0;
}
