import { parseArgs } from 'node:util';
import { spawn } from 'node:child_process';
import { mkdirSync, openSync, readFileSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig, type HearthConfig } from '../../daemon/config.js';
import { runDoctor, type DoctorReport } from '../../daemon/doctor.js';
import { ensureDefaultImage, ensureFirecrackerKernel, defaultProgress } from '../../images/index.js';
import { AGENT_BUNDLE_PATH, PACKAGE_ROOT } from '../../paths.js';
import { printJson, UsageError } from '../output.js';
import { HearthApi } from '../../sdk/api.js';
import { initReflinkDataDir } from '../../storage/xfs-loop.js';
import { DataLayout } from '../../core/layout.js';

function configFrom(values: { port?: string | undefined; host?: string | undefined; 'data-dir'?: string | undefined }): HearthConfig {
  return loadConfig({
    ...(values.host ? { host: values.host } : {}),
    ...(values.port ? { port: Number(values.port) } : {}),
    ...(values['data-dir'] ? { dataDir: values['data-dir'] } : {}),
  });
}

const DAEMON_OPTIONS = { port: { type: 'string' }, host: { type: 'string' }, 'data-dir': { type: 'string' }, json: { type: 'boolean' } } as const;

function urlOf(cfg: HearthConfig): string { return `http://${cfg.host === '0.0.0.0' ? '127.0.0.1' : cfg.host}:${cfg.port}`; }

async function healthy(url: string): Promise<boolean> {
  try { return (await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) })).ok; } catch { return false; }
}

function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

/** `hearth image build`: build (or reuse) the default guest image, with progress. */
export async function imageCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'kernel') {
    // Firecracker needs an uncompressed vmlinux with virtio-mmio and the drivers built in (docs/firecracker.md).
    const { values } = parseArgs({ args: rest, options: { ...DAEMON_OPTIONS, firecracker: { type: 'boolean' } } });
    if (!values.firecracker) throw new UsageError('usage: hearth image kernel --firecracker   (builds from Debian\'s linux-source; tens of minutes)');
    const k = await ensureFirecrackerKernel({ cacheDir: configFrom(values).cacheDir, progress: defaultProgress() });
    if (values.json) printJson(k); else process.stdout.write(`${JSON.stringify(k)}\n`);
    return 0;
  }
  if (sub !== 'build') throw new UsageError('usage: hearth image build [--data-dir D] [--json] | hearth image kernel --firecracker');
  const { values } = parseArgs({ args: rest, options: DAEMON_OPTIONS });
  const cfg = configFrom(values);
  const img = await ensureDefaultImage({ dataDir: cfg.dataDir, cacheDir: cfg.cacheDir, agentBundlePath: AGENT_BUNDLE_PATH, progress: defaultProgress() });
  if (values.json) printJson(img);
  else process.stdout.write(`${img.built ? 'built' : 'reused'} image ${img.id} in ${img.dir}\n`);
  return 0;
}

/** `hearth storage init`: give the data dir reflinks (an XFS filesystem on a loop device) where it has none. */
export async function storageCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'init') throw new UsageError('usage: hearth storage init [--data-dir D] [--size-gib N]');
  const { values } = parseArgs({ args: rest, options: { ...DAEMON_OPTIONS, 'size-gib': { type: 'string' } } });
  const cfg = configFrom(values);
  const m = await initReflinkDataDir(cfg.dataDir, values['size-gib'] ? { sizeGiB: Number(values['size-gib']) } : {});
  if (values.json) printJson(m ?? { dataDir: cfg.dataDir, reflink: 'native' });
  else if (!m) process.stderr.write(`${cfg.dataDir} already supports reflinks\n`);
  else process.stderr.write(`${cfg.dataDir}: XFS (reflink=1) on ${m.loopDevice} from ${m.image}${m.created ? '' : ' (already mounted)'}\n`);
  return 0;
}

/** `hearth up`: build the image if missing, start hearthd in the background, print its URL. */
export async function upCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { ...DAEMON_OPTIONS, foreground: { type: 'boolean' } } });
  const cfg = configFrom(values);
  const url = urlOf(cfg);
  const pidFile = new DataLayout(cfg.dataDir).pidFile;
  if (await healthy(url)) {
    process.stdout.write(`${url}\n`);
    process.stderr.write(`hearthd is already running at ${url}\n`);
    return 0;
  }
  if (!existsSync(AGENT_BUNDLE_PATH)) throw new UsageError(`the guest agent is not built (${AGENT_BUNDLE_PATH}); run \`npm run build\` first`, 1);
  mkdirSync(cfg.dataDir, { recursive: true });
  await ensureDefaultImage({ dataDir: cfg.dataDir, cacheDir: cfg.cacheDir, agentBundlePath: AGENT_BUNDLE_PATH, progress: defaultProgress() });
  const args = [join(PACKAGE_ROOT, 'dist', 'daemon', 'main.js'), '--host', cfg.host, '--port', String(cfg.port), '--data-dir', cfg.dataDir];
  if (values.foreground) {
    // systemd (KillMode=process) or Ctrl-C signals this process: pass it on and wait for hearthd's clean stop.
    const child = spawn(process.execPath, args, { stdio: 'inherit' });
    const forward = (sig: NodeJS.Signals) => () => { child.kill(sig); };
    const onTerm = forward('SIGTERM');
    const onInt = forward('SIGINT');
    process.on('SIGTERM', onTerm);
    process.on('SIGINT', onInt);
    return new Promise((resolve) => child.on('exit', (code, signal) => {
      process.off('SIGTERM', onTerm);
      process.off('SIGINT', onInt);
      resolve(code ?? (signal === 'SIGTERM' || signal === 'SIGINT' ? 0 : 1));
    }));
  }
  const logFile = new DataLayout(cfg.dataDir).logFile;
  const out = openSync(logFile, 'a');
  const child = spawn(process.execPath, [...args, '--log-file', logFile], { detached: true, stdio: ['ignore', out, out] });
  child.unref();
  writeFileSync(pidFile, `${child.pid}\n`);
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    if (await healthy(url)) {
      if (values.json) printJson({ url, pid: child.pid, log: logFile });
      else {
        process.stdout.write(`${url}\n`);
        process.stderr.write(`hearthd ${child.pid} is up (log: ${logFile}; dashboard: ${url}/)\n`);
        if (cfg.port !== 3030 || cfg.host !== '127.0.0.1') process.stderr.write(`export HEARTH_URL=${url} to use it from the CLI\n`);
      }
      return 0;
    }
    if (!pidAlive(child.pid!)) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  const tail = readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-20).join('\n');
  throw new UsageError(`hearthd did not come up at ${url}; last lines of ${logFile}:\n${tail}`, 1);
}

