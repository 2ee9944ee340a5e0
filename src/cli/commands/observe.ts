import { parseArgs } from 'node:util';
import { events, followLogs, getLogs, Sandbox, type LogEntry, type SandboxMetrics } from '../../sdk/index.js';
import { fmtBytes, printJson, printTable, UsageError } from '../output.js';
import { resolveSandboxId } from '../resolve.js';

/** `hearth sandbox metrics`, `hearth logs`, `hearth events` (docs/observability.md). */

/** `10m`, `2h`, `30s`, `1d` → milliseconds. */
export function parseDuration(v: string, flag: string): number {
  const m = /^(\d+)(s|m|h|d)$/.exec(v);
  if (!m) throw new UsageError(`${flag} expects a duration like 30s, 10m, 2h or 1d, got "${v}"`);
  return Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 's' | 'm' | 'h' | 'd'];
}

const pct = (n: number | null | undefined): string => (n === null || n === undefined ? '-' : `${n.toFixed(1)}%`);
const clock = (d: Date): string => d.toISOString().slice(11, 19);

function metricRow(m: SandboxMetrics): Record<string, string> {
  return {
    TIME: clock(m.timestamp), CPU: pct(m.cpuUsedPct), 'HOST CPU': pct(m.hostCpuUsedPct), MEMORY: `${fmtBytes(m.memUsed)}/${fmtBytes(m.memTotal)}`,
    'HOST RSS': m.hostMemRss ? fmtBytes(m.hostMemRss) : '-', DISK: `${fmtBytes(m.diskUsed)}/${fmtBytes(m.diskTotal)}`, 'HOST DISK': m.hostDiskUsed ? fmtBytes(m.hostDiskUsed) : '-',
  };
}
const METRIC_COLUMNS = ['TIME', 'CPU', 'HOST CPU', 'MEMORY', 'HOST RSS', 'DISK', 'HOST DISK'];

export async function sandboxMetrics(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: {
    since: { type: 'string', default: '10m' }, all: { type: 'boolean' }, watch: { type: 'boolean', short: 'w' }, json: { type: 'boolean' },
  } });
  if (!positionals[0]) throw new UsageError('usage: hearth sandbox metrics <id> [--since 10m | --all] [--watch] [--json]\nSee `hearth sandbox metrics --help`.');
  const id = await resolveSandboxId(positionals[0]);
  const start = values.all ? undefined : new Date(Date.now() - parseDuration(values.since, '--since'));
  const samples = await Sandbox.getMetrics(id, start ? { start } : {});
  if (values.json && !values.watch) { printJson(samples); return 0; }
  if (values.json) for (const s of samples) process.stdout.write(`${JSON.stringify(s)}\n`);
  else if (samples.length === 0) process.stderr.write('no samples yet (hearthd samples running sandboxes every 5 s)\n');
  else printTable(samples.map(metricRow), METRIC_COLUMNS);
  if (!values.watch) return 0;
  let last = samples.at(-1)?.timestamp.getTime() ?? Date.now() - 1000;
  for (;;) {
    await new Promise((r) => setTimeout(r, 5000));
    const fresh = (await Sandbox.getMetrics(id, { start: new Date(last + 1000) })).filter((s) => s.timestamp.getTime() > last);
    for (const s of fresh) {
      if (values.json) process.stdout.write(`${JSON.stringify(s)}\n`);
      else { const r = metricRow(s); process.stdout.write(`${METRIC_COLUMNS.map((c) => r[c]).join('  ')}\n`); }
      last = s.timestamp.getTime();
    }
    const state = (await Sandbox.getInfo(id)).state;
    if (state === 'destroyed' || state === 'failed') return 0;
  }
}

function printEntry(e: LogEntry, json: boolean | undefined): void {
  process.stdout.write(json ? `${JSON.stringify(e)}\n` : `${e.timestamp.replace('T', ' ').slice(0, 23)} ${e.source.padEnd(7)} ${e.level === 'info' ? '' : `${e.level.toUpperCase()} `}${e.line}\n`);
}

export async function logsCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: {
    follow: { type: 'boolean', short: 'f' }, lines: { type: 'string', short: 'n' }, since: { type: 'string' }, source: { type: 'string', short: 's' }, json: { type: 'boolean' },
  } });
  if (!positionals[0]) throw new UsageError('usage: hearth logs <id> [-f] [-n N] [--since 10m] [--source console,agent,hearth] [--json]\nSee `hearth logs --help`.');
  const id = await resolveSandboxId(positionals[0]);
  if (values.lines !== undefined && !/^\d+$/.test(values.lines)) throw new UsageError(`-n expects a whole number, got "${values.lines}"`);
  const sources = values.source?.split(',').map((s) => s.trim()).filter(Boolean) as LogEntry['source'][] | undefined;
  for (const s of sources ?? []) if (!['console', 'agent', 'hearth'].includes(s)) throw new UsageError(`--source expects console, agent or hearth (comma separated), got "${s}"`);
  const opts = {
    ...(values.lines !== undefined ? { limit: Math.max(1, Number(values.lines)) } : {}),
    ...(values.since ? { start: new Date(Date.now() - parseDuration(values.since, '--since')) } : {}),
    ...(sources?.length ? { sources } : {}),
  };
  if (!values.follow) {
    const entries = await getLogs(id, opts);
    if (values.json) printJson(entries); else for (const e of entries) printEntry(e, false);
    return 0;
  }
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  for await (const e of followLogs(id, { ...opts, signal: ac.signal })) printEntry(e, values.json);
  return 0;
}

export async function eventsCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { sandbox: { type: 'string' }, json: { type: 'boolean' } } });
  if (positionals.length) throw new UsageError(`hearth events takes no arguments (got "${positionals.join(' ')}"); see \`hearth events --help\``);
  const sandboxId = values.sandbox ? await resolveSandboxId(values.sandbox) : undefined;
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  for await (const e of events({ signal: ac.signal, ...(sandboxId ? { sandboxId } : {}) })) {
    process.stdout.write(values.json ? `${JSON.stringify(e)}\n`
      : `${e.timestamp.replace('T', ' ').slice(0, 23)} ${e.type.padEnd(17)} ${e.sandboxID} ${e.from} → ${e.to}: ${e.reason}${e.keyId ? ` (key ${e.keyId})` : ''}\n`);
  }
  return 0;
}
