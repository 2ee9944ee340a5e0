import { parseArgs } from 'node:util';
import { HearthApi, Sandbox, type SandboxInfo } from '../../sdk/index.js';
import { age, fmtBytes, parseKeyValues, printJson, printTable, UsageError, withSpinner } from '../output.js';
import { attach, resolveSandboxId } from '../resolve.js';
import { sandboxMetrics } from './observe.js';

export async function sandboxCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'create': return create(rest);
    case 'ls': case 'list': return list(rest);
    case 'get': case 'inspect': return get(rest);
    case 'rm': case 'kill': case 'destroy': case 'delete': case 'remove': return rm(rest);
    case 'timeout': return timeout(rest);
    case 'pause': return pause(rest);
    case 'resume': return resume(rest);
    case 'snapshot': return snapshot(rest);
    case 'fork': return fork(rest);
    case 'network': return network(rest);
    case 'url': return portUrl(rest);
    case 'metrics': return sandboxMetrics(rest);
    case undefined: throw new UsageError('usage: hearth sandbox <command>; `hearth sandbox --help` lists them');
    default: throw new UsageError(`unknown command "sandbox ${sub}"; \`hearth sandbox --help\` lists them`);
  }
}

function int(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new UsageError(`${flag} expects a whole number, got "${v}"`);
  return Number(v);
}

/** The one id positional of a command, resolved from a prefix. */
async function oneId(positionals: string[], usage: string): Promise<string> {
  const id = positionals[0];
  if (!id) throw new UsageError(`usage: ${usage}\nSee \`${usage.split(' <')[0]} --help\`.`);
  return resolveSandboxId(id);
}

async function create(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: {
    template: { type: 'string', short: 't', default: 'base' }, snapshot: { type: 'string' }, cpu: { type: 'string' }, memory: { type: 'string' },
    timeout: { type: 'string' }, env: { type: 'string', short: 'e', multiple: true }, meta: { type: 'string', multiple: true },
    'no-internet': { type: 'boolean' }, 'allow-out': { type: 'string', multiple: true }, 'deny-out': { type: 'string', multiple: true },
    'private-ports': { type: 'boolean' }, json: { type: 'boolean' },
  } });
  if (positionals.length) throw new UsageError(`hearth sandbox create takes no arguments (got "${positionals.join(' ')}"); see \`hearth sandbox create --help\``);
  const cpu = int(values.cpu, '--cpu');
  const memoryMb = int(values.memory, '--memory');
  const timeoutSec = int(values.timeout, '--timeout');
  const from = values.snapshot ? `snapshot ${values.snapshot}` : `template ${values.template}`;
  const sbx = await withSpinner(`creating a sandbox from ${from}…`, values.json, () => Sandbox.create({
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
  }));
  if (values.json) { printJson(sbx.info); return 0; }
  process.stdout.write(`${sbx.id}\n`);
  const steps = (sbx.info.timings?.steps ?? []).map((s) => `${s.step} ${s.ms} ms`).join(', ');
  if (process.stderr.isTTY) process.stderr.write(`created from ${from}${steps ? ` (${steps})` : ''}\n`);
  return 0;
}

interface Egress { possible: boolean; interface: string | null; why: string }

/** What the host allows at all (from `GET /doctor`); undefined when hearthd does not say. */
async function hostEgress(): Promise<Egress | undefined> {
  try { return (await new HearthApi().request<{ egress?: Egress }>('GET', '/doctor')).egress; } catch { return undefined; }
}

async function network(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: {
    internet: { type: 'string' }, 'allow-out': { type: 'string', multiple: true }, 'deny-out': { type: 'string', multiple: true }, json: { type: 'boolean' },
  } });
  if (values.internet !== undefined && !['on', 'off'].includes(values.internet)) throw new UsageError(`--internet expects on or off, got "${values.internet}"`);
  const id = await oneId(positionals, 'hearth sandbox network <id> [--internet on|off] [--allow-out CIDR]... [--deny-out CIDR]...');
  const sbx = await attach(id);
  const change = values.internet !== undefined || values['allow-out'] || values['deny-out'];
  const [policy, egress] = await Promise.all([
    change
      ? sbx.setNetwork({
        ...(values.internet !== undefined ? { allowInternetAccess: values.internet === 'on' } : {}),
        ...(values['allow-out'] ? { allowOut: values['allow-out'] } : {}),
        ...(values['deny-out'] ? { denyOut: values['deny-out'] } : {}),
      })
      : sbx.getNetwork(),
    hostEgress(),
  ]);
  if (values.json) { printJson({ ...policy, ...(egress ? { hostEgress: egress } : {}) }); return 0; }
  let internet = policy.allow_internet_access ? 'on' : 'off';
  if (egress && !egress.possible) internet = policy.allow_internet_access ? `allowed by its policy, but not possible on this host: ${egress.why}` : 'off';
  else if (egress && policy.allow_internet_access) internet = `on (via ${egress.interface})`;
  process.stdout.write(`internet  ${internet}\nallow     ${policy.allowOut.join(' ') || '-'}\ndeny      ${policy.denyOut.join(' ') || '-'} (and always: private ranges, link-local, loopback, other sandboxes)\n`);
  return 0;
}

