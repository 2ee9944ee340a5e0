import { HostFailureError, TimeoutError, errorMessage, throwIfAborted } from '../errors.js';
import type { Template } from '../types.js';
import type { AgentControlApi } from './context.js';

/** Where the start command's output goes in the guest (for a user to read, and for the build's error). */
export const START_LOG = '/var/log/hearth/start.log';

const POLL_MS = 200;

/**
 * Start a custom template's service (its start command) in a freshly booted
 * guest and wait for its ready check. It runs detached from the agent
 * (`setsid -f`), as the template's user in its workdir with its env, output in
 * START_LOG, so it outlives the call and is in every snapshot taken after.
 * Only booted VMs need this: a restore already has it running.
 */
export async function startTemplateService(agent: AgentControlApi, template: Template, signal: AbortSignal): Promise<number> {
  const rt = template.runtime;
  if (!rt?.start) return 0;
  const t0 = performance.now();
  const env = { ...rt.env, HEARTH_START: rt.start.command, HEARTH_USER: rt.user ?? 'root' };
  // The command line reaches the shell as data ($HEARTH_START), never spliced into a script.
  const launch = `mkdir -p /var/log/hearth && setsid -f runuser -u "$HEARTH_USER" -- /bin/sh -c "$HEARTH_START" >>${START_LOG} 2>&1 </dev/null`;
  const started = await agent.exec({ cmd: '/bin/sh', args: ['-c', launch], envs: env, ...(rt.workdir ? { cwd: rt.workdir } : {}) }, signal);
  if (started.exitCode !== 0) throw new HostFailureError(`template ${template.id}: the start command could not be launched (${started.status})`);
  const ready = rt.start.ready;
  if (!ready) return Math.round(performance.now() - t0);
  const deadline = performance.now() + (rt.start.timeoutSec ?? 60) * 1000;
  const check = 'port' in ready
    ? { cmd: '/bin/bash', args: ['-c', `exec 3<>/dev/tcp/127.0.0.1/${ready.port}`], envs: {} }
    : { cmd: '/bin/sh', args: ['-c', ready.command], user: rt.user ?? 'root', envs: rt.env, ...(rt.workdir ? { cwd: rt.workdir } : {}) };
  for (;;) {
    throwIfAborted(signal);
    const r = await agent.exec(check, signal);
    if (r.exitCode === 0) return Math.round(performance.now() - t0);
    if (performance.now() > deadline) {
      const what = 'port' in ready ? `port ${ready.port} did not accept connections` : `ready command exited ${r.exitCode}`;
      throw new TimeoutError(`template ${template.id}: the start command was not ready within ${rt.start.timeoutSec ?? 60} s (${what}); its output: ${await startLogTail(agent, signal)}`);
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

async function startLogTail(agent: AgentControlApi, signal: AbortSignal): Promise<string> {
  const chunks: Buffer[] = [];
  try {
    await agent.exec({ cmd: '/usr/bin/tail', args: ['-n', '15', START_LOG], envs: {} }, signal, (_s, c) => chunks.push(Buffer.from(c)));
  } catch (err) {
    return `(unreadable: ${errorMessage(err)})`;
  }
  return Buffer.concat(chunks).toString('utf8').trimEnd().split('\n').join(' | ') || '(empty)';
}
