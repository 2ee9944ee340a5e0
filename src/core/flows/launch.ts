import { mkdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Cleanup } from '../cleanup.js';
import { HostFailureError, HearthError } from '../errors.js';
import type { StepTimer } from '../steps.js';
import type { SandboxRecord, SnapshotRecord, Template } from '../types.js';
import type { SnapshotFiles } from '../../vmm/types.js';
import { removeTree } from '../../util/fs.js';
import {
  FILES, consoleTail, initBody, sandboxDir, slotOptions, vmConfig, type LiveSandbox, type ManagerDeps,
} from './context.js';

/** Where a new sandbox's VM comes from: a cold boot of the template, or a restore of a snapshot. */
export type LaunchSource =
  | { kind: 'boot'; template: Template }
  | { kind: 'restore'; template: Template; snapshot: SnapshotRecord };

/**
 * Bring a new sandbox to `running` (DESIGN §3 create): slot → disk (a clone of
 * the template's or snapshot's disk) → memory (a clone of the snapshot's) →
 * boot or restore → agent ready → /init. Every acquisition registers its undo on
 * `cleanup`; the caller runs it on failure and commits it on success.
 */
export async function launch(
  deps: ManagerDeps, rec: SandboxRecord, source: LaunchSource, steps: StepTimer, cleanup: Cleanup, signal: AbortSignal,
): Promise<LiveSandbox> {
  const { config } = deps;
  const dir = sandboxDir(config, rec.id);
  await mkdir(dir, { recursive: true });
  cleanup.add('sandbox dir', () => removeTree(dir));

  const slot = await steps.run('slot', () => deps.network.acquire(signal, slotOptions(rec)), signal);
  cleanup.add('network slot', () => deps.network.release(slot));
  rec.network = slot.vmNetwork;

  const base = source.kind === 'boot'
    ? { id: source.template.id, path: source.template.rootfsPath, sizeBytes: source.template.rootfsSizeBytes }
    : { id: source.snapshot.id, path: join(source.snapshot.dir, FILES.rootfs), sizeBytes: source.template.rootfsSizeBytes };
  const disk = await steps.run('disk', () => deps.storage.create(rec.id, base, signal), signal);
  cleanup.add('root disk', () => deps.storage.remove(disk, AbortSignal.timeout(60_000)));
  rec.disk = disk;

  const vmm = deps.vmm.create();
  const cfg = vmConfig(config, rec, source.template, slot, disk);
  const live: LiveSandbox = { vmm, slot, disk, stopping: false };
  // Registered before the VMM starts: a start that fails half-way may still have left a process.
  cleanup.addPriority('vmm', async () => { live.stopping = true; await vmm.stop(AbortSignal.timeout(30_000)); });
  if (source.kind === 'boot') {
    await steps.run('boot', () => vmm.boot(cfg, signal), signal);
  } else {
    const snap: SnapshotFiles = { dir: source.snapshot.dir, statePath: join(source.snapshot.dir, FILES.vmstate), memoryPath: join(source.snapshot.dir, FILES.memory) };
    if (!deps.vmm.restoreMapsSnapshotMemory) {
      await steps.run('memory', () => deps.cloneFile(snap.memoryPath, cfg.memoryFilePath, signal), signal);
      cleanup.add('memory file', () => unlink(cfg.memoryFilePath).catch(() => undefined));
    }
    await steps.run('restore', () => vmm.restore(snap, cfg, signal), signal);
  }
  rec.vmm = { kind: vmm.kind, pid: vmm.pid, runDir: dir };
  deps.store.updateSandbox(rec);

  const endpoint = slot.guestAddress(config.agentPort);
  const timeoutMs = source.kind === 'boot' ? config.bootTimeoutMs : config.restoreTimeoutMs;
  await steps.run('agent', () => waitForAgent(deps, endpoint, undefined, live, cfg.consoleLogPath, timeoutMs, signal), signal);
  await vmm.markReady?.();
  // The agent in a snapshot already holds the token of the sandbox it was taken from.
  const presented = source.kind === 'restore' ? source.snapshot.agentToken : undefined;
  await steps.run('init', () => deps.agent(endpoint, presented).init(initBody(rec), signal), signal);
  rec.agent = endpoint;
  return live;
}

/** Wait for the agent, failing fast (with the console's last lines) if the VMM dies first. */
export async function waitForAgent(
  deps: ManagerDeps, endpoint: { host: string; port: number }, token: string | undefined, live: LiveSandbox,
  consoleLog: string, timeoutMs: number, signal: AbortSignal,
): Promise<void> {
  const died = live.vmm.exited.then(async (info): Promise<never> => {
    throw new HostFailureError(`VMM exited while starting (code ${info.code}, signal ${info.signal}); console: ${await consoleTail(consoleLog)}`);
  });
  died.catch(() => undefined);
  try {
    await deps.agent(endpoint, token).waitUntilReady({ signal, timeoutMs, giveUp: died });
  } catch (err) {
    if (err instanceof HearthError && err.code === 'timeout') {
      throw new HostFailureError(`${err.message}; console: ${await consoleTail(consoleLog)}`, { cause: err });
    }
    throw err;
  }
}