/** `hearth down`: stop the daemon started by `hearth up` (sandboxes keep running; the next start adopts them). */
export async function downCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: DAEMON_OPTIONS });
  const cfg = configFrom(values);
  const pidFile = new DataLayout(cfg.dataDir).pidFile;
  if (!existsSync(pidFile)) { process.stderr.write(`no ${pidFile}: hearthd is not running (from \`hearth up\`)\n`); return 0; }
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  if (pid > 0 && pidAlive(pid)) {
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + 20_000;
    while (pidAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    if (pidAlive(pid)) { process.kill(pid, 'SIGKILL'); }
  }
  rmSync(pidFile, { force: true });
  process.stderr.write(`hearthd stopped\n`);
  return 0;
}

function printDoctor(r: DoctorReport): void {
  const yes = (b: boolean): string => (b ? 'yes' : 'no');
  const lines: [string, string][] = [
    ['host', `${r.host.kernel}, ${r.host.cpus} CPUs, ${r.host.memoryMib} MiB, ${r.host.root ? 'root' : 'not root'}`],
    ['kvm', `/dev/kvm ${yes(r.kvm.device)}; runs ordinary guests: ${yes(r.kvm.runsGuests)} (${r.kvm.detail})`],
    ['qemu', r.qemu.found ? `${r.qemu.version}; x-ignore-shared: ${yes(r.qemu.ignoreShared)}; ${r.qemu.privilege}` : `not found (${r.qemu.detail})`],
    ['firecracker', r.firecracker.found ? String(r.firecracker.version) : 'not found'],
    ['device-mapper', yes(r.storage.deviceMapper)],
    ['reflink', `${yes(r.storage.reflink)} in ${r.storage.dataDir}`],
    ['userfaultfd', yes(r.userfaultfd)],
    ['netns', `${yes(r.netns.available)} (${r.netns.detail})`],
    ['→ vmm', `${r.chosen.vmm} with ${r.chosen.accel} (${r.chosen.vmmReason})`],
    ['→ storage', `${r.chosen.storage} (${r.chosen.storageReason})`],
    ['→ network', `${r.chosen.network} (${r.chosen.networkReason})`],
    ['→ egress', r.egress ? (r.egress.possible ? `sandboxes may reach beyond the host via ${r.egress.interface}` : `none: ${r.egress.why}`) : '-'],
  ];
  if (r.admission) {
    const t = r.admission.thresholds;
    const n = r.admission.now;
    const off = (v: number, text: string): string => (v > 0 ? text : 'off');
    lines.push(['admission', `guest memory ≤ ${r.admission.guestMemoryLimitMib} MiB (host RAM × memoryOvercommit)`]);
    lines.push(['  memory', `${off(t.minFreeMemoryMib, `keep ≥ ${t.minFreeMemoryMib} MiB available, a sandbox counted at ≤ ${t.memoryPerSandboxMib} MiB`)}; now ${Math.round(n.availableMemoryMib)} MiB available`]);
    lines.push(['  disk', `${off(t.minFreeDiskMib, `keep ≥ ${t.minFreeDiskMib} MiB free, reserving its memory + ${t.diskPerSandboxMib} MiB`)}; now ${Math.round(n.freeDiskMib)} MiB free`]);
    lines.push(['  cpu', `${off(t.maxLoadPerCpu, `refuse above load ${t.maxLoadPerCpu} per CPU`)}; now ${n.load1.toFixed(1)} on ${n.cpus} CPUs`]);
  }
  for (const [k, v] of lines) process.stdout.write(`${k.padEnd(15)}${v}\n`);
}

/** `hearth doctor`: what the host can do and what Hearth will use (from the daemon if it runs, else probed here). */
export async function doctorCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: DAEMON_OPTIONS });
  const cfg = configFrom(values);
  const url = process.env['HEARTH_URL'] ?? urlOf(cfg);
  let report: DoctorReport;
  if (await healthy(url)) report = await new HearthApi({ url }).request<DoctorReport>('GET', '/doctor');
  else { mkdirSync(cfg.dataDir, { recursive: true }); report = await runDoctor(cfg); }
  if (values.json) printJson(report); else printDoctor(report);
  return 0;
}
