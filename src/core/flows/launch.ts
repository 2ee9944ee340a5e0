import { mkdir } from 'node:fs/promises';
import type { Holdings } from '../holdings.js';
import { HostFailureError, HearthError } from '../errors.js';
import type { StepTimer } from '../steps.js';
import type { SandboxRecord, SnapshotRecord, Template } from '../types.js';
import type { SnapshotFiles } from '../../vmm/types.js';
import { snapshotAt } from '../layout.js';
import { snapshotFilesAt } from './capture.js';
import { startTemplateService } from './service.js';
import {
  consoleTail, initBody, layoutOf, slotOptions, vmConfig, type LiveSandbox, type ManagerDeps,
} from './context.js';

/** Where a new sandbox's VM comes from: a cold boot of the template, or a restore of a snapshot. */
export type LaunchSource =
  /** warm: the VM is about to become the template's warm snapshot, so the agent warms its command path first. */
  | { kind: 'boot'; template: Template; warm?: boolean }
  | { kind: 'restore'; template: Template; snapshot: SnapshotRecord };

/**
 * Bring a new sandbox to `running` (create): slot → disk (a clone of
 * the template's or snapshot's disk) → memory (a clone of the snapshot's) →
 * boot or restore → agent ready → /init. Every acquisition is recorded in the
 * holdings ledger as it is taken (the disk and the VMM as intents first); on
 * failure the caller releases the ledger, on success the sandbox keeps it.
 */
export async function launch(
  deps: ManagerDeps, ledger: Holdings, rec: SandboxRecord, source: LaunchSource, steps: StepTimer, signal: AbortSignal,
): Promise<LiveSandbox> {
  const { config } = deps;
  const { dir } = layoutOf(config).sandbox(rec.id);
  ledger.record(rec, { kind: 'dir', path: dir });
  await mkdir(dir, { recursive: true });

  const slot = await steps.run('slot', () => deps.network.acquire(signal, slotOptions(rec)), signal);
  ledger.record(rec, { kind: 'slot', network: slot.vmNetwork });

  const base = source.kind === 'boot'
    ? { id: source.template.id, path: source.template.rootfsPath, sizeBytes: source.template.rootfsSizeBytes }
    : { id: source.snapshot.id, path: snapshotAt(source.snapshot.dir).rootfs, sizeBytes: source.template.rootfsSizeBytes };
  const diskRow = ledger.record(rec, { kind: 'disk', disk: null, base });
  const disk = await steps.run('disk', () => deps.storage.create(rec.id, base, signal), signal);
  ledger.update(rec, diskRow, { kind: 'disk', disk });

  const vmm = deps.vmm.create();
  const cfg = vmConfig(config, rec, source.template, slot, disk);
  const live: LiveSandbox = { vmm, slot, disk, stopping: false };
  const snap: SnapshotFiles | null = source.kind === 'restore' ? snapshotFilesAt(source.snapshot.dir) : null;
  if (snap && !deps.vmm.restoreMapsSnapshotMemory) {
    ledger.record(rec, { kind: 'memory', path: cfg.memoryFilePath });
    await steps.run('memory', () => deps.cloneFile(snap.memoryPath, cfg.memoryFilePath, signal), signal);
  }
  // An intent before the VMM starts: a start that fails half-way, or a daemon that dies during it, may leave a process.
  const vmmRow = ledger.record(rec, { kind: 'vmm', runDir: dir, handle: null }, live);
  if (!snap) await steps.run('boot', () => vmm.boot(cfg, signal), signal);
  else await steps.run('restore', () => vmm.restore(snap, cfg, signal), signal);
  ledger.update(rec, vmmRow, { kind: 'vmm', runDir: dir, handle: { kind: vmm.kind, pid: vmm.pid, runDir: dir } });

  const endpoint = slot.guestAddress(config.agentPort);
  const timeoutMs = source.kind === 'boot' ? config.bootTimeoutMs : config.restoreTimeoutMs;
  const warm = source.kind === 'boot' && source.warm === true;
  await steps.run('agent', () => waitForAgent(deps, endpoint, undefined, live, cfg.consoleLogPath, timeoutMs, signal, warm), signal);
  await vmm.markReady?.();
  // The agent in a snapshot already holds the token of the sandbox it was taken from.
  const presented = source.kind === 'restore' ? source.snapshot.agentToken : undefined;
  await steps.run('init', () => deps.agent(endpoint, presented).init(initBody(rec, source.template), signal), signal);
  // A booted custom template starts its service now; a restored one has it running already.
  if (source.kind === 'boot' && source.template.runtime?.start) {
    await steps.run('start', () => startTemplateService(deps.agent(endpoint, rec.agentToken), source.template, signal), signal);
  }
  rec.agent = endpoint;
  return live;
}

/** Wait for the agent, failing fast (with the console's last lines) if the VMM dies first. */
export async function waitForAgent(
  deps: ManagerDeps, endpoint: { host: string; port: number }, token: string | undefined, live: LiveSandbox,
  consoleLog: string, timeoutMs: number, signal: AbortSignal, warm = false,
): Promise<void> {
  const died = live.vmm.exited.then(async (info): Promise<never> => {
    throw new HostFailureError(`VMM exited while starting (code ${info.code}, signal ${info.signal}); console: ${await consoleTail(consoleLog)}`);
  });
  died.catch(() => undefined);
  try {
    await deps.agent(endpoint, token).waitUntilReady({ signal, timeoutMs, giveUp: died, warm });
  } catch (err) {
    if (err instanceof HearthError && err.code === 'timeout') {
      throw new HostFailureError(`${err.message}; console: ${await consoleTail(consoleLog)}`, { cause: err });
    }
    throw err;
  }
}