async function portUrl(argv: string[]): Promise<number> {
  const { positionals, values } = parseArgs({ args: argv, allowPositionals: true, options: { path: { type: 'boolean' } } });
  const [idArg, port] = positionals;
  const n = int(port, 'port');
  if (!idArg || n === undefined || n < 1 || n > 65535) throw new UsageError('usage: hearth sandbox url <id> <port 1-65535> [--path]');
  const sbx = await attach(await resolveSandboxId(idArg));
  process.stdout.write(`${sbx.getPortUrl(n, values.path ? 'path' : 'host')}\n`);
  if (sbx.trafficAccessToken) process.stderr.write(`send the header e2b-traffic-access-token: ${sbx.trafficAccessToken}\n`);
  return 0;
}

const ALL = ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying', 'destroyed', 'failed'];

function ends(s: { state: string; endAt: string; endedAt: string | null; endReason: string | null }): string {
  if (s.endedAt) return `ended ${age(s.endedAt)} ago${s.endReason ? ` (${s.endReason})` : ''}`;
  if (s.state === 'paused' || s.state === 'pausing') return 'never (paused)';
  return `in ${age(new Date(Date.now() - Math.max(0, Date.parse(s.endAt) - Date.now())).toISOString())}`; // age() of a time as far back
}

async function list(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { all: { type: 'boolean', short: 'a' }, state: { type: 'string' }, meta: { type: 'string', multiple: true }, json: { type: 'boolean' } } });
  const states = values.state ? values.state.split(',') : values.all ? ALL : undefined;
  const bad = states?.find((s) => !ALL.includes(s));
  if (bad) throw new UsageError(`--state: unknown state "${bad}" (one of ${ALL.join(', ')})`);
  const metadata = parseKeyValues(values.meta, '--meta');
  const items = await Sandbox.list({ query: { ...(states ? { state: states } : {}), ...(values.meta ? { metadata } : {}) } }).all();
  if (values.json) { printJson(items); return 0; }
  const meta = (m: Record<string, string>): string => Object.entries(m).filter(([k]) => !k.startsWith('hearth.')).map(([k, v]) => `${k}=${v}`).join(',') || '-';
  printTable(items.map((s) => ({ id: s.sandboxID, state: s.state, template: s.templateID, cpu: s.cpuCount, memory: `${s.memoryMB}M`, age: age(s.createdAt), ends: ends(s), metadata: meta(s.metadata) })),
    ['id', 'state', 'template', 'cpu', 'memory', 'age', 'ends', 'metadata']);
  return 0;
}

/** `sandbox get` for people: aligned fields, nested values spelled out. */
export function describe(info: SandboxInfo): string {
  const kv = (m: Record<string, string>): string => Object.keys(m).length ? Object.entries(m).map(([k, v]) => `${k}=${v}`).join('  ') : '-';
  const rows: [string, string][] = [
    ['id', info.sandboxID],
    ['state', info.state + (info.endReason ? ` (${info.endReason})` : '')],
    ['template', info.templateID],
    ['resources', `${info.cpuCount} vCPU, ${info.memoryMB} MB memory, ${info.diskSizeMB} MB disk${info.diskUsageBytes !== null ? ` (${fmtBytes(info.diskUsageBytes)} used)` : ''}`],
    ['created', `${info.createdAt} (${age(info.createdAt)} ago)`],
    ['ends', info.endedAt ? `ended ${info.endedAt} (${age(info.endedAt)} ago)` : info.state === 'paused' ? 'never while paused (the timeout restarts at resume)' : `${info.endAt} (${ends(info)})`],
    ['on timeout', `${info.lifecycle.onTimeout}${info.lifecycle.autoResume ? ', resumes on traffic' : ''}${info.lifecycle.autoExtend ? ', extended by traffic' : ''}`],
    ['vmm', info.vmm ? `${info.vmm.kind}, pid ${info.vmm.pid}` : '-'],
    ['agent', info.envdVersion ? `envd ${info.envdVersion}` : '-'],
    ['network', info.network ? `internet ${info.network.allow_internet_access ? 'allowed' : 'off'}; allow ${info.network.allowOut.join(' ') || '-'}; deny ${info.network.denyOut.join(' ') || '-'}` : '-'],
    ['ports', `${info.allowPublicTraffic ? 'public' : 'need the traffic token'}${info.portDomain ? ` at <port>-${info.sandboxID}.${info.portDomain}` : ''}`],
    ['env vars', Object.keys(info.envVars).length ? Object.keys(info.envVars).join('  ') + '  (values hidden; --json shows them)' : '-'],
    ['metadata', kv(info.metadata)],
    ['last op', info.timings ? `${info.timings.op}: ${info.timings.steps.map((s) => `${s.step} ${s.ms} ms`).join(', ')}` : '-'],
  ];
  return rows.map(([k, v]) => `${k.padEnd(12)}${v}`).join('\n');
}

