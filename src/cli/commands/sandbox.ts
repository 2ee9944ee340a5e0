import { parseArgs } from 'node:util';
import { Sandbox } from '../../sdk/index.js';
import { age, parseKeyValues, printJson, printTable, UsageError } from '../output.js';

const HELP = `Usage: hearth sandbox <command>

  create [--template base] [--cpu N] [--memory MB] [--timeout SECONDS]
         [--env KEY=VALUE]... [--meta KEY=VALUE]...   create a sandbox and print its id
         [--no-internet] [--allow-out CIDR]... [--deny-out CIDR]... [--private-ports]
  ls [--all] [--state running,paused]                list sandboxes
  get <id>                                           show one sandbox (also ended ones, with why)
  rm <id>...                                         destroy sandboxes
  timeout <id> <seconds>                             end the sandbox that many seconds from now
  pause <id>                                         pause (memory and disk kept, no CPU)
  resume <id> [--timeout SECONDS]                    resume exactly where it was
  snapshot <id> [--name NAME]                        capture memory + disk as a named snapshot
  fork <id> [--count N]                              N new sandboxes from its current state
  create --snapshot <id|name>                        start a sandbox from a snapshot
  network <id> [--internet on|off] [--allow-out CIDR]... [--deny-out CIDR]...
                                                     show, or replace, its egress policy (deny wins)
  url <id> <port> [--path]                           the port proxy URL of a port it listens on (its own origin
                                                     <port>-<id>.<domain>; --path: /sandboxes/<id>/ports/<port>/)

Every command takes --json.`;

export async function sandboxCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'create': return create(rest);
    case 'ls': case 'list': return list(rest);
    case 'get': case 'inspect': return get(rest);
    case 'rm': case 'kill': case 'destroy': return rm(rest);
    case 'timeout': return timeout(rest);
    case 'pause': return simple(rest, 'pause', async (s) => { await s.pause(); return { sandboxID: s.id, state: 'paused' }; });
    case 'resume': return resume(rest);
    case 'snapshot': return snapshot(rest);
    case 'fork': return fork(rest);
    case 'network': return network(rest);
    case 'url': return portUrl(rest);
    case undefined: case 'help': case '--help': case '-h': process.stdout.write(`${HELP}\n`); return sub ? 0 : 2;
    default: throw new UsageError(`unknown command "sandbox ${sub}"\n\n${HELP}`);
  }
}

function int(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new UsageError(`${flag} expects a whole number, got "${v}"`);
  return Number(v);
}

async function create(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: {
    template: { type: 'string', short: 't', default: 'base' }, snapshot: { type: 'string' }, cpu: { type: 'string' }, memory: { type: 'string' },
    timeout: { type: 'string' }, env: { type: 'string', short: 'e', multiple: true }, meta: { type: 'string', multiple: true },
    'no-internet': { type: 'boolean' }, 'allow-out': { type: 'string', multiple: true }, 'deny-out': { type: 'string', multiple: true },
    'private-ports': { type: 'boolean' }, json: { type: 'boolean' },
  } });
  const cpu = int(values.cpu, '--cpu');
  const memoryMb = int(values.memory, '--memory');
  const timeoutSec = int(values.timeout, '--timeout');
  const t0 = performance.now();
  const sbx = await Sandbox.create({
    template: values.template,
    ...(values.snapshot ? { snapshot: values.snapshot } : {}),
    envs: parseKeyValues(values.env, '--env'),
    metadata: parseKeyValues(values.meta, '--meta'),
    ...(cpu !== undefined ? { cpu } : {}),
    ...(memoryMb !== undefined ? { memoryMb } : {}),
    ...(timeoutSec !== undefined ? { timeoutMs: timeoutSec * 1000 } : {}),
    ...(values['no-internet'] ? { allowInternetAccess: false } : {}),
    network: {
      ...(values['allow-out'] ? { allowOut: values['allow-out'] } : {}),
      ...(values['deny-out'] ? { denyOut: values['deny-out'] } : {}),
      ...(values['private-ports'] ? { allowPublicTraffic: false } : {}),
    },
  });
  if (values.json) { printJson(sbx.info); return 0; }
  process.stdout.write(`${sbx.id}\n`);
  process.stderr.write(`created in ${Math.round(performance.now() - t0)} ms (${(sbx.info.timings?.steps ?? []).map((s) => `${s.step} ${s.ms} ms`).join(', ')})\n`);
  return 0;
}

async function network(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: {
    internet: { type: 'string' }, 'allow-out': { type: 'string', multiple: true }, 'deny-out': { type: 'string', multiple: true }, json: { type: 'boolean' },
  } });
  const id = positionals[0];
  if (!id) throw new UsageError('usage: hearth sandbox network <id> [--internet on|off] [--allow-out CIDR]... [--deny-out CIDR]...');
  if (values.internet !== undefined && !['on', 'off'].includes(values.internet)) throw new UsageError(`--internet expects on or off, got "${values.internet}"`);
  const sbx = await Sandbox.connect(id);
  const change = values.internet !== undefined || values['allow-out'] || values['deny-out'];
  const policy = change
    ? await sbx.setNetwork({
      ...(values.internet !== undefined ? { allowInternetAccess: values.internet === 'on' } : {}),
      ...(values['allow-out'] ? { allowOut: values['allow-out'] } : {}),
      ...(values['deny-out'] ? { denyOut: values['deny-out'] } : {}),
    })
    : await sbx.getNetwork();
  if (values.json) { printJson(policy); return 0; }
  process.stdout.write(`internet  ${policy.allow_internet_access ? 'on' : 'off'}\nallow     ${policy.allowOut.join(' ') || '-'}\ndeny      ${policy.denyOut.join(' ') || '-'}\n`);
  return 0;
}

