import { parseArgs } from 'node:util';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { PACKAGE_ROOT } from '../../paths.js';
import { parseKeyValues, printJson, UsageError } from '../output.js';

export const UNIT_NAME = 'hearth.service';

export interface UnitOptions {
  node: string;
  cli: string;
  port?: string | undefined;
  host?: string | undefined;
  dataDir?: string | undefined;
  env: Record<string, string>;
}

const quote = (s: string): string => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `"${s.replace(/(["\\])/g, '\\$1')}"`);

/** The systemd unit: `hearth up --foreground` as root, logs to journald, sandboxes outlive a stop. */
export function unitFile(o: UnitOptions): string {
  const args = ['up', '--foreground',
    ...(o.port ? ['--port', o.port] : []), ...(o.host ? ['--host', o.host] : []), ...(o.dataDir ? ['--data-dir', o.dataDir] : [])];
  const env = Object.entries(o.env).map(([k, v]) => `Environment=${quote(`${k}=${v}`)}\n`).join('');
  return `# Written by \`hearth service install\`; settings: docs/configuration.md
[Unit]
Description=Hearth microVM sandboxes (hearthd)
Documentation=file://${PACKAGE_ROOT}/docs/configuration.md
After=network-online.target local-fs.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=${[o.node, o.cli, ...args].map(quote).join(' ')}
${env}# Stopping the service stops hearthd only: running sandboxes keep running and the next start
# adopts them (as with \`hearth down\`). \`hearth sandbox rm\` them first to end them.
KillMode=process
KillSignal=SIGTERM
TimeoutStopSec=60
Restart=on-failure
RestartSec=2
LimitNOFILE=1048576
StandardOutput=journal
StandardError=journal
SyslogIdentifier=hearthd

[Install]
WantedBy=multi-user.target
`;
}

function systemctl(args: string[], dryRun: boolean, log: string[]): void {
  log.push(`systemctl ${args.join(' ')}`);
  if (dryRun) return;
  const r = spawnSync('systemctl', args, { stdio: 'inherit' });
  if (r.error) throw new UsageError(`systemctl ${args.join(' ')}: ${r.error.message} (is this a systemd host?)`, 1);
  if (r.status !== 0) throw new UsageError(`systemctl ${args.join(' ')} exited with ${r.status}`, 1);
}

/** `hearth service install|uninstall|status`. */
export async function serviceCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values } = parseArgs({ args: rest, options: {
    port: { type: 'string' }, host: { type: 'string' }, 'data-dir': { type: 'string' }, env: { type: 'string', short: 'e', multiple: true },
    'no-enable': { type: 'boolean' }, root: { type: 'string' }, 'dry-run': { type: 'boolean' }, json: { type: 'boolean' },
  } });
  const root = resolve(values.root ?? '/');
  const unitPath = join(root, 'etc/systemd/system', UNIT_NAME);
  const dryRun = values['dry-run'] === true;
  const runSystemctl = root === '/' && !values['no-enable'];
  const log: string[] = [];
  switch (sub) {
    case 'install': {
      if (values.port && !/^\d+$/.test(values.port)) throw new UsageError(`--port expects a number, got "${values.port}"`);
      const cli = join(PACKAGE_ROOT, 'dist', 'cli', 'main.js');
      if (!existsSync(cli) && !dryRun) throw new UsageError(`${cli} is missing: run \`npm run build\` first`, 1);
      const unit = unitFile({ node: process.execPath, cli, port: values.port, host: values.host, dataDir: values['data-dir'], env: parseKeyValues(values.env, '--env') });
      if (!dryRun && runSystemctl && typeof process.getuid === 'function' && process.getuid() !== 0) {
        throw new UsageError('installing a system service needs root: run it with sudo (or --root DIR / --dry-run to only write or print the unit)', 1);
      }
      log.push(`write ${unitPath}`);
      if (!dryRun) {
        mkdirSync(dirname(unitPath), { recursive: true });
        writeFileSync(unitPath, unit, { mode: 0o644 });
      }
      if (runSystemctl) {
        systemctl(['daemon-reload'], dryRun, log);
        systemctl(['enable', '--now', UNIT_NAME], dryRun, log);
      }
      if (values.json) printJson({ unitPath, unit, actions: log, dryRun });
      else {
        if (dryRun) process.stdout.write(`${unit}\n`);
        process.stderr.write(`${log.map((l) => `${dryRun ? 'would ' : ''}${l}`).join('\n')}\n`);
        if (!dryRun && runSystemctl) process.stderr.write('hearthd runs as a service; logs: journalctl -u hearth -f\n');
        else if (!dryRun) process.stderr.write(`unit written; enable it with: systemctl daemon-reload && systemctl enable --now ${UNIT_NAME}\n`);
      }
      return 0;
    }
    case 'uninstall': {
      if (runSystemctl) systemctl(['disable', '--now', UNIT_NAME], dryRun, log);
      log.push(`remove ${unitPath}`);
      if (!dryRun) rmSync(unitPath, { force: true });
      if (runSystemctl) systemctl(['daemon-reload'], dryRun, log);
      if (values.json) printJson({ unitPath, actions: log, dryRun });
      else process.stderr.write(`${log.map((l) => `${dryRun ? 'would ' : ''}${l}`).join('\n')}\n`);
      return 0;
    }
    case 'status': {
      const r = spawnSync('systemctl', ['status', '--no-pager', UNIT_NAME], { stdio: 'inherit' });
      if (r.error) throw new UsageError(`systemctl: ${r.error.message}`, 1);
      return r.status ?? 1;
    }
    default: throw new UsageError(`unknown command "service ${sub ?? ''}"; see \`hearth service --help\``);
  }
}