async function get(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } } });
  const id = await oneId(positionals, 'hearth sandbox get <id> [--json]');
  const info = await Sandbox.getInfo(id);
  if (values.json) { printJson(info); return 0; }
  process.stdout.write(`${describe(info)}\n`);
  return 0;
}

async function rm(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } } });
  if (positionals.length === 0) throw new UsageError('usage: hearth sandbox rm <id>...');
  const results: { id: string; ok: boolean; error?: string }[] = [];
  for (const typed of positionals) {
    try {
      const id = await resolveSandboxId(typed);
      await withSpinner(`destroying ${id}…`, values.json, () => Sandbox.kill(id));
      results.push({ id, ok: true });
    } catch (err) { results.push({ id: typed, ok: false, error: (err as Error).message }); }
  }
  if (values.json) printJson(results);
  else for (const r of results) process[r.ok ? 'stdout' : 'stderr'].write(r.ok ? `${r.id} destroyed\n` : `${r.id}: ${r.error}\n`);
  return results.every((r) => r.ok) ? 0 : 1;
}

async function timeout(argv: string[]): Promise<number> {
  const { positionals, values } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } } });
  const [idArg, secs] = positionals;
  const n = int(secs, 'seconds');
  if (!idArg || n === undefined) throw new UsageError('usage: hearth sandbox timeout <id> <seconds>');
  const id = await resolveSandboxId(idArg);
  const sbx = await attach(id);
  await sbx.setTimeout(n * 1000);
  const endAt = new Date(Date.now() + n * 1000).toISOString();
  if (values.json) printJson({ sandboxID: id, endAt });
  else process.stderr.write(`${id} now ends at ${endAt}\n`);
  return 0;
}

async function pause(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } } });
  const id = await oneId(positionals, 'hearth sandbox pause <id> [--json]');
  await withSpinner(`pausing ${id}…`, values.json, async () => (await attach(id)).pause(), () => `paused ${id}`);
  if (values.json) printJson({ sandboxID: id, state: 'paused' });
  return 0;
}

async function resume(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { timeout: { type: 'string' }, json: { type: 'boolean' } } });
  const secs = int(values.timeout, '--timeout');
  const id = await oneId(positionals, 'hearth sandbox resume <id> [--timeout SECONDS] [--json]');
  await withSpinner(`resuming ${id}…`, values.json, () => new HearthApi().request<SandboxInfo>('POST', `/sandboxes/${id}/resume`,
    secs !== undefined ? { timeout: secs } : {}), () => `resumed ${id}`);
  if (values.json) printJson({ sandboxID: id, state: 'running' });
  return 0;
}

async function snapshot(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { name: { type: 'string' }, json: { type: 'boolean' } } });
  const id = await oneId(positionals, 'hearth sandbox snapshot <id> [--name NAME] [--json]');
  const info = await withSpinner(`snapshotting ${id}…`, values.json, async () => (await attach(id)).snapshot(values.name), (s) => `snapshot ${s.snapshotID}${values.name ? ` (${values.name})` : ''} saved`);
  if (values.json) printJson(info); else process.stdout.write(`${info.snapshotID}\n`);
  return 0;
}

async function fork(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { count: { type: 'string', short: 'n' }, timeout: { type: 'string' }, json: { type: 'boolean' } } });
  const id = await oneId(positionals, 'hearth sandbox fork <id> [--count N] [--json]');
  const count = int(values.count, '--count') ?? 1;
  const secs = int(values.timeout, '--timeout');
  const forks = await withSpinner(`forking ${id} into ${count}…`, values.json, async () => (await attach(id)).fork(count, secs !== undefined ? { timeoutMs: secs * 1000 } : {}), (f) => `forked ${id} into ${f.length}`);
  if (values.json) printJson(forks.map((f) => f.info)); else for (const f of forks) process.stdout.write(`${f.id}\n`);
  return 0;
}