async function portUrl(argv: string[]): Promise<number> {
  const { positionals, values } = parseArgs({ args: argv, allowPositionals: true, options: { path: { type: 'boolean' } } });
  const [id, port] = positionals;
  const n = int(port, 'port');
  if (!id || n === undefined || n < 1 || n > 65535) throw new UsageError('usage: hearth sandbox url <id> <port 1-65535> [--path]');
  const sbx = await Sandbox.connect(id);
  process.stdout.write(`${sbx.getPortUrl(n, values.path ? 'path' : 'host')}\n`);
  if (sbx.trafficAccessToken) process.stderr.write(`send the header e2b-traffic-access-token: ${sbx.trafficAccessToken}\n`);
  return 0;
}

async function list(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { all: { type: 'boolean', short: 'a' }, state: { type: 'string' }, json: { type: 'boolean' } } });
  const states = values.state ? values.state.split(',') : values.all ? ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying', 'destroyed', 'failed'] : undefined;
  const items = await Sandbox.list(states ? { query: { state: states } } : {}).all();
  if (values.json) { printJson(items); return 0; }
  printTable(items.map((s) => ({ id: s.sandboxID, state: s.state, template: s.templateID, cpu: s.cpuCount, memory: `${s.memoryMB}M`, age: age(s.createdAt), ends: s.endedAt ? `ended ${age(s.endedAt)} ago` : `in ${Math.max(0, Math.round((Date.parse(s.endAt) - Date.now()) / 1000))}s` })),
    ['id', 'state', 'template', 'cpu', 'memory', 'age', 'ends']);
  return 0;
}

async function get(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } } });
  const id = positionals[0];
  if (!id) throw new UsageError('usage: hearth sandbox get <id> [--json]');
  const info = await Sandbox.getInfo(id);
  if (values.json) { printJson(info); return 0; }
  const { envdAccessToken: _token, ...shown } = info;
  for (const [k, v] of Object.entries(shown)) {
    process.stdout.write(`${k.padEnd(16)}${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}\n`);
  }
  return 0;
}

async function rm(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } } });
  if (positionals.length === 0) throw new UsageError('usage: hearth sandbox rm <id>...');
  const results: { id: string; ok: boolean; error?: string }[] = [];
  for (const id of positionals) {
    try { await Sandbox.kill(id); results.push({ id, ok: true }); } catch (err) { results.push({ id, ok: false, error: (err as Error).message }); }
  }
  if (values.json) printJson(results);
  else for (const r of results) process[r.ok ? 'stdout' : 'stderr'].write(r.ok ? `${r.id} destroyed\n` : `${r.id}: ${r.error}\n`);
  return results.every((r) => r.ok) ? 0 : 1;
}

async function timeout(argv: string[]): Promise<number> {
  const { positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } } });
  const [id, secs] = positionals;
  const n = int(secs, 'seconds');
  if (!id || n === undefined) throw new UsageError('usage: hearth sandbox timeout <id> <seconds>');
  const sbx = await Sandbox.connect(id);
  await sbx.setTimeout(n * 1000);
  return 0;
}

/** Runs `fn` on one sandbox and prints its result (a line, or JSON). */
async function simple(argv: string[], verb: string, fn: (s: Sandbox) => Promise<Record<string, unknown>>): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } } });
  const id = positionals[0];
  if (!id) throw new UsageError(`usage: hearth sandbox ${verb} <id> [--json]`);
  const t0 = performance.now();
  const out = await fn(await Sandbox.connect(id));
  if (values.json) printJson(out);
  else process.stderr.write(`${verb} ${id}: done in ${Math.round(performance.now() - t0)} ms\n`);
  return 0;
}

async function resume(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { timeout: { type: 'string' }, json: { type: 'boolean' } } });
  const secs = int(values.timeout, '--timeout');
  return simple([...positionals, ...(values.json ? ['--json'] : [])], 'resume', async (s) => {
    await s.resume(secs !== undefined ? { timeoutMs: secs * 1000 } : {});
    return { sandboxID: s.id, state: 'running' };
  });
}

async function snapshot(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { name: { type: 'string' }, json: { type: 'boolean' } } });
  const id = positionals[0];
  if (!id) throw new UsageError('usage: hearth sandbox snapshot <id> [--name NAME] [--json]');
  const info = await (await Sandbox.connect(id)).snapshot(values.name);
  if (values.json) printJson(info); else process.stdout.write(`${info.snapshotID}\n`);
  return 0;
}

async function fork(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { count: { type: 'string', short: 'n' }, json: { type: 'boolean' } } });
  const id = positionals[0];
  if (!id) throw new UsageError('usage: hearth sandbox fork <id> [--count N] [--json]');
  const forks = await (await Sandbox.connect(id)).fork(int(values.count, '--count') ?? 1);
  if (values.json) printJson(forks.map((f) => f.info)); else for (const f of forks) process.stdout.write(`${f.id}\n`);
  return 0;
}
