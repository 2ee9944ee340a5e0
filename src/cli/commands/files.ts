import { parseArgs } from 'node:util';
import { createReadStream, createWriteStream, statSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Sandbox } from '../../sdk/index.js';
import { printJson, printTable, showProgress, transferProgress, UsageError } from '../output.js';
import { attach, resolveSandboxId } from '../resolve.js';

/** Upload `local` (a file, or - for stdin) to `path`, with progress on a terminal. */
export async function upload(sbx: Sandbox, local: string, path: string, json: boolean | undefined): Promise<{ path: string; name: string; bytes: number }> {
  const total = local === '-' ? undefined : statSync(local).size;
  const p = transferProgress(`↑ ${path}`, total, showProgress(json));
  const source = local === '-' ? process.stdin : createReadStream(local);
  source.on('error', (err: Error) => p.stream.destroy(err));
  const info = await sbx.files.write(path, source.pipe(p.stream));
  p.done();
  return { ...info, bytes: p.bytes() };
}

/** Download `path` to `local` (a file, or - for stdout), with progress on a terminal (not when writing to it). */
export async function download(sbx: Sandbox, path: string, local: string, json: boolean | undefined): Promise<{ path: string; local: string; bytes: number }> {
  const stat = await sbx.files.stat(path).catch(() => undefined);
  const p = transferProgress(`↓ ${path}`, stat?.size, local !== '-' && showProgress(json));
  await pipeline(await sbx.files.read(path, { format: 'stream' }), p.stream, local === '-' ? process.stdout : createWriteStream(local));
  p.done();
  return { path, local, bytes: p.bytes() };
}

export async function filesCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const known = ['ls', 'list', 'stat', 'cat', 'get', 'put', 'mkdir', 'rm', 'mv'];
  if (!sub) throw new UsageError('usage: hearth files <command> <id> ...; `hearth files --help` lists them');
  if (!known.includes(sub)) throw new UsageError(`unknown command "files ${sub}"; \`hearth files --help\` lists them`);
  const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: {
    depth: { type: 'string' }, user: { type: 'string', short: 'u' }, json: { type: 'boolean' },
  } });
  const [idArg, a, b] = positionals;
  const need = (n: number): void => {
    if (positionals.length < n) throw new UsageError(`hearth files ${sub}: missing arguments; see \`hearth files ${sub} --help\``);
  };
  need(2);
  const sbx = await attach(await resolveSandboxId(idArg!), { user: values.user, work: true });
  switch (sub) {
    case 'ls': case 'list': {
      if (values.depth !== undefined && !/^\d+$/.test(values.depth)) throw new UsageError(`--depth expects a whole number, got "${values.depth}"`);
      const entries = await sbx.files.list(a!, { depth: values.depth ? Number(values.depth) : 1 });
      if (values.json) printJson(entries);
      else printTable(entries.map((e) => ({ permissions: e.permissions, owner: e.owner, size: e.size, modified: e.modifiedTime?.toISOString() ?? '-', path: e.path + (e.type === 'dir' ? '/' : '') })), ['permissions', 'owner', 'size', 'modified', 'path']);
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
    case 'get': {
      need(3);
      const r = await download(sbx, a!, b!, values.json);
      if (values.json) printJson(r);
      return 0;
    }
    case 'put': {
      need(3);
      const info = await upload(sbx, a!, b!, values.json);
      if (values.json) printJson(info); else process.stdout.write(`${info.path}\n`);
      return 0;
    }
    case 'mkdir': {
      const created = await sbx.files.makeDir(a!);
      if (values.json) printJson({ path: a, created }); else if (!created) process.stderr.write(`${a} already exists\n`);
      return 0;
    }
    case 'rm': {
      await sbx.files.remove(a!);
      if (values.json) printJson({ path: a, removed: true });
      return 0;
    }
    case 'mv': {
      need(3);
      const e = await sbx.files.rename(a!, b!);
      if (values.json) printJson(e);
      return 0;
    }
    default: throw new UsageError(`unknown command "files ${sub}"`);
  }
}
