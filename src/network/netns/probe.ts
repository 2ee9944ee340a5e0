/**
 * Which network backend this host can run (for hearthd's start-up and
 * `hearth doctor`): per-sandbox namespaces need root, iproute2, nftables,
 * nsenter and the tun device; otherwise QEMU user-mode networking.
 */
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import type { CommandRunner } from '../../util/exec.js';
import { netRunner } from './run.js';

export interface NetworkCheck { name: string; ok: boolean; detail: string }

export interface NetworkChoice {
  kind: 'netns' | 'user';
  reason: string;
  checks: NetworkCheck[];
  /** Optional tools: conntrack flushes a slot's flow table on reset (else the generation mark does the job). */
  conntrack: boolean;
}

export interface ChooseNetworkOptions {
  runner?: CommandRunner;
  /** Force a backend ('auto' probes). A forced 'netns' that cannot work is reported, not chosen. */
  prefer?: 'auto' | 'netns' | 'user';
  uid?: number;
  tunPath?: string;
}

async function version(run: CommandRunner, cmd: string, args: string[]): Promise<string | null> {
  try {
    const r = await run(cmd, args, { allowFailure: true, signal: AbortSignal.timeout(5000) });
    if (r.code !== 0) return null;
    return (r.stdout || r.stderr).split('\n')[0]!.trim() || cmd;
  } catch {
    return null;
  }
}

export async function chooseNetwork(opts: ChooseNetworkOptions = {}): Promise<NetworkChoice> {
  const run = opts.runner ?? netRunner;
  const prefer = opts.prefer ?? 'auto';
  const uid = opts.uid ?? process.getuid?.() ?? -1;
  const tun = opts.tunPath ?? '/dev/net/tun';
  const [ip, nft, nsenter, conntrack, tunOk] = await Promise.all([
    version(run, 'ip', ['-V']),
    version(run, 'nft', ['--version']),
    version(run, 'nsenter', ['--version']),
    version(run, 'conntrack', ['--version']),
    (async () => {
      try {
        const st = await stat(tun);
        if (!st.isCharacterDevice()) return `${tun} is not a character device`;
        await access(tun, constants.R_OK | constants.W_OK);
        return null;
      } catch (err) {
        return `${tun}: ${(err as Error).message}`;
      }
    })(),
  ]);
  const checks: NetworkCheck[] = [
    { name: 'root', ok: uid === 0, detail: uid === 0 ? 'running as root' : `running as uid ${uid}; namespaces, veths and nftables need root` },
    { name: 'iproute2', ok: ip !== null, detail: ip ?? '`ip` not found' },
    { name: 'nftables', ok: nft !== null, detail: nft ?? '`nft` not found' },
    { name: 'nsenter', ok: nsenter !== null, detail: nsenter ?? '`nsenter` (util-linux) not found' },
    { name: 'tun', ok: tunOk === null, detail: tunOk ?? `${tun} is usable` },
  ];
  const failed = checks.filter((c) => !c.ok);
  const summary = failed.map((c) => `${c.name}: ${c.detail}`).join('; ');
  if (prefer === 'user') {
    return { kind: 'user', reason: 'user-mode networking forced by configuration', checks, conntrack: conntrack !== null };
  }
  if (failed.length === 0) {
    return {
      kind: 'netns',
      reason: `per-sandbox network namespaces: root, iproute2, nftables, nsenter and ${tun} are available${conntrack ? '' : ' (conntrack tool missing: resets rely on the generation mark)'}`,
      checks,
      conntrack: conntrack !== null,
    };
  }
  return {
    kind: 'user',
    reason: prefer === 'netns'
      ? `netns networking was requested but cannot work here (${summary}); using QEMU user-mode networking`
      : `QEMU user-mode networking (restrict=on) with loopback forwards; netns slots need ${summary}`,
    checks,
    conntrack: conntrack !== null,
  };
}
